"""The review loop's feedback: reviewers take items from the queue and answer them.

:func:`next_item` leases the best open item to a reviewer for ``lease_s`` seconds (never an item
they answered already); :func:`submit` stores an answer with the item's label before it and writes
``review.<action>`` to the audit log in the same transaction.

This module is the review queue's public face: filling the queue (:class:`ReviewPolicy`,
:func:`fill_queue`) lives in :mod:`hrlm.review.fill`; the read-outs (:func:`stats`,
:func:`agreement`, :func:`labelled_examples`) in :mod:`hrlm.review.stats`; both are re-exported here.

Example:
    >>> fill_queue(engine, ReviewPolicy())  # doctest: +SKIP
    >>> item = next_item(engine, principal)  # doctest: +SKIP
    >>> submit(engine, item["id"], principal, "correct", ["leave"])  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, or_, select, update

from hrlm.config import check_choice
from hrlm.errors import ConfigError, Conflict, LabelError, NotFound
from hrlm.review.fill import REASONS, ReviewPolicy, fill_queue, text_hash, uncertainty
from hrlm.review.stats import agreement, labelled_examples, stats
from hrlm.store.tables import REVIEW_ACTIONS, review_feedback, review_items, utcnow
from hrlm.store.users import Principal, audit
from hrlm.text import check_storable

__all__ = [
    "REASONS",
    "ReviewPolicy",
    "agreement",
    "fill_queue",
    "item_text",
    "labelled_examples",
    "next_item",
    "open_items",
    "stats",
    "submit",
    "text_hash",
    "uncertainty",
]

ANSWERS = ("accept", "correct")  # the actions that give an item a label


def _answered_by(user_id: int) -> Any:
    return select(review_feedback.c.item_id).where(
        review_feedback.c.reviewer_id == user_id, review_feedback.c.withdrawn_at.is_(None)
    )


def next_item(engine: Engine, principal: Principal, *, lease_s: float = 600.0) -> dict[str, Any] | None:
    """Lease the best open item to ``principal`` for ``lease_s`` seconds and return it; ``None`` when none is left.

    An item the reviewer holds already comes back first (a reloaded page shows the same text); an
    item they answered (even skipped) never does, nor one whose text retention removed (nothing is
    left to read). Items go by priority (``score``, highest first).
    Leasing is a compare-and-set, so two reviewers asking at once never get the same item.
    """
    for _ in range(8):
        now = utcnow()
        base = select(review_items).where(
            review_items.c.state == "open",
            review_items.c.text_purged_at.is_(None),
            review_items.c.id.not_in(_answered_by(principal.user_id)),
        )
        with engine.connect() as conn:
            held = (
                conn.execute(
                    base.where(review_items.c.leased_by == principal.user_id, review_items.c.leased_until > now)
                    # the latest lease first: an item given back by undo comes before the one shown meanwhile
                    .order_by(review_items.c.leased_until.desc(), review_items.c.id)
                    .limit(1)
                )
                .mappings()
                .first()
            )
            if held is not None:
                return _describe(conn, dict(held))
            free = (
                conn.execute(
                    base.where(or_(review_items.c.leased_until.is_(None), review_items.c.leased_until <= now))
                    .order_by(review_items.c.score.desc(), review_items.c.id)
                    .limit(8)
                )
                .mappings()
                .all()
            )
        if not free:
            return None
        until = now + dt.timedelta(seconds=lease_s)
        for row in free:
            with engine.begin() as conn:
                won = conn.execute(
                    update(review_items)
                    .where(
                        review_items.c.id == row["id"],
                        review_items.c.state == "open",
                        or_(review_items.c.leased_until.is_(None), review_items.c.leased_until <= now),
                    )
                    .values(leased_by=principal.user_id, leased_until=until)
                ).rowcount
                if won:
                    return _describe(conn, {**dict(row), "leased_by": principal.user_id, "leased_until": until})
    return None  # every candidate was taken by others eight times over: the caller may ask again


def open_items(engine: Engine, principal: Principal | None = None) -> int:
    """How many items are open and still have their text (of those ``principal`` has not answered, when given)."""
    query = (
        select(func.count())
        .select_from(review_items)
        .where(review_items.c.state == "open", review_items.c.text_purged_at.is_(None))
    )
    if principal is not None:
        query = query.where(review_items.c.id.not_in(_answered_by(principal.user_id)))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def _describe(conn: Connection, row: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer sees of an item."""
    output = row["output"] or {}
    multi = isinstance(output.get("label"), list)
    done = conn.execute(
        select(review_feedback.c.id).where(
            review_feedback.c.item_id == row["id"],
            review_feedback.c.action.in_(ANSWERS),
            review_feedback.c.withdrawn_at.is_(None),
        )
    ).all()
    return {
        "id": row["id"],
        "text": row["text"],
        "suggestion": _split(row["suggestion"]) if multi else row["suggestion"],
        "labels": list(output.get("probabilities") or {}),
        "multi_label": multi,
        "probabilities": dict(output.get("probabilities") or {}),
        "confidence": float(output.get("score", 0.0)),
        "model_version": row["model_version"],
        "reason": row["reason"],
        "score": row["score"],
        "reviews_needed": row["reviews_needed"],
        "reviews_done": len(done),
        "created_at": row["created_at"],
        "leased_until": row["leased_until"],
    }


def _split(label: str | None) -> list[str]:
    return [p for p in (label or "").split("|") if p]


