"""Runners of background jobs: in a thread of the service, or on an RQ queue worked by ``hrlm worker``.

:class:`JobManager` is what ``hrlm serve`` holds: the :class:`~hrlm.lifecycle.jobs.JobStore`, the runner that
``job_runner`` names, and a sweeper thread that fails the jobs of dead workers. Both runners end in
:func:`hrlm.lifecycle.jobs.run_job`, which records the job's states in the database.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol

from sqlalchemy import Engine

from hrlm.errors import StoreError
from hrlm.lifecycle.jobs import QUEUE_NAME, JobStore, heartbeat_interval, rq_entry, run_job
from hrlm.lifecycle.settings import LifecycleSettings

log = logging.getLogger("hrlm.jobs")


class JobRunner(Protocol):
    """Hands a queued job to something that will call :func:`run_job`."""

    name: str

    def submit(self, job_id: str) -> None: ...

    def close(self) -> None: ...


class InProcessRunner:
    """Runs jobs one at a time on a background thread of this process (``hrlm serve``'s default).

    Queued jobs it holds get heartbeats too, so a job queued by a service that then died is failed
    by :meth:`JobStore.fail_stale` instead of blocking the next request for ever.

    Args:
        engine: the service's database engine (shared: the jobs run in this process).
        settings: the lifecycle settings handed to every job.
        on_finished: called with the job id and its result after a job succeeded (on the runner thread).
    """

    name = "inprocess"

    def __init__(
        self,
        engine: Engine,
        settings: LifecycleSettings,
        *,
        on_finished: Callable[[str, dict[str, Any]], object] | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.on_finished = on_finished
        self.store = JobStore(engine)
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._held: set[str] = set()
        self._lock = threading.Lock()
        self._cancel = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="hrlm-jobs", daemon=True)
        self._beat = threading.Thread(target=self._beat_queued, name="hrlm-jobs-queued", daemon=True)
        self._thread.start()
        self._beat.start()

    def submit(self, job_id: str) -> None:
        """Queue ``job_id`` behind the jobs already held."""
        if self._cancel.is_set():
            raise StoreError("the job runner is shutting down; retry once the service is back.")
        with self._lock:
            self._held.add(job_id)
        self._queue.put(job_id)

    def close(self, timeout: float = 5.0) -> None:
        """Stop: queued jobs fail now, a running job fails at its next progress report."""
        self._cancel.set()
        self._queue.put(None)
        with self._lock:
            held, self._held = set(self._held), set()
        for job_id in held:
            with contextlib.suppress(Exception):
                self.store.fail(job_id, "the service stopped before the job finished; production is unchanged.")
        self._thread.join(timeout)
        self._beat.join(timeout)

    def _loop(self) -> None:
        while True:
            job_id = self._queue.get()
            if job_id is None or self._cancel.is_set():
                return
            try:
                result = run_job(job_id, self.settings, engine=self.engine, cancel=self._cancel)
            except Exception:  # run_job records the job's own errors; this is the database failing under it
                log.exception("job %s could not be run", job_id)
                result = None
            finally:
                with self._lock:
                    self._held.discard(job_id)
            if result is not None and self.on_finished is not None:
                try:
                    self.on_finished(job_id, result)
                except Exception:
                    log.exception("the callback after job %s failed", job_id)

    def _beat_queued(self) -> None:
        interval = heartbeat_interval(self.settings.job_stale_s)
        while not self._cancel.wait(interval):
            with self._lock:
                held = list(self._held)
            for job_id in held:
                with contextlib.suppress(Exception):
                    self.store.heartbeat(job_id)


class RedisRunner:
    """Enqueues jobs on the RQ queue ``hrlm`` at ``settings.redis_url``; ``hrlm worker`` runs them.

    The job carries the service's settings (paths made absolute), so the worker opens the same
    database and finds the same data files whatever its working folder.
    """

    name = "redis"

    def __init__(self, settings: LifecycleSettings) -> None:
        from redis import Redis
        from rq import Queue

        self.url = settings.redis_url
        self.redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        self.queue = Queue(QUEUE_NAME, connection=self.redis)
        self.payload = settings.portable()

    def submit(self, job_id: str) -> None:
        """Put the job on the queue. Raises :class:`StoreError` when Redis cannot be reached."""
        from redis.exceptions import RedisError

        try:
            self.queue.enqueue_call(
                rq_entry,
                args=(job_id, self.payload),
                timeout=-1,  # no time limit: a retrain takes as long as it takes; heartbeats tell a dead one
                job_id=f"hrlm-{job_id}",
                result_ttl=7 * 86400,
                failure_ttl=30 * 86400,
                description=f"hrlm job {job_id}",
            )
        except RedisError as exc:
            raise StoreError(
                f"cannot queue the job on Redis at {safe_url(self.url)} ({type(exc).__name__}); start Redis "
                "and `hrlm worker`, or set job_runner = inprocess."
            ) from None

    def close(self) -> None:
        self.redis.close()


def safe_url(url: str) -> str:
    """A URL without its password, to show."""
    from sqlalchemy.engine import make_url

    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url.split("@")[-1]


def make_runner(
    settings: LifecycleSettings,
    engine: Engine,
    *,
    on_finished: Callable[[str, dict[str, Any]], object] | None = None,
) -> JobRunner:
    """The runner ``settings.job_runner`` names."""
    if settings.job_runner == "redis":
        return RedisRunner(settings)
    return InProcessRunner(engine, settings, on_finished=on_finished)


class JobManager:
    """What the service holds: the job store, a runner, and a sweeper that fails stale jobs.

    Example:
        >>> jobs = JobManager(engine, settings)  # doctest: +SKIP
        >>> jobs.start()  # doctest: +SKIP
        >>> job = jobs.submit("retrain", actor="alice", params={"margin": 0.01})  # doctest: +SKIP
    """

    def __init__(
        self,
        engine: Engine,
        settings: LifecycleSettings,
        *,
        runner: JobRunner | None = None,
        on_finished: Callable[[str, dict[str, Any]], object] | None = None,
    ) -> None:
        self.settings = settings
        self.store = JobStore(engine, stale_s=settings.job_stale_s)
        self.runner = runner if runner is not None else make_runner(settings, engine, on_finished=on_finished)
        self._stop = threading.Event()
        self._sweeper: threading.Thread | None = None

    def start(self) -> None:
        """Fail stale jobs now, then every ``job_stale_s / 2`` seconds (at most every 30 s)."""
        self.sweep()
        interval = min(max(self.settings.job_stale_s / 2.0, 0.2), 30.0)

        def loop() -> None:
            while not self._stop.wait(interval):
                self.sweep()

        self._sweeper = threading.Thread(target=loop, name="hrlm-jobs-sweeper", daemon=True)
        self._sweeper.start()

    def sweep(self) -> list[str]:
        """Fail the jobs whose runner stopped; a database error is logged, not raised."""
        try:
            return self.store.fail_stale(self.settings.job_stale_s)
        except Exception as exc:
            log.warning("could not check for stale jobs: %s", exc)
            return []

    def submit(self, kind: str, *, actor: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Create a queued job and hand it to the runner; return its row.

        Raises:
            Conflict: a job of this kind is already queued or running (409).
            StoreError: the runner cannot take it (Redis unreachable); the job is then marked failed.
        """
        job = self.store.create(kind, actor=actor, runner=self.runner.name, params=params)
        try:
            self.runner.submit(job["id"])
        except Exception as exc:
            self.store.fail(job["id"], str(exc))
            raise
        return self.store.get(job["id"])

    def close(self) -> None:
        """Stop the sweeper and the runner."""
        self._stop.set()
        if self._sweeper is not None:
            self._sweeper.join(5)
        self.runner.close()


def work(settings: LifecycleSettings, *, burst: bool = False) -> bool:
    """Run an RQ worker on the ``hrlm`` queue: what ``hrlm worker`` does.

    Fails stale jobs first (those of a worker that died), then works jobs until stopped (or, with
    ``burst``, until the queue is empty). Returns whether it ran any job.

    Raises:
        StoreError: the database or Redis cannot be reached.
    """
    from redis import Redis
    from redis.exceptions import RedisError
    from rq import Queue, SimpleWorker

    from hrlm.lifecycle import jobs
    from hrlm.store import make_engine, ping, upgrade

    jobs.WORKER_DATABASE_URL = settings.database_url
    engine = make_engine(settings.database_url, sqlite_synchronous=settings.sqlite_synchronous)
    try:
        upgrade(engine) if settings.migrate else ping(engine)
        failed = JobStore(engine).fail_stale(settings.job_stale_s)
    finally:
        engine.dispose()
    if failed:
        log.warning("marked %d stale job(s) failed: %s", len(failed), ", ".join(failed))
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        redis.ping()
    except RedisError as exc:
        raise StoreError(
            f"cannot reach Redis at {safe_url(settings.redis_url)} ({type(exc).__name__}); "
            "start it or pass --redis-url."
        ) from None
    # SimpleWorker runs the job in this process, so the job's heartbeat is this process's: when the worker
    # dies, so does its job, and fail_stale tells. rq's forking Worker runs jobs in a child of its own
    # process group that outlives a killed worker (and forking after torch has started threads can hang).
    worker = SimpleWorker([Queue(QUEUE_NAME, connection=redis)], connection=redis)
    return bool(worker.work(burst=burst, logging_level=settings.log_level.upper()))
