"""benchmarks/batch.py: how the memory of a run's process tree is read and grouped by kind of process."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import psutil
import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/self/smaps_rollup"), reason="reads Linux's smaps_rollup")


@pytest.fixture
def batch(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("batch")


def test_a_worker_is_one_kind_whatever_method_it_runs(batch: ModuleType) -> None:
    title = batch.worker_title
    assert title("ray::MapWorker(MapBatches(Scorer)).submit") == title("ray::MapWorker(MapBatches(Scorer))")
    assert title("ray::Tally.add") == title("ray::Tally") == "ray::Tally"
    assert title("ray::ReadCSV->SplitBlocks(3)") == title("ray::ReadCSV->SplitBlocks(4)") == "ray::ReadCSV->SplitBlocks"
    assert title("ray::IDLE") == "ray::IDLE"


def test_the_tree_memory_counts_a_childs_heap_and_shared_memory(batch: ModuleType, tmp_path: Path) -> None:
    ready = tmp_path / "ready"
    child = (
        "import mmap, pathlib, time\n"
        "heap = bytearray(200 * 2**20)\n"  # touched: zero-filled by Python
        "shared = mmap.mmap(-1, 100 * 2**20, flags=mmap.MAP_SHARED)\n"
        "shared.write(b'x' * (100 * 2**20))\n"
        f"pathlib.Path({str(ready)!r}).touch()\n"
        "time.sleep(60)\n"
    )
    spawn = f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"
    parent = subprocess.Popen([sys.executable, "-c", spawn])
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.1)
        pss, rss, groups = batch.tree_memory(parent.pid)
    finally:
        for proc in psutil.Process(parent.pid).children(recursive=True):
            proc.kill()
        parent.kill()
        parent.wait()
    assert ready.exists()
    assert groups["driver"]["processes"] == 1
    (worker,) = (g for name, g in groups.items() if name != "driver")
    assert worker["anon_mib"] >= 190
    assert 95 <= worker["shmem_mib"] <= 110
    assert pss >= worker["pss_mib"] >= worker["anon_mib"] + worker["shmem_mib"]
    assert rss >= pss
