"""Fast batched inference: the one path every caller uses to turn texts into predictions.

Texts are tokenised once, cut into windows, sorted by length and laid end to end in batches under
a token budget, so no compute is spent on padding (padded, length-sorted batches where a backend
cannot run packed ones); results are put back in input order and window logits are aggregated per
document.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import numpy as np
import torch

from hrlm._alloc import keep_freed_memory
from hrlm._progress import ProgressBar
from hrlm.config import AGGREGATIONS, DEVICES, PRECISIONS, TRUNCATE_MODES, check_choice
from hrlm.errors import ConfigError
from hrlm.inference.backends import (
    Backend,
    TorchBackend,
    build_backend,
    choose_backend,
    output_offset,
    warn_emulated_bf16,
)
from hrlm.inference.backends import autocast as autocast  # re-exported: training and pretraining use it
from hrlm.inference.backends import cpu_has_fast_bf16 as cpu_has_fast_bf16
from hrlm.inference.calibrate import CPU_SAMPLE_TOKENS, GPU_SAMPLE_TOKENS, Calibrator, thread_choices
from hrlm.inference.calibrate import mode as calibration_mode
from hrlm.inference.packing import collate_packed, plan
from hrlm.inference.packing import length_batches as length_batches  # re-exported: part of the public API
from hrlm.modeling import HrlmModel, ModelMeta, TaskSpec, load_model
from hrlm.text import Encoded, encode_documents

# Token budget of one forward pass on a CPU until the machine is calibrated (see
# :mod:`hrlm.inference.calibrate`), and for calls too small to calibrate on. Measured on MiniLM on a
# 2-core AMD EPYC (bf16, packed, median of 3): 1,024 ran IMDB reviews at 92.9 docs/s against 92.1 at
# 2,048 and 85.8 at 4,096; helpdesk tickets in calls of 29 (a service's micro-batch) at 291 against
# 277 at 384, where more passes cost more fixed overhead. Other CPUs want other budgets.
CPU_MAX_TOKENS = 1024


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
    if precision == "bf16" and device.type == "cpu":
        warn_emulated_bf16("precision bf16")
    return precision


def default_threads() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def collate(windows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad a batch of id lists to its longest member."""
    width = max(len(w) for w in windows)
    ids = torch.full((len(windows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), width), dtype=torch.long)
    for row, w in enumerate(windows):
        ids[row, : len(w)] = torch.as_tensor(w, dtype=torch.long)
        mask[row, : len(w)] = 1
    return ids, mask


def window_logits(
    backend: Backend,
    windows: Sequence[Sequence[int]],
    *,
    pad_id: int,
    max_tokens: int = 16384,
    max_batch: int = 128,
    progress: Any = None,
    packing: bool = True,
) -> dict[str, np.ndarray]:
    """Logits of every window for every task, in the windows' order.

    Where the backend runs packed batches (and ``packing`` is on), windows are sorted by length and
    laid end to end, ``max_tokens`` real tokens to a batch, with no padding (see :mod:`hrlm.inference.packing`).
    Otherwise they are sorted by length and padded batches hold ``max_tokens`` tokens, each padded
    only to its own longest window.

    On a device that computes asynchronously (CUDA) every batch is queued and the logits are read
    back once at the end, so the host lays out the next batch while the device computes this one; so
    are they where an OpenVINO backend runs several batches at once (``streams``).
    """
    use_packed = packing and backend.supports_packing
    batches = list(plan([len(w) for w in windows], max_tokens=max_tokens, max_batch=max_batch, packing=use_packed))
    # one batch gains nothing from a queue, and a runtime's streams would give it only their share of threads
    queued = backend.asynchronous and len(batches) > 1
    out: dict[str, np.ndarray] = {}
    orders: list[int] = []
    pending: list[Any] = []
    for batch in batches:
        if use_packed:
            packed = collate_packed(windows, batch)
            order: Sequence[int] = packed.order
            logits: dict[str, Any] = backend.start_packed(packed) if queued else backend.packed(packed)
        else:
            order = batch
            ids, mask = collate([windows[i] for i in batch], pad_id)
            logits = backend.start(ids, mask) if queued else backend(ids, mask)
        if queued:
            orders.extend(order)
            pending.append(logits)
        else:
            _place(out, logits, order, len(windows))
        if progress is not None:
            progress(len(order))
    if pending:
        _place(out, backend.gather(pending), orders, len(windows))
    return out


