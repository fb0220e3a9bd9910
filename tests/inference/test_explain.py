"""Integrated-gradients explanations (hrlm.inference.explain) on the tiny model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hrlm.errors import ConfigError, LabelError


@pytest.fixture(scope="module")
def predictor(trained_model: Path):
    from hrlm.inference import Predictor

    return Predictor.from_dir(trained_model, backend="torch-fp32")


def test_attributions_sum_to_the_logit_minus_the_baseline(predictor) -> None:
    from hrlm.inference.explain import explain

    text = "my salary payslip is missing the overtime bonus"
    (e,) = explain(predictor, [text], steps=64)
    assert e.label == predictor.predict(text).label == "payroll"
    total = sum(w.score for w in e.words)
    # completeness: attributions + baseline = logit, up to the reported approximation error
    assert total - e.delta + e.baseline_logit == pytest.approx(e.logit, abs=1e-3)
    assert abs(e.delta) < 0.05 * max(abs(e.logit - e.baseline_logit), 1.0)
    # the logit is the model's own
    logits = predictor.logits([text])["label"][0]
    assert e.logit == pytest.approx(float(logits[predictor.labels.index("payroll")]), abs=1e-4)
    # the class's own words carry the evidence; words map back onto the text
    top = [w.text for w in e.top(3)]
    assert set(top) & {"salary", "payslip", "overtime", "bonus"}
    assert all(e.text[w.start : w.end] == w.text for w in e.words)
    assert [w.text for w in e.words] == e.text.split()


def test_another_label_and_long_texts_over_windows(predictor) -> None:
    from hrlm.inference.explain import explain

    long = " ".join(["vpn password login laptop access"] * 12)  # 60 words, several 16-token windows
    (mine,) = explain(predictor, [long], label="leave", steps=16)
    assert mine.label == "leave" and mine.windows > 2 and mine.windows_attributed == mine.windows
    assert len(mine.words) == 60
    assert sum(w.score for w in mine.words) - mine.delta + mine.baseline_logit == pytest.approx(mine.logit, abs=1e-3)
    # evidence for "it" on an it-text is positive overall, for "leave" it is not
    (it,) = explain(predictor, [long], label="it", steps=16)
    assert sum(w.score for w in it.words) > 0 > sum(w.score for w in mine.words)
    (cut,) = explain(predictor, [long], label="it", steps=8, max_windows=2)
    assert cut.windows_attributed == 2 and cut.notes and "first 2" in cut.notes[0]
    assert np.count_nonzero([w.score for w in cut.words]) < 60


def test_bad_requests_say_what_to_do(predictor) -> None:
    from hrlm.inference.explain import explain

    with pytest.raises(LabelError, match="pension"):
        explain(predictor, ["tax"], label="pension")
    with pytest.raises(ConfigError, match="steps"):
        explain(predictor, ["tax"], steps=1)
