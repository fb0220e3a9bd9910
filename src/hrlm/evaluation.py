"""Metrics, reports, plots: score predictions and write them up as JSON, PNG and a self-contained HTML page.

:func:`compute_metrics` turns true labels, predicted labels and class probabilities into a JSON-ready
dict; :func:`write_report` writes that dict as ``metrics.json``, a confusion heatmap, learning curves and
``report.html``; :func:`format_report` renders it as a terminal table; :func:`tune_thresholds` picks a
per-label decision threshold for multi-label models.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from hrlm._fs import atomic_file, write_json
from hrlm.errors import DataError, LabelError

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["compute_metrics", "evaluate", "evaluate_dataset", "format_report", "tune_thresholds", "write_report"]

ECE_BINS = 15
PROB_EPS = 1e-15
MAX_NAMES_SHOWN = 10
DEFAULT_GRID: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


# ---------------------------------------------------------------------------------------------------------------
# metrics
# ---------------------------------------------------------------------------------------------------------------


def compute_metrics(
    y_true: Sequence[Any],
    y_pred: Sequence[Any],
    probs: np.ndarray,
    labels: list[str],
    *,
    multi_label: bool = False,
) -> dict[str, Any]:
    """Score predictions against true labels.

    Args:
        y_true: True labels: one string per example, or a list of strings per example when ``multi_label``.
        y_pred: Predicted labels, in the same form as ``y_true``.
        probs: Class probabilities of shape ``(n, k)``, columns in the order of ``labels``.
        labels: The model's labels, in its output order.
        multi_label: Whether each example carries a set of labels.

    Returns:
        A JSON-serialisable dict. Single-label: ``n``, ``accuracy``, ``macro_f1``, ``weighted_f1``,
        ``micro_f1``, ``per_class``, ``confusion_matrix``, ``ece``, ``log_loss``, and ``roc_auc`` for two
        classes (``None`` when ``y_true`` holds a single class). Multi-label: ``n``, ``accuracy`` (exact
        match), ``micro_f1``, ``macro_f1``, ``weighted_f1``, ``samples_f1``, ``per_class`` and ``ece``.
        Floats are rounded to 6 decimals.

    Raises:
        LabelError: A label in ``y_true`` or ``y_pred`` is not one of ``labels``.
        DataError: There are no examples.
        ValueError: The inputs disagree in length or ``probs`` has the wrong shape.
    """
    labels = [str(label) for label in labels]
    if not labels:
        raise ValueError("labels must not be empty")
    if len(set(labels)) != len(labels):
        raise ValueError("labels must be unique")
    n = len(y_true)
    if len(y_pred) != n:
        raise ValueError(f"y_true has {n} items but y_pred has {len(y_pred)}")
    if n == 0:
        raise DataError("there are no examples to evaluate; check the evaluation file or split.")
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape != (n, len(labels)):
        raise ValueError(f"probs must have shape ({n}, {len(labels)}), got {p.shape}")

    if multi_label:
        return _multi_label_metrics(y_true, y_pred, p, labels)
    return _single_label_metrics(y_true, y_pred, p, labels)


def _single_label_metrics(
    y_true: Sequence[Any], y_pred: Sequence[Any], p: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    true = [str(y) for y in y_true]
    pred = [str(y) for y in y_pred]
    _check_known(true, labels)
    _check_known(pred, labels, predicted=True)

    index = {label: i for i, label in enumerate(labels)}
    true_idx = np.array([index[y] for y in true])
    metrics: dict[str, Any] = {
        "n": len(true),
        "accuracy": accuracy_score(true, pred),
        "macro_f1": f1_score(true, pred, labels=labels, average="macro", zero_division=0),
        "weighted_f1": f1_score(true, pred, labels=labels, average="weighted", zero_division=0),
        "micro_f1": f1_score(true, pred, labels=labels, average="micro", zero_division=0),
        "per_class": _per_class(true, pred, labels),
        "confusion_matrix": {
            "labels": list(labels),
            "matrix": confusion_matrix(true, pred, labels=labels).astype(int).tolist(),
        },
    }
    if len(labels) == 2:
        positive = (true_idx == 1).astype(int)
        metrics["roc_auc"] = roc_auc_score(positive, p[:, 1]) if 0 < positive.sum() < len(positive) else None

    top = p.argmax(axis=1)
    confidence = p[np.arange(len(top)), top]
    metrics["ece"] = _ece(confidence, (top == true_idx).astype(np.float64))
    picked = np.clip(p[np.arange(len(true_idx)), true_idx], PROB_EPS, 1.0 - PROB_EPS)
    metrics["log_loss"] = float(-np.mean(np.log(picked)))
    rounded: dict[str, Any] = _rounded(metrics)
    return rounded


def _multi_label_metrics(
    y_true: Sequence[Any], y_pred: Sequence[Any], p: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    true_sets = [_as_label_list(y) for y in y_true]
    pred_sets = [_as_label_list(y) for y in y_pred]
    _check_known([y for row in true_sets for y in row], labels)
    _check_known([y for row in pred_sets for y in row], labels, predicted=True)

    t = _binarise(true_sets, labels)
    q = _binarise(pred_sets, labels)
    metrics: dict[str, Any] = {
        "n": len(true_sets),
        "accuracy": accuracy_score(t, q),
        "micro_f1": f1_score(t, q, average="micro", zero_division=0),
        "macro_f1": f1_score(t, q, average="macro", zero_division=0),
        "weighted_f1": f1_score(t, q, average="weighted", zero_division=0),
        "samples_f1": f1_score(t, q, average="samples", zero_division=0),
        "per_class": _per_class(t, q, list(range(len(labels))), names=labels),
        "ece": _ece(p.ravel(), t.ravel().astype(np.float64)),
    }
    rounded: dict[str, Any] = _rounded(metrics)
    return rounded


def _per_class(true: Any, pred: Any, labels: list[Any], names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        true, pred, labels=labels, average=None, zero_division=0
    )
    return {
        str(name): {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names if names is not None else labels)
    }


def _ece(confidence: np.ndarray, outcome: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error: support-weighted gap between mean confidence and mean outcome per bin."""
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total = 0.0
    for b in np.unique(bins):
        mask = bins == b
        total += mask.sum() * abs(float(conf[mask].mean()) - float(outcome[mask].mean()))
    return total / len(conf)


