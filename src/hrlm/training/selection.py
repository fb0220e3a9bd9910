"""Choosing a training method by cross-validation on the training split, within a time budget.

With a few labelled texts per class, no rule of thumb says which method wins: on 110 long documents
over 25 classes a head on frozen features scored 77 macro F1 in seconds where full fine-tuning scored
46 in minutes and SetFit would have taken an hour and a half. :func:`choose_by_cv` measures instead:
it estimates what cross-validating each candidate would cost, runs the ones that fit in
``TrainConfig.auto_budget`` cheapest first, and keeps the best mean score. :func:`cross_validate`
is the k-fold estimate itself, which ``hrlm tune`` uses on small data too.

The candidates (:data:`CANDIDATES`):

- ``head``: a linear head on the frozen encoder's mean-pooled features (``freeze_encoder``), fitted with
  L-BFGS on vectors computed once: the cost is one encoder pass over the texts.
- ``setfit``: contrastive tuning of the encoder on pairs of texts, then the head (:mod:`.fewshot`).
- ``finetune``: the encoder and the head trained together.

Each fold trains on the other folds and is scored once on its own texts, which play the part of a test
split: no early stopping reads them, so the estimate is not tuned on what it measures.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import statistics
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from hrlm._progress import ProgressBar
from hrlm.config import TrainConfig
from hrlm.data import Dataset
from hrlm.encoders import load_tokenizer, resolve_base
from hrlm.errors import ConfigError, DataError
from hrlm.inference import autocast, collate, resolve_device, resolve_precision
from hrlm.modeling import TaskSpec, attention_dropout_for, build_model
from hrlm.text import encode_documents

log = logging.getLogger("hrlm")

HEAD = "head"
"""The method ``--method auto`` returns for a head on frozen features; fit trains it with ``freeze_encoder``."""

CANDIDATES = (HEAD, "setfit", "finetune")
NAMES = {HEAD: "a head on frozen features", "setfit": "SetFit", "finetune": "fine-tuning"}

TIE = 1e-3
"""Mean scores closer than this are a tie, which the cheaper candidate wins (0.1 point of macro F1)."""

MEASURE_WINDOWS = 8
"""Windows in the batch whose forward and backward pass are timed to estimate each candidate's cost."""


@dataclass
class CVResult:
    """A k-fold cross-validated score: higher is better (for ``metric = "loss"``, the negated log loss)."""

    mean: float
    per_fold: list[float]
    seconds: float
    metric: str = "macro_f1"

    @property
    def folds(self) -> int:
        return len(self.per_fold)

    @property
    def std(self) -> float:
        """The standard deviation of the fold scores (0 for a single fold)."""
        return statistics.stdev(self.per_fold) if len(self.per_fold) > 1 else 0.0


@dataclass
class Candidate:
    """What :func:`choose_by_cv` knows of one method: its estimated cost and, when it ran, its score."""

    method: str
    estimate: float
    result: CVResult | None = None
    skipped: str = ""

    @property
    def name(self) -> str:
        return NAMES[self.method]


@dataclass
class Choice:
    """The method :func:`choose_by_cv` chose, why in one sentence, and every candidate's figures."""

    method: str
    reason: str
    candidates: list[Candidate] = field(default_factory=list)


def candidate_config(cfg: TrainConfig, method: str) -> TrainConfig:
    """The settings that train ``method``: a ``head`` is fine-tuning with a frozen encoder.

    Example:
        >>> candidate_config(TrainConfig(), "head").freeze_encoder
        True
    """
    if method == HEAD:
        return cfg.replace(method="finetune", freeze_encoder=True)
    return cfg.replace(method=method)


