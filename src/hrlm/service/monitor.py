"""The service's health monitor: the served model's windows measured, alerts opened, sent and counted.

:class:`HealthMonitor` runs every ``monitor_every_s`` on the event loop: it measures the current and
the previous window of the served model with :func:`hrlm.monitoring.compute_series` (in a thread:
it reads the store and embeds a sample of texts), applies :func:`hrlm.monitoring.check_rules`,
records what fired in the ``alerts`` table (one alert per rule and window), delivers undelivered
alerts to ``alert_webhook_url`` and updates the Prometheus metrics. The drift reference is
:func:`hrlm.monitoring.reference_for` the served model's folder and ``holdout_data``; without
``holdout_data`` the monitor still measures volume, labels, confidence and length, and logs once
that drift needs a reference.

:class:`EvaluationScheduler` queues an ``evaluate`` job (the served model on ``holdout_data``) every
``evaluate_every_s``, never a second one while one is queued or running.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select

from hrlm.errors import ConfigError, Conflict
from hrlm.monitoring import (
    WINDOW_LENGTHS,
    AlertStore,
    MonitorSettings,
    Reference,
    check_rules,
    compute_series,
    reference_for,
    window_start,
)
from hrlm.service.periodic import Periodic
from hrlm.store.tables import evaluations, utcnow

if TYPE_CHECKING:
    from hrlm.service.runtime import Service

log = logging.getLogger("hrlm.service")

# the measures exported as hrlm_monitor_drift{measure}, and the field of hrlm.monitoring's window each reads
DRIFT_MEASURES = {
    "label_psi": "label_psi",
    "confidence_psi": "confidence_psi",
    "embedding_drift": "embedding_drift",
    "estimated_accuracy": "estimated_accuracy",
    "reviewed_accuracy": "accuracy",
}
EVALUATE_POLL_S = 60.0  # how often the scheduler checks whether an evaluation is due
MAX_WINDOWS = 400  # most windows one GET /v1/monitor measures (each is a query and an embedded sample)


def parse_since(value: str | None, window: str, *, default_windows: int = 14) -> dt.datetime:
    """When a series starts: an ISO date or time (``2026-11-01``, UTC unless it says otherwise), a
    duration back from now (``90m``, ``36h``, ``14d``, ``4w``), or by default ``default_windows``
    windows back (aligned to the window).

    Raises:
        ConfigError: ``value`` is neither.
    """
    now = utcnow()
    if not value:
        return window_start(now, window) - WINDOW_LENGTHS[window] * (default_windows - 1)
    text = value.strip()
    units = {"m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
    if text[-1:].lower() in units and text[:-1].isdigit():
        return now - dt.timedelta(seconds=int(text[:-1]) * units[text[-1].lower()])
    try:
        at = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ConfigError(
            f"since = {value!r}: give an ISO date or time (2026-11-01T00:00) or a duration back from now (36h, 14d)."
        ) from None
    return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)


def _latest(windows: list[Mapping[str, Any]], key: str) -> float | None:
    """The newest window's value of ``key``, from the newest window that has one."""
    for window in reversed(windows):
        value = window.get(key)
        if isinstance(value, int | float) and value == value:
            return float(value)
    return None


