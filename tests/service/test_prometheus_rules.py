"""The Prometheus alert-rules file that ships in the package: well formed, and every metric and label it
names is one the service exports (a renamed metric would silence an alert without anyone noticing)."""

from __future__ import annotations

import re
from importlib.resources import files
from typing import Any

import pytest
import yaml

from hrlm.service.metrics import Metrics

RULES = files("hrlm.service") / "prometheus" / "hrlm-alerts.yml"
METRIC = re.compile(r"\b(hrlm_[a-z0-9_]+)(\{[^}]*\})?")
SUFFIXES = ("_bucket", "_sum", "_count")


def exported() -> dict[str, tuple[str, ...]]:
    """Each name /metrics shows in a ``# TYPE`` line (histograms also as _bucket/_sum/_count) -> its label names."""
    metrics = Metrics()
    types = {
        line.split()[2]: line.split()[3]
        for line in metrics.render().decode().splitlines()
        if line.startswith("# TYPE ")
    }
    labels = {}
    for collector in vars(metrics).values():
        name = getattr(collector, "_name", None)
        if name is None:
            continue
        kind = getattr(collector, "_type", "")
        names = tuple(getattr(collector, "_labelnames", ()))
        shown = f"{name}_total" if kind == "counter" else name
        labels[shown] = names
        if kind == "histogram":
            labels.update({shown + s: (*names, "le") if s == "_bucket" else names for s in SUFFIXES})
    assert set(types) - {n for n in types if n.endswith("_created")} <= set(labels)
    return labels


@pytest.fixture(scope="module")
def rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    assert set(doc) == {"groups"}
    out = []
    for group in doc["groups"]:
        assert set(group) == {"name", "rules"} and group["rules"]
        out.extend(group["rules"])
    return out


def test_every_rule_has_an_alert_name_an_expression_a_severity_and_a_summary(rules: list[dict[str, Any]]) -> None:
    names = [r["alert"] for r in rules]
    assert len(names) == len(set(names)), "alert names repeat"
    for rule in rules:
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        assert re.fullmatch(r"Hrlm[A-Za-z]+", rule["alert"])
        assert rule["expr"].count("(") == rule["expr"].count(")"), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", "0m"))), rule["alert"]
        assert rule["labels"]["severity"] in {"page", "warn"}
        assert rule["annotations"]["summary"]


def test_every_metric_and_label_a_rule_names_is_exported(rules: list[dict[str, Any]]) -> None:
    labels = exported()
    seen = set()
    for rule in rules:
        for name, matchers in METRIC.findall(rule["expr"]):
            assert name in labels, f"{rule['alert']}: {name} is not in /metrics"
            seen.add(name.removesuffix("_total"))
            for label in re.findall(r"(\w+)\s*[=!]~?", matchers):
                assert label in labels[name], f"{rule['alert']}: {name} has no label {label!r}"
    # the monitor's metrics and the service's error, latency and storage metrics are all alerted on
    assert {
        "hrlm_alerts_open",
        "hrlm_alert_deliveries",
        "hrlm_monitor_drift",
        "hrlm_http_requests",
        "hrlm_http_request_duration_seconds_bucket",
        "hrlm_store_write_failures",
    } <= seen


def test_the_drift_rules_cover_every_measure_the_monitor_exports(rules: list[dict[str, Any]]) -> None:
    from hrlm.service.monitor import DRIFT_MEASURES

    measured = {m for r in rules for m in re.findall(r'hrlm_monitor_drift\{measure="(\w+)"\}', r["expr"])}
    assert measured == set(DRIFT_MEASURES)
