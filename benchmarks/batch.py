"""``hrlm batch`` at volume: the local engine against Ray Data on one machine, memory as the input grows,
and one job on two Ray nodes.

Example:
    python benchmarks/batch.py --model runs/imdb                      # 25,000 IMDB test reviews
    python benchmarks/batch.py --model runs/imdb --repeat 10           # the file ten times: 250,000 rows
    python benchmarks/batch.py --model runs/imdb --two-nodes --limit 2000
    python benchmarks/batch.py --model <tiny model> --limit 200 --two-nodes --results-dir /tmp/r  # a check

The input is ``imdb/test.csv.gz`` of ``../shared/data`` (columns id, text, label, rating; ``--limit``
keeps its first rows), written ``--repeat`` times into one CSV with a ``row`` column, so that a
larger input is one longer stream. Each engine runs ``hrlm.inference.run_batch`` in a fresh
subprocess (the same work as ``hrlm batch``); a sampler adds up the memory of that process and of
every process under it, Ray's GCS, raylet and workers included, every 0.2 s: the peak of the sum of
the proportional set sizes (PSS: a page shared by n processes counts 1/n in each, so the sum is the
memory the tree holds) and of the resident set sizes (RSS, which counts shared pages once per process),
read from ``/proc/PID/smaps_rollup``; per kind of process, also the heap and the shared memory (Ray's object
store, mapped into the workers that read it) within its PSS, and the tree's PSS every 15 s (a timeline).

Reported per engine: seconds (Ray's start and the actors' model loading included), rows/s, peak
PSS and RSS; Ray's overhead, ``ray seconds / local seconds - 1``; whether the two engines' outputs
agree (labels identical, largest difference of a probability). ``--two-nodes`` starts a head
(``ray start --head --num-cpus 1``) and a second node (``ray start --address ... --num-cpus 1``) on
this machine, each with its own temporary folder so that they are two raylets, runs the ray engine
with ``--address`` and two actors of one core, and records each actor's node and rows; both nodes
are stopped at the end. Writes ``benchmarks/results/batch-imdb[-<variant>].json``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, add_run_options, print_table, write_result

RUN = """
import json, sys
from hrlm.config import BatchConfig
from hrlm.inference import run_batch
model, source, out, settings, summary_path = sys.argv[1:6]
summary = run_batch(model, source, out, BatchConfig(**json.loads(settings)), progress=False)
with open(summary_path, "w") as fh:
    json.dump(summary.to_dict(), fh)
"""


def write_input(data: Path, folder: Path, limit: int | None, repeat: int) -> tuple[Path, int]:
    """The reviews (the first ``limit``), ``repeat`` times, as one CSV with a ``row`` column; its row count."""
    import pandas as pd

    frame = pd.read_csv(data, dtype=str, keep_default_na=False, nrows=limit)
    path = folder / "reviews.csv"
    for copy in range(repeat):
        part = frame.assign(row=range(copy * len(frame), (copy + 1) * len(frame)))
        part.to_csv(path, mode="a", header=copy == 0, index=False)
    return path, len(frame) * repeat


def process_group(proc: Any, root: int) -> str:
    """What a process of the tree is: ``driver`` (the run itself), a Ray worker by its title without the
    method it runs now (``ray::MapWorker(MapBatches(Scorer))`` for ``...(Scorer)).submit``, ``ray::IDLE``),
    or a program by its name (``raylet``, ``gcs_server``, ``log_monitor.py``)."""
    if proc.pid == root:
        return "driver"
    try:
        cmdline = proc.cmdline()
        name = proc.name()
    except Exception:  # gone or unreadable meanwhile
        return "other"
    first = cmdline[0] if cmdline else name
    if first.startswith("ray::"):
        return worker_title(first.split()[0])
    scripts = [Path(a).name for a in cmdline[1:3] if a.endswith(".py")]
    return scripts[0] if scripts else Path(first).name or name


def worker_title(title: str) -> str:
    """A Ray worker's title without the method it runs and the count of a fused read.

    Example:
        >>> worker_title("ray::MapWorker(MapBatches(Scorer)).submit"), worker_title("ray::Tally.add")
        ('ray::MapWorker(MapBatches(Scorer))', 'ray::Tally')
        >>> worker_title("ray::ReadCSV->SplitBlocks(3)")
        'ray::ReadCSV->SplitBlocks'
    """
    title = title[: title.rindex(")") + 1] if ")" in title else title.split(".")[0]
    return re.sub(r"\(\d+\)$", "", title)


# what /proc/PID/smaps_rollup says of a process, in kB: RSS, PSS, and the anonymous (heap) and shared-memory
# (Ray's object store, mapped into every worker that reads it) parts of the PSS
ROLLUP_FIELDS = {"Rss": "rss", "Pss": "pss", "Pss_Anon": "anon", "Pss_Shmem": "shmem"}


def rollup(pid: int) -> dict[str, float] | None:
    """A process's memory in MiB from ``/proc/PID/smaps_rollup``; ``None`` when it is gone."""
    try:
        text = Path(f"/proc/{pid}/smaps_rollup").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    out: dict[str, float] = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ROLLUP_FIELDS:
            out[ROLLUP_FIELDS[key]] = int(rest.split()[0]) / 1024
    return out if "pss" in out else None


