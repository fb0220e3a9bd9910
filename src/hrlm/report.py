"""Reports a person reads: metrics.json, an annotated confusion matrix, learning curves, a
self-contained HTML page, and the plain-text classification report.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hrlm._fs import atomic_file, write_json

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# ---------------------------------------------------------------------------------------------------------------
# report files
# ---------------------------------------------------------------------------------------------------------------

REPORT_DIR = "report"  # the report folder inside a model folder


def report_files(folder: str | os.PathLike[str]) -> list[str]:
    """The files of a model folder's ``report/`` folder, as paths relative to it (``tasks/x/report.html``)."""
    base = Path(folder) / REPORT_DIR
    if not base.is_dir():
        return []
    return sorted(p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() and not p.is_symlink())


MAX_REPORT_NAME = 1024  # characters of a report file's path; each part at most NAME_MAX_BYTES bytes of UTF-8
NAME_MAX_BYTES = 255  # the longest file name ext4, APFS, NTFS and most other file systems take


def report_file(folder: str | os.PathLike[str], name: str) -> Path:
    """The file ``name`` of a model folder's ``report/`` folder, refusing any path that leads outside it.

    A name no file system could hold (a NUL or other control character, a part longer than 255
    bytes, a lone surrogate) is no such file, not an error of the server.

    Raises:
        NotFound: no such file, or ``name`` leads outside ``report/`` (``..``, an absolute path, a symlink).
    """
    from hrlm.errors import NotFound

    base = (Path(folder) / REPORT_DIR).resolve()
    parts = name.replace("\\", "/").split("/")
    bad = (
        not name
        or len(name) > MAX_REPORT_NAME
        or name.startswith("/")
        or any(p in ("", ".", "..") or not _file_name_ok(p) for p in parts)
    )
    target = base
    if not bad:
        try:
            target = base.joinpath(*parts).resolve()
            bad = not target.is_relative_to(base) or not target.is_file()
        except (OSError, ValueError):  # too long for this file system, or a character it refuses
            bad = True
    if bad:
        shown = name if len(name) <= 40 else name[:40] + "…"
        raise NotFound(f"no report file {shown!r} of this model; its report files are {report_files(folder)}.")
    return target


def _file_name_ok(part: str) -> bool:
    if any(ord(c) < 32 or ord(c) == 127 for c in part):
        return False
    try:
        return len(part.encode("utf-8")) <= NAME_MAX_BYTES
    except UnicodeEncodeError:  # a lone surrogate
        return False


