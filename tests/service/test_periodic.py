"""The service's timers: a failing round is retried, and its message logged once, not once a round."""

from __future__ import annotations

import asyncio
import logging

import pytest

from hrlm.service.periodic import Periodic
from hrlm.service.queue_filler import QueueFiller


class Flaky(Periodic):
    name = "flaky"

    def __init__(self, outcomes: list[str | None]) -> None:
        super().__init__(0.005)
        self.outcomes = outcomes
        self.ticks = 0

    async def tick(self) -> None:
        outcome = self.outcomes[min(self.ticks, len(self.outcomes) - 1)]
        self.ticks += 1
        if outcome is not None:
            raise ConnectionError(f"{outcome}\nsecond line of a long driver message")


def test_a_repeated_failure_is_logged_once_until_it_changes(caplog: pytest.LogCaptureFixture) -> None:
    async def run() -> Flaky:
        timer = Flaky(["db away", "db away", "db away", None, "db away", "disk full", None])
        timer.start()
        while timer.ticks < 8:
            await asyncio.sleep(0.005)
        await timer.stop()
        return timer

    with caplog.at_level(logging.WARNING, logger="hrlm.service"):
        asyncio.run(run())
    assert [r.getMessage() for r in caplog.records] == [
        "flaky failed: ConnectionError: db away",
        "flaky failed: ConnectionError: db away",
        "flaky failed: ConnectionError: disk full",
    ]


def test_zero_interval_never_starts_and_stop_is_safe() -> None:
    async def run() -> None:
        timer = Flaky([None])
        timer.every_s = 0
        timer.start()
        await asyncio.sleep(0.02)
        await timer.stop()
        assert timer.ticks == 0

    asyncio.run(run())


def test_queue_filler_says_what_failed() -> None:
    filler = QueueFiller(None, None, 0)  # type: ignore[arg-type]  # the message needs no database
    assert filler.failure(RuntimeError("no such table\nSQL: ...")) == (
        "filling the review queue failed: RuntimeError: no such table"
    )
