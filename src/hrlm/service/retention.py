"""The service's daily retention: texts and notes older than ``retention_days`` are removed (``hrlm purge``).

The first purge runs shortly after the service starts (:data:`FIRST_AFTER_S`), then once every
:data:`EVERY_S`; several replicas running it at once do no harm: a purge finds nothing left that
another one removed, and writes no audit entry for nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging

from sqlalchemy import Engine

from hrlm.service.periodic import Periodic, describe
from hrlm.store.retention import PurgeCounts, purge_texts
from hrlm.store.tables import utcnow

log = logging.getLogger("hrlm.service")
EVERY_S = 86_400.0  # once a day
FIRST_AFTER_S = 60.0  # after start: out of the way of loading the model and the first requests
ACTOR = "service"


class RetentionPurger(Periodic):
    """Removes stored texts past ``retention_days`` once a day (``None`` days: never runs).

    Args:
        engine: the service's database.
        retention_days: the age in days past which texts go; ``None`` keeps them.
        every_s: seconds between purges.
        first_after_s: seconds from :meth:`start` to the first purge.
    """

    name = "hrlm-retention"

    def __init__(
        self,
        engine: Engine,
        retention_days: int | None,
        *,
        every_s: float = EVERY_S,
        first_after_s: float = FIRST_AFTER_S,
    ) -> None:
        super().__init__(every_s if retention_days else 0.0)
        self.engine = engine
        self.retention_days = retention_days
        self.first_after_s = first_after_s
        self._first: asyncio.Task[None] | None = None

    async def purge(self) -> PurgeCounts | None:
        """Purge now; ``None`` when ``retention_days`` is unset."""
        if not self.retention_days:
            return None
        cutoff = utcnow() - dt.timedelta(days=self.retention_days)
        return await asyncio.to_thread(purge_texts, self.engine, older_than=cutoff, dry_run=False, actor=ACTOR)

    async def tick(self) -> None:
        counts = await self.purge()
        if counts is not None and counts.total:
            log.info(
                "retention: removed the texts of %d predictions and %d review items and %d notes stored before %s",
                counts.predictions,
                counts.review_items,
                counts.review_notes,
                f"{counts.cutoff:%Y-%m-%d %H:%M} UTC",
            )

    def failure(self, exc: Exception) -> str:
        return f"removing texts past retention_days failed: {describe(exc)}"

    def start(self) -> None:
        """The first purge after ``first_after_s``, then one every ``every_s``."""
        if self.every_s > 0:
            self._first = asyncio.get_running_loop().create_task(self._first_purge(), name=f"{self.name}-first")
        super().start()

    async def stop(self) -> None:
        if self._first is not None:
            self._first.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._first
            self._first = None
        await super().stop()

    async def _first_purge(self) -> None:
        await asyncio.sleep(self.first_after_s)
        try:
            await self.tick()
        except Exception as exc:  # the daily round retries
            log.warning("%s", self.failure(exc))
