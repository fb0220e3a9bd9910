"""The order of a training run's samples: shuffled batches, or batches of similar lengths."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence


def length_grouped_order(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar-length samples.

    Samples are shuffled, cut into mega-batches of 50 batches, sorted by length inside each, and
    the resulting batches are shuffled again: padding stays small while the order stays random.
    """
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    mega = batch_size * 50
    batches: list[list[int]] = []
    for start in range(0, len(idx), mega):
        chunk = sorted(idx[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[j : j + batch_size] for j in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def shuffled_order(n: int, batch_size: int, rng: random.Random) -> list[list[int]]:
    """Batches of ``batch_size`` samples in a random order, whatever their lengths.

    Example:
        >>> sorted(i for b in shuffled_order(5, 2, random.Random(0)) for i in b)
        [0, 1, 2, 3, 4]
    """
    idx = list(range(n))
    rng.shuffle(idx)
    return [idx[j : j + batch_size] for j in range(0, n, batch_size)]


def batches_forever(lengths: Sequence[int], batch_size: int, seed: int, *, grouped: bool = True) -> Iterator[list[int]]:
    """Index batches without end, reshuffled every epoch: length-grouped (:func:`length_grouped_order`),
    or with ``grouped=False`` plain shuffled ones (:func:`shuffled_order`)."""
    epoch = 0
    while True:
        rng = random.Random(seed + epoch)
        yield from (
            length_grouped_order(lengths, batch_size, rng) if grouped else shuffled_order(len(lengths), batch_size, rng)
        )
        epoch += 1
