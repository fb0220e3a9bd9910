"""Agreement checks: how a backend of a model folder compares with fp32 of the same weights, on held-out data.

``hrlm compress --data`` measures every backend of the folder it writes (labels, accuracy, docs/s, and how
far it moves the documents' log-odds one way: :func:`margin_shift`) and records each check in
``hrlm.json``; ``--backend auto`` uses a backend only where its check passed
(:func:`hrlm.inference.backends.check_passes`). Where int8 in every layer fails, the searches here look
for the int8 variant that keeps the labels:

- :func:`int8_search`: ``torch-int8`` with its most-drifting layers kept in float32
  (:mod:`hrlm.training.quantization`);
- :func:`mixed_search`: ``torch-bf16-int8``'s smoothing maxima, then int8 in both kinds of layer, else
  in the feed-forward inputs only (:mod:`hrlm.inference.mixed`);
- :func:`openvino_int8_search`: ``openvino-int8`` calibrated by NNCF, in every layer, else with the
  most-drifting feed-forward outputs in float32, one, two, three, then all
  (:mod:`hrlm.inference.openvino_backend`).

The candidates of the last two get an output offset (:func:`fit_offset`): int8 with static or smoothed
scales can move every document's log-odds a little one way, which costs accuracy wherever borderline
documents lean one way; the mean shift on the held-out documents is cancelled, and the check judges the
labels with offsets fitted out of fold.
"""

from __future__ import annotations

import copy
import datetime as dt
import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from hrlm.data import Dataset, load_dataset
from hrlm.errors import ConfigError, ModelError
from hrlm.evaluation import compute_metrics
from hrlm.inference import Predictor, check_passes, collate, decide, openvino_backend, probabilities
from hrlm.inference.mixed import ALPHA, KINDS, activation_maxima, layer_names, save_maxima
from hrlm.inference.mixed import NAME as MIXED
from hrlm.modeling import HrlmModel, ModelMeta, TaskSpec, encoder_layers
from hrlm.training.quantization import SENSITIVITY_TEXTS, search, sensitivity

OPENVINO_INT8 = "openvino-int8"
# The speed race among the backends that passed (see race): rounds, and documents a round at most
RACE_ROUNDS = 5
RACE_DOCS = 256
# Windows per calibration batch of openvino-int8: padded batches as the Predictor makes them
CALIBRATION_BATCH = 8
# Folds of the cross-fitted output offset (see fit_offset)
OFFSET_FOLDS = 2
# openvino-int8's candidates between int8 in every layer and every narrowing layer in float32: how many
# of the most-drifting narrowing layers to keep in float32
OPENVINO_KEEP_STEPS = (1, 2, 3)


def int8_search(
    model: HrlmModel,
    tokenizer: Any,
    meta: ModelMeta,
    held_out: Dataset,
    data: Any,
    reference: Measured,
    threads: int,
    folder: Path,
) -> tuple[dict[str, Any], Measured, list[dict[str, Any]]]:
    """``torch-int8`` with its most-drifting layers kept in float32 (see :mod:`hrlm.training.quantization`)."""
    results: dict[tuple[str, ...], Measured] = {}

    def check(trial: ModelMeta) -> dict[str, Any]:
        predictor = Predictor(
            model, tokenizer, trial, backend="torch-int8", device="cpu", threads=threads, folder=folder
        )
        key = tuple(trial.backend_checks["torch-int8"]["fp32_layers"])
        results[key] = measure(predictor, held_out)
        return agreement_check(results[key], reference, held_out, data, threads)

    found, tried = search(
        model, meta, held_out.texts, tokenizer, check, threads=threads, fp32_docs_per_s=reference.docs_per_s
    )
    return found, results[tuple(found["fp32_layers"])], tried


def mixed_search(run: Checking, meta: ModelMeta) -> dict[str, Any] | None:
    """``torch-bf16-int8``'s check: activation ranges from held-out text, then int8 in both kinds of layer, else
    in the feed-forward inputs only, until one keeps the labels. Appends a row per candidate; None if unavailable."""
    texts = run.held_out.texts[:SENSITIVITY_TEXTS]
    try:
        save_maxima(activation_maxima(run.model, run.tokenizer, meta, texts, threads=run.threads), run.folder)
    except ConfigError as exc:
        run.notes.append(f"{MIXED} not checked: {exc}")
        return None
    check: dict[str, Any] = {}
    for kinds in (KINDS, ("intermediate",)):
        layers = layer_names(run.model, kinds)
        trial = copy.deepcopy(meta)
        trial.backend_checks = {MIXED: {"int8_layers": layers}}
        extra = {"int8_layers": layers, "smoothing": {"alpha": ALPHA, "calibration_texts": len(texts)}}
        size = file_size(run.folder / "model.safetensors")
        check = run.candidate(MIXED, trial, extra, size, f", int8 in {' and '.join(kinds)}", correct=True)
        if check_passes(check):
            break
    run.notes.append(
        f"{MIXED} (bf16, int8 in {len(check['int8_layers'])} smoothed layers) "
        f"{'passed' if check_passes(check) else 'failed'} the agreement check "
        f"({verdict(check)})."
    )
    return check


