"""``hrlm review export``: the reviewed data as a file ``hrlm train`` reads (CSV, JSONL or Parquet).

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported. The database is the
service's (``--config``, ``HRLM_DATABASE_URL``, ``--database-url``), as for ``hrlm jobs``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hrlm.cli.app import app, handles_errors, out_console
from hrlm.cli.models import Config, DatabaseUrl, actor
from hrlm.cli.serve import migrated_store

review_app = typer.Typer(help="The review queue's data.", no_args_is_help=True)
app.add_typer(review_app, name="review")


@review_app.command("export")
@handles_errors
def export(
    out: Annotated[Path, typer.Argument(help="File to write: .csv, .jsonl or .parquet (or give --format).")],
    fmt: Annotated[
        str | None, typer.Option("--format", help="csv, jsonl or parquet. (default: from OUT's suffix)")
    ] = None,
    holdout: Annotated[
        str,
        typer.Option(
            help="include every reviewed text, exclude the feedback holdout (what retraining uses), or only it."
        ),
    ] = "include",
    config: Config = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Write the reviewed texts with their agreed labels: text, label, holdout, item_id, reviewers, ..."""
    from hrlm.review.export import log_export, reviewed_rows, write_rows

    with migrated_store(config, database_url=database_url) as (_, engine):
        rows, counts = reviewed_rows(engine, holdout=holdout)
        path = write_rows(rows, out, fmt)
        log_export(engine, actor(), path.suffix.lstrip(".") if fmt is None else fmt, counts)
    out_console.print(
        f"wrote {counts['rows']} reviewed texts to {path} "
        f"(left out: {counts['disagreements']} where reviewers disagree, {counts['purged']} whose text was purged); "
        f"train on it: hrlm train {path}"
    )
