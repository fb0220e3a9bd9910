"""The health monitor through the service: routes (admin only), the periodic check opening, counting, sending and
resolving an alert for a shifted stream, and the holdout evaluation job queued from the API."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from hrlm.monitoring.alerts import sign
from tests.conftest import make_texts, write_csv
from tests.service.conftest import Tokens, bearer, running

SECRET = "hook-secret"


@pytest.fixture
def holdout(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "holdout.csv", make_texts(20, seed=11))


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """A webhook receiver that keeps the verified payloads it gets."""
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            ok = self.headers.get("X-Hrlm-Signature") == sign(body, SECRET)
            if ok:
                got.append(json.loads(body))
            self.send_response(204 if ok else 401)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    finally:
        server.shutdown()
        server.server_close()


def wait_for(fetch: Any, timeout: float = 90.0) -> Any:  # generous: the CI machine may be busy
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fetch()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"nothing within {timeout} s")


def metric(body: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    match = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$", body, flags=re.M)
    return float(match[1]) if match else None


def test_monitor_routes_are_for_admins_only(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, monitor_every_s=0) as client:
        for who in (tokens.client, tokens.reviewer):
            assert client.get("/v1/monitor", headers=bearer(who)).status_code == 403
            assert client.get("/v1/alerts", headers=bearer(who)).status_code == 403
            assert client.post("/v1/alerts/1/resolve", headers=bearer(who)).status_code == 403
            assert client.post("/v1/monitor/evaluate", headers=bearer(who)).status_code == 403
        assert client.get("/v1/monitor").status_code == 401
        admin = bearer(tokens.admin)
        assert client.post("/v1/alerts/999/resolve", headers=admin).status_code == 404
        assert client.get("/v1/alerts?state=closed", headers=admin).status_code == 422
        assert client.get("/v1/monitor?since=yesterday-ish", headers=admin).status_code == 422
        r = client.get("/v1/monitor?since=2000-01-01&window=hour", headers=admin)  # 235,000 windows: refused
        assert r.status_code == 422 and "at most 400 windows" in r.json()["detail"]
        # no holdout_data: nothing to evaluate on, said as a 422 naming the setting
        r = client.post("/v1/monitor/evaluate", headers=admin)
        assert r.status_code == 422 and "holdout_data" in r.json()["detail"]


def test_series_without_a_reference_still_counts_volume_and_labels(
    trained_model: Path, db_url: str, tokens: Tokens
) -> None:
    texts = [t for t, _ in make_texts(5, seed=3)]
    with running(trained_model, db_url, monitor_every_s=0) as client:
        assert client.post("/v1/predict", json={"texts": texts}, headers=bearer(tokens.client)).status_code == 200
        r = client.get("/v1/monitor?window=hour&since=3h", headers=bearer(tokens.admin))
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["window"] == "hour" and body["reference"] is False and body["alerts"] == []
        windows = body["series"]["windows"]
        assert 3 <= len(windows) <= 4  # the hours from 3 h ago to now, empty ones included
        assert sum(w["volume"] for w in windows) == len(texts)
        last = windows[-1]
        assert last["volume"] == len(texts) and sum(last["label_counts"].values()) == len(texts)
        assert last["label_psi"] is None and last["embedding_drift"] is None  # nothing to compare with
        assert body["settings"]["label_psi"] == 0.25


def test_periodic_monitor_opens_counts_sends_and_resolves_an_alert_for_a_shifted_stream(
    trained_model: Path, db_url: str, tokens: Tokens, holdout: Path, hook: tuple[str, list[dict[str, Any]]]
) -> None:
    url, got = hook
    # the reference predicts three balanced classes; the stream is payroll tickets only: the labels shifted
    shifted = [t for t, label in make_texts(30, seed=5) if label == "payroll"]
    settings = {
        "monitor_every_s": 0.3,
        "monitor_window": "hour",
        "monitor_min_volume": 20,
        "holdout_data": str(holdout),
        "alert_webhook_url": url,
        "alert_webhook_secret": SECRET,
        "evaluate_every_s": 0,
    }
    admin = bearer(tokens.admin)
    with running(trained_model, db_url, **settings) as client:
        for i in range(0, len(shifted), 10):
            r = client.post("/v1/predict", json={"texts": shifted[i : i + 10]}, headers=bearer(tokens.client))
            assert r.status_code == 200
        alerts = wait_for(lambda: client.get("/v1/alerts?state=open", headers=admin).json()["alerts"])
        label = next(a for a in alerts if a["rule"] == "label_psi")
        assert label["value"] > label["threshold"] >= 0.25
        assert label["model_version"] == client.get("/readyz").json()["model_version"]

        wait_for(lambda: got)  # delivered, signed, to the webhook
        sent = next(p["alert"] for p in got if p["alert"]["rule"] == "label_psi")
        assert sent["id"] == label["id"]

        def delivered_metrics() -> str | None:
            text: str = client.get("/metrics", headers=admin).text
            return text if metric(text, "hrlm_alert_deliveries_total", outcome="delivered") else None

        text = wait_for(delivered_metrics)
        assert metric(text, "hrlm_alerts_total", rule="label_psi") == 1.0
        assert metric(text, "hrlm_alerts_open", rule="label_psi") == 1.0
        assert metric(text, "hrlm_monitor_drift", measure="label_psi") == pytest.approx(label["value"], rel=0.2)
        estimate = metric(text, "hrlm_monitor_drift", measure="estimated_accuracy")  # CBPE, from the reference
        assert estimate is not None and 0 <= estimate <= 1

        body = client.get("/v1/monitor?window=hour&since=1h", headers=admin).json()
        assert body["reference"] is True
        assert any(a["id"] == label["id"] for a in body["alerts"])
        assert body["series"]["windows"][-1]["label_psi"] > 0.25

        time.sleep(1.0)  # more rounds over the same window: the alert is updated, not opened again
        again = client.get("/v1/alerts", headers=admin).json()
        assert [a["id"] for a in again["alerts"] if a["rule"] == "label_psi"] == [label["id"]]

        r = client.post(f"/v1/alerts/{label['id']}/resolve", json={"note": "payroll week"}, headers=admin)
        assert r.status_code == 200 and r.json()["state"] == "resolved"
        assert client.post(f"/v1/alerts/{label['id']}/resolve", headers=admin).status_code == 409
        assert metric(client.get("/metrics", headers=admin).text, "hrlm_alerts_open", rule="label_psi") == 0.0


def test_evaluate_now_queues_the_holdout_job_whose_result_joins_the_series(
    trained_model: Path, db_url: str, tokens: Tokens, holdout: Path
) -> None:
    admin = bearer(tokens.admin)
    with running(trained_model, db_url, monitor_every_s=0, evaluate_every_s=0, holdout_data=str(holdout)) as client:
        r = client.post("/v1/monitor/evaluate", headers=admin)
        assert r.status_code == 202, r.text
        job = r.json()
        assert job["kind"] == "evaluate" and r.headers["Location"] == f"/v1/jobs/{job['id']}"

        def done() -> dict[str, Any] | None:
            j: dict[str, Any] = client.get(f"/v1/jobs/{job['id']}", headers=admin).json()
            return j if j["state"] in ("succeeded", "failed") else None

        finished = wait_for(done)
        assert finished["state"] == "succeeded", finished["error"]
        assert finished["result"]["n"] == 60
        body = client.get("/v1/monitor?window=hour&since=1h", headers=admin).json()
        evaluations = [e for w in body["series"]["windows"] for e in w["evaluations"]]
        assert len(evaluations) == 1 and evaluations[0]["model_version"] == body["model_version"]
        assert 0 <= evaluations[0]["metrics"]["accuracy"] <= 1


def test_scheduler_queues_an_evaluation_when_none_is_recent(
    trained_model: Path, db_url: str, tokens: Tokens, holdout: Path
) -> None:
    admin = bearer(tokens.admin)
    with running(trained_model, db_url, monitor_every_s=0, evaluate_every_s=0.2, holdout_data=str(holdout)) as client:
        jobs = wait_for(lambda: client.get("/v1/jobs", headers=admin).json()["jobs"])
        assert jobs[0]["kind"] == "evaluate" and jobs[0]["actor"] == "scheduler"