@dataclass
class Measured:
    """One backend's labels, metrics, docs/s and probabilities (documents x ``classes``) on held-out data,
    and the documents' logits of every task."""

    labels: list[Any]
    metrics: dict[str, Any]
    docs_per_s: float
    probs: np.ndarray | None = None
    classes: tuple[str, ...] = ()
    logits: dict[str, np.ndarray] | None = None


def load_labelled(path: str | Path, meta: ModelMeta, text_col: str, label_col: str | None) -> Dataset:
    task = meta.tasks[0]
    sep = meta.train_config.get("label_sep") if task.multi_label else None
    return load_dataset(
        Path(path),
        text_col=text_col,
        label_col=label_col or meta.train_config.get("label_col", "label"),
        label_sep=(sep or "|") if task.multi_label else None,
    )


def measure(predictor: Predictor, ds: Dataset) -> Measured:
    """Labels, metrics and throughput of one backend on ``ds`` (after a short warm-up).

    The machine's one-off calibration for this backend runs before the clock starts, so that the first
    backend measured does not pay it inside its docs/s."""
    predictor.calibrate_once(ds.texts)
    predictor.predict_proba(ds.texts[:8])
    start = time.perf_counter()
    logits = predictor.logits(ds.texts)
    seconds = time.perf_counter() - start
    return scored(logits, predictor.tasks[0], ds, len(ds) / max(seconds, 1e-9))


def scored(logits: dict[str, np.ndarray], task: TaskSpec, ds: Dataset, docs_per_s: float) -> Measured:
    """The labels, metrics and probabilities of documents ``logits`` (every task's) on ``ds``, graded on ``task``."""
    assert ds.labels is not None
    probs = probabilities(logits[task.name], task.multi_label)
    labels = decide(probs, task)
    metrics = compute_metrics(ds.labels, labels, probs, task.labels, multi_label=task.multi_label)
    keep = ("n", "accuracy", "macro_f1", "weighted_f1", "micro_f1")
    kept = {k: metrics[k] for k in keep if k in metrics}
    return Measured(labels, kept, docs_per_s, probs, tuple(task.labels), logits)


def fit_offset(
    result: Measured, reference: Measured, tasks: Sequence[TaskSpec], ds: Dataset, folds: int = OFFSET_FOLDS
) -> tuple[dict[str, list[float]], Measured]:
    """The offsets that cancel a backend's systematic shift of fp32's logits, and the backend's results with
    them, each document corrected by an offset fitted on the other documents.

    A quantized model can move every document's log-odds the same way (see :func:`margin_shift`): int8's
    rounding shifts the activations the logits are read from a little one way. Per task, the offset is
    the mean over the held-out documents of ``logits_fp32 - logits_backend`` (for a single-label task less
    its mean over the labels, which softmax ignores); the Predictor adds it to the backend's logits
    (:func:`hrlm.inference.backends.output_offset`). The labels and accuracy the agreement check reads
    are cross-fitted: the documents are dealt into ``folds`` folds (document ``i`` into fold ``i % folds``)
    and each fold is corrected by the offset fitted on the others, so that no document's label benefits
    from an offset it helped fit. The mean shift of the corrected documents is then zero by construction;
    what is left of the shift is the offset's own error, which :func:`hrlm.inference.backends.check_passes`
    bounds through the uncorrected shift's standard error.

    Returns:
        ``{task: offset per label}`` fitted on all documents (what is recorded), and ``result`` with every
        document's logits corrected out of fold (docs/s unchanged: the addition costs nothing).
    """
    if result.logits is None or reference.logits is None:
        raise ValueError("fit_offset needs the logits of both measurements")
    n = len(ds)
    fold = np.arange(n) % folds

    def offset(task: TaskSpec, rows: np.ndarray) -> np.ndarray:
        assert result.logits is not None and reference.logits is not None
        diff = reference.logits[task.name][rows].astype(np.float64) - result.logits[task.name][rows]
        mean = diff.mean(axis=0)
        return mean if task.multi_label else mean - mean.mean()

    corrected = {}
    for task in tasks:
        logits = result.logits[task.name].astype(np.float32, copy=True)
        for k in range(folds):
            logits[fold == k] += offset(task, fold != k).astype(np.float32)
        corrected[task.name] = logits
    fitted = {task.name: [round(float(v), 6) for v in offset(task, np.arange(n))] for task in tasks}
    return fitted, scored(corrected, tasks[0], ds, result.docs_per_s)


