"""The admin page's Bias audit section in a real browser: upload a CSV, read the flagged table, sign out.

Uses the server and browser of tests/e2e/test_browser.py (uvicorn serving the tiny model; Debian's chromium).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.conftest import make_texts, write_csv
from tests.e2e.test_browser import (
    AXE,
    axe_violations,
    browser,  # noqa: F401  (a fixture)
    pytestmark,  # noqa: F401  (the browser mark and its skip)
    server,  # noqa: F401  (a fixture)
    sign_in,
    watch_console,
)


def test_admin_runs_a_bias_audit_from_the_page_and_sign_out_removes_it(
    server: dict[str, Any],  # noqa: F811
    browser: Any,  # noqa: F811
    tmp_path: Path,
) -> None:
    # payroll tickets come from team a only: team b's payroll selection rate is 0, flagged by the four-fifths rule
    rows = [(t, "a" if label == "payroll" else "b") for t, label in make_texts(6, seed=11)]
    data = write_csv(tmp_path / "teams.csv", rows, header=("text", "team"))
    page = browser.new_context(bypass_csp=True).new_page()  # bypass_csp: axe is added by Playwright
    errors = watch_console(page)
    sign_in(page, server["base"], "admin", server["tokens"].admin)

    page.get_by_label("Data file (CSV or JSONL)").set_input_files(str(data))
    page.get_by_label("Group columns").fill("team")
    page.get_by_label("Positive label").fill("payroll")
    page.get_by_role("button", name="Run audit").click()
    flagged = page.locator("#fa-results tr.flagged")
    flagged.first.wait_for(timeout=30_000)
    assert flagged.count() == 1 and flagged.first.locator("th").inner_text() == "b"
    summary = page.locator("#fa-summary").inner_text()
    assert "18 texts" in summary and "the audit failed" in summary
    # team b gets few payroll predictions (the tiny model may call one of its 12 texts payroll): flagged
    found = re.search(r"team: impact ratio (\d\.\d{3}) of 'b'", page.locator("#fa-results").inner_text())
    assert found is not None and float(found.group(1)) < 0.8
    if AXE.exists():  # the section with its results has no serious or critical accessibility violation
        assert axe_violations(page) == []

    page.get_by_role("button", name="Sign out").click()
    page.get_by_label("API token").wait_for()
    assert page.locator("#fa-results > *").count() == 0 and page.locator("#fa-summary").inner_text() == "–"
    assert errors == []
