"""Retraining from feedback, and the promotion gate between the candidate and production.

:func:`retrain` trains a candidate with the production model's recorded training settings on the
original training data plus the reviewers' accepted feedback (the feedback holdout excluded),
measures candidate and production on the fixed holdout file (never trained on) and on the
feedback holdout, and promotes the candidate only when it wins by ``margin``; otherwise it stays
registered as ``rejected`` with its report (``report/gate.md``).

With ``audit_data`` set, the candidate is also bias-audited on that file (:func:`hrlm.fairness.run_audit`:
impact ratios per group column of ``audit_group_cols`` and their intersections, for the label
``audit_positive``, and the counterfactual gender-swap probe). Its ``audit.json`` and ``audit.html``
go into the candidate's ``report/`` folder, production's audit is shown beside it in ``gate.md``,
and a candidate whose audit fails ``audit_min_impact_ratio`` (or ``audit_max_flip_rate``) is
rejected like one that scores lower, whatever its F1.

Nothing about production changes until the candidate's folder is complete: the candidate is
trained in a temporary folder, registered as ``candidate`` once written, and promoted in one
transaction of the registry. A crash at any point leaves production as it was.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from hrlm.errors import ConfigError, DataError, HrlmError, NotFound
from hrlm.lifecycle.audit_gate import audit_file, format_audit, gate_audit

if TYPE_CHECKING:
    from hrlm.config import TrainConfig
    from hrlm.data import Dataset
    from hrlm.lifecycle.registry import Registry, VersionInfo
    from hrlm.lifecycle.settings import LifecycleSettings

log = logging.getLogger("hrlm.retrain")

ProgressCallback = Callable[[float, str], None]
FEEDBACK_GATE_MIN = 20  # the feedback holdout counts in the gate from this many items on
GATE_METRIC = "macro_f1"


def retrain(
    engine: Engine,
    registry: Registry,
    settings: LifecycleSettings,
    *,
    actor: str,
    progress_cb: ProgressCallback | None = None,
    data: str | Path | None = None,
    holdout: str | Path | None = None,
    margin: float | None = None,
    base: str | None = None,
) -> dict[str, Any]:
    """Train a candidate from the training data plus feedback, gate it against production, promote or reject it.

    Args:
        engine: the database holding the registry and the review feedback.
        registry: the model registry; the candidate is registered there (``origin="retrain"``).
        settings: ``train_data``, ``holdout_data``, ``promote_margin``, ``threads``.
        actor: who asked (recorded with the candidate, its stage changes and the audit log).
        progress_cb: called with the fraction done (0 to 1) and what happens now.
        data, holdout, margin: override ``train_data``, ``holdout_data`` and ``promote_margin``.
            ``margin`` may be negative (promote unless the candidate is worse by more than that).
        base: the version to start from (default: production); its training settings are reused.

    Returns:
        ``decision`` (``promoted`` or ``rejected``), ``candidate``, ``parent``, ``production`` (the
        version in production afterwards), ``gate`` (the comparison), ``data`` (row counts) and ``notes``.

    Raises:
        ConfigError: no production version, no training data or holdout file, a multi-task model.
        DataError: the holdout shares texts with the training data, or holds no usable row.

    Example:
        >>> result = retrain(engine, Registry(engine, "hrlm-models"), settings, actor="alice")  # doctest: +SKIP
        >>> result["decision"], result["gate"]["fixed_holdout"]["delta"]  # doctest: +SKIP
        ('promoted', 0.031)
    """
    from hrlm.config import TrainConfig
    from hrlm.modeling import read_meta
    from hrlm.review import labelled_examples
    from hrlm.training import fit, load_training_data

    report = progress_cb or (lambda fraction, message: None)
    margin = settings.promote_margin if margin is None else float(margin)
    if not -1.0 <= margin <= 1.0:
        raise ConfigError(f"margin = {margin!r} must be between -1 and 1 (a difference of macro F1).")
    data_path = _required(data or settings.train_data, "train_data", "--data FILE")
    holdout_path = _required(holdout or settings.holdout_data, "holdout_data", "--holdout FILE")
    audit_path = audit_file(settings)

    report(0.02, "reading the production model")
    parent = _parent(registry, base)
    meta = read_meta(parent.path)
    if len(meta.tasks) != 1:
        raise ConfigError(
            f"version {parent.version} has {len(meta.tasks)} tasks; retraining from feedback supports "
            "single-task models. Retrain it with `hrlm train` instead."
        )
    cfg = TrainConfig.from_dict(meta.train_config)

    report(0.05, "loading the training data, the holdout and the feedback")
    notes: list[str] = []
    original = load_training_data(data_path, cfg)
    if original.extra_tasks:
        raise ConfigError(f"{data_path} has several label columns; retraining from feedback needs one.")
    fixed = _load_holdout(holdout_path, cfg)
    _refuse_overlap(original, fixed, data_path, holdout_path)
    fb_train = feedback_examples(labelled_examples(engine, holdout=False), original.multi_label, notes, "training")
    fb_hold = feedback_examples(labelled_examples(engine, holdout=True), original.multi_label, notes, "holdout")
    fb_train = without_texts(fb_train, fixed.texts, notes, "the fixed holdout")
    fb_train = without_texts(fb_train, [t for t, _ in fb_hold], notes, "the feedback holdout")
    train_ds = merge_feedback(original, fb_train, notes)
    counts = {
        "original": len(original),
        "feedback": len(fb_train),
        "training": len(train_ds),
        "fixed_holdout": len(fixed),
        "feedback_holdout": len(fb_hold),
    }

    work = Path(tempfile.mkdtemp(prefix="hrlm-retrain-"))
    try:
        from hrlm.data import split_dataset

        splits = split_dataset(train_ds, val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed)

        def on_eval(entry: dict[str, Any]) -> None:
            done = min(float(entry.get("epoch", 0.0)) / max(cfg.epochs, 1e-9), 1.0)
            val = entry.get("val_metric")
            shown = f", validation {cfg.metric} {val:.3f}" if isinstance(val, int | float) else ""
            report(0.1 + 0.65 * done, f"training: epoch {entry.get('epoch', 0):g} of {cfg.epochs:g}{shown}")

        report(0.1, f"training on {len(train_ds)} texts ({len(fb_train)} from feedback)")
        folder = work / _candidate_name(parent.path.name)
        t0 = time.perf_counter()
        trained = fit(cfg, splits, folder, progress=False, on_eval=on_eval)
        train_s = time.perf_counter() - t0
        if trained.interrupted:
            raise HrlmError("training was interrupted; nothing was registered and production is unchanged.")

        report(0.78, "evaluating the candidate and production on the holdouts")
        gate = _gate(parent, folder, fixed, fb_hold, margin, settings.threads, notes)
        if audit_path is not None:
            report(0.85, "bias audit of the candidate and production")
            gate_audit(gate, parent, folder, audit_path, settings, cfg.text_col)
        gate["train_seconds"] = round(train_s, 2)
        gate["data"] = counts
        _write_gate(folder, gate, notes)

        report(0.92, "registering the candidate")
        promote = gate["decision"] == "promote"
        metrics = {
            GATE_METRIC: gate["fixed_holdout"]["candidate"],
            "fixed_holdout_n": gate["fixed_holdout"]["n"],
            "feedback_examples": len(fb_train),
        }
        candidate = registry.register(
            folder,
            origin="retrain",
            parent=parent.version,
            metrics=metrics,
            gate=gate,
            note=f"retrained from {parent.version} with {len(fb_train)} feedback examples",
            actor=actor,
            stage="candidate",
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    reason = gate["reason"]
    if promote:
        report(0.97, f"promoting {candidate.version}")
        registry.promote(candidate.version, actor, reason, gate=gate)
    else:
        report(0.97, f"rejecting {candidate.version}")
        registry.reject(candidate.version, actor, reason, gate=gate)
    current = registry.production()
    log.info("retrain: %s %s (%s)", "promoted" if promote else "rejected", candidate.version, reason)
    return {
        "decision": "promoted" if promote else "rejected",
        "candidate": candidate.version,
        "parent": parent.version,
        "production": current.version if current is not None else None,
        "gate": gate,
        "data": counts,
        "notes": notes,
    }


def _required(value: str | Path | None, name: str, flag: str) -> Path:
    if not value:
        raise ConfigError(
            f"{name} is not set; retraining needs it: pass {flag} or set HRLM_{name.upper()} ([serve] {name})."
        )
    path = Path(value).expanduser()
    if not path.is_file():
        raise ConfigError(f"{name} = {str(path)!r} is not a file; pass an existing data file ({flag}).")
    return path


def _parent(registry: Registry, base: str | None) -> VersionInfo:
    if base is not None:
        return registry.get(base)  # NotFound names the version
    production = registry.production()
    if production is None:
        raise NotFound(
            "the registry has no production version to retrain; register one with "
            "`hrlm models register DIR --promote`, or pass --base VERSION."
        )
    return production


def _load_holdout(path: Path, cfg: TrainConfig) -> Dataset:
    from hrlm.data import load_dataset

    return load_dataset(path, text_col=cfg.text_col, label_col=cfg.label_col, label_sep=cfg.label_sep)


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _refuse_overlap(train: Dataset, holdout: Dataset, train_path: Path, holdout_path: Path) -> None:
    shared = sorted({_norm(t) for t in train.texts} & {_norm(t) for t in holdout.texts})
    if shared:
        raise DataError(
            f"the holdout {holdout_path} shares {len(shared)} text(s) with the training data {train_path} "
            f"(e.g. {shared[0][:60]!r}); the gate must measure on texts never trained on. Remove them from one file."
        )


def feedback_examples(
    examples: Sequence[tuple[str, Any]], multi: bool, notes: list[str], what: str
) -> list[tuple[str, Any]]:
    """Reviewed examples as (text, label) of the data's kind: a label list for multi-label data."""
    out: list[tuple[str, Any]] = []
    skipped = 0
    for text, label in examples:
        labels = [p for p in label.split("|") if p] if isinstance(label, str) else [str(p) for p in label or []]
        if not text or not labels:
            skipped += 1
        elif multi:
            out.append((text, sorted(set(labels))))
        elif len(labels) == 1:
            out.append((text, labels[0]))
        else:
            skipped += 1
    if skipped:
        notes.append(f"{skipped} {what} feedback example(s) without a usable label were left out")
    return out


