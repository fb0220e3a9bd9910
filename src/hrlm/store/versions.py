"""Rows of the model registry: model versions and their stage events, and the registry's lock.

The rules (which stage may follow which, rollback) live in :mod:`hrlm.lifecycle.registry`; this module only
reads and writes rows, inside the caller's transaction.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, false, insert, select, text, update
from sqlalchemy.engine import Row
from sqlalchemy.exc import OperationalError

from hrlm.errors import NotFound, StoreError
from hrlm.store.tables import model_stage_events, model_versions, utcnow

_REGISTRY_LOCK = 7_246_552  # the PostgreSQL advisory lock that serialises stage changes (cf. store.db)


@dataclass(frozen=True)
class VersionInfo:
    """A registered model version."""

    version: str
    path: Path
    stage: str
    origin: str
    created_at: dt.datetime
    stage_changed_at: dt.datetime
    parent: str | None = None
    metrics: dict[str, Any] | None = None
    gate: dict[str, Any] | None = None
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "path": str(self.path)}


@dataclass(frozen=True)
class StageEvent:
    """One stage change: which version, from and to which stage, by what move, who, when and why."""

    version: str
    from_stage: str | None
    to_stage: str
    action: str
    at: dt.datetime
    actor: str
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextlib.contextmanager
def reading(engine: Engine) -> Iterator[Connection]:
    """A connection for reads; a database failure becomes :class:`StoreError`."""
    try:
        with engine.connect() as conn:
            yield conn
    except OperationalError as exc:
        raise _store_error(engine, exc) from None


@contextlib.contextmanager
def changing(engine: Engine) -> Iterator[Connection]:
    """A transaction that holds the registry lock from its first statement to its commit."""
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _REGISTRY_LOCK})
            else:
                # pysqlite begins a transaction only at the first write: take the write lock now (as BEGIN
                # IMMEDIATE would), so that the reads below see the last commit and no writer comes between
                conn.execute(update(model_versions).where(false()).values(stage=model_versions.c.stage))
            yield conn
    except OperationalError as exc:
        raise _store_error(engine, exc) from None


def version_row(conn: Connection, version: str) -> Row[Any]:
    """The row of ``version``; :class:`NotFound` if there is none."""
    row = conn.execute(select(model_versions).where(model_versions.c.version == version)).first()
    if row is None:
        raise NotFound(f"no model version {version!r}; `hrlm models list` shows the registered versions.")
    return row


def production_version(conn: Connection) -> str | None:
    """The name of the version in production, if any."""
    return conn.execute(select(model_versions.c.version).where(model_versions.c.stage == "production")).scalar()


def set_stage(
    conn: Connection, version: str, stage: str, now: dt.datetime, *, gate: dict[str, Any] | None = None
) -> None:
    """Move ``version`` to ``stage`` (and store ``gate`` when given)."""
    values: dict[str, Any] = {"stage": stage, "stage_changed_at": now}
    if gate is not None:
        values["gate"] = gate
    conn.execute(update(model_versions).where(model_versions.c.version == version).values(**values))


def log_event(
    conn: Connection, version: str, from_stage: str | None, to_stage: str, action: str, actor: str, reason: str | None
) -> None:
    """Append a stage event."""
    conn.execute(
        insert(model_stage_events).values(
            version=version,
            from_stage=from_stage,
            to_stage=to_stage,
            action=action,
            at=utcnow(),
            actor=actor,
            reason=reason,
        )
    )


def to_info(row: Row[Any]) -> VersionInfo:
    m = row._mapping
    return VersionInfo(
        version=m["version"],
        path=Path(m["path"]),
        stage=m["stage"],
        origin=m["origin"],
        created_at=_aware(m["created_at"]),
        stage_changed_at=_aware(m["stage_changed_at"]),
        parent=m["parent"],
        metrics=_json(m["metrics"]),
        gate=_json(m["gate"]),
        note=m["note"],
    )


def to_event(row: Row[Any]) -> StageEvent:
    m = row._mapping
    return StageEvent(
        m["version"], m["from_stage"], m["to_stage"], m["action"], _aware(m["at"]), m["actor"], m["reason"]
    )


def _aware(value: dt.datetime) -> dt.datetime:
    """SQLite hands back naive timestamps; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.UTC)


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str) else value


def _store_error(engine: Engine, exc: OperationalError) -> StoreError:
    from hrlm.store.db import describe, first_line

    return StoreError(f"the model registry's database at {describe(engine)} failed: {first_line(exc)}")
