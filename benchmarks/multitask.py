"""One model for two tasks against two single-task models, on O*NET task statements.

Tasks on the same texts: the occupation group (``label``, 22 classes) and whether the task is core
or supplemental to the occupation (``task_type``). Rows without a task type are dropped for all
three models so that they see the same texts. Reports each task's accuracy and macro F1 and the
total time to score the test split: one forward pass for the multi-task model, two for the pair.

Example:
    python benchmarks/multitask.py --data ../shared/data/onet_tasks --train-limit 4000 --epochs 2

Writes ``benchmarks/results/multitask-onet_tasks.json``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_run_options, print_table, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the onet_tasks folder")
    parser.add_argument("--train-limit", type=int, default=4000)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    add_run_options(parser)
    args = parser.parse_args()

    from hrlm.config import TrainConfig
    from hrlm.data import load_dataset
    from hrlm.inference.predictor import Predictor
    from hrlm.inference.scoring import evaluate_dataset
    from hrlm.training.fitting import fit

    ds = load_dataset(args.data / "onet_task_statements.csv", label_col="label,task_type", split_col="suggested_split")
    assert ds.splits is not None
    parts = {s: ds.subset([i for i, x in enumerate(ds.splits) if x == s]) for s in ("train", "validation", "test")}
    if args.train_limit and len(parts["train"]) > args.train_limit:
        parts["train"] = parts["train"].subset(
            random.Random(args.seed).sample(range(len(parts["train"])), args.train_limit)
        )
    split = "suggested_split, rows with a task_type: " + " / ".join(f"{k} {len(v)}" for k, v in parts.items())
    print(split, flush=True)
    common: dict[str, Any] = {
        "epochs": args.epochs,
        "max_length": args.max_length,
        "lr": args.lr,
        "seed": args.seed,
        "threads": args.threads,
        "class_weights": "balanced",
    }
    tmp = Path(tempfile.mkdtemp())
    runs = {
        "multi-task (label + task_type, one encoder)": ("label,task_type", ["label", "task_type"]),
        "single-task: label": ("label", ["label"]),
        "single-task: task_type": ("task_type", ["task_type"]),
    }
    rows: list[dict[str, Any]] = []
    for system, (cols, tasks) in runs.items():
        splits = {k: v if "," in cols else v.for_task(cols) for k, v in parts.items()}
        cfg = TrainConfig(label_col=cols, **common)
        out = tmp / cols.replace(",", "+")
        result = fit(cfg, {"train": splits["train"], "validation": splits["validation"]}, out, progress=False)
        predictor = Predictor.from_dir(out, threads=args.threads)
        t0 = time.perf_counter()
        metrics = evaluate_dataset(predictor, splits["test"])
        test_s = time.perf_counter() - t0
        per_task = metrics.get("tasks") or {tasks[0]: metrics}
        row: dict[str, Any] = {"system": system, "train_s": round(result.train_seconds, 1), "test_s": round(test_s, 1)}
        for name in tasks:
            row[f"{name}_accuracy"] = round(per_task[name]["accuracy"], 4)
            row[f"{name}_macro_f1"] = round(per_task[name]["macro_f1"], 4)
        rows.append(row)
        print(row, flush=True)
    pair = {
        "system": "two single-task models together",
        "train_s": round(rows[1]["train_s"] + rows[2]["train_s"], 1),
        "test_s": round(rows[1]["test_s"] + rows[2]["test_s"], 1),
        **{k: v for r in rows[1:] for k, v in r.items() if k.endswith(("accuracy", "macro_f1"))},
    }
    rows.append(pair)
    print_table(rows, f"multi-task on O*NET tasks (test {len(parts['test'])} texts)")
    path = write_result(
        "multitask-onet_tasks",
        {
            "benchmark": "multitask",
            "dataset": "onet_tasks",
            "split": split,
            "rows": rows,
            "settings": common,
            "notes": [
                "test_s: time to score the test split, one pass for the multi-task model, one per model otherwise."
            ],
        },
        args=args,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
