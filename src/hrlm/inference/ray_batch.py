"""The ``ray`` engine of ``hrlm batch``: Ray Data actors, one Predictor each, on one machine or a cluster.

Each input shard is one Ray Data pipeline: ``read_parquet``/``read_csv``/``read_json``, then
``map_batches`` with :class:`Scorer` on a fixed pool of actors (``ActorPoolStrategy``), then
``write_parquet``/``write_csv`` into a hidden temporary folder of the output. When the write is
complete, its files are renamed to their deterministic names (``KEY.part-00000.parquet``, ...) and the
shard is recorded in the manifest; a killed run leaves only the temporary folder, which a rerun
removes, and the shard's part files that are not in the manifest, which a rerun replaces. So the unit
of resumption on Ray is the input shard: split a very large file into shards to resume within it.

Actors take ``threads`` CPUs each (``num_cpus``) and set torch to as many threads, so that actors do
not oversubscribe a node's cores; with GPUs each actor takes one. Reads and writes are I/O and take
no CPU of their own, or a pool that fills every core would leave them none. Without ``--address``
Ray starts on this machine's cores and stops at the end; with it, the run joins that cluster, and
OUTPUT must then be a folder that every node sees (a shared file system): each node writes the
files of the blocks it scored.

What a shard's pipeline holds in the object store does not grow with the input: blocks are at most
:data:`MAX_BLOCK_BYTES` (Ray's default grows them with the file, up to 128 MiB), and the pipeline may
hold at most :data:`BLOCKS_IN_FLIGHT_PER_ACTOR` blocks per actor there (Ray's default budget is a share
of the whole store, so reads run ahead of slow scoring until the input is buffered). Neither does the
rest: writes run at most :func:`io_tasks` at once (each in a worker process that stays),
every actor hands back the memory a batch freed (:func:`release_batch_memory`), and the row counter
(:class:`hrlm._tally.Tally`) lives in a module that imports nothing, so its worker stays small.
"""

from __future__ import annotations

import os
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from hrlm._alloc import release_freed_memory
from hrlm._extras import needs_extras
from hrlm._tally import Tally
from hrlm.config import BatchConfig
from hrlm.errors import ConfigError
from hrlm.inference.batch import (
    OUTPUT_SUFFIX,
    BatchSummary,
    Manifest,
    part_name,
    remove_parts,
    score_frame,
    shard_columns,
    shard_format,
    shard_key,
)
from hrlm.inference.predictor import Predictor, default_threads

# seconds the actor pool may take to start: loading a model on a busy node can take a minute
ACTOR_START_TIMEOUT_S = 600
# the largest block read from a shard: a few thousand documents, seconds to minutes of scoring
MAX_BLOCK_BYTES = 4 * 2**20
# blocks each actor may have in the object store (read, scored, being written): enough to keep it fed
BLOCKS_IN_FLIGHT_PER_ACTOR = 16


