"""swap_gender keeps case, punctuation and possessives; the probe counts the texts whose label follows gender."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar

import numpy as np
import pytest

from hrlm.fairness import NAME_PAIRS, WORD_PAIRS, counterfactual_probe, swap_gender
from hrlm.modeling import TaskSpec


class SheStub:
    """A 'model' that says yes exactly when a text has the word "she"."""

    tasks: ClassVar[list[TaskSpec]] = [TaskSpec("label", ["no", "yes"])]

    def predict_proba(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        yes = np.array([0.9 if re.search(r"\bshe\b", t, re.IGNORECASE) else 0.2 for t in texts])
        return {"label": np.stack([1 - yes, yes], axis=1)}


@pytest.mark.parametrize(
    ("text", "expected", "n"),
    [
        ("He said she was late.", "She said he was late.", 2),
        ("HE IS HERE", "SHE IS HERE", 1),
        ("Mr. Smith's wife called; Mrs. Jones too.", "Ms. Smith's husband called; Mr. Jones too.", 3),
        ("John's manager and Mary's husband", "Patricia's manager and James's wife", 3),
        ("I told her the news, then thanked her.", "I told him the news, then thanked him.", 2),
        ("Her manager approved her leave.", "His manager approved his leave.", 2),
        ("The desk is his, not hers!", "The desk is hers, not his!", 2),
        ("He hurt himself; his paternity leave starts.", "She hurt herself; her maternity leave starts.", 4),
        ("the chairman (a man) met the chairwomen", "the chairwoman (a woman) met the chairmen", 3),
        ("mark the form, Mark", "mark the form, Mark", 0),  # not in the list; names only when capitalised
        ("the shelf heather hers.", "the shelf heather his.", 1),  # word boundaries: shelf, heather untouched
        ("payroll question about overtime", "payroll question about overtime", 0),
    ],
)
def test_swap_gender(text: str, expected: str, n: int) -> None:
    assert swap_gender(text) == (expected, n)


def test_a_swap_twice_gives_the_text_back_for_unambiguous_words() -> None:
    text = "She and her husband, Mr. Brian Scott, met his sister and their son."
    once, n = swap_gender(text)
    assert n == 9 and swap_gender(once) == (text, 9)


def test_the_word_list_pairs_each_word_once() -> None:
    males = [m for m, _ in WORD_PAIRS]
    females = [f for _, f in WORD_PAIRS]
    assert len(set(males + females)) == 2 * len(WORD_PAIRS)
    assert len(NAME_PAIRS) == 50 and len({n for pair in NAME_PAIRS for n in pair}) == 100


def test_probe_on_a_stub_flips_exactly_the_texts_with_she_or_he() -> None:
    texts = [
        "she asked about leave",  # yes -> "he asked" -> no: flipped
        "he asked about leave",  # no -> "she asked" -> yes: flipped
        "his payslip is wrong",  # no -> "her payslip": still no
        "Mary asked about leave",  # no -> "James": still no
        "the payslip is wrong",  # no gendered word: not probed
        "She told him",  # yes -> "He told her": flipped
    ]
    result = counterfactual_probe(SheStub(), texts, positive="yes")
    assert (result["texts"], result["swapped"], result["flipped"]) == (6, 5, 3)
    assert result["flip_rate"] == pytest.approx(0.6)
    assert result["per_label"] == {
        "no": {"n": 3, "flipped": 1, "flip_rate": pytest.approx(1 / 3, abs=1e-6)},
        "yes": {"n": 2, "flipped": 2, "flip_rate": 1.0},
    }
    # yes probability: -0.7, +0.7, 0, 0, -0.7 over the 5 probed texts
    assert result["mean_positive_change"] == pytest.approx(-0.7 / 5, abs=1e-6)
    assert result["mean_abs_positive_change"] == pytest.approx(2.1 / 5, abs=1e-6)
    flipped = {(e["text"], e["counterfactual"]) for e in result["examples"]}
    assert flipped == {
        ("she asked about leave", "he asked about leave"),
        ("he asked about leave", "she asked about leave"),
        ("She told him", "He told her"),
    }


def test_probe_with_no_gendered_text_reports_no_rate() -> None:
    result = counterfactual_probe(SheStub(), ["the payslip is wrong"], positive="yes")
    assert (result["swapped"], result["flip_rate"], result["examples"]) == (0, None, [])
