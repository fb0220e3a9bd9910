"""Learning from little data on O*NET tasks: K labelled texts per class, several seeds.

Systems, each trained on the same K-per-class sample of the suggested train split and scored on
the whole suggested test split (2,111 task statements, 22 occupation groups):
- TF-IDF word 1-2-grams + logistic regression;
- plain fine-tuning of all-MiniLM-L6-v2 (``--method finetune``);
- the SetFit method (``--method setfit``): contrastive pairs, then a head;
- fine-tuning with token-noise augmentation (``--augment noise``).

Example:
    python benchmarks/fewshot.py --data ../shared/data/onet_tasks --shots 8 16 32 --seeds 1 2 3

Writes ``benchmarks/results/fewshot-onet_tasks.json`` after every run (mean and spread per system
and K at the end) and a PNG of macro F1 against K.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import add_run_options, portable_command, portable_path, print_table, write_result
from accuracy import load_splits, tfidf_row


def sample_per_class(ds: Any, k: int, seed: int) -> Any:
    by_label: dict[str, list[int]] = {}
    for i, lab in enumerate(ds.labels):
        by_label.setdefault(lab, []).append(i)
    rng = random.Random(seed)
    chosen = [i for lab in sorted(by_label) for i in rng.sample(by_label[lab], min(k, len(by_label[lab])))]
    rng.shuffle(chosen)
    return ds.subset(chosen)


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds, per system and K."""
    summary = []
    for k in sorted({r["shots"] for r in runs}):
        for key in dict.fromkeys(r["key"] for r in runs):
            done = [r for r in runs if r["shots"] == k and r["key"] == key]
            if not done:
                continue
            f1 = [r["macro_f1"] for r in done]
            acc = [r["accuracy"] for r in done]
            summary.append(
                {
                    "system": done[0]["system"],
                    "shots": k,
                    "seeds": len(done),
                    "macro_f1_mean": round(statistics.mean(f1), 4),
                    "macro_f1_sd": round(statistics.stdev(f1), 4) if len(f1) > 1 else 0.0,
                    "accuracy_mean": round(statistics.mean(acc), 4),
                    "accuracy_sd": round(statistics.stdev(acc), 4) if len(acc) > 1 else 0.0,
                }
            )
    return summary


