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
``packing`` is off. Whether it does by default depends on the machine. The gathers, scatters and
per-group attention calls cost time, the joint query-key-value product and the padding left out save
it, and the balance differs by CPU: on a 2-core Xeon with AMX, three interleaved rounds
(``training-imdb-amx-model167-packed-speed.json``) gave packed batches 28.1 samples/s against 29.1
for padded shuffled batches with a fifth of their slots padding; on a 2-core AMD EPYC Zen 4, a step of
32 IMDB reviews took 1.7 to 1.9 s packed against 2.3 s padded (a quarter padding), and even 32 reviews of
256 tokens each, with no padding at all, 2.3 s packed against 2.6 s padded. So :func:`threshold` times
one padded and one packed training pass of the model on this machine (:func:`measure`, once per
machine and model shape, cached), as seconds per token slot and per real token: packed batches pay
where the padding share exceeds ``1 - padded / packed``, and :func:`wanted` packs a run whose first
epoch's batches, padded, would hold more padding than that. Without calibration
(``HRLM_CALIBRATE=off``) the share is :data:`PACK_ABOVE`, measured on the Xeon.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hrlm._alloc import release_freed_memory
from hrlm.inference import autocast, unpadded
from hrlm.inference import collate as collate_padded
from hrlm.inference.calibrate import mode
from hrlm.inference.packing import Packed, collate_packed
from hrlm.training import chunked_attention
from hrlm.training.attention import using as using_attention
from hrlm.training.calibration import best_seconds, cached_seconds, width_bucket
from hrlm.training.dropout import using as using_dropout
from hrlm.training.weights import using as using_weights

# Padding share of a run's padded batches above which it packs them, where no calibration says (see the
# module's text).
PACK_ABOVE = 0.25
VERSION = 1
# Growth of the process's resident memory over what it held after its first steps, past which training on
# packed batches hands the heap's free pages back (see HeapGuard): twice, a bound that costs little speed.
HEAP_GROWTH = 2.0
# Rows of the timed batch: lengths spread evenly from the full width down to half of it.
ROWS = 8
# Token ids of the timed batch are drawn below this (and below the vocabulary's size).
_IDS = 1000


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


def wanted(
    packing: bool | None, lengths: Sequence[int], batches: Sequence[Sequence[int]], above: float = PACK_ABOVE
) -> bool:
    """Whether to pack: as ``packing`` says, or by default where ``batches`` padded would exceed ``above``."""
    if packing is not None:
        return packing
    return padding_share(lengths, batches) > above


