"""Response bodies of the audit-log routes (``GET /v1/audit-log``), for the OpenAPI schema."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, Field


class AuditEntryOut(BaseModel):
    """One change, as the audit log recorded it in the change's own transaction."""

    id: int
    at: dt.datetime
    actor: str = Field(description="Who: a user name, `cli:<login>` for the command line, or `service`.")
    action: str = Field(description="What: model.promote, review.flag, token.create, retention.purge, ...")
    target: str | None = Field(description="What it acted on: a model version, a user, `review_item:<id>`.")
    detail: dict[str, Any] | None = Field(description="The change's particulars (reason, labels, counts, ...).")


class AuditLogOut(BaseModel):
    """A page of the audit log, newest first."""

    entries: list[AuditEntryOut]
    next_before: int | None = Field(
        description="Pass as `before` for the next (older) page; null when this page is the last."
    )
