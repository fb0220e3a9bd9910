"""The audit's arithmetic against hand-computed tables: rates, ratios, intersections, small and unknown groups."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from hrlm.fairness import Labelled, audit_groups, groupings_of


def rows_of(spec: list[tuple[str, str, int, int]]) -> tuple[pd.DataFrame, np.ndarray]:
    """(sex, race, rows, selected among them) -> the group frame and the selection of each row."""
    sex: list[str] = []
    race: list[str] = []
    selected: list[int] = []
    for s, r, n, k in spec:
        sex += [s] * n
        race += [r] * n
        selected += [1] * k + [0] * (n - k)
    return pd.DataFrame({"sex": sex, "race": race}), np.array(selected)


# 100 rows: F 40 (12 selected), M 50 (25), X 1 (1: a small category that would be the highest rate),
# and 9 rows of unknown sex (5 selected); race A 55 (29 selected), B 45 (14)
SPEC = [
    ("F", "A", 20, 8),
    ("F", "B", 20, 4),
    ("M", "A", 25, 15),
    ("M", "B", 25, 10),
    ("X", "A", 1, 1),
    ("", "A", 9, 5),
]


def by_name(grouping: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["category"]: c for c in grouping["categories"] + grouping["small_categories"]}


@pytest.fixture
def table() -> list[dict[str, Any]]:
    groups, selected = rows_of(SPEC)
    return audit_groups(groups, selected, selected * 0.8 + 0.1)


def test_groupings_are_each_column_the_pairs_from_three_and_the_intersection() -> None:
    assert groupings_of(["a"]) == [("a",)]
    assert groupings_of(["a", "b"]) == [("a",), ("b",), ("a", "b")]
    assert groupings_of(["a", "b", "c"]) == [
        ("a",),
        ("b",),
        ("c",),
        ("a", "b"),
        ("a", "c"),
        ("b", "c"),
        ("a", "b", "c"),
    ]


def test_selection_rates_and_impact_ratios_of_one_column(table: list[dict[str, Any]]) -> None:
    sex = table[0]
    assert sex["name"] == "sex" and (sex["n"], sex["known"], sex["unknown"]) == (100, 91, 9)
    cats = by_name(sex)
    assert (cats["F"]["count"], cats["F"]["selection_rate"]) == (40, 0.3)
    assert (cats["M"]["count"], cats["M"]["selection_rate"]) == (50, 0.5)
    # the reference is M, not the 1-row X whose rate is 1.0: X is under 2 % and not compared
    assert sex["reference"] == "M"
    assert cats["F"]["impact_ratio"] == pytest.approx(0.6) and cats["F"]["flagged"]
    assert cats["M"]["impact_ratio"] == 1.0 and not cats["M"]["flagged"]
    assert sex["min_impact_ratio"] == pytest.approx(0.6) and sex["flagged"] == ["F"]


def test_a_category_under_two_percent_is_reported_apart(table: list[dict[str, Any]]) -> None:
    sex = table[0]
    assert [c["category"] for c in sex["categories"]] == ["F", "M"]
    [x] = sex["small_categories"]
    assert (x["category"], x["count"], x["share"], x["selection_rate"]) == ("X", 1, 0.01, 1.0)
    assert x["impact_ratio"] is None and not x["flagged"]
    assert "under 2% of the data reported apart" in sex["small_note"] and "LL144" in sex["small_note"]


def test_unknown_groups_are_counted_not_categories(table: list[dict[str, Any]]) -> None:
    sex, race, both = table
    assert "" not in by_name(sex) and sex["unknown"] == 9
    assert race["unknown"] == 0 and by_name(race)["A"]["count"] == 55  # the rows of unknown sex count for race
    assert both["unknown"] == 9  # unknown in one column: unknown in the intersection


def test_second_column_hand_computed(table: list[dict[str, Any]]) -> None:
    cats = by_name(table[1])
    assert cats["A"]["selection_rate"] == pytest.approx(29 / 55, abs=1e-6)
    assert cats["B"]["selection_rate"] == pytest.approx(14 / 45, abs=1e-6)
    assert cats["B"]["impact_ratio"] == pytest.approx((14 / 45) / (29 / 55), abs=1e-5)  # 0.590038
    assert cats["B"]["flagged"] and not cats["A"]["flagged"]


def test_intersection_of_two_columns_hand_computed(table: list[dict[str, Any]]) -> None:
    both = table[2]
    assert both["name"] == "sex × race" and both["kind"] == "intersection"
    cats = by_name(both)
    assert {k: v["count"] for k, v in cats.items()} == {"F / A": 20, "F / B": 20, "M / A": 25, "M / B": 25, "X / A": 1}
    assert {k: v["selection_rate"] for k, v in cats.items()} == {
        "F / A": 0.4,
        "F / B": 0.2,
        "M / A": 0.6,
        "M / B": 0.4,
        "X / A": 1.0,
    }
    assert both["reference"] == "M / A"
    ratios = {c["category"]: c["impact_ratio"] for c in both["categories"]}
    assert ratios == pytest.approx({"F / A": 2 / 3, "F / B": 1 / 3, "M / A": 1.0, "M / B": 2 / 3}, abs=1e-6)
    assert sorted(both["flagged"]) == ["F / A", "F / B", "M / B"]
    assert cats["F / A"]["values"] == {"sex": "F", "race": "A"}
    assert [c["category"] for c in both["small_categories"]] == ["X / A"]


def test_a_ratio_at_exactly_four_fifths_is_not_flagged() -> None:
    groups, selected = rows_of([("F", "A", 50, 20), ("M", "A", 50, 25)])  # 0.4 / 0.5 = 0.8
    sex, race, _ = audit_groups(groups, selected, selected.astype(float))
    assert by_name(sex)["F"]["impact_ratio"] == pytest.approx(0.8) and not by_name(sex)["F"]["flagged"]
    assert race["min_impact_ratio"] == 1.0


def test_scoring_rate_is_the_share_above_the_median_of_the_whole_sample() -> None:
    groups = pd.DataFrame({"g": ["a"] * 5 + ["b"] * 5})
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.8, 0.3, 0.4, 0.5, 0.9, 0.35])
    [g] = audit_groups(groups, np.zeros(10), scores)
    assert g["median_score"] == pytest.approx(0.45)
    cats = by_name(g)
    assert cats["a"]["scoring_rate"] == pytest.approx(0.6) and cats["b"]["scoring_rate"] == pytest.approx(0.4)
    assert cats["b"]["scoring_impact_ratio"] == pytest.approx(0.4 / 0.6, abs=1e-6) and cats["b"]["scoring_flagged"]
    # nobody selected: no selection impact ratio can be computed, and none is invented
    assert cats["a"]["impact_ratio"] is None and g["min_impact_ratio"] is None


def test_per_group_accuracy_f1_and_calibration_with_labels() -> None:
    groups = pd.DataFrame({"g": ["a"] * 4 + ["b"] * 4 + ["c"]})
    true = ["y", "y", "n", "n", "y", "n", "n", "n", None]  # the last row has no true label
    pred = ["y", "n", "n", "y", "y", "n", "n", "n", "y"]
    probs = np.array([[0.25, 0.75] if p == "y" else [0.75, 0.25] for p in pred[:4]] + [[0.0, 1.0]] + [[1.0, 0.0]] * 3)
    probs = np.vstack([probs, [[0.2, 0.8]]])
    labelled = Labelled(true, pred, probs, ["n", "y"], "y")
    selected = np.array([p == "y" for p in pred])
    [g] = audit_groups(groups, selected, probs[:, 1], labelled=labelled, small_share=0.0)
    cats = by_name(g)
    # a: 2 of 4 right; positive: TP 1, FP 1, FN 1 -> F1 0.5; confidence 0.75 everywhere, half right -> ECE 0.25
    assert (cats["a"]["labelled"], cats["a"]["accuracy"], cats["a"]["f1"]) == (4, 0.5, 0.5)
    assert cats["a"]["ece"] == pytest.approx(0.25)
    assert (cats["b"]["accuracy"], cats["b"]["f1"], cats["b"]["ece"]) == (1.0, 1.0, 0.0)
    assert "accuracy" not in cats["c"] and cats["c"]["count"] == 1  # no labelled row: no quality metrics
