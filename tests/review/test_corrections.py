"""Undo and reopen (hrlm.review.corrections), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, select

from hrlm.errors import Conflict, Forbidden, LabelError, NotFound
from hrlm.review import labelled_examples
from hrlm.review.answers import ReviewPolicy, fill_queue, next_item, submit
from hrlm.review.corrections import reopen, undo
from hrlm.store.tables import audit_log, review_feedback
from tests.review.test_answers import QUIET, items, predict, principal, probs


def queued(engine: Engine, text: str, **policy: float) -> int:
    predict(engine, text, probs("payroll", 0.55))
    fill_queue(engine, ReviewPolicy(**{**QUIET, **policy}))
    return int(items(engine)[-1]["id"])


def test_a_reviewer_takes_back_an_answer_and_answers_again(engine: Engine) -> None:
    ana = principal(engine, "ana")
    item = queued(engine, "my salary is late")
    submit(engine, item, ana, "correct", ["leave"])
    assert labelled_examples(engine, holdout=False) == [("my salary is late", "leave")]
    out = undo(engine, item, ana)
    assert out["state"] == "open" and out["withdrawn"]["label"] == "leave"
    assert labelled_examples(engine, holdout=False) == []
    # the item comes back to the same reviewer, who answers it again
    again = next_item(engine, ana)
    assert again is not None and again["id"] == item
    submit(engine, item, ana, "accept")
    assert labelled_examples(engine, holdout=False) == [("my salary is late", "payroll")]
    with engine.connect() as conn:
        rows = conn.execute(select(review_feedback).order_by(review_feedback.c.id)).mappings().all()
        actions = [r.action for r in conn.execute(select(audit_log.c.action).order_by(audit_log.c.id))]
    assert [(r["label"], r["withdrawn_at"] is not None) for r in rows] == [("leave", True), ("payroll", False)]
    assert rows[0]["withdrawn_by"] == "ana"
    assert actions[-3:] == ["review.correct", "review.undo", "review.accept"]  # the log keeps both


def test_undo_of_a_skip_or_a_flag_and_what_it_refuses(engine: Engine) -> None:
    ana, bo = principal(engine, "ana"), principal(engine, "bo")
    item = queued(engine, "vpn login fails")
    submit(engine, item, ana, "flag", note="shows a phone number")
    assert items(engine)[-1]["state"] == "flagged"
    assert undo(engine, item, ana)["state"] == "open"
    submit(engine, item, ana, "skip")
    assert next_item(engine, ana) is None  # skipped: not shown to ana again
    undo(engine, item, ana)
    assert next_item(engine, ana)["id"] == item  # type: ignore[index]
    with pytest.raises(NotFound, match="no answer"):
        undo(engine, item, bo)
    with pytest.raises(NotFound):
        undo(engine, 10**9, ana)


def test_undo_is_refused_once_another_reviewer_answered_after(engine: Engine) -> None:
    ana, bo = principal(engine, "ana"), principal(engine, "bo")
    item = queued(engine, "sick days", double_fraction=1.0)
    submit(engine, item, ana, "accept")
    submit(engine, item, bo, "correct", ["leave"])
    with pytest.raises(Conflict, match="bo answered"):
        undo(engine, item, ana)
    assert undo(engine, item, bo)["state"] == "open"  # bo's was the last: it can go


def test_an_admin_reopens_any_item(engine: Engine) -> None:
    ana, boss = principal(engine, "ana"), principal(engine, "boss", "admin")
    item = queued(engine, "bonus missing")
    submit(engine, item, ana, "correct", ["leave"])
    with pytest.raises(Forbidden):
        reopen(engine, item, ana)
    out = reopen(engine, item, boss, reason="wrong label")
    assert out == {"item_id": item, "state": "open", "withdrawn": 1, "previous_state": "done"}
    assert labelled_examples(engine, holdout=False) == []
    with pytest.raises(Conflict, match="open already"):
        reopen(engine, item, boss)
    # ana may answer it again: her withdrawn answer does not count as answered
    assert next_item(engine, ana)["id"] == item  # type: ignore[index]


def test_an_admin_settles_a_disagreement_and_retraining_takes_the_label(engine: Engine) -> None:
    from hrlm.review.corrections import adjudicate, disagreements
    from hrlm.review.export import reviewed_rows

    ana, bo, boss = principal(engine, "ana"), principal(engine, "bo"), principal(engine, "boss", "admin")
    item = queued(engine, "overtime for my sick days", double_fraction=1.0)
    submit(engine, item, ana, "correct", ["leave"])
    submit(engine, item, bo, "accept")  # payroll: the two disagree
    assert labelled_examples(engine, holdout=False) == []
    (found,) = disagreements(engine)
    assert found["item_id"] == item and {a["label"] for a in found["answers"]} == {"leave", "payroll"}
    assert set(found["labels"]) == {"payroll", "leave", "it"}
    with pytest.raises(Forbidden):
        adjudicate(engine, item, ana, "leave")
    with pytest.raises(LabelError):
        adjudicate(engine, item, boss, "pension")
    out = adjudicate(engine, item, boss, "leave", note="sick days are leave")
    assert out == {"item_id": item, "label": "leave", "answers": ["leave", "payroll"]}
    assert labelled_examples(engine, holdout=False) == [("overtime for my sick days", "leave")]
    assert reviewed_rows(engine)[0][0]["label"] == "leave"
    assert disagreements(engine) == []
    with pytest.raises(Conflict, match="no disagreement"):
        adjudicate(engine, queued(engine, "vpn locked"), boss, "it")