def timed_windows(width: int, vocab: int) -> list[list[int]]:
    """The :data:`ROWS` windows :func:`measure` times: random tokens, lengths from ``width`` down to half of it."""
    gen = torch.Generator().manual_seed(width)
    lengths = [width - (width // 2) * i // (ROWS - 1) for i in range(ROWS)]
    return [torch.randint(0, max(1, min(vocab, _IDS)), (n,), generator=gen).tolist() for n in lengths]


def measure(
    model: nn.Module,
    windows: Sequence[Sequence[int]],
    pad_id: int,
    device: torch.device,
    precision: str,
    paths: dict[str, str | None],
) -> dict[str, float]:
    """Seconds of a training pass over ``windows`` per token slot padded and per real token packed.

    One forward and backward pass each way, in the run's ``precision`` and with its ``paths``
    (attention, dropout and weights as :func:`hrlm.training.loop.run_steps` would run them). The
    gradients are discarded, the weights are not changed, and torch's random state is restored.
    """
    ids, mask = collate_padded(list(windows), pad_id)
    batch = collate_packed(windows, range(len(windows)))
    ids, mask, batch = ids.to(device), mask.to(device), batch.to(device)
    training = model.training
    model.train()
    with contextlib.ExitStack() as stack:
        stack.enter_context(using_attention(model, paths.get("attention")))
        stack.enter_context(using_dropout(model, paths.get("dropout")))
        bf16 = stack.enter_context(using_weights(model, paths.get("weights")))
        computing = bf16.computing if bf16 is not None else contextlib.nullcontext

        def timed(forward: Callable[[], dict[str, torch.Tensor]]) -> Callable[[], None]:
            def one_pass() -> None:
                with computing():
                    with autocast(device, precision):
                        out = forward()
                    torch.stack([logit.float().sum() for logit in out.values()]).sum().backward()
                model.zero_grad(set_to_none=True)

            return one_pass

        try:
            with torch.random.fork_rng(devices=[]):
                padded = best_seconds(timed(lambda: model(ids, mask)))
                packed = best_seconds(timed(lambda: logits(model, batch, paths.get("attention"))))
        finally:
            model.train(training)
    slots = len(windows) * max(len(w) for w in windows)
    return {"padded": padded / slots, "packed": packed / sum(len(w) for w in windows)}


def threshold(
    model: nn.Module, device: torch.device, precision: str, max_length: int, pad_id: int, paths: dict[str, str | None]
) -> float:
    """The padding share above which packed batches train ``model`` faster than padded ones on this machine.

    ``1 - padded / packed`` of :func:`measure`'s seconds per slot and per token, measured once per
    machine, model shape, precision and training paths (cached, see
    :func:`hrlm.training.calibration.cached_seconds`); below zero where packed batches are faster even
    without padding. :data:`PACK_ABOVE` with ``HRLM_CALIBRATE=off``.
    """
    config = getattr(getattr(model, "encoder", None), "config", None)
    if config is None or mode() == "off":
        return PACK_ABOVE
    width = min(width_bucket(max_length), int(getattr(config, "max_position_embeddings", 512) or 512))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape: dict[str, Any] = {"width": width, "rows": ROWS, "precision": precision, "trainable": trainable}
    for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        shape[key] = getattr(config, key, None)
    shape.update({key: paths.get(key) for key in ("attention", "dropout", "weights")})
    windows = timed_windows(width, int(getattr(config, "vocab_size", _IDS) or _IDS))

    def share(seconds: dict[str, float]) -> float:
        return 1.0 - seconds["padded"] / seconds["packed"]

    seconds = cached_seconds(
        "train-batches",
        shape,
        VERSION,
        ("padded", "packed"),
        lambda: measure(model, windows, pad_id, device, precision, paths),
        summary=lambda s: {"pack_above": round(share(s), 3)},
    )
    return share(seconds)


class HeapGuard:
    """Keeps packed training's memory from growing step after step; call :meth:`after_step` after every step.

    The heap keeps freed blocks for reuse (:mod:`hrlm._alloc`), but every packed batch holds another
    number of tokens, so its activations come in sizes the free blocks rarely fit, and the heap grows as
    training goes on: on a 2-core Xeon with AMX (2,000 IMDB reviews, 256 tokens, batches of 32), peak
    memory reached 4.2 GB after 27 steps and 7.0 GB after 113, where padded batches stayed at 2.7 and 2.8
    GB. glibc's own defaults avoid it (2.5 GB) but map and unmap every large block, and that run took 75 s
    against 43. Handing the free pages back after every step held the 113 steps to 3.7 GB but took 211 s
    against 166 (padded: 177-193), since every step then refills the pages. So the guard hands them back
    only when the process has grown to :data:`HEAP_GROWTH` times what it held after its first two steps
    (or after the last hand-back, where that could not bring it lower): 5.1 GB and 170 s for the 113 steps.
    Between hand-backs the process grows at most twofold, at little cost in speed (what a hand-back cannot
    return raises the next threshold; a run of thousands of steps is not measured).
    """

    def __init__(self) -> None:
        self.steps = 0
        self.baseline = 0
        self.releases = 0

    def after_step(self) -> None:
        self.steps += 1
        if self.steps < 2:
            return
        rss = resident_bytes()
        if not self.baseline:
            self.baseline = rss
        elif rss > HEAP_GROWTH * self.baseline:
            release_freed_memory()
            self.releases += 1
            # what the hand-back could not return stays: the next one waits for growth beyond it
            self.baseline = max(self.baseline, resident_bytes())


def resident_bytes() -> int:
    """This process's resident memory in bytes (``/proc/self/statm``; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


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