class HealthMonitor(Periodic):
    """Measures the served model every ``every_s`` seconds; opens, counts and delivers alerts.

    Args:
        service: the running service (its engine, model, metrics and settings).
        every_s: seconds between checks (0: never on its own; :meth:`check` still works).
        settings: the rules' thresholds (default: ``service.settings.monitor_settings()``).
    """

    name = "hrlm-monitor"

    def __init__(self, service: Service, every_s: float, *, settings: MonitorSettings | None = None) -> None:
        super().__init__(every_s)
        self.service = service
        self.settings = settings if settings is not None else service.settings.monitor_settings()
        assert service.engine is not None
        self.alerts = AlertStore(service.engine)
        self._reference: tuple[str, Reference] | None = None  # (model version, its reference)
        self._no_reference_said = False
        self._reference_lock = threading.Lock()
        self._lock = asyncio.Lock()
        self.last_check: dict[str, Any] | None = None

    async def tick(self) -> None:
        await self.check()

    async def check(self) -> dict[str, Any]:
        """One round: measure the current and previous window, record and deliver alerts, update metrics.

        Returns:
            ``at``, ``model_version``, ``opened`` (the new alerts), ``delivered`` (deliveries made) and
            ``reference`` (whether drift had one).
        """
        async with self._lock:  # a round and a direct call of check() do not interleave
            model = self.service.model
            assert model is not None
            s = self.settings
            # the model runs on its own thread, between the clients' batches: one model call at a time, and no
            # second pool of threads competing for the cores
            reference = await self.service.batcher.call(self.reference, model)
            since = window_start(utcnow(), s.window) - WINDOW_LENGTHS[s.window]
            series = await self.service.batcher.call(
                functools.partial(compute_series, since=since, settings=s, model_version=model.version),
                self.alerts.engine,
                model.predictor,
                reference,
            )
            candidates = check_rules(series, s)
            opened = await asyncio.to_thread(self.alerts.record, candidates)
            metrics = self.service.metrics
            for row in opened:
                metrics.alerts.labels(rule=row["rule"]).inc()
                log.warning("alert %s opened: %s", row["id"], row["message"])
            await self.refresh_open()
            self._set_drift(series.to_dict())
            delivered = await self.deliver()
            self.last_check = {
                "at": utcnow().isoformat(),
                "model_version": model.version,
                "opened": len(opened),
                "delivered": delivered,
                "reference": reference.n > 0,
            }
            return {**self.last_check, "opened": opened}

    def reference(self, model: Any) -> Reference:
        """The drift reference of ``model`` on ``holdout_data`` (cached per version); without ``holdout_data``,
        :func:`empty_reference`: volume, labels and confidence are measured, drift is not."""
        with self._reference_lock:  # the periodic round and a GET /v1/monitor build it once
            return self._build_reference(model)

    def _build_reference(self, model: Any) -> Reference:
        if self._reference is not None and self._reference[0] == model.version:
            return self._reference[1]
        data = self.service.settings.holdout_data
        if not data:
            if not self._no_reference_said:
                log.info(
                    "the monitor measures volume, predicted labels, confidence and length; drift, its alerts and the "
                    "accuracy estimate need a reference: set holdout_data (HRLM_HOLDOUT_DATA) to a labelled file"
                )
                self._no_reference_said = True
            ref = empty_reference(model.predictor)
        else:
            cfg = model.predictor.meta.train_config
            ref = reference_for(
                model.ref.path,
                data,
                predictor=model.predictor,
                text_col=cfg.get("text_col", "text"),
                label_col=cfg.get("label_col", "label"),
            )
        self._reference = (model.version, ref)
        return ref

    async def refresh_open(self) -> None:
        """Set ``hrlm_alerts_open{rule}`` from the table (rules with no open alert go to 0)."""
        counts = await asyncio.to_thread(self.alerts.counts_by_rule)
        gauge = self.service.metrics.alerts_open
        for rule in _rules(gauge) | set(counts):
            gauge.labels(rule=rule).set(counts.get(rule, 0))

    async def deliver(self) -> int:
        """Send undelivered alerts to ``alert_webhook_url`` (none set: nothing); return the calls that succeeded."""
        s = self.service.settings
        if not s.alert_webhook_url:
            return 0
        rows = await asyncio.to_thread(self.alerts.undelivered)
        if not rows:
            return 0
        results = await asyncio.to_thread(self.alerts.deliver, rows, s.alert_webhook_url, s.alert_webhook_secret)
        for result in results:
            self.service.metrics.alert_deliveries.labels(outcome=result.outcome).inc()
        return sum(r.ok for r in results)

    def _set_drift(self, series: Mapping[str, Any]) -> None:
        windows = [w for w in series.get("windows", []) if isinstance(w, Mapping)]
        gauge = self.service.metrics.monitor_drift
        for measure, key in DRIFT_MEASURES.items():
            value = _latest(windows, key)
            if value is not None:
                gauge.labels(measure=measure).set(value)

    def series(self, since: str | None = None, window: str | None = None) -> dict[str, Any]:
        """``GET /v1/monitor``'s body: the served model's series from ``since``, the open alerts, the settings.

        Runs in a thread (it reads the store and embeds texts).

        Raises:
            ConfigError: a bad ``since`` or ``window``.
        """
        s = self.settings if window is None else self.settings.replace(window=window)
        model = self.service.model
        assert model is not None
        start = parse_since(since, s.window)
        count = (utcnow() - window_start(start, s.window)) / WINDOW_LENGTHS[s.window]
        if count > MAX_WINDOWS:
            raise ConfigError(
                f"since = {since!r} is {int(count)} {s.window}s back; at most {MAX_WINDOWS} windows are measured at "
                "once: give a later since or a longer window."
            )
        reference = self.reference(model)
        series = compute_series(
            self.alerts.engine, model.predictor, reference, since=start, settings=s, model_version=model.version
        )
        return {
            "model_version": model.version,
            "window": s.window,
            "since": start,
            "reference": reference.n > 0,
            "series": series.to_dict(),
            "alerts": self.alerts.open_alerts(),
            "settings": s.to_dict(),
            "last_check": self.last_check,
        }


