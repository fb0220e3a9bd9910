"""CLI commands of the feedback loop: ``hrlm retrain``, ``hrlm worker`` and ``hrlm jobs list|show``.

Registered on :data:`hrlm.cli.app.app` when :mod:`hrlm.cli.app` is imported. ``hrlm retrain`` runs in this
process by default (recorded as a job with runner ``cli``, so a service refuses a second retrain
meanwhile); ``--enqueue`` hands it to ``hrlm worker`` through Redis instead.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from hrlm.cli.app import app, err_console, handles_errors, out_console
from hrlm.cli.models import Config, DatabaseUrl, RegistryDir, actor
from hrlm.cli.serve import migrated_store

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from hrlm.service.settings import ServiceSettings

jobs_app = typer.Typer(help="Background jobs (retraining): list, show.", no_args_is_help=True)
app.add_typer(jobs_app, name="jobs")


@app.command()
@handles_errors
def retrain(
    data: Annotated[
        Path | None, typer.Option(help="Original training data. (default: train_data of the [serve] settings)")
    ] = None,
    holdout: Annotated[
        Path | None, typer.Option(help="Fixed holdout file, never trained on. (default: holdout_data)")
    ] = None,
    margin: Annotated[
        float | None,
        typer.Option(
            min=-1.0,
            max=1.0,
            help="Macro F1 the candidate must gain over production on the holdout to be promoted; negative "
            "promotes unless it loses more. (default: promote_margin, 0.005)",
        ),
    ] = None,
    base: Annotated[str | None, typer.Option(help="Registry version to start from. (default: production)")] = None,
    audit_data: Annotated[
        Path | None,
        typer.Option(
            help="Bias-audit the candidate on this file of texts and group columns; a failing audit rejects it. "
            "(default: audit_data)"
        ),
    ] = None,
    audit_group_col: Annotated[
        list[str] | None,
        typer.Option("--audit-group-col", help="A group column of the audit data; repeat for several."),
    ] = None,
    audit_positive: Annotated[
        str | None, typer.Option(help="The label that counts as selected in the audit. (default: audit_positive)")
    ] = None,
    audit_min_impact_ratio: Annotated[
        float | None,
        typer.Option(
            min=0.01,
            max=1.0,
            help="Lowest impact ratio the candidate may show for any category. (default: audit_min_impact_ratio, "
            "0.8: the four-fifths rule)",
        ),
    ] = None,
    audit_max_flip_rate: Annotated[
        float | None,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Most predictions the counterfactual gender swap may change. (default: audit_max_flip_rate, unset)",
        ),
    ] = None,
    enqueue: Annotated[
        bool, typer.Option("--enqueue", help="Hand the retrain to `hrlm worker` through Redis (job_runner = redis).")
    ] = False,
    wait: Annotated[bool, typer.Option("--wait", help="With --enqueue: follow the job until it ends.")] = False,
    config: Config = None,
    database_url: DatabaseUrl = None,
    registry_dir: RegistryDir = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Retrain from feedback: train data + accepted feedback -> candidate -> gate -> promoted or rejected."""
    from hrlm.lifecycle import JobStore, run_job

    params: dict[str, Any] = {"margin": margin, "base": base}
    params |= {k: str(v.expanduser().resolve()) for k, v in (("data", data), ("holdout", holdout)) if v is not None}
    params = {k: v for k, v in params.items() if v is not None}
    flags = {"database_url": database_url, "registry_dir": str(registry_dir) if registry_dir else None}
    audit = {
        "audit_data": str(audit_data.expanduser().resolve()) if audit_data else None,
        "audit_group_cols": audit_group_col or None,
        "audit_positive": audit_positive,
        "audit_min_impact_ratio": audit_min_impact_ratio,
        "audit_max_flip_rate": audit_max_flip_rate,
    }
    with migrated_store(config, **flags) as (settings, engine):
        settings = settings.model_copy(update={k: v for k, v in audit.items() if v is not None})
        if enqueue:
            job_id = _enqueue(settings, engine, params)
            if wait:
                _follow(engine, settings, job_id, quiet)
            return
        store = JobStore(engine, stale_s=settings.job_stale_s)
        job = store.create("retrain", actor=actor(), runner="cli", params=params)
        with _bar(quiet) as show:
            try:
                result = run_job(job["id"], settings.lifecycle(), engine=engine, on_progress=show, reraise=True)
            except KeyboardInterrupt:
                store.fail(job["id"], "interrupted from the keyboard; production is unchanged.")
                raise
        _finish(store.get(job["id"]), result)