def plan_actors(cpus: int, gpus: int, actors: int | None, threads: int | None) -> tuple[int, int]:
    """How many actors, and how many threads each, on a cluster of ``cpus`` cores and ``gpus`` GPUs.

    One actor per GPU when there are GPUs; otherwise ``cpus / threads`` actors (``threads`` 1 unless
    given), or ``cpus / actors`` threads each when ``actors`` is given.

    Raises:
        ConfigError: the actors need more cores (or GPUs) than the cluster has: Ray would wait for them forever.

    Example:
        >>> plan_actors(16, 0, 4, None)
        (4, 4)
    """
    if gpus:
        actors = actors or gpus
        if actors > gpus:
            raise ConfigError(f"--actors {actors} needs a GPU each; the Ray cluster has {gpus}. Pass --actors {gpus}.")
        return actors, threads or max(1, cpus // actors)
    if actors is None:
        threads = threads or 1
        actors = max(1, cpus // threads)
    threads = threads or max(1, cpus // actors)
    if actors * threads > cpus:
        raise ConfigError(
            f"--actors {actors} x --threads {threads} needs {actors * threads} cores; the Ray cluster has {cpus}. "
            "Pass fewer --actors or --threads."
        )
    return actors, threads


class Scorer:
    """The callable class of ``map_batches``: one Predictor per actor, loaded once, scoring pandas batches."""

    def __init__(self, model: str, text_col: str, threads: int, backend: str, tally: Any) -> None:
        import ray
        import torch

        torch.set_num_threads(threads)
        self.predictor = Predictor.from_dir(model, threads=threads, backend=backend)
        self.text_col = text_col
        self.tally = tally
        context = ray.get_runtime_context()
        self.where = (context.get_actor_id(), context.get_node_id(), ray.util.get_node_ip_address())

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        scored = score_frame(self.predictor, batch, self.text_col)
        self.tally.add.remote(*self.where, len(batch))
        release_batch_memory()
        return scored


def release_batch_memory() -> None:
    """Hand back what a scored batch freed: the heap's free pages and Arrow's pool's unused memory.

    The Predictor keeps freed blocks for speed (:mod:`hrlm._alloc`); an actor that scores block after
    block of varying lengths would keep what it freed, and fragments of many shapes can add up over a
    long run. A batch takes seconds; giving its memory back takes milliseconds.
    """
    import pyarrow as pa

    release_freed_memory()
    pa.default_memory_pool().release_unused()


def connect(address: str | None) -> bool:
    """Join the Ray cluster at ``address``, or start Ray on this machine's cores; ``True`` when started here.

    A Ray already initialised in this process (a notebook's, a test's) is used as it is.
    """
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address is not None:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--address {address}: cannot join the Ray cluster ({first}).") from None
    else:
        ray.init(num_cpus=default_threads(), include_dashboard=False, **common)
    return True


def read_shard(shard: Path) -> Any:
    """A Ray Dataset of one shard (one read task); CSV columns are read as strings, as the local engine reads them."""
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import ray.data

    fmt, _ = shard_format(shard)
    if fmt == "parquet":
        # Ray 2.60's second Parquet reader lists files in a task of one CPU that no option lowers: with
        # the actor pool holding every core it never starts. The first reader lists in the driver.
        context = ray.data.DataContext.get_current()
        saved, context.use_datasource_v2 = context.use_datasource_v2, False
        try:
            return ray.data.read_parquet(str(shard), num_cpus=0)
        finally:
            context.use_datasource_v2 = saved
    if fmt == "jsonl":
        return ray.data.read_json(str(shard), lines=True, num_cpus=0)
    columns = shard_columns(shard)
    return ray.data.read_csv(
        str(shard),
        num_cpus=0,  # I/O: the actors hold the cores
        parse_options=pacsv.ParseOptions(delimiter="," if fmt == "csv" else "\t"),
        convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns}),
    )


def block_bytes(shard: Path, actors: int, largest: int | None) -> int:
    """The block size that splits ``shard`` into about four blocks per actor: 1 MiB to :data:`MAX_BLOCK_BYTES`.

    ``largest`` (the context's own limit) lowers the cap further. A fixed cap, not a share of the file,
    keeps the memory of a run the same for a file ten times larger.

    Example:
        >>> block_bytes(Path("/nonexistent.csv"), 2, 128 * 2**20)
        1048576
    """
    size = shard.stat().st_size if shard.exists() else 0
    top = min(largest or MAX_BLOCK_BYTES, MAX_BLOCK_BYTES)
    return int(min(top, max(2**20, size // (4 * actors))))


def io_tasks(actors: int) -> int:
    """Write tasks of one shard that may run at once: as many as actors, at least two.

    Writes take no CPU (``num_cpus=0``), so Ray would start as many at once as there are scored blocks
    ready, each in a worker process that stays as an idle worker afterwards: their number, and the
    memory of those workers, would grow with the input. (A shard is read by one task.)

    Example:
        >>> io_tasks(1), io_tasks(8)
        (2, 8)
    """
    return max(2, actors)


def object_store_budget(actors: int) -> int:
    """Bytes of the object store one shard's pipeline may hold: a fixed number of largest blocks per actor.

    Example:
        >>> object_store_budget(2) // 2**20
        128
    """
    return BLOCKS_IN_FLIGHT_PER_ACTOR * MAX_BLOCK_BYTES * max(1, actors)


def _write_shard(
    scored: Any, key: str, out: Path, fmt: str, manifest: Manifest, summary: BatchSummary, tasks: int | None = None
) -> None:
    """Write one shard's scored dataset into a temporary folder, rename its files into place, record it.

    ``tasks`` bounds the write tasks that run at once (each holds a worker process of its own).
    """
    remove_parts(out, key)  # parts of a killed run that the manifest does not vouch for
    # a name that hrlm.batch.remove_dead_temporaries removes once this process is gone
    tmp = out / f".{key}.{os.getpid()}-{secrets.token_hex(4)}.tmp"
    try:
        with warnings.catch_warnings():
            # a shard of fewer blocks than ``tasks`` makes Ray Data say that the limit is not reached
            warnings.filterwarnings("ignore", message="The maximum number of concurrent tasks", category=UserWarning)
            write = scored.write_csv if fmt == "csv" else scored.write_parquet
            write(str(tmp.resolve()), ray_remote_args={"num_cpus": 0}, concurrency=tasks)
        files = sorted(p for p in tmp.iterdir() if p.suffix == OUTPUT_SUFFIX[fmt] and not p.name.startswith("."))
        rows = _rows_of(files, fmt)
        for index, path in enumerate(files):
            os.replace(path, out / part_name(key, index, fmt))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.rows += rows
    summary.shards += 1
    summary.parts += len(files)
    manifest.finish_shard(key, rows, len(files))


def _rows_of(files: list[Path], fmt: str) -> int:
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    if fmt == "parquet":
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    rows = 0
    for f in files:
        with pacsv.open_csv(f) as reader:
            rows += sum(batch.num_rows for batch in reader)
    return rows


def run_ray(
    model: Path, shards: list[Path], input: Path, out: Path, manifest: Manifest, cfg: BatchConfig, *, progress: bool
) -> BatchSummary:
    """Score the shards not yet in ``manifest`` on Ray Data; see the module's docstring."""
    with needs_extras("hrlm batch --engine ray"):
        import ray
        import ray.data

    summary = BatchSummary(output=str(out), engine="ray")
    todo = [s for s in shards if not manifest.done(shard_key(s, input))]
    summary.skipped_shards = len(shards) - len(todo)
    manifest.data["engine"] = "ray"
    manifest.save()
    if not todo:
        return summary
    started_here = connect(cfg.address)
    try:
        with warnings.catch_warnings():
            # Ray 2.60's DataContext() warns about its own defaults of deprecated fields (ray/data/context.py:1284)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module="ray.data.context")
            context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.execution_options.preserve_order = True  # parts in the input's order, as local writes them
        # every actor loaded before the first batch, so that all share the work (a fast one would take it
        # all), and a pool the cluster cannot place fails after this long instead of waiting forever
        context.wait_for_min_actors_s = ACTOR_START_TIMEOUT_S
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        actors, threads = plan_actors(int(resources.get("CPU", 1)), gpus, cfg.actors, cfg.threads)
        saved_block_size = context.target_max_block_size
        saved_limits = context.execution_options.resource_limits
        tally: Any = ray.remote(num_cpus=0)(Tally).remote()
        scorer_args = {
            "model": str(model.resolve()),
            "text_col": cfg.text_col,
            "threads": threads,
            "backend": cfg.backend,
            "tally": tally,
        }
        try:
            context.execution_options.resource_limits = saved_limits.min(
                ray.data.ExecutionResources.for_limits(object_store_memory=object_store_budget(actors))
            )
            for shard in todo:
                # A shard is read as one block unless it is split, and one actor would then score all of it.
                # Blocks of a quarter of each actor's share of the file (at most MAX_BLOCK_BYTES) spread it
                # over the pool, streaming.
                context.target_max_block_size = block_bytes(shard, actors, saved_block_size)
                scored = read_shard(shard).map_batches(
                    Scorer,
                    fn_constructor_kwargs=scorer_args,
                    batch_size=cfg.batch_rows,
                    batch_format="pandas",
                    compute=ray.data.ActorPoolStrategy(size=actors),
                    num_cpus=threads,
                    num_gpus=1 if gpus else None,
                )
                key = shard_key(shard, input)
                _write_shard(scored, key, out, cfg.format, manifest, summary, io_tasks(actors))
        finally:
            context.target_max_block_size = saved_block_size
            context.execution_options.resource_limits = saved_limits
        summary.actors = ray.get(tally.report.remote())
    finally:
        if started_here:
            ray.shutdown()
    return summary