def empty_reference(predictor: Any) -> Reference:
    """A reference with nothing in it, for a service without ``holdout_data``: every comparison with it
    is empty (no PSI, drift or estimate, so no drift alert), while volume, the predicted labels, mean
    confidence and length are still measured per window."""
    labels = [str(label) for label in predictor.tasks[0].labels]
    return Reference(
        labels=labels,
        predicted_counts=np.zeros(len(labels), dtype=np.int64),
        confidence=np.zeros(0),
        lengths=np.zeros(0),
        unknown_rate=float("nan"),
        embeddings=np.zeros((0, 0), dtype=np.float32),
        accuracy=None,
        macro_f1=None,
        temperature=None,
        n=0,
        source="none: set holdout_data to compare with a reference",
        multi_label=bool(predictor.tasks[0].multi_label),
        notes=["no reference: drift, its alerts and the label-free estimate need holdout_data"],
    )


def _rules(gauge: Any) -> set[str]:
    """The ``rule`` label values a metric has series for."""
    return {sample.labels["rule"] for metric in gauge.collect() for sample in metric.samples if "rule" in sample.labels}


def queue_evaluation(service: Service, actor: str) -> dict[str, Any]:
    """Queue an ``evaluate`` job of the served model on ``holdout_data``; return the job row.

    Raises:
        ConfigError: ``holdout_data`` is not set.
        Conflict: an evaluation is already queued or running.
    """
    s = service.settings
    if not s.holdout_data:
        raise ConfigError("holdout_data is not set: the evaluation needs a labelled file (HRLM_HOLDOUT_DATA).")
    model = service.model
    assert model is not None
    params = {
        "model": str(Path(model.ref.path).expanduser().resolve()),
        "version": model.version,
        "data": str(Path(s.holdout_data).expanduser().resolve()),
    }
    job: dict[str, Any] = service.jobs.submit("evaluate", actor=actor, params=params)
    return job


class EvaluationScheduler(Periodic):
    """Queues the served model's holdout evaluation every ``every_s`` seconds (checked each minute at most).

    Due when the served version has no evaluation on the holdout newer than ``every_s`` and the
    scheduler has not queued one within ``every_s`` (a failing job is not queued again each minute).
    """

    name = "hrlm-evaluate"

    def __init__(self, service: Service, every_s: float) -> None:
        enabled = every_s > 0 and bool(service.settings.holdout_data)
        super().__init__(min(every_s, EVALUATE_POLL_S) if enabled else 0.0)
        self.service = service
        self.interval_s = every_s
        self._queued_at: float | None = None

    async def tick(self) -> None:
        await self.maybe_queue()

    async def maybe_queue(self) -> dict[str, Any] | None:
        """Queue the evaluation when it is due; return the job, or ``None``."""
        if self._queued_at is not None and time.monotonic() - self._queued_at < self.interval_s:
            return None
        model = self.service.model
        assert model is not None and self.service.engine is not None
        last = await asyncio.to_thread(self._last_evaluation, model.version)
        if last is not None and (utcnow() - last).total_seconds() < self.interval_s:
            return None
        if await asyncio.to_thread(self.service.jobs.store.active, "evaluate") is not None:
            return None
        try:
            job = await asyncio.to_thread(queue_evaluation, self.service, "scheduler")
        except Conflict:
            return None
        self._queued_at = time.monotonic()
        log.info("queued the holdout evaluation of %s (job %s)", model.version, job["id"])
        return job

    def _last_evaluation(self, version: str) -> dt.datetime | None:
        assert self.service.engine is not None
        query = select(evaluations.c.at).where(evaluations.c.model_version == version).order_by(evaluations.c.at.desc())
        with self.service.engine.connect() as conn:
            at = conn.execute(query.limit(1)).scalar()
        if at is None:
            return None
        return at if at.tzinfo is not None else at.replace(tzinfo=dt.UTC)
