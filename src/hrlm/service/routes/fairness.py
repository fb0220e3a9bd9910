"""The bias-audit route: ``POST /v1/audit`` (admin) audits the served model, or a registry version, for adverse impact.

The data is uploaded as JSON: ``rows`` (objects) or ``table`` (the text of a CSV or JSONL file, which
the admin page reads in the browser; the service takes no multipart bodies, which would need
python-multipart). With ``source = "review"`` the uploaded rows map ``item_id`` to group values and
the texts and true labels come from the reviewed items: review items carry no group attributes,
so a team joins them with what its HR system knows. The audit runs in a thread and the answer is
the audit JSON (:meth:`hrlm.fairness.AuditResult.to_dict`); the audit log records who ran it and
the verdict.

No ``from __future__ import annotations`` here: FastAPI must see the body models as objects.
"""

import asyncio
import io
from typing import Any

import pandas as pd
from fastapi import APIRouter, Depends, Request
from sqlalchemy import Engine, select

from hrlm.errors import DataError
from hrlm.service.auth import require
from hrlm.service.routes.common import error_responses
from hrlm.service.schemas.fairness import MAX_AUDIT_ROWS, AuditIn, AuditOut
from hrlm.service.served_model import find_version
from hrlm.store.tables import review_feedback, review_items
from hrlm.store.users import Principal, audit

ROLES = ("admin",)
ANSWERS = ("accept", "correct")  # the review actions that give an item its label
ITEM_ID = "item_id"


def build_fairness_router() -> APIRouter:
    """The bias-audit route."""
    router = APIRouter(tags=["fairness"])

    @router.post(
        "/v1/audit",
        response_model=AuditOut,
        responses=error_responses(401, 403, 404, 422),
        summary="Bias audit: selection rates and impact ratios per group, and the counterfactual probe",
    )
    async def run_bias_audit(
        body: AuditIn, request: Request, principal: Principal = Depends(require(*ROLES))
    ) -> dict[str, Any]:
        """Audit the served model (or ``version``) on the uploaded rows, or on reviewed items joined with groups."""
        service = request.app.state.service
        if body.version is not None:
            from hrlm.inference import Predictor

            ref = find_version(service.source, body.version)
            predictor: Any = await asyncio.to_thread(Predictor.from_dir, ref.path, threads=service.settings.threads)
            version = ref.version
        else:
            predictor, version = service.model.predictor, service.model.version
        result = await asyncio.to_thread(_audit, service.engine, predictor, version, body)
        await asyncio.to_thread(_log, service.engine, principal.name, version, body, result)
        return result

    return router


def _frame(body: AuditIn) -> pd.DataFrame:
    if body.rows is not None:
        frame = pd.DataFrame(body.rows)
    else:
        assert body.table is not None
        try:
            if body.format == "csv":
                frame = pd.read_csv(io.StringIO(body.table), dtype=str, keep_default_na=False)
            else:
                frame = pd.read_json(io.StringIO(body.table), lines=True, dtype=False)
        except (ValueError, pd.errors.ParserError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"table: cannot read it as {body.format.upper()} ({first}); check the file.") from None
    if len(frame) > MAX_AUDIT_ROWS:
        raise DataError(f"table has {len(frame)} rows; send at most {MAX_AUDIT_ROWS} per audit.")
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _reviewed(engine: Engine, groups: pd.DataFrame, label_col: str) -> pd.DataFrame:
    """The uploaded item id -> groups table joined with the reviewed items' texts and their latest label."""
    if ITEM_ID not in groups.columns:
        raise DataError(f"column {ITEM_ID!r} not found in the uploaded table; columns are {sorted(groups.columns)}.")
    try:
        ids = [int(i) for i in groups[ITEM_ID]]
    except (TypeError, ValueError):
        raise DataError(f"column {ITEM_ID!r} must hold review item ids (whole numbers).") from None
    texts: dict[int, str] = {}
    labels: dict[int, str] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), 1000):
            chunk = ids[start : start + 1000]
            q = select(review_items.c.id, review_items.c.text).where(
                review_items.c.id.in_(chunk), review_items.c.state == "done", review_items.c.text_purged_at.is_(None)
            )
            texts.update({int(i): str(t) for i, t in conn.execute(q)})
            answers = (
                select(review_feedback.c.item_id, review_feedback.c.label)
                .where(
                    review_feedback.c.item_id.in_(chunk),
                    review_feedback.c.action.in_(ANSWERS),
                    review_feedback.c.withdrawn_at.is_(None),
                )
                .order_by(review_feedback.c.at, review_feedback.c.id)
            )
            labels.update({int(i): str(lab) for i, lab in conn.execute(answers) if lab})
    keep = [i in texts for i in ids]
    joined = groups.loc[keep].copy()
    if len(joined) == 0:
        raise DataError(
            f"none of the {len(ids)} item ids is a reviewed item with its text; upload ids of done review items."
        )
    joined["text"] = [texts[i] for i in ids if i in texts]
    joined[label_col] = [labels.get(i, "") for i in ids if i in texts]
    return joined


def _audit(engine: Engine, predictor: Any, version: str, body: AuditIn) -> dict[str, Any]:
    from hrlm.fairness import run_audit

    frame = _frame(body)
    text_col, label_col = body.text_col, body.label_col
    source = body.data_source
    if body.source == "review":
        label_col = "reviewed_label"
        frame = _reviewed(engine, frame, label_col)
        text_col = "text"
        source = source or f"{len(frame)} reviewed items joined with an uploaded table of their groups"
    result = run_audit(
        predictor,
        frame,
        group_cols=list(body.group_cols),
        positive=body.positive,
        text_col=text_col,
        label_col=label_col,
        threshold=body.min_impact_ratio,
        max_flip_rate=body.max_flip_rate,
        counterfactual=body.counterfactual,
        data_source=source or "a table uploaded to the service",
        explanation=body.explanation,
        model_name=version,
    )
    data: dict[str, Any] = result.to_dict()
    return data


def _log(engine: Engine, actor: str, version: str, body: AuditIn, result: dict[str, Any]) -> None:
    with engine.begin() as conn:
        audit(
            conn,
            actor,
            "fairness.audit",
            version,
            source=body.source,
            group_cols=list(body.group_cols),
            positive=body.positive,
            n=result["n"],
            passed=result["passed"],
            min_impact_ratio=result["min_impact_ratio"],
        )
