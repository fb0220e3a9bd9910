"""``hrlm batch``: score a large file or folder of shards, locally (streaming) or on Ray Data."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hrlm.cli.app import app, err_console, given, handles_errors, option
from hrlm.config import BatchConfig


class Engine(StrEnum):
    local = "local"
    ray = "ray"


class OutputFormat(StrEnum):
    parquet = "parquet"
    csv = "csv"


@app.command()
@handles_errors
def batch(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="Model folder written by `hrlm train`.")],
    input: Annotated[
        Path, typer.Argument(help="CSV, TSV, JSONL (optionally .gz) or Parquet file, or a folder of such shards.")
    ],
    output: Annotated[Path, typer.Argument(help="Folder of scored shards to write; a rerun resumes it.")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of settings; flags override it.")] = None,
    engine: Engine = option(BatchConfig, "engine"),
    address: str | None = option(BatchConfig, "address"),
    text_col: str = option(BatchConfig, "text_col"),
    format: OutputFormat = option(BatchConfig, "format"),
    batch_rows: int = option(BatchConfig, "batch_rows"),
    actors: int | None = option(BatchConfig, "actors"),
    threads: int | None = option(BatchConfig, "threads"),
    backend: str = option(BatchConfig, "backend"),
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Score every row of a large input into a folder of Parquet (or CSV) shards: the input's columns
    and the predictions, as `hrlm predict` writes them. Resumable: a rerun skips the finished shards."""
    from hrlm.inference.batch import run_batch

    cfg = BatchConfig.from_sources(config, **given(ctx, BatchConfig.names()))
    summary = run_batch(model, input, output, cfg, progress=not quiet)
    err_console.print(summary.line(), highlight=False, soft_wrap=True)
