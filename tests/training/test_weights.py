from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from hrlm._progress import ProgressBar
from hrlm.errors import ConfigError
from hrlm.inference import autocast
from hrlm.modeling import HrlmModel, TaskSpec, build_model
from hrlm.training import weights
from hrlm.training.loop import Optimization, run_steps
from hrlm.training.weights import Bf16Weights

CPU = torch.device("cpu")


def _model(tiny_bert: Path) -> HrlmModel:
    torch.manual_seed(0)
    return build_model(tiny_bert, [TaskSpec("label", ["a", "b"])], dropout=0.0, attention_dropout=0.0)


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(3)
    ids = torch.randint(5, 40, (8, 12), generator=gen)
    mask = torch.ones(8, 12, dtype=torch.long)
    mask[:3, 9:] = 0
    return ids, mask, torch.tensor([0, 1] * 4)


def _loss(model: HrlmModel, ids: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    with autocast(CPU, "bf16"):
        out = model(ids, mask)
    return nn.functional.cross_entropy(out["label"].float(), target)


def _dtypes(model: nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def _gradients(model: nn.Module) -> torch.Tensor:
    # a key bias has no gradient but rounding (softmax ignores what it adds to every score of a row)
    return torch.cat(
        [p.grad.flatten() for n, p in model.named_parameters() if p.grad is not None and "key.bias" not in n]
    )


def test_the_passes_run_in_bf16_and_leave_float32_weights_and_gradients(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids, mask, target = _batch()
    exact = _model(tiny_bert)
    with torch.autocast("cpu", enabled=False):
        nn.functional.cross_entropy(exact(ids, mask)["label"], target).backward()

    bf16 = Bf16Weights(model)
    seen: dict[str, Any] = {}
    with bf16.computing():
        seen["weights"] = _dtypes(model)
        seen["hidden"] = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state.dtype
        _loss(model, ids, mask, target).backward()
    assert seen == {"weights": {torch.bfloat16}, "hidden": torch.bfloat16}  # nothing left in float32 mid-encoder
    assert _dtypes(model) == {torch.float32}
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        torch.testing.assert_close(model.state_dict()[name], before[name], rtol=0, atol=0)  # the masters themselves
    # float32's gradient to bf16's rounding: measured 1.4% off (autocast's 0.7%)
    reference = _gradients(exact)
    assert torch.linalg.vector_norm(_gradients(model) - reference) <= 0.03 * torch.linalg.vector_norm(reference)


def test_batches_of_one_step_accumulate_their_gradients_in_float32(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    ids, mask, target = _batch()
    bf16 = Bf16Weights(model)
    singles = []
    for half in (slice(0, 4), slice(4, 8)):
        with bf16.computing():
            _loss(model, ids[half], mask[half], target[half]).backward()
        singles.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
        model.zero_grad(set_to_none=True)
    for half in (slice(0, 4), slice(4, 8)):
        with bf16.computing():
            _loss(model, ids[half], mask[half], target[half]).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32
        torch.testing.assert_close(p.grad, singles[0][name] + singles[1][name])


def test_tied_weights_are_one_master_and_frozen_weights_get_no_gradient() -> None:
    embed = nn.Embedding(10, 4)
    decoder = nn.Linear(4, 10, bias=False)
    decoder.weight = embed.weight  # tied, as a masked-LM decoder is to the word embeddings
    frozen = nn.Linear(4, 4)
    frozen.requires_grad_(False)
    model = nn.ModuleDict({"embed": embed, "frozen": frozen, "decoder": decoder})
    bf16 = Bf16Weights(model)
    assert len(bf16.params) == 3  # the tied matrix once, the frozen layer's weight and bias
    with bf16.computing():
        assert decoder.weight.dtype == torch.bfloat16 and decoder.weight is embed.weight
        decoder(frozen(embed(torch.tensor([1, 2])))).float().sum().backward()
    assert embed.weight.grad is not None and embed.weight.grad.dtype == torch.float32
    assert frozen.weight.grad is None and frozen.weight.dtype == torch.float32


def test_refresh_casts_the_masters_moved_by_the_optimizer() -> None:
    layer = nn.Linear(3, 2)
    bf16 = Bf16Weights(layer)
    with torch.no_grad():
        layer.weight.add_(1.0)
    with bf16.computing():
        assert not torch.equal(layer.weight.float(), bf16.masters[0].to(torch.bfloat16).float())
    bf16.refresh()
    with bf16.computing():
        torch.testing.assert_close(layer.weight, bf16.masters[0].to(torch.bfloat16), rtol=0, atol=0)


def _train(
    tiny_bert: Path, choice: str | None, steps: int = 6, grad_accum: int = 1, precision: str = "bf16"
) -> tuple[HrlmModel, list[float]]:
    model = _model(tiny_bert)
    ids, mask, target = _batch()
    losses: list[float] = []

    def loss_of_batch(_: Any) -> tuple[torch.Tensor, int]:
        with autocast(CPU, precision):
            out = model(ids, mask)
        loss = nn.functional.cross_entropy(out["label"].float(), target)
        losses.append(float(loss.detach()))
        return loss, len(ids)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = Optimization(
        lr=3e-3, steps=steps, warmup_ratio=0.0, weight_decay=0.01, max_grad_norm=1.0, grad_accum=grad_accum
    )
    bar = ProgressBar(steps, "t", enabled=False)
    run_steps(model, params, iter([None] * (steps * grad_accum)), loss_of_batch, opt, bar=bar, weights=choice)
    return model, losses


def test_run_steps_on_bf16_weights_learns_as_float32_does_and_keeps_float32_weights(tiny_bert: Path) -> None:
    model, losses = _train(tiny_bert, "bf16", steps=16)
    exact, exact_losses = _train(tiny_bert, None, steps=16, precision="fp32")
    assert _dtypes(model) == {torch.float32}
    assert losses[-1] < 0.5 * losses[0]  # it learns the batch
    # step for step float32's loss, to bf16's rounding (measured: within 0.001)
    assert max(abs(a - b) for a, b in zip(losses, exact_losses, strict=True)) < 0.01
    start = _model(tiny_bert)
    moved, exact_moved = (
        torch.cat([(p - p0).flatten() for p, p0 in zip(m.parameters(), start.parameters(), strict=True)])
        for m in (model, exact)
    )
    # how far the weights moved, to 10% of float32's (measured 4.6%; autocast's run: 13%, Adam's
    # per-element steps make weights whose gradient is mostly rounding move by rounding)
    assert torch.linalg.vector_norm(moved - exact_moved) <= 0.1 * torch.linalg.vector_norm(exact_moved)
    with_accumulation, _ = _train(tiny_bert, "bf16", steps=4, grad_accum=2)
    assert _dtypes(with_accumulation) == {torch.float32}


def test_ctrl_c_mid_pass_leaves_the_float32_masters_in_the_model(tiny_bert: Path) -> None:
    model = _model(tiny_bert)
    ids, mask, target = _batch()
    calls = []

    def loss_of_batch(_: Any) -> tuple[torch.Tensor, int]:
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return _loss(model, ids, mask, target), len(ids)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = Optimization(lr=1e-3, steps=5, warmup_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0)
    done = run_steps(
        model, params, iter([None] * 5), loss_of_batch, opt, bar=ProgressBar(5, "t", enabled=False), weights="bf16"
    )
    assert done.interrupted and done.steps == 2
    assert _dtypes(model) == {torch.float32}


def test_the_choice_is_measured_once_per_machine_and_shape_and_cached(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HRLM_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("HRLM_TRAIN_WEIGHTS", raising=False)
    model = _model(tiny_bert)
    widths: list[int] = []

    def bf16_faster(run: Any, measured: nn.Module, vocab: int, width: int) -> dict[str, float]:
        assert measured is model
        widths.append(width)
        return {"autocast": 0.004, "bf16": 0.003}

    monkeypatch.setattr(weights, "measure", bf16_faster)
    assert weights.choose(model, CPU, "bf16", 100) == "bf16"
    assert widths == [128]
    (cached,) = (tmp_path / "calibration").glob("train-weights-*.json")
    record = json.loads(cached.read_text())
    assert record["choice"] == "bf16" and record["shape"]["hidden_size"] == model.config.hidden_size
    monkeypatch.setattr(weights, "measure", lambda *args: pytest.fail("measured again despite the cache"))
    assert weights.choose(model, CPU, "bf16", 120) == "bf16"
    model.freeze(layers=1)  # fewer weights to train: another shape, measured again
    monkeypatch.setattr(weights, "measure", lambda *args: {"autocast": 0.002, "bf16": 0.003})
    assert weights.choose(model, CPU, "bf16", 120) == "autocast"


def test_no_choice_but_autocast_off_cpu_bf16_with_calibration_off_and_the_setting_decides(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HRLM_TRAIN_WEIGHTS", raising=False)
    monkeypatch.setattr(weights, "measure", lambda *args: pytest.fail("nothing to measure"))
    model = _model(tiny_bert)
    assert weights.choose(model, torch.device("cuda"), "bf16", 64) is None
    assert weights.choose(model, CPU, "fp32", 64) is None
    assert weights.choose(nn.Linear(2, 2), CPU, "bf16", 64) is None  # no encoder to time
    monkeypatch.setenv("HRLM_CALIBRATE", "off")
    assert weights.choose(model, CPU, "bf16", 64) is None
    monkeypatch.setenv("HRLM_TRAIN_WEIGHTS", "bf16")
    assert weights.choose(model, CPU, "bf16", 64) == "bf16"
    assert weights.choose(model, CPU, "fp32", 64) is None  # an fp32 run has nothing to cast
    monkeypatch.setenv("HRLM_TRAIN_WEIGHTS", "autocast")
    assert weights.choose(model, CPU, "bf16", 64) == "autocast"
    monkeypatch.setenv("HRLM_TRAIN_WEIGHTS", "fp16")
    with pytest.raises(ConfigError, match="HRLM_TRAIN_WEIGHTS = 'fp16': use auto, autocast or bf16"):
        weights.choose(model, CPU, "bf16", 64)


def test_measure_times_both_ways_and_changes_nothing(tiny_bert: Path) -> None:
    model = build_model(tiny_bert, [TaskSpec("label", ["a", "b"])], dropout=0.1, attention_dropout=0.1)
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    encoder = model.encoder

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return encoder(input_ids=ids, attention_mask=mask)[0]

    seconds = weights.measure(run, model, int(model.config.vocab_size), 16)
    assert set(seconds) == {"autocast", "bf16"} and all(0 < s < 5 for s in seconds.values())
    assert not model.training and _dtypes(model) == {torch.float32}
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)  # a run's dropout masks don't depend on a first-use measurement


@pytest.mark.parametrize(
    "overrides",
    [{}, {"freeze_layers": 1, "ema_epochs": 1.0}],
    ids=["whole-encoder", "frozen-layer-cache-and-weight-average"],
)
def test_a_bf16_training_on_bf16_weights_matches_autocasts_and_saves_float32(
    tiny_bert: Path, tickets_csv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any]
) -> None:
    from safetensors import safe_open

    from hrlm.training.fitting import train
    from tests.conftest import tiny_train_config

    results = {}
    for choice in ("autocast", "bf16"):
        monkeypatch.setenv("HRLM_TRAIN_WEIGHTS", choice)
        cfg = tiny_train_config(tiny_bert, precision="bf16", **overrides)
        results[choice] = train(tickets_csv, tmp_path / choice, cfg, progress=False)
    ours, theirs = results["bf16"], results["autocast"]
    assert ours.paths["weights"] == "bf16" and theirs.paths["weights"] == "autocast"
    # three classes: chance is a third
    assert ours.metrics["accuracy"] >= theirs.metrics["accuracy"] - 0.05 and ours.metrics["accuracy"] >= 0.6
    for a, b in zip(ours.history, theirs.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=0.02)
    assert ours.model_dir is not None
    meta = json.loads((ours.model_dir / "hrlm.json").read_text())
    assert meta["extra"]["training_paths"]["weights"] == "bf16"
    with safe_open(str(ours.model_dir / "model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    _assert_float32_masters(saved)


def _assert_float32_masters(state: dict[str, torch.Tensor]) -> None:
    """Trained weights as float32 masters hold them, not rounded to bf16 (saving casts to float32 either way)."""
    matrices = [t for t in state.values() if t.ndim == 2 and t.numel() >= 256]
    assert matrices and {t.dtype for t in state.values()} == {torch.float32}
    for t in matrices:
        assert (t != t.to(torch.bfloat16).float()).float().mean() > 0.9


def test_masked_lm_pretraining_on_bf16_weights_learns_and_saves_float32(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    from hrlm.config import PretrainConfig
    from hrlm.training.pretraining import pretrain
    from tests.training.test_pretrain import _corpus

    monkeypatch.setenv("HRLM_TRAIN_WEIGHTS", "bf16")
    cfg = PretrainConfig(
        base=str(tiny_bert),
        max_length=32,
        epochs=8,
        batch_size=16,
        lr=2e-3,
        head_steps=30,
        head_lr=5e-3,
        precision="bf16",
    )
    result = pretrain(_corpus(80), tmp_path / "encoder", cfg, progress=False)
    # the MLM decoder shares the word embeddings' weight: one master, trained (the pretraining test's threshold)
    assert result.after["perplexity"] < 0.9 * result.before["perplexity"]
    _assert_float32_masters(load_file(str(tmp_path / "encoder" / "model.safetensors")))
