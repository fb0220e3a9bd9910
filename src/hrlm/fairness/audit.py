"""A bias audit of a model on a data file: :func:`run_audit` and its :class:`AuditResult`.

The model labels every text of the file; the texts' group columns (sex, race/ethnicity, age band,
... as the data holds them) sort them into categories; :mod:`hrlm.fairness.groups` computes the
selection and scoring rates and the impact ratios per category and intersection, and
:mod:`hrlm.fairness.counterfactual` swaps the gendered words of each text to see whether the
prediction follows them. :meth:`AuditResult.to_dict` holds what NYC Local Law 144 asks a published
summary to hold: the date of the audit, the source of the data and an explanation of it, the
number of rows per category (unknown included), the selection and scoring rates, the impact
ratios, and the distribution date of the tool when given.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from hrlm.errors import ConfigError, DataError
from hrlm.fairness.counterfactual import counterfactual_probe
from hrlm.fairness.groups import FOUR_FIFTHS, SMALL_SHARE, Labelled, audit_groups
from hrlm.fairness.predictions import ModelOutputs, model_outputs, positive_label

__all__ = ["AuditResult", "load_audit_frame", "run_audit"]


@dataclass
class AuditResult:
    """What an audit found; :meth:`to_dict` is ``audit.json``.

    ``groupings`` is :func:`hrlm.fairness.groups.audit_groups`' table; ``counterfactual`` is
    :func:`hrlm.fairness.counterfactual.counterfactual_probe`'s result, or ``None`` when not run.
    """

    date: str
    created_at: str
    model: dict[str, Any]
    data_source: str
    explanation: str
    positive: str
    threshold: float
    small_share: float
    group_cols: list[str]
    text_col: str
    label_col: str | None
    n: int
    overall: dict[str, Any]
    groupings: list[dict[str, Any]]
    counterfactual: dict[str, Any] | None = None
    max_flip_rate: float | None = None
    distribution_date: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def min_impact_ratio(self) -> float | None:
        """The lowest impact ratio (of selection rates) of any compared category of any grouping."""
        ratios = [g["min_impact_ratio"] for g in self.groupings if g["min_impact_ratio"] is not None]
        return min(ratios) if ratios else None

    def passed(
        self, min_impact_ratio: float | None = None, max_flip_rate: float | None = None
    ) -> tuple[bool, list[str]]:
        """Whether every impact ratio is at least ``min_impact_ratio`` and the flip rate at most ``max_flip_rate``.

        Args:
            min_impact_ratio: default: the audit's ``threshold`` (0.8, the four-fifths rule).
            max_flip_rate: default: the audit's ``max_flip_rate``; ``None``: the flip rate is not checked.

        Returns:
            ``(passed, reasons)``: one line per grouping with a category under the ratio, and one for the flip rate.

        Example:
            >>> ok, reasons = result.passed(0.8)  # doctest: +SKIP
            >>> reasons  # doctest: +SKIP
            ["sex: impact ratio 0.412 of 'F' (selection rate 0.200 vs 0.485 of 'M') is under 0.8 (four-fifths rule)"]
        """
        limit = self.threshold if min_impact_ratio is None else float(min_impact_ratio)
        flip_limit = self.max_flip_rate if max_flip_rate is None else float(max_flip_rate)
        reasons: list[str] = []
        for g in self.groupings:
            low = [c for c in g["categories"] if c["impact_ratio"] is not None and c["impact_ratio"] < limit - 1e-12]
            if not low:
                continue
            worst = min(low, key=lambda c: c["impact_ratio"])
            best = max(g["categories"], key=lambda c: c["selection_rate"])
            more = f"; {len(low)} categories under it" if len(low) > 1 else ""
            reasons.append(
                f"{g['name']}: impact ratio {worst['impact_ratio']:.3f} of {worst['category']!r} (selection rate "
                f"{worst['selection_rate']:.3f} vs {best['selection_rate']:.3f} of {best['category']!r}) is under "
                f"{limit:g}{' (four-fifths rule)' if abs(limit - FOUR_FIFTHS) < 1e-9 else ''}{more}"
            )
        if flip_limit is not None:
            cf = self.counterfactual
            if cf is None:
                reasons.append(
                    f"the counterfactual probe did not run, so its flip rate (max {flip_limit:g}) is unknown"
                )
            elif cf["flip_rate"] is not None and cf["flip_rate"] > flip_limit + 1e-12:
                reasons.append(
                    f"counterfactual flip rate {cf['flip_rate']:.3f} ({cf['flipped']} of {cf['swapped']} texts with "
                    f"gendered words swapped changed label) is above {flip_limit:g}"
                )
        return not reasons, reasons

    def to_dict(self) -> dict[str, Any]:
        """The audit as JSON-ready data (``audit.json``); ``passed`` and ``reasons`` use the audit's own thresholds."""
        ok, reasons = self.passed()
        return {
            "date": self.date,
            "created_at": self.created_at,
            "passed": ok,
            "reasons": reasons,
            "min_impact_ratio": self.min_impact_ratio,
            "threshold": self.threshold,
            "max_flip_rate": self.max_flip_rate,
            "small_share": self.small_share,
            "model": self.model,
            "positive": self.positive,
            "data_source": self.data_source,
            "explanation": self.explanation,
            "distribution_date": self.distribution_date,
            "group_cols": list(self.group_cols),
            "text_col": self.text_col,
            "label_col": self.label_col,
            "n": self.n,
            "overall": self.overall,
            "groupings": self.groupings,
            "counterfactual": self.counterfactual,
            "notes": list(self.notes),
        }


