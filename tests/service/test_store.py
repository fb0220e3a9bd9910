"""The store: migrations match the tables, users and hashed tokens, the audit log; on SQLite and PostgreSQL."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import select

from hrlm.errors import ConfigError, DataError, NotFound
from hrlm.store import authenticate, create_user, list_users, make_engine, revoke_user, upgrade
from hrlm.store.db import MIGRATIONS, current_revision, head_revision, normalize_url, table_names
from hrlm.store.tables import api_tokens, audit_log, metadata, users

ROOT = Path(__file__).resolve().parents[2]


def test_migrations_create_exactly_the_tables_the_code_uses(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    engine = make_engine(db_url)
    try:
        assert upgrade(engine) == head_revision() == "0006"
        assert upgrade(engine) == "0006"  # idempotent
        # full-text search (0006) is the database's own: SQLite's FTS5 table and its shadow tables,
        # PostgreSQL's GIN index on an expression; the code reads them through SQL, not these tables
        found = {t for t in table_names(engine) if not t.startswith("review_items_fts")}
        assert found == {*metadata.tables, "alembic_version"}
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), metadata)
        assert [
            d
            for d in diff
            if not str(getattr(d[1], "name", "")).startswith(("review_items_fts", "ix_review_items_text_fts"))
        ] == []
    finally:
        engine.dispose()


def test_users_tokens_and_audit_log(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        token = create_user(engine, "ana", "reviewer")
        principal, _ = authenticate(engine, token) or (None, None)
        assert principal is not None and (principal.name, principal.role) == ("ana", "reviewer")
        with engine.connect() as conn:
            stored = conn.execute(select(api_tokens.c.key_id, api_tokens.c.token_hash)).one()
        secret = token.split("_", 2)[2]  # hrlm_<key id>_<secret>; the secret may itself hold "_"
        assert len(secret) == 43 and token not in stored and secret not in "".join(stored)  # only a hash is kept
        with pytest.raises(ConfigError, match="exists; revoke it first"):
            create_user(engine, "ana", "client")
        with pytest.raises(ConfigError, match="role = 'boss' is not valid"):
            create_user(engine, "bo", "boss")
        with pytest.raises(ConfigError, match="not valid"):
            create_user(engine, "no spaces", "client")
        assert revoke_user(engine, "ana") == 1
        assert authenticate(engine, token) is None
        with pytest.raises(NotFound, match="hrlm users list"):
            revoke_user(engine, "nobody")
        again = create_user(engine, "ana", "admin")  # a revoked user may be given access again
        assert authenticate(engine, token) is None and authenticate(engine, again) is not None
        (row,) = list_users(engine)
        assert (row["name"], row["role"], row["revoked_at"], row["active_tokens"]) == ("ana", "admin", None, 1)
        with engine.connect() as conn:
            actions = [
                tuple(r) for r in conn.execute(select(audit_log.c.action, audit_log.c.target).order_by(audit_log.c.id))
            ]
            assert conn.execute(select(users.c.name)).scalars().all() == ["ana"]
        assert actions == [("token.create", "ana"), ("token.revoke", "ana"), ("token.create", "ana")]
    finally:
        engine.dispose()


def test_malformed_tokens_never_reach_the_database(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'none' / 'x.db'}")  # no tables at all: a query would fail
    for token in ("", "hrlm", "hrlm_zz_zz", "Bearer x", "hrlm_0123456789ab_short"):
        assert authenticate(engine, token) is None
    engine.dispose()


def test_urls() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(ConfigError, match="not a database URL"):
        make_engine("not a url")
    with pytest.raises(ConfigError, match="sqlite_synchronous"):
        make_engine("sqlite://", sqlite_synchronous="SOMETIMES")


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'w.db'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL
    assert current_revision(engine) is None
    engine.dispose()


def test_migrations_ship_in_the_wheel() -> None:
    # every file Alembic needs at run time matches a package-data pattern of pyproject.toml
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    base = ROOT / "src" / "hrlm" / "store"
    needed = [p for p in MIGRATIONS.rglob("*") if p.suffix in (".py", ".mako") and "__pycache__" not in p.parts]
    assert len(needed) >= 3
    patterns = data.get("hrlm.store", [])
    for path in needed:
        rel = path.relative_to(base).as_posix()
        assert any(fnmatch.fnmatch(rel, pat) for pat in patterns), f"{rel} is not package data"


def test_the_audit_log_is_append_only(db_url: str) -> None:
    from sqlalchemy import delete, update
    from sqlalchemy.exc import DBAPIError

    engine = make_engine(db_url)
    try:
        upgrade(engine)
        create_user(engine, "ana", "admin")
        for change in (update(audit_log).values(actor="someone else"), delete(audit_log)):
            with pytest.raises(DBAPIError, match="append-only"), engine.begin() as conn:
                conn.execute(change)
        with engine.connect() as conn:
            assert [r.actor for r in conn.execute(select(audit_log))] == ["cli"]
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", ["ana\x00", "\ud800ana"])
def test_user_names_no_database_stores_are_refused_the_same_on_every_database(db_url: str, name: str) -> None:
    engine = make_engine(db_url)
    try:
        upgrade(engine)
        with pytest.raises(DataError, match=r"^user name holds a (NUL character|lone surrogate)"):
            create_user(engine, name, "client")
        with pytest.raises(ConfigError, match="not valid"):
            create_user(engine, "ana\n", "client")  # a trailing newline is not part of a name either
        assert list_users(engine) == []
    finally:
        engine.dispose()


def test_job_parameters_no_database_stores_are_refused_and_nothing_is_queued(db_url: str) -> None:
    from hrlm.lifecycle.jobs import JobStore

    engine = make_engine(db_url)
    try:
        upgrade(engine)
        store = JobStore(engine)
        with pytest.raises(DataError, match=r"^params\.base holds a NUL character \(U\+0000\) at position 1"):
            store.create("retrain", actor="admin", runner="cli", params={"base": "v\x00"})
        with pytest.raises(DataError, match=r"^params\.files\[1\] holds a lone surrogate \(U\+DC00"):
            store.create("retrain", actor="admin", runner="cli", params={"files": ["a.csv", "\udc00.csv"]})
        with pytest.raises(DataError, match=r"^params key holds a NUL"):
            store.create("retrain", actor="admin", runner="cli", params={"\x00": 1})
        assert store.recent() == []
        job = store.create("retrain", actor="admin", runner="cli", params={"base": "v1", "margin": 0.01})
        assert store.get(job["id"])["params"] == {"base": "v1", "margin": 0.01}
    finally:
        engine.dispose()


def test_model_notes_and_reasons_no_database_stores_are_refused(
    db_url: str, trained_model: Path, tmp_path: Path
) -> None:
    from hrlm.lifecycle.registry import Registry

    engine = make_engine(db_url)
    try:
        upgrade(engine)
        registry = Registry(engine, tmp_path / "registry")
        with pytest.raises(DataError, match=r"^note holds a NUL character"):
            registry.register(trained_model, actor="admin", note="first \x00")
        with pytest.raises(DataError, match=r"^reason holds a lone surrogate"):
            registry.register(trained_model, actor="admin", reason="\ud800")
        assert registry.versions() == []
        version = registry.register(trained_model, actor="admin", note="first").version
        for refused in (
            lambda: registry.promote(version, "admin", reason="ok\x00"),
            lambda: registry.reject(version, "admin", reason="ok\x00"),
            lambda: registry.archive(version, "admin", reason="ok\x00"),
            lambda: registry.rollback("admin", reason="ok\x00"),
        ):
            with pytest.raises(DataError, match=r"^reason holds a NUL character \(U\+0000\) at position 2"):
                refused()
        with pytest.raises(DataError, match=r"^note holds a lone surrogate"):
            registry.annotate(version, "admin", note="\udfff")
        info = registry.get(version)
        assert (info.stage, info.note) == ("candidate", "first")
        assert [e.action for e in registry.history(version)] == ["register"]
    finally:
        engine.dispose()
