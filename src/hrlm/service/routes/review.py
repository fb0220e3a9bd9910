"""The review routes, ``/v1/review/...``: reviewers take items and answer them; admins read the queue and agreement.

No ``from __future__ import annotations``: FastAPI must see the body models as objects.
"""

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request

from hrlm.review import answers
from hrlm.service.auth import require
from hrlm.service.routes.common import error_responses
from hrlm.service.schemas.review import (
    AgreementOut,
    FillOut,
    ReviewAnswerIn,
    ReviewerOut,
    ReviewNextOut,
    ReviewResultOut,
    ReviewStatsOut,
)
from hrlm.store.users import Principal

ROLES_REVIEW = ("reviewer", "admin")
MAX_ID = 2**63 - 1  # ids are 64-bit integers in both databases; a larger one is a 422, never a driver error


def build_review_router() -> APIRouter:
    """The review queue's routes (roles reviewer and admin; agreement and fill admin only)."""
    router = APIRouter(prefix="/v1/review", tags=["review"])

    @router.get("/me", response_model=ReviewerOut, responses=error_responses(401, 403, 429))
    async def me(principal: Principal = Depends(require(*ROLES_REVIEW))) -> dict[str, Any]:
        """Who the token belongs to (the pages show it after sign-in)."""
        return {"name": principal.name, "role": principal.role}

    @router.get("/next", response_model=ReviewNextOut, responses=error_responses(401, 403, 429))
    async def next_item(request: Request, principal: Principal = Depends(require(*ROLES_REVIEW))) -> dict[str, Any]:
        """Lease the next item to the caller for review_lease_s seconds (the same one again until answered).

        ``item`` is null when the queue holds nothing the caller has not answered.
        """
        service = request.app.state.service
        engine = service.engine
        item = await asyncio.to_thread(answers.next_item, engine, principal, lease_s=service.filler.policy.lease_s)
        left = await asyncio.to_thread(answers.open_items, engine, principal)
        return {"reviewer": {"name": principal.name, "role": principal.role}, "item": item, "open_items": left}

    @router.post(
        "/items/{item_id}", response_model=ReviewResultOut, responses=error_responses(401, 403, 404, 409, 422, 429)
    )
    async def answer(
        item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The item's id, as GET /v1/review/next gave it.")],
        body: ReviewAnswerIn,
        request: Request,
        principal: Principal = Depends(require(*ROLES_REVIEW)),
    ) -> dict[str, Any]:
        """Accept, correct, skip or flag an item; stored with reviewer, time, model version and previous label,
        and written to the audit log."""
        engine = request.app.state.service.engine
        return await asyncio.to_thread(
            answers.submit, engine, item_id, principal, body.action, body.label_list(), note=body.note
        )

    @router.get("/stats", response_model=ReviewStatsOut, responses=error_responses(401, 403, 429))
    async def stats(request: Request, _: Principal = Depends(require(*ROLES_REVIEW))) -> dict[str, Any]:
        """Queue size by reason and state, done and flagged items, answers per reviewer, what the filler skipped."""
        return await asyncio.to_thread(answers.stats, request.app.state.service.engine)

    @router.get("/agreement", response_model=AgreementOut, responses=error_responses(401, 403, 429))
    async def agreement(request: Request, _: Principal = Depends(require("admin"))) -> dict[str, Any]:
        """Cohen's kappa between reviewers over double-reviewed items, overall and per pair (admin)."""
        return await asyncio.to_thread(answers.agreement, request.app.state.service.engine)

    @router.post("/fill", response_model=FillOut, responses=error_responses(401, 403, 429, 503))
    async def fill(request: Request, _: Principal = Depends(require("admin"))) -> dict[str, Any]:
        """Sort the predictions stored since the last fill into the queue now (admin)."""
        result: dict[str, Any] = await request.app.state.service.filler.fill()
        return result

    return router
