"""Selection rates, impact ratios and per-group quality: the arithmetic of a bias audit, on Fairlearn's MetricFrame.

For each group column, for every pair of columns when there are three or more, and for the
intersection of all of them, :func:`audit_groups` reports per category:

- **count** and **share** of all audited rows;
- **selection rate**: the share of the category's rows for which the model predicted the positive
  label; **impact ratio**: the selection rate divided by the highest selection rate among the
  grouping's categories; **flagged** when the impact ratio is under the threshold (0.8: the
  four-fifths rule of the Uniform Guidelines, 29 CFR 1607.4(D));
- **scoring rate**: the share of the category's rows whose positive-label probability is above the
  median probability of the whole sample, and its impact ratio (the scoring rate NYC Local Law 144's
  rules ask for when a tool scores rather than selects);
- where true labels exist: **accuracy**, **F1 of the positive label** and **ECE** (the expected
  calibration error of the model's top-label confidence, as ``metrics.json`` reports it).

Categories under ``small_share`` (2 %) of the audited rows are listed apart and left out of the
impact-ratio comparison, the option NYC LL144's rules (6 RCNY 5-301) give an auditor; the output
says so. Rows whose group value is empty or missing are counted as ``unknown`` per grouping (a row
unknown in any column of an intersection is unknown there), never treated as a category.

The grouping itself (which rows form a category, the count, the rates per category) is
Fairlearn's :class:`~fairlearn.metrics.MetricFrame`; this module adds the ratios and the flags.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from hrlm._extras import needs_extras
from hrlm.evaluation import compute_metrics

__all__ = ["FOUR_FIFTHS", "SMALL_SHARE", "Labelled", "audit_groups", "groupings_of", "unknown_mask"]

FOUR_FIFTHS = 0.8  # 29 CFR 1607.4(D)
SMALL_SHARE = 0.02  # categories under 2 % of the data are reported apart (NYC LL144 rules)
INTERSECTION = " × "  # joins column names of an intersection
CATEGORY_JOIN = " / "  # joins the values of an intersection's category


@dataclass(frozen=True)
class Labelled:
    """True labels for the per-group quality metrics: ``true`` per row (``None`` where unlabelled), the
    model's predicted ``pred`` labels, its ``probs`` (n, k) over ``labels``, and the ``positive`` label."""

    true: Sequence[Any]
    pred: Sequence[Any]
    probs: np.ndarray
    labels: list[str]
    positive: str
    multi_label: bool = False


def unknown_mask(values: pd.Series) -> np.ndarray:
    """Where a group value is unknown: missing, NaN, or empty after stripping spaces."""
    return np.array(
        [
            v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())
            for v in values
        ],
        dtype=bool,
    )


def groupings_of(columns: Sequence[str]) -> list[tuple[str, ...]]:
    """Each column, every pair when there are three or more, and the intersection of all when there are two or more.

    Example:
        >>> groupings_of(["sex", "race"])
        [('sex',), ('race',), ('sex', 'race')]
    """
    cols = list(dict.fromkeys(columns))
    out: list[tuple[str, ...]] = [(c,) for c in cols]
    if len(cols) >= 3:
        out += list(itertools.combinations(cols, 2))
    if len(cols) >= 2:
        out.append(tuple(cols))
    return out