def _enqueue(settings: ServiceSettings, engine: Engine, params: dict[str, Any]) -> str:
    from hrlm.errors import ConfigError
    from hrlm.lifecycle import JobManager, RedisRunner

    if settings.job_runner != "redis":
        raise ConfigError(
            "--enqueue needs job_runner = redis (HRLM_JOB_RUNNER=redis or [serve] job_runner) and a running "
            "`hrlm worker`; without --enqueue the retrain runs in this process."
        )
    lifecycle = settings.lifecycle()
    manager = JobManager(engine, lifecycle, runner=RedisRunner(lifecycle))
    try:
        job = manager.submit("retrain", actor=actor(), params=params)
    finally:
        manager.close()
    out_console.print(f"queued retrain job {job['id']}; `hrlm jobs show {job['id']}` follows it", highlight=False)
    return str(job["id"])


def _follow(engine: Engine, settings: ServiceSettings, job_id: str, quiet: bool) -> None:
    from hrlm.lifecycle import JobStore

    store = JobStore(engine)
    with _bar(quiet) as show:
        while True:
            store.fail_stale(settings.job_stale_s)
            job = store.get(job_id)
            show(float(job["progress"]), str(job["message"] or job["state"]))
            if job["state"] in ("succeeded", "failed"):
                break
            time.sleep(1.0)
    _finish(job, job["result"])


@contextmanager
def _bar(quiet: bool) -> Iterator[Any]:
    from hrlm._progress import ProgressBar

    bar = ProgressBar(100, "retrain", unit="%", fields={"now": "starting"}, enabled=not quiet)

    def show(fraction: float, message: str) -> None:
        bar.update(round(fraction * 100), now=escape(message[:60]))

    try:
        yield show
    finally:
        bar.close()


def _finish(job: dict[str, Any], result: dict[str, Any] | None) -> None:
    from hrlm.errors import HrlmError

    if job["state"] != "succeeded" or result is None:
        raise HrlmError(f"retrain job {job['id']} failed: {job['error'] or 'no result'}")
    out_console.print(_gate_table(result))
    for note in result.get("notes", []):
        out_console.print(f"note: {escape(note)}", highlight=False, soft_wrap=True)
    verb = "promoted to production" if result["decision"] == "promoted" else "rejected"
    out_console.print(
        f"{escape(result['candidate'])} {verb}: {escape(result['gate']['reason'])}", highlight=False, soft_wrap=True
    )


def _gate_table(result: dict[str, Any]) -> Table:
    gate = result["gate"]
    table = Table(title=f"promotion gate: {gate['decision']} (macro F1, margin {gate['margin']:g})")
    for col in ("holdout", "n", f"production {gate['production']}", f"candidate {result['candidate']}", "delta"):
        table.add_column(col, overflow="fold")
    table.add_column("passed")
    for name, part in (("fixed", gate["fixed_holdout"]), ("feedback", gate["feedback_holdout"])):
        passed = "-" if part.get("passed") is None else str(part["passed"])
        if name == "feedback" and not part.get("counts"):
            passed += " (too few to count)"
        table.add_row(
            name, str(part["n"]), _num(part["production"]), _num(part["candidate"]), _num(part["delta"]), passed
        )
    audit = gate.get("audit")
    if audit:  # the bias audit: the lowest impact ratio of each model against the threshold
        prod, cand = audit["production"]["min_impact_ratio"], audit["candidate"]["min_impact_ratio"]
        delta = None if prod is None or cand is None else cand - prod
        table.add_row(
            f"bias audit (min impact ratio >= {audit['min_impact_ratio']:g})",
            "-",
            _num(prod),
            _num(cand),
            _num(delta),
            str(audit["candidate"]["passed"]),
        )
    return table


