"""Fixtures of the service tests: users of each role, running apps. The database fixtures are in tests/conftest.py."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# service settings that queue every prediction for review at once (no background fill, no random share)
QUEUE_ALL = {
    "review_fill_s": 0,
    "review_confidence_below": 1.0,
    "review_random_fraction": 0.0,
    "review_double_fraction": 0.0,
    "review_holdout_fraction": 0.0,
}


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
