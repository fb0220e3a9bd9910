"""Inference speed: a plain transformers pipeline against every backend of hrlm's Predictor.

Example:
    python benchmarks/inference.py --model runs/imdb --data ../shared/data/imdb/test.csv.gz --limit 2000 \\
        --max-length 256 --threads 2

One trained model (a folder that ``AutoModelForSequenceClassification`` loads: single task, pooler
pooling), one thread count, one max length for every system. The baseline is
``transformers.pipeline("text-classification")`` with ``truncation=True``, that max length and batch
size 32; the Predictor reads the same head of each text (``truncate="head"``), sorted by length and
batched as the Predictor's calibration on this machine chose (``auto``: hrlm's defaults; a backend
name with ``:padded``: that backend with packing off, the plain padded batches every default must
beat). The systems run interleaved: the documents are cut into rounds (at least 3) and every round
runs every system, in a rotating order, so that a slow spell of a shared machine falls on all of
them; docs/s is the median round's.

Reported per system: docs/s and tokens/s (each system's own token count), peak resident memory
(the peak of a fresh subprocess that loads the system and scores the first 256 documents: one
process holds every system, so its own peak says nothing per system), accuracy, label agreement
with the Predictor's padded torch-fp32 (and, for the Predictor's rows, ``margin_shift_fp32``: how far
the system moves the documents' log-odds one way against it, the agreement check's shift test), the
fraction of this machine's limit (the encoder's FLOPs on the real, unpadded tokens per second over the
matrix-product rate torch reaches here at the encoder's shapes on the same threads in the same
precision; int8: torch's dynamic int8 linear),
and ``ceiling_fraction``: the same FLOPs over the machine's ceiling, the faster 2,048-square
product rate (bf16 where the CPU has AVX-512 BF16 or AMX, fp32 where it has not: ``settings.ceiling``
says which), the highest measured before the rounds and after each. A shared host's speed can change
several-fold within minutes (a 2-core Xeon with AMX: 784 to 3,243 GFLOP/s in bf16 in one session), so
each round is also set against the higher of the rates just before and just after it:
``ceiling_fraction_adjacent`` (the median round's), every round's in
``ceiling_fraction_adjacent_runs``. On a CPU without native bf16 the bf16 backends are left out of
the default list: torch emulates bf16 there, dozens of times slower than fp32.

With ``--device cuda`` every system runs on the GPU: the pipeline in fp32 (the baseline) and in bf16
(``dtype=torch.bfloat16``), the Predictor's torch backends (int8 and ONNX Runtime are CPU backends),
the ceiling is the GPU's 8,192-square product rate (``machine.matmul_gflops.gpu``), and the memory
probes report peak GPU memory beside the process's. Writes
``benchmarks/results/inference-<dataset>-<N>[-<variant>].json``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    add_run_options,
    ceiling,
    machine,
    matmul_gflops,
    peak_gpu_mb,
    print_table,
    require_device,
    write_result,
)

# ":padded" is the backend with packing off: the plain length-sorted padded batches every default must beat.
BACKENDS = [
    "auto",
    "torch-fp32:padded",
    "torch-fp32",
    "torch-bf16:padded",
    "torch-bf16",
    "torch-bf16-int8",
    "torch-int8",
    "onnx-fp32",
    "onnx-int8",
    "openvino-fp32",
    "openvino-bf16",
    "openvino-int8",
]
GPU_BACKENDS = ["auto", "torch-fp32:padded", "torch-fp32", "torch-bf16:padded", "torch-bf16"]
PIPELINE = "transformers pipeline"
PIPELINE_BF16 = "transformers pipeline bf16"


def load_docs(path: Path, limit: int | None, seed: int) -> tuple[list[str], list[str], str]:
    from hrlm.data import load_dataset

    ds = load_dataset(path)
    assert ds.labels is not None
    idx = list(range(len(ds)))
    if limit and limit < len(ds):
        idx = sorted(random.Random(seed).sample(idx, limit))
        desc = f"{limit} of {len(ds)} rows of {path.name}, sampled with seed {seed}"
    else:
        desc = f"all {len(ds)} rows of {path.name}"
    return [ds.texts[i] for i in idx], [str(ds.labels[i]) for i in idx], desc


class System:
    """One system under test: load it, then score lists of texts into labels."""

    def __init__(
        self, name: str, model: Path, max_length: int, threads: int, batch_size: int, device: str = "cpu"
    ) -> None:
        import torch

        self.name = name
        self.max_length = max_length
        self.batch_size = batch_size

        torch.set_num_threads(threads)
        if name in (PIPELINE, PIPELINE_BF16):
            from transformers import pipeline

            dtype = torch.bfloat16 if name == PIPELINE_BF16 else torch.float32
            self.pipe = pipeline(
                "text-classification", model=str(model), tokenizer=str(model), device=device, dtype=dtype
            )
            self.precision = "bf16" if name == PIPELINE_BF16 else "fp32"
        else:
            from hrlm.inference.predictor import Predictor

            backend, _, path = name.partition(":")  # "torch-fp32:padded": packing off
            self.predictor = Predictor.from_dir(
                model,
                backend=backend,
                device=device,
                threads=threads,
                truncate="head",
                max_length=max_length,
                packing=False if path == "padded" else None,
            )
            chosen = self.predictor.backend_name
            # torch-bf16-int8 against bf16's limit: int8 computes 58% of its linear FLOPs (the query-key-value
            # and first feed-forward products), bf16 the rest and everything else
            precisions = {
                "torch-bf16": "bf16",
                "torch-bf16-int8": "bf16",
                "openvino-bf16": "bf16",
                "torch-int8": "int8",
                "onnx-int8": "int8",
                "openvino-int8": "int8",
            }
            self.precision = precisions.get(chosen, "fp32")

    def labels(self, texts: list[str]) -> list[str]:
        return [label for label, _ in self.scored(texts)]

    def scored(self, texts: list[str]) -> list[tuple[str, dict[str, float] | None]]:
        """Each text's label and, from the Predictor, its probability of every label (the pipeline: None)."""
        if hasattr(self, "pipe"):
            out = self.pipe(texts, batch_size=self.batch_size, truncation=True, max_length=self.max_length)
            return [(str(o["label"]), None) for o in out]
        return [(str(p.label), p.probabilities) for p in self.predictor.predict(texts)]

    def windows(self, texts: list[str]) -> list[Any]:
        """The token ids of every window the system runs: the pipeline's truncated texts, the Predictor's windows."""
        if hasattr(self, "pipe"):
            return list(self.pipe.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"])
        return list(self.predictor.encode(texts).windows)


def log_odds_shift(probs: list[Any], reference: list[Any]) -> dict[str, Any]:
    """:func:`hrlm.training.checks.margin_shift` of one system's probabilities against the reference's."""
    import numpy as np

    from hrlm.training.checks import margin_shift

    labels = sorted(reference[0])
    as_array = [np.array([[p[k] for k in labels] for p in ps]) for ps in (probs, reference)]
    return margin_shift(as_array[0], as_array[1], labels)


def flops_per_sequence(model_dir: Path) -> Any:
    """A function giving the FLOPs of the transformer blocks on a sequence of n tokens (2 per multiply-add)."""
    from torch import nn

    from hrlm.modeling import encoder_layers, load_model

    model, _, _ = load_model(model_dir)
    per_token = 0.0  # the linear layers: 2 * weights per token
    attention = 0.0  # scores and context: 2 * 2 * n * (heads * head size) per token
    for block in encoder_layers(model.encoder):
        per_token += sum(2 * m.weight.numel() for m in block.modules() if isinstance(m, nn.Linear))
        attention += 4 * block.attention.self.all_head_size
    return lambda n: n * per_token + n * n * attention


def matmul_rates(
    threads: int, hidden: int, intermediate: int, precisions: Sequence[str], device: str = "cpu"
) -> dict[str, float]:
    """GFLOP/s of this machine's matrix products at an encoder's shapes, per precision: the best of 5.

    A batch of 32 windows of 256 tokens through the encoder's widest linear layer (int8: torch's dynamic
    int8 linear); the results file's ``machine.matmul_gflops`` is the shared 2048-square measurement.
    """
    rates = matmul_gflops(
        32 * 256, hidden, intermediate, threads=threads, precisions=tuple(precisions), statistic="best", device=device
    )
    missing = [name for name, rate in rates.items() if rate is None]
    if missing:
        raise SystemExit(f"torch on this machine cannot multiply matrices in {missing}: no limit to compare with")
    return {name: rate for name, rate in rates.items() if rate is not None}


def peak_memory_mb(args: argparse.Namespace, name: str) -> dict[str, float | None]:
    """Peak resident (and GPU) memory of a fresh process that loads ``name`` and scores the first 256 documents."""
    cmd = [sys.executable, __file__, "--rss-probe", name, *sys.argv[1:]]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"memory probe of {name} failed: {proc.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return {"peak_rss_mb": None, "peak_gpu_mb": None}
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def rss_probe(args: argparse.Namespace) -> None:
    texts, _, _ = load_docs(args.data, args.limit, args.seed)
    system = System(args.rss_probe, args.model, args.max_length, args.threads, args.batch_size, args.device)
    system.labels(texts[:256])
    gpu = peak_gpu_mb() if args.device == "cuda" else None
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(json.dumps({"peak_rss_mb": round(int(line.split()[1]) / 1024, 1), "peak_gpu_mb": gpu}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="model folder (HF-loadable: pooler pooling)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=None, help="score this many sampled rows (default: all)")
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where every system runs")
    parser.add_argument("--batch-size", type=int, default=32, help="the pipeline's batch size")
    parser.add_argument(
        "--backends", default=None, help="comma-separated (default: all, less bf16 on a CPU without native bf16)"
    )
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds, at least 3 (docs/s: the median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the per-system memory probes")
    parser.add_argument("--rss-probe", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--variant", default=None, help="suffix of the results file name (e.g. the CPU kind)")
    add_run_options(parser)
    args = parser.parse_args()
    if args.rounds < 3:
        parser.error("--rounds must be at least 3: docs/s is the median round")
    if args.rss_probe:
        rss_probe(args)
        return

    config = json.loads((args.model / "config.json").read_text())
    if "BertForSequenceClassification" not in config.get("architectures", []):
        raise SystemExit(
            f"{args.model} does not load in transformers' AutoModelForSequenceClassification (architectures "
            f"{config.get('architectures')}): the pipeline baseline needs a single-task model trained with "
            "--pooling pooler (and not head-pruned)."
        )
    texts, truth, desc = load_docs(args.data, args.limit, args.seed)
    stem = args.data.name.split(".")[0]
    dataset = args.data.parent.name if stem in ("train", "validation", "test") else stem  # imdb/test.csv.gz: imdb
    from hrlm.inference.backends import cpu_has_fast_bf16

    notes: list[str] = []
    require_device(parser, args.device)
    on_gpu = args.device == "cuda"
    backends = GPU_BACKENDS if on_gpu else BACKENDS
    if args.backends is not None:
        backends = [b for b in args.backends.split(",") if b]
    elif not on_gpu and not cpu_has_fast_bf16():
        backends = [b for b in BACKENDS if not b.startswith("torch-bf16") and b != "openvino-bf16"]
        notes.append(
            "torch-bf16 and openvino-bf16 not measured: this CPU has neither AVX-512 BF16 nor AMX, so torch "
            "emulates bf16 products, dozens of times slower than fp32, and OpenVINO refuses bf16 (auto never "
            "picks either here)."
        )
    names = [PIPELINE, *([PIPELINE_BF16] if on_gpu else []), *backends]
    systems: dict[str, System] = {}
    for name in names:
        t0 = time.perf_counter()
        try:
            systems[name] = System(name, args.model, args.max_length, args.threads, args.batch_size, args.device)
        except Exception as exc:  # a backend this installation lacks is reported, not fatal
            notes.append(f"{name} skipped: {exc}")
            print(notes[-1], file=sys.stderr)
            continue
        # warm-up: lazy initialisation, first-batch allocations, and the Predictor's calibration on this
        # machine (the first call of 8,192 tokens or more, on a GPU 65,536, measures and caches its batching)
        systems[name].labels(texts[: 512 if on_gpu else 64])
        print(f"loaded {name} in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    load_before = os.getloadavg()  # a busy shared machine distorts every number: record how busy it was
    hidden, intermediate = int(config["hidden_size"]), int(config["intermediate_size"])
    precisions = sorted({"fp32", *(system.precision for system in systems.values())})
    rates = matmul_rates(args.threads, hidden, intermediate, precisions, args.device)
    order = list(range(len(texts)))
    random.Random(args.seed + 1).shuffle(order)
    rounds = [order[r :: args.rounds] for r in range(args.rounds)]
    # the machine's ceiling: 2,048-square products in its fastest native precision; on a CPU measured
    # again after every round, so that each round is also set against the rates just before and after it
    measured = machine(args.threads)["matmul_gflops"]
    ceiling_precision, first = ceiling(measured["gpu"] if on_gpu else measured)
    between = [first or 0.0]
    seconds = dict.fromkeys(systems, 0.0)
    round_rates: dict[str, list[float]] = {name: [] for name in systems}
    predicted: dict[str, list[str]] = {name: [""] * len(texts) for name in systems}
    probabilities: dict[str, list[dict[str, float] | None]] = {name: [None] * len(texts) for name in systems}
    for r, chunk in enumerate(rounds):
        running = list(systems)
        running = running[r % len(running) :] + running[: r % len(running)]  # rotate who goes first
        for name in running:
            batch = [texts[i] for i in chunk]
            t0 = time.perf_counter()
            scored = systems[name].scored(batch)
            spent = time.perf_counter() - t0
            seconds[name] += spent
            round_rates[name].append(len(batch) / spent)
            for i, (label, probs) in zip(chunk, scored, strict=True):
                predicted[name][i], probabilities[name][i] = label, probs
        if not on_gpu:
            rate = matmul_gflops(threads=args.threads, precisions=(ceiling_precision,))[ceiling_precision]
            between.append(rate or 0.0)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {seconds[n]:.0f}s" for n in running), file=sys.stderr)

    # The limit is this machine's best: measured before and after the systems, the higher rate is kept.
    after = matmul_rates(args.threads, hidden, intermediate, precisions, args.device)
    rates = {k: max(v, after[k]) for k, v in rates.items()}
    flops_of = flops_per_sequence(args.model)
    reference_name = next((n for n in ("torch-fp32:padded", "torch-fp32") if n in systems), None)
    reference = predicted[reference_name] if reference_name is not None else None
    ceiling_gflops = max(between)  # the highest rate measured before, between and after the rounds
    adjacent_ceilings = [max(between[r : r + 2]) for r in range(args.rounds)] if not on_gpu else []
    memory = {} if args.no_memory else {name: peak_memory_mb(args, name) for name in systems}
    if not on_gpu:
        for probe in memory.values():
            probe.pop("peak_gpu_mb", None)
    rows = []
    for name, system in systems.items():
        windows = system.windows(texts)  # tokenised once, for the FLOPs and the batching record
        lengths = [len(w) for w in windows]
        flops = sum(flops_of(n) for n in lengths)
        docs_per_s = statistics.median(round_rates[name])  # the median round: a slow spell of the host counts once
        secs = len(texts) / docs_per_s
        gflops = flops / secs / 1e9
        label = name if name in (PIPELINE, PIPELINE_BF16) else f"hrlm Predictor {name}"
        if name == "auto":
            label = f"hrlm Predictor defaults (auto: {system.predictor.backend_name})"
        row: dict[str, Any] = {
            "system": label,
            "docs_per_s": round(docs_per_s, 1),
            "tokens_per_s": round(sum(lengths) / secs),
            "speedup": None,
            **({"peak_rss_mb": None} if args.no_memory else memory[name]),
            "accuracy": round(sum(p == t for p, t in zip(predicted[name], truth, strict=True)) / len(truth), 4),
            "agreement_fp32": None
            if reference is None
            else round(sum(a == b for a, b in zip(predicted[name], reference, strict=True)) / len(texts), 4),
            "gflops": round(gflops, 1),
            "limit_fraction": round(gflops / rates[system.precision], 3),
            "ceiling_fraction": round(gflops / ceiling_gflops, 3) if ceiling_gflops else None,
            "mean_tokens": round(sum(lengths) / len(lengths), 1),
        }
        if hasattr(system, "predictor"):  # how the Predictor batched: calibrated on this machine, or as given
            predictor = system.predictor
            max_tokens, packing = predictor.batching(windows)
            row["batching"] = {"max_tokens": max_tokens, "packing": packing, "streams": predictor.backend.streams}
        if reference_name is not None and probabilities[name][0] is not None:
            # the agreement check's test for a systematic shift of the log-odds, on these documents
            row["margin_shift_fp32"] = log_odds_shift(probabilities[name], probabilities[reference_name])
        if adjacent_ceilings and all(adjacent_ceilings):
            # each round at this system's mean FLOPs per document, over the rates just before and after it
            shares = [
                rate * flops / len(texts) / 1e9 / top
                for rate, top in zip(round_rates[name], adjacent_ceilings, strict=True)
            ]
            row["ceiling_fraction_adjacent"] = round(statistics.median(shares), 3)
            row["ceiling_fraction_adjacent_runs"] = [round(x, 3) for x in shares]
        rows.append(row)
    base = rows[0]["docs_per_s"]
    for row in rows:
        row["speedup"] = round(row["docs_per_s"] / base, 2)

    from hrlm.inference.predictor import Predictor

    auto = Predictor.from_dir(args.model, threads=args.threads, device=args.device)
    notes += [
        f"--backend auto picks {auto.backend_name} for this model folder: {auto.backend_reason}.",
        "The pipeline reads raw text; the Predictor normalises it first (HTML line breaks, entities, white space), "
        "so token counts differ slightly; FLOPs count real tokens only, not padding.",
    ]
    title = f"inference on {dataset}: {len(texts)} docs, {args.max_length} tokens, {args.threads} threads"
    print_table(rows, title)
    print("matrix-product limits (GFLOP/s):", rates)
    for note in notes:
        print("note:", note)
    path = write_result(
        f"inference-{dataset}-{len(texts)}" + (f"-{args.variant}" if args.variant else ""),
        {
            "benchmark": "inference",
            "dataset": dataset,
            "split": desc,
            "rows": rows,
            "limits_gflops": rates,
            "settings": {
                "model": str(args.model),
                "max_length": args.max_length,
                "threads": args.threads,
                "device": args.device,
                "pipeline_batch_size": args.batch_size,
                "predictor_truncate": "head",
                "rounds": args.rounds,
                "seed": args.seed,
                "ceiling": {"precision": ceiling_precision, "gflops": ceiling_gflops, "measured_gflops": between},
            },
            "notes": notes,
            "load_average_1min": {"start": round(load_before[0], 2), "end": round(os.getloadavg()[0], 2)},
        },
        args=args,
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