def _label_of(action: str, labels: list[str] | None, item: dict[str, Any]) -> str | None:
    """The label an answer gives (``|``-joined in the task's label order), checked against the task's labels."""
    output = item["output"] or {}
    known = list(output.get("probabilities") or {})
    multi = isinstance(output.get("label"), list)
    if action in ("skip", "flag"):
        if labels:
            raise ConfigError(f"action {action!r} takes no label; send action 'correct' to change the label.")
        return None
    if action == "accept":
        if labels and _join(labels, known) != item["suggestion"]:
            raise ConfigError(
                f"action 'accept' keeps the suggestion {item['suggestion']!r}; "
                "send action 'correct' with the new label."
            )
        return str(item["suggestion"])
    if not labels:
        raise ConfigError("action 'correct' needs the right label: send `label` (or `labels` for multi-label).")
    unknown = [x for x in labels if x not in known]
    if unknown:
        raise LabelError(f"label(s) {unknown} are not labels of model {item['model_version']}; choose from {known}.")
    if not multi and len(set(labels)) != 1:
        raise ConfigError(f"model {item['model_version']} gives one label per text; send one label, not {labels}.")
    return _join(labels, known)


def _join(labels: list[str], known: list[str]) -> str:
    given = set(labels)
    return "|".join(x for x in known if x in given)


def submit(
    engine: Engine,
    item_id: int,
    principal: Principal,
    action: str,
    labels: list[str] | None = None,
    *,
    note: str | None = None,
) -> dict[str, Any]:
    """Store a reviewer's answer to an item and write ``review.<action>`` to the audit log, in one transaction.

    ``accept`` keeps the model's suggestion; ``correct`` gives ``labels`` (one, or several for a
    multi-label model); ``skip`` passes the item to someone else; ``flag`` takes it out of the queue
    for an admin (``note`` says why). The item is done once ``reviews_needed`` reviewers accepted or
    corrected it. Each answer records the item's label before it: the suggestion, or the previous
    reviewer's label.

    Raises:
        NotFound: no item has that id.
        Conflict: the item is done or flagged already, or this reviewer answered it already.
        ConfigError, LabelError: the action or the labels do not fit the item.
        DataError: ``note`` holds a character no database stores (NUL, a lone surrogate).

    Example:
        >>> submit(engine, 7, principal, "correct", ["leave"])  # doctest: +SKIP
        {'item_id': 7, 'action': 'correct', 'label': 'leave', 'previous_label': 'payroll', 'state': 'done', ...}
    """
    check_choice("action", action, REVIEW_ACTIONS)
    if note is not None:
        check_storable("note", note)
    now = utcnow()
    with engine.begin() as conn:
        # a write first locks the item: a concurrent answer waits here and then sees this one's outcome
        locked = conn.execute(
            update(review_items)
            .where(review_items.c.id == item_id, review_items.c.state == "open")
            .values(state=review_items.c.state)
        ).rowcount
        row = conn.execute(select(review_items).where(review_items.c.id == item_id)).mappings().first()
        if row is None:
            raise NotFound(f"no review item {item_id}; GET /v1/review/next gives the next one.")
        item = dict(row)
        if not locked:
            raise Conflict(f"review item {item_id} is {item['state']} already; GET /v1/review/next gives the next one.")
        answers = conn.execute(
            select(review_feedback.c.reviewer_id, review_feedback.c.action, review_feedback.c.label)
            .where(review_feedback.c.item_id == item_id, review_feedback.c.withdrawn_at.is_(None))
            .order_by(review_feedback.c.id)
        ).all()
        if any(a.reviewer_id == principal.user_id for a in answers):
            raise Conflict(f"you answered review item {item_id} already; GET /v1/review/next gives the next one.")
        label = _label_of(action, labels, item)
        given = [a.label for a in answers if a.action in ANSWERS]
        previous = given[-1] if given else item["suggestion"]
        conn.execute(
            insert(review_feedback).values(
                item_id=item_id,
                reviewer_id=principal.user_id,
                reviewer=principal.name,
                at=now,
                action=action,
                label=label,
                previous_label=previous,
                model_version=item["model_version"],
                note=note,
            )
        )
        done = len(given) + (action in ANSWERS)
        state = "flagged" if action == "flag" else "done" if done >= item["reviews_needed"] else "open"
        mine = item["leased_by"] == principal.user_id
        values: dict[str, Any] = {"state": state}
        if mine or state != "open":
            values.update(leased_by=None, leased_until=None)
        conn.execute(update(review_items).where(review_items.c.id == item_id).values(**values))
        detail: dict[str, Any] = {"label": label, "previous_label": previous, "model_version": item["model_version"]}
        if note:
            detail["note"] = note
        audit(conn, principal.name, f"review.{action}", f"review_item:{item_id}", **detail)
    return {
        "item_id": item_id,
        "action": action,
        "label": label,
        "previous_label": previous,
        "state": state,
        "reviews_done": done,
        "reviews_needed": item["reviews_needed"],
    }


def item_text(engine: Engine, item_id: int) -> tuple[str, str]:
    """The text and the suggested label of review item ``item_id`` (what an explanation of it needs).

    Raises:
        NotFound: no item has that id.
        Conflict: retention removed the item's text.
    """
    with engine.connect() as conn:
        row = conn.execute(
            select(review_items.c.text, review_items.c.suggestion).where(review_items.c.id == item_id)
        ).first()
    if row is None:
        raise NotFound(f"no review item {item_id}; GET /v1/review/next gives the next one.")
    if not row.text:
        raise Conflict(f"review item {item_id} has no text any more (retention removed it): nothing to explain.")
    return str(row.text), str(row.suggestion)
