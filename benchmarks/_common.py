"""Shared helpers of the benchmark scripts: machine description, git commit, result files."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """CPU model, usable cores, GPU and torch version of this machine."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from hrlm.inference.predictor import cpu_has_fast_bf16, default_threads

    return {
        "cpu": cpu,
        "cores": default_threads(),
        "cpu_bf16": cpu_has_fast_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__.split("+")[0],
        "python": platform.python_version(),
    }


def git_commit() -> str | None:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def command() -> str:
    return " ".join(["python", os.path.relpath(sys.argv[0]), *sys.argv[1:]])


def write_result(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` in the shape of docs/BENCHMARKS.md."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "benchmark": payload.pop("benchmark"),
        "dataset": payload.pop("dataset"),
        "split": payload.pop("split"),
        "command": command(),
        "git_commit": git_commit(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        **payload,
    }
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    """Rows as a table as wide as its cells need (lists and dicts stay in the JSON only)."""
    from rich.console import Console
    from rich.table import Table

    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) and value < 1.5 else str(value)

    keys: list[str] = []
    for row in rows:
        keys.extend(k for k in row if k not in keys and not isinstance(row[k], list | dict))
    cells = [[cell(row[k]) if k in row else "" for k in keys] for row in rows]
    table = Table(title=title)
    for k in keys:
        table.add_column(k, justify="left" if k == "system" else "right", no_wrap=k != "system")
    for values in cells:
        table.add_row(*values)
    width = sum(max([len(k)] + [len(values[i]) for values in cells]) + 3 for i, k in enumerate(keys))
    Console(width=max(120, width + 1)).print(table)
