"""The monitor's time series: per window, what the model received and how well it did.

:func:`compute_series` reads the prediction store over UTC-aligned windows (hour, day, week); per
window it measures the volume, the predicted-label distribution and its PSI against the reference,
the confidence PSI, text length (mean and PSI) and the unknown-token rate, the embedding drift score
on up to ``sample_size`` stored texts, the accuracy and macro F1 of the reviewed random slice (items
queued for reason ``random``: chosen whatever the model said, so unbiased) with a 95% Wilson
interval, the label-free CBPE estimate from the stored probabilities, and the scheduled holdout
evaluations (the ``evaluations`` table) that fall in the window.

A prediction's ``text`` may be missing (not stored, or removed by retention): the text measurements
then use the texts that are there, and the window's ``notes`` say how many.

:func:`series_from_texts` measures the same on windows of texts without a database (benchmarks,
files, streams): the model is run over each window, and given labels stand in for reviews.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hrlm.errors import ConfigError
from hrlm.monitoring.measure import WindowMeasurer, WindowStats, embedder
from hrlm.monitoring.reference import Reference, predict_and_embed
from hrlm.monitoring.settings import MonitorSettings

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from hrlm.inference import Predictor

WINDOW_LENGTHS = {"hour": dt.timedelta(hours=1), "day": dt.timedelta(days=1), "week": dt.timedelta(weeks=1)}


def window_start(at: dt.datetime, window: str) -> dt.datetime:
    """The start of the UTC-aligned window holding ``at`` (weeks start on Monday).

    Example:
        >>> window_start(dt.datetime(2026, 12, 2, 15, 30, tzinfo=dt.UTC), "week").isoformat()
        '2026-11-30T00:00:00+00:00'
    """
    if window not in WINDOW_LENGTHS:
        raise ConfigError(f"window = {window!r}: must be one of {', '.join(WINDOW_LENGTHS)}.")
    at = _utc(at)
    if window == "hour":
        return at.replace(minute=0, second=0, microsecond=0)
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return day if window == "day" else day - dt.timedelta(days=day.weekday())


def _utc(at: dt.datetime) -> dt.datetime:
    return at.replace(tzinfo=dt.UTC) if at.tzinfo is None else at.astimezone(dt.UTC)


@dataclass
class MonitorSeries:
    """The measured windows, oldest first, with the reference and the settings they were judged by."""

    windows: list[WindowStats]
    reference: dict[str, Any]
    settings: MonitorSettings
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    model_version: str | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "model_version": self.model_version,
            "settings": self.settings.to_dict(),
            "reference": self.reference,
            "windows": [w.to_dict() for w in self.windows],
            "notes": list(self.notes),
        }


# -- from texts ----------------------------------------------------------------------------------


def series_from_texts(
    predictor: Predictor,
    reference: Reference,
    windows: Sequence[tuple[str, Sequence[str]]],
    labels: Sequence[Sequence[str] | None] | None = None,
    *,
    settings: MonitorSettings | None = None,
) -> MonitorSeries:
    """Measure windows of texts (no database, no times): the model is run over each window.

    Args:
        predictor: the model (a torch backend, for the embedding drift score).
        reference: what the windows are compared with.
        windows: ``(label, texts)`` per window, in order.
        labels: the true labels per window (or ``None`` per window, or overall); they stand in for
            the reviewed slice (``reviewed``, ``accuracy`` with its interval, ``macro_f1``).
        settings: the thresholds and sample size (default :class:`MonitorSettings`).

    Returns:
        A :class:`MonitorSeries` whose windows have no ``start``/``end``.

    Example:
        >>> s = series_from_texts(predictor, ref, [("w1", texts[:100]), ("w2", texts[100:200])])  # doctest: +SKIP
    """
    settings = settings or MonitorSettings()
    if labels is not None and len(labels) != len(windows):
        raise ConfigError(f"labels: {len(labels)} lists for {len(windows)} windows; give one per window (or None).")
    m = WindowMeasurer(reference, settings, predictor.tokenizer, embedder(predictor, reference))
    task = predictor.tasks[0]
    out = []
    for i, (name, texts) in enumerate(windows):
        texts = list(texts)
        probs, vectors, _ = predict_and_embed(predictor, texts)
        predicted = [task.labels[j] for j in probs.argmax(axis=1)] if len(probs) else []
        w = WindowStats(label=str(name), start=None, end=None, volume=0, judged=False)
        m.measure(
            w,
            predicted=predicted,
            confidence=probs.max(axis=1) if len(probs) else np.zeros(0),
            probs=None if task.multi_label else probs,
            texts=texts,
            seed=i,
            vectors=vectors if len(reference.embeddings) else None,
        )
        truth = labels[i] if labels is not None else None
        if truth is not None:
            if len(truth) != len(texts):
                raise ConfigError(f"labels[{i}]: {len(truth)} labels for {len(texts)} texts in window {name!r}.")
            m.judge_labels(w, [str(t) for t in truth], predicted)
            w.notes.append("accuracy from the labels given with the texts")
        out.append(w)
    return MonitorSeries(out, reference.summary(), settings)


# -- from the prediction store -------------------------------------------------------------------


def compute_series(
    engine: Engine,
    predictor: Predictor | None,
    reference: Reference,
    *,
    since: dt.datetime,
    until: dt.datetime | None = None,
    settings: MonitorSettings | None = None,
    model_version: str | None = None,
    evaluations: bool = True,
) -> MonitorSeries:
    """Measure the stored predictions over UTC-aligned windows from ``since`` to ``until``.

    Args:
        engine: the database (SQLite or PostgreSQL, migrated).
        predictor: the model, for the embedding drift score and the tokenizer (``None``: no embedding
            drift, and no length or unknown-token rate either).
        reference: what the windows are compared with.
        since, until: the span (``until`` defaults to now); the first window starts at the window
            holding ``since``, the last holds ``until``.
        settings: window, thresholds, sample size (default :class:`MonitorSettings`).
        model_version: only this version's predictions, reviews and evaluations (default: all).
        evaluations: join the scheduled holdout evaluations of the ``evaluations`` table.

    Returns:
        A :class:`MonitorSeries`, one :class:`WindowStats` per window, empty windows included.

    Raises:
        ConfigError: ``until`` before ``since``.

    Example:
        >>> week = compute_series(engine, predictor, ref, since=now - dt.timedelta(days=7))  # doctest: +SKIP
        >>> week.windows[-1].volume  # doctest: +SKIP
        1532
    """
    from sqlalchemy import select

    from hrlm.store.tables import evaluations as evaluations_table
    from hrlm.store.tables import predictions, utcnow

    settings = settings or MonitorSettings()
    since = _utc(since)
    until = _utc(until) if until is not None else utcnow()
    if until <= since:
        raise ConfigError(f"until ({until.isoformat()}) must be after since ({since.isoformat()}).")
    step = WINDOW_LENGTHS[settings.window]
    starts = []
    start = window_start(since, settings.window)
    while start < until:
        starts.append(start)
        start += step
    m = WindowMeasurer(reference, settings, predictor.tokenizer if predictor else None, embedder(predictor, reference))
    reviewed = _reviewed_random(engine, since, until, model_version, settings.window)
    evals: dict[dt.datetime, list[dict[str, Any]]] = defaultdict(list)
    if evaluations:
        query = select(evaluations_table).where(evaluations_table.c.at >= since, evaluations_table.c.at < until)
        if model_version:
            query = query.where(evaluations_table.c.model_version == model_version)
        with engine.connect() as conn:
            for row in conn.execute(query.order_by(evaluations_table.c.at)).mappings():
                at = _utc(row["at"])
                evals[window_start(at, settings.window)].append(
                    {
                        "at": at.isoformat(),
                        "model_version": row["model_version"],
                        "data": row["data"],
                        "data_fingerprint": row["data_fingerprint"],
                        "n": row["n"],
                        "metrics": row["metrics"],
                    }
                )
    cols = (
        predictions.c.model_version,
        predictions.c.text,
        predictions.c.label,
        predictions.c.confidence,
        predictions.c.output,
    )
    out = []
    for i, start in enumerate(starts):
        end = start + step
        lo, hi = max(start, since), min(end, until)
        query = select(*cols).where(predictions.c.created_at >= lo, predictions.c.created_at < hi)
        if model_version:
            query = query.where(predictions.c.model_version == model_version)
        with engine.connect() as conn:
            rows = conn.execute(query.order_by(predictions.c.id)).all()
        w = WindowStats(label=_label(start, settings.window), start=start, end=end, volume=0, judged=False)
        w.model_versions = sorted({r.model_version for r in rows})
        probs = _probabilities(rows, reference.labels)
        texts = [r.text for r in rows if r.text]
        if predictor is None and texts:
            w.notes.append("no model loaded: text length, unknown-token rate and embedding drift not measured")
            texts = []
        m.measure(
            w,
            predicted=[str(r.label) for r in rows],
            confidence=np.array([float(r.confidence) for r in rows], dtype=np.float64),
            probs=None if reference.multi_label else probs,
            texts=texts,
            seed=i,
        )
        if probs is None and rows and not reference.multi_label:
            w.notes.append("stored outputs lack the model's probabilities: no label-free estimate")
        pairs = reviewed.get(start, [])
        m.judge_labels(w, [t for t, _ in pairs], [p for _, p in pairs])
        w.evaluations = evals.get(start, [])
        out.append(w)
    return MonitorSeries(out, reference.summary(), settings, since, until, model_version)


def _label(start: dt.datetime, window: str) -> str:
    if window == "hour":
        return start.strftime("%Y-%m-%d %H:00")
    if window == "week":
        return "week of " + start.strftime("%Y-%m-%d")
    return start.strftime("%Y-%m-%d")


def _probabilities(rows: Sequence[Any], labels: list[str]) -> np.ndarray | None:
    """The stored probability rows in the reference's label order; ``None`` when any row lacks them."""
    if not rows:
        return None
    out = np.zeros((len(rows), len(labels)), dtype=np.float64)
    for i, r in enumerate(rows):
        stored = (r.output or {}).get("probabilities") if isinstance(r.output, dict) else None
        if not stored or any(lab not in stored for lab in labels):
            return None
        out[i] = [float(stored[lab]) for lab in labels]
    return out


