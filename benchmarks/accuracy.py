"""Accuracy of a fine-tuned model against TF-IDF + logistic regression on the same split.

Examples:
    python benchmarks/accuracy.py --data ../shared/data/onet_tasks --epochs 3 --max-length 64 --class-weights balanced
    python benchmarks/accuracy.py --data ../shared/data/imdb --train-limit 12000 --epochs 1 --truncate head+tail

Prints a side-by-side table and writes ``benchmarks/results/accuracy-<dataset>[-<variant>].json``.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_run_options, print_table, write_result


def load_splits(folder: Path, train_limit: int | None, val_size: int, seed: int):
    from hrlm.data import load_dataset

    name = folder.name
    if name == "imdb":
        train = load_dataset(folder / "train.csv.gz")
        test = load_dataset(folder / "test.csv.gz")
        idx = list(range(len(train)))
        random.Random(seed).shuffle(idx)
        val_idx = idx[:val_size]
        train_idx = idx[val_size:]
        if train_limit:
            train_idx = train_idx[:train_limit]
        desc = (
            f"official test {len(test)}; train {len(train_idx)} sampled (seed {seed}) from the official "
            f"train set, validation {len(val_idx)} others from it"
        )
        return "imdb", {"train": train.subset(train_idx), "validation": train.subset(val_idx), "test": test}, desc
    if name == "onet_tasks":
        ds = load_dataset(folder / "onet_task_statements.csv", split_col="suggested_split")
        assert ds.splits is not None
        parts = {s: ds.subset([i for i, x in enumerate(ds.splits) if x == s]) for s in ("train", "validation", "test")}
        if train_limit:
            parts["train"] = parts["train"].subset(random.Random(seed).sample(range(len(parts["train"])), train_limit))
        desc = "suggested_split: " + " / ".join(f"{k} {len(v)}" for k, v in parts.items())
        return "onet_tasks", parts, desc
    raise SystemExit(f"unknown data folder {folder}; expected .../imdb or .../onet_tasks")


def tfidf_row(splits, system: str) -> dict:
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score

    from hrlm.text import normalize

    t0 = time.perf_counter()
    vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=500_000)
    x_train = vec.fit_transform([normalize(t) for t in splits["train"].texts])
    clf = LogisticRegression(C=10.0 if len(splits["train"]) > 5000 else 5.0, max_iter=2000)
    clf.fit(x_train, splits["train"].labels)
    train_s = time.perf_counter() - t0
    pred = clf.predict(vec.transform([normalize(t) for t in splits["test"].texts]))
    truth = splits["test"].labels
    return {
        "system": system,
        "accuracy": round(float(accuracy_score(truth, pred)), 4),
        "macro_f1": round(float(f1_score(truth, pred, average="macro")), 4),
        "weighted_f1": round(float(f1_score(truth, pred, average="weighted")), 4),
        "train_s": round(train_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--train-limit", type=int, default=None, help="train on this many sampled training texts")
    parser.add_argument("--val-size", type=int, default=500, help="IMDB: validation texts taken from train")
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--truncate", default="none")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--class-weights", default="none")
    parser.add_argument("--freeze-encoder", action="store_true")
    parser.add_argument("--eval-steps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variant", default=None, help="suffix of the results file name")
    parser.add_argument("--keep-model", type=Path, default=None, help="write the trained model folder here")
    add_run_options(parser)
    args = parser.parse_args()

    from hrlm.config import TrainConfig
    from hrlm.inference.predictor import Predictor
    from hrlm.inference.scoring import evaluate_dataset
    from hrlm.training.fitting import fit

    dataset, splits, split_desc = load_splits(args.data, args.train_limit, args.val_size, args.seed)
    print(f"{dataset}: {split_desc}", flush=True)
    rows = [tfidf_row(splits, "tfidf word 1-2-grams + logreg (same train rows)")]
    print_table(rows, "baseline")

    cfg = TrainConfig(
        epochs=args.epochs,
        max_length=args.max_length,
        stride=args.stride,
        truncate=args.truncate,
        lr=args.lr,
        batch_size=args.batch_size,
        class_weights=args.class_weights,
        freeze_encoder=args.freeze_encoder,
        eval_steps=args.eval_steps,
        seed=args.seed,
        label_col="label",
    )
    out = args.keep_model or Path(tempfile.mkdtemp()) / "model"
    result = fit(cfg, {"train": splits["train"], "validation": splits["validation"]}, out, overwrite=True)
    predictor = Predictor.from_dir(out)
    t0 = time.perf_counter()
    metrics = evaluate_dataset(predictor, splits["test"], progress=True)
    test_s = time.perf_counter() - t0
    mode = "frozen encoder + head" if args.freeze_encoder else f"fine-tuned {args.epochs:g} epoch(s)"
    long_mode = args.truncate if args.truncate != "none" else f"windows stride {cfg.stride}"
    rows.append(
        {
            "system": f"hrlm all-MiniLM-L6-v2 {mode}, {predictor.backend_name}, {long_mode} {args.max_length}",
            "accuracy": round(metrics["accuracy"], 4),
            "macro_f1": round(metrics["macro_f1"], 4),
            "weighted_f1": round(metrics["weighted_f1"], 4),
            "train_s": round(result.train_seconds, 1),
            "train_samples_s": round(result.train_samples_per_s, 2),
            "test_docs_s": round(len(splits["test"]) / test_s, 1),
            "best_step": result.best_step,
        }
    )
    print_table(rows, f"accuracy on {dataset} test ({len(splits['test'])} texts)")
    name = f"accuracy-{dataset}" + (f"-{args.variant}" if args.variant else "")
    path = write_result(
        name,
        {
            "benchmark": "accuracy",
            "dataset": dataset,
            "split": split_desc,
            "rows": rows,
            "settings": cfg.to_dict(),
            "history": result.history,
        },
        args=args,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
