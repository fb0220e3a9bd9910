"""Domain adaptation on IMDB: masked-LM pretraining on the training texts, then fine-tuning, against
fine-tuning the base encoder directly on the same budget.

Steps, in one run on the same splits:
1. TF-IDF word 1-2-grams + logistic regression (reference).
2. Fine-tune the base encoder; evaluate on the official test set.
3. ``pretrain`` (masked LM, labels unused) on the training texts; held-out perplexity before
   (after the new MLM head's warm-up, encoder frozen) and after.
4. Fine-tune the adapted encoder with the settings of step 2; evaluate on the same test set.

Example (a GPU makes this a matter of minutes; on 2 CPU cores it takes hours):
    python benchmarks/adaptation.py --data ../shared/data/imdb --max-length 512 --epochs 3 --mlm-epochs 3

Writes ``benchmarks/results/adaptation-imdb.json`` after every step (``"complete": false`` until the
end), so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_run_options, print_table, write_result
from accuracy import load_splits, tfidf_row

PUBLISHED = [
    {"system": "DistilBERT fine-tuned", "accuracy": 0.928, "source": "Sanh et al. 2019, DistilBERT paper, IMDb"},
    {"system": "BERT-base + ITPT (within-task MLM)", "accuracy": 0.9537, "source": "Sun et al. 2019, IMDb"},
]


def finetune_row(name: str, base: str | None, splits: dict, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    from hrlm.config import TrainConfig
    from hrlm.inference.predictor import Predictor
    from hrlm.inference.scoring import evaluate_dataset
    from hrlm.training.fitting import fit

    cfg = TrainConfig(
        base=base,
        epochs=args.epochs,
        max_length=args.max_length,
        lr=args.lr,
        batch_size=args.batch_size,
        seed=args.seed,
        metric="accuracy",
        early_stopping_patience=args.patience,
        label_col="label",
    )
    result = fit(cfg, {"train": splits["train"], "validation": splits["validation"]}, out, overwrite=True)
    predictor = Predictor.from_dir(out)
    t0 = time.perf_counter()
    metrics = evaluate_dataset(predictor, splits["test"], progress=True)
    test_s = time.perf_counter() - t0
    return {
        "system": name,
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "train_s": round(result.train_seconds, 1),
        "train_samples_s": round(result.train_samples_per_s, 1),
        "test_docs_s": round(len(splits["test"]) / test_s, 1),
        "best_step": result.best_step,
        "history": result.history,
        "settings": cfg.to_dict(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the imdb folder (train.csv.gz, test.csv.gz)")
    parser.add_argument("--base", default=None, help="base encoder folder (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--train-limit", type=int, default=None)
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=3.0)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--patience", type=int, default=2)
    parser.add_argument("--mlm-epochs", type=float, default=3.0)
    parser.add_argument("--mlm-lr", type=float, default=1e-4)
    parser.add_argument("--head-steps", type=int, default=500)
    parser.add_argument("--whole-word", action="store_true")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep", type=Path, default=None, help="keep the models in this folder")
    parser.add_argument("--skip-baseline", action="store_true")
    add_run_options(parser)
    args = parser.parse_args()

    from hrlm.config import PretrainConfig
    from hrlm.training.pretraining import pretrain

    dataset, splits, split_desc = load_splits(args.data, args.train_limit, args.val_size, args.seed)
    if args.test_limit:
        splits["test"] = splits["test"].subset(
            list(range(0, len(splits["test"]), len(splits["test"]) // args.test_limit))[: args.test_limit]
        )
        split_desc += f"; test every k-th row, {len(splits['test'])} texts"
    keep = args.keep or Path(tempfile.mkdtemp())
    keep.mkdir(parents=True, exist_ok=True)
    print(f"{dataset}: {split_desc}", flush=True)
    payload: dict[str, Any] = {"rows": [], "published": PUBLISHED, "complete": False}

    def save() -> None:
        rows = [{k: v for k, v in r.items() if k not in ("history", "settings")} for r in payload["rows"]]
        print_table(rows, f"adaptation on {dataset} test ({len(splits['test'])} texts)")
        path = write_result(
            f"adaptation-{dataset}",
            {"benchmark": "adaptation", "dataset": dataset, "split": split_desc, **payload},
            args=args,
        )
        print(f"wrote {path}", flush=True)

    payload["rows"].append(tfidf_row(splits, "tfidf word 1-2-grams + logreg (same train rows)"))
    save()
    tag = f"{args.max_length} tokens, windows, {args.epochs:g} epochs, lr {args.lr:g}"
    if not args.skip_baseline:
        payload["rows"].append(
            finetune_row(f"fine-tune base encoder ({tag})", args.base, splits, args, keep / "base-ft")
        )
        save()

    pcfg = PretrainConfig(
        base=args.base,
        max_length=args.max_length,
        epochs=args.mlm_epochs,
        lr=args.mlm_lr,
        batch_size=args.batch_size,
        head_steps=args.head_steps,
        whole_word=args.whole_word,
        seed=args.seed,
    )
    adapted = keep / "adapted-encoder"
    t0 = time.perf_counter()
    result = pretrain(splits["train"].texts, adapted, pcfg, overwrite=True)
    payload["pretraining"] = {
        "corpus": f"the {len(splits['train'])} training texts of this run (labels unused)",
        "before": result.before,
        "after": result.after,
        "train_s": round(result.train_seconds, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
        "samples_s": round(result.samples_per_s, 1),
        "history": result.history,
        "notes": result.notes,
        "settings": pcfg.to_dict(),
    }
    print(f"held-out MLM perplexity {result.before['perplexity']} -> {result.after['perplexity']}", flush=True)
    save()
    payload["rows"].append(
        finetune_row(f"MLM-adapted encoder, then fine-tune ({tag})", str(adapted), splits, args, keep / "adapted-ft")
    )
    payload["complete"] = True
    save()


if __name__ == "__main__":
    main()
