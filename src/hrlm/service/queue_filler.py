"""The service's background task that sorts new predictions into the review queue every ``review_fill_s``."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from sqlalchemy import Engine

from hrlm.review import ReviewPolicy, fill_queue
from hrlm.service.periodic import Periodic, describe

log = logging.getLogger("hrlm.service")
FILL_LIMIT = 5000  # predictions read per transaction; a backlog is read in several


class QueueFiller(Periodic):
    """Runs :func:`hrlm.review.answers.fill_queue` on a timer (and on demand through :meth:`fill`).

    Args:
        engine: the service's database.
        policy: the queue policy.
        every_s: seconds between fills; 0 fills only on demand (``POST /v1/review/fill``).
    """

    name = "hrlm-review-fill"

    def __init__(self, engine: Engine, policy: ReviewPolicy, every_s: float) -> None:
        super().__init__(every_s)
        self.engine = engine
        self.policy = policy

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

    async def tick(self) -> None:
        result = await self.fill()
        if result["queued"]:
            log.info("review queue: %d new items from %d predictions", result["queued"], result["scanned"])

    def failure(self, exc: Exception) -> str:
        return f"filling the review queue failed: {describe(exc)}"
