"""Prometheus metrics of one service instance, on a registry of its own (so tests can build many apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """Every metric the service exports; ``render()`` is the /metrics body."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "hrlm_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "hrlm_http_request_duration_seconds",
            "Time from request to response by route template, method and status.",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "hrlm_batch_size", "Texts per model call (micro-batch).", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "hrlm_batch_requests", "Requests grouped into one model call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.inference = Histogram(
            "hrlm_inference_duration_seconds", "Time of one model call.", buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("hrlm_queue_depth", "Texts waiting for the model.", registry=r)
        self.predictions = Counter("hrlm_predictions", "Texts answered.", ["model_version"], registry=r)
        self.model_info = Gauge("hrlm_model_info", "The model version being served (value 1).", ["version"], registry=r)
        self.model_swaps = Counter("hrlm_model_swaps", "Times another model version was swapped in.", registry=r)
        self.store_failures = Counter(
            "hrlm_store_write_failures",
            "Requests whose prediction records could not all be stored (one per request).",
            registry=r,
        )
        self.store_failed_records = Counter(
            "hrlm_store_failed_records", "Prediction records lost to failed writes (answered, not stored).", registry=r
        )
        self.store_latency = Histogram(
            "hrlm_store_write_duration_seconds",
            "Time of one write of prediction records.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.auth_failures = Counter("hrlm_auth_failures", "Requests refused 401 or 403.", ["status"], registry=r)
        # monitoring (issue 16): what the health monitor opened and sent, and its latest window's measures
        self.alerts = Counter("hrlm_alerts", "Alerts opened by the health monitor, by rule.", ["rule"], registry=r)
        self.alerts_open = Gauge("hrlm_alerts_open", "Alerts open now, by rule.", ["rule"], registry=r)
        self.alert_deliveries = Counter(
            "hrlm_alert_deliveries",
            "Webhook deliveries of alerts by outcome: delivered, failed (retried next round), rejected (4xx).",
            ["outcome"],
            registry=r,
        )
        self.monitor_drift = Gauge(
            "hrlm_monitor_drift",
            "The latest judged window's measures: label_psi, confidence_psi, embedding_drift (ROC AUC), "
            "estimated_accuracy (CBPE), reviewed_accuracy.",
            ["measure"],
            registry=r,
        )

    def set_model(self, version: str) -> None:
        """Mark ``version`` as the one served (and no other)."""
        self.model_info.clear()
        self.model_info.labels(version=version).set(1)

    def render(self) -> bytes:
        return generate_latest(self.registry)
