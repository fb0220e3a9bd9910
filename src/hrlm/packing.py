"""Batch planning and sequence packing: several short windows share one row, so no compute goes to padding.

Length-sorted batches waste little when there are many windows to sort (an archive). A service's
micro-batch of 30 tickets of mixed length cannot be sorted into tidy batches: padded to its longest
member, a third of its tokens can be padding. Packing lays short windows end to end in rows of a
chosen width (best-fit decreasing); each window keeps its own position ids (0, 1, ...) and an
attention mask lets a token see only its own window, so every window's logits equal those of the
window alone, up to float rounding.

Batch planning lives here too: :func:`length_batches` (sort, token budget, dynamic padding) and
:func:`plan`, which decides per call: packed rows when they cost at least 10% less than
length-sorted padded batches (token slots, attention's growth with the row width, a fixed cost per
forward pass), padded batches otherwise. A large set of windows sorts into batches with almost no
padding, so packing matters most for small calls of mixed lengths.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

# Row widths tried; the one that needs the fewest token slots (attention included) wins.
WIDTHS = (64, 96, 128, 160, 192, 256)
# Attention's cost per token grows with the row width. Relative to the linear layers it is
# width / (6 * hidden) in FLOPs, and PyTorch's CPU SDPA kernel runs at a quarter or less of the
# linear layers' rate (measured, bf16, hidden 384): about 1/512 per token of width for MiniLM. Wider models
# weigh attention less, so for them this errs toward narrower rows.
ATTENTION_COST = 1 / 512
# Packing must save at least this fraction of the estimated cost: the estimate is rough.
MIN_SAVING = 0.10
# A forward pass costs about as much as this many tokens before it computes any (Python, kernel
# launches, small matrices: measured on MiniLM at one thread, 7-8 ms against 0.14 ms per token).
FORWARD_COST = 64


@dataclass
class Packed:
    """A batch of packed rows, ready for :meth:`hrlm.modeling.HrlmModel.packed`.

    Attributes:
        input_ids: ``(rows, width)`` token ids, ``pad_id`` after the last window of a row.
        positions: position id of every token within its own window (0 for padding).
        segments: which window of its row a token belongs to (1, 2, ...; 0 for padding).
        first: flat index (``row * width + column``) of every window's first token, in output order.
        owner: for every flat token index, the output index of its window (-1 for padding).
    """

    input_ids: torch.Tensor
    positions: torch.Tensor
    segments: torch.Tensor
    first: torch.Tensor
    owner: torch.Tensor

    @property
    def n_windows(self) -> int:
        return int(self.first.numel())

    def to(self, device: torch.device) -> Packed:
        return Packed(*(getattr(self, f.name).to(device) for f in fields(self)))


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


def pack_rows(lengths: Sequence[int], width: int) -> list[list[int]]:
    """Window indices grouped into rows of at most ``width`` tokens (best-fit decreasing).

    Longest first, each window goes to the row with the least room that still holds it; a window
    longer than ``width`` gets a row of its own. ``O(n log n)`` bookkeeping, so an archive of
    windows packs in well under a second.

    Example:
        >>> pack_rows([30, 40, 20, 70, 10], 64)
        [[3], [1, 2], [0, 4]]
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in order:
        need = lengths[i]
        at = bisect.bisect_left(room, (need, -1))
        if at < len(room):
            free, r = room.pop(at)
            rows[r].append(i)
            bisect.insort(room, (free - need, r))
        else:
            rows.append([i])
            if need < width:
                bisect.insort(room, (width - need, len(rows) - 1))
    return rows


def slot_cost(widths: Sequence[int]) -> float:
    """Relative compute of rows padded to ``widths``: token slots, plus attention growing with the width."""
    return sum(w * (1.0 + w * ATTENTION_COST) for w in widths)


