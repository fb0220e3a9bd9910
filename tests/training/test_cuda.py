"""Training on a CUDA GPU: bf16 autocast, the encoder's own attention dropout, fp32 weights on disk.

CI has no GPU, so these skip there; on a GPU machine ``HRLM_REQUIRE_CUDA=1`` makes them fail instead.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from hrlm.inference.predictor import Predictor
from hrlm.training.fitting import train
from tests.conftest import make_texts, tiny_train_config


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_a_model_trained_on_cuda_learns_and_serves_on_the_cpu(
    cuda: torch.device, tiny_bert: Path, tickets_csv: Path, tmp_path: Path, precision: str
) -> None:
    cfg = tiny_train_config(tiny_bert, device="cuda", precision=precision)  # the session's trained_model, on CUDA
    result = train(tickets_csv, tmp_path / "m", cfg, progress=False)
    assert result.metrics["accuracy"] >= 0.85
    weights = load_file(str(tmp_path / "m" / "model.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.float32}  # whatever it trained in, it keeps fp32
    texts = [t for t, _ in make_texts(10, seed=31)]
    on_cpu = Predictor.from_dir(tmp_path / "m", backend="torch-fp32", device="cpu").predict_proba(texts)["label"]
    on_gpu = Predictor.from_dir(tmp_path / "m", backend="torch-fp32", device="cuda").predict_proba(texts)["label"]
    np.testing.assert_allclose(on_gpu, on_cpu, atol=1e-4)
