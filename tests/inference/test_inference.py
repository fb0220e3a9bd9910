from __future__ import annotations

import copy
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hrlm.errors import ConfigError, ModelError
from hrlm.inference.backends import check_passes, choose_backend, cpu_has_fast_bf16
from hrlm.inference.predictor import Prediction, Predictor, aggregate, length_batches, resolve_precision
from hrlm.modeling import ModelMeta, TaskSpec, load_model
from tests.conftest import make_texts


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_length_batches_cover_each_index_once_within_budget(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(1, 120) for _ in range(300)]
    batches = length_batches(lengths, max_tokens=500, max_batch=16)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(300))
    for b in batches:
        assert len(b) <= 16
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 500


def test_aggregate_mean_and_max() -> None:
    logits = np.array([[1.0, 0.0], [3.0, 2.0], [0.0, 5.0]], dtype=np.float32)
    np.testing.assert_allclose(aggregate(logits, [0, 0, 1], 2, "mean"), [[2.0, 1.0], [0.0, 5.0]])
    np.testing.assert_allclose(aggregate(logits, [0, 0, 1], 2, "max"), [[3.0, 2.0], [0.0, 5.0]])
    with pytest.raises(ConfigError, match="aggregate"):
        aggregate(logits, [0, 0, 1], 2, "median")


def test_predict_shapes_follow_the_input(trained_model: Path) -> None:
    p = Predictor.from_dir(trained_model)
    one = p.predict("my salary is late")
    assert isinstance(one, Prediction) and one.label in p.labels
    assert abs(sum(one.probabilities.values()) - 1.0) < 1e-4
    assert one.score == max(one.probabilities.values())
    many = p.predict(["my salary is late", "vpn locked"])
    assert isinstance(many, list) and len(many) == 2
    assert p.predict([]) == []
    with pytest.raises(ConfigError, match=r"texts\[1\]"):
        p.predict(["ok", 3])  # type: ignore[list-item]


