"""Self-attention computed a few sequences at a time, so that its score matrices stay in the CPU's cache.

The encoder's eager attention computes the scores of the whole batch (32 x 12 heads x 256 x 256 for
MiniLM at 256 tokens: 25M values, 50 MB in bf16), then scales them, adds the mask, takes the softmax
and multiplies, each step a pass over memory; its backward pass makes as many more. Where the matrix
products are fast (AMX), those passes are the cost: on a 2-core Intel Xeon with AMX, one layer's
attention forward and backward over 32 x 256 tokens in bf16 took 52-73 ms eager and 117-166 ms through
PyTorch's fused SDPA kernel (fast forward, slow backward), 40-58 ms this way (a noisy host), and a
whole training step 0.64 s against eager's 0.73 (medians of eight). :class:`ChunkedAttention`
runs the same arithmetic for :func:`rows_per_chunk` sequences at a time, each chunk's scores made,
masked and normalised while in cache; it keeps the probabilities for the backward pass (as eager
attention does), whose chunks compute the three gradients from them the same way.

:func:`attention` is the encoder-side function (Hugging Face's attention interface), registered by
:func:`register` under :data:`NAME` with the eager form's additive mask.
:func:`hrlm.training.attention.choose` times it against the other two paths and uses it only where
it measures faster.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

NAME = "hrlm_chunked"
# Bytes of scores per chunk: a few MB, what the L2 caches of a CPU's cores hold. At MiniLM's 12 heads
# and 256 tokens that is 2 sequences (1.5 MB of bf16 scores each). On the AMX machine whole training
# steps of 32 x 256 tokens took 0.63-0.65 s (medians of six interleaved) in chunks of 1, 2, 4 or 8
# sequences: the size matters little while a chunk's scores stay within a few MB.
CHUNK_BYTES = 4 << 20


def rows_per_chunk(heads: int, length: int, element_size: int) -> int:
    """Sequences per chunk: as many as keep one chunk's scores within :data:`CHUNK_BYTES`, at least one."""
    return max(1, CHUNK_BYTES // max(1, heads * length * length * element_size))


class ChunkedAttention(torch.autograd.Function):
    """``softmax(q k^T * scale + mask) v`` over (batch, heads, length, head_dim), a chunk of sequences at a time.

    ``mask`` is additive and broadcasts to (batch, heads, length, length), or None. No dropout on the
    probabilities: :func:`attention` takes the plain path when one is asked for.
    """

    @staticmethod
    def forward(
        ctx: Any, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float
    ) -> torch.Tensor:
        rows = rows_per_chunk(q.shape[1], k.shape[2], q.element_size())
        # the encoder hands over transposed views; one copy each here instead of one per chunk and product
        q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = torch.empty_like(q)
        scaled = q * scale
        keys = k.transpose(-1, -2)
        # the sequences with padding: the mask is added only to chunks that hold one
        if mask is None:
            padded = [False] * q.shape[0]
        elif mask.shape[0] == 1:
            padded = [True] * q.shape[0]
        else:
            padded = mask.ne(0).flatten(1).any(1).tolist()
        probs = []
        for start in range(0, q.shape[0], rows):
            end = start + rows
            scores = torch.matmul(scaled[start:end], keys[start:end])
            if mask is not None and any(padded[start:end]):
                scores.add_(mask if mask.shape[0] == 1 else mask[start:end])
            p = torch.softmax(scores, dim=-1)
            probs.append(p)
            torch.matmul(p, v[start:end], out=out[start:end])
        ctx.scale, ctx.rows = scale, rows
        ctx.save_for_backward(q, k, v, *probs)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        q, k, v, *probs = ctx.saved_tensors
        grad_out = grad_out.to(q.dtype).contiguous()
        grad_q, grad_k, grad_v = (torch.empty_like(t) for t in (q, k, v))
        values = v.transpose(-1, -2)
        for i, p in enumerate(probs):
            start = i * ctx.rows
            end = start + p.shape[0]
            d_out = grad_out[start:end]
            d_scores = torch._softmax_backward_data(torch.matmul(d_out, values[start:end]), p, -1, p.dtype)
            torch.matmul(d_scores, k[start:end], out=grad_q[start:end])
            torch.matmul(d_scores.transpose(-1, -2), q[start:end], out=grad_k[start:end])
            torch.matmul(p.transpose(-1, -2), d_out, out=grad_v[start:end])
        grad_q.mul_(ctx.scale)
        grad_k.mul_(ctx.scale)
        return grad_q, grad_k, grad_v, None, None


def attention(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Hugging Face's attention-function signature: output (batch, length, heads, head_dim), no weights.

    Computes in the query's dtype (what autocast's projections gave it) with autocast off, so that the
    saved probabilities and the backward pass agree on one dtype.
    """
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    dtype = query.dtype
    mask = attention_mask
    if mask is not None and mask.dtype == torch.bool:  # True: attend; made additive as eager's
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)
    with torch.autocast(query.device.type, enabled=False):
        q, k, v = query, key.to(dtype), value.to(dtype)
        mask = None if mask is None else mask.to(dtype)
        if dropout and module.training:  # dropout on the probabilities: Hugging Face's eager form, whole batch
            from transformers.models.bert.modeling_bert import eager_attention_forward

            out, _ = eager_attention_forward(module, q, k, v, mask, scaling=scale, dropout=dropout)
            return out, None
        out = ChunkedAttention.apply(q, k, v, mask, scale)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make :data:`NAME` an attention implementation Hugging Face models can be set to (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(NAME, attention)
    AttentionMaskInterface.register(NAME, eager_mask)
