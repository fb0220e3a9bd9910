"""The tuning report: optimisation history, parameter importances and validation curves as PNG, and one
self-contained HTML page with the best trials, the best settings and the test scores beside the
defaults' (``--baseline``) and the ensemble's (``--ensemble``).

The page follows the model report's look (:mod:`hrlm.report`); every file is written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrlm._fs import atomic_file, write_json
from hrlm.report import REPORT_CSS

if TYPE_CHECKING:
    import optuna
    from matplotlib.figure import Figure

    from hrlm.tuning.search import TuneResult

BEST_SHOWN = 10  # rows of the best-trials table


def param_importances(study: optuna.Study) -> dict[str, float] | None:
    """Optuna's fANOVA importance of each searched setting; ``None`` below 2 completed trials or when
    nothing varied (Optuna needs both)."""
    import optuna

    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study)
    except (ValueError, RuntimeError):
        return None
    return {k: float(v) for k, v in found.items()} or None


def write_tuning_report(
    folder: Path, trials: Sequence[Any], importances: Mapping[str, float] | None, result: TuneResult
) -> Path:
    """Write ``history.png``, ``importances.png`` (2+ completed trials), ``curves.png``, ``tuning.json`` and
    ``report.html`` into ``folder``.

    Args:
        folder: the report folder.
        trials: the study's trials (Optuna ``FrozenTrial``s, for the validation curves).
        importances: from :func:`param_importances`; ``None`` leaves the picture out.
        result: the study's outcome.
    """
    folder.mkdir(parents=True, exist_ok=True)
    images: list[tuple[str, str, bytes]] = []
    direction = "MINIMIZE" if result.metric == "loss" else "MAXIMIZE"
    history = _png(_history_figure(result.trials, result.metric, result.baseline, direction))
    images.append(("history.png", "Optimisation history: each trial's validation score and the best so far", history))
    if importances:
        images.append(("importances.png", "Parameter importances (fANOVA)", _png(_importance_figure(importances))))
    if any(r["evaluations"] > 1 for r in result.trials):
        curves = _png(_curves_figure(trials, result.metric))
        images.append(("curves.png", "Validation score per evaluation; pruned trials stop early", curves))
    for name, _, data in images:
        with atomic_file(folder / name, "wb") as fh:
            fh.write(data)
    write_json(folder / "tuning.json", _payload(result, importances))
    with atomic_file(folder / "report.html") as fh:
        fh.write(_html(result, importances, images))
    return folder


def _payload(result: TuneResult, importances: Mapping[str, float] | None) -> dict[str, Any]:
    return {
        "study": result.study,
        "storage": result.storage,
        "metric": result.metric,
        "validation": result.validation,
        "best_trial": result.best_number,
        "best_value": result.best_value,
        "best_settings": result.best_settings,
        "refit_epochs": result.refit_epochs,
        "test": result.test_metrics,
        "baseline": result.baseline,
        "ensemble": result.ensemble,
        "importances": importances,
        "states": _states(result.trials),
    }


def _states(rows: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"].lower()] = counts.get(r["state"].lower(), 0) + 1
    return counts


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def _history_figure(
    rows: Sequence[Mapping[str, Any]], metric: str, baseline: Mapping[str, Any] | None, direction: str
) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    done = [(r["number"], r["value"]) for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    pruned = [(r["number"], r["value"]) for r in rows if r["state"] == "PRUNED" and r["value"] is not None]
    if done:
        ax.scatter(*zip(*done, strict=True), color="#0969da", label="complete", zorder=3)
        best, line = None, []
        for n, v in done:
            better = best is None or (v < best if direction == "MINIMIZE" else v > best)
            best = v if better else best
            line.append((n, best))
        ax.step(*zip(*line, strict=True), where="post", color="#1a7f37", label="best so far")
    if pruned:
        ax.scatter(*zip(*pruned, strict=True), color="#8c959f", marker="x", label="pruned (last score)", zorder=3)
    if baseline is not None:
        ax.axhline(baseline["value"], color="#cf222e", linestyle="--", label="default settings")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    return fig


def _importance_figure(importances: Mapping[str, float]) -> Figure:
    from matplotlib.figure import Figure

    names = list(importances)[::-1]
    fig = Figure(figsize=(6.5, 0.45 * len(names) + 1.2))
    ax = fig.add_subplot(1, 1, 1)
    ax.barh(names, [importances[n] for n in names], color="#0969da")
    ax.set_xlabel("importance (share of the score's variance)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def _curves_figure(trials: Sequence[Any], metric: str) -> Figure:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for t in trials:
        if not t.intermediate_values:
            continue
        steps = sorted(t.intermediate_values)
        pruned = t.state.name == "PRUNED"
        ax.plot(
            steps,
            [t.intermediate_values[s] for s in steps],
            marker="o",
            markersize=3,
            alpha=0.8,
            color="#8c959f" if pruned else "#0969da",
            linestyle=":" if pruned else "-",
        )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluation (epoch)")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    return fig


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1:
            return f"{value:.4g}"
        return f"{value:.4f}" if abs(value) >= 1e-2 or value == 0 else f"{value:.3g}"
    return str(value)


def _table(head: Sequence[str] | None, rows: Sequence[Sequence[Any]]) -> str:
    e = html.escape
    out = ["<table>"]
    if head:
        out += ["<thead><tr>", *(f"<th>{e(h)}</th>" for h in head), "</tr></thead>"]
    out.append("<tbody>")
    for row in rows:
        out.append("<tr>" + "".join(f"<td>{e(_fmt(c))}</td>" for c in row) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def comparison_rows(result: TuneResult) -> list[list[Any]]:
    """Rows of system, validation score, test accuracy, test macro F1: best, defaults, ensemble."""
    best = f"best trial ({result.best_number})"
    if result.refit_epochs is not None:
        best += f", refit on train + validation ({result.refit_epochs:g} epochs)"
    rows = [[best, result.best_value, *_test(result.test_metrics)]]
    if result.baseline is not None:
        rows.append(["default settings", result.baseline["value"], *_test(result.baseline["test"])])
    if result.ensemble is not None:
        summary = result.ensemble.get("summary") or {}
        metrics = summary.get("metrics")
        members = ", ".join(str(n) for n in result.ensemble["members"])
        rows.append([f"ensemble of trials {members}", None, *_test(metrics or {})])
    return rows


def _test(metrics: Mapping[str, Any]) -> list[Any]:
    return [metrics.get("accuracy"), metrics.get("macro_f1")]


def _html(result: TuneResult, importances: Mapping[str, float] | None, images: Sequence[tuple[str, str, bytes]]) -> str:
    e = html.escape
    states = _states(result.trials)
    title = f"hrlm tune: study {result.study}"
    parts = [
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(title)}</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
        "<h2>Summary</h2>",
        _table(
            None,
            [
                ["storage", result.storage],
                ["metric (validation)", result.metric],
                [
                    "scored by",
                    "the validation split" if result.validation == "holdout" else "cross-validation on train",
                ],
                ["trials", ", ".join(f"{n} {s}" for s, n in sorted(states.items()))],
                ["best trial", result.best_number],
            ],
        ),
        "<h2>Best against the alternatives</h2>",
        f"<p>Validation {e(result.metric)} as the trials were chosen; test scores measured once, after the search.</p>",
        _table(["system", f"validation {result.metric}", "test accuracy", "test macro F1"], comparison_rows(result)),
        "<h2>Best trials</h2>",
    ]
    complete = [r for r in result.trials if r["state"] == "COMPLETE" and r["value"] is not None]
    complete.sort(key=lambda r: r["value"], reverse=result.metric != "loss")
    names = sorted({k for r in complete[:BEST_SHOWN] for k in r["params"]})
    parts.append(
        _table(
            ["trial", result.metric, "seconds", *names],
            [
                [r["number"], r["value"], r["seconds"], *(r["params"].get(n) for n in names)]
                for r in complete[:BEST_SHOWN]
            ],
        )
    )
    if importances is None:
        parts.append('<p class="absent">Parameter importances need at least two completed trials that differ.</p>')
    for name, caption, data in images:
        encoded = base64.b64encode(data).decode("ascii")
        parts.append(
            f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{encoded}">'
            f"<figcaption>{e(caption)} ({e(name)})</figcaption></figure>"
        )
    parts += ["<h2>Best settings</h2>", _table(["setting", "value"], sorted(result.best_settings.items()))]
    parts.append("</body></html>")
    return "\n".join(parts)
