"""Inference: run a trained model over texts, fast, on whatever the machine has.

Modules: ``predictor`` (:class:`Predictor`: tokenise once, windows, length-sorted or packed
batches, aggregation per document), ``backends`` (torch fp32/bf16/fp16/int8 and ONNX Runtime, the
agreement check ``auto`` reads), ``packing`` and ``unpadded`` (batches with no padding on BERT
encoders), ``scoring`` (a model's metrics on labelled data: :func:`evaluate`), ``ensemble``
(several models in one folder, the mean of their probabilities: :func:`build_ensemble`,
:class:`EnsemblePredictor`), ``batch`` and ``ray_batch`` (``hrlm batch``: a large file or folder
of shards scored into a folder of shards, streaming or on Ray Data, resumable: :func:`run_batch`).
Other packages use the names below; the modules' other names are this package's own.
"""

from __future__ import annotations

from hrlm.inference.backends import (
    MIN_CHECK_DOCS,
    ONNX_FILES,
    TorchBackend,
    check_passes,
    cpu_has_fast_bf16,
    cpu_has_vnni,
    export_onnx,
    int8_linears,
    quantize_onnx_int8,
    quantize_torch_int8,
)
from hrlm.inference.batch import BatchSummary, flatten_prediction, iter_chunks, run_batch
from hrlm.inference.ensemble import EnsemblePredictor, build_ensemble, check_members, is_ensemble
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
    "BatchSummary",
    "EnsemblePredictor",
    "Prediction",
    "Predictor",
    "TorchBackend",
    "aggregate",
    "autocast",
    "build_ensemble",
    "check_members",
    "check_passes",
    "collate",
    "cpu_has_fast_bf16",
    "cpu_has_vnni",
    "decide",
    "default_threads",
    "evaluate",
    "evaluate_dataset",
    "export_onnx",
    "flatten_prediction",
    "int8_linears",
    "is_ensemble",
    "iter_chunks",
    "length_batches",
    "load",
    "probabilities",
    "quantize_onnx_int8",
    "quantize_torch_int8",
    "resolve_device",
    "resolve_precision",
    "run_batch",
    "window_logits",
]
