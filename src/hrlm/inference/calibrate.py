"""Batch sizes and code paths measured on the machine that runs them, once, and remembered.

A token budget or an attention kernel tuned on one CPU is wrong on another: on a 2-core Intel Xeon
with AMX, packed bf16 batches of 8,192 tokens ran 24% faster than the 1,024 chosen on an AMD EPYC,
and there packed fp32 batches were slower than padded ones. So the :class:`~hrlm.inference.predictor.Predictor`
does not trust a constant: the first time it scores enough text on a machine it times the choices on
a sample of that text and keeps the fastest:

- the attention path per group width: plain matrix products and a softmax, or PyTorch's SDPA kernel
  (:func:`hrlm.inference.unpadded.attend`), timed on random inputs of the model's heads;
- the token budget of a batch, and packed against padded batches (a path slower than plain padded
  batches on this machine is not used), per window length (a power of two: tickets and long reviews
  want different budgets);
- the thread count, where the machine has more logical than physical cores;
- for OpenVINO, one batch at a time on every thread, or as many at once as there are threads, one
  thread each (OpenVINO's streams), timed at the chosen budget and the two beside it on the sample repeated
  :data:`STREAM_REPEATS` times (a run of a few batches in two streams ends with one of them idle);
  streams are kept unless one stream is faster by more than the margin packing must beat (see
  :meth:`Calibrator._measure_streams`).

Results are cached as JSON under the cache folder (``$HRLM_CACHE_DIR/calibration``, see
:func:`hrlm.inference.backends.cache_dir`), keyed by the machine (CPU model and the instruction sets
that matter, cores, torch version, GPU) and the model's shape (layers, widths, heads, backend), not
its weights: a retrained model of the same shape reuses them. ``HRLM_CALIBRATE=off`` (or
``calibrate=False``) keeps the built-in defaults; an explicit ``max_tokens`` or ``packing`` always
wins. ``hrlm calibrate MODEL`` runs the measurement and prints it.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import platform
import random
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.nn.functional as F

from hrlm._fs import write_json
from hrlm.errors import ConfigError
from hrlm.inference import unpadded
from hrlm.inference.backends import Backend, TorchBackend, cache_dir, cpu_flags

log = logging.getLogger("hrlm")
Choice = TypeVar("Choice")

# Bump when what is measured or how changes: older cache files are then ignored.
VERSION = 3  # 2: packed must beat padded by PACKED_MARGIN; 3: OpenVINO's streams
# Real tokens of text the budget calibration runs on, and the budgets it tries.
CPU_SAMPLE_TOKENS = 8192
CPU_BUDGETS = (1024, 2048, 4096, 8192)
GPU_SAMPLE_TOKENS = 65536
GPU_BUDGETS = (8192, 16384, 32768, 65536)
# Timed passes per choice (after one warm-up pass); the fastest counts, as in the benchmarks' limits.
ROUNDS = 3
# How much faster packed batches must be than padded ones to be chosen (see Calibrator.measure_budget);
# one batch at a time must be this much faster than several at once (streams) to be chosen over them.
PACKED_MARGIN = 0.03
# Streams are timed on the budgets' sample repeated this many times (see the module's docstring)
STREAM_REPEATS = 4
# Timings of one choice that differ by more than this between rounds (the median over choices of the
# slowest round over the fastest, minus one) mean something else used the machine meanwhile: measured
# again once, and a calibration still that noisy is used but not cached. A quiet 2-core host varies by
# a few percent; on the AMX machine with another job running, the choices' fastest passes spread over
# 0.30-0.96 s (0.25-0.31 s quiet), and the noise picked 2,048-token batches where 8,192 are faster. Passes
# shorter than NOISE_FLOOR_S count as that long: a millisecond's jitter in a tiny model's pass is no
# reason to measure again.
NOISE_LIMIT = 0.25
NOISE_FLOOR_S = 0.05
ATTENTION_WIDTHS = (16, 32, 64, 128, 256, 512)
FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile", "fma")


def mode() -> str:
    """``HRLM_CALIBRATE``: ``auto`` (default: measure on first use), or ``off`` (built-in defaults)."""
    value = os.environ.get("HRLM_CALIBRATE", "auto").strip().lower() or "auto"
    if value in ("0", "false", "no", "off"):
        return "off"
    if value in ("1", "true", "yes", "on", "auto"):
        return "auto"
    raise ConfigError(f"HRLM_CALIBRATE = {value!r}: use auto or off.")


def _cpuinfo() -> list[str]:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="ascii", errors="ignore").splitlines()
    except OSError:
        return []


def physical_cores(cpus: Sequence[int] | None = None) -> int:
    """Distinct physical cores among ``cpus`` (default: those this process may run on)."""
    allowed = set(cpus if cpus is not None else os.sched_getaffinity(0))
    cores: set[tuple[str, str]] = set()
    processor, package, core = -1, "0", ""
    for line in [*_cpuinfo(), ""]:
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "processor":
            processor = int(value)
        elif key == "physical id":
            package = value
        elif key == "core id":
            core = value
        elif not line.strip() and processor >= 0:
            if processor in allowed:
                cores.add((package, core or str(processor)))
            processor, package, core = -1, "0", ""
    return len(cores) or len(allowed)


def machine() -> dict[str, Any]:
    """What the measurements depend on: CPU model and instruction sets, cores, torch, GPU."""
    names = [line.split(":", 1)[1].strip() for line in _cpuinfo() if line.startswith("model name")]
    model = names[0] if names else platform.processor() or "unknown"
    cpus = sorted(os.sched_getaffinity(0))
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "cpu": model,
        "flags": sorted(cpu_flags() & set(FLAGS)),
        "cores": len(cpus),
        "physical_cores": physical_cores(cpus),
        "torch": torch.__version__.split("+")[0],
        "gpu": gpu,
    }


def model_shape(backend: Backend, max_length: int) -> dict[str, Any]:
    """What the timings depend on in the model: its shape and the backend, not its weights."""
    shape: dict[str, Any] = {"backend": backend.name, "device": backend.device.type, "max_length": max_length}
    # a runtime's backend (ONNX, OpenVINO) holds no torch model, only its config
    config = getattr(backend, "config", None) or getattr(getattr(backend, "model", None), "config", None)
    for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        shape[key] = getattr(config, key, None)
    return shape


@dataclass
class Budget:
    """The fastest way, measured, to batch windows of one length bucket."""

    max_tokens: int
    packing: bool
    threads: int
    sample: str = ""  # what was timed
    seconds: dict[str, float] = field(default_factory=dict)  # per choice, "packed@2048/t2": fastest pass
    noise: float | None = None  # timing_noise of the rounds; None in files written before it was kept
    streams: int = 1  # batches computed at once (Backend.streams)


@dataclass
class Calibration:
    """A machine's measured choices for one model shape: the attention path and a budget per length bucket."""

    key: str
    machine: dict[str, Any]
    model: dict[str, Any]
    plain_up_to: int | None = None  # widest attention group run as plain products; None: not measured
    attention_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    buckets: dict[str, Budget] = field(default_factory=dict)
    version: int = VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["buckets"] = {k: asdict(v) for k, v in self.buckets.items()}
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        buckets = {k: Budget(**v) for k, v in data.get("buckets", {}).items()}
        return cls(**{**data, "buckets": buckets})


