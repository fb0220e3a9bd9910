"""CLI commands that make new models: ``pretrain`` (from text), ``compress`` and ``distill`` (from a model).

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import Device, Precision, app, err_console, handles_errors, option_value, out_console


@app.command()
@handles_errors
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
    from hrlm.training import pretrain as run_pretrain

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
        precision=option_value(precision),
        device=option_value(device),
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
@handles_errors
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
    from hrlm.training import compress as run_compress

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
@handles_errors
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
    from hrlm.training import distill_file, teacher_data_config

    cfg = teacher_data_config(
        teacher, epochs=epochs, lr=lr, batch_size=batch_size, device=option_value(device), threads=threads
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
