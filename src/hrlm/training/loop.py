"""The one training loop (AdamW, schedule, accumulation, clipping, Ctrl-C) and the runners built on it.

:func:`run_steps` is what every trainer runs: :func:`train_full` (fine-tuning, and distillation through
it), masked-LM pretraining and SetFit's contrastive pairs; each brings its batches and the loss of one.
:func:`train_head_only` fits the heads on features computed once. Both runners keep the best weights by
the validation metric and stop early; :mod:`hrlm.training.fitting` calls them and writes the model folder.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from hrlm._alloc import keep_freed_memory
from hrlm._progress import ProgressBar
from hrlm.config import PretrainConfig, TrainConfig
from hrlm.inference import (
    aggregate,
    autocast,
    collate,
    length_batches,
)
from hrlm.inference.packing import transfer
from hrlm.modeling import HrlmModel, attention_dropout_for
from hrlm.text import Encoded
from hrlm.training import packed
from hrlm.training.attention import choose as choose_attention
from hrlm.training.attention import using as using_attention
from hrlm.training.averaging import WeightAverage
from hrlm.training.batching import batches_forever
from hrlm.training.distributed import Replicas, shard
from hrlm.training.dropout import choose as choose_dropout
from hrlm.training.dropout import using as using_dropout
from hrlm.training.evaluator import Evaluator
from hrlm.training.frozen import FrozenCache
from hrlm.training.multitask import MultiTaskLoss
from hrlm.training.weights import choose as choose_weights
from hrlm.training.weights import compute_dtype
from hrlm.training.weights import using as using_weights

log = logging.getLogger("hrlm")

B = TypeVar("B")  # a batch, whatever the trainer's loss function reads

# On a GPU the progress bar shows the training loss at most this often: reading it makes the host wait
# for the GPU, which otherwise runs a step or more behind it. On a CPU it is shown every step.
LOSS_SHOWN_EVERY_S = 0.5


def lr_factor(step: int, *, warmup: int, total: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then linear decay to 0 at ``total``.

    Example:
        >>> [round(lr_factor(s, warmup=2, total=6), 2) for s in range(7)]
        [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0]
    """
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@dataclass(frozen=True)
class Optimization:
    """How the weights move: AdamW over ``steps`` steps of ``grad_accum`` batches, warmup, decay, clipping.

    Example:
        >>> opt = Optimization(lr=1e-4, steps=100, warmup_ratio=0.1, weight_decay=0.01, max_grad_norm=1.0)
        >>> opt.lr_at(0), opt.lr_at(5), opt.lr_at(10), opt.lr_at(100)
        (0.0, 5e-05, 0.0001, 0.0)
    """

    lr: float
    steps: int
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    grad_accum: int = 1

    @classmethod
    def from_config(
        cls, cfg: TrainConfig | PretrainConfig, *, steps: int, lr: float | None = None, grad_accum: int = 1
    ) -> Optimization:
        """The settings of ``cfg`` for a run of ``steps`` steps at peak rate ``lr`` (default ``cfg.lr``)."""
        return cls(
            lr=cfg.lr if lr is None else lr,
            steps=steps,
            warmup_ratio=cfg.warmup_ratio,
            weight_decay=cfg.weight_decay,
            max_grad_norm=cfg.max_grad_norm,
            grad_accum=grad_accum,
        )

    def lr_at(self, step: int) -> float:
        """The learning rate of step ``step`` (from 0): :func:`lr_factor` of the peak ``lr``."""
        return self.lr * lr_factor(step, warmup=int(self.warmup_ratio * self.steps), total=self.steps)


