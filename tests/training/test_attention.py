from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hrlm._progress import ProgressBar
from hrlm.modeling import HrlmModel, TaskSpec, build_model
from hrlm.training import attention, chunked_attention
from hrlm.training.loop import Optimization, run_steps

CPU = torch.device("cpu")


def _model(tiny_bert: Path) -> HrlmModel:
    return build_model(tiny_bert, [TaskSpec("label", ["a", "b"])], attention_dropout=0.0)


def _implementation(model: HrlmModel) -> str:
    return str(model.encoder.config._attn_implementation)


def test_the_choice_is_measured_once_per_machine_and_shape_and_cached(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    model = _model(tiny_bert)
    heads = int(model.config.num_attention_heads)
    head_dim = int(model.config.hidden_size) // heads
    calls: list[tuple[Any, ...]] = []

    def eager_faster(*args: Any) -> dict[str, float]:
        calls.append(args)
        return {"eager": 0.001, "sdpa": 0.002, chunked_attention.NAME: 0.003}

    monkeypatch.setattr(attention, "measure", eager_faster)
    assert attention.choose(model, CPU, "bf16", 100) == "eager"
    # the longest window, rounded up to a power of two; the fewest rows when no batch size is given
    assert calls == [(heads, head_dim, 128, "bf16", attention.MIN_ROWS)]
    (cached,) = (tmp_path / "calibration").glob("train-attention-*.json")
    record = json.loads(cached.read_text())
    assert record["choice"] == "eager" and record["shape"]["width"] == 128 and record["machine"]["cores"] >= 1
    assert attention.choose(model, CPU, "bf16", 100, batch_size=500) == "eager"  # another batch: measured
    assert calls[-1][-1] == attention.MAX_ROWS  # at most MAX_ROWS sequences

    def not_again(*args: Any) -> dict[str, float]:
        raise AssertionError("measured again despite the cache")

    monkeypatch.setattr(attention, "measure", not_again)
    assert attention.choose(model, CPU, "bf16", 120) == "eager"  # same bucket: read from the cache

    monkeypatch.setattr(attention, "measure", lambda *args: {"eager": 0.003, "sdpa": 0.002, chunked_attention.NAME: 1})
    assert attention.choose(model, CPU, "fp32", 120) == "sdpa"  # another precision is another measurement
    monkeypatch.setattr(
        attention, "measure", lambda *args: {"eager": 0.003, "sdpa": 0.002, chunked_attention.NAME: 0.001}
    )
    assert attention.choose(model, CPU, "fp32", 120, batch_size=16) == chunked_attention.NAME
    assert len(list((tmp_path / "calibration").glob("train-attention-*.json"))) == 4


def test_no_choice_on_cuda_with_calibration_off_or_without_an_encoder(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tiny_bert)
    monkeypatch.setattr(attention, "measure", lambda *args: pytest.fail("nothing to measure"))
    assert attention.choose(model, torch.device("cuda"), "bf16", 64) is None
    assert attention.choose(nn.Linear(2, 2), CPU, "fp32", 64) is None
    monkeypatch.setenv("HRLM_CALIBRATE", "off")
    assert attention.choose(model, CPU, "bf16", 64) is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_measure_times_every_path_forward_and_backward(precision: str) -> None:
    seconds = attention.measure(2, 16, 32, precision)
    assert set(seconds) == set(attention.IMPLEMENTATIONS) and all(0 < s < 5 for s in seconds.values())


def test_eager_and_sdpa_compute_the_same_logits(tiny_bert: Path) -> None:
    model = _model(tiny_bert).eval()
    ids = torch.randint(5, 40, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, 7:] = 0
    with torch.no_grad():
        before = model(ids, mask)["label"]
        with attention.using(model, "eager"):
            assert _implementation(model) == "eager"
            eager = model(ids, mask)["label"]
    torch.testing.assert_close(eager, before, atol=1e-5, rtol=1e-4)


def test_run_steps_trains_on_the_chosen_path_and_restores_the_encoders_own(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    own = _implementation(model)
    assert own != "eager"
    ids = torch.randint(5, 40, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    target = torch.tensor([0, 1, 0, 1])
    seen: list[str] = []

    def loss_of_batch(_: Any) -> tuple[torch.Tensor, int]:
        seen.append(_implementation(model))
        return nn.functional.cross_entropy(model(ids, mask)["label"], target), 4

    params = [p for p in model.parameters() if p.requires_grad]
    opt = Optimization(lr=1e-3, steps=3, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0)
    bar = ProgressBar(3, "test", enabled=False)
    done = run_steps(model, params, iter([None] * 3), loss_of_batch, opt, bar=bar, attention="eager")
    assert done.steps == 3 and seen == ["eager"] * 3 and _implementation(model) == own

    def failing(_: Any) -> tuple[torch.Tensor, int]:
        raise RuntimeError("a step failed")

    with pytest.raises(RuntimeError, match="a step failed"):
        run_steps(
            model, params, iter([None]), failing, opt, bar=ProgressBar(3, "test", enabled=False), attention="eager"
        )
    assert _implementation(model) == own  # restored however the run ends