def padded_cost(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """:func:`slot_cost` of ``batches`` of ``lengths``, each padded to its longest member."""
    widths: list[int] = []
    for b in batches:
        if b:
            widths += [max(lengths[i] for i in b)] * len(b)
    return slot_cost(widths)


def plan_cost(lengths: Sequence[int], batches: Sequence[Sequence[int]]) -> float:
    """:func:`padded_cost` plus :data:`FORWARD_COST` per forward pass."""
    return padded_cost(lengths, batches) + FORWARD_COST * len(batches)


def best_rows(lengths: Sequence[int]) -> tuple[list[list[int]], float]:
    """Packed rows of the cheapest width among :data:`WIDTHS`, and their :func:`slot_cost`."""
    best: tuple[list[list[int]], float] = ([], float("inf"))
    for width in WIDTHS:
        rows = pack_rows(lengths, width)
        cost = slot_cost([max(width, lengths[row[0]]) if len(row) == 1 else width for row in rows])
        if cost < best[1]:
            best = (rows, cost)
        if width >= sum(lengths):  # one row holds them all: wider only adds attention
            break
    return best


def collate_packed(windows: Sequence[Sequence[int]], rows: Sequence[Sequence[int]], pad_id: int) -> Packed:
    """Lay the windows of ``rows`` end to end, one row each; output order is row by row."""
    row_lengths = [sum(len(windows[i]) for i in row) for row in rows]
    width = max(row_lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    segments = torch.zeros((len(rows), width), dtype=torch.long)
    owner = torch.full((len(rows) * width,), -1, dtype=torch.long)
    first: list[int] = []
    out = 0
    for r, row in enumerate(rows):
        col = 0
        for k, i in enumerate(row):
            n = len(windows[i])
            ids[r, col : col + n] = torch.as_tensor(windows[i], dtype=torch.long)
            positions[r, col : col + n] = torch.arange(n)
            segments[r, col : col + n] = k + 1
            owner[r * width + col : r * width + col + n] = out
            first.append(r * width + col)
            col += n
            out += 1
    return Packed(ids, positions, segments, torch.tensor(first, dtype=torch.long), owner)


def attention_mask(segments: torch.Tensor, kind: str, dtype: torch.dtype) -> torch.Tensor:
    """A ``(rows, 1, width, width)`` mask letting each token attend only within its own window.

    Padding attends to padding, so that no query row is fully masked (which would give NaN).
    ``kind`` is ``bool`` (True = attend, for SDPA) or ``additive`` (0 or the dtype's minimum, for eager
    attention, which adds the mask to its scores).
    """
    same = segments[:, None, :, None] == segments[:, None, None, :]
    if kind == "bool":
        return same
    mask = torch.zeros(same.shape, dtype=dtype)
    return mask.masked_fill_(~same, torch.finfo(dtype).min)


def plan(
    lengths: Sequence[int], *, max_tokens: int, max_batch: int, packing: bool = True
) -> tuple[list[list[int]], list[list[int]]]:
    """How to run windows of ``lengths``: ``(rows, batches)``.

    With ``rows`` empty, each batch lists window indices, padded to its longest. Otherwise each batch
    lists indices into ``rows``, and each row the windows laid end to end in it. Packed rows are
    chosen when they cost at least :data:`MIN_SAVING` less (token slots, attention's growth with the
    width, and :data:`FORWARD_COST` per forward pass).
    """
    batches = length_batches(lengths, max_tokens=max_tokens, max_batch=max_batch)
    if not packing or len(lengths) < 2:
        return [], batches
    padded = plan_cost(lengths, batches)
    if padded <= (1 + MIN_SAVING) * (slot_cost(lengths) + FORWARD_COST):
        return [], batches  # sorting already left too little to save (a large, varied set)
    rows, _ = best_rows(lengths)
    widths = [sum(lengths[i] for i in row) for row in rows]
    row_batches = length_batches(widths, max_tokens=max_tokens, max_batch=max_batch)
    if plan_cost(widths, row_batches) > (1 - MIN_SAVING) * padded:
        return [], batches
    return rows, row_batches
