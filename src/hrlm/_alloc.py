"""Keep large tensor buffers in the process instead of handing them back to the kernel after every use.

glibc's ``malloc`` serves a block of more than a few MiB with its own ``mmap`` and returns it with
``munmap`` when freed. A forward pass allocates and frees the same large activations (attention
scores of 16 windows of 256 tokens: 25 MB) dozens of times, so every pass maps fresh pages and the
kernel zeroes each one on first touch: measured on a 2-core AMD EPYC (bf16, MiniLM's 12 heads),
attention written as two matrix products and a softmax took 29.5 ms with glibc's defaults and 11.2
ms with the blocks kept, and ``hrlm train`` spent a third of its CPU time in the kernel. PyTorch's
CPU tuning guide answers this with jemalloc or tcmalloc preloaded; :func:`keep_freed_memory` gets
the same effect without a preload, through glibc's own ``mallopt``: no ``mmap`` per block, and no
trimming of the heap, so freed blocks are reused. The cost is that the process keeps its peak
memory until it exits, which is what a model server or a training run does anyway.

A process that lives long and meets inputs of many shapes (an actor of ``hrlm batch --engine ray``,
scoring block after block) calls :func:`release_freed_memory` between units of work: the blocks freed
by the last one go back to the kernel, so that fragments of many shapes do not add up over hours.

Set ``HRLM_ALLOCATOR=system`` to leave the allocator as it is; a preloaded jemalloc or tcmalloc, or
``MALLOC_*`` settings in the environment, are also left alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading

log = logging.getLogger("hrlm")

# glibc's <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4

_lock = threading.Lock()
_state: dict[str, str] = {}


def keep_freed_memory() -> str:
    """Tune glibc's allocator for tensor work, once per process; says what was done.

    Returns one of ``"tuned"``, ``"disabled"`` (``HRLM_ALLOCATOR=system``), ``"left alone"`` (another
    allocator is preloaded, or the environment already tunes glibc's) or ``"unavailable"`` (not glibc).
    """
    with _lock:
        if "result" not in _state:
            _state["result"] = _tune()
            log.debug("allocator: %s", _state["result"])
        return _state["result"]


def _tune() -> str:
    if os.environ.get("HRLM_ALLOCATOR", "").strip().lower() == "system":
        return "disabled"
    preload = os.environ.get("LD_PRELOAD", "")
    if "jemalloc" in preload or "tcmalloc" in preload or any(k.startswith("MALLOC_") for k in os.environ):
        return "left alone"
    libc = _libc()
    if libc is None:
        return "unavailable"
    # mallopt returns 1 on success; trim threshold at INT_MAX: the heap is never given back.
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    return "tuned" if ok else "unavailable"


def release_freed_memory() -> bool:
    """Give the heap's free pages back to the kernel now (glibc's ``malloc_trim``); ``False`` where not glibc.

    Costs a few milliseconds and the next unit of work's first touch of those pages; call it between
    units of work that take seconds, never inside a forward pass.
    """
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@functools.cache
def _libc() -> ctypes.CDLL | None:
    """glibc, its ``mallopt`` and ``malloc_trim`` typed; ``None`` where the C library is not glibc (musl's
    ``mallopt`` does nothing)."""
    try:
        lib = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        lib.gnu_get_libc_version  # noqa: B018 - only glibc has it
        lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.mallopt.restype = ctypes.c_int
        lib.malloc_trim.argtypes = [ctypes.c_size_t]
        lib.malloc_trim.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib
