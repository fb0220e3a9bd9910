"""Routes of background jobs: start a retrain (admin), read jobs and their progress (admin).

``POST /v1/retrain`` answers 202 at once with the job; ``GET /v1/jobs/{id}`` shows its progress
and, at the end, the promotion gate's decision. A second retrain while one is queued or running
answers 409.

No ``from __future__ import annotations`` here: FastAPI must see the body models as objects.
"""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from hrlm.service.auth import require
from hrlm.service.routes.common import error_responses
from hrlm.service.schemas.jobs import JobOut, JobsOut, RetrainIn
from hrlm.service.schemas.predict import JOB_ID_PATTERN, MAX_JOB_ID
from hrlm.store.users import Principal

ROLES = ("admin",)


def build_job_router() -> APIRouter:
    """The job routes."""
    router = APIRouter(tags=["jobs"])

    @router.post(
        "/v1/retrain",
        status_code=202,
        response_model=JobOut,
        responses=error_responses(401, 403, 409, 422, 503),
        summary="Retrain from feedback in the background; the gate promotes or rejects the candidate",
    )
    async def start_retrain(
        request: Request, body: RetrainIn | None = None, principal: Principal = Depends(require(*ROLES))
    ) -> JSONResponse:
        """Queue a retrain: training data plus accepted feedback, then the promotion gate. Poll the job."""
        jobs = request.app.state.service.jobs
        params = (body or RetrainIn()).model_dump(exclude_none=True)
        job = await asyncio.to_thread(jobs.submit, "retrain", actor=principal.name, params=params)
        out = JobOut.model_validate(job).model_dump(mode="json")
        return JSONResponse(out, status_code=202, headers={"Location": f"/v1/jobs/{job['id']}"})

    @router.get("/v1/jobs", response_model=JobsOut, responses=error_responses(401, 403), summary="Background jobs")
    async def list_jobs(
        request: Request,
        limit: int = Query(50, ge=1, le=500, description="Most jobs to return, newest first."),
        _: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """The newest jobs first; jobs of a worker that stopped are marked failed first."""
        jobs = request.app.state.service.jobs
        await asyncio.to_thread(jobs.sweep)
        return {"jobs": await asyncio.to_thread(jobs.store.recent, limit=limit)}

    @router.get(
        "/v1/jobs/{job_id}", response_model=JobOut, responses=error_responses(401, 403, 404, 422), summary="One job"
    )
    async def get_job(
        job_id: Annotated[
            str, Path(max_length=MAX_JOB_ID, pattern=JOB_ID_PATTERN, description="A job id, as GET /v1/jobs lists it.")
        ],
        request: Request,
        _: Principal = Depends(require(*ROLES)),
    ) -> dict[str, Any]:
        """A job's state, progress and message, and its result or error."""
        jobs = request.app.state.service.jobs
        await asyncio.to_thread(jobs.sweep)
        job: dict[str, Any] = await asyncio.to_thread(jobs.store.get, job_id)
        return job

    return router
