from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from hrlm.config import TrainConfig
from hrlm.data import dataset_from_records
from hrlm.errors import ConfigError
from hrlm.training.augmentation import ContextualSubstituter, augment_dataset, token_noise
from hrlm.training.fewshot import choose_method, contrastive_pairs
from tests.conftest import make_texts


def test_token_noise_deletes_and_swaps_but_keeps_a_word() -> None:
    rng = random.Random(0)
    text = "one two three four five six seven eight nine ten"
    noisy = [token_noise(text, rng) for _ in range(50)]
    assert any(n != text for n in noisy)
    assert all(set(n.split()) <= set(text.split()) and n for n in noisy)
    assert any(len(n.split()) < 10 for n in noisy)  # deletions happen
    assert any(len(n.split()) == 10 and n != text for n in noisy)  # swaps alone happen
    assert token_noise("single", rng) == "single"


def test_augmentation_adds_copies_to_train_only_with_its_own_seed() -> None:
    ds = dataset_from_records(["pay me my salary now", "vpn is locked again today"], ["payroll", "it"])
    a = augment_dataset(ds, "noise", copies=2, seed=1)
    b = augment_dataset(ds, "noise", copies=2, seed=1)
    c = augment_dataset(ds, "noise", copies=2, seed=2)
    assert len(a) == 6 and a.labels == ["payroll", "it"] * 3
    assert a.texts[:2] == ds.texts and a.texts == b.texts and a.texts != c.texts
    assert "2 -> 6 training texts" in a.notes[-1]
    assert augment_dataset(ds, "none") is ds


def test_contextual_augmentation_needs_a_trained_mlm_head(tiny_bert: Path) -> None:
    with pytest.raises(ConfigError, match="augment_mlm"):
        TrainConfig(augment="contextual")
    with pytest.raises(ConfigError, match=r"no trained masked-LM head.*hrlm pretrain"):
        ContextualSubstituter(tiny_bert)


def test_contextual_substitution_replaces_words_with_in_vocabulary_guesses(tiny_bert: Path, tmp_path: Path) -> None:
    from hrlm.config import PretrainConfig
    from hrlm.training.pretraining import pretrain

    corpus = [t for t, _ in make_texts(30)]
    pretrain(corpus, tmp_path / "mlm", PretrainConfig(base=str(tiny_bert), max_length=32, head_steps=5), progress=False)
    sub = ContextualSubstituter(tmp_path / "mlm", share=0.5)
    texts = ["my salary is late this month", "vpn login locked please help"]
    out = sub(texts, random.Random(0))
    assert len(out) == 2 and out != texts
    vocab = set((tiny_bert / "vocab.txt").read_text().split())
    for before, after in zip(texts, out, strict=True):
        b, a = before.split(), after.split()
        assert len(a) == len(b)  # one word for one word
        changed = [w for w, v in zip(b, a, strict=True) if w != v]
        assert changed and all(w.lower() in vocab and not w.startswith("##") for w in a if w not in b)


def test_contrastive_pairs_draw_each_pair_of_texts_at_most_once() -> None:
    labels = [0, 0, 0, 1, 1, 2]
    pairs = contrastive_pairs(labels, 4, random.Random(1))
    for i, j, target in pairs:
        assert i != j and target == float(labels[i] == labels[j])
    unordered = [frozenset((i, j)) for i, j, _ in pairs]
    assert len(set(unordered)) == len(unordered)  # no pair repeated, in either order
    pos = sum(t for *_, t in pairs)
    assert pos == 3 + 1  # every same-label pair once: class 0 has 3, class 1 one, the singleton class 2 none
    assert len(pairs) - pos == 3 * 2 + 3 * 1 + 2 * 1  # every cross-label pair once


def test_a_class_of_two_texts_gives_one_positive_pair_not_one_per_draw() -> None:
    labels = [0] * 20 + [1, 1]
    pairs = contrastive_pairs(labels, 20, random.Random(0))
    assert sum(1 for i, j, t in pairs if t == 1.0 and labels[i] == 1) == 1


def test_contrastive_pairs_are_capped_and_stay_balanced() -> None:
    labels = [i % 4 for i in range(200)]
    uncapped = contrastive_pairs(labels, 20, random.Random(0))
    capped = contrastive_pairs(labels, 20, random.Random(0), max_pairs=300)
    assert len(uncapped) > 300 and len(capped) == 300
    assert sum(t for *_, t in capped) == 150


