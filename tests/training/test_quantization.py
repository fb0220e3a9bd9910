from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hrlm.inference import Predictor, int8_linears, quantize_torch_int8
from hrlm.modeling import ModelMeta, encoder_layers, load_model
from hrlm.training import quantization
from hrlm.training.compression import compress
from tests.conftest import make_texts


def _linear_types(model: nn.Module) -> dict[str, bool]:
    """``<block>.<path>`` of every linear layer of the blocks, float or int8: whether it is still a float nn.Linear."""
    int8 = torch.ao.nn.quantized.dynamic.Linear
    return {
        f"{i}.{name}": type(module) is nn.Linear
        for i, block in enumerate(encoder_layers(model.encoder))  # type: ignore[attr-defined]
        for name, module in block.named_modules()
        if isinstance(module, (nn.Linear, int8))
    }


def test_int8_keeps_the_named_layers_in_float32(trained_model: Path) -> None:
    model, _, _ = load_model(trained_model)
    names = int8_linears(model)
    assert len(names) == 2 * 6 and names[0] == "0.attention.self.query"
    keep = ["1.output.dense", "0.attention.self.value"]
    types = _linear_types(quantize_torch_int8(model, keep))
    assert sorted(types) == sorted(names)
    assert sorted(n for n, is_float in types.items() if is_float) == sorted(keep)
    assert not any(_linear_types(quantize_torch_int8(model)).values())
    original = _linear_types(model)  # quantized copies: the model itself is untouched
    assert sorted(original) == sorted(names) and all(original.values())


def test_sensitivity_is_each_layers_own_int8_error(trained_model: Path) -> None:
    model, tokenizer, meta = load_model(trained_model)
    texts = [t for t, _ in make_texts(8)]
    ranked = quantization.sensitivity(model, tokenizer, meta, texts, threads=1)
    assert [n for n, _ in ranked] != [] and sorted(n for n, _ in ranked) == sorted(int8_linears(model))
    values = [v for _, v in ranked]
    assert values == sorted(values, reverse=True) and all(v > 0 for v in values)
    # recompute the top layer's error from its recorded inputs, with its own int8 version
    name, value = ranked[0]
    block, path = name.split(".", 1)
    layer = dict(encoder_layers(model.encoder)[int(block)].named_modules())[path]
    q_layer = dict(encoder_layers(quantize_torch_int8(model).encoder)[int(block)].named_modules())[path]
    seen: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].detach().clone()))
    try:
        Predictor(model, tokenizer, meta, backend="torch-fp32", threads=1, packing=False, calibrate=False).predict(
            texts
        )
    finally:
        handle.remove()
    # batch by batch, as the pass saw them: int8 activations take their scale from the batch they are in
    with torch.inference_mode():
        error = sum(float((q_layer(x) - layer(x)).pow(2).sum()) for x in seen)
        norm = sum(float(layer(x).pow(2).sum()) for x in seen)
    expected = (error / norm) ** 0.5
    assert value == pytest.approx(expected, rel=1e-4)


def test_search_keeps_the_worst_layers_until_the_check_passes(
    trained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model, tokenizer, meta = load_model(trained_model)
    ranking = [(f"layer{i}", 1.0 / (i + 1)) for i in range(12)]
    monkeypatch.setattr(quantization, "sensitivity", lambda *a, **k: ranking)
    calls: list[list[str]] = []

    def check(trial: ModelMeta) -> dict[str, Any]:
        layers = trial.backend_checks["torch-int8"]["fp32_layers"]
        calls.append(layers)
        agreement = 0.995 if "layer3" in layers else 0.97  # passes once the fourth-worst layer is kept
        return {"n": 200, "label_agreement": agreement, "accuracy_delta": 0.0, "docs_per_s": 50.0 - len(layers)}

    found, tried = quantization.search(model, meta, ["x"], tokenizer, check, threads=1, fp32_docs_per_s=10.0)
    assert [len(c) for c in calls] == [1, 2, 3, 4]
    assert found["fp32_layers"] == ["layer0", "layer1", "layer2", "layer3"]
    assert [t["passed"] for t in tried] == [False, False, False, True]
    assert found["sensitivity"]["layer0"] == 1.0
    # no candidate passes, and from 6 layers on it is no faster than fp32: the search stops there
    calls.clear()
    found, tried = quantization.search(
        model, meta, ["x"], tokenizer, lambda t: {**check(t), "label_agreement": 0.9}, threads=1, fp32_docs_per_s=44.0
    )
    assert [len(c) for c in calls] == [1, 2, 3, 4, 6] and not tried[-1]["passed"]


def test_compress_searches_layers_when_full_int8_fails(
    trained_model: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # every check fails (agreement can never reach 101%): compress tries keeping layers in float32
    monkeypatch.setattr("hrlm.inference.backends.MIN_LABEL_AGREEMENT", 1.01)
    out = tmp_path / "int8"
    result = compress(trained_model, out, quantize="int8", data=tickets_csv)
    systems = [r["system"] for r in result.rows]
    assert "compressed torch-int8, every layer" in systems
    searched = [s for s in systems if s.startswith("compressed torch-int8, ") and s.endswith("layers in fp32")]
    assert len(searched) == 1
    summary = json.loads((out / "compress.json").read_text())
    tried = summary["int8_search"]
    assert tried and tried[0]["fp32_layers"] == 1 and not any(t["passed"] for t in tried)
    kept = result.checks["torch-int8"]["fp32_layers"]
    assert len(kept) == tried[-1]["fp32_layers"] and any("still failed" in note for note in result.notes)
    # the folder's torch-int8 backend keeps exactly those layers in float32
    predictor = Predictor.from_dir(out, backend="torch-int8", threads=1)
    types = _linear_types(predictor.backend.model)  # type: ignore[attr-defined]
    assert sorted(n for n, is_float in types.items() if is_float) == sorted(kept)


def test_compressing_a_compressed_folder_checks_int8_in_every_layer_first(
    trained_model: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "first"
    compress(trained_model, first, quantize="int8", data=tickets_csv)
    meta_file = first / "hrlm.json"
    data = json.loads(meta_file.read_text())
    data["backend_checks"]["torch-int8"]["fp32_layers"] = ["0.output.dense"]  # as a searched folder has
    meta_file.write_text(json.dumps(data))
    import hrlm.inference.backends as backends

    kept: list[list[str]] = []
    real = backends.quantize_torch_int8

    def spy(model: Any, keep_fp32: Any = ()) -> Any:
        kept.append(list(keep_fp32))
        return real(model, keep_fp32)

    monkeypatch.setattr(backends, "quantize_torch_int8", spy)
    compress(first, tmp_path / "second", quantize="int8", data=tickets_csv)
    assert kept and kept[0] == []  # the source's float32 layers do not carry over into the new check