def _as_label_list(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in value]


def _binarise(rows: list[list[str]], labels: list[str]) -> np.ndarray:
    index = {label: i for i, label in enumerate(labels)}
    out = np.zeros((len(rows), len(labels)), dtype=int)
    for r, row in enumerate(rows):
        for label in row:
            out[r, index[label]] = 1
    return out


def _check_known(values: Iterable[str], labels: list[str], *, predicted: bool = False) -> None:
    known = set(labels)
    unknown = sorted({v for v in values if v not in known})
    if not unknown:
        return
    what = "predicted label(s)" if predicted else "label(s)"
    where = "" if predicted else " in the data"
    fix = "The predictions do not match the model." if predicted else "Fix the labels or retrain with them."
    raise LabelError(
        f"{what} {_name_list(unknown)}{where} {'are' if len(unknown) > 1 else 'is'} unknown to the model; "
        f"it knows {_name_list(labels)}. {fix}"
    )


def _name_list(names: Sequence[str], limit: int = MAX_NAMES_SHOWN) -> str:
    shown = ", ".join(repr(str(name)) for name in names[:limit])
    extra = len(names) - limit
    return f"{shown} and {extra} more" if extra > 0 else shown


def _rounded(value: Any, digits: int = 6) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v, digits) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        f = float(value)
        return round(f, digits) if math.isfinite(f) else None
    return value


# ---------------------------------------------------------------------------------------------------------------
# thresholds
# ---------------------------------------------------------------------------------------------------------------


def tune_thresholds(y_true_bin: np.ndarray, probs: np.ndarray, grid: Sequence[float] | None = None) -> list[float]:
    """Pick, per label, the decision threshold that maximises that label's F1.

    Args:
        y_true_bin: Binary indicator matrix of shape ``(n, k)`` (a 1-D array is one label).
        probs: Probabilities of the same shape.
        grid: Candidate thresholds; defaults to 0.05, 0.10, ..., 0.95.

    Returns:
        One threshold per label. Ties go to the candidate closest to 0.5; a label without positives gets 0.5.

    Raises:
        ValueError: The shapes differ or the grid is empty.
    """
    t = np.asarray(y_true_bin)
    p = np.asarray(probs, dtype=np.float64)
    if t.ndim == 1:
        t = t.reshape(-1, 1)
    if p.ndim == 1:
        p = p.reshape(-1, 1)
    if t.shape != p.shape:
        raise ValueError(f"y_true_bin has shape {t.shape} but probs has shape {p.shape}")
    candidates = np.asarray(list(DEFAULT_GRID if grid is None else grid), dtype=np.float64)
    if candidates.size == 0:
        raise ValueError("grid must hold at least one threshold")
    # ties resolved by argmax picking the first: order candidates by distance to 0.5, then by value
    candidates = candidates[np.lexsort((candidates, np.abs(candidates - 0.5)))]

    positive = t.astype(bool)
    thresholds: list[float] = []
    for j in range(p.shape[1]):
        pos = positive[:, j]
        if not pos.any():
            thresholds.append(0.5)
            continue
        predicted = p[None, :, j] >= candidates[:, None]
        tp = (predicted & pos).sum(axis=1)
        f1 = 2 * tp / (predicted.sum(axis=1) + pos.sum())
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)[0]
        thresholds.append(float(candidates[best]))
    return thresholds


# ---------------------------------------------------------------------------------------------------------------
# report files
# ---------------------------------------------------------------------------------------------------------------