def write_report(
    out_dir: str | os.PathLike[str],
    metrics: dict[str, Any],
    *,
    history: list[dict[str, Any]] | None = None,
    title: str = "hrlm evaluation",
    settings: dict[str, Any] | None = None,
    tables: dict[str, list[dict[str, Any]]] | None = None,
) -> Path:
    """Write metrics, plots and an HTML page into a folder.

    Writes ``metrics.json``; ``confusion.png`` when ``metrics`` has a confusion matrix;
    ``learning_curves.png`` when ``history`` has entries; and ``report.html``, which embeds the images and
    needs nothing else to display. Every file is written under a temporary name and renamed into place.

    Args:
        out_dir: Folder to write into; created with its parents when missing.
        metrics: A dict from :func:`compute_metrics`.
        history: Per-evaluation training records with ``epoch``, ``train_loss``, ``val_loss``, ``val_metric``
            and ``metric`` keys; ``val_*`` values may be ``None``.
        title: Heading of the HTML page.
        settings: Settings shown in a key/value table and stored in ``metrics.json``.
        tables: Further tables shown in the HTML after the summary, heading -> rows (the first row's keys
            are the columns), such as an ensemble's members beside it; store their data in ``metrics``.

    Returns:
        The output folder.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    payload = dict(metrics)
    if history is not None:
        payload["history"] = history
    if settings is not None:
        payload["settings"] = settings
    write_json(out / "metrics.json", payload)

    images: list[tuple[str, bytes]] = []
    cm = metrics.get("confusion_matrix")
    if cm and cm.get("matrix"):
        png = _png(_confusion_figure(cm["labels"], cm["matrix"]))
        _write_bytes(out / "confusion.png", png)
        images.append(("Confusion matrix", png))
    if history:
        png = _png(_learning_curves_figure(history))
        _write_bytes(out / "learning_curves.png", png)
        images.append(("Learning curves", png))

    _write_bytes(out / "report.html", _html(title, metrics, images, settings, tables).encode("utf-8"))
    for name, task_metrics in (metrics.get("tasks") or {}).items():
        write_report(out / "tasks" / name, task_metrics, title=f"{title}: task {name}", settings=settings)
    return out


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_file(path, "wb") as fh:
        fh.write(data)


def _png(fig: Figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight", pad_inches=0.15)
    return buf.getvalue()


def _plain(text: Any, limit: int = 0) -> str:
    """Text matplotlib shows literally: no mathtext, optionally shortened."""
    s = str(text)
    if limit and len(s) > limit:
        s = s[: limit - 1] + "…"
    return s.replace("$", r"\$")


def _confusion_figure(labels: Sequence[Any], matrix: Sequence[Sequence[int]]) -> Figure:
    from matplotlib.figure import Figure

    counts = np.asarray(matrix, dtype=np.int64)
    k = counts.shape[0]
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)

    side = float(np.clip(2.6 + 0.42 * k, 4.5, 14.0))
    cell_font = float(np.clip(13.0 - 0.25 * k, 6.5, 11.0))
    tick_font = float(np.clip(12.5 - 0.2 * k, 7.5, 10.0))
    names = [_plain(label, 24) for label in labels]

    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("share of true class", fontsize=tick_font)
    colorbar.ax.tick_params(labelsize=tick_font)

    ax.set_xticks(
        range(k),
        labels=names,
        rotation=45 if k > 2 else 0,
        ha="right" if k > 2 else "center",
        rotation_mode="anchor",
        fontsize=tick_font,
    )
    ax.set_yticks(range(k), labels=names, fontsize=tick_font)
    ax.set_xlabel("Predicted label", fontsize=tick_font + 1)
    ax.set_ylabel("True label", fontsize=tick_font + 1)
    ax.set_title("Confusion matrix (counts; colour = row share)", fontsize=tick_font + 2)
    if k <= 40:
        for i in range(k):
            for j in range(k):
                ax.text(
                    j,
                    i,
                    str(counts[i, j]),
                    ha="center",
                    va="center",
                    fontsize=cell_font,
                    color="white" if share[i, j] > 0.55 else "black",
                )
    return fig


def _learning_curves_figure(history: list[dict[str, Any]]) -> Figure:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    x_key = next((key for key in ("epoch", "step") if any(_number(e.get(key)) is not None for e in history)), None)

    def series(key: str) -> tuple[list[float], list[float]]:
        xs, ys = [], []
        for i, entry in enumerate(history):
            x = _number(entry.get(x_key)) if x_key else float(i + 1)
            y = _number(entry.get(key))
            if x is not None and y is not None:
                xs.append(x)
                ys.append(y)
        return xs, ys

    metric = next((str(e["metric"]) for e in history if e.get("metric")), "metric")
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    loss_ax, metric_ax = fig.subplots(1, 2)
    x_name = x_key or "evaluation"
    all_x = {x for e in history if (x := _number(e.get(x_key or ""))) is not None}
    whole = all(x.is_integer() for x in all_x)

    plotted = False
    for key, name, marker in (("train_loss", "train", "o"), ("val_loss", "validation", "s")):
        xs, ys = series(key)
        if ys:
            loss_ax.plot(xs, ys, marker=marker, markersize=5, linewidth=1.6, label=name)
            plotted = True
    if plotted:
        loss_ax.legend()
    else:
        loss_ax.text(0.5, 0.5, "no loss recorded", ha="center", va="center", transform=loss_ax.transAxes)
    loss_ax.set_title("Loss")
    loss_ax.set_xlabel(x_name)
    loss_ax.set_ylabel("loss")
    loss_ax.grid(alpha=0.3)

    xs, ys = series("val_metric")
    if ys:
        metric_ax.plot(xs, ys, marker="o", markersize=5, linewidth=1.6, color="tab:green")
    else:
        metric_ax.text(
            0.5, 0.5, "no validation metric recorded", ha="center", va="center", transform=metric_ax.transAxes
        )
    metric_ax.set_title(f"Validation {_plain(metric)}")
    metric_ax.set_xlabel(x_name)
    metric_ax.set_ylabel(_plain(metric))
    metric_ax.grid(alpha=0.3)
    for ax in (loss_ax, metric_ax):
        if whole:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(all_x) == 1:
            only = next(iter(all_x))
            ax.set_xlim(only - 1.0, only + 1.0)
    return fig


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


# the style of every hrlm HTML report (the model report, the tuning report)
REPORT_CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2rem auto; max-width: 72rem;
       padding: 0 1rem; color: #1f2328; }
h1 { font-size: 1.6rem; margin-bottom: 1.2rem; }
h2 { font-size: 1.2rem; margin-top: 2rem; border-bottom: 1px solid #d0d7de; padding-bottom: .3rem; }
table { border-collapse: collapse; margin: .5rem 0; font-size: .92rem; }
th, td { border: 1px solid #d0d7de; padding: .3rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f8fa; }
tbody tr:nth-child(even) { background: #fafbfc; }
td.text { text-align: left; font-family: ui-monospace, Menlo, Consolas, monospace; word-break: break-word; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #d0d7de; }
figcaption { color: #57606a; font-size: .85rem; }
p.absent { color: #57606a; }
span.text { font-family: ui-monospace, Menlo, Consolas, monospace; }
"""

