"""Background jobs: the job store, POST /v1/retrain and GET /v1/jobs, the Redis worker, and crashes.

The crash tests run real processes: `hrlm worker` killed with SIGKILL mid-retrain (production
unchanged, feedback intact, the job failed with the reason), and `hrlm serve` killed and restarted
on the same database (every acknowledged review answer still there).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select, update

from hrlm.errors import Conflict, NotFound
from hrlm.lifecycle.jobs import JobStore, run_job
from hrlm.lifecycle.registry import Registry
from hrlm.service.settings import ServiceSettings
from hrlm.store import make_engine, upgrade
from hrlm.store.tables import audit_log, jobs, review_feedback, utcnow
from tests.conftest import unavailable
from tests.lifecycle.test_retrain import FEEDBACK, add_feedback, holdout_file
from tests.service.conftest import add_users, bearer
from tests.service.test_crash import free_port

REDIS_URL = os.environ.get("HRLM_TEST_REDIS_URL", "redis://127.0.0.1:6379/11")


def count(engine: Engine, table: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar() or 0)


# -- the job store ---------------------------------------------------------------------------------


def test_job_lifecycle_and_one_retrain_at_a_time(engine: Engine) -> None:
    store = JobStore(engine)
    job = store.create("retrain", actor="alice", runner="redis", params={"margin": 0.1})
    assert (job["state"], job["progress"], job["params"]) == ("queued", 0.0, {"margin": 0.1})
    with pytest.raises(Conflict, match=f"a retrain job \\({job['id']}\\) is already queued"):
        store.create("retrain", actor="bob", runner="redis")
    assert store.start(job["id"]) and not store.start(job["id"])  # a second worker does not take it
    assert store.progress(job["id"], 0.5, "training")
    assert store.get(job["id"])["message"] == "training"
    assert store.succeed(job["id"], {"decision": "rejected"})
    done = store.get(job["id"])
    assert (done["state"], done["progress"], done["result"]) == ("succeeded", 1.0, {"decision": "rejected"})
    assert not store.fail(job["id"], "too late")  # a finished job stays finished
    again = store.create("retrain", actor="bob", runner="redis")  # the first one no longer blocks
    assert [j["id"] for j in store.recent()] == [again["id"], job["id"]]
    with engine.connect() as conn:
        audited = conn.execute(select(audit_log.c.actor).where(audit_log.c.action == "retrain.request")).all()
    assert sorted(a for (a,) in audited) == ["alice", "bob"]
    with pytest.raises(NotFound, match="no job 'nope'"):
        store.get("nope")


def test_concurrent_requests_create_one_job(engine: Engine) -> None:
    store = JobStore(engine)
    barrier = threading.Barrier(6)
    outcomes: list[str] = []

    def ask(k: int) -> None:
        barrier.wait()
        try:
            store.create("retrain", actor=f"admin{k}", runner="inprocess")
            outcomes.append("created")
        except Conflict:
            outcomes.append("conflict")

    threads = [threading.Thread(target=ask, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(outcomes) == ["conflict"] * 5 + ["created"]
    assert count(engine, jobs) == 1


def test_fail_stale_marks_jobs_of_dead_runners_failed(engine: Engine) -> None:
    store = JobStore(engine)
    running = store.create("retrain", actor="a", runner="redis")
    store.start(running["id"])
    old = utcnow() - dt.timedelta(seconds=30)
    with engine.begin() as conn:
        conn.execute(update(jobs).where(jobs.c.id == running["id"]).values(heartbeat_at=old))
    assert store.fail_stale(60) == []  # 30 s is within 60 s
    assert store.fail_stale(10) == [running["id"]]
    failed = store.get(running["id"])
    assert failed["state"] == "failed" and failed["error"].startswith("worker stopped: no heartbeat since")
    # a queued job waits for a Redis worker as long as it takes; an in-process one dies with its service
    waiting = store.create("retrain", actor="a", runner="redis")
    with engine.begin() as conn:
        conn.execute(update(jobs).values(heartbeat_at=old).where(jobs.c.id == waiting["id"]))
    assert store.fail_stale(10) == []
    store.fail(waiting["id"], "cleared")
    orphan = store.create("retrain", actor="a", runner="inprocess")
    with engine.begin() as conn:
        conn.execute(update(jobs).values(heartbeat_at=old).where(jobs.c.id == orphan["id"]))
    assert store.fail_stale(10) == [orphan["id"]]
    assert "stopped before running it" in store.get(orphan["id"])["error"]
    # with stale_s, a request first clears the dead runner's job instead of answering 409
    stuck = store.create("retrain", actor="a", runner="redis")
    store.start(stuck["id"])
    with engine.begin() as conn:
        conn.execute(update(jobs).values(heartbeat_at=old).where(jobs.c.id == stuck["id"]))
    assert JobStore(engine, stale_s=10).create("retrain", actor="b", runner="redis")["state"] == "queued"
    assert store.get(stuck["id"])["state"] == "failed"


def test_run_job_records_the_reason_of_a_failure(engine: Engine, db_url: str, tmp_path: Path) -> None:
    settings = ServiceSettings(database_url=db_url, registry_dir=str(tmp_path / "reg"), train_data=__file__)
    settings = settings.model_copy(update={"holdout_data": __file__}).lifecycle()
    store = JobStore(engine)
    job = store.create("retrain", actor="alice", runner="inprocess")
    assert run_job(job["id"], settings, engine=engine) is None
    failed = store.get(job["id"])
    assert failed["state"] == "failed"
    assert "no production version" in failed["error"] and "hrlm models register" in failed["error"]
    assert run_job(job["id"], settings, engine=engine) is None  # not queued any more: skipped


# -- the API, in-process runner -------------------------------------------------------------------


def loop_settings(db_url: str, tmp_path: Path, train_csv: Path, **extra: Any) -> dict[str, Any]:
    return {
        "database_url": db_url,
        "registry_dir": str(tmp_path / "registry"),
        "train_data": str(train_csv),
        "holdout_data": str(holdout_file(tmp_path, train_csv)),
        "threads": 1,
        "review_fill_s": 0,
        "registry_poll_s": 0,
        **extra,
    }


@contextlib.contextmanager
def registry_app(settings: dict[str, Any]) -> Iterator[Any]:
    """A TestClient of an app serving the registry's production version."""
    from fastapi.testclient import TestClient

    from hrlm.service import create_app

    with TestClient(create_app(ServiceSettings(**settings))) as client:
        yield client


