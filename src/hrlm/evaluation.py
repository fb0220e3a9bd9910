"""Metrics, reports, plots: score predictions and write them up as JSON, PNG and a self-contained HTML page.

:func:`compute_metrics` turns true labels, predicted labels and class probabilities into a JSON-ready
dict; :func:`write_report` writes that dict as ``metrics.json``, a confusion heatmap, learning curves and
``report.html``; :func:`format_report` renders it as a terminal table; :func:`tune_thresholds` picks a
per-label decision threshold for multi-label models. Running a model over a data file to get
those inputs is :mod:`hrlm.inference.scoring`'s job: this module sits below inference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from hrlm.errors import DataError, LabelError
from hrlm.report import format_report, write_report

__all__ = ["compute_metrics", "format_report", "tune_thresholds", "write_report"]

ECE_BINS = 15
PROB_EPS = 1e-15
MAX_NAMES_SHOWN = 10
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


# ---------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------


def compute_metrics(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    probs: np.ndarray,
    labels: list[str],
    *,
    multi_label: bool = False,
) -> dict[str, Any]:
    """Score predictions against true labels.

    Args:
        y_true: True labels: one string per example, or a list of strings per example when ``multi_label``.
        y_pred: Predicted labels, in the same form as ``y_true``.
        probs: Class probabilities of shape ``(n, k)``, columns in the order of ``labels``.
        labels: The model's labels, in its output order.
        multi_label: Whether each example carries a set of labels.

    Returns:
        A JSON-serialisable dict. Single-label: ``n``, ``accuracy``, ``macro_f1``, ``weighted_f1``,
        ``micro_f1``, ``per_class``, ``confusion_matrix``, ``ece``, ``log_loss``, and ``roc_auc`` for two
        classes (``None`` when ``y_true`` holds a single class). Multi-label: ``n``, ``accuracy`` (exact
        match), ``micro_f1``, ``macro_f1``, ``weighted_f1``, ``samples_f1``, ``per_class`` and ``ece``.
        Both add ``absent_labels``: the model's labels that neither ``y_true`` nor ``y_pred`` holds. They
        keep their ``per_class`` row (support 0) but are left out of ``macro_f1``, as scikit-learn leaves
        out labels it never sees: a class the file lacks says nothing about the model.
        Floats are rounded to 6 decimals.

    Raises:
        LabelError: A label in ``y_true`` or ``y_pred`` is not one of ``labels``.
        DataError: There are no examples.
        ValueError: The inputs disagree in length or ``probs`` has the wrong shape.
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be unique")
    n = len(y_true)
    if len(y_pred) != n:
        raise ValueError(f"y_true has {n} items but y_pred has {len(y_pred)}")
    if n == 0:
        raise DataError("there are no examples to evaluate; check the evaluation file or split.")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (n, len(labels)):
        raise ValueError(f"probs must have shape ({n}, {len(labels)}), got {p.shape}")

    if multi_label:
        return _multi_label_metrics(y_true, y_pred, p, labels)
    return _single_label_metrics(y_true, y_pred, p, labels)


