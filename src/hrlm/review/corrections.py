"""Taking answers back and settling them: a reviewer's undo, an admin's reopening and adjudication.

:func:`undo` withdraws a reviewer's own latest answer to an item (accept, correct, skip or flag) as
long as nobody answered the item after them, and puts the item back in the queue, leased to them, so
that the page shows it again for a new answer. :func:`reopen` lets an admin send any item back for
review: its answers are withdrawn, it is open again with no lease. :func:`disagreements` lists the
double-reviewed items whose reviewers gave different labels, and :func:`adjudicate` settles one: the
admin's label becomes the item's (retraining and export use it; agreement figures still compare the
reviewers' own answers). Withdrawn answers keep their
rows (``withdrawn_at``, ``withdrawn_by``) and count nowhere; each change writes the audit log in its
own transaction (``review.undo``, ``review.reopen``), so the log keeps both the answer and its undoing.

Example:
    >>> submit(engine, 7, alice, "correct", ["leave"])  # doctest: +SKIP
    >>> undo(engine, 7, alice)["state"]  # doctest: +SKIP
    'open'
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Engine, insert, select, update

from hrlm.errors import Conflict, Forbidden, LabelError, NotFound
from hrlm.review.stats import ADJUDICATE, ANSWERS, adjudications
from hrlm.store.tables import review_feedback, review_items, utcnow
from hrlm.store.users import Principal, audit
from hrlm.text import check_storable


def undo(engine: Engine, item_id: int, principal: Principal, *, lease_s: float = 600.0) -> dict[str, Any]:
    """Withdraw ``principal``'s latest answer to item ``item_id`` and give them the item back.

    Returns:
        ``item_id``, ``withdrawn`` (the answer: action, label), ``state`` of the item afterwards.

    Raises:
        NotFound: no such item, or the reviewer has no answer to it that can be taken back.
        Conflict: another reviewer answered the item after them (an admin can reopen it).
    """
    now = utcnow()
    with engine.begin() as conn:
        item = _lock(conn, item_id)
        answers = (
            conn.execute(
                select(review_feedback)
                .where(review_feedback.c.item_id == item_id, review_feedback.c.withdrawn_at.is_(None))
                .order_by(review_feedback.c.id.desc())
            )
            .mappings()
            .all()
        )
        mine = [a for a in answers if a["reviewer_id"] == principal.user_id]
        if not mine:
            raise NotFound(f"you have no answer to review item {item_id} to take back.")
        last = mine[0]
        if answers[0]["id"] != last["id"]:
            raise Conflict(
                f"{answers[0]['reviewer']} answered review item {item_id} after you; ask an admin to reopen it."
            )
        conn.execute(
            update(review_feedback)
            .where(review_feedback.c.id == last["id"])
            .values(withdrawn_at=now, withdrawn_by=principal.name)
        )
        given = sum(1 for a in answers[1:] if a["action"] in ANSWERS)
        state = "open" if given < item["reviews_needed"] else item["state"]
        conn.execute(
            update(review_items)
            .where(review_items.c.id == item_id)
            .values(state=state, leased_by=principal.user_id, leased_until=now + dt.timedelta(seconds=lease_s))
        )
        audit(
            conn,
            principal.name,
            "review.undo",
            f"review_item:{item_id}",
            answer=last["action"],
            label=last["label"],
            feedback_id=last["id"],
            model_version=item["model_version"],
        )
    return {
        "item_id": item_id,
        "withdrawn": {"action": last["action"], "label": last["label"], "at": last["at"]},
        "state": state,
    }


def reopen(engine: Engine, item_id: int, principal: Principal, *, reason: str | None = None) -> dict[str, Any]:
    """Send item ``item_id`` back to the queue (admins): its answers are withdrawn, it is open again.

    Raises:
        Forbidden: the caller is not an admin.
        NotFound: no such item.
        Conflict: the item is open already, or retention removed its text.
    """
    if principal.role != "admin":
        raise Forbidden(f"user {principal.name!r} has role {principal.role!r}; reopening an item needs role admin.")
    if reason is not None:
        check_storable("reason", reason)
    now = utcnow()
    with engine.begin() as conn:
        item = _lock(conn, item_id)
        if item["state"] == "open":
            raise Conflict(f"review item {item_id} is open already.")
        if item.get("text_purged_at") is not None:
            raise Conflict(f"review item {item_id} has no text any more (retention removed it); it cannot be reviewed.")
        withdrawn = conn.execute(
            update(review_feedback)
            .where(review_feedback.c.item_id == item_id, review_feedback.c.withdrawn_at.is_(None))
            .values(withdrawn_at=now, withdrawn_by=principal.name)
        ).rowcount
        conn.execute(
            update(review_items)
            .where(review_items.c.id == item_id)
            .values(state="open", leased_by=None, leased_until=None)
        )
        audit(
            conn,
            principal.name,
            "review.reopen",
            f"review_item:{item_id}",
            previous_state=item["state"],
            withdrawn=int(withdrawn),
            reason=reason,
        )
    return {"item_id": item_id, "state": "open", "withdrawn": int(withdrawn), "previous_state": item["state"]}


def _lock(conn: Any, item_id: int) -> dict[str, Any]:
    """The item's row, locked for this transaction (a no-op update takes the row lock first)."""
    conn.execute(update(review_items).where(review_items.c.id == item_id).values(state=review_items.c.state))
    row = conn.execute(select(review_items).where(review_items.c.id == item_id)).mappings().first()
    if row is None:
        raise NotFound(f"no review item {item_id}.")
    return dict(row)


