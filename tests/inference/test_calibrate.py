"""The per-machine calibration: what it measures, what it keeps, and that it never changes a prediction."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from hrlm.errors import ConfigError
from hrlm.inference import Predictor, calibrate, unpadded
from hrlm.inference.backends import TorchBackend
from hrlm.inference.calibrate import Calibrator, bucket
from hrlm.modeling import TaskSpec, build_model
from tests.conftest import make_texts

TASKS = [TaskSpec("label", ["a", "b", "c"])]


def _backend(tiny_bert: Path, precision: str = "fp32") -> TorchBackend:
    return TorchBackend(build_model(tiny_bert, TASKS, pooling="cls"), torch.device("cpu"), precision)


def _windows(n: int, length: int) -> list[list[int]]:
    return [[2] + [5 + (i + j) % 30 for j in range(length - 2)] + [3] for i in range(n)]


def test_bucket_is_the_mean_length_rounded_up_to_a_power_of_two_within_max_length() -> None:
    assert bucket([30, 40, 20], 256) == 32
    assert bucket([250, 256], 256) == 256
    assert bucket([3, 4], 256) == 16  # the smallest bucket
    assert bucket([300, 500], 300) == 300  # never past max_length


def test_the_fastest_choice_is_kept_and_found_again_by_a_new_calibrator(tiny_bert: Path, tmp_path: Path) -> None:
    backend = _backend(tiny_bert)
    cal = Calibrator(backend, 64, folder=tmp_path)
    seen: list[tuple[int, bool]] = []

    def run(sample: Sequence[Sequence[int]], max_tokens: int, packing: bool) -> None:
        seen.append((max_tokens, packing))
        time.sleep(0.001 if (max_tokens, packing) == (2048, False) else 0.02)

    windows = _windows(200, 60)  # 12,000 tokens: every CPU budget fits in the sample
    chosen = cal.measure_budget(windows, run)
    assert (chosen.max_tokens, chosen.packing, chosen.threads) == (2048, False, torch.get_num_threads())
    assert set(seen) == {(b, p) for b in calibrate.CPU_BUDGETS for p in (True, False)}
    assert len(chosen.seconds) == 2 * len(calibrate.CPU_BUDGETS)
    again = Calibrator(backend, 64, folder=tmp_path)
    assert again.path == cal.path and again.budget([60] * 10) == chosen
    assert again.budget([10] * 10) is None  # another length bucket was never measured


def test_the_cache_is_keyed_by_machine_and_model_shape_not_weights(tiny_bert: Path, tmp_path: Path) -> None:
    first = Calibrator(_backend(tiny_bert), 64, folder=tmp_path)
    retrained = Calibrator(_backend(tiny_bert), 64, folder=tmp_path)  # other random heads, same shape
    assert first.key == retrained.key
    assert Calibrator(_backend(tiny_bert, "bf16"), 64, folder=tmp_path).key != first.key  # another backend
    assert Calibrator(_backend(tiny_bert), 32, folder=tmp_path).key != first.key  # another window length
    data = first.machine
    assert data["cores"] >= 1 and data["physical_cores"] >= 1 and data["torch"]


def test_an_unreadable_cache_file_is_measured_again(tiny_bert: Path, tmp_path: Path) -> None:
    cal = Calibrator(_backend(tiny_bert), 64, folder=tmp_path)
    cal.path.parent.mkdir(parents=True, exist_ok=True)
    cal.path.write_text("{not json")
    fresh = Calibrator(_backend(tiny_bert), 64, folder=tmp_path)
    assert fresh.calibration.plain_up_to is None and fresh.calibration.buckets == {}
    assert fresh.attention() in (0, *calibrate.ATTENTION_WIDTHS)
    assert json.loads(cal.path.read_text())["plain_up_to"] == fresh.calibration.plain_up_to


def test_the_attention_width_is_a_prefix_of_measured_widths(tiny_bert: Path, tmp_path: Path) -> None:
    cal = Calibrator(_backend(tiny_bert), 64, folder=tmp_path)
    width = cal.attention()
    timings = cal.calibration.attention_ms
    assert sorted(int(w) for w in timings) == [16, 32, 64]  # up to the model's window length
    for w, ms in timings.items():
        assert ms["plain_ms"] > 0 and ms["sdpa_ms"] > 0
        if int(w) <= width:
            assert ms["plain_ms"] <= ms["sdpa_ms"]
    wider = [int(w) for w, ms in timings.items() if ms["plain_ms"] > ms["sdpa_ms"]]
    assert width < min(wider, default=10**6)


def test_calibration_can_be_switched_off(monkeypatch: pytest.MonkeyPatch, trained_model: Path) -> None:
    monkeypatch.setenv("HRLM_CALIBRATE", "off")
    assert Predictor.from_dir(trained_model, backend="torch-fp32").calibrator is None
    monkeypatch.setenv("HRLM_CALIBRATE", "sometimes")
    with pytest.raises(ConfigError, match="HRLM_CALIBRATE"):
        Predictor.from_dir(trained_model, backend="torch-fp32")


def test_a_large_call_calibrates_once_and_predictions_do_not_change(
    monkeypatch: pytest.MonkeyPatch, trained_model: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibrate, "NOISE_LIMIT", math.inf)  # whatever else runs beside the tests: cached
    monkeypatch.setattr("hrlm.inference.predictor.CPU_SAMPLE_TOKENS", 200)
    texts = [t for t, _ in make_texts(20, seed=5, length=(3, 12))]
    reference = Predictor.from_dir(trained_model, backend="torch-fp32", calibrate=False, packing=False)
    expected = reference.logits(texts)["label"]
    p = Predictor.from_dir(trained_model, backend="torch-fp32")
    assert p.calibrator is not None and p.calibrator.budget([10]) is None
    np.testing.assert_allclose(p.logits(texts)["label"], expected, atol=1e-5)
    found = p.calibrator.budget([len(w) for w in p.encode(texts).windows])
    # the sample holds fewer tokens than the smallest CPU budget: its own size is the one budget timed
    assert found is not None and found.max_tokens <= calibrate.CPU_BUDGETS[0] and len(found.seconds) == 2
    assert list((tmp_path / "calibration").glob("*.json")) == [p.calibrator.path]
    # another process (a new Predictor) reuses it without measuring again
    q = Predictor.from_dir(trained_model, backend="torch-fp32")
    monkeypatch.setattr(q.calibrator, "measure_budget", lambda *a, **k: pytest.fail("measured again"))
    np.testing.assert_allclose(q.logits(texts)["label"], expected, atol=1e-5)


def test_small_calls_and_explicit_settings_are_not_calibrated(
    monkeypatch: pytest.MonkeyPatch, trained_model: Path, tmp_path: Path
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    texts = [t for t, _ in make_texts(5, seed=6)]
    p = Predictor.from_dir(trained_model, backend="torch-fp32")
    assert p.batching(p.encode(texts).windows) == (p.max_tokens, True)  # too little text: the defaults
    assert p.calibrator is not None and p.calibrator.calibration.buckets == {}
    fixed = Predictor.from_dir(trained_model, backend="torch-fp32", max_tokens=96, packing=False)
    monkeypatch.setattr("hrlm.inference.predictor.CPU_SAMPLE_TOKENS", 1)
    assert fixed.batching(fixed.encode(texts).windows) == (96, False)
    assert fixed.calibrator is not None and fixed.calibrator.calibration.buckets == {}


def test_bf16_on_a_cpu_runs_the_encoder_in_bf16_and_the_heads_in_float32(tiny_bert: Path) -> None:
    model = build_model(tiny_bert, TASKS, pooling="pooler").eval()
    backend = TorchBackend(model, torch.device("cpu"), "bf16")
    assert not backend.autocast and backend.compute_dtype == torch.bfloat16
    assert backend.model.encoder.embeddings.word_embeddings.weight.dtype == torch.bfloat16
    assert backend.model.heads["label"].weight is model.heads["label"].weight  # shared, float32
    assert model.encoder.embeddings.word_embeddings.weight.dtype == torch.float32  # the original is untouched
    windows = _windows(9, 20)
    fp32 = TorchBackend(model, torch.device("cpu"), "fp32")
    from hrlm.inference.predictor import window_logits

    want = window_logits(fp32, windows, pad_id=0)["label"]
    packed = window_logits(backend, windows, pad_id=0)["label"]
    padded = window_logits(backend, windows, pad_id=0, packing=False)["label"]
    assert packed.dtype == np.float32
    np.testing.assert_allclose(packed, want, atol=0.05)
    np.testing.assert_allclose(padded, want, atol=0.05)


def test_plain_attention_matches_sdpa(tiny_bert: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 4, 20, 8, generator=gen) for _ in range(3))
    mask = torch.ones(3, 1, 1, 20, dtype=torch.bool)
    mask[1, ..., 15:] = False
    plain = unpadded.attend(q, k, v, mask, 8**-0.5, plain_up_to=64)
    sdpa = unpadded.attend(q, k, v, mask, 8**-0.5, plain_up_to=0)
    torch.testing.assert_close(plain, sdpa, atol=1e-5, rtol=1e-4)
    lowp = unpadded.attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), mask, 8**-0.5, plain_up_to=64)
    assert lowp.dtype == torch.bfloat16
    torch.testing.assert_close(lowp.float(), sdpa, atol=0.05, rtol=0.05)


def test_packed_batches_must_beat_padded_ones_by_more_than_noise(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [0.0]
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: clock[0])
    cost = {True: 1.00, False: 1.01}  # packed 1% faster: within the margin, padded wins

    def run(sample: Sequence[Sequence[int]], max_tokens: int, packing: bool) -> None:
        clock[0] += cost[packing] * (1.0 if max_tokens == 4096 else 1.5)

    cal = Calibrator(_backend(tiny_bert), 64, folder=tmp_path)
    windows = _windows(200, 60)
    chosen = cal.measure_budget(windows, run)
    assert (chosen.max_tokens, chosen.packing) == (4096, False)
    cost[True] = 0.9  # 10% faster: packed
    chosen = cal.measure_budget(windows, run)
    assert (chosen.max_tokens, chosen.packing) == (4096, True)


def test_a_calibration_disturbed_by_another_process_is_measured_again_and_not_cached_if_still_noisy(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    clock = [0.0]
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: clock[0])
    passes = [0]
    slow_spell = {"every": 3}  # every third pass takes three times as long (a competing process)

    def run(sample: Sequence[Sequence[int]], max_tokens: int, packing: bool) -> None:
        passes[0] += 1
        disturbed = slow_spell["every"] and passes[0] % slow_spell["every"] == 0
        clock[0] += (1.0 if max_tokens == 2048 else 1.2) * (3.0 if disturbed else 1.0)

    backend = _backend(tiny_bert)
    windows = _windows(200, 60)
    per_attempt = calibrate.ROUNDS * 2 * len(calibrate.CPU_BUDGETS)
    cal = Calibrator(backend, 64, folder=tmp_path)
    with caplog.at_level("WARNING", logger="hrlm"):
        chosen = cal.measure_budget(windows, run)
    assert passes[0] == 1 + 2 * per_attempt  # the warm-up, then measured twice
    assert chosen.noise is not None and chosen.noise > calibrate.NOISE_LIMIT
    assert "measuring again" in caplog.text and "without caching it" in caplog.text
    assert cal.budget([60] * 10) == chosen  # this process uses it (a Predictor doesn't measure every call)
    assert Calibrator(backend, 64, folder=tmp_path).budget([60] * 10) is None  # a later process measures again
    cal.attention()  # another measurement saved to the file does not take the noisy budget with it
    assert Calibrator(backend, 64, folder=tmp_path).budget([60] * 10) is None

    slow_spell["every"] = 0  # a quiet machine: measured once, kept
    passes[0] = 0
    chosen = cal.measure_budget(windows, run)
    assert passes[0] == 1 + per_attempt and chosen.noise == 0.0 and chosen.max_tokens == 2048
    assert Calibrator(backend, 64, folder=tmp_path).budget([60] * 10) == chosen


def test_a_backend_with_streams_has_each_count_timed_at_the_chosen_budget_on_a_longer_sample(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # OpenVINO can run two batches at once on a 2-core machine: after the budget, the calibration times
    # one and two at that budget on the sample repeated, leaves the backend with the faster, and keeps it
    clock = [0.0]
    monkeypatch.setattr(calibrate.time, "perf_counter", lambda: clock[0])
    backend = _backend(tiny_bert)
    monkeypatch.setattr(backend, "stream_choices", lambda: (1, 2))
    seen: list[tuple[int, int, int]] = []
    cost = {1: 1.0, 2: 0.9}

    def run(sample: Sequence[Sequence[int]], max_tokens: int, packing: bool) -> None:
        seen.append((max_tokens, backend.streams, len(sample)))
        budget = 1.0 if max_tokens == 2048 else 1.2
        clock[0] += len(sample) * cost[backend.streams] * budget * (1.0 if packing else 1.1)

    cal = Calibrator(backend, 64, folder=tmp_path)
    windows = _windows(200, 60)
    chosen = cal.measure_budget(windows, run)
    n = seen[0][2]  # the windows of the sample, which the first (warm-up) pass scores
    assert {(b, s) for b, s, size in seen if size == n} == {(b, 1) for b in calibrate.CPU_BUDGETS} | {(2048, 2)}
    timed = {(b, s) for b, s, size in seen if size == n * calibrate.STREAM_REPEATS}
    assert timed == {(2048, 1), (1024, 2), (2048, 2), (4096, 2)}  # streams at the budget and beside it
    assert (chosen.max_tokens, chosen.packing, chosen.streams, backend.streams) == (2048, True, 2, 2)
    threads = torch.get_num_threads()
    assert chosen.seconds[f"packed@2048/t{threads}/s2x{calibrate.STREAM_REPEATS}"] == pytest.approx(0.9 * n * 4)
    # streams may move the budget: one batch per thread can want larger batches than all threads on one
    cost.update({1: 1.0, 2: 0.9})
    wider = {4096: 0.8}

    def run_wider(sample: Sequence[Sequence[int]], max_tokens: int, packing: bool) -> None:
        factor = wider.get(max_tokens, 1.0) if backend.streams == 2 else 1.0
        clock[0] += len(sample) * cost[backend.streams] * factor * (1.0 if max_tokens == 2048 else 1.2)

    chosen = cal.measure_budget(windows, run_wider)
    assert (chosen.max_tokens, chosen.streams) == (4096, 2)
    assert Calibrator(backend, 64, folder=tmp_path).budget([60] * 10).streams == 2  # kept in the file
    cost[2] = 1.02  # 2% slower in two streams: within the margin, streams still (their pace holds under load)
    chosen = cal.measure_budget(windows, run)
    assert (chosen.streams, backend.streams) == (2, 2)
    cost[2] = 1.05  # 5% slower: one, and the backend is set back to it
    chosen = cal.measure_budget(windows, run)
    assert (chosen.streams, backend.streams) == (1, 1)
    # a calibration file written before streams were measured reads as one stream
    data = json.loads(cal.path.read_text())
    for entry in data["buckets"].values():
        entry.pop("streams")
    cal.path.write_text(json.dumps(data))
    assert Calibrator(backend, 64, folder=tmp_path).budget([60] * 10).streams == 1