def test_order_is_restored_and_batching_does_not_change_results(trained_model: Path) -> None:
    texts = [t for t, _ in make_texts(10, seed=5, length=(1, 30))]
    p = Predictor.from_dir(trained_model, backend="torch-fp32", max_tokens=64, max_batch=4)
    together = p.logits(texts)["label"]
    alone = np.vstack([p.logits([t])["label"] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    # in bf16 a window's neighbours change the rounding a little, never the label
    lowp = Predictor.from_dir(trained_model, backend="torch-bf16", max_tokens=64, max_batch=4)
    together = lowp.logits(texts)["label"]
    alone = np.vstack([lowp.logits([t])["label"] for t in texts])
    np.testing.assert_allclose(together, alone, atol=0.05)
    assert (together.argmax(1) == alone.argmax(1)).all()


def test_long_documents_are_windowed_and_aggregated(trained_model: Path) -> None:
    p = Predictor.from_dir(trained_model)
    long = " ".join(["vpn login locked password"] * 20)
    enc = p.encode([long])
    assert len(enc.windows) > 1
    assert p.predict(long).label == "it"


def test_truncation_can_be_overridden_at_inference(trained_model: Path) -> None:
    long = " ".join(["vpn login locked password"] * 20)
    assert len(Predictor.from_dir(trained_model).encode([long]).windows) > 1
    assert len(Predictor.from_dir(trained_model, truncate="head+tail").encode([long]).windows) == 1
    with pytest.raises(ConfigError, match="truncate"):
        Predictor.from_dir(trained_model, truncate="tail")


def test_precision_choice() -> None:
    import torch

    assert resolve_precision("fp32", torch.device("cpu")) == "fp32"
    assert resolve_precision("auto", torch.device("cpu")) in ("fp32", "bf16")
    with pytest.raises(ConfigError, match="precision"):
        resolve_precision("fp8", torch.device("cpu"))


def test_public_api_is_sorted_and_importable() -> None:
    import hrlm

    assert hrlm.__all__ == sorted(hrlm.__all__)
    for name in hrlm.__all__:
        assert getattr(hrlm, name) is not None
    assert hrlm.load is not None and hrlm.Predictor.from_dir


# --- backends ---------------------------------------------------------------------------------

TOLERANCE = {"torch-bf16": 0.1, "torch-int8": 0.1, "onnx-fp32": 1e-4, "onnx-int8": 0.1}


@pytest.mark.parametrize("backend", sorted(TOLERANCE))
def test_every_backend_agrees_with_fp32(compressed_model: Path, backend: str) -> None:
    texts = [t for t, _ in make_texts(20, seed=9, length=(1, 40))]
    reference = Predictor.from_dir(compressed_model, backend="torch-fp32", max_tokens=128).logits(texts)["label"]
    p = Predictor.from_dir(compressed_model, backend=backend, max_tokens=128)
    assert p.backend_name == backend
    got = p.logits(texts)["label"]
    assert got.shape == reference.shape
    np.testing.assert_allclose(got, reference, atol=TOLERANCE[backend])
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_onnx_batches_of_any_shape_match_one_by_one(compressed_model: Path) -> None:
    texts = [t for t, _ in make_texts(6, seed=3, length=(1, 60))]
    p = Predictor.from_dir(compressed_model, backend="onnx-fp32", max_tokens=64, max_batch=5)
    alone = np.vstack([p.logits([t])["label"] for t in texts])  # batches of one: no padding at all
    np.testing.assert_allclose(p.logits(texts)["label"], alone, atol=1e-5)


def test_unknown_backend_is_a_one_line_error(trained_model: Path) -> None:
    with pytest.raises(ConfigError, match=r"backend = 'onnx-fp8' is not valid; choose one of auto, torch-fp32"):
        Predictor.from_dir(trained_model, backend="onnx-fp8")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="needs a CUDA GPU"):
            Predictor.from_dir(trained_model, backend="torch-fp16")


def test_missing_onnxruntime_says_how_to_install(trained_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # makes `import onnxruntime` fail
    with pytest.raises(ConfigError, match=r"pip install 'hrlm\[onnx\]'"):
        Predictor.from_dir(trained_model, backend="onnx-int8")


PASSING = {"n": 500, "label_agreement": 0.996, "accuracy_delta": -0.002, "docs_per_s": 50.0}


def _meta_with(check: dict | None, backend: str = "torch-int8") -> ModelMeta:
    """Metadata whose checks hold fp32 (10 docs/s) and ``check`` for ``backend``."""
    meta = ModelMeta(
        tasks=[TaskSpec("label", ["a", "b"])], pooling="mean", max_length=16, stride=4, truncate="none",
        aggregate="mean", base_encoder="tiny",
    )  # fmt: skip
    if check is not None:
        meta.backend_checks = {"torch-fp32": {**PASSING, "docs_per_s": 10.0}, backend: check}
    return meta


def test_auto_without_checks_is_the_unquantized_reference() -> None:
    choice = choose_backend("auto", _meta_with(None), torch.device("cpu"))
    assert choice.name == ("torch-bf16" if cpu_has_fast_bf16() else "torch-fp32")
    assert "no backend has passed" in choice.reason


@pytest.mark.parametrize(
    ("check", "chosen"),
    [
        (PASSING, "torch-int8"),
        ({**PASSING, "label_agreement": 0.985}, "torch-fp32"),  # labels changed too often
        ({**PASSING, "accuracy_delta": -0.004}, "torch-fp32"),  # lost 0.4 points
        ({**PASSING, "accuracy_delta": 0.01}, "torch-int8"),  # gaining accuracy is fine
        ({**PASSING, "n": 40}, "torch-fp32"),  # too few documents to tell
        ({**PASSING, "passed": True, "label_agreement": 0.5}, "torch-fp32"),  # the numbers decide, not the verdict
        ({**PASSING, "docs_per_s": 5.0}, "torch-fp32"),  # passed, but slower than fp32
        # every document's log-odds moved one way: certain and large enough to move labels
        ({**PASSING, "margin_shift": {"label": "b", "mean": -0.024, "se": 0.004, "t": -5.9}}, "torch-fp32"),
        ({**PASSING, "margin_shift": {"label": "b", "mean": 0.004, "se": 0.0025, "t": 1.6}}, "torch-int8"),  # noise
        ({**PASSING, "margin_shift": {"label": "b", "mean": 0.003, "se": 0.0001, "t": 30.0}}, "torch-int8"),  # tiny
    ],
)
def test_auto_uses_a_quantized_backend_only_after_a_passing_check(check: dict, chosen: str) -> None:
    choice = choose_backend("auto", _meta_with(check), torch.device("cpu"))
    assert (choice.name, choice.device.type) == (chosen, "cpu")


def test_auto_picks_by_the_race_in_the_same_rounds_where_every_check_has_it() -> None:
    # onnx-int8's median docs/s is lower, but it was faster than torch-int8 in the rounds they shared
    meta = _meta_with({**PASSING, "docs_per_s": 50.0, "race_relative": 0.9})
    meta.backend_checks["torch-fp32"]["race_relative"] = 0.5
    meta.backend_checks["onnx-int8"] = {**PASSING, "docs_per_s": 40.0, "race_relative": 1.1}
    assert choose_backend("auto", meta, torch.device("cpu")).name == "onnx-int8"
    del meta.backend_checks["torch-fp32"]["race_relative"]  # a check from elsewhere: docs/s decide
    assert choose_backend("auto", meta, torch.device("cpu")).name == "torch-int8"


def test_auto_skips_onnx_when_onnxruntime_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    meta = _meta_with(PASSING, backend="onnx-int8")
    assert choose_backend("auto", meta, torch.device("cpu")).name == "onnx-int8"
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert choose_backend("auto", meta, torch.device("cpu")).name == "torch-fp32"


@pytest.mark.parametrize("native", [True, False])
def test_auto_skips_bf16_checked_elsewhere_on_a_cpu_that_emulates_it(
    native: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a folder checked on a CPU with AVX-512 BF16, where bf16 was fastest, then moved to an AVX2 one
    meta = _meta_with({**PASSING, "docs_per_s": 40.0}, backend="torch-bf16")
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_fast_bf16", lambda: native)
    assert choose_backend("auto", meta, torch.device("cpu")).name == ("torch-bf16" if native else "torch-fp32")


def test_bf16_asked_for_on_a_cpu_that_emulates_it_warns(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr("hrlm.inference.predictor.cpu_has_fast_bf16", lambda: False)
    with caplog.at_level(logging.WARNING, logger="hrlm"):
        assert choose_backend("torch-bf16", _meta_with(None), torch.device("cpu")).name == "torch-bf16"
        assert resolve_precision("bf16", torch.device("cpu")) == "bf16"
        assert resolve_precision("auto", torch.device("cpu")) == "fp32"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("neither AVX-512 BF16 nor AMX" in w for w in warnings)
    assert warnings[0].startswith("backend torch-bf16") and warnings[1].startswith("precision bf16")


def test_compressed_model_records_checks_and_auto_follows_them(compressed_model: Path) -> None:
    meta = json.loads((compressed_model / "hrlm.json").read_text())
    checks = meta["backend_checks"]
    assert set(checks) >= {"torch-fp32", "torch-int8", "onnx-fp32", "onnx-int8"}
    for check in checks.values():
        assert check["n"] == 120 and 0.0 <= check["label_agreement"] <= 1.0
    p = Predictor.from_dir(compressed_model)
    passing = {k: v for k, v in checks.items() if check_passes(v)}
    if len(passing) > 1:  # compress raced them: each has its speed against the others in the same rounds
        assert all(v["race_relative"] > 0 for v in passing.values())
    key = "race_relative" if len(passing) > 1 else "docs_per_s"
    assert p.backend_name == max(passing, key=lambda k: passing[k][key])


def test_onnx_is_exported_once_to_the_cache(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    first = Predictor.from_dir(trained_model, backend="onnx-fp32")
    files = list(tmp_path.glob("onnx/*/model.onnx"))
    assert len(files) == 1 and not (trained_model / "model.onnx").exists()
    stamp = files[0].stat().st_mtime_ns
    second = Predictor.from_dir(trained_model, backend="onnx-fp32")
    assert files[0].stat().st_mtime_ns == stamp  # reused, not exported again
    texts = ["vpn login locked", "my salary is late"]
    np.testing.assert_allclose(first.logits(texts)["label"], second.logits(texts)["label"])


@pytest.mark.parametrize("vnni", [True, False])
def test_onnx_int8_weights_are_7_bit_on_a_cpu_without_vnni(
    vnni: bool, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without VNNI, ONNX Runtime's u8 x s8 products saturate (AVX2's vpmaddubsw): 7-bit weights avoid it
    pytest.importorskip("onnxruntime")
    import onnxruntime.quantization as ortq

    seen: list[bool] = []
    real = ortq.quantize_dynamic

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs["reduce_range"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ortq, "quantize_dynamic", spy)
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_vnni", lambda: vnni)
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    Predictor.from_dir(trained_model, backend="onnx-int8")
    assert seen == [not vnni]
    cached = [p.name for p in tmp_path.glob("onnx/*/*.onnx")]
    assert sorted(cached) == sorted(["model.onnx", "model.int8.onnx" if vnni else "model.int8.7bit.onnx"])


def test_threads_and_max_length_can_be_set(trained_model: Path) -> None:
    p = Predictor.from_dir(trained_model, threads=1, max_length=8)
    assert p.threads == 1 and torch.get_num_threads() == 1
    assert max(len(w) for w in p.encode([" ".join(["vpn login locked"] * 10)]).windows) == 8
    with pytest.raises(ConfigError, match="max_length"):
        Predictor.from_dir(trained_model, max_length=4096)
    with pytest.raises(ConfigError, match="threads"):
        Predictor.from_dir(trained_model, threads=0)


def test_the_predictor_adds_the_offset_its_backend_check_recorded(trained_model: Path) -> None:
    model, tokenizer, meta = load_model(trained_model)
    texts = ["my payslip is wrong", "reset my password please", "holiday request"]
    plain = Predictor(model, tokenizer, meta, backend="torch-fp32").logits(texts)["label"]
    labels = meta.tasks[0].labels
    offset = [0.5 * (i + 1) for i in range(len(labels))]
    checked = copy.deepcopy(meta)
    checked.backend_checks = {"torch-fp32": {"output_offset": {"label": offset}}}
    got = Predictor(model, tokenizer, checked, backend="torch-fp32").logits(texts)["label"]
    np.testing.assert_allclose(got - plain, np.tile(offset, (len(texts), 1)), atol=1e-5)
    # the probabilities, the labels and the embeddings' logits read the same offset
    p = Predictor(model, tokenizer, checked, backend="torch-fp32")
    np.testing.assert_allclose(p.embed_with_logits(texts)[1]["label"], got, atol=1e-5)
    checked.backend_checks = {"torch-fp32": {"output_offset": {"label": offset[:-1]}}}
    with pytest.raises(
        ModelError, match=r"output_offset for task 'label' has shape .* run `hrlm compress --data` again"
    ):
        Predictor(model, tokenizer, checked, backend="torch-fp32")
