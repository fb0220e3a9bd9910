"""The row counter of ``hrlm batch --engine ray``: which actor scored how many rows, on which node.

It is a Ray actor of its own, in a module that imports nothing: Ray starts a worker process for it
and imports the module the class lives in, so in ``hrlm.inference.ray_batch`` (which imports torch
through the Predictor) the counter cost a worker of about 290 MiB for the whole run; here it costs
Ray's bare worker.
"""

from __future__ import annotations

from typing import Any


class Tally:
    """Rows counted per scoring actor.

    Example:
        >>> tally = Tally()
        >>> tally.add("a1", "n1", "10.0.0.1", 5); tally.add("a1", "n1", "10.0.0.1", 3)
        >>> tally.report()
        [{'actor_id': 'a1', 'node_id': 'n1', 'ip': '10.0.0.1', 'rows': 8}]
    """

    def __init__(self) -> None:
        self.actors: dict[str, dict[str, Any]] = {}

    def add(self, actor_id: str, node_id: str, ip: str, rows: int) -> None:
        entry = self.actors.setdefault(actor_id, {"actor_id": actor_id, "node_id": node_id, "ip": ip, "rows": 0})
        entry["rows"] += rows

    def report(self) -> list[dict[str, Any]]:
        return sorted(self.actors.values(), key=lambda a: (a["node_id"], a["actor_id"]))
