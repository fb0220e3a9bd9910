"""Request and response bodies of the model registry's routes (promote, rollback, history, reports)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from hrlm.service.schemas.predict import STORABLE


class ReasonIn(BaseModel):
    """Why: kept in the stage history and the audit log."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "macro F1 dropped"}]})

    reason: Annotated[str, StringConstraints(max_length=1000), STORABLE] | None = Field(
        default=None, description="Why; stored in the stage history."
    )


class PromoteIn(ReasonIn):
    """Why, and whether to promote a version the promotion gate rejected."""

    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reason": "reviewed the gate report"}, {"force": True}]}
    )

    force: bool = Field(default=False, description="Promote even a rejected version (overrides the gate).")


class StageChangeOut(BaseModel):
    """The version a promotion or rollback put in production, and the version this service now answers with."""

    version: str
    stage: str
    serving: str = Field(description="The version this service answers with after the change.")
    warning: str | None = Field(
        default=None, description="Set when the change is stored but this service could not load the version."
    )


class StageEventOut(BaseModel):
    from_stage: str | None
    to_stage: str
    action: str = Field(description="register, promote, reject, archive or rollback.")
    at: dt.datetime
    actor: str
    reason: str | None


class VersionHistoryOut(BaseModel):
    """A registered version: where it came from, its stage history, the gate's comparison and its report files."""

    version: str
    stage: str
    origin: str = Field(description="register (by a person) or retrain (built from feedback).")
    parent: str | None = Field(description="The version a retrained candidate started from.")
    created_at: dt.datetime
    stage_changed_at: dt.datetime
    metrics: dict[str, Any] | None
    gate: dict[str, Any] | None = Field(description="The promotion gate's comparison with production, if any.")
    note: str | None
    events: list[StageEventOut]
    reports: list[str] = Field(description="Files of the version's report folder (GET .../report/{name}).")


class ReportsOut(BaseModel):
    version: str
    reports: list[str]
