"""Fixtures of the service tests: a database per test (SQLite file, or a fresh PostgreSQL schema), users, apps."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PG_URL = os.environ.get("HRLM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def _pg_admin() -> Any:
    import psycopg

    try:
        return psycopg.connect(
            PG_URL.replace("postgresql+psycopg://", "postgresql://"), autocommit=True, connect_timeout=3
        )
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {PG_URL} is unreachable ({str(exc).strip().splitlines()[0]}); CI runs these tests")


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    """A URL whose connections live in a new schema of the test database, dropped afterwards."""
    schema = f"hrlm_test_{uuid.uuid4().hex[:12]}"
    conn = _pg_admin()
    conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        conn.execute(f'DROP SCHEMA "{schema}" CASCADE')
        conn.close()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated-nothing database URL: a SQLite file, or (marked postgres) a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'hrlm.db'}"
    else:
        with pg_schema() as url:
            yield url


@dataclass
class Tokens:
    client: str
    reviewer: str
    admin: str


def add_users(url: str) -> Tokens:
    """Migrate the database at ``url`` and add one user of each role."""
    from hrlm.store import create_user, make_engine, upgrade

    engine = make_engine(url)
    try:
        upgrade(engine)
        return Tokens(*(create_user(engine, role, role) for role in ("client", "reviewer", "admin")))
    finally:
        engine.dispose()


@pytest.fixture
def tokens(db_url: str) -> Tokens:
    return add_users(db_url)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@contextlib.contextmanager
def running(model: Path, db_url: str, **settings: Any) -> Iterator[Any]:
    """A TestClient of an app serving ``model`` on ``db_url`` (lifespan started)."""
    from fastapi.testclient import TestClient

    from hrlm.service import ServiceSettings, create_app

    app = create_app(ServiceSettings(model=str(model), database_url=db_url, **settings))
    with TestClient(app) as client:
        yield client


@pytest.fixture
def client(trained_model: Path, db_url: str, tokens: Tokens) -> Iterator[Any]:
    with running(trained_model, db_url) as c:
        yield c
