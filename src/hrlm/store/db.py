"""Engines, migrations and the health check of the database.

SQLite (a file, ``sqlite:///hrlm.db`` by default) runs in WAL mode so that readers never wait for
the writer; ``synchronous = FULL`` by default, so a committed prediction survives a crash of the
machine, not only of the process. PostgreSQL is reached by URL (``postgresql://user@host/db``;
the psycopg 3 driver is chosen for you).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from hrlm.errors import ConfigError, StoreError

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_SYNC = ("OFF", "NORMAL", "FULL", "EXTRA")
_MIGRATION_LOCK = 7_246_551  # any constant: the PostgreSQL advisory lock that serialises concurrent upgrades


def normalize_url(url: str) -> str:
    """``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (psycopg 3).

    Example:
        >>> normalize_url("postgres://u@localhost/hr")
        'postgresql+psycopg://u@localhost/hr'
    """
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def make_engine(url: str, *, sqlite_synchronous: str = "FULL", echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get WAL mode, a busy timeout and foreign keys.

    A SQLite file is created on first use, but never its folder: connecting raises :class:`StoreError`
    while the folder is missing.

    Raises:
        ConfigError: the URL is malformed or names a database this build cannot drive.
    """
    url = normalize_url(url)
    if sqlite_synchronous.upper() not in SQLITE_SYNC:
        raise ConfigError(f"sqlite_synchronous = {sqlite_synchronous!r}; choose one of {', '.join(SQLITE_SYNC)}.")
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"database_url {url!r} is not a database URL; use sqlite:///hrlm.db or postgresql://user@host/db."
        ) from None
    kwargs: dict[str, Any] = {"echo": echo, "pool_pre_ping": True}
    sqlite_file = None
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            sqlite_file = Path(parsed.database).expanduser()
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    else:
        kwargs.update(pool_size=8, max_overflow=8)
    try:
        engine = create_engine(url, **kwargs)
    except (ArgumentError, ImportError) as exc:
        raise ConfigError(f"cannot use database_url {url!r}: {exc}") from None
    if sqlite_file is not None:
        folder = sqlite_file.parent

        # SQLite creates a missing file but not its folder: a typo in the path should not make folders
        @event.listens_for(engine, "do_connect")
        def _folder_exists(*_args: Any) -> None:
            if not folder.is_dir():
                raise StoreError(
                    f"the folder {folder} of database_url {url!r} does not exist; create it, or fix the path."
                )

    if engine.dialect.name == "sqlite":
        sync = sqlite_synchronous.upper()

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute(f"PRAGMA synchronous={sync}")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

    return engine


def describe(engine: Engine) -> str:
    """The engine's URL without its password."""
    return engine.url.render_as_string(hide_password=True)


def _alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False).replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema up to ``revision`` with the packaged Alembic migrations; return the revision.

    Safe to run from several processes at once on PostgreSQL (an advisory lock serialises them).

    Raises:
        StoreError: the database cannot be reached or a migration fails.
    """
    from alembic import command

    cfg = _alembic_config(engine)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _MIGRATION_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
        return current_revision(engine)
    except SQLAlchemyError as exc:
        raise StoreError(f"cannot migrate the database at {describe(engine)}: {first_line(exc)}") from None


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision the database is at (``None`` before the first migration)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str | None:
    """The newest revision among the packaged migrations."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(str(MIGRATIONS)).get_current_head()


def table_names(engine: Engine) -> list[str]:
    """Tables of the engine's default schema."""
    return sorted(inspect(engine).get_table_names())


def ping(engine: Engine) -> None:
    """Raise :class:`StoreError` unless the database answers ``SELECT 1``."""
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except SQLAlchemyError as exc:
        raise StoreError(f"database at {describe(engine)} is unreachable: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    """The first line of a driver error, without SQLAlchemy's background link."""
    with contextlib.suppress(Exception):
        orig = getattr(exc, "orig", None)
        if orig is not None:
            return str(orig).strip().splitlines()[0]
    return str(exc).strip().splitlines()[0]
