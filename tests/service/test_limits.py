"""Every refusal of the API: 401, 403, 413, 422, 429, 503, 504; none lets a request reach the model or the store."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from hrlm.store import make_engine, revoke_user
from hrlm.store.records import count_predictions
from tests.service.conftest import Tokens, bearer, running


def _stored(db_url: str) -> int:
    engine = make_engine(db_url)
    try:
        return count_predictions(engine)
    finally:
        engine.dispose()


def _batches(client: Any) -> float:
    """Model calls made so far."""
    return client.app.state.service.metrics.registry.get_sample_value("hrlm_batch_size_count") or 0.0


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer hrlm_000000000000_" + "A" * 43},
    ],
    ids=["none", "garbage", "basic", "unknown"],
)
def test_401_without_a_valid_token(client: Any, db_url: str, headers: dict[str, str]) -> None:
    for method, path in [("post", "/v1/predict"), ("get", "/v1/models"), ("get", "/v1/models/x"), ("get", "/metrics")]:
        r = client.request(method, path, json={"text": "my salary"}, headers=headers)
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"] == "Unauthorized" and "hrlm users add" in r.json()["detail"]
    assert _batches(client) == 0 and _stored(db_url) == 0


def test_a_token_that_almost_matches_is_refused(client: Any, tokens: Tokens, db_url: str) -> None:
    forged = tokens.client[:-1] + ("A" if tokens.client[-1] != "A" else "B")
    r = client.post("/v1/predict", json={"text": "my salary"}, headers=bearer(forged))
    assert r.status_code == 401
    assert _stored(db_url) == 0


def test_403_for_the_wrong_role(client: Any, tokens: Tokens, db_url: str) -> None:
    r = client.post("/v1/predict", json={"text": "my salary"}, headers=bearer(tokens.reviewer))
    assert r.status_code == 403 and "needs role client or admin" in r.json()["detail"]
    r = client.get("/metrics", headers=bearer(tokens.client))
    assert r.status_code == 403
    assert client.get("/metrics", headers=bearer(tokens.admin)).status_code == 200
    assert _batches(client) == 0 and _stored(db_url) == 0


def test_revoked_token_is_refused(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, auth_cache_s=0) as client:
        assert client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.client)).status_code == 200
        engine = make_engine(db_url)
        assert revoke_user(engine, "client") == 1
        engine.dispose()
        r = client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.client))
        assert r.status_code == 401 and "revoked" in r.json()["detail"]


def test_413_for_a_large_body(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, max_body_bytes=2048) as client:
        big = {"texts": ["my salary is late " * 20] * 10}
        r = client.post("/v1/predict", json=big, headers=bearer(tokens.client))
        assert r.status_code == 413 and "max_body_bytes = 2048" in r.json()["detail"]
        # chunked, without Content-Length: counted while it streams in
        chunks = [b'{"texts": [', *[b'"salary salary salary", ' for _ in range(200)], b'"x"]}']
        r = client.post(
            "/v1/predict", content=iter(chunks), headers={**bearer(tokens.client), "Content-Type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"] == "PayloadTooLarge"
        assert _stored(db_url) == 0


BAD_BODIES = [
    ({"texts": ["a", "b", "c", "d"]}, "limit max_texts = 3"),
    ({"text": "salary " * 20}, "limit max_text_chars = 50"),
    ({"texts": ["ok", "salary " * 20]}, "limit max_text_chars = 50"),
    ({"texts": []}, "texts: List should have at least 1 item"),
    ({"text": "a", "texts": ["b"]}, 'exactly one of "text"'),
    ({}, 'exactly one of "text"'),
    ({"text": 3}, "text: Input should be a valid string"),
    ({"texts": "not a list"}, "texts: Input should be a valid list"),
    ({"text": "a", "extra": 1}, "extra: Extra inputs are not permitted"),
    ([1, 2], "Input should be a valid dictionary"),
]


def test_422_names_the_problem(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, max_texts=3, max_text_chars=50) as client:
        for body, needle in BAD_BODIES:
            r = client.post("/v1/predict", json=body, headers=bearer(tokens.client))
            assert r.status_code == 422, (body, r.text)
            assert needle in r.json()["detail"], (body, r.text)
        bad = client.post(
            "/v1/predict", content=b"{not json", headers={**bearer(tokens.client), "Content-Type": "application/json"}
        )
        assert bad.status_code == 422 and "JSON" in bad.json()["detail"]
        assert _stored(db_url) == 0


def test_429_with_retry_after(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, rate_limit=6, rate_burst=2) as client:
        codes = [
            client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.client)).status_code
            for _ in range(2)
        ]
        r = client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.client))
        assert codes == [200, 200] and r.status_code == 429
        assert int(r.headers["retry-after"]) >= 1 and "rate limit of 6 requests a minute" in r.json()["detail"]
        # the limit is per token: another token is still served
        assert client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.admin)).status_code == 200


def test_504_when_no_answer_in_time_and_nothing_is_computed(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    # a batch that waits half a second to fill, a timeout of 0.1 s: the request times out while queued
    with running(trained_model, db_url, max_wait_ms=500, max_batch=64, request_timeout_s=0.1) as client:
        r = client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.client))
        assert r.status_code == 504 and "request_timeout_s = 0.1" in r.json()["detail"]
        time.sleep(0.6)
        assert _batches(client) == 0 and _stored(db_url) == 0


def test_503_with_retry_after_when_the_queue_is_full(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, max_wait_ms=800, max_batch=64, max_queue=3) as client:
        first: dict[str, Any] = {}

        def send() -> None:
            first["r"] = client.post("/v1/predict", json={"texts": ["a", "b", "c"]}, headers=bearer(tokens.client))

        thread = threading.Thread(target=send)
        thread.start()
        time.sleep(0.3)  # the first request now waits in the queue for its batch to fill
        r = client.post("/v1/predict", json={"text": "vpn"}, headers=bearer(tokens.client))
        thread.join()
        assert r.status_code == 503 and r.headers["retry-after"] == "1" and "max_queue = 3" in r.json()["detail"]
        assert first["r"].status_code == 200
