"""Errors a hostile or careless client meets: never a 500, never a server path, never its own input
quoted in full; clear words for bodies that are not JSON; token guessing throttled; pages and
answers with the headers they need."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pytest

from hrlm.service.auth import FailureThrottle
from tests.service.conftest import Tokens, bearer, running


def _serving(client: Any, tokens: Tokens) -> str:
    version: str = client.get("/v1/models", headers=bearer(tokens.admin)).json()["serving"]
    return version


@pytest.mark.parametrize(
    "name",
    ["%00", "a%00b", "a" * 300, "x/" + "b" * 256, "%01report.html", "%ED%A0%80", "a" * 2000],
    ids=["nul", "nul-inside", "300-chars", "long-part", "control", "lone-surrogate", "2000-chars"],
)
def test_a_report_name_no_file_system_holds_is_no_such_file_not_a_500(
    client: Any, tokens: Tokens, trained_model: Path, name: str
) -> None:
    r = client.get(f"/v1/models/{_serving(client, tokens)}/report/{name}", headers=bearer(tokens.reviewer))
    assert r.status_code in (404, 422), r.text
    detail = r.json()["detail"]
    assert ("no report file" in detail and "metrics.json" in detail) or "at most 1024 characters" in detail
    assert len(r.text) < 1000 and str(trained_model) not in r.text


def test_a_409_names_the_model_not_the_servers_folder(client: Any, tokens: Tokens, trained_model: Path) -> None:
    for path in ("/v1/models/rollback", f"/v1/models/{_serving(client, tokens)}/promote"):
        r = client.post(path, headers=bearer(tokens.admin))
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "--model" in detail and _serving(client, tokens) in detail
        assert str(trained_model) not in r.text and str(trained_model.parent) not in r.text


def test_errors_quote_only_a_short_prefix_of_what_was_sent(client: Any, tokens: Tokens) -> None:
    long = "v" * 150
    r = client.get(f"/v1/models/{long}", headers=bearer(tokens.client))
    assert r.status_code == 404 and "v" * 40 + "…" in r.json()["detail"] and "v" * 41 not in r.text
    huge = "w" * 10_000
    for method, path in [
        ("get", f"/v1/models/{huge}"),
        ("get", f"/v1/models/{huge}/report"),
        ("get", f"/v1/models/x/report/{huge}"),
        ("get", f"/v1/jobs/{huge}"),
        ("post", f"/v1/models/{huge}/promote"),
    ]:
        r = client.request(method, path, headers=bearer(tokens.admin))
        assert r.status_code in (404, 409, 422), (path[:40], r.status_code)
        assert "w" * 41 not in r.text and len(r.text) < 1000, (path[:40], r.text[:200])
    # an unknown key of any length is named by its start only
    r = client.post("/v1/predict", json={"text": "vpn", "k" * 10_000: 1}, headers=bearer(tokens.client))
    assert r.status_code == 422 and "k" * 41 not in r.text and "k" * 40 + "…" in r.text


def test_a_403_names_the_route_not_the_path_sent(client: Any, tokens: Tokens) -> None:
    r = client.get(f"/v1/models/{'z' * 150}/history", headers=bearer(tokens.client))
    assert r.status_code == 403 and "/v1/models/{version}/history" in r.json()["detail"] and "z" * 41 not in r.text


def test_token_guessing_is_throttled_per_address(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, auth_fail_limit=10, auth_fail_window_s=60) as client:
        codes = []
        for _ in range(100):
            guess = f"hrlm_{secrets.token_hex(6)}_{secrets.token_urlsafe(32)}"
            r = client.get("/v1/models", headers=bearer(guess))
            codes.append(r.status_code)
            if r.status_code == 429:
                assert 1 <= int(r.headers["retry-after"]) <= 60
                assert "too many invalid API tokens" in r.json()["detail"]
        assert codes[:10] == [401] * 10 and codes[10:] == [429] * 90
        # the address is locked out, whatever it sends: a correct guess would not tell itself apart
        assert client.get("/v1/models", headers=bearer(tokens.client)).status_code == 429
        # open routes stay open
        assert client.get("/healthz").status_code == 200
        metrics = client.app.state.service.metrics.registry
        assert metrics.get_sample_value("hrlm_auth_failures_total", {"status": "429"}) == 91
    with running(trained_model, db_url, auth_fail_limit=0) as client:  # 0 turns it off
        codes = [client.get("/v1/models", headers=bearer("nope")).status_code for _ in range(30)]
        assert set(codes) == {401}
        assert client.get("/v1/models", headers=bearer(tokens.client)).status_code == 200


def test_the_throttle_counts_each_address_alone_and_forgets_after_its_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [1000.0]
    monkeypatch.setattr("hrlm.service.auth.time.monotonic", lambda: now[0])
    throttle = FailureThrottle(limit=3, window_s=60, max_addresses=2)
    for _ in range(3):
        throttle.failed("10.0.0.1")
    throttle.failed("10.0.0.2")
    assert throttle.wait("10.0.0.1") == 60 and throttle.wait("10.0.0.2") is None
    now[0] += 30
    assert throttle.wait("10.0.0.1") == 30
    now[0] += 30.5
    assert throttle.wait("10.0.0.1") is None
    for address in ("a", "b", "c"):  # a third address pushes out the oldest: memory stays bounded
        throttle.failed(address)
    assert len(throttle._failures) <= 2


def test_bodies_that_are_not_json_get_words_that_say_what_to_send(client: Any, tokens: Tokens) -> None:
    auth = bearer(tokens.client)
    r = client.post("/v1/predict", content=b'{"text": }', headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 422, r.text
    assert "not valid JSON at character 9" in r.json()["detail"] and "send a JSON body" in r.json()["detail"]
    r = client.post("/v1/predict", content=b'{"text": "vpn"}', headers={**auth, "Content-Type": "text/plain"})
    assert r.status_code == 415 and "Content-Type: application/json" in r.json()["detail"], r.text
    assert "'text/plain'" in r.json()["detail"]
    r = client.post("/v1/predict", content=b'{"text": "vpn"}', headers=auth)
    assert r.status_code == 415 and "no Content-Type" in r.json()["detail"]
    r = client.post("/v1/predict", content=b'{"text": "caf\xe9"}', headers={**auth, "Content-Type": "application/json"})
    assert r.status_code == 400 and r.json()["error"] == "InvalidEncoding"
    assert "not valid UTF-8 (byte 13" in r.json()["detail"] and "encoded as UTF-8" in r.json()["detail"]
    # JSON of the wrong shape is still a 422 about the body
    r = client.post("/v1/predict", json=["vpn"], headers=auth)
    assert r.status_code == 422


@pytest.mark.parametrize("path", ["/ui/review", "/ui/admin", "/static/review.js"])
def test_head_of_a_page_answers_as_get_does(client: Any, path: str) -> None:
    got, head = client.get(path), client.head(path)
    assert got.status_code == head.status_code == 200
    assert head.content == b""
    for name in ("content-security-policy", "content-type", "cache-control", "x-content-type-options"):
        assert head.headers.get(name) == got.headers.get(name), name
    if path.startswith("/ui/"):
        assert "default-src 'none'" in head.headers["content-security-policy"]


def test_every_api_answer_says_no_store(client: Any, tokens: Tokens) -> None:
    auth = bearer(tokens.admin)
    answers = [
        client.post("/v1/predict", json={"text": "vpn"}, headers=auth),
        client.get("/v1/models", headers=auth),
        client.get("/v1/review/stats", headers=auth),
        client.get("/v1/models/nope", headers=auth),
        client.post("/v1/predict", json={}, headers=auth),
        client.get("/v1/models"),
        client.get("/healthz"),
        client.get("/openapi.json", headers=auth),
    ]
    for r in answers:
        assert r.headers["cache-control"] == "no-store", (r.request.url, r.status_code)
    # the static files of the pages hold no data and may be cached
    assert "max-age" in client.get("/static/review.js").headers["cache-control"]


def test_the_api_docs_load_nothing_from_another_host(client: Any, tokens: Tokens) -> None:
    import re

    page = client.get("/docs", headers=bearer(tokens.client))
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(s.startswith("/") and not s.startswith("//") for s in sources), sources
    assert "://" not in page.text, re.findall(r"\S*://\S*", page.text)
    # the script and style come from the installed package, and need no token (they hold no data)
    script, style = client.get("/docs/swagger-ui-bundle.js"), client.get("/docs/swagger-ui.css")
    assert script.status_code == style.status_code == 200
    assert script.headers["content-type"].startswith("text/javascript") and len(script.content) > 100_000
    assert style.headers["content-type"].startswith("text/css")
    assert client.get("/docs/other.js").status_code == 401  # nothing else of the package is served
    assert client.get("/redoc", headers=bearer(tokens.client)).status_code == 404  # ReDoc would need a CDN
