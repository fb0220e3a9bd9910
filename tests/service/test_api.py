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


def test_predict_list_keeps_order_and_the_clients_request_id_beside_its_own(
    client: Any, tokens: Tokens, db_url: str
) -> None:
    texts = ["vpn login locked", "my salary is late", "sick leave days off"]
    sent = {**bearer(tokens.admin), "X-Request-ID": "abc-123"}
    first, second = (client.post("/v1/predict", json={"texts": texts}, headers=sent) for _ in range(2))
    assert first.status_code == second.status_code == 200, first.text
    a, b = first.json(), second.json()
    # two requests with one client id get two server ids: neither is filed under the other's
    assert a["request_id"] != b["request_id"] and "abc-123" not in (a["request_id"], b["request_id"])
    assert a["client_request_id"] == b["client_request_id"] == "abc-123"
    assert first.headers["x-request-id"] == a["request_id"] and first.headers["x-client-request-id"] == "abc-123"
    assert [p["label"] for p in a["predictions"]] == ["it", "payroll", "leave"]
    engine = make_engine(db_url)
    try:
        for body in (a, b):
            rows = predictions_of(engine, body["request_id"])
            assert [row["position"] for row in rows] == [0, 1, 2]
            assert {row["client_request_id"] for row in rows} == {"abc-123"}
        assert predictions_of(engine, "abc-123") == []
    finally:
        engine.dispose()
    plain = client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.admin))
    assert "client_request_id" not in plain.json() and "x-client-request-id" not in plain.headers
    # an id that is not a short token of safe characters is not kept (nor echoed)
    odd = client.post("/v1/predict", json={"text": "vpn"}, headers={**bearer(tokens.admin), "X-Request-ID": "a b"})
    assert odd.status_code == 200 and "client_request_id" not in odd.json()


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


def test_migration_0003_adds_client_request_id_to_stored_predictions_and_back(db_url: str) -> None:
    from sqlalchemy import inspect, text

    from hrlm.store import upgrade
    from hrlm.store.db import MIGRATIONS

    engine = make_engine(db_url)
    try:
        upgrade(engine, "0002")
        with engine.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO predictions (request_id, position, created_at, model_version, label, confidence, "
                    "output, latency_ms, batch_size) VALUES ('old', 0, CURRENT_TIMESTAMP, 'v1', 'it', 0.9, '{}', 1, 1)"
                )
            )
        assert upgrade(engine) == "0006"
        assert "client_request_id" in {c["name"] for c in inspect(engine).get_columns("predictions")}
        (row,) = predictions_of(engine, "old")
        assert row["client_request_id"] is None and row["label"] == "it"

        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0002")
        assert "client_request_id" not in {c["name"] for c in inspect(engine).get_columns("predictions")}
    finally:
        engine.dispose()