def audit_groups(
    groups: pd.DataFrame,
    selected: np.ndarray,
    scores: np.ndarray,
    *,
    labelled: Labelled | None = None,
    threshold: float = FOUR_FIFTHS,
    small_share: float = SMALL_SHARE,
) -> list[dict[str, Any]]:
    """The audit table of every grouping of ``groups``' columns (see the module docstring).

    Args:
        groups: one column per group attribute, one row per audited text.
        selected: per row, whether the positive label was predicted.
        scores: per row, the probability of the positive label.
        labelled: true labels, for per-group accuracy, F1 and calibration.
        threshold: impact ratios under it are flagged.
        small_share: categories with fewer than this share of the rows are reported apart.

    Returns:
        Per grouping: ``name``, ``columns``, ``n``, ``known``, ``unknown``, ``median_score``,
        ``reference`` (the category with the highest selection rate), ``categories`` and
        ``small_categories`` (each: ``category``, ``values``, ``count``, ``share``,
        ``selection_rate``, ``impact_ratio``, ``flagged``, ``scoring_rate``,
        ``scoring_impact_ratio``, ``scoring_flagged``, and with labels ``labelled``, ``accuracy``,
        ``f1``, ``ece``), ``min_impact_ratio``, ``min_scoring_impact_ratio``, ``flagged``.

    Example:
        >>> table = audit_groups(frame[["sex"]], selected, scores)  # doctest: +SKIP
        >>> table[0]["categories"][0]["impact_ratio"]  # doctest: +SKIP
        0.625
    """
    n = len(groups)
    selected = np.asarray(selected, dtype=int)
    scores = np.asarray(scores, dtype=np.float64)
    median = float(np.median(scores)) if n else 0.0
    above = (scores > median).astype(int)
    unknown = {c: unknown_mask(groups[c]) for c in groups.columns}
    return [
        _grouping(groups, cols, unknown, selected, above, median, labelled, threshold, small_share)
        for cols in groupings_of(list(groups.columns))
    ]


def _grouping(
    groups: pd.DataFrame,
    cols: tuple[str, ...],
    unknown: dict[str, np.ndarray],
    selected: np.ndarray,
    above: np.ndarray,
    median: float,
    labelled: Labelled | None,
    threshold: float,
    small_share: float,
) -> dict[str, Any]:
    with needs_extras("hrlm audit"):
        from fairlearn.metrics import MetricFrame, count, selection_rate

    n = len(groups)
    known = ~np.logical_or.reduce([unknown[c] for c in cols]) if n else np.zeros(0, dtype=bool)
    rows = np.flatnonzero(known)
    features = groups.loc[groups.index[rows], list(cols)].astype(str).reset_index(drop=True)
    categories: dict[tuple[str, ...], dict[str, Any]] = {}
    if len(rows):

        def scoring_rate(y_true: Any, y_pred: Any, above: Any) -> float:
            return float(np.mean(above))

        frame = MetricFrame(
            metrics={"count": count, "selection_rate": selection_rate, "scoring_rate": scoring_rate},
            y_true=selected[rows],
            y_pred=selected[rows],
            sensitive_features=features,
            sample_params={"scoring_rate": {"above": above[rows]}},
        )
        for key, values in frame.by_group.iterrows():
            if pd.isna(values["count"]) or not values["count"]:
                continue  # a combination of an intersection that no row has
            parts = key if isinstance(key, tuple) else (key,)
            category = tuple(str(p) for p in parts)
            categories[category] = {
                "category": CATEGORY_JOIN.join(category),
                "values": dict(zip(cols, category, strict=True)),
                "count": int(values["count"]),
                "share": round(float(values["count"]) / n, 6),
                "selection_rate": round(float(values["selection_rate"]), 6),
                "scoring_rate": round(float(values["scoring_rate"]), 6),
            }
        if labelled is not None:
            _quality(categories, labelled, rows, features)
    big = [c for c in categories.values() if c["count"] / n >= small_share]
    small = [c for c in categories.values() if c["count"] / n < small_share]
    best = max((c["selection_rate"] for c in big), default=0.0)
    best_scoring = max((c["scoring_rate"] for c in big), default=0.0)
    for c in big:
        c["impact_ratio"] = _ratio(c["selection_rate"], best)
        c["flagged"] = c["impact_ratio"] is not None and c["impact_ratio"] < threshold - 1e-12
        c["scoring_impact_ratio"] = _ratio(c["scoring_rate"], best_scoring)
        c["scoring_flagged"] = c["scoring_impact_ratio"] is not None and c["scoring_impact_ratio"] < threshold - 1e-12
    for c in small:
        c.update(impact_ratio=None, flagged=False, scoring_impact_ratio=None, scoring_flagged=False)
    reference = max(big, key=lambda c: c["selection_rate"], default=None)
    ratios = [c["impact_ratio"] for c in big if c["impact_ratio"] is not None]
    scoring_ratios = [c["scoring_impact_ratio"] for c in big if c["scoring_impact_ratio"] is not None]
    return {
        "name": INTERSECTION.join(cols),
        "columns": list(cols),
        "kind": "column" if len(cols) == 1 else "intersection",
        "n": n,
        "known": len(rows),
        "unknown": n - len(rows),
        "median_score": round(median, 6),
        "reference": None if reference is None else reference["category"],
        "categories": big,
        "small_categories": small,
        "small_share": small_share,
        "small_note": (
            f"{len(small)} categor{'y' if len(small) == 1 else 'ies'} under {small_share:.0%} of the data "
            "reported apart and left out of the impact-ratio comparison (the NYC LL144 option)"
            if small
            else None
        ),
        "min_impact_ratio": min(ratios) if ratios else None,
        "min_scoring_impact_ratio": min(scoring_ratios) if scoring_ratios else None,
        "flagged": [c["category"] for c in big if c["flagged"]],
    }


