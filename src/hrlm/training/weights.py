"""bf16 training on a CPU with bf16 weights in the passes and float32 master weights, when that is faster.

Mixed precision by autocast keeps the weights in float32 and casts them and the activations to bf16
around every matrix product. An encoder's residual stream then stays in float32 (a bf16 product plus a
float32 residual is promoted to float32, and the layer norm that follows runs there), so every linear
layer casts its input again, and the backward pass casts every gradient back. On a CPU whose matrix
units make bf16 products seven times the float32 rate (Intel AMX), those casts are a large share of a
step: torch.profiler on a 2-core Intel Xeon with AMX, MiniLM, 32 x 256 tokens a step, gave
autocast's copies 18% of the step (``_to_copy`` 14%, their backward another part).

:class:`Bf16Weights` is the other standard form of bf16 training: the forward and backward passes run
on bf16 copies of the weights, so that activations, layer norms, residual sums and gradients stay in
bf16 and nothing is cast in between, while the optimizer, the gradient clipping, the weight average,
the evaluation and the saved model see the float32 master weights exactly as under autocast. Each
step casts the gradients to float32 once (accumulated there over ``grad_accum`` batches) and the
updated masters to bf16 once. A prototype of the idea on that AMX machine (a script outside hrlm,
eager attention without dropout): 1.57 s a step against 2.04 s with autocast; this module's own
speed there is not measured yet. On a CPU without native bf16 (torch emulates bf16 products there) and on float32 or
float16 runs it does not apply.

:func:`choose` times the model's own encoder, forward and backward on random tokens of the training's
width, both ways (the bf16 way with its per-step casts of gradients and weights), once per machine and
shape, cached by :func:`hrlm.training.calibration.cached_choice`, and keeps the faster;
``HRLM_TRAIN_WEIGHTS`` (``autocast`` or ``bf16``) overrides the measurement and ``HRLM_CALIBRATE=off``
keeps autocast. CUDA keeps autocast.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn

from hrlm._alloc import keep_freed_memory
from hrlm.errors import ConfigError
from hrlm.inference import autocast
from hrlm.inference.calibrate import mode
from hrlm.training.attention import encoder_of
from hrlm.training.calibration import best_seconds, cached_choice, width_bucket

CHOICES = ("autocast", "bf16")
VERSION = 1
# Rows of the timed batch (sequences of the training's longest window).
ROWS = 8
# Token ids of the timed batch are drawn below this (and below the vocabulary's size).
_IDS = 1000


def requested() -> str | None:
    """``HRLM_TRAIN_WEIGHTS``: ``autocast`` or ``bf16`` to skip the measurement, None (unset or ``auto``) to measure."""
    value = os.environ.get("HRLM_TRAIN_WEIGHTS", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in CHOICES:
        raise ConfigError(f"HRLM_TRAIN_WEIGHTS = {value!r}: use auto, autocast or bf16.")
    return value


class Bf16Weights:
    """bf16 copies of a model's float32 weights for the forward and backward passes; float32 masters otherwise.

    Outside :meth:`computing` every parameter holds its float32 master, so that the optimizer, gradient
    clipping, a weight average, evaluation and snapshots work on float32 weights as they would under
    autocast. Inside it every parameter holds its bf16 copy; on leaving, the bf16 gradients are added
    to float32 ones (so that several batches of a step accumulate in float32) and the masters return.
    After an optimizer step, :meth:`refresh` casts the updated masters into the bf16 copies.

    Example:
        >>> layer = nn.Linear(4, 2)
        >>> weights = Bf16Weights(layer)
        >>> with weights.computing():
        ...     layer.weight.dtype, layer(torch.ones(3, 4, dtype=torch.bfloat16)).sum().backward()
        (torch.bfloat16, None)
        >>> layer.weight.dtype, layer.weight.grad.dtype, layer.weight.grad[0].tolist()
        (torch.float32, torch.float32, [3.0, 3.0, 3.0, 3.0])
    """

    def __init__(self, model: nn.Module) -> None:
        seen: set[int] = set()
        self.params: list[nn.Parameter] = []
        for p in model.parameters():  # shared (tied) parameters once
            if id(p) not in seen and p.dtype == torch.float32:
                seen.add(id(p))
                self.params.append(p)
        self.masters = [p.data for p in self.params]
        self.copies = [m.to(torch.bfloat16) for m in self.masters]
        # what an optimizer step can move: the weights that train (frozen ones keep their first copy)
        self._moving = [i for i, p in enumerate(self.params) if p.requires_grad]
        self._held: list[torch.Tensor | None] = [None] * len(self.params)

    @contextlib.contextmanager
    def computing(self) -> Iterator[None]:
        """Run the block (a forward and its backward pass) on the bf16 copies; gradients end up float32."""
        for i, (p, copy) in enumerate(zip(self.params, self.copies, strict=True)):
            self._held[i], p.grad = p.grad, None  # float32 gradients of earlier batches of the step
            p.data = copy
        try:
            yield
        finally:
            for i, (p, master) in enumerate(zip(self.params, self.masters, strict=True)):
                grad, held = p.grad, self._held[i]
                p.grad = None
                p.data = master
                if grad is None:
                    p.grad = held
                elif held is None:
                    p.grad = grad.float()
                else:
                    p.grad = held.add_(grad)
                self._held[i] = None

    def refresh(self) -> None:
        """Cast the trained masters into their bf16 copies (after the optimizer has moved them)."""
        if self._moving:
            torch._foreach_copy_([self.copies[i] for i in self._moving], [self.masters[i] for i in self._moving])


def measure(
    run: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], model: nn.Module, vocab: int, width: int
) -> dict[str, float]:
    """Seconds of one forward and backward pass of ``run`` on ``ROWS x width`` random tokens, both ways.

    ``run(ids, mask)`` is the encoder's forward pass. The bf16 way includes what it adds to a step: the
    gradients cast to float32 and the weights cast back. The gradients are discarded, the weights are
    not changed, and torch's random state (the dropout masks drawn) is restored afterwards.
    """
    keep_freed_memory()
    gen = torch.Generator().manual_seed(width)
    ids = torch.randint(0, max(1, min(vocab, _IDS)), (ROWS, width), generator=gen)
    mask = torch.ones(ROWS, width, dtype=torch.long)
    mask[: ROWS // 4, width * 3 // 4 :] = 0
    device = torch.device("cpu")
    weights = Bf16Weights(model)

    def autocast_pass() -> None:
        with autocast(device, "bf16"):
            out = run(ids, mask)
        out.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def bf16_pass() -> None:
        with weights.computing():
            with autocast(device, "bf16"):
                out = run(ids, mask)
            out.float().sum().backward()
        weights.refresh()
        model.zero_grad(set_to_none=True)

    training = model.training
    model.train()
    try:
        with torch.random.fork_rng(devices=[]):
            return {"autocast": best_seconds(autocast_pass), "bf16": best_seconds(bf16_pass)}
    finally:
        model.train(training)


def choose(model: nn.Module, device: torch.device, precision: str, max_length: int) -> str | None:
    """``"bf16"`` or ``"autocast"``: how to run a bf16 training of ``model`` on this machine; None for autocast.

    None unless the run is bf16 on a CPU; ``HRLM_TRAIN_WEIGHTS`` decides without measuring,
    ``HRLM_CALIBRATE=off`` keeps autocast, and so do models without a Hugging Face encoder to time.
    """
    if device.type != "cpu" or precision != "bf16":
        return None
    forced = requested()
    if forced is not None:
        return forced
    encoder = encoder_of(model)
    if encoder is None or mode() == "off":
        return None
    config = encoder.config
    width = width_bucket(max_length)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    shape: dict[str, Any] = {"width": width, "trainable": trainable}
    for key in ("model_type", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size"):
        shape[key] = getattr(config, key, None)
    vocab = int(getattr(config, "vocab_size", _IDS) or _IDS)

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        out = encoder(input_ids=ids, attention_mask=mask)
        return out[0]

    return cached_choice("train-weights", shape, VERSION, CHOICES, lambda: measure(run, model, vocab, width))


@contextlib.contextmanager
def using(model: nn.Module, choice: str | None) -> Iterator[Bf16Weights | None]:
    """A :class:`Bf16Weights` of ``model`` for the block when ``choice`` is ``"bf16"``, else None (autocast)."""
    if choice != "bf16":
        yield None
        return
    weights = Bf16Weights(model)
    try:
        yield weights
    finally:
        for p, master in zip(weights.params, weights.masters, strict=True):
            p.data = master  # whatever stopped the block, the model keeps its float32 weights


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype ``module``'s weights have now: bf16 inside :meth:`Bf16Weights.computing`, else their own."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32
