"""What the lifecycle needs to know: where the database, the registry and the data are, and the gate's margin.

The service builds one from its own settings (:meth:`hrlm.service.settings.ServiceSettings.lifecycle`),
the CLI from the same settings file and variables; this package never reads the service's settings
class, so it runs (``hrlm retrain``, ``hrlm worker``) without the web service installed.

Example:
    >>> LifecycleSettings(registry_dir="models", promote_margin=0.01).promote_margin
    0.01
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hrlm.errors import ConfigError

JOB_RUNNERS = ("inprocess", "redis")


@dataclass(frozen=True)
class LifecycleSettings:
    """Settings of retraining, the registry and background jobs; the defaults are ``hrlm serve``'s."""

    database_url: str = "sqlite:///hrlm.db"
    sqlite_synchronous: str = "FULL"
    migrate: bool = True
    registry_dir: str = "hrlm-models"
    train_data: str | None = None
    holdout_data: str | None = None
    promote_margin: float = 0.005
    threads: int | None = None
    job_runner: str = "inprocess"
    redis_url: str = "redis://127.0.0.1:6379/0"
    job_stale_s: float = 60.0
    log_level: str = "info"
    # the bias audit of the promotion gate (issue 16): on audit_data, per group column, for audit_positive
    audit_data: str | None = None
    audit_group_cols: tuple[str, ...] = ()
    audit_positive: str | None = None
    audit_min_impact_ratio: float = 0.8
    audit_max_flip_rate: float | None = None
    # retention: texts of predictions, review items and reviewers' notes older than this many days are removed
    retention_days: int | None = None

    def __post_init__(self) -> None:
        if self.job_runner not in JOB_RUNNERS:
            raise ConfigError(f"job_runner = {self.job_runner!r}: must be one of {', '.join(JOB_RUNNERS)}.")
        if not self.job_stale_s > 0:
            raise ConfigError(f"job_stale_s = {self.job_stale_s!r}: must be greater than 0 seconds.")
        object.__setattr__(self, "audit_group_cols", tuple(self.audit_group_cols))
        if not 0 < self.audit_min_impact_ratio <= 1:
            raise ConfigError(
                f"audit_min_impact_ratio = {self.audit_min_impact_ratio!r}: must be above 0 and at most 1 "
                "(0.8 is the four-fifths rule)."
            )
        if self.audit_max_flip_rate is not None and not 0 <= self.audit_max_flip_rate <= 1:
            raise ConfigError(f"audit_max_flip_rate = {self.audit_max_flip_rate!r}: must be between 0 and 1.")
        if self.retention_days is not None and self.retention_days < 1:
            raise ConfigError(f"retention_days = {self.retention_days!r}: must be at least 1 day (or unset: keep).")
        if not -1 <= self.promote_margin <= 1:
            raise ConfigError(f"promote_margin = {self.promote_margin!r}: must be between -1 and 1.")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> LifecycleSettings:
        """Build from plain data, ignoring keys of other settings (a job queued with a service's whole settings)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (data or {}).items() if k in names})

    def replace(self, **changes: Any) -> LifecycleSettings:
        """A copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)

    def portable(self) -> dict[str, Any]:
        """The settings as plain data for another process: file paths and a SQLite URL made absolute.

        No secret travels: passwords are removed from the database and Redis URLs (the worker runs
        the job against its own database URL).
        """
        data = dataclasses.asdict(self)
        data["audit_group_cols"] = list(self.audit_group_cols)
        for key in ("train_data", "holdout_data", "registry_dir", "audit_data"):
            if data.get(key):
                data[key] = str(Path(data[key]).expanduser().resolve())
        url = data["database_url"]
        prefix = "sqlite:///"
        if url.startswith(prefix) and not url.startswith(prefix + "/") and ":memory:" not in url:
            data["database_url"] = prefix + str(Path(url[len(prefix) :]).expanduser().resolve())
        data["database_url"] = _without_password(data["database_url"])
        data["redis_url"] = _without_password(data["redis_url"])
        return data


def _without_password(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return url
    return url if parsed.password is None else parsed._replace(password=None).render_as_string(hide_password=False)
