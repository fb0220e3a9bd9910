"""Hostile input never costs another request its record, and never a 500; on SQLite and PostgreSQL.

Texts a database refuses (NUL, lone surrogates sent as JSON ``\\ud800`` escapes), texts with
nothing visible, texts and bodies over the limits, and bodies that are not JSON are sent at the same
time as normal requests, so they share micro-batches and group commits with them. Every normal
request must be answered and stored; every hostile one must get a 4xx.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, get_args, get_origin

import httpx
import pytest
from fastapi.routing import APIRoute
from pydantic import BaseModel

from hrlm.service import ServiceSettings, create_app
from hrlm.service import recorder as recorder_module
from hrlm.service.schemas.predict import StoredStr, _storable
from hrlm.store import make_engine
from hrlm.store.records import count_predictions, predictions_of
from tests.conftest import make_texts
from tests.service.conftest import Tokens, bearer

pytestmark = pytest.mark.hostile

JSON = {"Content-Type": "application/json"}
# (raw body, the field a 422 must name or None for any 4xx): JSON escapes exactly as a client sends them
HOSTILE: list[tuple[bytes, str | None]] = [
    (b'{"text": "VPN \\u0000 login"}', "text: the string holds a NUL character"),
    (b'{"text": "\\ud800 a lone high surrogate"}', "text: the string holds a lone surrogate (U+D800"),
    (b'{"text": "a lone low surrogate \\udc00"}', "text: the string holds a lone surrogate (U+DC00"),
    (b'{"texts": ["my payslip is late", "\\u0000\\u0000"]}', "texts.1: the string holds a NUL character"),
    (b'{"text": ""}', "text: the text is empty"),
    (b'{"text": "   \\t\\n "}', "text: the text has only white space and control characters"),
    (b'{"text": "\\u0001\\u0002\\u007f"}', "text: the text has only white space and control characters"),
    (b'{"texts": ["ok", "\\u200b\\ufeff"]}', "texts.1: the text has only white space"),
    (json.dumps({"text": "salary " * 3000}).encode(), "max_text_chars"),
    (json.dumps({"text": "x" * 1_100_000}).encode(), None),  # over max_body_bytes: 413
    (b'{"text": "\xff\xfe not UTF-8"}', None),
    (b'{"text": "VPN', None),
]


def _bare_strings(tp: Any, metadata: tuple[Any, ...] = (), where: str = "") -> list[str]:
    """The places in a request body's type where a ``str`` is not a :data:`StoredStr`."""
    if get_origin(tp) is Annotated:
        base, *more = get_args(tp)
        return _bare_strings(base, (*metadata, *more), where)
    if tp is str:
        return [] if any(getattr(m, "func", None) is _storable for m in metadata) else [where]
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [
            bare
            for name, field in tp.model_fields.items()
            for bare in _bare_strings(field.annotation, tuple(field.metadata), f"{tp.__name__}.{name}")
        ]
    return [bare for arg in get_args(tp) for bare in _bare_strings(arg, (), where)]


def _api_routes(routes: list[Any]) -> list[APIRoute]:
    """Every API route, inside included routers too (FastAPI 0.165 keeps those behind ``original_router``)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += _api_routes(route.original_router.routes)
    return found


def test_every_string_of_every_request_body_refuses_what_a_database_cannot_store(
    trained_model: Path, tmp_path: Path
) -> None:
    class Forgetful(BaseModel):
        ok: StoredStr
        note: str | None = None
        tags: list[str] = []

    assert _bare_strings(Forgetful) == ["Forgetful.note", "Forgetful.tags"]  # the check sees a forgotten field

    app = create_app(ServiceSettings(model=str(trained_model), database_url=f"sqlite:///{tmp_path / 'x.db'}"))
    bodies = [r.body_field for r in _api_routes(app.routes) if r.body_field is not None]
    checked = [b.field_info.annotation for b in bodies]
    names = {m.__name__ for tp in checked for m in (tp, *get_args(tp)) if isinstance(m, type)}
    assert {"PredictRequest", "ReviewAnswerIn", "ReasonIn", "PromoteIn", "RetrainIn"} <= names
    assert [bare for tp in checked for bare in _bare_strings(tp)] == []


async def _serve(app: Any, calls: Callable[[httpx.AsyncClient], Awaitable[Any]]) -> Any:
    """Run ``calls(client)`` against ``app`` with its lifespan started."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hrlm") as client:
            return await calls(client)


