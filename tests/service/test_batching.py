"""The micro-batcher on its own: grouping, limits, batching off, timeouts, failures."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest

from hrlm.errors import Overloaded
from hrlm.service.batching import MicroBatcher, PendingRequest


class Model:
    """Records every call; answers each text with its length, from the worker thread."""

    def __init__(self, delay: float = 0.0, fail: bool = False) -> None:
        self.calls: list[list[str]] = []
        self.threads: set[str] = set()
        self.delay = delay
        self.fail = fail

    def __call__(self, texts: list[str]) -> list[int]:
        self.calls.append(texts)
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if self.fail:
            raise RuntimeError("model broke")
        return [len(t) for t in texts]


async def _finish(jobs: list[PendingRequest], result: Any, seconds: float) -> None:
    i = 0
    for job in jobs:
        job.future.set_result(result[i : i + len(job.texts)])
        i += len(job.texts)


def _run(model: Model, requests: list[list[str]], **kw: Any) -> list[Any]:
    async def main() -> list[Any]:
        batcher = MicroBatcher(model, _finish, **kw)
        batcher.start()
        futures = [batcher.submit(texts) for texts in requests]
        try:
            return await asyncio.gather(*futures, return_exceptions=True)
        finally:
            await batcher.close()

    return asyncio.run(main())


def test_concurrent_requests_share_calls_up_to_max_batch() -> None:
    model = Model()
    requests = [["a" * i] for i in range(1, 11)] + [["x", "yy", "zzz"]]
    answers = _run(model, requests, max_batch=4, max_wait_s=0.05)
    assert answers == [[i] for i in range(1, 11)] + [[1, 2, 3]]
    assert [len(c) for c in model.calls] == [4, 4, 2, 3]  # a request's texts are never split
    assert model.threads == {"hrlm-model_0"}  # one worker thread, never the event loop


def test_batching_off_is_one_request_per_call() -> None:
    model = Model()
    answers = _run(model, [["a"], ["bb", "cc"], ["d"]], enabled=False)
    assert answers == [[1], [2, 2], [1]]
    assert model.calls == [["a"], ["bb", "cc"], ["d"]]


def test_a_request_larger_than_max_batch_is_one_call() -> None:
    model = Model()
    assert _run(model, [["a"] * 10], max_batch=4) == [[1] * 10]
    assert len(model.calls) == 1


def test_a_lone_request_waits_at_most_max_wait() -> None:
    model = Model()
    start = time.perf_counter()
    _run(model, [["a"]], max_batch=64, max_wait_s=0.05)
    assert 0.04 < time.perf_counter() - start < 1.0


def test_model_failure_fails_the_batch_not_the_batcher() -> None:
    answers = _run(Model(fail=True), [["a"], ["b"]])
    assert all(isinstance(a, RuntimeError) for a in answers)


def test_full_queue_and_cancelled_jobs() -> None:
    async def main() -> tuple[Model, list[Any]]:
        model = Model(delay=0.05)
        batcher = MicroBatcher(model, _finish, max_batch=2, max_wait_s=0.0, max_queue=3)
        batcher.start()
        first = batcher.submit(["a", "b"])
        await asyncio.sleep(0.01)  # the first call is running; the queue is empty again
        waiting = batcher.submit(["c", "d", "e"])
        with pytest.raises(Overloaded, match="max_queue = 3"):
            batcher.submit(["f"])
        waiting.cancel()  # a request that timed out while queued is never computed
        last = batcher.submit(["g"])
        out = [await first, await last]
        await batcher.close()
        return model, out

    model, out = asyncio.run(main())
    assert out == [[1, 1], [1]]
    assert model.calls == [["a", "b"], ["g"]]