def stratified_folds(ds: Dataset, folds: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """``(train, held_out)`` index lists of a stratified k-fold split of ``ds``.

    The fold count drops to the smallest class's size when a class has fewer texts than ``folds`` (at
    least 2); a class of one text cannot be held out and learned at once, so its text stays in train in
    every fold. Every other text is held out exactly once. Texts that share a group (``ds.groups``) stay
    in one fold. Multi-label texts are stratified by their rarest label; a held-out text with a label
    (of any task) that the fold's train lacks moves to train, so a multi-label text may never be held out.

    Raises:
        DataError: ``ds`` has no labels, or no class has two texts to split.

    Example:
        >>> from hrlm.data import dataset_from_records
        >>> ds = dataset_from_records([f"t{i}" for i in range(7)], ["a", "a", "a", "b", "b", "b", "c"])
        >>> [sorted(held) for _, held in stratified_folds(ds, 5, seed=0)]  # 3 folds; "c" never held out
        [[2, 4], [1, 5], [0, 3]]
    """
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

    if ds.labels is None:
        raise DataError(f"{ds.source}: no labels; cross-validation needs a label column.")
    keys = _strata(ds)
    counts = Counter(keys)
    movable = [i for i, key in enumerate(keys) if counts[key] >= 2]
    if not movable:
        raise DataError(
            f"{ds.source}: no class has two texts, so none can be held out; cross-validation needs more data."
        )
    k = max(2, min(folds, min(counts[keys[i]] for i in movable)))
    strata = [keys[i] for i in movable]
    splitter: StratifiedKFold | StratifiedGroupKFold
    if ds.groups is not None:
        groups = [ds.groups[i] for i in movable]
        k = min(k, len(set(groups)))
        if k < 2:
            raise DataError(f"{ds.source}: all texts are in one group, so none can be held out for cross-validation.")
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed % (2**32))
        parts = splitter.split(np.zeros(len(movable)), strata, groups)
    else:
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed % (2**32))
        parts = splitter.split(np.zeros(len(movable)), strata)
    labels = [_label_set(ds, i) for i in range(len(ds))]
    out = []
    for _, held_pos in parts:
        held = {movable[p] for p in held_pos}
        train = [i for i in range(len(ds)) if i not in held]
        seen = set().union(*(labels[i] for i in train))
        unseen = {i for i in held if not labels[i] <= seen}
        out.append((sorted([*train, *unseen]), sorted(held - unseen)))
    return out


def _strata(ds: Dataset) -> list[str]:
    assert ds.labels is not None
    if not ds.multi_label:
        return [str(label) for label in ds.labels]
    counts = ds.label_counts()
    return [min(labs, key=lambda lab: (counts[lab], lab)) if labs else "" for labs in ds.labels]


def _label_set(ds: Dataset, i: int) -> set[tuple[str, str]]:
    assert ds.labels is not None
    tasks = [(ds.task_name, ds.labels, ds.multi_label)]
    tasks += [(name, values, multi) for name, (values, multi) in ds.extra_tasks.items()]
    return {(name, str(lab)) for name, values, multi in tasks for lab in (values[i] if multi else [values[i]])}


def cross_validate(cfg: TrainConfig, train: Dataset, *, folds: int, seed: int, progress: bool = False) -> CVResult:
    """The mean score of ``cfg.metric`` over stratified k folds of ``train`` (:func:`stratified_folds`).

    Each fold trains a model with :func:`hrlm.training.fit` on the other folds and scores it once on its
    own texts; nothing is saved. The hrlm log is kept to warnings during the folds' runs.

    With ``method = "auto"`` the method is chosen first, once, on all of ``train``
    (:func:`hrlm.training.fewshot.method_and_reason`, which may cross-validate the candidates itself),
    so that no fold chooses again inside its own run; the folds then train the chosen method.

    Args:
        cfg: the settings each fold trains with.
        train: the labelled texts to split; a validation or test split should not be among them.
        folds: the folds wanted; fewer when a class has fewer texts.
        seed: the seed of the split (the runs use ``cfg.seed``).
        progress: show a bar over the folds.

    Returns:
        The mean and each fold's score (higher is better: ``loss`` is negated) and the seconds taken.

    Raises:
        DataError: too few texts to hold any out (:func:`stratified_folds`).
        ConfigError: ``cfg.metric`` is ``loss`` for multi-label data, which has no log loss.

    Example:
        >>> cv = cross_validate(TrainConfig(epochs=2), ds, folds=5, seed=0)  # doctest: +SKIP
        >>> print(f"{cv.mean:.3f} ± {cv.std:.3f} over {cv.folds} folds")  # doctest: +SKIP
    """
    if cfg.method == "auto":
        from hrlm.training.fewshot import method_and_reason  # fewshot imports this module

        cfg = candidate_config(cfg, method_and_reason(cfg, train)[0])
    return _cross_validate(cfg, train, folds=folds, seed=seed, progress=progress)


class _OverBudget(Exception):
    def __init__(self, projected: float, done: int, planned: int) -> None:
        super().__init__(f"projected {projected:.0f} s after {done} of {planned} folds")
        self.projected, self.done, self.planned = projected, done, planned


