"""``hrlm audit``: a bias audit of a model on a data file with group columns (selection rates, impact ratios).

Exit status: 0 when the audit passes, 3 (:data:`hrlm.fairness.AUDIT_FAILED_EXIT`) when an impact ratio
is under ``--min-impact-ratio`` or the counterfactual flip rate is over ``--max-flip-rate``, 1 for
an error, 2 for bad usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import app, err_console, handles_errors, out_console

if TYPE_CHECKING:
    from hrlm.fairness import AuditResult

AUDIT_FAILED_EXIT = 3  # hrlm.fairness.AUDIT_FAILED_EXIT, written here so `--help` needs no import of fairlearn


@app.command()
@handles_errors
def audit(
    model: Annotated[
        Path, typer.Argument(help="Model folder written by `hrlm train` (or a registry version's folder).")
    ],
    data: Annotated[Path, typer.Argument(help="CSV, JSONL or Parquet file with a text column and the group columns.")],
    group_col: Annotated[
        list[str],
        typer.Option(
            "--group-col",
            help="A group column (sex, race, age band, ...); repeat it for several: each, their pairs (3+) and "
            "their intersection are audited.",
        ),
    ],
    positive: Annotated[
        str, typer.Option(help="The label that counts as selected (the favourable outcome, e.g. interview).")
    ],
    out: Annotated[
        Path | None, typer.Option(help="Folder for audit.json and audit.html. (default: audit-MODEL beside it)")
    ] = None,
    text_col: Annotated[str, typer.Option(help="Column holding the text.")] = "text",
    label_col: Annotated[
        str | None, typer.Option(help="Column of true labels, for per-group accuracy, F1 and calibration.")
    ] = None,
    min_impact_ratio: Annotated[
        float,
        typer.Option(
            min=0.01,
            max=1.0,
            help="Impact ratios under this are flagged and fail the audit (0.8: the four-fifths rule, "
            "29 CFR 1607.4(D)).",
        ),
    ] = 0.8,
    max_flip_rate: Annotated[
        float | None,
        typer.Option(min=0.0, max=1.0, help="Also fail when more of the gender-swapped texts change label than this."),
    ] = None,
    counterfactual: Annotated[
        bool,
        typer.Option(
            "--counterfactual/--no-counterfactual",
            help="Swap gendered names, pronouns and titles in each text and count changed predictions.",
        ),
    ] = True,
    data_source: Annotated[
        str | None, typer.Option(help="Where the data comes from, for the report. (default: the file's path)")
    ] = None,
    explanation: Annotated[
        str | None, typer.Option(help="How the data was gathered and what it covers, for the published summary.")
    ] = None,
    distribution_date: Annotated[
        str | None, typer.Option(help="When the model was first used on real decisions (LL144's distribution date).")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="CPU threads. (default: all cores)")] = None,
) -> None:
    """Bias audit: selection rate and impact ratio per group and intersection, the four-fifths rule flagged,
    small (<2%) and unknown categories apart, and a counterfactual gender-swap probe. Writes audit.json and
    audit.html. Exit status 0: passed; 3: an impact ratio under --min-impact-ratio (or the flip rate over
    --max-flip-rate); 1: an error."""
    from hrlm.fairness import run_audit, write_audit_report

    result = run_audit(
        model,
        data,
        group_cols=group_col,
        positive=positive,
        text_col=text_col,
        label_col=label_col,
        threshold=min_impact_ratio,
        data_source=data_source,
        explanation=explanation,
        counterfactual=counterfactual,
        max_flip_rate=max_flip_rate,
        distribution_date=distribution_date,
        threads=threads,
    )
    folder = out if out is not None else model.resolve().parent / f"audit-{model.resolve().name}"
    paths = write_audit_report(result, folder)
    for table in audit_tables(result):
        out_console.print(table)
    cf = result.counterfactual
    if cf is not None:
        rate = "-" if cf["flip_rate"] is None else f"{cf['flip_rate']:.3f}"
        out_console.print(
            f"counterfactual probe: {cf['flipped']} of {cf['swapped']} texts with gendered words changed label "
            f"when swapped (flip rate {rate})",
            highlight=False,
        )
    for note in result.notes:
        err_console.print(f"note: {escape(note)}", highlight=False)
    ok, reasons = result.passed()
    out_console.print(f"report: {escape(str(paths['html']))} and {escape(paths['json'].name)}", highlight=False)
    if ok:
        out_console.print("[bold green]audit passed[/]")
        return
    for reason in reasons:
        err_console.print(f"[red]{escape(reason)}[/]", highlight=False, soft_wrap=True)
    err_console.print(f"[bold red]audit failed[/] (exit status {AUDIT_FAILED_EXIT})")
    raise typer.Exit(AUDIT_FAILED_EXIT)


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}" if isinstance(value, float) else str(value)


def audit_tables(result: AuditResult) -> list[Table]:
    """One Rich table per grouping; flagged rows in red, small categories dimmed."""
    tables = []
    labelled = result.label_col is not None
    for g in result.groupings:
        table = Table(
            title=f"{g['name']}: {g['n']} texts, {g['unknown']} unknown", title_justify="left", show_lines=False
        )
        for name in ("category", "count", "selection rate", "impact ratio", "scoring rate", "scoring IR"):
            table.add_column(name, justify="left" if name == "category" else "right")
        if labelled:
            for name in ("accuracy", "F1", "ECE"):
                table.add_column(name, justify="right")
        table.add_column("flag")
        for row, small in [(c, False) for c in g["categories"]] + [(c, True) for c in g["small_categories"]]:
            cells = [
                escape(row["category"]),
                str(row["count"]),
                _num(row["selection_rate"]),
                _num(row["impact_ratio"]),
                _num(row["scoring_rate"]),
                _num(row["scoring_impact_ratio"]),
            ]
            if labelled:
                cells += [_num(row.get("accuracy")), _num(row.get("f1")), _num(row.get("ece"))]
            flag = f"under {g['small_share']:.0%}: not compared" if small else "four-fifths" if row["flagged"] else ""
            style = "red" if row["flagged"] else "dim" if small else None
            table.add_row(*cells, flag, style=style)
        tables.append(table)
    return tables
