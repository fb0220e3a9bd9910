"""The review queue (hrlm.review.answers): filling by policy, leasing, answers, agreement; on SQLite and PostgreSQL.

Predictions are written straight into the store, so these tests need no model and run in milliseconds.
"""

from __future__ import annotations

import datetime as dt
import threading
import uuid
from typing import Any

import pytest
from sqlalchemy import Engine, func, insert, select, update

from hrlm.errors import ConfigError, Conflict, DataError, LabelError, NotFound
from hrlm.review import answers as feedback
from hrlm.review.answers import ReviewPolicy, fill_queue, next_item, submit
from hrlm.store import authenticate, create_user
from hrlm.store.tables import audit_log, predictions, review_feedback, review_items, utcnow
from hrlm.store.users import Principal

LABELS = ("payroll", "leave", "it")
# nothing by chance: only what a test asks for
QUIET: dict[str, Any] = {
    "random_fraction": 0.0,
    "uncertain_fraction": 0.0,
    "double_fraction": 0.0,
    "holdout_fraction": 0.0,
    "settle_s": 0.0,
}


def principal(engine: Engine, name: str, role: str = "reviewer") -> Principal:
    found = authenticate(engine, create_user(engine, name, role))
    assert found is not None
    return found[0]


def predict(engine: Engine, text: str | None, probs: dict[str, float], *, multi: bool = False) -> int:
    """Store a prediction as the service would; return its id."""
    if multi:
        label: Any = [k for k, p in probs.items() if p >= 0.5]
        score = max(probs.values())
    else:
        label = max(probs, key=lambda k: probs[k])
        score = probs[label]
    row = {
        "request_id": uuid.uuid4().hex,
        "position": 0,
        "created_at": utcnow(),
        "model_version": "tiny-1234abcd",
        "text": text,
        "label": "|".join(label) if multi else label,
        "confidence": score,
        "output": {"label": label, "score": score, "probabilities": probs},
        "latency_ms": 1.0,
        "batch_size": 1,
    }
    with engine.begin() as conn:
        key = conn.execute(insert(predictions).values(**row)).inserted_primary_key
    assert key is not None
    return int(key[0])


def probs(top: str, p: float) -> dict[str, float]:
    rest = [k for k in LABELS if k != top]
    return {top: p, rest[0]: round((1 - p) * 0.75, 6), rest[1]: round((1 - p) * 0.25, 6)}


def items(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(review_items).order_by(review_items.c.id)).mappings()]


# -- filling ---------------------------------------------------------------------------------------


def test_fill_queues_low_confidence_then_the_most_uncertain_share_and_skips_texts_not_stored(engine: Engine) -> None:
    policy = ReviewPolicy(**{**QUIET, "confidence_below": 0.6, "uncertain_fraction": 0.5})
    low = [
        predict(engine, "salary missing this month", probs("payroll", 0.45)),
        predict(engine, "vpn down", probs("it", 0.55)),
    ]
    sure = {
        predict(engine, "vacation days left", probs("leave", 0.95)): 0.95,
        predict(engine, "laptop screen broken", probs("it", 0.68)): 0.68,
        predict(engine, "bonus was not paid", probs("payroll", 0.62)): 0.62,
        predict(engine, "parental leave form", probs("leave", 0.9)): 0.9,
    }
    predict(engine, None, probs("it", 0.2))  # store_text = none: nothing to show a reviewer

    result = fill_queue(engine, policy)

    assert result["scanned"] == 7 and result["queued"] == 4 and result["skipped_no_text"] == 1
    assert result["by_reason"] == {"random": 0, "low_confidence": 2, "uncertainty": 2}
    queued = items(engine)
    assert {i["prediction_id"] for i in queued if i["reason"] == "low_confidence"} == set(low)
    # the two least sure of the four confident ones (margins 0.68-0.24 and 0.62-0.285)
    most_uncertain = sorted(sure, key=lambda k: sure[k])[:2]
    assert {i["prediction_id"] for i in queued if i["reason"] == "uncertainty"} == set(most_uncertain)
    assert all(i["state"] == "open" and i["reviews_needed"] == 1 and not i["holdout"] for i in queued)
    assert queued[0]["suggestion"] == "payroll" and queued[0]["output"]["probabilities"]["payroll"] == 0.45

    again = fill_queue(engine, policy)  # incremental: nothing new, nothing queued twice
    assert (again["scanned"], again["queued"]) == (0, 0) and len(items(engine)) == 4
    stats = feedback.stats(engine)
    assert stats["open"] == 4 and stats["fill"]["skipped_no_text"] == 1
    assert any("store_text" in note for note in stats["notes"])


