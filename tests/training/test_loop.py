"""The one training loop (``run_steps``) on a model small enough to check by hand."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable

import pytest
import torch
from torch import nn

from hrlm._progress import ProgressBar
from hrlm.training.loop import Optimization, param_groups, run_steps


def _opt(lr: float = 0.05, steps: int = 4, warmup_ratio: float = 0.25, max_grad_norm: float = 1.0) -> Optimization:
    return Optimization(lr, steps, warmup_ratio, weight_decay=0.01, max_grad_norm=max_grad_norm)


def _bar(steps: int) -> ProgressBar:
    return ProgressBar(steps, "test", enabled=False)


def _regression(seed: int = 0) -> tuple[nn.Linear, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    torch.manual_seed(seed)
    return nn.Linear(3, 1), x, y


def test_biases_and_layernorm_weights_are_not_decayed() -> None:
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2))
    groups = param_groups(bert.parameters(), 0.1)
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    assert len(decay_of) == len(list(bert.parameters()))
    for name, p in bert.named_parameters():
        exempt = name.endswith("bias") or "LayerNorm" in name
        assert decay_of[id(p)] == (0.0 if exempt else 0.1), name


def test_two_accumulated_half_batches_make_the_same_step_as_the_whole_batch() -> None:
    # A clipping limit small enough to bind: clipping each half on its own would give another step.
    opt = _opt(max_grad_norm=0.05)
    whole, x, y = _regression()
    halves = nn.Linear(3, 1)
    halves.load_state_dict(whole.state_dict())

    def mse(model: nn.Linear) -> Callable[[list[int]], tuple[torch.Tensor, int]]:
        return lambda i: (nn.functional.mse_loss(model(x[i]), y[i]), len(i))

    everything = itertools.repeat(list(range(8)))
    run_steps(whole, list(whole.parameters()), everything, mse(whole), opt, bar=_bar(4))
    split = itertools.cycle([list(range(4)), list(range(4, 8))])
    twice = dataclasses.replace(opt, grad_accum=2)
    accumulated = run_steps(halves, list(halves.parameters()), split, mse(halves), twice, bar=_bar(4))
    assert accumulated.steps == 4 and accumulated.samples == 32
    for a, b in zip(whole.parameters(), halves.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_evaluation_runs_every_n_steps_and_after_the_last_and_may_stop_training() -> None:
    model, x, y = _regression()
    batches = itertools.repeat(list(range(8)))
    seen: list[tuple[int, float]] = []

    def loss(i: list[int]) -> tuple[torch.Tensor, int]:
        return nn.functional.mse_loss(model(x[i]), y[i]), len(i)

    def evaluate(step: int, train_loss: float) -> bool:
        seen.append((step, train_loss))
        return False

    params = list(model.parameters())
    run_steps(model, params, batches, loss, _opt(steps=7), bar=_bar(7), evaluate=evaluate, eval_every=3)
    assert [step for step, _ in seen] == [3, 6, 7]
    assert all(train_loss > 0 for _, train_loss in seen)

    stop_at_3 = run_steps(
        model, params, batches, loss, _opt(steps=7), bar=_bar(7), evaluate=lambda step, _: step == 3, eval_every=3
    )
    assert stop_at_3.steps == 3 and not stop_at_3.interrupted


def test_ctrl_c_ends_the_loop_cleanly_and_keeps_the_weights_of_the_steps_done() -> None:
    model, x, y = _regression()
    before = [p.detach().clone() for p in model.parameters()]
    calls = 0

    def loss(i: list[int]) -> tuple[torch.Tensor, int]:
        nonlocal calls
        calls += 1
        if calls == 3:
            raise KeyboardInterrupt
        return nn.functional.mse_loss(model(x[i]), y[i]), len(i)

    done = run_steps(model, list(model.parameters()), itertools.repeat(list(range(8))), loss, _opt(), bar=_bar(4))
    assert done.interrupted and done.steps == 2 and done.samples == 16
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_learning_rate_warms_up_then_decays_to_zero_over_the_run() -> None:
    opt = _opt(lr=1.0, steps=10, warmup_ratio=0.2)
    assert [opt.lr_at(s) for s in (0, 1, 2, 6, 10)] == [0.0, 0.5, 1.0, 0.5, 0.0]


def test_adamw_runs_fused_where_pytorch_has_the_kernel() -> None:
    from hrlm.training.loop import fused_adamw

    layer = nn.Linear(3, 2)
    assert fused_adamw(list(layer.parameters())) is True
    assert fused_adamw([nn.Parameter(torch.zeros(2, dtype=torch.float64))]) is None  # no fused float64 path
    assert fused_adamw([]) is None


class _Recording(ProgressBar):
    """A progress bar that records the loss shown at every update (None: only the step count changed)."""

    def __init__(self, steps: int) -> None:
        super().__init__(steps, "test", enabled=False)
        self.shown_loss: list[str | None] = []

    def update(self, completed: int | None = None, *, advance: int = 0, **fields: str) -> None:
        self.shown_loss.append(fields.get("loss"))
        super().update(completed, advance=advance, **fields)


def test_deferred_losses_give_the_same_means_and_are_read_only_when_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a GPU: batches' losses stay unread until an evaluation or the progress bar reads them."""
    import hrlm.training.loop as loop

    real = loop.StepsDone
    monkeypatch.setattr(loop, "LOSS_SHOWN_EVERY_S", float("inf"))

    def run(defer: bool) -> tuple[list[float], _Recording, list[float]]:
        monkeypatch.setattr(loop, "StepsDone", lambda **_: real(defer=defer))
        model, x, y = _regression(3)
        batches = itertools.cycle([[0, 1, 2, 3], [4, 5, 6, 7]])
        losses: list[float] = []

        def loss(i: list[int]) -> tuple[torch.Tensor, int]:
            value = nn.functional.mse_loss(model(x[i]), y[i])
            losses.append(float(value.detach()))
            return value, len(i)

        means: list[float] = []

        def evaluate(step: int, train_loss: float) -> bool:
            means.append(train_loss)
            return False

        bar = _Recording(6)
        opt = dataclasses.replace(_opt(steps=6), grad_accum=2)
        run_steps(model, list(model.parameters()), batches, loss, opt, bar=bar, evaluate=evaluate, eval_every=2)
        return means, bar, losses

    plain, plain_bar, losses = run(False)
    deferred, deferred_bar, _ = run(True)
    expected = [sum(losses[k : k + 4]) / 4 for k in (0, 4, 8)]  # 2 steps of 2 batches between evaluations
    assert len(plain) == len(deferred) == 3
    for a, b, c in zip(plain, deferred, expected, strict=True):
        assert abs(a - c) < 1e-6 and abs(b - c) < 1e-6
    assert all(shown is not None for shown in plain_bar.shown_loss)  # on a CPU: every step
    assert deferred_bar.shown_loss[0] is not None and deferred_bar.shown_loss[1:] == [None] * 5
