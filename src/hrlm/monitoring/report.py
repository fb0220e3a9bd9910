"""``hrlm monitor``'s report: ``monitor.json``, charts over time as PNG, and one HTML page.

The charts: ``volume.png`` (predictions per window, judged windows solid), ``drift.png`` (the
label, confidence and length PSIs and the embedding drift AUC, with their thresholds),
``quality.png`` (reviewed random-slice accuracy with its 95% Wilson interval, the label-free CBPE
estimate, scheduled holdout evaluations, and the reference accuracy). The page follows the model
report's look (:data:`hrlm.report.REPORT_CSS`) and embeds the charts; every file is written
atomically. :func:`monitor_figures` gives the charts as PNG bytes for a page that shows them itself.

Example:
    >>> write_monitor_report(series, alerts, "monitor-report")  # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrlm._fs import atomic_file, write_json
from hrlm.monitoring.rules import AlertCandidate
from hrlm.monitoring.series import MonitorSeries
from hrlm.report import REPORT_CSS

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def write_monitor_report(
    series: MonitorSeries, alerts: Sequence[AlertCandidate], out_dir: str | os.PathLike[str]
) -> Path:
    """Write ``monitor.json``, ``volume.png``, ``drift.png``, ``quality.png`` and ``report.html`` into ``out_dir``.

    Args:
        series: the measured windows.
        alerts: what :func:`hrlm.monitoring.check_rules` found in them.
        out_dir: the report folder (created; files in it are replaced one by one, atomically).

    Returns:
        The folder.
    """
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    images = monitor_figures(series)
    for name, _, data in images:
        with atomic_file(folder / name, "wb") as fh:
            fh.write(data)
    write_json(folder / "monitor.json", {**series.to_dict(), "alerts": [a.to_dict() for a in alerts]})
    with atomic_file(folder / "report.html") as fh:
        fh.write(_html(series, alerts, images))
    return folder


def monitor_figures(series: MonitorSeries) -> list[tuple[str, str, bytes]]:
    """The report's charts: ``(file name, caption, PNG bytes)`` each."""
    return [
        ("volume.png", "Predictions per window (pale: under min_volume, not judged)", _png(_volume(series))),
        ("drift.png", "Drift per window: PSIs and the embedding drift score, with thresholds", _png(_drift(series))),
        (
            "quality.png",
            "Accuracy over time: reviewed random slice (95% CI), CBPE estimate, holdout",
            _png(_quality(series)),
        ),
    ]


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def _axes_labels(ax: Axes, series: MonitorSeries) -> None:
    names = [w.label for w in series.windows]
    step = max(1, len(names) // 12)
    ax.set_xticks(range(0, len(names), step))
    ax.set_xticklabels(names[::step], rotation=30, ha="right", fontsize=8)
    ax.grid(alpha=0.3)


def _values(series: MonitorSeries, key: str) -> list[float]:
    return [float("nan") if getattr(w, key) is None else float(getattr(w, key)) for w in series.windows]


def _volume(series: MonitorSeries) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 2.8))
    ax = fig.add_subplot()
    x = range(len(series.windows))
    colors = ["#0969da" if w.judged else "#a5c8f0" for w in series.windows]
    ax.bar(list(x), [w.volume for w in series.windows], color=colors)
    ax.axhline(series.settings.min_volume, color="#57606a", linestyle=":", linewidth=1, label="min_volume")
    ax.set_ylabel("predictions")
    ax.legend(fontsize=8, loc="upper left")
    _axes_labels(ax, series)
    return fig


def _drift(series: MonitorSeries) -> Figure:
    from matplotlib.figure import Figure

    s = series.settings
    fig = Figure(figsize=(9, 5.2))
    top, bottom = fig.subplots(2, 1, sharex=True)
    x = list(range(len(series.windows)))
    for key, name, color, limit in (
        ("label_psi", "label PSI", "#0969da", s.label_psi),
        ("confidence_psi", "confidence PSI", "#bf8700", s.confidence_psi),
        ("length_psi", "length PSI", "#8250df", s.length_psi),
    ):
        top.plot(x, _values(series, key), marker="o", markersize=3, color=color, label=name)
        top.axhline(limit, color=color, linestyle=":", linewidth=1)
    top.set_ylabel("PSI")
    top.legend(fontsize=8, loc="upper left")
    top.grid(alpha=0.3)
    bottom.plot(x, _values(series, "embedding_drift"), marker="o", markersize=3, color="#cf222e", label="domain AUC")
    bottom.plot(x, _values(series, "embedding_noise"), color="#57606a", linewidth=1, label="99.9% noise level")
    bottom.axhline(s.embedding_drift, color="#cf222e", linestyle=":", linewidth=1, label="threshold")
    bottom.set_ylabel("embedding drift (ROC AUC)")
    bottom.legend(fontsize=8, loc="upper left")
    _axes_labels(bottom, series)
    return fig


