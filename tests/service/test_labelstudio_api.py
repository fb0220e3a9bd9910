"""hrlm as a Label Studio ML backend, called as Label Studio calls it (payloads of label-studio 1.23).

The test against a real Label Studio server is tests/e2e/test_labelstudio.py (marker labelstudio).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.service.conftest import Tokens, bearer, running

CONFIG = """<View>
  <Text name="text" value="$ticket"/>
  <Choices name="category" toName="text" choice="single">
    <Choice value="payroll"/><Choice value="leave"/><Choice value="it"/>
  </Choices>
</View>"""
PROJECT = {"id": 7, "label_config": CONFIG}


def basic(token: str, user: str = "labelstudio") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


@pytest.fixture
def ls(trained_model: Path, db_url: str, tokens: Tokens) -> Iterator[Any]:
    with running(trained_model, db_url, review_fill_s=0, review_holdout_fraction=0.0) as c:
        yield c


def annotation_event(action: str, annotation_id: int, label: str, text: str, *, cancelled: bool = False) -> dict:
    return {
        "action": action,
        "project": PROJECT,
        "task": {"id": 100 + annotation_id, "data": {"ticket": text}},
        "annotation": {
            "id": annotation_id,
            "completed_by": {"id": 3, "email": "ana@example.org"},
            "was_cancelled": cancelled,
            "result": [{"from_name": "category", "to_name": "text", "type": "choices", "value": {"choices": [label]}}],
        },
    }


def feedback(engine_url: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from hrlm.store import make_engine
    from hrlm.store.tables import review_feedback

    engine = make_engine(engine_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(review_feedback).order_by(review_feedback.c.id)).mappings()]
    finally:
        engine.dispose()


def test_basic_credentials_are_taken_only_on_label_studio_routes(ls: Any, tokens: Tokens) -> None:
    health = ls.get("/labelstudio/health", headers=basic(tokens.reviewer))
    assert health.status_code == 200 and health.json()["status"] == "UP"
    assert health.json()["model_version"]
    assert ls.get("/labelstudio/health", headers=bearer(tokens.admin)).status_code == 200
    assert ls.get("/labelstudio/health", headers=basic("hrlm_notatoken")).status_code == 401
    assert ls.get("/labelstudio/health", headers={"Authorization": "Basic %%%"}).status_code == 401
    # a client token may predict through /v1, not label
    assert ls.get("/labelstudio/health", headers=basic(tokens.client)).status_code == 403
    # everywhere else a bearer token stays the only way in
    r = ls.post("/v1/predict", json={"texts": ["my salary is late"]}, headers=basic(tokens.admin))
    assert r.status_code == 401


def test_setup_checks_the_labelling_config(ls: Any, tokens: Tokens) -> None:
    r = ls.post(
        "/labelstudio/setup", json={"project": "7.1700000000", "schema": CONFIG}, headers=basic(tokens.reviewer)
    )
    assert (
        r.status_code == 200
        and r.json()["model_version"]
        == ls.get("/labelstudio/health", headers=basic(tokens.reviewer)).json()["model_version"]
    )
    wrong = CONFIG.replace('"payroll"', '"x"').replace('"leave"', '"y"').replace('"it"', '"z"')
    r = ls.post("/labelstudio/setup", json={"project": "7.1", "schema": wrong}, headers=basic(tokens.reviewer))
    assert r.status_code == 422 and "none of the labelling config's choices" in r.json()["detail"]
    r = ls.post("/labelstudio/setup", json={"project": "7.1", "schema": "<View><Text"}, headers=basic(tokens.reviewer))
    assert r.status_code == 422 and "not well-formed" in r.json()["detail"]


def test_predict_answers_in_label_studios_format_and_stores_nothing(ls: Any, tokens: Tokens, db_url: str) -> None:
    tasks = [
        {"id": 1, "data": {"ticket": "salary payslip overtime tax paid"}},
        {"id": 2, "data": {"ticket": "vpn password login locked laptop"}},
    ]
    body = {"tasks": tasks, "project": "7.1700000000", "label_config": CONFIG, "params": {"context": None}}
    r = ls.post("/labelstudio/predict", json=body, headers=basic(tokens.reviewer))
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [res["result"][0]["value"]["choices"] for res in results] == [["payroll"], ["it"]]
    assert all(res["result"][0]["from_name"] == "category" and res["result"][0]["to_name"] == "text" for res in results)
    assert all(0 < res["score"] <= 1 and res["model_version"] for res in results)
    # labelling traffic is not the clients' traffic: no prediction stored
    stats = ls.get("/v1/review/stats", headers=bearer(tokens.admin)).json()
    assert stats["fill"]["scanned"] == 0
    r = ls.post("/labelstudio/predict", json={**body, "tasks": [{"id": 3, "data": {}}]}, headers=basic(tokens.reviewer))
    assert r.status_code == 422 and "data.ticket" in r.json()["detail"]


def test_annotations_become_answers_updated_and_withdrawn(ls: Any, tokens: Tokens, db_url: str) -> None:
    from hrlm.review import labelled_examples
    from hrlm.store import make_engine

    text = "my salary went to the wrong account, call 555-123-4567"
    r = ls.post(
        "/labelstudio/webhook",
        json=annotation_event("ANNOTATION_CREATED", 31, "it", text),
        headers=basic(tokens.reviewer),
    )
    assert r.status_code == 201, r.text
    first = r.json()["result"][0]
    assert first["status"] == "recorded" and first["label"] == "it" and first["replaced"] == 0
    r = ls.post(
        "/labelstudio/webhook",
        json=annotation_event("ANNOTATION_UPDATED", 31, "payroll", text),
        headers=basic(tokens.reviewer),
    )
    assert r.json()["result"][0]["replaced"] == 1
    engine = make_engine(db_url)
    try:
        examples = labelled_examples(engine, holdout=False)
        assert len(examples) == 1 and examples[0][1] == "payroll"
        assert "555-123-4567" not in examples[0][0]  # redacted as store_text = redacted says
        rows = feedback(db_url)
        assert [r["label"] for r in rows] == ["it", "payroll"]
        assert rows[0]["withdrawn_at"] is not None and rows[1]["withdrawn_at"] is None
        assert {r["source"] for r in rows} == {"labelstudio"} and rows[1]["external_id"] == "7:annotation:31"
        assert rows[1]["reviewer"] == "labelstudio:ana@example.org"
        deleted = {"action": "ANNOTATIONS_DELETED", "project": PROJECT, "annotations": [{"id": 31}]}
        r = ls.post("/labelstudio/webhook", json=deleted, headers=basic(tokens.reviewer))
        assert r.status_code == 201 and r.json()["result"]["withdrawn"] == 1
        assert labelled_examples(engine, holdout=False) == []
    finally:
        engine.dispose()
    log = ls.get("/v1/review/stats", headers=bearer(tokens.admin))
    assert log.status_code == 200


def test_an_unknown_label_or_a_skipped_annotation(ls: Any, tokens: Tokens, db_url: str) -> None:
    r = ls.post(
        "/labelstudio/webhook",
        json=annotation_event("ANNOTATION_CREATED", 5, "pension", "tax"),
        headers=basic(tokens.reviewer),
    )
    assert r.status_code == 422 and "pension" in r.json()["detail"]
    skipped = annotation_event("ANNOTATION_CREATED", 6, "it", "vpn", cancelled=True)
    r = ls.post("/labelstudio/webhook", json=skipped, headers=basic(tokens.reviewer))
    assert r.json()["result"][0]["status"] == "skipped"
    r = ls.post(
        "/labelstudio/webhook", json={"action": "PROJECT_UPDATED", "project": PROJECT}, headers=basic(tokens.reviewer)
    )
    assert r.status_code == 201 and r.json()["status"] == "Unknown event"
    assert feedback(db_url) == []


def test_start_training_queues_a_retrain_for_admins_only(ls: Any, tokens: Tokens) -> None:
    event = {"action": "START_TRAINING", "project": PROJECT}
    r = ls.post("/labelstudio/webhook", json=event, headers=basic(tokens.reviewer))
    assert r.status_code == 403 and "admin" in r.json()["detail"]
    r = ls.post("/labelstudio/webhook", json=event, headers=basic(tokens.admin))
    assert r.status_code == 201, r.text
    job_id = r.json()["result"]["job_id"]
    job = ls.get(f"/v1/jobs/{job_id}", headers=bearer(tokens.admin)).json()
    assert job["kind"] == "retrain" and job["actor"] == "labelstudio:admin"
