from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hrlm.modeling import HrlmModel, TaskSpec, build_model
from hrlm.training import attention, chunked_attention
from hrlm.training.chunked_attention import ChunkedAttention, rows_per_chunk


def _plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> torch.Tensor:
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if mask is not None:
        scores = scores + mask
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def _inputs(dtype: torch.dtype, batch: int = 5) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 3, 12, 8, generator=gen).to(dtype) for _ in range(3))
    mask = torch.zeros(batch, 1, 1, 12, dtype=dtype)
    mask[1, ..., 7:] = torch.finfo(dtype).min  # a padded sequence
    mask[3, ..., 10:] = torch.finfo(dtype).min
    return q, k, v, mask


@pytest.mark.parametrize("chunk_rows", [1, 2, 5])
def test_chunks_compute_the_plain_attention_and_its_gradients(chunk_rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 sequences in chunks of 1, 2 (the last one short) and all 5
    monkeypatch.setattr(chunked_attention, "CHUNK_BYTES", chunk_rows * 3 * 12 * 12 * 4)
    q, k, v, mask = _inputs(torch.float64)
    grad = torch.randn(q.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    results = []
    for fn in (_plain, ChunkedAttention.apply):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = fn(*leaves, mask, 0.35)
        out.backward(grad)
        results.append([out.detach(), *(t.grad for t in leaves)])
    for mine, plain in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(mine, plain)


def test_gradients_pass_torchs_numerical_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked_attention, "CHUNK_BYTES", 2 * 3 * 12 * 12 * 8)
    q, k, v, mask = (t[:3] for t in _inputs(torch.float64))
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    assert torch.autograd.gradcheck(lambda a, b, c: ChunkedAttention.apply(a, b, c, mask, 0.5), leaves)


def test_bf16_stays_close_to_float32_and_without_a_mask() -> None:
    q, k, v, mask = _inputs(torch.bfloat16)
    for m in (mask, None):
        mine = ChunkedAttention.apply(q, k, v, m, 0.35)
        assert mine.dtype == torch.bfloat16
        reference = _plain(q.float(), k.float(), v.float(), None if m is None else m.float(), 0.35)
        torch.testing.assert_close(mine.float(), reference, atol=3e-2, rtol=3e-2)


def test_rows_per_chunk_keeps_a_chunks_scores_within_the_budget() -> None:
    assert rows_per_chunk(12, 256, 2) == chunked_attention.CHUNK_BYTES // (12 * 256 * 256 * 2) == 2
    assert rows_per_chunk(12, 128, 2) == 10
    assert rows_per_chunk(16, 4096, 4) == 1  # at least one sequence, however long


def _model(tiny_bert: Path, attention_dropout: float = 0.0, dropout: float | None = None) -> HrlmModel:
    return build_model(tiny_bert, [TaskSpec("label", ["a", "b"])], dropout=dropout, attention_dropout=attention_dropout)


def test_an_encoder_trains_through_it_as_through_its_eager_attention(tiny_bert: Path) -> None:
    ids = torch.randint(5, 40, (4, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(4, 12, dtype=torch.long)
    mask[1, 6:] = 0
    target = torch.tensor([0, 1, 1, 0])
    outputs = {}
    for path in ("eager", chunked_attention.NAME):
        torch.manual_seed(0)  # the same new head, and the same hidden-state dropout masks
        model = _model(tiny_bert).train()
        with attention.using(model, path):
            assert model.encoder.config._attn_implementation == path
            logits = model(ids, mask)["label"]
            torch.nn.functional.cross_entropy(logits, target).backward()
        assert model.encoder.config._attn_implementation != path  # restored
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        outputs[path] = (logits.detach(), grads)
    torch.testing.assert_close(outputs[chunked_attention.NAME][0], outputs["eager"][0], atol=1e-5, rtol=1e-4)
    for mine, eager in zip(outputs[chunked_attention.NAME][1], outputs["eager"][1], strict=True):
        torch.testing.assert_close(mine, eager, atol=1e-5, rtol=1e-4)


def test_attention_dropout_in_training_takes_the_plain_path(tiny_bert: Path) -> None:
    model = _model(tiny_bert, attention_dropout=0.5, dropout=0.0)  # only the probabilities are dropped
    ids = torch.randint(5, 40, (2, 10), generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 10, dtype=torch.long)
    with attention.using(model, chunked_attention.NAME), torch.no_grad():
        model.eval()
        first, second = model(ids, mask)["label"], model(ids, mask)["label"]
        torch.testing.assert_close(first, second)  # evaluation: no dropout
        model.train()
        torch.manual_seed(0)
        a = model(ids, mask)["label"]
        torch.manual_seed(1)
        b = model(ids, mask)["label"]
    assert not torch.allclose(a, b)  # the probabilities were dropped, differently per seed


def test_a_mask_shared_by_every_sequence_is_added_to_every_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunked_attention, "CHUNK_BYTES", 2 * 3 * 12 * 12 * 8)
    q, k, v, _ = _inputs(torch.float64)
    shared = torch.zeros(1, 1, 1, 12, dtype=torch.float64)
    shared[..., 9:] = torch.finfo(torch.float64).min
    torch.testing.assert_close(ChunkedAttention.apply(q, k, v, shared, 0.35), _plain(q, k, v, shared, 0.35))


def test_a_boolean_mask_is_read_as_attend_or_not() -> None:
    q, k, v, additive = _inputs(torch.float32)
    keep = additive == 0  # True where a position is attended to
    module = torch.nn.Module().eval()
    got, weights = chunked_attention.attention(module, q, k, v, keep, scaling=0.35)
    assert weights is None and got.shape == (5, 12, 3, 8)  # (batch, length, heads, head_dim)
    torch.testing.assert_close(got, _plain(q, k, v, additive, 0.35).transpose(1, 2))
