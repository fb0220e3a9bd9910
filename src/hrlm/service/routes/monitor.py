"""Routes of the health monitor (admin): the series and open alerts, alerts, resolving one, evaluating now.

``GET /v1/monitor`` measures the served model from ``since`` (an ISO time or a duration such as ``14d``)
per ``window``; ``POST /v1/monitor/evaluate`` queues the holdout evaluation job at once (202, like a
retrain; 409 while one is queued or running).

No ``from __future__ import annotations`` here: FastAPI must see the body models as objects.
"""

import asyncio
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from hrlm.service.auth import require
from hrlm.service.monitor import queue_evaluation
from hrlm.service.routes.common import error_responses
from hrlm.service.schemas.jobs import JobOut
from hrlm.service.schemas.monitor import AlertOut, AlertsOut, MonitorOut, ResolveIn
from hrlm.store.users import Principal

ROLES = ("admin",)
AlertId = Annotated[int, Path(ge=1, le=2**63 - 1, description="An alert id, as GET /v1/alerts lists it.")]


def build_monitor_router() -> APIRouter:
    """The monitoring routes."""
    router = APIRouter(tags=["monitoring"])

    @router.get(
        "/v1/monitor",
        response_model=MonitorOut,
        responses=error_responses(401, 403, 422),
        summary="The served model's health per time window, and the open alerts",
    )
    async def get_monitor(
        request: Request,
        since: str | None = Query(
            None,
            max_length=40,
            description="Start: an ISO date or time (UTC unless it says), or a duration back from now (36h, 14d). "
            "Default: 14 windows back.",
        ),
        window: Literal["hour", "day", "week"] | None = Query(None, description="Window (default: monitor_window)."),
        _: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """Volume, drift and quality of the served model per window, holdout evaluations, open alerts."""
        monitor = request.app.state.service.monitor
        # on the model thread, between the clients' batches (the series embeds stored texts with the served model)
        body: dict[str, Any] = await request.app.state.service.batcher.call(monitor.series, since, window)
        return body

    @router.get("/v1/alerts", response_model=AlertsOut, responses=error_responses(401, 403, 422), summary="Alerts")
    async def list_alerts(
        request: Request,
        state: Literal["open", "resolved"] | None = Query(None, description="Only alerts in this state."),
        limit: int = Query(100, ge=1, le=1000, description="Most alerts to return, newest window first."),
        _: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """Alerts the health monitor opened, newest window first, with their webhook delivery."""
        store = request.app.state.service.monitor.alerts
        rows = await asyncio.to_thread(store.recent, limit, state)
        return {"alerts": rows, "open_by_rule": await asyncio.to_thread(store.counts_by_rule)}

    @router.post(
        "/v1/alerts/{alert_id}/resolve",
        response_model=AlertOut,
        responses=error_responses(401, 403, 404, 409, 422),
        summary="Resolve an open alert",
    )
    async def resolve_alert(
        alert_id: AlertId,
        request: Request,
        body: ResolveIn | None = None,
        principal: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """Mark the alert resolved (audit ``alert.resolve``); 409 if it already is."""
        monitor = request.app.state.service.monitor
        note = body.note if body is not None else None
        row: dict[str, Any] = await asyncio.to_thread(monitor.alerts.resolve, alert_id, principal.name, note)
        await monitor.refresh_open()
        return row

    @router.post(
        "/v1/monitor/evaluate",
        status_code=202,
        response_model=JobOut,
        responses=error_responses(401, 403, 409, 422, 503),
        summary="Measure the served model on holdout_data now (a background job)",
    )
    async def evaluate_now(request: Request, principal: Principal = Depends(require(*ROLES))) -> JSONResponse:
        """Queue the holdout evaluation; poll GET /v1/jobs/{id}. 422 without holdout_data."""
        service = request.app.state.service
        job = await asyncio.to_thread(queue_evaluation, service, principal.name)
        out = JobOut.model_validate(job).model_dump(mode="json")
        return JSONResponse(out, status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})

    return router
