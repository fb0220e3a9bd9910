from __future__ import annotations

from pathlib import Path

import pytest

from hrlm.config import TrainConfig
from hrlm.errors import ConfigError


def test_defaults_are_valid() -> None:
    cfg = TrainConfig()
    assert cfg.max_length == 256 and cfg.truncate == "none" and cfg.lr == pytest.approx(1e-4)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"truncate": "tail"}, ["truncate", "head+tail"]),
        ({"lr": 0.0}, ["lr"]),
        ({"stride": 300, "max_length": 256}, ["stride", "max_length"]),
        ({"epochs": -1.0}, ["epochs"]),
        ({"val_size": 0.5, "test_size": 0.5}, ["val_size"]),
        ({"dropout": 1.5}, ["dropout"]),
        ({"attention_dropout": -0.1}, ["attention_dropout"]),
    ],
)
def test_bad_values_name_the_field(changes: dict, words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        TrainConfig(**changes)
    for word in words:
        assert word in str(err.value)


def test_precedence_defaults_then_toml_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[train]\nepochs = 2\nlr = 3e-5\nmax_length = 128\n", encoding="utf-8")
    cfg = TrainConfig.from_sources(path, lr=5e-5, batch_size=None)
    assert cfg.epochs == 2.0 and isinstance(cfg.epochs, float)
    assert cfg.lr == pytest.approx(5e-5)  # flag beats file
    assert cfg.max_length == 128
    assert cfg.batch_size == 32  # None flags leave the default


def test_unknown_key_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "run.toml"
    path.write_text("epochz = 3\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="epochz"):
        TrainConfig.from_sources(path)


def test_wrong_type_is_an_error() -> None:
    with pytest.raises(ConfigError, match="epochs = 'three' must be a float"):
        TrainConfig.from_dict({"epochs": "three"})


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("epochs = = 3", encoding="utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        TrainConfig.from_sources(bad)
    with pytest.raises(ConfigError, match="not found"):
        TrainConfig.from_sources(tmp_path / "nope.toml")


def test_round_trip_through_dict() -> None:
    cfg = TrainConfig(epochs=3, label_sep="|")
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
