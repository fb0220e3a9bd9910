"""``hrlm tune --refit``: train the chosen settings once more on train and validation together.

A study chooses settings on the validation split; the texts of that split then help no model. With
``--refit`` the final model is trained on both splits (scikit-learn's ``refit`` after a search), for
the epochs at which the best trial peaked on validation, with no early stopping (there is nothing
left to stop on), and measured once on test. On data split by group (O*NET's occupations, a
company's departments), the validation split holds groups that train lacks, which is what a model
that must generalise to unseen groups learns most from.

Example:
    >>> refit_epochs({1: 0.40, 2: 0.42, 3: 0.41}, epochs=3.0, per_epoch=True, maximize=True)
    2.0
    >>> refit_epochs({1: 0.40, 2: 0.41, 3: 0.42}, epochs=2.5, per_epoch=True, maximize=True)
    2.5
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from hrlm.config import TrainConfig
from hrlm.data import Dataset
from hrlm.errors import ConfigError
from hrlm.training import TrainResult, fit


def refit_epochs(scores: Mapping[int, float], *, epochs: float, per_epoch: bool, maximize: bool) -> float:
    """The epochs to refit for: those of the trial's best evaluation (its ``intermediate_values``).

    Evaluation k of a run scored once an epoch ends epoch k, and its last ends the run (``epochs``,
    which may be a fraction). With ``eval_steps`` (``per_epoch`` False) or no scores, the setting's
    ``epochs`` are kept.
    """
    if not per_epoch or not scores:
        return float(epochs)
    best = (max if maximize else min)(sorted(scores), key=lambda k: scores[k])
    return float(epochs) if best >= max(scores) else float(min(best, epochs))


def joined(first: Dataset, second: Dataset) -> Dataset:
    """The rows of ``first`` then those of ``second``, as one split (the given split column dropped)."""
    if first.multi_label != second.multi_label or set(first.extra_tasks) != set(second.extra_tasks):
        raise ConfigError("train and validation hold different tasks; they cannot be joined for --refit.")

    def both(a: list[Any] | None, b: list[Any] | None) -> list[Any] | None:
        return None if a is None or b is None else [*a, *b]

    return replace(
        first,
        texts=[*first.texts, *second.texts],
        labels=both(first.labels, second.labels),
        groups=both(first.groups, second.groups),
        splits=None,
        notes=[],
        extra_tasks={
            name: ([*labels, *second.extra_tasks[name][0]], multi)
            for name, (labels, multi) in first.extra_tasks.items()
        },
    )


def check_refit(train: Dataset, val: Dataset | None) -> None:
    """Refuse ``--refit`` before a study starts where it cannot be done: no validation split to join, or
    multi-label data, whose decision thresholds only validation tunes."""
    if val is None or len(val) == 0:
        raise ConfigError("--refit joins the validation split to train, but there is none; drop --refit.")
    if train.multi_label or any(multi for _, multi in train.extra_tasks.values()):
        raise ConfigError(
            "--refit: multi-label models tune their decision thresholds on the validation split, which a "
            "refit trains on; drop --refit for this data."
        )


def refit_model(
    best: Any,
    cfg: TrainConfig,
    splits: Mapping[str, Dataset],
    out: Path,
    notes: list[str],
    progress: bool,
) -> tuple[TrainResult, float]:
    """Train ``cfg`` (the best trial's settings) on train + validation into ``out/model``; the epochs used.

    ``best`` is the Optuna trial; its validation scores, one per evaluation, give the epochs. The splits
    were checked by :func:`check_refit` before the study started.
    """
    epochs = refit_epochs(
        dict(best.intermediate_values),
        epochs=cfg.epochs,
        per_epoch=cfg.eval_steps is None,
        maximize=cfg.metric != "loss",
    )
    parts = {"train": joined(splits["train"], splits["validation"])}
    test = splits.get("test")
    if test is not None and len(test) > 0:
        parts["test"] = test
    refit_cfg = cfg.replace(epochs=epochs)
    notes.append(
        f"the final model is trial {best.number}'s settings refit on train + validation "
        f"({len(parts['train'])} texts) for {epochs:g} epochs (its best validation score came after "
        f"{'that many' if epochs != cfg.epochs else 'all'} of its {cfg.epochs:g}), with no early stopping."
    )
    return fit(refit_cfg, parts, out / "model", overwrite=True, progress=progress), epochs
