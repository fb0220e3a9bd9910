"""Routes of the audit log (admin only): read it a page at a time, or export it as CSV, with the same filters.

The CSV export streams: entries are read a batch at a time while the response is written. A cell
that starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``, so a
spreadsheet shows a name or a reason an attacker chose as text and never runs it as a formula.

No ``from __future__ import annotations`` here: FastAPI must see the parameter types as objects.
"""

import asyncio
import csv
import datetime as dt
import io
import json
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import StreamingResponse

from hrlm.errors import ConfigError
from hrlm.service.auth import require
from hrlm.service.routes.common import error_responses
from hrlm.service.schemas.audit_log import AuditLogOut
from hrlm.store.audit_log import MAX_PAGE, AuditFilter, audit_entries, iter_audit_entries
from hrlm.store.users import Principal
from hrlm.text import check_storable

ROLES = ("admin",)
MAX_ID = 2**63 - 1  # ids are 64-bit integers in both databases
CSV_COLUMNS = ("id", "at", "actor", "action", "target", "detail")
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def audit_filter(
    actor: str | None = Query(None, max_length=100, description="Who made the change, exactly."),
    action: str | None = Query(
        None, max_length=50, description="An action exactly (model.promote), or a prefix ending in `.` or `*` (model.)."
    ),
    target: str | None = Query(None, max_length=200, description="The target exactly (a version, `review_item:7`)."),
    model_version: str | None = Query(
        None, max_length=200, description="Entries about this model version (its target, or named in the detail)."
    ),
    since: dt.datetime | None = Query(None, description="Entries at or after this time (ISO 8601; UTC if no zone)."),
    until: dt.datetime | None = Query(None, description="Entries before this time."),
) -> AuditFilter:
    """The filter of the query string; a value no database can hold (NUL, a lone surrogate, a time past year
    9999 in UTC) is a 422."""
    for name, value in (("actor", actor), ("action", action), ("target", target), ("model_version", model_version)):
        if value is not None:
            check_storable(name, value)
    for name, when in (("since", since), ("until", until)):
        if when is not None and when.tzinfo is not None:
            try:
                when.astimezone(dt.UTC)
            except (OverflowError, ValueError):
                raise ConfigError(
                    f"{name} = {when.isoformat()} is out of range in UTC; give a time from year 1 to 9999."
                ) from None
    return AuditFilter(actor=actor, action=action, target=target, model_version=model_version, since=since, until=until)


def safe_cell(value: Any) -> str:
    """A CSV cell a spreadsheet shows as text: a leading formula character gets a ``'`` before it."""
    text = "" if value is None else value.isoformat() if isinstance(value, dt.datetime) else str(value)
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def csv_lines(entries: Iterator[dict[str, Any]]) -> Iterator[str]:
    """The CSV export, a header and then one line per entry."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(CSV_COLUMNS)
    yield buffer.getvalue()
    for entry in entries:
        buffer.seek(0)
        buffer.truncate()
        detail = json.dumps(entry["detail"], ensure_ascii=False, default=str) if entry["detail"] else ""
        writer.writerow([safe_cell(entry[c]) for c in CSV_COLUMNS[:-1]] + [safe_cell(detail)])
        yield buffer.getvalue()


def build_audit_log_router() -> APIRouter:
    """The audit log's routes."""
    router = APIRouter(tags=["audit"])

    @router.get(
        "/v1/audit-log",
        response_model=AuditLogOut,
        responses=error_responses(401, 403, 422),
        summary="The audit log, newest first, filtered and a page at a time",
    )
    async def read_log(
        request: Request,
        where: AuditFilter = Depends(audit_filter),
        limit: int = Query(100, ge=1, le=MAX_PAGE, description="Entries on the page."),
        before: int | None = Query(
            None, ge=1, le=MAX_ID, description="Only entries older than this id: the previous page's next_before."
        ),
        _: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """Who changed what and when: model stage changes, reviewers' answers, tokens, purges, ..."""
        engine = request.app.state.service.engine
        entries = await asyncio.to_thread(audit_entries, engine, where, limit=limit, before_id=before)
        last = entries[-1]["id"] if len(entries) == limit else None
        return {"entries": entries, "next_before": last}

    @router.get(
        "/v1/audit-log.csv",
        response_class=StreamingResponse,
        responses={
            200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "Every matching entry."},
            **error_responses(401, 403, 422),
        },
        summary="The audit log as CSV, with the same filters (every matching entry, newest first)",
    )
    async def export_log(
        request: Request,
        where: AuditFilter = Depends(audit_filter),
        _: Principal = Depends(require(*ROLES)),
    ) -> StreamingResponse:
        """Columns id, at, actor, action, target, detail (JSON); cells safe to open in a spreadsheet."""
        engine = request.app.state.service.engine
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
        headers = {
            "Content-Disposition": f'attachment; filename="hrlm-audit-log-{stamp}.csv"',
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        }
        lines = csv_lines(iter_audit_entries(engine, where))
        return StreamingResponse(lines, media_type="text/csv; charset=utf-8", headers=headers)

    return router
