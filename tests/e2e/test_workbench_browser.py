"""The review workbench in a real browser (Playwright driving Debian's chromium) against a real server.

A reviewer searches and filters on the Find items page, opens an item and sees its highlighted
evidence; on the review page sees the label's guideline, answers, undoes and answers again (keyboard
only). An admin settles a disagreement between two reviewers and sees a flagged item's note in the
triage section; the retrain that follows trains on the adjudicated label.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_browser import AXE, CHROMIUM, axe_violations, browser, server, watch_console  # noqa: F401
from tests.service.conftest import bearer

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (CI has it)"),
]
GUIDES = {
    "payroll": ("Pay, payslips, overtime, bonus and tax.", ["my payslip is missing overtime"]),
    "leave": ("Time off: vacation, sick days, parental leave.", ["sick days next week"]),
    "it": ("Laptops, accounts, passwords, VPN and e-mail access.", ["vpn login fails"]),
}
TEXTS = [
    "salary payslip overtime tax paid",
    "vpn password login locked laptop",
    "vacation sick holiday days off",
    "bonus deposit wage paid month",
]


@pytest.fixture
def spy_feedback(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Any]]:
    """What the next retrain adds to its training data from the reviewers (the server runs in this process)."""
    from hrlm.lifecycle import retraining

    seen: list[Any] = []
    original = retraining.merge_feedback

    def spy(original_ds: Any, feedback: list[tuple[str, Any]], notes: list[str]) -> Any:
        seen.extend(feedback)
        return original(original_ds, feedback, notes)

    monkeypatch.setattr(retraining, "merge_feedback", spy)
    yield seen


def test_a_reviewer_finds_explains_answers_undoes_and_an_admin_adjudicates(
    server: dict[str, Any],  # noqa: F811
    browser: Any,  # noqa: F811
    spy_feedback: list[Any],
    tmp_path: Path,
) -> None:
    import httpx
    from playwright.sync_api import expect
    from sqlalchemy import update

    from hrlm.store.tables import review_items

    base, tokens = server["base"], server["tokens"]
    admin_h, reviewer_h = bearer(tokens.admin), bearer(tokens.reviewer)
    for label, (description, examples) in GUIDES.items():
        r = httpx.put(
            f"{base}/v1/review/guidelines/{label}",
            json={"description": description, "examples": examples},
            headers=admin_h,
            timeout=30,
        )
        assert r.status_code == 200, r.text
    r = httpx.post(f"{base}/v1/predict", json={"texts": TEXTS}, headers=bearer(tokens.client), timeout=30)
    assert r.status_code == 200, r.text
    found: dict[str, Any] = {}
    for _ in range(120):  # the background filler queues them within review_fill_s
        items = httpx.get(f"{base}/v1/review/items", headers=reviewer_h, timeout=30).json()["items"]
        if len(items) == len(TEXTS):
            found = {i["text"]: i for i in items}
            break
        time.sleep(0.25)
    assert len(found) == len(TEXTS)

    # -- the reviewer finds an item and sees why the model labelled it -------------------------------
    # bypass_csp lets Playwright add axe-core; the pages' own scripts come from the server (tests/e2e/test_browser.py)
    page = browser.new_context(bypass_csp=True).new_page()
    errors = watch_console(page)
    page.goto(f"{base}/ui/browse")
    page.get_by_label("API token").fill(tokens.reviewer)
    page.keyboard.press("Enter")
    page.locator("#found tbody tr").first.wait_for(timeout=30_000)
    expect(page.locator("#found tbody tr")).to_have_count(len(TEXTS))
    page.get_by_label("Words of the text").fill("vpn laptop")
    page.get_by_label("State").select_option("open")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("#found tbody tr")).to_have_count(1)
    expect(page.locator("#found-count")).to_have_text("1 item")
    vpn = found[TEXTS[1]]
    page.get_by_role("button", name=f"#{vpn['id']}").click()
    page.locator("#item-dialog").wait_for(state="visible")
    expect(page.locator("#d-text")).to_have_text(TEXTS[1])
    marks = page.locator("#evidence-text mark")
    marks.first.wait_for(timeout=60_000)
    assert page.locator("#evidence-label").text_content() == vpn["suggestion"]
    assert marks.count() >= 1 and page.locator("#evidence-text mark.ev-for").count() >= 1
    assert page.locator("#evidence-for").inner_text() not in ("", "none")
    if AXE.exists():  # CI has it (npm ci --prefix .ci); the pages' serious and critical WCAG violations
        assert axe_violations(page) == []
    page.keyboard.press("Escape")

    # -- on the review page: the guideline, an answer, undo, a new answer ----------------------------
    page.goto(f"{base}/ui/review")
    page.locator("#item").wait_for(state="visible", timeout=30_000)
    item_id = int(page.locator("#item-id").inner_text().lstrip("#"))
    suggestion = page.locator("#item-suggestion").inner_text()
    expect(page.locator("#guide-label")).to_have_text(suggestion)
    expect(page.locator("#guide-text")).to_have_text(GUIDES[suggestion][0])
    page.locator("#item-text").focus()
    page.keyboard.press("g")  # every label's guideline, one key away
    page.locator("#guide-dialog").wait_for(state="visible")
    expect(page.locator("#guide-all dt")).to_have_count(3)
    page.keyboard.press("Escape")
    labels = page.locator("#choices input").evaluate_all("els => els.map(e => e.value)")
    other = next(i for i, label in enumerate(labels) if label != suggestion)
    page.locator("#item-text").focus()
    page.keyboard.press(str(other + 1))
    expect(page.locator("#guide-label")).to_have_text(labels[other])  # the guideline follows the choice
    page.locator("#evidence-text mark").first.wait_for(timeout=60_000)
    expect(page.locator("#evidence-label")).to_have_text(labels[other])  # and so does the evidence
    if AXE.exists():
        assert axe_violations(page) == []
    page.keyboard.press("Enter")
    page.locator("#status").get_by_text("Corrected to").wait_for(timeout=30_000)
    expect(page.locator("#item-id")).not_to_have_text(f"#{item_id}", timeout=30_000)
    page.keyboard.press("u")
    page.locator("#status").get_by_text("Took back your answer").wait_for(timeout=30_000)
    expect(page.locator("#item-id")).to_have_text(f"#{item_id}", timeout=30_000)
    page.keyboard.press("a")
    page.locator("#status").get_by_text("Accepted").wait_for(timeout=30_000)
    detail = httpx.get(f"{base}/v1/review/items/{item_id}", headers=reviewer_h, timeout=30).json()
    assert [(a["action"], a["withdrawn_at"] is not None) for a in detail["answers"]] == [
        ("correct", True),
        ("accept", False),
    ]
    assert errors == []

    # -- two reviewers disagree; a third item is flagged with a note ---------------------------------
    rest = [found[t] for t in TEXTS if found[t]["id"] != item_id]  # items the review page left alone
    split, flagged = rest[-1], rest[-2]
    settled = next(label for label in GUIDES if label != split["suggestion"])  # reviewer 1's, not the model's
    with server["engine"].begin() as conn:
        conn.execute(update(review_items).where(review_items.c.id == split["id"]).values(reviews_needed=2))
    from hrlm.store import create_user

    second = create_user(server["engine"], "reviewer2", "reviewer")
    for token, body in ((tokens.reviewer, {"action": "correct", "label": settled}), (second, {"action": "accept"})):
        r = httpx.post(f"{base}/v1/review/items/{split['id']}", json=body, headers=bearer(token), timeout=30)
        assert r.status_code == 200, r.text
    note = "the text names a colleague"
    r = httpx.post(
        f"{base}/v1/review/items/{flagged['id']}", json={"action": "flag", "note": note}, headers=reviewer_h, timeout=30
    )
    assert r.status_code == 200, r.text

    # -- the admin settles it and sees the note; the retrain trains on the settled label -------------
    admin = browser.new_context().new_page()
    admin_errors = watch_console(admin)
    admin.goto(f"{base}/ui/admin")
    admin.get_by_label("API token").fill(tokens.admin)
    admin.get_by_role("button", name="Sign in").click()
    row = admin.locator("#disagreements tbody tr", has_text=f"#{split['id']}")
    row.wait_for(timeout=30_000)
    expect(admin.locator("#triage-items tbody")).to_contain_text(note)
    expect(admin.locator("#guidelines tbody")).to_contain_text(GUIDES["payroll"][0])
    row.get_by_role("button", name=settled, exact=True).click()
    admin.locator("#status").get_by_text("settled as").wait_for(timeout=30_000)
    expect(admin.locator("#disagreements-empty")).to_be_visible()
    admin.get_by_role("button", name="Retrain now").click()
    finished = admin.locator('#jobs tbody tr[data-state="succeeded"], #jobs tbody tr[data-state="failed"]')
    finished.first.wait_for(timeout=240_000)
    assert finished.first.get_attribute("data-state") == "succeeded", finished.first.inner_text()
    assert (split["text"], settled) in spy_feedback  # the adjudicated label, not either reviewer's alone

    # -- the two versions side by side on the holdout ------------------------------------------------
    from hrlm.lifecycle.registry import Registry

    registered = Registry(server["engine"], server["registry_dir"]).versions()
    versions = [v.version for v in registered]
    retrained = next(v.version for v in registered if v.origin == "retrain")
    assert len(versions) == 2
    admin.locator("#compare-a option").nth(1).wait_for(state="attached", timeout=40_000)
    admin.locator("#compare-a").select_option(versions[0])
    admin.locator("#compare-b").select_option(versions[1])
    admin.get_by_role("button", name="Compare on the holdout").click()
    expect(admin.locator("#comparison-meta")).to_contain_text("they disagree on", timeout=60_000)
    expect(admin.locator("#comparison-metrics tbody tr")).to_have_count(3 + 3)  # three metrics, three labels' F1
    expect(admin.locator("#comparison-matrices table")).to_have_count(2)
    # the version history on the page: the retrained version was registered and promoted (margin -1)
    admin.locator("#models tbody tr", has_text=retrained).get_by_role("button", name="History").click()
    expect(admin.locator("#report-body")).to_contain_text("retrained from", timeout=30_000)
    expect(admin.locator("#report-body tbody")).to_contain_text("promote")
    assert admin_errors == []
