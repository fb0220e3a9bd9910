"""POST /v1/audit: a bias audit of the served model on uploaded rows, a CSV table, or reviewed items with groups."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from hrlm.store import make_engine
from hrlm.store.tables import audit_log, review_items
from tests.conftest import make_texts
from tests.lifecycle.test_retrain import FEEDBACK, add_feedback
from tests.service.conftest import Tokens, bearer


def fair_rows() -> list[dict[str, str]]:
    rows = make_texts(4, seed=7)
    return [{"text": t, "team": team} for t, _ in rows for team in ("a", "b")]


def test_admin_audits_uploaded_rows_and_the_log_records_it(client: Any, tokens: Tokens, db_url: str) -> None:
    body = {"group_cols": ["team"], "positive": "payroll", "rows": fair_rows()}
    assert client.post("/v1/audit", json=body, headers=bearer(tokens.reviewer)).status_code == 403
    r = client.post("/v1/audit", json=body, headers=bearer(tokens.admin))
    assert r.status_code == 200, r.text
    audit = r.json()
    assert audit["passed"] and audit["min_impact_ratio"] == 1.0 and audit["n"] == 24
    version = audit["model"]["name"]
    assert version.startswith("tiny") and audit["data_source"] == "a table uploaded to the service"
    assert [c["count"] for c in audit["groupings"][0]["categories"]] == [12, 12]
    engine = make_engine(db_url)
    with engine.connect() as conn:
        row = conn.execute(select(audit_log).where(audit_log.c.action == "fairness.audit")).one()
    engine.dispose()
    assert (row.actor, row.target) == ("admin", version)
    assert row.detail["passed"] is True and row.detail["group_cols"] == ["team"]


def test_a_csv_table_with_a_skewed_group_fails_the_audit(client: Any, tokens: Tokens) -> None:
    lines = ["text,team"] + [f"{t},{'a' if lab == 'payroll' else 'b'}" for t, lab in make_texts(4, seed=7)]
    body = {"group_cols": ["team"], "positive": "payroll", "table": "\n".join(lines), "counterfactual": False}
    audit = client.post("/v1/audit", json=body, headers=bearer(tokens.admin)).json()
    assert audit["passed"] is False and audit["min_impact_ratio"] < 0.8
    assert audit["reasons"][0].startswith("team: impact ratio") and audit["counterfactual"] is None


def test_reviewed_items_are_joined_with_an_uploaded_group_table(client: Any, tokens: Tokens, db_url: str) -> None:
    engine = make_engine(db_url)
    add_feedback(engine, FEEDBACK)
    with engine.connect() as conn:
        ids = [i for (i,) in conn.execute(select(review_items.c.id).order_by(review_items.c.id))]
    engine.dispose()
    table = "item_id,team\n" + "\n".join(f"{i},{'a' if k % 2 else 'b'}" for k, i in enumerate(ids)) + "\n999999,a\n"
    body = {"source": "review", "group_cols": ["team"], "positive": "payroll", "table": table}
    r = client.post("/v1/audit", json=body, headers=bearer(tokens.admin))
    assert r.status_code == 200, r.text
    audit = r.json()
    assert audit["n"] == len(FEEDBACK) and audit["label_col"] == "reviewed_label"  # the unknown id is left out
    assert audit["overall"]["labelled"] == len(FEEDBACK) and "accuracy" in audit["overall"]
    assert "reviewed items joined" in audit["data_source"]


def test_bad_requests_name_what_to_fix(client: Any, tokens: Tokens) -> None:
    admin = bearer(tokens.admin)
    rows = fair_rows()
    r = client.post("/v1/audit", json={"group_cols": ["sex"], "positive": "payroll", "rows": rows}, headers=admin)
    assert r.status_code == 422 and "column 'sex' not found" in r.json()["detail"]
    r = client.post("/v1/audit", json={"group_cols": ["team"], "positive": "hire", "rows": rows}, headers=admin)
    assert r.status_code == 422 and "'hire' is not a label of the model" in r.json()["detail"]
    both = {"group_cols": ["team"], "positive": "payroll", "rows": rows, "table": "text,team\n"}
    assert client.post("/v1/audit", json=both, headers=admin).status_code == 422
    r = client.post("/v1/audit", json={**both, "rows": None, "source": "review"}, headers=admin)
    assert r.status_code == 422 and "column 'item_id' not found in the uploaded table" in r.json()["detail"]
    missing = {"group_cols": ["team"], "positive": "payroll", "rows": rows, "version": "nope"}
    assert client.post("/v1/audit", json=missing, headers=admin).status_code == 404