def without_texts(
    rows: list[tuple[str, Any]], texts: Sequence[str], notes: list[str], what: str
) -> list[tuple[str, Any]]:
    banned = {_norm(t) for t in texts}
    kept = [r for r in rows if _norm(r[0]) not in banned]
    if len(kept) < len(rows):
        notes.append(f"{len(rows) - len(kept)} feedback example(s) also in {what} were kept out of training")
    return kept


def merge_feedback(original: Dataset, feedback: list[tuple[str, Any]], notes: list[str]) -> Dataset:
    """The training file plus feedback; a reviewed text replaces the file's row for the same text."""
    if not feedback:
        return original
    assert original.labels is not None
    reviewed = {_norm(t) for t, _ in feedback}
    keep = [i for i, t in enumerate(original.texts) if _norm(t) not in reviewed]
    if len(keep) < len(original):
        notes.append(f"{len(original) - len(keep)} training row(s) were replaced by their reviewed label")
    base = original.subset(keep)
    assert base.labels is not None
    n = len(feedback)
    return replace(
        base,
        texts=base.texts + [t for t, _ in feedback],
        labels=base.labels + [label for _, label in feedback],
        groups=None if base.groups is None else base.groups + [f"feedback-{i}" for i in range(n)],
        splits=None if base.splits is None else base.splits + ["train"] * n,
        source=f"{original.source} + {n} feedback",
        notes=list(original.notes),
    )


