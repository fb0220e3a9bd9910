"""The Predictor on a CUDA GPU: packed batches, bf16 and the GPU's own calibration.

CI has no GPU, so these skip there; on a GPU machine ``HRLM_REQUIRE_CUDA=1 pytest tests -k cuda`` runs them
(the ``cuda`` fixture fails rather than skips when that is set and no GPU is visible).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hrlm.inference import calibrate, unpadded
from hrlm.inference.backends import TorchBackend
from hrlm.inference.calibrate import GPU_BUDGETS
from hrlm.inference.packing import collate_packed
from hrlm.inference.predictor import Predictor, window_logits
from hrlm.modeling import HrlmModel, TaskSpec, build_model
from tests.conftest import make_texts

TASKS = [TaskSpec("label", ["a", "b", "c"])]


def _model(tiny_bert: Path) -> HrlmModel:
    torch.manual_seed(5)
    model = build_model(tiny_bert, TASKS, pooling="pooler").eval()
    for head in model.heads.values():  # heads at init give near-zero logits: nothing to compare
        torch.nn.init.normal_(head.weight, std=1.0)
    return model


def _windows(n: int = 41, longest: int = 90, seed: int = 3) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [[2, *rng.integers(5, 40, size=int(rng.integers(1, longest))).tolist(), 3] for _ in range(n)]


def _alone_on_cpu(model: HrlmModel, windows: list[list[int]]) -> np.ndarray:
    with torch.inference_mode():
        rows = [model(torch.tensor([w]), torch.ones(1, len(w), dtype=torch.long))["label"] for w in windows]
    return torch.cat(rows).numpy()


@pytest.mark.parametrize("plain_up_to", [unpadded.SMALL_WIDTH, 4])  # 4: every group through SDPA
def test_packed_batches_on_cuda_give_each_windows_own_logits(
    cuda: torch.device, tiny_bert: Path, plain_up_to: int
) -> None:
    model = _model(tiny_bert)
    windows = _windows()
    alone = _alone_on_cpu(model, windows)
    backend = TorchBackend(copy.deepcopy(model), cuda, "fp32")
    backend.plain_up_to = plain_up_to
    batch = collate_packed(windows, range(len(windows)))
    assert len(batch.groups) > 2 and any(g.gather is not None for g in batch.groups)
    packed = backend.packed(batch)["label"]
    np.testing.assert_allclose(packed, alone[list(batch.order)], atol=1e-4)
    padded = window_logits(backend, windows, pad_id=0, max_tokens=1024, packing=False)["label"]
    np.testing.assert_allclose(padded, alone, atol=1e-4)
    assert np.abs(alone).max() > 0.1


def test_bf16_on_cuda_packs_under_autocast_and_keeps_the_labels(cuda: torch.device, tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    windows = _windows(n=64, seed=4)
    alone = _alone_on_cpu(model, windows)
    backend = TorchBackend(copy.deepcopy(model), cuda, "bf16")
    assert backend.autocast  # on a GPU bf16 runs under autocast with bf16 copies of the linear layers
    assert backend.model.heads["label"].weight.dtype == torch.bfloat16
    packed = window_logits(backend, windows, pad_id=0, max_tokens=2048, packing=True)["label"]
    padded = window_logits(backend, windows, pad_id=0, max_tokens=2048, packing=False)["label"]
    np.testing.assert_allclose(packed, alone, atol=0.15)
    np.testing.assert_allclose(padded, alone, atol=0.15)
    assert (packed.argmax(1) == alone.argmax(1)).mean() >= 0.95


def test_the_predictor_on_cuda_calibrates_its_own_budget_and_agrees_with_the_cpu(
    cuda: torch.device, trained_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(calibrate, "NOISE_LIMIT", math.inf)  # whatever else runs beside the tests: cached
    texts = [t for t, _ in make_texts(30, seed=21, length=(1, 12))]
    cpu = Predictor.from_dir(trained_model, backend="torch-fp32", device="cpu").predict_proba(texts)["label"]
    gpu = Predictor.from_dir(trained_model, device="cuda")
    assert gpu.backend_name == "torch-bf16" and gpu.device.type == "cuda"
    budget = gpu.calibrate_once(texts)  # a GPU times its own budgets (tens of thousands of tokens)
    assert budget is not None and budget.max_tokens in GPU_BUDGETS
    assert budget.threads == torch.get_num_threads()  # thread counts are a CPU's choice only
    files = [json.loads(p.read_text()) for p in (tmp_path / "calibration").glob("*.json")]
    cached = [c for c in files if c["model"]["device"] == "cuda"]  # the CPU predictor above keeps its own
    assert len(cached) == 1 and cached[0]["machine"]["gpu"] == torch.cuda.get_device_name(0)
    assert cached[0]["buckets"] and cached[0]["model"]["backend"] == "torch-bf16"
    proba = gpu.predict_proba(texts)["label"]
    assert (proba.argmax(1) == cpu.argmax(1)).mean() >= 0.97
    np.testing.assert_allclose(proba, cpu, atol=0.05)
    fp32 = Predictor.from_dir(trained_model, backend="torch-fp32", device="cuda").predict_proba(texts)["label"]
    np.testing.assert_allclose(fp32, cpu, atol=1e-4)
