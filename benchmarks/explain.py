"""Do the explanations point at what the model uses? Deleting top-attributed words against random words.

For each data set, a model (trained here on the real packaged encoder, or given with ``--model``)
predicts test texts; each text is explained for its predicted label (integrated gradients,
:func:`hrlm.inference.explain.explain`); then, for each k, the k words with the most evidence for the
label are deleted and the text predicted again, and so are k words drawn at random among the words the
model reads (``--random-repeats`` draws, averaged). A faithful explanation flips more predictions by
deleting its top words than random deletion does (a deletion test in the spirit of Samek et al., 2017,
"Evaluating the visualization of what a deep neural network has learned", and DeYoung et al., 2020,
ERASER's comprehensiveness). The rows give both flip rates per k, the share of texts where the top
words lowered the label's probability more, and the seconds an explanation took.

Examples:
    python benchmarks/explain.py                                   # O*NET tasks and IMDB, 100 texts each
    python benchmarks/explain.py --datasets onet_tasks --n 50 --model runs/onet

Writes ``benchmarks/results/explain-<dataset>.json``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import SHARED, add_run_options, print_table, write_result

DATA = SHARED / "data"
KS = (1, 3, 5)


def load(dataset: str, n_train: int, n_test: int, seed: int) -> tuple[list[str], list[str], list[str], list[str], str]:
    """Training and test texts and labels of ``dataset`` (sampled), and a description of the split."""
    import pandas as pd

    rng = random.Random(seed)
    if dataset == "imdb":
        train = pd.read_csv(DATA / "imdb" / "train.csv.gz")
        test = pd.read_csv(DATA / "imdb" / "test.csv.gz")
    else:
        frame = pd.read_csv(DATA / "onet_tasks" / "onet_task_statements.csv")
        train = frame[frame.suggested_split == "train"]
        test = frame[frame.suggested_split == "test"]
    tr = train.iloc[sorted(rng.sample(range(len(train)), min(n_train, len(train))))]
    te = test.iloc[sorted(rng.sample(range(len(test)), min(n_test, len(test))))]
    name = "official" if dataset == "imdb" else "suggested_split"
    split = f"{name}: train {len(tr)} / test {len(te)} (sampled, seed {seed})"
    return list(tr.text), [str(x) for x in tr.label], list(te.text), [str(x) for x in te.label], split


def train_model(texts: list[str], labels: list[str], out: Path, max_length: int, truncate: str) -> Path:
    from hrlm.config import TrainConfig
    from hrlm.data import Dataset
    from hrlm.training.fitting import fit

    ds = Dataset(texts=texts, labels=labels)
    cut = max(1, len(ds) // 10)
    order = list(range(len(ds)))
    random.Random(0).shuffle(order)
    splits = {"train": ds.subset(order[cut:]), "validation": ds.subset(order[:cut]), "test": None}
    cfg = TrainConfig(max_length=max_length, truncate=truncate, epochs=1, batch_size=32, lr=1e-4, method="finetune")
    fit(cfg, splits, out, progress=True)
    return out


def without(text: str, words: list[Any], drop: set[int]) -> str:
    """``text`` (normalised, as explained) with the words at the indices ``drop`` removed."""
    return " ".join(w.text for i, w in enumerate(words) if i not in drop)


def measure(predictor: Any, texts: list[str], steps: int, repeats: int, seed: int) -> dict[str, Any]:
    from hrlm.inference.explain import explain

    rng = random.Random(seed)
    labels = predictor.labels
    top_flips = {k: 0 for k in KS}
    random_flips = {k: 0.0 for k in KS}
    top_drop = {k: [] for k in KS}
    random_drop = {k: [] for k in KS}
    seconds: list[float] = []
    used = 0
    for text in texts:
        (e,) = explain(predictor, [text], steps=steps)
        seconds.append(e.seconds)
        read = [i for i, w in enumerate(e.words) if w.score != 0.0]  # the words the model reads
        if len(read) < 2 * max(KS):
            continue
        used += 1
        index = labels.index(e.label)
        base = predictor.predict_proba([e.text])[predictor.tasks[0].name][0][index]
        ranked = sorted(read, key=lambda i: e.words[i].score, reverse=True)
        variants, keys = [], []
        for k in KS:
            variants.append(without(e.text, e.words, set(ranked[:k])))
            keys.append(("top", k, 0))
            for r in range(repeats):
                variants.append(without(e.text, e.words, set(rng.sample(read, k))))
                keys.append(("random", k, r))
        preds = predictor.predict(variants)
        probs = predictor.predict_proba(variants)[predictor.tasks[0].name][:, index]
        for (kind, k, _), pred, p in zip(keys, preds, probs, strict=True):
            flipped = pred.label != e.label
            if kind == "top":
                top_flips[k] += flipped
                top_drop[k].append(base - p)
            else:
                random_flips[k] += flipped / repeats
                random_drop[k].append(base - p)
    rows = []
    for k in KS:
        rows.append(
            {
                "k": k,
                "texts": used,
                "top_flip_rate": round(top_flips[k] / max(used, 1), 4),
                "random_flip_rate": round(random_flips[k] / max(used, 1), 4),
                "top_mean_prob_drop": round(statistics.fmean(top_drop[k]), 4) if top_drop[k] else None,
                "random_mean_prob_drop": round(statistics.fmean(random_drop[k]), 4) if random_drop[k] else None,
            }
        )
    return {
        "rows": rows,
        "explain_seconds_median": round(statistics.median(seconds), 3) if seconds else None,
        "texts_skipped_short": len(texts) - used,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["onet_tasks", "imdb"], choices=["onet_tasks", "imdb"])
    parser.add_argument("--model", action="append", default=[], help="DATASET=FOLDER: explain this model.")
    parser.add_argument("--n", type=int, default=100, help="Test texts explained per data set.")
    parser.add_argument("--train", type=int, default=3000, help="Training texts when the script trains the model.")
    parser.add_argument("--steps", type=int, default=16, help="Integrated-gradients path points.")
    parser.add_argument("--random-repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    add_run_options(parser)
    args = parser.parse_args()
    given = dict(m.split("=", 1) for m in args.model)
    from hrlm.inference import Predictor

    for dataset in args.datasets:
        tr_x, tr_y, te_x, te_y, split = load(dataset, args.train, args.n, args.seed)
        max_length, truncate = (128, "head") if dataset == "imdb" else (64, "none")
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="hrlm-explain-") as tmp:
            folder = (
                Path(given[dataset])
                if dataset in given
                else train_model(tr_x, tr_y, Path(tmp) / dataset, max_length, truncate)
            )
            train_s = time.perf_counter() - t0
            predictor = Predictor.from_dir(folder, backend="torch-fp32")
            result = measure(predictor, te_x, args.steps, args.random_repeats, args.seed)
            predicted = [p.label for p in predictor.predict(te_x)]
        accuracy = sum(p == y for p, y in zip(predicted, te_y, strict=True)) / max(len(te_y), 1)
        rows = [
            {
                "system": f"hrlm integrated gradients ({args.steps} steps), top-k words vs random",
                **r,
                "explain_seconds_median": result["explain_seconds_median"],
            }
            for r in result["rows"]
        ]
        print_table(rows, f"explain: {dataset}")
        notes = [
            "top_flip_rate: share of texts whose prediction changes when the k words with the most evidence for the "
            "predicted label are deleted; random_flip_rate: the same for k words drawn at random among the words the "
            "model reads (mean of random_repeats draws); texts with fewer than 10 read words are skipped",
        ]
        if dataset not in given:
            notes.append(
                f"model trained by this script: {len(tr_x)} training texts, max_length {max_length}, "
                f"truncate {truncate}, 1 epoch of fine-tuning, lr 1e-4, batch 32, "
                f"the packaged all-MiniLM-L6-v2 ({train_s:.0f} s)"
            )
        path = write_result(
            f"explain-{dataset}",
            {
                "benchmark": "explain",
                "dataset": dataset,
                "split": split,
                "rows": rows,
                "settings": {
                    "steps": args.steps,
                    "random_repeats": args.random_repeats,
                    "texts": len(te_x),
                    "texts_skipped_short": result["texts_skipped_short"],
                    "model_accuracy_on_these_texts": round(accuracy, 4),
                    "training_texts": len(tr_x) if dataset not in given else None,
                },
                "notes": notes,
            },
            args=args,
        )
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
