"""The reference the monitor compares current traffic with: a model measured on a labelled data set.

A :class:`Reference` holds, for one model on one labelled file (the fixed holdout the promotion gate
uses, or the model's validation or test data): the predicted-label distribution, the confidence
values, the text lengths in WordPiece tokens, the unknown-token rate, a seeded sample of the
fine-tuned encoder's pooled vectors, the accuracy and macro F1 on the true labels, and the
calibration of the model's probabilities on those labels (for the label-free estimate,
:class:`hrlm.monitoring.estimate.Calibrator`).

Building one runs the model over the whole file, so :func:`reference_for` caches it in the model
folder, ``MODEL/monitoring/reference-<data fingerprint>.npz`` (arrays) beside a ``.json`` of the
same name (the summary), and builds it again when the data changes (or the cache's format is older).

Example:
    >>> ref = reference_for("models/v3", "holdout.csv")  # doctest: +SKIP
    >>> ref.accuracy  # doctest: +SKIP
    0.912
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hrlm._fs import atomic_file, write_json
from hrlm.errors import DataError, NotFound
from hrlm.monitoring.estimate import Calibrator

if TYPE_CHECKING:
    from hrlm.inference import Predictor

REFERENCE_SAMPLE = 600  # pooled vectors kept: the domain classifier compares every one with the window
FORMAT = 2


@dataclass
class TextStats:
    """Lengths in WordPiece tokens (no special tokens) and unknown-token counts of some texts."""

    lengths: np.ndarray
    unknown: np.ndarray

    @property
    def unknown_rate(self) -> float:
        """Unknown tokens over all tokens (``nan`` for no tokens)."""
        total = float(self.lengths.sum())
        return float(self.unknown.sum()) / total if total > 0 else float("nan")


def text_stats(tokenizer: Any, texts: Sequence[str]) -> TextStats:
    """Token counts and ``[UNK]`` counts of ``texts`` under ``tokenizer``, without truncation.

    Example:
        >>> text_stats(predictor.tokenizer, ["payslip ☃"]).unknown_rate  # doctest: +SKIP
        0.25
    """
    if not texts:
        return TextStats(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    unk = tokenizer.unk_token_id
    ids = tokenizer(list(texts), add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    unknown = np.fromiter((sum(1 for t in x if t == unk) for x in ids), dtype=np.int64, count=len(ids))
    return TextStats(lengths, unknown)


@dataclass
class Reference:
    """A model's behaviour on a labelled reference set (see the module docstring).

    ``predicted_counts`` counts the predicted labels in the order of ``labels`` (the model's labels);
    ``embeddings`` is a seeded sample of at most :data:`REFERENCE_SAMPLE` pooled vectors (empty when
    the backend gives none). ``accuracy``, ``macro_f1`` and ``temperature`` are ``None`` for a
    multi-label model (the monitor then measures drift only).
    """

    labels: list[str]
    predicted_counts: np.ndarray
    confidence: np.ndarray
    lengths: np.ndarray
    unknown_rate: float
    embeddings: np.ndarray
    accuracy: float | None
    macro_f1: float | None
    temperature: float | None
    n: int
    calibration_x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    calibration_y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    source: str = "<memory>"
    fingerprint: str = ""
    multi_label: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def calibrator(self) -> Calibrator | None:
        """The calibration fitted on the reference labels (``None`` without labels or for multi-label)."""
        if self.temperature is None:
            return None
        return Calibrator(
            self.temperature, tuple(map(float, self.calibration_x)), tuple(map(float, self.calibration_y))
        )

    def summary(self) -> dict[str, Any]:
        """What the reports show about the reference (JSON ready)."""
        total = float(self.predicted_counts.sum()) or 1.0
        return {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "n": self.n,
            "labels": list(self.labels),
            "predicted_share": {k: float(v) / total for k, v in zip(self.labels, self.predicted_counts, strict=True)},
            "mean_confidence": _mean(self.confidence),
            "mean_length": _mean(self.lengths),
            "unknown_rate": _finite(self.unknown_rate),
            "embedded": len(self.embeddings),
            "accuracy": self.accuracy,
            "macro_f1": self.macro_f1,
            "temperature": self.temperature,
            "multi_label": self.multi_label,
            "notes": list(self.notes),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the arrays to ``path`` (``.npz``) and the rest to the ``.json`` beside it, each atomically.

        Returns:
            The ``.npz`` path.
        """
        target = Path(path).with_suffix(".npz")
        target.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez_compressed(
            buf,
            predicted_counts=self.predicted_counts,
            confidence=self.confidence,
            lengths=self.lengths,
            embeddings=self.embeddings,
            calibration_x=self.calibration_x,
            calibration_y=self.calibration_y,
        )
        with atomic_file(target, "wb") as fh:
            fh.write(buf.getvalue())
        meta = {
            k: v for k, v in self.summary().items() if k not in ("predicted_share", "mean_confidence", "mean_length")
        }
        write_json(target.with_suffix(".json"), {"format": FORMAT, **meta})
        return target

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Reference:
        """Read what :meth:`save` wrote.

        Raises:
            NotFound: either file is missing.
            DataError: the files are unreadable or of another format.
        """
        target = Path(path).with_suffix(".npz")
        meta_path = target.with_suffix(".json")
        if not target.is_file() or not meta_path.is_file():
            raise NotFound(f"no monitoring reference at {target} (and {meta_path.name}); build one with reference_for.")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            with np.load(target) as arrays:
                data = {k: arrays[k] for k in arrays.files}
        except (OSError, ValueError) as exc:
            raise DataError(f"monitoring reference {target} is unreadable ({exc}); delete it to rebuild it.") from exc
        if meta.get("format") != FORMAT:
            raise DataError(
                f"monitoring reference {target} has format {meta.get('format')!r}, not {FORMAT}; delete it."
            )
        return cls(
            labels=list(meta["labels"]),
            predicted_counts=data["predicted_counts"],
            confidence=data["confidence"],
            lengths=data["lengths"],
            unknown_rate=float("nan") if meta["unknown_rate"] is None else float(meta["unknown_rate"]),
            embeddings=data["embeddings"],
            accuracy=meta["accuracy"],
            macro_f1=meta["macro_f1"],
            temperature=meta["temperature"],
            n=int(meta["n"]),
            calibration_x=data["calibration_x"],
            calibration_y=data["calibration_y"],
            source=meta["source"],
            fingerprint=meta["fingerprint"],
            multi_label=bool(meta["multi_label"]),
            notes=list(meta.get("notes", [])),
        )


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def predict_and_embed(predictor: Predictor, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None, str]:
    """The first task's probabilities and, on a torch backend, the pooled vectors, from one pass.

    Returns:
        ``(probabilities, vectors, "")``, or ``(probabilities, None, why)`` where the backend gives no vectors.
    """
    from hrlm.errors import ConfigError
    from hrlm.inference import probabilities

    task = predictor.tasks[0]
    try:
        vectors, logits = predictor.embed_with_logits(list(texts))
    except ConfigError as exc:
        return predictor.predict_proba(list(texts))[task.name], None, str(exc)
    return probabilities(logits[task.name], task.multi_label), vectors, ""


def build_reference(
    predictor: Predictor,
    texts: Sequence[str],
    labels: Sequence[Any] | None,
    *,
    sample_size: int = REFERENCE_SAMPLE,
    source: str = "<memory>",
    fingerprint: str = "",
    seed: int = 0,
) -> Reference:
    """Measure ``predictor`` on a labelled set: everything :class:`Reference` holds.

    Args:
        predictor: the model (its first task is monitored).
        texts: the reference texts.
        labels: their true labels (strings; lists for a multi-label model), or ``None`` (drift only).
        sample_size: the most pooled vectors kept (a seeded sample).
        source, fingerprint: where the texts came from, for the reports and the cache.
        seed: the sample's seed.

    Raises:
        DataError: no texts, or ``labels`` of another length.
    """
    from sklearn.metrics import accuracy_score, f1_score

    if not texts:
        raise DataError(f"the monitoring reference {source} holds no texts; give a labelled holdout file.")
    if labels is not None and len(labels) != len(texts):
        raise DataError(f"the monitoring reference {source}: {len(labels)} labels for {len(texts)} texts.")
    task = predictor.tasks[0]
    model_labels = list(task.labels)
    probs, vectors, why = predict_and_embed(predictor, texts)
    pred = probs.argmax(axis=1)
    confidence = probs.max(axis=1).astype(np.float64)
    notes: list[str] = []
    accuracy = macro_f1 = None
    calibrator: Calibrator | None = None
    if labels is not None and not task.multi_label:
        truth = [str(x) for x in labels]
        predicted = [model_labels[j] for j in pred]
        accuracy = float(accuracy_score(truth, predicted))
        macro_f1 = float(f1_score(truth, predicted, average="macro", zero_division=0))
        index = {lab: j for j, lab in enumerate(model_labels)}
        known = np.array([t in index for t in truth])
        if not known.all():
            notes.append(
                f"{int((~known).sum())} reference labels the model does not know: counted wrong, not calibrated"
            )
        y = np.array([index[t] for t, k in zip(truth, known, strict=True) if k], dtype=int)
        calibrator = Calibrator.fit(probs[known], y)
    elif task.multi_label:
        notes.append("multi-label model: accuracy, macro F1 and the label-free estimate are not computed")
    else:
        notes.append("no labels: accuracy and the label-free estimate are not available")
    stats = text_stats(predictor.tokenizer, texts)
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(len(texts), min(sample_size, len(texts)), replace=False))
    if vectors is None:
        embeddings = np.zeros((0, 0), dtype=np.float32)
        notes.append(f"no embedding drift: {why}")
    else:
        embeddings = vectors[chosen]
    return Reference(
        labels=model_labels,
        predicted_counts=np.bincount(pred, minlength=len(model_labels)).astype(np.int64),
        confidence=confidence,
        lengths=stats.lengths,
        unknown_rate=stats.unknown_rate,
        embeddings=embeddings,
        accuracy=accuracy,
        macro_f1=macro_f1,
        temperature=calibrator.temperature if calibrator else None,
        n=len(texts),
        calibration_x=np.asarray(calibrator.knots_x if calibrator else (), dtype=np.float64),
        calibration_y=np.asarray(calibrator.knots_y if calibrator else (), dtype=np.float64),
        source=source,
        fingerprint=fingerprint,
        multi_label=task.multi_label,
        notes=notes,
    )


