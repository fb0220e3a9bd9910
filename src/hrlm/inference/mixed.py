"""``torch-bf16-int8``: the encoder in bf16, its widest-input matrix products in int8 where the CPU has VNNI.

On a CPU with AVX-512 BF16, the bf16 Predictor's linear layers already run at the machine's bf16
rate; what is left to gain is int8, whose VNNI products are faster still where the input is the
hidden state (measured on a 2-core AMD EPYC with AVX-512 BF16 and VNNI, 4,096 tokens of MiniLM:
2,048-square-equivalent 1,177-1,259 GFLOP/s for the 384 -> 1,152 and 384 -> 1,536 products against
767-844 in bf16, and no gain for the 1,536 -> 384 one). So this backend keeps the encoder in bf16
(:func:`hrlm.inference.unpadded.cast_encoder`) and computes in int8 only the query-key-value
projection and the first feed-forward layer of each block (:data:`KINDS`).

Plain dynamic int8 there changed 1.5% of the labels of 400 IMDB reviews (one scale per batch cannot
serve the few hidden channels whose values are tens of times larger than the rest). The backend
therefore smooths first, as SmoothQuant does (Xiao et al., 2023): per input channel ``j`` a factor
``s_j = max|x_j|^a / max|W_j|^(1-a)`` (``a`` = :data:`ALPHA`), the weights multiplied by it and the
input divided by it, so the product is unchanged and the outliers move into the per-channel weight
scales; measured on the same reviews, 99.75% of labels then agreed with fp32. The activation maxima
``max|x_j|`` come from a calibration pass over held-out text (:func:`activation_maxima`, run by
``hrlm compress --quantize int8 --data``) and live in the model folder (:data:`SMOOTHING_FILE`);
the layers kept in int8 are those the agreement check passed with (``int8_layers`` of the check).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from hrlm.errors import ConfigError
from hrlm.inference.backends import TorchBackend, quiet_ao_quantization
from hrlm.modeling import HrlmModel, ModelMeta, encoder_layers

NAME = "torch-bf16-int8"
SMOOTHING_FILE = "int8_smoothing.safetensors"
ALPHA = 0.5
# Per block: "qkv", the input of the query, key and value projections; "intermediate", of the first
# feed-forward layer. The second feed-forward layer reads GELU outputs, whose outliers smoothing did not
# tame (with it and the attention output in int8 too, 89.75% of 400 IMDB reviews' labels agreed with
# fp32), and its 1,536 -> 384 product was no faster in int8 (713 against 732 GFLOP/s).
KINDS = ("qkv", "intermediate")


def layer_names(model: HrlmModel, kinds: Sequence[str] = KINDS) -> list[str]:
    """``<block>.<kind>`` for every block of the encoder: the layers this backend can compute in int8."""
    return [f"{i}.{kind}" for i in range(len(encoder_layers(model.encoder))) for kind in kinds]


def int8_layers(meta: ModelMeta) -> list[str] | None:
    """The layers the model's ``torch-bf16-int8`` check passed with, or None when there is no check."""
    check = meta.backend_checks.get(NAME)
    return None if check is None else list(check.get("int8_layers") or [])


