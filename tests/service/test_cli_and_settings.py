"""`hrlm users`, `hrlm db upgrade`, `hrlm serve`'s checks before it starts, and the service settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from hrlm.cli import app
from hrlm.errors import ConfigError
from hrlm.service.settings import ServiceSettings
from hrlm.store import authenticate, make_engine

runner = CliRunner()


def test_users_add_list_revoke(db_url: str) -> None:
    url = ["--database-url", db_url]
    r = runner.invoke(app, ["users", "add", "hris-bot", "--role", "client", *url])
    assert r.exit_code == 0, r.output
    token = r.stdout.strip().splitlines()[-1]
    assert token.startswith("hrlm_") and " " not in token  # the token alone on the last line
    engine = make_engine(db_url)
    assert authenticate(engine, token) is not None
    r = runner.invoke(app, ["users", "list", *url])
    assert r.exit_code == 0 and "hris-bot" in r.stdout and "client" in r.stdout and token not in r.stdout
    r = runner.invoke(app, ["users", "revoke", "hris-bot", *url])
    assert r.exit_code == 0 and "revoked user hris-bot (1 token)" in r.stdout
    assert authenticate(engine, token) is None
    engine.dispose()
    r = runner.invoke(app, ["users", "revoke", "hris-bot-2", *url])
    assert r.exit_code == 1 and "no user named 'hris-bot-2'" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["users", "add", "x", "--role", "root", *url])
    assert r.exit_code == 1 and "choose one of client, reviewer, admin" in r.output


def test_db_upgrade(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'hrlm.db'}"
    (tmp_path / "sub").mkdir()  # a missing folder is an error, not created (tests/cli/test_cli.py)
    r = runner.invoke(app, ["db", "upgrade", "--database-url", url])
    assert r.exit_code == 0 and "at revision 0006 (head)" in r.stdout
    assert (tmp_path / "sub" / "hrlm.db").exists()


def test_serve_checks_before_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HRLM_MODEL", raising=False)
    r = runner.invoke(app, ["serve"])
    assert r.exit_code == 1 and "pass --model DIR" in r.output
    r = runner.invoke(app, ["serve", "--model", str(tmp_path / "nope")])
    assert r.exit_code == 1 and "not found" in r.output and "Traceback" not in r.output
    cfg = tmp_path / "serve.toml"
    cfg.write_text("[serve]\nmax_batchs = 3\n")
    r = runner.invoke(app, ["serve", "--config", str(cfg)])
    assert r.exit_code == 1 and "unknown [serve] setting(s) ['max_batchs']" in r.output
    r = runner.invoke(app, ["serve", "--max-batch", "0"])
    assert r.exit_code == 1 and "max_batch = 0" in r.output


def test_settings_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "hrlm.toml"
    cfg.write_text('[serve]\nmax_batch = 9\nmax_texts = 5\nport = 9000\ndatabase_url = "sqlite:///toml.db"\n')
    monkeypatch.setenv("HRLM_MAX_BATCH", "7")
    monkeypatch.setenv("HRLM_CORS_ORIGINS", '["https://hris.example.com"]')
    s = ServiceSettings.load(cfg, port=8123)
    # defaults < TOML < environment < flags
    assert (s.max_batch, s.max_texts, s.port, s.database_url) == (7, 5, 8123, "sqlite:///toml.db")
    assert s.cors_origins == ["https://hris.example.com"] and s.host == "127.0.0.1"
    monkeypatch.setenv("HRLM_RATE_LIMIT", "-1")
    with pytest.raises(ConfigError, match=r"rate_limit = '-1'.*HRLM_RATE_LIMIT"):
        ServiceSettings.load()
    with pytest.raises(ConfigError, match="backend"):
        ServiceSettings.load(backend="tpu")
