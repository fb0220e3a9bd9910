"""Packed training batches: a batch's texts laid end to end, with no padding, through the unpadded encoder.

A padded batch of 32 IMDB reviews cut at 256 tokens is padded to 256 in almost every batch, since
about half the reviews fill their window: a fifth of its token slots are padding, and the embeddings,
every linear layer and every layer norm compute on them. Batches of similar lengths (the
``group_by_length`` order) leave little padding, but they cost accuracy: on a 2-core Xeon with AMX,
1,500 IMDB reviews, one epoch, six seeds, plain shuffled batches scored 83.8% against the grouped
batches' 82.8%, higher for every seed (``benchmarks/results/training-imdb-amx-model167-6rounds.json``).

Packed, a shuffled batch computes on its real tokens only. Its texts run as in inference
(:mod:`hrlm.inference.packing`, :func:`hrlm.inference.unpadded.forward`): every token-wise module
on the flat sequence of real tokens, attention per group of windows of similar length. In training
mode the modules apply their dropout; attention runs the path the machine's calibration chose for
padded training (:func:`hrlm.training.attention.choose`), with no dropout on the probabilities.

:func:`usable` says when a run can train on packed batches: BERT encoders
(:func:`hrlm.inference.unpadded.supports`), on a CPU, without attention-probability dropout, unless
``packing`` is off. :func:`wanted` says when it does by default: the gathers, scatters and per-group
attention calls cost about what a fifth of padding does. On the same host and reviews, three
interleaved rounds (``training-imdb-amx-model167-packed-speed.json``): packed 28.1 samples/s,
padded shuffled batches 29.1 (a fifth of their slots padding), padded batches of similar lengths 33.2.
So a run packs where its batches, padded, would be more than :data:`PACK_ABOVE` padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hrlm.inference import unpadded
from hrlm.inference.packing import Packed, collate_packed
from hrlm.training import chunked_attention

# Padding share of a run's padded batches above which it packs them by default (see the module's text).
PACK_ABOVE = 0.25


def usable(model: Any, device: torch.device, *, packing: bool | None, attention_dropout: float | None) -> bool:
    """Whether ``model`` can train on packed batches here (``packing`` False: never).

    Not on CUDA (its packed training is unmeasured; padded batches there keep the fused kernels), not
    with attention dropout (the packed groups do not apply it), and not for encoders the unpadded
    forward does not cover.
    """
    if packing is False or device.type != "cpu" or attention_dropout:
        return False
    return unpadded.supports(getattr(model, "encoder", None))


def padding_share(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """The share of padding among the token slots of ``batches``, each padded to its longest sample.

    Example:
        >>> round(padding_share([2, 6, 4, 4], [[0, 1], [2, 3]]), 3)
        0.2
    """
    slots = sum(len(b) * max(lengths[i] for i in b) for b in batches if b)
    return 1.0 - sum(lengths[i] for b in batches for i in b) / slots if slots else 0.0


def wanted(packing: bool | None, lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> bool:
    """Whether to pack: as ``packing`` says, or by default where ``batches`` padded would exceed :data:`PACK_ABOVE`."""
    if packing is not None:
        return packing
    return padding_share(lengths, batches) > PACK_ABOVE


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    """A key mask (True: attend) as the additive bias the chunked path takes."""
    if mask is None:
        return None
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, torch.finfo(dtype).min)


def attend_with(implementation: str | None) -> unpadded.Attend:
    """One group's attention by the training path ``implementation`` (``hrlm_chunked``, ``sdpa``, or eager)."""

    def chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> Any:
        with torch.autocast(q.device.type, enabled=False):
            return chunked_attention.ChunkedAttention.apply(q, k, v, _additive(mask, q.dtype), scale)

    def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> Any:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)

    def eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, scale: float) -> Any:
        return unpadded.attend(q, k, v, mask, scale, plain_up_to=q.shape[-2])

    if implementation == chunked_attention.NAME:
        return chunked
    return sdpa if implementation == "sdpa" else eager


def collate(windows: Sequence[Sequence[int]], batch: Sequence[int]) -> tuple[Packed, list[int]]:
    """The packed batch of ``batch``'s windows, and the windows in the order of its logits."""
    packed = collate_packed(windows, batch)
    return packed, list(packed.order)


def joint_projections(encoder: Any) -> list[Callable[[torch.Tensor], torch.Tensor]] | None:
    """Per layer, query, key and value as one matrix product over the layer's own weights, or None.

    The three weight matrices are concatenated in every call (a few hundred kB), so gradients reach
    the layer's parameters; one product of width 3 x hidden replaces three products and the copy that
    joins their outputs. None when a layer's projections are not plain linear layers with biases, or
    carry hooks: a pruned layer's weight is recomputed by a hook on its own forward call (pruning's
    reparametrisation), which reading the weight here would skip.
    """
    joint: list[Callable[[torch.Tensor], torch.Tensor]] = []
    for layer in encoder.encoder.layer:
        parts = tuple(getattr(layer.attention.self, name) for name in ("query", "key", "value"))
        if not all(type(p) is nn.Linear and p.bias is not None and not p._forward_pre_hooks for p in parts):
            return None

        def project(x: torch.Tensor, parts: tuple[nn.Linear, ...] = parts) -> torch.Tensor:
            weight = torch.cat([p.weight for p in parts])
            bias = torch.cat([p.bias for p in parts])
            return F.linear(x, weight, bias)

        joint.append(project)
    return joint


def logits(model: Any, packed: Packed, implementation: str | None) -> dict[str, torch.Tensor]:
    """Every task's logits for ``packed``'s windows (in ``packed.order``), with gradients.

    ``implementation`` None: the encoder's own attention implementation (no calibration ran).
    """
    if implementation is None:
        implementation = getattr(getattr(model.encoder, "config", None), "_attn_implementation", None)
    qkv = joint_projections(model.encoder)
    return unpadded.forward(model, packed, qkv, attend_group=attend_with(implementation))
