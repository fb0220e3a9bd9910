"""What the review queue shows admins and gives retraining: counts, reviewer agreement, labelled examples.

Re-exported by :mod:`hrlm.review.answers`; kept apart so the queue's logic and its read-outs stay short.
"""

from __future__ import annotations

import math
import warnings
from collections import defaultdict
from typing import Any

from sqlalchemy import Engine, func, select

from hrlm.store.tables import REVIEW_ACTIONS, review_feedback, review_fill, review_items, utcnow

ANSWERS = ("accept", "correct")
ADJUDICATE = "adjudicate"  # an admin's answer settling a disagreement (review.corrections.adjudicate)
FLAGGED_SHOWN = 50  # the newest flagged items stats() lists with their notes


def _answers(engine: Engine, item_ids: list[int] | None = None) -> dict[int, list[Any]]:
    """Accept/correct answers per item, in the order they were given (withdrawn answers left out)."""
    query = (
        select(review_feedback.c.item_id, review_feedback.c.reviewer, review_feedback.c.label)
        .where(review_feedback.c.action.in_(ANSWERS), review_feedback.c.withdrawn_at.is_(None))
        .order_by(review_feedback.c.id)
    )
    if item_ids is not None:
        query = query.where(review_feedback.c.item_id.in_(item_ids))
    out: dict[int, list[Any]] = defaultdict(list)
    with engine.connect() as conn:
        for row in conn.execute(query):
            out[row.item_id].append(row)
    return out


def adjudications(engine: Engine, item_ids: list[int] | None = None) -> dict[int, str]:
    """The label an admin settled each adjudicated item with (the latest adjudication that counts)."""
    query = (
        select(review_feedback.c.item_id, review_feedback.c.label)
        .where(review_feedback.c.action == ADJUDICATE, review_feedback.c.withdrawn_at.is_(None))
        .order_by(review_feedback.c.id)
    )
    if item_ids is not None:
        query = query.where(review_feedback.c.item_id.in_(item_ids))
    with engine.connect() as conn:
        return {row.item_id: row.label for row in conn.execute(query)}


def agreed_label(labels: set[str], adjudicated: str | None) -> str | None:
    """An item's label: an admin's adjudication, else the reviewers' one label; ``None`` when they disagree."""
    if adjudicated is not None:
        return adjudicated
    return next(iter(labels)) if len(labels) == 1 else None


def labelled_examples(engine: Engine, *, holdout: bool) -> list[tuple[str, str]]:
    """``(text, label)`` of every done item on one side of the holdout split, oldest first.

    The label is the reviewers' (``|``-joined for several labels), or an admin's adjudication. Items
    whose two reviewers disagree are left out until an admin adjudicates: nobody knows which label is
    right. Texts removed by retention are left out. Retraining reads ``holdout=False``;
    the promotion gate measures on ``holdout=True``.

    Example:
        >>> labelled_examples(engine, holdout=False)  # doctest: +SKIP
        [('my payslip is missing overtime', 'payroll'), ...]
    """
    query = (
        select(review_items.c.id, review_items.c.text)
        .where(review_items.c.state == "done", review_items.c.holdout.is_(holdout))
        .order_by(review_items.c.id)
    )
    with engine.connect() as conn:
        items = conn.execute(query).all()
    answers = _answers(engine)
    settled = adjudications(engine)
    out = []
    for item_id, text in items:
        label = agreed_label({a.label for a in answers.get(item_id, [])}, settled.get(item_id))
        if label is not None and text:
            out.append((text, label))
    return out


