"""Retention: remove stored texts and reviewers' notes past an age, keeping every other fact.

What goes: the text of predictions (set to ``NULL``), the text of review items (set to ``''``: the
column is ``NOT NULL``) and reviewers' notes (``NULL``), each stamped with when it was removed
(``text_purged_at``, ``note_purged_at``). What stays: the rows, their ids, labels, outputs,
confidences, model versions, the reviewers' answers, and the audit log, so that counts, agreement
and the trail survive. One purge is one transaction and one ``retention.purge`` audit entry
(none when nothing was left to remove).

Example:
    >>> cutoff = utcnow() - dt.timedelta(days=180)  # doctest: +SKIP
    >>> counts = purge_texts(engine, older_than=cutoff, dry_run=True, actor="cli")  # doctest: +SKIP
    >>> counts.total  # doctest: +SKIP
    1520
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, Engine, func, select, update

from hrlm.store.tables import predictions, review_feedback, review_items, utcnow
from hrlm.store.users import audit

__all__ = ["PurgeCounts", "purge_texts"]


@dataclass(frozen=True)
class PurgeCounts:
    """What a purge removed (or, on a dry run, would remove), and the cutoff it applied."""

    cutoff: dt.datetime
    predictions: int
    review_items: int
    review_notes: int
    applied: bool

    @property
    def total(self) -> int:
        """Texts and notes removed in all."""
        return self.predictions + self.review_items + self.review_notes

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cutoff": self.cutoff.isoformat(), "total": self.total}


def _targets(cutoff: dt.datetime) -> list[tuple[Any, Any, dict[str, Any]]]:
    """(table, condition, new values) of each kind of text past ``cutoff``; the values without the timestamp."""
    return [
        (
            predictions,
            (predictions.c.created_at < cutoff) & predictions.c.text.is_not(None),
            {"text": None, "stamp": predictions.c.text_purged_at},
        ),
        (
            review_items,
            (review_items.c.created_at < cutoff) & (review_items.c.text != ""),
            {"text": "", "stamp": review_items.c.text_purged_at},
        ),
        (
            review_feedback,
            (review_feedback.c.at < cutoff) & review_feedback.c.note.is_not(None),
            {"note": None, "stamp": review_feedback.c.note_purged_at},
        ),
    ]


def _count(conn: Connection, table: Any, condition: Any) -> int:
    return int(conn.execute(select(func.count()).select_from(table).where(condition)).scalar() or 0)


def purge_texts(engine: Engine, *, older_than: dt.datetime, dry_run: bool, actor: str) -> PurgeCounts:
    """Remove the texts of predictions and review items, and reviewers' notes, stored before ``older_than``.

    Args:
        engine: a migrated database.
        older_than: the cutoff; a naive datetime is read as UTC. Predictions and review items
            created before it lose their text, answers given before it their note.
        dry_run: count only; nothing changes and nothing is written to the audit log. Applied, the
            purge writes one ``retention.purge`` audit entry with the counts and the cutoff, unless it
            removed nothing.
        actor: who the ``retention.purge`` audit entry names (``cli:ana``, ``service``).

    Returns:
        The counts, the cutoff (UTC) and whether they were applied.

    Example:
        >>> purge_texts(engine, older_than=cutoff, dry_run=False, actor="service")  # doctest: +SKIP
        PurgeCounts(cutoff=..., predictions=1200, review_items=300, review_notes=20, applied=True)
    """
    cutoff = older_than.replace(tzinfo=dt.UTC) if older_than.tzinfo is None else older_than.astimezone(dt.UTC)
    counts: list[int] = []
    if dry_run:
        with engine.connect() as conn:
            counts = [_count(conn, table, cond) for table, cond, _ in _targets(cutoff)]
        return PurgeCounts(cutoff, counts[0], counts[1], counts[2], applied=False)
    now = utcnow()
    with engine.begin() as conn:
        for table, cond, values in _targets(cutoff):
            stamp = values.pop("stamp")
            result = conn.execute(update(table).where(cond).values({**values, stamp.name: now}))
            counts.append(int(result.rowcount or 0))
        out = PurgeCounts(cutoff, counts[0], counts[1], counts[2], applied=True)
        if out.total:  # a daily purge that finds nothing leaves no entry
            audit(
                conn,
                actor,
                "retention.purge",
                None,
                cutoff=cutoff.isoformat(),
                predictions=out.predictions,
                review_items=out.review_items,
                review_notes=out.review_notes,
            )
    return out