def race(predictors: dict[str, Predictor], texts: list[str], rounds: int = RACE_ROUNDS) -> dict[str, list[float]]:
    """Docs/s of each predictor on ``texts``, timed in ``rounds`` interleaved rounds (each predictor once a
    round, the order rotated), after a warm-up of each.

    ``--backend auto`` serves the fastest backend that passed its check. Each check's own docs/s comes
    from one pass, measured minutes apart from the others; on a host whose speed changes within minutes
    (a 2-core Xeon with AMX: 2,048-square bf16 products at 784 to 3,243 GFLOP/s in one session) that
    ordered openvino-int8 before openvino-bf16 (127 against 77 docs/s) where interleaved rounds of the
    same backends measured 152 against 187. Interleaved rounds time them at the same moments, and
    :func:`relative_speeds` compares them round by round.
    """
    for predictor in predictors.values():
        predictor.calibrate_once(texts)
        predictor.predict_proba(texts[:8])
    names = list(predictors)
    runs: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            predictors[name].predict_proba(texts)
            runs[name].append(len(texts) / max(time.perf_counter() - start, 1e-9))
    return runs


def relative_speeds(runs: dict[str, list[float]]) -> dict[str, float]:
    """Each backend's speed against the others in the same rounds, as :func:`race` measured them: against
    each other backend, the median over the rounds of the ratio of their docs/s in that round; the geometric
    mean of those medians over the other backends.

    Comparing each backend's median docs/s instead lets the host's speed from round to round decide: on a
    2-core Xeon with AMX whose speed changed within minutes, torch-bf16 ran 133.1, 134.5 and 104.9 docs/s
    in three rounds and openvino-bf16 132.5, 159.6 and 106.2, so the medians put torch-bf16 first by 0.4%
    although openvino-bf16 was within 0.4% of it or faster in every round (1.5x on 2,000 test reviews later).
    Round by round, openvino-bf16 leads (median ratio 1.012). Medians of ratios keep one round that a
    neighbour's burst slowed for one backend only from deciding.
    """
    names = list(runs)
    if len(names) < 2:
        return {name: 1.0 for name in names}
    rounds = min(len(v) for v in runs.values())
    logs = {name: [math.log(max(v, 1e-9)) for v in runs[name][:rounds]] for name in names}

    def log_ratio(a: str, b: str) -> float:  # the median over the rounds of log(a's docs/s / b's)
        return statistics.median(x - y for x, y in zip(logs[a], logs[b], strict=True))

    return {a: math.exp(statistics.fmean(log_ratio(a, b) for b in names if b != a)) for a in names}


def agreement(a: list[Any], b: list[Any]) -> float:
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)])) if a else 0.0


def margin_shift(probs: np.ndarray, reference: np.ndarray, labels: Sequence[str]) -> dict[str, Any]:
    """How far a backend moves every document's log-odds the same way, against the reference's on the same
    documents: per label, the mean of ``logit(p) - logit(p_ref)`` over the documents, its standard error and
    their ratio ``t``; the label whose shift is most certain is returned.

    Label agreement and the accuracy difference count the labels a backend changed; on a few hundred
    documents they cannot tell a backend that moves borderline documents at random from one that moves
    them all one way. The second costs accuracy wherever the model's borderline documents lean one way:
    on a Zen 4 host, openvino-int8 in every layer of a MiniLM fine-tuned on IMDB moved each review's
    log-odds by -0.024 on average (standard deviation 0.100); on 600 check reviews it kept 99.2% of the
    labels and lost 0.17 points, on 2,000 test reviews 17 of the 19 labels it changed went to ``neg`` and
    it lost 0.65. The mean shift shows on the 600 (5.9 standard errors) where the labels cannot:
    :func:`hrlm.inference.backends.check_passes` fails a backend whose shift is both certain and not
    negligible. bf16's shifts are certain too but a tenth as large (0.002-0.004 on an AMX host).
    """
    eps = 1e-6
    p = np.clip(np.asarray(probs, dtype=np.float64), eps, 1 - eps)
    q = np.clip(np.asarray(reference, dtype=np.float64), eps, 1 - eps)
    shift = (np.log(p) - np.log1p(-p)) - (np.log(q) - np.log1p(-q))
    mean = shift.mean(axis=0)
    se = shift.std(axis=0, ddof=1) / np.sqrt(len(shift)) if len(shift) > 1 else np.full_like(mean, np.inf)
    t = np.divide(mean, se, out=np.zeros_like(mean), where=se > 0)
    worst = int(np.argmax(np.abs(t)))
    return {
        "label": labels[worst],
        "mean": round(float(mean[worst]), 6),
        "se": round(float(se[worst]), 6),
        "t": round(float(t[worst]), 3),
    }