def _gate(
    parent: VersionInfo,
    candidate_dir: Path,
    fixed: Dataset,
    fb_hold: list[tuple[str, Any]],
    margin: float,
    threads: int | None,
    notes: list[str],
) -> dict[str, Any]:
    """Score both models on both holdouts and decide."""
    from hrlm.data import dataset_from_records
    from hrlm.inference import Predictor, evaluate_dataset

    production = Predictor.from_dir(parent.path, threads=threads)
    candidate = Predictor.from_dir(candidate_dir, threads=threads)
    known = set(production.labels) & set(candidate.labels)
    fixed_ds = _known_rows(fixed, known, notes, "fixed holdout")
    if len(fixed_ds) == 0:
        raise DataError(
            f"no row of the holdout {fixed.source} has a label both models know ({sorted(known)[:5]}); "
            "fix the holdout's label column."
        )
    fixed_cmp = _compare(evaluate_dataset(production, fixed_ds), evaluate_dataset(candidate, fixed_ds), margin)
    fixed_cmp["file"] = fixed.source
    fb_cmp: dict[str, Any] = {"n": 0, "production": None, "candidate": None, "delta": None, "passed": None}
    if fb_hold:
        fb_ds = _known_rows(
            dataset_from_records([t for t, _ in fb_hold], [lab for _, lab in fb_hold]), known, notes, "feedback holdout"
        )
        if len(fb_ds):
            # the feedback holdout vetoes only a clear loss: worse by more than |margin|
            fb_cmp = _compare(evaluate_dataset(production, fb_ds), evaluate_dataset(candidate, fb_ds), -abs(margin))
    fb_cmp["counts"] = fb_cmp["n"] >= FEEDBACK_GATE_MIN
    if not fb_cmp["counts"]:
        fb_cmp["passed"] = None
    wins = fixed_cmp["passed"]
    vetoed = fb_cmp["counts"] and not fb_cmp["passed"]
    if wins and not vetoed:
        reason = (
            f"candidate macro F1 {fixed_cmp['candidate']:.4f} >= production {fixed_cmp['production']:.4f} + {margin:g}"
        )
    elif not wins:
        reason = (
            f"candidate macro F1 {fixed_cmp['candidate']:.4f} < production {fixed_cmp['production']:.4f} + {margin:g}"
        )
    else:
        reason = (
            f"worse on the feedback holdout ({fb_cmp['candidate']:.4f} vs {fb_cmp['production']:.4f}, "
            f"n = {fb_cmp['n']}) by more than {abs(margin):g}"
        )
    return {
        "metric": GATE_METRIC,
        "margin": margin,
        "production": parent.version,
        "fixed_holdout": fixed_cmp,
        "feedback_holdout": fb_cmp,
        "decision": "promote" if wins and not vetoed else "reject",
        "reason": reason,
    }


