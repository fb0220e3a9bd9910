"""The attention path of training on a CPU, measured on the machine rather than assumed.

A Hugging Face encoder computes self-attention through PyTorch's SDPA kernel by default
(``attn_implementation="sdpa"``); its other form, ``"eager"``, is two matrix products and a softmax.
On a CPU the fused kernel is not always the faster one in training: measured on a 2-core AMD EPYC
with AVX-512 BF16 (MiniLM: 12 heads of 32, AdamW, bf16 autocast), a whole training step of 32 x 256
tokens took 1.38-1.45 s eager against 1.58-1.72 s with SDPA, and eager also won at 32 x 128 and
16 x 512 tokens; in fp32, SDPA won by 5% at 16 x 256. So :func:`choose` times the attention itself,
forward and backward, both ways, on random inputs of the model's heads in the training's precision,
once per machine and shape, and keeps the faster; the result is cached as JSON beside the
Predictor's calibration (:mod:`hrlm.inference.calibrate`), and ``HRLM_CALIBRATE=off`` keeps the
encoder's own choice. :func:`using` applies it for the length of a training run and restores the
encoder's setting afterwards, so the saved model is unchanged. CUDA keeps SDPA (its fused kernels
are the fast path there). A third path, :mod:`hrlm.training.chunked_attention`, computes the eager
arithmetic a few sequences at a time so that the scores stay in cache; on a 2-core Intel Xeon with
AMX one layer over 32 x 256 tokens in bf16 took 40-58 ms that way against eager's 52-73, and
:func:`choose` times it too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hrlm._alloc import keep_freed_memory
from hrlm.inference import autocast
from hrlm.inference.backends import precision_dtype
from hrlm.inference.calibrate import mode
from hrlm.training import chunked_attention
from hrlm.training.calibration import best_seconds, cached_choice, width_bucket

IMPLEMENTATIONS = ("eager", "sdpa", chunked_attention.NAME)
VERSION = 2  # 2: the chunked path is timed too, at the run's batch
# Rows of the timed attention: the run's batch, at least MIN_ROWS and at most MAX_ROWS sequences. The
# paths differ with the batch: on the AMX machine one layer's forward and backward over 8 x 256 tokens
# in bf16 took about as long eager as chunked (11-12 against 9-11 ms, on a noisy host), over 32 x 256
# chunked was faster (40-58 against 52-73 ms; SDPA 117-166), and so was a whole training step (0.64
# against 0.73 s, medians of eight).
MIN_ROWS, MAX_ROWS = 4, 32


def encoder_of(model: nn.Module) -> Any | None:
    """The Hugging Face model inside ``model`` whose attention implementation can be set, or None."""
    for candidate in (model, getattr(model, "encoder", None)):
        if candidate is not None and callable(getattr(candidate, "set_attn_implementation", None)):
            return candidate
    return None


def measure(heads: int, head_dim: int, width: int, precision: str, rows: int = MIN_ROWS) -> dict[str, float]:
    """Seconds of one attention forward and backward pass, eager, SDPA and chunked, on ``rows`` random sequences.

    With freed memory kept in the process, as training runs (:func:`hrlm._alloc.keep_freed_memory`):
    without it eager's large score tensors pay the pages' first touch in every pass.
    """
    keep_freed_memory()
    gen = torch.Generator().manual_seed(width)
    shape = (rows, heads, width, head_dim)
    # in the dtype the projections hand to attention under autocast: bf16 for bf16 training
    dtype = precision_dtype(precision)
    q, k, v = (torch.randn(shape, generator=gen).to(dtype).requires_grad_() for _ in range(3))
    mask = torch.zeros(rows, 1, 1, width, dtype=dtype)  # additive, as the encoder passes one for padded batches
    mask[: max(1, rows // 4), ..., width * 3 // 4 :] = float("-inf")
    scale = head_dim**-0.5
    device = torch.device("cpu")

    def eager() -> None:
        with autocast(device, precision):
            scores = torch.matmul(q, k.transpose(-1, -2)) * scale + mask
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        out.float().sum().backward()

    def sdpa() -> None:
        with autocast(device, precision):
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
        out.float().sum().backward()

    def chunked() -> None:  # with autocast off, as chunked_attention.attention runs it
        out = chunked_attention.ChunkedAttention.apply(q, k, v, mask, scale)
        out.float().sum().backward()

    return {"eager": best_seconds(eager), "sdpa": best_seconds(sdpa), chunked_attention.NAME: best_seconds(chunked)}


def choose(
    model: nn.Module, device: torch.device, precision: str, max_length: int, batch_size: int = MIN_ROWS
) -> str | None:
    """The attention implementation to train ``model`` with on this machine, or None to keep the encoder's.

    Timed on ``batch_size`` sequences (within ``MIN_ROWS`` to ``MAX_ROWS``) of ``max_length`` tokens
    (rounded up to a power of two). None on CUDA, with ``HRLM_CALIBRATE=off``, and for encoders without
    a choice of implementation.
    """
    encoder = encoder_of(model)
    if encoder is None or device.type != "cpu" or mode() == "off":
        return None
    config = encoder.config
    heads = getattr(config, "num_attention_heads", None)
    hidden = getattr(config, "hidden_size", None)
    if not heads or not hidden:
        return None
    head_dim, width = int(hidden) // int(heads), width_bucket(max_length)
    rows = min(MAX_ROWS, max(MIN_ROWS, batch_size))
    shape = {"heads": int(heads), "head_dim": head_dim, "width": width, "rows": rows, "precision": precision}
    return cached_choice(
        "train-attention",
        shape,
        VERSION,
        IMPLEMENTATIONS,
        lambda: measure(int(heads), head_dim, width, precision, rows),
    )


@contextlib.contextmanager
def using(model: nn.Module, implementation: str | None) -> Iterator[None]:
    """Run the block with ``model``'s encoder on ``implementation`` (None: as it is), restored afterwards."""
    encoder = encoder_of(model)
    previous = getattr(getattr(encoder, "config", None), "_attn_implementation", None)
    if encoder is None or implementation is None or implementation == previous:
        yield
        return
    if implementation == chunked_attention.NAME:
        chunked_attention.register()
    encoder.set_attn_implementation(implementation)
    try:
        yield
    finally:
        encoder.set_attn_implementation(previous or "sdpa")
