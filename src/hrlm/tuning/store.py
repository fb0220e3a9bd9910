"""The files a study leaves in ``--out``: ``trials.csv``, ``trials.json`` and ``best.toml``.

``best.toml`` holds one ``[train]`` table of every setting of the best trial, so that
``hrlm train DATA --config best.toml`` trains it again (and ``TrainConfig.from_sources`` reads it).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hrlm._fs import atomic_file, write_json
from hrlm.config import TrainConfig


def trial_rows(trials: Iterable[Any], metric: str) -> list[dict[str, Any]]:
    """Plain rows of Optuna ``FrozenTrial``s: number, state, value, seconds, params, validation metrics."""
    rows = []
    for t in trials:
        start, end = t.datetime_start, t.datetime_complete
        value = t.value if t.value is not None and math.isfinite(t.value) else None
        if value is None and t.intermediate_values:  # a pruned trial: its last reported score
            value = t.intermediate_values[max(t.intermediate_values)]
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "metric": metric,
                "value": value,
                "seconds": round((end - start).total_seconds(), 2) if start and end else None,
                "evaluations": len(t.intermediate_values),
                "params": dict(t.params),
                "settings": dict(t.user_attrs.get("settings") or {}),
                "val_metrics": dict(t.user_attrs.get("val_metrics") or {}),
                "started": start.isoformat(timespec="seconds") if start else None,
            }
        )
    return rows


def write_trials(out: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """``trials.json`` (every field) and ``trials.csv`` (one column per searched setting)."""
    write_json(out / "trials.json", list(rows))
    params = sorted({k for r in rows for k in r["params"]})
    head = ["number", "state", "metric", "value", "seconds", "evaluations", "started"]
    with atomic_file(out / "trials.csv") as fh:
        writer = csv.writer(fh)
        writer.writerow(head + params)
        for r in rows:
            writer.writerow([_cell(r.get(k)) for k in head] + [_cell(r["params"].get(p)) for p in params])


def _cell(value: Any) -> str:
    return "" if value is None else str(value)


def write_best_toml(path: Path, cfg: TrainConfig, *, note: str = "") -> None:
    """Write ``cfg`` as a ``[train]`` table (unset settings left out, as TOML has no null)."""
    lines = [
        "# The best settings of `hrlm tune`" + (f": {note}" if note else "") + ".",
        "# hrlm train DATA --config best.toml",
        "",
        "[train]",
    ]
    for key, value in cfg.to_dict().items():
        if value is not None:
            lines.append(f"{key} = {toml_value(value)}")
    with atomic_file(path) as fh:
        fh.write("\n".join(lines) + "\n")


def toml_value(value: Any) -> str:
    """A TOML literal of a setting's value (string, bool, int or finite float)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"TOML cannot hold {value!r}")
        text = repr(value)
        return text if any(c in text for c in ".en") else text + ".0"
    # JSON's string escapes are TOML's basic-string escapes
    return json.dumps(str(value), ensure_ascii=False)
