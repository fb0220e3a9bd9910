"""A model already trained, measured on a test split that its training never read, as :func:`fit` would have.

``hrlm tune`` chooses a trial on validation; the trial's model is the one to measure on test. Training
it again with the same settings (what :func:`fit` on the full splits would do) costs a whole trial and,
where kernels are not bit-for-bit repeatable, measures a different model from the one chosen.
:func:`remeasure` copies the trial's folder and rewrites what depends on the splits: ``hrlm.json``'s
metrics, data fingerprint and split sizes, the report (its learning curves kept) and the model card.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from hrlm._fs import atomic_dir, write_json
from hrlm.data import Dataset
from hrlm.errors import ConfigError, HrlmError
from hrlm.inference import Predictor, evaluate_dataset
from hrlm.model_card import CARD_FILE, write_model_card
from hrlm.modeling import META_FILE, read_meta
from hrlm.report import write_report
from hrlm.training.fitting import TrainResult, _fingerprint, metrics_summary, split_counts

# Settings that change how a run computes, not the model it makes.
RUNTIME_SETTINGS = frozenset({"threads", "device"})


def same_settings(folder: str | Path, settings: dict[str, Any]) -> bool:
    """Whether the model in ``folder`` was trained with ``settings`` (a ``TrainConfig.to_dict()``)."""
    try:
        trained = read_meta(folder).train_config
    except HrlmError:  # no folder, no hrlm.json or a damaged one: not the same model
        return False
    keys = (set(trained) | set(settings)) - RUNTIME_SETTINGS
    return all(trained.get(k) == settings.get(k) for k in keys)


def remeasure(
    source: str | Path,
    splits: dict[str, Dataset],
    out: str | Path,
    *,
    overwrite: bool = False,
    threads: int | None = None,
    progress: bool = False,
) -> TrainResult:
    """Copy the model folder ``source`` to ``out`` and measure it on ``splits["test"]``.

    ``splits`` are the ones the model was trained on, with the test split added: ``out`` records
    their fingerprint and sizes as a :func:`fit` on them would. The model is read with the precision
    it was trained and measured in, so that its scores are the ones :func:`fit` would have reported.
    Without a test split it is measured on the validation split, as :func:`fit` reports then.

    Raises:
        ConfigError: ``splits`` has neither test nor validation texts.
        HrlmError: ``out`` exists and ``overwrite`` is false (it is left as it was).
    """
    split = next((name for name in ("test", "validation") if len(splits.get(name) or ()) > 0), None)
    if split is None:
        raise ConfigError("remeasure needs a test or validation split with texts to measure the model on.")
    source, target = Path(source), Path(out)
    meta = read_meta(source)
    precision = str(meta.extra.get("precision", "fp32"))
    predictor = Predictor.from_dir(source, backend=f"torch-{precision}", threads=threads)
    metrics = evaluate_dataset(predictor, splits[split], progress=progress)
    old_report = source / "report" / "metrics.json"
    earlier = json.loads(old_report.read_text(encoding="utf-8")) if old_report.is_file() else {}
    history = list(earlier.get("history") or [])
    meta.metrics = metrics_summary(metrics, split)
    meta.data_fingerprint = _fingerprint(splits)
    meta.extra.update(split_counts(splits))
    meta.extra["measured_from"] = str(source)
    with atomic_dir(target, overwrite=overwrite) as tmp:
        shutil.copytree(source, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns("report", CARD_FILE))
        write_json(tmp / META_FILE, meta.to_dict())
        write_report(
            tmp / "report",
            metrics,
            history=history,
            title=f"hrlm model {target.name}: {split} split",
            settings=earlier.get("settings") or {**meta.train_config, "precision": precision},
        )
        write_model_card(tmp, name=target.name)
    extra = meta.extra
    return TrainResult(
        model_dir=target,
        metrics=metrics,
        history=history,
        evaluated_on=split,
        best_step=int(extra.get("best_step", 0)),
        train_seconds=float(extra.get("train_seconds", 0.0)),
        train_samples_per_s=float(extra.get("train_samples_per_s", 0.0)),
        notes=[n for ds in splits.values() if ds is not None for n in ds.notes],
    )
