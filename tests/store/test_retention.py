"""Retention (`hrlm purge`, retention_days): exactly the old texts and notes go; every other fact stays."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import DBAPIError
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.review import answers
from hrlm.store import create_user
from hrlm.store.retention import purge_texts
from hrlm.store.tables import audit_log, predictions, review_feedback, review_items, users, utcnow
from hrlm.store.users import Principal

runner = CliRunner()
NOW = utcnow()
OLD = NOW - dt.timedelta(days=200)
NEW = NOW - dt.timedelta(days=10)
CUTOFF = NOW - dt.timedelta(days=180)
TABLES = (predictions, review_items, review_feedback)
PURGED = {  # the columns a purge may change, per table
    "predictions": {"text", "text_purged_at"},
    "review_items": {"text", "text_purged_at"},
    "review_feedback": {"note", "note_purged_at"},
}


def seed(engine: Any) -> dict[str, Any]:
    """Predictions, review items and answers on both sides of CUTOFF; returns the ids of each kind."""
    create_user(engine, "rita", "reviewer")
    with engine.begin() as conn:
        rita = conn.execute(select(users.c.id).where(users.c.name == "rita")).scalar_one()
        ids: dict[str, Any] = {"rita": rita}

        def prediction(at: dt.datetime, text: str | None) -> int:
            row = {
                "request_id": f"r{at.timestamp()}{text}",
                "position": 0,
                "created_at": at,
                "model_version": "router-1",
                "text": text,
                "label": "payroll",
                "confidence": 0.4,
                "output": {"label": "payroll", "score": 0.4, "probabilities": {"payroll": 0.4, "it": 0.6}},
                "latency_ms": 3.0,
                "batch_size": 1,
            }
            return int(conn.execute(insert(predictions).values(**row)).inserted_primary_key[0])

        def item(at: dt.datetime, text: str, prediction_id: int | None, state: str = "done") -> int:
            row = {
                "prediction_id": prediction_id,
                "created_at": at,
                "model_version": "router-1",
                "text": text,
                "text_hash": f"h-{text}",
                "suggestion": "payroll",
                "output": {"label": "payroll", "score": 0.4, "probabilities": {"payroll": 0.4, "it": 0.6}},
                "reason": "low_confidence",
                "score": 0.6,
                "reviews_needed": 1,
                "holdout": False,
                "state": state,
            }
            return int(conn.execute(insert(review_items).values(**row)).inserted_primary_key[0])

        def answer(at: dt.datetime, item_id: int, action: str, note: str | None) -> int:
            row = {
                "item_id": item_id,
                "reviewer_id": rita,
                "reviewer": "rita",
                "at": at,
                "action": action,
                "label": "it" if action == "correct" else None,
                "previous_label": "payroll",
                "model_version": "router-1",
                "note": note,
            }
            return int(conn.execute(insert(review_feedback).values(**row)).inserted_primary_key[0])

        ids["old_pred"] = prediction(OLD, "old payslip text")
        ids["old_pred_no_text"] = prediction(OLD, None)  # stored without text (store_text = none)
        ids["new_pred"] = prediction(NEW, "new vpn text")
        ids["old_item"] = item(OLD, "old payslip text", ids["old_pred"])
        ids["old_open_item"] = item(OLD, "old open text", None, state="open")
        ids["new_item"] = item(NEW, "new vpn text", ids["new_pred"])
        ids["new_open_item"] = item(NEW, "new open text", None, state="open")
        ids["old_note"] = answer(OLD, ids["old_item"], "flag", "names a colleague")
        ids["old_no_note"] = answer(OLD, ids["old_item"], "correct", None)
        ids["new_note"] = answer(NEW, ids["new_item"], "flag", "recent note")
    return ids


def snapshot(engine: Any) -> dict[str, dict[int, dict[str, Any]]]:
    with engine.connect() as conn:
        return {t.name: {r["id"]: dict(r) for r in conn.execute(select(t)).mappings()} for t in (*TABLES, audit_log)}


def test_dry_run_counts_and_changes_nothing(engine: Any) -> None:
    seed(engine)
    before = snapshot(engine)
    counts = purge_texts(engine, older_than=CUTOFF, dry_run=True, actor="cli:ana")
    assert (counts.predictions, counts.review_items, counts.review_notes, counts.applied) == (1, 2, 1, False)
    assert counts.cutoff == CUTOFF and counts.total == 4
    assert snapshot(engine) == before  # no text, no stamp and no audit entry


def test_apply_removes_exactly_the_old_texts_and_notes_and_nothing_else(engine: Any) -> None:
    ids = seed(engine)
    before = snapshot(engine)
    counts = purge_texts(engine, older_than=CUTOFF, dry_run=False, actor="cli:ana")
    assert (counts.predictions, counts.review_items, counts.review_notes, counts.applied) == (1, 2, 1, True)
    after = snapshot(engine)

    purged = {
        "predictions": {ids["old_pred"]},
        "review_items": {ids["old_item"], ids["old_open_item"]},
        "review_feedback": {ids["old_note"]},
    }
    for table in TABLES:
        assert set(after[table.name]) == set(before[table.name])  # no row gone, none added
        for row_id, old in before[table.name].items():
            new = after[table.name][row_id]
            kept = {k: v for k, v in new.items() if k not in PURGED[table.name]}
            assert kept == {k: v for k, v in old.items() if k not in PURGED[table.name]}, (table.name, row_id)
            if row_id in purged[table.name]:
                emptied = {"predictions": None, "review_items": "", "review_feedback": None}[table.name]
                column, stamp = sorted(PURGED[table.name], key=len)
                assert new[column] == emptied and new[stamp] is not None, (table.name, row_id)
            else:
                assert new == old, (table.name, row_id)

    entries = [e for i, e in after["audit_log"].items() if i not in before["audit_log"]]
    assert len(entries) == 1
    (entry,) = entries
    assert (entry["actor"], entry["action"], entry["target"]) == ("cli:ana", "retention.purge", None)
    assert entry["detail"] == {
        "cutoff": CUTOFF.isoformat(),
        "predictions": 1,
        "review_items": 2,
        "review_notes": 1,
    }
    # the trail survives the purge and stays append-only
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(update(audit_log).values(detail=None))
    with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
        conn.execute(delete(audit_log))
    assert snapshot(engine)["audit_log"] == after["audit_log"]

    again = purge_texts(engine, older_than=CUTOFF, dry_run=False, actor="service")
    assert again.total == 0 and snapshot(engine) == after  # nothing left: no change and no empty entry


def test_a_purged_open_item_is_not_served_to_reviewers(engine: Any) -> None:
    ids = seed(engine)
    rita = Principal(ids["rita"], "rita", "reviewer")
    purge_texts(engine, older_than=CUTOFF, dry_run=False, actor="service")
    assert answers.open_items(engine, rita) == 1
    item = answers.next_item(engine, rita)
    assert item is not None and item["id"] == ids["new_open_item"] and item["text"] == "new open text"
    answers.submit(engine, item["id"], rita, "accept")
    assert answers.next_item(engine, rita) is None  # the old open item, now without text, never comes


def test_cli_purge_is_a_dry_run_unless_applied(db_url: str, engine: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seed(engine)
    before = snapshot(engine)
    result = runner.invoke(app, ["purge", "--older-than", "26w", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    assert "would remove the texts of 1 predictions and 2 review items, and 1 reviewers' notes" in result.output
    assert "dry run: nothing changed" in result.output and snapshot(engine) == before

    result = runner.invoke(app, ["purge", "--older-than", "180d", "--apply", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    assert "removed the texts of 1 predictions and 2 review items, and 1 reviewers' notes" in result.output
    with engine.connect() as conn:
        entry = conn.execute(select(audit_log).where(audit_log.c.action == "retention.purge")).one()
    assert entry.actor.startswith("cli")

    # the default age is retention_days
    monkeypatch.setenv("HRLM_RETENTION_DAYS", "5")
    result = runner.invoke(app, ["purge", "--database-url", db_url])
    assert result.exit_code == 0, result.output
    assert "would remove the texts of 1 predictions and 2 review items, and 1 reviewers' notes" in result.output


@pytest.mark.parametrize(
    ("age", "message"),
    [("12h", "under a day"), ("0d", "under a day"), ("six months", "not an age"), ("-3d", "not an age")],
)
def test_cli_purge_refuses_a_bad_age_in_one_line(db_url: str, age: str, message: str) -> None:
    result = runner.invoke(app, ["purge", "--older-than", age, "--database-url", db_url])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


def test_cli_purge_without_an_age_says_how_to_give_one(db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRLM_RETENTION_DAYS", raising=False)
    result = runner.invoke(app, ["purge", "--database-url", db_url])
    assert result.exit_code == 1 and "--older-than" in result.output and "retention_days" in result.output


def test_the_service_purges_soon_after_start_and_not_without_retention_days(engine: Any) -> None:
    import asyncio

    from hrlm.service.retention import RetentionPurger

    seed(engine)
    before = snapshot(engine)

    async def run(days: int | None) -> None:
        purger = RetentionPurger(engine, days, first_after_s=0.05)
        purger.start()
        await asyncio.sleep(0.5)
        await purger.stop()

    asyncio.run(run(None))
    assert snapshot(engine) == before  # unset: texts are kept
    asyncio.run(run(180))
    with engine.connect() as conn:
        (entry,) = conn.execute(select(audit_log).where(audit_log.c.action == "retention.purge")).all()
        texts = list(conn.execute(select(predictions.c.text)).scalars())
    assert entry.actor == "service" and entry.detail["predictions"] == 1 and entry.detail["review_notes"] == 1
    assert sorted(t for t in texts if t is not None) == ["new vpn text"]
