"""Many requests at once: micro-batched, all answered, all stored; a model swap under load fails none."""

from __future__ import annotations

import asyncio
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from hrlm.service import ServiceSettings, create_app
from hrlm.service.served_model import ModelRef, folder_version
from hrlm.store import make_engine
from hrlm.store.records import count_predictions, stored_request_ids
from tests.conftest import make_texts
from tests.service.conftest import Tokens, bearer, running


async def _serve(app: Any, calls: Any) -> Any:
    """Run ``calls(client)`` against ``app`` with its lifespan started."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hrlm") as client:
            return await calls(client)


def test_many_parallel_requests_all_answered_all_stored(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    texts = [t for t, _ in make_texts(70, seed=3)]  # 210 texts
    app = create_app(ServiceSettings(model=str(trained_model), database_url=db_url, max_batch=16, rate_limit=0))

    async def calls(client: httpx.AsyncClient) -> list[httpx.Response]:
        async def one(i: int) -> httpx.Response:
            body = {"text": texts[i]} if i % 3 else {"texts": texts[i : i + 3]}
            return await client.post("/v1/predict", json=body, headers=bearer(tokens.client))

        return await asyncio.gather(*(one(i) for i in range(200)))

    responses = asyncio.run(_serve(app, calls))
    assert [r.status_code for r in responses] == [200] * 200
    bodies = [r.json() for r in responses]
    assert all(b["stored"] for b in bodies)
    expected = sum(len(b["predictions"]) if "predictions" in b else 1 for b in bodies)
    engine = make_engine(db_url)
    assert count_predictions(engine) == expected
    assert stored_request_ids(engine) == {b["request_id"] for b in bodies}
    engine.dispose()
    sample = app.state.service.metrics.registry.get_sample_value
    # requests were grouped: far fewer model calls than requests
    assert sample("hrlm_batch_size_sum") == expected
    assert 0 < sample("hrlm_batch_size_count") < 200 / 2


def _second_model(trained: Path, tmp_path: Path) -> Path:
    """A copy of the tiny model whose labels carry a -b suffix, so an answer tells which model gave it."""
    other = tmp_path / "tiny-b"
    shutil.copytree(trained, other)
    meta = json.loads((other / "hrlm.json").read_text())
    for task in meta["tasks"]:
        task["labels"] = [f"{label}-b" for label in task["labels"]]
    (other / "hrlm.json").write_text(json.dumps(meta))
    return other


@dataclass
class TwoVersions:
    """A stand-in for the registry: two versions, one of them current."""

    refs: dict[str, ModelRef]
    now: str

    def current(self) -> ModelRef:
        return self.refs[self.now]

    def versions(self) -> list[ModelRef]:
        return list(self.refs.values())


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_swap_under_load_fails_no_request(trained_model: Path, tmp_path: Path, db_url: str, tokens: Tokens) -> None:
    b = _second_model(trained_model, tmp_path)
    a_ref = ModelRef(folder_version(trained_model), trained_model, "production")
    b_ref = ModelRef(folder_version(b), b, "candidate")
    assert a_ref.version != b_ref.version
    source = TwoVersions({a_ref.version: a_ref, b_ref.version: b_ref}, a_ref.version)
    app = create_app(ServiceSettings(database_url=db_url, max_batch=8, rate_limit=0), source=source)
    service = app.state.service
    texts = [t for t, _ in make_texts(40, seed=5)]

    async def calls(client: httpx.AsyncClient) -> tuple[list[httpx.Response], list[httpx.Response], Any]:
        swapped = asyncio.Event()

        async def one(i: int) -> httpx.Response:
            return await client.post("/v1/predict", json={"text": texts[i % len(texts)]}, headers=bearer(tokens.client))

        async def stream(k: int) -> list[httpx.Response]:
            # 8 clients send requests back to back until the swap is done, and 3 more each after it
            out, i, extra = [], k, 3
            while extra > 0:
                extra -= swapped.is_set()
                out.append(await one(i))
                i += 8
            return out

        during = asyncio.gather(*(stream(k) for k in range(8)))
        await asyncio.sleep(0.05)
        source.now = b_ref.version  # promotion
        assert await service.reload() is True
        swapped.set()
        assert await service.reload() is False  # already serving it
        first = [r for rs in await during for r in rs]
        after = await asyncio.gather(*(one(i) for i in range(20)))
        models = await client.get("/v1/models", headers=bearer(tokens.admin))
        return first, after, models.json()

    during, after, models = asyncio.run(_serve(app, calls))
    assert {r.status_code for r in during + after} == {200} and len(during) >= 8 * 4
    # the swap happened under load: answers from both versions, none failed
    assert {r.json()["model_version"] for r in during} == {a_ref.version, b_ref.version}
    for r in during + after:  # every answer is consistent with the version it names
        body = r.json()
        assert body["prediction"]["label"].endswith("-b") == (body["model_version"] == b_ref.version)
    assert {r.json()["model_version"] for r in after} == {b_ref.version}
    assert models["serving"] == b_ref.version and len(models["models"]) == 2
    assert service.metrics.registry.get_sample_value("hrlm_model_swaps_total") == 1


def test_a_store_failure_still_answers_and_is_counted(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url) as client:
        engine = make_engine(db_url)
        with engine.begin() as conn:
            conn.exec_driver_sql("ALTER TABLE predictions RENAME TO predictions_gone")  # writes now fail
        engine.dispose()
        r = client.post("/v1/predict", json={"texts": ["vpn login", "my salary"]}, headers=bearer(tokens.client))
        assert r.status_code == 200 and r.json()["stored"] is False
        assert [p["label"] for p in r.json()["predictions"]] == ["it", "payroll"]
        text = client.get("/metrics", headers=bearer(tokens.admin)).text
        assert "hrlm_store_write_failures_total 1.0" in text
        assert "hrlm_store_failed_records_total 2.0" in text


def test_metrics_report_requests_batches_queue_and_model(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, metrics_open=True) as client:
        for _ in range(3):
            client.post("/v1/predict", json={"text": "vpn login"}, headers=bearer(tokens.client))
        client.post("/v1/predict", json={"text": "vpn login"})
        version = client.get("/v1/models", headers=bearer(tokens.client)).json()["serving"]
        text = client.get("/metrics").text  # metrics_open: no token needed
    assert 'hrlm_http_requests_total{method="POST",route="/v1/predict",status="200"} 3.0' in text
    assert 'hrlm_http_requests_total{method="POST",route="/v1/predict",status="401"} 1.0' in text
    assert 'hrlm_http_request_duration_seconds_bucket{le="0.5",method="GET",route="/v1/models",status="200"}' in text
    assert "hrlm_batch_size_count 3.0" in text and "hrlm_queue_depth 0.0" in text
    assert f'hrlm_model_info{{version="{version}"}} 1.0' in text
    assert "hrlm_store_write_failures_total 0.0" in text
