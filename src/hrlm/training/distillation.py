"""Knowledge distillation: a smaller student trained on a teacher's soft labels and the gold labels.

The student is the teacher with fewer transformer layers: it keeps the embeddings, the heads and
``layers`` of the teacher's blocks, spread evenly and ending with the top one, so it starts close to
the teacher rather than from scratch. It then learns from the teacher's window logits softened by a
temperature (Hinton et al., 2015) plus the gold labels, on labelled and, optionally, unlabelled text:
the teacher labels text nobody has labelled.
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hrlm._fs import atomic_dir
from hrlm._version import __version__
from hrlm.config import DistillConfig, TrainConfig
from hrlm.data import Dataset
from hrlm.errors import ConfigError
from hrlm.inference import (
    Predictor,
    TorchBackend,
    default_threads,
    evaluate_dataset,
    resolve_device,
    resolve_precision,
    window_logits,
)
from hrlm.model_card import write_model_card
from hrlm.modeling import HrlmModel, ModelMeta, encoder_layers, load_model, save_model
from hrlm.report import write_report
from hrlm.text import encode_documents
from hrlm.training.evaluator import Evaluator, doc_targets
from hrlm.training.loop import TrainingRun, seed_everything, train_full


def student_layers(n_teacher: int, k: int) -> list[int]:
    """Which teacher blocks a ``k``-layer student keeps: evenly spread, the top one included.

    Example:
        >>> student_layers(6, 3), student_layers(12, 4), student_layers(6, 6)
        ([1, 3, 5], [2, 5, 8, 11], [0, 1, 2, 3, 4, 5])
    """
    if not 1 <= k <= n_teacher:
        raise ConfigError(f"layers = {k} must be between 1 and the teacher's {n_teacher} layers.")
    return [round((i + 1) * n_teacher / k) - 1 for i in range(k)]


def make_student(teacher: HrlmModel, k: int) -> HrlmModel:
    """A copy of the teacher that keeps ``k`` of its transformer blocks."""
    student = copy.deepcopy(teacher)
    blocks = encoder_layers(student.encoder)
    keep = student_layers(len(blocks), k)
    kept = nn.ModuleList([blocks[i] for i in keep])
    blocks_parent: Any = student.encoder
    for part in ("encoder", "transformer"):
        if hasattr(blocks_parent, part) and isinstance(
            getattr(getattr(blocks_parent, part), "layer", None), nn.ModuleList
        ):
            blocks_parent = getattr(blocks_parent, part)
            break
    blocks_parent.layer = kept
    for i, block in enumerate(kept):  # attention modules that know their index must agree with the new order
        attn = getattr(getattr(block, "attention", None), "self", None)
        if attn is not None and hasattr(attn, "layer_idx"):
            attn.layer_idx = i
    student.config.num_hidden_layers = k
    for p in student.parameters():
        p.requires_grad_(True)
    return student


class DistillationLoss(nn.Module):
    """``alpha`` x soft loss against the teacher at ``temperature`` + (1 - ``alpha``) x gold loss.

    Targets are packed as one row per window: the teacher's logits, then the gold class id
    (-1 when the window's document is unlabelled), so the training loop can treat them as one tensor.
    The soft loss is scaled by T² so its gradients keep their size as the temperature changes.
    """

    def __init__(self, n_classes: int, *, temperature: float, alpha: float, multi_label: bool = False) -> None:
        super().__init__()
        self.n, self.t, self.alpha, self.multi_label = n_classes, temperature, alpha, multi_label

    def forward(self, logits: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
        teacher, gold = packed[:, : self.n], packed[:, self.n :]
        t = self.t
        if self.multi_label:
            soft = nn.functional.binary_cross_entropy_with_logits(logits / t, torch.sigmoid(teacher / t)) * t * t
            labelled = gold[:, 0] >= 0
            hard_targets = gold[labelled]
            hard = (
                nn.functional.binary_cross_entropy_with_logits(logits[labelled], hard_targets)
                if labelled.any()
                else logits.sum() * 0
            )
        else:
            soft = nn.functional.kl_div(
                nn.functional.log_softmax(logits / t, dim=-1),
                nn.functional.log_softmax(teacher / t, dim=-1),
                reduction="batchmean",
                log_target=True,
            ) * (t * t)
            ids = gold[:, 0].long()
            labelled = ids >= 0
            hard = nn.functional.cross_entropy(logits[labelled], ids[labelled]) if labelled.any() else logits.sum() * 0
        return self.alpha * soft + (1.0 - self.alpha) * hard


@dataclass
class DistillResult:
    """What a distillation run produced: the student's and the teacher's scores and speeds."""

    model_dir: Path | None
    student: dict[str, Any]
    teacher: dict[str, Any]
    history: list[dict[str, Any]]
    train_seconds: float
    notes: list[str] = field(default_factory=list)


def _speed(predictor: Predictor, texts: list[str]) -> float:
    t0 = time.perf_counter()
    predictor.predict_proba(texts)
    return len(texts) / max(time.perf_counter() - t0, 1e-9)


def teacher_data_config(teacher_dir: str | os.PathLike[str], **overrides: Any) -> TrainConfig:
    """A config that reads and splits data as the teacher's training run did, with ``overrides``."""
    from hrlm.modeling import read_meta

    taught = read_meta(teacher_dir).train_config
    keys = ("text_col", "label_col", "label_sep", "split_col", "group_col", "val_size", "test_size", "seed")
    return TrainConfig.from_dict({k: taught[k] for k in keys if k in taught}).replace(**overrides)


def distill_file(
    teacher_dir: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | Path | None,
    cfg: DistillConfig | TrainConfig | None = None,
    *,
    unlabelled: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **changes: Any,
) -> DistillResult:
    """Distil on a labelled data file, split as the teacher's training data was (same sizes and seed).

    With the file the teacher was trained on, the student is tested on the teacher's own test split.
    ``unlabelled`` is a corpus (see :func:`hrlm.training.mlm_data.read_corpus`) the teacher labels.
    ``cfg`` and ``changes`` are as for :func:`distill`; a :class:`TrainConfig` also says how the file
    is read and split.

    Example:
        >>> distill_file("runs/router", "tickets.csv", "runs/router-small", DistillConfig(layers=2))  # doctest: +SKIP
    """
    from hrlm.data import split_dataset
    from hrlm.training.fitting import load_training_data
    from hrlm.training.mlm_data import read_corpus

    settings, train_cfg = _configs(teacher_dir, cfg, changes)
    ds = load_training_data(Path(data), train_cfg)
    splits = split_dataset(ds, val_size=train_cfg.val_size, test_size=train_cfg.test_size, seed=train_cfg.seed)
    extra = read_corpus(Path(unlabelled), train_cfg.text_col) if unlabelled is not None else None
    student = {k: v for k, v in settings.to_dict().items() if k not in DistillConfig.TRAINING}
    result = distill(
        teacher_dir, splits, out, train_cfg, unlabelled=extra, overwrite=overwrite, progress=progress, **student
    )
    result.notes = ds.notes + result.notes
    return result


def _configs(
    teacher_dir: str | os.PathLike[str], cfg: DistillConfig | TrainConfig | None, changes: dict[str, Any]
) -> tuple[DistillConfig, TrainConfig]:
    """The distillation's settings and the student's training config, from either kind of ``cfg``."""
    if isinstance(cfg, TrainConfig):
        settings = DistillConfig.from_dict({**{k: getattr(cfg, k) for k in DistillConfig.TRAINING}, **changes})
        return settings, cfg.replace(**settings.training())
    settings = DistillConfig.from_dict({**(cfg or DistillConfig()).to_dict(), **changes})
    return settings, teacher_data_config(teacher_dir, **settings.training())


def distill(
    teacher_dir: str | os.PathLike[str],
    splits: dict[str, Dataset],
    out: str | Path | None,
    cfg: DistillConfig | TrainConfig | None = None,
    *,
    unlabelled: list[str] | None = None,
    overwrite: bool = False,
    progress: bool = True,
    **changes: Any,
) -> DistillResult:
    """Train a ``layers``-layer student of a trained model and write it as a model folder.

    Args:
        teacher_dir: a model folder written by ``hrlm train``.
        splits: ``train`` (labelled), ``validation`` (early stopping) and ``test`` (the comparison).
        cfg: a :class:`DistillConfig` (default ``DistillConfig()``): the student (``layers``), its
            loss (``temperature``, ``alpha``) and its training, with the teacher's seed; or a
            :class:`TrainConfig` that sets every setting of the training itself. Either way the
            window length, stride and pooling are the teacher's.
        unlabelled: extra texts the teacher labels for the student.
        changes: settings of :class:`DistillConfig` changed from ``cfg``'s, like ``layers=2``.

    Returns:
        Accuracy, macro F1, docs/s and size of student and teacher on the test split.

    Raises:
        ConfigError: ``out`` exists (without ``overwrite``), or a setting is unknown or out of range.

    Example:
        >>> distill("runs/router", splits, "runs/router-small", layers=2, temperature=3.0)  # doctest: +SKIP
    """
    if out is not None and Path(out).exists() and not overwrite:
        raise ConfigError(f"{out} already exists; choose another --out or pass --overwrite.")
    settings, cfg = _configs(teacher_dir, cfg, changes)
    layers, temperature, alpha = settings.layers, settings.temperature, settings.alpha
    seed_everything(cfg.seed)
    teacher, tokenizer, meta = load_model(teacher_dir)
    task = meta.tasks[0]
    train_ds, val_ds, test_ds = splits["train"], splits.get("validation"), splits.get("test")
    unknown = sorted(set(train_ds.label_names) - set(task.labels))
    if unknown:
        raise ConfigError(f"label(s) {unknown[:5]} are unknown to the teacher; distil on data of the teacher's task.")
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if device.type == "cpu":
        torch.set_num_threads(cfg.threads or default_threads())
    cfg = cfg.replace(max_length=meta.max_length, stride=meta.stride, truncate=meta.truncate, aggregate=meta.aggregate)
    pad_id = int(tokenizer.pad_token_id or 0)

    texts = list(train_ds.texts) + list(unlabelled or [])
    enc = encode_documents(tokenizer, texts, max_length=meta.max_length, stride=meta.stride, truncate=meta.truncate)
    t0 = time.perf_counter()
    teacher_backend = TorchBackend(teacher, device, precision)
    soft = torch.from_numpy(window_logits(teacher_backend, enc.windows, pad_id=pad_id)[task.name])
    teacher_seconds = time.perf_counter() - t0
    gold_docs = doc_targets(train_ds, task)
    n_lab = len(train_ds)
    if task.multi_label:
        gold = torch.full((enc.n_docs, len(task.labels)), -1.0)
        gold[:n_lab] = gold_docs
    else:
        gold = torch.full((enc.n_docs, 1), -1.0)
        gold[:n_lab, 0] = gold_docs.float()
    packed = torch.cat([soft, gold[enc.doc_index]], dim=1)

    student = make_student(teacher, layers).to(device)
    teacher.to("cpu")
    has_val = val_ds is not None and len(val_ds) > 0
    val_enc = (
        encode_documents(
            tokenizer, val_ds.texts, max_length=meta.max_length, stride=meta.stride, truncate=meta.truncate
        )
        if has_val and val_ds is not None
        else None
    )
    evaluator = Evaluator(val_ds if has_val else None, val_enc, task, cfg, pad_id, device, precision)
    loss_fn = DistillationLoss(len(task.labels), temperature=temperature, alpha=alpha, multi_label=task.multi_label)
    run = TrainingRun(student, cfg, enc, packed, evaluator, loss_fn, pad_id, device, precision, progress, None)
    state = train_full(run)
    student.load_state_dict(state.best_state)
    student.eval()

    student_meta = ModelMeta.from_dict(meta.to_dict())
    student_meta.hrlm_version = __version__
    student_meta.train_config = cfg.to_dict()
    report_ds = test_ds if test_ds is not None and len(test_ds) > 0 else val_ds
    results: dict[str, dict[str, Any]] = {}
    student_metrics: dict[str, Any] = {}
    for name, model in (("teacher", teacher), ("student", student)):
        predictor = Predictor(model, tokenizer, student_meta if name == "student" else meta, device=device.type)
        row: dict[str, Any] = {"layers": len(encoder_layers(model.encoder))}
        row["parameters"] = sum(p.numel() for p in model.parameters())
        if report_ds is not None and len(report_ds):
            metrics = evaluate_dataset(predictor, report_ds)
            row.update({k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1") if k in metrics})
            row["docs_per_s"] = round(_speed(predictor, list(report_ds.texts)), 2)
            if name == "student":
                student_metrics = metrics
        results[name] = row
    student_meta.metrics = {k: results["student"].get(k) for k in ("accuracy", "macro_f1", "weighted_f1")}
    student_meta.extra = {
        "distilled_from": str(teacher_dir),
        "teacher_layers": results["teacher"]["layers"],
        "layers": layers,
        "temperature": temperature,
        "alpha": alpha,
        "unlabelled_texts": len(unlabelled or []),
        "teacher_labelling_seconds": round(teacher_seconds, 2),
        "train_seconds": round(state.train_seconds, 2),
        "teacher": results["teacher"],
    }
    model_dir = None
    if out is not None:
        with atomic_dir(out, overwrite=overwrite) as tmp:
            save_model(student, tokenizer, student_meta, tmp)
            if student_metrics:
                write_report(
                    tmp / "report",
                    student_metrics,
                    history=state.history,
                    title=f"hrlm student {Path(out).name} ({layers} layers)",
                    settings={**cfg.to_dict(), "layers": layers, "temperature": temperature, "alpha": alpha},
                )
            write_model_card(tmp, name=Path(out).name)
        model_dir = Path(out)
        for name in ("teacher", "student"):
            folder = Path(teacher_dir) if name == "teacher" else model_dir
            results[name]["size_mb"] = round((folder / "model.safetensors").stat().st_size / 2**20, 1)
    return DistillResult(
        model_dir=model_dir,
        student=results["student"],
        teacher=results["teacher"],
        history=state.history,
        train_seconds=state.train_seconds,
        notes=[f"teacher labelled {len(enc.windows)} windows in {teacher_seconds:.0f}s"],
    )
