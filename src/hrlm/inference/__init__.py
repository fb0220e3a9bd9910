"""Inference: run a trained model over texts, fast, on whatever the machine has.

Modules: ``predictor`` (:class:`Predictor`: tokenise once, windows, length-sorted or packed
batches, aggregation per document), ``backends`` (torch fp32/bf16/fp16/int8 and ONNX Runtime, the
agreement check ``auto`` reads), ``packing`` and ``unpadded`` (batches with no padding on BERT
encoders), ``scoring`` (a model's metrics on labelled data: :func:`evaluate`).
Other packages use the names below; the modules' other names are this package's own.
"""

from __future__ import annotations

from hrlm.inference.backends import (
    MIN_CHECK_DOCS,
    ONNX_FILES,
    TorchBackend,
    check_passes,
    cpu_has_fast_bf16,
    export_onnx,
    quantize_onnx_int8,
)
from hrlm.inference.predictor import (
    Prediction,
    Predictor,
    aggregate,
    autocast,
    collate,
    decide,
    default_threads,
    length_batches,
    load,
    probabilities,
    resolve_device,
    resolve_precision,
    window_logits,
)
from hrlm.inference.scoring import evaluate, evaluate_dataset

__all__ = [
    "MIN_CHECK_DOCS",
    "ONNX_FILES",
    "Prediction",
    "Predictor",
    "TorchBackend",
    "aggregate",
    "autocast",
    "check_passes",
    "collate",
    "cpu_has_fast_bf16",
    "decide",
    "default_threads",
    "evaluate",
    "evaluate_dataset",
    "export_onnx",
    "length_batches",
    "load",
    "probabilities",
    "quantize_onnx_int8",
    "resolve_device",
    "resolve_precision",
    "window_logits",
]
