"""Training speed: ``hrlm train`` against the Hugging Face ``Trainer`` on the same reviews, settings and machine.

Example:
    python benchmarks/training.py --data ../shared/data/imdb --train 1000 --test 1000 --rounds 3

Both systems fine-tune the packaged all-MiniLM-L6-v2 on the same ``--train`` IMDB training reviews
(sampled with ``--seed``), the head of each review at ``--max-length`` tokens, batch 32, one epoch,
AdamW at 1e-4 with 6% linear warmup, weight decay 0.01, clipping at 1.0, in bf16 where the CPU
computes it natively (the Trainer's ``bf16=True``). The Trainer pads each batch to its longest
review (``DataCollatorWithPadding``), as its documentation shows; hrlm runs with its defaults
(``hrlm train --truncate head``, a validation split of 200 other training reviews scored once, at
the end). Each (system, round) runs in a fresh process, the rounds interleaved so that a slow
spell of a shared host falls on both; figures are the median round's.

Reported per system: training samples/s (the optimizer steps only: the Trainer's own
``train_runtime``, hrlm's ``train_seconds``), wall seconds of the whole run, peak resident memory
of the process, test accuracy on ``--test`` test reviews (the mean over the rounds, which use
different seeds), and the share of the machine's ceiling: three forward passes' FLOPs (forward,
and backward at twice the forward) on the real tokens per second, over the faster 2,048-square
matrix-product rate (bf16 on a CPU with AVX-512 BF16 or AMX, fp32 on one without:
``settings.ceiling`` says which), the highest measured before, between and after the runs. A shared
host's speed can change several-fold within minutes (a 2-core Xeon with AMX: 784 to 3,243 GFLOP/s in
bf16 in one session), so on a CPU the rate is measured again after every run, and each run is also set
against the higher of the rates just before and just after it: ``ceiling_fraction_adjacent`` (the
median run's), with every run's in ``ceiling_fraction_adjacent_runs``.

With ``--device cuda`` both train on the GPU (the Trainer in bf16 where the GPU has it, hrlm with its
defaults there), the ceiling is the GPU's 8,192-square product rate (``machine.matmul_gflops.gpu``),
and peak GPU memory is reported beside the process's. ``--base`` trains another local copy of the
encoder (an fp16 copy carried to a GPU machine, say). ``--systems`` adds ``hrlm-autocast``,
``hrlm-bf16-weights``: hrlm with its bf16 training path forced (``HRLM_TRAIN_WEIGHTS``, see
:mod:`hrlm.training.weights`), to see what the measured choice of the defaults is worth in speed and
accuracy, or ``hrlm-attention-dropout``: hrlm with the encoder's attention dropout of 0.1, which the
Trainer keeps and hrlm drops on a CPU, or ``hrlm-packed``, ``hrlm-padded`` and ``hrlm-grouped``:
hrlm on shuffled batches laid end to end (``packing = true``), padded shuffled batches (``packing =
false``), or padded batches of similar lengths (``group_by_length``, hrlm's default before); each hrlm
row records the paths its run chose (``paths``).
``--keep-model DIR`` keeps the model of hrlm's last round, for ``benchmarks/inference.py``. Writes
``benchmarks/results/training-imdb[-<variant>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    SHARED,
    add_run_options,
    ceiling,
    machine,
    matmul_gflops,
    peak_gpu_mb,
    print_table,
    require_device,
    write_result,
)

SYSTEMS = ("hf-trainer", "hrlm")
LABELS = {
    "hf-trainer": "Hugging Face Trainer, bf16={bf16}",
    "hrlm": "hrlm train (defaults)",
    "hrlm-autocast": "hrlm train, HRLM_TRAIN_WEIGHTS=autocast",
    "hrlm-bf16-weights": "hrlm train, HRLM_TRAIN_WEIGHTS=bf16",
    "hrlm-attention-dropout": "hrlm train, attention_dropout = 0.1 (the encoder's own)",
    "hrlm-packed": "hrlm train, packing = true (shuffled batches laid end to end)",
    "hrlm-padded": "hrlm train, packing = false (padded shuffled batches)",
    "hrlm-grouped": "hrlm train, padded batches of similar lengths (group_by_length, no packing)",
}
# hrlm with its bf16 training path forced one way (hrlm.training.weights), beside the defaults
FORCED_WEIGHTS = {"hrlm-autocast": "autocast", "hrlm-bf16-weights": "bf16"}
# hrlm with packing forced one way (hrlm.training.packed); the defaults decide per run
FORCED_PACKING = {"hrlm-packed": True, "hrlm-padded": False, "hrlm-grouped": False}


def sample(folder: Path, n_train: int, n_val: int, n_test: int, seed: int) -> dict[str, list[dict[str, Any]]]:
    import pandas as pd

    train = pd.read_csv(folder / "train.csv.gz").sample(frac=1.0, random_state=seed)
    test = pd.read_csv(folder / "test.csv.gz").sample(n=n_test, random_state=seed)
    return {
        "train": train.iloc[:n_train][["text", "label"]].to_dict("records"),
        "validation": train.iloc[n_train : n_train + n_val][["text", "label"]].to_dict("records"),
        "test": test[["text", "label"]].to_dict("records"),
    }


def flops_per_token(base: Path) -> tuple[float, float]:
    """FLOPs per token of the encoder's linear layers and, per token and position, of attention."""
    from torch import nn

    from hrlm.modeling import TaskSpec, build_model, encoder_layers

    model = build_model(base, [TaskSpec("label", ["neg", "pos"])])
    linear, attention = 0.0, 0.0
    for block in encoder_layers(model.encoder):
        linear += sum(2 * m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
        attention += 4 * block.attention.self.all_head_size
    return linear, attention


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def base_path(args: argparse.Namespace) -> Path:
    from hrlm.encoders import resolve_base

    return resolve_base(args.base)


def run_hf(work: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One Trainer run in this process: train, then score the test reviews."""
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from hrlm.inference import resolve_precision

    torch.set_num_threads(args.threads)
    data = json.loads((work / "data.json").read_text())
    base = str(base_path(args))
    tokenizer = AutoTokenizer.from_pretrained(base)
    names = sorted({str(r["label"]) for r in data["train"]})

    def encode(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """A list of feature dicts: a torch-style dataset, as the Trainer takes it."""
        enc = tokenizer([r["text"] for r in rows], truncation=True, max_length=args.max_length)
        labels = [names.index(str(r["label"])) for r in rows]
        return [{**{k: v[i] for k, v in enc.items()}, "labels": labels[i]} for i in range(len(rows))]

    train, test = encode(data["train"]), encode(data["test"])
    # float32 weights, as hrlm trains them, also from an fp16 copy of the encoder
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(names), dtype=torch.float32)
    bf16 = resolve_precision("auto", torch.device(args.device)) == "bf16"
    targs = TrainingArguments(
        output_dir=str(work / f"hf-{seed}"),
        per_device_train_batch_size=32,
        per_device_eval_batch_size=64,
        learning_rate=1e-4,
        warmup_steps=0.06,  # transformers 5: a float below 1 is a fraction of the steps
        weight_decay=0.01,
        max_grad_norm=1.0,
        num_train_epochs=1,
        lr_scheduler_type="linear",
        bf16=bf16,
        use_cpu=args.device == "cpu",
        save_strategy="no",
        eval_strategy="no",
        logging_strategy="no",
        report_to=[],
        seed=seed,
        disable_tqdm=True,
    )
    t0 = time.perf_counter()
    trainer = Trainer(
        model=model,
        args=targs,
        train_dataset=train,  # type: ignore[arg-type]  # a list of dicts is a map-style dataset
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    out = trainer.train()
    train_wall = time.perf_counter() - t0
    predictions = trainer.predict(test)
    accuracy = float(np.mean(predictions.predictions.argmax(1) == np.asarray([row["labels"] for row in test])))
    tokens = sum(len(row["input_ids"]) for row in train)
    return {
        "train_s": out.metrics["train_runtime"],
        "wall_s": time.perf_counter() - t0,
        "train_wall_s": train_wall,
        "samples": len(train),
        "tokens": tokens,
        "accuracy": accuracy,
        "precision": "bf16" if bf16 else "fp32",
    }


def run_hrlm(work: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    """One ``hrlm train`` run in this process, through the Python API the CLI calls."""
    import torch

    from hrlm.config import TrainConfig
    from hrlm.encoders import load_tokenizer
    from hrlm.inference import resolve_precision
    from hrlm.text import encode_documents
    from hrlm.training import train

    torch.set_num_threads(args.threads)
    if args.child in FORCED_WEIGHTS:
        os.environ["HRLM_TRAIN_WEIGHTS"] = FORCED_WEIGHTS[args.child]
    data = json.loads((work / "data.json").read_text())
    csv = work / "hrlm.csv"
    if not csv.exists():
        import pandas as pd

        rows = [dict(r, split=s) for s in ("train", "validation", "test") for r in data[s]]
        pd.DataFrame(rows).to_csv(csv, index=False)
    cfg = TrainConfig(
        epochs=1,
        max_length=args.max_length,
        truncate="head",
        split_col="split",
        seed=seed,
        threads=args.threads,
        device=args.device,
        base=str(args.base) if args.base else None,
        # on a CPU hrlm trains without attention-probability dropout (hrlm.modeling.attention_dropout_for);
        # this system keeps the encoder's, as the Trainer does
        attention_dropout=0.1 if args.child == "hrlm-attention-dropout" else None,
        # by default hrlm packs its shuffled batches where their padding would cost more than packing
        # does on this machine (hrlm.training.packed); these systems force packing, or padding
        # (shuffled or grouped)
        packing=FORCED_PACKING.get(args.child),
        group_by_length=args.child == "hrlm-grouped",
    )
    out = Path(args.keep_model) if args.keep_model else work / f"hrlm-{seed}"
    t0 = time.perf_counter()
    result = train(csv, out, cfg, overwrite=True, progress=False)  # as `hrlm train` calls it
    wall = time.perf_counter() - t0
    tokenizer = load_tokenizer(base_path(args))
    enc = encode_documents(
        tokenizer, [r["text"] for r in data["train"]], max_length=args.max_length, stride=0, truncate="head"
    )
    return {
        "train_s": result.train_seconds,
        "wall_s": wall,
        "samples": len(data["train"]),
        "tokens": sum(len(w) for w in enc.windows),
        "accuracy": float(result.metrics["accuracy"]),
        "precision": resolve_precision(cfg.precision, torch.device(args.device)),
        "paths": result.paths,
    }


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    run = run_hf if args.child == "hf-trainer" else run_hrlm  # hrlm, or hrlm with forced weights
    out = run(work, args, args.child_seed)
    out["peak_rss_mb"] = peak_rss_mb()
    out["peak_gpu_mb"] = peak_gpu_mb()
    print(json.dumps(out))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "imdb")
    parser.add_argument("--train", type=int, default=1000, help="training reviews")
    parser.add_argument("--validation", type=int, default=200, help="hrlm's validation reviews (other training rows)")
    parser.add_argument("--test", type=int, default=1000, help="test reviews scored by both")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where both systems train")
    parser.add_argument("--base", type=Path, default=None, help="encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--keep-model", type=Path, default=None, help="keep the model of hrlm's last round here")
    parser.add_argument("--rounds", type=int, default=3, help="runs per system, interleaved (at least 3)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"of {', '.join(LABELS)}; the hrlm-* ones force the bf16 training path (hrlm.training.weights)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--variant", default=None, help="suffix of the results file name (e.g. the CPU kind)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--work", default=None, help=argparse.SUPPRESS)
    add_run_options(parser)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: the figures are the median run's")
    require_device(parser, args.device)
    if not (args.data / "train.csv.gz").is_file():
        raise SystemExit(f"{args.data}: no train.csv.gz; point --data at the IMDB folder of ../shared/data")
    systems = [s for s in args.systems.split(",") if s]
    unknown = sorted(set(systems) - set(LABELS))
    if unknown:
        parser.error(f"--systems: unknown {', '.join(unknown)}; use {', '.join(LABELS)}")
    with tempfile.TemporaryDirectory(prefix="hrlm-bench-train-") as tmp:
        work = Path(tmp)
        data = sample(args.data, args.train, args.validation, args.test, args.seed)
        (work / "data.json").write_text(json.dumps(data))
        load_before = os.getloadavg()
        rates_before = machine(args.threads)["matmul_gflops"]
        on_gpu = args.device == "cuda"
        precision, first = ceiling(rates_before["gpu"] if on_gpu else rates_before)
        # on a CPU the ceiling's rate again after every run: each run is set against the rates measured
        # just before and just after it (a shared host's speed can change several-fold within minutes)
        between = [first or 0.0]
        runs: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
        for r in range(args.rounds):
            order = systems[r % len(systems) :] + systems[: r % len(systems)]
            for name in order:
                cmd = [sys.executable, __file__, "--child", name, "--child-seed", str(args.seed + r), "--work", tmp]
                cmd += ["--max-length", str(args.max_length), "--threads", str(args.threads), "--device", args.device]
                cmd += ["--base", str(args.base)] if args.base else []
                cmd += ["--keep-model", str(args.keep_model)] if args.keep_model and name == "hrlm" else []
                t0 = time.perf_counter()
                proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if proc.returncode != 0:
                    raise SystemExit(f"{name} round {r + 1} failed:\n{proc.stderr[-3000:]}")
                done = json.loads(proc.stdout.strip().splitlines()[-1])
                if not on_gpu:
                    between.append(matmul_gflops(threads=args.threads, precisions=(precision,))[precision] or 0.0)
                done["ceiling_gflops"] = max(between[-2:])
                runs[name].append(done)
                print(
                    f"round {r + 1}/{args.rounds} {name}: {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True
                )
    # the ceiling: on a CPU 2,048-square products in its fastest native precision, the highest rate
    # measured before, between and after the runs; on a GPU its 8,192-square rate, measured once
    ceiling_gflops = max(between)
    linear, attention = flops_per_token(base_path(args))

    def flops_per_sample(d: dict[str, Any]) -> float:
        tokens_per_sample = d["tokens"] / d["samples"]
        # forward + backward (twice the forward) = three forward passes, linear layers and attention
        return 3 * (tokens_per_sample * linear + tokens_per_sample**2 * attention)

    rows = []
    for name in systems:
        done = runs[name]
        rates = [d["samples"] / d["train_s"] for d in done]
        median = statistics.median(rates)
        mid = done[rates.index(median)] if median in rates else done[0]
        tokens_per_sample = mid["tokens"] / mid["samples"]
        gflops = median * flops_per_sample(mid) / 1e9
        adjacent = [
            rate * flops_per_sample(d) / 1e9 / d["ceiling_gflops"]
            for rate, d in zip(rates, done, strict=True)
            if d["ceiling_gflops"]
        ]
        rows.append(
            {
                "system": LABELS.get(name, name).format(bf16=mid.get("precision") == "bf16"),
                "train_samples_s": round(median, 2),
                "train_samples_s_runs": [round(x, 2) for x in rates],
                "speedup": None,
                "wall_s": round(statistics.median(d["wall_s"] for d in done), 1),
                "peak_rss_mb": max(d["peak_rss_mb"] for d in done),
                **({"peak_gpu_mb": max(d["peak_gpu_mb"] for d in done)} if args.device == "cuda" else {}),
                "accuracy": round(statistics.mean(d["accuracy"] for d in done), 4),
                "accuracy_runs": [round(d["accuracy"], 4) for d in done],
                "precision": mid.get("precision"),
                **({"paths": mid["paths"]} if mid.get("paths") else {}),
                "mean_tokens": round(tokens_per_sample, 1),
                "gflops": round(gflops, 1),
                "ceiling_fraction": round(gflops / ceiling_gflops, 3) if ceiling_gflops else None,
                # each run over the higher of the rates measured just before and just after it (CPU)
                **(
                    {
                        "ceiling_fraction_adjacent": round(statistics.median(adjacent), 3),
                        "ceiling_fraction_adjacent_runs": [round(x, 3) for x in adjacent],
                        "ceiling_gflops_adjacent_runs": [round(d["ceiling_gflops"], 1) for d in done],
                    }
                    if adjacent and not on_gpu
                    else {}
                ),
            }
        )
    base = rows[0]["train_samples_s"]
    for row in rows:
        row["speedup"] = round(row["train_samples_s"] / base, 2)
    desc = (
        f"{args.train} IMDB training reviews (seed {args.seed}), {args.test} test reviews; "
        f"hrlm's validation: {args.validation} other training reviews"
    )
    print_table(rows, f"training on imdb: {args.train} reviews, {args.max_length} tokens, {args.threads} threads")
    path = write_result(
        "training-imdb" + (f"-{args.variant}" if args.variant else ""),
        {
            "benchmark": "training",
            "dataset": "imdb",
            "split": desc,
            "rows": rows,
            "settings": {
                "max_length": args.max_length,
                "threads": args.threads,
                "device": args.device,
                "batch_size": 32,
                "epochs": 1,
                "lr": 1e-4,
                "rounds": args.rounds,
                "seed": args.seed,
                "ceiling": {"precision": precision, "gflops": ceiling_gflops, "measured_gflops": between},
                "flops_per_token_linear": linear,
                "load_average_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
            },
            "notes": [
                "hrlm's defaults on a CPU train without attention-probability dropout (the Trainer keeps the "
                "encoder's 0.1), with fused AdamW, keep freed tensor memory in the process, and draw the hidden "
                "states' dropout masks from 16 random bits per element where the machine measured that faster "
                "(hrlm.training.dropout); on a CPU with native bf16 they run the forward and backward passes on "
                "bf16 copies of the weights with float32 masters where the machine measured that faster than "
                "autocast (hrlm.training.weights; each hrlm row's paths)."
                if args.device == "cpu"
                else "On CUDA hrlm keeps the encoder's own dropout (attention's too: the fused GPU kernels apply "
                "it) and PyTorch's attention path; its per-machine training calibrations are CPU-only. Both "
                "systems train under bf16 autocast; hrlm with fused AdamW.",
            ],
        },
        args=args,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
