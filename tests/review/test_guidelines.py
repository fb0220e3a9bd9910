"""Label guidelines (hrlm.review.guidelines): versioned, in the audit log; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from hrlm.errors import ConfigError, DataError, NotFound
from hrlm.review.guidelines import current, history, save
from hrlm.store import upgrade
from hrlm.store.tables import audit_log


def test_every_edit_is_a_version_and_the_newest_is_shown(engine: Engine) -> None:
    upgrade(engine)
    assert current(engine) == {}
    first = save(engine, "payroll", "Pay and payslips.", ["my payslip is late", " "], actor="boss")
    assert first["version"] == 1 and first["examples"] == ["my payslip is late"]
    save(engine, "leave", "Time off.", [], actor="boss")
    second = save(engine, "payroll", "Pay, payslips and overtime; not pensions.", ["overtime missing"], actor="eve")
    assert second["version"] == 2
    shown = current(engine)
    assert set(shown) == {"payroll", "leave"}
    assert shown["payroll"]["description"] == "Pay, payslips and overtime; not pensions."
    assert shown["payroll"]["created_by"] == "eve"
    assert [g["version"] for g in history(engine, "payroll")] == [2, 1]
    with engine.connect() as conn:
        saved = conn.execute(
            select(audit_log.c.actor, audit_log.c.target).where(audit_log.c.action == "guideline.save")
        ).all()
    assert [tuple(r) for r in saved] == [("boss", "label:payroll"), ("boss", "label:leave"), ("eve", "label:payroll")]
    with pytest.raises(NotFound, match="no guideline"):
        history(engine, "it")
    with pytest.raises(ConfigError, match="description"):
        save(engine, "it", "   ", [], actor="boss")
    with pytest.raises(ConfigError, match="examples"):
        save(engine, "it", "IT", ["x"] * 11, actor="boss")
    with pytest.raises(DataError):
        save(engine, "it", "bad \x00", [], actor="boss")
