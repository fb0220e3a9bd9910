"""The reviewed data as a file hrlm train reads (hrlm.review.export, `hrlm review export`)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import Engine

from hrlm.errors import ConfigError
from hrlm.review.answers import ReviewPolicy, fill_queue, submit
from hrlm.review.export import reviewed_rows, write_rows
from tests.review.test_answers import QUIET, items, predict, principal, probs


def reviewed(engine: Engine) -> None:
    """Four done items: two agreed, one with reviewers who disagree, one in the holdout; one still open."""
    ana, bo = principal(engine, "ana"), principal(engine, "bo")
    for text in ("my salary is late", "=HYPERLINK(evil)", "sick days off", "vpn locked", "tax form"):
        predict(engine, text, probs("payroll", 0.55))
    fill_queue(engine, ReviewPolicy(**QUIET))
    ids = [i["id"] for i in items(engine)]
    submit(engine, ids[0], ana, "accept")
    submit(engine, ids[1], ana, "correct", ["it"])
    submit(engine, ids[2], ana, "correct", ["leave"])
    from sqlalchemy import update

    from hrlm.store.tables import review_items

    with engine.begin() as conn:  # the third item needs two reviewers, the fourth is a holdout item
        conn.execute(update(review_items).where(review_items.c.id == ids[3]).values(reviews_needed=2, holdout=True))
    submit(engine, ids[3], ana, "accept")
    submit(engine, ids[3], bo, "correct", ["it"])  # disagreement: left out
    # ids[4] stays open


def test_rows_hold_the_agreed_labels_and_say_what_was_left_out(engine: Engine, tmp_path: Path) -> None:
    from hrlm.data import load_dataset

    reviewed(engine)
    rows, counts = reviewed_rows(engine)
    assert [(r["text"], r["label"]) for r in rows] == [
        ("my salary is late", "payroll"),
        ("=HYPERLINK(evil)", "it"),
        ("sick days off", "leave"),
    ]
    assert counts == {"rows": 3, "disagreements": 1, "purged": 0}
    assert rows[0]["reviewers"] == "ana" and rows[0]["suggestion"] == "payroll" and not rows[0]["holdout"]
    assert reviewed_rows(engine, holdout="only")[0] == []
    csv_path = write_rows(rows, tmp_path / "reviewed.csv")
    assert "'=HYPERLINK(evil)" in csv_path.read_text()  # a spreadsheet will not run it
    ds = load_dataset(csv_path)  # what hrlm train reads
    assert ds.labels == ["payroll", "it", "leave"]
    jsonl = write_rows(rows, tmp_path / "reviewed.jsonl")
    assert json.loads(jsonl.read_text().splitlines()[1])["text"] == "=HYPERLINK(evil)"
    frame = pd.read_parquet(write_rows(rows, tmp_path / "reviewed.parquet"))
    assert list(frame.label) == ["payroll", "it", "leave"] and list(frame.item_id) == [r["item_id"] for r in rows]
    with pytest.raises(ConfigError, match="--format"):
        write_rows(rows, tmp_path / "reviewed.xlsx")


def test_the_cli_and_the_route(engine: Engine, db_url: str, tmp_path: Path, trained_model: Path) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app
    from tests.service.conftest import add_users, bearer, running

    reviewed(engine)
    result = CliRunner().invoke(
        app, ["review", "export", str(tmp_path / "out.csv"), "--holdout", "exclude", "--database-url", db_url]
    )
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "wrote 3 reviewed texts" in said and "0 where reviewers disagree" in said  # the holdout one is excluded
    assert len(pd.read_csv(tmp_path / "out.csv")) == 3
    tokens = add_users(db_url)
    with running(trained_model, db_url) as client:
        r = client.get("/v1/review/export", params={"format": "jsonl"}, headers=bearer(tokens.admin))
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        assert len(r.text.splitlines()) == 3
        assert client.get("/v1/review/export", headers=bearer(tokens.reviewer)).status_code == 403
        assert (
            client.get("/v1/review/export", params={"format": "xls"}, headers=bearer(tokens.admin)).status_code == 422
        )
