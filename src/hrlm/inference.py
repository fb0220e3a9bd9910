"""Fast batched inference: the one path every caller uses to turn texts into predictions.

Texts are tokenised once, cut into windows, sorted by length and packed into batches under a
token budget with dynamic padding, so no compute is spent on padding; results are put back in
input order and window logits are aggregated per document.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from hrlm._progress import ProgressBar
from hrlm.config import AGGREGATIONS, DEVICES, PRECISIONS, TRUNCATE_MODES, check_choice
from hrlm.errors import ConfigError
from hrlm.modeling import HrlmModel, ModelMeta, TaskSpec, load_model
from hrlm.text import Encoded, encode_documents


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX-512 BF16 or AMX)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="ignore") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_choice("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device = 'cuda' but no CUDA GPU is visible; use --device cpu or auto.")
    return torch.device(name)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` is bf16 on a GPU or CPU that computes it natively, fp32 elsewhere.

    On a CPU without native bf16 the conversions cost more than they save, so auto stays fp32.
    """
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    check_choice("precision", precision, PRECISIONS)
    return precision


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def autocast(device: torch.device, precision: str) -> Any:
    """An autocast context for ``precision`` (a no-op for fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=precision == "bf16")


def length_batches(lengths: Sequence[int], *, max_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays under ``max_tokens``.

    Example:
        >>> length_batches([5, 100, 6, 98], max_tokens=200, max_batch=8)
        [[0, 2], [3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # ascending order: the newcomer is the longest
        if current and (len(current) + 1 > max_batch or (len(current) + 1) * longest > max_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def collate(windows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of id lists to its longest member."""
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, w in enumerate(windows):
        ids[row, : len(w)] = torch.as_tensor(w, dtype=torch.long)
        mask[row, : len(w)] = 1
    return ids, mask


@torch.inference_mode()
def window_logits(
    model: HrlmModel,
    windows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    device: torch.device,
    precision: str = "fp32",
    max_tokens: int = 16384,
    max_batch: int = 128,
    progress: Any = None,
) -> dict[str, np.ndarray]:
    """Logits of every window for every task, in the windows' order."""
    lengths = [len(w) for w in windows]
    out = {t.name: np.zeros((len(windows), len(t.labels)), dtype=np.float32) for t in model.tasks}
    for batch in length_batches(lengths, max_tokens=max_tokens, max_batch=max_batch):
        ids, mask = collate([windows[i] for i in batch], pad_id)
        with autocast(device, precision):
            logits = model(ids.to(device), mask.to(device))
        for name, value in logits.items():
            out[name][batch] = value.float().cpu().numpy()
        if progress is not None:
            progress(len(batch))
    return out


def aggregate(logits: np.ndarray, doc_index: Sequence[int], n_docs: int, how: str = "mean") -> np.ndarray:
    """Per-document logits from per-window logits (mean or max over a document's windows)."""
    check_choice("aggregate", how, AGGREGATIONS)
    index = np.asarray(doc_index)
    if how == "mean":
        sums = np.zeros((n_docs, logits.shape[1]), dtype=np.float64)
        np.add.at(sums, index, logits)
        counts = np.bincount(index, minlength=n_docs).reshape(-1, 1)
        return (sums / np.maximum(counts, 1)).astype(np.float32)
    result = np.full((n_docs, logits.shape[1]), -np.inf, dtype=np.float32)
    np.maximum.at(result, index, logits)
    return result


def probabilities(logits: np.ndarray, multi_label: bool) -> np.ndarray:
    """Softmax over classes, or an independent sigmoid per label for multi-label tasks."""
    if multi_label:
        return 1.0 / (1.0 + np.exp(-logits))
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=1, keepdims=True)


def decide(probs: np.ndarray, task: TaskSpec) -> list[Any]:
    """The predicted label per row: argmax, or every label over its threshold for multi-label."""
    if task.multi_label:
        thresholds = np.asarray(task.thresholds or [0.5] * len(task.labels))
        return [[task.labels[j] for j in np.flatnonzero(row >= thresholds)] for row in probs]
    return [task.labels[j] for j in probs.argmax(axis=1)]


@dataclass
class Prediction:
    """One document's prediction.

    ``label`` is a string for single-label tasks and a list of strings for multi-label tasks;
    ``score`` is the probability of the predicted label (the highest label probability for
    multi-label tasks). With several tasks, ``tasks`` holds every task's prediction and the
    top-level fields are the first task's.
    """

    label: Any
    score: float
    probabilities: dict[str, float]
    tasks: dict[str, Prediction] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"label": self.label, "score": self.score, "probabilities": self.probabilities}
        if self.tasks:
            data["tasks"] = {k: v.to_dict() for k, v in self.tasks.items()}
        return data


