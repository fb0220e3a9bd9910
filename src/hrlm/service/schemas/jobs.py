"""Request and response bodies of the job routes (``POST /v1/retrain``, ``GET /v1/jobs``)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from hrlm.service.schemas.predict import Name


class RetrainIn(BaseModel):
    """Options of one retrain; the data files are the service's ``train_data`` and ``holdout_data``."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{}, {"margin": 0.01}]})

    margin: float | None = Field(
        default=None,
        ge=-1,
        le=1,
        description="How much the candidate's macro F1 on the fixed holdout must beat production's "
        "(default: the service's promote_margin). Negative: promote unless worse by more than that.",
    )
    base: Name | None = Field(default=None, description="Registry version to start from (default: production).")


class JobOut(BaseModel):
    """A background job: its state, progress, and its result or error."""

    id: str
    kind: str
    state: str = Field(description="queued, running, succeeded or failed.")
    runner: str = Field(description="inprocess (a thread of the service), redis (hrlm worker) or cli.")
    actor: str
    created_at: dt.datetime
    started_at: dt.datetime | None = None
    finished_at: dt.datetime | None = None
    heartbeat_at: dt.datetime | None = None
    progress: float = Field(description="Fraction done, 0 to 1.")
    message: str | None = Field(default=None, description="What the job does now.")
    params: dict[str, Any] | None = None
    result: dict[str, Any] | None = Field(
        default=None, description="A retrain's decision (promoted or rejected), candidate, gate comparison."
    )
    error: str | None = Field(default=None, description="Why the job failed.")


class JobsOut(BaseModel):
    """The newest jobs first."""

    jobs: list[JobOut]
