"""Alerts that reach people: stored in the ``alerts`` table, resolved by an admin, sent to a webhook.

:class:`AlertStore` turns the monitor's :class:`~hrlm.monitoring.AlertCandidate` list into rows: one
alert per rule and time window, however often the window is checked again (a re-check updates the
measured value). Opening and resolving an alert each write an audit-log entry.

:func:`post_signed` delivers one JSON body to a webhook the way GitHub signs its webhooks: the header
``X-Hrlm-Signature: sha256=<hex>`` is the HMAC-SHA256 of the raw body under the shared secret, and
``X-Hrlm-Timestamp`` the Unix time of sending, which the body repeats as ``sent_at`` (so it is signed
too). A receiver verifies a call like this::

    import hashlib, hmac, json, time

    def verify(body: bytes, headers, secret: str, max_age_s: int = 300) -> dict:
        expected = "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, headers["X-Hrlm-Signature"]):
            raise ValueError("bad signature")           # not from us, or changed on the way
        payload = json.loads(body)
        if str(payload["sent_at"]) != headers["X-Hrlm-Timestamp"] or time.time() - payload["sent_at"] > max_age_s:
            raise ValueError("stale or replayed call")  # an old call sent again
        return payload

The signature is computed over the bytes as received: verify before parsing, and compare with
``hmac.compare_digest`` (constant time). Failed calls are retried with exponential backoff on
connection errors, timeouts and 5xx answers, not on 4xx (the receiver refused the call: retrying the
same body cannot help). :meth:`AlertStore.deliver` records the outcome on the row; alerts still
undelivered are offered again at the monitor's next round (:meth:`AlertStore.undelivered`), up to
:data:`MAX_DELIVERY_ATTEMPTS` attempts in all. The standard library's ``urllib`` does the HTTP: the
service's extra does not bring an HTTP client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, and_, func, insert, select, text, update

from hrlm._version import __version__
from hrlm.errors import ConfigError, Conflict, NotFound
from hrlm.store.tables import ALERT_STATES, alerts, utcnow
from hrlm.store.users import audit

log = logging.getLogger("hrlm.monitoring")

MAX_DELIVERY_ATTEMPTS = 50  # over all rounds: an alert whose receiver keeps failing stops being offered
_RECORD_LOCK = 7_246_553  # the PostgreSQL advisory lock that serialises recording (one alert per rule and window)
_RETRY_STATUSES = range(500, 600)


@dataclass(frozen=True)
class Delivery:
    """How one webhook delivery ended: ``ok``, the calls it took, the last error and the last HTTP status."""

    ok: bool
    attempts: int
    error: str | None = None
    status: int | None = None

    @property
    def outcome(self) -> str:
        """``delivered``, ``rejected`` (a 4xx answer) or ``failed`` (connection errors, 5xx)."""
        if self.ok:
            return "delivered"
        return "rejected" if self.status is not None and 400 <= self.status < 500 else "failed"


def _field(candidate: Any, name: str) -> Any:
    return candidate[name] if isinstance(candidate, Mapping) else getattr(candidate, name)


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite gives back naive datetimes; every timestamp here is UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return _aware(value).isoformat()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _row(row: Mapping[Any, Any]) -> dict[str, Any]:
    out = dict(row)
    for key in ("window_start", "window_end", "opened_at", "resolved_at", "delivered_at"):
        if out.get(key) is not None:
            out[key] = _aware(out[key])
    return out


class AlertStore:
    """The ``alerts`` table: record what the monitor raised, resolve, list, count, deliver.

    Example:
        >>> store = AlertStore(engine)  # doctest: +SKIP
        >>> new = store.record(check_rules(series, settings))  # doctest: +SKIP
        >>> store.deliver(store.undelivered(), "https://hooks.example/hrlm", "s3cret")  # doctest: +SKIP

    Args:
        engine: the database (migrated to 0004 or later).
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def record(self, candidates: Iterable[Any], *, actor: str = "monitor") -> list[dict[str, Any]]:
        """Store the alerts of one check; return the rows it opened (new alerts only).

        One alert per ``(rule, window_start)``: when the same window is checked again, an open
        alert's ``value``, ``threshold``, ``message``, ``detail`` and ``window_end`` are updated,
        and a resolved one is left resolved (a person has seen it). All in one transaction, with an
        ``alert.open`` audit entry per new alert.

        Args:
            candidates: :class:`~hrlm.monitoring.AlertCandidate` objects (or mappings with the same
                fields: ``rule``, ``window_start``, ``window_end``, ``value``, ``threshold``,
                ``message``, ``detail``, ``model_version``).
            actor: who the audit log names.

        Returns:
            The new rows, as dicts, oldest window first.
        """
        items = list(candidates)
        if not items:
            return []
        now = utcnow()
        opened: list[int] = []
        with self.engine.begin() as conn:
            _write_lock(conn)
            for cand in items:
                rule = str(_field(cand, "rule"))
                start = _aware(_field(cand, "window_start"))
                values = {
                    "window_end": _aware(_field(cand, "window_end")),
                    "value": _float(_field(cand, "value")),
                    "threshold": _float(_field(cand, "threshold")),
                    "message": str(_field(cand, "message"))[:4000],
                    "detail": _jsonable(_field(cand, "detail") or {}),
                }
                existing = conn.execute(
                    select(alerts.c.id, alerts.c.state)
                    .where(alerts.c.rule == rule, alerts.c.window_start == start)
                    .order_by(alerts.c.id.desc())
                    .limit(1)
                ).first()
                if existing is not None:
                    if existing.state == "open":
                        conn.execute(update(alerts).where(alerts.c.id == existing.id).values(**values))
                    continue
                version = _field(cand, "model_version")
                new_id = conn.execute(
                    insert(alerts)
                    .values(
                        rule=rule,
                        model_version=version,
                        window_start=start,
                        opened_at=now,
                        state="open",
                        delivery_attempts=0,
                        **values,
                    )
                    .returning(alerts.c.id)
                ).scalar_one()
                opened.append(int(new_id))
                audit(
                    conn,
                    actor,
                    "alert.open",
                    f"alert:{new_id}",
                    rule=rule,
                    model_version=version,
                    window_start=start.isoformat(),
                    value=values["value"],
                    threshold=values["threshold"],
                )
        if not opened:
            return []
        with self.engine.connect() as conn:
            rows = conn.execute(
                select(alerts).where(alerts.c.id.in_(opened)).order_by(alerts.c.window_start, alerts.c.id)
            )
            return [_row(r) for r in rows.mappings()]

    def get(self, alert_id: int) -> dict[str, Any]:
        """One alert. Raises :class:`NotFound` for an unknown id."""
        with self.engine.connect() as conn:
            row = conn.execute(select(alerts).where(alerts.c.id == alert_id)).mappings().first()
        if row is None:
            raise NotFound(f"no alert {alert_id}; GET /v1/alerts lists them.")
        return _row(row)

    def resolve(self, alert_id: int, actor: str, note: str | None = None) -> dict[str, Any]:
        """Mark an open alert resolved (audit ``alert.resolve``); return the row.

        Raises:
            NotFound: no alert has this id.
            Conflict: the alert is already resolved.
        """
        with self.engine.begin() as conn:
            row = conn.execute(select(alerts.c.state).where(alerts.c.id == alert_id)).first()
            if row is None:
                raise NotFound(f"no alert {alert_id}; GET /v1/alerts lists them.")
            done = conn.execute(
                update(alerts)
                .where(alerts.c.id == alert_id, alerts.c.state == "open")
                .values(state="resolved", resolved_at=utcnow())
            ).rowcount
            if not done:
                raise Conflict(f"alert {alert_id} is already resolved.")
            detail: dict[str, Any] = {"note": note[:1000]} if note else {}
            audit(conn, actor, "alert.resolve", f"alert:{alert_id}", **detail)
        return self.get(alert_id)

    def open_alerts(self) -> list[dict[str, Any]]:
        """The open alerts, newest window first."""
        return self.recent(limit=1000, state="open")

    def recent(self, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        """The newest alerts first (by window, then by id), of one state or all.

        Raises:
            ConfigError: ``state`` is neither ``open`` nor ``resolved``.
        """
        query = select(alerts).order_by(alerts.c.window_start.desc(), alerts.c.id.desc()).limit(limit)
        if state is not None:
            if state not in ALERT_STATES:
                raise ConfigError(f"alert state {state!r} is not known; states are {', '.join(ALERT_STATES)}.")
            query = query.where(alerts.c.state == state)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def counts_by_rule(self, state: str | None = "open") -> dict[str, int]:
        """How many alerts each rule has (open ones by default; ``state=None``: all)."""
        query = select(alerts.c.rule, func.count()).group_by(alerts.c.rule)
        if state is not None:
            query = query.where(alerts.c.state == state)
        with self.engine.connect() as conn:
            return {rule: int(n) for rule, n in conn.execute(query)}

    def undelivered(self, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts not delivered yet, oldest first, but for those given up on (:data:`MAX_DELIVERY_ATTEMPTS` tries)."""
        query = (
            select(alerts)
            .where(and_(alerts.c.delivered_at.is_(None), alerts.c.delivery_attempts < MAX_DELIVERY_ATTEMPTS))
            .order_by(alerts.c.id)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(query).mappings()]

    def deliver(
        self,
        alert_rows: Sequence[Mapping[str, Any]],
        url: str,
        secret: str | None,
        *,
        attempts: int = 5,
        backoff_s: float = 1.0,
        timeout_s: float = 10.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> list[Delivery]:
        """POST each alert to ``url`` (see :func:`post_signed`) and record the outcome on its row.

        A delivered alert gets ``delivered_at``; every call adds its attempts to ``delivery_attempts``
        and sets ``delivery_error`` (cleared on success).

        Returns:
            One :class:`Delivery` per alert, in order.
        """
        results: list[Delivery] = []
        for row in alert_rows:
            body = webhook_body(row)
            result = post_signed(
                url, body, secret, attempts=attempts, backoff_s=backoff_s, timeout_s=timeout_s, sleep=sleep
            )
            values: dict[str, Any] = {
                "delivery_attempts": alerts.c.delivery_attempts + result.attempts,
                "delivery_error": None if result.ok else (result.error or "failed")[:4000],
            }
            if result.ok:
                values["delivered_at"] = utcnow()
            with self.engine.begin() as conn:
                conn.execute(update(alerts).where(alerts.c.id == row["id"]).values(**values))
            if not result.ok:
                log.warning("alert %s not delivered to the webhook: %s", row["id"], result.error)
            results.append(result)
        return results


def _float(value: Any) -> float | None:
    if value is None:
        return None
    f = float(value)
    return None if f != f else f


def _write_lock(conn: Connection) -> None:
    """Serialise recorders (two service processes checking the same window) for this transaction."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _RECORD_LOCK})
    else:
        # an UPDATE that matches nothing still opens SQLite's write transaction: a concurrent recorder
        # waits here, so its check below sees this transaction's alerts
        conn.execute(update(alerts).where(alerts.c.id == -1).values(state="open"))


def webhook_body(row: Mapping[str, Any]) -> dict[str, Any]:
    """What the webhook receives for one alert: the alert's fields, the sender and its version."""
    fields = (
        "id",
        "rule",
        "model_version",
        "window_start",
        "window_end",
        "opened_at",
        "state",
        "value",
        "threshold",
        "message",
        "detail",
    )
    return {
        "event": "alert",
        "service": "hrlm",
        "version": __version__,
        "alert": _jsonable({k: row.get(k) for k in fields}),
    }


def sign(body: bytes, secret: str) -> str:
    """The ``X-Hrlm-Signature`` value of ``body``: ``sha256=`` and the hex HMAC-SHA256 under ``secret``.

    Example:
        >>> sign(b"{}", "s3cret")[:7]
        'sha256='
    """
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def post_signed(
    url: str,
    payload: Mapping[str, Any],
    secret: str | None,
    *,
    attempts: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 10.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """POST ``payload`` as JSON to ``url``, signed, retried with exponential backoff.

    The body gets ``sent_at`` (the Unix time also sent as ``X-Hrlm-Timestamp``) and is signed with
    :func:`sign` when ``secret`` is set (unsigned otherwise). Connection errors, timeouts and 5xx
    answers are retried after ``backoff_s``, ``2 * backoff_s``, ``4 * backoff_s``... up to
    ``attempts`` calls; a 2xx ends it delivered, any other answer (4xx, 3xx) ends it at once.

    Args:
        url: an ``http://`` or ``https://`` URL.
        payload: the JSON object to send.
        secret: the shared key of the signature; ``None`` sends no signature.
        attempts: most calls (at least 1).
        backoff_s: the wait before the second call; it doubles each time.
        timeout_s: the wait for one answer.
        sleep: what waits (tests pass a fake).

    Returns:
        A :class:`Delivery`: ``ok``, the calls made, the last error and HTTP status.

    Raises:
        ConfigError: ``url`` is not an http(s) URL.
    """
    if not url.lower().startswith(("http://", "https://")):
        raise ConfigError(f"alert_webhook_url = {url!r}: must be an http:// or https:// URL.")
    attempts = max(1, attempts)
    error: str | None = None
    status: int | None = None
    for attempt in range(1, attempts + 1):
        sent_at = int(time.time())
        body = json.dumps({**payload, "sent_at": sent_at}, separators=(",", ":"), sort_keys=True).encode("utf-8")
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"hrlm/{__version__}",
            "X-Hrlm-Timestamp": str(sent_at),
        }
        if secret:
            headers["X-Hrlm-Signature"] = sign(body, secret)
        request = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:  # the scheme was checked above
                status = int(response.status)
            if 200 <= status < 300:
                return Delivery(True, attempt, None, status)
            return Delivery(False, attempt, f"HTTP {status} from the webhook; not retried", status)
        except urllib.error.HTTPError as exc:
            status = int(exc.code)
            error = f"HTTP {status} {exc.reason} from the webhook"
            if status not in _RETRY_STATUSES:
                return Delivery(False, attempt, error + "; not retried (the receiver refused the call)", status)
        except (urllib.error.URLError, OSError) as exc:
            status = None
            reason = getattr(exc, "reason", exc)
            error = f"cannot reach the webhook: {type(exc).__name__}: {reason}"
        if attempt < attempts:
            sleep(backoff_s * 2 ** (attempt - 1))
    return Delivery(False, attempts, error, status)
