"""Monitoring a model in production: drift, quality over time, and the alert rules.

Modules: ``settings`` (:class:`MonitorSettings`: window and thresholds), ``reference`` (what traffic
is compared with: a model measured on a labelled holdout, cached in the model folder), ``drift``
(PSI and the embedding drift score, a domain classifier's ROC AUC), ``estimate`` (the label-free
CBPE estimate on calibrated probabilities), ``measure`` (one window's measurements), ``series``
(windows over the prediction store, or over texts), ``rules`` (which thresholds a window crossed),
``report`` (``hrlm monitor``'s JSON, PNG and HTML), ``alerts`` (storing, sending and counting
alerts: the service's side).
It reads the store (``pip install 'hrlm[serve]'``); the service builds on it, not the reverse.

Example:
    >>> ref = reference_for("models/v3", "holdout.csv")  # doctest: +SKIP
    >>> series = compute_series(engine, predictor, ref, since=week_ago)  # doctest: +SKIP
    >>> alerts = check_rules(series, MonitorSettings())  # doctest: +SKIP
    >>> write_monitor_report(series, alerts, "monitor-report")  # doctest: +SKIP
"""

from __future__ import annotations

from hrlm.monitoring.alerts import AlertStore, Delivery, post_signed, sign, webhook_body
from hrlm.monitoring.drift import (
    DriftScore,
    auc_noise,
    bin_counts,
    embedding_drift,
    psi,
    psi_noise,
    psi_null_quantile,
    quantile_edges,
)
from hrlm.monitoring.estimate import CONDITIONS, Calibrator, Estimate, TemperatureCalibrator, cbpe
from hrlm.monitoring.measure import WindowStats, wilson_interval
from hrlm.monitoring.reference import Reference, TextStats, build_reference, reference_for, text_stats
from hrlm.monitoring.report import write_monitor_report
from hrlm.monitoring.rules import RULES, AlertCandidate, check_rules
from hrlm.monitoring.series import WINDOW_LENGTHS, MonitorSeries, compute_series, series_from_texts, window_start
from hrlm.monitoring.settings import WINDOWS, MonitorSettings

__all__ = [
    "CONDITIONS",
    "RULES",
    "WINDOWS",
    "WINDOW_LENGTHS",
    "AlertCandidate",
    "AlertStore",
    "Calibrator",
    "Delivery",
    "DriftScore",
    "Estimate",
    "MonitorSeries",
    "MonitorSettings",
    "Reference",
    "TemperatureCalibrator",
    "TextStats",
    "WindowStats",
    "auc_noise",
    "bin_counts",
    "build_reference",
    "cbpe",
    "check_rules",
    "compute_series",
    "embedding_drift",
    "post_signed",
    "psi",
    "psi_noise",
    "psi_null_quantile",
    "quantile_edges",
    "reference_for",
    "series_from_texts",
    "sign",
    "text_stats",
    "webhook_body",
    "wilson_interval",
    "window_start",
    "write_monitor_report",
]
