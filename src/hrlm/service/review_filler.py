"""The service's background task that sorts new predictions into the review queue every ``review_fill_s``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from sqlalchemy import Engine

from hrlm.feedback import ReviewPolicy, fill_queue

log = logging.getLogger("hrlm.service")
FILL_LIMIT = 5000  # predictions read per transaction; a backlog is read in several


class QueueFiller:
    """Runs :func:`hrlm.feedback.fill_queue` on a timer (and on demand through :meth:`fill`).

    Args:
        engine: the service's database.
        policy: the queue policy.
        every_s: seconds between fills; 0 fills only on demand (``POST /v1/review/fill``).
    """

    def __init__(self, engine: Engine, policy: ReviewPolicy, every_s: float) -> None:
        self.engine = engine
        self.policy = policy
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.every_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="hrlm-review-fill")

    async def fill(self) -> dict[str, Any]:
        """Fill until the predictions are all read; the totals of every round."""
        total: dict[str, Any] | None = None
        while True:
            result = await asyncio.to_thread(fill_queue, self.engine, self.policy, limit=FILL_LIMIT)
            if total is None:
                total = result
            else:
                for key in ("scanned", "queued", "skipped_no_text", "skipped_duplicate"):
                    total[key] += result[key]
                for reason, n in result["by_reason"].items():
                    total["by_reason"][reason] += n
                total["last_prediction_id"] = result["last_prediction_id"]
            if result["scanned"] < FILL_LIMIT:
                return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.every_s)
            try:
                result = await self.fill()
                if result["queued"]:
                    log.info("review queue: %d new items from %d predictions", result["queued"], result["scanned"])
            except Exception as exc:  # the database may be away for a while; the next round tries again
                log.warning("filling the review queue failed: %s: %s", type(exc).__name__, str(exc).splitlines()[:1])

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
