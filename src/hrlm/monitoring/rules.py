"""Alert rules: which measurements of a window crossed their thresholds.

:func:`check_rules` turns a :class:`~hrlm.monitoring.series.MonitorSeries` into
:class:`AlertCandidate` s, one per rule crossed per judged window (a window with fewer predictions
than ``min_volume`` is shown but not judged). Storing, deduplicating and sending them is the
service's business (:mod:`hrlm.monitoring.alerts`).

The rules (thresholds in :class:`~hrlm.monitoring.settings.MonitorSettings`):

- ``label_psi``, ``confidence_psi``, ``length_psi``: the PSI is above its setting and above what
  sampling noise reaches 0.1% of the time for the window's size (:func:`hrlm.monitoring.drift.psi_null_quantile`);
- ``unknown_rate``: the unknown-token rate rose above the reference's by more than ``unknown_rate_rise``;
- ``embedding_drift``: the domain classifier's ROC AUC is above ``embedding_drift`` and above its
  99.9% null quantile (:func:`hrlm.monitoring.drift.auc_noise`);
- ``accuracy_drop``: at least ``min_reviewed`` reviewed random items, accuracy below the reference
  by more than ``accuracy_drop``, and the upper end of its 99.9% Wilson interval below the reference
  accuracy (the drop is not noise; the report shows the 95% interval);
- ``estimated_accuracy_drop``: the label-free (CBPE) estimate below the reference by more than
  ``estimated_accuracy_drop``, and by more than its own noise (3.09 standard errors of the mean
  calibrated confidence: the 99.9% level the other rules use);
- ``holdout_drop``: a scheduled holdout evaluation in the window scored below the reference by more
  than ``accuracy_drop`` (judged whatever the window's volume: it needs no traffic).

Example:
    >>> [a.rule for a in check_rules(series, MonitorSettings())]  # doctest: +SKIP
    ['embedding_drift', 'length_psi']
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass, field
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from hrlm.monitoring.drift import NOISE_QUANTILE
from hrlm.monitoring.measure import wilson_interval
from hrlm.monitoring.settings import MonitorSettings

if TYPE_CHECKING:
    from hrlm.monitoring.measure import WindowStats
    from hrlm.monitoring.series import MonitorSeries

RULES = (
    "label_psi",
    "confidence_psi",
    "length_psi",
    "unknown_rate",
    "embedding_drift",
    "accuracy_drop",
    "estimated_accuracy_drop",
    "holdout_drop",
)
_Z = NormalDist().inv_cdf(NOISE_QUANTILE)  # 3.09 at 0.999


@dataclass(frozen=True)
class AlertCandidate:
    """One rule crossed in one window: what an alert is made of.

    ``window_start`` and ``window_end`` are ``None`` only for windows of texts without times
    (:func:`hrlm.monitoring.series.series_from_texts`); ``window`` is the window's label.
    """

    rule: str
    window_start: dt.datetime | None
    window_end: dt.datetime | None
    value: float
    threshold: float
    message: str
    detail: dict[str, Any] = field(default_factory=dict)
    model_version: str | None = None
    window: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (times as ISO strings)."""
        data = asdict(self)
        for key in ("window_start", "window_end"):
            data[key] = data[key].isoformat() if data[key] is not None else None
        return data


