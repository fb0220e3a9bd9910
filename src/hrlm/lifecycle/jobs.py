"""Background jobs (retraining): their rows in the ``jobs`` table, and the runners that execute them.

A job is a row first: :meth:`JobStore.create` writes it ``queued``, and whatever runs it moves it to
``running`` (with a heartbeat), then to ``succeeded`` or ``failed``. The database, not the queue, is
the record: a worker killed mid-job stops touching ``heartbeat_at``, and :meth:`JobStore.fail_stale`
(called by the worker when it starts, by the service every few seconds and by ``hrlm jobs list``)
marks the job failed with the reason. The runners of :mod:`hrlm.lifecycle.runners` hand jobs to
:func:`run_job`: a thread of ``hrlm serve`` (the embedded default) or an RQ queue named ``hrlm`` on
``redis_url``, worked by ``hrlm worker`` processes that open their own database engine.

Only one job of a kind is queued or running at a time; a second request raises :class:`Conflict`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from sqlalchemy import Connection, Engine, and_, insert, or_, select, text, update

from hrlm.errors import ConfigError, Conflict, HrlmError, NotFound
from hrlm.lifecycle.settings import LifecycleSettings
from hrlm.store.tables import jobs, utcnow
from hrlm.store.users import audit
from hrlm.text import check_storable

log = logging.getLogger("hrlm.jobs")

QUEUE_NAME = "hrlm"
KINDS = ("retrain", "evaluate")  # evaluate: production measured on holdout_data (hrlm.lifecycle.holdout)
_ACTIVE = ("queued", "running")
_CREATE_LOCK = 7_246_552  # the PostgreSQL advisory lock that serialises job creation (one active job per kind)

ProgressCallback = Callable[[float, str], None]


class JobCancelled(HrlmError):
    """The job was stopped because its runner shut down."""


class JobStore:
    """The ``jobs`` table: create, move through the states, read, and fail stale jobs.

    Example:
        >>> store = JobStore(engine)  # doctest: +SKIP
        >>> job = store.create("retrain", actor="alice", runner="inprocess")  # doctest: +SKIP
        >>> store.get(job["id"])["state"]  # doctest: +SKIP
        'queued'

    Args:
        engine: the database.
        stale_s: when set, :meth:`create` first fails jobs whose runner stopped (see :meth:`fail_stale`),
            so a dead worker's job does not block the next request.
    """

    def __init__(self, engine: Engine, *, stale_s: float | None = None) -> None:
        self.engine = engine
        self.stale_s = stale_s

    def create(self, kind: str, *, actor: str, runner: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        """Write a ``queued`` job and its audit entry; return the row.

        Raises:
            ConfigError: ``kind`` is not a known job kind.
            Conflict: a job of this kind is already queued or running.
            DataError: a parameter holds a character no database stores (NUL, a lone surrogate).
        """
        if kind not in KINDS:
            raise ConfigError(f"job kind {kind!r} is not known; kinds are {', '.join(KINDS)}.")
        _check_params("params", params or {})
        if self.stale_s:
            self.fail_stale(self.stale_s)
        now = utcnow()
        job_id = uuid.uuid4().hex
        row = {
            "id": job_id,
            "kind": kind,
            "state": "queued",
            "runner": runner,
            "actor": actor,
            "created_at": now,
            "heartbeat_at": now,
            "progress": 0.0,
            "message": "queued",
            "params": params or {},
        }
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CREATE_LOCK})
            # On SQLite the insert comes first: it takes the write lock, so the check below sees every
            # job committed before it and a concurrent creator waits for this transaction to end.
            conn.execute(insert(jobs).values(**row))
            other = conn.execute(
                select(jobs.c.id, jobs.c.state, jobs.c.created_at)
                .where(jobs.c.kind == kind, jobs.c.state.in_(_ACTIVE), jobs.c.id != job_id)
                .limit(1)
            ).first()
            if other is not None:
                conn.rollback()
                raise Conflict(
                    f"a {kind} job ({other.id}) is already {other.state} since {_stamp(other.created_at)}; "
                    f"wait for it (`hrlm jobs show {other.id}`) and try again."
                )
            audit(conn, actor, f"{kind}.request", job_id, runner=runner, params=params or {})
        return self.get(job_id)

    def get(self, job_id: str) -> dict[str, Any]:
        """One job as a dict. Raises :class:`NotFound` for an unknown id."""
        with self.engine.connect() as conn:
            row = conn.execute(select(jobs).where(jobs.c.id == job_id)).mappings().first()
        if row is None:
            raise NotFound(f"no job {job_id!r}; `hrlm jobs list` or GET /v1/jobs shows them.")
        return dict(row)

    def find(self, prefix: str) -> dict[str, Any]:
        """The job whose id is or starts with ``prefix`` (as ``hrlm jobs list`` shows ids: 12 characters).

        Raises:
            NotFound: no job id starts so.
            ConfigError: several do; give more characters.
        """
        if len(prefix) < 32:
            pattern = prefix.replace("\\", "").replace("%", "").replace("_", "") + "%"
            with self.engine.connect() as conn:
                ids = [r for (r,) in conn.execute(select(jobs.c.id).where(jobs.c.id.like(pattern)).limit(2))]
            if len(ids) > 1:
                raise ConfigError(f"several jobs start with {prefix!r}; give more of the id.")
            if ids:
                prefix = ids[0]
        return self.get(prefix)

    def recent(self, *, limit: int = 50, kind: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """The newest jobs first."""
        query = select(jobs).order_by(jobs.c.created_at.desc()).limit(limit)
        if kind is not None:
            query = query.where(jobs.c.kind == kind)
        if state is not None:
            query = query.where(jobs.c.state == state)
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(query).mappings()]

    def active(self, kind: str) -> dict[str, Any] | None:
        """The queued or running job of ``kind``, if there is one."""
        query = select(jobs).where(jobs.c.kind == kind, jobs.c.state.in_(_ACTIVE)).limit(1)
        with self.engine.connect() as conn:
            row = conn.execute(query).mappings().first()
        return dict(row) if row is not None else None

    def start(self, job_id: str) -> bool:
        """Move a queued job to ``running``; False when it is not queued (failed meanwhile, or taken)."""
        now = utcnow()
        return self._set(job_id, ("queued",), state="running", started_at=now, heartbeat_at=now, message="started")

    def heartbeat(self, job_id: str) -> bool:
        """Touch a running (or, for the in-process runner, queued) job's ``heartbeat_at``."""
        return self._set(job_id, _ACTIVE, heartbeat_at=utcnow())

    def progress(self, job_id: str, fraction: float, message: str | None = None) -> bool:
        """Record how far a running job is (0 to 1) and what it does now."""
        values: dict[str, Any] = {"progress": round(min(max(fraction, 0.0), 1.0), 4), "heartbeat_at": utcnow()}
        if message is not None:
            values["message"] = message[:500]
        return self._set(job_id, ("running",), **values)

    def succeed(self, job_id: str, result: dict[str, Any]) -> bool:
        """Mark a running job succeeded with its result."""
        return self._set(
            job_id, ("running",), state="succeeded", finished_at=utcnow(), progress=1.0, message="done", result=result
        )

    def fail(self, job_id: str, error: str) -> bool:
        """Mark a queued or running job failed with the reason."""
        return self._set(job_id, _ACTIVE, state="failed", finished_at=utcnow(), error=error[:4000], message="failed")

    def fail_stale(self, stale_s: float) -> list[str]:
        """Fail every job whose runner stopped: running jobs (and in-process queued jobs) without a heartbeat
        for ``stale_s`` seconds. Returns their ids."""
        cutoff = utcnow() - dt.timedelta(seconds=stale_s)
        stale = or_(
            and_(jobs.c.state == "running", jobs.c.heartbeat_at < cutoff),
            and_(jobs.c.state == "queued", jobs.c.runner == "inprocess", jobs.c.heartbeat_at < cutoff),
        )
        failed: list[str] = []
        with self.engine.begin() as conn:
            rows = conn.execute(select(jobs.c.id, jobs.c.state, jobs.c.heartbeat_at).where(stale)).all()
            for row in rows:
                reason = (
                    f"worker stopped: no heartbeat since {_stamp(row.heartbeat_at)} "
                    f"(more than job_stale_s = {stale_s:g} s); production is unchanged"
                    if row.state == "running"
                    else f"the service that queued it stopped before running it (no heartbeat since "
                    f"{_stamp(row.heartbeat_at)})"
                )
                # the state in the WHERE: a heartbeat or a finish that landed meanwhile wins
                done = conn.execute(
                    update(jobs)
                    .where(jobs.c.id == row.id, jobs.c.state == row.state, jobs.c.heartbeat_at < cutoff)
                    .values(state="failed", finished_at=utcnow(), error=reason, message="failed")
                ).rowcount
                if done:
                    failed.append(row.id)
                    log.warning("job %s failed: %s", row.id, reason)
        return failed

    def _set(self, job_id: str, states: tuple[str, ...], **values: Any) -> bool:
        with self.engine.begin() as conn:
            return bool(_update(conn, job_id, states, values))