def test_contrastive_training_does_not_decay_biases_or_layernorm(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from hrlm.modeling import TaskSpec, build_model
    from hrlm.training.fewshot import train_contrastive

    built: list[torch.optim.AdamW] = []

    class RecordedAdamW(torch.optim.AdamW):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", RecordedAdamW)
    model = build_model(tiny_bert, [TaskSpec("label", ["a", "b"])], pooling="mean")
    cfg = TrainConfig(base=str(tiny_bert), weight_decay=0.1, setfit_pairs=1, batch_size=4)
    windows = [[2, 10, 11, 3], [2, 12, 3], [2, 20, 21, 3], [2, 22, 3]]
    device = torch.device("cpu")
    train_contrastive(model, windows, [0, 0, 1, 1], cfg, pad_id=0, device=device, precision="fp32", show=False)
    (optimizer,) = built
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    for name, p in model.encoder.named_parameters():
        exempt = name.endswith("bias") or "LayerNorm" in name
        assert decay_of[id(p)] == (0.0 if exempt else 0.1), name


def test_method_auto_cross_validates_only_below_the_threshold(monkeypatch: pytest.MonkeyPatch) -> None:
    from hrlm.training.selection import Choice

    chosen: list[int] = []

    def choose_by_cv(cfg: TrainConfig, train: Any) -> Choice:
        chosen.append(len(train))
        return Choice("setfit", "by cross-validation")

    monkeypatch.setattr("hrlm.training.fewshot.choose_by_cv", choose_by_cv)
    few = dataset_from_records([f"t{i}" for i in range(20)], ["a", "b"] * 10)
    many = dataset_from_records([f"t{i}" for i in range(40)], ["a", "b"] * 20)
    assert choose_method(TrainConfig(), few) == "setfit" and chosen == [20]
    assert choose_method(TrainConfig(), many) == "finetune"
    assert choose_method(TrainConfig(method="finetune"), few) == "finetune"
    multi = dataset_from_records(["x", "y"], [["a"], ["a", "b"]])
    assert choose_method(TrainConfig(), multi) == "finetune"
    assert chosen == [20]  # neither large nor multi-label data is cross-validated
    with pytest.raises(ConfigError, match="single-label"):
        choose_method(TrainConfig(method="setfit"), multi)


def test_a_frozen_encoder_makes_auto_fit_the_head_and_refuses_setfit() -> None:
    from hrlm.training.fewshot import method_and_reason

    few = dataset_from_records([f"t{i}" for i in range(20)], ["a", "b"] * 10)
    method, why = method_and_reason(TrainConfig(freeze_encoder=True), few)
    assert method == "finetune" and "fine-tuning of the head" in why and "--freeze-encoder" in why
    with pytest.raises(ConfigError, match=r"'setfit' trains the encoder.*freeze_encoder"):
        TrainConfig(method="setfit", freeze_encoder=True)


def test_setfit_on_an_encoder_with_every_layer_frozen_is_a_config_error(tiny_bert: Path) -> None:
    import torch

    from hrlm.modeling import TaskSpec, build_model
    from hrlm.training.fewshot import train_contrastive

    model = build_model(tiny_bert, [TaskSpec("label", ["a", "b"])], pooling="mean")
    model.freeze(2)  # both layers of the tiny BERT: only the pooler, which mean pooling never reads, is left
    cfg = TrainConfig(base=str(tiny_bert), setfit_pairs=1, batch_size=4)
    windows = [[2, 10, 11, 3], [2, 12, 3], [2, 20, 21, 3], [2, 22, 3]]
    with pytest.raises(ConfigError, match="freezes all of its layers"):
        train_contrastive(
            model, windows, [0, 0, 1, 1], cfg, pad_id=0, device=torch.device("cpu"), precision="fp32", show=False
        )


def test_fit_logs_which_method_auto_chose_and_why(
    tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    import logging

    from hrlm.training.fitting import fit
    from hrlm.training.selection import Choice

    why = "--method auto chose SetFit by 3-fold cross-validation"
    monkeypatch.setattr("hrlm.training.fewshot.choose_by_cv", lambda cfg, train: Choice("setfit", why))
    rows = make_texts(3, seed=3)
    train = dataset_from_records([t for t, _ in rows], [lab for _, lab in rows])
    cfg = TrainConfig(base=str(tiny_bert), max_length=16, setfit_pairs=2, batch_size=8, epochs=1)
    with caplog.at_level(logging.INFO, logger="hrlm"):
        fit(cfg, {"train": train}, None, progress=False)
    chosen = [r for r in caplog.records if r.getMessage().startswith("method: ")]
    assert len(chosen) == 1 and chosen[0].levelno == logging.INFO
    assert chosen[0].getMessage() == f"method: setfit ({why})"
    assert any(r.getMessage().startswith("SetFit: ") and "pairs of 9 texts" in r.getMessage() for r in caplog.records)


def test_setfit_trains_a_mean_pooled_model_that_predicts(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hrlm.inference.predictor import Predictor
    from hrlm.training.fitting import fit
    from hrlm.training.selection import Choice

    why = "--method auto chose SetFit by 4-fold cross-validation"
    monkeypatch.setattr("hrlm.training.fewshot.choose_by_cv", lambda cfg, train: Choice("setfit", why))

    rows = make_texts(4, seed=3)  # 4 labelled texts per class
    train = dataset_from_records([t for t, _ in rows], [lab for _, lab in rows])
    test_rows = make_texts(10, seed=4)
    test = dataset_from_records([t for t, _ in test_rows], [lab for _, lab in test_rows])
    cfg = TrainConfig(base=str(tiny_bert), max_length=32, setfit_pairs=10, setfit_lr=1e-3, batch_size=8, epochs=2)
    result = fit(cfg, {"train": train, "test": test}, tmp_path / "m", progress=False)
    assert any("SetFit" in n for n in result.notes)
    predictor = Predictor.from_dir(tmp_path / "m")
    assert predictor.meta.pooling == "mean" and predictor.meta.extra["method"] == "setfit"
    assert result.metrics["accuracy"] > 0.5  # three separable classes from 12 labels
    assert predictor.predict("salary payslip overtime").label in {"payroll", "leave", "it"}


def test_train_cli_takes_augment_and_method(tiny_bert: Path, tickets_csv: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app

    args = ["train", str(tickets_csv), "--out", str(tmp_path / "m"), "--base", str(tiny_bert), "--quiet"]
    extra = [
        "--augment",
        "noise",
        "--augment-copies",
        "1",
        "--method",
        "finetune",
        "--epochs",
        "1",
        "--pooling",
        "mean",
    ]
    result = CliRunner().invoke(app, [*args, *extra, "--max-length", "32"])
    assert result.exit_code == 0, result.output
    assert "augmentation (noise" in result.output
    bad = CliRunner().invoke(app, [*args, "--augment", "contextual"])
    assert bad.exit_code == 1 and "augment_mlm" in bad.output
