"""The reviewed data as a file `hrlm train` reads: CSV, JSONL or Parquet, one row per reviewed text.

Each done item whose reviewers agree, or that an admin adjudicated (withdrawn answers left out, as
for retraining), becomes a row:
``text`` and ``label`` (the columns ``hrlm train`` reads by default; ``|``-joined labels of a
multi-label model become a list in JSONL and Parquet), then ``holdout`` (kept out of retraining to
measure candidates), ``item_id``, ``reason`` (why the item was queued), ``suggestion`` (the model's
label), ``model_version``, ``reviewers`` and ``answered_at`` (the last answer). A text whose retention
removed it is left out (``purged`` counts them).

Example:
    >>> rows, counts = reviewed_rows(engine)  # doctest: +SKIP
    >>> write_rows(rows, "reviewed.csv")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, select

from hrlm._fs import atomic_file
from hrlm.config import check_choice
from hrlm.errors import ConfigError
from hrlm.review.stats import adjudications, agreed_label
from hrlm.store.tables import review_feedback, review_items
from hrlm.store.users import audit

FORMATS = ("csv", "jsonl", "parquet")
HOLDOUT = ("include", "exclude", "only")
COLUMNS = ("text", "label", "holdout", "item_id", "reason", "suggestion", "model_version", "reviewers", "answered_at")
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # a spreadsheet would run such a CSV cell as a formula


def reviewed_rows(engine: Engine, *, holdout: str = "include") -> tuple[list[dict[str, Any]], dict[str, int]]:
    """The reviewed texts with their agreed labels, oldest item first, and counts of what was left out.

    Args:
        holdout: ``include`` every reviewed text, ``exclude`` the feedback holdout (what retraining
            trains on), or ``only`` the holdout (what the gate measures on).

    Returns:
        The rows (see the module) and ``{"rows", "disagreements", "purged"}``.
    """
    check_choice("holdout", holdout, HOLDOUT)
    query = select(review_items).where(review_items.c.state == "done").order_by(review_items.c.id)
    if holdout != "include":
        query = query.where(review_items.c.holdout.is_(holdout == "only"))
    answers: dict[int, list[Any]] = defaultdict(list)
    with engine.connect() as conn:
        items = conn.execute(query).mappings().all()
        for row in conn.execute(
            select(review_feedback.c.item_id, review_feedback.c.reviewer, review_feedback.c.label, review_feedback.c.at)
            .where(review_feedback.c.action.in_(("accept", "correct")), review_feedback.c.withdrawn_at.is_(None))
            .order_by(review_feedback.c.id)
        ):
            answers[row.item_id].append(row)
    rows: list[dict[str, Any]] = []
    counts = {"rows": 0, "disagreements": 0, "purged": 0}
    settled = adjudications(engine)
    for item in items:
        given = answers.get(item["id"], [])
        label = agreed_label({a.label for a in given}, settled.get(item["id"]))
        if label is None:
            counts["disagreements"] += len({a.label for a in given}) > 1
            continue
        if not item["text"] or item.get("text_purged_at") is not None:
            counts["purged"] += 1
            continue
        rows.append(
            {
                "text": item["text"],
                "label": label,
                "holdout": bool(item["holdout"]),
                "item_id": int(item["id"]),
                "reason": item["reason"],
                "suggestion": item["suggestion"],
                "model_version": item["model_version"],
                "reviewers": "|".join(dict.fromkeys(a.reviewer for a in given)),
                "answered_at": max(a.at for a in given).isoformat(),
            }
        )
    counts["rows"] = len(rows)
    return rows, counts


def render_rows(rows: list[dict[str, Any]], fmt: str) -> bytes:
    """The rows as a file's bytes: CSV (formula-safe), JSONL, or Parquet.

    Raises:
        ConfigError: an unknown format.
    """
    check_choice("format", fmt, FORMATS)
    multi = any("|" in r["label"] for r in rows)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
        return out.getvalue().encode("utf-8")
    shaped = [{**r, "label": r["label"].split("|") if multi else r["label"]} for r in rows]
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in shaped).encode("utf-8")
    import pandas as pd

    buffer = io.BytesIO()
    pd.DataFrame(shaped, columns=list(COLUMNS)).to_parquet(buffer, index=False)
    return buffer.getvalue()


def write_rows(rows: list[dict[str, Any]], path: str | Path, fmt: str | None = None) -> Path:
    """Write the rows to ``path`` atomically, in ``fmt`` (default: from the file's suffix).

    Raises:
        ConfigError: the format cannot be told from the suffix, or is unknown.
    """
    path = Path(path)
    fmt = fmt or path.suffix.lstrip(".").lower()
    if fmt not in FORMATS:
        raise ConfigError(f"cannot tell the format of {path.name}: use a .csv, .jsonl or .parquet name, or --format.")
    data = render_rows(rows, fmt)
    with atomic_file(path, "wb") as fh:
        fh.write(data)
    return path


def log_export(engine: Engine, actor: str, fmt: str, counts: dict[str, int]) -> None:
    """Write ``review.export`` to the audit log: who took the reviewed texts out, in what format, how many."""
    with engine.begin() as conn:
        audit(conn, actor, "review.export", None, format=fmt, **counts)


def _cell(value: Any) -> Any:
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value
