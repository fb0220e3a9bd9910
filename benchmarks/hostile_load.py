"""Hostile input under load: no normal record lost and no 500, with 1 request in 10 hostile.

Example:
    python benchmarks/hostile_load.py --requests 400            # the tiny test model, SQLite and PostgreSQL
    python benchmarks/hostile_load.py --model runs/router --db postgres --requests 5000

``hrlm serve`` runs as a subprocess on a free loopback port (as in ``benchmarks/service_load.py``),
on a fresh SQLite file and on a fresh schema of PostgreSQL (``--postgres-url``, default the tests'
``postgresql://postgres@127.0.0.1:5432/test``). ``--clients`` concurrent clients (32), each on its
own keep-alive connection, send ``--requests`` ``POST /v1/predict`` requests; every
``--hostile-every``-th one (10) is hostile, so hostile texts share micro-batches and group commits
with normal ones: a NUL byte, lone surrogates sent as JSON ``\\ud800`` escapes, a list of good texts
with one NUL among them, empty, white-space-only, control-only and zero-width-only texts, a text
over ``max_text_chars``, invalid UTF-8 and invalid JSON. The normal texts are the packaged helpdesk
tickets.

Counted per database: normal requests answered 200 and ``"stored": true``; normal records lost (a
normal request not answered 200 with ``stored: true``, or whose records are not all in the database
afterwards: expected 0); responses with status 500 or above (expected 0); hostile requests answered
anything but a 4xx (expected 0); and the server's own count of failed record writes from /metrics.
Without ``--model`` the tiny random-weight BERT of ``tests/tiny_model.py`` is built and trained for
one epoch on the packaged tickets (the figures here are about storage, not accuracy). Writes
``benchmarks/results/hostile_load-<db>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.tiny_model

import service_load
from _common import add_run_options, print_table, write_result
from service_load import _exchange, _get, _request, short_texts

POSTGRES_DEFAULT = "postgresql://postgres@127.0.0.1:5432/test"
MAX_TEXT_CHARS = 20_000  # the service's default, which the over-long hostile text exceeds
# What a careless or hostile client sends: (kind, raw body), JSON escapes exactly as they go on the wire.
HOSTILE: list[tuple[str, bytes]] = [
    ("nul", b'{"text": "VPN \\u0000 login"}'),
    ("lone_high_surrogate", b'{"text": "\\ud800 payslip"}'),
    ("lone_low_surrogate", b'{"text": "payslip \\udc00"}'),
    ("nul_among_good_texts", b'{"texts": ["my payslip is late", "VPN \\u0000 login", "vacation days left"]}'),
    ("empty", b'{"text": ""}'),
    ("white_space", b'{"text": " \\t\\n "}'),
    ("control_only", b'{"text": "\\u0001\\u0002\\u007f"}'),
    ("zero_width_only", b'{"text": "\\u200b\\ufeff"}'),
    ("two_nuls", b'{"text": "\\u0000\\u0000"}'),
    ("over_max_text_chars", json.dumps({"text": "salary " * (MAX_TEXT_CHARS // 7 + 10)}).encode()),
    ("invalid_utf8", b'{"text": "\xff\xfe payslip"}'),
    ("invalid_json", b'{"text": "VPN'),
]


def tiny_model(folder: Path) -> Path:
    """The tiny test BERT, with the tickets' words in its vocabulary, trained one epoch on the tickets."""
    from tests.tiny_model import build_tiny_bert, frequent_words

    from hrlm.config import TrainConfig
    from hrlm.training.fitting import train

    with resources.as_file(resources.files("hrlm") / "samples" / "helpdesk_tickets.csv") as tickets:
        base = build_tiny_bert(folder / "tiny-bert", frequent_words(tickets))
        cfg = TrainConfig(base=str(base), max_length=64, epochs=1, batch_size=16, lr=3e-3, seed=0, pooling="mean")
        train(tickets, folder / "tiny-model", cfg, progress=False)
    return folder / "tiny-model"


@contextlib.contextmanager
def database(kind: str, postgres_url: str, tmp: Path) -> Iterator[str]:
    """A fresh database URL: a SQLite file, or a new PostgreSQL schema dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{tmp / f'hostile-{uuid.uuid4().hex[:8]}.db'}"
        return
    import psycopg

    schema = f"hrlm_hostile_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_url.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
        admin.execute(f'CREATE SCHEMA "{schema}"')
        try:
            yield f"{postgres_url}{'&' if '?' in postgres_url else '?'}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(f'DROP SCHEMA "{schema}" CASCADE')


class Server(service_load.Server):
    """:class:`service_load.Server` on ``db_url``, which also reads the store's failure counters."""

    def __init__(self, model: Path, db_url: str, args: argparse.Namespace) -> None:
        super().__init__(model, batching=True, args=args, db_url=db_url, settings={"HRLM_REVIEW_FILL_S": "0"})

    async def failed_writes(self) -> dict[str, float]:
        _, body = await _get(self.port, "/metrics", self.admin)
        wanted = ("hrlm_store_write_failures_total", "hrlm_store_failed_records_total")
        values = {name: 0.0 for name in wanted}
        for line in body.decode().splitlines():
            name, _, value = line.partition(" ")
            if name in wanted:
                values[name] = float(value)
        return values