def agreement_check(result: Measured, reference: Measured, ds: Dataset, data: Any, threads: int) -> dict[str, Any]:
    """The agreement check of one backend against fp32 of the same weights, as ``hrlm.json`` records it."""
    shift = (
        {"margin_shift": margin_shift(result.probs, reference.probs, list(reference.classes))}
        if result.probs is not None and reference.probs is not None and len(ds) > 1
        else {}
    )
    check = {
        "n": len(ds),
        "label_agreement": round(agreement(result.labels, reference.labels), 6),
        "accuracy": result.metrics["accuracy"],
        "reference_accuracy": reference.metrics["accuracy"],
        "accuracy_delta": round(result.metrics["accuracy"] - reference.metrics["accuracy"], 6),
        "docs_per_s": round(result.docs_per_s, 2),
        "threads": threads,
        "data": str(data),
        "data_fingerprint": ds.fingerprint(),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        **shift,
    }
    check["passed"] = check_passes(check)
    return check


def verdict(check: dict[str, Any]) -> str:
    """What a recorded check measured, in words: the labels kept, the accuracy difference and the shift."""
    parts = [
        f"{check['label_agreement']:.2%} of labels agree with fp32",
        f"accuracy {100 * check['accuracy_delta']:+.2f} points",
    ]
    shift = check.get("margin_shift")
    if shift:
        parts.append(
            f"log-odds of {shift['label']!r} moved {shift['mean']:+.3f} on average, "
            f"{abs(shift['t']):.1f} standard errors from zero"
        )
    raw = check.get("uncorrected")
    if raw:
        before = raw.get("margin_shift")
        moved = f", log-odds moved {before['mean']:+.3f} ({abs(before['t']):.1f} standard errors)" if before else ""
        parts.append(
            f"with an output offset fitted out of fold; without it {raw['label_agreement']:.2%} agreed, "
            f"accuracy {100 * raw['accuracy_delta']:+.2f} points{moved}"
        )
    return "; ".join(parts)


def compressed_row(
    name: str, size: int, result: Measured, measured: dict[str, Measured], check: dict[str, Any]
) -> dict[str, Any]:
    out = row(f"compressed {name}", size, result, measured["torch-fp32"])
    out["vs_original"] = round(agreement(result.labels, measured["original"].labels), 4)
    shift = check.get("margin_shift")
    out["shift_t"] = shift["t"] if shift else None
    out["check"] = "pass" if check_passes(check) else "fail"
    return out


def row(system: str, size: int, result: Measured, reference: Measured | None) -> dict[str, Any]:
    return {
        "system": system,
        "size_mb": round(size / 1e6, 1),
        "docs_per_s": round(result.docs_per_s, 1),
        "accuracy": result.metrics["accuracy"],
        "agreement": round(agreement(result.labels, reference.labels), 4) if reference else None,
    }


def file_size(path: Path) -> int:
    return path.stat().st_size if path.is_file() else 0