def load_audit_frame(
    data: str | os.PathLike[str] | pd.DataFrame,
    *,
    group_cols: Sequence[str],
    text_col: str = "text",
    label_col: str | None = None,
) -> tuple[pd.DataFrame, str, list[str]]:
    """Read and check the audit data: the frame (rows without text dropped), where it came from, and notes.

    Raises:
        ConfigError: no group column given.
        DataError: an unreadable or empty file, or a missing text, group or label column.
    """
    from hrlm.data import read_table

    if not group_cols:
        raise ConfigError("no group column given; pass --group-col COL once per group column of the data.")
    if isinstance(data, pd.DataFrame):
        frame, source = data.copy(), "a table in memory"
    else:
        frame, source = read_table(Path(data)), str(data)
    if len(frame) == 0:
        raise DataError(f"{source}: no data rows; pass a file with a header row and at least one row.")
    columns = sorted(str(c) for c in frame.columns)
    checks = [(text_col, "--text-col")] + [(c, "--group-col") for c in group_cols]
    checks += [(label_col, "--label-col")] if label_col else []
    for name, flag in checks:
        if name not in frame.columns:
            raise DataError(
                f"column {name!r} not found in {source}; columns are {columns}. Pass {flag} with one of them."
            )
    notes: list[str] = []
    texts = frame[text_col]
    empty = texts.isna() | texts.astype(str).str.strip().eq("")
    if empty.any():
        notes.append(f"{int(empty.sum())} row(s) without text were left out")
        frame = frame.loc[~empty]
    if len(frame) == 0:
        raise DataError(f"{source}: no row has a text in column {text_col!r}; pass --text-col naming the text column.")
    return frame.reset_index(drop=True), source, notes


def run_audit(
    predictor_or_model_dir: Any,
    data: str | os.PathLike[str] | pd.DataFrame,
    *,
    group_cols: Sequence[str],
    positive: str,
    text_col: str = "text",
    label_col: str | None = None,
    threshold: float = FOUR_FIFTHS,
    small_share: float = SMALL_SHARE,
    data_source: str | None = None,
    explanation: str | None = None,
    counterfactual: bool = True,
    max_flip_rate: float | None = None,
    distribution_date: str | None = None,
    model_name: str | None = None,
    threads: int | None = None,
) -> AuditResult:
    """Audit a model for adverse impact on the groups of a data file.

    Args:
        predictor_or_model_dir: a :class:`~hrlm.inference.Predictor` or a model folder.
        data: a CSV, JSONL or Parquet file (or a DataFrame) with a text column and the group columns.
        group_cols: the group columns; each, their pairs (three or more) and their intersection are audited.
        positive: the label that counts as selected (e.g. ``interview``).
        text_col, label_col: the text column and, optionally, the true labels (per-group accuracy, F1, ECE).
        threshold: impact ratios under it are flagged and fail the audit (0.8: the four-fifths rule).
        small_share: categories under this share of the rows are reported apart (0.02, the LL144 option).
        data_source, explanation: what the data is and how it was gathered, for the published summary.
        counterfactual: run the gender-swap probe (:func:`hrlm.fairness.counterfactual_probe`).
        max_flip_rate: also fail when the probe's flip rate is above it.
        distribution_date: when the model was first used on real decisions, for the summary.
        model_name: how the model is named in the report (default: its folder).
        threads: CPU threads of a Predictor loaded from a folder.

    Returns:
        The :class:`AuditResult`.

    Raises:
        ConfigError: ``positive`` is not a label of the model, a threshold is out of range.
        DataError: the file is unreadable or empty, or a named column is missing.

    Example:
        >>> result = run_audit("runs/cv", "cvs.csv", group_cols=["sex", "race"], positive="interview")  # doctest: +SKIP
        >>> result.passed()  # doctest: +SKIP
        (True, [])
    """
    from hrlm.inference import Predictor

    if not 0 < threshold <= 1:
        raise ConfigError(
            f"--min-impact-ratio {threshold!r} must be above 0 and at most 1 (0.8: the four-fifths rule)."
        )
    if max_flip_rate is not None and not 0 <= max_flip_rate <= 1:
        raise ConfigError(f"--max-flip-rate {max_flip_rate!r} must be between 0 and 1.")
    if not 0 <= small_share < 1:
        raise ConfigError(f"small_share = {small_share!r} must be at least 0 and under 1 (0.02 is the LL144 option).")
    frame, source, notes = load_audit_frame(data, group_cols=group_cols, text_col=text_col, label_col=label_col)
    if isinstance(predictor_or_model_dir, str | os.PathLike):
        folder = Path(predictor_or_model_dir)
        predictor = Predictor.from_dir(folder, threads=threads)
        model: dict[str, Any] = {"name": model_name or folder.name, "path": str(folder)}
    else:
        predictor = predictor_or_model_dir
        model = {"name": model_name or type(predictor).__name__, "path": None}
    pos = positive_label(predictor, positive)
    task = predictor.tasks[0]
    model["labels"] = [str(label) for label in task.labels]
    texts = frame[text_col].astype(str).tolist()
    out = model_outputs(predictor, texts, pos)
    labelled = _labelled(frame, label_col, out, predictor, pos, notes) if label_col else None
    groups = frame[list(dict.fromkeys(group_cols))].astype(object)
    groupings = audit_groups(
        groups, out.selected, out.scores, labelled=labelled, threshold=threshold, small_share=small_share
    )
    overall = _overall(out, labelled)
    for g in groupings:
        if g["categories"] and g["min_impact_ratio"] is None:
            notes.append(f"{g['name']}: no compared category had a text selected, so no impact ratio can be computed")
    probe = counterfactual_probe(predictor, texts, positive=pos) if counterfactual else None
    now = dt.datetime.now(dt.UTC)
    return AuditResult(
        date=now.date().isoformat(),
        created_at=now.isoformat(timespec="seconds"),
        model=model,
        data_source=data_source or source,
        explanation=explanation or _explain(len(frame), pos, group_cols, small_share),
        positive=pos,
        threshold=float(threshold),
        small_share=float(small_share),
        group_cols=list(dict.fromkeys(group_cols)),
        text_col=text_col,
        label_col=label_col,
        n=len(frame),
        overall=overall,
        groupings=groupings,
        counterfactual=probe,
        max_flip_rate=max_flip_rate,
        distribution_date=distribution_date,
        notes=notes,
    )