def _quality(
    categories: dict[tuple[str, ...], dict[str, Any]], labelled: Labelled, rows: np.ndarray, features: pd.DataFrame
) -> None:
    """Accuracy, F1 of the positive label and ECE per category, over the rows that have a true label."""
    with needs_extras("hrlm audit"):
        from fairlearn.metrics import MetricFrame
    from sklearn.metrics import f1_score

    has = np.array([labelled.true[i] is not None for i in rows], dtype=bool)
    if not has.any():
        return
    idx = rows[has]
    pos = labelled.positive

    def hit(value: Any) -> int:
        return int(pos in value) if labelled.multi_label else int(value == pos)

    true_bin = np.array([hit(labelled.true[i]) for i in idx])
    pred_bin = np.array([hit(labelled.pred[i]) for i in idx])

    def accuracy(y_true: Any, y_pred: Any, index: Any) -> float:
        return float(np.mean([_same(labelled.true[i], labelled.pred[i]) for i in index]))

    def ece(y_true: Any, y_pred: Any, index: Any) -> float:
        ix = [int(i) for i in index]
        metrics = compute_metrics(
            [labelled.true[i] for i in ix],
            [labelled.pred[i] for i in ix],
            labelled.probs[ix],
            labelled.labels,
            multi_label=labelled.multi_label,
        )
        return float(metrics["ece"])

    def f1(y_true: Any, y_pred: Any) -> float:
        return float(f1_score(y_true, y_pred, pos_label=1, zero_division=0))

    frame = MetricFrame(
        metrics={"labelled": lambda y_true, y_pred: len(y_true), "accuracy": accuracy, "f1": f1, "ece": ece},
        y_true=true_bin,
        y_pred=pred_bin,
        sensitive_features=features.loc[has].reset_index(drop=True),
        sample_params={"accuracy": {"index": idx}, "ece": {"index": idx}},
    )
    for key, values in frame.by_group.iterrows():
        parts = key if isinstance(key, tuple) else (key,)
        row = categories.get(tuple(str(p) for p in parts))
        if row is None or pd.isna(values["labelled"]):
            continue
        row.update(
            labelled=int(values["labelled"]),
            accuracy=round(float(values["accuracy"]), 6),
            f1=round(float(values["f1"]), 6),
            ece=round(float(values["ece"]), 6),
        )


def _same(true: Any, pred: Any) -> bool:
    if isinstance(true, list | tuple) or isinstance(pred, list | tuple):
        return sorted(true or []) == sorted(pred or [])
    return bool(true == pred)


def _ratio(rate: float, best: float) -> float | None:
    return round(rate / best, 6) if best > 0 else None
