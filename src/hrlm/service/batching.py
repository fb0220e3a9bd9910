"""Dynamic micro-batching: concurrent requests share one model call.

Requests wait in a queue. A single worker task takes as many as fit in ``max_batch`` texts, after
waiting at most ``max_wait_s`` from the oldest request's arrival for the batch to fill, and runs the
model on one worker thread (one: torch already spreads a call over every core), so the event loop
never waits on the model. While the model computes, new requests queue up and form the next batch:
under load, batches fill on their own and nobody waits the extra milliseconds.

With ``enabled=False`` every request is its own model call, one at a time (the baseline of the
load benchmark).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from hrlm.errors import Overloaded
from hrlm.service.metrics import Metrics


@dataclass
class PendingRequest:
    """One request's texts, and the future its answer is set on."""

    texts: list[str]
    future: asyncio.Future[Any]
    info: Any = None
    enqueued: float = field(default_factory=time.perf_counter)


# (the requests, what infer returned, seconds of the model call) -> sets every request's future
Finish = Callable[[list[PendingRequest], Any, float], Awaitable[None]]


class MicroBatcher:
    """Groups pending requests into model calls.

    Args:
        infer: called on the worker thread with the batch's texts; whatever it returns goes to ``finish``.
        finish: coroutine given the batch's requests, ``infer``'s result and the call's seconds; it
            must set each request's future (it runs as its own task, so the next model call need not wait).
        max_batch: most texts in one call (a single request with more is still one call).
        max_wait_s: how long the oldest waiting request may wait for the batch to fill.
        max_queue: most texts waiting; beyond it :class:`Overloaded` (503).
    """

    def __init__(
        self,
        infer: Callable[[list[str]], Any],
        finish: Finish,
        *,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        max_queue: int = 2048,
        enabled: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self._infer = infer
        self._finish = finish
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.enabled = enabled
        self.metrics = metrics
        self._pending: collections.deque[PendingRequest] = collections.deque()
        self._pending_texts = 0
        self._arrived = asyncio.Event()
        self._full = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hrlm-model")
        self._worker: asyncio.Task[None] | None = None
        self._finishing: set[asyncio.Task[None]] = set()
        self._busy = False
        self._free_since = 0.0

    @property
    def depth(self) -> int:
        """Texts waiting for the model."""
        return self._pending_texts

    def start(self) -> None:
        self._worker = asyncio.create_task(self._run(), name="hrlm-batcher")

    async def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the model's thread, between two batches (one model, one thread at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def submit(self, texts: list[str], info: Any = None) -> asyncio.Future[Any]:
        """Queue ``texts``; the returned future gets ``finish``'s answer.

        Raises:
            Overloaded: the queue already holds ``max_queue`` texts.
        """
        if self._worker is None or self._worker.done():
            raise Overloaded("the model worker is not running; the service is starting or stopping.")
        if self._pending and self._pending_texts + len(texts) > self.max_queue:
            self._purge()
        if self._pending and self._pending_texts + len(texts) > self.max_queue:
            raise Overloaded(
                f"{self._pending_texts} texts are waiting for the model (max_queue = {self.max_queue}); retry shortly."
            )
        request = PendingRequest(list(texts), asyncio.get_running_loop().create_future(), info)
        self._pending.append(request)
        self._pending_texts += len(texts)
        self._gauge()
        self._arrived.set()
        if self._pending_texts >= self.max_batch:
            self._full.set()
        return request.future

    def _purge(self) -> None:
        """Drop requests that gave up (timed out) while queued."""
        live = [request for request in self._pending if not request.future.done()]
        self._pending = collections.deque(live)
        self._pending_texts = sum(len(request.texts) for request in live)
        self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._pending_texts)

    def _take(self) -> list[PendingRequest]:
        pending: list[PendingRequest] = []
        n = 0
        while self._pending:
            request = self._pending[0]
            if request.future.done():  # timed out or cancelled while waiting: never computed
                self._pending.popleft()
                self._pending_texts -= len(request.texts)
                continue
            if pending and (not self.enabled or n + len(request.texts) > self.max_batch):
                break
            self._pending.popleft()
            self._pending_texts -= len(request.texts)
            pending.append(request)
            n += len(request.texts)
        self._gauge()
        return pending

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            if self.enabled and self._pending_texts < self.max_batch:
                # Wait from the later of the oldest arrival and the end of the last model call: under
                # load, requests answered by that call come straight back and join this batch.
                since = max(self._pending[0].enqueued, self._free_since)
                remaining = since + self.max_wait_s - time.perf_counter()
                if remaining > 0:
                    self._full.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._full.wait(), remaining)
            pending = self._take()
            if not pending:
                continue
            texts = [t for request in pending for t in request.texts]
            start = time.perf_counter()
            self._busy = True
            try:
                result = await loop.run_in_executor(self._executor, self._infer, texts)
            except Exception as exc:
                for request in pending:
                    if not request.future.done():
                        request.future.set_exception(exc)
                continue
            finally:
                self._busy = False
                self._free_since = time.perf_counter()
            seconds = time.perf_counter() - start
            if self.metrics is not None:
                self.metrics.batch_size.observe(len(texts))
                self.metrics.batch_requests.observe(len(pending))
                self.metrics.inference.observe(seconds)
            task = asyncio.create_task(self._finish_safely(pending, result, seconds))
            self._finishing.add(task)
            task.add_done_callback(self._finishing.discard)

    async def _finish_safely(self, pending: list[PendingRequest], result: Any, seconds: float) -> None:
        try:
            await self._finish(pending, result, seconds)
        except Exception as exc:
            for request in pending:
                if not request.future.done():
                    request.future.set_exception(exc)

    async def close(self, drain_s: float = 10.0) -> None:
        """Answer what is queued (for up to ``drain_s``), then stop the worker and its thread."""
        deadline = time.perf_counter() + drain_s
        while (self._pending or self._busy or self._finishing) and time.perf_counter() < deadline:
            await asyncio.sleep(0.01)
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
        for request in self._pending:
            if not request.future.done():
                request.future.set_exception(Overloaded("the service is stopping; retry against another instance."))
        self._pending.clear()
        self._pending_texts = 0
        self._executor.shutdown(wait=True)
