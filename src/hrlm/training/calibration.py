"""A training code path chosen by timing the choices on this machine, once, and remembered.

:mod:`hrlm.training.attention` (eager or SDPA attention) and :mod:`hrlm.training.dropout` (PyTorch's
dropout or one with a cheaper mask) both time their choices on random inputs of the model's shape and
keep the faster; :mod:`hrlm.training.packed` times padded and packed batches to learn from what share
of padding packing pays. :func:`cached_seconds` keeps such timings (and :func:`cached_choice` the
choice they make) as JSON beside the Predictor's calibration
(:mod:`hrlm.inference.calibrate`), keyed by the machine (CPU model and instruction sets, cores, torch,
GPU) and the shape, so that a later run on the same machine does not measure again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hrlm._fs import write_json
from hrlm.inference.backends import cache_dir
from hrlm.inference.calibrate import machine

log = logging.getLogger("hrlm")

# Timed passes per choice after one warm-up pass; the fastest counts.
ROUNDS = 3


def width_bucket(max_length: int) -> int:
    """The sequence length a choice is timed at: ``max_length`` rounded up to a power of two, at least 16.

    Example:
        >>> width_bucket(100), width_bucket(256), width_bucket(3)
        (128, 256, 16)
    """
    return max(16, 2 ** math.ceil(math.log2(max(max_length, 1))))


def best_seconds(fn: Callable[[], Any], rounds: int = ROUNDS) -> float:
    """The fastest of ``rounds`` timed calls of ``fn``, after one untimed call."""
    fn()
    best = math.inf
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cached_seconds(
    kind: str,
    shape: dict[str, Any],
    version: int,
    keys: tuple[str, ...],
    measure: Callable[[], dict[str, float]],
    *,
    summary: Callable[[dict[str, float]], dict[str, Any]] | None = None,
) -> dict[str, float]:
    """The timings ``measure`` takes of ``keys`` for ``shape`` on this machine, measured once and cached.

    ``measure`` returns seconds per key and runs only when no cache file of this ``kind``, machine,
    shape and ``version`` holds a positive timing of every key. The file is
    ``<cache>/calibration/<kind>-<hash>.json``; ``summary`` adds what the timings decide to it (and to
    the log line). A read-only cache folder costs a measurement per run.
    """
    blob = json.dumps({"machine": machine(), "shape": shape, "version": version}, sort_keys=True)
    path = cache_dir() / "calibration" / f"{kind}-{hashlib.sha256(blob.encode()).hexdigest()[:20]}.json"
    try:
        cached = json.loads(path.read_text(encoding="utf-8"))
        seconds = {key: float(cached["seconds"][key]) for key in keys}
        if all(math.isfinite(value) and value > 0 for value in seconds.values()):
            return seconds
    except (OSError, ValueError, AttributeError, KeyError, TypeError):
        pass
    seconds = {key: float(value) for key, value in measure().items()}
    decided = summary(seconds) if summary is not None else {}
    timings = ", ".join(f"{key} {seconds[key] * 1e3:.3g} ms" for key in keys)
    said = " ".join(str(value) for value in decided.values())
    log.info("%s on this machine: %s(%s; %s)", kind, f"{said} " if said else "", timings, shape)
    record = {**decided, "shape": shape, "machine": machine(), "seconds": seconds, "version": version}
    try:
        write_json(Path(path), record)
    except OSError as exc:
        log.warning("could not keep the %s measurement in %s (%s)", kind, path, exc)
    return seconds


def cached_choice(
    kind: str, shape: dict[str, Any], version: int, options: tuple[str, ...], measure: Callable[[], dict[str, float]]
) -> str:
    """The option of ``options`` that ``measure`` timed fastest for ``shape`` on this machine, cached.

    ``measure`` returns seconds per option; it runs as :func:`cached_seconds` says, and the cache
    file records the choice beside the timings.
    """

    def fastest(seconds: dict[str, float]) -> str:
        return min(options, key=lambda name: seconds[name])

    seconds = cached_seconds(kind, shape, version, options, measure, summary=lambda s: {"choice": fastest(s)})
    return fastest(seconds)