def source_record(path: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """What a merged file keeps of one of its sources: which run, on which commit and machine.

    Commands, the source's own and those of its own sources, keep no path of one machine (``portable_command``).
    """

    def portable(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: portable_command(v) if k == "command" else portable(v) for k, v in value.items()}
        return [portable(v) for v in value] if isinstance(value, list) else value

    keys = ("command", "git_commit", "git_dirty", "date", "machine", "complete", "sources", "merged_from")
    return portable({"file": portable_path(path), **{k: doc[k] for k in keys if k in doc}})


def merge(files: list[Path], args: argparse.Namespace) -> Path:
    """Combine the runs of several result files (say, K values run in parallel) into one.

    The merged file's own commit is that of the merge; ``sources`` keeps each source's command, commit,
    uncommitted-changes flag, date and machine (and, for a source that is itself a merge, its sources).
    """
    import json

    docs = [json.loads(f.read_text(encoding="utf-8")) for f in files]
    runs = [r for d in docs for r in d["runs"]]
    summary = summarize(runs)
    print_table(summary, "few-shot on onet_tasks: mean and sd over seeds")
    _plot(summary, sorted({r["shots"] for r in runs}), args.results_dir)
    first = docs[0]
    return write_result(
        "fewshot-onet_tasks",
        {
            "benchmark": "fewshot",
            "dataset": "onet_tasks",
            "split": first["split"],
            "rows": summary,
            "runs": runs,
            "complete": all(d.get("complete") for d in docs),
            "sources": [source_record(f, d) for f, d in zip(files, docs, strict=True)],
            "settings": first["settings"],
        },
        args=args,
    )


def neural_row(system: str, train: Any, test: Any, cfg: Any) -> dict[str, Any]:
    from hrlm.training.fitting import fit

    t0 = time.perf_counter()
    result = fit(cfg, {"train": train, "test": test}, None, progress=False)
    return {
        "system": system,
        "accuracy": round(result.metrics["accuracy"], 4),
        "macro_f1": round(result.metrics["macro_f1"], 4),
        "train_s": round(result.train_seconds, 1),
        "wall_s": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="the onet_tasks folder")
    parser.add_argument("--shots", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=10.0, help="plain and augmented fine-tuning")
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument(
        "--setfit-pair-budget",
        type=int,
        default=7040,
        help="SetFit pairs per run (20 per text at K=8 over 22 classes); pairs per text = budget / (2 x texts)",
    )
    parser.add_argument("--systems", nargs="+", default=["tfidf", "finetune", "setfit", "augment"])
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the cores available)")
    parser.add_argument("--variant", default=None, help="suffix of the results file name")
    parser.add_argument("--merge", type=Path, nargs="+", default=None, help="only combine these results files")
    add_run_options(parser)
    args = parser.parse_args()
    if args.merge:
        merge(args.merge, args)
        return

    from hrlm.config import TrainConfig

    dataset, splits, _ = load_splits(args.data, None, 0, 42)
    test = splits["test"]
    if args.test_limit:
        test = test.subset(random.Random(0).sample(range(len(test)), args.test_limit))
    common = {
        "max_length": args.max_length,
        "batch_size": 16,
        "label_col": "label",
        "early_stopping_patience": 0,
        "threads": args.threads,
    }
    configs = {
        "finetune": ("plain fine-tune", {"method": "finetune", "epochs": args.epochs, "lr": args.lr}),
        "setfit": ("SetFit (contrastive pairs + head)", {"method": "setfit"}),
        "augment": (
            "fine-tune + token-noise augmentation (2 copies)",
            {"method": "finetune", "epochs": args.epochs, "lr": args.lr, "augment": "noise", "augment_copies": 2},
        ),
    }
    runs: list[dict[str, Any]] = []

    def save(final: bool) -> None:
        summary = summarize(runs)
        if final:
            print_table(summary, f"few-shot on {dataset}: test {len(test)} texts, mean and sd over seeds")
            _plot(summary, sorted({r["shots"] for r in runs}), args.results_dir)
        write_result(
            f"fewshot-{dataset}" + (f"-{args.variant}" if args.variant else ""),
            {
                "benchmark": "fewshot",
                "dataset": dataset,
                "split": f"K per class sampled from the suggested train split (seeds {args.seeds}); "
                f"scored on {len(test)} texts of the suggested test split",
                "rows": summary,
                "runs": runs,
                "complete": final,
                "settings": {**common, **{k: v[1] for k, v in configs.items()}},
            },
            args=args,
        )

    for k in args.shots:
        for seed in args.seeds:
            train = sample_per_class(splits["train"], k, seed)
            for key in args.systems:
                if key == "tfidf":
                    row = tfidf_row({"train": train, "test": test}, "tfidf word 1-2-grams + logreg")
                else:
                    name, extra = configs[key]
                    if key == "setfit":  # the same number of pairs at every K, as SetFit's fixed step budget
                        extra = {**extra, "setfit_pairs": max(2, args.setfit_pair_budget // (2 * len(train)))}
                    row = neural_row(name, train, test, TrainConfig(**common, **extra, seed=seed))
                runs.append({"key": key, "shots": k, "seed": seed, **row})
                print(f"K={k} seed={seed} {row['system']}: macro F1 {row['macro_f1']:.4f}", flush=True)
                save(False)
    save(True)


def _plot(summary: list[dict[str, Any]], shots: list[int], folder: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for system in dict.fromkeys(r["system"] for r in summary):
        rows = [r for r in summary if r["system"] == system]
        ax.errorbar(
            [r["shots"] for r in rows],
            [r["macro_f1_mean"] for r in rows],
            yerr=[r["macro_f1_sd"] for r in rows],
            marker="o",
            capsize=3,
            label=system,
        )
    ax.set_xscale("log", base=2)
    ax.set_xticks(shots, [str(s) for s in shots])
    ax.set_xlabel("labelled texts per class")
    ax.set_ylabel("macro F1 on the test split")
    ax.set_title("O*NET tasks, 22 classes: few-shot methods")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    folder.mkdir(parents=True, exist_ok=True)
    fig.savefig(folder / "fewshot-onet_tasks.png")
    plt.close(fig)


if __name__ == "__main__":
    main()
