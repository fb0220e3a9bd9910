"""Retraining from feedback: the candidate, the promotion gate, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select

from hrlm.errors import ConfigError, DataError, NotFound
from hrlm.lifecycle.registry import Registry
from hrlm.lifecycle.retraining import feedback_examples, format_gate, merge_feedback, retrain, without_texts
from hrlm.lifecycle.settings import LifecycleSettings
from hrlm.store.tables import audit_log, review_feedback, review_items, utcnow
from tests.conftest import make_texts, write_csv

FEEDBACK = [
    ("payslip overtime deposit missing for this month", "payroll", False),
    ("my vpn login is locked again please help", "it", False),
    ("parental leave days for next week", "leave", False),
    ("bonus not paid with the salary", "payroll", False),
    ("email account locked i need access", "it", False),
    ("sick days off this week", "leave", False),
    ("tax on my wage deposit", "payroll", True),
    ("laptop password reset", "it", True),
    ("holiday absence next month", "leave", True),
]


def add_feedback(engine: Engine, rows: list[tuple[str, str, bool]], *, model_version: str = "tiny") -> None:
    """Done review items, each with one reviewer's correction (what the review queue leaves behind)."""
    now = utcnow()
    with engine.begin() as conn:
        for i, (text, label, holdout) in enumerate(rows):
            item = conn.execute(
                insert(review_items).values(
                    created_at=now,
                    model_version=model_version,
                    text=text,
                    text_hash=f"h{i}-{abs(hash(text))}",
                    suggestion="payroll",
                    output={"label": "payroll", "score": 0.4, "probabilities": {}},
                    reason="low_confidence",
                    score=0.6,
                    reviews_needed=1,
                    holdout=holdout,
                    state="done",
                )
            ).inserted_primary_key
            assert item is not None
            conn.execute(
                insert(review_feedback).values(
                    item_id=item[0],
                    reviewer="rita",
                    at=now,
                    action="correct",
                    label=label,
                    previous_label="payroll",
                    model_version=model_version,
                )
            )


def holdout_file(folder: Path, train_csv: Path, n_per_class: int = 8) -> Path:
    """Toy tickets drawn with another seed, minus any text that is also in the training file."""
    taken = {line.split(",")[0] for line in train_csv.read_text().splitlines()}
    rows = [r for r in make_texts(n_per_class, seed=99) if r[0] not in taken]
    return write_csv(folder / "holdout.csv", rows)


def retrain_settings(db_url: str, tmp_path: Path, train_csv: Path, **extra: Any) -> LifecycleSettings:
    return LifecycleSettings(
        database_url=db_url,
        registry_dir=str(tmp_path / "registry"),
        train_data=str(train_csv),
        holdout_data=str(holdout_file(tmp_path, train_csv)),
        threads=1,
        **extra,
    )


@pytest.fixture
def registry(engine: Engine, trained_model: Path, tmp_path: Path) -> Registry:
    reg = Registry(engine, tmp_path / "registry")
    reg.register(trained_model, actor="admin", stage="production")
    return reg


def test_negative_margin_promotes_the_candidate_trained_with_feedback(
    engine: Engine, registry: Registry, db_url: str, tickets_csv: Path, tmp_path: Path
) -> None:
    add_feedback(engine, FEEDBACK)
    before = registry.production()
    assert before is not None
    seen: list[tuple[float, str]] = []
    settings = retrain_settings(db_url, tmp_path, tickets_csv)

    result = retrain(
        engine, registry, settings, actor="alice", margin=-1.0, progress_cb=lambda f, m: seen.append((f, m))
    )

    assert result["decision"] == "promoted"
    assert result["parent"] == before.version
    assert result["production"] == result["candidate"] != before.version
    assert result["data"] == {
        "original": 120,
        "feedback": 6,
        "training": 126,
        "fixed_holdout": result["data"]["fixed_holdout"],
        "feedback_holdout": 3,
    }
    cand = registry.get(result["candidate"])
    assert (cand.stage, cand.origin, cand.parent) == ("production", "retrain", before.version)
    assert registry.get(before.version).stage == "archived"
    assert cand.gate is not None and cand.gate["decision"] == "promote"
    # the candidate learned from the file and the feedback: every row went into one of its splits
    meta = json.loads((cand.path / "hrlm.json").read_text())
    assert sum(meta["extra"]["splits"].values()) == 126
    assert meta["train_config"]["epochs"] == 5.0  # production's recorded settings
    gate_md = (cand.path / "report" / "gate.md").read_text()
    assert "# Promotion gate: promote" in gate_md and before.version in gate_md
    assert json.loads((cand.path / "report" / "gate.json").read_text())["fixed_holdout"]["n"] > 0
    # progress went forward from 0 to the end, and the registry's moves are in the audit log
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] >= 0.95
    with engine.connect() as conn:
        actions = [r for (r,) in conn.execute(select(audit_log.c.action).where(audit_log.c.actor == "alice"))]
    assert "model.register" in actions


