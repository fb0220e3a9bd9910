"""Training: fit an encoder with task heads on labelled text, and every way of making a model from data.

Modules: ``fitting`` (:func:`train`, :func:`fit`, the fine-tuning entry points), ``loop`` (the one
AdamW + warmup + clipping loop and its evaluator), ``frozen`` (cached features of frozen layers),
``multitask`` (several heads on one encoder), ``fewshot`` (SetFit-style contrastive training),
``augmentation``, ``distillation`` (a smaller student from a teacher), ``pretraining`` with
``mlm_data`` (masked LM and next-sentence prediction on unlabelled text), ``compression``
(pruning with a recovery fine-tune, quantization and ONNX export, checked against the original),
``selection`` (cross-validation, and ``--method auto``'s choice by it), ``distributed`` (data-parallel
training on Ray Train workers).
Other packages use the names below; the modules' other names are this package's own.
"""

from __future__ import annotations

from hrlm.training.compression import CompressResult, compress
from hrlm.training.distillation import DistillResult, distill, distill_file, teacher_data_config
from hrlm.training.fitting import TrainResult, finetune, fit, load_training_data, train
from hrlm.training.pretraining import PretrainResult, pretrain
from hrlm.training.selection import CVResult, cross_validate

__all__ = [
    "CVResult",
    "CompressResult",
    "DistillResult",
    "PretrainResult",
    "TrainResult",
    "compress",
    "cross_validate",
    "distill",
    "distill_file",
    "finetune",
    "fit",
    "load_training_data",
    "pretrain",
    "teacher_data_config",
    "train",
]