def _normal_bodies(n: int) -> list[dict[str, Any]]:
    texts = [t for t, _ in make_texts(n, seed=11)]
    return [{"text": texts[i]} if i % 4 else {"texts": texts[i : i + 3]} for i in range(n)]


def test_hostile_texts_among_normal_ones_cost_no_record_and_no_500(
    trained_model: Path, db_url: str, tokens: Tokens
) -> None:
    normal = _normal_bodies(24)
    app = create_app(
        ServiceSettings(model=str(trained_model), database_url=db_url, rate_limit=0, max_batch=64, max_wait_ms=20)
    )

    async def calls(client: httpx.AsyncClient) -> tuple[list[httpx.Response], list[httpx.Response]]:
        auth = bearer(tokens.client)
        good: list[httpx.Response] = []
        bad: list[httpx.Response] = []
        for round_ in range(3):  # rounds of 8 normal requests sent at once with every hostile body
            mine = normal[round_ * 8 : (round_ + 1) * 8]
            answers = await asyncio.gather(
                *(client.post("/v1/predict", json=body, headers=auth) for body in mine),
                *(client.post("/v1/predict", content=raw, headers={**auth, **JSON}) for raw, _ in HOSTILE),
            )
            good += answers[: len(mine)]
            bad += answers[len(mine) :]
        return good, bad

    good, bad = asyncio.run(_serve(app, calls))

    assert [r.status_code for r in good] == [200] * len(normal)
    assert all(r.json()["stored"] for r in good)
    for r, (_, expected) in zip(bad, HOSTILE * 3, strict=True):
        assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
        if expected is not None:
            assert r.status_code == 422 and expected in r.json()["detail"], r.json()["detail"]
    engine = make_engine(db_url)
    try:
        for body, r in zip(normal, good, strict=True):
            rows = predictions_of(engine, r.json()["request_id"])
            assert [row["position"] for row in rows] == list(range(len(body.get("texts", [None]))))
        assert count_predictions(engine) == sum(len(b.get("texts", [None])) for b in normal)  # none of the hostile
    finally:
        engine.dispose()
    assert app.state.service.metrics.registry.get_sample_value("hrlm_store_write_failures_total") == 0


