"""What training is measured against: targets per document, the loss of a task, and the validation evaluator.

The :class:`Evaluator` scores the current weights the way users will see them: windows through the
inference backend, logits aggregated per document, metrics from :mod:`hrlm.evaluation`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from hrlm.config import TrainConfig
from hrlm.data import Dataset
from hrlm.evaluation import compute_metrics
from hrlm.inference import TorchBackend, aggregate, decide, probabilities, window_logits
from hrlm.modeling import HrlmModel, TaskSpec
from hrlm.text import Encoded


def doc_targets(ds: Dataset, task: TaskSpec) -> torch.Tensor:
    """Class ids per document, or a multi-hot row per document for multi-label tasks."""
    assert ds.labels is not None
    index = {lab: i for i, lab in enumerate(task.labels)}
    if task.multi_label:
        multi_hot = torch.zeros((len(ds), len(task.labels)), dtype=torch.float32)
        for row, labs in enumerate(ds.labels):
            for lab in labs:
                multi_hot[row, index[lab]] = 1.0
        return multi_hot
    return torch.tensor([index[lab] for lab in ds.labels], dtype=torch.long)


def task_loss(task: TaskSpec, ds: Dataset, mode: str, device: torch.device) -> nn.Module:
    """The training loss of ``task``: cross-entropy, or BCE for multi-label; ``balanced`` weighs classes by rarity."""
    counts = ds.label_counts()
    n = len(ds)
    if task.multi_label:
        if mode == "balanced":
            pos = torch.tensor([max(counts[lab], 1) for lab in task.labels], dtype=torch.float32)
            return nn.BCEWithLogitsLoss(pos_weight=((n - pos) / pos).clamp(1.0, 20.0).to(device))
        return nn.BCEWithLogitsLoss()
    if mode == "balanced":
        k = len(task.labels)
        weights = torch.tensor([n / (k * max(counts[lab], 1)) for lab in task.labels], dtype=torch.float32)
        return nn.CrossEntropyLoss(weight=weights.to(device))
    return nn.CrossEntropyLoss()


def _doc_loss(logits: np.ndarray, ds: Dataset, task: TaskSpec) -> float:
    """Unweighted loss of aggregated document logits, for the learning curves."""
    targets = doc_targets(ds, task)
    x = torch.from_numpy(logits)
    if task.multi_label:
        return float(nn.functional.binary_cross_entropy_with_logits(x, targets))
    return float(nn.functional.cross_entropy(x, targets))


class Evaluator:
    """Validation metric and loss of the current weights on pre-encoded validation windows."""

    def __init__(
        self,
        ds: Dataset | None,
        enc: Encoded | None,
        task: TaskSpec,
        cfg: TrainConfig,
        pad_id: int,
        device: torch.device,
        precision: str,
    ) -> None:
        self.ds, self.enc, self.task, self.cfg = ds, enc, task, cfg
        self.pad_id, self.device, self.precision = pad_id, device, precision

    @property
    def available(self) -> bool:
        return self.ds is not None and len(self.ds) > 0

    def doc_logits(self, model: HrlmModel) -> np.ndarray:
        assert self.enc is not None
        was_training = model.training
        model.eval()
        backend = TorchBackend(model, self.device, self.precision)
        per_window = window_logits(backend, self.enc.windows, pad_id=self.pad_id)[self.task.name]
        model.train(was_training)
        return aggregate(per_window, self.enc.doc_index, self.enc.n_docs, self.cfg.aggregate)

    def score(self, logits: np.ndarray) -> tuple[float, float]:
        """(metric, loss) of document logits; higher metric is better (loss is negated for 'loss')."""
        assert self.ds is not None and self.ds.labels is not None
        loss = _doc_loss(logits, self.ds, self.task)
        if self.cfg.metric == "loss":
            return -loss, loss
        probs = probabilities(logits, self.task.multi_label)
        metrics = compute_metrics(
            self.ds.labels, decide(probs, self.task), probs, self.task.labels, multi_label=self.task.multi_label
        )
        return float(metrics[self.cfg.metric]), loss