def wait_for(client: Any, token: str, job_id: str, states: tuple[str, ...], timeout: float = 300) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=bearer(token)).json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} did not reach {states}: {job}")


def test_retrain_through_the_api_promotes_and_the_service_swaps(
    trained_model: Path, db_url: str, tickets_csv: Path, tmp_path: Path
) -> None:
    tokens = add_users(db_url)
    engine = make_engine(db_url)
    registry = Registry(engine, tmp_path / "registry")
    before = registry.register(trained_model, actor="admin", stage="production")
    add_feedback(engine, FEEDBACK)
    with registry_app(loop_settings(db_url, tmp_path, tickets_csv)) as client:
        assert client.post("/v1/retrain", headers=bearer(tokens.reviewer)).status_code == 403
        r = client.post("/v1/retrain", json={"margin": -1}, headers=bearer(tokens.admin))
        assert r.status_code == 202, r.text
        job = r.json()
        assert r.headers["location"] == f"/v1/jobs/{job['id']}"
        assert (job["runner"], job["actor"], job["params"]) == ("inprocess", "admin", {"margin": -1.0})
        second = client.post("/v1/retrain", headers=bearer(tokens.admin))
        assert second.status_code == 409 and "already" in second.json()["detail"]
        assert client.post("/v1/retrain", json={"margin": 5}, headers=bearer(tokens.admin)).status_code == 422

        done = wait_for(client, tokens.admin, job["id"], ("succeeded", "failed"))
        assert done["state"] == "succeeded", done["error"]
        result = done["result"]
        assert result["decision"] == "promoted" and result["parent"] == before.version
        assert result["data"]["feedback"] == 6
        listed = client.get("/v1/jobs", headers=bearer(tokens.admin)).json()["jobs"]
        assert [j["id"] for j in listed] == [job["id"]]
        assert client.get("/v1/jobs", headers=bearer(tokens.client)).status_code == 403
        assert client.get("/v1/jobs/nope", headers=bearer(tokens.admin)).status_code == 404
        # the job's promotion reloads this service at once
        deadline = time.monotonic() + 30
        while client.get("/readyz").json().get("model_version") != result["candidate"]:
            assert time.monotonic() < deadline, "the service did not swap to the promoted candidate"
            time.sleep(0.2)
    assert registry.get(before.version).stage == "archived"
    engine.dispose()


