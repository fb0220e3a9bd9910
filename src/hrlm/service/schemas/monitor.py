"""Response bodies of the monitoring routes (``GET /v1/monitor``, ``GET /v1/alerts``, resolving an alert)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from hrlm.service.schemas.predict import STORABLE


class AlertOut(BaseModel):
    """An alert: a rule of the health monitor crossed its threshold over a time window."""

    id: int
    rule: str = Field(description="The rule that fired: label_psi, confidence_psi, embedding_drift, accuracy_drop...")
    model_version: str | None = None
    window_start: dt.datetime
    window_end: dt.datetime
    opened_at: dt.datetime
    state: Literal["open", "resolved"]
    resolved_at: dt.datetime | None = None
    value: float | None = Field(default=None, description="What the window measured.")
    threshold: float | None = Field(default=None, description="The rule's threshold.")
    message: str
    detail: dict[str, Any] | None = None
    delivered_at: dt.datetime | None = Field(default=None, description="When the webhook accepted it.")
    delivery_attempts: int = Field(default=0, description="Webhook calls made so far.")
    delivery_error: str | None = Field(default=None, description="Why the last delivery failed.")


class AlertsOut(BaseModel):
    """Alerts, newest window first."""

    alerts: list[AlertOut]
    open_by_rule: dict[str, int] = Field(description="How many alerts of each rule are open.")


class ResolveIn(BaseModel):
    """Why an alert is resolved (kept in the audit log)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"note": "new intake form"}]})

    note: Annotated[str, STORABLE] | None = Field(
        default=None, max_length=1000, description="A note for the audit log."
    )


class MonitorOut(BaseModel):
    """The served model's health over time and the open alerts."""

    model_version: str
    window: Literal["hour", "day", "week"]
    since: dt.datetime
    reference: bool = Field(description="Whether drift had a reference (holdout_data is set).")
    series: dict[str, Any] = Field(
        description="hrlm.monitoring's series: per window volume, label and confidence PSI, length, unknown-token "
        "rate, embedding drift, reviewed accuracy with its interval, the CBPE estimate; and the holdout evaluations."
    )
    alerts: list[AlertOut] = Field(description="The open alerts.")
    settings: dict[str, Any] = Field(description="The window and the rules' thresholds.")
    last_check: dict[str, Any] | None = Field(default=None, description="The monitor's last round.")
