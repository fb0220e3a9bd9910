"""The scheduled evaluation job: production measured on the holdout file, one row in ``evaluations``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hrlm.errors import ConfigError, Conflict
from hrlm.lifecycle import JobStore, Registry, run_job
from hrlm.lifecycle.holdout import evaluate_holdout, recent_evaluations
from hrlm.lifecycle.settings import LifecycleSettings
from hrlm.store.tables import audit_log, evaluations
from tests.conftest import make_texts, write_csv
from tests.service.test_jobs import redis_queue, start_worker

__all__ = ["redis_queue"]  # a fixture, used here by name


@pytest.fixture
def holdout(tmp_path: Path) -> Path:
    rows = make_texts(8, seed=7)
    rows.append(("a text with a label the model never saw", "weather"))
    return write_csv(tmp_path / "holdout.csv", rows)


def test_evaluate_job_measures_production_and_stores_an_evaluations_row(
    engine: Any, trained_model: Path, holdout: Path, tmp_path: Path
) -> None:
    registry = Registry(engine, tmp_path / "registry")
    prod = registry.register(trained_model, actor="ana", stage="production")
    settings = LifecycleSettings(registry_dir=str(tmp_path / "registry"), holdout_data=str(holdout))
    store = JobStore(engine)
    job = store.create("evaluate", actor="cron", runner="cli")
    with pytest.raises(Conflict):  # one evaluation at a time, as for retraining
        store.create("evaluate", actor="cron", runner="cli")

    result = run_job(job["id"], settings, engine=engine, reraise=True)

    assert result is not None
    assert store.get(job["id"])["state"] == "succeeded"
    with engine.connect() as conn:
        (row,) = conn.execute(select(evaluations)).mappings().all()
        audit = [(r.action, r.target) for r in conn.execute(select(audit_log).order_by(audit_log.c.id))]
    assert row["model_version"] == prod.version
    assert row["n"] == 24 and result["dropped"] == 1  # the unknown label is left out, and counted
    assert row["data"] == str(holdout) and row["data_fingerprint"].startswith("sha256:")
    assert row["job_id"] == job["id"]
    metrics = row["metrics"]
    assert 0.0 <= metrics["accuracy"] <= 1.0
    assert set(metrics["per_class_f1"]) == {"payroll", "leave", "it"}
    assert metrics["macro_f1"] == pytest.approx(sum(metrics["per_class_f1"].values()) / 3, abs=1e-5)
    assert {"accuracy", "macro_f1", "weighted_f1"} <= set(metrics)
    assert ("evaluate.request", job["id"]) in audit and ("evaluate.done", prod.version) in audit
    assert [r["id"] for r in recent_evaluations(engine)] == [row["id"]]


def test_evaluate_names_what_is_missing(engine: Any, trained_model: Path, tmp_path: Path) -> None:
    settings = LifecycleSettings(registry_dir=str(tmp_path / "registry"))
    with pytest.raises(ConfigError, match="holdout_data"):
        evaluate_holdout(engine, settings, actor="cron")
    with pytest.raises(ConfigError, match="no production version"):
        evaluate_holdout(engine, settings.replace(holdout_data="x.csv"), actor="cron")
    with pytest.raises(ConfigError, match="version"):
        evaluate_holdout(engine, settings, actor="cron", model=trained_model, data="x.csv")


@pytest.mark.redis
def test_an_hrlm_worker_runs_the_evaluate_job_from_redis(
    trained_model: Path, db_url: str, holdout: Path, tmp_path: Path, redis_queue: str
) -> None:
    from hrlm.lifecycle.runners import JobManager
    from hrlm.store import make_engine, upgrade

    engine = make_engine(db_url)
    upgrade(engine)
    prod = Registry(engine, tmp_path / "registry").register(trained_model, actor="ana", stage="production")
    settings = LifecycleSettings(
        database_url=db_url,
        registry_dir=str(tmp_path / "registry"),
        holdout_data=str(holdout),
        job_runner="redis",
        redis_url=redis_queue,
    )
    manager = JobManager(engine, settings)
    job = manager.submit("evaluate", actor="scheduler")
    manager.close()
    assert job["runner"] == "redis"
    worker = start_worker(db_url, redis_queue, tmp_path / "worker.log", "--burst", HRLM_THREADS="1")
    assert worker.wait(300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    done = JobStore(engine).get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    with engine.connect() as conn:
        row = conn.execute(select(evaluations)).mappings().one()
    assert row["model_version"] == prod.version and row["job_id"] == job["id"] and row["n"] == 24
    engine.dispose()
