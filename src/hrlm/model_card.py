"""Model cards: the ``README.md`` of a model folder, in the Hugging Face model card format.

A card is YAML metadata between ``---`` lines (``library_name``, ``pipeline_tag``, ``base_model``,
``tags``, ``language``, ``metrics`` and a ``model-index`` holding the test results in the Hub's
schema), then Markdown sections a person reads before using the model: details, intended and
out-of-scope uses, training data, evaluation with per-class results, the bias audit, limitations,
and the version history. Everything comes from the folder itself (``hrlm.json``,
``report/metrics.json``, ``report/audit.json``) and, for a registered version, from the registry,
which re-renders the card on every stage change.

This module reads JSON files only: rendering a card imports neither torch nor a YAML library.

Example:
    >>> write_model_card("runs/router")  # doctest: +SKIP
    PosixPath('runs/router/README.md')
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hrlm._card_format import is_number, md_table, number, one_line, paragraph, when, yaml_block
from hrlm._fs import atomic_file
from hrlm._version import __version__
from hrlm.errors import ModelError, ModelNotFound

CARD_FILE = "README.md"
META_FILE = "hrlm.json"  # = hrlm.modeling.META_FILE; that module imports torch
REPORT_DIR = "report"  # = hrlm.report.REPORT_DIR
AUDIT_FILE = "audit.json"  # written by the bias audit (hrlm.fairness) into report/
PACKAGED_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
HEADLINE = (
    ("accuracy", "accuracy", "Accuracy", None),
    ("macro_f1", "f1", "Macro F1", "macro"),
    ("weighted_f1", "f1", "Weighted F1", "weighted"),
    ("micro_f1", "f1", "Micro F1", "micro"),
)
FEW_SUPPORT = 20  # a class measured on fewer test texts than this gets a warning in the limitations
DEFAULT_INTENDED_USE = (
    "Routing, tagging and measuring HR text (helpdesk tickets, survey comments, exit interviews, job "
    "postings) at volume, with people in the loop: predictions go to the teams that handle them, "
    "uncertain ones go to HR reviewers, and aggregate counts inform HR operations. A person checks "
    "any prediction that matters to an individual."
)
OUT_OF_SCOPE = (
    "Automated hiring, promotion, pay, discipline or termination decisions, or any decision about a person, "
    "without a human who reviews each case and a bias audit of the model on the population concerned.",
    "Inferring protected characteristics (gender, ethnicity, age, health, religion, union membership) "
    "or monitoring individual employees.",
    "Text in other languages or domains than the training data, and labels the model was not trained on.",
    "Use as the only evidence in a grievance, investigation or legal matter.",
)
_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def render_model_card(
    model_dir: str | os.PathLike[str],
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    version: str | Mapping[str, Any] | None = None,
    name: str | None = None,
) -> str:
    """The model card of a model folder, as Markdown with YAML front matter.

    Args:
        model_dir: a model folder (the ``--out`` of ``hrlm train``), with ``hrlm.json``.
        history: the version's stage changes from the registry, oldest first: mappings with
            ``at``, ``action``, ``from_stage``, ``to_stage``, ``actor`` and ``reason``.
        version: the registered version: its name, or a mapping with ``version``, ``stage``,
            ``origin``, ``parent``, ``created_at`` and ``note`` (``VersionInfo.to_dict()``).
        name: the model's name in the card (default: the version, else the folder's name); training
            writes the card into a temporary folder and names it after the ``--out`` folder.

    Returns:
        The card's text.

    Raises:
        ModelNotFound: ``model_dir`` does not exist.
        ModelError: it holds no readable ``hrlm.json``.

    Example:
        >>> print(render_model_card("runs/router").splitlines()[1])  # doctest: +SKIP
        library_name: hrlm
    """
    folder = Path(model_dir)
    meta = _read_meta(folder)
    metrics = _read_json(folder / REPORT_DIR / "metrics.json") or {}
    audit = _read_json(folder / REPORT_DIR / AUDIT_FILE)
    info: dict[str, Any] = dict(version) if isinstance(version, Mapping) else {"version": version} if version else {}
    name = str(info.get("version") or name or folder.name)
    events = [dict(e) for e in history or []]
    parts = [
        _front_matter(meta, metrics, name),
        f"# Model card: {one_line(name)}\n",
        _details(folder, meta, info, name),
        _uses(meta),
        _training_data(meta),
        _evaluation(meta, metrics),
        _bias_audit(audit),
        _limitations(meta, metrics),
        _history(info, events),
    ]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(parts))


def write_model_card(
    model_dir: str | os.PathLike[str],
    *,
    history: Sequence[Mapping[str, Any]] | None = None,
    version: str | Mapping[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Render the card of ``model_dir`` (see :func:`render_model_card`) into ``model_dir/README.md``, atomically.

    Returns:
        The card's path.

    Example:
        >>> write_model_card("hrlm-models/router-1a2b3c4d", version="router-1a2b3c4d")  # doctest: +SKIP
        PosixPath('hrlm-models/router-1a2b3c4d/README.md')
    """
    text = render_model_card(model_dir, history=history, version=version, name=name)
    path = Path(model_dir) / CARD_FILE
    with atomic_file(path) as fh:
        fh.write(text)
    return path


