"""The review workbench's routes: find items, open one, undo an answer, reopen an item, the browse page."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from tests.service.conftest import QUEUE_ALL, Tokens, bearer, running


def test_find_open_undo_and_reopen(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, **QUEUE_ALL) as client:
        # PostgreSQL fills leave predictions younger than settle_s for later; fill at once here
        client.app.state.service.filler.policy = dataclasses.replace(
            client.app.state.service.filler.policy, settle_s=0.0
        )
        texts = ["salary payslip overtime missing", "vpn login locked again", "sick leave days off"]
        client.post("/v1/predict", json={"texts": texts}, headers=bearer(tokens.client))
        client.post("/v1/review/fill", headers=bearer(tokens.admin))
        found = client.get("/v1/review/items", params={"q": "vpn"}, headers=bearer(tokens.reviewer)).json()
        assert found["total"] == 1 and found["items"][0]["text"] == texts[1]
        item_id = found["items"][0]["id"]
        page = client.get("/v1/review/items", params={"limit": 2}, headers=bearer(tokens.reviewer)).json()
        assert len(page["items"]) == 2 and page["next_before"] is not None and page["total"] == 3
        rest = client.get(
            "/v1/review/items", params={"limit": 2, "before": page["next_before"]}, headers=bearer(tokens.reviewer)
        ).json()
        assert len(rest["items"]) == 1 and rest["next_before"] is None
        # answer it, take it back, answer again
        r = client.post(
            f"/v1/review/items/{item_id}", json={"action": "correct", "label": "leave"}, headers=bearer(tokens.reviewer)
        )
        assert r.status_code == 200, r.text
        undone = client.post(f"/v1/review/items/{item_id}/undo", headers=bearer(tokens.reviewer))
        assert undone.status_code == 200 and undone.json()["state"] == "open"
        assert client.get("/v1/review/next", headers=bearer(tokens.reviewer)).json()["item"]["id"] == item_id
        client.post(f"/v1/review/items/{item_id}", json={"action": "accept"}, headers=bearer(tokens.reviewer))
        detail = client.get(f"/v1/review/items/{item_id}", headers=bearer(tokens.reviewer)).json()
        assert [(a["label"], a["withdrawn_by"]) for a in detail["answers"]] == [("leave", "reviewer"), ("it", None)]
        done = client.get("/v1/review/items", params={"state": "done", "answer": "it"}, headers=bearer(tokens.admin))
        assert [i["id"] for i in done.json()["items"]] == [item_id]
        # only an admin reopens
        assert client.post(f"/v1/review/items/{item_id}/reopen", headers=bearer(tokens.reviewer)).status_code == 403
        r = client.post(
            f"/v1/review/items/{item_id}/reopen", json={"reason": "check again"}, headers=bearer(tokens.admin)
        )
        assert r.status_code == 200 and r.json()["withdrawn"] == 1
        assert client.post(f"/v1/review/items/{item_id}/undo", headers=bearer(tokens.reviewer)).status_code == 404
        assert client.get("/v1/review/items/999999", headers=bearer(tokens.reviewer)).status_code == 404
        assert (
            client.get("/v1/review/items", params={"state": "gone"}, headers=bearer(tokens.reviewer)).status_code == 422
        )
        assert client.get("/v1/review/items", headers=bearer(tokens.client)).status_code == 403
        page = client.get("/ui/browse")
        assert page.status_code == 200 and "browse.js" in page.text and "Content-Security-Policy" in page.headers


def test_alike_items_through_the_api(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url, **QUEUE_ALL) as client:
        client.app.state.service.filler.policy = dataclasses.replace(
            client.app.state.service.filler.policy, settle_s=0.0
        )
        texts = [
            "salary payslip overtime tax paid in march",
            "salary payslip overtime tax paid in april",
            "vpn login locked",
        ]
        client.post("/v1/predict", json={"texts": texts}, headers=bearer(tokens.client))
        client.post("/v1/review/fill", headers=bearer(tokens.admin))
        items = client.get("/v1/review/items", headers=bearer(tokens.reviewer)).json()["items"]
        by_text = {i["text"]: i["id"] for i in items}
        first = by_text[texts[0]]
        alike = client.get(f"/v1/review/items/{first}/similar", headers=bearer(tokens.reviewer)).json()
        assert [a["id"] for a in alike["items"]] == [by_text[texts[1]]] and alike["threshold"] == 0.5
        r = client.post(
            "/v1/review/bulk", json={"item_ids": [by_text[texts[1]]], "label": "leave"}, headers=bearer(tokens.reviewer)
        )
        assert r.status_code == 200 and r.json()["answered"] == 1 and r.json()["results"][0]["label"] == "leave"
        r = client.post("/v1/review/bulk", json={"item_ids": [], "label": "leave"}, headers=bearer(tokens.reviewer))
        assert r.status_code == 422
