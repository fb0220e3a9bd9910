"""Ensembles: one model folder, the mean of its members' probabilities, loaded by everything that loads a model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.config import TrainConfig
from hrlm.data import dataset_from_records, load_dataset, split_dataset
from hrlm.errors import ConfigError, ModelError
from hrlm.inference import (
    EnsemblePredictor,
    Predictor,
    build_ensemble,
    evaluate_dataset,
    is_ensemble,
    load,
    probabilities,
)
from hrlm.modeling import load_model
from tests.service.conftest import add_users, bearer, running

runner = CliRunner()
TEXTS = ["vpn login locked", "my salary is late", "sick leave days off", "password reset please", ""]


@pytest.fixture(scope="module")
def second_model(tiny_bert: Path, tickets_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second member: the same split as ``trained_model`` (same seed), other training settings."""
    from hrlm.training import train

    out = tmp_path_factory.mktemp("members") / "tiny-b"
    cfg = TrainConfig(
        base=str(tiny_bert), max_length=16, stride=4, epochs=3, batch_size=8, lr=6e-3, seed=1, pooling="mean"
    )
    train(tickets_csv, out, cfg, progress=False)
    return out


@pytest.fixture(scope="module")
def ensemble_dir(trained_model: Path, second_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ensembles") / "ens"
    build_ensemble([trained_model, second_model], out, progress=False)
    return out


def _edited_copy(src: Path, dest: Path, edit: Any) -> Path:
    """A copy of a model folder whose hrlm.json went through ``edit``."""
    shutil.copytree(src, dest)
    meta = json.loads((dest / "hrlm.json").read_text())
    edit(meta)
    (dest / "hrlm.json").write_text(json.dumps(meta))
    return dest


def _invoke(args: list[str]) -> Any:
    return runner.invoke(app, args)  # type: ignore[arg-type]


def test_an_ensemble_folder_loads_as_an_ensemble_and_answers_with_the_mean_of_its_members(
    ensemble_dir: Path, trained_model: Path, second_model: Path
) -> None:
    assert is_ensemble(ensemble_dir) and not is_ensemble(trained_model)
    for loaded in (load(ensemble_dir, threads=1), Predictor.from_dir(ensemble_dir, threads=1)):
        assert isinstance(loaded, EnsemblePredictor) and len(loaded.members) == 2
        assert loaded.threads == 1 and all(m.threads == 1 for m in loaded.members)
    ens = Predictor.from_dir(ensemble_dir, threads=1)
    a, b = (Predictor.from_dir(m, threads=1).predict_proba(TEXTS)["label"] for m in (trained_model, second_model))
    assert not np.allclose(a, b, atol=1e-3)  # two different models, or the test proves nothing
    got = ens.predict_proba(TEXTS)["label"]
    np.testing.assert_allclose(got, (a + b) / 2, rtol=0, atol=1e-6)
    preds = ens.predict(TEXTS)
    assert [p.label for p in preds] == [ens.labels[i] for i in got.argmax(axis=1)]
    assert [preds[0].probabilities[lab] for lab in ens.labels] == pytest.approx(got[0].tolist(), abs=1e-6)
    assert ens.predict("vpn login locked").label == preds[0].label
    # logits are the ones whose softmax is the ensemble's probability: callers of logits() agree with predict
    np.testing.assert_allclose(probabilities(ens.logits(TEXTS)["label"], False), got, atol=1e-5)
    assert ens.labels == ["it", "leave", "payroll"] and ens.backend_name.startswith("torch-")


def test_the_folder_is_self_contained_and_marked_as_an_ensemble(ensemble_dir: Path, tmp_path: Path) -> None:
    spec = json.loads((ensemble_dir / "ensemble.json").read_text())
    assert spec["how"] == "mean of probabilities" and spec["weights"] == [0.5, 0.5]
    assert [m["path"] for m in spec["members"]] == ["members/0-tiny", "members/1-tiny-b"]
    meta = json.loads((ensemble_dir / "hrlm.json").read_text())
    assert meta["extra"]["ensemble"]["members"] == ["0-tiny", "1-tiny-b"]
    assert meta["tasks"][0]["labels"] == ["it", "leave", "payroll"] and meta["train_config"]["seed"] == 1
    moved = tmp_path / "elsewhere"
    shutil.copytree(ensemble_dir, moved)  # as the registry copies a registered folder
    before = Predictor.from_dir(ensemble_dir, threads=1).predict_proba(TEXTS)["label"]
    np.testing.assert_array_equal(Predictor.from_dir(moved, threads=1).predict_proba(TEXTS)["label"], before)
    # what needs one model's weights (compress, distill) says so instead of calling the folder incomplete
    with pytest.raises(ModelError, match="is an ensemble of several models"):
        load_model(ensemble_dir)


def test_members_listing_labels_in_another_order_are_averaged_by_label_name(
    trained_model: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    order = [2, 0, 1]  # payroll, it, leave
    permuted = _edited_copy(
        trained_model, tmp_path / "permuted", lambda m: m["tasks"][0].update(labels=["payroll", "it", "leave"])
    )
    state = load_file(str(permuted / "model.safetensors"))
    for key in ("classifier.weight", "classifier.bias"):
        state[key] = state[key][order].contiguous()
    save_file(state, str(permuted / "model.safetensors"), metadata={"format": "pt"})
    original = Predictor.from_dir(trained_model, threads=1).predict_proba(TEXTS)["label"]
    shuffled = Predictor.from_dir(permuted, threads=1).predict_proba(TEXTS)["label"]
    np.testing.assert_allclose(shuffled, original[:, order], atol=1e-6)  # the copy predicts the same, reordered
    out = build_ensemble([trained_model, permuted], tmp_path / "ens", progress=False)["model_dir"]
    np.testing.assert_allclose(Predictor.from_dir(out, threads=1).predict_proba(TEXTS)["label"], original, atol=1e-6)


def test_members_with_different_labels_are_refused_in_one_line(trained_model: Path, tmp_path: Path) -> None:
    other = _edited_copy(
        trained_model, tmp_path / "other", lambda m: m["tasks"][0].update(labels=["it", "leave", "salary"])
    )
    result = _invoke(["ensemble", str(trained_model), str(other), "--out", str(tmp_path / "ens")])
    assert result.exit_code == 1
    line = result.output.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "labels of task 'label'" in line and "['payroll']" in line and "['salary']" in line
    assert not (tmp_path / "ens").exists()


def test_members_of_another_kind_or_tasks_or_too_few_are_refused(trained_model: Path, tmp_path: Path) -> None:
    multi = _edited_copy(trained_model, tmp_path / "multi", lambda m: m["tasks"][0].update(multi_label=True))
    with pytest.raises(ConfigError, match="single-label in member 'tiny'"):
        build_ensemble([trained_model, multi], tmp_path / "a", progress=False)
    renamed = _edited_copy(trained_model, tmp_path / "renamed", lambda m: m["tasks"][0].update(name="topic"))
    with pytest.raises(ConfigError, match="predicts tasks"):
        build_ensemble([trained_model, renamed], tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="at least two"):
        build_ensemble([trained_model], tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="given twice"):
        build_ensemble([trained_model, trained_model], tmp_path / "d", progress=False)
    plain = _edited_copy(trained_model, tmp_path / "plain", lambda m: None)
    with pytest.raises(ConfigError, match="lies in member"):
        build_ensemble([trained_model, plain], plain / "ens", progress=False)
    assert not (plain / "ens").exists()


def test_multi_label_members_decide_with_their_mean_threshold(trained_model: Path, tmp_path: Path) -> None:
    def multi(bars: list[float]) -> Any:
        return lambda m: m["tasks"][0].update(multi_label=True, thresholds=bars)

    a = _edited_copy(trained_model, tmp_path / "a", multi([0.2, 0.4, 0.6]))
    b = _edited_copy(trained_model, tmp_path / "b", multi([0.4, 0.6, 0.8]))
    test = dataset_from_records(TEXTS[:4], [["it"], ["payroll"], ["leave"], ["it", "payroll"]])
    result = build_ensemble([a, b], tmp_path / "ens", test=test, progress=False)
    out = result["model_dir"]
    # each member is scored with its own thresholds, not the ensemble's
    for row, member in zip(result["members"], (a, b), strict=True):
        want = evaluate_dataset(Predictor.from_dir(member, threads=1), test)
        assert row["macro_f1"] == pytest.approx(want["macro_f1"]) and row["accuracy"] == pytest.approx(want["accuracy"])
    ens = Predictor.from_dir(out, threads=1)
    assert ens.tasks[0].thresholds == pytest.approx([0.3, 0.5, 0.7])
    probs = ens.predict_proba(TEXTS)["label"]
    expected = [[lab for lab, p, t in zip(ens.labels, row, (0.3, 0.5, 0.7), strict=True) if p >= t] for row in probs]
    assert [p.label for p in ens.predict(TEXTS)] == expected


def test_hrlm_ensemble_with_data_scores_each_member_and_the_ensemble_on_the_members_test_split(
    trained_model: Path, second_model: Path, tickets_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ens"
    args = ["ensemble", str(trained_model), str(second_model), "--out", str(out), "--data", str(tickets_csv)]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    for name in ("0-tiny", "1-tiny-b", "ensemble"):
        assert name in result.output
    assert "note:" not in result.output  # both members were split with the same settings
    # the test split `hrlm train` made for both members, scored independently
    test = split_dataset(load_dataset(tickets_csv), val_size=0.1, test_size=0.1, seed=1)["test"]
    expected = [evaluate_dataset(Predictor.from_dir(m, threads=1), test) for m in (trained_model, second_model)]
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["n"] == len(test) == 12
    assert [m["name"] for m in metrics["members"]] == ["0-tiny", "1-tiny-b"]
    for row, want in zip(metrics["members"], expected, strict=True):
        assert row["macro_f1"] == pytest.approx(want["macro_f1"]) and row["accuracy"] == pytest.approx(want["accuracy"])
    ens_metrics = evaluate_dataset(Predictor.from_dir(out, threads=1), test)
    assert metrics["macro_f1"] == pytest.approx(ens_metrics["macro_f1"])
    meta = json.loads((out / "hrlm.json").read_text())
    assert meta["metrics"]["split"] == "test" and meta["metrics"]["macro_f1"] == pytest.approx(metrics["macro_f1"])
    html = (out / "report" / "report.html").read_text()
    assert "Members and the ensemble on this split" in html
    assert all(f'<td class="text">{name}</td>' in html for name in ("0-tiny", "1-tiny-b", "ensemble"))


def test_hrlm_ensemble_says_when_members_were_split_differently(
    trained_model: Path, second_model: Path, tickets_csv: Path, tmp_path: Path
) -> None:
    reseeded = _edited_copy(second_model, tmp_path / "reseeded", lambda m: m["train_config"].update(seed=7))
    args = ["ensemble", str(trained_model), str(reseeded), "--out", str(tmp_path / "ens"), "--data", str(tickets_csv)]
    result = _invoke(args)
    assert result.exit_code == 0, result.output
    assert "note:" in result.output and "seed = 7, not 1" in " ".join(result.output.split())


def test_predict_and_evaluate_take_an_ensemble_like_any_model(
    ensemble_dir: Path, tickets_csv: Path, tmp_path: Path
) -> None:
    preds = tmp_path / "preds.jsonl"
    result = _invoke(["predict", str(ensemble_dir), str(tickets_csv), "--out", str(preds), "--threads", "1"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    texts = [r["text"] for r in rows]
    expected = Predictor.from_dir(ensemble_dir, threads=1).predict(texts)
    assert [r["predicted_label"] for r in rows] == [p.label for p in expected]
    assert rows[0]["p_it"] == pytest.approx(expected[0].probabilities["it"], abs=1e-6)
    report = tmp_path / "report"
    result = _invoke(["evaluate", str(ensemble_dir), str(tickets_csv), "--out", str(report), "--threads", "1"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["n"] == 120 and metrics["accuracy"] > 0.6
    assert metrics["settings"]["backend"].startswith("torch-")


def test_the_service_serves_an_ensemble(ensemble_dir: Path, db_url: str) -> None:
    tokens = add_users(db_url)
    expected = Predictor.from_dir(ensemble_dir, threads=1).predict(TEXTS[:3])
    with running(ensemble_dir, db_url) as client:
        r = client.post("/v1/predict", json={"texts": TEXTS[:3]}, headers=bearer(tokens.client))
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert [p["label"] for p in got] == [p.label for p in expected]
        for answer, want in zip(got, expected, strict=True):
            assert answer["probabilities"] == pytest.approx(want.probabilities, abs=1e-6)
        models = client.get("/v1/models", headers=bearer(tokens.client)).json()["models"]
        assert models[0]["tasks"][0]["labels"] == ["it", "leave", "payroll"]
