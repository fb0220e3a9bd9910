from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from hrlm.errors import ConfigError
from hrlm.inference import Predictor, cpu_has_fast_bf16, cpu_has_vnni, mixed
from hrlm.inference.backends import check_passes, choose_backend, quiet_ao_quantization
from hrlm.modeling import ModelMeta, TaskSpec, encoder_layers, load_model
from hrlm.training.compression import compress
from tests.conftest import make_texts

native = pytest.mark.skipif(
    not (cpu_has_fast_bf16() and cpu_has_vnni()),
    reason="torch-bf16-int8 is checked only on a CPU with native bf16 (AVX-512 BF16 or AMX) and VNNI",
)


def _outlier_inputs(rows: int, width: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width, generator=gen)
    x[:, 3] *= 40.0  # a hidden channel tens of times larger than the rest, as in BERT's hidden states
    return x


def test_smoothing_keeps_int8_close_where_plain_int8_drifts() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 96)
    x = _outlier_inputs(256, 64)
    with torch.no_grad():
        exact = linear(x)
    smoothed = mixed.SmoothedInt8Linear(linear, x.abs().amax(0))
    with quiet_ao_quantization():
        plain = torch.ao.quantization.quantize_dynamic(
            nn.Sequential(linear), {nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}, dtype=torch.qint8
        )[0]

    def error(out: torch.Tensor) -> float:
        return float((out - exact).norm() / exact.norm())

    with torch.no_grad():
        assert error(smoothed(x)) < 0.03  # 7-bit activations on x86: about 2% (plain int8: about 9%)
        assert error(smoothed(x)) < error(plain(x)) / 3
        half = smoothed(x.bfloat16())
    assert half.dtype == torch.bfloat16  # takes and returns the encoder's dtype
    assert float((half.float() - exact).norm() / exact.norm()) < 0.035


def test_activation_maxima_are_each_layers_largest_inputs_on_real_tokens(trained_model: Path) -> None:
    model, tokenizer, meta = load_model(trained_model)
    texts = [t for t, _ in make_texts(6, seed=4, length=(2, 30))]
    maxima = mixed.activation_maxima(model, tokenizer, meta, texts, threads=1)
    assert sorted(maxima) == sorted(mixed.layer_names(model))
    # the same maxima from a padded float32 pass of the plain encoder, padding excluded
    blocks: list[Any] = list(encoder_layers(model.encoder))
    seen: dict[str, list[torch.Tensor]] = {}
    hooks = []
    for i, block in enumerate(blocks):
        for kind, module in (("qkv", block.attention.self.query), ("intermediate", block.intermediate.dense)):
            hooks.append(
                module.register_forward_hook(
                    lambda _m, inp, _o, key=f"{i}.{kind}": seen.setdefault(key, []).append(inp[0])
                )
            )
    predictor = Predictor(model, tokenizer, meta, backend="torch-fp32", threads=1, packing=False, calibrate=False)
    enc = predictor.encode(texts)
    try:
        with torch.no_grad():
            for window in enc.windows:  # one window at a time: no padding at all
                model(torch.tensor([list(window)]), torch.ones(1, len(window), dtype=torch.long))
    finally:
        for hook in hooks:
            hook.remove()
    for key, inputs in seen.items():
        expected = torch.cat([t.reshape(-1, t.shape[-1]) for t in inputs]).abs().amax(0)
        torch.testing.assert_close(maxima[key], expected, atol=1e-4, rtol=1e-4)


def test_the_backend_needs_the_ranges_compress_writes(trained_model: Path) -> None:
    with pytest.raises(ConfigError, match="hrlm compress --quantize int8 --data"):
        Predictor.from_dir(trained_model, backend="torch-bf16-int8")


def _meta_with_checks(checks: dict[str, float]) -> ModelMeta:
    passing = {"n": 200, "label_agreement": 1.0, "accuracy_delta": 0.0}
    meta = ModelMeta(
        tasks=[TaskSpec("label", ["a", "b"])], pooling="mean", max_length=16, stride=4, truncate="none",
        aggregate="mean", base_encoder="tiny",
    )  # fmt: skip
    meta.backend_checks = {name: {**passing, "docs_per_s": speed} for name, speed in checks.items()}
    return meta


