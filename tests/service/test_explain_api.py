"""Explanations through the service: "explain": true on /v1/predict, and a review item's evidence."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from tests.service.conftest import QUEUE_ALL, Tokens, bearer, running


def test_predict_explains_each_label_on_request(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, explain_max_texts=2) as client:
        plain = client.post("/v1/predict", json={"text": "salary payslip overtime"}, headers=bearer(tokens.client))
        assert "explanation" not in plain.json()["prediction"]
        r = client.post(
            "/v1/predict",
            json={"texts": ["salary payslip overtime", "vpn login locked"], "explain": True},
            headers=bearer(tokens.client),
        )
        assert r.status_code == 200, r.text
        for pred in r.json()["predictions"]:
            e = pred["explanation"]
            assert e["label"] == pred["label"]
            assert [w["text"] for w in e["words"]] == e["text"].split()
            total = sum(w["score"] for w in e["words"])
            assert abs(total - e["delta"] + e["baseline_logit"] - e["logit"]) < 1e-3
            assert max(e["words"], key=lambda w: w["score"])["score"] > 0
        too_many = {"texts": ["tax", "vpn", "sick"], "explain": True}
        r = client.post("/v1/predict", json=too_many, headers=bearer(tokens.client))
        assert r.status_code == 422 and "explain_max_texts" in r.text


def test_a_review_item_is_explained_for_any_label_and_cached(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, **QUEUE_ALL) as client:
        # PostgreSQL fills leave predictions younger than settle_s for later; fill at once here
        client.app.state.service.filler.policy = dataclasses.replace(
            client.app.state.service.filler.policy, settle_s=0.0
        )
        client.post("/v1/predict", json={"text": "vacation sick holiday days off"}, headers=bearer(tokens.client))
        assert client.post("/v1/review/fill", headers=bearer(tokens.admin)).status_code == 200
        item: dict[str, Any] = client.get("/v1/review/next", headers=bearer(tokens.reviewer)).json()["item"]
        url = f"/v1/review/items/{item['id']}/explain"
        first = client.get(url, headers=bearer(tokens.reviewer))
        assert first.status_code == 200, first.text
        body = first.json()
        assert body["explanation"]["label"] == item["suggestion"] == "leave"
        again = client.get(url, headers=bearer(tokens.reviewer)).json()
        assert again == body  # cached: the same attributions, the same time taken
        other = client.get(url, params={"label": "payroll"}, headers=bearer(tokens.reviewer)).json()["explanation"]
        assert other["label"] == "payroll"
        assert sum(w["score"] for w in other["words"]) < sum(w["score"] for w in body["explanation"]["words"])
        assert client.get(url, params={"label": "pension"}, headers=bearer(tokens.reviewer)).status_code == 422
        assert client.get("/v1/review/items/999999/explain", headers=bearer(tokens.reviewer)).status_code == 404
        assert client.get(url, headers=bearer(tokens.client)).status_code == 403
