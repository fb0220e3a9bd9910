"""Prediction records: what the service writes for every text it answers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Engine, func, insert, select

from hrlm.store.tables import predictions


def insert_predictions(engine: Engine, rows: Sequence[dict[str, Any]]) -> None:
    """Insert prediction rows in one transaction (all of them or none)."""
    if rows:
        with engine.begin() as conn:
            conn.execute(insert(predictions), list(rows))


def count_predictions(engine: Engine, request_ids: Sequence[str] | None = None) -> int:
    """Number of stored predictions, of some requests only when ``request_ids`` is given."""
    query = select(func.count()).select_from(predictions)
    if request_ids is not None:
        query = query.where(predictions.c.request_id.in_(list(request_ids)))
    with engine.connect() as conn:
        return int(conn.execute(query).scalar() or 0)


def stored_request_ids(engine: Engine) -> set[str]:
    """Every request id with at least one stored prediction."""
    with engine.connect() as conn:
        return {r for (r,) in conn.execute(select(predictions.c.request_id).distinct())}


def predictions_of(engine: Engine, request_id: str) -> list[dict[str, Any]]:
    """The stored predictions of one request, in the order of its texts."""
    query = select(predictions).where(predictions.c.request_id == request_id).order_by(predictions.c.position)
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query).mappings()]
