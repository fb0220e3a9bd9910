"""Progress for long work: a rich bar on a terminal, a log line every 5% elsewhere (CI, background runs)."""

from __future__ import annotations

import sys
import time
from typing import Any


class ProgressBar:
    """Progress of ``total`` units of work with named fields shown beside the bar.

    Example:
        >>> bar = ProgressBar(100, "training", unit="steps", fields={"loss": "-"}, enabled=False)
        >>> bar.update(10, loss="0.52")
        >>> bar.close()
    """

    def __init__(
        self, total: int, label: str, *, unit: str = "", fields: dict[str, str] | None = None, enabled: bool = True
    ) -> None:
        self.total = max(total, 1)
        self.label = label
        self.unit = unit
        self.enabled = enabled
        self.done = 0
        self.start = time.perf_counter()
        self.fields: dict[str, str] = dict(fields or {})
        self._bar: Any = None
        self._last_logged = -1
        if enabled and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            shown = " · ".join(f"{k} {{task.fields[{k}]}}" for k in self.fields)
            self._bar = Progress(
                TextColumn(f"[bold]{label}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn(shown),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._bar.start()
            self._task = self._bar.add_task(label, total=self.total, **self.fields)

    def update(self, completed: int | None = None, *, advance: int = 0, **fields: str) -> None:
        """Set the amount done (or advance it) and any shown field."""
        self.done = completed if completed is not None else self.done + advance
        self.fields.update(fields)
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, **self.fields)
            return
        bucket = self.done * 20 // self.total
        if bucket != self._last_logged:
            self._last_logged = bucket
            elapsed = time.perf_counter() - self.start
            left = elapsed / max(self.done, 1) * (self.total - self.done)
            extra = "".join(f" · {k} {v}" for k, v in self.fields.items())
            print(
                f"{self.label} {self.done}/{self.total} {self.unit}{extra} · {elapsed:.0f}s elapsed, ~{left:.0f}s left",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
