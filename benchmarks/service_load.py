"""Load test of `hrlm serve`: throughput and latency with micro-batching on and off, against offline docs/s.

Example:
    python benchmarks/service_load.py --model /tmp/hrlm-imdb-model --clients 32 \\
        --short-requests 2000 --long-requests 240

For each dataset (short texts: the packaged helpdesk tickets, about 30 tokens each; long texts: IMDB
test reviews from ``--imdb``, skipped when absent) the script measures, in one run and with one model:

- ``Predictor offline``: ``Predictor.predict`` on all the requests' texts in one call, in this
  process (length-sorted, packed batches without padding: the best the library does without a
  server);
- ``service batching on`` and ``service batching off``: ``hrlm serve`` started as a subprocess on a
  free loopback port with a fresh SQLite database (every prediction stored, ``synchronous=FULL``),
  then ``--clients`` concurrent clients, each on its own keep-alive connection, sending one text per
  ``POST /v1/predict`` until ``--*-requests`` requests are answered. Batching off is one request per
  model call, one at a time.

The offline figure is measured before and after the two service runs and averaged, so a slow spell
of this shared machine weighs on both sides. The clients speak raw HTTP/1.1 over asyncio streams:
a full HTTP client library costs more CPU per request than the server's own work, and on two cores
that would measure the client. Reported per row: docs/s, p50/p95/p99 latency, errors (non-200 or
not stored), mean texts per model call (from /metrics), and docs/s relative to offline.
The whole measurement is repeated ``--repeats`` times (default 3): on a shared two-core machine one
run's ratio moves by several points, so the summary gives each run's figures and their median.
Writes ``benchmarks/results/service_load-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_run_options, print_table, write_result

IMDB_DEFAULT = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imdb" / "test.csv.gz"


def short_texts() -> list[str]:
    """Every ticket of the packaged samples (helpdesk_tickets.csv and incoming_tickets.csv)."""
    import pandas as pd

    texts: list[str] = []
    for name in ("helpdesk_tickets.csv", "incoming_tickets.csv"):
        with resources.as_file(resources.files("hrlm") / "samples" / name) as path:
            texts += [str(t) for t in pd.read_csv(path)["text"].dropna()]
    return texts


def long_texts(path: Path, n: int, seed: int) -> list[str]:
    from hrlm.data import load_dataset

    ds = load_dataset(path)
    idx = sorted(random.Random(seed).sample(range(len(ds)), min(n, len(ds))))
    return [ds.texts[i] for i in idx]


def offline_docs_per_s(model: Path, texts: list[str], args: argparse.Namespace, chunk: int | None = None) -> float:
    """Docs/s of the Predictor the service builds (same backend, threads, token budget), in this process.

    All texts in one call, or with ``chunk``, in consecutive calls of that many texts.
    """
    from hrlm.service.served_model import LoadedModel, ModelRef

    predictor = LoadedModel.load(ModelRef("offline", model), threads=args.threads, max_tokens=args.max_tokens).predictor
    predictor.predict(texts[:32])  # warm-up
    step = chunk or len(texts)
    start = time.perf_counter()
    for i in range(0, len(texts), step):
        predictor.predict(texts[i : i + step])
    seconds = time.perf_counter() - start
    del predictor
    gc.collect()
    return len(texts) / seconds


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """``hrlm serve`` in a subprocess with a client and an admin user.

    Args:
        db_url: its database (default: a SQLite file of its own, removed by :meth:`stop`).
        settings: more ``HRLM_*`` variables for the server (``{"HRLM_REVIEW_FILL_S": "0"}``).
    """

    def __init__(
        self,
        model: Path,
        *,
        batching: bool,
        args: argparse.Namespace,
        db_url: str | None = None,
        settings: dict[str, str] | None = None,
    ) -> None:
        from hrlm.store import create_user, make_engine, upgrade

        self.tmp = tempfile.TemporaryDirectory(prefix="hrlm-load-")
        self.db_url = db_url or f"sqlite:///{Path(self.tmp.name) / 'hrlm.db'}"
        engine = make_engine(self.db_url)
        upgrade(engine)
        self.token = create_user(engine, "load", "client")
        self.admin = create_user(engine, "ops", "admin")
        engine.dispose()
        self.port = free_port()
        env = {
            **os.environ,
            "HRLM_DATABASE_URL": self.db_url,
            "HRLM_BATCHING": "true" if batching else "false",
            "HRLM_MAX_BATCH": str(args.max_batch),
            "HRLM_MAX_WAIT_MS": str(args.max_wait_ms),
            "HRLM_RATE_LIMIT": "0",
            "HRLM_MAX_QUEUE": "100000",
            "HRLM_REQUEST_TIMEOUT_S": "300",
            "HRLM_LOG_LEVEL": "warning",
            **(settings or {}),
        }
        if args.threads:
            env["HRLM_THREADS"] = str(args.threads)
        if getattr(args, "max_tokens", None):
            env["HRLM_MAX_TOKENS"] = str(args.max_tokens)
        cmd = [sys.executable, "-m", "hrlm.cli", "serve", "--model", str(model), "--port", str(self.port)]
        self.log = Path(self.tmp.name) / "serve.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"hrlm serve exited: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                status, _ = asyncio.run(_get(self.port, "/readyz", None))
                if status == 200:
                    return
            time.sleep(0.3)
        self.stop()
        raise SystemExit("hrlm serve did not become ready in 180 s")

    async def snapshot(self) -> dict[str, float]:
        """Server CPU seconds so far, and the /metrics counters this script reads."""
        _, body = await _get(self.port, "/metrics", self.admin)
        values = {"cpu_s": self.cpu_seconds()}
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in ("hrlm_batch_size_count", "hrlm_batch_size_sum", "hrlm_inference_duration_seconds_sum"):
                values[name] = float(value)
        return values

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server process so far (all its threads)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.tmp.cleanup()


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    writer.write(request)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b""):
            break
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _request(method: str, path: str, token: str | None, body: bytes = b"") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    if body:
        head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    return head.encode() + b"\r\n" + body


async def _get(port: int, path: str, token: str | None) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return await _exchange(reader, writer, _request("GET", path, token))
    finally:
        writer.close()


async def load(server: Server, texts: list[str], n_requests: int, clients: int) -> dict[str, Any]:
    """``clients`` keep-alive connections sending one text per request until ``n_requests`` are answered.

    Every connection sends two warm-up requests first; the clock and the server's counters start after them.
    """
    port, token = server.port, server.token
    bodies = [json.dumps({"text": t}).encode() for t in texts]
    counter = itertools.count()
    latencies: list[float] = []
    errors: list[str] = []

    async def client(warmup: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for _ in range(warmup):
                await _exchange(reader, writer, _request("POST", "/v1/predict", token, bodies[0]))
            ready.append(1)
            await start.wait()
            while (i := next(counter)) < n_requests:
                request = _request("POST", "/v1/predict", token, bodies[i % len(bodies)])
                t0 = time.perf_counter()
                status, body = await _exchange(reader, writer, request)
                latencies.append(time.perf_counter() - t0)
                if status != 200:
                    errors.append(f"{status}: {body[:200]!r}")
                elif b'"stored":true' not in body:
                    errors.append("answered but not stored")
        finally:
            writer.close()

    start = asyncio.Event()
    ready: list[int] = []
    tasks = [asyncio.create_task(client(warmup=2)) for _ in range(clients)]
    # every client has warmed up its connection (and the model) before the clock starts
    while len(ready) < clients and not any(t.done() for t in tasks):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.5)  # the last warm-up answers are stored and counted
    base = await server.snapshot()
    t0 = time.perf_counter()
    start.set()
    await asyncio.gather(*tasks)
    seconds = time.perf_counter() - t0
    end = await server.snapshot()
    lat = sorted(latencies)
    calls = end["hrlm_batch_size_count"] - base["hrlm_batch_size_count"]
    done = end["hrlm_batch_size_sum"] - base["hrlm_batch_size_sum"]
    model_s = end["hrlm_inference_duration_seconds_sum"] - base["hrlm_inference_duration_seconds_sum"]

    def pct(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 1)

    return {
        "requests": len(lat),
        "seconds": round(seconds, 2),
        "docs_s": round(len(lat) / seconds, 1),
        "p50_ms": pct(0.50),
        "p95_ms": pct(0.95),
        "p99_ms": pct(0.99),
        "errors": len(errors),
        "first_errors": errors[:3],
        "mean_batch": round(done / calls, 2) if calls else None,
        # where the server's time went: its CPU per request, and the share of the wall time the model computed
        "server_cpu_ms_per_req": round(1000 * (end["cpu_s"] - base["cpu_s"]) / max(1, len(lat)), 2),
        "model_busy": round(model_s / seconds, 3),
    }


def run_dataset(name: str, texts: list[str], n_requests: int, args: argparse.Namespace) -> dict[str, Any]:
    """``--repeats`` runs of :func:`run_once`; the summary holds each run's figures and their median."""
    runs = []
    for i in range(args.repeats):
        print(f"[{name}] run {i + 1} of {args.repeats}", flush=True)
        runs.append(run_once(name, texts, n_requests, args))
    rows = [{"run": i + 1, **row} for i, run in enumerate(runs) for row in run["rows"]]
    summary: dict[str, Any] = {"runs": len(runs)}
    for key in ("service_vs_offline", "batching_speedup"):
        values = [run["summary"][key] for run in runs]
        summary[key] = round(statistics.median(values), 3)
        summary[f"{key}_per_run"] = values
    summary["zero_errors"] = all(run["summary"]["zero_errors"] for run in runs)
    return {"rows": rows, "summary": summary}


