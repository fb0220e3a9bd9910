"""Ensembles: several trained models in one model folder, answering with the mean of their probabilities.

:func:`build_ensemble` writes the folder; :class:`EnsemblePredictor` runs it. The folder is
self-contained (the registry copies and moves folders)::

    ensemble/
      hrlm.json        what every reader of a model folder reads: tasks, labels, thresholds, metrics,
                       the first member's training settings, and extra["ensemble"] (the marker)
      ensemble.json    the members (folder, source, weight) and how they are combined
      members/0-<name>/  a full copy of each member's folder
      report/          with a test split: the ensemble's report, with a table of each member beside it

:meth:`Predictor.from_dir <hrlm.inference.predictor.Predictor.from_dir>` (and so ``hrlm.load``,
``hrlm predict``, ``hrlm evaluate``, ``hrlm serve``) sees ``ensemble.json`` and loads an
:class:`EnsemblePredictor`.

How the members' answers are combined: each member predicts with its own settings (window length,
stride, backend), its probabilities are put in the ensemble's label order (members may list the
labels in another order), and the ensemble's probability is their weighted mean (equal weights).
Single-label tasks take the argmax of the mean; multi-label tasks compare the mean with the mean of
the members' thresholds (0.5 for a member without tuned thresholds): a label is predicted when the
members' average belief clears their average bar.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hrlm._fs import atomic_dir, check_out_dir, write_json
from hrlm._progress import ProgressBar
from hrlm._version import __version__
from hrlm.data import Dataset
from hrlm.errors import ConfigError, ModelError
from hrlm.inference.predictor import Predictor, default_threads
from hrlm.inference.scoring import evaluate_dataset
from hrlm.model_card import write_model_card
from hrlm.modeling import META_FILE, ModelMeta, TaskSpec, read_meta
from hrlm.report import write_report

ENSEMBLE_FILE = "ensemble.json"
MEMBERS_DIR = "members"
HOW = "mean of probabilities"
ENSEMBLE_FORMAT = 1
SUMMARY = ("n", "accuracy", "macro_f1", "weighted_f1", "micro_f1")
# The smallest probability turned back into a logit: log(1e-7) is finite in float32 and far below any decision.
_EPS = 1e-7


def is_ensemble(folder: str | os.PathLike[str]) -> bool:
    """Whether ``folder`` is an ensemble written by :func:`build_ensemble`."""
    return (Path(folder) / ENSEMBLE_FILE).is_file()


class EnsemblePredictor(Predictor):
    """A :class:`~hrlm.inference.predictor.Predictor` whose answer is the weighted mean of its members' probabilities.

    Every caller of a Predictor can use it: ``predict``, ``predict_proba``, ``logits``, ``tasks``,
    ``labels``, ``meta``, ``backend_name``, ``backend_reason``, ``threads``, ``truncate``. The members
    do the model work, one after the other, so there is no single ``model``, ``tokenizer`` or
    ``backend``: use :attr:`members` for those.

    Args:
        members: the members' predictors, loaded once.
        meta: the ensemble's metadata (its ``hrlm.json``): tasks and labels in the ensemble's order.
        weights: one weight per member (default: equal); normalised to sum to 1.
        names: the members' names (default: ``member-<i>``).

    Raises:
        ModelError: a member lacks a task or a label of the ensemble, or a weight is invalid.

    Example:
        >>> p = Predictor.from_dir("runs/ensemble")  # doctest: +SKIP
        >>> type(p).__name__, len(p.members)  # doctest: +SKIP
        ('EnsemblePredictor', 3)
    """

    # Predictor.__init__ is not called: it loads one model, and an ensemble's models are its members.
    def __init__(
        self,
        members: Sequence[Predictor],
        meta: ModelMeta,
        *,
        weights: Sequence[float] | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        if not members:
            raise ModelError("an ensemble needs at least one member.")
        self.members = list(members)
        self.names = list(names) if names is not None else [f"member-{i}" for i in range(len(members))]
        self.weights = _normalised(weights if weights is not None else [1.0] * len(members), len(members))
        self.meta = meta
        self.threads = self.members[0].threads
        self.device = self.members[0].device
        self.truncate = self.members[0].truncate
        self.max_length = meta.max_length
        self._columns = [_columns(meta.tasks, m.tasks, name) for m, name in zip(self.members, self.names, strict=True)]
        reasons = {(m.backend_name, m.backend_reason) for m in self.members}
        if len(reasons) == 1:
            self.backend_reason = f"{len(self.members)} members, each: {self.members[0].backend_reason}"
        else:
            pairs = zip(self.names, self.members, strict=True)
            self.backend_reason = "; ".join(f"{n}: {m.backend_name} ({m.backend_reason})" for n, m in pairs)

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str], **kwargs: Any) -> EnsemblePredictor:
        """Load an ensemble folder; ``kwargs`` (backend, device, threads, max_tokens, ...) go to every member.

        The members share one thread setting: ``threads`` (default: the cores this process may use).
        """
        folder = Path(path)
        meta = read_meta(folder)
        spec = _read_spec(folder)
        kwargs["threads"] = kwargs.get("threads") or default_threads()
        members = [Predictor.from_dir(folder / m["path"], **kwargs) for m in spec["members"]]
        return cls(members, meta, weights=spec.get("weights"), names=[str(m["name"]) for m in spec["members"]])

    @property
    def backend_name(self) -> str:
        """The members' backend, or each distinct one joined by ``+`` when they differ."""
        names = list(dict.fromkeys(m.backend_name for m in self.members))
        return "+".join(names)

    def calibrate_once(self, texts: Sequence[str]) -> Any:
        """Calibrate every member on ``texts`` where its machine cache lacks their length (see :class:`Predictor`)."""
        return [member.calibrate_once(texts) for member in self.members]

    def encode(self, texts: Sequence[str]) -> Any:
        """Not defined for an ensemble: each member reads texts its own way (see :attr:`members`)."""
        raise ConfigError("an ensemble has no single tokenisation; call encode on one of its .members.")

    def member_probabilities(self, texts: Sequence[str], *, progress: bool = False) -> list[dict[str, np.ndarray]]:
        """Each member's probabilities for every task, columns in the ensemble's label order."""
        out = []
        for member, columns in zip(self.members, self._columns, strict=True):
            probs = member.predict_proba(texts, progress=progress)
            out.append({task: probs[task][:, idx] for task, idx in columns.items()})
        return out

    def combine(self, per_member: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """The weighted mean of :meth:`member_probabilities`, per task."""
        combined: dict[str, np.ndarray] = {}
        for task in self.meta.tasks:
            total = np.zeros_like(per_member[0][task.name], dtype=np.float64)
            for weight, probs in zip(self.weights, per_member, strict=True):
                total += weight * probs[task.name].astype(np.float64)
            combined[task.name] = total.astype(np.float32)
        return combined

    def predict_proba(self, texts: Sequence[str], *, progress: bool = False) -> dict[str, np.ndarray]:
        """The weighted mean of the members' probabilities for every task."""
        return self.combine(self.member_probabilities(texts, progress=progress))

    def logits(self, texts: Sequence[str], *, progress: bool = False) -> dict[str, np.ndarray]:
        """Logits whose softmax (or sigmoid, for multi-label tasks) is :meth:`predict_proba`'s answer."""
        probs = self.predict_proba(texts, progress=progress)
        out = {}
        for task in self.meta.tasks:
            p = np.clip(probs[task.name].astype(np.float64), _EPS, 1 - _EPS)
            out[task.name] = (np.log(p) - np.log1p(-p) if task.multi_label else np.log(p)).astype(np.float32)
        return out


def _normalised(weights: Sequence[float], n: int) -> list[float]:
    values = [float(w) for w in weights]
    if len(values) != n or any(not np.isfinite(w) or w < 0 for w in values) or sum(values) <= 0:
        raise ModelError(
            f"{ENSEMBLE_FILE}: weights {values} must be {n} finite numbers >= 0, not all 0; the folder is damaged."
        )
    return [w / sum(values) for w in values]


def _columns(tasks: Sequence[TaskSpec], member_tasks: Sequence[TaskSpec], name: str) -> dict[str, np.ndarray]:
    """For each task, the member's column of each of the ensemble's labels."""
    by_name = {t.name: t for t in member_tasks}
    columns = {}
    for task in tasks:
        own = by_name.get(task.name)
        if own is None or set(own.labels) != set(task.labels) or own.multi_label != task.multi_label:
            raise ModelError(f"member {name!r} does not predict task {task.name!r} as the ensemble does; rebuild it.")
        columns[task.name] = np.asarray([own.labels.index(label) for label in task.labels], dtype=np.intp)
    return columns


def _read_spec(folder: Path) -> dict[str, Any]:
    import json

    try:
        spec = json.loads((folder / ENSEMBLE_FILE).read_text(encoding="utf-8"))
        members = spec["members"]
        if not members or not all(isinstance(m, dict) and "path" in m and "name" in m for m in members):
            raise ValueError("no members")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{folder / ENSEMBLE_FILE} is damaged ({exc}); rebuild it with `hrlm ensemble`.") from None
    if int(spec.get("format", 0)) > ENSEMBLE_FORMAT:
        raise ModelError(f"{folder} was written by a newer hrlm (ensemble format {spec['format']}); upgrade hrlm.")
    for m in members:
        where = (folder / m["path"]).resolve()
        if not where.is_relative_to(folder.resolve()):
            raise ModelError(f"{folder / ENSEMBLE_FILE}: member {m['name']!r} lies outside the folder; rebuild it.")
    return dict(spec)


def check_members(members: Sequence[str | os.PathLike[str]]) -> list[tuple[Path, ModelMeta]]:
    """Read every member's ``hrlm.json`` and check that they can be averaged.

    Raises:
        ConfigError: fewer than two members, one given twice, an ensemble among them, or members
            that differ in tasks, labels or single-/multi-label kind (one line, naming both members).
        ModelNotFound, ModelError: a member is not a model folder.
    """
    if len(members) < 2:
        raise ConfigError(f"an ensemble needs at least two member model folders; got {len(members)}.")
    read = []
    seen: dict[Path, str] = {}
    for given in members:
        path = Path(given).expanduser().resolve()
        if path in seen:
            raise ConfigError(f"member {str(given)!r} is given twice (as {seen[path]!r}); pass each model once.")
        seen[path] = str(given)
        meta = read_meta(path)
        if is_ensemble(path):
            raise ConfigError(
                f"member {str(given)!r} is itself an ensemble; pass its members ({path / MEMBERS_DIR}/*) instead."
            )
        read.append((path, meta))
    first_path, first = read[0]
    first_tasks = {t.name: t for t in first.tasks}
    for path, meta in read[1:]:
        here = f"member {path.name!r}"
        there = f"member {first_path.name!r}"
        if sorted(t.name for t in meta.tasks) != sorted(first_tasks):
            raise ConfigError(
                f"{here} predicts tasks {[t.name for t in meta.tasks]} but {there} predicts {list(first_tasks)}; "
                "an ensemble's members must predict the same tasks."
            )
        for task in meta.tasks:
            ref = first_tasks[task.name]
            if set(task.labels) != set(ref.labels):
                lacks = sorted(set(ref.labels) - set(task.labels))[:5]
                adds = sorted(set(task.labels) - set(ref.labels))[:5]
                raise ConfigError(
                    f"{here} and {there} differ in the labels of task {task.name!r} ({here} lacks {lacks}, "
                    f"has {adds} besides); an ensemble's members must be trained on the same labels."
                )
            if task.multi_label != ref.multi_label:
                kinds = ("multi-label", "single-label")
                raise ConfigError(
                    f"task {task.name!r} is {kinds[not task.multi_label]} in {here} but "
                    f"{kinds[not ref.multi_label]} in {there}; an ensemble's members must be of one kind."
                )
    return read


def _folder_name(i: int, path: Path) -> str:
    return f"{i}-{re.sub(r'[^A-Za-z0-9._-]+', '-', path.name).strip('-.') or 'model'}"


def _ensemble_meta(read: Sequence[tuple[Path, ModelMeta]], names: Sequence[str]) -> ModelMeta:
    """The ensemble's hrlm.json: the first member's tasks and reading settings, the members' mean thresholds."""
    first = read[0][1]
    tasks = []
    for task in first.tasks:
        thresholds = None
        if task.multi_label:
            per_member = []
            for _, meta in read:
                own = next(t for t in meta.tasks if t.name == task.name)
                bars = own.thresholds or [0.5] * len(own.labels)
                per_member.append([bars[own.labels.index(label)] for label in task.labels])
            thresholds = [round(float(v), 6) for v in np.mean(per_member, axis=0)]
        tasks.append(TaskSpec(task.name, list(task.labels), task.multi_label, thresholds))
    bases = list(dict.fromkeys(meta.base_encoder for _, meta in read))
    fingerprints = {meta.data_fingerprint for _, meta in read}
    return ModelMeta(
        tasks=tasks,
        pooling=first.pooling,
        max_length=first.max_length,
        stride=first.stride,
        truncate=first.truncate,
        aggregate=first.aggregate,
        base_encoder=bases[0] if len(bases) == 1 else "ensemble of " + ", ".join(bases),
        hrlm_version=__version__,
        data_fingerprint=fingerprints.pop() if len(fingerprints) == 1 else None,
        train_config=dict(first.train_config),
        extra={"ensemble": {"file": ENSEMBLE_FILE, "how": HOW, "members": list(names)}},
    )


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in ("accuracy", "macro_f1", "weighted_f1") if k in metrics}


