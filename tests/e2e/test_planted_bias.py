"""Must show (issue 16): a candidate with a planted bias is stopped at the promotion gate, through the service.

Production is a tiny model trained on fair tickets where "she" and "he" write about payroll, leave and IT
alike. An admin asks the running service for a retrain (POST /v1/retrain) whose training data has the
women's payroll tickets relabelled as leave. The candidate learns it (its audit's impact ratio for women
is far under 0.8), wins on F1 under margin -1 all the same, and the gate rejects it for the audit:
gate.md names the impact ratio, and production and the served model stay as they were.
"""

from __future__ import annotations

import json
from pathlib import Path

from hrlm.lifecycle.registry import Registry
from hrlm.store import make_engine
from tests.lifecycle.test_audit_gate import POSITIVE, build_planted
from tests.service.conftest import add_users, bearer
from tests.service.test_jobs import loop_settings, registry_app, wait_for


def test_a_candidate_with_a_planted_bias_is_stopped_at_the_gate_through_the_service(tmp_path: Path) -> None:
    planted = build_planted(tmp_path / "planted")
    url = f"sqlite:///{tmp_path / 'hrlm.db'}"
    tokens = add_users(url)
    engine = make_engine(url)
    registry = Registry(engine, tmp_path / "registry")
    before = registry.register(planted.production, actor="admin", stage="production")
    settings = loop_settings(
        url,
        tmp_path,
        planted.biased,  # the training data with one group's positive labels flipped
        holdout_data=str(planted.holdout),
        audit_data=str(planted.audit),
        audit_group_cols=["sex"],
        audit_positive=POSITIVE,
    )
    with registry_app(settings) as client:
        r = client.post("/v1/retrain", json={"margin": -1}, headers=bearer(tokens.admin))
        assert r.status_code == 202, r.text
        job = wait_for(client, tokens.admin, r.json()["id"], ("succeeded", "failed"), timeout=120)
        assert job["state"] == "succeeded", job["error"]
        result = job["result"]
        assert result["decision"] == "rejected" and result["production"] == before.version
        assert client.get("/readyz").json()["model_version"] == before.version  # still serving production

    candidate = registry.get(result["candidate"])
    assert candidate.stage == "rejected" and registry.production() == registry.get(before.version)
    # the candidate really learned the bias: women are rarely predicted payroll any more
    audit = json.loads((candidate.path / "report" / "audit.json").read_text())
    women = {c["category"]: c for c in audit["groupings"][0]["categories"]}["F"]
    assert audit["min_impact_ratio"] < 0.5 and women["flagged"] and not audit["passed"]
    assert result["gate"]["fixed_holdout"]["passed"]  # F1 alone would have promoted it
    gate_md = (candidate.path / "report" / "gate.md").read_text()
    assert "# Promotion gate: reject" in gate_md
    assert f"failed the bias audit: sex: impact ratio {audit['min_impact_ratio']:.3f} of 'F'" in gate_md
    assert "| production | True |" in gate_md  # production's audit beside it
    engine.dispose()