def _reviewed_random(
    engine: Engine, since: dt.datetime, until: dt.datetime, model_version: str | None, window: str
) -> dict[dt.datetime, list[tuple[str, str]]]:
    """``(reviewers' label, model's label)`` of the done random-slice items, by the window of their prediction.

    An item counts when its reviewers agree (items they disagree on are left out, as
    :func:`hrlm.review.labelled_examples` does); the time is the prediction's (the review item's when
    the prediction row is gone).
    """
    from sqlalchemy import func, select

    from hrlm.store.tables import predictions, review_feedback, review_items

    at = func.coalesce(predictions.c.created_at, review_items.c.created_at)
    query = (
        select(review_items.c.id, review_items.c.suggestion, at.label("at"))
        .select_from(review_items.outerjoin(predictions, predictions.c.id == review_items.c.prediction_id))
        .where(review_items.c.reason == "random", review_items.c.state == "done", at >= since, at < until)
    )
    if model_version:
        query = query.where(review_items.c.model_version == model_version)
    with engine.connect() as conn:
        items = conn.execute(query.order_by(review_items.c.id)).all()
        answers: dict[int, set[str]] = defaultdict(set)
        ids = [r.id for r in items]
        for chunk in range(0, len(ids), 500):
            found = conn.execute(
                select(review_feedback.c.item_id, review_feedback.c.label).where(
                    review_feedback.c.item_id.in_(ids[chunk : chunk + 500]),
                    review_feedback.c.action.in_(("accept", "correct")),
                    review_feedback.c.label.is_not(None),
                )
            )
            for item_id, label in found:
                answers[item_id].add(str(label))
    out: dict[dt.datetime, list[tuple[str, str]]] = defaultdict(list)
    for r in items:
        labels = answers.get(r.id, set())
        if len(labels) == 1:
            out[window_start(_utc(r.at), window)].append((labels.pop(), str(r.suggestion)))
    return out
