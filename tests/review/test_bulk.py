"""Alike items answered together (hrlm.review.bulk), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

from hrlm.errors import ConfigError
from hrlm.review import labelled_examples
from hrlm.review.answers import ReviewPolicy, fill_queue, submit
from hrlm.review.bulk import answer_many, similar_open
from hrlm.review.fill import similarity
from tests.review.test_answers import QUIET, items, predict, principal, probs


def test_alike_items_are_found_counted_and_answered_with_one_label(engine: Engine) -> None:
    texts = [
        "my payslip for march is missing the overtime hours",
        "my payslip for april is missing the overtime hours",  # alike (0.5 <= J < 0.8): both queued
        "my payslip for march is missing hours",
        "the vpn rejects my password since monday",
    ]
    for text, top in zip(texts, ("payroll", "leave", "payroll", "it"), strict=True):
        predict(engine, text, probs(top, 0.55))
    fill_queue(engine, ReviewPolicy(**QUIET))
    ids = {i["text"]: i["id"] for i in items(engine)}
    assert len(ids) == 4  # the filler's near-duplicate bar (0.8) let all four in
    ana = principal(engine, "ana")
    first = ids[texts[0]]
    found = similar_open(engine, first, ana)
    assert [f["id"] for f in found] == [ids[texts[1]], ids[texts[2]]]  # most alike first; the vpn text is not
    assert found[0]["similarity"] == pytest.approx(similarity(texts[0], texts[1]), abs=1e-3)
    assert similar_open(engine, first, ana, threshold=0.9) == []
    submit(engine, first, ana, "accept")
    out = answer_many(engine, [f["id"] for f in found] + [first], ana, ["payroll"])
    assert out["answered"] == 2 and [r["action"] for r in out["results"]] == ["correct", "accept"]
    assert [r["item_id"] for r in out["refused"]] == [first]  # answered already: reported, not fatal
    assert sorted(label for _, label in labelled_examples(engine, holdout=False)) == ["payroll"] * 3
    assert similar_open(engine, ids[texts[3]], ana) == []  # the others are no longer open
    with pytest.raises(ConfigError, match="item_ids"):
        answer_many(engine, [], ana, ["payroll"])
    with pytest.raises(ConfigError, match="threshold"):
        similar_open(engine, first, ana, threshold=0)
