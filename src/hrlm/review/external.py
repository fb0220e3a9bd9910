"""Answers from other labelling tools (Label Studio): stored as review feedback, updated and taken back.

A team that labels in Label Studio keeps doing so; each annotation it makes reaches hrlm (the ML
backend's webhook) and becomes an answer here, so retraining, the gate's feedback holdout and
the agreement figures see it like an answer from hrlm's own review page. An annotated text becomes
a review item of reason ``external`` (one item per text: a second annotator's answer joins the
first, and two different labels leave the text out of training, as in the queue), already done.
Its side of the holdout split is the text's, by the same hash the queue uses, so a text never sits
on both sides.

Each answer keeps the tool's name (``source``) and its id there (``external_id``): an annotation
updated in the tool withdraws the answer it became and adds the new one; a deleted annotation
withdraws it. Withdrawn answers keep their rows (``withdrawn_at``, ``withdrawn_by``) and count
nowhere. Every change is in the audit log, in the same transaction.

Example:
    >>> record_external(engine, source="labelstudio", external_id="7:annotation:31", text="my payslip is late",
    ...                 label="payroll", annotator="ls:ana@example.org", model_version="router-3",
    ...                 suggestion="payroll", output={"label": "payroll"}, policy=ReviewPolicy())  # doctest: +SKIP
    {'item_id': 12, 'action': 'accept', 'label': 'payroll', 'holdout': False, 'replaced': 0}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update

from hrlm.review.fill import ReviewPolicy, share, text_hash
from hrlm.store.tables import review_feedback, review_items, utcnow
from hrlm.store.users import audit
from hrlm.text import check_storable

EXTERNAL_REASON = "external"  # the queue reason of items made from another tool's annotations


def record_external(
    engine: Engine,
    *,
    source: str,
    external_id: str,
    text: str,
    label: str,
    annotator: str,
    model_version: str,
    suggestion: str,
    output: dict[str, Any],
    policy: ReviewPolicy,
) -> dict[str, Any]:
    """Store another tool's annotation of ``text`` as an answer; an earlier answer with the same id is withdrawn.

    Args:
        source: the tool (``labelstudio``); with ``external_id`` it names the answer.
        external_id: the annotation's id in the tool (unique within ``source``).
        text: the text as hrlm keeps it (redacted already, as the service's ``store_text`` says).
        label: the annotator's label (``|``-joined for several).
        annotator: who annotated, as the tool names them (kept as the answer's reviewer).
        model_version: the model whose ``suggestion`` the annotation is compared with.
        suggestion, output: that model's label and output for the text (the item's suggestion).
        policy: the review policy (its ``holdout_fraction`` decides the text's side of the holdout).

    Returns:
        ``item_id``, ``action`` (``accept`` when the label is the suggestion, else ``correct``),
        ``label``, ``holdout`` and ``replaced`` (answers withdrawn because the annotation changed).

    Raises:
        DataError: the text or a label holds a character no database stores.
    """
    check_storable("text", text)
    check_storable("label", label)
    digest = text_hash(text)
    now = utcnow()
    with engine.begin() as conn:
        replaced = _withdraw(conn, source, [external_id], f"{source}:{annotator}", now)
        item_id = conn.execute(
            select(review_items.c.id)
            .where(review_items.c.text_hash == digest, review_items.c.reason == EXTERNAL_REASON)
            .order_by(review_items.c.id)
            .limit(1)
        ).scalar()
        holdout = share(f"holdout:{digest}") < policy.holdout_fraction
        if item_id is None:
            item_id = conn.execute(
                insert(review_items)
                .values(
                    prediction_id=None,
                    created_at=now,
                    model_version=model_version,
                    text=text,
                    text_hash=digest,
                    suggestion=suggestion,
                    output=output,
                    reason=EXTERNAL_REASON,
                    score=0.0,
                    reviews_needed=1,
                    holdout=holdout,
                    state="done",
                )
                .returning(review_items.c.id)
            ).scalar_one()
        else:
            row = conn.execute(select(review_items).where(review_items.c.id == item_id)).mappings().one()
            holdout, suggestion = bool(row["holdout"]), row["suggestion"]
        action = "accept" if label == suggestion else "correct"
        conn.execute(
            insert(review_feedback).values(
                item_id=item_id,
                reviewer_id=None,
                reviewer=f"{source}:{annotator}"[:100],
                at=now,
                action=action,
                label=label,
                previous_label=suggestion,
                model_version=model_version,
                source=source,
                external_id=external_id,
            )
        )
        audit(
            conn,
            f"{source}:{annotator}"[:100],
            f"review.{action}",
            f"review_item:{item_id}",
            label=label,
            previous_label=suggestion,
            model_version=model_version,
            source=source,
            external_id=external_id,
            replaced=replaced,
        )
    return {"item_id": int(item_id), "action": action, "label": label, "holdout": holdout, "replaced": replaced}


def withdraw_external(engine: Engine, *, source: str, external_ids: Sequence[str], actor: str) -> int:
    """Withdraw the answers ``external_ids`` of ``source`` (their annotations were deleted); how many were.

    Example:
        >>> withdraw_external(engine, source="labelstudio", external_ids=["7:annotation:31"],
        ...                   actor="labelstudio:ana")  # doctest: +SKIP
        1
    """
    with engine.begin() as conn:
        n = _withdraw(conn, source, list(external_ids), actor, utcnow())
        if n:
            audit(conn, actor, "review.withdraw", f"{source}", external_ids=list(external_ids)[:100], withdrawn=n)
    return n


def _withdraw(conn: Connection, source: str, external_ids: list[str], actor: str, now: Any) -> int:
    if not external_ids:
        return 0
    return int(
        conn.execute(
            update(review_feedback)
            .where(
                review_feedback.c.source == source,
                review_feedback.c.external_id.in_(external_ids),
                review_feedback.c.withdrawn_at.is_(None),
            )
            .values(withdrawn_at=now, withdrawn_by=actor[:100])
        ).rowcount
    )
