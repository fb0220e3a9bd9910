"""A handful of tests on the real packaged all-MiniLM-L6-v2 encoder and the packaged sample data."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from hrlm.cli.demo import sample_path
from hrlm.config import TrainConfig
from hrlm.data import dataset_from_records, split_dataset
from hrlm.encoders import default_encoder_path, load_tokenizer, resolve_base
from hrlm.errors import EncoderError
from hrlm.text import encode_documents
from hrlm.training.fitting import fit

pytestmark = pytest.mark.slow


def test_default_encoder_resolves_offline() -> None:
    path = resolve_base(None)
    assert path == default_encoder_path() and (path / "model.safetensors").exists()
    tok = load_tokenizer(path)
    long = "payroll " * 600
    enc = encode_documents(tok, [long], max_length=512, stride=128)
    assert len(enc.windows) == 2 and max(len(w) for w in enc.windows) == 512  # nothing cut at 128


def test_hub_names_and_missing_folders_fail_clearly(tmp_path: Path) -> None:
    with pytest.raises(EncoderError, match=r"never\s+downloads"):
        resolve_base("sentence-transformers/all-MiniLM-L6-v2")
    with pytest.raises(EncoderError, match="not found"):
        resolve_base(str(tmp_path / "nope"))
    with pytest.raises(EncoderError, match=r"no config\.json"):
        resolve_base(str(tmp_path))


def test_sample_tickets_are_balanced_and_varied() -> None:
    frame = pd.read_csv(sample_path("helpdesk_tickets.csv"))
    counts = Counter(frame["label"])
    assert len(counts) == 8 and min(counts.values()) >= 50
    assert frame["text"].is_unique
    words = frame["text"].str.split().str.len()
    assert words.min() < 8 and words.max() > 100


def test_frozen_encoder_head_on_sample_tickets() -> None:
    frame = pd.read_csv(sample_path("helpdesk_tickets.csv"))
    ds = dataset_from_records(frame["text"].tolist(), frame["label"].tolist())
    splits = split_dataset(ds, val_size=0.15, test_size=0.25, seed=0)
    cfg = TrainConfig(freeze_encoder=True, max_length=128, epochs=4, seed=0)
    result = fit(cfg, splits, progress=False)
    assert result.metrics["macro_f1"] > 0.7  # 8 classes: chance is 0.125


def test_demo_trains_reports_and_predicts(tmp_path: Path) -> None:
    from io import StringIO

    from rich.console import Console

    from hrlm.cli.demo import run_demo

    buffer = StringIO()
    result = run_demo(tmp_path, epochs=1, progress=False, console=Console(file=buffer, width=120))
    text = buffer.getvalue()
    assert "report.html" in text and "predictions on new tickets" in text
    assert (result["model_dir"] / "report" / "report.html").exists()
    assert len(result["predictions"]) == 6 and result["metrics"]["n"] == 40
    # the held-back tickets the demo's retraining is gated on: every label, no text shared with training
    import pandas as pd

    train, holdout = pd.read_csv(result["train_data"]), pd.read_csv(result["holdout_data"])
    assert len(train) + len(holdout) == len(pd.read_csv(sample_path("helpdesk_tickets.csv")))
    assert set(holdout.label) == set(train.label) and not set(holdout.text) & set(train.text)