def bucket(lengths: Sequence[int], max_length: int) -> int:
    """The length bucket of a call: its mean window length rounded up to a power of two, at most ``max_length``.

    Example:
        >>> bucket([30, 40, 20], 256), bucket([250, 256], 256), bucket([300], 512)
        (32, 256, 512)
    """
    mean = sum(lengths) / max(len(lengths), 1)
    return min(max_length, max(16, 2 ** math.ceil(math.log2(max(mean, 1.0)))))


class Calibrator:
    """Loads, measures and stores the :class:`Calibration` of one backend on this machine."""

    def __init__(self, backend: Backend, max_length: int, *, folder: Path | None = None) -> None:
        self.backend = backend
        self.max_length = max_length
        self.machine = machine()
        self.model = model_shape(backend, max_length)
        blob = json.dumps({"machine": self.machine, "model": self.model, "version": VERSION}, sort_keys=True)
        self.key = hashlib.sha256(blob.encode()).hexdigest()[:20]
        self.path = (folder or cache_dir() / "calibration") / f"{self.key}.json"
        self.calibration = self._load() or Calibration(self.key, self.machine, self.model)
        # budgets measured while something else used the machine: this process uses them, no file keeps them
        self.unsaved: dict[str, Budget] = {}

    @property
    def on_gpu(self) -> bool:
        return self.backend.device.type == "cuda"

    def _load(self) -> Calibration | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            found = Calibration.from_dict(data)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:  # unreadable or from another version: measure again
            log.debug("ignoring calibration file %s: %s", self.path, exc)
            return None
        return found if found.version == VERSION and found.key == self.key else None

    def save(self) -> None:
        try:
            write_json(self.path, self.calibration.to_dict())
        except OSError as exc:  # a read-only cache folder costs a calibration per process, nothing more
            log.warning("could not keep the calibration in %s (%s); it will be measured again", self.path, exc)

    # -- attention ---------------------------------------------------------------------------

    def attention(self) -> int:
        """The widest attention group to run as plain matrix products (measured once, then cached)."""
        if self.calibration.plain_up_to is None:
            self.calibration.plain_up_to, self.calibration.attention_ms = self._measure_attention()
            self.save()
        return self.calibration.plain_up_to

    def _measure_attention(self) -> tuple[int, dict[str, dict[str, float]]]:
        backend = self.backend
        if not isinstance(backend, TorchBackend) or self.on_gpu:
            return unpadded.SMALL_WIDTH, {}  # only torch on a CPU has the choice
        config = backend.model.config
        heads = int(config.num_attention_heads)
        head_dim = int(config.hidden_size) // heads
        dtype = backend.compute_dtype
        timings: dict[str, dict[str, float]] = {}
        scale = head_dim**-0.5
        up_to = 0
        losing = False
        for width in ATTENTION_WIDTHS:
            if width > max(self.max_length, 16):
                break
            rows = max(1, CPU_SAMPLE_TOKENS // 2 // width)
            gen = torch.Generator().manual_seed(width)
            q, k, v = (torch.randn(rows, heads, width, head_dim, generator=gen).to(dtype) for _ in range(3))
            plain = _fastest(functools.partial(unpadded.attend, q, k, v, None, scale, plain_up_to=width))
            sdpa = _fastest(functools.partial(F.scaled_dot_product_attention, q, k, v, scale=scale))
            timings[str(width)] = {"plain_ms": round(plain * 1e3, 3), "sdpa_ms": round(sdpa * 1e3, 3)}
            if plain <= sdpa and not losing:
                up_to = width
            else:
                losing = True  # a prefix of widths: once SDPA wins, wider groups stay with it
        return up_to, timings

    # -- budgets -----------------------------------------------------------------------------

    def budget(self, lengths: Sequence[int]) -> Budget | None:
        """The cached budget of the bucket ``lengths`` fall in, or None when it was never measured."""
        key = str(bucket(lengths, self.max_length))
        return self.calibration.buckets.get(key) or self.unsaved.get(key)

    def _measure_streams(
        self,
        sample: Sequence[Sequence[int]],
        run: Callable[[Sequence[Sequence[int]], int, bool], Any],
        budget: int,
        budgets: Sequence[int],
        packing: bool,
        threads: int,
    ) -> tuple[int, int, dict[str, float]]:
        """Time one stream at ``budget`` against each larger stream count at ``budget`` and the budgets
        beside it in ``budgets`` (half and twice), on ``sample`` repeated :data:`STREAM_REPEATS` times, in
        interleaved rounds after a warm-up of each; leave the backend with the fastest stream count
        above one unless one stream beats it by more than :data:`PACKED_MARGIN`.

        Streams win ties because their pace holds where something else wants a core for a moment: one
        batch on every thread waits for the slowest of them. On a 2-core Zen 4, openvino-int8 scoring
        600 IMDB reviews in rounds interleaved with other backends in the same process ran at 95.0-105.0
        docs/s in one stream and 105.8-106.7 in two, where alone, one after the other, the two tied
        (101.5-104.5 against 104.0-105.1). One batch per thread runs at a thread's pace, so the budget
        that suits one stream of all the threads need not suit several; hence the budgets beside it.

        Returns:
            The budget and stream count chosen, and each choice's fastest pass as ``"padded@1024/t2/s2x4"``.
        """
        long = list(sample) * STREAM_REPEATS
        near = [b for b in budgets if b in (budget // 2, budget, budget * 2)]
        choices = [(budget, 1), *((b, s) for s in self.backend.stream_choices() if s > 1 for b in near)]
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads)
            for s in dict.fromkeys(s for _, s in choices):  # warm-up: each count's own copy of the model
                self.backend.streams = s
                run(sample, budget, packing)
            times = _interleaved(
                choices, lambda c: setattr(self.backend, "streams", c[1]), lambda c: run(long, c[0], packing)
            )
        finally:
            torch.set_num_threads(before)
        best = {c: min(seconds) for c, seconds in times.items()}
        streamed = min((c for c in best if c[1] > 1), key=lambda c: best[c])
        chosen = streamed if best[streamed] <= (1.0 + PACKED_MARGIN) * best[(budget, 1)] else (budget, 1)
        self.backend.streams = chosen[1]
        path = "packed" if packing else "padded"
        named = {f"{path}@{b}/t{threads}/s{s}x{STREAM_REPEATS}": round(v, 4) for (b, s), v in best.items()}
        return chosen[0], chosen[1], named

    def measure_budget(
        self,
        windows: Sequence[Sequence[int]],
        run: Callable[[Sequence[Sequence[int]], int, bool], Any],
        *,
        threads: Sequence[int] = (),
    ) -> Budget:
        """Time every budget, packed and padded, on a sample of ``windows``; cache and return the fastest.

        ``run(sample, max_tokens, packing)`` scores the sample once. ``threads``: the thread counts to
        try (default: only the current one). Where the backend can run several batches at once
        (:meth:`~hrlm.inference.backends.Backend.stream_choices`), each count is then timed at the chosen
        budget (:meth:`_measure_streams`); the backend is left with the one chosen.
        """
        key = str(bucket([len(w) for w in windows], self.max_length))
        sample = _sample(windows, GPU_SAMPLE_TOKENS if self.on_gpu else CPU_SAMPLE_TOKENS)
        tokens = sum(len(w) for w in sample)
        budgets = [b for b in (GPU_BUDGETS if self.on_gpu else CPU_BUDGETS) if b <= max(tokens, self.max_length)]
        budgets = budgets or [max(tokens, self.max_length)]
        paths = (True, False) if self.backend.supports_packing else (False,)
        before = torch.get_num_threads()
        counts = list(dict.fromkeys(threads)) or [before]
        choices = [(b, p, t) for t in counts for b in budgets for p in paths]
        self.backend.streams = 1
        sync = torch.cuda.synchronize if self.on_gpu else (lambda: None)
        try:
            run(sample, budgets[0], paths[0])  # warm-up: first-call costs belong to no choice
            for attempt in (1, 2):
                times = _interleaved(
                    choices, lambda c: torch.set_num_threads(c[2]), lambda c: (run(sample, c[0], c[1]), sync())
                )
                noise = timing_noise(times.values())
                if noise <= NOISE_LIMIT:
                    break
                log.warning(
                    "calibration of %s: one choice's timings varied by %.0f%% between rounds (another process "
                    "using the machine?)%s",
                    self.backend.name,
                    100 * noise,
                    ", measuring again" if attempt == 1 else "; using the result without caching it",
                )
        finally:
            torch.set_num_threads(before)
        best = {choice: min(seconds) for choice, seconds in times.items()}
        (budget, packing, n), seconds = min(best.items(), key=lambda kv: kv[1])
        padded = {k: v for k, v in best.items() if not k[1]}
        if packing and padded:
            # Packed batches must beat plain padded ones by more than the timing noise: on a shared
            # 2-core host two passes of the same choice differ by a few percent, and a packed path
            # that only ties costs more where the lengths are uniform (IMDB reviews at 256 tokens).
            plain, plain_seconds = min(padded.items(), key=lambda kv: kv[1])
            if seconds > (1.0 - PACKED_MARGIN) * plain_seconds:
                (budget, packing, n), seconds = plain, plain_seconds
        named = {f"{'packed' if p else 'padded'}@{b}/t{t}": round(s, 4) for (b, p, t), s in best.items()}
        streaming, timed = 1, dict[str, float]()
        if len(self.backend.stream_choices()) > 1:
            budget, streaming, timed = self._measure_streams(sample, run, budget, budgets, packing, n)
        chosen = Budget(
            max_tokens=budget,
            packing=packing,
            threads=n,
            sample=f"{len(sample)} windows, {tokens} tokens",
            seconds={**named, **timed},
            noise=round(noise, 3),
            streams=streaming,
        )
        log.info(
            "calibrated %s for %s-token windows: %s batches of %d tokens, %d threads%s (%.0f tokens/s; cached in %s)",
            self.backend.name,
            key,
            "packed" if packing else "padded",
            budget,
            n,
            f", {streaming} at once" if streaming > 1 else "",
            tokens / seconds,
            self.path,
        )
        if noise <= NOISE_LIMIT:
            self.calibration.buckets[key] = chosen
            self.unsaved.pop(key, None)
            self.save()
        else:
            self.unsaved[key] = chosen
        return chosen


def _interleaved(
    choices: Sequence[Choice], prepare: Callable[[Choice], Any], timed: Callable[[Choice], Any]
) -> dict[Choice, list[float]]:
    """Seconds of ``timed(choice)`` for every choice in :data:`ROUNDS` rounds that interleave the choices,
    so that a slow spell of the machine falls on all of them; ``prepare(choice)`` runs before, off the clock."""
    times: dict[Choice, list[float]] = {c: [] for c in choices}
    for _ in range(ROUNDS):
        for choice in choices:
            prepare(choice)
            t0 = time.perf_counter()
            timed(choice)
            times[choice].append(time.perf_counter() - t0)
    return times


def timing_noise(rounds: Iterable[Sequence[float]], floor: float = NOISE_FLOOR_S) -> float:
    """How much repeated timings of the same work disagree: the median over choices of (slowest - fastest) / fastest.

    A fastest pass shorter than ``floor`` seconds counts as ``floor`` long.

    Example:
        >>> timing_noise([[1.0, 1.02, 1.01], [2.0, 2.1, 2.05], [0.5, 0.5, 0.5]])
        0.02
        >>> round(timing_noise([[0.30, 0.96, 0.5], [0.3, 0.31, 0.62]]), 2)
        1.63
        >>> timing_noise([[0.001, 0.003], [0.002, 0.002]])  # milliseconds of jitter in passes below the floor
        0.02
    """
    spreads = sorted((max(t) - min(t)) / max(min(t), floor) for t in rounds if t)
    if not spreads:
        return 0.0
    mid = len(spreads) // 2
    return round(spreads[mid] if len(spreads) % 2 else (spreads[mid - 1] + spreads[mid]) / 2, 6)


def thread_choices(threads: int) -> list[int]:
    """Thread counts worth timing: ``threads``, and the physical cores where hyper-threads double them."""
    physical = physical_cores()
    return sorted({threads, physical}) if physical < threads else [threads]


def _fastest(fn: Callable[[], Any]) -> float:
    with torch.inference_mode():
        fn()
        times = []
        for _ in range(ROUNDS + 1):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return min(times)


def _sample(windows: Sequence[Sequence[int]], tokens: int) -> list[Sequence[int]]:
    """About ``tokens`` real tokens of ``windows``, drawn at random (seeded) so that the lengths mix as in the call."""
    order = list(range(len(windows)))
    random.Random(0).shuffle(order)
    out: list[Sequence[int]] = []
    total = 0
    for i in order:
        if total >= tokens:
            break
        out.append(windows[i])
        total += len(windows[i])
    return out
