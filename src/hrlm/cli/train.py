"""``hrlm train``, ``evaluate`` and ``predict``: fit a model on a labelled file, score it, use it."""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import (
    BACKEND_HELP,
    Aggregate,
    Device,
    Precision,
    Truncate,
    app,
    err_console,
    handles_errors,
    option_value,
    out_console,
)


@app.command()
@handles_errors
def train(
    data: Annotated[Path, typer.Argument(help="Training data: CSV, TSV, JSONL or Parquet (optionally .gz).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder to write.")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of settings; flags override it.")] = None,
    text_col: Annotated[str | None, typer.Option(help="Column holding the text. (default: text)")] = None,
    label_col: Annotated[
        str | None, typer.Option(help='Column holding the label(s); "a,b" trains one head per column. (default: label)')
    ] = None,
    label_sep: Annotated[
        str | None, typer.Option(help="Separator of several labels in one cell (multi-label).")
    ] = None,
    task_weights: Annotated[
        str | None,
        typer.Option(help='Several label columns (--label-col "a,b"): loss weight per task, like "1,0.5".'),
    ] = None,
    split_col: Annotated[str | None, typer.Option(help="Column giving train/validation/test per row.")] = None,
    group_col: Annotated[str | None, typer.Option(help="Column of groups kept on one side of the split.")] = None,
    strict: Annotated[
        bool | None, typer.Option("--strict", help="Fail on empty texts or labels instead of dropping them.")
    ] = None,
    base: Annotated[
        str | None, typer.Option(help="Local BERT-family model folder. (default: packaged all-MiniLM-L6-v2)")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the training data. (default: 4)")] = None,
    max_length: Annotated[
        int | None, typer.Option(help="Tokens per window, special tokens included. (default: 256)")
    ] = None,
    stride: Annotated[
        int | None, typer.Option(help="Tokens shared by consecutive windows. (default: max-length / 4)")
    ] = None,
    truncate: Annotated[
        Truncate | None, typer.Option(help="none = overlapping windows; head or head+tail keep one window.")
    ] = None,
    aggregate: Annotated[
        Aggregate | None, typer.Option(help="How window logits combine per document. (default: mean)")
    ] = None,
    pooling: Annotated[
        str | None,
        typer.Option(help="Document vector: pooler (BERT's), cls, mean, or auto (pooler; mean when frozen)."),
    ] = None,
    batch_size: Annotated[int | None, typer.Option(help="Samples per batch. (default: 32)")] = None,
    grad_accum: Annotated[int | None, typer.Option(help="Batches per optimizer step. (default: 1)")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of AdamW. (default: 1e-4)")] = None,
    warmup_ratio: Annotated[
        float | None, typer.Option(help="Fraction of steps of linear warmup. (default: 0.06)")
    ] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay. (default: 0.01)")] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option(help="Gradient norm clipping threshold. (default: 1.0)")
    ] = None,
    dropout: Annotated[
        float | None, typer.Option(help="Dropout of the encoder and head. (default: the encoder's)")
    ] = None,
    class_weights: Annotated[
        str | None, typer.Option(help="none or balanced (weights classes by inverse frequency).")
    ] = None,
    patience: Annotated[
        int | None, typer.Option(help="Evaluations without improvement before stopping; 0 = never.")
    ] = None,
    metric: Annotated[
        str | None, typer.Option(help="Validation metric: macro_f1, weighted_f1, micro_f1, accuracy, loss.")
    ] = None,
    eval_steps: Annotated[
        int | None, typer.Option(help="Evaluate every N optimizer steps. (default: every epoch)")
    ] = None,
    freeze_layers: Annotated[
        int | None, typer.Option(help="Freeze the embeddings and the bottom N layers (their output is cached).")
    ] = None,
    freeze_encoder: Annotated[
        bool | None, typer.Option("--freeze-encoder", help="Train the head only, on cached features.")
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(help="finetune, setfit (few-shot), or auto: setfit below --few-shot-below labels per class."),
    ] = None,
    few_shot_below: Annotated[
        int | None, typer.Option(help="auto uses SetFit below this many labelled texts per class. (default: 16)")
    ] = None,
    setfit_pairs: Annotated[
        int | None, typer.Option(help="SetFit: positive and negative pairs drawn per text. (default: 20)")
    ] = None,
    setfit_lr: Annotated[float | None, typer.Option(help="SetFit: encoder learning rate. (default: 2e-5)")] = None,
    augment: Annotated[
        str | None,
        typer.Option(help="Augment the training split: none, noise (word deletion, swaps), contextual, both."),
    ] = None,
    augment_copies: Annotated[
        int | None, typer.Option(help="Augmented copies of each training text. (default: 1)")
    ] = None,
    augment_seed: Annotated[int | None, typer.Option(help="Seed of the augmentation. (default: 13)")] = None,
    augment_mlm: Annotated[
        str | None, typer.Option(help="Encoder with a trained masked-LM head for contextual (hrlm pretrain --out).")
    ] = None,
    val_size: Annotated[float | None, typer.Option(help="Fraction held out for validation. (default: 0.1)")] = None,
    test_size: Annotated[
        float | None, typer.Option(help="Fraction held out for the test report. (default: 0.1)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. (default: 42)")] = None,
    precision: Annotated[
        Precision | None, typer.Option(help="auto = bf16 where the hardware computes it natively.")
    ] = None,
    device: Annotated[Device | None, typer.Option(help="auto = CUDA when present.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads. (default: the cores this process may use)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Fine-tune a model on labelled text and write a model folder with its report."""
    from hrlm.config import TrainConfig
    from hrlm.training import train as run_train

    cfg = TrainConfig.from_sources(
        config,
        text_col=text_col,
        label_col=label_col,
        label_sep=label_sep,
        task_weights=task_weights,
        split_col=split_col,
        group_col=group_col,
        strict=strict,
        base=base,
        epochs=epochs,
        max_length=max_length,
        stride=stride,
        truncate=option_value(truncate),
        aggregate=option_value(aggregate),
        pooling=pooling,
        batch_size=batch_size,
        grad_accum=grad_accum,
        lr=lr,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        dropout=dropout,
        class_weights=class_weights,
        early_stopping_patience=patience,
        metric=metric,
        eval_steps=eval_steps,
        freeze_layers=freeze_layers,
        freeze_encoder=freeze_encoder,
        method=method,
        few_shot_below=few_shot_below,
        setfit_pairs=setfit_pairs,
        setfit_lr=setfit_lr,
        augment=augment,
        augment_copies=augment_copies,
        augment_seed=augment_seed,
        augment_mlm=augment_mlm,
        val_size=val_size,
        test_size=test_size,
        seed=seed,
        precision=option_value(precision),
        device=option_value(device),
        threads=threads,
    )
    result = run_train(data, out, cfg, overwrite=overwrite, progress=not quiet)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    _print_summary(result.metrics, f"{result.evaluated_on} split", out)
    if result.interrupted:
        err_console.print("[yellow]training was interrupted; the best model so far was saved.[/]")
    out_console.print(f"train time {result.train_seconds:.0f}s, {result.train_samples_per_s:.1f} samples/s")


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
    from hrlm.inference import Predictor

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
    records = [{**row, **_flatten(p.to_dict())} for row, p in zip(frame.to_dict(orient="records"), preds, strict=True)]
    if out is not None and ".csv" in out.suffixes:
        text = pd.DataFrame(records).to_csv(index=False)
    else:
        text = "".join(json.dumps(rec, ensure_ascii=False, default=str) + "\n" for rec in records)
    if out is None:
        sys.stdout.write(text)
        return
    data = text.encode("utf-8")
    with atomic_file(out, "wb") as fh:
        fh.write(gzip.compress(data) if out.suffix == ".gz" else data)
    err_console.print(f"wrote {len(records)} predictions to {out}")


def _flatten(pred: dict[str, Any]) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    label = pred["label"]
    # "predicted_label", not "label": an input file's own label column must survive next to the prediction
    flat["predicted_label"] = "|".join(label) if isinstance(label, list) else label
    flat["score"] = pred["score"]
    for lab, p in pred["probabilities"].items():
        flat[f"p_{lab}"] = p
    for task, sub in pred.get("tasks", {}).items():
        for k, v in _flatten(sub).items():
            flat[f"{task}.{k}"] = v
    return flat


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
