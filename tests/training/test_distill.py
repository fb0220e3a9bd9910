from __future__ import annotations

from pathlib import Path

import pytest
import torch

from hrlm.config import TrainConfig
from hrlm.errors import ConfigError
from hrlm.modeling import encoder_layers, load_model
from hrlm.training.distillation import DistillationLoss, distill_file, make_student, student_layers


def test_student_keeps_evenly_spread_layers_with_the_top_one() -> None:
    assert student_layers(6, 3) == [1, 3, 5]
    assert student_layers(2, 1) == [1]
    with pytest.raises(ConfigError, match="between 1 and the teacher's 6"):
        student_layers(6, 7)


def test_student_starts_from_the_teachers_weights(trained_model: Path) -> None:
    teacher, _, _ = load_model(trained_model)
    student = make_student(teacher, 1)
    assert len(encoder_layers(student.encoder)) == 1 and student.config.num_hidden_layers == 1
    kept = encoder_layers(teacher.encoder)[1]
    got = encoder_layers(student.encoder)[0]
    for a, b in zip(kept.parameters(), got.parameters(), strict=True):
        assert torch.equal(a, b) and a.data_ptr() != b.data_ptr()  # a copy, not shared
    assert len(encoder_layers(teacher.encoder)) == 2  # the teacher is untouched
    ids = torch.tensor([[2, 10, 11, 3]])
    out = student(ids, torch.ones_like(ids))
    assert out[teacher.tasks[0].name].shape == (1, len(teacher.tasks[0].labels))


def test_distillation_loss_mixes_soft_and_gold_and_skips_unlabelled() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    teacher = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    gold = torch.tensor([[0.0], [-1.0]])
    packed = torch.cat([teacher, gold], 1)
    only_soft = DistillationLoss(2, temperature=2.0, alpha=1.0)(logits, packed)
    assert float(only_soft) == pytest.approx(0.0, abs=1e-6)  # student equals teacher
    only_gold = DistillationLoss(2, temperature=2.0, alpha=0.0)(logits, packed)
    expected = torch.nn.functional.cross_entropy(logits[:1], torch.tensor([0]))
    assert float(only_gold) == pytest.approx(float(expected))  # the unlabelled row carries no gold loss


def test_distil_a_tiny_model_end_to_end(trained_model: Path, tickets_csv: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=2, max_length=32, pooling="mean", val_size=0.2, test_size=0.2, lr=1e-3)
    unlabelled = tmp_path / "more.txt"
    unlabelled.write_text("my salary is late\nvpn login locked\nsick days off\n", encoding="utf-8")
    result = distill_file(trained_model, tickets_csv, tmp_path / "student", cfg, unlabelled=unlabelled, layers=1)
    assert result.student["layers"] == 1 and result.teacher["layers"] == 2
    assert result.student["parameters"] < result.teacher["parameters"]
    assert 0.0 <= result.student["accuracy"] <= 1.0 and result.student["docs_per_s"] > 0
    _, _, meta = load_model(tmp_path / "student")
    assert meta.extra["layers"] == 1 and meta.extra["unlabelled_texts"] == 3
    assert (tmp_path / "student" / "report" / "metrics.json").is_file()


def test_cli_distill(trained_model: Path, tickets_csv: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app

    args = ["distill", str(trained_model), "--data", str(tickets_csv), "--out", str(tmp_path / "s")]
    result = CliRunner().invoke(app, [*args, "--layers", "1", "--epochs", "1", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "student" in result.output and "docs_per_s" in result.output
    bad = CliRunner().invoke(app, [*args[:-1], str(tmp_path / "s2"), "--layers", "9"])
    assert bad.exit_code == 1 and "between 1 and the teacher's 2 layers" in bad.output
