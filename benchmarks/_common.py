"""Shared helpers of the benchmark scripts: what every results file records, and the tables they print.

Every script calls :func:`add_run_options` on its parser (``--note``, repeatable, and
``--results-dir``) and hands its figures to :func:`write_result`, which adds the record of the run
in the shape of ``benchmarks/results.schema.json`` (``schema_version`` 2):

- ``command`` and ``argv``: the command as run, with paths inside the project and ``../shared``
  written relative to the project root and any other absolute path as ``<local>/<its name>``;
- ``notes``: the script's own notes, then every ``--note`` given on the command line;
- ``git_commit`` and ``git_dirty`` (tracked files other than results differ from that commit), read when
  the run started;
- ``versions`` of python, torch, transformers and hrlm;
- ``machine``: CPU, its instruction sets that matter here (``flags``: AVX2, AVX-512, AVX-512 BF16, VNNI,
  AMX: CPUs of one model name differ in them), usable cores, native bf16, GPU, and ``matmul_gflops``,
  the matrix-product rates measured in this run (:func:`matmul_gflops`), so that a reader can tell a
  slow machine from a slow system. :func:`ceiling` is the fastest of them, the rate the speed
  benchmarks compare with.

Example:
    parser = argparse.ArgumentParser()
    add_run_options(parser)
    args = parser.parse_args()
    ...
    write_result("accuracy-imdb", {"benchmark": "accuracy", ...}, args=args)
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from hrlm._fs import atomic_file

PROJECT = Path(__file__).resolve().parents[1]
SHARED = PROJECT.parent / "shared"  # the data sets: ../shared/data/... from the project root
RESULTS = PROJECT / "benchmarks" / "results"
SCHEMA_VERSION = 2
MATMUL_SIZE = 2048  # square products: large enough to reach a core's peak, a second or two on 2 cores
MATMUL_REPEATS = 5
# A GPU reaches its peak only on large products: an H200 runs 2,048-square bf16 products at a fraction of
# the 8,192-square rate its vendor's figure is measured at
GPU_MATMUL_SIZE = 8192
# An absolute path of one machine, as the results test looks for it (not "<local>/x", not "../shared/x").
MACHINE_PATH = re.compile(r"(?<![\w.~>-])/(?:tmp|work|root|home)(?:/|\b)")
# Keys write_result sets itself; a payload holding one would silently replace the record of the run.
RECORD_KEYS = (
    "schema_version",
    "command",
    "argv",
    "git_commit",
    "git_dirty",
    "date",
    "versions",
    "machine",
)


def peak_gpu_mb() -> float | None:
    """The most GPU memory torch's allocator held at once in this process, or None without a GPU."""
    import torch

    if not torch.cuda.is_available():
        return None
    return round(torch.cuda.max_memory_reserved() / 2**20, 1)


def require_device(parser: argparse.ArgumentParser, device: str) -> None:
    """Stop with a usage error when ``--device cuda`` is asked for on a machine without a CUDA GPU."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is visible")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--note`` (repeatable) and ``--results-dir`` to a benchmark's parser.

    Also reads the git state now, at the start of the run: see :func:`git_state`.
    """
    parser.add_argument(
        "--note",
        action="append",
        default=[],
        metavar="TEXT",
        help="a note stored under 'notes' in the results file (repeat for several)",
    )
    parser.add_argument(
        "--results-dir",
        type=Path,
        default=RESULTS,
        help="folder of the results files (default: benchmarks/results)",
    )
    git_state()


def portable_path(value: str | os.PathLike[str], cwd: Path | None = None) -> str:
    """A path as a results file may record it: relative to the project root, or ``<local>/<name>``.

    Paths inside the project, or inside ``../shared`` next to it, become relative to the project root,
    as a command run from a clean clone would name them; any other path exists on one machine only and
    keeps just its last component.

    Example:
        >>> portable_path(PROJECT / "runs" / "imdb")
        'runs/imdb'
        >>> portable_path("/tmp/hrlm-imdb-model")
        '<local>/hrlm-imdb-model'
    """
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = (cwd or Path.cwd()) / path
    # normpath first: a symlink inside the project stays a project path; resolve() for the other way round
    for candidate in (Path(os.path.normpath(path)), path.resolve()):
        for root in (PROJECT, SHARED):
            if candidate == root or root in candidate.parents:
                return os.path.relpath(candidate, PROJECT)
    return f"<local>/{path.name}"


