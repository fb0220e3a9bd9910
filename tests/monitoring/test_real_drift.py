"""Drift on real text: O*NET task statements from the test split stay quiet over 20 windows; O*NET
occupation descriptions (the same groups, longer text written differently) alert in the first window.

The model is the real packaged encoder (all-MiniLM-L6-v2) with a head trained on cached features of
1,000 task statements of the train split: random weights would give meaningless pooled vectors.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hrlm.config import TrainConfig
from hrlm.inference import Predictor
from hrlm.monitoring import MonitorSettings, build_reference, check_rules, series_from_texts
from hrlm.training.fitting import train
from tests.conftest import write_csv

pytestmark = pytest.mark.slow

WINDOW = 50  # texts per window (the default min_volume)
WINDOWS = 20


@pytest.fixture(scope="module")
def onet(shared_data: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    tasks = pd.read_csv(shared_data / "onet_tasks" / "onet_task_statements.csv")
    descriptions = pd.read_csv(shared_data / "onet_tasks" / "onet_occupation_descriptions.csv")
    return tasks, descriptions


@pytest.fixture(scope="module")
def predictor(onet: tuple[pd.DataFrame, pd.DataFrame], tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    tasks, _ = onet
    sample = tasks[tasks.suggested_split == "train"].sample(1000, random_state=0)
    folder = tmp_path_factory.mktemp("onet")
    data = write_csv(folder / "train.csv", list(zip(sample.text, sample.label, strict=True)))
    cfg = TrainConfig(freeze_encoder=True, max_length=64, epochs=8, lr=1e-2, seed=0, threads=2)
    train(data, folder / "model", cfg, progress=False)
    return Predictor.from_dir(folder / "model", backend="torch-fp32")


def test_unshifted_windows_stay_quiet_and_the_shifted_one_alerts(
    onet: tuple[pd.DataFrame, pd.DataFrame], predictor: Predictor
) -> None:
    tasks, descriptions = onet
    pool = tasks[tasks.suggested_split == "test"].sample(frac=1.0, random_state=1)
    ref_rows, stream = pool.iloc[:400], pool.iloc[400 : 400 + WINDOW * WINDOWS]
    reference = build_reference(predictor, ref_rows.text.tolist(), ref_rows.label.tolist(), source="onet test half")
    shifted = descriptions.sample(WINDOW, random_state=2)
    windows = [(f"tasks-{i}", stream.text.iloc[i * WINDOW : (i + 1) * WINDOW].tolist()) for i in range(WINDOWS)]
    windows.append(("descriptions-0", shifted.text.tolist()))
    settings = MonitorSettings(min_volume=WINDOW, sample_size=WINDOW)
    series = series_from_texts(predictor, reference, windows, settings=settings)
    alerts = check_rules(series, settings)
    quiet = [a for a in alerts if a.window.startswith("tasks-")]
    assert len({a.window for a in quiet}) <= 1, [a.message for a in quiet]
    first = {a.rule for a in alerts if a.window == "descriptions-0"}
    assert first & {"embedding_drift", "length_psi"}, [a.message for a in alerts]
    drift = {w.label: w.embedding_drift for w in series.windows}
    noise = {w.label: w.embedding_noise for w in series.windows}
    assert drift["descriptions-0"] is not None and drift["descriptions-0"] > max(0.55, noise["descriptions-0"] or 1)