class SmoothedInt8Linear(nn.Module):
    """A linear layer computed in int8 on smoothed inputs; takes and returns the input's dtype.

    The weights, multiplied per input channel by ``s``, are quantized per output channel; the input
    is divided by ``s`` (in float32, as the int8 kernel takes it) and quantized per batch.
    """

    inv_scale: torch.Tensor

    def __init__(self, linear: nn.Linear, act_max: torch.Tensor, alpha: float = ALPHA) -> None:
        super().__init__()
        weight = linear.weight.detach().float()
        w_max = weight.abs().amax(dim=0).clamp(min=1e-5)
        scale = (act_max.float().clamp(min=1e-5) ** alpha / w_max ** (1 - alpha)).clamp(min=1e-5)
        smoothed = nn.Linear(linear.in_features, linear.out_features, bias=linear.bias is not None)
        with torch.no_grad():
            smoothed.weight.copy_(weight * scale)
            if linear.bias is not None:
                smoothed.bias.copy_(linear.bias.detach().float())
        self.register_buffer("inv_scale", 1.0 / scale)
        with quiet_ao_quantization():
            quantized = torch.ao.quantization.quantize_dynamic(
                nn.Sequential(smoothed),
                {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig},
                dtype=torch.qint8,
            )
        self.int8 = quantized[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.int8(x * self.inv_scale).to(x.dtype)  # bf16 x fp32 scale: one pass to float32


@torch.inference_mode()
def activation_maxima(
    model: HrlmModel, tokenizer: Any, meta: ModelMeta, texts: Sequence[str], *, threads: int
) -> dict[str, torch.Tensor]:
    """Per channel, the largest absolute input of every layer in :func:`layer_names`, over ``texts`` in fp32.

    Packed batches, so padding never enters the maxima. Raises ConfigError for encoders that packed
    batches do not cover (then this backend is not available).
    """
    from hrlm.inference.predictor import Predictor

    predictor = Predictor(
        model, tokenizer, meta, backend="torch-fp32", device="cpu", threads=threads, packing=True, calibrate=False
    )
    backend = predictor.backend
    if not isinstance(backend, TorchBackend) or backend.qkv is None:
        raise ConfigError(f"{NAME} needs a BERT encoder with absolute positions (packed batches); use torch-int8.")
    maxima: dict[str, torch.Tensor] = {}

    def record(name: str) -> Any:
        def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            seen = inputs[0].detach().float().abs().amax(dim=0)
            maxima[name] = seen if name not in maxima else torch.maximum(maxima[name], seen)

        return hook

    handles = []
    layers: list[Any] = list(encoder_layers(backend.model.encoder))
    for i, layer in enumerate(layers):
        handles.append(backend.qkv[i].register_forward_pre_hook(record(f"{i}.qkv")))
        handles.append(layer.intermediate.dense.register_forward_pre_hook(record(f"{i}.intermediate")))
    try:
        predictor.predict_proba(list(texts))
    finally:
        for handle in handles:
            handle.remove()
    return maxima


def save_maxima(maxima: dict[str, torch.Tensor], folder: Path) -> Path:
    from safetensors.torch import save_file

    path = folder / SMOOTHING_FILE
    save_file({k: v.contiguous() for k, v in maxima.items()}, str(path))
    return path


def load_maxima(folder: Path | None) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = None if folder is None else folder / SMOOTHING_FILE
    if path is None or not path.exists():
        raise ConfigError(
            f"backend {NAME} needs the activation ranges that `hrlm compress --quantize int8 --data HELD_OUT` "
            f"writes into the model folder ({SMOOTHING_FILE}); compress the model first, or use torch-bf16."
        )
    return dict(load_file(str(path)))


class MixedBackend(TorchBackend):
    """bf16 throughout, int8 (smoothed) in the ``layers`` named by :func:`layer_names`; CPU only."""

    def __init__(self, model: HrlmModel, maxima: dict[str, torch.Tensor], layers: Sequence[str]) -> None:
        super().__init__(model, torch.device("cpu"), "bf16", name=NAME)
        if self.model is model or self.qkv is None:
            raise ConfigError(f"{NAME} needs a plain BERT encoder whose weights can be copied; use torch-int8.")
        missing = sorted(set(layers) - set(maxima))
        if missing:
            raise ConfigError(f"{SMOOTHING_FILE} has no ranges for {', '.join(missing)}; run `hrlm compress` again.")
        wanted = set(layers)
        blocks: list[Any] = list(encoder_layers(self.model.encoder))
        for i, layer in enumerate(blocks):
            if f"{i}.qkv" in wanted:
                act = maxima[f"{i}.qkv"]
                # packed batches run the fused projection, padded ones the encoder's own three
                self.qkv[i] = SmoothedInt8Linear(cast(nn.Linear, self.qkv[i]), act)
                attention = layer.attention.self
                for name in ("query", "key", "value"):
                    setattr(attention, name, SmoothedInt8Linear(getattr(attention, name), act))
            if f"{i}.intermediate" in wanted:
                layer.intermediate.dense = SmoothedInt8Linear(layer.intermediate.dense, maxima[f"{i}.intermediate"])
        self.int8_layers = [name for name in layer_names(self.model) if name in wanted]