def test_margin_one_rejects_and_keeps_production(
    engine: Engine, registry: Registry, db_url: str, tickets_csv: Path, tmp_path: Path
) -> None:
    add_feedback(engine, FEEDBACK)
    before = registry.production()
    assert before is not None
    result = retrain(engine, registry, retrain_settings(db_url, tmp_path, tickets_csv), actor="alice", margin=1.0)

    assert result["decision"] == "rejected"
    assert result["production"] == before.version
    assert registry.production() == registry.get(before.version)
    cand = registry.get(result["candidate"])
    assert cand.stage == "rejected"
    assert cand.gate is not None
    fixed = cand.gate["fixed_holdout"]
    assert fixed["passed"] is False and fixed["candidate"] < fixed["production"] + 1.0
    # three feedback holdout items: reported, but too few to count in the gate
    assert cand.gate["feedback_holdout"]["n"] == 3 and cand.gate["feedback_holdout"]["counts"] is False
    assert "# Promotion gate: reject" in (cand.path / "report" / "gate.md").read_text()


def test_holdout_overlapping_the_training_data_is_refused(
    engine: Engine, registry: Registry, db_url: str, tickets_csv: Path, tmp_path: Path
) -> None:
    settings = retrain_settings(db_url, tmp_path, tickets_csv).replace(holdout_data=str(tickets_csv))
    with pytest.raises(DataError, match="shares 120 text"):
        retrain(engine, registry, settings, actor="alice")
    assert len(registry.versions()) == 1  # nothing registered


def test_missing_production_data_or_holdout_are_clear_errors(
    engine: Engine, db_url: str, tickets_csv: Path, tmp_path: Path
) -> None:
    empty = Registry(engine, tmp_path / "registry")
    settings = retrain_settings(db_url, tmp_path, tickets_csv)
    with pytest.raises(NotFound, match="no production version"):
        retrain(engine, empty, settings, actor="alice")
    with pytest.raises(ConfigError, match="train_data is not set"):
        retrain(engine, empty, settings.replace(train_data=None), actor="alice")
    with pytest.raises(ConfigError, match=r"holdout_data = .* is not a file"):
        retrain(engine, empty, settings, actor="alice", holdout=tmp_path / "nope.csv")
    with pytest.raises(ConfigError, match="margin"):
        retrain(engine, empty, settings, actor="alice", margin=3.0)


def test_feedback_replaces_training_rows_and_stays_out_of_the_holdouts() -> None:
    from hrlm.data import dataset_from_records

    original = dataset_from_records(["a b", "c d", "e f"], ["x", "y", "x"])
    notes: list[str] = []
    rows = feedback_examples([("C  D", "x"), ("g h", "y|x"), ("", "x"), ("i j", "y")], False, notes, "training")
    assert rows == [("C  D", "x"), ("i j", "y")]  # two labels on single-label data, or no text: left out
    rows = without_texts(rows, ["I J"], notes, "the fixed holdout")
    merged = merge_feedback(original, rows, notes)
    assert merged.texts == ["a b", "e f", "C  D"]
    assert merged.labels == ["x", "x", "x"]
    assert len(notes) == 3
    multi = feedback_examples([("k l", "x|y"), ("m", ["y"])], True, [], "training")
    assert multi == [("k l", ["x", "y"]), ("m", ["y"])]


def test_format_gate_is_markdown_with_both_holdouts() -> None:
    gate = {
        "metric": "macro_f1",
        "margin": 0.01,
        "production": "tiny-12345678",
        "decision": "reject",
        "reason": "candidate macro F1 0.5000 < production 0.6000 + 0.01",
        "fixed_holdout": {"file": "/x/holdout.csv", "n": 30, "production": 0.6, "candidate": 0.5, "delta": -0.1},
        "feedback_holdout": {"n": 25, "production": 0.7, "candidate": 0.71, "delta": 0.01, "passed": True},
    }
    gate["fixed_holdout"]["passed"] = False
    gate["feedback_holdout"]["counts"] = True
    text = format_gate(gate, ["a note"])
    assert "| fixed (holdout.csv) | 30 | 0.6000 | 0.5000 | -0.1000 | False |" in text
    assert "| feedback (counts in the gate) | 25 |" in text and "- a note" in text


def count_rows(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)
