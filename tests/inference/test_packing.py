"""Packed batches: windows laid end to end, without padding, give the logits each window gives alone."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from hrlm.inference import unpadded
from hrlm.inference.backends import TorchBackend, quantize_torch_int8
from hrlm.inference.packing import GROUP_PADDING, attention_groups, collate_packed, plan, token_batches, transfer
from hrlm.inference.predictor import Predictor, window_logits
from hrlm.modeling import HrlmModel, TaskSpec, build_model
from tests.conftest import make_texts

TASKS = [TaskSpec("label", ["a", "b", "c"])]


def _lengths(seed: int, n: int = 200, low: int = 3, high: int = 90) -> list[int]:
    rng = random.Random(seed)
    return [rng.randint(low, high) for _ in range(n)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_token_batches_hold_the_budget_in_length_order(seed: int) -> None:
    lengths = [*_lengths(seed), 300]  # one window longer than the budget
    batches = token_batches(lengths, max_tokens=256, max_batch=16)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat)
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or sum(lengths[i] for i in b) <= 256
    assert [300] in [[lengths[i] for i in b] for b in batches]
    # full batches: no batch could have taken the next window
    for b, nxt in itertools.pairwise(batches):
        assert len(b) == 16 or sum(lengths[i] for i in b) + lengths[nxt[0]] > 256


@pytest.mark.parametrize("seed", [0, 1])
def test_attention_groups_cover_every_window_and_bound_the_padding(seed: int) -> None:
    lengths = sorted(_lengths(seed, n=60))
    groups = attention_groups(lengths)
    assert groups[0][0] == 0 and groups[-1][1] == len(lengths)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(groups))
    for start, end in groups:
        width, rows = lengths[end - 1], end - start
        assert rows == 1 or rows * width - sum(lengths[start:end]) <= GROUP_PADDING * rows * width
    assert attention_groups([7] * 5) == [(0, 5)]  # one length: one group, no padding


def test_collate_packed_lays_windows_end_to_end_shortest_first() -> None:
    windows = [[2, 7, 7, 3], [2, 8, 8, 8, 8, 8, 3], [2, 9, 3], [2, 6, 6, 3]]
    batch = collate_packed(windows, [0, 1, 2, 3])
    assert batch.order == (2, 0, 3, 1)
    assert batch.input_ids.tolist() == [2, 9, 3, 2, 7, 7, 3, 2, 6, 6, 3, 2, 8, 8, 8, 8, 8, 3]
    assert batch.positions.tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6]
    assert batch.starts.tolist() == [0, 3, 7, 11] and batch.lengths.tolist() == [3, 4, 4, 7]
    # lengths 3, 4, 4 pad to 4 (1 slot of 12); 7 would pad them to 7 (half the slots): two groups
    first, second = batch.groups
    assert (first.start, first.end, first.rows, first.width) == (0, 11, 3, 4)
    assert first.gather is not None and first.mask is not None and first.scatter is not None
    assert first.gather.tolist() == [0, 1, 2, 11, 3, 4, 5, 6, 7, 8, 9, 10]  # 11: the zero row
    assert first.mask[:, 0, 0].tolist() == [[True, True, True, False], [True] * 4, [True] * 4]
    assert first.scatter.tolist() == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11]
    assert (second.start, second.end, second.rows, second.width, second.gather) == (11, 18, 1, 7, None)


def test_plan_budgets_real_tokens_when_packed_and_padded_tokens_otherwise() -> None:
    lengths = [10] * 7 + [40]
    assert plan(lengths, max_tokens=80, max_batch=64, packing=True) == [[0, 1, 2, 3, 4, 5, 6], [7]]
    padded = plan(lengths, max_tokens=80, max_batch=64, packing=False)
    assert all(len(b) * max(lengths[i] for i in b) <= 80 for b in padded if len(b) > 1)


def _model(tiny_bert: Path, pooling: str) -> HrlmModel:
    torch.manual_seed(3)
    model = build_model(tiny_bert, TASKS, pooling=pooling).eval()
    for head in model.heads.values():  # heads at init give near-zero logits: nothing to compare
        torch.nn.init.normal_(head.weight, std=1.0)
    return model


def _windows(seed: int, n: int = 23, longest: int = 60) -> list[list[int]]:
    rng = random.Random(seed)
    return [[2] + [rng.randint(5, 40) for _ in range(rng.randint(1, longest))] + [3] for _ in range(n)]


def _alone(model: HrlmModel, windows: list[list[int]]) -> np.ndarray:
    with torch.inference_mode():
        rows = [model(torch.tensor([w]), torch.ones(1, len(w), dtype=torch.long))["label"] for w in windows]
    return torch.cat(rows).numpy()


@pytest.mark.parametrize("plain_up_to", [unpadded.SMALL_WIDTH, 4])  # 4: the SDPA branch for every group
@pytest.mark.parametrize("pooling", ["pooler", "cls", "mean"])
def test_packed_batches_give_each_windows_own_logits(tiny_bert: Path, pooling: str, plain_up_to: int) -> None:
    model = _model(tiny_bert, pooling)
    assert unpadded.supports(model.encoder)
    windows = _windows(7)
    alone = _alone(model, windows)
    batch = collate_packed(windows, range(len(windows)))
    assert len(batch.groups) > 2 and any(g.gather is not None for g in batch.groups)
    order = list(batch.order)
    with torch.inference_mode():
        # the layers' own query, key and value projections
        own = unpadded.forward(model, batch, plain_up_to=plain_up_to)["label"].numpy()
    backend = TorchBackend(model, torch.device("cpu"), "fp32")
    backend.plain_up_to = plain_up_to
    fused = backend.packed(batch)["label"]
    np.testing.assert_allclose(own, alone[order], atol=1e-5)
    np.testing.assert_allclose(fused, alone[order], atol=1e-5)
    assert np.abs(alone).max() > 0.1


def test_cast_linears_copies_only_the_linear_layers_and_changes_no_result(tiny_bert: Path) -> None:
    model = _model(tiny_bert, "pooler")
    copy = unpadded.cast_linears(model, torch.bfloat16)
    assert copy.heads["label"].weight.dtype == torch.bfloat16
    assert model.heads["label"].weight.dtype == torch.float32  # the original is untouched
    word = copy.encoder.embeddings.word_embeddings.weight
    assert word is model.encoder.embeddings.word_embeddings.weight  # shared, not copied
    ids = torch.tensor([[2, 9, 14, 20, 3], [2, 11, 3, 0, 0]])
    mask = (ids != 0).long()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        expected = model(ids, mask)["label"]
        got = copy(ids, mask)["label"]
    assert torch.equal(expected, got)  # autocast casts the same weights the same way


def test_fuse_qkv_declines_quantized_layers(tiny_bert: Path) -> None:
    model = _model(tiny_bert, "cls")
    fused = unpadded.fuse_qkv(model.encoder)
    assert fused is not None and len(fused) == 2 and fused[0].out_features == 3 * 32
    assert unpadded.fuse_qkv(quantize_torch_int8(model).encoder) is None


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


def test_the_predictor_packs_and_results_do_not_change(trained_model: Path) -> None:
    texts = [t for t, _ in make_texts(10, seed=11, length=(1, 10))]  # windows of 3 to 16 tokens
    plain = Predictor.from_dir(trained_model, backend="torch-fp32", packing=False).logits(texts)["label"]
    # calibrate=False: packed by default, whatever an earlier test's calibration cached for this shape
    # (a run where it had timed padded batches faster failed here)
    p = Predictor.from_dir(trained_model, backend="torch-fp32", max_tokens=64, calibrate=False)
    calls = _count_calls(p.backend)  # type: ignore[arg-type]
    np.testing.assert_allclose(p.logits(texts)["label"], plain, atol=1e-5)
    assert calls["packed"] >= 2 and calls["padded"] == 0


def test_without_packing_batches_are_padded(tiny_bert: Path) -> None:
    backend = TorchBackend(_model(tiny_bert, "cls"), torch.device("cpu"), "fp32")
    calls = _count_calls(backend)
    window_logits(backend, _windows(1, n=12, longest=20), pad_id=0, max_tokens=128, packing=False)
    assert calls["packed"] == 0 and calls["padded"] >= 2


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
    assert not unpadded.supports(HrlmModel(roberta, TASKS, pooling="cls").encoder)
    model = _model(tiny_bert, "cls")
    model.config.position_embedding_type = "relative_key"  # positions enter attention: not covered
    assert not unpadded.supports(model.encoder)


def test_a_model_under_pruning_is_served_uncopied(tiny_bert: Path) -> None:
    from torch.nn.utils import prune

    model = _model(tiny_bert, "cls")
    prune.l1_unstructured(model.encoder.encoder.layer[0].intermediate.dense, "weight", amount=0.5)
    assert unpadded.cast_linears(model, torch.bfloat16) is model
    backend = TorchBackend(model, torch.device("cpu"), "bf16")
    windows = _windows(4, n=6)
    got = window_logits(backend, windows, pad_id=0)["label"]
    np.testing.assert_allclose(got, _alone(model, windows), atol=0.1)


def test_one_buffer_transfer_keeps_shapes_dtypes_and_values() -> None:
    windows = _windows(5, n=9, longest=30)
    packed = collate_packed(windows, list(range(9)))
    parts = (t for g in packed.groups for t in (g.gather, g.mask) if t is not None)
    tensors = [
        packed.input_ids,
        packed.positions,
        *parts,
        torch.tensor([[0.25, -1.5]]),
        torch.tensor([7], dtype=torch.int32),
    ]
    assert any(t.dtype == torch.bool and t.dim() == 4 for t in tensors)  # the groups' key masks travel too
    moved = transfer(tensors, torch.device("cpu"), one_buffer=True)
    for before, after in zip(tensors, moved, strict=True):
        assert after.dtype == before.dtype and after.shape == before.shape
        assert torch.equal(after, before)


class _Queued(TorchBackend):
    """A CPU backend that claims to compute asynchronously, as a CUDA one does: only ``start*`` may be called."""

    @property
    def asynchronous(self) -> bool:
        return True

    def __call__(self, ids, mask):  # type: ignore[no-untyped-def]
        raise AssertionError("a queued backend's batches must not wait for their logits one by one")

    def packed(self, batch):  # type: ignore[no-untyped-def]
        raise AssertionError("a queued backend's batches must not wait for their logits one by one")


@pytest.mark.parametrize("packing", [True, False])
def test_queued_batches_are_read_back_once_in_window_order(tiny_bert: Path, packing: bool) -> None:
    model = _model(tiny_bert, "mean")
    windows = _windows(7, n=31, longest=40)
    cpu = torch.device("cpu")
    waited = window_logits(TorchBackend(model, cpu, "fp32"), windows, pad_id=0, max_tokens=96, packing=packing)
    seen: list[int] = []
    queued = window_logits(
        _Queued(model, cpu, "fp32"), windows, pad_id=0, max_tokens=96, packing=packing, progress=seen.append
    )
    assert len(seen) >= 3 and sum(seen) == len(windows)  # several batches, each reported as it was queued
    np.testing.assert_allclose(queued["label"], waited["label"], atol=1e-6)
    np.testing.assert_allclose(queued["label"], _alone(model, windows), atol=1e-4)
