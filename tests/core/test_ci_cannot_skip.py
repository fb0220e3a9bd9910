"""A test that needs PostgreSQL, Redis, Ray or ../shared/data skips on a laptop without it, and fails in CI."""

from __future__ import annotations

import pytest

from tests.conftest import postgres_test_url, unavailable


def test_a_missing_service_skips_unless_required(monkeypatch: pytest.MonkeyPatch) -> None:
    for need in ("postgres", "redis", "ray", "data"):
        variable = f"HRLM_REQUIRE_{need.upper()}"
        monkeypatch.delenv(variable, raising=False)
        with pytest.raises(pytest.skip.Exception, match=f"it is gone; CI runs these tests \\({variable}=1\\)"):
            unavailable(need, "it is gone")
        monkeypatch.setenv(variable, "1")
        with pytest.raises(pytest.fail.Exception, match=f"it is gone; {variable}=1 makes this a failure, not a skip"):
            unavailable(need, "it is gone")


def test_the_postgres_of_the_tests_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRLM_TEST_POSTGRES_URL", raising=False)
    monkeypatch.delenv("HRLM_DATABASE_URL", raising=False)
    assert postgres_test_url() == "postgresql://postgres@127.0.0.1:5432/test"
    monkeypatch.setenv("HRLM_DATABASE_URL", "sqlite:///hrlm.db")  # not PostgreSQL: the default stays
    assert postgres_test_url() == "postgresql://postgres@127.0.0.1:5432/test"
    monkeypatch.setenv("HRLM_DATABASE_URL", "postgresql://hr@db.internal:5999/hr")
    assert postgres_test_url() == "postgresql://hr@db.internal:5999/hr"
    monkeypatch.setenv("HRLM_TEST_POSTGRES_URL", "postgresql+psycopg://ci@127.0.0.1/test")
    assert postgres_test_url() == "postgresql+psycopg://ci@127.0.0.1/test"
