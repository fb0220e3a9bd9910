"""The REST API against SQLite and (marked postgres) PostgreSQL: answers, records, auth and limits."""

from __future__ import annotations

from typing import Any

import pytest

from hrlm.store import make_engine
from hrlm.store.records import predictions_of
from tests.service.conftest import Tokens, bearer


def test_predict_one_text_answers_and_stores_it_redacted(client: Any, tokens: Tokens, db_url: str) -> None:
    text = "my salary is late, mail me at jane.doe@acme.com or call +44 20 7946 0958"
    r = client.post("/v1/predict", json={"text": text}, headers=bearer(tokens.client))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["prediction"]["label"] in ("it", "leave", "payroll")
    assert set(body["prediction"]["probabilities"]) == {"it", "leave", "payroll"}
    assert body["stored"] is True and body["model_version"].startswith("tiny-")
    assert r.headers["x-request-id"] == body["request_id"]
    engine = make_engine(db_url)
    rows = predictions_of(engine, body["request_id"])
    engine.dispose()
    assert len(rows) == 1
    row = rows[0]
    assert row["text"] == "my salary is late, mail me at [EMAIL] or call [PHONE]"
    assert row["label"] == body["prediction"]["label"] and row["model_version"] == body["model_version"]
    assert row["confidence"] == pytest.approx(body["prediction"]["score"])
    assert row["latency_ms"] > 0 and row["user_id"] is not None


def test_predict_list_keeps_order_and_request_id(client: Any, tokens: Tokens, db_url: str) -> None:
    texts = ["vpn login locked", "my salary is late", "sick leave days off"]
    r = client.post("/v1/predict", json={"texts": texts}, headers={**bearer(tokens.admin), "X-Request-ID": "abc-123"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["request_id"] == "abc-123"
    assert [p["label"] for p in body["predictions"]] == ["it", "payroll", "leave"]
    engine = make_engine(db_url)
    assert [row["position"] for row in predictions_of(engine, "abc-123")] == [0, 1, 2]
    engine.dispose()


def test_models_routes(client: Any, tokens: Tokens) -> None:
    r = client.get("/v1/models", headers=bearer(tokens.reviewer))
    assert r.status_code == 200, r.text
    body = r.json()
    (model,) = body["models"]
    assert model["serving"] and model["version"] == body["serving"]
    assert model["tasks"][0]["labels"] == ["it", "leave", "payroll"]
    one = client.get(f"/v1/models/{body['serving']}", headers=bearer(tokens.client))
    assert one.status_code == 200 and one.json()["version"] == body["serving"]
    missing = client.get("/v1/models/nope-123", headers=bearer(tokens.client))
    assert missing.status_code == 404 and "GET /v1/models lists" in missing.json()["detail"]


def test_health_and_ready_are_open(client: Any) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
