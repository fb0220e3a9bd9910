from __future__ import annotations

import random
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from hrlm.config import TrainConfig
from hrlm.data import Dataset, dataset_from_records
from hrlm.errors import DataError
from hrlm.training import selection
from hrlm.training.fewshot import method_and_reason
from hrlm.training.selection import CVResult, choose_by_cv, cross_validate, stratified_folds
from tests.conftest import make_texts


def toy(n_per_class: int, seed: int = 3) -> Dataset:
    rows = make_texts(n_per_class, seed=seed)
    return dataset_from_records([t for t, _ in rows], [lab for _, lab in rows])


def tiny_cfg(tiny_bert: Path, **changes: Any) -> TrainConfig:
    # Mean pooling: a random-weight [CLS] + tanh pooler learns too slowly for a test.
    settings: dict[str, Any] = {
        "base": str(tiny_bert),
        "max_length": 16,
        "stride": 4,
        "epochs": 1,
        "batch_size": 8,
        "lr": 3e-3,
        "setfit_pairs": 2,
        "pooling": "mean",
        "cv_folds": 3,
        **changes,
    }
    return TrainConfig(**settings)


def test_folds_are_stratified_disjoint_and_hold_every_text_out_once() -> None:
    ds = dataset_from_records([f"t{i}" for i in range(30)], ["a", "b", "c"] * 10)
    folds = stratified_folds(ds, 5, seed=0)
    assert len(folds) == 5
    held_out = Counter(i for _, held in folds for i in held)
    assert held_out == Counter(range(30))  # every text exactly once
    for train, held in folds:
        assert not set(train) & set(held) and sorted([*train, *held]) == list(range(30))
        assert Counter(ds.labels[i] for i in held) == {"a": 2, "b": 2, "c": 2}  # stratified
    assert stratified_folds(ds, 5, seed=0) == folds  # the seed fixes the split
    assert stratified_folds(ds, 5, seed=1) != folds


def test_fold_count_drops_to_the_smallest_class_and_a_lone_text_stays_in_train() -> None:
    labels = ["a"] * 3 + ["b"] * 6 + ["c"]
    ds = dataset_from_records([f"t{i}" for i in range(10)], labels)
    folds = stratified_folds(ds, 5, seed=0)
    assert len(folds) == 3  # class a has three texts
    assert all(9 in train and 9 not in held for train, held in folds)  # the only "c"
    assert Counter(i for _, held in folds for i in held) == Counter(range(9))
    assert len(stratified_folds(dataset_from_records(["x", "y", "z"], ["a", "a", "b"]), 5, seed=0)) == 2
    with pytest.raises(DataError, match="no class has two texts"):
        stratified_folds(dataset_from_records(["x", "y"], ["a", "b"]), 5, seed=0)


def test_folds_keep_a_group_together_and_multi_label_texts_hold_out_only_known_labels() -> None:
    ds = dataset_from_records([f"t{i}" for i in range(12)], ["a", "b"] * 6, groups=[f"g{i // 2}" for i in range(12)])
    for _, held in stratified_folds(ds, 3, seed=0):
        assert all(i ^ 1 in held for i in held)  # t0 and t1 share g0, and so on
    multi = dataset_from_records(
        [f"m{i}" for i in range(8)], [["a"], ["a"], ["a", "b"], ["a"], ["a", "c"], ["a", "c"], ["b"], ["a"]]
    )
    for train, held in stratified_folds(multi, 2, seed=0):
        seen = {lab for i in train for lab in multi.labels[i]}
        assert all(set(multi.labels[i]) <= seen for i in held)