def _cross_validate(
    cfg: TrainConfig,
    train: Dataset,
    *,
    folds: int,
    seed: int,
    progress: bool = False,
    deadline: float | None = None,
    label: str = "cross-validation",
) -> CVResult:
    """:func:`cross_validate`; with ``deadline`` (a ``time.perf_counter()`` value), :class:`_OverBudget`
    as soon as the folds done so far project past it."""
    from hrlm.training.fitting import fit  # fitting imports fewshot, which imports this module

    if cfg.metric == "loss" and train.multi_label:
        raise ConfigError("metric = 'loss' cannot score multi-label folds; choose macro_f1 or another metric.")
    splits = stratified_folds(train, folds, seed)
    start = time.perf_counter()
    scores: list[float] = []
    bar = ProgressBar(len(splits), label, unit="folds", fields={"mean": "-"}, enabled=progress)
    try:
        for train_idx, held_idx in splits:
            with _quiet():
                result = fit(cfg, {"train": train.subset(train_idx), "test": train.subset(held_idx)}, progress=False)
            scores.append(_score(result.metrics, cfg.metric))
            bar.update(len(scores), mean=f"{cfg.metric} {statistics.fmean(scores):.4f}")
            now = time.perf_counter()
            projected = now + (now - start) / len(scores) * (len(splits) - len(scores))
            if deadline is not None and len(scores) < len(splits) and projected > deadline:
                raise _OverBudget(projected - start, len(scores), len(splits))
    finally:
        bar.close()
    return CVResult(statistics.fmean(scores), scores, time.perf_counter() - start, cfg.metric)


def _score(metrics: dict[str, float], metric: str) -> float:
    return -float(metrics["log_loss"]) if metric == "loss" else float(metrics[metric])


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """The hrlm log at warnings only: each fold's run would otherwise log its method, pairs and stops."""
    logger = logging.getLogger("hrlm")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _rng_kept() -> Iterator[None]:
    """The random generators' states as they were: the run after the choice starts as an unchosen one would."""
    py, np_state = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            random.setstate(py)
            np.random.set_state(np_state)


@dataclass
class _Speeds:
    """Seconds per window of an encoder pass without (``forward``) and with gradients (``train``),
    seconds to build a model, and the windows of each text."""

    forward: float
    train: float
    build: float
    windows: list[int]


def _measure(cfg: TrainConfig, train: Dataset) -> _Speeds:
    """Time a model build and a batch of the training windows, forward alone and forward with backward."""
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    base_dir = resolve_base(cfg.base)
    tokenizer = load_tokenizer(base_dir)
    enc = encode_documents(
        tokenizer, train.texts, max_length=cfg.max_length, stride=cfg.stride or 0, truncate=cfg.truncate
    )
    tasks = [TaskSpec(cfg.label_col, train.label_names)]
    build_model(base_dir, tasks, pooling="mean")  # the first build pays for imports, which folds do not
    t0 = time.perf_counter()
    model = build_model(
        base_dir,
        tasks,
        pooling="mean",
        dropout=cfg.dropout,
        attention_dropout=attention_dropout_for(cfg.attention_dropout, device),
    )
    model.to(device)
    build = time.perf_counter() - t0
    pad_id = int(tokenizer.pad_token_id or 0)
    rng = random.Random(cfg.seed)
    sample = rng.sample(enc.windows, min(MEASURE_WINDOWS, len(enc.windows)))
    ids, mask = (t.to(device) for t in collate(sample, pad_id))
    # Training batches are grouped by length and the predictor packs windows, so a window costs about its
    # own tokens, not the padded width of this random sample: time per token, times the mean window length.
    scale = statistics.fmean(enc.lengths) / (len(sample) * ids.shape[1])

    def timed(step: bool) -> float:
        _sync(device)
        t = time.perf_counter()
        with torch.set_grad_enabled(step), autocast(device, precision):
            out = model(ids, mask)[cfg.label_col].float().logsumexp(-1).mean()
        if step:
            out.backward()
        _sync(device)
        return (time.perf_counter() - t) * scale

    # The best of two runs: the first call of each kind pays one-off costs (kernels, allocations, autograd).
    model.eval()
    forward = min(timed(False) for _ in range(2))
    model.train()
    backward = min(timed(True) for _ in range(2))
    windows = Counter(enc.doc_index)
    return _Speeds(forward, backward, build, [windows[i] for i in range(len(train))])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def estimate(cfg: TrainConfig, train: Dataset, method: str, speeds: _Speeds, folds: int, seed: int) -> float:
    """Seconds that :func:`cross_validate` of ``method`` on ``train`` should take, from measured speeds.

    Per fold: a model build, then for ``head`` one encoder pass over every window (the train folds'
    features, then scoring the held-out fold); for ``finetune`` ``epochs`` training passes over the train
    folds' windows; for ``setfit`` two windows trained per contrastive pair (counted on the first fold),
    then as ``head``.
    """
    from hrlm.training.fewshot import contrastive_pairs

    splits = stratified_folds(train, folds, seed)
    pairs = 0
    if method == "setfit":
        assert train.labels is not None
        first = splits[0][0]
        labels = [train.labels[j] for j in first for _ in range(speeds.windows[j])]
        rng = random.Random(cfg.seed)
        pairs = len(contrastive_pairs(labels, cfg.setfit_pairs, rng, max_pairs=cfg.setfit_pairs * len(first)))
    total = 0.0
    for train_idx, held_idx in splits:
        w_train = sum(speeds.windows[j] for j in train_idx)
        w_held = sum(speeds.windows[j] for j in held_idx)
        total += speeds.build + (w_train + w_held) * speeds.forward + 2 * pairs * speeds.train
        if method == "finetune":
            total += math.ceil(cfg.epochs * w_train) * speeds.train
    return total


