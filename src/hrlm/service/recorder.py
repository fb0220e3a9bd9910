"""Writes prediction records on a thread of their own, committing before the answer goes out.

A request is answered only after its records are committed (so a crash never loses an
acknowledged prediction), but the event loop never waits on the database: records go to a
writer thread that commits everything queued in one transaction (group commit), and the
request's coroutine awaits a future the thread resolves. A failed write is logged and counted
in /metrics, and the answer still goes out, marked ``"stored": false``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine

from hrlm.pii import redact
from hrlm.service.metrics import Metrics
from hrlm.store.records import insert_predictions

log = logging.getLogger("hrlm.service")
MAX_GROUP_ROWS = 4096


@dataclass
class _Write:
    rows: list[dict[str, Any]]
    future: asyncio.Future[bool]


class Recorder:
    """The writer thread of prediction records.

    Args:
        engine: where the rows go.
        store_text: ``redacted`` (PII replaced by tags, see :mod:`hrlm.pii`), ``raw`` or ``none``.
    """

    def __init__(self, engine: Engine, metrics: Metrics, *, store_text: str = "redacted") -> None:
        self.engine = engine
        self.metrics = metrics
        self.store_text = store_text
        self._queue: queue.Queue[_Write | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="hrlm-store", daemon=True)
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]]) -> asyncio.Future[bool]:
        """Queue rows (with raw ``text``); the future becomes True once committed, False if the write failed."""
        assert self._loop is not None, "Recorder.start() first"
        future: asyncio.Future[bool] = self._loop.create_future()
        self._queue.put(_Write(rows, future))
        return future

    def _prepare(self, row: dict[str, Any]) -> dict[str, Any]:
        text = row.get("text")
        if self.store_text == "none" or text is None:
            return {**row, "text": None}
        if self.store_text == "redacted":
            try:
                return {**row, "text": redact(text)}
            except Exception:  # a redaction bug must lose neither the record nor the privacy
                log.exception("redacting a text of request %s failed; storing it without text", row.get("request_id"))
                return {**row, "text": None}
        return row

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            n = len(first.rows)
            stop = False
            while n < MAX_GROUP_ROWS:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                group.append(item)
                n += len(item.rows)
            self._write(group)
            if stop:
                return

    def _write(self, group: list[_Write]) -> None:
        for w in group:
            w.rows = [self._prepare(r) for r in w.rows]
        if len(group) == 1:
            self._resolve(group, self._commit(group[0].rows))
        elif self._commit([r for w in group for r in w.rows], count=False):
            self._resolve(group, True)
        else:  # one bad record must not sink the others: write each request's records alone
            for w in group:
                self._resolve([w], self._commit(w.rows))

    def _commit(self, rows: list[dict[str, Any]], *, count: bool = True) -> bool:
        start = time.perf_counter()
        try:
            insert_predictions(self.engine, rows)
        except Exception as exc:
            if not count:
                log.warning(
                    "a group write of %d prediction records failed (%s); writing them one request at a time",
                    len(rows),
                    type(exc).__name__,
                )
                return False
            self.metrics.store_failures.inc()
            self.metrics.store_failed_records.inc(len(rows))
            ids = sorted({r["request_id"] for r in rows})
            log.error(
                "storing %d prediction records failed (requests %s): %s: %s",
                len(rows),
                ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""),
                type(exc).__name__,
                str(exc).splitlines()[0] if str(exc) else "",
            )
            return False
        self.metrics.store_latency.observe(time.perf_counter() - start)
        return True

    def _resolve(self, group: list[_Write], ok: bool) -> None:
        loop = self._loop
        if loop is None:
            return
        for w in group:
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                loop.call_soon_threadsafe(_set, w.future, ok)

    async def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)


def _set(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)
