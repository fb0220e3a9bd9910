"""Several tasks on one shared encoder: targets, the weighted loss, and validation across tasks.

A file with several label columns (``--label-col "topic,sentiment"``) trains one encoder with one
head per column. Each training window carries the targets of every task packed in one row (a class
id for a single-label task, a multi-hot block for a multi-label one); the loss is the weighted sum of
the tasks' losses; the validation metric is the mean of the tasks' metrics, so early stopping keeps
the checkpoint that is best across tasks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from hrlm.errors import ConfigError
from hrlm.modeling import TaskSpec


def parse_weights(spec: str | None, tasks: Sequence[TaskSpec]) -> list[float]:
    """Loss weights from ``"1,0.5"`` (one per task, in column order); all 1 when ``spec`` is empty.

    Example:
        >>> parse_weights("2, 0.5", [TaskSpec("a", ["x"]), TaskSpec("b", ["y"])])
        [2.0, 0.5]
    """
    if not spec:
        return [1.0] * len(tasks)
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        raise ConfigError(f"task_weights = {spec!r} must be numbers separated by commas, like '1,0.5'.") from None
    if len(weights) != len(tasks):
        names = ", ".join(t.name for t in tasks)
        raise ConfigError(f"task_weights gives {len(weights)} weight(s) for {len(tasks)} tasks ({names}).")
    if any(w < 0 for w in weights) or not any(w > 0 for w in weights):
        raise ConfigError(f"task_weights = {spec!r}: weights must be >= 0 and at least one > 0.")
    return weights


def pack_targets(per_task: Sequence[torch.Tensor]) -> torch.Tensor:
    """One float row per sample: class ids of single-label tasks, multi-hot blocks of multi-label ones."""
    return torch.cat([t.float().reshape(len(t), -1) for t in per_task], dim=1)


class MultiTaskLoss(nn.Module):
    """Weighted sum of each task's loss, reading each task's slice of the packed targets."""

    def __init__(self, tasks: Sequence[TaskSpec], losses: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.names = [t.name for t in tasks]
        self.multi = [t.multi_label for t in tasks]
        self.widths = [len(t.labels) if t.multi_label else 1 for t in tasks]
        self.losses = nn.ModuleList(losses)
        self.weights = list(weights)

    def forward(self, logits: dict[str, torch.Tensor], packed: torch.Tensor) -> torch.Tensor:
        total = packed.new_zeros(())
        start = 0
        for name, multi, width, loss, weight in zip(
            self.names, self.multi, self.widths, self.losses, self.weights, strict=True
        ):
            target = packed[:, start : start + width]
            start += width
            if weight == 0:
                continue
            total = total + weight * loss(logits[name].float(), target if multi else target[:, 0].long())
        return total


class MultiEvaluator:
    """Validation of several tasks from one forward pass: mean metric, weighted summed loss.

    ``parts`` are one single-task evaluator per task over the same validation windows.
    """

    def __init__(self, parts: Sequence[Any], weights: Sequence[float]) -> None:
        self.parts = list(parts)
        self.weights = list(weights)

    @property
    def available(self) -> bool:
        return bool(self.parts) and bool(self.parts[0].available)

    def doc_logits(self, model: Any) -> dict[str, np.ndarray]:
        from hrlm.inference import TorchBackend, aggregate, window_logits

        first = self.parts[0]
        was_training = model.training
        model.eval()
        per_window = window_logits(
            TorchBackend(model, first.device, first.precision), first.enc.windows, pad_id=first.pad_id
        )
        model.train(was_training)
        enc = first.enc
        return {
            p.task.name: aggregate(per_window[p.task.name], enc.doc_index, enc.n_docs, first.cfg.aggregate)
            for p in self.parts
        }

    def score(self, logits: dict[str, np.ndarray]) -> tuple[float, float]:
        scores = [p.score(logits[p.task.name]) for p in self.parts]
        metric = float(np.mean([m for m, _ in scores]))
        loss = float(sum(w * loss for w, (_, loss) in zip(self.weights, scores, strict=True)))
        return metric, loss
