"""The service and the model registry: serving production, promote and rollback routes, following
changes made by another process, report files, and the answers without a registry."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from typer.testing import CliRunner

from hrlm.cli import app as cli_app
from hrlm.errors import ConfigError
from hrlm.lifecycle.registry import Registry
from hrlm.service import ServiceSettings, create_app
from hrlm.store import make_engine
from hrlm.store.tables import audit_log
from tests.service.conftest import Tokens, bearer


def variant(model: Path, folder: Path, tag: str) -> Path:
    shutil.copytree(model, folder)
    meta = json.loads((folder / "hrlm.json").read_text())
    meta["extra"] = {**meta.get("extra", {}), "tag": tag}
    (folder / "hrlm.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture
def registry(db_url: str, tokens: Tokens, tmp_path: Path) -> Iterator[Registry]:
    engine = make_engine(db_url)  # migrated by the tokens fixture
    yield Registry(engine, tmp_path / "registry")
    engine.dispose()


@pytest.fixture
def two(registry: Registry, trained_model: Path, tmp_path: Path) -> tuple[str, str]:
    """Version a in production, b a candidate."""
    a = registry.register(variant(trained_model, tmp_path / "src" / "router", "a"), actor="ana", stage="production")
    b = registry.register(variant(trained_model, tmp_path / "src" / "router-b", "b"), actor="ana")
    return a.version, b.version


@pytest.fixture
def served(db_url: str, registry: Registry, two: tuple[str, str]) -> Iterator[TestClient]:
    settings = ServiceSettings(database_url=db_url, registry_dir=str(registry.root), registry_poll_s=0.1)
    with TestClient(create_app(settings)) as client:
        yield client


def serving(client: TestClient, tokens: Tokens) -> str:
    r = client.post("/v1/predict", json={"text": "my payslip"}, headers=bearer(tokens.client))
    assert r.status_code == 200, r.text
    version: str = r.json()["model_version"]
    return version


def test_promote_and_rollback_through_the_api(
    served: TestClient, tokens: Tokens, two: tuple[str, str], registry: Registry
) -> None:
    a, b = two
    models = served.get("/v1/models", headers=bearer(tokens.reviewer)).json()
    assert models["serving"] == a and {m["version"]: m["stage"] for m in models["models"]} == {
        a: "production",
        b: "candidate",
    }
    assert serving(served, tokens) == a
    r = served.post(f"/v1/models/{b}/promote", json={"reason": "better"}, headers=bearer(tokens.reviewer))
    assert r.status_code == 403
    r = served.post(f"/v1/models/{b}/promote", json={"reason": "better"}, headers=bearer(tokens.admin))
    assert r.status_code == 200, r.text
    assert r.json() == {"version": b, "stage": "production", "serving": b}
    assert serving(served, tokens) == b  # swapped at once, no poll needed
    r = served.post(f"/v1/models/{b}/promote", headers=bearer(tokens.admin))
    assert r.status_code == 409 and r.json()["error"] == "Conflict" and "already" in r.json()["detail"]
    r = served.post("/v1/models/ghost/promote", headers=bearer(tokens.admin))
    assert r.status_code == 404 and "'ghost'; GET /v1/models lists them" in r.json()["detail"]
    # a long name is quoted by its start only; a name no version could have is refused before the database
    r = served.get(f"/v1/models/{'g' * 150}/history", headers=bearer(tokens.admin))
    assert r.status_code == 404 and "g" * 40 + "…" in r.json()["detail"] and "g" * 41 not in r.text
    r = served.get("/v1/models/a%00b/history", headers=bearer(tokens.admin))
    assert r.status_code == 422 and "version" in r.json()["detail"]
    r = served.post(f"/v1/models/{a}/promote", json={"reason": "x" * 1001}, headers=bearer(tokens.admin))
    assert r.status_code == 422 and "reason" in r.json()["detail"]
    r = served.post("/v1/models/rollback", json={"reason": "misroutes payroll"}, headers=bearer(tokens.admin))
    assert r.status_code == 200 and r.json()["serving"] == a and r.json()["version"] == a
    r = served.post("/v1/models/rollback", headers=bearer(tokens.admin))
    assert r.status_code == 409 and "no earlier production version" in r.json()["detail"]
    with registry.engine.connect() as conn:
        rows = conn.execute(select(audit_log.c.action, audit_log.c.actor, audit_log.c.target)).all()
    assert ("model.promote", "admin", b) in rows and ("model.rollback", "admin", a) in rows


def test_the_service_follows_changes_made_elsewhere(
    served: TestClient, tokens: Tokens, two: tuple[str, str], registry: Registry
) -> None:
    a, b = two
    registry.promote(b, "cli:ana", "from the CLI")  # as `hrlm models promote` in another process would
    deadline = time.monotonic() + 10
    while serving(served, tokens) != b:
        assert time.monotonic() < deadline, "the service did not follow the promotion"
        time.sleep(0.05)
    swaps = served.app.state.service.metrics.registry.get_sample_value("hrlm_model_swaps_total")  # type: ignore[attr-defined]
    assert swaps == 1
    registry.rollback("cli:ana")
    deadline = time.monotonic() + 10
    while serving(served, tokens) != a:
        assert time.monotonic() < deadline, "the service did not follow the rollback"
        time.sleep(0.05)


def test_history_and_report_files(served: TestClient, tokens: Tokens, two: tuple[str, str], registry: Registry) -> None:
    a, b = two
    registry.add_report(b, "gate.md", "# gate\nthe candidate loses by 0.02\n")
    registry.reject(b, "gate", "loses on the holdout", gate={"candidate": 0.8, "production": 0.82})
    r = served.get(f"/v1/models/{b}/history", headers=bearer(tokens.reviewer))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["stage"] == "rejected" and body["gate"] == {"candidate": 0.8, "production": 0.82}
    assert [(e["action"], e["to_stage"]) for e in body["events"]] == [("register", "candidate"), ("reject", "rejected")]
    assert "gate.md" in body["reports"] and "report.html" in body["reports"]
    r = served.get(f"/v1/models/{b}/report", headers=bearer(tokens.admin))
    assert r.status_code == 200 and r.json()["reports"] == body["reports"]
    r = served.get(f"/v1/models/{b}/report/gate.md", headers=bearer(tokens.reviewer))
    assert r.status_code == 200 and "loses by 0.02" in r.text
    assert "sandbox" in r.headers["content-security-policy"] and r.headers["x-content-type-options"] == "nosniff"
    r = served.get(f"/v1/models/{a}/report/report.html", headers=bearer(tokens.reviewer))
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html") and "<html" in r.text.lower()
    for bad in ("..%2Fhrlm.json", "%2E%2E/hrlm.json", "%2Fetc%2Fpasswd", "nope.html"):
        r = served.get(f"/v1/models/{a}/report/{bad}", headers=bearer(tokens.admin))
        assert r.status_code == 404, (bad, r.text)
        assert "hrlm.json" not in r.text or "no report file" in r.json()["detail"]
    assert served.get(f"/v1/models/{a}/report/report.html", headers=bearer(tokens.client)).status_code == 403
    assert served.get(f"/v1/models/{a}/report/report.html").status_code == 401
    r = served.post(f"/v1/models/{b}/promote", json={"force": True}, headers=bearer(tokens.admin))
    assert r.status_code == 200 and r.json()["serving"] == b


def test_a_plain_model_folder_has_no_promotion(client: Any, tokens: Tokens) -> None:
    r = client.post("/v1/models/x/promote", headers=bearer(tokens.admin))
    assert r.status_code == 409 and "--model" in r.json()["detail"] and "hrlm models register" in r.json()["detail"]
    r = client.post("/v1/models/rollback", headers=bearer(tokens.admin))
    assert r.status_code == 409
    serving_version = client.get("/v1/models", headers=bearer(tokens.admin)).json()["serving"]
    r = client.get(f"/v1/models/{serving_version}/report/metrics.json", headers=bearer(tokens.reviewer))
    assert r.status_code == 200 and "macro_f1" in r.json()


def test_an_empty_registry_is_a_clear_error(db_url: str, tokens: Tokens, tmp_path: Path) -> None:
    settings = ServiceSettings(database_url=db_url, registry_dir=str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=r"has no production version.*hrlm models register DIR --promote"):  # noqa: SIM117
        with TestClient(create_app(settings)):
            pass
    r = CliRunner().invoke(
        cli_app, ["serve", "--database-url", db_url, "--registry-dir", str(tmp_path / "empty"), "--port", "0"]
    )
    assert r.exit_code == 1 and "hrlm models register DIR --promote" in r.output and "Traceback" not in r.output