async def load(server: Server, texts: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Send ``args.requests`` requests from ``args.clients`` connections; every ``hostile_every``-th is hostile."""
    counter = itertools.count()
    normal: list[tuple[int, int, bytes, int]] = []  # (status, texts sent, body answered, request number)
    hostile: list[tuple[str, int]] = []  # (kind, status)
    reconnects = 0

    async def client() -> None:
        nonlocal reconnects
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            while (i := next(counter)) < args.requests:
                is_hostile = i % args.hostile_every == args.hostile_every - 1
                if is_hostile:
                    kind, body = HOSTILE[(i // args.hostile_every) % len(HOSTILE)]
                    n = 0
                elif i % 4 == 0:
                    n = 3
                    body = json.dumps({"texts": [texts[(i + k) % len(texts)] for k in range(n)]}).encode()
                else:
                    n = 1
                    body = json.dumps({"text": texts[i % len(texts)]}).encode()
                try:
                    status, answer = await _exchange(
                        reader, writer, _request("POST", "/v1/predict", server.token, body)
                    )
                except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
                    # the server closed the connection (it may, after an error): count it, open another
                    status, answer = 0, b""
                    writer.close()
                    reconnects += 1
                    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                if is_hostile:
                    hostile.append((kind, status))
                else:
                    normal.append((status, n, answer, i))
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(args.clients)))
    seconds = time.perf_counter() - t0
    await asyncio.sleep(0.5)
    return {"normal": normal, "hostile": hostile, "seconds": seconds, "reconnects": reconnects}


def run_db(kind: str, model: Path, texts: list[str], args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from hrlm.store import make_engine
    from hrlm.store.records import count_predictions, predictions_of

    with database(kind, args.postgres_url, tmp) as url:
        server = Server(model, url, args)
        try:
            result = asyncio.run(load(server, texts, args))
            failed_writes = asyncio.run(server.failed_writes())
        finally:
            server.stop()
        engine = make_engine(url)
        try:
            lost_requests = 0
            lost_records = 0
            stored_normal_records = 0
            for status, n, answer, _ in result["normal"]:
                body = json.loads(answer) if status == 200 else {}
                rows = len(predictions_of(engine, body["request_id"])) if status == 200 else 0
                stored_normal_records += rows
                if status != 200 or body.get("stored") is not True or rows != n:
                    lost_requests += 1
                    lost_records += n - rows
            total_rows = count_predictions(engine)
        finally:
            engine.dispose()
    statuses = Counter(s for s, *_ in result["normal"]) + Counter(s for _, s in result["hostile"])
    hostile_by_kind: dict[str, dict[str, int]] = {}
    for name, status in result["hostile"]:
        hostile_by_kind.setdefault(name, {})
        hostile_by_kind[name][str(status)] = hostile_by_kind[name].get(str(status), 0) + 1
    normal_records = sum(n for _, n, *_ in result["normal"])
    return {
        "system": f"hrlm serve on {kind}",
        "database": kind,
        "clients": args.clients,
        "requests": len(result["normal"]) + len(result["hostile"]),
        "normal_requests": len(result["normal"]),
        "hostile_requests": len(result["hostile"]),
        "normal_records_sent": normal_records,
        "normal_records_stored": stored_normal_records,
        "normal_records_lost": lost_records,
        "normal_requests_lost": lost_requests,
        "responses_5xx": sum(c for s, c in statuses.items() if s >= 500),
        "responses_500": statuses.get(500, 0),
        "hostile_not_4xx": sum(1 for _, s in result["hostile"] if not 400 <= s < 500),
        "records_in_database": total_rows,
        "server_failed_record_writes": failed_writes["hrlm_store_failed_records_total"],
        "statuses": {str(s): c for s, c in sorted(statuses.items())},
        "hostile_statuses_by_kind": hostile_by_kind,
        "reconnects": result["reconnects"],
        "seconds": round(result["seconds"], 2),
        "requests_s": round((len(result["normal"]) + len(result["hostile"])) / result["seconds"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=None, help="model folder to serve (default: the tiny test model)")
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--postgres-url", default=POSTGRES_DEFAULT, help="PostgreSQL to make a fresh schema in")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--hostile-every", type=int, default=10, help="one request in this many is hostile")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of the model (default: all cores)")
    add_run_options(parser)
    args = parser.parse_args()
    if args.hostile_every < 2 or args.requests < args.hostile_every or args.clients < 1:
        parser.error("give --hostile-every of at least 2, --requests of at least --hostile-every, and --clients >= 1")

    texts = short_texts()
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    with tempfile.TemporaryDirectory(prefix="hrlm-hostile-") as tmp_name:
        tmp = Path(tmp_name)
        model = args.model or tiny_model(tmp)
        for kind in kinds:
            print(f"[{kind}] {args.requests} requests, {args.clients} clients, 1 in {args.hostile_every} hostile")
            row = run_db(kind, model, texts, args, tmp)
            print_table([row], f"hostile input under load: {kind}")
            summary = {
                "normal_records_lost": row["normal_records_lost"],
                "responses_500": row["responses_500"],
                "responses_5xx": row["responses_5xx"],
                "hostile_not_4xx": row["hostile_not_4xx"],
                "zero_lost_zero_500": row["normal_records_lost"] == 0 and row["responses_5xx"] == 0,
            }
            print(json.dumps(summary))
            path = write_result(
                f"hostile_load-{kind}",
                {
                    "benchmark": "hostile_load",
                    "dataset": kind,  # what varies between the files: the database under the load
                    "split": "normal texts: the packaged helpdesk_tickets.csv + incoming_tickets.csv",
                    "model": "tiny test BERT (tests/tiny_model.py), 1 epoch" if args.model is None else model.name,
                    "settings": {
                        "clients": args.clients,
                        "requests": args.requests,
                        "hostile_every": args.hostile_every,
                        "hostile_kinds": [name for name, _ in HOSTILE],
                        "max_batch": args.max_batch,
                        "max_wait_ms": args.max_wait_ms,
                        "threads": args.threads,
                        "store": f"{kind}, redacted text",
                    },
                    "rows": [row],
                    "summary": summary,
                },
                args=args,
            )
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