def param_groups(params: Iterable[nn.Parameter], weight_decay: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight matrices decay, biases and LayerNorm weights do not.

    Decay pulls weights towards zero: for a matrix, the wanted preference for simple maps; for a bias
    or a LayerNorm gain, which only shifts or scales a feature, a pull towards a dead or silenced
    feature that regularises nothing (BERT's recipe exempts them). They are the 1-d tensors.

    Example:
        >>> layers = nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4))
        >>> [(len(g["params"]), g["weight_decay"]) for g in param_groups(layers.parameters(), 0.01)]
        [(1, 0.01), (3, 0.0)]
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in params:
        (no_decay if p.ndim < 2 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def fused_adamw(params: Sequence[nn.Parameter]) -> bool | None:
    """Whether AdamW can update ``params`` with its fused kernel: one pass over every tensor, not a loop per tensor.

    PyTorch's fused AdamW runs on CPU and CUDA tensors of floating dtypes; elsewhere ``None`` leaves
    PyTorch's own choice (its multi-tensor ``foreach`` form where it has one). Measured on a 2-core AMD
    EPYC: the optimizer step of MiniLM's 22.7M weights took 68 ms in the default form and 25 ms fused.
    """
    ok = all(
        p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16) for p in params
    )
    return True if ok and params else None


@dataclass
class StepsDone:
    """What :func:`run_steps` did, updated as it goes, so that it is right even when Ctrl-C stops it."""

    steps: int = 0
    seconds: float = 0.0  # in training steps; evaluation is not counted
    samples: int = 0
    interrupted: bool = False
    loss_sum: float = 0.0  # since the last evaluation, over batches (those read back from the device)
    loss_count: int = 0
    # Keep batches' losses where they were computed until train_loss is read: on a GPU, reading each
    # at once would make the host wait for the GPU every batch, so it could never queue the next step
    # while the GPU computes this one. run_steps defers off the CPU.
    defer: bool = False
    unread: list[torch.Tensor] = field(default_factory=list)

    def add_loss(self, loss: torch.Tensor) -> None:
        """Count a batch's loss (read back now, or with the next :attr:`train_loss` when deferring)."""
        self.loss_count += 1
        if self.defer:
            self.unread.append(loss.detach().float())
        else:
            self.loss_sum += float(loss.detach())

    def reset_loss(self) -> None:
        """Start a new mean (after an evaluation)."""
        self.loss_sum, self.loss_count = 0.0, 0
        self.unread.clear()

    @property
    def train_loss(self) -> float:
        """The mean training loss of the batches since the last evaluation (or the start)."""
        if self.unread:
            self.loss_sum += float(torch.stack(self.unread).sum())
            self.unread.clear()
        return self.loss_sum / max(self.loss_count, 1)


