"""The allocator setting: applied once, switchable off, and harmless to large allocations from any thread."""

from __future__ import annotations

import os
import sys
import threading

import pytest
import torch

from hrlm import _alloc


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_alloc, "_state", {})
    for key in [k for k in os.environ if k.startswith("MALLOC_")]:
        monkeypatch.delenv(key)
    monkeypatch.delenv("LD_PRELOAD", raising=False)


def test_it_can_be_switched_off(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HRLM_ALLOCATOR", "system")
    assert _alloc.keep_freed_memory() == "disabled"
    monkeypatch.delenv("HRLM_ALLOCATOR")
    assert _alloc.keep_freed_memory() == "disabled"  # once per process: the first answer stands


def test_another_allocator_or_glibc_settings_are_left_alone(fresh: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2")
    assert _alloc.keep_freed_memory() == "left alone"
    monkeypatch.setattr(_alloc, "_state", {})
    monkeypatch.delenv("LD_PRELOAD")
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert _alloc.keep_freed_memory() == "left alone"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_on_glibc_large_blocks_still_allocate_in_every_thread(fresh: None) -> None:
    assert _alloc.keep_freed_memory() in ("tuned", "unavailable")  # unavailable: a musl-based Linux
    sums: list[float] = []

    def work() -> None:
        for _ in range(3):  # 400 MB blocks, past a thread arena's 64 MB heaps
            sums.append(float(torch.ones(100_000_000).sum()))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    assert sums == [1e8] * 3
