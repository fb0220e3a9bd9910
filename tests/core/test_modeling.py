from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from hrlm.encoders import load_tokenizer
from hrlm.errors import ConfigError, ModelError, ModelNotFound
from hrlm.inference.predictor import Predictor, collate
from hrlm.modeling import META_FILE, ModelMeta, TaskSpec, build_model, load_model, read_meta, save_model
from hrlm.text import encode_documents

TEXTS = ["my salary payslip is late", "vpn login locked", "sick leave days"]


def _inputs(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    enc = encode_documents(load_tokenizer(folder), TEXTS, max_length=16)
    return collate(enc.windows, 0)


def test_trained_folder_has_the_documented_files(trained_model: Path) -> None:
    names = {p.name for p in trained_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", META_FILE, "report"} <= names
    meta = json.loads((trained_model / META_FILE).read_text())
    assert meta["tasks"][0]["labels"] == ["it", "leave", "payroll"]
    assert meta["data_fingerprint"].startswith("sha256:")
    assert meta["train_config"]["max_length"] == 16 and meta["max_length"] == 16
    assert meta["hrlm_version"] and meta["metrics"]["split"] == "test"
    assert not any(p.name.endswith(".tmp") for p in trained_model.parent.iterdir())


def test_plain_transformers_loads_the_model_with_identical_logits(tiny_bert: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    task = TaskSpec("label", ["it", "leave", "payroll"])
    model = build_model(tiny_bert, [task], pooling="auto")
    assert model.pooling == "pooler"  # BERT's own head: what AutoModelForSequenceClassification uses
    meta = ModelMeta(
        tasks=[task], pooling="pooler", max_length=16, stride=4, truncate="none", aggregate="mean", base_encoder="tiny"
    )
    save_model(model, load_tokenizer(tiny_bert), meta, tmp_path)
    hf = AutoModelForSequenceClassification.from_pretrained(str(tmp_path)).eval()
    ours, _, _ = load_model(tmp_path)
    ids, mask = _inputs(tmp_path)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask).logits
        got = ours(ids, mask)["label"]
    torch.testing.assert_close(got, expected)
    assert hf.config.id2label == {0: "it", 1: "leave", 2: "payroll"}


def test_an_fp16_checkpoint_trains_with_float32_weights(tiny_bert: Path, tmp_path: Path) -> None:
    import shutil

    from safetensors.torch import load_file, save_file

    half = tmp_path / "fp16"
    shutil.copytree(tiny_bert, half)
    weights = load_file(str(half / "model.safetensors"))
    save_file({k: v.half() for k, v in weights.items()}, str(half / "model.safetensors"), metadata={"format": "pt"})
    model = build_model(half, [TaskSpec("label", ["a", "b"])])
    assert {p.dtype for p in model.parameters()} == {torch.float32}  # AdamW's small updates survive
    word = model.encoder.embeddings.word_embeddings.weight
    assert torch.equal(word, weights["embeddings.word_embeddings.weight"].half().float())


def test_multi_task_heads_round_trip(tiny_bert: Path, tmp_path: Path) -> None:
    tasks = [
        TaskSpec("topic", ["a", "b", "c"], multi_label=True, thresholds=[0.4, 0.5, 0.6]),
        TaskSpec("tone", ["neg", "pos"]),
    ]
    model = build_model(tiny_bert, tasks, pooling="mean").eval()
    meta = ModelMeta(
        tasks=tasks, pooling="mean", max_length=16, stride=4, truncate="none", aggregate="mean", base_encoder="tiny"
    )
    save_model(model, load_tokenizer(tiny_bert), meta, tmp_path)
    loaded, _, meta2 = load_model(tmp_path)
    ids, mask = _inputs(tiny_bert)
    with torch.no_grad():
        before, after = model(ids, mask), loaded(ids, mask)
    for name in ("topic", "tone"):
        torch.testing.assert_close(before[name], after[name])
    assert meta2.tasks[0].thresholds == [0.4, 0.5, 0.6]
    pred = Predictor(loaded, load_tokenizer(tmp_path), meta2).predict("vpn login")
    assert set(pred.tasks) == {"topic", "tone"} and isinstance(pred.tasks["topic"].label, list)


def test_freeze_layers_and_encoder(tiny_bert: Path) -> None:
    model = build_model(tiny_bert, [TaskSpec("label", ["a", "b"])])
    model.freeze(1)
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert any(n.startswith("encoder.embeddings") for n in frozen)
    assert any(n.startswith("encoder.encoder.layer.0.") for n in frozen)
    assert not any(n.startswith("encoder.encoder.layer.1.") for n in frozen)
    assert all(p.requires_grad for p in model.heads.parameters())
    with pytest.raises(ConfigError, match="only 2 layers"):
        model.freeze(3)
    model.freeze(encoder=True)
    assert all(not p.requires_grad for p in model.encoder.parameters())


def test_missing_and_damaged_folders(tmp_path: Path, trained_model: Path) -> None:
    with pytest.raises(ModelNotFound, match="not found"):
        read_meta(tmp_path / "nope")
    with pytest.raises(ModelError, match="not an hrlm model folder"):
        read_meta(tmp_path)
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(ModelError, match="damaged"):
        read_meta(tmp_path)
    data = json.loads((trained_model / META_FILE).read_text())
    data["format"] = 99
    (tmp_path / META_FILE).write_text(json.dumps(data))
    with pytest.raises(ModelError, match="newer hrlm"):
        read_meta(tmp_path)
