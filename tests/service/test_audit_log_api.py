"""The audit-log routes and page, flagged notes in the review stats, and the model card route, through the real app."""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select

from hrlm.store import make_engine
from hrlm.store.retention import purge_texts
from hrlm.store.tables import audit_log, utcnow
from tests.service.conftest import QUEUE_ALL, Tokens, bearer, running

# (actor, action, target, detail): what the tests filter and page through, oldest first, a minute apart
ENTRIES = [
    ("ana", "model.register", "router-1", {"origin": "register"}),
    ("ana", "model.promote", "router-1", {"reason": "first"}),
    ("bob", "review.correct", "review_item:7", {"model_version": "router-1", "label": "it"}),
    ("bob", "review.flag", "review_item:8", {"model_version": "router-2", "note": "odd"}),
    ('=HYPERLINK("http://x")', "model.reject", "+router-2", {"reason": "@SUM(A1)"}),
    ("cli:ana", "modelling.other", "-x", None),
]


@pytest.fixture
def app(trained_model: Path, db_url: str, tokens: Tokens) -> Iterator[Any]:
    engine = make_engine(db_url)
    start = utcnow() + dt.timedelta(minutes=1)
    try:
        with engine.begin() as conn:  # the log is append-only: entries are inserted with their time
            for i, (actor, action, target, detail) in enumerate(ENTRIES):
                at = start + dt.timedelta(minutes=i)
                conn.execute(insert(audit_log).values(at=at, actor=actor, action=action, target=target, detail=detail))
    finally:
        engine.dispose()
    with running(trained_model, db_url, **QUEUE_ALL) as client:
        service = client.app.state.service
        service.filler.policy = dataclasses.replace(service.filler.policy, settle_s=0.0)
        yield client


def read(client: Any, tokens: Tokens, **params: Any) -> dict[str, Any]:
    r = client.get("/v1/audit-log", params=params, headers=bearer(tokens.admin))
    assert r.status_code == 200, r.text
    return dict(r.json())


def actions(page: dict[str, Any]) -> list[str]:
    return [e["action"] for e in page["entries"]]


def test_audit_log_filters_newest_first(app: Any, tokens: Tokens) -> None:
    everything = read(app, tokens)
    ids = [e["id"] for e in everything["entries"]]
    assert ids == sorted(ids, reverse=True) and everything["next_before"] is None
    # the three token.create entries of the users, then ours
    assert actions(everything)[:6] == [a for _, a, *_ in reversed(ENTRIES)]
    assert actions(everything)[6:] == ["token.create"] * 3

    assert actions(read(app, tokens, actor="bob")) == ["review.flag", "review.correct"]
    assert actions(read(app, tokens, action="model.")) == ["model.reject", "model.promote", "model.register"]
    assert actions(read(app, tokens, action="model*")) == [
        "modelling.other",
        "model.reject",
        "model.promote",
        "model.register",
    ]
    assert actions(read(app, tokens, action="model.promote")) == ["model.promote"]
    assert actions(read(app, tokens, action="model")) == []  # exact unless it ends in . or *
    assert actions(read(app, tokens, target="review_item:8")) == ["review.flag"]
    # a model version: entries targeting it, and answers naming it
    assert actions(read(app, tokens, model_version="router-1")) == [
        "review.correct",
        "model.promote",
        "model.register",
    ]
    assert actions(read(app, tokens, model_version="router-2")) == ["review.flag"]


