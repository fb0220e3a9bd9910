from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from hrlm.config import PretrainConfig
from hrlm.encoders import load_tokenizer
from hrlm.errors import ConfigError, DataError
from hrlm.training.mlm_data import (
    IGNORE,
    build_mlm_examples,
    build_nsp_examples,
    mask_tokens,
    read_corpus,
    split_sentences,
)
from hrlm.training.pretraining import pretrain
from tests.conftest import make_texts


def _corpus(n: int = 60, sentences: int = 3, seed: int = 0) -> list[str]:
    """Documents of a few sentences, each sentence a toy ticket."""
    texts = [t for t, _ in make_texts(n, seed=seed)]
    rng = random.Random(seed)
    return [". ".join(t.capitalize() for t in rng.sample(texts, sentences)) + "." for _ in range(n)]


def test_split_sentences_cuts_before_capitals_and_digits_only() -> None:
    assert split_sentences("Pay is late. 3 days now! e.g. this? Ok.") == [
        "Pay is late.",
        "3 days now! e.g. this?",
        "Ok.",
    ]


def test_masking_draws_the_share_asked_and_never_special_tokens() -> None:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (64, 128))
    words = torch.arange(128).repeat(64, 1)
    words[:, 0] = -1  # [CLS]
    words[:, -5:] = -1  # padding
    masked, labels = mask_tokens(
        ids, words, probability=0.15, whole_word=False, mask_id=4, vocab_size=1000, generator=g
    )
    chosen = labels != IGNORE
    assert not chosen[words < 0].any()
    share = chosen.sum().item() / (words >= 0).sum().item()
    assert 0.13 < share < 0.17
    assert torch.equal(labels[chosen], ids[chosen])
    as_mask = (masked[chosen] == 4).float().mean().item()
    unchanged = (masked[chosen] == ids[chosen]).float().mean().item()
    assert 0.75 < as_mask < 0.85
    assert 0.07 < unchanged < 0.14  # 10% kept, plus random swaps that hit the same id
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_whole_word_masking_takes_every_piece_of_a_word() -> None:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(10, 1000, (32, 60))
    words = (torch.arange(60) // 3).repeat(32, 1)  # three pieces per word
    _, labels = mask_tokens(ids, words, probability=0.2, whole_word=True, mask_id=4, vocab_size=1000, generator=g)
    chosen = (labels != IGNORE).view(32, 20, 3)
    assert chosen.any()
    assert torch.equal(chosen.all(-1), chosen.any(-1))


def test_mlm_examples_keep_every_token(tiny_bert: Path) -> None:
    tok = load_tokenizer(tiny_bert)
    doc = " ".join(["salary payslip overtime tax"] * 20)  # 80 tokens
    examples = build_mlm_examples(tok, [doc], max_length=32)
    assert all(len(e.ids) <= 32 for e in examples)
    body = [i for e in examples for i in e.ids[1:-1]]
    assert body == tok.backend_tokenizer.encode(doc, add_special_tokens=False).ids
    assert all(e.ids[0] == tok.cls_token_id and e.ids[-1] == tok.sep_token_id for e in examples)


def test_nsp_pairs_are_true_continuations_or_from_another_document(tiny_bert: Path) -> None:
    tok = load_tokenizer(tiny_bert)
    docs = _corpus(30, sentences=4)
    examples = build_nsp_examples(tok, docs, max_length=48, rng=random.Random(0))
    assert examples
    labels = [e.is_random_next for e in examples]
    assert 0.25 < sum(labels) / len(labels) < 0.75
    doc_ids = [tok.backend_tokenizer.encode(d, add_special_tokens=False).ids for d in docs]
    for e in examples:
        assert len(e.ids) <= 48 and e.ids[0] == tok.cls_token_id and e.ids[-1] == tok.sep_token_id
        sep = e.ids.index(tok.sep_token_id)
        assert e.types == [0] * (sep + 1) + [1] * (len(e.ids) - sep - 1)
        pair = e.ids[1:sep] + e.ids[sep + 1 : -1]
        contiguous = any(d[k : k + len(pair)] == pair for d in doc_ids for k in range(len(d) - len(pair) + 1))
        if e.is_random_next == 0:
            assert contiguous, "a true-next pair must be a contiguous stretch of one document"


def test_read_corpus_formats_and_errors(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("first doc\n\nsecond  doc<br />here\n", encoding="utf-8")
    assert read_corpus(tmp_path / "c.txt") == ["first doc", "second doc here"]
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "a.txt").write_text("one\ntwo", encoding="utf-8")
    assert read_corpus(folder) == ["one two"]
    (tmp_path / "c.csv").write_text("body\nhello\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"no column 'text'.*--text-col"):
        read_corpus(tmp_path / "c.csv")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"no \.txt files"):
        read_corpus(tmp_path / "empty")


@pytest.fixture(scope="module")
def adapted(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("pretrain") / "encoder"
    cfg = PretrainConfig(
        base=str(tiny_bert), max_length=32, epochs=8, batch_size=16, lr=2e-3, head_steps=30, head_lr=5e-3
    )
    result = pretrain(_corpus(80), out, cfg, progress=False)
    return out, result


def test_pretraining_lowers_heldout_perplexity_against_a_warmed_up_head(adapted: tuple[Path, object]) -> None:
    out, result = adapted
    assert result.head_was_new  # the tiny BERT was saved without an MLM head
    assert result.after["masked_tokens"] == result.before["masked_tokens"] > 0  # same fixed masks
    assert result.after["perplexity"] < 0.9 * result.before["perplexity"]
    report = json.loads((out / "pretrain.json").read_text())
    assert report["head_warmup_steps"] == 30 and report["history"][0]["step"] == 0
    assert (out / "pretrain_curve.png").stat().st_size > 1000


def test_adapted_folder_is_a_base_for_train(adapted: tuple[Path, object], tiny_bert: Path, tickets_csv: Path) -> None:
    from safetensors.torch import load_file

    from hrlm.config import TrainConfig
    from hrlm.encoders import resolve_base
    from hrlm.training.fitting import train

    out, _ = adapted
    assert resolve_base(str(out)) == out
    state = load_file(str(out / "model.safetensors"))
    base = load_file(str(tiny_bert / "model.safetensors"))
    key = "embeddings.word_embeddings.weight"
    assert not torch.equal(state[f"bert.{key}"], base[key]), "the encoder itself must have been adapted"
    assert any(k.startswith("cls.predictions.transform") for k in state)
    result = train(
        tickets_csv, None, TrainConfig(base=str(out), epochs=1, max_length=32, pooling="mean"), progress=False
    )
    assert result.metrics["n"] > 0


def test_nsp_pretraining_reports_nsp_accuracy(tiny_bert: Path) -> None:
    cfg = PretrainConfig(base=str(tiny_bert), max_length=48, epochs=1, batch_size=16, head_steps=5, nsp=True)
    result = pretrain(_corpus(40, sentences=4), None, cfg, progress=False)
    assert 0.0 <= result.after["nsp_accuracy"] <= 1.0 and result.after["nsp_loss"] > 0


def test_pretrain_errors_name_the_problem(tiny_bert: Path, tmp_path: Path) -> None:
    base = str(tiny_bert)
    with pytest.raises(ConfigError, match="exceeds the encoder's limit of 128"):
        pretrain(_corpus(10), None, PretrainConfig(base=base, max_length=512), progress=False)
    with pytest.raises(DataError, match="two sentences or more"):
        pretrain(["one sentence only"] * 10, None, PretrainConfig(base=base, nsp=True, max_length=32), progress=False)
    with pytest.raises(DataError, match="at least 2"):
        pretrain(["lonely"], None, PretrainConfig(base=base), progress=False)
    (tmp_path / "taken").mkdir()
    with pytest.raises(ConfigError, match="already exists"):
        pretrain(_corpus(10), tmp_path / "taken", PretrainConfig(base=base), progress=False)
    with pytest.raises(ConfigError, match="mlm_probability"):
        PretrainConfig(mlm_probability=1.5)


def test_cli_pretrain(tiny_bert: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(_corpus(40)) + "\n", encoding="utf-8")
    args = ["pretrain", str(corpus), "--out", str(tmp_path / "enc"), "--base", str(tiny_bert)]
    result = CliRunner().invoke(app, [*args, "--max-length", "32", "--head-steps", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert "perplexity" in result.output and "--base" in result.output
    bad = CliRunner().invoke(app, ["pretrain", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "x")])
    assert bad.exit_code == 1 and "not found" in bad.output


def test_every_pretrain_setting_has_a_flag() -> None:
    import typer.main

    from hrlm.cli import app

    command = typer.main.get_command(app).commands["pretrain"]  # type: ignore[attr-defined]
    flags = {opt for p in command.params for opt in p.opts}
    for key in PretrainConfig.names():
        assert "--" + key.replace("_", "-") in flags, f"PretrainConfig.{key} has no `hrlm pretrain` flag"


def test_losses_select_the_masked_positions_as_a_boolean_mask_does(tiny_bert: Path) -> None:
    """The masked positions are chosen on the CPU (no GPU wait); the losses are those of plain boolean selection."""
    from torch import nn

    from hrlm.training.mlm_data import collate_examples
    from hrlm.training.pretraining import _losses, _mlm_head, load_pretraining_model

    tok = load_tokenizer(tiny_bert)
    model, _ = load_pretraining_model(tiny_bert, nsp=True)
    model.eval()
    examples = build_nsp_examples(tok, _corpus(20, sentences=4), max_length=40, rng=random.Random(1))[:6]
    cfg = PretrainConfig(nsp=True, mlm_probability=0.3)
    g = torch.Generator().manual_seed(0)
    batch = collate_examples(
        examples, cfg, pad_id=tok.pad_token_id, mask_id=tok.mask_token_id, vocab_size=len(tok), g=g
    )
    assert batch.nsp is not None and 3 <= int((batch.labels != IGNORE).sum()) < batch.labels.numel() // 2
    with torch.no_grad():
        mlm, nsp, nsp_logits = _losses(model, batch, torch.device("cpu"), "fp32")
        out = model.base_model(input_ids=batch.ids, attention_mask=batch.mask, token_type_ids=batch.types)
        chosen = batch.labels != IGNORE
        expected = nn.functional.cross_entropy(_mlm_head(model)(out.last_hidden_state[chosen]), batch.labels[chosen])
        expected_nsp = nn.functional.cross_entropy(model.cls.seq_relationship(out.pooler_output), batch.nsp)
    assert nsp is not None and nsp_logits is not None and nsp_logits.shape == (6, 2)
    assert torch.allclose(mlm, expected, atol=1e-6) and torch.allclose(nsp, expected_nsp, atol=1e-6)
