"""Active learning through the real service: uncertainty sampling against random sampling, at equal labels.

    python benchmarks/active_learning.py --data ../shared/data/onet_tasks --seed-per-class 8 \\
        --rounds 5 --per-round 100 --pool 3000 --holdout 1000

For each strategy, from the same labelled seed (``--seed-per-class`` task statements per occupation
group from the suggested train split) and the same seed model:

1. a fresh SQLite database and registry; the seed model is registered and promoted;
2. ``hrlm serve`` (a subprocess, no ``--model``: it serves the registry's production version) with
   the review policy of the strategy: ``uncertainty`` queues the most uncertain share of each fill
   (margin), ``random`` a random share of the same size; no confidence threshold, no double review,
   no feedback holdout (the fixed holdout measures);
3. each round, a client token predicts the unlabelled pool through ``POST /v1/predict``; an admin
   fills the queue (``POST /v1/review/fill``); a simulated reviewer takes every queued item
   (``GET /v1/review/next``) and answers with the gold label (``accept`` when the suggestion is
   right, ``correct`` otherwise); an admin starts ``POST /v1/retrain`` (the seed file + accepted
   feedback; ``promote_margin = -1``, so every candidate is promoted and the next round samples
   with it) and waits for the job and the swap;
4. the candidate's macro F1 on the fixed holdout (``--holdout`` rows of the suggested test split,
   never trained on) is read from the job's gate result.

Writes ``benchmarks/results/active_learning-onet_tasks.json`` and ``.png`` (macro F1 against labels
used). Every request goes over HTTP with tokens, as a reviewer's browser would send them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_run_options, print_table, write_result

STRATEGIES = ("uncertainty", "random")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_onet(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    path = folder / "onet_task_statements.csv"
    if not path.exists():
        raise SystemExit(f"{path} not found: pass --data pointing at ../shared/data/onet_tasks")
    frame = pd.read_csv(path)
    frame = frame.drop_duplicates("text")
    return frame[frame.suggested_split == "train"], frame[frame.suggested_split == "test"]


def make_files(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    """The seed file, the unlabelled pool and the fixed holdout of one seed."""
    train, test = load_onet(args.data)
    seed_rows = train.groupby("label").sample(n=args.seed_per_class, random_state=seed, replace=False)
    rest = train.drop(seed_rows.index)
    pool = rest.sample(n=min(args.pool, len(rest)), random_state=seed)
    holdout = test.sample(n=min(args.holdout, len(test)), random_state=seed)
    files = {"seed": work / "seed.csv", "holdout": work / "holdout.csv"}
    seed_rows[["text", "label"]].to_csv(files["seed"], index=False)
    holdout[["text", "label"]].to_csv(files["holdout"], index=False)
    return {"files": files, "pool": list(zip(pool.text, pool.label, strict=True)), "n_seed": len(seed_rows)}


def train_seed_model(seed_file: Path, out: Path, args: argparse.Namespace, seed: int) -> Path:
    from hrlm.config import TrainConfig
    from hrlm.training.fitting import train

    cfg = TrainConfig(
        max_length=64,
        epochs=args.epochs,
        batch_size=16,
        lr=args.lr,
        val_size=0.1,
        test_size=0.0,
        early_stopping_patience=3,
        seed=seed,
        method="finetune",
        threads=args.threads,
    )
    train(seed_file, out, cfg, overwrite=True, progress=False)
    return out


class Service:
    """``hrlm serve`` on the registry of a fresh database, with a client, a reviewer and an admin token."""

    def __init__(
        self, model: Path, work: Path, policy: dict[str, str], files: dict[str, Path], args: argparse.Namespace
    ) -> None:
        from hrlm.lifecycle.registry import Registry
        from hrlm.store import create_user, make_engine, upgrade

        self.work = work
        self.db_url = f"sqlite:///{work / 'hrlm.db'}"
        engine = make_engine(self.db_url)
        upgrade(engine)
        self.tokens = {role: create_user(engine, role, role) for role in ("client", "reviewer", "admin")}
        registry = Registry(engine, work / "models")
        version = registry.register(model, actor="benchmark", note="seed model").version
        registry.promote(version, actor="benchmark", reason="seed model")
        engine.dispose()
        self.port = free_port()
        env = {
            **os.environ,
            "HRLM_DATABASE_URL": self.db_url,
            "HRLM_REGISTRY_DIR": str(work / "models"),
            "HRLM_RATE_LIMIT": "0",
            "HRLM_REQUEST_TIMEOUT_S": "600",
            "HRLM_LOG_LEVEL": "warning",
            "HRLM_REVIEW_FILL_S": "0",
            "HRLM_REVIEW_DOUBLE_FRACTION": "0",
            "HRLM_REVIEW_HOLDOUT_FRACTION": "0",
            "HRLM_REVIEW_CONFIDENCE_BELOW": "0",
            "HRLM_PROMOTE_MARGIN": "-1",
            "HRLM_MAX_TEXTS": "256",
            "HRLM_TRAIN_DATA": str(files["seed"]),
            "HRLM_HOLDOUT_DATA": str(files["holdout"]),
            **policy,
        }
        if args.threads:
            env["HRLM_THREADS"] = str(args.threads)
        self.log = work / "serve.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hrlm.cli", "serve", "--port", str(self.port)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=600)
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"hrlm serve exited: {self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if self.http.get("/readyz").status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit("hrlm serve did not become ready in 300 s")
            time.sleep(0.5)

    def call(self, method: str, path: str, role: str, **kwargs: Any) -> Any:
        r = self.http.request(method, path, headers={"Authorization": f"Bearer {self.tokens[role]}"}, **kwargs)
        if r.status_code >= 400:
            raise SystemExit(f"{method} {path} answered {r.status_code}: {r.text[:500]}")
        return r.json()

    def stop(self) -> None:
        self.http.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def run_strategy(strategy: str, files: dict[str, Any], model: Path, args: argparse.Namespace, seed: int) -> list[dict]:
    from hrlm.pii import redact

    pool: list[tuple[str, str]] = list(files["pool"])
    share = f"{args.per_round / len(pool):.6f}"
    policy = {
        "HRLM_REVIEW_UNCERTAINTY": "margin",
        "HRLM_REVIEW_UNCERTAIN_FRACTION": share if strategy == "uncertainty" else "0",
        "HRLM_REVIEW_RANDOM_FRACTION": share if strategy == "random" else "0",
    }
    gold: dict[str, list[str]] = defaultdict(list)
    for text, label in pool:
        gold[redact(text)].append(label)
    labelled: set[str] = set()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix=f"hrlm-al-{strategy}-") as tmp:
        service = Service(model, Path(tmp), policy, files["files"], args)
        try:
            n_feedback = 0
            for rnd in range(1, args.rounds + 1):
                t0 = time.perf_counter()
                remaining = [t for t, _ in pool if redact(t) not in labelled]
                for i in range(0, len(remaining), 256):
                    service.call("POST", "/v1/predict", "client", json={"texts": remaining[i : i + 256]})
                filled = service.call("POST", "/v1/review/fill", "admin")
                answered = Counter[str]()
                while True:
                    item = service.call("GET", "/v1/review/next", "reviewer")["item"]
                    if item is None:
                        break
                    truth = Counter(gold[item["text"]]).most_common(1)[0][0]
                    body = (
                        {"action": "accept"} if item["suggestion"] == truth else {"action": "correct", "label": truth}
                    )
                    service.call("POST", f"/v1/review/items/{item['id']}", "reviewer", json=body)
                    answered[body["action"]] += 1
                    labelled.add(item["text"])
                n_feedback += sum(answered.values())
                job = service.call("POST", "/v1/retrain", "admin")
                while job["state"] in ("queued", "running"):
                    time.sleep(2)
                    job = service.call("GET", f"/v1/jobs/{job['id']}", "admin")
                if job["state"] != "succeeded":
                    raise SystemExit(f"retrain job failed: {job.get('error')}\n{service.log.read_text()[-3000:]}")
                result = job["result"]
                fixed = result["gate"]["fixed_holdout"]
                if rnd == 1:
                    rows.append(
                        {
                            "seed": seed,
                            "strategy": strategy,
                            "round": 0,
                            "labels": files["n_seed"],
                            "feedback": 0,
                            "macro_f1": round(float(fixed["production"]), 4),
                            "accuracy": fixed["accuracy"]["production"],
                        }
                    )
                rows.append(
                    {
                        "seed": seed,
                        "strategy": strategy,
                        "round": rnd,
                        "labels": files["n_seed"] + n_feedback,
                        "feedback": n_feedback,
                        "corrected": answered["correct"],
                        "accepted": answered["accept"],
                        "queued": filled.get("queued"),
                        "macro_f1": round(float(fixed["candidate"]), 4),
                        "accuracy": fixed["accuracy"]["candidate"],
                        "holdout_n": fixed["n"],
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                )
                deadline = time.monotonic() + 120
                while service.call("GET", "/v1/models", "admin")["serving"] != result["production"]:
                    if time.monotonic() > deadline:
                        raise SystemExit("the service did not swap to the promoted version within 120 s")
                    time.sleep(1)
                print(
                    f"[seed {seed} {strategy}] round {rnd}: {rows[-1]['labels']} labels, "
                    f"macro F1 {rows[-1]['macro_f1']:.4f} ({rows[-1]['seconds']:.0f}s)",
                    flush=True,
                )
        finally:
            service.stop()
    return rows


def labels_to_reach(rows: list[dict[str, Any]], target: float) -> int | None:
    """The fewest labels at which a curve reaches ``target`` macro F1 (None if it never does)."""
    for row in sorted(rows, key=lambda r: r["labels"]):
        if row["macro_f1"] >= target - 1e-9:
            return int(row["labels"])
    return None


def plot(rows: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for strategy, style in zip(STRATEGIES, ("o-", "s--"), strict=True):
        by_round: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            if r["strategy"] == strategy:
                by_round[r["round"]].append(r)
        if not by_round:
            continue
        xs = [sum(r["labels"] for r in rs) / len(rs) for _, rs in sorted(by_round.items())]
        ys = [100 * sum(r["macro_f1"] for r in rs) / len(rs) for _, rs in sorted(by_round.items())]
        ax.plot(xs, ys, style, label=f"{strategy} sampling")
    ax.set_xlabel("labels used (seed + reviewed)")
    ax.set_ylabel("macro F1 on the fixed holdout (%)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the onet_tasks folder")
    parser.add_argument("--seed-per-class", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--per-round", type=int, default=100, help="items queued (and labelled) per round")
    parser.add_argument("--pool", type=int, default=3000, help="unlabelled task statements the service scores")
    parser.add_argument("--holdout", type=int, default=1000, help="fixed holdout rows of the test split")
    parser.add_argument("--epochs", type=float, default=10.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=STRATEGIES)
    parser.add_argument("--threads", type=int, default=None)
    add_run_options(parser)
    args = parser.parse_args()

    rows: list[dict[str, Any]] = []
    for seed in args.seeds:
        random.seed(seed)
        with tempfile.TemporaryDirectory(prefix="hrlm-al-") as tmp:
            work = Path(tmp)
            files = make_files(args, seed, work)
            t0 = time.perf_counter()
            model = train_seed_model(files["files"]["seed"], work / "seed-model", args, seed)
            print(f"[seed {seed}] seed model on {files['n_seed']} labels in {time.perf_counter() - t0:.0f}s")
            for strategy in args.strategies:
                rows += run_strategy(strategy, files, model, args, seed)

    final_random = [r for r in rows if r["strategy"] == "random" and r["round"] == args.rounds]
    summary: dict[str, Any] = {}
    for seed in args.seeds:
        rand = [r for r in rows if r["seed"] == seed and r["strategy"] == "random"]
        unc = [r for r in rows if r["seed"] == seed and r["strategy"] == "uncertainty"]
        if rand and unc:
            target = max(r["macro_f1"] for r in rand if r["round"] == args.rounds)
            rand_labels = labels_to_reach(rand, target)
            unc_labels = labels_to_reach(unc, target)
            summary[f"seed_{seed}"] = {
                "random_final_macro_f1": target,
                "random_labels": rand_labels,
                "uncertainty_labels_to_reach_it": unc_labels,
                "uncertainty_final_macro_f1": max(r["macro_f1"] for r in unc if r["round"] == args.rounds),
                "fewer_labels": unc_labels is not None and rand_labels is not None and unc_labels < rand_labels,
            }
    print_table(rows, "active learning on onet_tasks through the service (macro F1 on the fixed holdout)")
    print(summary)
    args.results_dir.mkdir(parents=True, exist_ok=True)
    png = args.results_dir / "active_learning-onet_tasks.png"
    plot(rows, png, f"O*NET tasks, {args.seed_per_class}/class seed, {args.per_round} labels per round")
    path = write_result(
        "active_learning-onet_tasks",
        {
            "benchmark": "active_learning",
            "dataset": "onet_tasks",
            "split": f"seed and pool from the suggested train split, holdout {args.holdout} rows of its test split",
            "settings": {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in vars(args).items()
                if k not in ("note", "results_dir")  # recorded as notes and by argv
            },
            "rows": rows,
            "summary": summary,
            "plot": png.name,
            "notes": [
                "every prediction, review answer and retrain went through the HTTP API of `hrlm serve` with tokens",
                "labels = seed labels + reviewed items (accepted or corrected); 10% of them validate each retrain",
                f"final random-sampling rows: {len(final_random)}",
            ],
        },
        args=args,
    )
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