def test_postgres_leaves_the_newest_predictions_for_the_next_fill(engine: Engine) -> None:
    predict(engine, "my payslip is late", probs("payroll", 0.3))
    result = fill_queue(engine, ReviewPolicy(**{**QUIET, "settle_s": 30.0}))
    # ids of concurrent PostgreSQL transactions may commit out of order; SQLite commits in id order
    assert result["scanned"] == (1 if engine.dialect.name == "sqlite" else 0)
    assert fill_queue(engine, ReviewPolicy(**QUIET))["scanned"] == (0 if engine.dialect.name == "sqlite" else 1)


def test_near_duplicates_of_open_items_are_skipped(engine: Engine) -> None:
    policy = ReviewPolicy(**{**QUIET, "confidence_below": 0.9, "similarity": 0.8})
    predict(engine, "my vpn login fails again today", probs("it", 0.5))
    assert fill_queue(engine, policy)["queued"] == 1
    predict(engine, "My VPN login fails AGAIN, today!", probs("it", 0.5))  # same normalised text
    predict(engine, "my vpn login fails again today please", probs("it", 0.5))  # Jaccard 5/6 of bigrams
    predict(engine, "my payslip shows the wrong tax", probs("payroll", 0.5))
    result = fill_queue(engine, policy)
    assert (result["queued"], result["skipped_duplicate"]) == (1, 2)
    assert items(engine)[-1]["text"] == "my payslip shows the wrong tax"
    # once the first item is done, a similar text may enter again
    with engine.begin() as conn:
        conn.execute(update(review_items).values(state="done"))
    predict(engine, "my vpn login fails again today", probs("it", 0.5))
    assert fill_queue(engine, policy)["queued"] == 1


def test_random_slice_ignores_confidence_and_duplicates_and_splits_are_stable(engine: Engine) -> None:
    policy = ReviewPolicy(**{**QUIET, "random_fraction": 1.0, "holdout_fraction": 0.5, "double_fraction": 0.3})
    texts = [f"ticket number {i} about leave" for i in range(150)]
    for t in texts:
        predict(engine, t, probs("leave", 0.99))
    predict(engine, texts[0], probs("leave", 0.99))  # a duplicate still counts in the unbiased slice
    result = fill_queue(engine, policy)
    assert result["by_reason"]["random"] == 151 and result["skipped_duplicate"] == 0
    queued = items(engine)
    assert queued[0]["holdout"] == queued[-1]["holdout"]  # the same text is on the same side
    held = sum(i["holdout"] for i in queued) / len(queued)
    double = sum(i["reviews_needed"] == 2 for i in queued) / len(queued)
    assert 0.35 < held < 0.65 and 0.15 < double < 0.45
    assert all(i["score"] == 1.0 for i in queued)  # served before the rest, so it is really measured


def test_uncertainty_share_carries_over_between_small_fills(engine: Engine) -> None:
    policy = ReviewPolicy(**{**QUIET, "confidence_below": 0.1, "uncertain_fraction": 0.25})
    for round_ in range(4):
        predict(engine, f"first distinct text {round_} alpha", probs("it", 0.8))
        predict(engine, f"second other words {round_} beta", probs("leave", 0.7))
        fill_queue(engine, policy)
    assert sum(i["reason"] == "uncertainty" for i in items(engine)) == 2  # a quarter of 8, two at a time