def _quality(series: MonitorSeries) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.4))
    ax = fig.add_subplot()
    x = list(range(len(series.windows)))
    acc = _values(series, "accuracy")
    low = _values(series, "accuracy_low")
    high = _values(series, "accuracy_high")
    ax.fill_between(x, low, high, color="#2da44e", alpha=0.2, label="95% Wilson interval")
    ax.plot(x, acc, marker="o", markersize=3, color="#2da44e", label="reviewed accuracy")
    ax.plot(x, _values(series, "estimated_accuracy"), marker="s", markersize=3, color="#8250df", label="CBPE estimate")
    hx = [
        i
        for i, w in enumerate(series.windows)
        for ev in w.evaluations
        if (ev.get("metrics") or {}).get("accuracy") is not None
    ]
    hy = [
        ev["metrics"]["accuracy"]
        for w in series.windows
        for ev in w.evaluations
        if (ev.get("metrics") or {}).get("accuracy") is not None
    ]
    if hx:
        ax.scatter(hx, hy, marker="D", color="#bf8700", zorder=3, label="holdout evaluation")
    ref = series.reference.get("accuracy")
    if ref is not None:
        ax.axhline(ref, color="#57606a", linestyle="--", linewidth=1, label="reference accuracy")
        ax.axhline(
            ref - series.settings.accuracy_drop, color="#cf222e", linestyle=":", linewidth=1, label="alert level"
        )
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8, loc="lower left", ncol=3)
    _axes_labels(ax, series)
    return fig


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return "–" if value != value else f"{value:.3f}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{e(_fmt(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html(series: MonitorSeries, alerts: Sequence[AlertCandidate], images: Sequence[tuple[str, str, bytes]]) -> str:
    e = html.escape
    ref = series.reference
    title = "hrlm monitor" + (f": model {series.model_version}" if series.model_version else "")
    span = " to ".join(x.isoformat() for x in (series.since, series.until) if x is not None)
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<h2>Summary</h2>",
        _table(
            ["", ""],
            [
                ["span", span or "windows of texts"],
                ["window", series.settings.window],
                ["windows", len(series.windows)],
                ["predictions", sum(w.volume for w in series.windows)],
                ["alerts", len(alerts)],
                ["reference", f"{ref.get('source')} ({ref.get('n')} texts)"],
                ["reference accuracy", ref.get("accuracy")],
                ["reference macro F1", ref.get("macro_f1")],
                ["calibration temperature", ref.get("temperature")],
            ],
        ),
        "<h2>Alerts</h2>",
    ]
    if alerts:
        parts.append(
            _table(
                ["window", "rule", "value", "threshold", "message"],
                [[a.window, a.rule, a.value, a.threshold, a.message] for a in alerts],
            )
        )
    else:
        parts.append('<p class="absent">No rule crossed its threshold in a judged window.</p>')
    for name, caption, data in images:
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{e(caption)} ({e(name)})</figcaption></figure>"
        )
    parts.append("<h2>Windows</h2>")
    parts.append(
        _table(
            [
                "window",
                "volume",
                "judged",
                "label PSI",
                "conf. PSI",
                "length PSI",
                "unknown rate",
                "drift AUC",
                "reviewed",
                "accuracy",
                "95% CI",
                "CBPE accuracy",
                "holdout",
            ],
            [
                [
                    w.label,
                    w.volume,
                    "yes" if w.judged else "no",
                    w.label_psi,
                    w.confidence_psi,
                    w.length_psi,
                    w.unknown_rate,
                    w.embedding_drift,
                    w.reviewed,
                    w.accuracy,
                    f"{_fmt(w.accuracy_low)}–{_fmt(w.accuracy_high)}" if w.accuracy is not None else None,
                    w.estimated_accuracy,
                    ", ".join(_fmt((ev.get("metrics") or {}).get("accuracy")) for ev in w.evaluations) or None,
                ]
                for w in series.windows
            ],
        )
    )
    notes = [(w.label, n) for w in series.windows for n in w.notes] + [("", n) for n in series.notes]
    if notes:
        parts.append("<h2>Notes</h2>")
        parts.append(_table(["window", "note"], notes))
    parts.append("<h2>How to read it</h2>")
    parts.append(
        "<p>PSI compares this window's distribution with the reference's (0.1 moderate, 0.25 significant); "
        "a rule fires only above its threshold and above what sampling noise reaches 0.1% of the time at the "
        "window's size. The drift AUC is how well a classifier tells this window's encoder vectors from the "
        "reference's (0.5: indistinguishable). The CBPE estimate needs no labels and holds under "
        + e("; ".join(_conditions()))
        + ".</p>"
    )
    parts.append("</body></html>")
    return "\n".join(parts)


def _conditions() -> tuple[str, ...]:
    from hrlm.monitoring.estimate import CONDITIONS

    return CONDITIONS