def test_audit_log_filters_by_time(app: Any, tokens: Tokens, db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(select(audit_log.c.id, audit_log.c.at).order_by(audit_log.c.id)).all()
    finally:
        engine.dispose()
    middle = rows[len(rows) // 2]
    since = middle.at if middle.at.tzinfo else middle.at.replace(tzinfo=dt.UTC)
    after = read(app, tokens, since=since.isoformat(), limit=1000)
    assert all(e["id"] >= middle.id for e in after["entries"]) and middle.id in [e["id"] for e in after["entries"]]
    before = read(app, tokens, until=since.isoformat())
    assert all(e["id"] < middle.id for e in before["entries"])
    future = (utcnow() + dt.timedelta(days=1)).replace(tzinfo=None).isoformat()  # no zone: UTC
    assert read(app, tokens, since=future)["entries"] == []
    assert len(read(app, tokens, until=future)["entries"]) == len(rows)


def test_audit_log_pages_through_every_entry_once(app: Any, tokens: Tokens) -> None:
    total = len(read(app, tokens)["entries"])
    seen: list[int] = []
    before = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2}
        if before is not None:
            params["before"] = before
        page = read(app, tokens, **params)
        seen += [e["id"] for e in page["entries"]]
        pages += 1
        before = page["next_before"]
        if before is None:
            break
        assert before == page["entries"][-1]["id"]
    assert len(seen) == len(set(seen)) == total and seen == sorted(seen, reverse=True)
    assert pages == (total + 1) // 2 + (1 if total % 2 == 0 else 0)  # a full last page needs one more read


def test_audit_log_csv_has_the_filters_and_defuses_formulas(app: Any, tokens: Tokens) -> None:
    r = app.get("/v1/audit-log.csv", params={"action": "model."}, headers=bearer(tokens.admin))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert r.headers["content-disposition"].startswith('attachment; filename="hrlm-audit-log-')
    rows = list(csv.reader(io.StringIO(r.text)))
    assert rows[0] == ["id", "at", "actor", "action", "target", "detail"]
    assert [row[3] for row in rows[1:]] == ["model.reject", "model.promote", "model.register"]
    reject = rows[1]
    assert reject[2] == '\'=HYPERLINK("http://x")' and reject[4] == "'+router-2"
    assert reject[5] == '{"reason": "@SUM(A1)"}'  # JSON starts with {: not a formula
    everything = list(csv.reader(io.StringIO(app.get("/v1/audit-log.csv", headers=bearer(tokens.admin)).text)))
    other = next(row for row in everything if row[3] == "modelling.other")
    assert other[4] == "'-x" and other[5] == ""
    assert len(everything) - 1 == len(read(app, tokens)["entries"])


def test_audit_log_is_for_admins_only(app: Any, tokens: Tokens) -> None:
    for path in ("/v1/audit-log", "/v1/audit-log.csv"):
        assert app.get(path, headers=bearer(tokens.reviewer)).status_code == 403
        assert app.get(path, headers=bearer(tokens.client)).status_code == 403
        assert app.get(path).status_code == 401
    for params in (
        {"actor": "a\x00b"},
        {"limit": 0},
        {"limit": 1001},
        {"before": 0},
        {"since": "yesterday"},
        {"until": "9999-12-31T23:00:00-05:00"},
    ):
        r = app.get("/v1/audit-log", params=params, headers=bearer(tokens.admin))
        assert r.status_code == 422, (params, r.text)


def test_the_audit_log_page_is_an_open_shell_linked_from_the_admin_page(app: Any) -> None:
    r = app.get("/ui/audit-log")
    assert r.status_code == 200 and "default-src 'none'" in r.headers["content-security-policy"]
    assert 'src="/static/audit-log.js' in r.text and "<script>" not in r.text and "Export CSV" in r.text
    assert "token.create" not in r.text  # no data in the page itself
    assert app.get("/static/audit-log.js").status_code == 200
    assert 'href="/ui/audit-log"' in app.get("/ui/admin").text


def test_flagged_notes_are_visible_in_the_review_stats(app: Any, tokens: Tokens, db_url: str) -> None:
    texts = ["my payslip is missing the overtime", "vpn login fails with my laptop"]
    assert app.post("/v1/predict", json={"texts": texts}, headers=bearer(tokens.client)).status_code == 200
    assert app.post("/v1/review/fill", headers=bearer(tokens.admin)).status_code == 200
    item = app.get("/v1/review/next", headers=bearer(tokens.reviewer)).json()["item"]
    r = app.post(
        f"/v1/review/items/{item['id']}",
        json={"action": "flag", "note": "names a colleague"},
        headers=bearer(tokens.reviewer),
    )
    assert r.status_code == 200, r.text

    for token in (tokens.admin, tokens.reviewer):
        stats = app.get("/v1/review/stats", headers=bearer(token)).json()
        assert stats["flagged"] == 1
        (flag,) = stats["flagged_items"]
        assert flag["item_id"] == item["id"] and flag["flagged_by"] == "reviewer" and flag["state"] == "flagged"
        assert flag["note"] == "names a colleague" and flag["note_purged"] is False
        assert flag["suggestion"] == item["suggestion"] and flag["model_version"] == item["model_version"]
    entries = read(app, tokens, action="review.flag", target=f"review_item:{item['id']}")["entries"]
    assert entries[0]["detail"]["note"] == "names a colleague"

    engine = make_engine(db_url)
    try:
        purge_texts(engine, older_than=utcnow() + dt.timedelta(seconds=1), dry_run=False, actor="test")
    finally:
        engine.dispose()
    (flag,) = app.get("/v1/review/stats", headers=bearer(tokens.admin)).json()["flagged_items"]
    assert flag["note"] is None and flag["note_purged"] is True


def test_model_card_route(app: Any, tokens: Tokens) -> None:
    version = app.get("/v1/models", headers=bearer(tokens.admin)).json()["serving"]
    r = app.get(f"/v1/models/{version}/card", headers=bearer(tokens.reviewer))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/markdown")
    assert r.headers["content-security-policy"].startswith("default-src 'none'")
    assert r.text.startswith("---\nlibrary_name: ") and "## Evaluation" in r.text
    assert app.get(f"/v1/models/{version}/card", headers=bearer(tokens.client)).status_code == 403
    assert app.get("/v1/models/nope-1/card", headers=bearer(tokens.admin)).status_code == 404