_SUMMARY_ROWS = (
    ("n", "Examples"),
    ("accuracy", "Accuracy"),
    ("macro_f1", "Macro F1"),
    ("weighted_f1", "Weighted F1"),
    ("micro_f1", "Micro F1"),
    ("samples_f1", "Samples F1"),
    ("roc_auc", "ROC-AUC"),
    ("ece", "ECE"),
    ("log_loss", "Log loss"),
)


def _html(
    title: str,
    metrics: dict[str, Any],
    images: list[tuple[str, bytes]],
    settings: dict[str, Any] | None,
    tables: dict[str, list[dict[str, Any]]] | None = None,
) -> str:
    e = html.escape
    multi = "samples_f1" in metrics
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(str(title))}</title>",
        f"<style>{REPORT_CSS}</style>",
        "</head>",
        "<body>",
        f"<h1>{e(str(title))}</h1>",
        "<h2>Summary</h2>",
        "<table><tbody>",
    ]
    for key, name in _SUMMARY_ROWS:
        if key in metrics:
            if key == "accuracy" and multi:
                name = "Exact-match accuracy"
            parts.append(f"<tr><th>{e(name)}</th><td>{e(_fmt(metrics[key]))}</td></tr>")
    parts.append("</tbody></table>")
    for heading, rows in (tables or {}).items():
        columns = list(rows[0]) if rows else []
        parts += [f"<h2>{e(heading)}</h2>", "<table><thead><tr>"]
        parts += [f"<th>{e(str(c))}</th>" for c in columns] + ["</tr></thead>", "<tbody>"]
        for row in rows:
            first = f'<td class="text">{e(str(row.get(columns[0])))}</td>'
            parts.append("<tr>" + first + "".join(f"<td>{e(_fmt(row.get(c)))}</td>" for c in columns[1:]) + "</tr>")
        parts.append("</tbody></table>")
    absent = metrics.get("absent_labels") or []
    if absent:
        parts.append(
            f'<p class="absent">{len(absent)} of the model\'s classes never occur in this data, neither as true nor '
            "as predicted label, and are left out of the macro averages: "
            + ", ".join(f'<span class="text">{e(str(label))}</span>' for label in absent)
            + ".</p>"
        )

    per_class = metrics.get("per_class") or {}
    if per_class:
        parts += [
            "<h2>Per class</h2>",
            "<table><thead><tr><th>Label</th><th>Precision</th><th>Recall</th><th>F1</th><th>Support</th></tr></thead>",
            "<tbody>",
        ]
        for label, row in per_class.items():
            cells = "".join(f"<td>{e(_fmt(row.get(key)))}</td>" for key in ("precision", "recall", "f1", "support"))
            parts.append(f'<tr><td class="text">{e(str(label))}</td>{cells}</tr>')
        parts.append("</tbody></table>")

    for caption, png in images:
        data = base64.b64encode(png).decode("ascii")
        parts += [
            f"<h2>{e(caption)}</h2>",
            f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}">',
            f"<figcaption>{e(caption)}</figcaption></figure>",
        ]

    if settings:
        parts += ["<h2>Settings</h2>", "<table><tbody>"]
        for key, value in settings.items():
            parts.append(f'<tr><th>{e(str(key))}</th><td class="text">{e(_setting(value))}</td></tr>')
        parts.append("</tbody></table>")

    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.4f}"
    return str(value)


