"""benchmarks/tune.py: the study's inputs, narrowed from the command line."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from types import ModuleType

import pytest

from hrlm.tuning.space import load_space

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture
def tune(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    return importlib.import_module("tune")


def args(**kw: object) -> argparse.Namespace:
    base = {"max_length": 64, "epochs": None, "seed": 42, "base": None, "bound": []}
    return argparse.Namespace(**(base | kw))


def test_bounds_narrow_the_default_space_and_keep_its_other_keys(tune: ModuleType, tmp_path: Path) -> None:
    bounds = ["lr={low = 5e-5, high = 4e-4, log = true}", 'class_weights="balanced"', "epochs={low = 3, high = 6}"]
    _, space_file = tune.write_inputs(tmp_path, args(bound=bounds))

    space = load_space(space_file)

    assert (space["lr"].low, space["lr"].high, space["lr"].log) == (5e-5, 4e-4, True)
    assert space["class_weights"].value == "balanced"
    assert (space["epochs"].low, space["epochs"].high) == (3, 6)
    assert space["max_length"].value == 64
    assert space["batch_size"].choices == (16, 32)  # not bounded: the default


@pytest.mark.parametrize(
    ("bound", "message"),
    [("lr", "KEY=VALUE"), ("=3", "KEY=VALUE"), ("max_length=128", "--max-length")],
)
def test_a_malformed_or_clashing_bound_stops_with_one_line(
    tune: ModuleType, tmp_path: Path, bound: str, message: str
) -> None:
    with pytest.raises(SystemExit, match=message):
        tune.write_inputs(tmp_path, args(bound=[bound]))


def test_the_ensembles_members_are_recorded_with_their_trial_numbers(tune: ModuleType) -> None:
    scored = [
        {"name": "0-9", "source": "t/9", "accuracy": 0.59, "macro_f1": 0.54, "weighted_f1": 0.60},
        {"name": "1-4", "source": "t/4", "accuracy": 0.60, "macro_f1": 0.55, "weighted_f1": 0.61},
    ]
    rows = tune.member_rows({"members": [9, 4], "summary": {"members": scored, "metrics": {}}})
    assert rows == [
        {"trial": 9, "accuracy": 0.59, "macro_f1": 0.54, "weighted_f1": 0.60},
        {"trial": 4, "accuracy": 0.60, "macro_f1": 0.55, "weighted_f1": 0.61},
    ]
