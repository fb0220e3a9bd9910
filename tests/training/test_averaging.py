"""The moving average of the weights (``ema_epochs``): its rule, and that a run keeps it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hrlm.config import TrainConfig
from hrlm.data import dataset_from_records, split_dataset
from hrlm.errors import ConfigError
from hrlm.modeling import load_model
from hrlm.training import loop
from hrlm.training.averaging import WeightAverage
from hrlm.training.fitting import fit
from hrlm.tuning.space import load_space
from tests.conftest import make_texts


def test_each_step_weighs_decay_to_its_age_normalised_over_the_steps_seen() -> None:
    torch.manual_seed(0)
    layer = nn.Linear(3, 2)
    average = WeightAverage(layer, horizon_steps=5)  # decay 0.8
    seen: list[list[torch.Tensor]] = []
    for _ in range(12):
        with torch.no_grad():
            for p in layer.parameters():
                p.add_(torch.randn_like(p))
        seen.append([p.detach().clone() for p in layer.parameters()])
        average.update(layer)
    factors = [0.8 ** (len(seen) - 1 - i) for i in range(len(seen))]
    for j, p in enumerate(average.model.parameters()):
        expected = sum(f * s[j] for f, s in zip(factors, seen, strict=True)) / sum(factors)
        torch.testing.assert_close(p.detach(), expected)
    # the trained layer itself is untouched: the average is a copy
    torch.testing.assert_close(layer.weight.detach(), seen[-1][0])


def test_a_run_with_ema_epochs_evaluates_and_keeps_the_average_not_the_last_weights(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Any] = []

    class Recording(WeightAverage):
        def __init__(self, model: nn.Module, *, horizon_steps: float) -> None:
            super().__init__(model, horizon_steps=horizon_steps)
            self.horizon_steps, self.updates = horizon_steps, 0
            made.append(self)

        def update(self, model: nn.Module) -> None:
            super().update(model)
            self.updates += 1
            self.last = {k: v.detach().clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(loop, "WeightAverage", Recording)
    rows = make_texts(20, seed=5)
    splits = split_dataset(dataset_from_records([r[0] for r in rows], [r[1] for r in rows]), seed=5)
    # Without a validation split every evaluation keeps the weights it scored: the run's last average.
    splits = {k: v for k, v in splits.items() if k != "validation"}
    cfg = TrainConfig(
        base=str(tiny_bert), max_length=16, stride=4, epochs=3, batch_size=8, lr=3e-3, seed=1,
        pooling="mean", threads=1, ema_epochs=1.0,
    )  # fmt: skip
    fit(cfg, splits, tmp_path / "m", progress=False)

    (average,) = made
    steps_per_epoch = math.ceil(len(splits["train"]) / 8)
    assert average.horizon_steps == steps_per_epoch
    assert average.updates == 3 * steps_per_epoch
    saved, _, meta = load_model(tmp_path / "m")
    kept = saved.state_dict()
    for key, value in average.model.state_dict().items():
        torch.testing.assert_close(kept[key], value, msg=key)
    moved = [k for k, v in average.last.items() if v.is_floating_point() and not torch.allclose(kept[k], v)]
    assert "encoder.encoder.layer.0.attention.self.query.weight" in moved  # the last weights are not what was kept
    assert meta.train_config["ema_epochs"] == 1.0


def test_ema_epochs_is_a_checked_setting_and_a_searchable_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ema_epochs"):
        TrainConfig(ema_epochs=-1.0)
    assert load_space(None)["ema_epochs"].value == 0.0  # off unless the space says otherwise
    space = tmp_path / "space.toml"
    space.write_text("[space]\nema_epochs = {low = 0.0, high = 2.0}\n", encoding="utf-8")
    assert load_space(space)["ema_epochs"].kind == "float"
    space.write_text("[space]\nema_epochs = {low = -1.0, high = 2.0}\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"space\.ema_epochs"):
        load_space(space)
