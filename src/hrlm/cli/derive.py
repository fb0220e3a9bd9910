"""CLI commands that make new models: ``pretrain`` (from text), ``compress`` and ``distill`` (from a model).

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import Device, Precision, app, err_console, given, handles_errors, option, out_console
from hrlm.config import CompressConfig, DistillConfig, PretrainConfig


@app.command()
@handles_errors
def pretrain(
    ctx: typer.Context,
    corpus: Annotated[
        Path,
        typer.Argument(
            help="Unlabelled text: a folder of .txt files, a .txt file (a document per line), or a data file."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder of the adapted encoder (use it as train --base).")],
    config: Annotated[Path | None, typer.Option("--config", help="TOML file of settings; flags override it.")] = None,
    # from here to --threads: the PretrainConfig setting of the same name
    base: str | None = option(PretrainConfig, "base"),
    text_col: str = option(PretrainConfig, "text_col"),
    max_length: int = option(PretrainConfig, "max_length"),
    mlm_probability: float = option(PretrainConfig, "mlm_probability"),
    whole_word: bool = option(PretrainConfig, "whole_word", "--whole-word"),
    nsp: bool = option(PretrainConfig, "nsp", "--nsp"),
    epochs: float = option(PretrainConfig, "epochs"),
    batch_size: int = option(PretrainConfig, "batch_size"),
    lr: float = option(PretrainConfig, "lr"),
    warmup_ratio: float = option(PretrainConfig, "warmup_ratio"),
    weight_decay: float = option(PretrainConfig, "weight_decay"),
    max_grad_norm: float = option(PretrainConfig, "max_grad_norm"),
    head_steps: int = option(PretrainConfig, "head_steps"),
    head_lr: float = option(PretrainConfig, "head_lr"),
    val_size: float = option(PretrainConfig, "val_size"),
    eval_steps: int | None = option(PretrainConfig, "eval_steps"),
    seed: int = option(PretrainConfig, "seed"),
    precision: Precision = option(PretrainConfig, "precision"),
    device: Device = option(PretrainConfig, "device"),
    threads: int | None = option(PretrainConfig, "threads"),
    workers: int = option(PretrainConfig, "workers"),
    address: str | None = option(PretrainConfig, "address"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Adapt the encoder to your text with masked-LM (and NSP) pretraining; report perplexity before and after."""
    from hrlm.training import pretrain as run_pretrain

    cfg = PretrainConfig.from_sources(config, **given(ctx, PretrainConfig.names()))
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
@handles_errors
def compress(
    ctx: typer.Context,
    model: Annotated[Path, typer.Argument(help="Model folder written by `hrlm train`.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="New model folder to write.")],
    # from here to --threads, but for --data and --train-data: the CompressConfig setting of the same name
    prune: float = option(CompressConfig, "prune"),
    prune_heads: bool = option(CompressConfig, "prune_heads", "--prune-heads"),
    quantize: str | None = option(CompressConfig, "quantize"),
    onnx: bool = option(CompressConfig, "onnx", "--onnx"),
    data: Annotated[
        Path | None,
        typer.Option(
            help="Held-out labelled data: size, docs/s, accuracy before and after; alone, checks the backends."
        ),
    ] = None,
    train_data: Annotated[
        Path | None, typer.Option(help="Labelled data for a short recovery fine-tune after pruning.")
    ] = None,
    recovery_epochs: float = option(CompressConfig, "recovery_epochs"),
    text_col: str = option(CompressConfig, "text_col"),
    label_col: str | None = option(CompressConfig, "label_col"),
    threads: int | None = option(CompressConfig, "threads"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Prune, quantize or export a model to ONNX into a new folder; compare size, speed and accuracy of its backends."""
    from hrlm.training import compress as run_compress

    cfg = CompressConfig.from_dict(given(ctx, CompressConfig.names()))
    result = run_compress(model, out, cfg, data=data, train_data=train_data, progress=not quiet, overwrite=overwrite)
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
@handles_errors
def distill(
    ctx: typer.Context,
    teacher: Annotated[Path, typer.Argument(help="Model folder of the teacher, written by `hrlm train`.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled data, split as the teacher's was (same sizes, seed).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Model folder of the student.")],
    # from here to --threads, but for --unlabelled: the DistillConfig setting of the same name
    layers: int = option(DistillConfig, "layers"),
    unlabelled: Annotated[
        Path | None, typer.Option(help="Unlabelled text the teacher labels for the student (.txt or a data file).")
    ] = None,
    temperature: float = option(DistillConfig, "temperature"),
    alpha: float = option(DistillConfig, "alpha"),
    epochs: float = option(DistillConfig, "epochs"),
    lr: float = option(DistillConfig, "lr"),
    batch_size: int = option(DistillConfig, "batch_size"),
    device: Device = option(DistillConfig, "device"),
    threads: int | None = option(DistillConfig, "threads"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train a smaller, faster student of a model on its soft labels and the gold labels."""
    from hrlm.training import distill_file

    cfg = DistillConfig.from_dict(given(ctx, DistillConfig.names()))
    result = distill_file(teacher, data, out, cfg, unlabelled=unlabelled, overwrite=overwrite, progress=not quiet)
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