def _check_params(where: str, value: Any) -> None:
    """Refuse, naming its place (``params.base``), a parameter string a database cannot store."""
    if isinstance(value, str):
        check_storable(where, value)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_storable(f"{where} key", str(key))
            _check_params(f"{where}.{key}", item)
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _check_params(f"{where}[{i}]", item)


def _update(conn: Connection, job_id: str, states: tuple[str, ...], values: dict[str, Any]) -> int:
    query = update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_(states)).values(**values)
    return int(conn.execute(query).rowcount or 0)


def _stamp(value: dt.datetime | None) -> str:
    return f"{value:%Y-%m-%d %H:%M:%S} UTC" if value is not None else "never"


@contextlib.contextmanager
def heartbeat(store: JobStore, job_id: str, interval_s: float) -> Iterator[None]:
    """Touch the job's ``heartbeat_at`` every ``interval_s`` seconds from a thread while the block runs.

    A thread, not the job's own progress calls: a long step (loading an encoder, one evaluation)
    must not read as a dead worker.
    """
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(interval_s):
            try:
                store.heartbeat(job_id)
            except Exception as exc:  # a database hiccup must not end the job; the next beat retries
                log.warning("heartbeat of job %s failed: %s", job_id, exc)

    thread = threading.Thread(target=beat, name=f"hrlm-heartbeat-{job_id[:8]}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(interval_s + 5)


def heartbeat_interval(stale_s: float) -> float:
    """How often a running job beats: four times within ``job_stale_s``, at most every 10 s."""
    return min(max(stale_s / 4.0, 0.1), 10.0)


def run_job(
    job_id: str,
    settings: LifecycleSettings | dict[str, Any] | None = None,
    *,
    engine: Engine | None = None,
    cancel: threading.Event | None = None,
    reraise: bool = False,
    on_progress: ProgressCallback | None = None,
) -> dict[str, Any] | None:
    """Run a queued job to its end: ``running`` with a heartbeat, then ``succeeded`` or ``failed``.

    What both runners call. Returns the job's result, or ``None`` when the job was no longer queued
    (failed as stale meanwhile, or taken by another worker) or failed.

    Args:
        job_id: the job's id in the ``jobs`` table.
        settings: the lifecycle settings (a dict when it comes through Redis; keys of other settings are ignored).
        engine: a database engine; default a new one for ``settings.database_url``, disposed at the end.
        cancel: set it to stop the job at its next progress report (the job then fails).
        reraise: raise the job's error after recording it (so RQ and the CLI report it), instead of logging it.
        on_progress: also called with each progress report (``hrlm retrain`` draws its bar with it).
    """
    s = _settings(settings)
    own = engine is None
    if engine is None:
        from hrlm.store import make_engine

        engine = make_engine(s.database_url, sqlite_synchronous=s.sqlite_synchronous)
    store = JobStore(engine)
    try:
        if not store.start(job_id):
            log.warning("job %s is not queued any more; skipping it", job_id)
            return None
        job = store.get(job_id)

        def report(fraction: float, message: str) -> None:
            if cancel is not None and cancel.is_set():
                raise JobCancelled("the service stopped while the job ran; production is unchanged. Start it again.")
            store.progress(job_id, fraction, message)
            if on_progress is not None:
                on_progress(fraction, message)

        try:
            with heartbeat(store, job_id, heartbeat_interval(s.job_stale_s)):
                result = _KIND_RUNNERS[job["kind"]](engine, s, job, report)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, HrlmError) else f"{type(exc).__name__}: {exc}"
            store.fail(job_id, reason)
            if reraise:  # the caller reports it (RQ's log, the CLI's error line)
                raise
            log.error("job %s failed: %s", job_id, reason, exc_info=not isinstance(exc, HrlmError))
            return None
        if not store.succeed(job_id, result):
            log.warning("job %s finished, but it had been marked failed meanwhile (stale heartbeat?)", job_id)
        return result
    finally:
        if own:
            engine.dispose()


