"""``hrlm tune``: the space's TOML, a study's files, resuming, killed trials, pruning, the test split, PostgreSQL."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.config import TrainConfig
from hrlm.data import split_dataset
from hrlm.errors import ConfigError
from hrlm.training import load_training_data
from hrlm.tuning import PruningReporter, load_space, parse_space, tune
from hrlm.tuning.space import suggest
from hrlm.tuning.storage import open_study, storage_url

optuna = pytest.importorskip("optuna")

# a space the tiny model trains in a second or two: lr and batch size searched, the rest fixed
SPACE = """[space]
lr = {low = 1e-3, high = 5e-3, log = true}
batch_size = [8, 16]
epochs = {low = 1, high = 3}
warmup_ratio = 0.0
weight_decay = {low = 0.0, high = 0.1}
dropout = 0.1
freeze_layers = 0
max_length = 16
stride_ratio = 0.25
class_weights = "none"
pooling = "mean"
"""


def _cfg(tiny_bert: Path, **kw: Any) -> TrainConfig:
    base = {"base": str(tiny_bert), "max_length": 16, "epochs": 2, "batch_size": 8, "lr": 3e-3, "pooling": "mean"}
    base |= {"val_size": 0.3, "seed": 1, "threads": 1}
    return TrainConfig(**{**base, **kw})


@pytest.fixture
def space_toml(tmp_path: Path) -> Path:
    path = tmp_path / "space.toml"
    path.write_text(SPACE)
    return path


def _tune(tickets_csv: Path, tiny_bert: Path, out: Path, space: Path, **kw: Any) -> Any:
    kw = {"validation": "holdout", "progress": False, **kw}
    return tune(tickets_csv, out, _cfg(tiny_bert), space=space, **kw)


# --- the search space -------------------------------------------------------------------------------------


def test_space_toml_takes_fixed_bounded_and_categorical_settings_over_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text("[space]\nlr = {low = 1e-5, high = 3e-4, log = true}\nbatch_size = [16, 32]\nepochs = 3\n")
    space = load_space(path, layers=6)
    assert (space["lr"].kind, space["lr"].low, space["lr"].high, space["lr"].log) == ("float", 1e-5, 3e-4, True)
    assert (space["batch_size"].kind, space["batch_size"].choices) == ("categorical", (16, 32))
    assert (space["epochs"].kind, space["epochs"].value) == ("fixed", 3)
    assert space["dropout"].kind == "float"  # not in the file: the default range
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(5):
        trial = study.ask()
        settings = suggest(space, trial)
        assert 1e-5 <= settings["lr"] <= 3e-4 and settings["batch_size"] in (16, 32) and settings["epochs"] == 3.0
        assert settings["stride"] == round(0.25 * settings["max_length"])
        assert "epochs" not in trial.params  # a fixed setting is not drawn
        study.tell(trial, 0.5)


def test_default_space_freezes_fewer_layers_than_the_encoder_has() -> None:
    assert load_space(None, layers=6)["freeze_layers"].high == 4
    assert load_space(None, layers=2)["freeze_layers"].kind == "fixed"


@pytest.mark.parametrize(
    ("line", "named"),
    [
        ("learning_rate = 1e-4", "space.learning_rate is not a searchable setting"),
        ("lr = {low = 3e-4, high = 1e-5}", "space.lr: low = 0.0003 must be smaller than high"),
        ("lr = {low = 0.0, high = 1e-3, log = true}", "space.lr: a log scale needs low > 0"),
        ("dropout = {low = 0.0, high = 1.5}", "space.dropout: dropout = 1.5"),
        ("batch_size = {low = 8.0, high = 32}", "space.batch_size: batch_size takes whole numbers"),
        ("pooling = ['mean', 'sum']", "space.pooling: pooling = 'sum' is not valid"),
        ("lr = {low = 1e-5, hi = 1e-3}", "space.lr must be a table"),
        ("batch_size = []", "space.batch_size = [] lists no choice"),
    ],
)
def test_a_bad_space_key_is_one_error_naming_it(line: str, named: str) -> None:
    import tomllib

    with pytest.raises(ConfigError) as caught:
        parse_space(tomllib.loads(line), source="s.toml")
    assert named in str(caught.value) and "\n" not in str(caught.value)


def test_cli_reports_a_bad_space_key_in_one_line(tickets_csv: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[space]\nlerning_rate = 1e-4\n")
    result = CliRunner().invoke(app, ["tune", str(tickets_csv), "--out", str(tmp_path / "o"), "--space", str(bad)])
    assert result.exit_code == 1
    assert "space.lerning_rate is not a searchable setting" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "o" / "study.db").exists()


# --- a study from the command line --------------------------------------------------------------------------


def test_cli_study_of_three_trials_writes_best_toml_that_train_config_loads(
    tickets_csv: Path, tiny_bert: Path, space_toml: Path, tmp_path: Path
) -> None:
    base = tmp_path / "base.toml"
    base.write_text(f'[train]\nbase = "{tiny_bert}"\nmax_length = 16\npooling = "mean"\nthreads = 1\n')
    out = tmp_path / "tune"
    args = ["tune", str(tickets_csv), "--trials", "3", "--out", str(out), "--space", str(space_toml)]
    args += ["--config", str(base), "--val-size", "0.3", "--seed", "1", "--validation", "holdout"]
    args += ["--baseline", "--ensemble", "2", "--sampler-seed", "7"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "default settings" in result.output and "ensemble of trials" in result.output

    cfg = TrainConfig.from_sources(out / "best.toml")
    trials = json.loads((out / "trials.json").read_text())
    assert [t["state"] for t in trials] == ["COMPLETE"] * 3
    best = max(trials, key=lambda t: t["value"])
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (
        best["params"]["lr"],
        best["params"]["batch_size"],
        best["params"]["epochs"],
    )
    assert (cfg.max_length, cfg.stride, cfg.base, cfg.dropout) == (16, 4, str(tiny_bert), 0.1)
    assert len((out / "trials.csv").read_text().strip().splitlines()) == 4  # the header and a row per trial
    assert json.loads((out / "model" / "hrlm.json").read_text())["metrics"]["split"] == "test"
    for name in ("report.html", "history.png", "importances.png", "tuning.json"):
        assert (out / "report" / name).is_file(), name
    report = json.loads((out / "report" / "tuning.json").read_text())
    assert report["best_trial"] == best["number"] and report["baseline"]["test"]["split"] == "test"
    assert report["ensemble"]["members"] == [t["number"] for t in sorted(trials, key=lambda t: -t["value"])][:2]
    assert (out / "ensemble" / "hrlm.json").is_file()
    assert sorted(int(p.name) for p in (out / "trials").iterdir()) == sorted(report["ensemble"]["members"])
    assert "Best trials" in (out / "report" / "report.html").read_text()


# --- resuming -----------------------------------------------------------------------------------------------


def test_a_rerun_with_more_trials_runs_only_the_missing_ones(
    tickets_csv: Path, tiny_bert: Path, space_toml: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    first = _tune(tickets_csv, tiny_bert, out, space_toml, trials=2)
    assert first.new_trials == 2
    again = _tune(tickets_csv, tiny_bert, out, space_toml, trials=3)
    assert again.new_trials == 1 and [t["number"] for t in again.trials] == [0, 1, 2]
    for old, now in zip(first.trials, again.trials[:2], strict=True):  # the finished trials were not redone
        assert (now["started"], now["value"], now["params"]) == (old["started"], old["value"], old["params"])
    assert _tune(tickets_csv, tiny_bert, out, space_toml, trials=3).new_trials == 0


def test_a_study_on_other_data_is_not_resumed(
    tickets_csv: Path, tiny_bert: Path, space_toml: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    _tune(tickets_csv, tiny_bert, out, space_toml, trials=1)
    with pytest.raises(ConfigError, match="was scored on another metric"):
        tune(tickets_csv, out, _cfg(tiny_bert, metric="accuracy"), space=space_toml, trials=1, progress=False)


def test_a_trial_killed_while_running_is_failed_retried_and_not_counted(
    tickets_csv: Path, tiny_bert: Path, space_toml: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    _tune(tickets_csv, tiny_bert, out, space_toml, trials=1, heartbeat_s=1)
    # A process that drew a trial's settings, beat once, and was killed (SIGKILL) before it finished.
    with open_study(storage_url(None, out), "hrlm", direction="maximize", max_resource=3) as study:
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(), as workers use them
            warnings.simplefilter("ignore", UserWarning)
            killed = study.ask()
        drawn = suggest(load_space(space_toml), killed)
        study._storage.record_heartbeat(killed._trial_id)
    time.sleep(4)  # past the grace period of 3 heartbeats
    result = _tune(tickets_csv, tiny_bert, out, space_toml, trials=2, heartbeat_s=1)
    states = {t["number"]: t["state"] for t in result.trials}
    assert states[killed.number] == "FAIL"
    assert sum(s == "COMPLETE" for s in states.values()) == 2
    retry = next(t for t in result.trials if t["number"] not in (0, killed.number))
    assert retry["state"] == "COMPLETE" and retry["settings"]["lr"] == drawn["lr"]  # the killed trial's settings


# --- pruning ------------------------------------------------------------------------------------------------


class _PrunesAtOnce:
    """A trial whose pruner says stop after the first score."""

    def __init__(self) -> None:
        self.reported: list[tuple[float, int]] = []

    def report(self, value: float, step: int) -> None:
        self.reported.append((value, step))

    def should_prune(self) -> bool:
        return True


def test_a_pruned_trial_stops_fit_at_its_first_evaluation_and_writes_nothing(
    tickets_csv: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    from hrlm.training import fit

    cfg = _cfg(tiny_bert, epochs=3)
    splits = split_dataset(load_training_data(tickets_csv, cfg), val_size=0.3, test_size=0.1, seed=1)
    trial = _PrunesAtOnce()
    with pytest.raises(optuna.TrialPruned, match="after evaluation 1"):
        fit(cfg, splits, tmp_path / "m", progress=False, on_eval=PruningReporter(trial))  # type: ignore[arg-type]
    assert [step for _, step in trial.reported] == [1]
    assert list(tmp_path.iterdir()) == []  # no model folder, no temporary


def test_hyperband_prunes_trials_of_a_hopeless_learning_rate(
    tickets_csv: Path, tiny_bert: Path, tmp_path: Path
) -> None:
    space = tmp_path / "space.toml"
    # lr spans 1e-7 (learns nothing in 3 epochs) to 5e-3; trials report after each of 3 epochs
    space.write_text(
        SPACE.replace("lr = {low = 1e-3, high = 5e-3, log = true}", "lr = [1e-7, 3e-3]").replace(
            "epochs = {low = 1, high = 3}", "epochs = 3"
        )
    )
    result = _tune(tickets_csv, tiny_bert, tmp_path / "tune", space, trials=8, sampler_seed=3)
    states = [t["state"] for t in result.trials]
    assert "PRUNED" in states and "COMPLETE" in states
    assert all(t["params"]["lr"] == 1e-7 for t in result.trials if t["state"] == "PRUNED")


# --- the test split -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("validation", ["holdout", "cv"])
def test_trials_never_see_the_test_split(
    validation: str,
    tickets_csv: Path,
    tiny_bert: Path,
    space_toml: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import hrlm.tuning.search as search

    seen: list[tuple[str, set[str]]] = []
    real_fit, real_cv = search.fit, search.cross_validate

    def spy_fit(cfg: TrainConfig, splits: dict[str, Any], out: Any = None, **kw: Any) -> Any:
        who = "trial" if kw.get("on_eval") is not None else "final"
        seen.append((who, {t for part in splits.values() for t in part.texts}))
        return real_fit(cfg, splits, out, **kw)

    def spy_cv(cfg: TrainConfig, train: Any, **kw: Any) -> Any:
        seen.append(("trial", set(train.texts)))
        return real_cv(cfg, train, **kw)

    def spy_remeasure(source: Path, splits: dict[str, Any], out: Path, **kw: Any) -> Any:
        seen.append(("final", {t for part in splits.values() for t in part.texts}))
        return real_remeasure(source, splits, out, **kw)

    real_remeasure = search.remeasure
    monkeypatch.setattr(search, "fit", spy_fit)
    monkeypatch.setattr(search, "cross_validate", spy_cv)
    monkeypatch.setattr(search, "remeasure", spy_remeasure)
    cfg = _cfg(tiny_bert, cv_folds=2)
    result = tune(tickets_csv, tmp_path / "t", cfg, space=space_toml, trials=2, validation=validation, progress=False)
    test_texts = set(
        split_dataset(load_training_data(tickets_csv, cfg), val_size=0.3, test_size=0.1, seed=1)["test"].texts
    )
    trials = [texts for who, texts in seen if who == "trial"]
    assert len(trials) == 2 and result.validation == validation
    assert all(not texts & test_texts for texts in trials)
    assert [who for who, _ in seen].count("final") == 1 and test_texts <= seen[-1][1]  # the final model, once
    # on holdout the best trial's own model is measured; cross-validated trials leave none to measure
    assert ("not trained again" in " ".join(result.notes)) == (validation == "holdout")


def test_the_best_trials_own_model_is_measured_on_test_not_trained_again(
    tickets_csv: Path, tiny_bert: Path, space_toml: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hrlm.tuning.search as search

    calls: list[str] = []
    real_fit = search.fit

    def spy_fit(cfg: TrainConfig, splits: dict[str, Any], out: Any = None, **kw: Any) -> Any:
        calls.append("trial" if kw.get("on_eval") is not None else "again")
        return real_fit(cfg, splits, out, **kw)

    monkeypatch.setattr(search, "fit", spy_fit)
    out = tmp_path / "t"
    result = _tune(tickets_csv, tiny_bert, out, space_toml, trials=2)
    assert calls == ["trial", "trial"]  # two trials; the final model is not a third training
    kept = out / "trials" / str(result.best_number)
    assert [p.name for p in (out / "trials").iterdir()] == [kept.name]  # without --ensemble, the best only
    model = out / "model"
    assert (model / "model.safetensors").read_bytes() == (kept / "model.safetensors").read_bytes()
    meta = json.loads((model / "hrlm.json").read_text())
    assert meta["metrics"]["split"] == "test" and meta["metrics"]["macro_f1"] == result.test_metrics["macro_f1"]
    assert meta["extra"]["splits"]["test"] == result.test_metrics["n"]
    trial_report = json.loads((kept / "report" / "metrics.json").read_text())
    final_report = json.loads((model / "report" / "metrics.json").read_text())
    assert final_report["history"] == trial_report["history"] and len(final_report["history"]) >= 1
    assert final_report["macro_f1"] == result.test_metrics["macro_f1"]
    assert "Measured on the test split" in (model / "README.md").read_text()

    # a kept folder of other settings (the study resumed with another --config) is not taken for the best
    changed = _cfg(tiny_bert, max_grad_norm=0.5)  # not a searched setting
    calls.clear()
    tune(tickets_csv, out, changed, space=space_toml, trials=2, validation="holdout", progress=False)
    assert calls == ["again"]

    # without a test split the best trial's model is kept as it was measured, on validation: no retraining either
    calls.clear()
    no_test = tune(
        tickets_csv, tmp_path / "n", _cfg(tiny_bert, test_size=0.0), space=space_toml, trials=1, progress=False
    )
    assert calls == ["trial"] and no_test.test_metrics["split"] == "validation"
    assert "measured on validation, not trained again" in " ".join(no_test.notes)


def test_small_data_is_cross_validated(tickets_csv: Path, tiny_bert: Path, space_toml: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_bert, val_size=0.1, cv_folds=2)  # 12 validation texts over 3 classes: fewer than 10 a class
    result = tune(tickets_csv, tmp_path / "t", cfg, space=space_toml, trials=1, progress=False)
    assert result.validation == "cv"
    assert len(json.loads((tmp_path / "t" / "trials.json").read_text())) == 1


# --- PostgreSQL ---------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_study_on_postgresql_resumes(tickets_csv: Path, tiny_bert: Path, space_toml: Path, tmp_path: Path) -> None:
    from tests.conftest import pg_schema

    with pg_schema() as url:
        first = _tune(tickets_csv, tiny_bert, tmp_path / "a", space_toml, trials=1, storage=url, study="pg")
        # a second worker, with its own --out, on the same database and study
        second = _tune(tickets_csv, tiny_bert, tmp_path / "b", space_toml, trials=2, storage=url, study="pg")
    assert first.new_trials == 1 and second.new_trials == 1
    assert second.storage.startswith("postgresql+psycopg://") and not (tmp_path / "b" / "study.db").exists()
    assert second.trials[0]["started"] == first.trials[0]["started"]
