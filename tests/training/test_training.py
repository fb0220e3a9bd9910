from __future__ import annotations

import itertools
import json
import random
from pathlib import Path
from typing import Any

import pytest
import torch

from hrlm.config import TrainConfig
from hrlm.data import dataset_from_records, split_dataset
from hrlm.errors import ConfigError, LabelError
from hrlm.training.batching import batches_forever, length_grouped_order
from hrlm.training.fitting import fit, train
from hrlm.training.loop import lr_factor
from tests.conftest import make_texts, write_csv


def _cfg(tiny_bert: Path, **kw: Any) -> TrainConfig:
    base = {
        "base": str(tiny_bert),
        "max_length": 16,
        "stride": 4,
        "epochs": 3,
        "batch_size": 8,
        "lr": 3e-3,
        "pooling": "mean",
    }
    return TrainConfig(**{**base, **kw})


def _splits(n: int = 20, seed: int = 0) -> dict:
    rows = make_texts(n, seed=seed)
    return split_dataset(dataset_from_records([r[0] for r in rows], [r[1] for r in rows]), seed=seed)


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    values = [lr_factor(s, warmup=10, total=100) for s in range(101)]
    assert values[0] == 0 and values[10] == 1.0 and values[100] == 0
    assert all(a <= b for a, b in itertools.pairwise(values[:11]))
    assert all(a >= b for a, b in itertools.pairwise(values[10:]))


def test_length_grouped_batches_cover_everything_with_little_padding() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(1000)]
    batches = length_grouped_order(lengths, 16, random.Random(1))
    assert sorted(i for b in batches for i in b) == list(range(1000))
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    assert padded < 1.1 * sum(lengths)  # random batches would pad far more


def test_ungrouped_batches_mix_lengths_and_reshuffle_every_epoch() -> None:
    rng = random.Random(0)
    lengths = [rng.randint(5, 500) for _ in range(256)]
    grouped = batches_forever(lengths, 16, seed=3)
    plain = batches_forever(lengths, 16, seed=3, grouped=False)
    first = [next(plain) for _ in range(16)]
    second = [next(plain) for _ in range(16)]
    assert sorted(i for b in first for i in b) == sorted(i for b in second for i in b) == list(range(256))
    assert first != second  # a new order every epoch

    def spread(batches: list[list[int]]) -> float:  # mean length range within a batch
        return sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)

    assert spread(first) > 5 * spread([next(grouped) for _ in range(16)])


