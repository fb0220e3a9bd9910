"""A model's outputs as an audit reads them: the predicted label, whether it is the positive one, and its score.

Predictions go through the :class:`~hrlm.inference.Predictor` (long texts read in windows, as
everywhere in hrlm); a multi-task model is audited on its first task.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from hrlm.errors import ConfigError
from hrlm.inference import decide

__all__ = ["ModelOutputs", "model_outputs", "positive_label"]


@dataclass(frozen=True)
class ModelOutputs:
    """Per text: ``labels`` (a string, or a list for multi-label), ``selected`` (the positive label was
    predicted), ``scores`` (the probability of the positive label) and ``probs`` (every label's)."""

    positive: str
    labels: list[Any]
    selected: np.ndarray
    scores: np.ndarray
    probs: np.ndarray


def positive_label(predictor: Any, positive: str | None, flag: str = "--positive") -> str:
    """``positive`` checked against the model's labels (default: the first label).

    Raises:
        ConfigError: the model has no such label.
    """
    labels = [str(label) for label in predictor.tasks[0].labels]
    if positive is None:
        return labels[0]
    if positive not in labels:
        raise ConfigError(
            f"{flag} {positive!r} is not a label of the model; its labels are {labels}. Pass one of them."
        )
    return positive


def model_outputs(predictor: Any, texts: Sequence[str], positive: str | None = None) -> ModelOutputs:
    """Predict ``texts`` and read the positive label's decision and probability.

    Args:
        predictor: a :class:`hrlm.inference.Predictor` or anything with its ``tasks`` and ``predict_proba``.
        texts: the texts.
        positive: the label that counts as selected (default: the model's first label).

    Example:
        >>> out = model_outputs(Predictor.from_dir("runs/cv"), ["Ten years of payroll"], "yes")  # doctest: +SKIP
        >>> out.selected, out.scores  # doctest: +SKIP
        (array([ True]), array([0.81]))
    """
    task = predictor.tasks[0]
    pos = positive_label(predictor, positive)
    column = [str(label) for label in task.labels].index(pos)
    if not texts:
        return ModelOutputs(
            pos, [], np.zeros(0, dtype=bool), np.zeros(0, dtype=np.float64), np.zeros((0, len(task.labels)))
        )
    probs = np.asarray(predictor.predict_proba(list(texts))[task.name], dtype=np.float64)
    labels = decide(probs, task)
    selected = np.array([pos in label if task.multi_label else label == pos for label in labels], dtype=bool)
    return ModelOutputs(pos, labels, selected, probs[:, column], probs)
