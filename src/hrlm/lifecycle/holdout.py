"""The scheduled evaluation: the production model measured on the fixed holdout file, a point of the monitor's series.

:func:`evaluate_holdout` is what a job of kind ``evaluate`` runs (queued by the service every
``evaluate_every_s``, or by an admin with ``POST /v1/monitor/evaluate``), on either runner: a thread of
the service or an ``hrlm worker`` through Redis. It scores the model with the same code as
``hrlm evaluate`` (:func:`hrlm.inference.evaluate_dataset`), then writes one row of the
``evaluations`` table: when, which version, which file and its fingerprint, how many rows, and the
metrics (accuracy, macro and weighted F1, F1 per class), with an ``evaluate.done`` audit entry.
The monitor reads these rows beside its windows: a holdout point is the one measurement of
quality that depends neither on reviewers nor on an estimate.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, select

from hrlm.errors import ConfigError, DataError
from hrlm.lifecycle.registry import Registry
from hrlm.lifecycle.settings import LifecycleSettings
from hrlm.store.tables import evaluations, utcnow
from hrlm.store.users import audit

log = logging.getLogger("hrlm.jobs")

ProgressCallback = Callable[[float, str], None]
METRIC_KEYS = ("accuracy", "macro_f1", "weighted_f1", "micro_f1", "ece")


def evaluate_holdout(
    engine: Engine,
    settings: LifecycleSettings,
    *,
    actor: str,
    model: str | Path | None = None,
    version: str | None = None,
    data: str | Path | None = None,
    job_id: str | None = None,
    progress_cb: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Measure a model on the holdout file and store the result in ``evaluations``.

    Args:
        engine: the database.
        settings: ``holdout_data``, ``registry_dir`` and ``threads`` are read.
        actor: who the audit log names (the job's requester).
        model: the model folder (default: the registry's production version).
        version: its version name (required with ``model``; taken from the registry otherwise).
        data: the labelled file (default: ``settings.holdout_data``).
        job_id: the job this runs in, stored on the row.
        progress_cb: called with (fraction, message).

    Returns:
        The stored row as plain data: ``id``, ``at`` (ISO), ``model_version``, ``data``,
        ``data_fingerprint``, ``n``, ``metrics`` and ``dropped`` (rows whose label the model does not know).

    Raises:
        ConfigError: no holdout file, no model (nothing in production), or ``model`` without ``version``.
        DataError: no row of the file has a label the model knows.

    Example:
        >>> settings = LifecycleSettings(holdout_data="holdout.csv")
        >>> row = evaluate_holdout(engine, settings, actor="cron")  # doctest: +SKIP
        >>> row["metrics"]["macro_f1"]  # doctest: +SKIP
        0.81
    """
    from hrlm.data import load_dataset
    from hrlm.inference import Predictor, evaluate_dataset

    report = progress_cb or (lambda fraction, message: None)
    holdout = data or settings.holdout_data
    if not holdout:
        raise ConfigError("no holdout file to evaluate on: set holdout_data (HRLM_HOLDOUT_DATA) or pass data.")
    path = Path(holdout)
    if model is None:
        production = Registry(engine, Path(settings.registry_dir)).production()
        if production is None:
            raise ConfigError(
                "the registry has no production version to evaluate; register one with "
                "`hrlm models register FOLDER --stage production`."
            )
        model, version = production.path, production.version
    elif not version:
        raise ConfigError("evaluating a model folder needs its version name (params.version).")
    assert version is not None

    report(0.1, f"loading {version}")
    predictor = Predictor.from_dir(model, threads=settings.threads)
    cfg = predictor.meta.train_config
    task = predictor.tasks[0]
    sep = cfg.get("label_sep") or ("|" if task.multi_label else None)
    report(0.2, f"reading {path.name}")
    ds = load_dataset(
        path, text_col=cfg.get("text_col", "text"), label_col=cfg.get("label_col", "label"), label_sep=sep
    )
    known = set(task.labels)
    keep = [
        i
        for i, label in enumerate(ds.labels or [])
        if (set(label) <= known if isinstance(label, list) else str(label) in known)
    ]
    dropped = len(ds) - len(keep)
    if not keep:
        raise DataError(f"no row of {path} has a label {version} knows ({sorted(known)[:5]}); fix the label column.")
    if dropped:
        ds = ds.subset(keep)
    report(0.3, f"scoring {len(ds)} rows")
    scored = evaluate_dataset(predictor, ds)
    metrics: dict[str, Any] = {k: scored[k] for k in METRIC_KEYS if scored.get(k) is not None}
    metrics["per_class_f1"] = {
        str(label): row.get("f1") for label, row in (scored.get("per_class") or {}).items() if isinstance(row, dict)
    }
    row: dict[str, Any] = {
        "at": utcnow(),
        "model_version": version,
        "data": str(path),
        "data_fingerprint": ds.fingerprint(),
        "n": len(ds),
        "metrics": metrics,
        "job_id": job_id,
    }
    report(0.95, "storing the result")
    with engine.begin() as conn:
        new_id = conn.execute(insert(evaluations).values(**row).returning(evaluations.c.id)).scalar_one()
        audit(
            conn,
            actor,
            "evaluate.done",
            version,
            data=str(path),
            n=len(ds),
            accuracy=metrics.get("accuracy"),
            macro_f1=metrics.get("macro_f1"),
            job_id=job_id,
        )
    log.info("evaluated %s on %s: macro F1 %.4f (n=%d)", version, path.name, metrics.get("macro_f1", 0.0), len(ds))
    return {**row, "id": int(new_id), "at": row["at"].isoformat(), "dropped": dropped}


def recent_evaluations(engine: Engine, *, since: Any = None, limit: int = 500) -> list[dict[str, Any]]:
    """Stored holdout evaluations, oldest first (from ``since``, a datetime, when given)."""
    query = select(evaluations).order_by(evaluations.c.at.desc()).limit(limit)
    if since is not None:
        query = query.where(evaluations.c.at >= since)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings()]
    return rows[::-1]


def run_evaluate_job(
    engine: Engine, settings: LifecycleSettings, job: dict[str, Any], report: ProgressCallback
) -> dict[str, Any]:
    """What a job of kind ``evaluate`` runs (registered in :mod:`hrlm.lifecycle.jobs`).

    ``params`` may name ``model`` and ``version`` (the service passes the model it serves) and
    ``data`` (default: ``holdout_data``).
    """
    params = job.get("params") or {}
    return evaluate_holdout(
        engine,
        settings,
        actor=job["actor"],
        model=params.get("model"),
        version=params.get("version"),
        data=params.get("data"),
        job_id=job["id"],
        progress_cb=report,
    )
