"""PSI, the embedding drift score, the Wilson interval and the CBPE estimate against hand-computed numbers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hrlm.errors import ConfigError
from hrlm.monitoring import (
    Calibrator,
    MonitorSettings,
    TemperatureCalibrator,
    auc_noise,
    cbpe,
    embedding_drift,
    psi,
    psi_noise,
    quantile_edges,
    wilson_interval,
)


def test_psi_of_a_categorical_shift_matches_the_hand_computed_sum() -> None:
    # (0.5 - 0.8) ln(0.5 / 0.8) + (0.5 - 0.2) ln(0.5 / 0.2)
    expected = -0.3 * math.log(0.5 / 0.8) + 0.3 * math.log(0.5 / 0.2)
    assert psi(np.array([80, 20]), np.array([50, 50])) == pytest.approx(expected, abs=1e-12)
    assert psi(np.array([30, 30, 40]), np.array([3, 3, 4])) == pytest.approx(0.0, abs=1e-12)


def test_an_empty_bin_is_floored_at_epsilon_not_infinite() -> None:
    # reference share of bin 2 is 0 -> 1e-4: 0.5 ln 2 + (0.5 - 1e-4) ln(0.5 / 1e-4)
    expected = 0.5 * math.log(2) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi(np.array([100, 0]), np.array([50, 50])) == pytest.approx(expected, rel=1e-4)


def test_psi_of_numbers_bins_them_at_the_reference_quantiles() -> None:
    ref = np.arange(100.0)
    assert quantile_edges(ref, 2).tolist() == [49.5]
    # every current value falls in the lower half: shares (1, 0) against (0.5, 0.5)
    expected = 0.5 * math.log(2) + (0.5 - 1e-4) * math.log(0.5 / 1e-4)
    assert psi(ref, np.arange(10.0), 2) == pytest.approx(expected, rel=1e-4)
    assert psi(ref, ref[::-1].copy(), 10) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(psi(ref, np.array([]), 10))


def test_noise_levels_follow_chi_square_and_mann_whitney() -> None:
    # chi2(0.99, 21 dof) = 38.932 times (1/1000 + 1/100)
    assert psi_noise(1000, 100, 22, quantile=0.99) == pytest.approx(38.9322 * 0.011, rel=1e-4)
    # 0.5 + z(0.99) * sqrt((300 + 300 + 1) / (12 * 300 * 300))
    assert auc_noise(300, 300, quantile=0.99) == pytest.approx(0.5 + 2.326348 * math.sqrt(601 / (12 * 90000)), rel=1e-6)
    assert auc_noise(300, 300) == pytest.approx(0.5 + 3.090232 * math.sqrt(601 / (12 * 90000)), rel=1e-6)


def test_wilson_interval_matches_the_published_formula() -> None:
    low, high = wilson_interval(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_embedding_drift_separates_shifted_vectors_and_stays_quiet_on_unshifted_ones() -> None:
    rng = np.random.default_rng(7)
    ref = rng.normal(size=(400, 16))
    alarms = 0
    for i in range(20):
        score = embedding_drift(ref, rng.normal(size=(150, 16)), sample_size=150, seed=i)
        alarms += score.auc > max(0.55, score.noise)
    assert alarms <= 1
    shifted = embedding_drift(ref, rng.normal(0.5, 1, size=(150, 16)), sample_size=150)
    assert shifted.auc > 0.8 and shifted.auc > shifted.noise


def test_embedding_drift_is_deterministic_for_a_seed() -> None:
    rng = np.random.default_rng(1)
    ref, cur = rng.normal(size=(300, 8)), rng.normal(0.2, 1, size=(300, 8))
    a = embedding_drift(ref, cur, sample_size=100, ref_size=200, seed=3)
    b = embedding_drift(ref, cur, sample_size=100, ref_size=200, seed=3)
    assert a == b and a.n_cur == 100 and a.n_ref == 200


def test_cbpe_accuracy_and_macro_f1_from_the_expected_confusion_matrix() -> None:
    est = cbpe(np.array([[0.8, 0.2], [0.3, 0.7]]))
    # class a: TP 0.8, FP 0.2, FN 0.3; class b: TP 0.7, FP 0.3, FN 0.2
    f1_a, f1_b = 1.6 / (1.6 + 0.5), 1.4 / (1.4 + 0.5)
    assert est.accuracy == pytest.approx(0.75)
    assert est.macro_f1 == pytest.approx((f1_a + f1_b) / 2)
    assert any("concept shift" in c for c in est.conditions)


def _sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    cum = probs.cumsum(axis=1)
    return (rng.random((len(probs), 1)) > cum).sum(axis=1)


def test_temperature_scaling_recovers_calibration_and_cbpe_then_tracks_true_accuracy() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2.0, size=(20000, 4))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = _sample_labels(true, rng)
    # the model is over-confident: its probabilities are the true ones sharpened by 1/T = 2
    sharp = np.exp(2 * logits) / np.exp(2 * logits).sum(axis=1, keepdims=True)
    cal = TemperatureCalibrator.fit(sharp, labels)
    assert cal.temperature == pytest.approx(2.0, rel=0.08)
    realised = float((sharp.argmax(axis=1) == labels).mean())
    assert cbpe(cal.transform(sharp)).accuracy == pytest.approx(realised, abs=0.015)
    assert cbpe(sharp).accuracy > realised + 0.05  # uncalibrated, the estimate is too high
    assert (cal.transform(sharp).argmax(axis=1) == sharp.argmax(axis=1)).all()


def test_settings_ignore_unknown_keys_and_name_a_bad_field() -> None:
    s = MonitorSettings.from_mapping({"window": "week", "label_psi": 0.3, "database_url": "x"})
    assert (s.window, s.label_psi, s.length_psi) == ("week", 0.3, 0.25)
    with pytest.raises(ConfigError, match="window"):
        MonitorSettings(window="month")
    with pytest.raises(ConfigError, match="embedding_drift"):
        MonitorSettings(embedding_drift=0.4)
    with pytest.raises(ConfigError, match="sample_size"):
        MonitorSettings.from_mapping({"sample_size": 2})


def test_top_label_calibration_makes_the_reference_estimate_its_accuracy_and_keeps_predictions() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.0, size=(3000, 6))
    true = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = _sample_labels(true, rng)
    # a model whose confidence is unrelated to the temperature's fix: its top class squashed to 0.9 everywhere
    model = 0.1 * true / true.sum(axis=1, keepdims=True)
    model[np.arange(len(model)), true.argmax(axis=1)] = 0.9
    model /= model.sum(axis=1, keepdims=True)
    cal = Calibrator.fit(model, labels)
    out = cal.transform(model)
    accuracy = float((model.argmax(axis=1) == labels).mean())
    assert cbpe(out, model.argmax(axis=1)).accuracy == pytest.approx(accuracy, abs=1e-9)
    assert cbpe(model).accuracy > accuracy + 0.3  # uncalibrated: far off
    assert np.allclose(out.sum(axis=1), 1.0)