def test_cross_validate_trains_on_the_other_folds_and_scores_each_fold_once(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hrlm.training.fitting as fitting

    ds = toy(4)
    calls: list[dict[str, Dataset]] = []
    real_fit = fitting.fit

    def recording_fit(cfg: TrainConfig, splits: dict[str, Dataset], out: Any = None, **kw: Any) -> Any:
        calls.append(splits)
        assert out is None and kw["progress"] is False
        return real_fit(cfg, splits, out, **kw)

    monkeypatch.setattr(fitting, "fit", recording_fit)
    cv = cross_validate(tiny_cfg(tiny_bert, method="finetune"), ds, folds=3, seed=0)
    assert cv.folds == len(calls) == 3 and cv.metric == "macro_f1"
    assert all(0.0 <= s <= 1.0 for s in cv.per_fold) and cv.mean == pytest.approx(sum(cv.per_fold) / 3)
    assert cv.seconds > 0 and cv.std >= 0
    assert sorted(t for c in calls for t in c["test"].texts) == sorted(ds.texts)  # each text scored once
    for c in calls:
        assert set(c) == {"train", "test"}  # no validation split: nothing is tuned on the scored fold
        assert not set(c["train"].texts) & set(c["test"].texts)
        assert len(c["train"]) + len(c["test"]) == len(ds)

    loss = cross_validate(tiny_cfg(tiny_bert, method="finetune", metric="loss"), ds, folds=2, seed=0)
    assert all(s < 0 for s in loss.per_fold)  # the negated log loss: higher is better


def fake_cv(scores: dict[str, float], seconds: dict[str, float], ran: list[str]) -> Any:
    def run(cfg: TrainConfig, train: Dataset, **kw: Any) -> CVResult:
        method = "head" if cfg.freeze_encoder else cfg.method
        ran.append(method)
        return CVResult(scores[method], [scores[method]] * 3, seconds[method], cfg.metric)

    return run


def test_auto_cross_validates_the_candidates_within_budget_and_says_why(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    estimates = {"head": 4.0, "setfit": 5400.0, "finetune": 180.0}
    monkeypatch.setattr(selection, "estimate", lambda cfg, train, method, *a: estimates[method])
    ran: list[str] = []
    scores = {"head": 0.771, "finetune": 0.456, "setfit": 0.9}
    monkeypatch.setattr(selection, "_cross_validate", fake_cv(scores, {"head": 4.0, "finetune": 170.0}, ran))
    cfg = tiny_cfg(tiny_bert, auto_budget=600)
    method, why = method_and_reason(cfg, toy(4))
    assert method == "head" and ran == ["head", "finetune"]  # cheapest first; SetFit's 90 min is over budget
    assert why.startswith(
        "--method auto chose a head on frozen features by 3-fold cross-validation on the training split "
        "(4.0 labelled texts per class, below --few-shot-below 16; --auto-budget 600 s, "
    )
    assert why.endswith(
        "a head on frozen features macro_f1 0.771 (4 s) vs fine-tuning macro_f1 0.456 (3 min) "
        "vs SetFit skipped (est. 1.5 h, over the 10 min left of --auto-budget)"
    )

    ran.clear()
    scores.update(head=0.5, finetune=0.9)
    assert method_and_reason(cfg, toy(4))[0] == "finetune"
    scores.update(head=0.9, finetune=0.9005)  # within TIE: the faster run wins
    assert method_and_reason(cfg, toy(4))[0] == "head"


def test_a_candidate_that_overruns_is_stopped_and_none_in_budget_means_the_cheapest(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hrlm.training.fitting as fitting

    def slow_fit(cfg: TrainConfig, splits: dict[str, Dataset], out: Any = None, **kw: Any) -> Any:
        time.sleep(0.4)
        return fitting.TrainResult(None, {"macro_f1": 0.5}, [], "test", 0, 0.4, 1.0)

    monkeypatch.setattr(fitting, "fit", slow_fit)
    with pytest.raises(selection._OverBudget) as over:
        selection._cross_validate(tiny_cfg(tiny_bert), toy(4), folds=4, seed=0, deadline=time.perf_counter() + 0.5)
    assert over.value.done == 1 and over.value.planned == 4 and over.value.projected > 0.5

    monkeypatch.setattr(selection, "_measure", lambda cfg, train: None)
    estimates = {"head": 0.0, "setfit": 0.01, "finetune": 9.0}
    monkeypatch.setattr(selection, "estimate", lambda cfg, train, method, *a: estimates[method])
    choice = choose_by_cv(tiny_cfg(tiny_bert, auto_budget=1.0), toy(4))
    assert choice.method == "head"  # both runs stopped over budget, nothing ran to the end: the cheapest
    assert "untested, as the cheapest" in choice.reason
    assert "SetFit skipped (stopped after 1 of 3 folds: est. 1 s)" in choice.reason
    assert "fine-tuning skipped (est. 9 s, over the 0 s left of --auto-budget)" in choice.reason


def test_large_data_fine_tunes_without_cross_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*a: Any) -> None:
        raise AssertionError("no cross-validation above --few-shot-below")

    monkeypatch.setattr("hrlm.training.fewshot.choose_by_cv", refuse)
    many = dataset_from_records([f"t{i}" for i in range(40)], ["a", "b"] * 20)
    assert method_and_reason(TrainConfig(), many) == (
        "finetune",
        "--method auto chose fine-tuning: 20.0 labelled texts per class, cross-validation of the methods only "
        "below --few-shot-below 16",
    )
    assert method_and_reason(TrainConfig(freeze_encoder=True), toy(2))[0] == "finetune"
    assert method_and_reason(TrainConfig(method="setfit"), toy(2)) == ("setfit", "--method setfit")
    lone = dataset_from_records(["x", "y"], ["a", "b"])
    assert method_and_reason(TrainConfig(), lone)[0] == "head"


def test_auto_on_the_tiny_model_runs_real_folds_and_leaves_the_random_state_alone(tiny_bert: Path) -> None:
    torch.manual_seed(7)
    random.seed(7)
    choice = choose_by_cv(tiny_cfg(tiny_bert, cv_folds=2), toy(3))
    after = (torch.rand(1).item(), random.random())
    torch.manual_seed(7)
    random.seed(7)
    assert after == (torch.rand(1).item(), random.random())
    assert choice.method in ("head", "setfit", "finetune")
    assert sorted(c.method for c in choice.candidates if c.result is not None) == ["finetune", "head", "setfit"]
    assert all(c.result is not None and c.result.folds == 2 and c.estimate > 0 for c in choice.candidates)
    best = max(c.result.mean for c in choice.candidates if c.result is not None)
    chosen = next(c for c in choice.candidates if c.method == choice.method)
    assert chosen.result is not None and chosen.result.mean >= best - selection.TIE


def test_the_chosen_method_is_the_one_trained_and_recorded(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hrlm.inference import Predictor
    from hrlm.training.fitting import fit

    monkeypatch.setattr(selection, "estimate", lambda cfg, train, method, *a: 1.0)
    ran: list[str] = []
    scores = {"head": 0.8, "finetune": 0.4, "setfit": 0.6}
    monkeypatch.setattr(selection, "_cross_validate", fake_cv(scores, dict.fromkeys(scores, 1.0), ran))
    result = fit(tiny_cfg(tiny_bert), {"train": toy(4), "test": toy(3, seed=5)}, tmp_path / "m", progress=False)
    assert sorted(ran) == ["finetune", "head", "setfit"]
    (note,) = [n for n in result.notes if n.startswith("--method auto")]
    assert note.startswith("--method auto chose a head on frozen features by 3-fold")
    meta = Predictor.from_dir(tmp_path / "m").meta
    assert meta.extra["method"] == "head" and meta.train_config["freeze_encoder"] is True
    assert meta.extra["method_reason"] == note  # hrlm.json says what auto chose and why
    assert meta.pooling == "mean"
    # The encoder really stayed frozen: its weights are the base encoder's.
    from transformers import AutoModel

    base = AutoModel.from_pretrained(str(tiny_bert)).state_dict()
    trained = Predictor.from_dir(tmp_path / "m").model.encoder.state_dict()
    assert all(torch.equal(base[k], trained[k]) for k in base if k in trained)


@pytest.mark.slow
@pytest.mark.data
def test_auto_on_110_onet_descriptions_chooses_the_best_it_measured_within_budget(shared_data: Path) -> None:
    import pandas as pd

    frame = pd.read_csv(shared_data / "onet_tasks" / "onet_occupation_descriptions.csv")
    train_rows = frame[frame.suggested_split == "train"]
    rng = random.Random(0)
    picked: list[int] = []
    for _, group in train_rows.groupby("label"):
        idx = list(group.index)
        rng.shuffle(idx)
        picked += idx[:5]
    rng.shuffle(picked)
    picked = picked[:110]  # 23 classes, 4-5 texts each
    ds = dataset_from_records(list(frame.text[picked]), list(frame.label[picked]))
    # A short budget keeps CI quick: the frozen-feature head (seconds) always fits, SetFit (minutes) does
    # not; with the default 600 s on a quiet machine SetFit fits too and wins narrowly (0.507 vs 0.434).
    t0 = time.perf_counter()
    choice = choose_by_cv(TrainConfig(auto_budget=120), ds)
    spent = time.perf_counter() - t0
    by_method = {c.method: c for c in choice.candidates}
    head = by_method["head"].result
    assert head is not None and head.mean > 0.3, choice.reason  # 23 classes: chance is about 0.04
    measured = {c.method: c.result.mean for c in choice.candidates if c.result is not None}
    assert choice.method == max(measured, key=lambda m: measured[m]), choice.reason
    assert by_method["setfit"].result is None and "skipped" in choice.reason, choice.reason
    assert spent < 120 * 1.5, choice.reason  # within the budget, with room for the last candidate's overrun


def test_cross_validating_auto_chooses_once_on_all_of_train(tiny_bert: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen: list[int] = []

    def choose_by_cv(cfg: TrainConfig, train: Dataset) -> selection.Choice:
        chosen.append(len(train))
        return selection.Choice("head", "by cross-validation")

    monkeypatch.setattr("hrlm.training.fewshot.choose_by_cv", choose_by_cv)
    trained: list[tuple[str, bool]] = []
    real = selection._cross_validate

    def folds(cfg: TrainConfig, train: Dataset, **kw: Any) -> CVResult:
        trained.append((cfg.method, cfg.freeze_encoder))
        return real(cfg, train, **kw)

    monkeypatch.setattr(selection, "_cross_validate", folds)
    cv = cross_validate(tiny_cfg(tiny_bert), toy(3), folds=2, seed=0)
    assert chosen == [9] and trained == [("finetune", True)] and cv.folds == 2  # no fold chose again
