"""PII redaction through the real app: the built-in patterns and the ``pii_patterns`` setting, in stored
predictions and in what the review page's API shows, on SQLite and PostgreSQL."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from hrlm.errors import ConfigError
from hrlm.service.settings import ServiceSettings
from hrlm.store import make_engine
from hrlm.store.tables import predictions, review_items
from tests.service.conftest import QUEUE_ALL, Tokens, bearer, running

BADGE = {"badge": r"B-\d{6}"}
# distinct enough that the review queue's near-duplicate check keeps every one
TEXTS = [
    "my payslip is missing the overtime, badge B-123456",
    "vpn login fails on my laptop; my employee ID was E33016",
    "how many vacation days are left for staff no. AB-7781? I was born on 3 March 1990",
    "the bonus went to IBAN GB82 WEST 1234 5698 7654 32 and not mine, badge B-654321, mail jo@acme.com",
]
PII = ["B-123456", "E33016", "AB-7781", "3 March 1990", "GB82", "WEST 1234", "B-654321", "jo@acme.com"]
REDACTED = [
    "my payslip is missing the overtime, badge [BADGE]",
    "vpn login fails on my laptop; my employee ID was [EMPLOYEE_ID]",
    "how many vacation days are left for staff no. [EMPLOYEE_ID]? I was born on [DATE_OF_BIRTH]",
    "the bonus went to IBAN [IBAN] and not mine, badge [BADGE], mail [EMAIL]",
]


def _stored_texts(db_url: str) -> tuple[list[str], list[str]]:
    engine = make_engine(db_url)
    try:
        with engine.connect() as conn:
            stored = [row.text for row in conn.execute(select(predictions.c.text).order_by(predictions.c.id))]
            queued = [row.text for row in conn.execute(select(review_items.c.text))]
    finally:
        engine.dispose()
    return stored, queued


def _review_page_texts(client: Any, tokens: Tokens) -> list[str]:
    """Every text GET /v1/review/next shows a reviewer, answering each item to reach the next."""
    shown = []
    for _ in range(len(TEXTS) + 1):
        r = client.get("/v1/review/next", headers=bearer(tokens.reviewer))
        assert r.status_code == 200, r.text
        item = r.json()["item"]
        if item is None:
            break
        shown.append(item["text"])
        r = client.post(f"/v1/review/items/{item['id']}", json={"action": "accept"}, headers=bearer(tokens.reviewer))
        assert r.status_code == 200, r.text
    return shown


def test_configured_and_built_in_pii_is_redacted_in_the_store_and_on_the_review_page(
    trained_model: Path, db_url: str, tokens: Tokens
) -> None:
    with running(trained_model, db_url, pii_patterns=BADGE, **QUEUE_ALL) as client:
        service = client.app.state.service
        # PostgreSQL fills leave predictions younger than settle_s for later; this test fills at once
        service.filler.policy = dataclasses.replace(service.filler.policy, settle_s=0.0)
        r = client.post("/v1/predict", json={"texts": TEXTS}, headers=bearer(tokens.client))
        assert r.status_code == 200, r.text
        assert r.json()["stored"] is True, r.text
        r = client.post("/v1/review/fill", headers=bearer(tokens.admin))
        assert r.status_code == 200, r.text
        assert r.json()["queued"] == len(TEXTS), r.text
        shown = _review_page_texts(client, tokens)

    stored, queued = _stored_texts(db_url)
    assert stored == REDACTED
    assert sorted(queued) == sorted(REDACTED)
    assert sorted(shown) == sorted(REDACTED)
    for text in stored + queued + shown:
        assert not any(pii in text for pii in PII), text


def test_without_pii_patterns_only_the_built_in_ones_apply(trained_model: Path, db_url: str, tokens: Tokens) -> None:
    with running(trained_model, db_url) as client:
        r = client.post("/v1/predict", json={"texts": TEXTS[:2]}, headers=bearer(tokens.client))
        assert r.status_code == 200, r.text
    stored, _ = _stored_texts(db_url)
    assert stored == [
        "my payslip is missing the overtime, badge B-123456",
        "vpn login fails on my laptop; my employee ID was [EMPLOYEE_ID]",
    ]


# --- the setting: TOML, environment, validation -------------------------------------------------------


def test_pii_patterns_come_from_the_serve_table_and_from_json_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HRLM_PII_PATTERNS", raising=False)
    config = tmp_path / "hrlm.toml"
    config.write_text("[serve]\npii_patterns = { badge = 'B-\\d{6}', case_ref = \"CASE-[0-9]+\" }\n", encoding="utf-8")
    assert ServiceSettings.load(config).pii_patterns == {"badge": r"B-\d{6}", "case_ref": "CASE-[0-9]+"}

    # the environment's patterns join the file's; a name in both takes the environment's regex
    monkeypatch.setenv("HRLM_PII_PATTERNS", json.dumps({"locker": r"L\d{4}", "badge": r"BDG\d{6}"}))
    assert ServiceSettings.load(config).pii_patterns == {
        "badge": r"BDG\d{6}",
        "case_ref": "CASE-[0-9]+",
        "locker": r"L\d{4}",
    }
    assert ServiceSettings.load().pii_patterns == {"locker": r"L\d{4}", "badge": r"BDG\d{6}"}


@pytest.mark.parametrize(
    ("patterns", "message"),
    [
        ({"badge": r"B-(\d{6}"}, r"PII pattern 'badge' is not a valid regular expression"),
        ({"badge": r"\d*"}, r"PII pattern 'badge' matches the empty text"),
        ({"phone": r"\d{4}"}, r"PII pattern 'phone' has the name of a built-in pattern"),
        ({"Badge!": r"B-\d{6}"}, r"PII pattern name 'Badge!' is not allowed"),
    ],
)
def test_a_bad_pii_pattern_is_a_config_error_naming_the_pattern_and_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, patterns: dict[str, str], message: str
) -> None:
    monkeypatch.setenv("HRLM_PII_PATTERNS", json.dumps(patterns))
    with pytest.raises(ConfigError, match=message) as err:
        ServiceSettings.load()
    assert "HRLM_PII_PATTERNS or [serve] pii_patterns" in str(err.value)
    assert "\n" not in str(err.value)


def test_pii_patterns_that_are_not_a_table_of_strings_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HRLM_PII_PATTERNS", '["B-\\\\d{6}"]')
    with pytest.raises(ConfigError, match="pii_patterns"):
        ServiceSettings.load()
