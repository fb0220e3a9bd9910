"""Distillation on IMDB: a K-layer student of a fine-tuned model, against the teacher.

The student keeps K of the teacher's layers and learns from the teacher's soft labels and the gold
labels on the training texts; both are scored on the official test set, with docs/s measured on
this machine for each and the size of each model file.

Example (the teacher from benchmarks/adaptation.py --keep DIR, i.e. DIR/adapted-ft):
    python benchmarks/distillation.py --data ../shared/data/imdb --teacher runs/adapted-ft --layers 3 --epochs 2

Writes ``benchmarks/results/distillation-imdb.json``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_run_options, print_table, write_result
from accuracy import load_splits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the imdb folder")
    parser.add_argument("--teacher", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=None, help="keep the student here")
    parser.add_argument(
        "--speed-of",
        type=Path,
        default=None,
        help="only measure docs/s of --teacher and this student on this machine (--test-limit texts, "
        "interleaved) and add them as cpu_rows to the existing results file",
    )
    add_run_options(parser)
    args = parser.parse_args()
    if args.speed_of is not None:
        measure_speed(args)
        return

    from hrlm.config import TrainConfig
    from hrlm.training.distillation import distill

    dataset, splits, split_desc = load_splits(args.data, args.train_limit, args.val_size, args.seed)
    if args.test_limit:
        step = max(1, len(splits["test"]) // args.test_limit)
        splits["test"] = splits["test"].subset(list(range(0, len(splits["test"]), step))[: args.test_limit])
        split_desc += f"; test every {step}-th row, {len(splits['test'])} texts"
    print(f"{dataset}: {split_desc}", flush=True)
    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed, metric="accuracy")
    out = args.out or Path(tempfile.mkdtemp()) / "student"
    result = distill(
        args.teacher,
        splits,
        out,
        cfg,
        layers=args.layers,
        temperature=args.temperature,
        alpha=args.alpha,
        overwrite=True,
    )
    rows = [{"system": f"teacher ({result.teacher['layers']} layers)", **result.teacher}]
    rows.append(
        {
            "system": f"student ({args.layers} layers, T={args.temperature:g}, alpha={args.alpha:g})",
            **result.student,
            "train_s": round(result.train_seconds, 1),
        }
    )
    for row in rows:
        for k in ("accuracy", "macro_f1", "weighted_f1"):
            if k in row:
                row[k] = round(row[k], 4)
    rows[1]["speedup"] = round(rows[1]["docs_per_s"] / rows[0]["docs_per_s"], 2)
    print_table(rows, f"distillation on {dataset} test ({len(splits['test'])} texts)")
    path = write_result(
        f"distillation-{dataset}",
        {
            "benchmark": "distillation",
            "dataset": dataset,
            "split": split_desc,
            "rows": rows,
            "history": result.history,
            "notes": result.notes,
        },
        args=args,
    )
    print(f"wrote {path}")


def measure_speed(args: argparse.Namespace) -> None:
    import json
    import time

    from _common import run_record
    from hrlm.data import load_dataset
    from hrlm.inference.predictor import Predictor

    test = load_dataset(args.data / "test.csv.gz")
    n = args.test_limit or 500
    step = max(1, len(test) // n)
    texts = list(test.subset(list(range(0, len(test), step))[:n]).texts)
    models = {"teacher": args.teacher, "student": args.speed_of}
    predictors = {k: Predictor.from_dir(v, backend="torch-fp32") for k, v in models.items()}
    seconds = dict.fromkeys(models, 0.0)
    for _ in range(2):  # interleaved rounds, so a busy neighbour slows both alike
        for name, predictor in predictors.items():
            t0 = time.perf_counter()
            predictor.predict_proba(texts)
            seconds[name] += time.perf_counter() - t0
    rows = [{"system": name, "docs_per_s": round(2 * len(texts) / seconds[name], 2)} for name in models]
    rows[1]["speedup"] = round(rows[1]["docs_per_s"] / rows[0]["docs_per_s"], 2)
    print_table(rows, f"CPU speed, {len(texts)} IMDB test texts, torch fp32, windows of the teacher's length")
    path = args.results_dir / "distillation-imdb.json"
    doc = json.loads(path.read_text(encoding="utf-8"))
    doc["cpu_rows"] = rows
    # this run's own record: the file's top-level one belongs to the run that trained the student
    record = run_record(args.note)
    del record["schema_version"]
    doc["cpu_speed"] = {**record, "texts": len(texts)}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