def test_cli_retrain_rejects_and_jobs_show_it(
    trained_model: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hrlm.cli.app import app, out_console

    monkeypatch.setattr(out_console, "width", 200)  # a wide terminal: table cells are not folded

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    engine = make_engine(url)
    upgrade(engine)
    registry = Registry(engine, tmp_path / "registry")
    before = registry.register(trained_model, actor="admin", stage="production")
    holdout = holdout_file(tmp_path, tickets_csv)
    common = ["--database-url", url, "--registry-dir", str(tmp_path / "registry")]
    runner = CliRunner()
    out = runner.invoke(
        app, ["retrain", "--data", str(tickets_csv), "--holdout", str(holdout), "--margin", "1", "-q", *common]
    )
    assert out.exit_code == 0, out.output
    assert "promotion gate: reject" in out.output and "rejected" in out.output
    assert registry.production() == registry.get(before.version)
    job = JobStore(engine).recent()[0]
    assert (job["state"], job["runner"], job["result"]["decision"]) == ("succeeded", "cli", "rejected")
    listed = runner.invoke(app, ["jobs", "list", "--database-url", url])
    assert listed.exit_code == 0 and job["id"][:12] in listed.output and "rejected" in listed.output
    shown = runner.invoke(app, ["jobs", "show", job["id"][:12], "--database-url", url])
    assert shown.exit_code == 0 and "decision: rejected" in shown.output and job["id"] in shown.output
    missing = runner.invoke(app, ["jobs", "show", "nope", "--database-url", url])
    assert missing.exit_code == 1 and "no job 'nope'" in missing.output
    queued = runner.invoke(app, ["retrain", "--enqueue", *common])
    assert queued.exit_code == 1 and "job_runner = redis" in queued.output
    engine.dispose()


# -- Redis and real processes ------------------------------------------------------------------------


@pytest.fixture
def redis_queue() -> Iterator[str]:
    """An empty ``hrlm`` queue on a Redis database of its own; skips without Redis (fails with HRLM_REQUIRE_REDIS=1)."""
    from redis import Redis
    from redis.exceptions import RedisError
    from rq import Queue

    conn = Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        conn.ping()
        reason = None
    except RedisError as exc:
        reason = str(exc) or type(exc).__name__
    if reason is not None:  # outside the except block: a failure is this one line, not Redis's traceback too
        conn.close()
        unavailable("redis", f"Redis at {REDIS_URL} is unreachable ({reason})")
    Queue("hrlm", connection=conn).empty()
    yield REDIS_URL
    Queue("hrlm", connection=conn).empty()
    conn.close()


def start_worker(db_url: str, redis_url: str, log: Path, *extra: str, **env: str) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "hrlm.cli", "worker", "--database-url", db_url, "--redis-url", redis_url, *extra]
    with log.open("wb") as out:
        # a session of its own: the test kills the worker's whole process group
        return subprocess.Popen(
            cmd, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


@pytest.mark.redis
def test_worker_runs_a_queued_retrain(
    trained_model: Path, db_url: str, tickets_csv: Path, tmp_path: Path, redis_queue: str
) -> None:
    from hrlm.lifecycle.runners import JobManager

    engine = make_engine(db_url)
    upgrade(engine)
    registry = Registry(engine, tmp_path / "registry")
    before = registry.register(trained_model, actor="admin", stage="production")
    add_feedback(engine, FEEDBACK)
    settings = ServiceSettings(
        **loop_settings(db_url, tmp_path, tickets_csv, job_runner="redis", redis_url=redis_queue)
    ).lifecycle()
    manager = JobManager(engine, settings)
    job = manager.submit("retrain", actor="admin", params={"margin": -1.0})
    manager.close()
    assert job["runner"] == "redis"
    worker = start_worker(db_url, redis_queue, tmp_path / "worker.log", "--burst", HRLM_THREADS="1")
    assert worker.wait(300) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    done = JobStore(engine).get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    production = registry.production()
    assert production is not None and production.version == done["result"]["candidate"] != before.version
    engine.dispose()


def slow_copy(model: Path, folder: Path) -> Path:
    """The tiny model with recorded training settings that train for minutes: retraining it is slow."""
    out = folder / "slow"
    shutil.copytree(model, out)
    meta = json.loads((out / "hrlm.json").read_text())
    meta["train_config"].update(epochs=1000.0, early_stopping_patience=0)
    (out / "hrlm.json").write_text(json.dumps(meta))
    return out


@pytest.mark.redis
def test_killing_the_worker_mid_retrain_leaves_production_and_feedback_intact(
    trained_model: Path, db_url: str, tickets_csv: Path, tmp_path: Path, redis_queue: str
) -> None:
    tokens = add_users(db_url)
    engine = make_engine(db_url)
    registry = Registry(engine, tmp_path / "registry")
    before = registry.register(slow_copy(trained_model, tmp_path), actor="admin", stage="production")
    add_feedback(engine, FEEDBACK)
    feedback_before = count(engine, review_feedback)
    settings = loop_settings(db_url, tmp_path, tickets_csv, job_runner="redis", redis_url=redis_queue, job_stale_s=2.0)
    log = tmp_path / "worker.log"
    worker = start_worker(db_url, redis_queue, log, HRLM_THREADS="1", HRLM_JOB_STALE_S="2")
    try:
        with registry_app(settings) as client:
            r = client.post("/v1/retrain", headers=bearer(tokens.admin))
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            deadline = time.monotonic() + 240
            while True:  # until the worker is training (the progress passes the data loading)
                job = client.get(f"/v1/jobs/{job_id}", headers=bearer(tokens.admin)).json()
                if job["state"] == "running" and job["progress"] >= 0.1:
                    break
                assert job["state"] in ("queued", "running"), job
                assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.2)
            time.sleep(1.0)
            os.killpg(worker.pid, signal.SIGKILL)
            worker.wait(30)

            failed = wait_for(client, tokens.admin, job_id, ("succeeded", "failed"), timeout=60)
            assert failed["state"] == "failed"
            assert failed["error"].startswith("worker stopped: no heartbeat since"), failed["error"]
            # production is what it was, no candidate was registered, and no feedback was lost
            assert registry.production() == registry.get(before.version)
            assert [v.version for v in registry.versions()] == [before.version]
            assert count(engine, review_feedback) == feedback_before
            # the dead worker's job no longer blocks the next retrain
            assert client.post("/v1/retrain", headers=bearer(tokens.admin)).status_code == 202
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(worker.pid, signal.SIGKILL)
        engine.dispose()