# -- reading -------------------------------------------------------------------------------------


def _read_meta(folder: Path) -> dict[str, Any]:
    if not folder.is_dir():
        raise ModelNotFound(f"model folder {str(folder)!r} not found; pass the --out folder of `hrlm train`.")
    data = _read_json(folder / META_FILE)
    if data is None:
        raise ModelError(f"{str(folder)!r} is not an hrlm model folder (no readable {META_FILE}); train one first.")
    return data


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; ``None`` when it is absent, damaged or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


# -- YAML metadata --------------------------------------------------------------------------------


def _front_matter(meta: dict[str, Any], metrics: dict[str, Any], name: str) -> str:
    data: dict[str, Any] = {"library_name": "hrlm", "pipeline_tag": "text-classification"}
    base = _hub_base(str(meta.get("base_encoder") or ""))
    if base:
        data["base_model"] = base
    tasks = meta.get("tasks") or []
    tags = ["hrlm", "text-classification", "hr"]
    if any(t.get("multi_label") for t in tasks):
        tags.append("multi-label")
    if len(tasks) > 1:
        tags.append("multi-task")
    data["tags"] = tags
    data["language"] = ["en"]
    data["metrics"] = ["accuracy", "f1"]
    results = _model_index_results(meta, metrics)
    if results:
        data["model-index"] = [{"name": name, "results": results}]
    return "---\n" + yaml_block(data) + "---\n"


def _hub_base(base: str) -> str | None:
    """``base_model`` in the Hub's form (an id such as ``org/name``); a local folder has none."""
    if not base or base.startswith("all-MiniLM-L6-v2"):
        return PACKAGED_ENCODER
    if os.path.isabs(base) or base.startswith((".", "~")) or not _HUB_ID.fullmatch(base):
        return None
    return base


