"""The web pages in a real browser (Playwright driving Debian's chromium) against a real uvicorn server.

A reviewer signs in, corrects an item with the keyboard alone, and the correction is in the database;
an admin signs in, starts a retrain, sees its result (the gate promoted the candidate) on the admin
page, rolls production back to the first version and promotes the retrained one again: predict,
review, retrain, gate, promote, rollback, all through the real service and a real browser.

Then the pages' safety and accessibility: nothing shows before sign-in and sign-out removes every rendered
datum from the DOM; Enter on a link follows it and answers nothing; both pages fit a 390 x 844 phone; the
admin page's refresh keeps the keyboard focus; axe-core (.ci/node_modules, `npm ci --prefix .ci`) finds no
serious or critical violation on either page in light and dark mode, and the focus ring has 3:1 contrast.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import make_texts, write_csv
from tests.e2e.live import live_server
from tests.service.conftest import Tokens, add_users, bearer

CHROMIUM = Path("/usr/bin/chromium")
# CI installs chromium and sets HRLM_REQUIRE_BROWSER=1: there a missing browser fails instead of skipping.
if not CHROMIUM.exists() and os.environ.get("HRLM_REQUIRE_BROWSER") == "1":
    raise RuntimeError("HRLM_REQUIRE_BROWSER=1 but /usr/bin/chromium is missing: `apt-get install chromium`")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (CI has it)"),
]
TEXTS = ["my payslip is missing the overtime", "vpn login fails on my laptop", "vacation days for next month"]


@pytest.fixture
def server(trained_model: Path, tickets_csv: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """uvicorn on a free port, serving the registry's production version (the tiny model) on a SQLite file."""
    from hrlm.lifecycle.registry import Registry
    from hrlm.service import ServiceSettings, create_app
    from hrlm.store import make_engine

    url = f"sqlite:///{tmp_path / 'hrlm.db'}"
    tokens = add_users(url)
    engine = make_engine(url)
    version = Registry(engine, tmp_path / "models").register(trained_model, actor="test", stage="production").version
    with tickets_csv.open(encoding="utf-8") as fh:
        seen = {row["text"] for row in csv.DictReader(fh)}
    holdout = write_csv(tmp_path / "holdout.csv", [r for r in make_texts(8, seed=99) if r[0] not in seen])
    settings = ServiceSettings(
        database_url=url,
        registry_dir=str(tmp_path / "models"),
        train_data=str(tickets_csv),
        holdout_data=str(holdout),
        promote_margin=-1.0,  # every candidate passes: the gate promotes, deterministically
        review_fill_s=0.2,
        evaluate_every_s=0,  # no holdout evaluation job in the middle of the jobs these tests follow
        review_confidence_below=1.0,
        review_random_fraction=0.0,
        review_double_fraction=0.0,
        review_holdout_fraction=0.0,
        registry_poll_s=0,
    )
    try:
        with live_server(create_app(settings)) as base:
            yield {
                "base": base,
                "tokens": tokens,
                "engine": engine,
                "registry_dir": tmp_path / "models",
                "version": version,
            }
    finally:
        engine.dispose()