def _is_absolute_path(value: str) -> bool:
    """An absolute path of this machine: starts at an existing top-level folder, no white space."""
    if not value.startswith(("/", "~/")) or any(c.isspace() for c in value):
        return False
    top = Path(value).expanduser().parts[:2]
    return len(top) == 2 and Path(*top).exists()


def portable_argv(argv: Sequence[str], cwd: Path | None = None) -> list[str]:
    """``argv`` with every path made portable (:func:`portable_path`); other arguments unchanged.

    A path is the script (``argv[0]``), an absolute path of this machine, or a relative path that exists
    from ``cwd``; ``--option=value`` is looked at on its value.
    """
    cwd = cwd or Path.cwd()

    def exists(arg: str) -> bool:
        try:
            return (cwd / arg).exists()
        except OSError:  # a --note longer than a file name can be
            return False

    def convert(arg: str) -> str:
        if _is_absolute_path(arg) or (arg and not arg.startswith("-") and exists(arg)):
            return portable_path(arg, cwd)
        return arg

    out = [portable_path(argv[0], cwd)] if argv else []
    for arg in argv[1:]:
        if arg.startswith("--") and "=" in arg:
            option, value = arg.split("=", 1)
            out.append(f"{option}={convert(value)}")
        else:
            out.append(convert(arg))
    return out


def command(argv: Sequence[str] | None = None) -> str:
    """The command line as run, for a shell at the project root (:func:`portable_argv`)."""
    return shlex.join(["python", *portable_argv(sys.argv if argv is None else argv)])


def portable_command(text: str) -> str:
    """A ``python ...`` command line recorded earlier, with its paths made portable; other texts unchanged.

    Example:
        >>> portable_command("python benchmarks/fewshot.py --merge /tmp/a.json")
        "python benchmarks/fewshot.py --merge '<local>/a.json'"
    """
    try:
        words = shlex.split(text)
    except ValueError:
        return text
    if len(words) < 2 or words[0] != "python":
        return text
    return shlex.join(["python", *portable_argv(words[1:], cwd=PROJECT)])


@functools.cache
def git_state() -> tuple[str | None, bool | None]:
    """The commit checked out and whether tracked files differ from it; (None, None) outside a git checkout.

    Read once per process, first by :func:`add_run_options`: a run of hours on a tree edited meanwhile ran
    the code of its start. Untracked files do not count (scratch data and models live there), nor do
    results files (``benchmarks/results/``): one written by an earlier run leaves the code as it was, and
    two benchmarks run one after the other in a script would otherwise record the second as dirty.

    ``HRLM_GIT_COMMIT`` overrides both, for a copy of the tree run elsewhere (a lent GPU machine, whose
    copy may carry the ``.git`` of an older commit beside newer files): the sender sets it to its own
    clean checkout's ``git rev-parse HEAD``, and whether the copy was dirty is then unknown (None).
    """
    given = os.environ.get("HRLM_GIT_COMMIT", "").strip().lower()
    if re.fullmatch(r"[0-9a-f]{7,40}", given):
        return given, None

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=PROJECT).stdout

    try:
        commit = git("rev-parse", "HEAD").strip()
        dirty = bool(
            git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results").strip()
        )
    except (OSError, subprocess.CalledProcessError):
        return None, None
    return commit, dirty


def versions() -> dict[str, str | None]:
    """Versions of python, torch, transformers and hrlm in this process."""
    from importlib import metadata

    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    import torch

    from hrlm import __version__ as hrlm_version

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": version("transformers"),
        "hrlm": hrlm_version,
    }


