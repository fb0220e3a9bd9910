"""compute_series over the prediction store (SQLite and PostgreSQL): volumes, the reviewed random slice's
accuracy and Wilson interval, the CBPE estimate, holdout evaluations, missing texts; and the rules."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import Engine, insert

from hrlm.inference import Predictor
from hrlm.monitoring import (
    MonitorSettings,
    Reference,
    build_reference,
    cbpe,
    check_rules,
    compute_series,
    reference_for,
    series_from_texts,
)
from hrlm.store.tables import evaluations, predictions, review_feedback, review_items
from tests.conftest import make_texts, write_csv

DAY1 = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
DAY2 = DAY1 + dt.timedelta(days=1)


@pytest.fixture(scope="module")
def predictor(trained_model: Path) -> Predictor:
    return Predictor.from_dir(trained_model, backend="torch-fp32", threads=1)


@pytest.fixture(scope="module")
def reference(predictor: Predictor) -> Reference:
    rows = make_texts(20, seed=5)
    return build_reference(predictor, [t for t, _ in rows], [lab for _, lab in rows], source="toy")


def _store(engine: Engine, predictor: Predictor, texts: list[str], at: dt.datetime, version: str) -> list[int]:
    preds = predictor.predict(texts)
    rows = [
        {
            "request_id": f"r-{at:%d}-{i}-{version}",
            "position": 0,
            "created_at": at + dt.timedelta(minutes=i),
            "model_version": version,
            "text": None if i == 0 else text,  # the first text of each day was not stored
            "label": p.label,
            "confidence": p.score,
            "output": p.to_dict(),
            "latency_ms": 1.0,
            "batch_size": 1,
        }
        for i, (text, p) in enumerate(zip(texts, preds, strict=True))
    ]
    with engine.begin() as conn:
        return [conn.execute(insert(predictions).returning(predictions.c.id), [r]).scalar_one() for r in rows]


def _review(engine: Engine, prediction_id: int, suggestion: str, answers: list[str], reason: str = "random") -> None:
    with engine.begin() as conn:
        item_id = conn.execute(
            insert(review_items).returning(review_items.c.id),
            [
                {
                    "prediction_id": prediction_id,
                    "created_at": DAY2 + dt.timedelta(days=5),  # reviewed later: the prediction's time counts
                    "model_version": "v1",
                    "text": "t",
                    "text_hash": f"h{prediction_id}",
                    "suggestion": suggestion,
                    "output": {},
                    "reason": reason,
                    "score": 0.0,
                    "reviews_needed": len(answers),
                    "holdout": False,
                    "state": "done",
                }
            ],
        ).scalar_one()
        for k, label in enumerate(answers):
            conn.execute(
                insert(review_feedback),
                [
                    {
                        "item_id": item_id,
                        "reviewer": f"rev{k}",
                        "at": DAY2 + dt.timedelta(days=5),
                        "action": "accept" if label == suggestion else "correct",
                        "label": label,
                        "previous_label": suggestion,
                        "model_version": "v1",
                    }
                ],
            )


def _other(label: str, labels: list[str]) -> str:
    return next(x for x in labels if x != label)


def test_series_counts_windows_reviews_and_evaluations_by_hand(
    engine: Engine, predictor: Predictor, reference: Reference
) -> None:
    texts = [t for t, _ in make_texts(4, seed=9)]
    day1, day2 = texts[:6], texts[6:10]
    ids1 = _store(engine, predictor, day1, DAY1 + dt.timedelta(hours=3), "v1")
    ids2 = _store(engine, predictor, day2, DAY2 + dt.timedelta(hours=1), "v1")
    _store(engine, predictor, texts[10:13], DAY1 + dt.timedelta(hours=5), "v0")  # another version: left out
    sugg1 = [p.label for p in predictor.predict(day1)]
    sugg2 = [p.label for p in predictor.predict(day2)]
    labels = predictor.labels
    # day 1: 4 of 5 random items right; one where reviewers disagree and one low-confidence item are left out
    for i in range(4):
        _review(engine, ids1[i], sugg1[i], [sugg1[i]])
    _review(engine, ids1[4], sugg1[4], [_other(sugg1[4], labels)])
    _review(engine, ids1[5], sugg1[5], [sugg1[5], _other(sugg1[5], labels)])
    _review(engine, ids2[0], sugg2[0], [sugg2[0]], reason="low_confidence")
    # day 2: 1 of 2 right
    _review(engine, ids2[1], sugg2[1], [sugg2[1]])
    _review(engine, ids2[2], sugg2[2], [_other(sugg2[2], labels)])
    with engine.begin() as conn:
        conn.execute(
            insert(evaluations),
            [
                {
                    "at": DAY2 + dt.timedelta(hours=12),
                    "model_version": "v1",
                    "data": "holdout.csv",
                    "n": 40,
                    "metrics": {"accuracy": 0.5, "macro_f1": 0.4},
                }
            ],
        )
    settings = MonitorSettings(min_volume=5, min_reviewed=2, sample_size=10)
    series = compute_series(
        engine,
        predictor,
        reference,
        since=DAY1,
        until=DAY2 + dt.timedelta(days=1),
        settings=settings,
        model_version="v1",
    )
    w1, w2 = series.windows
    assert (w1.label, w1.start, w1.end) == ("2026-11-02", DAY1, DAY2)
    assert (w1.volume, w2.volume) == (6, 4)
    assert (w1.judged, w2.judged) == (True, False)
    assert (w1.texts, w2.texts) == (5, 3)
    assert any("5 of 6 predictions" in n for n in w1.notes)
    assert (w1.reviewed, w1.accuracy) == (5, pytest.approx(0.8))
    # Wilson 95% for 4 of 5, by hand: centre 0.6697, half-width 0.2941
    assert (w1.accuracy_low, w1.accuracy_high) == (pytest.approx(0.3755, abs=1e-4), pytest.approx(0.9638, abs=1e-4))
    assert (w2.reviewed, w2.accuracy) == (2, pytest.approx(0.5))
    assert [e["metrics"]["accuracy"] for e in w2.evaluations] == [0.5] and w1.evaluations == []
    probs = predictor.predict_proba(day1)["label"]
    assert reference.calibrator is not None
    ordered = probs[:, [predictor.labels.index(x) for x in reference.labels]]
    expected = cbpe(reference.calibrator.transform(ordered), ordered.argmax(axis=1))
    assert w1.estimated_accuracy == pytest.approx(expected.accuracy, abs=1e-5)
    assert w1.label_counts == {lab: sugg1.count(lab) for lab in set(sugg1)}
    assert w1.embedded == 5 and w1.embedding_drift is not None
    data = series.to_dict()
    assert data["windows"][0]["start"] == DAY1.isoformat() and data["model_version"] == "v1"
    # the holdout evaluation is judged whatever the volume; a drop of 0.05 from the reference alerts
    alerts = check_rules(series, settings.replace(accuracy_drop=0.05))
    holdout = [a for a in alerts if a.rule == "holdout_drop"]
    assert (reference.accuracy or 0) > 0.55
    assert len(holdout) == 1 and holdout[0].window_start == DAY2 and holdout[0].model_version == "v1"


def test_series_of_an_empty_span_has_empty_windows(engine: Engine, predictor: Predictor, reference: Reference) -> None:
    series = compute_series(
        engine,
        predictor,
        reference,
        since=DAY1,
        until=DAY1 + dt.timedelta(hours=3),
        settings=MonitorSettings(window="hour"),
    )
    assert [w.volume for w in series.windows] == [0, 0, 0]
    assert check_rules(series) == []


def _shifted(rows: list[tuple[str, str]]) -> list[str]:
    # every text made three times longer with words the toy vocabulary does not hold
    return [f"{t} zzqx qqzv xxvq wwzz vvqq {t} zzqx qqzv {t}" for t, _ in rows]


def test_rules_fire_on_a_shifted_window_and_not_on_unshifted_ones(predictor: Predictor, reference: Reference) -> None:
    settings = MonitorSettings(min_volume=20, sample_size=60)
    windows: list[tuple[str, Any]] = [(f"same-{i}", [t for t, _ in make_texts(20, seed=100 + i)]) for i in range(3)]
    windows.append(("shifted", _shifted(make_texts(20, seed=200))))
    series = series_from_texts(predictor, reference, windows, settings=settings)
    alerts = check_rules(series)
    assert {a.window for a in alerts} == {"shifted"}
    rules = {a.rule for a in alerts}
    assert {"length_psi", "unknown_rate"} <= rules
    assert all(a.window_start is None and a.message.startswith("shifted: ") for a in alerts)


def test_reference_is_cached_in_the_model_folder_and_rebuilt_when_the_data_changes(
    trained_model: Path, tmp_path: Path, predictor: Predictor
) -> None:
    import shutil

    model = tmp_path / "model"
    # without the references that earlier tests' services cached in the session's model folder
    shutil.copytree(trained_model, model, ignore=shutil.ignore_patterns("monitoring"))
    data = write_csv(tmp_path / "holdout.csv", make_texts(5, seed=3))
    first = reference_for(model, data, predictor)
    cached = list((model / "monitoring").glob("reference-*.npz"))
    assert len(cached) == 1 and cached[0].with_suffix(".json").is_file()
    again = reference_for(model, data)  # loads the cache, no model needed
    assert again.summary() == first.summary()
    assert np.array_equal(again.embeddings, first.embeddings) and again.temperature == first.temperature
    write_csv(data, make_texts(6, seed=3))
    changed = reference_for(model, data, predictor)
    assert changed.n == 18 and len(list((model / "monitoring").glob("reference-*.npz"))) == 2