def write_report(
    out_dir: str | os.PathLike[str],
    metrics: dict[str, Any],
    *,
    history: list[dict[str, Any]] | None = None,
    title: str = "hrlm evaluation",
    settings: dict[str, Any] | None = None,
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

    _write_bytes(out / "report.html", _html(title, metrics, images, settings).encode("utf-8"))
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


_CSS = """
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


def _html(title: str, metrics: dict[str, Any], images: list[tuple[str, bytes]], settings: dict[str, Any] | None) -> str:
    e = html.escape
    multi = "samples_f1" in metrics
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{e(str(title))}</title>",
        f"<style>{_CSS}</style>",
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
        (and micro and samples F1 for multi-label metrics).
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

    def average(key: str, weights: np.ndarray | None) -> float | None:
        if not per_class:
            return None
        values = np.array([float(row.get(key) or 0.0) for row in per_class.values()])
        if weights is None:
            return float(values.mean())
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
    return "\n".join(lines) + "\n"


def evaluate_dataset(predictor: Any, ds: Any, *, progress: bool = False) -> dict[str, Any]:
    """Metrics of a :class:`~hrlm.inference.Predictor` on a labelled :class:`~hrlm.data.Dataset`.

    A multi-task model is scored on every task the data has a column for, from one forward pass:
    the first task's metrics are at the top level and every task's are under ``"tasks"``.
    """
    if ds.labels is None:
        raise DataError(f"{ds.source}: no labels; evaluation needs a label column.")
    tasks = predictor.tasks
    probs = predictor.predict_proba(ds.texts, progress=progress)
    if len(tasks) == 1:
        return _task_metrics(ds, tasks[0], probs[tasks[0].name])
    per_task: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(tasks):
        if task.name in ds.task_names:
            part = ds.for_task(task.name)
        elif i == 0:
            part = ds  # a single label column scores the first task
        else:
            continue
        per_task[task.name] = _task_metrics(part, task, probs[task.name])
    first = next(iter(per_task.values()))
    return {**first, "tasks": per_task}


def _task_metrics(ds: Any, task: Any, probs: np.ndarray) -> dict[str, Any]:
    from hrlm.inference import decide

    if ds.multi_label != task.multi_label:
        kind = "multi-label" if task.multi_label else "single-label"
        raise DataError(
            f"{ds.source}: task {task.name!r} of the model is {kind} but the data is not; "
            "pass --label-sep for multi-label data."
        )
    return compute_metrics(ds.labels, decide(probs, task), probs, task.labels, multi_label=task.multi_label)


def evaluate(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    text_col: str = "text",
    label_col: str | None = None,
    label_sep: str | None = None,
    split: str | None = None,
    split_col: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    truncate: str | None = None,
    backend: str = "auto",
) -> dict[str, Any]:
    """Score a model folder on a labelled data file; with ``out``, write the report there.

    Args:
        model: folder written by ``hrlm train``.
        data: labelled data file; the label column defaults to the one the model was trained on.
        out: report folder (``metrics.json``, ``confusion.png``, ``report.html``).
        split: keep only the rows whose ``split_col`` value is this split (``test``, ``validation``...).
        truncate: read long texts differently from training (``none`` = windows, ``head``, ``head+tail``).
        backend: the inference backend (see :mod:`hrlm.backends`); ``auto`` by default.

    Raises:
        LabelError: the data holds a label the model never saw.
    """
    from hrlm.data import load_dataset
    from hrlm.inference import Predictor

    predictor = Predictor.from_dir(model, threads=threads, truncate=truncate, backend=backend)
    tc = predictor.meta.train_config
    task = predictor.tasks[0]
    sep = label_sep if label_sep is not None else (tc.get("label_sep") if task.multi_label else None)
    if task.multi_label and sep is None:
        sep = "|"
    ds = load_dataset(
        Path(data),
        text_col=text_col,
        label_col=label_col or tc.get("label_col", "label"),  # "topic,sentiment" for a multi-task model
        label_sep=sep,
        split_col=split_col,
    )
    if split is not None:
        if ds.splits is None:
            raise DataError("--split needs --split-col to name the column that holds the split.")
        from hrlm.data import SPLIT_NAMES

        wanted = SPLIT_NAMES.get(split.lower())
        if wanted is None:
            raise DataError(f"--split {split!r} is not one of train, validation, test.")
        ds = ds.subset([i for i, s in enumerate(ds.splits) if s == wanted])
        if len(ds) == 0:
            raise DataError(f"{data}: no row is in the {wanted!r} split.")
    metrics = evaluate_dataset(predictor, ds, progress=progress)
    if out is not None:
        write_report(
            out,
            metrics,
            title=f"{Path(model).name} on {Path(data).name}",
            settings={
                "model": str(model),
                "data": str(data),
                "rows": len(ds),
                "data_fingerprint": ds.fingerprint(),
                "backend": predictor.backend_name,
                "truncate": predictor.truncate,
            },
        )
    return metrics
