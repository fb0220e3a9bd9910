"""The admin page's Health section in a real browser: the charts over time, an open alert resolved with its button,
"Evaluate now" adding a holdout point, sign-out emptying it all, and no serious axe-core violation.

Uses the server and browser of tests/e2e/test_browser.py (a uvicorn with the tiny model in the registry and a
holdout file).
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest
from sqlalchemy import select

from tests.e2e.test_browser import AXE, CHROMIUM, browser, predict, server, sign_in, watch_console

__all__ = ["browser", "server"]  # fixtures used here by name

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (CI has it)"),
]


def section_violations(page: Any) -> list[str]:
    """axe-core's serious and critical WCAG 2.x A/AA violations inside the Health section."""
    if not page.evaluate("typeof window.axe !== 'undefined'"):
        page.add_script_tag(path=str(AXE))
    result = page.evaluate(
        """async () => (await axe.run(document.querySelector('section[aria-labelledby="health-title"]'),
             {runOnly: {type: 'tag', values: ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa', 'wcag22aa']}})).violations
             .filter(v => v.impact === 'serious' || v.impact === 'critical')
             .map(v => v.id + ': ' + v.help + ' @ ' + v.nodes.map(n => n.target.join(' ')).join(', '))"""
    )
    return list(result)


def open_alert(engine: Any) -> int:
    from hrlm.monitoring import AlertStore

    start = dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)
    (row,) = AlertStore(engine).record(
        [
            {
                "rule": "label_psi",
                "window_start": start,
                "window_end": start + dt.timedelta(hours=1),
                "value": 1.7,
                "threshold": 0.25,
                "message": "predicted-label distribution shifted: PSI 1.700 > 0.250",
                "detail": {},
                "model_version": None,
            }
        ]
    )
    return int(row["id"])


def test_health_section_charts_resolves_an_alert_and_evaluates_now(server: dict[str, Any], browser: Any) -> None:
    from hrlm.store.tables import alerts, evaluations

    predict(server)
    alert_id = open_alert(server["engine"])
    context = browser.new_context(bypass_csp=AXE.exists(), reduced_motion="reduce")
    page = context.new_page()
    errors = watch_console(page)
    sign_in(page, server["base"], "admin", server["tokens"].admin)
    page.select_option("#health-window", "hour")

    charts = page.locator("#health-charts figure")
    charts.nth(3).wait_for(timeout=30_000)
    assert charts.count() == 4
    assert page.locator('[data-chart="c-volume"] rect.vbar').count() >= 1  # this hour's predictions
    assert page.locator('[data-chart="c-psi"] line.threshold').count() == 1
    assert server["version"] in page.locator("#health-meta").inner_text()
    assert "reference" in page.locator("#health-meta").inner_text()
    if AXE.exists():
        for scheme in ("light", "dark"):
            page.emulate_media(color_scheme=scheme)
            assert section_violations(page) == [], scheme

    row = page.locator(f'#alerts tbody tr[data-key="{alert_id}"]')
    row.wait_for()
    assert "label psi" in row.inner_text().lower()
    page.get_by_role("button", name=f"Resolve alert {alert_id} (label_psi)").click()
    page.locator("#alerts-empty").wait_for(state="visible", timeout=15_000)
    assert page.locator("#alerts tbody tr").count() == 0
    with server["engine"].connect() as conn:
        assert conn.execute(select(alerts.c.state).where(alerts.c.id == alert_id)).scalar() == "resolved"

    page.get_by_role("button", name="Evaluate now").click()
    page.locator("#status").get_by_text("Holdout evaluation job").wait_for(timeout=15_000)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with server["engine"].connect() as conn:
            if conn.execute(select(evaluations.c.id)).first() is not None:
                break
        time.sleep(0.2)
    else:
        pytest.fail("the evaluation job wrote no row within 60 s")
    page.select_option("#health-window", "day")  # a refresh: the holdout point shows
    page.locator('[data-chart="c-accuracy"] rect.point').first.wait_for(timeout=15_000)

    page.get_by_role("button", name="Sign out").click()
    assert page.locator("#health-charts").inner_html() == ""
    assert page.locator("#alerts tbody").inner_html() == ""
    assert errors == []