def test_uncertainty_measures() -> None:
    single = {"label": "a", "probabilities": {"a": 0.7, "b": 0.2, "c": 0.1}}
    assert feedback.uncertainty(single, "margin") == pytest.approx(0.5)
    flat = {"label": "a", "probabilities": {"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}}
    assert feedback.uncertainty(flat, "entropy") == pytest.approx(1.0)
    assert feedback.uncertainty({"label": "a", "probabilities": {"a": 1.0, "b": 0.0}}, "entropy") == 0.0
    multi = {"label": ["a"], "probabilities": {"a": 0.9, "b": 0.45}}
    assert feedback.uncertainty(multi, "margin") == pytest.approx(0.9)  # b sits next to its 0.5 decision
    assert feedback.uncertainty(multi, "entropy") == pytest.approx(0.99277, abs=1e-4)
    with pytest.raises(ConfigError, match="review_uncertainty"):
        ReviewPolicy(uncertainty="vibes")
    with pytest.raises(ConfigError, match="review_random_fraction"):
        ReviewPolicy(random_fraction=1.5)


# -- leasing and answering --------------------------------------------------------------------------


def queue(engine: Engine, *rows: tuple[str, dict[str, float]], **policy: Any) -> list[int]:
    for text, p in rows:
        predict(engine, text, p)
    fill_queue(engine, ReviewPolicy(**{**QUIET, "confidence_below": 1.0, **policy}))
    return [i["id"] for i in items(engine)]


def test_items_are_leased_by_priority_never_shown_twice_and_come_back_when_the_lease_ends(engine: Engine) -> None:
    first, second = queue(engine, ("payslip is wrong", probs("payroll", 0.5)), ("sick today", probs("leave", 0.9)))
    ana, bo = principal(engine, "ana"), principal(engine, "bo")
    got = next_item(engine, ana)
    assert got is not None and got["id"] == first  # the most uncertain first
    assert got["labels"] == list(LABELS) and got["suggestion"] == "payroll" and not got["multi_label"]
    assert got["reviews_done"] == 0 and got["leased_until"] is not None
    again = next_item(engine, ana)
    assert again is not None and again["id"] == first  # a reload shows the same item
    other = next_item(engine, bo)
    assert other is not None and other["id"] == second
    submit(engine, first, ana, "skip")
    assert next_item(engine, ana) is None  # first skipped by her, second leased by bo
    assert feedback.open_items(engine, ana) == 1 and feedback.open_items(engine) == 2
    with engine.begin() as conn:  # bo's lease runs out
        conn.execute(update(review_items).values(leased_until=utcnow() - dt.timedelta(seconds=1)))
    mine = next_item(engine, ana)
    assert mine is not None and mine["id"] == second
    skipped = next_item(engine, bo)
    assert skipped is not None and skipped["id"] == first  # skipped by ana, so someone else's


def test_a_correction_is_stored_with_its_previous_label_and_audited(engine: Engine) -> None:
    (item_id,) = queue(engine, ("can I carry over vacation days", probs("payroll", 0.5)))
    ana, bo = principal(engine, "ana"), principal(engine, "bo")
    with pytest.raises(LabelError, match=r"choose from \['payroll', 'leave', 'it'\]"):
        submit(engine, item_id, ana, "correct", ["holidays"])
    with pytest.raises(ConfigError, match="send one label"):
        submit(engine, item_id, ana, "correct", ["leave", "it"])
    with pytest.raises(ConfigError, match="needs the right label"):
        submit(engine, item_id, ana, "correct")
    with pytest.raises(ConfigError, match="send action 'correct'"):
        submit(engine, item_id, ana, "accept", ["leave"])
    with pytest.raises(ConfigError, match="action = 'approve' is not valid"):
        submit(engine, item_id, ana, "approve")

    out = submit(engine, item_id, ana, "correct", ["leave"])

    assert out == {
        "item_id": item_id,
        "action": "correct",
        "label": "leave",
        "previous_label": "payroll",
        "state": "done",
        "reviews_done": 1,
        "reviews_needed": 1,
    }
    with engine.connect() as conn:
        row = conn.execute(select(review_feedback)).mappings().one()
        log = conn.execute(select(audit_log).where(audit_log.c.action.like("review.%"))).mappings().one()
    assert (row["reviewer"], row["reviewer_id"], row["label"], row["previous_label"]) == (
        "ana",
        ana.user_id,
        "leave",
        "payroll",
    )
    assert row["model_version"] == "tiny-1234abcd" and row["at"] is not None
    assert (log["actor"], log["action"], log["target"]) == ("ana", "review.correct", f"review_item:{item_id}")
    assert log["detail"]["label"] == "leave" and log["detail"]["previous_label"] == "payroll"
    with pytest.raises(Conflict, match="is done already"):
        submit(engine, item_id, bo, "accept")
    with pytest.raises(NotFound, match="no review item 999"):
        submit(engine, 999, bo, "accept")
    assert feedback.labelled_examples(engine, holdout=False) == [("can I carry over vacation days", "leave")]
    assert feedback.labelled_examples(engine, holdout=True) == []


def test_flagged_items_leave_the_queue_with_the_note(engine: Engine) -> None:
    (item_id,) = queue(engine, ("call me on my private phone", probs("it", 0.5)))
    ana = principal(engine, "ana")
    assert submit(engine, item_id, ana, "flag", note="not a ticket")["state"] == "flagged"
    with pytest.raises(Conflict, match="is flagged already"):
        submit(engine, item_id, principal(engine, "bo"), "accept")
    assert next_item(engine, principal(engine, "cy")) is None
    with engine.connect() as conn:
        assert conn.execute(select(review_feedback.c.note)).scalar() == "not a ticket"
    stats = feedback.stats(engine)
    assert (stats["flagged"], stats["open"]) == (1, 0)
    assert stats["reviewers"] == [{"reviewer": "ana", "accept": 0, "correct": 0, "skip": 0, "flag": 1, "total": 1}]


def test_double_review_agreement_and_disagreements_left_out_of_training(engine: Engine) -> None:
    rows = [(f"text {w} number {i}", probs("payroll", 0.5)) for i, w in enumerate(["alpha", "beta", "gamma", "delta"])]
    ids = queue(engine, *rows, double_fraction=1.0, holdout_fraction=0.0)
    ana, bo = principal(engine, "ana"), principal(engine, "bo")
    ana_labels = ["payroll", "leave", "payroll", "leave"]
    bo_labels = ["payroll", "leave", "leave", "leave"]
    for item_id, a, b in zip(ids, ana_labels, bo_labels, strict=True):
        first = submit(engine, item_id, ana, "accept" if a == "payroll" else "correct", None if a == "payroll" else [a])
        assert (first["state"], first["reviews_done"], first["reviews_needed"]) == ("open", 1, 2)
        second = submit(engine, item_id, bo, "correct", [b])
        assert second["state"] == "done" and second["previous_label"] == a
    from sklearn.metrics import cohen_kappa_score

    result = feedback.agreement(engine)
    expected = round(float(cohen_kappa_score(ana_labels, bo_labels)), 4)
    assert result["items"] == 4 and result["agreement"] == 0.75 and result["kappa"] == expected
    assert result["pairs"] == [{"reviewers": ["ana", "bo"], "items": 4, "agreement": 0.75, "kappa": expected}]
    examples = feedback.labelled_examples(engine, holdout=False)
    assert [label for _, label in examples] == ["payroll", "leave", "leave"]  # gamma: two labels, left out
    assert feedback.stats(engine)["disagreements"] == 1


def test_agreement_is_undefined_with_a_single_label() -> None:
    from hrlm.review.stats import cohen_kappa

    assert cohen_kappa(["a", "a"], ["a", "a"]) is None and cohen_kappa([], []) is None
    assert cohen_kappa(["a", "b"], ["a", "b"]) == 1.0


def test_multi_label_corrections_keep_the_model_label_order(engine: Engine) -> None:
    predict(engine, "overtime pay and days off", {"payroll": 0.7, "leave": 0.45, "it": 0.1}, multi=True)
    fill_queue(engine, ReviewPolicy(**{**QUIET, "confidence_below": 1.0}))
    ana = principal(engine, "ana")
    got = next_item(engine, ana)
    assert got is not None and got["multi_label"] and got["suggestion"] == ["payroll"]
    out = submit(engine, got["id"], ana, "correct", ["leave", "payroll", "leave"])
    assert out["label"] == "payroll|leave" and out["previous_label"] == "payroll"
    assert feedback.labelled_examples(engine, holdout=False) == [("overtime pay and days off", "payroll|leave")]


def test_holdout_items_are_kept_apart(engine: Engine) -> None:
    (item_id,) = queue(engine, ("my account is locked", probs("it", 0.5)), holdout_fraction=1.0)
    submit(engine, item_id, principal(engine, "ana"), "accept")
    assert feedback.labelled_examples(engine, holdout=False) == []
    assert feedback.labelled_examples(engine, holdout=True) == [("my account is locked", "it")]
    assert feedback.stats(engine)["holdout_done"] == 1


# -- concurrency ----------------------------------------------------------------------------------


def run_all(fns: list[Any]) -> list[Any]:
    results: list[Any] = [None] * len(fns)
    barrier = threading.Barrier(len(fns))

    def call(i: int) -> None:
        barrier.wait()
        try:
            results[i] = fns[i]()
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_concurrent_fills_leases_and_answers_never_double_up(engine: Engine) -> None:
    for i in range(60):
        predict(engine, f"distinct ticket {i} " + " ".join(f"w{i}x{j}" for j in range(4)), probs("it", 0.4))
    policy = ReviewPolicy(**{**QUIET, "confidence_below": 1.0})
    fills = run_all([lambda: fill_queue(engine, policy, limit=7) for _ in range(4)])
    assert not [f for f in fills if isinstance(f, Exception)]
    while fill_queue(engine, policy, limit=7)["scanned"]:
        pass
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(review_items)).scalar() == 60

    people = [principal(engine, f"rev{i}") for i in range(4)]
    leased = run_all([lambda p=p: next_item(engine, p) for p in people])
    ids = [r["id"] for r in leased]
    assert len(set(ids)) == 4  # four reviewers, four different items

    # two reviewers answer the same one-review item at once: one wins, the other hears it is done
    target = ids[0]
    answers = run_all([lambda p=p: submit(engine, target, p, "accept") for p in people[:2]])
    assert sorted(type(a).__name__ for a in answers) == ["Conflict", "dict"]
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(review_feedback).where(review_feedback.c.item_id == target))
        assert n.scalar() == 1


