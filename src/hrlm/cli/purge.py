"""``hrlm purge``: remove stored texts and reviewers' notes past an age (dry run unless ``--apply``).

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported. The database is the
service's (``--config``, ``HRLM_DATABASE_URL``, ``--database-url``), as for ``hrlm retrain``; the
age defaults to the ``retention_days`` setting, which a running service also applies once a day.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

import typer

from hrlm.cli.app import app, handles_errors, out_console
from hrlm.cli.models import Config, DatabaseUrl, actor
from hrlm.cli.serve import migrated_store
from hrlm.errors import ConfigError

_AGE = re.compile(r"\s*(\d{1,6})\s*([hdw])\s*", re.IGNORECASE)
_UNIT_HOURS = {"h": 1, "d": 24, "w": 24 * 7}


def parse_age(text: str) -> dt.timedelta:
    """An age such as ``180d``, ``26w`` or ``36h`` as a timedelta; at least one day.

    Raises:
        ConfigError: not of the form N followed by h, d or w, or shorter than a day.

    Example:
        >>> parse_age("2w")
        datetime.timedelta(days=14)
    """
    match = _AGE.fullmatch(text)
    if match is None:
        raise ConfigError(f"--older-than {text!r} is not an age; write a number and a unit: 180d, 26w or 48h.")
    age = dt.timedelta(hours=int(match.group(1)) * _UNIT_HOURS[match.group(2).lower()])
    if age < dt.timedelta(days=1):
        raise ConfigError(f"--older-than {text!r} is under a day; purge texts at least 1d (24h) old.")
    return age


@app.command()
@handles_errors
def purge(
    older_than: Annotated[
        str | None,
        typer.Option(help="Remove texts stored longer ago than this: 180d, 26w, 48h. (default: retention_days)"),
    ] = None,
    apply: Annotated[
        bool, typer.Option("--apply", help="Remove them; without it, only count what would go (a dry run).")
    ] = False,
    config: Config = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Remove stored prediction and review texts and reviewers' notes past an age; ids, labels, audit log stay."""
    from hrlm.store.retention import purge_texts
    from hrlm.store.tables import utcnow

    with migrated_store(config, database_url=database_url) as (settings, engine):
        if older_than is not None:
            age = parse_age(older_than)
        elif settings.retention_days is not None:
            age = dt.timedelta(days=settings.retention_days)
        else:
            raise ConfigError(
                "no age to purge at: pass --older-than (180d, 26w, 48h) or set retention_days "
                "(HRLM_RETENTION_DAYS, [serve] retention_days)."
            )
        counts = purge_texts(engine, older_than=utcnow() - age, dry_run=not apply, actor=actor())
    verb = "removed" if counts.applied else "would remove"
    out_console.print(
        f"{verb} the texts of {counts.predictions} predictions and {counts.review_items} review items, "
        f"and {counts.review_notes} reviewers' notes, stored before {counts.cutoff:%Y-%m-%d %H:%M:%S} UTC",
        highlight=False,
        soft_wrap=True,
    )
    if not counts.applied:
        out_console.print("dry run: nothing changed; pass --apply to remove them.", highlight=False)
