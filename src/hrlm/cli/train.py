"""``hrlm train``, ``evaluate`` and ``predict``: fit a model on a labelled file, score it, use it."""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import (
    Aggregate,
    Device,
    Precision,
    Truncate,
    app,
    err_console,
    given,
    handles_errors,
    option,
    option_value,
    out_console,
)
from hrlm.config import BACKEND_HELP, TrainConfig


@app.command()
@handles_errors
def train(
    ctx: typer.Context,
    data: Annotated[Path, typer.Argument(help="Training data: CSV, TSV, JSONL or Parquet (optionally .gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of settings; flags override it.")] = None,
    # from here to --threads: the TrainConfig setting of the same name (--patience: early_stopping_patience)
    text_col: str = option(TrainConfig, "text_col"),
    label_col: str = option(TrainConfig, "label_col"),
    label_sep: str | None = option(TrainConfig, "label_sep"),
    task_weights: str | None = option(TrainConfig, "task_weights"),
    split_col: str | None = option(TrainConfig, "split_col"),
    group_col: str | None = option(TrainConfig, "group_col"),
    strict: bool = option(TrainConfig, "strict", "--strict"),
    base: str | None = option(TrainConfig, "base"),
    epochs: float = option(TrainConfig, "epochs"),
    max_length: int = option(TrainConfig, "max_length"),
    stride: int | None = option(TrainConfig, "stride"),
    truncate: Truncate = option(TrainConfig, "truncate"),
    aggregate: Aggregate = option(TrainConfig, "aggregate"),
    pooling: str = option(TrainConfig, "pooling"),
    batch_size: int = option(TrainConfig, "batch_size"),
    grad_accum: int = option(TrainConfig, "grad_accum"),
    lr: float = option(TrainConfig, "lr"),
    warmup_ratio: float = option(TrainConfig, "warmup_ratio"),
    weight_decay: float = option(TrainConfig, "weight_decay"),
    max_grad_norm: float = option(TrainConfig, "max_grad_norm"),
    dropout: float | None = option(TrainConfig, "dropout"),
    attention_dropout: float | None = option(TrainConfig, "attention_dropout"),
    group_by_length: bool = option(TrainConfig, "group_by_length", "--group-by-length"),
    packing: bool | None = option(TrainConfig, "packing", "--packing/--no-packing"),
    class_weights: str = option(TrainConfig, "class_weights"),
    ema_epochs: float = option(TrainConfig, "ema_epochs"),
    early_stopping_patience: int = option(TrainConfig, "early_stopping_patience", "--patience"),
    metric: str = option(TrainConfig, "metric"),
    eval_steps: int | None = option(TrainConfig, "eval_steps"),
    freeze_layers: int = option(TrainConfig, "freeze_layers"),
    freeze_encoder: bool = option(TrainConfig, "freeze_encoder", "--freeze-encoder"),
    method: str = option(TrainConfig, "method"),
    few_shot_below: int = option(TrainConfig, "few_shot_below"),
    setfit_pairs: int = option(TrainConfig, "setfit_pairs"),
    setfit_lr: float = option(TrainConfig, "setfit_lr"),
    augment: str = option(TrainConfig, "augment"),
    augment_copies: int = option(TrainConfig, "augment_copies"),
    augment_seed: int = option(TrainConfig, "augment_seed"),
    augment_mlm: str | None = option(TrainConfig, "augment_mlm"),
    val_size: float = option(TrainConfig, "val_size"),
    test_size: float = option(TrainConfig, "test_size"),
    seed: int = option(TrainConfig, "seed"),
    precision: Precision = option(TrainConfig, "precision"),
    device: Device = option(TrainConfig, "device"),
    threads: int | None = option(TrainConfig, "threads"),
    workers: int = option(TrainConfig, "workers"),
    address: str | None = option(TrainConfig, "address"),
    auto_budget: float = option(TrainConfig, "auto_budget"),
    cv_folds: int = option(TrainConfig, "cv_folds"),
    intended_use: str | None = option(TrainConfig, "intended_use"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fine-tune a model on labelled text and write a model folder with its report."""
    from hrlm.training import train as run_train

    cfg = TrainConfig.from_sources(config, **given(ctx, TrainConfig.names()))
    with _notes_as_logged() as shown:
        result = run_train(data, out, cfg, overwrite=overwrite, progress=not quiet)
    for note in result.notes:
        if note not in shown:
            err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    _print_summary(result.metrics, f"{result.evaluated_on} split", out)
    if result.interrupted:
        err_console.print("[yellow]training was interrupted; the best model so far was saved.[/]")
    out_console.print(f"train time {result.train_seconds:.0f}s, {result.train_samples_per_s:.1f} samples/s")


@contextlib.contextmanager
def _notes_as_logged() -> Iterator[set[str]]:
    """Print a log record that carries a ``note`` (which method ``auto`` chose, and why) as a note when it
    is logged, not after training, and instead of its INFO line; yield the notes printed."""
    shown: set[str] = set()

    def as_note(record: logging.LogRecord) -> bool:
        note = getattr(record, "note", None)
        if note is None:
            return True
        err_console.print(f"[yellow]note:[/] {escape(str(note))}", highlight=False)
        shown.add(str(note))
        return False

    logger = logging.getLogger("hrlm")
    logger.addFilter(as_note)
    try:
        yield shown
    finally:
        logger.removeFilter(as_note)


def _print_summary(metrics: dict[str, Any], what: str, folder: Path | None) -> None:
    rows = metrics.get("tasks") or {"": metrics}  # a multi-task model: one row per task
    names = ("n", "accuracy", "macro_f1", "weighted_f1", "micro_f1", "roc_auc", "ece")
    shown = [n for n in names if any(m.get(n) is not None for m in rows.values())]
    table = Table(title=f"metrics on the {what}", show_header=True)
    if len(rows) > 1:
        table.add_column("task")
    for name in shown:
        table.add_column(name, justify="right")
    for task, m in rows.items():
        cells = ["-" if m.get(n) is None else str(m[n]) if n == "n" else f"{m[n]:.4f}" for n in shown]
        table.add_row(*([task] if len(rows) > 1 else []), *cells)
    out_console.print(table)
    if folder is not None:
        out_console.print(f"model:  {folder}")
        out_console.print(f"report: {folder / 'report' / 'report.html'}")


@app.command()
@handles_errors
def evaluate(
    model: Annotated[Path, typer.Argument(help="Model folder written by `hrlm train`.")],
    data: Annotated[Path, typer.Argument(help="Labelled data file.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Report folder. (default: ./report-<model>-<data>)")
    ] = None,
    text_col: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_col: Annotated[str | None, typer.Option(help="Column holding the label(s). (default: the model's)")] = None,
    label_sep: Annotated[str | None, typer.Option(help="Separator of several labels in one cell.")] = None,
    split: Annotated[str | None, typer.Option(help="Only rows whose --split-col value is this (e.g. test).")] = None,
    split_col: Annotated[str | None, typer.Option(help="Column giving the split per row.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    truncate: Annotated[
        Truncate | None,
        typer.Option(help="Read long texts differently from training: none (windows), head, head+tail."),
    ] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing non-empty --out folder.")] = False,
) -> None:
    """Score a model on labelled data and write metrics.json, plots and report.html."""
    from hrlm.inference import evaluate as run_evaluate

    target = out or Path(f"report-{model.name}-{data.name.split('.')[0]}")
    metrics = run_evaluate(
        model,
        data,
        target,
        text_col=text_col,
        label_col=label_col,
        label_sep=label_sep,
        split=split,
        split_col=split_col,
        threads=threads,
        progress=True,
        truncate=option_value(truncate),
        backend=backend,
        overwrite=overwrite,
    )
    _print_summary(metrics, data.name, None)
    out_console.print(f"report: {target / 'report.html'}")


@app.command()
@handles_errors
def predict(
    model: Annotated[Path, typer.Argument(help="Model folder written by `hrlm train`.")],
    input: Annotated[str, typer.Argument(help="Data file, or - for stdin (one text per line, or JSONL).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Output .csv or .jsonl. (default: JSONL on stdout)")
    ] = None,
    text_col: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    truncate: Annotated[
        Truncate | None,
        typer.Option(help="Read long texts differently from training: none (windows), head, head+tail."),
    ] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
) -> None:
    """Predict labels and every class probability for a file or stdin."""
    import pandas as pd

    from hrlm._fs import atomic_file
    from hrlm.data import read_table
    from hrlm.errors import DataError
    from hrlm.inference import Predictor, flatten_prediction

    fmt = _output_format(out) if out is not None else "jsonl"  # before the model runs, which may take minutes
    frame = _read_stdin(text_col) if input == "-" else read_table(input)
    if text_col not in frame.columns:
        raise DataError(
            f"column {text_col!r} not found in {input}; columns are {sorted(frame.columns)}. "
            "Pass --text-col to name the text column."
        )
    texts = ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in frame[text_col].tolist()]
    predictor = Predictor.from_dir(model, threads=threads, truncate=option_value(truncate), backend=backend)
    err_console.print(f"backend: {predictor.backend_name} ({escape(predictor.backend_reason)})", highlight=False)
    preds = predictor.predict(texts, progress=True)
    records = [
        {**row, **flatten_prediction(p.to_dict())}
        for row, p in zip(frame.to_dict(orient="records"), preds, strict=True)
    ]
    if fmt == "csv":
        text = pd.DataFrame(records).to_csv(index=False)
    else:
        text = "".join(json.dumps(rec, ensure_ascii=False, default=str) + "\n" for rec in records)
    if out is None:
        sys.stdout.write(text)
        return
    data = text.encode("utf-8")
    with atomic_file(out, "wb") as fh:
        fh.write(gzip.compress(data) if out.suffix.lower() == ".gz" else data)
    err_console.print(f"wrote {len(records)} predictions to {out}")


PREDICTION_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _output_format(out: Path) -> str:
    """``csv`` or ``jsonl`` from ``--out``'s extension (``.gz`` compresses either)."""
    from hrlm.errors import ConfigError

    suffixes = [s.lower() for s in out.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    fmt = PREDICTION_FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        supported = ", ".join(f"{ext}, {ext}.gz" for ext in PREDICTION_FORMATS)
        raise ConfigError(f"--out {out.name}: unknown file type; predictions are written as {supported}.")
    return fmt


def _read_stdin(text_col: str) -> Any:
    import pandas as pd

    from hrlm.errors import DataError

    lines = [line.rstrip("\n") for line in sys.stdin if line.strip()]
    if not lines:
        raise DataError("stdin is empty; pipe one text per line, or JSON objects with a text field.")
    if lines[0].lstrip().startswith("{"):
        try:
            return pd.DataFrame([json.loads(line) for line in lines])
        except ValueError as exc:
            raise DataError(f"stdin looks like JSONL but a line is not valid JSON ({exc}).") from None
    return pd.DataFrame({text_col: lines})