def _run_retrain(engine: Engine, s: LifecycleSettings, job: dict[str, Any], report: ProgressCallback) -> dict[str, Any]:
    from pathlib import Path

    from hrlm.lifecycle.registry import Registry
    from hrlm.lifecycle.retraining import retrain

    params = job.get("params") or {}
    registry = Registry(engine, Path(s.registry_dir))
    return retrain(
        engine,
        registry,
        s,
        actor=job["actor"],
        progress_cb=report,
        data=params.get("data"),
        holdout=params.get("holdout"),
        margin=params.get("margin"),
        base=params.get("base"),
    )


def _run_evaluate(
    engine: Engine, s: LifecycleSettings, job: dict[str, Any], report: ProgressCallback
) -> dict[str, Any]:
    from hrlm.lifecycle.holdout import run_evaluate_job

    return run_evaluate_job(engine, s, job, report)


_KIND_RUNNERS: dict[str, Callable[[Engine, Any, dict[str, Any], ProgressCallback], dict[str, Any]]] = {
    "retrain": _run_retrain,
    "evaluate": _run_evaluate,
}


def _settings(settings: LifecycleSettings | Mapping[str, Any] | None) -> LifecycleSettings:
    if isinstance(settings, LifecycleSettings):
        return settings
    return LifecycleSettings.from_mapping(settings)


# The database of the `hrlm worker` process (set by hrlm.lifecycle.runners.work): a job runs against the worker's
# own database URL, so the one in the queued settings never needs to carry a password through Redis.
WORKER_DATABASE_URL: str | None = None


def rq_entry(job_id: str, settings: dict[str, Any]) -> dict[str, Any] | None:
    """What an ``hrlm worker`` executes for one RQ job (importable by name, so RQ can find it)."""
    if WORKER_DATABASE_URL:
        settings = {**settings, "database_url": WORKER_DATABASE_URL}
    return run_job(job_id, settings, reraise=True)
