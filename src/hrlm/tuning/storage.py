"""Where a study lives: an Optuna RDB storage (SQLite or PostgreSQL) with heartbeats, so that it resumes.

A running trial records a heartbeat every ``heartbeat_s`` seconds; a trial silent for three of them
(its process was killed) is marked failed by the next trial to start, in any process, and its
settings are queued to be tried once more (Optuna's ``RetryHeartbeatStaleTrialCallback``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hrlm._extras import needs_extras
from hrlm.errors import ConfigError, HrlmError

if TYPE_CHECKING:
    import optuna


def storage_url(storage: str | None, out: Path) -> str:
    """The SQLAlchemy URL of the study's storage: ``OUT/study.db`` unless given; PostgreSQL through psycopg 3."""
    if storage is None:
        return f"sqlite:///{(out / 'study.db').resolve()}"
    for prefix in ("postgresql://", "postgres://"):
        if storage.startswith(prefix):
            return "postgresql+psycopg://" + storage.removeprefix(prefix)
    if not storage.startswith(("sqlite:///", "postgresql+", "mysql")):
        raise ConfigError(
            f"storage = {storage!r} is not a database URL; give sqlite:///path/study.db or postgresql://user@host/db."
        )
    return storage


@contextlib.contextmanager
def open_study(
    url: str,
    name: str,
    *,
    direction: Literal["minimize", "maximize"],
    max_resource: int | str,
    heartbeat_s: int = 60,
) -> Iterator[optuna.Study]:
    """Create the study ``name`` in ``url``, or load it when it exists (a resumed or a second worker's run).

    Heartbeats every ``heartbeat_s`` seconds; a running trial silent for three of them is failed and its
    settings queued again (once), by whichever worker starts a trial next. The study's sampler is a
    TPE one to be replaced (its seed depends on the trials already there); its database connections
    are closed when the block ends.
    """
    with needs_extras("hrlm tune"):
        import optuna
        import sqlalchemy.exc
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    engine: dict[str, Any] = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    storage = None
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" in Optuna 5; it is what resuming needs
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = RDBStorage(
                url,
                engine_kwargs=engine,
                heartbeat_interval=heartbeat_s,
                grace_period=3 * heartbeat_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
            )
        pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_resource, reduction_factor=3)
        with quiet_optuna():
            study = optuna.create_study(
                storage=storage, study_name=name, direction=direction, pruner=pruner, load_if_exists=True
            )
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        if storage is not None:
            storage.engine.dispose()
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise HrlmError(f"cannot open the study storage {shown_url(url)}: {reason}") from None
    try:
        yield study
    finally:
        storage.remove_session()
        storage.engine.dispose()


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Optuna's INFO lines off (hrlm prints its own line per trial); its warnings stay."""
    import optuna

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(verbosity)


def shown_url(url: str) -> str:
    """The URL with its password hidden."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)
