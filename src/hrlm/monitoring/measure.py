"""One window's measurements: what :class:`WindowStats` holds and how it is filled.

:class:`WindowMeasurer` compares a window's predictions, texts and vectors with a
:class:`~hrlm.monitoring.reference.Reference` (PSIs with their noise levels, length and unknown-token
rate, the embedding drift score, the CBPE estimate) and, where labels are known, measures accuracy
with a Wilson interval. :mod:`hrlm.monitoring.series` feeds it from the prediction store or from texts.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hrlm.monitoring.drift import bin_counts, embedding_drift, psi, psi_null_quantile, quantile_edges
from hrlm.monitoring.estimate import cbpe
from hrlm.monitoring.reference import Reference, text_stats
from hrlm.monitoring.settings import MonitorSettings

if TYPE_CHECKING:
    from hrlm.inference import Predictor

LENGTH_SAMPLE = 5000  # texts per window tokenised for length and unknown rate (seeded sample above this)
PSI_BINS = 10  # quantile bins of the reference for confidence and length
Z95 = 1.959963984540054


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); ``(nan, nan)`` for ``n = 0``.

    Wilson (1927): unlike the normal approximation it stays within [0, 1] and holds for small ``n``.

    Example:
        >>> [round(x, 4) for x in wilson_interval(8, 10)]
        [0.4902, 0.9433]
    """
    if n <= 0:
        return float("nan"), float("nan")
    p = correct / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass
class WindowStats:
    """What one window measured; ``None`` where there was nothing to measure.

    ``judged`` is whether the volume reached ``min_volume`` (the alert rules skip other windows).
    The ``*_noise`` fields are what sampling noise alone reaches 0.1% of the time at this size.
    ``accuracy`` and its Wilson interval come from the reviewed random slice (or given labels);
    ``estimated_*`` is the CBPE estimate (``estimated_accuracy_se``: its standard error over the window's
    texts); ``evaluations`` are scheduled holdout evaluations.
    """

    label: str
    start: dt.datetime | None
    end: dt.datetime | None
    volume: int
    judged: bool
    model_versions: list[str] = field(default_factory=list)
    label_counts: dict[str, int] = field(default_factory=dict)
    label_psi: float | None = None
    label_psi_noise: float | None = None
    confidence_mean: float | None = None
    confidence_psi: float | None = None
    confidence_psi_noise: float | None = None
    texts: int = 0
    length_mean: float | None = None
    length_psi: float | None = None
    length_psi_noise: float | None = None
    unknown_rate: float | None = None
    embedding_drift: float | None = None
    embedding_noise: float | None = None
    embedded: int = 0
    reviewed: int = 0
    accuracy: float | None = None
    accuracy_low: float | None = None
    accuracy_high: float | None = None
    macro_f1: float | None = None
    estimated_accuracy: float | None = None
    estimated_macro_f1: float | None = None
    estimated_accuracy_se: float | None = None
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: times as ISO strings, ``nan`` as ``None``."""
        data = asdict(self)
        for key in ("start", "end"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


# -- one window's measurements -------------------------------------------------------------------


class WindowMeasurer:
    """Measures windows against one reference: the bins and the calibrator are computed once."""

    def __init__(self, reference: Reference, settings: MonitorSettings, tokenizer: Any, embed: Callable | None):
        self.ref = reference
        self.settings = settings
        self.tokenizer = tokenizer
        self.embed = embed
        self.index = {lab: j for j, lab in enumerate(reference.labels)}
        self.conf_edges = quantile_edges(reference.confidence, PSI_BINS)
        self.len_edges = quantile_edges(reference.lengths, PSI_BINS)
        self.conf_counts = bin_counts(reference.confidence, self.conf_edges)
        self.len_counts = bin_counts(reference.lengths, self.len_edges)
        self.calibrator = reference.calibrator

    def measure(
        self,
        w: WindowStats,
        *,
        predicted: Sequence[str],
        confidence: np.ndarray,
        probs: np.ndarray | None,
        texts: Sequence[str],
        seed: int,
        vectors: np.ndarray | None = None,
    ) -> WindowStats:
        """Fill ``w`` from a window's predictions; ``vectors`` (of every text) spare embedding a sample again."""
        ref, s = self.ref, self.settings
        w.volume = len(predicted)
        w.judged = w.volume >= s.min_volume
        if not predicted:
            return w
        counts = np.zeros(len(ref.labels), dtype=np.float64)
        unknown_labels = 0
        for lab in predicted:
            j = self.index.get(lab)
            if j is None:
                unknown_labels += 1
            else:
                counts[j] += 1
        w.label_counts = {lab: int(c) for lab, c in zip(ref.labels, counts, strict=True) if c}
        if unknown_labels:
            w.notes.append(f"{unknown_labels} predictions with labels the reference model does not have")
        if counts.sum() > 0 and ref.predicted_counts.sum() > 0:
            w.label_psi = psi(ref.predicted_counts, counts)
            w.label_psi_noise = psi_null_quantile(ref.predicted_counts, int(counts.sum()))
        w.confidence_mean = float(np.mean(confidence))
        w.confidence_psi = psi(ref.confidence, confidence, self.conf_edges)
        w.confidence_psi_noise = psi_null_quantile(self.conf_counts, len(confidence))
        rng = np.random.default_rng(seed)
        texts = list(texts)
        w.texts = len(texts)
        if len(texts) < w.volume:
            w.notes.append(f"text measurements on the {len(texts)} of {w.volume} predictions whose text is stored")
        if texts:
            sample = _sample(texts, LENGTH_SAMPLE, rng)
            stats = text_stats(self.tokenizer, sample)
            w.length_mean = float(stats.lengths.mean())
            w.length_psi = psi(ref.lengths, stats.lengths, self.len_edges)
            w.length_psi_noise = psi_null_quantile(self.len_counts, len(sample))
            rate = stats.unknown_rate
            w.unknown_rate = rate if math.isfinite(rate) else None
            current = None
            if vectors is not None and len(ref.embeddings):
                current = vectors
            elif self.embed is not None and len(ref.embeddings):
                current = self.embed(_sample(texts, s.sample_size, rng))
            if current is not None:
                score = embedding_drift(
                    ref.embeddings, current, sample_size=s.sample_size, ref_size=len(ref.embeddings), seed=seed
                )
                if math.isfinite(score.auc):
                    w.embedding_drift, w.embedding_noise, w.embedded = score.auc, score.noise, score.n_cur
        if probs is not None and self.calibrator is not None and len(probs):
            calibrated = self.calibrator.transform(probs)
            est = cbpe(calibrated, probs.argmax(axis=1))
            w.estimated_accuracy, w.estimated_macro_f1 = est.accuracy, est.macro_f1
            top = calibrated[np.arange(len(probs)), probs.argmax(axis=1)]
            w.estimated_accuracy_se = float(top.std(ddof=1) / math.sqrt(len(top))) if len(top) > 1 else None
        return w

    def judge_labels(self, w: WindowStats, truth: Sequence[str], predicted: Sequence[str]) -> None:
        """Accuracy, its Wilson interval and macro F1 of ``predicted`` against ``truth``."""
        from sklearn.metrics import f1_score

        w.reviewed = len(truth)
        if not truth:
            return
        correct = sum(_same(t, p) for t, p in zip(truth, predicted, strict=True))
        w.accuracy = correct / len(truth)
        w.accuracy_low, w.accuracy_high = wilson_interval(correct, len(truth))
        w.macro_f1 = float(f1_score(list(truth), list(predicted), average="macro", zero_division=0))


def _same(truth: str, predicted: str) -> bool:
    return sorted(str(truth).split("|")) == sorted(str(predicted).split("|"))


def _sample(texts: list[str], n: int, rng: np.random.Generator) -> list[str]:
    if len(texts) <= n:
        return texts
    return [texts[i] for i in np.sort(rng.choice(len(texts), n, replace=False))]


def embedder(predictor: Predictor | None, reference: Reference) -> Callable | None:
    if predictor is None or not len(reference.embeddings):
        return None
    return predictor.embed