def flagged_items(engine: Engine, *, limit: int = FLAGGED_SHOWN, action: str = "flag") -> list[dict[str, Any]]:
    """The newest flags reviewers raised, with who flagged the item, when, and their note.

    ``action="skip"`` lists the newest skips the same way (``flagged_by`` is then who skipped).
    Answers taken back are left out.

    Returns:
        Up to ``limit`` dicts, newest first: ``item_id``, ``flagged_by``, ``at``, ``note`` (``None``
        when none was written or retention removed it), ``note_purged``, ``model_version``,
        ``suggestion``, ``reason`` (why the item was queued) and ``state`` (the item's, now).

    Example:
        >>> flagged_items(engine, limit=1)  # doctest: +SKIP
        [{'item_id': 7, 'flagged_by': 'ana', 'note': 'names a colleague', 'state': 'flagged', ...}]
    """
    query = (
        select(
            review_feedback.c.item_id,
            review_feedback.c.reviewer,
            review_feedback.c.at,
            review_feedback.c.note,
            review_feedback.c.note_purged_at,
            review_feedback.c.model_version,
            review_items.c.suggestion,
            review_items.c.reason,
            review_items.c.state,
        )
        .join(review_items, review_items.c.id == review_feedback.c.item_id)
        .where(review_feedback.c.action == action, review_feedback.c.withdrawn_at.is_(None))
        .order_by(review_feedback.c.at.desc(), review_feedback.c.id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [
        {
            "item_id": r.item_id,
            "flagged_by": r.reviewer,
            "at": r.at,
            "note": r.note,
            "note_purged": r.note_purged_at is not None,
            "model_version": r.model_version,
            "suggestion": r.suggestion,
            "reason": r.reason,
            "state": r.state,
        }
        for r in rows
    ]


def stats(engine: Engine) -> dict[str, Any]:
    """The queue at a glance: items by state and reason, reviewers' answers, and what the filler skipped.

    Returns:
        ``open``, ``leased``, ``done``, ``flagged``, ``holdout_done``, ``disagreements``,
        ``by_reason`` (reason -> state -> count), ``reviewers`` (name and a count per action),
        ``fill`` (the filler's cursor and totals), ``notes`` (sentences worth showing a person) and
        ``flagged_items`` (the newest flags with their notes: :func:`flagged_items`).
    """
    now = utcnow()
    by_reason: dict[str, dict[str, int]] = defaultdict(lambda: {"open": 0, "done": 0, "flagged": 0})
    with engine.connect() as conn:
        for reason, state, n in conn.execute(
            select(review_items.c.reason, review_items.c.state, func.count()).group_by(
                review_items.c.reason, review_items.c.state
            )
        ):
            by_reason[reason][state] = int(n)
        leased = conn.execute(
            select(func.count())
            .select_from(review_items)
            .where(review_items.c.state == "open", review_items.c.leased_until > now)
        ).scalar()
        holdout_done = conn.execute(
            select(func.count())
            .select_from(review_items)
            .where(review_items.c.state == "done", review_items.c.holdout.is_(True))
        ).scalar()
        per: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(REVIEW_ACTIONS, 0))
        for reviewer, action, n in conn.execute(
            select(review_feedback.c.reviewer, review_feedback.c.action, func.count())
            .where(review_feedback.c.withdrawn_at.is_(None), review_feedback.c.action.in_(REVIEW_ACTIONS))
            .group_by(review_feedback.c.reviewer, review_feedback.c.action)
        ):
            per[reviewer][action] = int(n)
        done_ids = [i for (i,) in conn.execute(select(review_items.c.id).where(review_items.c.state == "done"))]
        fill = conn.execute(select(review_fill).where(review_fill.c.name == "fill")).mappings().first()
    settled = adjudications(engine)
    disagreements = sum(
        1
        for item, rows in _answers(engine, done_ids).items()
        if len({r.label for r in rows}) > 1 and item not in settled
    )
    totals = {state: sum(r[state] for r in by_reason.values()) for state in ("open", "done", "flagged")}
    fill_info = (
        {k: fill[k] for k in ("last_prediction_id", "scanned", "queued", "skipped_no_text", "skipped_duplicate")}
        | {"updated_at": fill["updated_at"]}
        if fill is not None
        else None
    )
    notes = []
    if fill_info and fill_info["skipped_no_text"]:
        notes.append(
            f"{fill_info['skipped_no_text']} predictions were stored without text (store_text = none) "
            "and cannot be reviewed; set store_text = redacted to review them."
        )
    if disagreements:
        notes.append(f"{disagreements} double-reviewed items have two different labels and are left out of retraining.")
    return {
        **totals,
        "leased": int(leased or 0),
        "holdout_done": int(holdout_done or 0),
        "disagreements": disagreements,
        "by_reason": dict(by_reason),
        "reviewers": [
            {"reviewer": name, **counts, "total": sum(counts.values())} for name, counts in sorted(per.items())
        ],
        "fill": fill_info,
        "notes": notes,
        "flagged_items": flagged_items(engine),
    }


def cohen_kappa(a: list[str], b: list[str]) -> float | None:
    """Cohen's kappa of two raters' labels; ``None`` where it is undefined (one label only, or no items)."""
    if not a or len(set(a) | set(b)) < 2:
        return None
    from sklearn.metrics import cohen_kappa_score

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # 0/0 when chance agreement is 1: reported as None
        value = float(cohen_kappa_score(a, b))
    return None if math.isnan(value) else round(value, 4)


def agreement(engine: Engine) -> dict[str, Any]:
    """How often two reviewers of the same item agree: Cohen's kappa overall and per pair of reviewers.

    Reads items with at least two accept/correct answers (the first two count). Overall kappa
    treats the first and the second answer as two raters; a pair's kappa puts each reviewer on
    their own side. Kappa is ``None`` where it is undefined (every answer the same label).

    Returns:
        ``items``, ``agreement`` (share of items with equal labels), ``kappa``, and ``pairs``
        (``reviewers``, ``items``, ``agreement``, ``kappa``), pairs with the most items first.
    """
    first, second = [], []
    pairs: dict[tuple[str, str], tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    for rows in _answers(engine).values():
        if len(rows) < 2:
            continue
        one, two = rows[0], rows[1]
        first.append(one.label or "")
        second.append(two.label or "")
        (x, y) = (one, two) if one.reviewer <= two.reviewer else (two, one)
        pairs[(x.reviewer, y.reviewer)][0].append(x.label or "")
        pairs[(x.reviewer, y.reviewer)][1].append(y.label or "")

    def share(a: list[str], b: list[str]) -> float | None:
        return round(sum(p == q for p, q in zip(a, b, strict=True)) / len(a), 4) if a else None

    out_pairs: list[dict[str, Any]] = [
        {"reviewers": list(names), "items": len(a), "agreement": share(a, b), "kappa": cohen_kappa(a, b)}
        for names, (a, b) in sorted(pairs.items(), key=lambda kv: (-len(kv[1][0]), kv[0]))
    ]
    return {
        "items": len(first),
        "agreement": share(first, second),
        "kappa": cohen_kappa(first, second),
        "pairs": out_pairs,
    }
