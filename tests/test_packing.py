"""Sequence packing: rows of several windows give the logits each window gives alone."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hrlm.backends import TorchBackend
from hrlm.inference import Predictor, window_logits
from hrlm.modeling import HrlmModel, TaskSpec, build_model
from hrlm.packing import best_rows, collate_packed, pack_rows, slot_cost
from tests.conftest import make_texts

TASKS = [TaskSpec("label", ["a", "b", "c"])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pack_rows_places_every_window_once_within_the_width(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(3, 90) for _ in range(200)]
    rows = pack_rows(lengths, 64)
    assert sorted(i for row in rows for i in row) == list(range(200))
    for row in rows:
        assert len(row) == 1 or sum(lengths[i] for i in row) <= 64
    # Best-fit decreasing leaves little room: at most one row per window longer than half the width,
    # plus what the short ones fill.
    assert len(rows) <= sum(n > 32 for n in lengths) + sum(n for n in lengths if n <= 32) / 32 + 2


def test_best_rows_picks_the_width_that_fills_rows() -> None:
    rows, cost = best_rows([40] * 12)  # 64-wide rows would hold one each, 160 four, 256 six
    assert sorted(len(r) for r in rows) == [4] * 3
    assert cost == slot_cost([160] * 3) < min(slot_cost([64] * 12), slot_cost([256] * 2))
    rows, _ = best_rows([10] * 6 + [200])  # the long window alone, the short ones together
    assert sorted(len(r) for r in rows) == [1, 6]


def test_collate_packed_lays_windows_end_to_end() -> None:
    windows = [[2, 7, 3], [2, 8, 8, 8, 3], [2, 9, 3]]
    batch = collate_packed(windows, [[1], [0, 2]], pad_id=0)
    assert batch.input_ids.tolist() == [[2, 8, 8, 8, 3, 0], [2, 7, 3, 2, 9, 3]]
    assert batch.positions.tolist() == [[0, 1, 2, 3, 4, 0], [0, 1, 2, 0, 1, 2]]
    assert batch.segments.tolist() == [[1, 1, 1, 1, 1, 0], [1, 1, 1, 2, 2, 2]]
    assert batch.first.tolist() == [0, 6, 9]
    assert batch.owner.tolist() == [0, 0, 0, 0, 0, -1, 1, 1, 1, 2, 2, 2]


def _model(tiny_bert: Path, pooling: str, attention: str) -> HrlmModel:
    torch.manual_seed(3)
    model = build_model(tiny_bert, TASKS, pooling=pooling).eval()
    model.config._attn_implementation = attention
    for head in model.heads.values():  # heads at init give near-zero logits: nothing to compare
        torch.nn.init.normal_(head.weight, std=1.0)
    return model


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("pooling", ["pooler", "cls", "mean"])
def test_packed_rows_give_each_windows_own_logits(tiny_bert: Path, pooling: str, attention: str) -> None:
    model = _model(tiny_bert, pooling, attention)
    assert model.supports_packing
    rng = random.Random(7)
    windows = [[2] + [rng.randint(5, 40) for _ in range(rng.randint(1, 25))] + [3] for _ in range(23)]
    backend = TorchBackend(model, torch.device("cpu"), "fp32")
    alone = np.vstack([backend(torch.tensor([w]), torch.ones(1, len(w), dtype=torch.long))["label"] for w in windows])
    rows = pack_rows([len(w) for w in windows], 40)
    assert any(len(row) > 2 for row in rows)
    got = backend.packed(collate_packed(windows, rows, pad_id=0))["label"]
    order = [i for row in rows for i in row]
    np.testing.assert_allclose(got, alone[order], atol=1e-5)
    assert np.abs(alone).max() > 0.1


def _count_calls(backend: TorchBackend) -> dict[str, int]:
    calls = {"packed": 0, "padded": 0}
    packed, padded = backend.packed, backend.__call__

    def count_packed(batch):  # type: ignore[no-untyped-def]
        calls["packed"] += 1
        return packed(batch)

    class Counting(TorchBackend):
        def __call__(self, ids, mask):  # type: ignore[no-untyped-def]
            calls["padded"] += 1
            return padded(ids, mask)

    backend.__class__ = Counting
    backend.packed = count_packed  # type: ignore[method-assign]
    return calls


def test_mixed_short_texts_are_packed_and_results_do_not_change(trained_model: Path) -> None:
    texts = [t for t, _ in make_texts(10, seed=11, length=(1, 10))]  # windows of 3 to 16 tokens
    plain = Predictor.from_dir(trained_model, backend="torch-fp32", packing=False).logits(texts)["label"]
    p = Predictor.from_dir(trained_model, backend="torch-fp32")
    calls = _count_calls(p.backend)  # type: ignore[arg-type]
    np.testing.assert_allclose(p.logits(texts)["label"], plain, atol=1e-5)
    assert calls["packed"] >= 1 and calls["padded"] == 0


def test_windows_of_one_length_stay_padded(tiny_bert: Path) -> None:
    backend = TorchBackend(_model(tiny_bert, "cls", "sdpa"), torch.device("cpu"), "fp32")
    calls = _count_calls(backend)
    windows = [[2] + [9] * 20 + [3] for _ in range(12)]  # sorting already leaves no padding to save
    window_logits(backend, windows, pad_id=0, max_tokens=128)
    assert calls == {"packed": 0, "padded": 3}


@pytest.mark.parametrize("backend", ["torch-bf16", "torch-int8"])
def test_reduced_precision_backends_pack_too(trained_model: Path, backend: str) -> None:
    texts = [t for t, _ in make_texts(10, seed=12, length=(1, 10))]
    padded = Predictor.from_dir(trained_model, backend=backend, packing=False).logits(texts)["label"]
    packed = Predictor.from_dir(trained_model, backend=backend).logits(texts)["label"]
    np.testing.assert_allclose(packed, padded, atol=0.1)
    assert (packed.argmax(1) == padded.argmax(1)).mean() >= 0.95


def test_other_encoders_keep_padded_batches(tiny_bert: Path) -> None:
    from transformers import RobertaConfig, RobertaModel

    roberta = RobertaModel(RobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=4))
    assert not HrlmModel(roberta, TASKS, pooling="cls").supports_packing
    model = _model(tiny_bert, "cls", "sdpa")
    model.config._attn_implementation = "flex_attention"
    assert not model.supports_packing