def run_steps(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    batches: Iterator[B],
    loss_of_batch: Callable[[B], tuple[torch.Tensor, int]],
    opt: Optimization,
    *,
    bar: ProgressBar,
    evaluate: Callable[[int, float], bool] | None = None,
    eval_every: int = 0,
    replicas: Replicas | None = None,
    attention: str | None = None,
    dropout: str | None = None,
    weights: str | None = None,
    after_step: Callable[[], None] | None = None,
) -> StepsDone:
    """Train ``params`` with AdamW for ``opt.steps`` steps: the one training loop of hrlm.

    Args:
        model: the module that holds ``params``; in training mode for every step.
        params: the parameters to train, every one with ``requires_grad``.
        batches: at least ``opt.steps * opt.grad_accum`` batches (an endless stream will do).
        loss_of_batch: the mean loss of a batch (its forward pass under autocast, if the caller
            wants one) and the number of samples in the batch.
        opt: learning rate, schedule, weight decay, accumulation and clipping.
        bar: shows the steps and the training loss; closed on return.
        evaluate: called every ``eval_every`` steps and after the last with the step and the mean
            training loss since the previous call; returns True to stop (early stopping). With
            ``replicas`` it runs on every worker and must return the same answer on all of them.
        replicas: data-parallel workers (:mod:`hrlm.training.distributed`): ``batches`` are this
            worker's shares and the gradients are averaged over the workers every step.
        attention: the encoder's attention implementation for the run (``"eager"`` or ``"sdpa"``, as
            :func:`hrlm.training.attention.choose` measured it on this machine), restored afterwards;
            None keeps the encoder's own.
        dropout: ``"sampled"`` to run the model's dropout modules with the cheaper mask of
            :mod:`hrlm.training.dropout` (as :func:`hrlm.training.dropout.choose` measured it on this
            machine), restored afterwards; None or ``"torch"`` keeps PyTorch's.
        weights: ``"bf16"`` to run the forward and backward passes on bf16 copies of the model's
            weights, with the float32 weights as masters for the optimizer
            (:mod:`hrlm.training.weights`, as :func:`hrlm.training.weights.choose` measured it on
            this machine); None or ``"autocast"`` leaves the weights as they are.
        after_step: called after every optimizer step, before ``evaluate`` (a weight average's update).

    Returns:
        Steps, seconds and samples, and ``interrupted``: Ctrl-C, in a step or in ``evaluate``, ends the
        loop cleanly and leaves the weights as they are, for the caller to keep the best or the last.

    Example:
        >>> layer = nn.Linear(2, 1)
        >>> opt = Optimization(lr=0.1, steps=3, warmup_ratio=0.0, weight_decay=0.01, max_grad_norm=1.0)
        >>> done = run_steps(layer, list(layer.parameters()), iter([torch.ones(4, 2)] * 3),
        ...                  lambda x: (layer(x).pow(2).mean(), len(x)), opt, bar=ProgressBar(3, "demo", enabled=False))
        >>> done.steps, done.samples, done.interrupted
        (3, 12, False)
    """
    keep_freed_memory()
    optimizer = torch.optim.AdamW(param_groups(params, opt.weight_decay), lr=opt.lr, fused=fused_adamw(params))
    done = StepsDone(defer=any(p.device.type != "cpu" for p in params))
    model.train()
    restore = contextlib.ExitStack()
    restore.enter_context(using_attention(model, attention))
    restore.enter_context(using_dropout(model, dropout))
    bf16 = restore.enter_context(using_weights(model, weights))
    computing = bf16.computing if bf16 is not None else contextlib.nullcontext
    shown = -math.inf  # when the progress bar last showed the training loss
    try:
        while done.steps < opt.steps:
            t0 = time.perf_counter()
            # The schedule is a pure function of the step, so a run's rates never depend on its history.
            for group in optimizer.param_groups:
                group["lr"] = opt.lr_at(done.steps)
            for _ in range(opt.grad_accum):
                with computing():
                    loss, n = loss_of_batch(next(batches))
                    # Divided so that the accumulated gradient is that of the mean over all the step's batches.
                    (loss / opt.grad_accum).backward()
                done.add_loss(loss)
                done.samples += n
            if replicas is not None:
                # Every worker then holds the gradient of the whole global batch and takes the same
                # step, so the weights stay identical; averaged before clipping, which needs the whole.
                replicas.average_gradients(params)
            # Clip after accumulation so that the limit applies to the full step's gradient.
            nn.utils.clip_grad_norm_(params, opt.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if bf16 is not None:
                bf16.refresh()
            if after_step is not None:
                after_step()
            done.steps += 1
            now = time.perf_counter()
            done.seconds += now - t0
            if not done.unread or now - shown >= LOSS_SHOWN_EVERY_S:  # on a GPU, the loss waits for it
                bar.update(done.steps, loss=f"{done.train_loss:.4f}")
                shown = now
            else:
                bar.update(done.steps)
            if evaluate is not None and (done.steps % eval_every == 0 or done.steps == opt.steps):
                stop = evaluate(done.steps, done.train_loss)
                done.reset_loss()
                model.train()  # evaluation may have left the model in eval mode
                if stop:
                    break
    except KeyboardInterrupt:
        done.interrupted = True
        log.warning("%s interrupted at step %d of %d", bar.label, done.steps, opt.steps)
    finally:
        bar.close()
        restore.close()
    return done


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


@dataclass
class RunState:
    best_state: dict[str, torch.Tensor]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_metric: float = -math.inf
    best_loss: float = math.inf
    best_step: int = 0
    bad_evals: int = 0
    train_seconds: float = 0.0
    samples: int = 0
    interrupted: bool = False
    # the code paths measured for this machine (attention, dropout, weights; None: the model's own, autocast)
    paths: dict[str, str | None] = field(default_factory=dict)

    def record(self, model: nn.Module, entry: dict[str, Any], metric: float | None, patience: int) -> bool:
        """Add a history entry; keep the weights if they are the best; True when training should stop."""
        self.history.append(entry)
        if metric is None:
            self.best_state = _snapshot(model)
            self.best_step = entry["step"]
            return False
        loss = entry["val_loss"] if entry["val_loss"] is not None else math.inf
        # A tie on the metric (common on small validation sets) is broken by the validation loss.
        if metric > self.best_metric + 1e-9 or (abs(metric - self.best_metric) <= 1e-9 and loss < self.best_loss):
            self.best_metric, self.best_loss, self.best_step, self.bad_evals = metric, loss, entry["step"], 0
            self.best_state = _snapshot(model)
            return False
        self.bad_evals += 1
        return patience > 0 and self.bad_evals >= patience


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _history_entry(
    epoch: float, step: int, train_loss: float, cfg: TrainConfig, evaluator: Evaluator, logits: Any
) -> tuple[dict[str, Any], float | None]:
    """An entry of the learning curves, and the metric, scored on validation ``logits`` unless ``None``."""
    entry: dict[str, Any] = {
        "epoch": round(epoch, 4),
        "step": step,
        "train_loss": round(train_loss, 6),
        "val_loss": None,
        "val_metric": None,
        "metric": cfg.metric,
    }
    if logits is None:
        return entry, None
    metric, loss = evaluator.score(logits)
    entry["val_loss"] = round(loss, 6)
    entry["val_metric"] = round(loss if cfg.metric == "loss" else metric, 6)
    return entry, metric


@dataclass
class TrainingRun:
    """What a training runner works with."""

    model: HrlmModel
    cfg: TrainConfig
    enc: Encoded
    targets: torch.Tensor
    evaluator: Evaluator
    loss_fn: nn.Module
    pad_id: int
    device: torch.device
    precision: str
    show: bool
    on_eval: Callable[[dict[str, Any]], None] | None


def train_full(run: TrainingRun, replicas: Replicas | None = None) -> RunState:
    """Fine-tune the (partly frozen) encoder and the heads with :func:`run_steps`, evaluating as it goes.

    With ``replicas`` (several workers) this worker trains on its share of every global batch of
    ``cfg.batch_size`` (:func:`~hrlm.training.distributed.shard`); validation, early stopping and the
    best weights are rank 0's, and its stop decision is every worker's. With ``cfg.ema_epochs`` the
    moving average of the weights (:mod:`hrlm.training.averaging`) is what is evaluated and kept.
    """
    model, cfg, enc, evaluator = run.model, run.cfg, run.enc, run.evaluator
    targets, loss_fn, pad_id, device, precision = run.targets, run.loss_fn, run.pad_id, run.device, run.precision
    task = model.tasks[0]
    batches_per_epoch = math.ceil(len(enc.windows) / cfg.batch_size)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / cfg.grad_accum))
    total = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    opt = Optimization.from_config(cfg, steps=total, grad_accum=cfg.grad_accum)
    state = RunState(best_state=_snapshot(model))
    t_cache = time.perf_counter()
    cache = FrozenCache.build(model, enc.windows, cfg.freeze_layers, pad_id, device, precision)
    state.train_seconds += time.perf_counter() - t_cache
    longest = max((len(w) for w in enc.windows), default=cfg.max_length)
    paths: dict[str, str | None] = {
        "attention": choose_attention(model, device, precision, longest, cfg.batch_size),
        "dropout": choose_dropout(model, device, precision, longest),
        "weights": choose_weights(model, device, precision, longest),
    }
    # batches laid end to end without padding (hrlm.training.packed) where they apply and pay
    planned = batches_forever(enc.lengths, cfg.batch_size, cfg.seed, grouped=cfg.group_by_length)
    first_epoch = list(itertools.islice(planned, batches_per_epoch))  # the batches the run starts with
    pack = cache is None and packed.usable(
        model, device, packing=cfg.packing, attention_dropout=attention_dropout_for(cfg.attention_dropout, device)
    )
    if pack and cfg.packing is None:
        above = packed.threshold(model, device, precision, longest, pad_id, paths)
        share = packed.padding_share(enc.lengths, first_epoch)
        pack = packed.wanted(None, enc.lengths, first_epoch, above)
        log.info(
            "training on %s batches: padded, the first epoch's would be %.0f%% padding; packing pays above %.0f%% here",
            "packed" if pack else "padded",
            100 * share,
            100 * above,
        )

    def loss_of_batch(global_batch: list[int]) -> tuple[torch.Tensor, int]:
        batch, weight = shard(global_batch, replicas)
        loss, n = loss_of_share(batch)
        return loss * weight if weight != 1.0 else loss, n if weight else 0

    def loss_of_share(batch: list[int]) -> tuple[torch.Tensor, int]:
        if cache is not None:
            hidden, mask = cache.batch(batch)
            hidden, mask, batch_targets = transfer([hidden, mask, targets[batch]], device)
            # in the weights' dtype: bf16 while training on bf16 copies of them (run_steps' weights)
            hidden = hidden.to(dtype=compute_dtype(model))
            with autocast(device, precision):
                out = model.upper(hidden, mask, cache.layers)
        elif pack:
            batch_packed, order = packed.collate(enc.windows, batch)
            (batch_targets,) = transfer([targets[order]], device)
            with autocast(device, precision):
                out = packed.logits(model, batch_packed.to(device), paths["attention"])
        else:
            # ids, mask and targets in one copy that does not wait for the GPU (see transfer)
            ids, mask = collate([enc.windows[i] for i in batch], pad_id)
            ids, mask, batch_targets = transfer([ids, mask, targets[batch]], device)
            with autocast(device, precision):
                out = model(ids, mask)
        if isinstance(loss_fn, MultiTaskLoss):
            return loss_fn(out, batch_targets), len(batch)
        return loss_fn(out[task.name].float(), batch_targets), len(batch)

    bar = ProgressBar(total, "training", unit="steps", fields={"loss": "-", "val": "-"}, enabled=run.show)
    average = WeightAverage(model, horizon_steps=cfg.ema_epochs * steps_per_epoch) if cfg.ema_epochs > 0 else None
    scored = average.model if average is not None else model  # the weights evaluated and kept

    def history_entry(step: int, train_loss: float) -> tuple[dict[str, Any], float | None]:
        logits = evaluator.doc_logits(scored) if evaluator.available else None
        return _history_entry(step / steps_per_epoch, step, train_loss, cfg, evaluator, logits)

    def evaluate(step: int, train_loss: float) -> bool:
        if replicas is not None:
            train_loss = replicas.mean(train_loss)
            if not replicas.leader:
                return replicas.agree(False)
        entry, metric = history_entry(step, train_loss)
        stop = state.record(scored, entry, metric, cfg.early_stopping_patience)
        if entry["val_metric"] is not None:
            bar.update(step, val=f"{cfg.metric} {entry['val_metric']:.4f}")
        if run.on_eval is not None:
            run.on_eval(entry)
        if stop:
            log.info("early stopping at step %d: no improvement in %d evaluations", step, state.bad_evals)
        return replicas.agree(stop) if replicas is not None else stop

    trainable = [p for p in model.parameters() if p.requires_grad]
    batches = itertools.chain(first_epoch, planned)  # the order judged above, continued
    eval_every = cfg.eval_steps or steps_per_epoch
    state.paths = {**paths, "batches": "packed" if pack else "padded"}
    log.info("training paths on this machine: %s", state.paths)
    done = run_steps(
        model,
        trainable,
        batches,
        loss_of_batch,
        opt,
        bar=bar,
        evaluate=evaluate,
        eval_every=eval_every,
        replicas=replicas,
        attention=state.paths["attention"],
        dropout=state.paths["dropout"],
        weights=state.paths["weights"],
        after_step=_after_step(model, average, pack),
    )
    state.train_seconds += done.seconds
    state.samples += done.samples
    if done.interrupted:
        state.interrupted = True
        log.warning("keeping the best weights so far")
        if not state.history:  # stopped before the first evaluation: record where it stopped
            state.record(scored, *history_entry(done.steps, done.train_loss), 0)
    return state