def test_trained_model_learns_and_writes_its_report(trained_model: Path) -> None:
    metrics = json.loads((trained_model / "report" / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    assert metrics["history"] and metrics["history"][0]["val_metric"] is not None
    for name in ("confusion.png", "learning_curves.png", "report.html"):
        assert (trained_model / "report" / name).stat().st_size > 1000


def test_early_stopping_keeps_the_best_checkpoint(tiny_bert: Path) -> None:
    # with a vanishing learning rate nothing improves after the first evaluation
    seen: list[dict] = []
    result = fit(
        _cfg(tiny_bert, epochs=8, early_stopping_patience=2, lr=1e-12), _splits(), progress=False, on_eval=seen.append
    )
    assert len(seen) == 3  # the first evaluation, then two without improvement
    assert result.best_step == seen[0]["step"]


def test_interrupt_keeps_the_best_model_so_far(tiny_bert: Path, tmp_path: Path) -> None:
    calls = []

    def interrupt(entry: dict) -> None:
        calls.append(entry)
        if len(calls) == 2:
            raise KeyboardInterrupt

    result = fit(_cfg(tiny_bert, epochs=5), _splits(), tmp_path / "m", progress=False, on_eval=interrupt)
    assert result.interrupted and len(result.history) == 2
    assert (tmp_path / "m" / "model.safetensors").exists()


def test_multi_label_training_tunes_thresholds(tiny_bert: Path, tmp_path: Path) -> None:
    rng = random.Random(0)
    texts, labels = [], []
    for text, label in make_texts(30):
        extra = ["leave"] if rng.random() < 0.3 and label != "leave" else []
        texts.append(text + (" vacation sick" if extra else ""))
        labels.append([label, *extra])
    splits = split_dataset(dataset_from_records(texts, labels), seed=0)
    result = fit(_cfg(tiny_bert, epochs=4, metric="micro_f1"), splits, tmp_path / "ml", progress=False)
    meta = json.loads((tmp_path / "ml" / "hrlm.json").read_text())
    assert meta["tasks"][0]["multi_label"] and len(meta["tasks"][0]["thresholds"]) == 3
    assert result.metrics["micro_f1"] > 0.6 and "confusion_matrix" not in result.metrics


def test_frozen_encoder_trains_head_on_cached_features(tiny_bert: Path) -> None:
    result = fit(_cfg(tiny_bert, freeze_encoder=True, class_weights="balanced"), _splits(), progress=False)
    assert result.metrics["accuracy"] > 0.5
    assert result.history and all(e["val_metric"] is not None for e in result.history)


def test_long_texts_train_on_windows(tiny_bert: Path) -> None:
    rows = [(" ".join([t] * 6), lab) for t, lab in make_texts(12)]
    splits = split_dataset(dataset_from_records([r[0] for r in rows], [r[1] for r in rows]))
    result = fit(_cfg(tiny_bert, epochs=1, freeze_layers=1, method="finetune"), splits, progress=False)
    assert result.train_samples_per_s > 0 and result.metrics["n"] == len(splits["test"])


def test_existing_output_is_never_clobbered(tiny_bert: Path, tmp_path: Path, tickets_csv: Path) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(ConfigError, match="--overwrite"):
        train(tickets_csv, out, _cfg(tiny_bert, epochs=1), progress=False)
    assert (out / "keep.txt").read_text() == "precious"


def test_label_only_in_test_is_an_error(tiny_bert: Path) -> None:
    splits = _splits()
    splits["test"] = dataset_from_records(["x"], ["ghost"])
    with pytest.raises(LabelError, match="ghost"):
        fit(_cfg(tiny_bert), splits, progress=False)


def test_class_with_one_example_is_an_error(tiny_bert: Path, tmp_path: Path) -> None:
    path = write_csv(tmp_path / "rare.csv", [*make_texts(5), ("lonely text", "rare")])
    with pytest.raises(LabelError, match="'rare' \\(1\\)"):
        train(path, tmp_path / "m", _cfg(tiny_bert), progress=False)


def test_encoder_split_at_any_layer_gives_the_same_logits(trained_model: Path) -> None:
    from hrlm.inference.predictor import collate
    from hrlm.modeling import load_model

    model, _, _ = load_model(trained_model)
    ids, mask = collate([[2, 10, 11, 12, 3], [2, 14, 3], [2, 9, 9, 9, 9, 9, 3]], pad_id=0)
    with torch.no_grad():
        full = model(ids, mask)["label"]
        for layers in (0, 1, 2):
            split = model.upper(model.lower(ids, mask, layers), mask, layers)["label"]
            torch.testing.assert_close(split, full, atol=1e-5, rtol=1e-5)


def test_frozen_layer_cache_trains_exactly_like_the_uncached_loop(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hrlm.modeling import HrlmModel
    from hrlm.training import frozen

    cfg = _cfg(
        tiny_bert, freeze_layers=1, dropout=0.0, epochs=2, precision="fp32", early_stopping_patience=0, packing=False
    )
    monkeypatch.setattr(frozen, "CACHE_DTYPE", torch.float32)  # fp16 storage would round
    calls = {"forward": 0, "upper": 0}
    for name in calls:
        original = getattr(HrlmModel, name)

        def counted(self: Any, *args: Any, _name: str = name, _original: Any = original) -> Any:
            if self.training:
                calls[_name] += 1
            return _original(self, *args)

        monkeypatch.setattr(HrlmModel, name, counted)
    cached = fit(cfg, _splits(), progress=False)
    assert calls["upper"] > 0 and calls["forward"] == 0  # training steps ran only the layers above the cache
    monkeypatch.setattr(frozen.FrozenCache, "build", classmethod(lambda cls, *a, **k: None))
    uncached = fit(cfg, _splits(), progress=False)
    assert calls["forward"] == calls["upper"]  # the same number of steps, now through the whole encoder
    assert len(cached.history) == len(uncached.history) == 2
    for a, b in zip(cached.history, uncached.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_attention_dropout_is_off_on_a_cpu_unless_asked_for(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoConfig

    from hrlm.modeling import attention_dropout_for, build_model

    assert attention_dropout_for(None, torch.device("cpu")) == 0.0
    assert attention_dropout_for(None, torch.device("cuda")) is None  # the encoder's own
    assert attention_dropout_for(0.2, torch.device("cpu")) == 0.2
    own = AutoConfig.from_pretrained(str(tiny_bert))
    model = build_model(tiny_bert, [], pooling="cls", dropout=0.3, attention_dropout=0.0)
    assert model.config.hidden_dropout_prob == 0.3 and model.config.attention_probs_dropout_prob == 0.0
    kept = build_model(tiny_bert, [], pooling="cls")
    assert kept.config.attention_probs_dropout_prob == own.attention_probs_dropout_prob
    result = fit(_cfg(tiny_bert, epochs=1, precision="fp32"), _splits(), out=tmp_path / "m", progress=False)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert result.model_dir is not None and saved["attention_probs_dropout_prob"] == 0.0
    asked = fit(_cfg(tiny_bert, epochs=1, attention_dropout=0.25), _splits(), out=tmp_path / "a", progress=False)
    assert asked.model_dir is not None
    assert json.loads((tmp_path / "a" / "config.json").read_text())["attention_probs_dropout_prob"] == 0.25
