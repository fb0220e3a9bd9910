"""Background work on the service's event loop at a fixed interval (following the registry, filling the queue)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

log = logging.getLogger("hrlm.service")


def describe(exc: Exception) -> str:
    """``Type: first line of the message``: a database error's message can run to many lines."""
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


class Periodic:
    """Runs :meth:`tick` every ``every_s`` seconds until :meth:`stop`; ``every_s`` of 0 never runs it.

    A failing tick (the database away for a while, say) is retried at the next round; its message
    is logged once, not once a round, until a tick succeeds or the message changes.
    """

    name = "hrlm-periodic"

    def __init__(self, every_s: float) -> None:
        self.every_s = every_s
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> None:
        raise NotImplementedError

    def failure(self, exc: Exception) -> str:
        """The log line for a failed tick."""
        return f"{self.name} failed: {describe(exc)}"

    def start(self) -> None:
        if self.every_s > 0:
            self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        failing: str | None = None
        while True:
            await asyncio.sleep(self.every_s)
            try:
                await self.tick()
                failing = None
            except Exception as exc:  # keep going: the next round may succeed
                message = self.failure(exc)
                if message != failing:
                    log.warning("%s", message)
                failing = message