def _setting(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


# ---------------------------------------------------------------------------------------------------------------
# terminal table
# ---------------------------------------------------------------------------------------------------------------


def format_report(metrics: dict[str, Any], *, digits: int = 2) -> str:
    """Render metrics as a plain-text table like scikit-learn's ``classification_report``.

    Args:
        metrics: A dict from :func:`compute_metrics`.
        digits: Decimals shown for each score.

    Returns:
        Per-class precision, recall, F1 and support, followed by accuracy, macro and weighted averages
        (and micro and samples F1 for multi-label metrics). The macro average leaves out the classes in
        ``metrics["absent_labels"]``, which a last line names.
    """
    per_class: dict[str, dict[str, Any]] = metrics.get("per_class") or {}
    multi = "samples_f1" in metrics
    names = list(per_class)
    extra = ["accuracy", "macro avg", "weighted avg"] + (["micro avg", "samples avg"] if multi else [])
    width = max([len(str(name)) for name in names + extra])
    col = max(9, digits + 3)

    def score(value: Any) -> str:
        return "" if value is None else f"{float(value):.{digits}f}"

    def line(name: str, p: Any, r: Any, f: Any, s: Any) -> str:
        support = "" if s is None else str(int(s))
        return f"{name:>{width}} {score(p):>{col}} {score(r):>{col}} {score(f):>{col}} {support:>{col}}"

    header = f"{'':>{width}} {'precision':>{col}} {'recall':>{col}} {'f1-score':>{col}} {'support':>{col}}"
    lines = [header, ""]
    for name in names:
        row = per_class[name]
        lines.append(line(str(name), row.get("precision"), row.get("recall"), row.get("f1"), row.get("support")))
    lines.append("")

    supports = np.array([float(row.get("support") or 0) for row in per_class.values()])
    total = int(supports.sum())
    absent = set(metrics.get("absent_labels") or [])
    present = np.array([name not in absent for name in names], dtype=bool)

    def average(key: str, weights: np.ndarray | None) -> float | None:
        if not per_class:
            return None
        values = np.array([float(row.get(key) or 0.0) for row in per_class.values()])
        if weights is None:
            # macro: over the classes the data or the predictions hold, as compute_metrics's macro_f1
            return float(values[present].mean()) if present.any() else 0.0
        return float((values * weights).sum() / weights.sum()) if weights.sum() > 0 else 0.0

    n = metrics.get("n", total)
    lines.append(line("accuracy", None, None, metrics.get("accuracy"), n))
    if multi:
        lines.append(line("micro avg", None, None, metrics.get("micro_f1"), total))
    macro_f1 = metrics.get("macro_f1", average("f1", None))
    weighted_f1 = metrics.get("weighted_f1", average("f1", supports))
    lines.append(line("macro avg", average("precision", None), average("recall", None), macro_f1, total))
    lines.append(line("weighted avg", average("precision", supports), average("recall", supports), weighted_f1, total))
    if multi:
        lines.append(line("samples avg", None, None, metrics.get("samples_f1"), n))
    if absent:
        shown = [name for name in names if name in absent]
        lines += ["", f"not in this data, left out of the macro average: {', '.join(shown)}"]
    return "\n".join(lines) + "\n"