def run_once(name: str, texts: list[str], n_requests: int, args: argparse.Namespace) -> dict[str, Any]:
    used = [texts[i % len(texts)] for i in range(n_requests)]
    print(f"[{name}] {n_requests} requests over {len(texts)} distinct texts, {args.clients} clients", flush=True)
    before = offline_docs_per_s(args.model, used, args)
    print(f"[{name}] offline {before:.1f} docs/s", flush=True)
    rows: list[dict[str, Any]] = []
    for batching in (True, False):
        server = Server(args.model, batching=batching, args=args)
        try:
            result = asyncio.run(load(server, texts, n_requests, args.clients))
        finally:
            server.stop()
        row = {"system": f"service batching {'on' if batching else 'off'}", "clients": args.clients, **result}
        print(f"[{name}] {row}", flush=True)
        rows.append(row)
    after = offline_docs_per_s(args.model, used, args)
    offline = (before + after) / 2
    print(f"[{name}] offline again {after:.1f} docs/s", flush=True)
    chunk = max(1, round(rows[0]["mean_batch"] or 1))
    chunked = offline_docs_per_s(args.model, used, args, chunk=chunk)
    print(f"[{name}] offline in calls of {chunk} texts {chunked:.1f} docs/s", flush=True)
    for row in rows:
        row["vs_offline"] = round(row["docs_s"] / offline, 3)
    on, off = rows
    summary = {
        "batching_speedup": round(on["docs_s"] / off["docs_s"], 2),
        "service_vs_offline": on["vs_offline"],
        "zero_errors": all(r["errors"] == 0 for r in rows),
    }
    offline_row = {
        "system": "Predictor offline",
        "clients": None,
        "requests": n_requests,
        "docs_s": round(offline, 1),
        "docs_s_before": round(before, 1),
        "docs_s_after": round(after, 1),
    }
    chunked_row = {
        "system": f"Predictor offline, calls of {chunk} texts (the service's mean batch)",
        "clients": None,
        "requests": n_requests,
        "docs_s": round(chunked, 1),
        "vs_offline": round(chunked / offline, 3),
    }
    return {"rows": [offline_row, chunked_row, *rows], "summary": summary}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="model folder to serve (e.g. an IMDB model)")
    parser.add_argument("--imdb", type=Path, default=IMDB_DEFAULT, help="IMDB test file; long texts skipped if absent")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--short-requests", type=int, default=2000)
    parser.add_argument("--long-requests", type=int, default=240)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the model (default: all cores)")
    parser.add_argument("--max-tokens", type=int, default=None, help="token budget per forward pass (service default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats", type=int, default=3, help="whole runs per dataset; the summary is their median (noisy machines)"
    )
    add_run_options(parser)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats {args.repeats}: give at least 1")

    datasets: list[tuple[str, str, list[str], int]] = [
        ("helpdesk_tickets", "packaged helpdesk_tickets.csv + incoming_tickets.csv", short_texts(), args.short_requests)
    ]
    if args.imdb.is_file():
        texts = long_texts(args.imdb, args.long_requests, args.seed)
        datasets.append(
            ("imdb", f"{len(texts)} reviews of {args.imdb.name}, seed {args.seed}", texts, args.long_requests)
        )
    else:
        print(f"skipping IMDB: {args.imdb} not found", flush=True)
    for name, split, texts, n in datasets:
        result = run_dataset(name, texts, n, args)
        print_table(result["rows"], f"hrlm serve under load: {name}, model {args.model.name}")
        print(json.dumps(result["summary"]))
        path = write_result(
            f"service_load-{name}",
            {
                "benchmark": "service_load",
                "dataset": name,
                "split": split,
                "model": args.model.name,
                "settings": {
                    "clients": args.clients,
                    "max_batch": args.max_batch,
                    "max_wait_ms": args.max_wait_ms,
                    "threads": args.threads,
                    "max_tokens": args.max_tokens,
                    "repeats": args.repeats,
                    "store": "sqlite, synchronous=FULL, redacted text",
                },
                **result,
            },
            args=args,
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