def reference_for(
    model_dir: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    predictor: Predictor | None = None,
    *,
    text_col: str = "text",
    label_col: str | None = "label",
) -> Reference:
    """The reference of the model in ``model_dir`` on the labelled file ``data_path``, cached in the model folder.

    The cache is ``MODEL/monitoring/reference-<fingerprint>.npz``, where the fingerprint is the
    data's (:meth:`hrlm.data.Dataset.fingerprint`): a changed file gets a new reference.

    Args:
        model_dir: the model folder.
        data_path: a labelled data file (CSV, JSONL, Parquet) read with :func:`hrlm.data.load_dataset`.
        predictor: the loaded model (default: loaded from ``model_dir`` on a torch backend).
        text_col, label_col: the data's columns.

    Raises:
        DataError: the data file is missing or unreadable.
    """
    from hrlm.data import load_dataset
    from hrlm.inference import Predictor

    ds = load_dataset(Path(data_path), text_col=text_col, label_col=label_col)
    fp = ds.fingerprint()[:16]
    cache = Path(model_dir) / "monitoring" / f"reference-{fp}.npz"
    if cache.is_file() and cache.with_suffix(".json").is_file():
        try:
            return Reference.load(cache)
        except DataError:
            pass  # an older or damaged cache: built again below
    if predictor is None:
        predictor = Predictor.from_dir(model_dir, backend="torch-fp32")
    ref = build_reference(predictor, ds.texts, ds.labels, source=str(data_path), fingerprint=fp)
    ref.save(cache)
    return ref
