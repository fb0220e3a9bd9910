"""The ``hrlm`` command line: thin wrappers over the library.

Exit status: 0 on success, 1 for a user error (one line on stderr, no traceback unless
``--debug``), 2 for bad usage.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import sys
from collections.abc import Callable
from enum import Enum, StrEnum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from hrlm import __version__
from hrlm.errors import HrlmError

app = typer.Typer(
    name="hrlm",
    help="Fine-tune, evaluate and serve BERT-style models on HR text.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out_console = Console()
err_console = Console(stderr=True)
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])


def _handles_errors(func: F) -> F:
    """Turn an HrlmError into one line on stderr and exit status 1 (a traceback with --debug)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except HrlmError as exc:
            if _state["debug"]:
                raise
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err_console.print("interrupted")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _version(value: bool) -> None:
    if value:
        out_console.print(f"hrlm {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    _state["debug"] = debug
    logging.basicConfig(level=logging.DEBUG if debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("hrlm").setLevel(logging.INFO if not debug else logging.DEBUG)


class Truncate(StrEnum):
    none = "none"
    head = "head"
    head_tail = "head+tail"


class Aggregate(StrEnum):
    mean = "mean"
    max = "max"


class Precision(StrEnum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


def _value(x: Any) -> Any:
    return x.value if isinstance(x, Enum) else x


BACKEND_HELP = (
    "Inference backend: auto, torch-fp32, torch-bf16, torch-fp16 (CUDA), torch-int8, onnx-fp32, onnx-int8. "
    "auto uses a quantized one only where `hrlm compress` recorded a passing accuracy check."
)


@app.command()
@_handles_errors
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
        truncate=_value(truncate),
        aggregate=_value(aggregate),
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
        precision=_value(precision),
        device=_value(device),
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
@_handles_errors
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
    from hrlm.evaluation import evaluate as run_evaluate

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
        truncate=_value(truncate),
        backend=backend,
    )
    _print_summary(metrics, data.name, None)
    out_console.print(f"report: {target / 'report.html'}")


@app.command()
@_handles_errors
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
    predictor = Predictor.from_dir(model, threads=threads, truncate=_value(truncate), backend=backend)
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


@app.command()
@_handles_errors
def pretrain(
    corpus: Annotated[
        Path,
        typer.Argument(
            help="Unlabelled text: a folder of .txt files, a .txt file (a document per line), or a data file."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the adapted encoder (use it as train --base).")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of settings; flags override it.")] = None,
    base: Annotated[
        str | None, typer.Option(help="Local BERT-family model folder. (default: packaged all-MiniLM-L6-v2)")
    ] = None,
    text_col: Annotated[
        str | None, typer.Option(help="Column holding the text of a data file. (default: text)")
    ] = None,
    max_length: Annotated[int | None, typer.Option(help="Tokens per input. (default: 256)")] = None,
    mlm_probability: Annotated[float | None, typer.Option(help="Share of tokens masked. (default: 0.15)")] = None,
    whole_word: Annotated[
        bool | None, typer.Option("--whole-word", help="Mask whole words rather than single word pieces.")
    ] = None,
    nsp: Annotated[
        bool | None, typer.Option("--nsp", help="Add next-sentence prediction on sentence pairs (BERT only).")
    ] = None,
    epochs: Annotated[float | None, typer.Option(help="Passes over the corpus. (default: 1)")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Inputs per batch. (default: 32)")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate of AdamW. (default: 5e-5)")] = None,
    warmup_ratio: Annotated[
        float | None, typer.Option(help="Fraction of steps of linear warmup. (default: 0.06)")
    ] = None,
    weight_decay: Annotated[float | None, typer.Option(help="AdamW weight decay. (default: 0.01)")] = None,
    max_grad_norm: Annotated[
        float | None, typer.Option(help="Gradient norm clipping threshold. (default: 1.0)")
    ] = None,
    head_steps: Annotated[
        int | None, typer.Option(help="Steps training a new MLM head with the encoder frozen. (default: 300)")
    ] = None,
    head_lr: Annotated[float | None, typer.Option(help="Learning rate of that warm-up. (default: 1e-3)")] = None,
    val_size: Annotated[
        float | None, typer.Option(help="Fraction of documents held out to measure perplexity. (default: 0.05)")
    ] = None,
    eval_steps: Annotated[int | None, typer.Option(help="Measure every N steps. (default: every epoch)")] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed. (default: 42)")] = None,
    precision: Annotated[
        Precision | None, typer.Option(help="auto = bf16 where the hardware computes it natively.")
    ] = None,
    device: Annotated[Device | None, typer.Option(help="auto = CUDA when present.")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads. (default: the cores this process may use)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Adapt the encoder to your text with masked-LM (and NSP) pretraining; report perplexity before and after."""
    from hrlm.config import PretrainConfig
    from hrlm.pretrain import pretrain as run_pretrain

    cfg = PretrainConfig.from_sources(
        config,
        base=base,
        text_col=text_col,
        max_length=max_length,
        mlm_probability=mlm_probability,
        whole_word=whole_word,
        nsp=nsp,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        warmup_ratio=warmup_ratio,
        weight_decay=weight_decay,
        max_grad_norm=max_grad_norm,
        head_steps=head_steps,
        head_lr=head_lr,
        val_size=val_size,
        eval_steps=eval_steps,
        seed=seed,
        precision=_value(precision),
        device=_value(device),
        threads=threads,
    )
    result = run_pretrain(corpus, out, cfg, overwrite=overwrite, progress=not quiet)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    table = Table(title="held-out masked-LM")
    for col in ("", "loss", "perplexity", "NSP accuracy"):
        table.add_column(col, justify="right")
    for name, m in (
        ("before" + (" (head warmed up)" if result.head_was_new else ""), result.before),
        ("after", result.after),
    ):
        table.add_row(name, f"{m['mlm_loss']:.4f}", f"{m['perplexity']:.2f}", str(m.get("nsp_accuracy", "-")))
    out_console.print(table)
    if result.interrupted:
        err_console.print("[yellow]pretraining was interrupted; the weights so far were saved.[/]")
    out_console.print(f"encoder: {out}  (train with --base {out})")
    out_console.print(f"time {result.train_seconds:.0f}s, {result.samples_per_s:.1f} samples/s")


@app.command()
@_handles_errors
def compress(
    model: Annotated[Path, typer.Argument(help="Model folder written by `hrlm train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New model folder to write (must not exist).")],
    prune: Annotated[
        float, typer.Option(help="Fraction of weights (with --prune-heads: of each layer's heads) to remove.")
    ] = 0.0,
    prune_heads: Annotated[
        bool, typer.Option("--prune-heads", help="Remove whole attention heads: smaller and faster.")
    ] = False,
    quantize: Annotated[str | None, typer.Option(help="int8: check the int8 backends (and export int8 ONNX).")] = None,
    onnx: Annotated[bool, typer.Option("--onnx", help="Export model.onnx (and model.int8.onnx) into --out.")] = False,
    data: Annotated[
        Path | None, typer.Option(help="Held-out labelled data: size, docs/s, accuracy before and after.")
    ] = None,
    train_data: Annotated[
        Path | None, typer.Option(help="Labelled data for a short recovery fine-tune after pruning.")
    ] = None,
    recovery_epochs: Annotated[float, typer.Option(help="Length of the recovery fine-tune, in epochs.")] = 1.0,
    text_col: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_col: Annotated[str | None, typer.Option(help="Column holding the label(s). (default: the model's)")] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads.")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Prune, quantize or export a model to ONNX into a new folder; compare size, speed and accuracy."""
    from hrlm.compress import compress as run_compress

    result = run_compress(
        model,
        out,
        prune=prune,
        prune_heads=prune_heads,
        quantize=quantize,
        onnx=onnx,
        data=data,
        train_data=train_data,
        recovery_epochs=recovery_epochs,
        text_col=text_col,
        label_col=label_col,
        threads=threads,
        progress=not quiet,
    )
    if result.rows:
        table = Table(title=f"{model.name} -> {out.name} on {data.name if data else ''}")
        for key in result.rows[-1]:
            table.add_column(key, justify="left" if key == "system" else "right", no_wrap=key == "system")
        for row in result.rows:
            table.add_row(*["" if row.get(k) is None else str(row[k]) for k in result.rows[-1]])
        out_console.print(table)
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    passed = sorted(name for name, check in result.checks.items() if check["passed"] and name != "torch-fp32")
    out_console.print(f"model: {out}")
    out_console.print(f"agreement check passed (auto may use): {', '.join(passed) or 'none'}")


@app.command()
@_handles_errors
def distill(
    teacher: Annotated[Path, typer.Argument(help="Model folder of the teacher, written by `hrlm train`.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled data, split as the teacher's was (same sizes, seed).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder of the student.")],
    layers: Annotated[int, typer.Option(help="Transformer layers of the student, taken from the teacher's.")] = 3,
    unlabelled: Annotated[
        Path | None, typer.Option(help="Unlabelled text the teacher labels for the student (.txt or a data file).")
    ] = None,
    temperature: Annotated[float, typer.Option(help="Softens both models' logits in the soft loss.")] = 2.0,
    alpha: Annotated[
        float, typer.Option(help="Weight of the teacher's soft labels; 1 - alpha weighs gold labels.")
    ] = 0.5,
    epochs: Annotated[float, typer.Option(help="Passes over the training text.")] = 3.0,
    lr: Annotated[float, typer.Option(help="Peak learning rate of AdamW.")] = 1e-4,
    batch_size: Annotated[int, typer.Option(help="Windows per batch.")] = 32,
    device: Annotated[Device, typer.Option(help="auto = CUDA when present.")] = Device.auto,
    threads: Annotated[int | None, typer.Option(help="CPU threads. (default: the cores this process may use)")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a smaller, faster student of a model on its soft labels and the gold labels."""
    from hrlm.config import TrainConfig
    from hrlm.distill import distill_file
    from hrlm.modeling import read_meta

    taught = read_meta(teacher).train_config
    keys = ("text_col", "label_col", "label_sep", "split_col", "group_col", "val_size", "test_size", "seed")
    cfg = TrainConfig.from_dict({k: taught[k] for k in keys if k in taught}).replace(
        epochs=epochs, lr=lr, batch_size=batch_size, device=_value(device), threads=threads
    )
    result = distill_file(
        teacher,
        data,
        out,
        cfg,
        unlabelled=unlabelled,
        layers=layers,
        temperature=temperature,
        alpha=alpha,
        overwrite=overwrite,
        progress=not quiet,
    )
    for note in result.notes:
        err_console.print(f"[yellow]note:[/] {escape(note)}", highlight=False)
    table = Table(title="teacher and student on the held-out split")
    cols = ("layers", "parameters", "accuracy", "macro_f1", "docs_per_s", "size_mb")
    table.add_column("")
    for col in cols:
        table.add_column(col, justify="right")
    for name, row in (("teacher", result.teacher), ("student", result.student)):
        table.add_row(
            name,
            *[
                f"{row[c]:.4f}" if isinstance(row.get(c), float) and row[c] < 1.5 else str(row.get(c, "-"))
                for c in cols
            ],
        )
    out_console.print(table)
    out_console.print(f"student: {out}")


@app.command()
@_handles_errors
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo model and report.")] = Path(
        "demo-output"
    ),
    epochs: Annotated[float, typer.Option(help="Passes over the sample tickets.")] = 6.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a helpdesk-ticket router on the packaged sample tickets, report, and predict."""
    from hrlm.demo import run_demo

    run_demo(out, epochs=epochs, progress=not quiet, console=out_console)


DB_HELP = (
    "Database URL: sqlite:///FILE or postgresql://USER@HOST/DB. (default: $HRLM_DATABASE_URL, else sqlite:///hrlm.db)"
)
SERVE_CONFIG_HELP = "TOML file whose [serve] table holds service settings; HRLM_* variables and flags override it."

users_app = typer.Typer(help="API users of the service: add (prints a token), list, revoke.", no_args_is_help=True)
db_app = typer.Typer(help="The service's database: apply migrations.", no_args_is_help=True)
app.add_typer(users_app, name="users")
app.add_typer(db_app, name="db")


def _migrated_engine(config: Path | None, database_url: str | None) -> Any:
    from hrlm.service.settings import ServiceSettings
    from hrlm.store import make_engine, upgrade

    settings = ServiceSettings.load(config, database_url=database_url)
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    upgrade(engine)
    return engine


@users_app.command("add")
@_handles_errors
def users_add(
    name: Annotated[str, typer.Argument(help="User name (letters, digits, . _ @ -).")],
    role: Annotated[str, typer.Option(help="client (predict), reviewer (review queue) or admin (everything).")],
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """Create a user and print their API token, alone on the last line (it is shown only this once)."""
    from hrlm.store import create_user

    engine = _migrated_engine(config, database_url)
    try:
        token = create_user(engine, name, role)
    finally:
        engine.dispose()
    typer.echo(f"created user {name} with role {role}; keep this token now, it is not shown again:")
    typer.echo(token)


@users_app.command("list")
@_handles_errors
def users_list(
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """List users, their roles and whether they are revoked (tokens are never shown)."""
    from hrlm.store import list_users

    engine = _migrated_engine(config, database_url)
    try:
        rows = list_users(engine)
    finally:
        engine.dispose()
    table = Table(title=f"{len(rows)} users")
    for col in ("name", "role", "created", "revoked", "active tokens"):
        table.add_column(col)
    for r in rows:
        revoked = f"{r['revoked_at']:%Y-%m-%d %H:%M}" if r["revoked_at"] else "-"
        table.add_row(r["name"], r["role"], f"{r['created_at']:%Y-%m-%d %H:%M}", revoked, str(r["active_tokens"]))
    out_console.print(table)


@users_app.command("revoke")
@_handles_errors
def users_revoke(
    name: Annotated[str, typer.Argument(help="User to revoke.")],
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """Revoke a user and every token of theirs (a running service notices within auth_cache_s, 5 s)."""
    from hrlm.store import revoke_user

    engine = _migrated_engine(config, database_url)
    try:
        n = revoke_user(engine, name)
    finally:
        engine.dispose()
    out_console.print(f"revoked user {escape(name)} ({n} token{'s' if n != 1 else ''})", soft_wrap=True)


@db_app.command("upgrade")
@_handles_errors
def db_upgrade(
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
) -> None:
    """Apply the database migrations (hrlm serve also does at start)."""
    from hrlm.store.db import current_revision, describe

    engine = _migrated_engine(config, database_url)
    try:
        out_console.print(
            f"{describe(engine)} is at revision {current_revision(engine)} (head)", highlight=False, soft_wrap=True
        )
    finally:
        engine.dispose()


@app.command()
@_handles_errors
def serve(
    model: Annotated[
        Path | None, typer.Option(help="Model folder to serve. (default: $HRLM_MODEL; later the registry's production)")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Interface to bind. (default: 127.0.0.1, loopback only)")] = None,
    port: Annotated[int | None, typer.Option(help="Port. (default: 8000)")] = None,
    config: Annotated[Path | None, typer.Option("--config", help=SERVE_CONFIG_HELP)] = None,
    database_url: Annotated[str | None, typer.Option(help=DB_HELP)] = None,
    backend: Annotated[str | None, typer.Option(help=BACKEND_HELP)] = None,
    threads: Annotated[int | None, typer.Option(help="CPU threads of the model. (default: all cores)")] = None,
    batching: Annotated[
        bool | None, typer.Option("--batching/--no-batching", help="Micro-batch concurrent requests. (default: on)")
    ] = None,
    max_batch: Annotated[int | None, typer.Option(help="Most texts in one model call. (default: 32)")] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="Longest wait for a batch to fill, in ms. (default: 5)")
    ] = None,
) -> None:
    """Serve a model over HTTP: /v1/predict, /v1/models, /healthz, /readyz, /metrics (see README)."""
    import uvicorn

    from hrlm.service import create_app
    from hrlm.service.core import default_source
    from hrlm.service.settings import ServiceSettings
    from hrlm.store import make_engine, ping, upgrade

    settings = ServiceSettings.load(
        config,
        model=str(model) if model is not None else None,
        host=host,
        port=port,
        database_url=database_url,
        backend=backend,
        threads=threads,
        batching=batching,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
    )
    # check what can be checked before uvicorn starts, so a mistake is one line, not a traceback
    ref = default_source(settings).current()
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        upgrade(engine) if settings.migrate else ping(engine)
    finally:
        engine.dispose()
    if settings.host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]note:[/] binding {settings.host}: reachable beyond this machine; put TLS in front.")
    err_console.print(
        f"serving {ref.version} on http://{settings.host}:{settings.port} "
        f"(batching {'on' if settings.batching else 'off'}, database {settings.database_url.split('@')[-1]})",
        highlight=False,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        server_header=False,
        timeout_graceful_shutdown=30,
    )


def main() -> None:
    """Entry point of the ``hrlm`` script."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
