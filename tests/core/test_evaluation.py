from __future__ import annotations

import json

import numpy as np
import pytest

from hrlm.errors import HrlmError, LabelError
from hrlm.evaluation import compute_metrics, tune_thresholds
from hrlm.report import format_report, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def one_hot(y: list[str], labels: list[str]) -> np.ndarray:
    out = np.zeros((len(y), len(labels)))
    for i, label in enumerate(y):
        out[i, labels.index(label)] = 1.0
    return out


def test_perfect_predictions() -> None:
    labels = ["a", "b", "c"]
    y = ["a", "b", "c", "a", "c"]
    m = compute_metrics(y, y, one_hot(y, labels), labels)
    assert m["n"] == 5
    assert m["accuracy"] == 1.0
    assert m["macro_f1"] == m["weighted_f1"] == m["micro_f1"] == 1.0
    assert m["confusion_matrix"]["labels"] == labels
    assert m["confusion_matrix"]["matrix"] == [[2, 0, 0], [0, 1, 0], [0, 0, 2]]
    assert all(row["f1"] == 1.0 for row in m["per_class"].values())
    assert m["ece"] == 0.0
    assert m["log_loss"] == pytest.approx(0.0, abs=1e-6)
    assert "roc_auc" not in m
    json.dumps(m, allow_nan=False)


def test_macro_and_weighted_f1_by_hand() -> None:
    labels = ["a", "b", "c"]
    y_true = ["a", "a", "a", "b", "b", "c"]
    y_pred = ["a", "a", "b", "b", "c", "c"]
    m = compute_metrics(y_true, y_pred, one_hot(y_pred, labels), labels)
    # a: P=1, R=2/3, F1=0.8 | b: P=1/2, R=1/2, F1=0.5 | c: P=1/2, R=1, F1=2/3
    f1 = {"a": 0.8, "b": 0.5, "c": 2 / 3}
    assert m["accuracy"] == pytest.approx(4 / 6, abs=1e-6)
    assert m["macro_f1"] == pytest.approx(sum(f1.values()) / 3, abs=1e-6)
    assert m["weighted_f1"] == pytest.approx((3 * 0.8 + 2 * 0.5 + 1 * 2 / 3) / 6, abs=1e-6)
    assert m["per_class"]["a"] == {"precision": 1.0, "recall": pytest.approx(2 / 3, abs=1e-6), "f1": 0.8, "support": 3}
    assert m["per_class"]["c"]["support"] == 1
    assert m["confusion_matrix"]["matrix"] == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_label_without_examples_still_listed() -> None:
    labels = ["a", "b", "c"]
    y = ["a", "b"]
    m = compute_metrics(y, y, one_hot(y, labels), labels)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert len(m["confusion_matrix"]["matrix"]) == 3


def test_binary_roc_auc() -> None:
    labels = ["neg", "pos"]
    y_true = ["neg", "neg", "pos", "pos"]
    p_pos = np.array([0.1, 0.4, 0.35, 0.8])
    probs = np.column_stack([1 - p_pos, p_pos])
    y_pred = [labels[i] for i in probs.argmax(axis=1)]
    m = compute_metrics(y_true, y_pred, probs, labels)
    # positive/negative pairs ranked correctly: (0.35>0.1), (0.8>0.1), (0.8>0.4); wrong: (0.35<0.4)
    assert m["roc_auc"] == pytest.approx(0.75)


def test_binary_roc_auc_none_with_one_class() -> None:
    labels = ["neg", "pos"]
    y = ["pos", "pos"]
    m = compute_metrics(y, y, one_hot(y, labels), labels)
    assert m["roc_auc"] is None
    json.dumps(m, allow_nan=False)


def test_no_roc_auc_for_three_classes() -> None:
    labels = ["a", "b", "c"]
    y = ["a", "b", "c"]
    assert "roc_auc" not in compute_metrics(y, y, one_hot(y, labels), labels)


def test_ece_of_overconfident_model() -> None:
    labels = ["a", "b"]
    y_true = ["a", "a", "a", "b"]
    probs = np.tile([0.8, 0.2], (4, 1))
    m = compute_metrics(y_true, ["a"] * 4, probs, labels)
    # one bin: confidence 0.8, accuracy 0.75
    assert m["ece"] == pytest.approx(0.05)
    assert m["log_loss"] == pytest.approx(-(3 * np.log(0.8) + np.log(0.2)) / 4, abs=1e-6)


def test_unknown_label_raises_label_error() -> None:
    labels = ["a", "b", "c"]
    y_true = ["a", "zebra", "b"]
    with pytest.raises(LabelError) as info:
        compute_metrics(y_true, ["a", "a", "b"], np.full((3, 3), 1 / 3), labels)
    message = str(info.value)
    assert isinstance(info.value, HrlmError)
    assert "\n" not in message
    assert "'zebra'" in message
    for label in labels:
        assert f"'{label}'" in message


