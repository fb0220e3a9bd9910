"""Dropout in training on a CPU with a mask drawn from 16 random bits per element, when that is faster.

PyTorch's CPU dropout draws its mask with ``bernoulli_``, one call of its generator per element: on a
2-core AMD EPYC Zen 4, about 20 ms for one 32 x 256 x 384 activation, and with MiniLM's 13
hidden-state dropouts a step, 12% of a bf16 training step of 32 reviews at 256 tokens went to drawing
masks (torch.profiler). :func:`keep_mask` draws the same mask from whole 64-bit words of NumPy's
SFC64 generator, four elements to a word: an element is kept when its 16 bits are at least the
``p``-quantile (the drop rate is ``p`` to within 1/65,536), and the mask comes out in the activation's
dtype already scaled by ``1 / (1 - p)``, as PyTorch's dropout scales. Measured there, forward and
backward of 8 x 256 x 384 in bf16: 1.2-2.0 ms against 7.2-9.7 ms, and a whole training step 6-9%
faster. Each mask's generator is seeded from torch's default one, so ``torch.manual_seed`` makes a
run repeatable as before; the masks are other draws than PyTorch's.

:func:`choose` times both on random activations of the model's width in the training's precision,
once per machine and shape (cached by :func:`hrlm.training.calibration.cached_choice`), and keeps the
faster; :func:`using` swaps the model's ``nn.Dropout`` modules for :class:`SampledDropout` for the
length of a training run and puts them back afterwards, so the saved model is unchanged. CUDA keeps
PyTorch's (a fused kernel with a counter-based generator), as does ``HRLM_CALIBRATE=off``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hrlm._alloc import keep_freed_memory
from hrlm.inference.backends import precision_dtype
from hrlm.inference.calibrate import mode
from hrlm.training.calibration import best_seconds, cached_choice, width_bucket

CHOICES = ("torch", "sampled")
VERSION = 1
# Rows of the timed activation (sequences of the training's longest window).
ROWS = 8
_LEVELS = 1 << 16


def keep_mask(shape: torch.Size | tuple[int, ...], p: float, dtype: torch.dtype) -> torch.Tensor:
    """A dropout mask of ``shape`` in ``dtype``: 0 where dropped (probability ``p``), ``1 / (1 - p)`` where kept.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> mask = keep_mask((1000, 1000), 0.1, torch.float32)
        >>> round(float((mask == 0).float().mean()), 2), sorted({round(v, 4) for v in mask.unique().tolist()})
        (0.1, [0.0, 1.1111])
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    dropped = round(p * _LEVELS)
    if dropped >= _LEVELS:
        return torch.zeros(shape, dtype=dtype)
    n = math.prod(shape)
    # The words' generator is seeded from torch's, so that torch.manual_seed repeats a run's masks.
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    words = np.random.SFC64(seed).random_raw(-(-n // 4))  # 64 random bits: four 16-bit values per word
    values = torch.from_numpy(words.view(np.int16))[:n]
    mask = torch.empty(n, dtype=dtype)
    torch.ge(values, dropped - _LEVELS // 2, out=mask)  # kept: the value is at least the p-quantile
    return mask.view(shape).mul_(1.0 / (1.0 - p))


class SampledDropout(nn.Module):
    """``nn.Dropout`` with the mask of :func:`keep_mask` on a CPU (PyTorch's own elsewhere)."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return x * keep_mask(x.shape, self.p, x.dtype)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def measure(width: int, hidden: int, precision: str, p: float = 0.1) -> dict[str, float]:
    """Seconds of one dropout forward and backward pass, PyTorch's and sampled, on ``ROWS x width x hidden``."""
    keep_freed_memory()
    dtype = precision_dtype(precision)
    x = torch.randn(ROWS, width, hidden).to(dtype).requires_grad_()
    sampled = SampledDropout(p)

    def native() -> None:
        F.dropout(x, p, True).float().sum().backward()

    def ours() -> None:
        sampled(x).float().sum().backward()

    return {"torch": best_seconds(native), "sampled": best_seconds(ours)}


def _dropouts(model: nn.Module) -> list[tuple[nn.Module, str, nn.Dropout]]:
    """(parent, attribute, module) of every ``nn.Dropout`` in ``model`` that drops something."""
    found = []
    for parent in model.modules():
        for name, child in parent.named_children():
            if type(child) is nn.Dropout and child.p > 0:
                found.append((parent, name, child))
    return found


def choose(model: nn.Module, device: torch.device, precision: str, max_length: int) -> str | None:
    """``"sampled"`` or ``"torch"``: the dropout to train ``model`` with on this machine; None keeps the model's.

    None on CUDA, with ``HRLM_CALIBRATE=off``, and for models without dropout.
    """
    if device.type != "cpu" or mode() == "off" or not _dropouts(model):
        return None
    hidden = int(getattr(getattr(model, "config", None), "hidden_size", 0) or 256)
    width = width_bucket(max_length)
    shape = {"width": width, "hidden": hidden, "precision": precision}
    return cached_choice("train-dropout", shape, VERSION, CHOICES, lambda: measure(width, hidden, precision))


@contextlib.contextmanager
def using(model: nn.Module, choice: str | None) -> Iterator[None]:
    """Run the block with ``model``'s dropout modules as ``choice`` says, restored afterwards."""
    if choice != "sampled":
        yield
        return
    swapped = _dropouts(model)
    for parent, name, module in swapped:
        replacement = SampledDropout(module.p)
        replacement.train(module.training)
        setattr(parent, name, replacement)
    try:
        yield
    finally:
        for parent, name, module in swapped:
            module.train(getattr(parent, name).training)
            setattr(parent, name, module)
