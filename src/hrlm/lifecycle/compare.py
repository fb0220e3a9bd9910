"""Two model versions side by side on the fixed holdout: metrics, per-class F1, confusion matrices, disagreements.

:func:`compare_versions` loads both versions of the registry, predicts every text of the holdout
file (``holdout_data``, the file the promotion gate measures on: never trained on) with each, and
returns both versions' metrics (:func:`hrlm.evaluation.compute_metrics`), the per-class F1 of each
and its difference, both confusion matrices, and the texts on which the two disagree: the true label,
each version's label and confidence, and which one was right. ``hrlm models compare A B`` and the
admin page show it.

Example:
    >>> out = compare_versions(registry, "router-1a2b", "router-v2-5e6f", "holdout.csv")  # doctest: +SKIP
    >>> out["b"]["metrics"]["macro_f1"] - out["a"]["metrics"]["macro_f1"], len(out["disagreements"])  # doctest: +SKIP
    (0.031, 14)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrlm.errors import ConfigError, DataError

if TYPE_CHECKING:
    from hrlm.lifecycle.registry import Registry

MAX_DISAGREEMENTS = 200


def compare_versions(
    registry: Registry,
    a: str,
    b: str,
    holdout: str | Path | None,
    *,
    threads: int | None = None,
    limit: int = MAX_DISAGREEMENTS,
) -> dict[str, Any]:
    """Measure versions ``a`` and ``b`` on ``holdout`` and list where they disagree (at most ``limit`` texts).

    Raises:
        ConfigError: no holdout file, the two versions label different things, or a multi-task model.
        NotFound: a version is not in the registry.
        DataError: the holdout has no usable row.
    """
    from hrlm.data import load_dataset
    from hrlm.evaluation import compute_metrics
    from hrlm.inference import Predictor
    from hrlm.modeling import read_meta

    if not holdout:
        raise ConfigError("comparing needs the holdout file: pass --holdout FILE or set holdout_data.")
    versions = [registry.get(a), registry.get(b)]
    metas = [read_meta(v.path) for v in versions]
    if any(len(m.tasks) != 1 for m in metas):
        raise ConfigError("comparing supports single-task models; compare each task's models with `hrlm evaluate`.")
    labels = metas[0].tasks[0].labels
    if set(metas[1].tasks[0].labels) != set(labels) or any(m.tasks[0].multi_label for m in metas):
        raise ConfigError(
            f"{a} and {b} label different things ({labels} vs {metas[1].tasks[0].labels}) or several labels a text; "
            "compare versions of one single-label model."
        )
    cfg = metas[0].train_config
    ds = load_dataset(holdout, text_col=cfg.get("text_col", "text"), label_col=cfg.get("label_col", "label"))
    assert ds.labels is not None
    keep = [i for i, label in enumerate(ds.labels) if label in set(labels)]
    dropped = len(ds) - len(keep)
    ds = ds.subset(keep)
    truth: list[str] = [str(label) for label in ds.labels or []]
    if not truth:
        raise DataError(f"{holdout} holds no text with a label of these versions ({', '.join(labels)}).")
    sides: list[dict[str, Any]] = []
    for version in versions:
        predictor = Predictor.from_dir(version.path, threads=threads)
        probs = predictor.predict_proba(ds.texts)[predictor.tasks[0].name]
        order = predictor.labels
        predicted = [order[i] for i in probs.argmax(axis=1)]
        confidence = probs.max(axis=1)
        metrics = compute_metrics(truth, predicted, probs, order)
        sides.append(
            {
                "version": version.version,
                "stage": version.stage,
                "metrics": {k: metrics[k] for k in ("n", "accuracy", "macro_f1", "weighted_f1") if k in metrics},
                "per_class": metrics["per_class"],
                "confusion_matrix": metrics["confusion_matrix"],
                "predicted": predicted,
                "confidence": confidence,
            }
        )
    first, second = sides
    disagree = [i for i in range(len(ds)) if first["predicted"][i] != second["predicted"][i]]
    rows = [
        {
            "text": ds.texts[i],
            "label": truth[i],
            "a": first["predicted"][i],
            "a_confidence": round(float(first["confidence"][i]), 4),
            "b": second["predicted"][i],
            "b_confidence": round(float(second["confidence"][i]), 4),
            "right": "a" if first["predicted"][i] == truth[i] else "b" if second["predicted"][i] == truth[i] else None,
        }
        for i in disagree[:limit]
    ]
    per_class = {
        label: {
            "a": first["per_class"].get(label, {}).get("f1"),
            "b": second["per_class"].get(label, {}).get("f1"),
            "support": first["per_class"].get(label, {}).get("support"),
        }
        for label in labels
    }
    for row in per_class.values():
        row["delta"] = round(row["b"] - row["a"], 6) if row["a"] is not None and row["b"] is not None else None
    a_right = len([i for i in disagree if first["predicted"][i] == truth[i]])
    b_right = len([i for i in disagree if second["predicted"][i] == truth[i]])
    for side in sides:
        del side["predicted"], side["confidence"], side["per_class"]
    return {
        "holdout": str(holdout),
        "n": len(ds),
        "dropped_unknown_labels": dropped,
        "a": first,
        "b": second,
        "delta": {
            k: round(second["metrics"][k] - first["metrics"][k], 6) for k in ("accuracy", "macro_f1", "weighted_f1")
        },
        "per_class": per_class,
        "disagreements_total": len(disagree),
        "a_right": a_right,
        "b_right": b_right,
        "disagreements": rows,
    }