class Predictor:
    """Predicts labels for texts with a trained model.

    Example:
        >>> p = Predictor.from_dir("runs/tickets")  # doctest: +SKIP
        >>> p.predict("My payslip is missing overtime").label  # doctest: +SKIP
        'payroll'
    """

    def __init__(
        self,
        model: HrlmModel,
        tokenizer: Any,
        meta: ModelMeta,
        *,
        device: str = "auto",
        precision: str = "auto",
        threads: int | None = None,
        max_tokens: int = 16384,
        max_batch: int = 128,
        truncate: str | None = None,
    ) -> None:
        if truncate is not None:
            check_choice("truncate", truncate, TRUNCATE_MODES)
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.device.type == "cpu":
            torch.set_num_threads(threads or default_threads())
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.meta = meta
        self.max_tokens = max_tokens
        self.max_batch = max_batch
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.truncate = truncate or meta.truncate

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> Predictor:
        """Load a model folder written by ``hrlm train``."""
        model, tokenizer, meta = load_model(Path(path))
        return cls(model, tokenizer, meta, **kwargs)

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.meta.tasks

    @property
    def labels(self) -> list[str]:
        """Labels of the first (usually only) task."""
        return self.meta.tasks[0].labels

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Token windows of ``texts``: as the model was trained to read them, unless ``truncate`` was overridden."""
        return encode_documents(
            self.tokenizer, texts, max_length=self.meta.max_length, stride=self.meta.stride, truncate=self.truncate
        )

    def logits(self, texts: Sequence[str], *, progress: bool = False) -> dict[str, np.ndarray]:
        """Document logits for every task, shape ``(len(texts), n_labels)``.

        With ``progress``, inputs of 512 windows or more show a progress bar.
        """
        if not texts:
            return {t.name: np.zeros((0, len(t.labels)), dtype=np.float32) for t in self.tasks}
        enc = self.encode(texts)
        bar = ProgressBar(len(enc.windows), "predicting", unit="windows", enabled=progress and len(enc.windows) >= 512)
        try:
            per_window = window_logits(
                self.model,
                enc.windows,
                pad_id=self.pad_id,
                device=self.device,
                precision=self.precision,
                max_tokens=self.max_tokens,
                max_batch=self.max_batch,
                progress=lambda n: bar.update(advance=n),
            )
        finally:
            bar.close()
        return {name: aggregate(v, enc.doc_index, enc.n_docs, self.meta.aggregate) for name, v in per_window.items()}

    def predict_proba(self, texts: Sequence[str], *, progress: bool = False) -> dict[str, np.ndarray]:
        """Class probabilities for every task."""
        by_task = {t.name: t for t in self.tasks}
        logits = self.logits(texts, progress=progress)
        return {name: probabilities(v, by_task[name].multi_label) for name, v in logits.items()}

    @overload
    def predict(self, texts: str, *, progress: bool = False) -> Prediction: ...
    @overload
    def predict(self, texts: list[str], *, progress: bool = False) -> list[Prediction]: ...

    def predict(self, texts: str | list[str], *, progress: bool = False) -> Prediction | list[Prediction]:
        """Predict one text (returns one :class:`Prediction`) or a list (returns a list)."""
        single = isinstance(texts, str)
        batch = [texts] if isinstance(texts, str) else list(texts)
        for i, t in enumerate(batch):
            if not isinstance(t, str):
                raise ConfigError(f"texts[{i}] is a {type(t).__name__}; every text must be a string.")
        probs = self.predict_proba(batch, progress=progress)
        per_task = {t.name: _predictions(probs[t.name], t) for t in self.tasks}
        results = []
        for i in range(len(batch)):
            first = per_task[self.tasks[0].name][i]
            if len(self.tasks) > 1:
                first = Prediction(
                    first.label, first.score, first.probabilities, {k: v[i] for k, v in per_task.items()}
                )
            results.append(first)
        return results[0] if single else results


def _predictions(probs: np.ndarray, task: TaskSpec) -> list[Prediction]:
    labels = decide(probs, task)
    out = []
    for row, label in zip(probs, labels, strict=True):
        score = float(row.max())
        if not task.multi_label:
            score = float(row[task.labels.index(label)])
        out.append(
            Prediction(
                label, round(score, 6), {lab: round(float(p), 6) for lab, p in zip(task.labels, row, strict=True)}
            )
        )
    return out


def load(path: str | os.PathLike[str], **kwargs: Any) -> Predictor:
    """Load a trained model folder for prediction: ``hrlm.load(path).predict("text")``."""
    return Predictor.from_dir(path, **kwargs)
