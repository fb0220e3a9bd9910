from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from hrlm.errors import ConfigError
from hrlm.inference import Prediction, Predictor, aggregate, length_batches, resolve_precision
from tests.conftest import make_texts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_batches_cover_each_index_once_within_budget(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 120) for _ in range(300)]
    batches = length_batches(lengths, max_tokens=500, max_batch=16)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(300))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 500


def test_aggregate_mean_and_max() -> None:
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(aggregate(logits, [0, 0, 1], 2, "mean"), [[2.0, 1.0], [0.0, 5.0]])
    np.testing.assert_allclose(aggregate(logits, [0, 0, 1], 2, "max"), [[3.0, 2.0], [0.0, 5.0]])
    with pytest.raises(ConfigError, match="aggregate"):
        aggregate(logits, [0, 0, 1], 2, "median")


def test_predict_shapes_follow_the_input(trained_model: Path) -> None:
    p = Predictor.from_dir(trained_model)
    one = p.predict("my salary is late")
    assert isinstance(one, Prediction) and one.label in p.labels
    assert abs(sum(one.probabilities.values()) - 1.0) < 1e-4
    assert one.score == max(one.probabilities.values())
    many = p.predict(["my salary is late", "vpn locked"])
    assert isinstance(many, list) and len(many) == 2
    assert p.predict([]) == []
    with pytest.raises(ConfigError, match=r"texts\[1\]"):
        p.predict(["ok", 3])  # type: ignore[list-item]


def test_order_is_restored_and_batching_does_not_change_results(trained_model: Path) -> None:
    texts = [t for t, _ in make_texts(10, seed=5, length=(1, 30))]
    p = Predictor.from_dir(trained_model, max_tokens=64, max_batch=4)
    together = p.logits(texts)["label"]
    alone = np.vstack([p.logits([t])["label"] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_long_documents_are_windowed_and_aggregated(trained_model: Path) -> None:
    p = Predictor.from_dir(trained_model)
    long = " ".join(["vpn login locked password"] * 20)
    enc = p.encode([long])
    assert len(enc.windows) > 1
    assert p.predict(long).label == "it"


def test_truncation_can_be_overridden_at_inference(trained_model: Path) -> None:
    long = " ".join(["vpn login locked password"] * 20)
    assert len(Predictor.from_dir(trained_model).encode([long]).windows) > 1
    assert len(Predictor.from_dir(trained_model, truncate="head+tail").encode([long]).windows) == 1
    with pytest.raises(ConfigError, match="truncate"):
        Predictor.from_dir(trained_model, truncate="tail")


def test_precision_choice() -> None:
    import torch

    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_public_api_is_sorted_and_importable() -> None:
    import hrlm

    assert hrlm.__all__ == sorted(hrlm.__all__)
    for name in hrlm.__all__:
        assert getattr(hrlm, name) is not None
    assert hrlm.load is not None and hrlm.Predictor.from_dir
