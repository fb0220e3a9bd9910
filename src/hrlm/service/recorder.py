"""Writes prediction records on a thread of their own, committing before the answer goes out.

A request is answered only after its records are committed (so a crash never loses an
acknowledged prediction), but the event loop never waits on the database: records go to a
writer thread that commits everything queued in one transaction (group commit), and the
request's coroutine awaits a future the thread resolves. A failed group is written again one
request, then one record at a time, so one bad record never costs another's: every good record is
kept, and only a request whose own records failed is answered ``"stored": false`` (its failed
records are logged with the request id and counted in /metrics).
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

from hrlm.pii import Redactor
from hrlm.service.metrics import Metrics
from hrlm.store.records import insert_predictions

log = logging.getLogger("hrlm.service")
MAX_GROUP_ROWS = 4096


@dataclass
class _Write:
    rows: list[dict[str, Any]]
    future: asyncio.Future[set[str]]


class Recorder:
    """The writer thread of prediction records.

    Args:
        engine: where the rows go.
        store_text: ``redacted`` (PII replaced by tags, see :mod:`hrlm.pii`), ``raw`` or ``none``.
        redactor: what ``redacted`` applies: the built-in patterns and the site's own
            (``pii_patterns``); the built-in ones alone by default.
    """

    def __init__(
        self, engine: Engine, metrics: Metrics, *, store_text: str = "redacted", redactor: Redactor | None = None
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.store_text = store_text
        self.redactor = redactor or Redactor()
        self._queue: queue.Queue[_Write | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="hrlm-store", daemon=True)
        self._thread.start()

    def submit(self, rows: list[dict[str, Any]]) -> asyncio.Future[set[str]]:
        """Queue rows (with raw ``text`` and a ``request_id``) of one or more requests.

        The future becomes, once the rows are written, the ids of the requests whose records were
        not all stored: an empty set when every record is committed.
        """
        assert self._loop is not None, "Recorder.start() first"
        future: asyncio.Future[set[str]] = self._loop.create_future()
        self._queue.put(_Write(rows, future))
        return future

    def _prepare(self, row: dict[str, Any]) -> dict[str, Any]:
        text = row.get("text")
        if self.store_text == "none" or text is None:
            return {**row, "text": None}
        if self.store_text == "redacted":
            try:
                return {**row, "text": self.redactor.redact(text)}
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
        rows = [r for w in group for r in w.rows]
        failure = self._insert(rows)
        if failure is None:
            self._resolve(group, set())
            return
        # One record's failure must never cost another's: each request alone, then, in a request that
        # still fails, each record alone. Only a request whose own records failed answers stored: false.
        requests: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            requests.setdefault(row["request_id"], []).append(row)
        log.warning(
            "a write of %d prediction records of %d requests failed (%s); writing them one by one",
            len(rows),
            len(requests),
            failure,
        )
        failed: set[str] = set()
        for request_id, mine in requests.items():
            if len(requests) > 1 and len(mine) > 1 and self._insert(mine) is None:
                continue
            if not self._one_by_one(mine):
                failed.add(request_id)
        self._resolve(group, failed)

    def _one_by_one(self, rows: list[dict[str, Any]]) -> bool:
        """Write each record in its own transaction; count and log those that fail. True if none did."""
        failed = 0
        for row in rows:
            failure = self._insert([row])
            if failure is not None:
                failed += 1
                log.error(
                    "storing prediction record %s of request %s failed: %s; its request answers stored: false",
                    row.get("position"),
                    row.get("request_id"),
                    failure,
                )
        if failed:
            self.metrics.store_failures.inc()
            self.metrics.store_failed_records.inc(failed)
        return not failed

    def _insert(self, rows: list[dict[str, Any]]) -> str | None:
        """Insert ``rows`` in one transaction; None if committed, else what failed (one line, no text)."""
        start = time.perf_counter()
        try:
            insert_predictions(self.engine, rows)
        except Exception as exc:
            first = str(exc).splitlines()[0] if str(exc) else ""
            return f"{type(exc).__name__}: {first[:200]}"
        self.metrics.store_latency.observe(time.perf_counter() - start)
        return None

    def _resolve(self, group: list[_Write], failed: set[str]) -> None:
        loop = self._loop
        if loop is None:
            return
        for w in group:
            mine = {r["request_id"] for r in w.rows} & failed
            with contextlib.suppress(RuntimeError):  # the loop closed during shutdown
                loop.call_soon_threadsafe(_set, w.future, mine)

    async def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the thread."""
        self._queue.put(None)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, timeout)


def _set(future: asyncio.Future[set[str]], failed: set[str]) -> None:
    if not future.done():
        future.set_result(failed)
