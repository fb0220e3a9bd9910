"""Score a model on labelled data: run the :class:`~hrlm.inference.predictor.Predictor`, then compute metrics.

:func:`evaluate` reads a data file and writes the report (``hrlm evaluate``, ``hrlm.evaluate``);
:func:`evaluate_dataset` scores an in-memory :class:`~hrlm.data.Dataset` (training's test split,
the retrain gate). The metrics themselves are :mod:`hrlm.evaluation`'s.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from hrlm._fs import atomic_dir, check_out_dir
from hrlm.data import SPLIT_NAMES, Dataset, load_dataset
from hrlm.errors import DataError
from hrlm.evaluation import compute_metrics
from hrlm.inference.predictor import Predictor, decide
from hrlm.modeling import TaskSpec
from hrlm.report import write_report

__all__ = ["evaluate", "evaluate_dataset"]


def evaluate_dataset(predictor: Predictor, ds: Dataset, *, progress: bool = False) -> dict[str, Any]:
    """Metrics of a :class:`~hrlm.inference.predictor.Predictor` on a labelled :class:`~hrlm.data.Dataset`.

    A multi-task model is scored on every task the data has a column for, from one forward pass:
    the first task's metrics are at the top level and every task's are under ``"tasks"``.
    """
    if ds.labels is None:
        raise DataError(f"{ds.source}: no labels; evaluation needs a label column.")
    tasks = predictor.tasks
    probs = predictor.predict_proba(ds.texts, progress=progress)
    if len(tasks) == 1:
        return _task_metrics(ds, tasks[0], probs[tasks[0].name])
    per_task: dict[str, dict[str, Any]] = {}
    for i, task in enumerate(tasks):
        if task.name in ds.task_names:
            part = ds.for_task(task.name)
        elif i == 0:
            part = ds  # a single label column scores the first task
        else:
            continue
        per_task[task.name] = _task_metrics(part, task, probs[task.name])
    first = next(iter(per_task.values()))
    return {**first, "tasks": per_task}


def _task_metrics(ds: Dataset, task: TaskSpec, probs: np.ndarray) -> dict[str, Any]:
    assert ds.labels is not None  # evaluate_dataset checked
    if ds.multi_label != task.multi_label:
        kind = "multi-label" if task.multi_label else "single-label"
        raise DataError(
            f"{ds.source}: task {task.name!r} of the model is {kind} but the data is not; "
            "pass --label-sep for multi-label data."
        )
    return compute_metrics(ds.labels, decide(probs, task), probs, task.labels, multi_label=task.multi_label)


def evaluate(
    model: str | os.PathLike[str],
    data: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    text_col: str = "text",
    label_col: str | None = None,
    label_sep: str | None = None,
    split: str | None = None,
    split_col: str | None = None,
    threads: int | None = None,
    progress: bool = False,
    truncate: str | None = None,
    backend: str = "auto",
    overwrite: bool = False,
) -> dict[str, Any]:
    """Score a model folder on a labelled data file; with ``out``, write the report there.

    Args:
        model: folder written by ``hrlm train``.
        data: labelled data file; the label column defaults to the one the model was trained on.
        out: report folder (``metrics.json``, ``confusion.png``, ``report.html``).
        split: keep only the rows whose ``split_col`` value is this split (``test``, ``validation``...).
        truncate: read long texts differently from training (``none`` = windows, ``head``, ``head+tail``).
        backend: the inference backend (see :mod:`hrlm.inference.backends`); ``auto`` by default.
        overwrite: replace an existing non-empty ``out`` folder (once the new report is complete).

    Raises:
        LabelError: the data holds a label the model never saw.
        ConfigError: ``out`` is an existing non-empty folder and ``overwrite`` is false.
    """
    if out is not None:
        check_out_dir(out, overwrite=overwrite)  # before the scoring, which may take minutes
    predictor = Predictor.from_dir(model, threads=threads, truncate=truncate, backend=backend)
    tc = predictor.meta.train_config
    task = predictor.tasks[0]
    sep = label_sep if label_sep is not None else (tc.get("label_sep") if task.multi_label else None)
    if task.multi_label and sep is None:
        sep = "|"
    ds = load_dataset(
        Path(data),
        text_col=text_col,
        label_col=label_col or tc.get("label_col", "label"),  # "topic,sentiment" for a multi-task model
        label_sep=sep,
        split_col=split_col,
    )
    if split is not None:
        if ds.splits is None:
            raise DataError("--split needs --split-col to name the column that holds the split.")
        wanted = SPLIT_NAMES.get(split.lower())
        if wanted is None:
            raise DataError(f"--split {split!r} is not one of train, validation, test.")
        ds = ds.subset([i for i, s in enumerate(ds.splits) if s == wanted])
        if len(ds) == 0:
            raise DataError(f"{data}: no row is in the {wanted!r} split.")
    metrics = evaluate_dataset(predictor, ds, progress=progress)
    if out is not None:
        with atomic_dir(out, overwrite=True) as tmp:  # checked above; an empty folder is replaced too
            write_report(
                tmp,
                metrics,
                title=f"{Path(model).name} on {Path(data).name}",
                settings={
                    "model": str(model),
                    "data": str(data),
                    "rows": len(ds),
                    "data_fingerprint": ds.fingerprint(),
                    "backend": predictor.backend_name,
                    "truncate": predictor.truncate,
                },
            )
    return metrics