def test_one_failing_record_costs_only_its_own_request_stored_true(
    trained_model: Path, db_url: str, tokens: Tokens, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = recorder_module.insert_predictions
    calls: list[set[str]] = []

    def insert(engine: Any, rows: list[dict[str, Any]]) -> None:
        calls.append({r["request_id"] for r in rows})
        if len(calls) == 1:
            time.sleep(0.3)  # the first write is slow, so the next ones queue up and share one group
        if any("POISON" in (r["text"] or "") for r in rows):
            raise ValueError("injected failure of one record")
        real(engine, rows)

    monkeypatch.setattr(recorder_module, "insert_predictions", insert)
    normal = _normal_bodies(24)
    poisoned = [
        {"texts": ["my payslip is late", "POISON pill", "vpn login fails"]},  # two good records beside a bad one
        {"text": "POISON alone"},
    ]
    app = create_app(ServiceSettings(model=str(trained_model), database_url=db_url, rate_limit=0))

    async def all_at_once(client: httpx.AsyncClient) -> list[httpx.Response]:
        auth = bearer(tokens.client)
        sent = (client.post("/v1/predict", json=b, headers=auth) for b in normal + poisoned)
        return list(await asyncio.gather(*sent))

    with caplog.at_level(logging.ERROR, logger="hrlm.service"):
        answers = asyncio.run(_serve(app, all_at_once))

    assert [r.status_code for r in answers] == [200] * len(answers)
    good, bad = answers[: len(normal)], answers[len(normal) :]
    assert all(r.json()["stored"] for r in good)
    assert [r.json()["stored"] for r in bad] == [False, False]
    ids = [r.json()["request_id"] for r in bad]
    assert any(ids[0] in c and len(c) > 1 for c in calls), "the poisoned request never shared a group write"
    engine = make_engine(db_url)
    try:
        for body, r in zip(normal, good, strict=True):
            assert len(predictions_of(engine, r.json()["request_id"])) == len(body.get("texts", [None]))
        assert [row["position"] for row in predictions_of(engine, ids[0])] == [0, 2]  # its good records are kept
        assert predictions_of(engine, ids[1]) == []
    finally:
        engine.dispose()
    sample = app.state.service.metrics.registry.get_sample_value
    assert (sample("hrlm_store_write_failures_total"), sample("hrlm_store_failed_records_total")) == (2, 2)
    logged = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(logged) == 2 and all("injected failure" in m for m in logged)
    assert any(f"record 1 of request {ids[0]}" in m for m in logged)
    assert any(f"record 0 of request {ids[1]}" in m for m in logged)
    assert not any("POISON" in m for m in logged)  # the log names the record, never its text


def test_every_stored_string_of_the_api_refuses_nul_and_lone_surrogates(
    trained_model: Path, db_url: str, tokens: Tokens
) -> None:
    app = create_app(ServiceSettings(model=str(trained_model), database_url=db_url, rate_limit=0))

    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        admin, reviewer = {**bearer(tokens.admin), **JSON}, {**bearer(tokens.reviewer), **JSON}
        version = (await client.get("/v1/models", headers=admin)).json()["serving"]
        return [
            await client.post(
                "/v1/review/items/1", content=b'{"action": "flag", "note": "a\\u0000"}', headers=reviewer
            ),
            await client.post(
                "/v1/review/items/1", content=b'{"action": "correct", "labels": ["it", "\\udbff"]}', headers=reviewer
            ),
            await client.post(
                "/v1/review/items/1", content=b'{"action": "correct", "label": "\\u0000"}', headers=admin
            ),
            await client.post(f"/v1/models/{version}/promote", content=b'{"reason": "\\ud800"}', headers=admin),
            await client.post("/v1/models/rollback", content=b'{"reason": "x\\u0000"}', headers=admin),
            await client.post("/v1/retrain", content=b'{"base": "v\\u0000"}', headers=admin),
        ]

    answers = asyncio.run(_serve(app, calls))
    fields = ["note", "labels.1", "label", "reason", "reason", "base"]
    for r, field in zip(answers, fields, strict=True):
        assert r.status_code == 422, r.text
        assert r.json()["detail"].startswith(f"{field}: the string holds a "), r.json()["detail"]
        assert "which cannot be stored" in r.json()["detail"]


def test_texts_with_nothing_visible_pass_only_when_the_setting_allows_them(
    trained_model: Path, db_url: str, tokens: Tokens
) -> None:
    for allow in (False, True):
        app = create_app(ServiceSettings(model=str(trained_model), database_url=db_url, allow_empty_texts=allow))

        async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
            auth = {**bearer(tokens.client), **JSON}
            bodies = [b'{"text": "  "}', b'{"texts": ["ok", "\\u0001"]}', b'{"text": "\\u0000"}']
            return [await client.post("/v1/predict", content=b, headers=auth) for b in bodies]

        blank, control, nul = asyncio.run(_serve(app, calls))
        assert nul.status_code == 422 and "NUL character" in nul.json()["detail"]  # never storable, setting or not
        if allow:
            assert (blank.status_code, control.status_code) == (200, 200)
            assert blank.json()["stored"] and control.json()["stored"]
        else:
            assert blank.json()["detail"] == (
                "text: the text has only white space and control characters: there is nothing to classify; "
                "send a text with something to read."
            )
            assert control.status_code == 422 and control.json()["detail"].startswith("texts.1: the text has only")
