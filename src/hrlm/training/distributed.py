"""Data-parallel training on Ray Train: ``hrlm train --workers N`` and ``hrlm pretrain --workers N``.

:func:`run_on_workers` starts ``N`` workers with Ray Train's ``TorchTrainer`` (one process each; the
process group is gloo on CPU, NCCL on GPU), runs a job on every one of them and returns what the
worker of rank 0 sent back. The jobs are :mod:`hrlm.training.fitting`'s and
:mod:`hrlm.training.pretraining`'s own training code, run with :class:`Replicas`: the one training loop
(:func:`hrlm.training.loop.run_steps`) then averages the gradients of all workers after every step's
accumulation, before clipping, so that every worker takes the same optimizer step and the weights
stay identical without ever being sent again.

The batch-size rule. ``batch_size`` is the **global** batch of an optimizer step, whatever the number
of workers: every worker draws the same sequence of global batches (same seed) and trains on its
share, every ``N``-th sample from its rank, so the shards are disjoint and together are the batch one
worker would have drawn. A share's mean loss is weighted by its size, so the averaged gradient is the
gradient of the global batch's mean loss even when ``N`` does not divide ``batch_size`` (the shares
then differ by one sample). The learning rate, warmup and schedule are therefore those of one worker
at the same batch size: ``--workers 2`` is the same optimisation as ``--workers 1``, only faster (and
``grad_accum`` multiplies both alike). Dropout masks differ between workers, as they would between
batches.

Validation, early stopping and the choice of the best checkpoint happen on rank 0; the stop decision
is broadcast so that every worker leaves the loop at the same step. Rank 0 sends the best weights
and the history back through a small actor, and the calling process writes the model folder
atomically, as with one worker: a failed worker or Ctrl-C leaves nothing behind.

Without ``address`` a local Ray is started on this machine's cores (a Ray already started in this
process is reused); with it the process joins that cluster, whose every node needs hrlm, the ray
extra and the base encoder folder at the same path. Each worker reserves ``threads`` CPUs (default:
the cluster's CPUs / ``N``) and runs that many torch threads, so that workers do not oversubscribe a
machine; a worker gets a GPU, and NCCL, when the cluster has one for every worker.

Not supported with workers (a one-line :class:`~hrlm.errors.ConfigError` says so): SetFit and the
head-only fit on frozen features (``--freeze-encoder``), which train in seconds on one process.

Example:
    >>> from hrlm import TrainConfig, train
    >>> train("tickets.csv", "runs/tickets", TrainConfig(workers=2, batch_size=32))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import signal
import tempfile
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from hrlm._extras import needs_extras
from hrlm.config import PretrainConfig, TrainConfig
from hrlm.errors import ConfigError, HrlmError
from hrlm.inference import default_threads

log = logging.getLogger("hrlm")

Job = Callable[["Replicas"], Any]  # run on every worker; rank 0's answer comes back


@dataclass
class Replicas:
    """This worker's place among the data-parallel workers, and the collectives the training loop calls.

    Every method is a collective: every worker calls it at the same point, or they all wait.
    """

    rank: int
    world: int
    device: torch.device
    threads: int

    @property
    def leader(self) -> bool:
        """True on rank 0, which validates, keeps the best weights and sends the result back."""
        return self.rank == 0

    def average_gradients(self, params: Sequence[nn.Parameter]) -> None:
        """Replace every gradient by its mean over the workers (a missing gradient counts as zero).

        The gradients are laid end to end in one buffer per dtype: one all-reduce a step instead of
        one per tensor, which is what costs on gloo.
        """
        by_dtype: dict[torch.dtype, list[nn.Parameter]] = {}
        for p in params:
            by_dtype.setdefault(p.dtype, []).append(p)
        for group in by_dtype.values():
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for p in group:
                part = flat[offset : offset + p.numel()].view_as(p)
                offset += p.numel()
                if p.grad is None:
                    p.grad = part.clone()
                else:
                    p.grad.copy_(part)

    def agree(self, stop: bool) -> bool:
        """Rank 0's decision, on every worker (early stopping is decided where validation runs)."""
        flag = torch.tensor([1 if stop else 0], dtype=torch.int64, device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def total(self, value: float) -> float:
        """The sum of ``value`` over the workers (samples trained, for the throughput)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return float(t.item())

    def mean(self, value: float) -> float:
        """The mean of ``value`` over the workers (the training loss of the history)."""
        return self.total(value) / self.world


def shard(batch: list[int], replicas: Replicas | None) -> tuple[list[int], float]:
    """This worker's share of a global batch, and the weight of its mean loss.

    The share is every ``world``-th sample from ``rank``; the weight ``len(share) * world / len(batch)``
    makes the average of the workers' weighted means the mean over the whole batch. A batch smaller
    than the number of workers leaves some without a sample: they take the first one at weight 0.

    Example:
        >>> r = Replicas(rank=1, world=2, device=torch.device("cpu"), threads=1)
        >>> shard([10, 11, 12, 13, 14], r), shard([7], r), shard([7, 8], None)
        (([11, 13], 0.8), ([7], 0.0), ([7, 8], 1.0))
    """
    if replicas is None or replicas.world == 1:
        return batch, 1.0
    mine = batch[replicas.rank :: replicas.world]
    if not mine:
        return batch[:1], 0.0
    return mine, len(mine) * replicas.world / len(batch)


def check_distributable(cfg: TrainConfig | PretrainConfig, method: str = "finetune") -> None:
    """Refuse, in one line, what training on several workers does not do.

    Raises:
        ConfigError: a method other than fine-tuning, ``freeze_encoder``, or fewer samples per
            batch than workers.
    """
    if cfg.workers <= 1:
        return
    if isinstance(cfg, TrainConfig):
        if method != "finetune":  # SetFit, or the head on frozen features that --method auto may choose
            raise ConfigError(
                f"workers = {cfg.workers} trains by fine-tuning, but the method is {method!r}; "
                "pass --method finetune or drop --workers."
            )
        if cfg.freeze_encoder:
            raise ConfigError(
                f"workers = {cfg.workers} does not apply to --freeze-encoder, which fits a head on cached "
                "features in seconds on one process; drop --workers or --freeze-encoder."
            )
    if cfg.batch_size < cfg.workers:
        raise ConfigError(
            f"batch_size = {cfg.batch_size} is the global batch split across workers = {cfg.workers}; "
            "give every worker at least one sample (raise --batch-size or lower --workers)."
        )


@dataclass
class WorkerOutcome:
    """What :func:`run_on_workers` returns: rank 0's answer and where every worker ran."""

    result: Any
    placements: list[dict[str, Any]]


def run_on_workers(
    job: Job, cfg: TrainConfig | PretrainConfig, *, what: str = "training", use_gpu: bool | None = None
) -> WorkerOutcome:
    """Run ``job`` on ``cfg.workers`` Ray Train workers and return what rank 0's job returned.

    Args:
        job: a picklable callable (a module-level function or a ``functools.partial`` of one) taking
            this worker's :class:`Replicas`.
        cfg: ``workers``, ``address``, ``threads`` and ``device`` are read.
        what: names the run in errors and Ray's logs.
        use_gpu: one GPU per worker with NCCL; default: when ``device`` is not ``cpu`` and the cluster
            has a GPU for every worker.

    Raises:
        HrlmError: a worker failed (the line names its rank and its error; an hrlm error raised on a
            worker is raised again with its own class).
        KeyboardInterrupt: Ctrl-C; Ray stops the workers and nothing comes back.

    Example:
        >>> out = run_on_workers(functools.partial(train_replica, ...), TrainConfig(workers=2))  # doctest: +SKIP
    """
    with needs_extras(f"{what} with --workers"):
        import ray
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
        from ray.train.v2.api.exceptions import TrainingFailedError, WorkerGroupError

    started = _connect(ray, cfg.address)
    previous_sigint = signal.getsignal(signal.SIGINT)
    try:
        gpus = float(ray.cluster_resources().get("GPU", 0))
        if use_gpu is None:
            use_gpu = cfg.device != "cpu" and gpus >= cfg.workers
        if cfg.device == "cuda" and not use_gpu:
            raise ConfigError(
                f"device = 'cuda' with workers = {cfg.workers} needs a GPU per worker; Ray sees {gpus:g}."
            )
        cpus = float(ray.cluster_resources().get("CPU", 1))
        threads = cfg.threads or max(1, int(cpus // cfg.workers))
        if threads * cfg.workers > cpus:
            raise ConfigError(
                f"threads = {threads} for each of workers = {cfg.workers} needs {threads * cfg.workers} CPUs; "
                f"the Ray cluster has {cpus:g}. Lower --threads or --workers."
            )
        inbox: Any = ray.remote(num_cpus=0)(_Inbox).remote()
        name = f"hrlm-{what.replace(' ', '-')}-{uuid.uuid4().hex[:8]}"
        with tempfile.TemporaryDirectory(prefix="hrlm-ray-") as storage:
            trainer = TorchTrainer(
                _worker_loop,
                train_loop_config={"job": job, "inbox": inbox, "threads": threads, "use_gpu": use_gpu},
                torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
                scaling_config=ScalingConfig(
                    num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": threads}
                ),
                run_config=RunConfig(name=name, storage_path=storage, failure_config=FailureConfig(max_failures=0)),
            )
            backend = "NCCL" if use_gpu else "gloo"
            log.info("%s on %d workers (%d threads each, %s)", what, cfg.workers, threads, backend)
            try:
                trainer.fit()
            except WorkerGroupError as exc:
                raise _worker_error(exc, what, cfg.workers) from None
            except TrainingFailedError as exc:
                raise HrlmError(f"{what} on {cfg.workers} workers failed: {_last_line(exc)}") from None
            except SystemExit:  # Ray Train's Ctrl-C handler aborts the run, then exits from inside fit()
                raise KeyboardInterrupt from None
        result, placements = ray.get(inbox.collect.remote())
        if result is None:  # Ray's own Ctrl-C handler aborted the run: the workers are gone
            raise KeyboardInterrupt
        return WorkerOutcome(result=result, placements=placements)
    finally:
        signal.signal(signal.SIGINT, previous_sigint)  # Ray Train installs its own for the run
        if started:
            ray.shutdown()


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address``, reuse a running Ray, or start one on this machine; True if started."""
    if ray.is_initialized():
        return False
    if address:
        try:
            ray.init(address=address, configure_logging=False)
        except ConnectionError as exc:
            raise ConfigError(f"cannot reach the Ray cluster at address = {address!r}: {_last_line(exc)}") from None
        return True
    ray.init(num_cpus=default_threads(), include_dashboard=False, configure_logging=False)
    return True


class _Inbox:
    """Where the workers send their placement and rank 0 its result (an actor on the cluster)."""

    def __init__(self) -> None:
        self.result: Any = None
        self.placements: dict[int, dict[str, Any]] = {}

    def place(self, rank: int, where: dict[str, Any]) -> None:
        self.placements[rank] = where

    def put(self, result: Any) -> None:
        self.result = result

    def collect(self) -> tuple[Any, list[dict[str, Any]]]:
        return self.result, [self.placements[r] for r in sorted(self.placements)]


def _worker_loop(config: dict[str, Any]) -> None:
    """Ray Train's function on every worker: threads, device, the job, and rank 0's result to the inbox."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device() if config["use_gpu"] else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.set_num_threads(config["threads"])
    runtime = ray.get_runtime_context()
    where = {
        "rank": rank,
        "node_id": runtime.get_node_id(),
        "ip": ray.util.get_node_ip_address(),
        "pid": os.getpid(),
        "device": str(device),
        "threads": config["threads"],
    }
    ray.get(config["inbox"].place.remote(rank, where))
    replicas = Replicas(rank=rank, world=world, device=device, threads=config["threads"])
    result = config["job"](replicas)
    if replicas.leader:
        ray.get(config["inbox"].put.remote(result))


def _worker_error(exc: Any, what: str, workers: int) -> HrlmError:
    """One line for a failed worker; an hrlm error raised on a worker keeps its class and message."""
    failures = getattr(exc, "worker_failures", {}) or {}
    if not failures:
        return HrlmError(f"{what} on {workers} workers failed: {_last_line(exc)}")
    rank, err = sorted(failures.items())[0]
    cause = getattr(err, "cause", None) or err
    if isinstance(cause, HrlmError):
        cls = next(c for c in type(cause).__mro__ if issubclass(c, HrlmError) and c.__module__.startswith("hrlm"))
        return cls(getattr(cause, "message", _last_line(cause)))
    return HrlmError(f"{what} on {workers} workers failed: worker {rank}: {type(cause).__name__}: {_last_line(cause)}")


def _last_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__
