"""Reading the audit log: filtered, newest first, a page at a time (the log itself is append-only).

Entries are written by :func:`hrlm.store.users.audit` inside the transaction of the change they
record. This module only reads them: by actor, by action (exactly, or every action under a prefix
such as ``model.``), by target or model version, and by time; a page ends at an id, and the next
page starts below it (``before_id``), so pages stay stable while new entries arrive.

Example:
    >>> page = audit_entries(engine, AuditFilter(action="model."), limit=50)  # doctest: +SKIP
    >>> older = audit_entries(engine, limit=50, before_id=page[-1]["id"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, or_, select

from hrlm.store.tables import audit_log

__all__ = ["MAX_PAGE", "AuditFilter", "audit_entries", "iter_audit_entries"]

MAX_PAGE = 1000  # entries one page may hold
EXPORT_BATCH = 500  # entries read per query while exporting


@dataclass(frozen=True)
class AuditFilter:
    """Which entries to read; every field left ``None`` matches all.

    Attributes:
        actor: who made the change, exactly (``ana``, ``cli:ana``, ``service``).
        action: an action exactly (``model.promote``), or a prefix when it ends with ``.`` or ``*``
            (``model.`` matches ``model.promote``, ``model.rollback``, ...).
        target: the entry's target exactly (a version, a user name, ``review_item:7``).
        model_version: entries about that model version: targeting it, or naming it as their
            ``model_version`` (reviewers' answers do).
        since: entries at or after this time (a naive datetime is UTC).
        until: entries before this time.
    """

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    model_version: str | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def conditions(self) -> list[Any]:
        """The SQL conditions of this filter."""
        c = audit_log.c
        out: list[Any] = []
        if self.actor is not None:
            out.append(c.actor == self.actor)
        if self.action is not None:
            if self.action.endswith(("*", ".")):
                out.append(c.action.startswith(self.action.rstrip("*"), autoescape=True))
            else:
                out.append(c.action == self.action)
        if self.target is not None:
            out.append(c.target == self.target)
        if self.model_version is not None:
            out.append(or_(c.target == self.model_version, c.detail["model_version"].as_string() == self.model_version))
        if self.since is not None:
            out.append(c.at >= _utc(self.since))
        if self.until is not None:
            out.append(c.at < _utc(self.until))
        return out


def _utc(when: dt.datetime) -> dt.datetime:
    return when.replace(tzinfo=dt.UTC) if when.tzinfo is None else when.astimezone(dt.UTC)


def audit_entries(
    engine: Engine, where: AuditFilter | None = None, *, limit: int = 100, before_id: int | None = None
) -> list[dict[str, Any]]:
    """A page of audit-log entries matching ``where``, newest first.

    Args:
        engine: a migrated database.
        where: the filter (default: every entry).
        limit: entries on the page, 1 to :data:`MAX_PAGE` (larger values are cut to it).
        before_id: only entries with a smaller id: the ``id`` of the last entry of the previous page.

    Returns:
        Dicts with ``id``, ``at``, ``actor``, ``action``, ``target`` and ``detail``.

    Example:
        >>> audit_entries(engine, AuditFilter(actor="ana"), limit=1)  # doctest: +SKIP
        [{'id': 41, 'at': datetime(...), 'actor': 'ana', 'action': 'model.promote', 'target': 'router-1a2b3c4d', ...}]
    """
    limit = max(1, min(int(limit), MAX_PAGE))
    query = select(audit_log).where(*(where or AuditFilter()).conditions())
    if before_id is not None:
        query = query.where(audit_log.c.id < before_id)
    query = query.order_by(audit_log.c.id.desc()).limit(limit)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]


def iter_audit_entries(engine: Engine, where: AuditFilter | None = None) -> Iterator[dict[str, Any]]:
    """Every entry matching ``where``, newest first, read :data:`EXPORT_BATCH` at a time (for exports).

    Each batch is its own short read: an export that streams for minutes holds no connection
    between batches, and entries appended meanwhile (with larger ids) are not part of it.
    """
    before: int | None = None
    while True:
        page = audit_entries(engine, where, limit=EXPORT_BATCH, before_id=before)
        yield from page
        if len(page) < EXPORT_BATCH:
            return
        before = page[-1]["id"]