@pytest.fixture
def browser() -> Iterator[Any]:
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def watch_console(page: Any) -> list[str]:
    """Console errors and failed page scripts (a CSP violation shows up here)."""
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("response", lambda r: errors.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    return errors


def test_reviewer_corrects_an_item_with_the_keyboard_and_admin_sees_the_retrain_result(
    server: dict[str, Any], browser: Any
) -> None:
    import httpx
    from playwright.sync_api import expect

    from hrlm.lifecycle.registry import Registry
    from hrlm.store.tables import review_feedback

    base, tokens = server["base"], server["tokens"]
    assert isinstance(tokens, Tokens)
    r = httpx.post(f"{base}/v1/predict", json={"texts": TEXTS}, headers=bearer(tokens.client), timeout=30)
    assert r.status_code == 200, r.text

    # -- the reviewer, keyboard only ---------------------------------------------------------------
    page = browser.new_page()
    errors = watch_console(page)
    page.goto(f"{base}/ui/review")
    page.get_by_label("API token").fill(tokens.reviewer)
    page.keyboard.press("Enter")
    page.locator("#item").wait_for(state="visible", timeout=30_000)  # the background filler queued it
    assert page.locator("#who-name").inner_text() == "reviewer"
    suggestion = page.locator("#item-suggestion").inner_text()
    labels = page.locator("#choices input").evaluate_all("els => els.map(e => e.value)")
    assert suggestion in labels and len(labels) == 3
    index = next(i for i, label in enumerate(labels) if label != suggestion)
    item_id = int(page.locator("#item-id").inner_text().lstrip("#"))
    page.keyboard.press(str(index + 1))
    assert page.locator("#submit-text").inner_text() == "Save correction"
    page.keyboard.press("Enter")
    page.locator("#status").get_by_text("Corrected to").wait_for(timeout=30_000)
    assert page.locator("#n-correct").inner_text() == "1"
    with server["engine"].connect() as conn:
        row = conn.execute(select(review_feedback)).mappings().one()
    assert (row["item_id"], row["action"], row["label"], row["reviewer"]) == (
        item_id,
        "correct",
        labels[index],
        "reviewer",
    )
    assert row["previous_label"] == suggestion
    # the next item (once it is on the page), skipped with one key
    expect(page.locator("#item-id")).not_to_have_text(f"#{item_id}", timeout=30_000)
    page.keyboard.press("s")
    page.locator("#status").get_by_text("Skipped").wait_for(timeout=30_000)
    assert errors == []

    # -- the admin ---------------------------------------------------------------------------------
    admin = browser.new_context().new_page()
    admin_errors = watch_console(admin)
    admin.goto(f"{base}/ui/admin")
    admin.get_by_label("API token").fill(tokens.admin)
    admin.get_by_role("button", name="Sign in").click()
    admin.locator("#workspace").wait_for(state="visible")
    admin.locator("#t-done").get_by_text("1").wait_for(timeout=30_000)
    admin.locator("#models tbody").get_by_text("production", exact=True).wait_for(timeout=30_000)
    admin.get_by_role("button", name="Retrain now").click()
    finished = admin.locator('#jobs tbody tr[data-state="succeeded"], #jobs tbody tr[data-state="failed"]')
    finished.first.wait_for(timeout=240_000)
    text = finished.first.inner_text().lower()
    assert finished.first.get_attribute("data-state") == "succeeded", text
    assert "promoted" in text and "macro f1" in text
    registry = Registry(server["engine"], server["registry_dir"])
    first, retrained = server["version"], registry.production()
    assert retrained is not None and retrained.origin == "retrain" and retrained.parent == first
    models = admin.locator("#models tbody")
    models.locator("tr", has_text=first).get_by_text("archived").wait_for(timeout=15_000)
    admin.get_by_role("button", name="Reports").first.click()
    admin.locator("#report-body").wait_for(state="visible")
    admin.keyboard.press("Escape")

    # roll back to the first version, then promote the retrained one again, from the page
    admin.get_by_role("button", name="Roll back production").click()
    admin.get_by_label("Reason (kept in the audit log)").fill("browser test: rollback")
    admin.get_by_role("button", name="Confirm").click()
    models.locator("tr", has_text=first).get_by_text("production", exact=True).wait_for(timeout=15_000)
    assert registry.get(retrained.version).stage == "archived"
    models.locator("tr", has_text=retrained.version).get_by_role("button", name="Promote").click()
    admin.get_by_role("button", name="Confirm").click()
    models.locator("tr", has_text=retrained.version).get_by_text("production", exact=True).wait_for(timeout=15_000)
    assert [e.action for e in registry.history(retrained.version)][-2:] == ["rollback", "promote"]
    assert admin_errors == []


# -- sign-in and sign-out, keyboard, phones, focus, accessibility -----------------------------------------

AXE = Path(__file__).resolve().parents[2] / ".ci" / "node_modules" / "axe-core" / "axe.min.js"
PHONE = {"width": 390, "height": 844}


def sign_in(page: Any, base: str, which: str, token: str) -> None:
    """Opens /ui/{which}, signs in and waits for the page's content (an item, or the admin's model table)."""
    page.goto(f"{base}/ui/{which}")
    page.get_by_label("API token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    if which == "review":
        page.locator("#item").wait_for(state="visible", timeout=30_000)  # the background filler queued it
    else:
        page.locator("#models tbody tr").first.wait_for(timeout=30_000)


def predict(server: dict[str, Any]) -> None:
    import httpx

    r = httpx.post(
        f"{server['base']}/v1/predict", json={"texts": TEXTS}, headers=bearer(server["tokens"].client), timeout=30
    )
    assert r.status_code == 200, r.text


def test_nothing_shows_before_sign_in_and_sign_out_removes_everything_shown(
    server: dict[str, Any], browser: Any
) -> None:
    predict(server)
    base, tokens = server["base"], server["tokens"]
    page = browser.new_page()
    errors = watch_console(page)

    # no token: the admin page shows the sign-in form and none of the dashboard's buttons
    page.goto(f"{base}/ui/admin")
    page.get_by_label("API token").wait_for()
    for name in ("Retrain now", "Roll back production", "Fill queue now"):
        assert page.get_by_role("button", name=name).count() == 0, name
        assert not page.get_by_text(name).is_visible(), name
    assert not page.locator("#who").is_visible()

    # the review page: an item is shown, then sign-out removes its text from the DOM and empties the tab's storage
    sign_in(page, base, "review", tokens.reviewer)
    text = page.locator("#item-text").inner_text()
    assert text in TEXTS
    assert page.locator("#who-name").inner_text() == "reviewer"
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").wait_for()
    html = page.content()
    assert text not in html
    assert page.locator("#choices > *").count() == 0
    assert page.locator("#item-suggestion").text_content() == ""
    assert page.locator("#who-name").text_content() == ""
    assert not page.locator("#who").is_visible()
    assert page.evaluate("sessionStorage.length") == 0

    # the admin page: every table is emptied; a bad token afterwards names nobody
    sign_in(page, base, "admin", tokens.admin)
    assert page.locator("#who-name").inner_text() == "admin"
    page.locator("#reviewers tbody tr").first.wait_for()
    version = server["version"]
    assert version in page.content()
    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").wait_for()
    assert page.locator("#workspace tbody tr").count() == 0
    assert version not in page.content()
    assert page.locator("#t-done").text_content() == "–"
    page.get_by_label("API token").fill("not-a-valid-token")
    page.get_by_role("button", name="Sign in").click()
    expect_text = page.locator("#signin-error")
    expect_text.wait_for(state="visible")
    assert expect_text.inner_text() != ""
    assert page.locator("#who-name").text_content() == ""
    assert not page.locator("#who").is_visible()
    assert page.get_by_role("button", name="Retrain now").count() == 0
    assert page.evaluate("sessionStorage.length") == 0
    assert [e for e in errors if "401" not in e] == []  # the bad token's 401 is expected


def test_enter_on_a_link_follows_it_and_answers_nothing(server: dict[str, Any], browser: Any) -> None:
    predict(server)
    base, tokens = server["base"], server["tokens"]
    page = browser.new_page()
    answers: list[str] = []
    page.on("request", lambda r: answers.append(r.url) if r.method == "POST" and "/v1/review/items/" in r.url else None)
    sign_in(page, base, "review", tokens.reviewer)

    page.locator(".skip-link").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/review#main")
    page.wait_for_timeout(500)
    assert answers == []
    assert page.locator("#item").is_visible()

    page.get_by_role("link", name="Admin").focus()
    page.keyboard.press("Enter")
    page.wait_for_url("**/ui/admin")
    page.wait_for_timeout(500)
    assert answers == []
    with server["engine"].connect() as conn:
        from hrlm.store.tables import review_feedback

        assert conn.execute(select(review_feedback)).first() is None

    # the shortcuts still work from the item itself (the admin page refused the reviewer's token and forgot it)
    sign_in(page, base, "review", tokens.reviewer)
    page.locator("#item-text").focus()
    page.keyboard.press("s")
    page.locator("#status").get_by_text("Skipped").wait_for(timeout=30_000)
    assert len(answers) == 1


def no_horizontal_scroll(page: Any) -> None:
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"{page.url} is {width} px wide at {PHONE['width']} px"


def fits(page: Any, selector: str) -> None:
    box = page.locator(selector).bounding_box()
    assert box is not None, selector
    assert box["x"] >= 0 and box["y"] >= 0, (selector, box)
    assert box["x"] + box["width"] <= PHONE["width"] and box["y"] + box["height"] <= PHONE["height"], (selector, box)


def test_both_pages_fit_a_phone(server: dict[str, Any], browser: Any) -> None:
    predict(server)
    base, tokens = server["base"], server["tokens"]
    page = browser.new_context(viewport=PHONE).new_page()
    page.goto(f"{base}/ui/review")
    no_horizontal_scroll(page)
    sign_in(page, base, "review", tokens.reviewer)
    no_horizontal_scroll(page)
    # every label name stays on one line: none is broken inside a word
    lines = page.locator("#choices .name").evaluate_all(
        """els => els.map(e => { const r = document.createRange(); r.selectNodeContents(e);
             return [e.textContent, new Set([...r.getClientRects()].map(x => Math.round(x.top))).size]; })"""
    )
    assert lines and all(n == 1 for _, n in lines), lines
    page.locator("#item-text").focus()
    page.keyboard.press("f")
    page.locator("#flag-dialog").wait_for(state="visible")
    fits(page, "#flag-dialog")
    no_horizontal_scroll(page)
    page.keyboard.press("Escape")

    sign_in(page, base, "admin", tokens.admin)
    page.locator("#reviewers tbody tr").first.wait_for()
    no_horizontal_scroll(page)
    page.get_by_role("button", name="Roll back production").click()
    page.locator("#confirm-dialog").wait_for(state="visible")
    fits(page, "#confirm-dialog")
    no_horizontal_scroll(page)
    page.get_by_role("button", name="Cancel").click()


def test_the_admin_refresh_keeps_the_keyboard_focus(server: dict[str, Any], browser: Any) -> None:
    from playwright.sync_api import expect

    base, tokens = server["base"], server["tokens"]
    page = browser.new_page()
    sign_in(page, base, "admin", tokens.admin)
    page.locator("#updated").get_by_text(":").wait_for()
    row = page.locator("#models tbody tr", has_text=server["version"])
    row.get_by_role("button", name="Reports").focus()
    updated = page.locator("#updated").inner_text()
    # the page refreshes by itself every 10 s; wait for one refresh
    expect(page.locator("#updated")).not_to_have_text(updated, timeout=20_000)
    focused = page.evaluate(
        """() => { const a = document.activeElement;
             return [a.tagName, a.textContent, a.closest('tr') && a.closest('tr').dataset.key]; }"""
    )
    assert focused == ["BUTTON", "Reports", server["version"]]


def contrast(a: str, b: str) -> float:
    """WCAG contrast ratio of two computed CSS colours ("rgb(r, g, b)")."""

    def luminance(css: str) -> float:
        parts = [float(x) / 255 for x in css[css.index("(") + 1 : css.index(")")].split(",")[:3]]
        c = [x / 12.92 if x <= 0.03928 else ((x + 0.055) / 1.055) ** 2.4 for x in parts]
        return 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2]

    high, low = sorted([luminance(a), luminance(b)], reverse=True)
    return (high + 0.05) / (low + 0.05)


def axe_violations(page: Any) -> list[str]:
    """axe-core's serious and critical violations on the page as it is now (WCAG 2.x A and AA rules)."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => (await axe.run(document, {runOnly: {type: 'tag',
             values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})).violations
             .filter(v => v.impact === 'serious' || v.impact === 'critical')
             .map(v => v.id + ': ' + v.help + ' @ ' + v.nodes.map(n => n.target.join(' ')).join(', '))"""
    )
    return list(result)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_both_pages_pass_axe_and_meet_wcag_aa_contrast(server: dict[str, Any], browser: Any, scheme: str) -> None:
    if not AXE.exists():
        reason = f"axe-core is missing at {AXE}: `npm ci --prefix .ci`"
        if os.environ.get("HRLM_REQUIRE_BROWSER") == "1":
            pytest.fail(f"HRLM_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    predict(server)
    base, tokens = server["base"], server["tokens"]
    # the page's scripts and styles come from this server only (CSP); axe is added by Playwright, not the page
    context = browser.new_context(bypass_csp=True, reduced_motion="reduce")
    page = context.new_page()
    page.emulate_media(color_scheme=scheme)
    page.goto(f"{base}/ui/review")
    assert axe_violations(page) == []

    # the focus ring: 3:1 against the card and the page behind it
    page.get_by_role("button", name="Sign in").focus()
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("Tab")
    ring, card, bg = page.evaluate(
        """() => [getComputedStyle(document.activeElement).outlineColor,
                  getComputedStyle(document.getElementById('signin')).backgroundColor,
                  getComputedStyle(document.body).backgroundColor]"""
    )
    assert contrast(ring, card) >= 3 and contrast(ring, bg) >= 3, (scheme, ring, card, bg)

    sign_in(page, base, "review", tokens.reviewer)
    labels = page.locator("#choices input").evaluate_all("els => els.map(e => e.value)")
    suggestion = page.locator("#item-suggestion").inner_text()
    page.locator("#item-text").focus()
    page.keyboard.press(str(next(i for i, label in enumerate(labels) if label != suggestion) + 1))
    assert page.locator("#submit-text").inner_text() == "Save correction"
    for kind in ("error", "ok"):  # the toasts, over the item with "Save correction" showing
        page.evaluate(f"hrlm.say('A {kind} message', '{kind}')")
        assert axe_violations(page) == [], kind
    page.locator("#item-text").focus()
    page.keyboard.press("f")
    page.locator("#flag-dialog").wait_for(state="visible")
    assert axe_violations(page) == []  # the danger button
    page.keyboard.press("Escape")

    sign_in(page, base, "admin", tokens.admin)
    page.locator("#reviewers tbody tr").first.wait_for()
    assert axe_violations(page) == []
