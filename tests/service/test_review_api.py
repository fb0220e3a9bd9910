"""The review routes and the web pages through the real app: roles, answers, errors, OpenAPI, page headers."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hrlm.store import make_engine
from hrlm.store.tables import audit_log, review_feedback, review_items
from tests.service.conftest import QUEUE_ALL, Tokens, bearer, running

TEXTS = [
    "my payslip is missing the overtime",
    "vpn login fails with my laptop",
    "how many vacation days do I have left",
    "the tax on my bonus looks wrong",
    "sick leave for next week",
    "password locked out of my email account",
]


@pytest.fixture
def app(trained_model: Path, db_url: str, tokens: Tokens) -> Iterator[Any]:
    with running(trained_model, db_url, **QUEUE_ALL) as client:
        service = client.app.state.service
        # PostgreSQL fills leave predictions younger than settle_s for later; these tests fill at once
        service.filler.policy = dataclasses.replace(service.filler.policy, settle_s=0.0)
        yield client


def predict_and_fill(client: Any, tokens: Tokens) -> dict[str, Any]:
    r = client.post("/v1/predict", json={"texts": TEXTS}, headers=bearer(tokens.client))
    assert r.status_code == 200, r.text
    r = client.post("/v1/review/fill", headers=bearer(tokens.admin))
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_reviewer_takes_an_item_corrects_it_and_the_answer_is_stored(app: Any, tokens: Tokens, db_url: str) -> None:
    filled = predict_and_fill(app, tokens)
    assert filled["scanned"] == len(TEXTS) and filled["queued"] == len(TEXTS)
    assert filled["by_reason"]["low_confidence"] == len(TEXTS)

    r = app.get("/v1/review/next", headers=bearer(tokens.reviewer))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["reviewer"] == {"name": "reviewer", "role": "reviewer"} and body["open_items"] == len(TEXTS)
    item = body["item"]
    assert item["text"] in TEXTS and list(item["probabilities"]) == item["labels"]
    assert set(item["labels"]) == {"payroll", "leave", "it"} and item["suggestion"] in item["labels"]
    other = next(label for label in item["labels"] if label != item["suggestion"])

    r = app.post(
        f"/v1/review/items/{item['id']}", json={"action": "correct", "label": other}, headers=bearer(tokens.reviewer)
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "item_id": item["id"],
        "action": "correct",
        "label": other,
        "previous_label": item["suggestion"],
        "state": "done",
        "reviews_done": 1,
        "reviews_needed": 1,
    }
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(review_feedback)).mappings().one()
            audited = conn.execute(
                select(audit_log.c.actor, audit_log.c.action).where(audit_log.c.action == "review.correct")
            ).all()
            state = conn.execute(select(review_items.c.state).where(review_items.c.id == item["id"])).scalar()
    finally:
        engine.dispose()
    assert (row["reviewer"], row["label"], row["previous_label"], row["action"]) == (
        "reviewer",
        other,
        item["suggestion"],
        "correct",
    )
    assert row["model_version"] == item["model_version"] and state == "done"
    assert audited == [("reviewer", "review.correct")]

    again = app.post(f"/v1/review/items/{item['id']}", json={"action": "accept"}, headers=bearer(tokens.admin))
    assert again.status_code == 409 and "done already" in again.json()["detail"]
    nxt = app.get("/v1/review/next", headers=bearer(tokens.reviewer)).json()
    assert nxt["item"]["id"] != item["id"] and nxt["open_items"] == len(TEXTS) - 1

    stats = app.get("/v1/review/stats", headers=bearer(tokens.reviewer)).json()
    assert (stats["done"], stats["open"], stats["leased"]) == (1, len(TEXTS) - 1, 1)
    assert stats["reviewers"][0]["reviewer"] == "reviewer" and stats["reviewers"][0]["correct"] == 1
    agreement = app.get("/v1/review/agreement", headers=bearer(tokens.admin)).json()
    assert agreement == {"items": 0, "agreement": None, "kappa": None, "pairs": []}


def test_review_routes_check_roles_and_bodies(app: Any, tokens: Tokens) -> None:
    predict_and_fill(app, tokens)
    assert app.get("/v1/review/next").status_code == 401
    r = app.get("/v1/review/next", headers=bearer(tokens.client))
    assert r.status_code == 403 and "needs role reviewer or admin" in r.json()["detail"]
    for method, path in (("post", "/v1/review/fill"), ("get", "/v1/review/agreement")):
        r = getattr(app, method)(path, headers=bearer(tokens.reviewer))
        assert r.status_code == 403, path
    assert app.get("/v1/review/me", headers=bearer(tokens.admin)).json() == {"name": "admin", "role": "admin"}

    item = app.get("/v1/review/next", headers=bearer(tokens.reviewer)).json()["item"]
    url = f"/v1/review/items/{item['id']}"
    r = app.post(url, json={"action": "correct", "label": "holidays"}, headers=bearer(tokens.reviewer))
    assert r.status_code == 422 and "choose from" in r.json()["detail"] and "payroll" in r.json()["detail"]
    r = app.post(url, json={"action": "correct", "label": "it", "labels": ["it"]}, headers=bearer(tokens.reviewer))
    assert r.status_code == 422 and "not both" in r.json()["detail"]
    r = app.post(url, json={"action": "approve"}, headers=bearer(tokens.reviewer))
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["action"]
    r = app.post(url, json={"action": "flag", "note": "x" * 2001}, headers=bearer(tokens.reviewer))
    assert r.status_code == 422
    r = app.post("/v1/review/items/987654", json={"action": "accept"}, headers=bearer(tokens.reviewer))
    assert r.status_code == 404 and r.json()["error"] == "NotFound"
    for beyond in ("9223372036854775808", "0", "-1"):  # past 64 bits, or no id at all: a 422, never a driver error
        r = app.post(f"/v1/review/items/{beyond}", json={"action": "flag"}, headers=bearer(tokens.reviewer))
        assert r.status_code == 422 and r.json()["errors"][0]["loc"][-1] == "item_id", beyond
    r = app.post(url, json={"action": "flag", "note": "not a ticket"}, headers=bearer(tokens.reviewer))
    assert r.status_code == 200 and r.json()["state"] == "flagged"
    r = app.post(url, json={"action": "accept"}, headers=bearer(tokens.admin))
    assert r.status_code == 409 and r.json()["error"] == "Conflict"


def test_review_schemas_are_in_openapi(app: Any, tokens: Tokens) -> None:
    spec = app.get("/openapi.json", headers=bearer(tokens.reviewer)).json()
    paths = spec["paths"]
    for path in (
        "/v1/review/next",
        "/v1/review/items/{item_id}",
        "/v1/review/stats",
        "/v1/review/agreement",
        "/v1/review/fill",
    ):
        assert path in paths, path
    assert "/ui/review" not in paths and "/static/{name}" not in paths
    body = spec["components"]["schemas"]["ReviewAnswerIn"]
    assert body["properties"]["action"]["enum"] == ["accept", "correct", "skip", "flag"]
    assert "ReviewItemOut" in spec["components"]["schemas"]


def test_the_service_fills_the_queue_in_the_background(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, **{**QUEUE_ALL, "review_fill_s": 0.1}) as client:
        service = client.app.state.service
        service.filler.policy = dataclasses.replace(service.filler.policy, settle_s=0.0)
        assert client.post("/v1/predict", json={"texts": TEXTS[:3]}, headers=bearer(tokens.client)).status_code == 200
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if client.get("/v1/review/stats", headers=bearer(tokens.admin)).json()["open"] == 3:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the background filler did not queue the predictions within 30 s")


@pytest.mark.parametrize("page", ["review", "admin"])
def test_pages_are_open_shells_with_a_strict_content_security_policy(app: Any, page: str) -> None:
    r = app.get(f"/ui/{page}")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    assert r.headers["x-frame-options"] == "DENY" and r.headers["cache-control"] == "no-store"
    html = r.text
    assert '<label for="token">API token</label>' in html and "<script>" not in html and "style=" not in html
    assert f'src="/static/{page}.js' in html and "http://" not in html and "https://" not in html  # no CDN
    for asset in ("common.js", f"{page}.js", "app.css"):
        s = app.get(f"/static/{asset}")
        assert s.status_code == 200 and s.headers["x-content-type-options"] == "nosniff", asset
    assert app.get("/static/secrets.js").status_code == 401  # only the known files are open
    assert app.get("/ui", follow_redirects=False).headers["location"] == "/ui/review"
