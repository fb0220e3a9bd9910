"""Int8 that keeps the labels: which linear layers of a model tolerate dynamic int8, measured on its data.

``torch-int8`` (:func:`hrlm.inference.quantize_torch_int8`) quantizes every linear layer of the
transformer blocks, weights per output channel and activations per batch. On some models a few
layers drift enough to change labels: a MiniLM fine-tuned on IMDB kept 97.2% of its fp32 labels at
256 tokens, below the 99% the agreement check asks. Where the check of full int8 fails,
``hrlm compress --quantize int8`` keeps the layers that drift most in float32:

1. :func:`sensitivity` ranks the layers by how far each one's int8 output is from its float32
   output on the same inputs (relative error, each layer measured alone, one float32 pass over a
   sample of the held-out texts);
2. :func:`search` keeps the worst 1, 2, 3, 4, 6, 8, ... layers in float32 and runs the agreement
   check on all the held-out data each time, until it passes (or every candidate failed).

The layers kept in float32 are recorded in the ``torch-int8`` check of ``hrlm.json``
(``fp32_layers``), and the backend quantizes the rest when it loads the folder.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from hrlm.inference import Predictor, check_passes, int8_linears, quantize_torch_int8
from hrlm.modeling import HrlmModel, ModelMeta, encoder_layers

log = logging.getLogger("hrlm")

# How many of the most-drifting layers to try keeping in float32, in order (capped at all but one).
KEEP_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24)
# Held-out texts the sensitivity pass reads: enough to see each layer's typical inputs.
SENSITIVITY_TEXTS = 128


def sensitivity(
    model: HrlmModel, tokenizer: Any, meta: ModelMeta, texts: list[str], *, threads: int
) -> list[tuple[str, float]]:
    """The linear layers of the blocks with the relative error of their int8 output, largest first.

    Every layer sees its float32 inputs (one float32 pass over ``texts``) and is compared with its
    own int8 version on those inputs: ``||int8(x) - fp32(x)|| / ||fp32(x)||`` over all tokens.
    """
    int8 = quantize_torch_int8(model)
    quantized: dict[str, nn.Module] = {}
    original: dict[str, nn.Module] = {}
    for i, (block, qblock) in enumerate(zip(encoder_layers(model.encoder), encoder_layers(int8.encoder), strict=True)):
        q_modules = dict(qblock.named_modules())
        for name, module in block.named_modules():
            if isinstance(module, nn.Linear):
                original[f"{i}.{name}"], quantized[f"{i}.{name}"] = module, q_modules[name]
    error = dict.fromkeys(original, 0.0)
    norm = dict.fromkeys(original, 0.0)

    def hook(name: str) -> Callable[[nn.Module, tuple[torch.Tensor, ...], torch.Tensor], None]:
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            drift = quantized[name](inputs[0].float()) - output.float()
            error[name] += float(drift.pow(2).sum())
            norm[name] += float(output.float().pow(2).sum())

        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in original.items()]
    try:
        # padded batches: the layers' own modules run (the packed path fuses query, key and value)
        predictor = Predictor(
            model, tokenizer, meta, backend="torch-fp32", device="cpu", threads=threads, packing=False, calibrate=False
        )
        predictor.predict_proba(texts[:SENSITIVITY_TEXTS])
    finally:
        for handle in handles:
            handle.remove()
    ranked = [(name, (error[name] / norm[name]) ** 0.5 if norm[name] else 0.0) for name in original]
    return sorted(ranked, key=lambda kv: -kv[1])


def search(
    model: HrlmModel,
    meta: ModelMeta,
    texts: list[str],
    tokenizer: Any,
    check: Callable[[ModelMeta], dict[str, Any]],
    *,
    threads: int,
    fp32_docs_per_s: float = 0.0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``torch-int8`` check with the fewest float32 layers that passes, and every candidate tried.

    ``check(meta)`` scores the held-out data with ``torch-int8`` built from ``meta`` (whose
    ``torch-int8`` check names the layers kept in float32) and returns the check; the first
    passing one is returned with its ``fp32_layers``, else the last one tried. The search also
    stops once a candidate is no faster than ``fp32_docs_per_s``: keeping more layers in float32
    only makes it slower.
    """
    ranked = sensitivity(model, tokenizer, meta, texts, threads=threads)
    total = len(int8_linears(model))
    tried: list[dict[str, Any]] = []
    found: dict[str, Any] | None = None
    for keep in sorted({min(k, total - 1) for k in KEEP_STEPS if k < total}):
        layers = [name for name, _ in ranked[:keep]]
        trial_meta = copy.deepcopy(meta)
        trial_meta.backend_checks = {**meta.backend_checks, "torch-int8": {"fp32_layers": layers}}
        found = {**check(trial_meta), "fp32_layers": layers}
        tried.append(
            {
                "fp32_layers": keep,
                "label_agreement": found["label_agreement"],
                "accuracy_delta": found["accuracy_delta"],
                "shift_t": found.get("margin_shift", {}).get("t"),
                "docs_per_s": found["docs_per_s"],
                "passed": check_passes(found),
            }
        )
        log.info(
            "torch-int8 with %d of %d linear layers in float32: %.2f%% of labels agree with fp32, %.1f docs/s",
            keep,
            total,
            100 * found["label_agreement"],
            found["docs_per_s"],
        )
        if check_passes(found) or found["docs_per_s"] <= fp32_docs_per_s:
            break
    assert found is not None, "a model has at least two linear layers in its blocks"
    found["sensitivity"] = {name: round(value, 5) for name, value in ranked}
    return found, tried
