"""The web pages in a real browser (Playwright driving Debian's chromium) against a real uvicorn server.

A reviewer signs in, corrects an item with the keyboard alone, and the correction is in the database;
an admin signs in, starts a retrain, sees its result (the gate promoted the candidate) on the admin
page, rolls production back to the first version and promotes the retrained one again: predict,
review, retrain, gate, promote, rollback, all through the real service and a real browser.
"""

from __future__ import annotations

import csv
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import make_texts, write_csv
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def server(trained_model: Path, tickets_csv: Path, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """uvicorn on a free port, serving the registry's production version (the tiny model) on a SQLite file."""
    import uvicorn

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
        review_confidence_below=1.0,
        review_random_fraction=0.0,
        review_double_fraction=0.0,
        review_holdout_fraction=0.0,
        registry_poll_s=0,
    )
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not srv.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start within 60 s")
        time.sleep(0.05)
    try:
        yield {
            "base": f"http://127.0.0.1:{port}",
            "tokens": tokens,
            "engine": engine,
            "registry_dir": tmp_path / "models",
            "version": version,
        }
    finally:
        srv.should_exit = True
        thread.join(30)
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