@pytest.mark.parametrize(
    ("bf16", "vnni", "chosen"),
    [
        (True, True, "torch-bf16-int8"),
        (True, False, "torch-bf16"),
        (False, True, "torch-fp32"),
        (False, False, "torch-fp32"),
    ],
)
def test_auto_uses_the_mixed_backend_only_where_bf16_and_vnni_are_native(
    bf16: bool, vnni: bool, chosen: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # checked where it was fastest, then moved to CPUs that lack one or both
    meta = _meta_with_checks({"torch-fp32": 10.0, "torch-bf16": 30.0, "torch-bf16-int8": 33.0})
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_fast_bf16", lambda: bf16)
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_vnni", lambda: vnni)
    assert choose_backend("auto", meta, torch.device("cpu")).name == chosen


def test_compress_skips_the_mixed_backend_where_bf16_is_emulated(
    trained_model: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("hrlm.training.compression.cpu_has_fast_bf16", lambda: False)
    result = compress(trained_model, tmp_path / "int8", quantize="int8", data=tickets_csv)
    assert "torch-bf16-int8" not in result.checks and not (tmp_path / "int8" / mixed.SMOOTHING_FILE).exists()


@native
def test_compress_checks_the_mixed_backend_and_the_predictor_loads_it(compressed_model: Path) -> None:
    assert (compressed_model / mixed.SMOOTHING_FILE).exists()
    check = json.loads((compressed_model / "hrlm.json").read_text())["backend_checks"]["torch-bf16-int8"]
    model, _, _ = load_model(compressed_model)
    assert check["n"] == 120 and check["smoothing"]["alpha"] == mixed.ALPHA
    assert check["int8_layers"] in (mixed.layer_names(model), mixed.layer_names(model, ("intermediate",)))
    summary = json.loads((compressed_model / "compress.json").read_text())
    assert any(row["system"].startswith("compressed torch-bf16-int8, int8 in") for row in summary["rows"])

    texts = [t for t, _ in make_texts(20, seed=9, length=(1, 40))]
    reference = Predictor.from_dir(compressed_model, backend="torch-fp32", max_tokens=128).logits(texts)["label"]
    for packing in (True, False):  # the fused projection of packed batches and the encoder's own three
        p = Predictor.from_dir(compressed_model, backend="torch-bf16-int8", max_tokens=128, packing=packing)
        assert p.backend_name == "torch-bf16-int8"
        assert p.backend.int8_layers == check["int8_layers"]  # type: ignore[attr-defined]
        got = p.logits(texts)["label"]
        np.testing.assert_allclose(got, reference, atol=0.1)
        assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.95
    assert check_passes(check) == check["passed"]


def test_only_the_named_layers_are_quantized(trained_model: Path) -> None:
    model, tokenizer, meta = load_model(trained_model)
    maxima = mixed.activation_maxima(model, tokenizer, meta, [t for t, _ in make_texts(3)], threads=1)
    backend = mixed.MixedBackend(model, maxima, ["1.intermediate"])
    kinds = {
        f"{i}.{name}": type(module).__name__
        for i, block in enumerate(list[Any](encoder_layers(backend.model.encoder)))
        for name, module in (("query", block.attention.self.query), ("intermediate", block.intermediate.dense))
    }
    assert kinds == {
        "0.query": "Linear",
        "0.intermediate": "Linear",
        "1.query": "Linear",
        "1.intermediate": "SmoothedInt8Linear",
    }
    own: Any = encoder_layers(model.encoder)[1]
    assert type(own.intermediate.dense) is nn.Linear  # the model itself is untouched
    with pytest.raises(ConfigError, match=r"no ranges for 9\.qkv"):
        mixed.MixedBackend(model, maxima, ["9.qkv"])