def choose_by_cv(cfg: TrainConfig, train: Dataset) -> Choice:
    """Cross-validate the candidates that fit in ``cfg.auto_budget`` seconds and keep the best mean.

    The budget covers the whole choice: timing the encoder, then each candidate's k folds, cheapest
    estimate first. A candidate whose estimate exceeds what is left is skipped, and one whose first folds
    show it will overrun is stopped. Scores closer than :data:`TIE` are a tie, won by the faster run;
    when none could run, the cheapest estimate wins untested. The random generators are left as they
    were, so the run that follows trains as if the chosen method had been set.
    """
    start = time.perf_counter()
    deadline = start + cfg.auto_budget
    folds = len(stratified_folds(train, cfg.cv_folds, cfg.seed))
    with _rng_kept():
        speeds = _measure(cfg, train)
        candidates = sorted(
            (Candidate(m, estimate(cfg, train, m, speeds, cfg.cv_folds, cfg.seed)) for m in CANDIDATES),
            key=lambda c: c.estimate,
        )
        for c in candidates:
            left = deadline - time.perf_counter()
            if c.estimate > left:
                c.skipped = f"est. {_duration(c.estimate)}, over the {_duration(left)} left of --auto-budget"
                log.info("--method auto: %s skipped (%s)", c.name, c.skipped)
                continue
            log.info("--method auto: cross-validating %s (%d folds, est. %s)", c.name, folds, _duration(c.estimate))
            try:
                c.result = _cross_validate(
                    candidate_config(cfg, c.method),
                    train,
                    folds=cfg.cv_folds,
                    seed=cfg.seed,
                    deadline=deadline,
                    label=f"cross-validating {c.method}",
                )
            except _OverBudget as over:
                c.skipped = f"stopped after {over.done} of {over.planned} folds: est. {_duration(over.projected)}"
                log.info("--method auto: %s %s", c.name, c.skipped)
                continue
            except ConfigError as err:  # settings this method cannot train with, e.g. SetFit on frozen layers
                c.skipped = f"cannot train with these settings: {err}"
                log.info("--method auto: %s %s", c.name, c.skipped)
                continue
            log.info(
                "--method auto: %s %s %.4f ± %.4f in %s",
                c.name,
                cfg.metric,
                c.result.mean,
                c.result.std,
                _duration(c.result.seconds),
            )
    ran = [c for c in candidates if c.result is not None]
    if ran:
        best_mean = max(c.result.mean for c in ran if c.result is not None)
        chosen = min(
            (c for c in ran if c.result is not None and c.result.mean >= best_mean - TIE),
            key=lambda c: c.result.seconds if c.result is not None else math.inf,
        )
        how = f"by {folds}-fold cross-validation on the training split"
    else:
        chosen = candidates[0]
        how = "untested, as the cheapest: no candidate's cross-validation fit in --auto-budget"
    per_class = len(train) / max(1, len(train.label_names))
    figures = [_figure(chosen, cfg.metric)] + [_figure(c, cfg.metric) for c in candidates if c is not chosen]
    reason = (
        f"--method auto chose {chosen.name} {how} ({per_class:.1f} labelled texts per class, below "
        f"--few-shot-below {cfg.few_shot_below}; --auto-budget {cfg.auto_budget:g} s, "
        f"{_duration(time.perf_counter() - start)} spent): " + " vs ".join(figures)
    )
    return Choice(chosen.method, reason, candidates)


def _figure(c: Candidate, metric: str) -> str:
    if c.result is not None:
        return f"{c.name} {metric} {c.result.mean:.3f} ({_duration(c.result.seconds)})"
    return f"{c.name} skipped ({c.skipped})"


def _duration(seconds: float) -> str:
    """``4 s``, ``3 min``, ``1.5 h``: a duration as people say it."""
    seconds = max(seconds, 0.0)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
