"""The model card on the admin page and the audit-log page in a real browser: the card's Markdown rendered as
headings, tables and lists (card text never run as HTML), the audit log filtered and exported as CSV, and a
reviewer's flag note shown on both pages.

Uses the server and browser of tests/e2e/test_browser.py (a uvicorn with the tiny model in the registry).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_browser import CHROMIUM, browser, predict, server, sign_in, watch_console
from tests.service.conftest import bearer

__all__ = ["browser", "server"]  # fixtures used here by name

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (CI has it)"),
]
HOSTILE = '<img src=x onerror="window.pwned=1"> **bold** | pipe'


def flag_one(server: dict[str, Any], note: str) -> int:
    """A reviewer flags the first queued item with ``note``; returns its id."""
    base, tokens = server["base"], server["tokens"]
    predict(server)
    httpx.post(f"{base}/v1/review/fill", headers=bearer(tokens.admin), timeout=30).raise_for_status()
    item = httpx.get(f"{base}/v1/review/next", headers=bearer(tokens.reviewer), timeout=30).json()["item"]
    r = httpx.post(
        f"{base}/v1/review/items/{item['id']}",
        json={"action": "flag", "note": note},
        headers=bearer(tokens.reviewer),
        timeout=30,
    )
    assert r.status_code == 200, r.text
    return int(item["id"])


def test_admin_reads_a_model_card_rendered_safely(server: dict[str, Any], browser: Any) -> None:
    from hrlm.lifecycle import Registry

    version = server["version"]
    audit = {"date": "2026-12-01", "passed": False, "reasons": [HOSTILE], "min_impact_ratio": 0.5, "threshold": 0.8}
    Registry(server["engine"], server["registry_dir"]).add_report(version, "audit.json", json.dumps(audit))
    flag_one(server, "names a colleague")

    page = browser.new_page()
    errors = watch_console(page)
    sign_in(page, server["base"], "admin", server["tokens"].admin)
    page.locator(f'#models tr[data-key="{version}"]').get_by_role("button", name="Model card").click()
    card = page.locator("#report-body .card-md")
    card.wait_for()
    assert page.locator("#report-title").inner_text() == f"Model card · {version}"
    assert card.locator("h3").first.inner_text() == f"Model card: {version}"
    headings = card.locator("h4").all_inner_texts()
    for title in ("Model details", "Intended use", "Evaluation", "Bias audit", "Limitations"):
        assert title in headings, title
    per_class = card.locator("table").filter(has_text="Precision")
    assert per_class.locator("th").all_inner_texts() == ["Label", "Precision", "Recall", "F1", "Support"]
    assert per_class.locator("tbody tr").count() == 3  # it, leave, payroll
    assert card.locator("details summary").inner_text() == "Metadata (YAML)"
    # the audit's hostile reason is text: no element made of it, no script run, the | stays in its item
    reason = card.locator("li", has_text="onerror")
    assert reason.inner_text() == HOSTILE
    assert card.locator("img").count() == 0 and page.evaluate("window.pwned") is None
    # the queue section lists the flag and its note
    flagged = page.locator("#flagged-items")
    flagged.get_by_text("names a colleague").wait_for()
    assert "flagged by reviewer" in flagged.inner_text()
    assert errors == []


def test_audit_log_page_filters_exports_and_lists_flags(server: dict[str, Any], browser: Any, tmp_path: Path) -> None:
    item_id = flag_one(server, HOSTILE)
    base, version = server["base"], server["version"]

    page = browser.new_page()
    errors = watch_console(page)
    page.goto(f"{base}/ui/admin")
    page.get_by_label("API token").fill(server["tokens"].admin)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_role("link", name="Audit log", exact=True).click()
    page.wait_for_url("**/ui/audit-log")
    rows = page.locator("#entries tbody tr")
    rows.first.wait_for(timeout=30_000)  # signed in already: the token is in the tab's session
    actions = page.locator("#entries tbody tr td:nth-child(3)").all_inner_texts()
    assert "review.flag" in actions and "model.register" in actions and "token.create" in actions

    page.get_by_label("Action").fill("model.")
    page.get_by_role("button", name="Apply").click()
    # polled from here: the page's CSP forbids the eval a string predicate of wait_for_function needs
    deadline = time.monotonic() + 30
    while not all(a.startswith("model.") for a in page.locator("#entries tbody tr td:nth-child(3)").all_inner_texts()):
        assert time.monotonic() < deadline, "the filter did not apply within 30 s"
        time.sleep(0.1)
    assert set(page.locator("#entries tbody tr td:nth-child(4)").all_inner_texts()) == {version}

    with page.expect_download() as download:
        page.get_by_role("button", name="Export CSV").click()
    saved = tmp_path / "audit.csv"
    download.value.save_as(saved)
    lines = saved.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "id,at,actor,action,target,detail"
    assert len(lines) > 1 and all(",model." in line for line in lines[1:])

    flagged = page.locator("#flagged tbody tr").first
    flagged.wait_for()
    cells = flagged.locator("td").all_inner_texts()
    assert cells[0] == str(item_id) and cells[1] == "reviewer" and cells[3] == HOSTILE
    assert page.locator("#flagged img").count() == 0 and page.evaluate("window.pwned") is None

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").wait_for()
    assert page.locator("#workspace tbody tr").count() == 0 and "onerror" not in page.locator("body").inner_text()
    assert errors == []
