"""The allocator setting: applied once, switchable off, and harmless to large allocations from any thread."""

from __future__ import annotations

import os
import platform
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


TRIM = """
import ctypes, sys
from hrlm import _alloc

def anon_mib():
    with open("/proc/self/smaps_rollup") as fh:
        return next(int(l.split()[1]) for l in fh if l.startswith("Anonymous:")) / 1024

assert _alloc.keep_freed_memory() == "tuned"
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
before = anon_mib()
blocks = [libc.malloc(2**20) for _ in range(300)]  # 300 MiB on the heap: no mmap once tuned
for b in blocks:
    ctypes.memset(b, 1, 2**20)
for b in reversed(blocks):
    libc.free(b)
kept = anon_mib() - before
assert _alloc.release_freed_memory() is True
print(round(kept), round(anon_mib() - before))
"""


@pytest.mark.skipif(
    not os.path.exists("/proc/self/smaps_rollup") or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc_trim, measured in Linux's /proc/self/smaps_rollup",
)
def test_freed_memory_is_kept_until_released() -> None:
    import subprocess

    own = ("LD_PRELOAD", "HRLM_ALLOCATOR")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k not in own}
    out = subprocess.run([sys.executable, "-c", TRIM], env=env, capture_output=True, text=True, check=True).stdout
    kept, after = map(int, out.split())
    assert kept >= 250, f"the tuned heap gave back freed blocks by itself ({kept} MiB kept of 300)"
    assert after <= 50, f"release_freed_memory left {after} MiB of the 300 freed"
