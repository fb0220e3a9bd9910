"""``hrlm tune --refit``: the final model is the best settings trained on train + validation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.config import TrainConfig
from hrlm.data import Dataset, dataset_from_records, split_dataset
from hrlm.errors import ConfigError
from hrlm.training import load_training_data
from hrlm.tuning import tune
from hrlm.tuning.refit import check_refit, joined, refit_epochs
from hrlm.tuning.report import comparison_rows

optuna = pytest.importorskip("optuna")

SPACE = """[space]
lr = {low = 1e-3, high = 5e-3, log = true}
batch_size = 8
epochs = {low = 2, high = 3}
warmup_ratio = 0.0
dropout = 0.1
max_length = 16
class_weights = "none"
pooling = "mean"
"""


@pytest.mark.parametrize(
    ("scores", "epochs", "per_epoch", "maximize", "expected"),
    [
        ({1: 0.5, 2: 0.7, 3: 0.6}, 3.0, True, True, 2.0),  # peaked at the end of epoch 2
        ({1: 0.5, 2: 0.6, 3: 0.7}, 2.5, True, True, 2.5),  # the last evaluation ends a fractional run
        ({1: 0.9, 2: 0.4, 3: 0.6}, 3.0, True, False, 2.0),  # a loss: the lowest
        ({1: 0.7, 2: 0.7, 3: 0.6}, 3.0, True, True, 1.0),  # a tie: the earlier, as training keeps it
        ({1: 0.5, 2: 0.7, 3: 0.6}, 3.0, False, True, 3.0),  # scored every N steps: the setting's epochs
        ({}, 4.0, True, True, 4.0),
    ],
)
def test_refit_epochs_are_those_of_the_best_evaluation(
    scores: dict[int, float], epochs: float, per_epoch: bool, maximize: bool, expected: float
) -> None:
    assert refit_epochs(scores, epochs=epochs, per_epoch=per_epoch, maximize=maximize) == expected


def test_joined_keeps_every_row_of_both_splits_and_drops_the_split_column() -> None:
    train = dataset_from_records(["a", "b"], ["x", "y"], groups=["g1", "g2"], splits=["train", "train"])
    val = dataset_from_records(["c"], ["x"], groups=["g3"], splits=["validation"])
    both = joined(train, val)
    assert (both.texts, both.labels) == (["a", "b", "c"], ["x", "y", "x"])
    assert (both.groups, both.splits) == (["g1", "g2", "g3"], None)
    assert len(train) == 2 and len(val) == 1  # neither part is changed
    other = Dataset(texts=["d"], labels=[["x"]], multi_label=True)
    with pytest.raises(ConfigError, match="different tasks"):
        joined(train, other)


def test_refit_refuses_multi_label_data_and_a_missing_validation_split() -> None:
    val = dataset_from_records(["c"], ["x"])
    check_refit(dataset_from_records(["a", "b"], ["x", "y"]), val)
    with pytest.raises(ConfigError, match="--refit: multi-label"):
        check_refit(dataset_from_records(["a", "b"], [["x"], ["x", "y"]]), val)
    for none in (None, dataset_from_records([], [])):
        with pytest.raises(ConfigError, match="there is none; drop --refit"):
            check_refit(dataset_from_records(["a", "b"], ["x", "y"]), none)


def test_refit_trains_the_best_settings_on_train_and_validation_for_its_best_epochs(
    tickets_csv: Path, tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hrlm.tuning.refit as refit

    calls: list[tuple[TrainConfig, dict[str, Any]]] = []
    real_fit = refit.fit

    def spy_fit(cfg: TrainConfig, splits: dict[str, Any], out: Any = None, **kw: Any) -> Any:
        calls.append((cfg, splits))
        return real_fit(cfg, splits, out, **kw)

    monkeypatch.setattr(refit, "fit", spy_fit)
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    cfg = TrainConfig(base=str(tiny_bert), max_length=16, pooling="mean", val_size=0.3, seed=1, threads=1)
    out = tmp_path / "t"
    result = tune(tickets_csv, out, cfg, space=space, trials=2, validation="holdout", refit=True, progress=False)

    parts = split_dataset(load_training_data(tickets_csv, cfg), val_size=0.3, test_size=0.1, seed=1)
    assert len(calls) == 1  # the final model, once
    refit_cfg, splits = calls[0]
    assert sorted(splits) == ["test", "train"]  # no validation left to early-stop on
    assert Counter(splits["train"].texts) == Counter(parts["train"].texts + parts["validation"].texts)
    assert not set(splits["train"].texts) & set(parts["test"].texts)

    study = optuna.load_study(study_name="hrlm", storage=f"sqlite:///{out / 'study.db'}")
    best = study.best_trial
    assert best.number == result.best_number
    expected = refit_epochs(best.intermediate_values, epochs=best.params["epochs"], per_epoch=True, maximize=True)
    assert refit_cfg.epochs == result.refit_epochs == expected
    assert refit_cfg.replace(epochs=best.params["epochs"]).lr == best.params["lr"]

    meta = json.loads((out / "model" / "hrlm.json").read_text())
    assert meta["extra"]["splits"]["train"] == len(parts["train"]) + len(parts["validation"])
    assert meta["train_config"]["epochs"] == expected
    assert meta["metrics"]["split"] == "test" and meta["metrics"]["macro_f1"] == result.test_metrics["macro_f1"]
    history = json.loads((out / "model" / "report" / "metrics.json").read_text())["history"]
    assert history and all(e["val_metric"] is None for e in history)  # nothing was scored on validation
    assert "refit on train + validation" in comparison_rows(result)[0][0]
    assert f"trial {best.number}'s settings refit" in " ".join(result.notes)
    # the trial's own model stays in its folder, for the ensemble and for comparison
    assert (out / "trials" / str(best.number) / "hrlm.json").is_file()


def test_cli_refit_on_multi_label_data_is_one_line_before_any_trial(tmp_path: Path) -> None:
    data = tmp_path / "multi.csv"
    rows = ["text,label"] + [f"ticket {i} about pay and leave,{'pay|leave' if i % 2 else 'pay'}" for i in range(40)]
    data.write_text("\n".join(rows) + "\n")
    out = tmp_path / "o"
    result = CliRunner().invoke(app, ["tune", str(data), "--out", str(out), "--label-sep", "|", "--refit"])
    assert result.exit_code == 1, result.output
    assert "--refit: multi-label" in result.output and "Traceback" not in result.output
    assert not (out / "study.db").exists()