def _place(out: dict[str, np.ndarray], logits: dict[str, np.ndarray], order: Sequence[int], n_windows: int) -> None:
    """Write the rows of ``logits`` (one per window of ``order``) into ``out``'s per-task arrays."""
    for name, value in logits.items():
        if name not in out:
            out[name] = np.zeros((n_windows, value.shape[1]), dtype=np.float32)
        out[name][list(order)] = value


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
    """Predicts labels for texts with a trained model, on one of several backends.

    Args:
        model, tokenizer, meta: what :func:`hrlm.modeling.load_model` returns.
        backend: ``auto`` or one of :data:`hrlm.config.BACKENDS` (see :mod:`hrlm.inference.backends`).
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        threads: CPU threads for the torch and ONNX Runtime backends (default: the cores this
            process may use).
        max_tokens, max_batch: the token budget and the row limit of one batch (default budget: the
            calibrated one, see below; before calibration :data:`CPU_MAX_TOKENS` on a CPU, 16,384 on a GPU).
        truncate: read long texts differently from training (``none`` = windows, ``head``, ``head+tail``).
        max_length: tokens per window (default: the model's).
        folder: the model folder, where exported ONNX files are looked for.
        packing: lay windows end to end without padding where the backend can (see :mod:`hrlm.inference.packing`);
            off gives plain length-sorted padded batches; default: whichever the calibration found faster.
        calibrate: measure the budget, packing, attention path and threads on this machine on first use
            and cache them (see :mod:`hrlm.inference.calibrate`); default: on unless ``HRLM_CALIBRATE=off``.
            ``"cached"`` uses what an earlier calibration cached but never measures during a call (a
            service, whose requests must not wait for it, calibrates when it loads the model instead).
            An explicit ``max_tokens``, ``packing`` or ``threads`` is never overridden.

    Example:
        >>> p = Predictor.from_dir("runs/tickets")  # doctest: +SKIP
        >>> p.predict("My payslip is missing overtime").label  # doctest: +SKIP
        'payroll'
        >>> Predictor.from_dir("runs/tickets", backend="onnx-int8").backend_name  # doctest: +SKIP
        'onnx-int8'
    """

    def __init__(
        self,
        model: HrlmModel,
        tokenizer: Any,
        meta: ModelMeta,
        *,
        backend: str = "auto",
        device: str = "auto",
        threads: int | None = None,
        max_tokens: int | None = None,
        max_batch: int = 128,
        truncate: str | None = None,
        max_length: int | None = None,
        folder: str | os.PathLike[str] | None = None,
        packing: bool | None = None,
        calibrate: bool | str | None = None,
    ) -> None:
        if truncate is not None:
            check_choice("truncate", truncate, TRUNCATE_MODES)
        limit = int(getattr(model.config, "max_position_embeddings", 512))
        if max_length is not None and not 8 <= max_length <= limit:
            raise ConfigError(f"max_length = {max_length} must be between 8 and the encoder's {limit} positions.")
        if threads is not None and threads < 1:
            raise ConfigError(f"threads = {threads} must be at least 1.")
        self.threads = threads or default_threads()
        self._threads_given = threads is not None
        choice = choose_backend(backend, meta, resolve_device(device), device_given=device != "auto")
        if choice.device.type == "cpu":
            keep_freed_memory()
            torch.set_num_threads(self.threads)
        self._scratch: list[Any] = []  # keeps a temporary ONNX export alive as long as the predictor
        self.backend = build_backend(
            choice, model, meta, folder=Path(folder) if folder else None, threads=self.threads, scratch=self._scratch
        )
        self.backend_reason = choice.reason
        # added to the logits of each task: what compress fitted where this backend shifts fp32's log-odds
        self.output_offset = output_offset(meta, self.backend.name)
        self.device = choice.device
        self.model = model
        self.tokenizer = tokenizer
        self.meta = meta
        self._max_tokens_given = max_tokens
        self._packing_given = packing
        self.max_tokens = max_tokens or (CPU_MAX_TOKENS if self.device.type == "cpu" else 16384)
        self.max_batch = max_batch
        self.packing = True if packing is None else packing
        self.pad_id = int(tokenizer.pad_token_id or 0)
        self.truncate = truncate or meta.truncate
        self.max_length = max_length or meta.max_length
        if calibrate not in (None, True, False, "cached"):
            raise ConfigError(f"calibrate = {calibrate!r}: use True, False or 'cached'.")
        wanted = calibration_mode() == "auto" if calibrate is None else bool(calibrate)
        self.measure_on_call = calibrate != "cached"
        self.calibrator = Calibrator(self.backend, self.max_length) if wanted else None
        if self.calibrator is not None and isinstance(self.backend, TorchBackend):
            self.backend.plain_up_to = self.calibrator.attention()
        # Windows overlap by the model's stride, unless a shorter max_length leaves no room for it.
        self.stride = meta.stride if meta.stride < self.max_length - 2 else self.max_length // 4

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> Predictor:
        """Load a model folder written by ``hrlm train`` or ``hrlm compress``, or an ``hrlm ensemble`` folder.

        An ensemble folder loads as an :class:`~hrlm.inference.ensemble.EnsemblePredictor`, which every
        caller of a Predictor can use; ``kwargs`` then go to each member.
        """
        from hrlm.inference.ensemble import EnsemblePredictor, is_ensemble  # it builds on this module

        if is_ensemble(path):
            return EnsemblePredictor.from_dir(path, **kwargs)
        model, tokenizer, meta = load_model(Path(path))
        return cls(model, tokenizer, meta, folder=path, **kwargs)

    @property
    def backend_name(self) -> str:
        """The backend in use (``auto`` resolved)."""
        return self.backend.name

    @property
    def tasks(self) -> list[TaskSpec]:
        return self.meta.tasks

    @property
    def labels(self) -> list[str]:
        """Labels of the first (usually only) task."""
        return self.meta.tasks[0].labels

    def encode(self, texts: Sequence[str]) -> Encoded:
        """Token windows of ``texts``: as the model was trained to read them, unless overridden here."""
        return encode_documents(
            self.tokenizer, texts, max_length=self.max_length, stride=self.stride, truncate=self.truncate
        )

    def logits(self, texts: Sequence[str], *, progress: bool = False) -> dict[str, np.ndarray]:
        """Document logits for every task, shape ``(len(texts), n_labels)``.

        With ``progress``, inputs of 512 windows or more show a progress bar.
        """
        if not texts:
            return {t.name: np.zeros((0, len(t.labels)), dtype=np.float32) for t in self.tasks}
        enc = self.encode(texts)
        max_tokens, packing = self.batching(enc.windows)
        bar = ProgressBar(len(enc.windows), "predicting", unit="windows", enabled=progress and len(enc.windows) >= 512)
        try:
            per_window = window_logits(
                self.backend,
                enc.windows,
                pad_id=self.pad_id,
                max_tokens=max_tokens,
                max_batch=self.max_batch,
                progress=lambda n: bar.update(advance=n),
                packing=packing,
            )
        finally:
            bar.close()
        return {
            name: self._offset(name, aggregate(v, enc.doc_index, enc.n_docs, self.meta.aggregate))
            for name, v in per_window.items()
        }

    def _offset(self, task: str, logits: np.ndarray) -> np.ndarray:
        """``logits`` with the backend's recorded offset for ``task`` added (see :func:`output_offset`)."""
        offset = self.output_offset.get(task)
        return logits if offset is None else logits + offset

    def batching(self, windows: Sequence[Sequence[int]]) -> tuple[int, bool]:
        """The token budget and packing to score ``windows`` with: given, calibrated, or the defaults.

        A call of enough text (:data:`~hrlm.inference.calibrate.CPU_SAMPLE_TOKENS` tokens on a CPU) whose
        window length was never calibrated on this machine for this model shape is calibrated first,
        on a sample of its own windows; the result is cached for every later call and process.
        """
        max_tokens, packing = self.max_tokens, self.packing
        calibrator = self.calibrator
        if calibrator is None or (self._max_tokens_given and self._packing_given is not None):
            return max_tokens, packing
        found = calibrator.budget([len(w) for w in windows])
        enough = self._sample_tokens()
        if found is None and self.measure_on_call and sum(len(w) for w in windows) >= enough:
            found = self.calibrate(windows)
        if found is None:
            return max_tokens, packing
        if found.threads != torch.get_num_threads() and self.device.type == "cpu" and not self._threads_given:
            torch.set_num_threads(found.threads)
            self.threads = found.threads
        if found.streams in self.backend.stream_choices():
            self.backend.streams = found.streams
        return self._max_tokens_given or found.max_tokens, found.packing if self._packing_given is None else packing

    def _sample_tokens(self) -> int:
        """Tokens of text a calibration times on this device: calls with fewer are not calibrated on."""
        return GPU_SAMPLE_TOKENS if self.device.type == "cuda" else CPU_SAMPLE_TOKENS

    def calibrate(self, windows: Sequence[Sequence[int]]) -> Any:
        """Measure (again) the fastest batching of windows like ``windows`` on this machine and cache it.

        Fewer windows than a calibration times are repeated until there are enough. Returns the
        :class:`~hrlm.inference.calibrate.Budget`; ``None`` when calibration is off.
        """
        if self.calibrator is None or not windows:
            return None
        enough = self._sample_tokens()
        if sum(len(w) for w in windows) < enough:  # a few texts: their windows again, until there is enough to time
            windows = list(itertools.islice(itertools.cycle(windows), enough // max(1, min(len(w) for w in windows))))

        def run(sample: Sequence[Sequence[int]], max_tokens: int, packing: bool) -> None:
            window_logits(
                self.backend,
                sample,
                pad_id=self.pad_id,
                max_tokens=max_tokens,
                max_batch=self.max_batch,
                packing=packing,
            )

        cpu = self.device.type == "cpu" and not self._threads_given
        return self.calibrator.measure_budget(windows, run, threads=thread_choices(self.threads) if cpu else ())

    def calibrate_once(self, texts: Sequence[str]) -> Any:
        """Calibrate on ``texts`` unless this machine's cache already has their window length; the budget used."""
        if self.calibrator is None or not texts:
            return None
        windows = self.encode(texts).windows
        return self.calibrator.budget([len(w) for w in windows]) or self.calibrate(windows)

    def predict_proba(self, texts: Sequence[str], *, progress: bool = False) -> dict[str, np.ndarray]:
        """Class probabilities for every task."""
        by_task = {t.name: t for t in self.tasks}
        logits = self.logits(texts, progress=progress)
        return {name: probabilities(v, by_task[name].multi_label) for name, v in logits.items()}

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The fine-tuned encoder's pooled vector of each text (the mean over its windows), what the heads read.

        Returns:
            A float32 array of shape ``(len(texts), hidden size)``.

        Raises:
            ConfigError: the backend is not a torch one (ONNX graphs return logits only).

        Example:
            >>> Predictor.from_dir("runs/tickets", backend="torch-fp32").embed(["payslip"]).shape  # doctest: +SKIP
            (1, 384)
        """
        return self.embed_with_logits(texts)[0]

    def embed_with_logits(self, texts: Sequence[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """:meth:`embed` and :meth:`logits` from one pass of the encoder (the monitor needs both).

        The heads read each window's pooled vector and the logits are aggregated per document as in
        :meth:`logits`; the vectors are averaged over a document's windows.
        """
        backend = getattr(self, "backend", None)  # an ensemble has one per member
        if not isinstance(backend, TorchBackend):
            raise ConfigError(
                f"backend = {self.backend_name!r} gives no pooled vectors; load the model with a torch backend "
                "(--backend torch-fp32) to embed texts."
            )
        hidden = int(self.model.config.hidden_size)
        if not texts:
            empty = {t.name: np.zeros((0, len(t.labels)), dtype=np.float32) for t in self.tasks}
            return np.zeros((0, hidden), dtype=np.float32), empty
        enc = self.encode(texts)
        pooled = np.zeros((len(enc.windows), hidden), dtype=np.float32)
        logits = {t.name: np.zeros((len(enc.windows), len(t.labels)), dtype=np.float32) for t in self.tasks}
        lengths = [len(w) for w in enc.windows]
        with torch.inference_mode(), backend.context():
            for batch in plan(lengths, max_tokens=self.max_tokens, max_batch=self.max_batch, packing=False):
                ids, mask = collate([enc.windows[i] for i in batch], self.pad_id)
                vectors = backend.model.pool(ids.to(backend.device), mask.to(backend.device))
                pooled[batch] = vectors.float().cpu().numpy()
                for name, value in backend.model.head_logits(vectors).items():
                    logits[name][batch] = value.float().cpu().numpy()
        docs = {
            name: self._offset(name, aggregate(v, enc.doc_index, enc.n_docs, self.meta.aggregate))
            for name, v in logits.items()
        }
        return aggregate(pooled, enc.doc_index, enc.n_docs, "mean"), docs

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