def _labelled(
    frame: pd.DataFrame, label_col: str, out: ModelOutputs, predictor: Any, pos: str, notes: list[str]
) -> Labelled:
    task = predictor.tasks[0]
    labels = [str(label) for label in task.labels]
    true: list[Any] = []
    unknown_labels = 0
    for value in frame[label_col]:
        text = "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()
        if task.multi_label:
            parts = [p for p in text.split("|") if p] if text else []
            keep: Any = parts if parts and set(parts) <= set(labels) else None
        else:
            keep = text if text in labels else None
        unknown_labels += int(bool(text) and keep is None)
        true.append(keep)
    if unknown_labels:
        notes.append(f"{unknown_labels} row(s) with a label the model does not have were left out of accuracy and F1")
    return Labelled(true, out.labels, out.probs, labels, pos, task.multi_label)


def _overall(out: ModelOutputs, labelled: Labelled | None) -> dict[str, Any]:
    n = len(out.selected)
    median = float(np.median(out.scores)) if n else 0.0
    overall: dict[str, Any] = {
        "n": n,
        "selected": int(out.selected.sum()),
        "selection_rate": round(float(out.selected.mean()), 6) if n else None,
        "median_score": round(median, 6),
        "scoring_rate": round(float((out.scores > median).mean()), 6) if n else None,
    }
    if labelled is not None:
        idx = [i for i, t in enumerate(labelled.true) if t is not None]
        overall["labelled"] = len(idx)
        if idx:
            from sklearn.metrics import f1_score

            def hit(v: Any) -> int:
                return int(labelled.positive in v) if labelled.multi_label else int(v == labelled.positive)

            same = [
                sorted(labelled.true[i]) == sorted(labelled.pred[i])
                if labelled.multi_label
                else labelled.true[i] == labelled.pred[i]
                for i in idx
            ]
            overall["accuracy"] = round(float(np.mean(same)), 6)
            overall["f1"] = round(
                float(
                    f1_score(
                        [hit(labelled.true[i]) for i in idx], [hit(labelled.pred[i]) for i in idx], zero_division=0
                    )
                ),
                6,
            )
    return overall


def _explain(n: int, positive: str, group_cols: Sequence[str], small_share: float) -> str:
    return (
        f"{n} texts, each labelled by the model; a text counts as selected when the model predicts {positive!r}. "
        f"Selection rate: the share of a category's texts selected; impact ratio: a category's selection rate over "
        f"the highest of its grouping; scoring rate: the share above the median probability of {positive!r} over "
        f"all texts. Groups come from the column(s) {', '.join(group_cols)} as recorded in the data; rows with an "
        f"empty group value are counted as unknown. Categories under {small_share:.0%} of the texts are reported "
        "apart and not compared."
    )