def build_ensemble(
    members: Sequence[str | Path],
    out: str | Path,
    *,
    test: Dataset | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Write an ensemble of trained model folders to ``out``: one folder that loads like any model.

    The members are checked (same tasks, same labels in any order, same single-/multi-label kind),
    copied into ``out/members/<i>-<name>/``, and described in ``ensemble.json`` (equal weights, the
    mean of probabilities) and ``hrlm.json``. The folder is loaded once before it is renamed into
    place, so a folder that is written is one that loads. With ``test``, each member and the
    ensemble are scored on it from one pass of each member, and ``out/report/`` holds the
    ensemble's report with a table of the members beside it (``metrics.json``'s ``members``).

    Args:
        members: two or more model folders written by ``hrlm train`` (or ``compress``, ``distill``).
        out: the ensemble folder to write.
        test: a labelled split to score the members and the ensemble on; use the split the members
            were not trained on (``hrlm ensemble --data`` rebuilds the members' test split).
        overwrite: replace an existing ``out`` once the new folder is complete.
        progress: show progress bars.

    Returns:
        ``model_dir`` (the folder), ``members`` (``name``, ``source`` and, with ``test``, ``accuracy``,
        ``macro_f1``, ``weighted_f1`` of each), ``metrics`` (the ensemble's metrics on ``test``, or
        ``None``).

    Raises:
        ConfigError: the members cannot be averaged (see :func:`check_members`), or ``out`` is a
            non-empty folder without ``overwrite``, or lies in a member.

    Example:
        >>> result = build_ensemble(["runs/a", "runs/b"], "runs/ab", test=splits["test"])  # doctest: +SKIP
        >>> [m["macro_f1"] for m in result["members"]], result["metrics"]["macro_f1"]  # doctest: +SKIP
        ([0.81, 0.79], 0.84)
    """
    check_out_dir(out, overwrite=overwrite)
    read = check_members(members)
    target = Path(out).expanduser().resolve()
    for path, _ in read:
        if target == path or target.is_relative_to(path):
            raise ConfigError(f"--out {out} lies in member {str(path)!r}; choose an --out outside every member.")
    names = [_folder_name(i, path) for i, (path, _) in enumerate(read)]
    meta = _ensemble_meta(read, names)
    weights = [1.0 / len(read)] * len(read)
    spec = {
        "format": ENSEMBLE_FORMAT,
        "how": HOW,
        "weights": weights,
        "thresholds": "mean of the members' (0.5 where a member has none)",
        "members": [
            {
                "name": name,
                "path": f"{MEMBERS_DIR}/{name}",
                "source": str(path),
                "base_encoder": m.base_encoder,
                "data_fingerprint": m.data_fingerprint,
                "metrics": m.metrics,
            }
            for name, (path, m) in zip(names, read, strict=True)
        ],
    }
    rows: list[dict[str, Any]] = [
        {"name": name, "source": str(path)} for name, (path, _) in zip(names, read, strict=True)
    ]
    metrics: dict[str, Any] | None = None
    with atomic_dir(out, overwrite=True) as tmp:  # checked above; an empty folder is replaced too
        bar = ProgressBar(len(read), "copying members", unit="models", enabled=progress)
        for name, (path, _) in zip(names, read, strict=True):
            shutil.copytree(path, tmp / MEMBERS_DIR / name, symlinks=False)
            bar.update(advance=1)
        bar.close()
        write_json(tmp / ENSEMBLE_FILE, spec)
        write_json(tmp / META_FILE, meta.to_dict())
        ensemble = EnsemblePredictor.from_dir(tmp)  # the check that the folder loads
        if test is not None:
            metrics, member_metrics = _score(ensemble, test, progress=progress)
            for row, m in zip(rows, member_metrics, strict=True):
                row.update(_summary(m))
            meta.metrics = {"split": "test", **{k: metrics[k] for k in SUMMARY if k in metrics}}
            meta.extra["ensemble"]["member_metrics"] = [{"name": r["name"], **_summary(r)} for r in rows]
            write_json(tmp / META_FILE, meta.to_dict())
            table = [{"model": r["name"], **_summary(r)} for r in rows] + [{"model": "ensemble", **_summary(metrics)}]
            write_report(
                tmp / "report",
                {**metrics, "members": [{"name": r["name"], **_summary(r)} for r in rows]},
                title=f"hrlm ensemble {target.name}: test split",
                settings={"members": [r["source"] for r in rows], "how": HOW, "weights": weights, "rows": len(test)},
                tables={"Members and the ensemble on this split": table},
            )
        write_model_card(tmp, name=target.name)
    return {"model_dir": Path(out), "members": rows, "metrics": metrics}


def _score(
    ensemble: EnsemblePredictor, test: Dataset, *, progress: bool
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ensemble's and each member's metrics on ``test``, from one pass of each member.

    A member decides with its own multi-label thresholds, the ensemble with their mean.
    """
    per_member = ensemble.member_probabilities(test.texts, progress=progress)
    members = [
        evaluate_dataset(_Replay(_in_ensemble_order(ensemble.meta, member.meta), probs), test)
        for member, probs in zip(ensemble.members, per_member, strict=True)
    ]
    return evaluate_dataset(_Replay(ensemble.meta, ensemble.combine(per_member)), test), members


def _in_ensemble_order(meta: ModelMeta, member: ModelMeta) -> ModelMeta:
    """The ensemble's metadata with a member's thresholds, in the ensemble's label order."""
    own = {t.name: t for t in member.tasks}
    tasks = []
    for task in meta.tasks:
        bars = own[task.name].thresholds
        if bars is not None:
            bars = [bars[own[task.name].labels.index(label)] for label in task.labels]
        tasks.append(TaskSpec(task.name, list(task.labels), task.multi_label, bars))
    return ModelMeta.from_dict({**meta.to_dict(), "tasks": [vars(t) for t in tasks]})


class _Replay(Predictor):
    """Probabilities already computed, handed to :func:`evaluate_dataset` so that no model runs twice."""

    def __init__(self, meta: ModelMeta, probs: dict[str, np.ndarray]) -> None:  # no model: see the docstring
        self.meta = meta
        self._probs = probs

    def predict_proba(self, texts: Sequence[str], *, progress: bool = False) -> dict[str, np.ndarray]:
        rows = len(next(iter(self._probs.values())))
        if len(texts) != rows:
            raise ModelError(f"replayed probabilities hold {rows} rows, asked for {len(texts)} texts.")
        return self._probs