def disagreements(engine: Engine, *, limit: int = 100) -> list[dict[str, Any]]:
    """Done items whose reviewers gave different labels and that no admin settled yet, newest first.

    Each: ``item_id``, ``text``, ``suggestion``, ``labels`` (the model's), ``model_version`` and
    ``answers`` (reviewer, label, note, at).
    """
    settled = adjudications(engine)
    with engine.connect() as conn:
        rows = (
            conn.execute(
                select(
                    review_feedback,
                    review_items.c.text,
                    review_items.c.suggestion,
                    review_items.c.output,
                    review_items.c.model_version.label("item_model_version"),
                )
                .join(review_items, review_items.c.id == review_feedback.c.item_id)
                .where(
                    review_items.c.state == "done",
                    review_feedback.c.action.in_(ANSWERS),
                    review_feedback.c.withdrawn_at.is_(None),
                )
                .order_by(review_feedback.c.item_id.desc(), review_feedback.c.id)
            )
            .mappings()
            .all()
        )
    by_item: dict[int, list[Any]] = {}
    for row in rows:
        by_item.setdefault(row["item_id"], []).append(row)
    out = []
    for item_id, answers in by_item.items():
        if item_id in settled or len({a["label"] for a in answers}) < 2:
            continue
        first = answers[0]
        out.append(
            {
                "item_id": item_id,
                "text": first["text"],
                "suggestion": first["suggestion"],
                "labels": list((first["output"] or {}).get("probabilities") or {}),
                "model_version": first["item_model_version"],
                "answers": [
                    {"reviewer": a["reviewer"], "label": a["label"], "note": a["note"], "at": a["at"]} for a in answers
                ],
            }
        )
        if len(out) >= limit:
            break
    return out


def adjudicate(
    engine: Engine, item_id: int, principal: Principal, label: str, *, note: str | None = None
) -> dict[str, Any]:
    """Settle a disagreement (admins): ``label`` becomes the item's label, in the audit log.

    Raises:
        Forbidden: the caller is not an admin.
        NotFound: no such item.
        Conflict: the item is not done, or its reviewers agree.
        LabelError: ``label`` is not one of the model's labels.
    """
    if principal.role != "admin":
        raise Forbidden(f"user {principal.name!r} has role {principal.role!r}; adjudicating needs role admin.")
    check_storable("label", label)
    if note is not None:
        check_storable("note", note)
    with engine.begin() as conn:
        item = _lock(conn, item_id)
        known = list((item["output"] or {}).get("probabilities") or {})
        parts = label.split("|")
        if any(p not in known for p in parts):
            raise LabelError(f"label {label!r} is not a label of model {item['model_version']}; choose from {known}.")
        given = (
            conn.execute(
                select(review_feedback.c.label).where(
                    review_feedback.c.item_id == item_id,
                    review_feedback.c.action.in_(ANSWERS),
                    review_feedback.c.withdrawn_at.is_(None),
                )
            )
            .scalars()
            .all()
        )
        if item["state"] != "done" or len(set(given)) < 2:
            raise Conflict(f"review item {item_id} has no disagreement to settle (state {item['state']}).")
        conn.execute(
            insert(review_feedback).values(
                item_id=item_id,
                reviewer_id=principal.user_id,
                reviewer=principal.name,
                at=utcnow(),
                action=ADJUDICATE,
                label=label,
                previous_label=None,
                model_version=item["model_version"],
                note=note,
            )
        )
        audit(
            conn, principal.name, "review.adjudicate", f"review_item:{item_id}", label=label, answers=sorted(set(given))
        )
    return {"item_id": item_id, "label": label, "answers": sorted(set(given))}