def _single_label_metrics(
    y_true: Sequence[Any], y_pred: Sequence[Any], p: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    true = [str(y) for y in y_true]
    pred = [str(y) for y in y_pred]
    _check_known(true, labels)
    _check_known(pred, labels, predicted=True)

    index = {label: i for i, label in enumerate(labels)}
    true_idx = np.array([index[y] for y in true])
    seen = set(true) | set(pred)
    present = [label for label in labels if label in seen]
    metrics: dict[str, Any] = {
        "n": len(true),
        "accuracy": accuracy_score(true, pred),
        "macro_f1": f1_score(true, pred, labels=present, average="macro", zero_division=0),
        "weighted_f1": f1_score(true, pred, labels=labels, average="weighted", zero_division=0),
        "micro_f1": f1_score(true, pred, labels=labels, average="micro", zero_division=0),
        "per_class": _per_class(true, pred, labels),
        "absent_labels": [label for label in labels if label not in seen],
        "confusion_matrix": {
            "labels": list(labels),
            "matrix": confusion_matrix(true, pred, labels=labels).astype(int).tolist(),
        },
    }
    if len(labels) == 2:
        positive = (true_idx == 1).astype(int)
        metrics["roc_auc"] = roc_auc_score(positive, p[:, 1]) if 0 < positive.sum() < len(positive) else None

    top = p.argmax(axis=1)
    confidence = p[np.arange(len(top)), top]
    metrics["ece"] = _ece(confidence, (top == true_idx).astype(np.float64))
    picked = np.clip(p[np.arange(len(true_idx)), true_idx], PROB_EPS, 1.0 - PROB_EPS)
    metrics["log_loss"] = float(-np.mean(np.log(picked)))
    rounded: dict[str, Any] = _rounded(metrics)
    return rounded


def _multi_label_metrics(
    y_true: Sequence[Any], y_pred: Sequence[Any], p: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    true_sets = [_as_label_list(y) for y in y_true]
    pred_sets = [_as_label_list(y) for y in y_pred]
    _check_known([y for row in true_sets for y in row], labels)
    _check_known([y for row in pred_sets for y in row], labels, predicted=True)

    t = _binarise(true_sets, labels)
    q = _binarise(pred_sets, labels)
    seen = (t.sum(axis=0) + q.sum(axis=0)) > 0
    metrics: dict[str, Any] = {
        "n": len(true_sets),
        "accuracy": accuracy_score(t, q),
        "micro_f1": f1_score(t, q, average="micro", zero_division=0),
        "macro_f1": f1_score(t, q, labels=np.flatnonzero(seen).tolist(), average="macro", zero_division=0)
        if seen.any()
        else 0.0,
        "weighted_f1": f1_score(t, q, average="weighted", zero_division=0),
        "samples_f1": f1_score(t, q, average="samples", zero_division=0),
        "per_class": _per_class(t, q, list(range(len(labels))), names=labels),
        "absent_labels": [label for label, s in zip(labels, seen, strict=True) if not s],
        "ece": _ece(p.ravel(), t.ravel().astype(np.float64)),
    }
    rounded: dict[str, Any] = _rounded(metrics)
    return rounded


def _per_class(true: Any, pred: Any, labels: list[Any], names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=labels, average=None, zero_division=0
    )
    return {
        str(name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names if names is not None else labels)
    }


def _ece(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: support-weighted gap between mean confidence and mean outcome per bin."""
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        mask = bins == b
        total += mask.sum() * abs(float(conf[mask].mean()) - float(outcome[mask].mean()))
    return total / len(conf)


def _as_label_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _binarise(rows: list[list[str]], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(rows), len(labels)), dtype=int)
    for r, row in enumerate(rows):
        for label in row:
            out[r, index[label]] = 1
    return out


def _check_known(values: Iterable[str], labels: list[str], *, predicted: bool = False) -> None:
    known = set(labels)
    unknown = sorted({v for v in values if v not in known})
    if not unknown:
        return
    what = "predicted label(s)" if predicted else "label(s)"
    where = "" if predicted else " in the data"
    fix = "The predictions do not match the model." if predicted else "Fix the labels or retrain with them."
    raise LabelError(
        f"{what} {_name_list(unknown)}{where} {'are' if len(unknown) > 1 else 'is'} unknown to the model; "
        f"it knows {_name_list(labels)}. {fix}"
    )


def _name_list(names: Sequence[str], limit: int = MAX_NAMES_SHOWN) -> str:
    shown = ", ".join(repr(str(name)) for name in names[:limit])
    extra = len(names) - limit
    return f"{shown} and {extra} more" if extra > 0 else shown


def _rounded(value: Any, digits: int = 6) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return round(f, digits) if math.isfinite(f) else None
    return value


# ---------------------------------------------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------------------------------------------


def tune_thresholds(y_true_bin: np.ndarray, probs: np.ndarray, grid: Sequence[float] | None = None) -> list[float]:
    """Pick, per label, the decision threshold that maximises that label's F1.

    Args:
        y_true_bin: Binary indicator matrix of shape ``(n, k)`` (a 1-D array is one label).
        probs: Probabilities of the same shape.
        grid: Candidate thresholds; defaults to 0.05, 0.10, ..., 0.95.

    Returns:
        One threshold per label. Ties go to the candidate closest to 0.5; a label without positives gets 0.5.

    Raises:
        ValueError: The shapes differ or the grid is empty.
    """
    t = np.asarray(y_true_bin)
    p = np.asarray(probs, dtype=np.float64)
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    if p.ndim == 1:
        p = p.reshape(-1, 1)
    if t.shape != p.shape:
        raise ValueError(f"y_true_bin has shape {t.shape} but probs has shape {p.shape}")
    candidates = np.asarray(list(DEFAULT_GRID if grid is None else grid), dtype=np.float64)
    if candidates.size == 0:
        raise ValueError("grid must hold at least one threshold")
    # ties resolved by argmax picking the first: order candidates by distance to 0.5, then by value
    candidates = candidates[np.lexsort((candidates, np.abs(candidates - 0.5)))]

    positive = t.astype(bool)
    thresholds: list[float] = []
    for j in range(p.shape[1]):
        pos = positive[:, j]
        if not pos.any():
            thresholds.append(0.5)
            continue
        predicted = p[None, :, j] >= candidates[:, None]
        tp = (predicted & pos).sum(axis=1)
        f1 = 2 * tp / (predicted.sum(axis=1) + pos.sum())
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)[0]
        thresholds.append(float(candidates[best]))
    return thresholds
