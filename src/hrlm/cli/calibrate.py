"""``hrlm calibrate``: measure, on this machine, how a model's Predictor batches best, and cache it.

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported. A Predictor calibrates
by itself the first time it scores enough text (see :mod:`hrlm.inference.calibrate`); this command
does it ahead of time, on texts like the ones the model will see (a service's micro-batches are too
small to calibrate on), and shows what was measured.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from hrlm.cli.app import Truncate, app, err_console, handles_errors, option_value, out_console
from hrlm.config import BACKEND_HELP


@app.command()
@handles_errors
def calibrate(
    model: Annotated[Path, typer.Argument(help="Model folder written by `hrlm train`.")],
    data: Annotated[
        Path | None,
        typer.Argument(help="Texts like those the model will score. (default: the packaged sample tickets)"),
    ] = None,
    text_col: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    threads: Annotated[int | None, typer.Option(help="CPU threads. (default: measured)")] = None,
    truncate: Annotated[
        Truncate | None,
        typer.Option(help="Read long texts differently from training: none (windows), head, head+tail."),
    ] = None,
    backend: Annotated[str, typer.Option(help=BACKEND_HELP)] = "auto",
) -> None:
    """Measure how a model batches fastest on this machine (budget, packing, attention, threads, streams); cache it."""
    from hrlm.data import read_table
    from hrlm.errors import ConfigError, DataError
    from hrlm.inference import Predictor
    from hrlm.inference.calibrate import NOISE_LIMIT, STREAM_REPEATS, bucket

    source = data or Path(str(resources.files("hrlm") / "samples" / "helpdesk_tickets.csv"))
    frame = read_table(source)
    if text_col not in frame.columns:
        raise DataError(
            f"column {text_col!r} not found in {source}; columns are {sorted(frame.columns)}. "
            "Pass --text-col to name the text column."
        )
    texts = [str(v) for v in frame[text_col].tolist() if isinstance(v, str) and v.strip()]
    if not texts:
        raise DataError(f"{source}: no text in column {text_col!r}.")
    predictor = Predictor.from_dir(model, threads=threads, truncate=option_value(truncate), backend=backend)
    if predictor.calibrator is None:
        raise ConfigError("calibration is off (HRLM_CALIBRATE=off); unset it to calibrate.")
    windows = predictor.encode(texts).windows
    err_console.print(f"backend: {predictor.backend_name}; timing on {len(windows)} windows...", highlight=False)
    chosen = predictor.calibrate(windows)
    cal = predictor.calibrator.calibration
    table = Table(title=f"batching of {predictor.backend_name} on this machine (fastest pass of each)")
    for name in ("choice", "seconds", ""):
        table.add_column(name, justify="left" if name != "seconds" else "right")
    picked = f"{'packed' if chosen.packing else 'padded'}@{chosen.max_tokens}/t{chosen.threads}"
    # the budgets on the sample, then the stream counts (OpenVINO) on the sample repeated: each compared among its own
    budgets = {k: v for k, v in chosen.seconds.items() if "/s" not in k}
    streams = {k: v for k, v in chosen.seconds.items() if "/s" in k}
    # with streams timed (OpenVINO), the choice is one of their rows, which may have another budget
    chosen_row = f"{picked}/s{chosen.streams}x{STREAM_REPEATS}" if streams else picked
    for rows in (budgets, streams):
        best = min(rows.values(), default=0.0)
        for choice, seconds in sorted(rows.items(), key=lambda kv: kv[1]):
            # the fastest unless packed batches (or streams) won by less than the margin
            note = "fastest" if seconds == best else f"+{seconds / best - 1:.0%}"
            table.add_row(choice, f"{seconds:.3f}", f"{note}, chosen" if choice == chosen_row else note)
    out_console.print(table)
    if cal.attention_ms:
        widths = ", ".join(
            f"{w}: plain {t['plain_ms']:.2f} ms / SDPA {t['sdpa_ms']:.2f} ms" for w, t in cal.attention_ms.items()
        )
        out_console.print(f"attention as plain matrix products up to {cal.plain_up_to} tokens ({widths})")
    size = bucket([len(w) for w in windows], predictor.max_length)
    out_console.print(
        f"chosen for windows of up to about {size} tokens: {'packed' if chosen.packing else 'padded'} "
        f"batches of {chosen.max_tokens} tokens, {chosen.threads} threads"
        + (f", {chosen.streams} batches at once (OpenVINO streams)" if chosen.streams > 1 else "")
    )
    if chosen.noise is not None:
        kept = "cached" if chosen.noise <= NOISE_LIMIT else "not cached: another process was using the machine?"
        out_console.print(f"rounds of one choice differed by {chosen.noise:.0%} ({kept})")
    out_console.print(f"cached in {predictor.calibrator.path}")