def _known_rows(ds: Dataset, known: set[str], notes: list[str], what: str) -> Dataset:
    assert ds.labels is not None
    labels = ds.labels
    keep = [i for i, lab in enumerate(labels) if set(lab if ds.multi_label else [lab]) <= known]
    if len(keep) < len(ds):
        notes.append(f"{len(ds) - len(keep)} {what} row(s) with a label one of the models lacks were not scored")
    return ds.subset(keep)


def _compare(prod: dict[str, Any], cand: dict[str, Any], margin: float) -> dict[str, Any]:
    p, c = float(prod[GATE_METRIC]), float(cand[GATE_METRIC])
    return {
        "n": int(prod["n"]),
        "production": round(p, 6),
        "candidate": round(c, 6),
        "delta": round(c - p, 6),
        "passed": c >= p + margin - 1e-12,
        "accuracy": {"production": prod.get("accuracy"), "candidate": cand.get("accuracy")},
    }


def _candidate_name(parent_name: str) -> str:
    """``tickets-1a2b3c4d`` -> ``tickets-r20261128T101500``: the lineage's name and when it was retrained."""
    stem = re.sub(r"(-r\d{8}T\d{6})?(-[0-9a-f]{8})?(-\d+)?$", "", parent_name) or "model"
    return f"{stem}-r{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"


def _write_gate(folder: Path, gate: dict[str, Any], notes: list[str]) -> None:
    """``report/gate.md`` (for people) and ``report/gate.json`` in the candidate's folder."""
    (folder / "report").mkdir(exist_ok=True)
    (folder / "report" / "gate.json").write_text(json.dumps({**gate, "notes": notes}, indent=2) + "\n", "utf-8")
    (folder / "report" / "gate.md").write_text(format_gate(gate, notes), "utf-8")


def format_gate(gate: dict[str, Any], notes: Sequence[str] = ()) -> str:
    """The gate's comparison as Markdown: the decision, a table per holdout, and the notes."""

    def num(value: Any) -> str:
        return "-" if value is None else f"{value:+.4f}" if isinstance(value, float) and value < 0 else f"{value:.4f}"

    fixed, fb = gate["fixed_holdout"], gate["feedback_holdout"]
    counted = "counts in the gate" if fb.get("counts") else f"informative only (fewer than {FEEDBACK_GATE_MIN} items)"
    lines = [
        f"# Promotion gate: {gate['decision']}",
        "",
        f"{gate['reason']}.",
        "",
        f"Compared with production version `{gate['production']}` on {gate['metric']}, margin {gate['margin']:g}.",
        "",
        "| holdout | n | production | candidate | delta | passed |",
        "|---|---|---|---|---|---|",
        f"| fixed ({Path(str(fixed.get('file', ''))).name}) | {fixed['n']} | {num(fixed['production'])} | "
        f"{num(fixed['candidate'])} | {num(fixed['delta'])} | {fixed['passed']} |",
        f"| feedback ({counted}) | {fb['n']} | {num(fb['production'])} | {num(fb['candidate'])} | "
        f"{num(fb['delta'])} | {'-' if fb['passed'] is None else fb['passed']} |",
    ]
    lines += format_audit(gate.get("audit"), num)
    data = gate.get("data")
    if data:
        lines += ["", "Training data: " + ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in data.items()) + "."]
    if notes:
        lines += ["", "Notes:", *(f"- {n}" for n in notes)]
    return "\n".join(lines) + "\n"
