"""Answering alike items together: the open items whose text is like an item's, and one answer given to all.

The filler keeps near-duplicates (word-pair Jaccard similarity at ``review_similarity``, 0.8) out of
the queue; items that are alike below that (a ticket written twice with different details) still
reach reviewers one by one. :func:`similar_open` finds, for an item, the open items the reviewer has
not answered whose text is at least ``threshold`` alike (the same measure,
:func:`hrlm.review.fill.similarity`), most alike first; the page shows how many before saving, and
:func:`answer_many` gives each of them the same answer, as separate answers (each in its own
transaction and audit-log entry, each checked as :func:`hrlm.review.answers.submit` checks one).

Example:
    >>> [s["id"] for s in similar_open(engine, 7, principal)]  # doctest: +SKIP
    [12, 31]
    >>> answer_many(engine, [12, 31], principal, ["leave"])["answered"]  # doctest: +SKIP
    2
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from hrlm.errors import ConfigError, HrlmError, NotFound
from hrlm.review.answers import submit
from hrlm.review.fill import similarity
from hrlm.store.tables import review_feedback, review_items
from hrlm.store.users import Principal

DEFAULT_THRESHOLD = 0.5
SCAN = 2000  # open items compared, newest first: bounds the time of one look-up
MAX_BULK = 200


def similar_open(
    engine: Engine, item_id: int, principal: Principal, *, threshold: float = DEFAULT_THRESHOLD, limit: int = 50
) -> list[dict[str, Any]]:
    """Open items alike to ``item_id`` (at least ``threshold``), not answered by ``principal``, most alike first.

    Raises:
        NotFound: no such item.
        ConfigError: ``threshold`` outside (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ConfigError(f"threshold = {threshold!r}: choose a similarity in (0, 1].")
    with engine.connect() as conn:
        row = conn.execute(
            select(review_items.c.text, review_items.c.output).where(review_items.c.id == item_id)
        ).first()
        if row is None:
            raise NotFound(f"no review item {item_id}.")
        answered = select(review_feedback.c.item_id).where(
            review_feedback.c.reviewer_id == principal.user_id, review_feedback.c.withdrawn_at.is_(None)
        )
        candidates = conn.execute(
            select(review_items.c.id, review_items.c.text, review_items.c.suggestion, review_items.c.output)
            .where(
                review_items.c.state == "open",
                review_items.c.id != item_id,
                review_items.c.text_purged_at.is_(None),
                review_items.c.id.not_in(answered),
            )
            .order_by(review_items.c.id.desc())
            .limit(SCAN)
        ).all()
    labels = set((row.output or {}).get("probabilities") or {})
    found = []
    for c in candidates:
        if set((c.output or {}).get("probabilities") or {}) != labels:
            continue  # another model's labels: one answer cannot fit both
        score = similarity(row.text, c.text)
        if score >= threshold:
            found.append(
                {"id": int(c.id), "text": c.text[:240], "suggestion": c.suggestion, "similarity": round(score, 3)}
            )
    found.sort(key=lambda f: (-f["similarity"], f["id"]))
    return found[:limit]


def answer_many(engine: Engine, item_ids: list[int], principal: Principal, labels: list[str]) -> dict[str, Any]:
    """Give each item the label(s) ``labels``: ``accept`` where that is the item's suggestion, else ``correct``.

    Items that cannot take it (answered meanwhile, done, a label their model does not know) are
    reported, not fatal.

    Returns:
        ``answered`` (how many), ``results`` (each item's :func:`submit` result) and ``refused``
        (item id and why, one line each).

    Raises:
        ConfigError: no item or too many (over 200), or no label.
    """
    if not item_ids or len(item_ids) > MAX_BULK:
        raise ConfigError(f"item_ids: send 1 to {MAX_BULK} items to answer together.")
    if not labels:
        raise ConfigError("labels: give the label the alike items get.")
    with engine.connect() as conn:
        suggestions = dict(
            conn.execute(
                select(review_items.c.id, review_items.c.suggestion).where(review_items.c.id.in_(item_ids))
            ).all()
        )
    results, refused = [], []
    for item_id in dict.fromkeys(item_ids):
        if item_id not in suggestions:
            refused.append({"item_id": item_id, "why": f"no review item {item_id}."})
            continue
        same = sorted(labels) == sorted(str(suggestions[item_id]).split("|"))
        try:
            results.append(
                submit(engine, item_id, principal, "accept" if same else "correct", None if same else labels)
            )
        except HrlmError as exc:  # answered meanwhile, done, or a label this item's model does not know
            refused.append({"item_id": item_id, "why": str(exc)})
    return {"answered": len(results), "results": results, "refused": refused}