def test_unknown_labels_are_capped_in_message() -> None:
    labels = ["a", "b"]
    y_true = [f"u{i:02d}" for i in range(30)]
    with pytest.raises(LabelError) as info:
        compute_metrics(y_true, ["a"] * 30, np.full((30, 2), 0.5), labels)
    message = str(info.value)
    assert "'u00'" in message
    assert "'u29'" not in message
    assert "more" in message


def test_probs_shape_mismatch() -> None:
    with pytest.raises(ValueError):
        compute_metrics(["a", "b"], ["a", "b"], np.full((2, 3), 1 / 3), ["a", "b"])


def test_multi_label_metrics() -> None:
    labels = ["x", "y", "z"]
    y_true = [["x"], ["x", "y"], ["z"], []]
    y_pred = [["x"], ["x"], ["z"], ["y"]]
    probs = np.array([[0.9, 0.1, 0.1], [0.8, 0.4, 0.1], [0.2, 0.1, 0.9], [0.1, 0.6, 0.2]])
    m = compute_metrics(y_true, y_pred, probs, labels, multi_label=True)
    assert m["n"] == 4
    assert m["accuracy"] == pytest.approx(0.5)
    # tp=3 (x, x, z), fp=1 (y in row 4), fn=1 (y in row 2): F1 = 6 / 8
    assert m["micro_f1"] == pytest.approx(0.75)
    assert m["per_class"]["y"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert m["per_class"]["x"]["support"] == 2
    for key in ("macro_f1", "weighted_f1", "samples_f1", "ece"):
        assert 0.0 <= m[key] <= 1.0
    assert "confusion_matrix" not in m
    json.dumps(m, allow_nan=False)


def test_multi_label_unknown_label() -> None:
    with pytest.raises(LabelError, match="'w'"):
        compute_metrics([["x", "w"]], [["x"]], np.array([[0.9, 0.1]]), ["x", "y"], multi_label=True)


def test_multi_label_ece_zero_for_one_hot_truth() -> None:
    labels = ["x", "y"]
    y = [["x"], ["x", "y"], []]
    probs = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    assert compute_metrics(y, y, probs, labels, multi_label=True)["ece"] == 0.0


def test_tune_thresholds_separates_column() -> None:
    y = np.array([[0, 0, 0], [0, 0, 0], [1, 1, 0], [1, 1, 0]])
    probs = np.array([[0.1, 0.1, 0.3], [0.2, 0.15, 0.9], [0.7, 0.2, 0.2], [0.9, 0.3, 0.6]])
    thresholds = tune_thresholds(y, probs)
    assert len(thresholds) == 3
    for j in (0, 1):
        assert np.array_equal(probs[:, j] >= thresholds[j], y[:, j].astype(bool))
    assert thresholds[0] == pytest.approx(0.5)  # every value in (0.2, 0.7] separates; tie goes to 0.5
    assert thresholds[1] == pytest.approx(0.2)  # only (0.15, 0.2] separates
    assert thresholds[2] == 0.5  # no positives


def test_tune_thresholds_custom_grid() -> None:
    y = np.array([[0], [1]])
    probs = np.array([[0.3], [0.6]])
    assert tune_thresholds(y, probs, grid=[0.1, 0.9, 0.55]) == [pytest.approx(0.55)]


def _metrics_with_script_label() -> dict:
    labels = ["<script>", "b&q"]
    y_true = ["<script>", "b&q", "b&q"]
    y_pred = ["<script>", "b&q", "<script>"]
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.6, 0.4]])
    return compute_metrics(y_true, y_pred, probs, labels)


