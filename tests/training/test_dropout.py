from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hrlm._progress import ProgressBar
from hrlm.modeling import HrlmModel, TaskSpec, build_model
from hrlm.training import dropout
from hrlm.training.dropout import SampledDropout, keep_mask
from hrlm.training.loop import Optimization, run_steps

CPU = torch.device("cpu")


def _model(tiny_bert: Path, hidden: float = 0.1) -> HrlmModel:
    return build_model(tiny_bert, [TaskSpec("label", ["a", "b"])], dropout=hidden, attention_dropout=0.0)


def _kinds(model: nn.Module) -> list[str]:
    return sorted(type(m).__name__ for m in model.modules() if isinstance(m, (nn.Dropout, SampledDropout)))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_the_mask_drops_p_of_the_elements_and_scales_the_rest_as_torch_does(p: float) -> None:
    torch.manual_seed(0)
    mask = keep_mask((2_000, 1_000), p, torch.float32)
    dropped = float((mask == 0).float().mean())
    # 2M draws: the standard error of the rate is at most 0.00035
    assert dropped == pytest.approx(p, abs=0.002)
    kept = mask[mask != 0]
    torch.testing.assert_close(kept, torch.full_like(kept, 1 / (1 - p)))


def test_neighbouring_elements_are_dropped_independently() -> None:
    # four elements come from one 64-bit word: their drops must not be related
    torch.manual_seed(1)
    dropped = keep_mask((4_000_000,), 0.3, torch.float32) == 0
    for offset in (1, 2, 3, 4):
        both = float((dropped[:-offset] & dropped[offset:]).float().mean())
        assert both == pytest.approx(0.09, abs=0.002), offset


def test_the_mask_keeps_shape_and_dtype_and_the_limits_of_p() -> None:
    odd = keep_mask((7, 13, 5), 0.2, torch.bfloat16)  # 455 elements: not whole words
    assert odd.shape == (7, 13, 5) and odd.dtype == torch.bfloat16
    assert torch.equal(keep_mask((3, 4), 0.0, torch.float32), torch.ones(3, 4))
    assert torch.equal(keep_mask((3, 4), 1.0, torch.float32), torch.zeros(3, 4))
    with pytest.raises(ValueError, match="between 0 and 1"):
        keep_mask((3,), 1.5, torch.float32)
    with pytest.raises(ValueError, match="between 0 and 1"):
        SampledDropout(-0.1)


def test_masks_follow_torchs_seed() -> None:
    torch.manual_seed(7)
    first = keep_mask((64, 64), 0.5, torch.float32)
    second = keep_mask((64, 64), 0.5, torch.float32)
    torch.manual_seed(7)
    assert torch.equal(keep_mask((64, 64), 0.5, torch.float32), first)
    assert not torch.equal(first, second)  # a new draw on every call


def test_sampled_dropout_drops_in_training_passes_through_in_eval_and_its_gradient_is_the_mask() -> None:
    layer = SampledDropout(0.25)
    x = torch.ones(50, 40, requires_grad=True)
    out = layer(x)
    out.sum().backward()
    assert x.grad is not None
    # ones in: what came out is the mask, and the gradient of a sum is the mask again
    torch.testing.assert_close(x.grad, out.detach())
    assert out.detach().unique().tolist() == pytest.approx([0.0, 1 / 0.75])
    layer.eval()
    assert layer(x) is x
    assert SampledDropout(0.0)(x) is x
    assert repr(layer) == "SampledDropout(p=0.25)"


def test_using_swaps_the_dropouts_for_the_block_and_puts_the_same_modules_back(tiny_bert: Path) -> None:
    model = _model(tiny_bert).train()
    before = {name: module for name, module in model.named_modules() if isinstance(module, nn.Dropout)}
    assert before
    with dropout.using(model, "sampled"):
        swapped = {name: m for name, m in model.named_modules() if isinstance(m, SampledDropout)}
        # every dropout that drops something, in training mode as it was; the attention's p=0 is left
        assert set(swapped) == {name for name, m in before.items() if m.p > 0}
        assert all(m.training for m in swapped.values())
        model.eval()
    after = {name: module for name, module in model.named_modules() if isinstance(module, nn.Dropout)}
    assert after == before and all(m is before[name] for name, m in after.items())
    assert not any(m.training for m in after.values())  # the mode set inside the block is kept
    with pytest.raises(RuntimeError, match="failed"), dropout.using(model, "sampled"):
        raise RuntimeError("failed")
    assert _kinds(model) == _kinds(_model(tiny_bert))
    with dropout.using(model, "torch"):
        assert "SampledDropout" not in _kinds(model)


def test_the_choice_is_measured_once_per_machine_and_shape_and_cached(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    model = _model(tiny_bert)
    calls: list[tuple[Any, ...]] = []

    def sampled_faster(*args: Any) -> dict[str, float]:
        calls.append(args)
        return {"torch": 0.004, "sampled": 0.001}

    monkeypatch.setattr(dropout, "measure", sampled_faster)
    assert dropout.choose(model, CPU, "bf16", 100) == "sampled"
    assert calls == [(128, int(model.config.hidden_size), "bf16")]
    (cached,) = (tmp_path / "calibration").glob("train-dropout-*.json")
    record = json.loads(cached.read_text())
    assert record["choice"] == "sampled" and record["seconds"] == {"torch": 0.004, "sampled": 0.001}

    monkeypatch.setattr(dropout, "measure", lambda *args: pytest.fail("measured again despite the cache"))
    assert dropout.choose(model, CPU, "bf16", 128) == "sampled"
    monkeypatch.setattr(dropout, "measure", lambda *args: {"torch": 0.001, "sampled": 0.002})
    assert dropout.choose(model, CPU, "fp32", 128) == "torch"  # where PyTorch's is faster, it stays


def test_no_choice_on_cuda_with_calibration_off_or_without_dropout(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dropout, "measure", lambda *args: pytest.fail("nothing to measure"))
    assert dropout.choose(_model(tiny_bert), torch.device("cuda"), "bf16", 64) is None
    assert dropout.choose(_model(tiny_bert, hidden=0.0), CPU, "bf16", 64) is None
    monkeypatch.setenv("HRLM_CALIBRATE", "off")
    assert dropout.choose(_model(tiny_bert), CPU, "bf16", 64) is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_measure_times_both_forward_and_backward(precision: str) -> None:
    seconds = dropout.measure(32, 16, precision)
    assert set(seconds) == {"torch", "sampled"} and all(0 < s < 5 for s in seconds.values())


def test_run_steps_trains_with_the_chosen_dropout_and_restores_the_models_own(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    own = _kinds(model)
    ids = torch.randint(5, 40, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    target = torch.tensor([0, 1, 0, 1])
    seen: list[list[str]] = []

    def loss_of_batch(_: Any) -> tuple[torch.Tensor, int]:
        seen.append(_kinds(model))
        return nn.functional.cross_entropy(model(ids, mask)["label"], target), 4

    params = [p for p in model.parameters() if p.requires_grad]
    opt = Optimization(lr=1e-3, steps=2, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0)
    done = run_steps(
        model, params, iter([None] * 2), loss_of_batch, opt, bar=ProgressBar(2, "t", enabled=False), dropout="sampled"
    )
    assert done.steps == 2 and all("SampledDropout" in kinds for kinds in seen)
    assert _kinds(model) == own and "SampledDropout" not in own
