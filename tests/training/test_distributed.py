"""Data-parallel training and pretraining on Ray Train (``--workers``), on the tiny model and a local Ray of 2 CPUs."""

from __future__ import annotations

import functools
import json
import operator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from hrlm.config import PretrainConfig, TrainConfig
from hrlm.encoders import load_tokenizer
from hrlm.errors import ConfigError, HrlmError
from hrlm.training.distributed import Replicas, check_distributable, run_on_workers, shard
from hrlm.training.fitting import train
from hrlm.training.pretraining import pretrain
from tests.conftest import make_texts


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _cfg(tiny_bert: Path, **changes: Any) -> TrainConfig:
    # No dropout and fp32: the only differences left between one and two workers are the order of sums.
    settings: dict[str, Any] = {
        "base": str(tiny_bert),
        "max_length": 16,
        "stride": 4,
        "epochs": 1,
        "batch_size": 48,
        "lr": 3e-3,
        "warmup_ratio": 0.0,
        "dropout": 0.0,
        "precision": "fp32",
        "device": "cpu",
        "pooling": "mean",
        "method": "finetune",
        "early_stopping_patience": 0,
        "seed": 3,
    }
    return TrainConfig(**{**settings, **changes})


def test_shards_of_a_batch_are_disjoint_cover_it_and_their_weighted_means_average_to_its_mean() -> None:
    batch = list(range(7))
    losses = [0.5, 2.0, 1.0, 4.0, 0.25, 3.0, 1.5]
    shares = [shard(batch, Replicas(rank=r, world=3, device=torch.device("cpu"), threads=1)) for r in range(3)]
    assert sorted(i for mine, _ in shares for i in mine) == batch
    assert [len(mine) for mine, _ in shares] == [3, 2, 2]
    averaged = sum(w * sum(losses[i] for i in mine) / len(mine) for mine, w in shares) / 3
    assert averaged == pytest.approx(sum(losses) / len(losses))


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"freeze_encoder": True}, ["workers = 2", "--freeze-encoder"]),
        ({"method": "setfit"}, ["workers = 2", "'setfit'", "--method finetune"]),
        ({"batch_size": 1}, ["batch_size = 1", "workers = 2"]),
    ],
)
def test_workers_with_an_unsupported_setting_fail_in_one_line_before_ray_starts(
    tiny_bert: Path, tickets_csv: Path, tmp_path: Path, changes: dict[str, Any], words: list[str]
) -> None:
    with pytest.raises(ConfigError) as err:
        train(tickets_csv, tmp_path / "m", _cfg(tiny_bert, workers=2, **changes), progress=False)
    message = str(err.value)
    assert "\n" not in message
    assert all(w in message for w in words), message
    assert not (tmp_path / "m").exists()


def test_pretraining_refuses_fewer_samples_per_batch_than_workers() -> None:
    with pytest.raises(ConfigError, match="batch_size = 2 is the global batch split across workers = 4"):
        check_distributable(PretrainConfig(workers=4, batch_size=2))


@pytest.mark.ray
def test_two_workers_write_a_model_folder_that_records_them(
    ray_local: Any, tiny_bert: Path, tickets_csv: Path, tmp_path: Path
) -> None:
    out = tmp_path / "two"
    result = train(tickets_csv, out, _cfg(tiny_bert, workers=2, batch_size=8, epochs=2), progress=False)
    meta = json.loads((out / "hrlm.json").read_text())
    assert meta["train_config"]["workers"] == 2
    placed = meta["extra"]["workers"]
    assert [w["rank"] for w in placed] == [0, 1]
    assert len({w["pid"] for w in placed}) == 2 and all(w["node_id"] for w in placed)
    assert result.placements == placed
    settings = json.loads((out / "report" / "metrics.json").read_text())["settings"]
    assert settings["workers"] == 2
    assert [h["step"] for h in result.history] == [12, 24]  # 96 training texts / 8 a step, twice
    assert result.metrics["accuracy"] > 0.5  # separable toy tickets: it learned, on shards of every batch


@pytest.mark.ray
def test_two_workers_take_the_steps_one_worker_takes_at_the_same_batch_size(
    ray_local: Any, tiny_bert: Path, tickets_csv: Path, tmp_path: Path
) -> None:
    # 96 training texts in batches of 48: two optimizer steps. Equal weights after them mean the two
    # shards were disjoint halves of each batch and their gradients were averaged, not summed or dropped.
    train(tickets_csv, tmp_path / "one", _cfg(tiny_bert), progress=False)
    train(tickets_csv, tmp_path / "two", _cfg(tiny_bert, workers=2), progress=False)
    train(tickets_csv, tmp_path / "half", _cfg(tiny_bert, batch_size=24, epochs=0.5), progress=False)
    one, two, half = (_weights(tmp_path / name) for name in ("one", "two", "half"))
    assert one.keys() == two.keys()
    worst = max(float((one[k] - two[k]).abs().max()) for k in one)
    assert worst < 1e-5
    # the tolerance tells runs apart: two steps of half the batch land elsewhere
    assert max(float((one[k] - half[k]).abs().max()) for k in one) > 1e-3


@pytest.mark.ray
def test_pretraining_on_two_workers_writes_the_encoder_folder(ray_local: Any, tiny_bert: Path, tmp_path: Path) -> None:
    corpus = [t for t, _ in make_texts(20, seed=5)]
    cfg = PretrainConfig(
        base=str(tiny_bert), max_length=16, epochs=2, batch_size=8, head_steps=2, device="cpu", workers=2
    )
    result = pretrain(corpus, tmp_path / "enc", cfg, progress=False)
    report = json.loads((tmp_path / "enc" / "pretrain.json").read_text())
    assert report["config"]["workers"] == 2
    assert len({w["pid"] for w in report["workers"]}) == 2
    assert (tmp_path / "enc" / "model.safetensors").is_file()
    assert (tmp_path / "enc" / "config.json").is_file()
    assert load_tokenizer(tmp_path / "enc").mask_token_id is not None  # a --base folder, tokenizer included
    assert result.before["masked_tokens"] > 0 and result.after["mlm_loss"] > 0
    assert [h["step"] for h in result.history][-1] == report["history"][-1]["step"] > 0


@pytest.mark.ray
def test_a_failing_worker_is_one_line_naming_the_worker_and_its_error(ray_local: Any) -> None:
    job = functools.partial(operator.truediv, 1.0)  # 1.0 / Replicas(...) raises on every worker
    with pytest.raises(HrlmError) as err:
        run_on_workers(job, TrainConfig(workers=2, device="cpu"), what="a test job")
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("a test job on 2 workers failed: worker ")
    assert "TypeError" in message
