"""The OpenVINO backends: same logits as torch, converted once into the cache, and no telemetry."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from hrlm.encoders import load_tokenizer
from hrlm.errors import ConfigError, ModelError
from hrlm.inference import openvino_backend
from hrlm.inference.backends import check_passes, choose_backend, cpu_has_fast_bf16, cpu_has_vnni
from hrlm.inference.calibrate import model_shape
from hrlm.inference.predictor import Predictor, collate
from hrlm.modeling import ModelMeta, TaskSpec, build_model, load_model
from hrlm.training import compression
from tests.conftest import make_texts

if not openvino_backend.available():  # not importorskip: a plain `import openvino` reports its use to Intel
    pytest.skip("the openvino extra is not installed (pip install 'hrlm[openvino]')", allow_module_level=True)

PROJECT = Path(__file__).resolve().parents[2]
native_bf16 = pytest.mark.skipif(not cpu_has_fast_bf16(), reason="this CPU has neither AVX-512 BF16 nor AMX")


def _texts(n: int = 12, seed: int = 4, length: tuple[int, int] = (1, 60)) -> list[str]:
    return [t for t, _ in make_texts(n, seed=seed, length=length)]


def _meta() -> ModelMeta:
    """Metadata of a two-label model, for choosing a backend from its checks."""
    return ModelMeta(
        tasks=[TaskSpec("label", ["a", "b"])], pooling="mean", max_length=16, stride=4, truncate="none",
        aggregate="mean", base_encoder="tiny",
    )  # fmt: skip


def test_fp32_logits_equal_torch_fp32_in_batches_of_any_shape(trained_model: Path) -> None:
    texts = _texts()
    reference = Predictor.from_dir(trained_model, backend="torch-fp32", packing=False).logits(texts)["label"]
    p = Predictor.from_dir(trained_model, backend="openvino-fp32", max_tokens=64, max_batch=5)
    assert p.backend_name == "openvino-fp32" and not p.backend.supports_packing
    got = p.logits(texts)["label"]
    np.testing.assert_allclose(got, reference, atol=1e-4)
    alone = np.vstack([p.logits([t])["label"] for t in texts[:6]])  # batches of one: no padding
    np.testing.assert_allclose(alone, reference[:6], atol=1e-4)


@native_bf16
def test_bf16_agrees_with_fp32(trained_model: Path) -> None:
    texts = _texts(20, seed=9, length=(1, 40))
    reference = Predictor.from_dir(trained_model, backend="torch-fp32").logits(texts)["label"]
    got = Predictor.from_dir(trained_model, backend="openvino-bf16").logits(texts)["label"]
    np.testing.assert_allclose(got, reference, atol=0.1)
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.95


def test_bf16_on_a_cpu_without_native_bf16_is_a_one_line_error(
    trained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openvino_backend, "cpu_has_fast_bf16", lambda: False)
    converted: list[object] = []
    monkeypatch.setattr(openvino_backend, "convert", lambda model: converted.append(model))
    with pytest.raises(ConfigError, match=r"openvino-bf16 needs a CPU with AVX-512 BF16 or AMX.*use openvino-fp32"):
        Predictor.from_dir(trained_model, backend="openvino-bf16")
    assert converted == []  # refused before converting


def test_every_task_of_a_multi_task_model_gets_its_own_logits(tiny_bert: Path) -> None:
    tasks = [TaskSpec("dept", ["it", "hr", "pay"]), TaskSpec("urgent", ["no", "yes"])]
    model = build_model(tiny_bert, tasks, pooling="mean")
    meta = ModelMeta(
        tasks=tasks, pooling="mean", max_length=32, stride=8, truncate="none", aggregate="mean", base_encoder="tiny"
    )
    tokenizer = load_tokenizer(tiny_bert)
    texts = _texts(6, seed=2, length=(3, 50))  # some longer than one window
    kwargs = {"threads": 1, "packing": False, "calibrate": False}
    reference = Predictor(model, tokenizer, meta, backend="torch-fp32", **kwargs).logits(texts)
    got = Predictor(model, tokenizer, meta, backend="openvino-fp32", **kwargs).logits(texts)  # in memory: no folder
    assert set(got) == {"dept", "urgent"}
    for name in got:
        assert got[name].shape == reference[name].shape
        np.testing.assert_allclose(got[name], reference[name], atol=1e-4)


def test_converted_once_into_the_cache_and_a_damaged_entry_is_converted_again(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    calls: list[int] = []
    real = openvino_backend.convert
    monkeypatch.setattr(openvino_backend, "convert", lambda model: calls.append(1) or real(model))
    texts = ["vpn login locked", "my salary is late"]
    first = Predictor.from_dir(trained_model, backend="openvino-fp32", calibrate=False).logits(texts)["label"]
    entries = list(tmp_path.glob("openvino/*/model.xml"))
    assert len(entries) == 1 and (entries[0].parent / "model.bin").is_file() and calls == [1]
    assert not list(tmp_path.glob("openvino/.*"))  # no temporary folder left behind
    second = Predictor.from_dir(trained_model, backend="openvino-fp32", calibrate=False).logits(texts)["label"]
    assert calls == [1]  # read from the cache
    np.testing.assert_allclose(first, second, atol=1e-5)
    entries[0].write_text("<net broken", encoding="utf-8")
    third = Predictor.from_dir(trained_model, backend="openvino-fp32", calibrate=False).logits(texts)["label"]
    assert calls == [1, 1] and "does not load" in caplog.text
    np.testing.assert_allclose(first, third, atol=1e-5)
    assert "<net broken" not in entries[0].read_text(encoding="utf-8")  # the damaged entry was replaced


def test_threads_share_one_backend_safely(trained_model: Path) -> None:
    p = Predictor.from_dir(trained_model, backend="openvino-fp32", calibrate=False, threads=1)
    groups = [_texts(8, seed=s, length=(2, 40)) for s in range(4)]
    serial = [p.logits(g)["label"] for g in groups]
    results: dict[int, np.ndarray] = {}

    def score(i: int) -> None:
        for _ in range(3):
            results[i] = p.logits(groups[i])["label"]

    workers = [threading.Thread(target=score, args=(i,)) for i in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i, expected in enumerate(serial):
        np.testing.assert_array_equal(results[i], expected)


def test_batches_run_in_streams_give_the_same_logits_in_their_order(trained_model: Path) -> None:
    # two threads, two streams: the queued batches come back in the windows' order, and from several
    # caller threads at once each gets its own
    texts = _texts(30, seed=5, length=(1, 60))
    p = Predictor.from_dir(trained_model, backend="openvino-fp32", calibrate=False, threads=2, max_tokens=64)
    assert p.backend.stream_choices() == (1, 2) and not p.backend.asynchronous
    one = p.logits(texts)["label"]
    p.backend.streams = 2
    assert p.backend.asynchronous
    np.testing.assert_allclose(p.logits(texts)["label"], one, atol=1e-5)
    np.testing.assert_allclose(p.logits(texts[:1])["label"], one[:1], atol=1e-5)  # one batch: not queued
    results: dict[int, np.ndarray] = {}

    def score(i: int) -> None:
        results[i] = p.logits(texts[i::3])["label"]

    workers = [threading.Thread(target=score, args=(i,)) for i in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    for i in range(3):
        np.testing.assert_allclose(results[i], one[i::3], atol=1e-5)
    single = Predictor.from_dir(trained_model, backend="openvino-fp32", calibrate=False, threads=1)
    assert single.backend.stream_choices() == (1,)


def test_hrlm_calibrate_times_the_streams_apart_from_the_budgets(
    trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from hrlm.cli import app
    from hrlm.inference import calibrate

    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(calibrate, "NOISE_LIMIT", math.inf)  # whatever else runs beside the tests: cached
    result = CliRunner().invoke(
        app, ["calibrate", str(trained_model), "--backend", "openvino-fp32", "--threads", "2"], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    rows = [line for line in result.output.splitlines() if "padded@" in line]
    assert any("/s1x4" in row for row in rows) and any("/s2x4" in row for row in rows)
    chosen = [row for row in rows if "chosen" in row]
    assert len(chosen) == 1 and "x4" in chosen[0]  # a stream count and its budget
    assert sum("fastest" in row for row in rows) >= 2  # one of each group, more where the tiny model ties
    budget = json.loads(next((tmp_path / "cache" / "calibration").glob("*.json")).read_text())["buckets"]
    assert all(entry["streams"] in (1, 2) for entry in budget.values())


def test_missing_openvino_says_how_to_install_and_auto_skips_its_checks(
    trained_model: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    meta = _meta()
    passing = {"n": 500, "label_agreement": 0.996, "accuracy_delta": -0.002}
    meta.backend_checks = {
        "torch-fp32": {**passing, "docs_per_s": 10.0},
        "openvino-fp32": {**passing, "docs_per_s": 30.0},
    }
    assert choose_backend("auto", meta, torch.device("cpu")).name == "openvino-fp32"
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` fail
    assert choose_backend("auto", meta, torch.device("cpu")).name == "torch-fp32"
    with pytest.raises(ConfigError, match=r"pip install 'hrlm\[openvino\]'"):
        Predictor.from_dir(trained_model, backend="openvino-fp32")


def test_auto_skips_openvino_bf16_checked_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    meta = _meta()
    check = {"n": 500, "label_agreement": 0.996, "accuracy_delta": 0.0}
    meta.backend_checks = {"torch-fp32": {**check, "docs_per_s": 10.0}, "openvino-bf16": {**check, "docs_per_s": 40.0}}
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_fast_bf16", lambda: False)
    assert choose_backend("auto", meta, torch.device("cpu")).name == "torch-fp32"


def test_openvino_runs_on_the_cpu_only() -> None:
    meta = _meta()
    with pytest.raises(ConfigError, match="openvino-fp32 runs on the CPU only"):
        choose_backend("openvino-fp32", meta, torch.device("cuda"), device_given=True)
    assert choose_backend("openvino-fp32", meta, torch.device("cuda")).device.type == "cpu"  # auto device


def test_the_calibration_key_holds_the_model_shape(trained_model: Path) -> None:
    p = Predictor.from_dir(trained_model, backend="openvino-fp32", calibrate=False)
    shape = model_shape(p.backend, 64)
    assert shape["backend"] == "openvino-fp32"
    assert shape["hidden_size"] == 32 and shape["num_hidden_layers"] == 2  # the tiny BERT's


def test_compress_checks_the_openvino_backends(compressed_model: Path) -> None:
    checks = json.loads((compressed_model / "hrlm.json").read_text())["backend_checks"]
    expected = {"openvino-fp32", *(["openvino-bf16"] if cpu_has_fast_bf16() else [])}
    assert set(checks) >= expected
    assert check_passes(checks["openvino-fp32"]) and checks["openvino-fp32"]["label_agreement"] == 1.0


def test_importing_openvino_through_hrlm_sends_no_telemetry(tmp_path: Path) -> None:
    # OpenVINO's own import reports a usage event and writes a client id under ~/intel unless opted out;
    # its CI variables turn that off, so they are removed here to test what a user's machine does
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL")}
    env["HOME"] = str(tmp_path)
    code = (
        "from hrlm.inference.openvino_backend import openvino; ov = openvino(); ov.Core();"
        "import openvino.tools.ovc.telemetry_utils as t; print(t.tm.__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=PROJECT)
    assert out.stdout.strip() == "openvino.tools.ovc.telemetry_stub"
    assert list(tmp_path.iterdir()) == []  # no ~/intel/openvino_ga_cid


needs_nncf = pytest.mark.skipif(
    not openvino_backend.quantizer_available(), reason="NNCF is not installed (pip install 'hrlm[openvino]')"
)


def _batches(model_dir: Path, texts: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    p = Predictor.from_dir(model_dir, backend="torch-fp32", calibrate=False)
    windows = sorted(p.encode(texts).windows, key=len)
    return [tuple(t.numpy() for t in collate(windows[i : i + 4], p.pad_id)) for i in range(0, len(windows), 4)]


def _quantized_products(ov_model: object) -> set[str]:
    """Names of the matrix products of an OpenVINO model that read an int8-quantized input."""
    names = set()
    for op in ov_model.get_ordered_ops():  # type: ignore[attr-defined]
        if op.get_type_name() == "MatMul":
            sources = [op.input_value(i).get_node() for i in range(op.get_input_size())]
            if any(s.get_type_name() == "FakeQuantize" for s in sources):
                names.add(op.get_friendly_name())
    return names


@pytest.fixture(scope="module")
def int8_model_dir(trained_model: Path, tickets_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model through `compress --quantize int8 --data`, as on a CPU with VNNI (where openvino-int8 is made)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(compression, "cpu_has_vnni", lambda: True)
        out = tmp_path_factory.mktemp("ov-int8") / "tiny-int8"
        compression.compress(trained_model, out, quantize="int8", data=tickets_csv)
    return out


@needs_nncf
def test_compress_calibrates_openvino_int8_into_the_folder_and_it_agrees_with_fp32(int8_model_dir: Path) -> None:
    checks = json.loads((int8_model_dir / "hrlm.json").read_text())["backend_checks"]
    check = checks["openvino-int8"]
    assert check["overflow_fix"] is (not cpu_has_vnni()) and check["calibration_texts"] > 0
    assert (int8_model_dir / "model.int8.xml").is_file() and (int8_model_dir / "model.int8.bin").is_file()
    quantized = openvino_backend.int8_model(int8_model_dir)
    linears = [n for n in _quantized_products(quantized) if "aten::linear" in n]
    assert len(linears) >= 2 * 6 - len(check["fp32_layers"])  # the tiny BERT's 2 blocks, 6 linear layers each
    texts = _texts(40, seed=11, length=(2, 50))
    reference = Predictor.from_dir(int8_model_dir, backend="torch-fp32").logits(texts)["label"]
    p = Predictor.from_dir(int8_model_dir, backend="openvino-int8")
    assert p.backend_name == "openvino-int8"
    got = p.logits(texts)["label"]
    assert not np.allclose(got, reference, atol=1e-6)  # int8 arithmetic, not the float32 model
    np.testing.assert_allclose(got, reference, atol=0.25)
    assert (got.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert "openvino-int8" in (int8_model_dir / "compress.md").read_text()
    # the check fitted an offset to the logits (one per label, summing to zero for softmax) and the
    # Predictor adds it: without it, the logits of the same int8 model are the offset apart
    offset = np.asarray(check["output_offset"]["label"])
    assert offset.shape == (got.shape[1],) and abs(offset.sum()) < 1e-5 and check["offset_folds"] == 2
    assert set(check["uncorrected"]) >= {"label_agreement", "accuracy_delta", "margin_shift"}
    p.output_offset = {}
    np.testing.assert_allclose(got - p.logits(texts)["label"], np.tile(offset, (len(texts), 1)), atol=1e-5)


@needs_nncf
def test_compress_leaves_openvino_int8_alone_on_a_cpu_without_vnni(
    trained_model: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compression, "cpu_has_vnni", lambda: False)
    monkeypatch.setattr(openvino_backend, "quantize_int8", lambda *a, **k: pytest.fail("quantized without VNNI"))
    result = compression.compress(trained_model, tmp_path / "out", quantize="int8", data=tickets_csv)
    assert "openvino-int8" not in result.checks and not (tmp_path / "out" / "model.int8.xml").exists()
    assert any("openvino-int8 not checked: this CPU has no VNNI" in note for note in result.notes)


@needs_nncf
def test_int8_layers_kept_in_float32_read_float_inputs(trained_model: Path) -> None:
    model, _, _ = load_model(trained_model)
    batches = _batches(trained_model, _texts(16, seed=3, length=(2, 40)))
    quantized = openvino_backend.quantize_int8(model, batches, keep_fp32=["0.output.dense", "1.attention.self.query"])
    products = _quantized_products(quantized)
    assert not any(".layer.0.output.dense/" in n or ".layer.1.attention.self.query/" in n for n in products)
    assert any(".layer.1.output.dense/" in n for n in products) and any(
        ".layer.0.attention.self.query/" in n for n in products
    )
    with pytest.raises(ModelError, match=r"layers \['9.output.dense'\] are not in the OpenVINO model"):
        openvino_backend.quantize_int8(model, batches, keep_fp32=["9.output.dense"])


def test_int8_without_its_calibrated_file_is_a_one_line_error(trained_model: Path) -> None:
    with pytest.raises(
        ConfigError, match=r"openvino-int8 needs model.int8.xml in .*hrlm compress .*--quantize int8 --data"
    ):
        Predictor.from_dir(trained_model, backend="openvino-int8")


def test_auto_uses_openvino_int8_only_where_the_cpu_has_vnni(monkeypatch: pytest.MonkeyPatch) -> None:
    meta = _meta()
    check = {"n": 500, "label_agreement": 0.995, "accuracy_delta": 0.0}
    meta.backend_checks = {
        "openvino-fp32": {**check, "docs_per_s": 30.0},
        "openvino-int8": {**check, "docs_per_s": 50.0},
    }
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_vnni", lambda: True)
    assert choose_backend("auto", meta, torch.device("cpu")).name == "openvino-int8"
    monkeypatch.setattr("hrlm.inference.backends.cpu_has_vnni", lambda: False)
    assert choose_backend("auto", meta, torch.device("cpu")).name == "openvino-fp32"


@needs_nncf
def test_importing_nncf_through_hrlm_sends_no_telemetry(tmp_path: Path) -> None:
    # NNCF reports usage through openvino_telemetry too (off under pytest, hence a separate process)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "TF_BUILD", "JENKINS_URL", "NNCF_CI", "NNCF_DEV")}
    env["HOME"] = str(tmp_path)
    code = (
        "from hrlm.inference.openvino_backend import nncf; nncf();"
        "from nncf.telemetry.wrapper import telemetry; print(type(telemetry).__name__)"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=PROJECT)
    assert out.stdout.strip() == "MagicMock"  # NNCF's no-op stand-in
    assert list(tmp_path.iterdir()) == []
