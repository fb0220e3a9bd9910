"""The study of ``hrlm tune``: trials drawn by TPE, pruned by Hyperband, stored where they survive a kill.

One study is a set of trials in an Optuna RDB storage: ``sqlite:///OUT/study.db`` by default, or
PostgreSQL (``--storage postgresql://user@host/db``). A trial draws settings from the search space
(:mod:`hrlm.tuning.space`), trains with them on the training split and scores the validation split
after every epoch; Hyperband stops a trial whose curve falls behind its bracket's. The data is split
once (``split_dataset`` with the config's seed, or the split column), so every trial sees the same
train and validation texts and none sees the test split; on small data (below :data:`CV_BELOW`
validation texts per class) a trial is scored by k-fold cross-validation of the training split instead
(:func:`hrlm.training.selection.cross_validate`; such a trial reports one score at its end, so it is
never pruned).
The best trial's model (its settings trained again where this process did not keep it) is then
measured once on test; with ``refit`` the best settings are instead trained on train and validation
together (:mod:`hrlm.tuning.refit`) and that model is measured.

**Resuming.** ``--trials N`` asks for N finished (complete or pruned) trials in the study: a run
started again on the same storage and study runs only the missing ones. A trial that was running
when its process was killed stops sending heartbeats; once its grace period (3 heartbeats) has
passed, the next trial to start marks it failed and queues its settings to be tried again.

**Several machines.** Point every worker at one PostgreSQL database and one study name and start
``hrlm tune`` on each, each with its own ``--sampler-seed``; they share the trials through the
database, and each stops once the study holds N finished trials. Each worker keeps its own
``--out`` (its trial folders, the final model); the study's tables are the shared state.

Example:
    >>> result = tune("tickets.csv", "runs/tune", TrainConfig(), trials=20)  # doctest: +SKIP
    >>> result.best_settings["lr"], result.test_metrics["macro_f1"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hrlm._extras import needs_extras
from hrlm.config import TrainConfig
from hrlm.data import Dataset, check_label_counts, split_dataset
from hrlm.encoders import resolve_base
from hrlm.errors import ConfigError, HrlmError
from hrlm.training import TrainResult, cross_validate, fit, load_training_data
from hrlm.training.remeasure import remeasure, same_settings
from hrlm.tuning.refit import check_refit, refit_model
from hrlm.tuning.report import param_importances, write_tuning_report
from hrlm.tuning.space import Param, load_space, max_epochs, suggest
from hrlm.tuning.storage import open_study, quiet_optuna, shown_url, storage_url
from hrlm.tuning.store import trial_rows, write_best_toml, write_trials

if TYPE_CHECKING:
    import optuna

log = logging.getLogger("hrlm")

CV_BELOW = 10  # validation texts per class under which a trial is scored by cross-validation instead
VALIDATIONS = ("auto", "holdout", "cv")
SUMMARY = ("accuracy", "macro_f1", "weighted_f1", "micro_f1")


@dataclass
class TuneResult:
    """What a study produced, and where it wrote it."""

    out: Path
    study: str
    storage: str
    metric: str
    validation: str  # "holdout" or "cv"
    trials: list[dict[str, Any]]  # every trial of the study: number, state, value, seconds, params
    new_trials: int  # trials this call ran
    best_number: int
    best_value: float
    best_settings: dict[str, Any]
    model_dir: Path
    test_metrics: dict[str, Any]
    baseline: dict[str, Any] | None = None
    ensemble: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    refit_epochs: float | None = None  # with refit: the epochs the final model trained on train + validation


class PruningReporter:
    """``fit``'s ``on_eval``: report each validation score to the trial, and stop a trial Hyperband prunes.

    The step is the evaluation's number (1, 2, ...: an epoch each by default), the resource Hyperband
    allots. ``optuna.TrialPruned`` propagates out of ``fit`` before anything is written.
    """

    def __init__(self, trial: optuna.Trial) -> None:
        self.trial = trial
        self.step = 0

    def __call__(self, entry: Mapping[str, Any]) -> None:
        value = entry.get("val_metric")
        if value is None:
            return
        import optuna

        self.step += 1
        self.trial.report(float(value), self.step)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"pruned after evaluation {self.step} ({entry.get('metric')} {value})")


@contextlib.contextmanager
def _log_warnings_only() -> Iterator[None]:
    level = log.level
    log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        log.setLevel(level)


def tune(
    data: str | Path,
    out: str | Path,
    cfg: TrainConfig | None = None,
    **kwargs: Any,
) -> TuneResult:
    """Load a data file, split it once, and run a study on it: the library form of ``hrlm tune``.

    ``kwargs`` are those of :func:`tune_splits`.
    """
    cfg = cfg or TrainConfig()
    ds = load_training_data(data, cfg)
    check_label_counts(ds)
    splits = split_dataset(ds, val_size=cfg.val_size, test_size=cfg.test_size, seed=cfg.seed)
    result = tune_splits(cfg, splits, out, **kwargs)
    result.notes = ds.notes + result.notes
    return result


def tune_splits(
    cfg: TrainConfig,
    splits: Mapping[str, Dataset],
    out: str | Path,
    *,
    space: Mapping[str, Param] | str | Path | None = None,
    trials: int = 20,
    storage: str | None = None,
    study: str = "hrlm",
    timeout: float | None = None,
    sampler_seed: int | None = None,
    ensemble: int = 0,
    baseline: bool = False,
    validation: str = "auto",
    refit: bool = False,
    heartbeat_s: int = 60,
    progress: bool = True,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> TuneResult:
    """Search settings on ``splits["train"]``/``["validation"]``, then measure the best trial's model on test.

    Args:
        cfg: the settings every trial starts from; the space's draws replace the searched ones.
            ``method = "auto"`` becomes ``finetune`` (give ``setfit`` to tune SetFit instead).
        splits: ``train``, ``validation`` and ``test`` (from :func:`hrlm.data.split_dataset`).
        out: folder of ``study.db`` (by default), ``best.toml``, ``trials.csv``/``.json``, ``model/``
            (the best trial's model, measured on test), ``report/``, ``trials/<number>/`` (on holdout
            validation, the best trial's model: the K best with ``ensemble``) and ``ensemble/``.
        space: the search space, or a ``--space`` TOML file of it (default
            :func:`hrlm.tuning.space.default_space`, ``freeze_layers`` bounded by the encoder's layers).
        trials: finished (complete or pruned) trials the study should hold; only the missing ones run.
        storage: database URL of the study (default ``sqlite:///OUT/study.db``).
        study: the study's name in the storage.
        timeout: stop starting trials after this many seconds.
        sampler_seed: seed of the TPE sampler (default: ``cfg.seed`` plus the trials already in the study).
        ensemble: with K >= 2, keep every trial's model and combine the K best into ``out/ensemble``.
        baseline: also train ``cfg`` unchanged on the same splits, for a row beside the best.
        validation: ``holdout`` (the validation split, pruned per epoch), ``cv`` (k-fold on train,
            ``cfg.cv_folds``) or ``auto`` (cv below :data:`CV_BELOW` validation texts per class).
        refit: train the final model on train and validation together, for the epochs of the best
            trial's best validation score (:func:`hrlm.tuning.refit.refit_model`); the ensemble keeps
            the trials' own models.
        heartbeat_s: seconds between a running trial's heartbeats.
        progress: print one line per trial and show the final training's progress bar.
        on_trial: called with each finished trial's row (instead of printing it).

    Raises:
        ConfigError: a bad option, or a study of that name that was run with another metric or data.
        HrlmError: no trial completed (all pruned or failed, or the timeout came first).
    """
    with needs_extras("hrlm tune"):
        import optuna
    out = Path(out)
    if trials < 1:
        raise ConfigError(f"trials = {trials} must be at least 1.")
    if ensemble == 1 or ensemble < 0:
        raise ConfigError(f"ensemble = {ensemble}: an ensemble needs at least 2 members (or 0 for none).")
    if validation not in VALIDATIONS:
        raise ConfigError(f"validation = {validation!r} is not valid; choose one of {', '.join(VALIDATIONS)}.")
    train, val = splits["train"], splits.get("validation")
    space = dict(space) if isinstance(space, Mapping) else load_space(space, layers=_encoder_layers(cfg))
    mode = _validation_mode(validation, train, val)
    if refit:
        check_refit(train, val)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(storage, out)
    notes: list[str] = []
    if cfg.method == "auto":  # a trial tunes fine-tuning; auto would run its own cross-validated choice in each
        cfg = cfg.replace(method="finetune")
    direction: Literal["minimize", "maximize"] = "minimize" if cfg.metric == "loss" else "maximize"
    resource: int | str = math.ceil(max_epochs(space)) if cfg.eval_steps is None else "auto"
    with open_study(url, study, direction=direction, max_resource=resource, heartbeat_s=heartbeat_s) as the_study:
        _check_same_study(the_study, cfg, train, val, mode)
        before = {t.number for t in the_study.get_trials(deepcopy=False)}
        seed = sampler_seed if sampler_seed is not None else cfg.seed + len(before)
        the_study.sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(3, trials // 3)))
        # the best trial's model (with ensemble the K best) is kept: it is the one measured on test
        keep = out / "trials" if mode == "holdout" else None
        objective = _Objective(cfg, space, train, val, mode, keep)
        finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
        missing = trials - len(the_study.get_trials(deepcopy=False, states=finished))
        show = on_trial or (_print_trial if progress else None)
        callbacks: list[Any] = [optuna.study.MaxTrialsCallback(trials, states=finished)]
        if keep is not None:
            callbacks.append(_KeepBest(keep, max(ensemble, 1)))
        if show is not None:
            callbacks.append(lambda s, t: show(trial_rows([t], cfg.metric)[0]))
        if missing > 0:
            with quiet_optuna():
                the_study.optimize(
                    objective, n_trials=missing, timeout=timeout, callbacks=callbacks, gc_after_trial=True
                )
        all_trials = the_study.get_trials()
        importances = param_importances(the_study)
    rows = trial_rows(all_trials, cfg.metric)
    write_trials(out, rows)
    complete = sorted(
        (t for t in all_trials if t.state == optuna.trial.TrialState.COMPLETE and t.value is not None),
        key=lambda t: float(t.value or 0.0),
        reverse=direction == "maximize",
    )
    if not complete:
        raise HrlmError(
            f"no trial of study {study!r} completed ({len(all_trials)} pruned, failed or running); "
            "run again with more --trials or a longer --timeout."
        )
    best = complete[0]
    best_settings = dict(best.user_attrs["settings"])
    best_cfg = cfg.replace(**best_settings)
    write_best_toml(
        out / "best.toml", best_cfg, note=f"study {study!r}, trial {best.number}, {cfg.metric} {best.value}"
    )
    epochs = None
    if refit:
        with _log_warnings_only():
            final, epochs = refit_model(best, best_cfg, splits, out, notes, progress)
    else:
        final = _final_model(best, best_cfg, splits, out, notes, progress)
    test_metrics = {k: final.metrics.get(k) for k in ("n", *SUMMARY)} | {"split": final.evaluated_on}
    result = TuneResult(
        out=out,
        study=study,
        storage=shown_url(url),
        metric=cfg.metric,
        validation=mode,
        trials=rows,
        new_trials=len({t.number for t in all_trials} - before),
        best_number=best.number,
        best_value=float(best.value or 0.0),
        best_settings=best_settings,
        model_dir=out / "model",
        test_metrics=test_metrics,
        notes=notes,
        refit_epochs=epochs,
    )
    if baseline:
        result.baseline = _baseline(cfg, splits, mode, progress)
    if ensemble and len(complete) < 2:
        result.notes.append(f"--ensemble {ensemble}: only {len(complete)} trial completed; no ensemble was built.")
    elif ensemble:
        result.ensemble = _ensemble(cfg, splits, complete[:ensemble], out, progress)
        if len(complete) < ensemble:
            result.notes.append(f"--ensemble {ensemble}: only {len(complete)} trials completed; all of them were used.")
    write_tuning_report(out / "report", all_trials, importances, result)
    return result


def _final_model(
    best: Any, cfg: TrainConfig, splits: Mapping[str, Dataset], out: Path, notes: list[str], progress: bool
) -> TrainResult:
    """The best trial's model measured on test (validation without one), in ``out/model``: the trial's own
    folder where this process kept it (same settings), else trained again (its folder is on another worker,
    or trials were cross-validated)."""
    kept = out / "trials" / str(best.number)
    with _log_warnings_only():
        if same_settings(kept, cfg.to_dict()):
            found = remeasure(kept, dict(splits), out / "model", overwrite=True, threads=cfg.threads, progress=progress)
            notes.append(f"the model of trial {best.number} was measured on {found.evaluated_on}, not trained again.")
            return found
        why = (
            f"{kept} holds a model of other settings"
            if kept.exists()
            else "its model is not kept here: trials were cross-validated, or another worker ran it"
        )
        notes.append(f"trial {best.number}'s settings were trained again ({why}).")
        return fit(cfg, dict(splits), out / "model", overwrite=True, progress=progress)


def _encoder_layers(cfg: TrainConfig) -> int:
    import json

    try:
        config = json.loads((resolve_base(cfg.base) / "config.json").read_text(encoding="utf-8"))
        return int(config.get("num_hidden_layers", 6))
    except (OSError, ValueError):
        return 6


def _validation_mode(validation: str, train: Dataset, val: Dataset | None) -> str:
    if validation != "auto":
        if validation == "holdout" and (val is None or len(val) == 0):
            raise ConfigError("validation = 'holdout' needs a validation split; raise --val-size or use cv.")
        return validation
    classes = max(len(train.label_names), 1)
    return "holdout" if val is not None and len(val) >= CV_BELOW * classes else "cv"


def _check_same_study(study: optuna.Study, cfg: TrainConfig, train: Dataset, val: Dataset | None, mode: str) -> None:
    """Mark a new study with what its trials are scored on; refuse to resume one scored on something else."""
    mark = {
        "metric": cfg.metric,
        "validation": mode,
        "train": train.fingerprint(),
        "val": val.fingerprint() if val is not None else "",
    }
    have = {k: study.user_attrs.get(k) for k in mark}
    if all(v is None for v in have.values()):
        for key, value in mark.items():
            study.set_user_attr(key, value)
        return
    differ = sorted(k for k in mark if have[k] != mark[k])
    if differ:
        raise ConfigError(
            f"study {study.study_name!r} was scored on another {', '.join(differ)}; "
            "choose another --study (or --storage) for this data and metric."
        )


class _Objective:
    """One trial: draw settings, train and score them on validation (or cross-validate on train)."""

    def __init__(
        self,
        cfg: TrainConfig,
        space: Mapping[str, Param],
        train: Dataset,
        val: Dataset | None,
        mode: str,
        keep: Path | None,
    ) -> None:
        self.cfg, self.space, self.train, self.val, self.mode, self.keep = cfg, space, train, val, mode, keep

    def __call__(self, trial: optuna.Trial) -> float:
        with _log_warnings_only():  # one line per trial, not each run's INFO lines
            return self._run(trial)

    def _run(self, trial: optuna.Trial) -> float:
        settings = suggest(self.space, trial)
        trial.set_user_attr("settings", settings)
        trial_cfg = self.cfg.replace(**settings)
        if self.mode == "cv":
            cv = cross_validate(trial_cfg, self.train, folds=self.cfg.cv_folds, seed=self.cfg.seed, progress=False)
            trial.set_user_attr("per_fold", [round(float(v), 6) for v in cv.per_fold])
            return _cv_value(cv.mean, self.cfg.metric)
        assert self.val is not None
        target = self.keep / str(trial.number) if self.keep is not None else None
        result = fit(
            trial_cfg,
            {"train": self.train, "validation": self.val},
            target,
            overwrite=True,
            progress=False,
            on_eval=PruningReporter(trial),
        )
        if result.interrupted:  # Ctrl-C inside the loop: end the study, not just this trial
            raise KeyboardInterrupt
        trial.set_user_attr("val_metrics", {k: result.metrics.get(k) for k in SUMMARY})
        if target is not None:
            trial.set_user_attr("model_dir", str(target))
        return best_value(result.history, self.cfg.metric)


class _KeepBest:
    """After each trial, delete the saved models of trials outside the ``k`` best: disk use stays at k models."""

    def __init__(self, folder: Path, k: int) -> None:
        self.folder, self.k = folder, k

    def __call__(self, study: optuna.Study, trial: Any) -> None:
        import shutil

        import optuna

        done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        done.sort(key=lambda t: float(t.value or 0.0), reverse=study.direction.name == "MAXIMIZE")
        best = {str(t.number) for t in done[: self.k]}
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():  # model folders are named by number; temporaries start with a dot
            if path.is_dir() and path.name.isdigit() and path.name not in best:
                shutil.rmtree(path, ignore_errors=True)


def best_value(history: Sequence[Mapping[str, Any]], metric: str) -> float:
    """The best validation score of a run's history: the highest, or the lowest for ``loss``."""
    values = [float(e["val_metric"]) for e in history if e.get("val_metric") is not None]
    if not values:
        raise HrlmError("the trial recorded no validation score; is the validation split empty?")
    return min(values) if metric == "loss" else max(values)


def _cv_value(mean: float, metric: str) -> float:
    """A cross-validated score on the study's scale (cross_validate negates the loss; the study minimises it)."""
    return -float(mean) if metric == "loss" else float(mean)


def _baseline(cfg: TrainConfig, splits: Mapping[str, Dataset], mode: str, progress: bool) -> dict[str, Any]:
    """The starting settings, unchanged, scored like a trial and measured on test like the best."""
    with _log_warnings_only():
        return _baseline_run(cfg, splits, mode, progress)


def _baseline_run(cfg: TrainConfig, splits: Mapping[str, Dataset], mode: str, progress: bool) -> dict[str, Any]:
    t0 = time.perf_counter()
    if mode == "cv":
        value = _cv_value(cross_validate(cfg, splits["train"], folds=cfg.cv_folds, seed=cfg.seed).mean, cfg.metric)
        result = fit(cfg, dict(splits), None, progress=progress)
    else:
        result = fit(cfg, dict(splits), None, progress=progress)
        value = best_value(result.history, cfg.metric)
    return {
        "value": value,
        "test": {k: result.metrics.get(k) for k in ("n", *SUMMARY)} | {"split": result.evaluated_on},
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _ensemble(
    cfg: TrainConfig, splits: Mapping[str, Dataset], members: Sequence[Any], out: Path, progress: bool
) -> dict[str, Any]:
    """Combine the best trials' models into ``out/ensemble``; a member without a folder here is trained now.

    A member lacks its folder when another worker ran the trial, or when trials were cross-validated.
    """
    from hrlm.inference import build_ensemble

    folders = []
    for trial in members:
        folder = out / "trials" / str(trial.number)
        if not (folder / "hrlm.json").is_file():
            member_cfg = cfg.replace(**trial.user_attrs["settings"])
            parts = {"train": splits["train"], "validation": splits.get("validation")}
            fit(member_cfg, {k: v for k, v in parts.items() if v is not None}, folder, overwrite=True, progress=False)
        folders.append(folder)
    summary = build_ensemble(folders, out / "ensemble", test=splits.get("test"), overwrite=True, progress=progress)
    return {"members": [t.number for t in members], "folder": str(out / "ensemble"), "summary": summary}


def _print_trial(row: Mapping[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(escape(trial_line(row)))


def trial_line(row: Mapping[str, Any]) -> str:
    """One line of progress for a finished trial: number, state, value, seconds, settings."""
    value = "-" if row.get("value") is None else f"{row['value']:.4f}"
    params = " ".join(f"{k}={_short(v)}" for k, v in (row.get("params") or {}).items())
    seconds = row.get("seconds")
    took = "-" if seconds is None else f"{seconds:.0f}s"
    return f"trial {row['number']:>3}  {row['state'].lower():<8}  {row['metric']} {value}  {took:>6}  {params}"


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
