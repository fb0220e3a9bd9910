"""Finding review items (hrlm.review.browse): filters, full-text search, pages; on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine, update

from hrlm.errors import ConfigError, NotFound
from hrlm.review.answers import ReviewPolicy, fill_queue, submit
from hrlm.review.browse import BrowseFilter, browse, item_detail
from hrlm.review.corrections import undo
from hrlm.store.tables import review_items
from tests.review.test_answers import QUIET, items, predict, principal, probs

TEXTS = [
    ("My payslip is missing the overtime", "payroll", 0.55),
    ("Overtime paid twice this month", "payroll", 0.45),
    ("Sick leave for next week", "leave", 0.5),
    ("Cannot log in to the VPN since Monday", "it", 0.45),
    ("Parental leave forms, where are they?", "leave", 0.58),
]


@pytest.fixture
def queue(engine: Engine) -> list[int]:
    for text, top, p in TEXTS:
        predict(engine, text, probs(top, p))
    fill_queue(engine, ReviewPolicy(**QUIET))
    by_text = {i["text"]: i["id"] for i in items(engine)}
    return [by_text[text] for text, _, _ in TEXTS]  # the items in the order of TEXTS


def ids(engine: Engine, **flt: object) -> list[int]:
    """The ids found, newest first."""
    found = [row["id"] for row in browse(engine, BrowseFilter(**flt), limit=200)["items"]]  # type: ignore[arg-type]
    assert found == sorted(found, reverse=True)
    return found


def newest_first(*ids: int) -> list[int]:
    return sorted(ids, reverse=True)


def test_full_text_search_and_filters(engine: Engine, queue: list[int]) -> None:
    ana, bo = principal(engine, "ana"), principal(engine, "bo")
    submit(engine, queue[0], ana, "accept")
    submit(engine, queue[2], bo, "correct", ["it"])
    assert ids(engine) == newest_first(*queue)
    assert ids(engine, q="overtime") == newest_first(queue[0], queue[1])
    assert ids(engine, q="OVERTIME paid") == [queue[1]]  # every word, any case
    assert ids(engine, q="over*") == newest_first(queue[0], queue[1])  # a prefix
    assert ids(engine, q='vpn" OR leave') == []  # query syntax is words, never FTS operators
    assert ids(engine, q="leave") == newest_first(queue[2], queue[4])
    assert ids(engine, q="!!!") == []
    assert ids(engine, state="done") == newest_first(queue[0], queue[2])
    assert ids(engine, answer="it") == [queue[2]]
    assert ids(engine, reviewer="ana") == [queue[0]]
    assert ids(engine, suggestion="leave") == newest_first(queue[2], queue[4])
    assert ids(engine, confidence_min=0.5, confidence_max=0.56) == newest_first(queue[0], queue[2])
    assert ids(engine, reason="low_confidence", q="leave", state="open") == [queue[4]]
    # a withdrawn answer no longer finds its item
    undo(engine, queue[2], bo)
    assert ids(engine, answer="it") == []
    # purged texts are found by nothing they said
    with engine.begin() as conn:
        conn.execute(update(review_items).where(review_items.c.id == queue[1]).values(text=""))
    assert ids(engine, q="paid") == []


def test_pages_do_not_repeat_or_skip(engine: Engine, queue: list[int]) -> None:
    first = browse(engine, BrowseFilter(), limit=2)
    assert first["total"] == 5 and [r["id"] for r in first["items"]] == newest_first(*queue)[:2]
    second = browse(engine, BrowseFilter(), limit=2, before=first["next_before"])
    predict(engine, "a new ticket arrives meanwhile", probs("it", 0.4))
    fill_queue(engine, ReviewPolicy(**QUIET))
    third = browse(engine, BrowseFilter(), limit=2, before=second["next_before"])
    seen = [r["id"] for page in (first, second, third) for r in page["items"]]
    assert seen == newest_first(*queue) and third["next_before"] is None
    with pytest.raises(ConfigError, match="limit"):
        browse(engine, BrowseFilter(), limit=0)
    with pytest.raises(ConfigError, match="confidence_min"):
        BrowseFilter(confidence_min=2.0)


def test_one_item_with_every_answer(engine: Engine, queue: list[int]) -> None:
    ana = principal(engine, "ana")
    submit(engine, queue[0], ana, "correct", ["leave"])
    undo(engine, queue[0], ana)
    submit(engine, queue[0], ana, "accept")
    detail = item_detail(engine, queue[0])
    assert detail["text"] == TEXTS[0][0] and detail["suggestion"] == "payroll"
    assert detail["probabilities"]["payroll"] == pytest.approx(0.55)
    assert [(a["label"], a["withdrawn_by"]) for a in detail["answers"]] == [("leave", "ana"), ("payroll", None)]
    with pytest.raises(NotFound):
        item_detail(engine, 10**9)