def _num(value: Any) -> str:
    return "-" if value is None else f"{value:+.4f}" if value < 0 else f"{value:.4f}"


@app.command()
@handles_errors
def worker(
    config: Config = None,
    database_url: DatabaseUrl = None,
    redis_url: Annotated[
        str | None,
        typer.Option(help="Redis of the job queue. (default: $HRLM_REDIS_URL, else redis://127.0.0.1:6379/0)"),
    ] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Stop when the queue is empty.")] = False,
) -> None:
    """Run queued jobs (retraining) from the Redis queue `hrlm`: the production runner of `hrlm serve`."""
    from hrlm.lifecycle import safe_url, work
    from hrlm.service.settings import ServiceSettings
    from hrlm.store.db import describe, make_engine

    settings = ServiceSettings.load(config, database_url=database_url, redis_url=redis_url)
    engine = make_engine(settings.database_url)
    where = describe(engine)
    engine.dispose()
    err_console.print(
        f"worker on queue hrlm at {safe_url(settings.redis_url)}; database {where}", highlight=False, soft_wrap=True
    )
    ran = work(settings.lifecycle(), burst=burst)
    if burst:
        err_console.print("queue empty; " + ("ran jobs" if ran else "no job ran"), highlight=False)


@jobs_app.command("list")
@handles_errors
def jobs_list(
    limit: Annotated[int, typer.Option(min=1, help="Most jobs to show, newest first.")] = 20,
    config: Config = None,
    database_url: DatabaseUrl = None,
) -> None:
    """List jobs, newest first (jobs of a worker that stopped are marked failed first)."""
    from hrlm.lifecycle import JobStore

    with migrated_store(config, database_url=database_url) as (settings, engine):
        store = JobStore(engine)
        store.fail_stale(settings.job_stale_s)
        rows = store.recent(limit=limit)
    table = Table(title=f"{len(rows)} jobs (`hrlm jobs show ID` takes these ids or the whole one)")
    table.add_column("id", no_wrap=True)
    for col in ("kind", "state", "runner", "actor", "created", "result or message"):
        table.add_column(col, overflow="fold")
    for r in rows:
        state = f"{r['state']} {r['progress']:.0%}" if r["state"] == "running" else r["state"]
        created = f"{r['created_at']:%Y-%m-%d %H:%M}"
        table.add_row(r["id"][:12], r["kind"], state, r["runner"], r["actor"], created, escape(_summary(r)))
    out_console.print(table)


def _summary(job: dict[str, Any]) -> str:
    if job["state"] == "failed":
        return str(job["error"] or "failed")
    if job["state"] == "succeeded" and job["result"]:
        return f"{job['result'].get('decision', 'done')} {job['result'].get('candidate', '')}".strip()
    return str(job["message"] or "")


@jobs_app.command("show")
@handles_errors
def jobs_show(
    job_id: Annotated[str, typer.Argument(help="The job's id, or its first characters (`hrlm jobs list`).")],
    config: Config = None,
    database_url: DatabaseUrl = None,
) -> None:
    """One job: state, progress, timings, and its result (the gate's table) or error."""
    from hrlm.lifecycle import JobStore

    with migrated_store(config, database_url=database_url) as (settings, engine):
        store = JobStore(engine)
        store.fail_stale(settings.job_stale_s)
        job = store.find(job_id)
    table = Table(show_header=False, title=f"job {job['id']}")
    table.add_column("field")
    table.add_column("value", overflow="fold")
    for key in ("kind", "state", "runner", "actor", "created_at", "started_at", "heartbeat_at", "finished_at"):
        table.add_row(key, str(job[key] if job[key] is not None else "-"))
    table.add_row("progress", f"{job['progress']:.0%} {job['message'] or ''}")
    if job["params"]:
        table.add_row("params", escape(", ".join(f"{k}={v}" for k, v in job["params"].items())))
    if job["error"]:
        table.add_row("error", escape(job["error"]))
    out_console.print(table)
    result = job["result"]
    if result and "gate" in result:
        out_console.print(_gate_table(result))
        out_console.print(f"decision: {escape(result['decision'])} {escape(result['candidate'])}", highlight=False)