@pytest.mark.parametrize("note", ["VPN \x00 login", "half \ud83d of an emoji"])
def test_a_note_no_database_stores_is_refused_and_the_item_stays_open(engine: Engine, note: str) -> None:
    (item_id,) = queue(engine, ("my payslip is wrong", probs("payroll", 0.5)))
    ana = principal(engine, "ana")
    with pytest.raises(DataError, match=r"^note holds a (NUL character|lone surrogate).*which cannot be stored"):
        submit(engine, item_id, ana, "flag", note=note)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(review_feedback)).scalar() == 0
    assert submit(engine, item_id, ana, "flag", note="a readable note")["state"] == "flagged"


def test_the_queue_never_takes_a_text_without_a_visible_character(engine: Engine) -> None:
    blank = ["", "   ", "\x01\x02", "\u200b\u00a0\ufeff", "\t\r\n"]
    for text in blank:
        predict(engine, text, probs("it", 0.2))
    readable = predict(engine, " \x01VPN\x02 ", probs("it", 0.2))
    result = fill_queue(engine, ReviewPolicy(**{**QUIET, "confidence_below": 1.0}))
    assert (result["queued"], result["skipped_no_text"]) == (1, len(blank))
    assert [i["prediction_id"] for i in items(engine)] == [readable]
