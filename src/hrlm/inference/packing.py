"""Batch planning: length-sorted padded batches, and packed batches that carry no padding at all.

Length-sorted batches waste little when there are many windows to sort (an archive). A service's
micro-batch of 30 tickets of mixed length cannot be sorted into tidy batches: padded to its longest
member, a third of its tokens can be padding.

A packed batch lays its windows end to end in one flat sequence of tokens, each window with its own
position ids (0, 1, ...). The embeddings and every linear layer, most of an encoder's compute, run
on real tokens only (see :mod:`hrlm.inference.unpadded`). Only attention needs windows side by side: it runs
per *attention group*, consecutive windows of similar length padded to the group's longest, with a
key mask. So every window's logits equal those of the window alone, up to float rounding, and a
call of 29 mixed tickets costs about what the same tokens cost inside a large sorted archive.

:func:`plan` decides how a call's windows are batched: under a budget of real tokens when the
backend runs packed batches, else as padded batches under a budget of padded tokens.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch

# An attention group closes rather than let padding exceed this share of its token slots. Attention
# is a small share of the FLOPs at these lengths, so a few slots of padding cost less than another
# group's kernel calls (0.2 and 0.5 measured alike on MiniLM, one thread).
GROUP_PADDING = 0.3


@dataclass(frozen=True)
class AttentionGroup:
    """Consecutive windows of a packed batch that attend side by side, padded to the longest.

    Attributes:
        start, end: the group's tokens in the flat sequence.
        rows, width: windows in the group, and the longest one's length.
        gather: for every padded slot (``rows * width``), its token's index within the group, or
            ``end - start`` (a zero row) for padding; ``None`` when every window has length ``width``.
        mask: ``(rows, 1, 1, width)``, True where a key is a real token; ``None`` with ``gather``.
        scatter: the padded slots that hold real tokens, in token order; ``None`` with ``gather``.
    """

    start: int
    end: int
    rows: int
    width: int
    gather: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    scatter: torch.Tensor | None = None


@dataclass(frozen=True)
class Packed:
    """A batch of windows laid end to end, ready for :meth:`hrlm.modeling.HrlmModel.packed`.

    Attributes:
        input_ids, positions: ``(tokens,)`` token ids, and each token's position within its window.
        starts, lengths: ``(windows,)`` first token and length of every window.
        groups: the attention groups, covering the tokens in order.
        order: the window indices (into the caller's list) in output order: shortest first.
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    starts: torch.Tensor
    lengths: torch.Tensor
    groups: tuple[AttentionGroup, ...]
    order: tuple[int, ...]

    @property
    def n_windows(self) -> int:
        return len(self.order)

    def to(self, device: torch.device) -> Packed:
        """The batch on ``device``: on CUDA in one copy that does not wait for the GPU (see :func:`transfer`)."""
        present = [t for g in self.groups for t in (g.gather, g.mask, g.scatter) if t is not None]
        moved = iter(transfer([self.input_ids, self.positions, self.starts, self.lengths, *present], device))
        ids, positions, starts, lengths = (next(moved) for _ in range(4))

        def take(t: torch.Tensor | None) -> torch.Tensor | None:  # the moved copy, in the order of present
            return None if t is None else next(moved)

        groups = tuple(
            replace(g, gather=take(g.gather), mask=take(g.mask), scatter=take(g.scatter)) for g in self.groups
        )
        return Packed(ids, positions, starts, lengths, groups, self.order)


def transfer(
    tensors: Sequence[torch.Tensor], device: torch.device, *, one_buffer: bool | None = None
) -> list[torch.Tensor]:
    """CPU ``tensors`` on ``device``, same shapes and dtypes.

    On CUDA (``one_buffer`` defaults to it) the integer and boolean ones travel as one pinned int64
    buffer and the others each pinned, all copied without blocking: a batch's dozen small tensors
    otherwise cost a dozen copies from pageable memory, each of which makes the host wait until the
    GPU has finished everything queued before it, so the host could never prepare the next batch
    while the GPU computes this one.

    Example:
        >>> pair = [torch.tensor([5, 6]), torch.tensor([True, False])]
        >>> ids, mask = transfer(pair, torch.device("cpu"), one_buffer=True)
        >>> ids.tolist(), mask.tolist()
        ([5, 6], [True, False])
    """
    if not (device.type == "cuda" if one_buffer is None else one_buffer):
        return [t.to(device) for t in tensors]
    pin = device.type == "cuda"

    def pinned(t: torch.Tensor) -> torch.Tensor:
        return t.pin_memory() if pin else t

    exact = [t.dtype == torch.bool or not (t.dtype.is_floating_point or t.dtype.is_complex) for t in tensors]
    flat = [t.reshape(-1).to(torch.long) for t, ok in zip(tensors, exact, strict=True) if ok]
    moved = pinned(torch.cat(flat)).to(device, non_blocking=True) if flat else None
    out: list[torch.Tensor] = []
    offset = 0
    for t, ok in zip(tensors, exact, strict=True):
        if not ok:
            out.append(pinned(t).to(device, non_blocking=True))
            continue
        assert moved is not None
        piece = moved[offset : offset + t.numel()].view(t.shape)
        out.append(piece if t.dtype == torch.long else piece.to(t.dtype))
        offset += t.numel()
    return out


def length_batches(
    lengths: Sequence[int], *, max_tokens: int, max_batch: int, max_padding: float = 0.2
) -> list[list[int]]:
    """Indices grouped into batches of similar length whose padded size stays under ``max_tokens``.

    A batch of at least 8 rows also closes rather than let padding exceed ``max_padding`` of its
    tokens: padding is compute spent on nothing.

    Example:
        >>> length_batches([5, 100, 6, 98], max_tokens=200, max_batch=8)
        [[0, 2], [3, 1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        longest = lengths[i]  # ascending order: the newcomer is the longest
        if current:
            padded = (len(current) + 1) * longest
            too_big = len(current) + 1 > max_batch or padded > max_tokens
            wasteful = len(current) >= 8 and padded - real - longest > max_padding * padded
            if too_big or wasteful:
                batches.append(current)
                current, real = [], 0
        current.append(i)
        real += longest
    if current:
        batches.append(current)
    return batches


def token_batches(lengths: Sequence[int], *, max_tokens: int, max_batch: int) -> list[list[int]]:
    """Indices sorted by length and cut into batches of at most ``max_tokens`` real tokens and ``max_batch`` windows.

    A window longer than ``max_tokens`` gets a batch of its own.

    Example:
        >>> token_batches([5, 100, 6, 98], max_tokens=200, max_batch=8)
        [[0, 2, 3], [1]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    tokens = 0
    for i in order:
        if current and (tokens + lengths[i] > max_tokens or len(current) >= max_batch):
            batches.append(current)
            current, tokens = [], 0
        current.append(i)
        tokens += lengths[i]
    if current:
        batches.append(current)
    return batches


def attention_groups(lengths: Sequence[int], max_padding: float = GROUP_PADDING) -> list[tuple[int, int]]:
    """``(start, end)`` runs of ``lengths`` (ascending) whose padding to their longest stays within ``max_padding``.

    Example:
        >>> attention_groups([4, 5, 5, 30, 31])
        [(0, 3), (3, 5)]
    """
    groups: list[tuple[int, int]] = []
    start, real = 0, 0
    for i, n in enumerate(lengths):
        rows = i + 1 - start
        if i > start and rows * n - (real + n) > max_padding * rows * n:
            groups.append((start, i))
            start, real = i, 0
        real += n
    if lengths:
        groups.append((start, len(lengths)))
    return groups


def _group(lengths: Sequence[int], offsets: Sequence[int], start: int, end: int) -> AttentionGroup:
    first, last = offsets[start], offsets[end]
    width = lengths[end - 1]
    if all(lengths[i] == width for i in range(start, end)):
        return AttentionGroup(first, last, end - start, width)
    column = torch.arange(width)
    keep = column[None, :] < torch.tensor(lengths[start:end])[:, None]
    base = torch.tensor(offsets[start:end]) - first
    gather = torch.where(keep, base[:, None] + column, last - first).flatten()
    scatter = keep.flatten().nonzero().squeeze(1)
    return AttentionGroup(first, last, end - start, width, gather, keep[:, None, None, :], scatter)


def collate_packed(windows: Sequence[Sequence[int]], batch: Sequence[int]) -> Packed:
    """The windows ``batch`` names, shortest first, laid end to end (see :class:`Packed`)."""
    order = tuple(sorted(batch, key=lambda i: len(windows[i])))
    lengths = [len(windows[i]) for i in order]
    offsets = list(itertools.accumulate(lengths, initial=0))
    # through numpy: four times faster than torch.tensor on the nested list (a GPU waits for this)
    flat = itertools.chain.from_iterable(windows[i] for i in order)
    ids = torch.from_numpy(np.fromiter(flat, dtype=np.int64, count=offsets[-1]))
    sizes = torch.tensor(lengths, dtype=torch.long)
    starts = torch.tensor(offsets[:-1], dtype=torch.long)
    positions = torch.arange(offsets[-1]) - torch.repeat_interleave(starts, sizes)
    groups = tuple(_group(lengths, offsets, s, e) for s, e in attention_groups(lengths))
    return Packed(ids, positions, starts, sizes, groups, order)


def plan(lengths: Sequence[int], *, max_tokens: int, max_batch: int, packing: bool = True) -> list[list[int]]:
    """Batches of window indices: packed ones under a budget of real tokens, or padded ones.

    Packed batches (for a backend that runs them, see :func:`collate_packed`) hold ``max_tokens``
    real tokens; padded batches are length-sorted and hold ``max_tokens`` tokens with their padding.
    """
    if packing:
        return token_batches(lengths, max_tokens=max_tokens, max_batch=max_batch)
    return length_batches(lengths, max_tokens=max_tokens, max_batch=max_batch)
