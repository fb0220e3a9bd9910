"""What each label means: label guidelines, edited by admins, versioned, shown to reviewers.

A guideline is a description and a few example texts for one label. Every edit is a new version
(a new row of ``label_guidelines``, migration 0006), written with an audit-log entry in the same
transaction; the newest version of each label is the one reviewers see, and older ones stay for the
record (:func:`history`).

Example:
    >>> save(engine, "payroll", "Pay, payslips and overtime.", ["My payslip is late"], actor="boss")  # doctest: +SKIP
    {'label': 'payroll', 'version': 1, ...}
    >>> current(engine)["payroll"]["description"]  # doctest: +SKIP
    'Pay, payslips and overtime.'
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, func, insert, select

from hrlm.errors import ConfigError, NotFound
from hrlm.store.tables import label_guidelines, utcnow
from hrlm.store.users import audit
from hrlm.text import check_storable

MAX_DESCRIPTION = 4000
MAX_EXAMPLES = 10
MAX_EXAMPLE_CHARS = 500


def current(engine: Engine) -> dict[str, dict[str, Any]]:
    """The newest guideline of every label that has one: label -> description, examples, version, by whom, when."""
    newest = (
        select(label_guidelines.c.label, func.max(label_guidelines.c.version).label("version"))
        .group_by(label_guidelines.c.label)
        .subquery()
    )
    query = select(label_guidelines).join(
        newest, (label_guidelines.c.label == newest.c.label) & (label_guidelines.c.version == newest.c.version)
    )
    with engine.connect() as conn:
        return {row["label"]: _out(row) for row in conn.execute(query.order_by(label_guidelines.c.label)).mappings()}


def history(engine: Engine, label: str) -> list[dict[str, Any]]:
    """Every version of ``label``'s guideline, newest first.

    Raises:
        NotFound: the label has no guideline.
    """
    with engine.connect() as conn:
        rows = (
            conn.execute(
                select(label_guidelines)
                .where(label_guidelines.c.label == label)
                .order_by(label_guidelines.c.version.desc())
            )
            .mappings()
            .all()
        )
    if not rows:
        raise NotFound(f"label {label!r} has no guideline yet; an admin writes one on the admin page.")
    return [_out(r) for r in rows]


def save(engine: Engine, label: str, description: str, examples: list[str], *, actor: str) -> dict[str, Any]:
    """Write a new version of ``label``'s guideline (and ``guideline.save`` in the audit log); the new version.

    Raises:
        ConfigError: an empty label or description, too long a description, too many or too long examples.
        DataError: a character no database stores.
    """
    label, description = label.strip(), description.strip()
    examples = [e.strip() for e in examples if e.strip()]
    if not label or len(label) > 200:
        raise ConfigError("label: give the label's name (1 to 200 characters).")
    if not description or len(description) > MAX_DESCRIPTION:
        raise ConfigError(f"description: say what the label means in 1 to {MAX_DESCRIPTION} characters.")
    if len(examples) > MAX_EXAMPLES or any(len(e) > MAX_EXAMPLE_CHARS for e in examples):
        raise ConfigError(f"examples: at most {MAX_EXAMPLES} examples of at most {MAX_EXAMPLE_CHARS} characters each.")
    for name, value in (("label", label), ("description", description), *(("examples", e) for e in examples)):
        check_storable(name, value)
    with engine.begin() as conn:
        last = conn.execute(
            select(func.max(label_guidelines.c.version)).where(label_guidelines.c.label == label)
        ).scalar()
        row = {
            "label": label,
            "version": int(last or 0) + 1,
            "description": description,
            "examples": examples,
            "created_at": utcnow(),
            "created_by": actor[:100],
        }
        conn.execute(insert(label_guidelines).values(**row))
        audit(conn, actor, "guideline.save", f"label:{label}"[:200], version=row["version"], examples=len(examples))
    return _out(row)


def _out(row: Any) -> dict[str, Any]:
    return {
        "label": row["label"],
        "version": int(row["version"]),
        "description": row["description"],
        "examples": list(row["examples"] or []),
        "created_at": row["created_at"],
        "created_by": row["created_by"],
    }
