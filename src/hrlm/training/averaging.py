"""An exponential moving average of the weights, evaluated and kept in place of the last weights.

Fine-tuning's last steps move the weights back and forth around a minimum of the training loss;
their average sits nearer its middle and usually generalises better to texts unlike the training
ones (Polyak averaging; "EMA" in most vision and language recipes). hrlm keeps it with PyTorch's
own :class:`torch.optim.swa_utils.AveragedModel`, updated after every optimizer step, over a
horizon given in epochs (``--ema-epochs``) so that one setting means the same on 500 texts and on
50,000: the per-step decay is ``1 - 1 / (epochs x steps per epoch)``.

The average is normalised over the steps seen so far: after ``n`` updates each step's weights
count ``decay ** age`` divided by the sum of those factors (the bias correction of Adam's moments), so
the pretrained weights and the untrained head of the first step fade like any other step instead of
weighing ``decay ** n`` as in a plain moving average started from them. Until the run has lasted
about the horizon, the average is close to the plain mean of its steps (stochastic weight averaging).

Example:
    >>> layer = nn.Linear(1, 1, bias=False)
    >>> avg = WeightAverage(layer, horizon_steps=100)
    >>> avg.decay
    0.99
    >>> for step in range(300):
    ...     _ = layer.weight.data.fill_(5.0 + (-1) ** step)  # the weights swing around 5
    ...     avg.update(layer)
    >>> float(layer.weight.detach()), round(float(avg.model.weight.detach()), 1)
    (4.0, 5.0)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar, cast

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel

__all__ = ["WeightAverage", "newest_share"]

M = TypeVar("M", bound=nn.Module)
_Tensors = tuple[torch.Tensor, ...] | list[torch.Tensor]


def newest_share(updates: int, decay: float) -> float:
    """The share of the newest weights in the average of ``updates`` steps: ``(1 - decay) / (1 - decay ** updates)``.

    Example:
        >>> [round(newest_share(n, 0.99), 3) for n in (1, 2, 10, 100, 1000)]
        [1.0, 0.503, 0.105, 0.016, 0.01]
    """
    if decay <= 0.0:
        return 1.0
    return (1.0 - decay) / (1.0 - decay**updates)


def _ema(decay: float) -> Callable[[_Tensors, _Tensors, torch.Tensor | int], None]:
    @torch.no_grad()
    def update(averaged: _Tensors, current: _Tensors, n_averaged: torch.Tensor | int) -> None:
        # One fused pass over every tensor (the foreach kernel), as AdamW's own update.
        torch._foreach_lerp_(list(averaged), list(current), newest_share(int(n_averaged) + 1, decay))

    return update


class WeightAverage(Generic[M]):
    """The moving average of ``model``'s weights over about ``horizon_steps`` optimizer steps.

    ``model`` (its copy, :attr:`model`) is what evaluation scores and the run keeps; it lives on the
    model's device and costs one more copy of the weights in memory.
    """

    def __init__(self, model: M, *, horizon_steps: float) -> None:
        self.decay = max(0.0, 1.0 - 1.0 / max(horizon_steps, 1.0))
        self._averaged = AveragedModel(model, multi_avg_fn=_ema(self.decay))

    @property
    def model(self) -> M:
        """The averaged copy: a module of the same class and state-dict keys as the trained one."""
        return cast(M, self._averaged.module)

    def update(self, model: M) -> None:
        """Fold in ``model``'s current weights (the first call copies them)."""
        self._averaged.update_parameters(model)