def tree_memory(pid: int) -> tuple[float, float, dict[str, dict[str, float]]]:
    """PSS and RSS, in MiB, of a process and every process under it (0 for those gone meanwhile), and for
    each :func:`process_group` its PSS, the anonymous and shared-memory parts of it, and its process count."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0, 0.0, {}
    pss = rss = 0.0
    groups: dict[str, dict[str, float]] = {}
    for proc in procs:
        mem = rollup(proc.pid)
        if mem is None:
            continue
        pss += mem["pss"]
        rss += mem.get("rss", 0.0)
        group = groups.setdefault(
            process_group(proc, pid), {"pss_mib": 0.0, "anon_mib": 0.0, "shmem_mib": 0.0, "processes": 0}
        )
        group["pss_mib"] += mem["pss"]
        group["anon_mib"] += mem.get("anon", 0.0)
        group["shmem_mib"] += mem.get("shmem", 0.0)
        group["processes"] += 1
    return pss, rss, groups


# seconds between two points of a run's memory timeline ([seconds, PSS MiB] pairs in the results)
TIMELINE_EVERY_S = 15.0


def run_engine(model: Path, source: Path, out: Path, settings: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    """Score ``source`` in a subprocess; its summary, wall time and the peak memory of its process tree.

    ``peak_pss_by_group`` is what each kind of process held at the moment the tree's PSS peaked, and
    ``group_peaks_mib`` each kind's own peak (at whatever moment): which of them grows with the input.
    """
    summary_path = out.parent / f"{out.name}.summary.json"
    cmd = [sys.executable, "-c", RUN, str(model), str(source), str(out), json.dumps(settings), str(summary_path)]
    peak: dict[str, Any] = {"pss": 0.0, "rss": 0.0, "groups": {}, "group_peaks": {}, "timeline": []}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pss, rss, groups = tree_memory(proc.pid)
            elapsed = time.perf_counter() - start
            if not peak["timeline"] or elapsed - peak["timeline"][-1][0] >= TIMELINE_EVERY_S:
                peak["timeline"].append([round(elapsed, 1), round(pss, 1)])
            if pss > peak["pss"]:
                peak["pss"], peak["groups"] = pss, groups
            peak["rss"] = max(peak["rss"], rss)
            for name, group in groups.items():
                peak["group_peaks"][name] = max(peak["group_peaks"].get(name, 0.0), group["pss_mib"])
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait()
    seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    if code != 0:
        raise SystemExit(f"the {settings['engine']} run failed (exit status {code})")
    summary = json.loads(summary_path.read_text())
    return {
        "seconds": round(seconds, 2),
        "rows_per_s": round(summary["rows"] / seconds, 1),
        "peak_pss_mib": round(peak["pss"], 1),
        "peak_rss_mib": round(peak["rss"], 1),
        "peak_pss_by_group": {
            name: {k: round(v, 1) for k, v in g.items() if k != "processes"} | {"processes": int(g["processes"])}
            for name, g in sorted(peak["groups"].items(), key=lambda kv: -kv[1]["pss_mib"])
        },
        "group_peaks_mib": {
            name: round(v, 1) for name, v in sorted(peak["group_peaks"].items(), key=lambda kv: -kv[1])
        },
        "pss_timeline_mib": peak["timeline"],
        "scored_rows": summary["rows"],
        "parts": summary["parts"],
        "actors": summary["actors"],
    }


def read_scored(folder: Path) -> Any:
    import pandas as pd

    parts = sorted(p for p in folder.glob("*.part-*.parquet") if not p.name.startswith("."))
    return pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True).sort_values(
        "row", key=lambda s: s.astype(int)
    )


def agreement(a: Path, b: Path) -> dict[str, Any]:
    """How far two output folders' predictions are apart, row by row."""
    left, right = read_scored(a), read_scored(b)
    assert left["row"].tolist() == right["row"].tolist(), "the two outputs hold different rows"
    probs = [c for c in left.columns if c.startswith("p_")] + ["score"]
    diff = (left[probs].to_numpy(dtype=float) - right[probs].to_numpy(dtype=float)).__abs__().max()
    same = (left["predicted_label"].to_numpy() == right["predicted_label"].to_numpy()).mean()
    return {"identical_labels": float(same), "max_probability_diff": float(diff)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_node(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``ray start ... --block`` as a child of this process: its Ray processes are ours to stop, no one else's."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    return subprocess.Popen([ray_cli, "start", *args, "--block"], env=env, start_new_session=True)


def stop_nodes(nodes: list[subprocess.Popen[bytes]]) -> None:
    """Stop the nodes this script started and every process under them (never ``ray stop``: it stops every
    Ray on the machine)."""
    import psutil

    procs = []
    for node in nodes:
        try:
            procs += [psutil.Process(node.pid), *psutil.Process(node.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.terminate()
    _, alive = psutil.wait_procs(procs, timeout=20)
    for proc in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            proc.kill()
    psutil.wait_procs(alive, timeout=10)


WAIT_FOR_NODES = """
import sys, time, ray
ray.init(address=sys.argv[1], log_to_driver=False, configure_logging=False)
deadline = time.time() + 180
while sum(n["Alive"] for n in ray.nodes()) < 2 and time.time() < deadline:
    time.sleep(1)
sys.exit(0 if sum(n["Alive"] for n in ray.nodes()) >= 2 else 1)
"""


def two_nodes(model: Path, source: Path, work: Path, batch_rows: int, env: dict[str, str]) -> dict[str, Any]:
    """Start a head and a second node of one core each, score on both, stop them; the actors' nodes."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    # Ray 2.60 makes a token for a new head that a second `ray start` on the same machine does not find;
    # this cluster lives on 127.0.0.1 for the length of one run, so it goes without
    env = {**env, "RAY_AUTH_MODE": "disabled"}
    # short folders: a raylet's socket path must stay under the 107 characters of AF_UNIX
    head_tmp, node_tmp = tempfile.mkdtemp(prefix="rh"), tempfile.mkdtemp(prefix="rn")
    common = ["--num-cpus", "1", "--disable-usage-stats"]
    nodes = []
    try:
        head_args = ["--head", "--node-ip-address", "127.0.0.1", "--port", str(port), "--temp-dir", head_tmp]
        nodes.append(start_node([*head_args, "--include-dashboard=false", *common], env))
        time.sleep(5)
        node_args = ["--address", address, "--node-ip-address", "127.0.0.1", "--temp-dir", node_tmp]
        nodes.append(start_node([*node_args, *common], env))
        subprocess.run([sys.executable, "-c", WAIT_FOR_NODES, address], check=True, env=env)
        settings = {"engine": "ray", "address": address, "actors": 2, "threads": 1, "batch_rows": batch_rows}
        result = run_engine(model, source, work / "two-nodes", settings, env)
    finally:
        stop_nodes(nodes)
        shutil.rmtree(head_tmp, ignore_errors=True)
        shutil.rmtree(node_tmp, ignore_errors=True)
    by_node: dict[str, dict[str, Any]] = {}
    for actor in result["actors"]:
        entry = {"node_id": actor["node_id"], "ip": actor["ip"], "actors": 0, "rows": 0}
        node = by_node.setdefault(actor["node_id"], entry)
        node["actors"] += 1
        node["rows"] += actor["rows"]
    result["nodes"] = list(by_node.values())
    result["both_nodes_scored"] = len(by_node) == 2 and all(n["rows"] > 0 for n in by_node.values())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model folder written by `hrlm train`")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "imdb" / "test.csv.gz")
    parser.add_argument("--limit", type=int, default=None, help="the first N reviews only (a quick check)")
    parser.add_argument("--repeat", type=int, default=1, help="write the reviews K times into the input")
    parser.add_argument("--batch-rows", type=int, default=4096)
    parser.add_argument("--threads", type=int, default=None, help="local threads (default: every core)")
    parser.add_argument("--actors", type=int, default=None, help="ray actors (default: cores / threads)")
    parser.add_argument("--ray-threads", type=int, default=None, help="threads per ray actor (default: 1)")
    parser.add_argument("--engines", default="local,ray", help="comma-separated: local, ray")
    parser.add_argument("--two-nodes", action="store_true", help="also run on a head and a second node")
    parser.add_argument("--variant", default=None, help="suffix of the results file name")
    add_run_options(parser)
    args = parser.parse_args()
    engines = [e for e in args.engines.split(",") if e]

    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    with tempfile.TemporaryDirectory(prefix="hrlm-batch-bench-") as tmp:
        work = Path(tmp)
        source, n_rows = write_input(args.data, work, args.limit, args.repeat)
        print(f"input: {n_rows} rows, {source.stat().st_size / 2**20:.1f} MiB", file=sys.stderr)
        results: dict[str, dict[str, Any]] = {}
        for engine in engines:
            settings: dict[str, Any] = {"engine": engine, "batch_rows": args.batch_rows}
            if engine == "local":
                settings["threads"] = args.threads
            else:
                settings.update(actors=args.actors, threads=args.ray_threads)
            results[engine] = run_engine(args.model, source, work / engine, settings, env)
            print(f"{engine}: {results[engine]}", file=sys.stderr)
        summary: dict[str, Any] = {}
        if {"local", "ray"} <= set(results):
            summary["ray_overhead"] = round(results["ray"]["seconds"] / results["local"]["seconds"] - 1, 4)
            summary.update(agreement(work / "local", work / "ray"))
        if args.two_nodes:
            results["ray, two nodes"] = two_nodes(args.model, source, work, args.batch_rows, env)
            summary["two_nodes"] = {k: results["ray, two nodes"][k] for k in ("nodes", "both_nodes_scored")}

    rows = [{"system": name, "rows_in": n_rows, **r} for name, r in results.items()]
    nested = ("actors", "nodes", "peak_pss_by_group", "group_peaks_mib", "pss_timeline_mib")
    print_table([{k: v for k, v in r.items() if k not in nested} for r in rows], "hrlm batch")
    groups = [
        {"system": r["system"], "process": name, "processes_at_peak": g["processes"], "pss_at_peak_mib": g["pss_mib"]}
        | {"of_it_heap_mib": g["anon_mib"], "of_it_shared_mib": g["shmem_mib"]}
        | {"own_peak_mib": r["group_peaks_mib"].get(name)}
        for r in rows
        for name, g in r["peak_pss_by_group"].items()
    ]
    print_table(groups, "memory by kind of process")
    variant = args.variant or (
        "-".join(
            p for p in (f"limit{args.limit}" if args.limit else "", f"x{args.repeat}" if args.repeat > 1 else "") if p
        )
    )
    name = "batch-imdb" + (f"-{variant}" if variant else "")
    payload = {
        "benchmark": "batch",
        "dataset": "imdb",
        "split": "test",
        "model": str(args.model),
        "settings": {
            "input_rows": n_rows,
            "repeat": args.repeat,
            "limit": args.limit,
            "batch_rows": args.batch_rows,
            "threads": args.threads,
            "actors": args.actors,
            "ray_threads": args.ray_threads,
        },
        "rows": rows,
        "summary": summary,
        "notes": [
            "seconds include starting Ray and loading the model in every actor; peak memory is that of the "
            "whole process tree (Ray's GCS, raylet and workers included), PSS summed",
            "ray, two nodes: the nodes are started apart from the scoring process, so its memory is the driver's only",
            "peak_pss_by_group: what each kind of process held when the tree peaked; anon_mib (heap) and shmem_mib "
            "(shared memory: Ray's object store mapped into the process) are parts of its pss_mib; "
            f"pss_timeline_mib: [seconds, the tree's PSS in MiB] every {TIMELINE_EVERY_S:.0f} s",
        ],
    }
    path = write_result(name, payload, args=args)
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
