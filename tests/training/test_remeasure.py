from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from hrlm.config import TrainConfig
from hrlm.data import dataset_from_records, split_dataset
from hrlm.errors import ConfigError
from hrlm.training.fitting import fit
from hrlm.training.remeasure import remeasure, same_settings
from tests.conftest import make_texts


def _cfg(tiny_bert: Path, **kw: Any) -> TrainConfig:
    base = {"base": str(tiny_bert), "max_length": 16, "stride": 4, "epochs": 2, "batch_size": 8, "lr": 3e-3}
    return TrainConfig(**{**base, "pooling": "mean", "threads": 1, "seed": 3, **kw})


def _splits() -> dict:
    rows = make_texts(20, seed=5)
    return split_dataset(dataset_from_records([r[0] for r in rows], [r[1] for r in rows]), seed=5)


def test_a_model_trained_without_test_measures_as_fit_with_test_would(tiny_bert: Path, tmp_path: Path) -> None:
    splits = _splits()
    cfg = _cfg(tiny_bert)
    no_test = {k: v for k, v in splits.items() if k != "test"}
    fit(cfg, no_test, tmp_path / "trial", progress=False)
    direct = fit(cfg, splits, tmp_path / "direct", progress=False)  # the same settings, the test split given

    result = remeasure(tmp_path / "trial", splits, tmp_path / "final")
    assert result.evaluated_on == "test" and result.model_dir == tmp_path / "final"
    assert result.metrics["macro_f1"] == pytest.approx(direct.metrics["macro_f1"], abs=1e-9)
    assert result.metrics["confusion_matrix"] == direct.metrics["confusion_matrix"]
    assert result.history == direct.history
    made = json.loads((tmp_path / "final" / "hrlm.json").read_text())
    want = json.loads((tmp_path / "direct" / "hrlm.json").read_text())
    for key in ("metrics", "data_fingerprint", "train_config"):
        assert made[key] == want[key], key
    assert made["extra"]["splits"] == want["extra"]["splits"] and made["extra"]["splits"]["test"] == len(splits["test"])
    assert made["extra"]["label_counts"] == want["extra"]["label_counts"]
    for name in ("report.html", "confusion.png", "learning_curves.png"):
        assert (tmp_path / "final" / "report" / name).is_file(), name
    # the source folder is left as it was: measured on validation
    assert json.loads((tmp_path / "trial" / "hrlm.json").read_text())["metrics"]["split"] == "validation"


def test_without_a_test_split_it_measures_on_validation_as_fit_reports(tiny_bert: Path, tmp_path: Path) -> None:
    no_test = {k: v for k, v in _splits().items() if k != "test"}
    trained = fit(_cfg(tiny_bert, epochs=1), no_test, tmp_path / "trial", progress=False)
    result = remeasure(tmp_path / "trial", no_test, tmp_path / "final")
    assert result.evaluated_on == trained.evaluated_on == "validation"
    assert result.metrics["confusion_matrix"] == trained.metrics["confusion_matrix"]
    made = json.loads((tmp_path / "final" / "hrlm.json").read_text())
    assert made["metrics"] == json.loads((tmp_path / "trial" / "hrlm.json").read_text())["metrics"]
    assert "validation split" in (tmp_path / "final" / "report" / "report.html").read_text()


def test_remeasure_needs_a_split_to_measure_on_and_keeps_an_existing_folder(tiny_bert: Path, tmp_path: Path) -> None:
    splits = _splits()
    fit(_cfg(tiny_bert, epochs=1), {k: v for k, v in splits.items() if k != "test"}, tmp_path / "trial", progress=False)
    with pytest.raises(ConfigError, match="test or validation split"):
        remeasure(tmp_path / "trial", {"train": splits["train"]}, tmp_path / "final")
    (tmp_path / "final").mkdir()
    with pytest.raises(Exception, match="already exists"):
        remeasure(tmp_path / "trial", splits, tmp_path / "final")
    assert not any((tmp_path / "final").iterdir())


def test_same_settings_ignores_threads_only(tiny_bert: Path, tmp_path: Path) -> None:
    cfg = _cfg(tiny_bert, epochs=1)
    fit(cfg, {k: v for k, v in _splits().items() if k != "test"}, tmp_path / "m", progress=False)
    assert same_settings(tmp_path / "m", cfg.to_dict())
    assert same_settings(tmp_path / "m", cfg.replace(threads=2).to_dict())
    assert not same_settings(tmp_path / "m", cfg.replace(lr=1e-3).to_dict())
    assert not same_settings(tmp_path / "missing", cfg.to_dict())