def start_server(model: Path, db_url: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "HRLM_DATABASE_URL": db_url,
        "HRLM_RATE_LIMIT": "0",
        "HRLM_THREADS": "1",
        "HRLM_REVIEW_CONFIDENCE_BELOW": "1.0",  # every prediction enters the review queue
        "HRLM_REVIEW_FILL_S": "0",
        "HRLM_REVIEW_DOUBLE_FRACTION": "0",
    }
    cmd = [sys.executable, "-m", "hrlm.cli", "serve", "--model", str(model), "--port", str(port)]
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"hrlm serve exited with {proc.returncode}: {log.read_text()[-2000:]}"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return proc
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"hrlm serve did not become ready: {log.read_text()[-2000:]}")


def test_server_killed_and_restarted_keeps_every_review_answer(
    trained_model: Path, db_url: str, tmp_path: Path
) -> None:
    tokens = add_users(db_url)
    port = free_port()
    log = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    proc = start_server(trained_model, db_url, port, log)
    acked: list[int] = []
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            texts = [f"my salary {w} is late {i}" for i, w in enumerate(["payslip", "vpn", "holiday", "tax"] * 3)]
            assert http.post("/v1/predict", json={"texts": texts}, headers=bearer(tokens.client)).status_code == 200
            deadline = time.monotonic() + 30
            while True:  # on PostgreSQL the filler leaves predictions younger than a couple of seconds for later
                fill = http.post("/v1/review/fill", headers=bearer(tokens.admin))
                assert fill.status_code == 200, fill.text
                if fill.json()["queued"] or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            for _ in range(8):
                item = http.get("/v1/review/next", headers=bearer(tokens.reviewer)).json()["item"]
                if item is None:
                    break
                label = next(lab for lab in item["labels"] if lab != item["suggestion"])
                r = http.post(
                    f"/v1/review/items/{item['id']}",
                    json={"action": "correct", "label": label},
                    headers=bearer(tokens.reviewer),
                )
                assert r.status_code == 200, r.text
                acked.append(item["id"])
        assert len(acked) >= 5, (fill.json(), item)
        os.kill(proc.pid, signal.SIGKILL)  # no shutdown: whatever was acknowledged must already be on disk
        proc.wait(10)

        proc = start_server(trained_model, db_url, port, log)
        engine = make_engine(db_url)
        try:
            with engine.connect() as conn:
                stored = conn.execute(
                    select(review_feedback.c.item_id, review_feedback.c.action, review_feedback.c.reviewer)
                ).all()
        finally:
            engine.dispose()
        assert sorted(r.item_id for r in stored) == sorted(acked)
        assert {(r.action, r.reviewer) for r in stored} == {("correct", "reviewer")}
        stats = httpx.get(f"{base}/v1/review/stats", headers=bearer(tokens.admin), timeout=30).json()
        assert stats["done"] == len(acked)
    finally:
        proc.kill()
        proc.wait(10)


def test_no_password_travels_through_redis() -> None:
    from hrlm.service import ServiceSettings

    data = (
        ServiceSettings(
            database_url="postgresql://hrlm:s3cret@db.internal/hrlm", redis_url="redis://:hunter2@queue:6379/0"
        )
        .lifecycle()
        .portable()
    )
    assert "s3cret" not in str(data) and "hunter2" not in str(data)
    assert data["database_url"] == "postgresql://hrlm@db.internal/hrlm"