def matmul_gflops(
    m: int = MATMUL_SIZE,
    k: int = MATMUL_SIZE,
    n: int = MATMUL_SIZE,
    *,
    threads: int | None = None,
    precisions: Sequence[str] = ("fp32", "bf16"),
    repeats: int = MATMUL_REPEATS,
    statistic: str = "median",
    device: str = "cpu",
) -> dict[str, float | None]:
    """GFLOP/s of ``(m, k) @ (k, n)`` products per precision (2 FLOPs per multiply-add), None where one fails.

    One warm-up product, then ``repeats`` timed ones; ``statistic`` "median" reports the typical rate,
    "best" the fastest (a limit: what the machine reaches at all). ``int8`` is torch's dynamic int8
    linear layer (CPU only). Runs on ``threads`` threads (default: torch's current count), restored after.

    Example:
        >>> rates = matmul_gflops(256, 256, 256, threads=1, precisions=("fp32",))
        >>> rates["fp32"] > 0
        True
    """
    import torch
    from torch import nn

    if statistic not in ("median", "best"):
        raise ValueError(f"statistic {statistic!r}: use 'median' or 'best'")
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    flops = 2.0 * m * k * n

    def rate(fn: Callable[[], Any]) -> float:
        fn()
        sync()
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - t0)
        seconds = min(times) if statistic == "best" else statistics.median(times)
        return round(flops / seconds / 1e9, 1)

    rates: dict[str, float | None] = {}
    try:
        with torch.inference_mode():
            for name in precisions:
                try:
                    if name == "int8":
                        with warnings.catch_warnings():
                            warnings.simplefilter("ignore")  # quantize_dynamic's deprecation notice
                            linear = torch.ao.quantization.quantize_dynamic(
                                nn.Sequential(nn.Linear(k, n)), {nn.Linear}, dtype=torch.qint8
                            )
                        rates[name] = rate(functools.partial(linear, torch.randn(m, k)))
                    else:
                        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
                        a = torch.randn(m, k, dtype=dtype, device=device)
                        b = torch.randn(k, n, dtype=dtype, device=device)
                        rates[name] = rate(functools.partial(torch.mm, a, b))
                except (RuntimeError, NotImplementedError):  # a precision this build or device lacks
                    rates[name] = None
    finally:
        torch.set_num_threads(before)
    return rates


@functools.cache
def _machine_rates(threads: int) -> dict[str, Any]:
    import torch

    from hrlm.inference.backends import cpu_has_fast_bf16

    size, repeats = MATMUL_SIZE, MATMUL_REPEATS
    # Without AVX-512 BF16 or AMX, torch emulates bf16 products at a few GFLOP/s (a 2,048-square one
    # takes a minute on a 2-core AVX2 EPYC): not a rate anyone computes at, so not measured (null).
    precisions = ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",)
    rates = matmul_gflops(size, size, size, threads=threads, repeats=repeats, precisions=precisions)
    return {
        "size": size,
        "repeats": repeats,
        "statistic": "median",
        "threads": threads,
        "fp32": rates["fp32"],
        "bf16": rates.get("bf16"),
        "gpu": _gpu_rates(repeats) if torch.cuda.is_available() else None,
    }


def _gpu_rates(repeats: int) -> dict[str, Any]:
    """The GPU's fp32 and bf16 rates at ``GPU_MATMUL_SIZE`` squared: products big enough to fill a data-centre GPU."""
    size = GPU_MATMUL_SIZE
    rates = matmul_gflops(size, size, size, repeats=repeats, device="cuda", statistic="median")
    return {"size": size, "fp32": rates["fp32"], "bf16": rates["bf16"]}


def _cpu_model() -> str:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return cpu