def check_rules(series: MonitorSeries, settings: MonitorSettings | None = None) -> list[AlertCandidate]:
    """Every rule crossed in every judged window, in window order, then rule order.

    Args:
        series: the measured windows.
        settings: the thresholds (default: the series' own settings).

    Returns:
        A list of :class:`AlertCandidate` (empty when all is well).
    """
    settings = settings or series.settings
    ref = series.reference
    out: list[AlertCandidate] = []
    for w in series.windows:
        version = series.model_version or (w.model_versions[0] if len(w.model_versions) == 1 else None)

        def add(
            rule: str,
            value: float,
            threshold: float,
            message: str,
            w: WindowStats = w,
            version: str | None = version,
            **detail: Any,
        ) -> None:
            out.append(
                AlertCandidate(
                    rule=rule,
                    window_start=w.start,
                    window_end=w.end,
                    value=float(value),
                    threshold=float(threshold),
                    message=f"{w.label}: {message}",
                    detail={"volume": w.volume, **detail},
                    model_version=version,
                    window=w.label,
                )
            )

        for ev in w.evaluations:
            acc = (ev.get("metrics") or {}).get("accuracy")
            if ref.get("accuracy") is not None and acc is not None and acc < ref["accuracy"] - settings.accuracy_drop:
                add(
                    "holdout_drop",
                    acc,
                    ref["accuracy"] - settings.accuracy_drop,
                    f"holdout accuracy {acc:.3f} on {ev.get('data')} is below the reference "
                    f"{ref['accuracy']:.3f} by more than {settings.accuracy_drop:.3f}",
                    evaluation=ev,
                )
        if not w.judged:
            continue
        for rule, value, noise, limit, what in (
            ("label_psi", w.label_psi, w.label_psi_noise, settings.label_psi, "predicted-label distribution"),
            ("confidence_psi", w.confidence_psi, w.confidence_psi_noise, settings.confidence_psi, "confidence"),
            ("length_psi", w.length_psi, w.length_psi_noise, settings.length_psi, "text length"),
        ):
            if value is None:
                continue
            threshold = max(limit, noise or 0.0)
            if value > threshold:
                add(rule, value, threshold, f"{what} shifted: PSI {value:.3f} > {threshold:.3f}", setting=limit)
        ref_unk = ref.get("unknown_rate")
        if w.unknown_rate is not None and ref_unk is not None:
            rise = w.unknown_rate - ref_unk
            if rise > settings.unknown_rate_rise:
                add(
                    "unknown_rate",
                    w.unknown_rate,
                    ref_unk + settings.unknown_rate_rise,
                    f"unknown-token rate {w.unknown_rate:.2%} against {ref_unk:.2%} in the reference",
                    reference=ref_unk,
                )
        if w.embedding_drift is not None:
            threshold = max(settings.embedding_drift, w.embedding_noise or 0.0)
            if w.embedding_drift > threshold:
                add(
                    "embedding_drift",
                    w.embedding_drift,
                    threshold,
                    f"texts drifted from the reference: domain classifier AUC {w.embedding_drift:.3f} "
                    f"> {threshold:.3f}",
                    embedded=w.embedded,
                    setting=settings.embedding_drift,
                )
        ref_acc = ref.get("accuracy")
        if ref_acc is not None and w.accuracy is not None and w.reviewed >= settings.min_reviewed:
            limit = ref_acc - settings.accuracy_drop
            high = wilson_interval(round(w.accuracy * w.reviewed), w.reviewed, z=_Z)[1]
            if w.accuracy < limit and high < ref_acc:
                add(
                    "accuracy_drop",
                    w.accuracy,
                    limit,
                    f"reviewed accuracy {w.accuracy:.3f} (95% CI {w.accuracy_low:.3f}-{w.accuracy_high:.3f}, "
                    f"{w.reviewed} items) against {ref_acc:.3f} in the reference",
                    reviewed=w.reviewed,
                    ci=[w.accuracy_low, w.accuracy_high],
                )
        if ref_acc is not None and w.estimated_accuracy is not None:
            limit = ref_acc - settings.estimated_accuracy_drop
            noise = _Z * (w.estimated_accuracy_se or 0.0)
            if w.estimated_accuracy < limit and ref_acc - w.estimated_accuracy > noise:
                add(
                    "estimated_accuracy_drop",
                    w.estimated_accuracy,
                    limit,
                    f"estimated accuracy (CBPE, no labels) {w.estimated_accuracy:.3f} against {ref_acc:.3f} "
                    "in the reference",
                )
    return out
