"""Frozen layers computed once: the hidden states after the frozen bottom of an encoder.

With ``freeze_layers = N`` the embeddings and the bottom N blocks never change during training,
so their output for a window is the same in every epoch. :class:`FrozenCache` computes it once,
and each training step runs only the trainable layers on it (``HrlmModel.upper``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from hrlm.inference import autocast, collate, length_batches
from hrlm.modeling import HrlmModel

log = logging.getLogger("hrlm")


# Cached hidden states are kept in fp16 on the CPU: half the memory of fp32, and ample precision for
# activations that the trainable layers read.
CACHE_DTYPE = torch.float16


class FrozenCache:
    """Hidden states after the frozen embeddings and bottom layers, computed once per window.

    With ``freeze_layers = N`` the frozen part's output never changes, so every epoch runs only the
    trainable layers on these states. The frozen part runs once, in eval mode: its dropout is off,
    where an uncached run would apply it on every pass.
    """

    def __init__(self, states: list[torch.Tensor], layers: int) -> None:
        self.states = states
        self.layers = layers

    @classmethod
    @torch.no_grad()
    def build(
        cls,
        model: HrlmModel,
        windows: Sequence[Sequence[int]],
        layers: int,
        pad_id: int,
        device: torch.device,
        precision: str,
    ) -> FrozenCache | None:
        """The cache, or ``None`` when nothing is frozen, the encoder cannot be split, or memory is short."""
        if layers <= 0 or not windows:
            return None
        if not model.splits_at_layers:
            log.info("freeze_layers: a %s cannot be run in two parts; training uncached", type(model.encoder).__name__)
            return None
        hidden_size = int(model.config.hidden_size)
        need = sum(len(w) for w in windows) * hidden_size * CACHE_DTYPE.itemsize
        free = _available_memory()
        if free is not None and need > free // 2:
            log.warning(
                "freeze_layers: caching the frozen layers' output needs %.1f GB and %.1f GB is free; training uncached",
                need / 1e9,
                free / 1e9,
            )
            return None
        was_training = model.training
        model.eval()
        states: list[torch.Tensor] = [torch.empty(0)] * len(windows)
        for batch in length_batches([len(w) for w in windows], max_tokens=16384, max_batch=128):
            ids, mask = collate([windows[i] for i in batch], pad_id)
            with autocast(device, precision):
                hidden = model.lower(ids.to(device), mask.to(device), layers)
            hidden = hidden.to("cpu", CACHE_DTYPE)
            for row, i in enumerate(batch):
                states[i] = hidden[row, : len(windows[i])].clone()
        model.train(was_training)
        return cls(states, layers)

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Float32 hidden states of ``indices`` padded to the longest, and their attention mask."""
        width = max(len(self.states[i]) for i in indices)
        hidden = torch.zeros((len(indices), width, self.states[indices[0]].shape[-1]), dtype=torch.float32)
        mask = torch.zeros((len(indices), width), dtype=torch.long)
        for row, i in enumerate(indices):
            n = len(self.states[i])
            hidden[row, :n] = self.states[i]
            mask[row, :n] = 1
        return hidden, mask


def _available_memory() -> int | None:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return None
