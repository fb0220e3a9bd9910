"""Alerts: stored once per rule and window, resolved with an audit entry, delivered to a signed, retried webhook."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlalchemy import select

from hrlm.errors import ConfigError, Conflict, NotFound
from hrlm.monitoring.alerts import AlertStore, post_signed, sign
from hrlm.store.tables import audit_log

T0 = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
SECRET = "s3cret-key"


def cand(rule: str = "label_psi", start: dt.datetime = T0, value: float = 0.4, **kw: Any) -> dict[str, Any]:
    return {
        "rule": rule,
        "window_start": start,
        "window_end": start + dt.timedelta(days=1),
        "value": value,
        "threshold": 0.25,
        "message": f"{rule} {value} > 0.25",
        "detail": {"n": 120},
        "model_version": "tiny-1",
        **kw,
    }


def actions(engine: Any) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return [(r.action, r.target) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))]


def test_a_recheck_of_the_same_window_updates_the_alert_instead_of_opening_another(engine: Any) -> None:
    store = AlertStore(engine)
    first = store.record([cand(value=0.4), cand("confidence_psi", value=0.3)])
    assert [r["rule"] for r in first] == ["label_psi", "confidence_psi"]
    assert all(r["state"] == "open" and r["delivered_at"] is None for r in first)

    again = store.record([cand(value=0.9)])  # the same window checked again, later in the day
    assert again == []
    rows = store.recent(state="open")
    assert len(rows) == 2
    label = next(r for r in rows if r["rule"] == "label_psi")
    assert label["value"] == pytest.approx(0.9)
    assert label["window_start"] == T0

    nxt = store.record([cand(start=T0 + dt.timedelta(days=1))])  # the next window is a new alert
    assert len(nxt) == 1
    assert store.counts_by_rule() == {"label_psi": 2, "confidence_psi": 1}
    assert [a for a, _ in actions(engine)].count("alert.open") == 3


def test_resolve_closes_once_with_an_audit_entry_and_a_resolved_window_stays_resolved(engine: Any) -> None:
    store = AlertStore(engine)
    (row,) = store.record([cand()])
    done = store.resolve(row["id"], "alice", note="known campaign")
    assert done["state"] == "resolved" and done["resolved_at"] is not None
    assert ("alert.resolve", f"alert:{row['id']}") in actions(engine)
    with pytest.raises(Conflict, match="already resolved"):
        store.resolve(row["id"], "alice")
    with pytest.raises(NotFound):
        store.resolve(row["id"] + 100, "alice")

    assert store.record([cand(value=0.8)]) == []  # a person saw this window: the re-check does not reopen it
    assert store.open_alerts() == []
    assert store.counts_by_rule() == {}
    assert store.counts_by_rule(state=None) == {"label_psi": 1}
    assert [r["state"] for r in store.recent(state="resolved")] == ["resolved"]
    with pytest.raises(ConfigError, match="state"):
        store.recent(state="closed")


def test_recording_is_all_or_nothing(engine: Any) -> None:
    store = AlertStore(engine)
    bad = cand("confidence_psi")
    del bad["message"]
    with pytest.raises(KeyError):
        store.record([cand(), bad])
    assert store.recent() == []
    assert actions(engine) == []


# -- the webhook -----------------------------------------------------------------------------------------


@dataclass
class Hook:
    """A local receiver that answers with the next status of ``plan`` (then 200) and keeps what it got."""

    plan: list[int]
    calls: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def hook() -> Iterator[Hook]:
    state = Hook(plan=[])

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.calls.append(({k: v for k, v in self.headers.items()}, body))
            status = state.plan.pop(0) if state.plan else 200
            # the receiver of the module docstring: verify the signature over the raw body
            expected = sign(body, SECRET)
            if not hmac.compare_digest(expected, self.headers.get("X-Hrlm-Signature", "")):
                status = 401
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hooks/hrlm"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_webhook_is_signed_retried_after_500s_and_recorded_on_the_row(engine: Any, hook: Hook) -> None:
    store = AlertStore(engine)
    (row,) = store.record([cand()])
    hook.plan = [500, 503]
    waits: list[float] = []
    (result,) = store.deliver(store.undelivered(), hook.url, SECRET, attempts=5, backoff_s=0.5, sleep=waits.append)
    assert result.ok and result.attempts == 3 and result.outcome == "delivered"
    assert waits == [0.5, 1.0]  # exponential backoff
    assert len(hook.calls) == 3
    headers, body = hook.calls[-1]
    expected = "sha256=" + hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert headers["X-Hrlm-Signature"] == expected
    payload = json.loads(body)
    assert str(payload["sent_at"]) == headers["X-Hrlm-Timestamp"]
    assert payload["alert"]["id"] == row["id"] and payload["alert"]["rule"] == "label_psi"
    assert payload["alert"]["window_start"] == T0.isoformat()
    assert payload["service"] == "hrlm" and payload["version"]

    stored = store.get(row["id"])
    assert stored["delivered_at"] is not None
    assert stored["delivery_attempts"] == 3 and stored["delivery_error"] is None
    assert store.undelivered() == []


def test_webhook_4xx_is_not_retried_and_the_alert_is_offered_again_next_round(engine: Any, hook: Hook) -> None:
    store = AlertStore(engine)
    (row,) = store.record([cand()])
    hook.plan = [410]
    waits: list[float] = []
    (result,) = store.deliver([row], hook.url, SECRET, attempts=5, backoff_s=0.5, sleep=waits.append)
    assert not result.ok and result.attempts == 1 and result.outcome == "rejected"
    assert waits == [] and len(hook.calls) == 1
    stored = store.get(row["id"])
    assert stored["delivered_at"] is None and stored["delivery_attempts"] == 1
    assert "410" in stored["delivery_error"] and "not retried" in stored["delivery_error"]
    assert [r["id"] for r in store.undelivered()] == [row["id"]]

    (result,) = store.deliver(store.undelivered(), hook.url, SECRET, sleep=waits.append)  # the next round
    assert result.ok
    assert store.get(row["id"])["delivery_attempts"] == 2


def test_a_wrong_secret_is_refused_by_a_verifying_receiver(hook: Hook) -> None:
    result = post_signed(hook.url, {"event": "test"}, "not-the-secret", attempts=3, sleep=lambda s: None)
    assert not result.ok and result.status == 401 and result.attempts == 1


def test_an_unreachable_webhook_is_retried_then_reported() -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    waits: list[float] = []
    result = post_signed(f"http://127.0.0.1:{port}/", {"x": 1}, SECRET, attempts=3, backoff_s=2, sleep=waits.append)
    assert not result.ok and result.attempts == 3 and result.outcome == "failed"
    assert waits == [2, 4]
    assert "cannot reach the webhook" in (result.error or "")
    with pytest.raises(ConfigError, match="alert_webhook_url"):
        post_signed("ftp://example.org/", {}, None)
