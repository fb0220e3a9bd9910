"""The review routes, ``/v1/review/...``: reviewers take items and answer them; admins read the queue and agreement.

No ``from __future__ import annotations``: FastAPI must see the body models as objects.
"""

import asyncio
import datetime as dt
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request, Response

from hrlm.review import answers, bulk, corrections
from hrlm.review import guidelines as guideline_store
from hrlm.review.browse import BrowseFilter, browse, item_detail
from hrlm.review.stats import flagged_items
from hrlm.service.auth import require
from hrlm.service.routes.common import error_responses
from hrlm.service.schemas.review import (
    AdjudicateIn,
    AdjudicateOut,
    AgreementOut,
    BrowseOut,
    BulkIn,
    BulkOut,
    FillOut,
    GuidelineIn,
    GuidelineOut,
    GuidelinesOut,
    ItemDetailOut,
    ItemExplanationOut,
    ReopenIn,
    ReopenOut,
    ReviewAnswerIn,
    ReviewerOut,
    ReviewNextOut,
    ReviewResultOut,
    ReviewStatsOut,
    SimilarOut,
    TriageOut,
    UndoOut,
)
from hrlm.store.users import Principal
from hrlm.text import check_storable

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

    @router.get("/items", response_model=BrowseOut, responses=error_responses(401, 403, 422, 429))
    async def find(
        request: Request,
        q: Annotated[
            str | None, Query(max_length=500, description="Words of the text (all of them; pay* for a prefix).")
        ] = None,
        state: Annotated[str | None, Query(pattern="^(open|done|flagged)$")] = None,
        reason: Annotated[str | None, Query(max_length=20, description="Why the item was queued.")] = None,
        suggestion: Annotated[str | None, Query(max_length=200, description="The model's label.")] = None,
        answer: Annotated[str | None, Query(max_length=200, description="A label a reviewer gave.")] = None,
        reviewer: Annotated[str | None, Query(max_length=100, description="Someone who answered the item.")] = None,
        model_version: Annotated[str | None, Query(max_length=200)] = None,
        confidence_min: Annotated[float | None, Query(ge=0, le=1)] = None,
        confidence_max: Annotated[float | None, Query(ge=0, le=1)] = None,
        since: Annotated[dt.datetime | None, Query(description="Queued at or after (ISO 8601).")] = None,
        until: Annotated[dt.datetime | None, Query(description="Queued before (ISO 8601).")] = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        before: Annotated[int | None, Query(ge=1, le=MAX_ID, description="next_before of the previous page.")] = None,
        _: Principal = Depends(require(*ROLES_REVIEW)),
    ) -> dict[str, Any]:
        """Items by state, reason, labels, confidence, reviewer, model version and date, and full-text search."""
        for name, value in (("q", q), ("reason", reason), ("suggestion", suggestion), ("answer", answer)):
            if value is not None:
                check_storable(name, value)
        flt = BrowseFilter(
            state=state, reason=reason, suggestion=suggestion, answer=answer, reviewer=reviewer,
            model_version=model_version, confidence_min=confidence_min, confidence_max=confidence_max,
            since=_aware(since), until=_aware(until), q=q,
        )  # fmt: skip
        return await asyncio.to_thread(browse, request.app.state.service.engine, flt, limit=limit, before=before)

    @router.get("/items/{item_id}", response_model=ItemDetailOut, responses=error_responses(401, 403, 404, 422, 429))
    async def detail(
        item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The item's id.")],
        request: Request,
        _: Principal = Depends(require(*ROLES_REVIEW)),
    ) -> dict[str, Any]:
        """One item: text, the model's output, and every answer with who gave it (withdrawn ones marked)."""
        return await asyncio.to_thread(item_detail, request.app.state.service.engine, item_id)

    @router.get("/guidelines", response_model=GuidelinesOut, responses=error_responses(401, 403, 429))
    async def guidelines(request: Request, _: Principal = Depends(require(*ROLES_REVIEW))) -> dict[str, Any]:
        """What each label means: the newest guideline of every label that has one."""
        return {"guidelines": await asyncio.to_thread(guideline_store.current, request.app.state.service.engine)}

    @router.get(
        "/guidelines/{label}/history", response_model=list[GuidelineOut], responses=error_responses(401, 403, 404, 422)
    )
    async def guideline_history(
        label: Annotated[str, Path(min_length=1, max_length=200)],
        request: Request,
        _: Principal = Depends(require(*ROLES_REVIEW)),
    ) -> list[dict[str, Any]]:
        """Every version of a label's guideline, newest first."""
        check_storable("label", label)
        return await asyncio.to_thread(guideline_store.history, request.app.state.service.engine, label)

    @router.put("/guidelines/{label}", response_model=GuidelineOut, responses=error_responses(401, 403, 422, 429))
    async def save_guideline(
        label: Annotated[str, Path(min_length=1, max_length=200)],
        body: GuidelineIn,
        request: Request,
        principal: Principal = Depends(require("admin")),
    ) -> dict[str, Any]:
        """Write a new version of a label's guideline (admin); the audit log records it."""
        check_storable("label", label)
        return await asyncio.to_thread(
            guideline_store.save,
            request.app.state.service.engine,
            label,
            body.description,
            body.examples,
            actor=principal.name,
        )

    @router.get("/items/{item_id}/similar", response_model=SimilarOut, responses=error_responses(401, 403, 404, 422))
    async def similar(
        item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The item being answered.")],
        request: Request,
        principal: Principal = Depends(require(*ROLES_REVIEW)),
    ) -> dict[str, Any]:
        """Open items alike to this one (review_bulk_similarity) that the caller has not answered, most alike first."""
        service = request.app.state.service
        threshold = service.settings.review_bulk_similarity
        items = await asyncio.to_thread(bulk.similar_open, service.engine, item_id, principal, threshold=threshold)
        return {"item_id": item_id, "threshold": threshold, "items": items}

    @router.post("/bulk", response_model=BulkOut, responses=error_responses(401, 403, 422, 429))
    async def answer_many(
        body: BulkIn, request: Request, principal: Principal = Depends(require(*ROLES_REVIEW))
    ) -> dict[str, Any]:
        """Give alike items one label, each as its own answer (and audit-log entry); refusals are listed, not fatal."""
        return await asyncio.to_thread(
            bulk.answer_many, request.app.state.service.engine, body.item_ids, principal, body.label_list()
        )

    @router.get("/triage", response_model=TriageOut, responses=error_responses(401, 403, 429))
    async def triage(request: Request, _: Principal = Depends(require("admin"))) -> dict[str, Any]:
        """Disagreements to settle, and the newest flagged and skipped items with their notes (admin)."""
        engine = request.app.state.service.engine
        return {
            "disagreements": await asyncio.to_thread(corrections.disagreements, engine),
            "flagged": await asyncio.to_thread(flagged_items, engine),
            "skipped": await asyncio.to_thread(flagged_items, engine, action="skip"),
        }

    @router.post(
        "/items/{item_id}/adjudicate",
        response_model=AdjudicateOut,
        responses=error_responses(401, 403, 404, 409, 422, 429),
    )
    async def adjudicate(
        item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="A done item whose reviewers disagree.")],
        body: AdjudicateIn,
        request: Request,
        principal: Principal = Depends(require("admin")),
    ) -> dict[str, Any]:
        """Settle a disagreement (admin): the label given becomes the item's, for retraining and export."""
        return await asyncio.to_thread(
            corrections.adjudicate, request.app.state.service.engine, item_id, principal, body.label, note=body.note
        )

    @router.post("/items/{item_id}/undo", response_model=UndoOut, responses=error_responses(401, 403, 404, 409, 429))
    async def undo(
        item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="An item the caller answered.")],
        request: Request,
        principal: Principal = Depends(require(*ROLES_REVIEW)),
    ) -> dict[str, Any]:
        """Take back the caller's latest answer to the item; the item comes back to them for a new answer.

        Refused (409) once another reviewer answered the item after them: an admin can reopen it.
        """
        service = request.app.state.service
        return await asyncio.to_thread(
            corrections.undo, service.engine, item_id, principal, lease_s=service.filler.policy.lease_s
        )

    @router.post(
        "/items/{item_id}/reopen", response_model=ReopenOut, responses=error_responses(401, 403, 404, 409, 422, 429)
    )
    async def reopen(
        item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="Any done or flagged item.")],
        request: Request,
        body: ReopenIn | None = None,
        principal: Principal = Depends(require("admin")),
    ) -> dict[str, Any]:
        """Send an item back to the queue (admin): its answers are withdrawn, the audit log keeps them."""
        reason = body.reason if body else None
        return await asyncio.to_thread(
            corrections.reopen, request.app.state.service.engine, item_id, principal, reason=reason
        )

    @router.get(
        "/items/{item_id}/explain",
        response_model=ItemExplanationOut,
        responses=error_responses(401, 403, 404, 409, 422, 429, 504),
    )
    async def explain(
        item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The item's id, as GET /v1/review/next gave it.")],
        request: Request,
        label: Annotated[
            str | None, Query(max_length=200, description="The label whose evidence to show (default: the suggestion).")
        ] = None,
        _: Principal = Depends(require(*ROLES_REVIEW)),
    ) -> dict[str, Any]:
        """Word attributions of the item's text for a label, by the served model (integrated gradients).

        Positive words are evidence for the label, negative ones against it; computed on demand and
        cached per item, label and model version.
        """
        service = request.app.state.service
        text, suggestion = await asyncio.to_thread(answers.item_text, service.engine, item_id)
        chosen = label or suggestion.split("|")[0]
        version, (found,) = await service.explain([text], label=chosen, key=f"item:{item_id}")
        return {"item_id": item_id, "model_version": version, "explanation": found.to_dict()}

    @router.get(
        "/export",
        response_class=Response,
        responses={200: {"content": {"text/csv": {}, "application/x-ndjson": {}}}, **error_responses(401, 403, 422)},
    )
    async def export(
        request: Request,
        format: Annotated[str, Query(pattern="^(csv|jsonl|parquet)$", description="csv, jsonl or parquet.")] = "csv",
        holdout: Annotated[
            str, Query(pattern="^(include|exclude|only)$", description="include, exclude or only the feedback holdout.")
        ] = "include",
        principal: Principal = Depends(require("admin")),
    ) -> Response:
        """The reviewed texts with their agreed labels, as a file `hrlm train` reads (admin)."""
        from hrlm.review.export import log_export, render_rows, reviewed_rows

        engine = request.app.state.service.engine
        rows, counts = await asyncio.to_thread(reviewed_rows, engine, holdout=holdout)
        data = await asyncio.to_thread(render_rows, rows, format)
        await asyncio.to_thread(log_export, engine, principal.name, format, counts)
        media = {
            "csv": "text/csv; charset=utf-8",
            "jsonl": "application/x-ndjson",
            "parquet": "application/vnd.apache.parquet",
        }
        name = f"hrlm-reviewed.{format}"
        return Response(
            data, media_type=media[format], headers={"Content-Disposition": f'attachment; filename="{name}"'}
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


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    """A time without a zone is taken as UTC (the database keeps UTC)."""
    return value.replace(tzinfo=dt.UTC) if value is not None and value.tzinfo is None else value