@dataclass
class Checking:
    """What compress's searches share: the model, the held-out data, and the table and notes they add to."""

    model: HrlmModel
    tokenizer: Any
    held_out: Dataset
    data: Any
    threads: int
    folder: Path
    measured: dict[str, Measured]
    rows: list[dict[str, Any]]
    notes: list[str]

    def candidate(
        self, name: str, meta: ModelMeta, extra: dict[str, Any], size: int, label: str, *, correct: bool = False
    ) -> dict[str, Any]:
        """Measure backend ``name`` of ``meta`` against fp32, add its row (``label`` appended), return its check.

        With ``correct``, the backend's logits get the offset that cancels its systematic shift
        (:func:`fit_offset`): the check judges the cross-fitted results and records the offset, which the
        Predictor then adds, and what the uncorrected backend measured (``uncorrected``).
        """
        predictor = Predictor(
            self.model, self.tokenizer, meta, backend=name, device="cpu", threads=self.threads, folder=self.folder
        )
        result = measure(predictor, self.held_out)
        reference = self.measured["torch-fp32"]
        if correct:
            raw = agreement_check(result, reference, self.held_out, self.data, self.threads)
            offsets, result = fit_offset(result, reference, meta.tasks, self.held_out)
            kept = ("label_agreement", "accuracy_delta", "margin_shift")
            extra = {
                **extra,
                "output_offset": offsets,
                "offset_folds": OFFSET_FOLDS,
                "uncorrected": {k: raw[k] for k in kept if k in raw},
            }
        self.measured[name] = result
        check = {**agreement_check(result, reference, self.held_out, self.data, self.threads), **extra}
        self.rows.append(compressed_row(name, size, result, self.measured, check))
        self.rows[-1]["system"] += label
        return check


def openvino_int8_search(run: Checking, meta: ModelMeta) -> dict[str, Any] | None:
    """``openvino-int8``'s check: NNCF calibrates on held-out text, int8 in every linear layer, else with
    the second feed-forward layers whose int8 output drifts most kept in float32 (one, two, three of
    them, then every block's), until one keeps the labels (each with its output offset, :func:`fit_offset`).
    A layer kept in float32 costs speed: on a 2-core Zen 4 MiniLM's six took 31% of a 256-token batch's
    time (computed in bf16 there), where at the int8 layers' measured rate they would take about 19%.

    The model that passed (else the last tried) is written to ``run.folder``; appends a row per candidate.
    None where the model cannot be quantized (then the backend is not offered).
    """
    texts = run.held_out.texts[:SENSITIVITY_TEXTS]
    reader = Predictor(
        run.model, run.tokenizer, meta, backend="torch-fp32", device="cpu", threads=run.threads, calibrate=False
    )
    windows = sorted(reader.encode(texts).windows, key=len)
    batches: list[tuple[np.ndarray, np.ndarray]] = []
    for i in range(0, len(windows), CALIBRATION_BATCH):
        ids, mask = collate(windows[i : i + CALIBRATION_BATCH], reader.pad_id)
        batches.append((ids.numpy(), mask.numpy()))
    overflow_fix = not openvino_backend.cpu_has_vnni()
    # the second feed-forward layer (the one that narrows) reads GELU outputs, whose outlier channels
    # static scales serve worst
    narrowing = [
        f"{i}.{name}"
        for i, block in enumerate(encoder_layers(run.model.encoder))
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear) and module.in_features > module.out_features
    ]
    # between every layer and all of them: the narrowing layers whose int8 output drifts most first, as
    # torch's dynamic int8 measures it (a proxy: NNCF's static int8 is not measured layer by layer)
    drift = dict(sensitivity(run.model, run.tokenizer, meta, texts, threads=run.threads))
    ranked = sorted(narrowing, key=lambda name: -drift.get(name, 0.0))
    candidates = [[], *(ranked[:k] for k in OPENVINO_KEEP_STEPS if k < len(ranked)), narrowing]
    check: dict[str, Any] = {}
    for keep in candidates:
        try:
            quantized = openvino_backend.quantize_int8(run.model, batches, keep_fp32=keep, overflow_fix=overflow_fix)
        except (ConfigError, ModelError) as exc:
            run.notes.append(f"{OPENVINO_INT8} not checked: {exc}")
            return None
        openvino_backend.save_int8(quantized, run.folder)
        extra = {"fp32_layers": list(keep), "calibration_texts": len(texts), "overflow_fix": overflow_fix}
        size = file_size(run.folder / openvino_backend.INT8_BIN)
        label = f", {len(keep)} layers in fp32" if keep else ", every layer"
        check = run.candidate(OPENVINO_INT8, meta, extra, size, label, correct=True)
        if check_passes(check):
            break
    run.notes.append(
        f"{OPENVINO_INT8} (NNCF static int8, {len(check['fp32_layers'])} layers in float32) "
        f"{'passed' if check_passes(check) else 'failed'} the agreement check "
        f"({verdict(check)})."
    )
    return check
