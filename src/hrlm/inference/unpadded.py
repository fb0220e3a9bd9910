"""A BERT encoder run on a packed batch: every layer on real tokens only, attention per group.

Hugging Face's BERT computes on a ``(rows, width)`` grid, padding included. Here the same modules
(embeddings, the linear layers and layer norms of every block, the pooler) run on the flat
``(tokens, hidden)`` sequence of a :class:`hrlm.inference.packing.Packed` batch: they act token by token, so
padding never enters them. Only self-attention mixes tokens; it runs per attention group, the
group's windows gathered side by side and padded to the longest, then scattered back.

The modules' own dropout applies as in the padded encoder (none in eval mode; in training mode the
embeddings' and every block's hidden-state dropout, not attention's: packed training,
:mod:`hrlm.training.packed`, runs without attention dropout). :func:`supports` says which encoders
this covers (BERT with absolute positions, the layout of ``transformers``' ``BertModel``); others keep
padded batches.

Two inference-only speed-ups live here too, for a backend to apply to its own copy of a model:
:func:`fuse_qkv` (one matrix product for query, key and value instead of three) and
:func:`cast_linears` (linear weights stored in bf16 once, instead of autocast casting them again in
every forward pass; the results are bit for bit those of autocast).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import torch
import torch.nn.functional as F
from torch import nn

from hrlm.inference.packing import Packed

if TYPE_CHECKING:
    from hrlm.modeling import HrlmModel

M = TypeVar("M", bound=nn.Module)

# On a CPU, attention over groups up to this width runs as two matrix products and a softmax (see
# :func:`attend`), above it as PyTorch's SDPA kernel, unless the calibration of the machine
# (:mod:`hrlm.inference.calibrate`) measured another width. With the allocator keeping freed blocks
# (:mod:`hrlm._alloc`) the plain form won up to 256 tokens on a 2-core AMD EPYC in bf16 (11.2 against
# 18.7 ms for 16 windows of 256, MiniLM's 12 heads); SDPA's tiling pays off on longer windows. CUDA
# always uses SDPA.
SMALL_WIDTH = 128


def supports(encoder: Any) -> bool:
    """Whether :func:`forward` can run ``encoder``: a BERT encoder with absolute positions, no decoder parts."""
    config = getattr(encoder, "config", None)
    if config is None or getattr(config, "model_type", None) != "bert":
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "chunk_size_feed_forward", 0):
        return False
    embeddings = getattr(encoder, "embeddings", None)
    layers = getattr(getattr(encoder, "encoder", None), "layer", None)
    parts = ("word_embeddings", "position_embeddings", "token_type_embeddings", "LayerNorm")
    if embeddings is None or not all(hasattr(embeddings, p) for p in parts) or not isinstance(layers, nn.ModuleList):
        return False
    needs = ("query", "key", "value", "num_attention_heads", "attention_head_size")
    for layer in layers:
        attention = getattr(getattr(layer, "attention", None), "self", None)
        if attention is None or not all(hasattr(attention, p) for p in needs):
            return False
        if not all(hasattr(layer, p) for p in ("intermediate", "output")):
            return False
    return True


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float,
    plain_up_to: int = SMALL_WIDTH,
) -> torch.Tensor:
    """Attention of ``(rows, heads, width, head_dim)`` tensors, keys masked where ``mask`` is False.

    On a CPU, groups up to ``plain_up_to`` tokens wide run as ``softmax(q k^T) v`` in the inputs'
    dtype (the scale folded into ``q``; the softmax accumulates in float32 and rounds its output);
    wider ones, and every group on CUDA, run PyTorch's SDPA kernel.
    """
    if q.device.type == "cpu" and q.shape[-2] <= plain_up_to:
        with torch.autocast("cpu", enabled=False):  # inputs are already in the backend's dtype
            scores = torch.matmul(q * scale, k.transpose(-1, -2))
            if mask is not None:
                # an additive -inf bias, broadcast over heads and queries: a tenth of the cost of
                # masked_fill_ with the same broadcast mask (0.5 against 6.5 ms, 16 x 12 x 256 x 256, bf16)
                scores.add_(torch.zeros(mask.shape, dtype=scores.dtype).masked_fill_(~mask, float("-inf")))
            return torch.matmul(torch.softmax(scores, dim=-1), v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


# attention of one group: (q, k, v, key mask or None, scale) -> (rows, heads, width, head_dim)
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "torch.Tensor | None", float], torch.Tensor]


def forward(
    model: HrlmModel,
    batch: Packed,
    qkv: Sequence[Callable[[torch.Tensor], torch.Tensor]] | None = None,
    *,
    plain_up_to: int = SMALL_WIDTH,
    attend_group: Attend | None = None,
) -> dict[str, torch.Tensor]:
    """Logits of every task for ``batch``'s windows, in ``batch.order``.

    ``qkv`` is one fused query-key-value projection per layer (see :func:`fuse_qkv`); without it
    the layers' own three projections run. ``plain_up_to`` is :func:`attend`'s; ``attend_group``
    replaces :func:`attend` for every group (training's choice of attention path).
    """
    encoder = model.encoder
    embeddings = encoder.embeddings
    x = embeddings.word_embeddings(batch.input_ids) + embeddings.token_type_embeddings.weight[0]
    x = embeddings.LayerNorm(x + embeddings.position_embeddings(batch.positions))
    if model.training and isinstance(getattr(embeddings, "dropout", None), nn.Module):
        x = embeddings.dropout(x)
    # A padded group's slots gather its rows; a padding slot takes the group's first row: its key is
    # masked and its output dropped, so any finite row will do, and no zero row is appended per group.
    gathers = [None if g.gather is None else g.gather.masked_fill(g.gather >= g.end - g.start, 0) for g in batch.groups]
    sizes = [g.end - g.start for g in batch.groups]
    for i, layer in enumerate(encoder.encoder.layer):
        attention = layer.attention.self
        # per layer, not from the config: head pruning leaves layers with fewer heads
        heads, head_dim = int(attention.num_attention_heads), int(attention.attention_head_size)
        if qkv is not None:
            projected = qkv[i](x)
        else:
            projected = torch.cat([attention.query(x), attention.key(x), attention.value(x)], dim=-1)
        scale = float(getattr(attention, "scaling", head_dim**-0.5))
        # split once and the groups' outputs joined once: in a backward pass, a slice or a write into
        # one fills a gradient of the whole sequence per group; split and cat pass slices through
        outs: list[torch.Tensor] = []
        for g, part, gather in zip(batch.groups, projected.split(sizes), gathers, strict=True):
            if gather is not None:
                part = part.index_select(0, gather)
            q, k, v = part.view(g.rows, g.width, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            attended_group = (
                attend(q, k, v, g.mask, scale, plain_up_to)
                if attend_group is None
                else attend_group(q, k, v, g.mask, scale)
            )
            out = attended_group.transpose(1, 2).reshape(g.rows * g.width, heads * head_dim)
            outs.append(out if g.scatter is None else out.index_select(0, g.scatter))
        context = torch.cat(outs) if len(outs) > 1 else outs[0] if outs else projected.new_empty((0, heads * head_dim))
        attended = layer.attention.output(context, x)
        x = layer.output(layer.intermediate(attended), attended)
    hidden = x.shape[-1]
    if model.pooling == "mean":
        # output_size: without it CUDA makes the host wait for the GPU to learn the result's length
        owner = torch.repeat_interleave(
            torch.arange(batch.n_windows, device=x.device), batch.lengths, output_size=x.shape[0]
        )
        sums = x.new_zeros((batch.n_windows, hidden)).index_add_(0, owner, x)
        pooled = sums / batch.lengths.unsqueeze(-1).to(x.dtype)
    else:
        pooled = x.index_select(0, batch.starts)
        if model.pooling == "pooler":
            pooled = encoder.pooler(pooled.unsqueeze(1))
    return model.head_logits(pooled)


def fuse_qkv(encoder: Any) -> list[nn.Linear] | None:
    """One linear layer per block computing query, key and value at once, or ``None`` if they are not plain linears.

    The fused weights are copies: build them again after the encoder's weights change.
    """
    fused: list[nn.Linear] = []
    for layer in encoder.encoder.layer:
        parts = [getattr(layer.attention.self, name) for name in ("query", "key", "value")]
        if not all(type(p) is nn.Linear and p.bias is not None for p in parts):
            return None
        weight = parts[0].weight
        out = sum(p.out_features for p in parts)
        linear = nn.Linear(weight.shape[1], out, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.cat([p.weight for p in parts]))
            linear.bias.copy_(torch.cat([p.bias for p in parts]))
        fused.append(linear.requires_grad_(False).eval())
    return fused


def cast_encoder(model: HrlmModel, dtype: torch.dtype) -> HrlmModel:
    """A copy of ``model`` whose encoder holds ``dtype`` weights throughout; the heads are shared, in their dtype.

    For inference on a CPU without autocast: embeddings, layer norms and residual sums then run in
    ``dtype`` too (PyTorch's CPU layer norm accumulates in float32), and no pass casts activations
    back and forth between float32 and ``dtype``; measured on a 2-core AMD EPYC (MiniLM, bf16, IMDB
    reviews at 256 tokens) 7% faster than autocast over bf16 linear weights, every label the same
    on 300 reviews. The heads read the pooled vector in their own dtype
    (:meth:`hrlm.modeling.HrlmModel.head_logits`). A model that cannot be copied is returned as it is.
    """
    return _copy_casting(model, list(model.encoder.parameters()), dtype)


def cast_linears(model: M, dtype: torch.dtype) -> M:
    """A copy of ``model`` whose linear layers hold ``dtype`` weights; every other parameter is shared, not copied.

    For inference under autocast to ``dtype``: autocast casts a linear layer's float32 weights in
    every forward pass (2 of the 4.3 ms a pass of 8 tokens takes, MiniLM, one thread); weights
    already in ``dtype`` pass through, so results are bit for bit the same. Without autocast the
    copy would mix dtypes and fail. A model that cannot be copied (weights under a pruning
    reparametrisation, mid-``hrlm compress``) is returned as it is; autocast then casts as usual.
    """
    cast = [p for m in model.modules() if type(m) is nn.Linear for p in m.parameters(recurse=False)]
    return _copy_casting(model, cast, dtype)


def _copy_casting(model: M, params: list[nn.Parameter], dtype: torch.dtype) -> M:
    """A deep copy of ``model`` in which ``params`` are cast to ``dtype``; every other parameter is shared.

    A model that cannot be copied (weights under a pruning reparametrisation) is returned as it is.
    """
    memo: dict[int, Any] = {id(p): nn.Parameter(p.detach().to(dtype), requires_grad=False) for p in params}
    for param in model.parameters():
        memo.setdefault(id(param), param)
    try:
        return copy.deepcopy(model, memo)
    except RuntimeError:  # "only graph leaves support deepcopy": a computed weight attribute
        return model