def _model_index_results(meta: dict[str, Any], metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """One result per task: the headline metrics on the split the report measured."""
    split = str((meta.get("metrics") or {}).get("split") or "test")
    fingerprint = meta.get("data_fingerprint") or "unknown"
    per_task = metrics.get("tasks") if isinstance(metrics.get("tasks"), dict) else None
    tasks = [t.get("name", "label") for t in meta.get("tasks") or []] or ["label"]
    results = []
    for i, task in enumerate(tasks):
        source = (per_task or {}).get(task) if per_task else (metrics if i == 0 else None)
        if not source:
            continue
        values = []
        for key, kind, label, average in HEADLINE:
            value = source.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                entry: dict[str, Any] = {"type": kind, "value": round(float(value), 4), "name": label}
                if average:
                    entry["args"] = {"average": average}
                values.append(entry)
        if not values:
            continue
        results.append(
            {
                "task": {"type": "text-classification", "name": f"Text classification ({task})"},
                "dataset": {"name": f"HR text, data {fingerprint}", "type": "local", "split": split},
                "metrics": values,
            }
        )
    return results


# -- Markdown sections ----------------------------------------------------------------------------


def _details(folder: Path, meta: dict[str, Any], info: dict[str, Any], name: str) -> str:
    cfg = meta.get("train_config") or {}
    extra = meta.get("extra") or {}
    rows = [("Version", name)]
    if info.get("stage"):
        rows.append(("Stage", str(info["stage"])))
    rows.append(("Base encoder", str(meta.get("base_encoder") or "-")))
    windows = f"{meta.get('max_length', '-')} tokens, stride {meta.get('stride', '-')}"
    if meta.get("truncate") not in (None, "none"):
        windows += f", truncated ({meta['truncate']})"
    rows.append(("Max length / stride", windows))
    rows.append(("Windows per text combined by", str(meta.get("aggregate") or "-")))
    rows.append(("Pooling", str(meta.get("pooling") or "-")))
    if extra.get("method"):
        rows.append(("Training method", str(extra["method"])))
    if "ensemble" in extra:
        rows.append(("Ensemble of", ", ".join(str(m) for m in _members(extra["ensemble"])) or "-"))
    rows.append(("hrlm version", str(meta.get("hrlm_version") or "-") + f" (card by hrlm {__version__})"))
    rows.append(("Created", _created(folder, info)))
    if cfg.get("epochs") is not None:
        rows.append(
            ("Epochs / learning rate / batch", f"{cfg.get('epochs')} / {cfg.get('lr')} / {cfg.get('batch_size')}")
        )
    out = ["## Model details\n", md_table(("Field", "Value"), rows)]
    out.append("\n### Tasks and labels\n")
    task_rows = []
    for t in meta.get("tasks") or []:
        kind = "multi-label" if t.get("multi_label") else "single-label"
        labels = ", ".join(str(x) for x in t.get("labels") or [])
        task_rows.append((str(t.get("name", "label")), kind, str(len(t.get("labels") or [])), labels))
    out.append(md_table(("Task", "Kind", "Labels", "Names"), task_rows))
    return "\n".join(out)


def _members(ensemble: Any) -> list[Any]:
    if isinstance(ensemble, dict):
        members = ensemble.get("members") or []
        return [m.get("name", m) if isinstance(m, dict) else m for m in members]
    return list(ensemble) if isinstance(ensemble, list) else []


def _created(folder: Path, info: dict[str, Any]) -> str:
    """When the model folder was written (its ``hrlm.json``), and when it was registered."""
    try:
        written = dt.datetime.fromtimestamp((folder / META_FILE).stat().st_mtime, dt.UTC)
        text = f"{written:%Y-%m-%d %H:%M} UTC"
    except OSError:
        text = "-"
    registered = info.get("created_at")
    if registered:
        shown = registered if isinstance(registered, str) else f"{registered:%Y-%m-%d %H:%M %Z}"
        text += f" (registered {shown})"
    return text


def _uses(meta: dict[str, Any]) -> str:
    own = (meta.get("train_config") or {}).get("intended_use")
    intended = str(own).strip() if isinstance(own, str) and own.strip() else DEFAULT_INTENDED_USE
    out = ["## Intended use\n", paragraph(intended) + "\n", "## Out-of-scope uses\n"]
    out += [f"- {line}" for line in OUT_OF_SCOPE]
    return "\n".join(out) + "\n"


def _training_data(meta: dict[str, Any]) -> str:
    extra = meta.get("extra") or {}
    splits = extra.get("splits") or {}
    out = ["## Training data\n"]
    if splits:
        order = [s for s in ("train", "validation", "test") if s in splits] + sorted(
            set(splits) - {"train", "validation", "test"}
        )
        out.append(md_table(("Split", "Rows"), [(s, str(splits[s])) for s in order]))
        counts = extra.get("label_counts") or {}
        if isinstance(counts, dict) and counts:
            cols = [s for s in order if s in counts] or sorted(counts)
            labels = sorted({lab for s in cols for lab in (counts.get(s) or {})})
            rows = [(lab, *(str((counts.get(s) or {}).get(lab, 0)) for s in cols)) for lab in labels]
            out.append("\nTexts per label and split:\n")
            out.append(md_table(("Label", *cols), rows))
    else:
        out.append("The model folder does not record its splits.")
    fingerprint = meta.get("data_fingerprint")
    out.append(
        f"\nData fingerprint: `{one_line(fingerprint)}` (a hash of every split's texts and labels; training on the "
        "same data again gives the same fingerprint)."
        if fingerprint
        else "\nData fingerprint: not recorded."
    )
    return "\n".join(out) + "\n"


def _evaluation(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    out = ["## Evaluation\n"]
    if not metrics:
        out.append("No `report/metrics.json` in this folder.")
        return "\n".join(out) + "\n"
    split = (meta.get("metrics") or {}).get("split") or "test"
    out.append(f"Measured on the {one_line(split)} split ({metrics.get('n', '?')} texts), never trained on.\n")
    tasks = metrics.get("tasks") if isinstance(metrics.get("tasks"), dict) else {}
    if tasks and len(tasks) > 1:
        for task, values in tasks.items():
            out.append(f"### Task {one_line(task)}\n")
            out.append(_metric_tables(values))
    else:
        out.append(_metric_tables(metrics))
    return "\n".join(out) + "\n"


def _metric_tables(metrics: dict[str, Any]) -> str:
    names = [(k, label) for k, _, label, _ in HEADLINE] + [
        ("samples_f1", "Samples F1"),
        ("roc_auc", "ROC AUC"),
        ("ece", "Expected calibration error"),
        ("log_loss", "Log loss"),
    ]
    rows = [(label, number(metrics[k])) for k, label in names if is_number(metrics.get(k))]
    out = [md_table(("Metric", "Value"), rows)]
    per_class = metrics.get("per_class") or {}
    if per_class:
        out.append("\nPer class:\n")
        classes = [
            (
                str(lab),
                number(v.get("precision")),
                number(v.get("recall")),
                number(v.get("f1")),
                str(v.get("support", "-")),
            )
            for lab, v in per_class.items()
        ]
        out.append(md_table(("Label", "Precision", "Recall", "F1", "Support"), classes))
    absent = metrics.get("absent_labels") or []
    if absent:
        out.append(f"\nLabels absent from this split (left out of macro F1): {', '.join(map(str, absent))}.")
    return "\n".join(out) + "\n"


def _bias_audit(audit: dict[str, Any] | None) -> str:
    out = ["## Bias audit\n"]
    if audit is None:
        out.append(
            "Not audited. Run `hrlm audit` on data with group columns before using the model where its "
            "predictions affect people."
        )
        return "\n".join(out) + "\n"
    passed = audit.get("passed")
    verdict = "passed" if passed is True else "failed" if passed is False else "-"
    rows = [
        ("Date", str(audit.get("date") or "-")),
        ("Result", verdict),
        ("Lowest impact ratio", number(audit.get("min_impact_ratio"))),
        ("Threshold", number(audit.get("threshold"))),
    ]
    groupings = audit.get("groupings")
    if isinstance(groupings, dict | list) and groupings:
        names = list(groupings) if isinstance(groupings, dict) else [_grouping_name(g) for g in groupings]
        rows.append(("Groupings", ", ".join(str(n) for n in names)))
    out.append(md_table(("Field", "Value"), rows))
    reasons = [str(r) for r in audit.get("reasons") or []]
    if reasons:
        out.append("\nReasons:\n")
        out += [f"- {one_line(r)}" for r in reasons]
    out.append("\nThe full audit is in `report/audit.json`.")
    return "\n".join(out) + "\n"


def _grouping_name(grouping: Any) -> str:
    if isinstance(grouping, dict):
        return str(grouping.get("name") or grouping.get("columns") or grouping)
    return str(grouping)


def _limitations(meta: dict[str, Any], metrics: dict[str, Any]) -> str:
    max_length, stride = meta.get("max_length"), meta.get("stride")
    if meta.get("truncate") not in (None, "none"):
        windows = (
            f"Texts longer than {max_length} tokens are cut ({meta['truncate']}): what lies beyond the window "
            "is not read."
        )
    else:
        windows = (
            f"Texts longer than {max_length} tokens are read as overlapping windows ({stride} tokens shared) and "
            f"the windows' outputs are combined by {meta.get('aggregate', 'mean')}; a label carried by one short "
            "passage of a long text can be diluted."
        )
    items = [
        windows,
        "Language: the base encoder was trained on English; other languages, heavy jargon and abbreviations "
        "unseen in training are scored less reliably.",
    ]
    ece = metrics.get("ece")
    calibration = "Calibration: the scores are the model's probabilities, not measured chances of being right"
    if is_number(ece):
        calibration += (
            f" (expected calibration error {number(ece)} on the {meta.get('metrics', {}).get('split', 'test')} split)"
        )
    items.append(calibration + "; use the review queue's thresholds, not a score alone, to decide.")
    few = [lab for lab, v in (metrics.get("per_class") or {}).items() if int(v.get("support") or 0) < FEW_SUPPORT]
    if few:
        items.append(
            f"Few test texts for {', '.join(map(str, few[:10]))}{'…' if len(few) > 10 else ''} "
            f"(under {FEW_SUPPORT} each): their per-class figures are uncertain."
        )
    items.append(
        "The data reflect the past decisions and wording of the organisation they came from, with their biases; "
        "measure the model on your own data before relying on it."
    )
    return "## Limitations\n\n" + "\n".join(f"- {one_line(i)}" for i in items) + "\n"


def _history(info: dict[str, Any], events: list[dict[str, Any]]) -> str:
    out = ["## Parent and version history\n"]
    if not info.get("version") and not events:
        out.append(
            "Not registered. `hrlm models register DIR` adds it to the registry, which keeps this card's history."
        )
        return "\n".join(out) + "\n"
    rows = [("Version", str(info.get("version") or "-"))]
    if info.get("origin"):
        rows.append(("Origin", str(info["origin"])))
    rows.append(("Parent", str(info.get("parent") or "none")))
    if info.get("note"):
        rows.append(("Note", str(info["note"])))
    out.append(md_table(("Field", "Value"), rows))
    if events:
        out.append("\nStage history, oldest first:\n")
        changes = [
            (
                when(e.get("at")),
                str(e.get("action") or ""),
                str(e.get("from_stage") or "-"),
                str(e.get("to_stage") or ""),
                str(e.get("actor") or ""),
                str(e.get("reason") or ""),
            )
            for e in events
        ]
        out.append(md_table(("At", "Action", "From", "To", "By", "Reason"), changes))
    return "\n".join(out) + "\n"
