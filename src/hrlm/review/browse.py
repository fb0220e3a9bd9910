"""Finding review items: filters, full-text search and pages; one item with every answer it got.

:func:`browse` filters items by state, queue reason, suggested and answered label, the model's
confidence, reviewer, model version and date, and searches their text: SQLite's FTS5 index (words
as given, all of them, prefix matches with ``*``) or PostgreSQL's full-text search
(``to_tsvector('simple', text) @@ to_tsquery('simple', 'word & pre:*')``, built from the words),
both kept by migration 0006.
Pages go newest first with an id cursor (``before``), so a page never repeats or skips an item
while new ones arrive. :func:`item_detail` is one item with its answers, withdrawn ones included
(marked), and who answered what.

Example:
    >>> page = browse(engine, BrowseFilter(state="done", q="payslip overtime"), limit=50)  # doctest: +SKIP
    >>> [row["id"] for row in page["items"]], page["next_before"]  # doctest: +SKIP
    ([812, 790, ...], 640)
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, exists, func, literal, literal_column, or_, select, text

from hrlm.errors import ConfigError, NotFound
from hrlm.store.tables import predictions, review_feedback, review_items

MAX_PAGE = 200
SNIPPET = 240  # characters of each item's text in a page of results
_WORD = re.compile(r"\w+\*?", re.UNICODE)


@dataclass(frozen=True)
class BrowseFilter:
    """What to look for; ``None`` fields do not filter."""

    state: str | None = None  # open, done, flagged
    reason: str | None = None  # low_confidence, uncertainty, random, external
    suggestion: str | None = None  # the model's label (one of an item's labels, multi-label)
    answer: str | None = None  # a label a reviewer gave (withdrawn answers not counted)
    reviewer: str | None = None  # someone who answered the item
    model_version: str | None = None
    confidence_min: float | None = None
    confidence_max: float | None = None
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    q: str | None = None  # words of the text

    def __post_init__(self) -> None:
        for name in ("confidence_min", "confidence_max"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} = {value!r}: choose a number from 0 to 1.")
        if self.q is not None and len(self.q) > 500:
            raise ConfigError("q is longer than 500 characters; search for fewer words.")


def browse(engine: Engine, flt: BrowseFilter, *, limit: int = 50, before: int | None = None) -> dict[str, Any]:
    """One page of items matching ``flt``, newest first.

    Returns:
        ``items`` (id, created_at, state, reason, suggestion, confidence, model_version, text
        (a snippet), answers (label per reviewer), holdout), ``total`` (matching items) and
        ``next_before`` (the cursor of the next page, ``None`` on the last).
    """
    if not 1 <= limit <= MAX_PAGE:
        raise ConfigError(f"limit = {limit}: choose 1 to {MAX_PAGE} items a page.")
    conditions = _conditions(engine, flt)
    base = (
        select(review_items, predictions.c.confidence)
        .select_from(review_items.outerjoin(predictions, predictions.c.id == review_items.c.prediction_id))
        .where(*conditions)
    )
    page = base.where(review_items.c.id < before) if before is not None else base
    with engine.connect() as conn:
        total = conn.execute(
            select(func.count())
            .select_from(review_items.outerjoin(predictions, predictions.c.id == review_items.c.prediction_id))
            .where(*conditions)
        ).scalar_one()
        rows = conn.execute(page.order_by(review_items.c.id.desc()).limit(limit + 1)).mappings().all()
        ids = [r["id"] for r in rows[:limit]]
        answers = _answers(conn, ids)
    items = [
        {
            "id": r["id"],
            "created_at": r["created_at"],
            "state": r["state"],
            "reason": r["reason"],
            "suggestion": r["suggestion"],
            "confidence": r["confidence"] if r["confidence"] is not None else (r["output"] or {}).get("score"),
            "model_version": r["model_version"],
            "holdout": bool(r["holdout"]),
            "text": (r["text"] or "")[:SNIPPET],
            "purged": r["text_purged_at"] is not None,
            "answers": [
                {"reviewer": a["reviewer"], "label": a["label"], "action": a["action"]}
                for a in answers[r["id"]]
                if a["withdrawn_at"] is None
            ],
        }
        for r in rows[:limit]
    ]
    return {"items": items, "total": int(total), "next_before": ids[-1] if len(rows) > limit else None}


def item_detail(engine: Engine, item_id: int) -> dict[str, Any]:
    """One item: its fields, the model's output, and every answer (withdrawn ones marked).

    Raises:
        NotFound: no item has that id.
    """
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(review_items, predictions.c.confidence, predictions.c.created_at.label("predicted_at"))
                .select_from(review_items.outerjoin(predictions, predictions.c.id == review_items.c.prediction_id))
                .where(review_items.c.id == item_id)
            )
            .mappings()
            .first()
        )
        if row is None:
            raise NotFound(f"no review item {item_id}.")
        answers = _answers(conn, [item_id])[item_id]
    item = dict(row)
    output = item.get("output") or {}
    return {
        "id": item["id"],
        "created_at": item["created_at"],
        "state": item["state"],
        "reason": item["reason"],
        "suggestion": item["suggestion"],
        "confidence": item["confidence"] if item["confidence"] is not None else output.get("score"),
        "probabilities": output.get("probabilities") or {},
        "model_version": item["model_version"],
        "holdout": bool(item["holdout"]),
        "reviews_needed": item["reviews_needed"],
        "text": item["text"],
        "purged": item["text_purged_at"] is not None,
        "answers": [
            {
                "id": a["id"],
                "reviewer": a["reviewer"],
                "at": a["at"],
                "action": a["action"],
                "label": a["label"],
                "previous_label": a["previous_label"],
                "note": a["note"],
                "source": a["source"],
                "withdrawn_at": a["withdrawn_at"],
                "withdrawn_by": a["withdrawn_by"],
            }
            for a in answers
        ],
    }


def search_terms(q: str) -> list[str]:
    """The words of a search, as the full-text indexes see them (punctuation dropped; ``*`` kept as a prefix mark).

    Example:
        >>> search_terms('payslip "over-time" pay*')
        ['payslip', 'over', 'time', 'pay*']
    """
    return _WORD.findall(q)


def _conditions(engine: Engine, flt: BrowseFilter) -> list[Any]:
    c = review_items.c
    out: list[Any] = []
    if flt.state:
        out.append(c.state == flt.state)
    if flt.reason:
        out.append(c.reason == flt.reason)
    if flt.suggestion:
        out.append(_has_label(c.suggestion, flt.suggestion))
    live = review_feedback.c.withdrawn_at.is_(None)
    if flt.answer:
        out.append(
            exists().where(review_feedback.c.item_id == c.id, live, _has_label(review_feedback.c.label, flt.answer))
        )
    if flt.reviewer:
        out.append(exists().where(review_feedback.c.item_id == c.id, live, review_feedback.c.reviewer == flt.reviewer))
    if flt.model_version:
        out.append(c.model_version == flt.model_version)
    if flt.confidence_min is not None:
        out.append(predictions.c.confidence >= flt.confidence_min)
    if flt.confidence_max is not None:
        out.append(predictions.c.confidence <= flt.confidence_max)
    if flt.since is not None:
        out.append(c.created_at >= flt.since)
    if flt.until is not None:
        out.append(c.created_at < flt.until)
    if flt.q and flt.q.strip():
        out.append(_text_search(engine, flt.q))
    return out


def _text_search(engine: Engine, q: str) -> Any:
    terms = search_terms(q)
    if not terms:
        return literal_column("1") == 0  # nothing searchable (only punctuation): no item matches
    if engine.dialect.name == "sqlite":
        # each word quoted (FTS5 syntax stays out of users' hands), a trailing * kept as a prefix query
        match = " ".join('"' + t.rstrip("*").replace('"', '""') + '"' + ("*" if t.endswith("*") else "") for t in terms)
        found = text("review_items_fts MATCH :match").bindparams(match=match)
        return review_items.c.id.in_(select(literal_column("rowid")).select_from(text("review_items_fts")).where(found))
    # the terms are word characters only (search_terms), so this tsquery holds no operator of the user's
    query = " & ".join(t.rstrip("*").lower() + (":*" if t.endswith("*") else "") for t in terms)
    return func.to_tsvector("simple", review_items.c.text).op("@@")(func.to_tsquery("simple", query))


def _has_label(column: Any, label: str) -> Any:
    """``label`` is the column's label, or one of its ``|``-joined labels (multi-label)."""
    escaped = label.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return or_(column == label, (literal("|") + column + literal("|")).like(f"%|{escaped}|%", escape="\\"))


def _answers(conn: Any, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
    if not ids:
        return out
    for row in conn.execute(
        select(review_feedback).where(review_feedback.c.item_id.in_(ids)).order_by(review_feedback.c.id)
    ).mappings():
        out[row["item_id"]].append(dict(row))
    return out


__all__ = ["MAX_PAGE", "BrowseFilter", "browse", "item_detail", "search_terms"]
