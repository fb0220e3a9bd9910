from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from hrlm.config import TrainConfig
from hrlm.errors import ConfigError
from hrlm.modeling import TaskSpec
from hrlm.training.multitask import MultiTaskLoss, pack_targets, parse_weights
from tests.conftest import make_texts, write_csv


@pytest.fixture(scope="module")
def survey_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy tickets with a multi-label topic column and a sentiment column (leave is good news)."""
    rng = random.Random(5)
    rows = []
    for text, label in make_texts(30, seed=5):
        topics = label if rng.random() < 0.7 else f"{label}|help"
        rows.append((text, topics, "pos" if label == "leave" else "neg"))
    return write_csv(tmp_path_factory.mktemp("survey") / "survey.csv", rows, ("text", "topic", "sentiment"))


def test_weights_parse_and_check() -> None:
    tasks = [TaskSpec("a", ["x"]), TaskSpec("b", ["y"])]
    assert parse_weights(None, tasks) == [1.0, 1.0]
    with pytest.raises(ConfigError, match="2 tasks"):
        parse_weights("1", tasks)
    with pytest.raises(ConfigError, match="numbers"):
        parse_weights("a,b", tasks)


def test_multitask_loss_is_the_weighted_sum_of_the_task_losses() -> None:
    tasks = [TaskSpec("topic", ["a", "b", "c"], multi_label=True), TaskSpec("mood", ["neg", "pos"])]
    logits = {"topic": torch.randn(4, 3), "mood": torch.randn(4, 2)}
    topic = torch.tensor([[1, 0, 1], [0, 1, 0], [0, 0, 1], [1, 1, 0]], dtype=torch.float32)
    mood = torch.tensor([0, 1, 1, 0])
    packed = pack_targets([topic, mood])
    assert packed.shape == (4, 4)
    loss = MultiTaskLoss(tasks, [torch.nn.BCEWithLogitsLoss(), torch.nn.CrossEntropyLoss()], [2.0, 0.5])
    expected = 2.0 * torch.nn.functional.binary_cross_entropy_with_logits(logits["topic"], topic)
    expected += 0.5 * torch.nn.functional.cross_entropy(logits["mood"], mood)
    assert float(loss(logits, packed)) == pytest.approx(float(expected), rel=1e-6)


def test_train_two_tasks_on_one_encoder_and_predict_both(tiny_bert: Path, survey_csv: Path, tmp_path: Path) -> None:
    from hrlm.inference.predictor import Predictor
    from hrlm.training.fitting import train

    cfg = TrainConfig(
        base=str(tiny_bert),
        label_col="topic,sentiment",
        label_sep="|",
        task_weights="1,2",
        epochs=10,
        early_stopping_patience=0,
        max_length=32,
        pooling="mean",
        lr=2e-3,
        batch_size=16,
    )
    result = train(survey_csv, tmp_path / "m", cfg, progress=False)
    assert set(result.metrics["tasks"]) == {"topic", "sentiment"}
    assert result.metrics["tasks"]["sentiment"]["accuracy"] > 0.7
    assert "micro_f1" in result.metrics["tasks"]["topic"]  # multi-label metrics for the topic task
    predictor = Predictor.from_dir(tmp_path / "m")
    assert [t.name for t in predictor.tasks] == ["topic", "sentiment"]
    assert predictor.tasks[0].multi_label and predictor.tasks[0].thresholds is not None
    pred = predictor.predict("my salary payslip")
    assert set(pred.tasks) == {"topic", "sentiment"} and pred.tasks["sentiment"].label in {"neg", "pos"}
    report = tmp_path / "m" / "report"
    assert (report / "tasks" / "sentiment" / "confusion.png").is_file()
    assert json.loads((report / "metrics.json").read_text())["tasks"]["sentiment"]["n"] > 0
    meta = json.loads((tmp_path / "m" / "hrlm.json").read_text())
    assert set(meta["metrics"]["tasks"]) == {"topic", "sentiment"}


def test_evaluate_and_cli_on_a_multitask_model(tiny_bert: Path, survey_csv: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app

    args = ["train", str(survey_csv), "--out", str(tmp_path / "m"), "--base", str(tiny_bert), "--quiet"]
    extra = ["--label-col", "topic,sentiment", "--label-sep", "|", "--epochs", "1", "--max-length", "32"]
    result = CliRunner().invoke(app, [*args, *extra, "--pooling", "mean"])
    assert result.exit_code == 0, result.output
    assert "sentiment" in result.output and "topic" in result.output
    ev = CliRunner().invoke(app, ["evaluate", str(tmp_path / "m"), str(survey_csv), "--out", str(tmp_path / "r")])
    assert ev.exit_code == 0, ev.output
    assert (tmp_path / "r" / "tasks" / "topic" / "metrics.json").is_file()
    bad = CliRunner().invoke(app, [*args[:3], str(tmp_path / "m2"), *args[4:], *extra, "--method", "setfit"])
    assert bad.exit_code == 1 and "several label columns" in bad.output