def _after_step(model: nn.Module, average: WeightAverage | None, pack: bool) -> Callable[[], None] | None:
    """What follows every optimizer step: the weight average's update, and on packed batches the guard
    that keeps the heap from growing (:class:`hrlm.training.packed.HeapGuard`)."""
    guard = packed.HeapGuard() if pack else None

    def after() -> None:
        if average is not None:
            average.update(model)
        if guard is not None:
            guard.after_step()

    return after if average is not None or guard is not None else None


def train_head_only(run: TrainingRun) -> RunState:
    """Train the heads on encoder features computed once.

    With the encoder frozen, its output never changes: it is computed once per window and the
    head, a linear model, is fitted on the cached vectors with L-BFGS, which converges in seconds.
    Each round of 10 L-BFGS iterations is one entry of the learning curves.
    """
    model, cfg, enc, evaluator = run.model, run.cfg, run.enc, run.evaluator
    targets, loss_fn, pad_id, device, precision = run.targets, run.loss_fn, run.pad_id, run.device, run.precision
    task = model.tasks[0]
    t0 = time.perf_counter()
    features = _pooled_features(model, enc.windows, pad_id, device, precision)
    val_features = None
    if evaluator.available:
        assert evaluator.enc is not None
        val_features = _pooled_features(model, evaluator.enc.windows, pad_id, device, precision)
    head = model.head(task.name)
    y = targets.to(device)
    rounds = max(1, math.ceil(cfg.epochs * 5))
    optimizer = torch.optim.LBFGS(
        head.parameters(), lr=1.0, max_iter=10, history_size=20, line_search_fn="strong_wolfe"
    )
    l2 = cfg.weight_decay / max(len(features), 1)
    # Throughput counts each window once: the encoder pass is the cost, the head fit is negligible.
    state = RunState(best_state=_snapshot(model), samples=len(features))
    bar = ProgressBar(rounds, "training head", unit="rounds", fields={"loss": "-", "val": "-"}, enabled=run.show)
    model.eval()

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = loss_fn(head(features).float(), y) + l2 * head.weight.pow(2).sum()
        loss.backward()
        return loss

    try:
        for r in range(1, rounds + 1):
            loss = float(optimizer.step(closure).detach())
            state.train_seconds = time.perf_counter() - t0
            logits = None
            if val_features is not None:
                assert evaluator.enc is not None
                with torch.no_grad():
                    window = head(val_features).float().cpu().numpy()
                logits = aggregate(window, evaluator.enc.doc_index, evaluator.enc.n_docs, cfg.aggregate)
            entry, metric = _history_entry(r / 5, r, loss, cfg, evaluator, logits)
            stop = state.record(model, entry, metric, cfg.early_stopping_patience)
            bar.update(r, loss=f"{loss:.4f}", val=f"{cfg.metric} {entry['val_metric']}")
            if run.on_eval is not None:
                run.on_eval(entry)
            if stop:
                break
    except KeyboardInterrupt:
        state.interrupted = True
    finally:
        bar.close()
    return state


@torch.no_grad()  # not inference_mode: the cached features feed the head's autograd graph
def _pooled_features(
    model: HrlmModel, windows: Sequence[Sequence[int]], pad_id: int, device: torch.device, precision: str
) -> torch.Tensor:
    out = torch.zeros((len(windows), int(model.config.hidden_size)), dtype=torch.float32, device=device)
    for batch in length_batches([len(w) for w in windows], max_tokens=16384, max_batch=128):
        ids, mask = collate([windows[i] for i in batch], pad_id)
        with autocast(device, precision):
            out[batch] = model.pool(ids.to(device), mask.to(device)).float()
    return out
