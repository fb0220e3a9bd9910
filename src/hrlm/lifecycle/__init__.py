"""A model's life after training: the registry of versions, retraining with a promotion gate, jobs.

Modules: ``registry`` (versions and their stages: candidate, production, archived, rejected;
promote, roll back), ``retraining`` (train a candidate on data plus reviewers' answers, compare it
with production on a fixed holdout, promote or reject), ``audit_gate`` (the bias audit a candidate
must pass), ``jobs`` (the jobs table and running one job), ``runners`` (in a thread of the service,
or on a Redis queue for ``hrlm worker``), ``settings`` (what these need to know, handed down by the
service or the CLI).
"""

from __future__ import annotations

from hrlm._extras import needs_extras

with needs_extras("the model registry and retraining (hrlm.lifecycle)"):
    from hrlm.lifecycle.jobs import JobStore, run_job
    from hrlm.lifecycle.registry import Registry, VersionInfo, report_file, report_files
    from hrlm.lifecycle.runners import JobManager, RedisRunner, safe_url, work

__all__ = [
    "JobManager",
    "JobStore",
    "RedisRunner",
    "Registry",
    "VersionInfo",
    "report_file",
    "report_files",
    "run_job",
    "safe_url",
    "work",
]