def machine(threads: int | None = None) -> dict[str, Any]:
    """CPU model and instruction sets, usable cores, native bf16, GPU, and matrix-product rates at ``threads`` threads.

    The rates (:func:`matmul_gflops`, ``MATMUL_SIZE`` squared, fp32 and, where the CPU has native
    bf16, bf16, median of ``MATMUL_REPEATS``) are measured once per process and thread count, at the
    first call; ``threads`` defaults to torch's current count, the run's own where the script set it.
    """
    import torch

    from hrlm.inference.calibrate import machine as calibration_machine
    from hrlm.inference.predictor import cpu_has_fast_bf16, default_threads

    return {
        "cpu": _cpu_model(),
        "flags": calibration_machine()["flags"],
        "cores": default_threads(),
        "cpu_bf16": cpu_has_fast_bf16(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "matmul_gflops": _machine_rates(threads or torch.get_num_threads()),
    }


def ceiling(rates: dict[str, Any]) -> tuple[str, float | None]:
    """The machine's matrix-product ceiling in ``rates`` (a ``matmul_gflops`` record): the faster of fp32 and bf16.

    bf16 where the CPU (or GPU) multiplies it natively, fp32 on a CPU without AVX-512 BF16 or AMX,
    where ``rates`` holds no bf16 rate.

    Example:
        >>> ceiling({"fp32": 200.0, "bf16": 850.0}), ceiling({"fp32": 110.0, "bf16": None})
        (('bf16', 850.0), ('fp32', 110.0))
    """
    measured = {p: float(rates[p]) for p in ("fp32", "bf16") if rates.get(p)}
    if not measured:
        return "fp32", None
    best = max(measured, key=lambda p: measured[p])
    return best, measured[best]


def run_record(notes: Iterable[str] = (), threads: int | None = None) -> dict[str, Any]:
    """Everything a results file records about its run, besides the figures (see the module docstring)."""
    commit, dirty = git_state()
    return {
        "schema_version": SCHEMA_VERSION,
        "command": command(),
        "argv": portable_argv(sys.argv),
        "notes": list(notes),
        "git_commit": commit,
        "git_dirty": dirty,
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "versions": versions(),
        "machine": machine(threads),
    }


def _portable_values(value: Any) -> Any:
    """``value`` with every string that is an absolute path of this machine made portable."""
    if isinstance(value, str):
        return portable_path(value) if _is_absolute_path(value) else value
    if isinstance(value, Path):
        return portable_path(value)
    if isinstance(value, dict):
        return {k: _portable_values(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_portable_values(v) for v in value]
    return value


def write_result(
    name: str,
    payload: dict[str, Any],
    *,
    notes: Iterable[str] = (),
    results_dir: Path | None = None,
    threads: int | None = None,
    args: argparse.Namespace | None = None,
) -> Path:
    """Write ``<results_dir>/<name>.json``: the payload's figures with the record of the run.

    Args:
        name: the file name without ``.json``: ``<benchmark>-<dataset>[-<variant>]``.
        payload: ``benchmark``, ``dataset``, ``split``, ``rows`` and whatever else the script measured;
            its own ``notes`` come first in the file's ``notes``. Strings that are absolute paths of this
            machine are written as :func:`portable_path` gives them.
        notes: the ``--note`` texts of the command line.
        results_dir: default ``benchmarks/results``.
        threads: the run's thread count, at which the matrix-product rates are measured (default: torch's).
        args: a script's parsed options; its ``--note``, ``--results-dir`` and ``--threads`` (where the
            script has one) stand for the three arguments above.

    Returns:
        The path written.

    Raises:
        ValueError: the payload holds a key of the run's record (``command``, ``machine``, ...).
    """
    if args is not None:
        notes, results_dir, threads = args.note, args.results_dir, getattr(args, "threads", None)
    clash = sorted(set(payload) & set(RECORD_KEYS))
    if clash:
        raise ValueError(f"payload keys {clash} are written by write_result itself; rename them in the script")
    payload = dict(payload)
    record = run_record([*payload.pop("notes", []), *notes], threads)
    doc = {
        "schema_version": record.pop("schema_version"),
        "benchmark": payload.pop("benchmark"),
        "dataset": payload.pop("dataset"),
        "split": payload.pop("split"),
        **record,
        **_portable_values(payload),
    }
    text = json.dumps(doc, indent=2) + "\n"
    found = sorted({m.group(0).rstrip("/") for m in MACHINE_PATH.finditer(text)})
    if found:
        print(
            f"warning: {name}.json names paths of this machine ({', '.join(found)}) inside longer texts; "
            "tests/benchmarks/test_results_schema.py will reject it",
            file=sys.stderr,
        )
    folder = results_dir or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    with atomic_file(path) as fh:  # a run killed while writing leaves the previous file, not half of one
        fh.write(text)
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
