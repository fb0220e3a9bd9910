"""``hrlm monitor``: the production model's drift and quality over time windows, as a report.

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported. It reads the database
and the registry as ``hrlm retrain`` does (the ``[serve]`` table of ``--config``, ``HRLM_*``
variables, flags), measures the windows with :mod:`hrlm.monitoring`, writes the report (JSON, PNG,
HTML) and prints the windows and the alerts. It stores no alert: the service does that.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import app, handles_errors, out_console
from hrlm.cli.models import Config, DatabaseUrl, RegistryDir
from hrlm.cli.serve import migrated_store
from hrlm.errors import ConfigError

_SPAN = re.compile(r"^\s*(\d+)\s*([hdw])\s*$")
_UNITS = {"h": "hours", "d": "days", "w": "weeks"}


def parse_when(value: str, flag: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """A time from ``7d`` / ``12h`` / ``2w`` (that long before ``now``) or an ISO date or date-time (UTC if no zone).

    Raises:
        ConfigError: neither form, naming ``flag``.

    Example:
        >>> parse_when("2d", "--since", now=dt.datetime(2026, 12, 3, tzinfo=dt.UTC)).isoformat()
        '2026-12-01T00:00:00+00:00'
    """
    now = now or dt.datetime.now(dt.UTC)
    match = _SPAN.match(value)
    if match:
        return now - dt.timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})
    try:
        at = dt.datetime.fromisoformat(value.strip())
    except ValueError:
        raise ConfigError(
            f"{flag} {value!r}: give a span back from now (7d, 12h, 2w) or an ISO date "
            "(2026-11-30 or 2026-11-30T08:00)."
        ) from None
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


@app.command()
@handles_errors
def monitor(
    since: Annotated[str, typer.Option(help="Start: a span back from now (7d, 12h, 2w) or an ISO date.")] = "7d",
    until: Annotated[str | None, typer.Option(help="End: a span back from now or an ISO date. (default: now)")] = None,
    window: Annotated[
        str | None, typer.Option(help="Window: hour, day or week. (default: monitor_window of the [serve] settings)")
    ] = None,
    out: Annotated[Path, typer.Option(help="Report folder: monitor.json, *.png, report.html.")] = Path(
        "monitor-report"
    ),
    model: Annotated[
        Path | None, typer.Option(help="Model folder to monitor. (default: the registry's production version)")
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(help="Labelled file the traffic is compared with. (default: holdout_data of the settings)"),
    ] = None,
    config: Config = None,
    database_url: DatabaseUrl = None,
    registry_dir: RegistryDir = None,
) -> None:
    """Drift and quality of the production model over time windows: a report (HTML, PNG, JSON) and the alerts."""
    from hrlm.inference import Predictor
    from hrlm.lifecycle import Registry
    from hrlm.monitoring import check_rules, compute_series, reference_for, write_monitor_report

    now = dt.datetime.now(dt.UTC)
    start = parse_when(since, "--since", now=now)
    end = parse_when(until, "--until", now=now) if until is not None else now
    if end <= start:
        raise ConfigError(f"--until ({end.isoformat()}) must be after --since ({start.isoformat()}).")
    flags = {"database_url": database_url, "registry_dir": str(registry_dir) if registry_dir else None}
    with migrated_store(config, **flags) as (settings, engine):
        monitor_settings = settings.monitor_settings()
        if window is not None:
            monitor_settings = monitor_settings.replace(window=window)
        version = None
        if model is None:
            production = Registry(engine, settings.registry_dir).production()
            if production is None:
                raise ConfigError("no production version in the registry; promote one, or pass --model DIR.")
            model, version = production.path, production.version
        data = reference or (Path(settings.holdout_data) if settings.holdout_data else None)
        if data is None:
            raise ConfigError("no reference data: pass --reference FILE (labelled), or set holdout_data.")
        predictor = Predictor.from_dir(model, backend="torch-fp32")
        ref = reference_for(model, data, predictor)
        series = compute_series(
            engine, predictor, ref, since=start, until=end, settings=monitor_settings, model_version=version
        )
        alerts = check_rules(series, monitor_settings)
    folder = write_monitor_report(series, alerts, out)
    table = Table(title=f"windows ({monitor_settings.window})")
    for name in ("window", "volume", "label PSI", "length PSI", "drift AUC", "reviewed acc.", "CBPE acc.", "alerts"):
        table.add_column(name, justify="left" if name == "window" else "right")
    by_window: dict[str, int] = {}
    for a in alerts:
        by_window[a.window] = by_window.get(a.window, 0) + 1
    for w in series.windows:
        table.add_row(
            w.label + ("" if w.judged else " (not judged)"),
            str(w.volume),
            _num(w.label_psi),
            _num(w.length_psi),
            _num(w.embedding_drift),
            _num(w.accuracy) + (f" ({w.reviewed})" if w.reviewed else ""),
            _num(w.estimated_accuracy),
            str(by_window.get(w.label, 0)),
        )
    out_console.print(table)
    for a in alerts:
        out_console.print(f"[bold red]alert[/] {escape(a.rule)}: {escape(a.message)}", highlight=False)
    if not alerts:
        out_console.print("no alerts")
    out_console.print(f"report: {folder / 'report.html'}", highlight=False, soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
