"""End to end on real data: a subset of the O*NET task statements through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from hrlm.cli import app

pytestmark = [pytest.mark.slow, pytest.mark.data]

GROUPS = ["Legal", "Healthcare Practitioners and Technical", "Construction and Extraction", "Computer and Mathematical"]


def test_train_evaluate_predict_on_onet_subset(shared_data: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(shared_data / "onet_tasks" / "onet_task_statements.csv")
    frame = frame[frame["label"].isin(GROUPS)]
    parts = [
        g.sample(min(len(g), 60 if split == "train" else 20), random_state=0)
        for (_, split), g in frame.groupby(["label", "suggested_split"])
    ]
    subset = pd.concat(parts)
    data = tmp_path / "onet.csv"
    subset.to_csv(data, index=False)
    out = tmp_path / "model"
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "train",
            str(data),
            "--out",
            str(out),
            "--split-col",
            "suggested_split",
            "--epochs",
            "2",
            "--max-length",
            "48",
            "--batch-size",
            "16",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert metrics["n"] == int((subset["suggested_split"] == "test").sum())
    assert metrics["macro_f1"] > 0.5  # four groups: chance is 0.25
    preds = tmp_path / "preds.jsonl"
    result = runner.invoke(app, ["predict", str(out), str(data), "--out", str(preds)])
    assert result.exit_code == 0, result.output
    assert len(preds.read_text().splitlines()) == len(subset)