def test_write_report(tmp_path) -> None:
    m = _metrics_with_script_label()
    history = [
        {"epoch": 1.0, "step": 10, "train_loss": 0.7, "val_loss": 0.6, "val_metric": 0.5, "metric": "macro_f1"},
        {"epoch": 2.0, "step": 20, "train_loss": 0.5, "val_loss": None, "val_metric": None, "metric": "macro_f1"},
    ]
    out = write_report(tmp_path / "deep" / "report", m, history=history, settings={"lr": 2e-5, "<b>": "x"})
    assert out == tmp_path / "deep" / "report"
    assert sorted(p.name for p in out.iterdir()) == [
        "confusion.png",
        "learning_curves.png",
        "metrics.json",
        "report.html",
    ]
    for name in ("confusion.png", "learning_curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC

    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["accuracy"] == m["accuracy"]
    assert saved["history"] == history
    assert saved["settings"]["lr"] == 2e-5

    page = (out / "report.html").read_text(encoding="utf-8")
    assert "http" not in page
    assert "<script" not in page
    assert "&lt;script&gt;" in page
    assert "b&amp;q" in page
    assert "&lt;b&gt;" in page
    assert page.count("data:image/png;base64,") == 2


def test_write_report_single_history_entry(tmp_path) -> None:
    history = [{"epoch": 1.0, "step": 5, "train_loss": 0.4, "val_loss": None, "val_metric": None, "metric": "f1"}]
    out = write_report(tmp_path, _metrics_with_script_label(), history=history)
    assert (out / "learning_curves.png").read_bytes()[:8] == PNG_MAGIC


def test_write_report_multi_label_has_no_confusion(tmp_path) -> None:
    m = compute_metrics([["x"], ["y"]], [["x"], ["y"]], np.eye(2), ["x", "y"], multi_label=True)
    out = write_report(tmp_path, m, title="ML $x$ <run>")
    assert not (out / "confusion.png").exists()
    assert not (out / "learning_curves.png").exists()
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "ML $x$ &lt;run&gt;" in page
    assert "data:image/png" not in page


def test_write_report_many_classes(tmp_path) -> None:
    labels = [f"class ${i}" for i in range(25)]
    y = [labels[i % 25] for i in range(100)]
    out = write_report(tmp_path, compute_metrics(y, y, one_hot(y, labels), labels))
    assert (out / "confusion.png").read_bytes()[:8] == PNG_MAGIC
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_format_report() -> None:
    m = _metrics_with_script_label()
    text = format_report(m)
    for label in ("<script>", "b&q", "accuracy", "macro avg", "weighted avg", "precision", "support"):
        assert label in text
    assert "0.67" in text  # accuracy 2/3


def test_format_report_multi_label() -> None:
    m = compute_metrics([["x"], ["x", "y"]], [["x"], ["x"]], np.eye(2), ["x", "y"], multi_label=True)
    text = format_report(m)
    assert "samples avg" in text and "macro avg" in text and "y" in text


def _three_of_eight_classes() -> tuple[list[str], list[str], list[str]]:
    """A model of 8 classes scored on a file that holds 3 of them; one text of 20 is mislabelled."""
    labels = [f"c{i}" for i in range(8)]
    y_true = ["c0"] * 8 + ["c1"] * 7 + ["c2"] * 5
    y_pred = ["c0"] * 8 + ["c1"] * 6 + ["c2"] + ["c2"] * 5
    return labels, y_true, y_pred


def test_macro_f1_averages_only_the_classes_the_file_or_the_predictions_hold() -> None:
    labels, y_true, y_pred = _three_of_eight_classes()
    m = compute_metrics(y_true, y_pred, one_hot(y_pred, labels), labels)
    present = ["c0", "c1", "c2"]
    assert m["accuracy"] == pytest.approx(0.95)
    assert m["macro_f1"] == pytest.approx(np.mean([m["per_class"][c]["f1"] for c in present]), abs=1e-6)
    assert m["macro_f1"] > 0.9  # counting the 5 absent classes as F1 = 0 would give 0.36
    assert m["absent_labels"] == ["c3", "c4", "c5", "c6", "c7"]
    assert m["per_class"]["c7"]["support"] == 0  # absent classes keep their row


def test_a_class_only_predicted_counts_in_macro_f1() -> None:
    labels = ["a", "b", "c"]
    y_true, y_pred = ["a", "a"], ["a", "b"]
    m = compute_metrics(y_true, y_pred, one_hot(y_pred, labels), labels)
    assert m["absent_labels"] == ["c"]
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.0) / 2, abs=1e-6)  # a: F1 2/3, b: predicted, never true


def test_multi_label_macro_f1_leaves_out_absent_classes() -> None:
    labels = ["x", "y", "z"]
    m = compute_metrics([["x"], ["x", "y"]], [["x"], ["x", "y"]], np.eye(2, 3), labels, multi_label=True)
    assert m["absent_labels"] == ["z"]
    assert m["macro_f1"] == 1.0


def test_report_lists_absent_classes(tmp_path) -> None:
    labels, y_true, y_pred = _three_of_eight_classes()
    m = compute_metrics(y_true, y_pred, one_hot(y_pred, labels), labels)
    out = write_report(tmp_path, m)
    saved = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert saved["absent_labels"] == ["c3", "c4", "c5", "c6", "c7"]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "5 of the model's classes never occur in this data" in page
    assert '<span class="text">c7</span>' in page
    text = format_report(m)
    assert "left out of the macro average: c3, c4, c5, c6, c7" in text
    macro = next(line for line in text.splitlines() if line.strip().startswith("macro avg"))
    assert f"{m['macro_f1']:.2f}" in macro
    assert float(macro.split()[2]) > 0.9  # macro precision over the 3 present classes, not 8
