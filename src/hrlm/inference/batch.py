"""Scoring large volumes: a file or folder of shards in, a folder of scored shards out.

:func:`run_batch` reads CSV, TSV, JSONL or Parquet (text formats optionally ``.gz``) and writes
every input column plus the prediction columns of ``hrlm predict`` (:func:`flatten_prediction`) as
Parquet or CSV shards. Two engines give the same predictions:

- ``local`` streams: it reads ``batch_rows`` rows at a time (:func:`iter_chunks`), scores them with
  one :class:`~hrlm.inference.Predictor` and writes them, so memory stays bounded whatever the
  input's size.
- ``ray`` hands the work to Ray Data (:mod:`hrlm.inference.ray_batch`): actors that each load one
  Predictor, on this machine or on every node of a cluster.

The output folder resumes. A shard is written under a hidden temporary name and renamed when
complete, so a killed run never leaves a shard that looks finished; its name follows from the input
shard and the chunk (``tickets.csv.part-00003.parquet``), so a rerun knows what is done. The
manifest, ``_manifest.json`` (readers of a Parquet folder skip names that start with ``_``), holds
the model, the input, the settings and the finished input shards with their row counts; a rerun
skips those shards, and under ``local`` also the finished chunks of a shard cut short.

Example:
    >>> summary = run_batch("runs/tickets", "inbox/", "scored/", BatchConfig(batch_rows=2048))  # doctest: +SKIP
    >>> summary.rows, summary.skipped_shards  # doctest: +SKIP
    (120000, 0)
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from hrlm._fs import atomic_file, owner_alive, remove, write_json
from hrlm._progress import ProgressBar
from hrlm.config import BatchConfig
from hrlm.data import FORMATS
from hrlm.errors import ConfigError, DataError, ModelError
from hrlm.inference.predictor import Predictor
from hrlm.modeling import read_meta

log = logging.getLogger("hrlm")

MANIFEST = "_manifest.json"
# the formats a shard can be read from in pieces; .json (one array) and .txt are not streamed
STREAMED_FORMATS = ("csv", "tsv", "jsonl", "parquet")
OUTPUT_SUFFIX = {"parquet": ".parquet", "csv": ".csv"}
# a temporary of hrlm._fs: .NAME.PID-XXXXXXXX.tmp
_TEMPORARY = re.compile(r"\..+\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp")


def flatten_prediction(pred: dict[str, Any]) -> dict[str, Any]:
    """One prediction (``Prediction.to_dict()``) as flat columns: ``predicted_label``, ``score``, ``p_<label>``.

    The label column is ``predicted_label``, not ``label``, so that an input file's own label column
    survives beside it; a multi-label prediction joins its labels with ``|``; the columns of a
    multi-task model's other tasks are prefixed with the task's name (``topic.predicted_label``).

    Example:
        >>> flatten_prediction({"label": "pay", "score": 0.9, "probabilities": {"pay": 0.9, "leave": 0.1}})
        {'predicted_label': 'pay', 'score': 0.9, 'p_pay': 0.9, 'p_leave': 0.1}
    """
    flat: dict[str, Any] = {}
    label = pred["label"]
    flat["predicted_label"] = "|".join(label) if isinstance(label, list) else label
    flat["score"] = pred["score"]
    for lab, p in pred["probabilities"].items():
        flat[f"p_{lab}"] = p
    for task, sub in pred.get("tasks", {}).items():
        for k, v in flatten_prediction(sub).items():
            flat[f"{task}.{k}"] = v
    return flat


def texts_of(frame: pd.DataFrame, text_col: str) -> list[str]:
    """The column ``text_col`` as strings; a missing value is the empty text."""
    return ["" if v is None or (isinstance(v, float) and v != v) else str(v) for v in frame[text_col].tolist()]


def score_frame(predictor: Predictor, frame: pd.DataFrame, text_col: str) -> pd.DataFrame:
    """``frame`` with the prediction columns of each row after its own columns.

    A prediction column replaces an input column of the same name (a file scored before).
    """
    preds = predictor.predict(texts_of(frame, text_col))
    scored = pd.DataFrame([flatten_prediction(p.to_dict()) for p in preds], index=frame.index)
    kept = frame.drop(columns=[c for c in scored.columns if c in frame.columns])
    return pd.concat([kept, scored], axis=1).reset_index(drop=True)


# --- input ----------------------------------------------------------------------------------------------


def shard_format(path: Path) -> tuple[str, Literal["gzip"] | None]:
    """The format of a shard (``csv``, ``tsv``, ``jsonl``, ``parquet``) and its compression (``gzip`` or ``None``).

    Raises:
        DataError: a format :func:`iter_chunks` cannot stream.
    """
    suffixes = [s.lower() for s in path.suffixes]
    compression: Literal["gzip"] | None = None
    if suffixes and suffixes[-1] == ".gz":
        compression, suffixes = "gzip", suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt not in STREAMED_FORMATS or (fmt == "parquet" and compression):
        raise DataError(
            f"{path}: hrlm batch reads .csv, .tsv, .jsonl (each optionally .gz) and .parquet shards; "
            "convert the file or pass a folder of such shards."
        )
    return fmt, compression


def input_shards(input: str | os.PathLike[str]) -> list[Path]:
    """The shards of ``input``: the file itself, or the data files of a folder (and its subfolders), sorted.

    Names that start with ``.`` or ``_`` (temporaries, manifests, ``_SUCCESS``) are not shards.

    Raises:
        DataError: ``input`` is missing, a folder without data files, or a file of another format.
    """
    path = Path(input)
    if not path.exists():
        raise DataError(f"input {str(path)!r} not found; check the path.")
    if path.is_file():
        shard_format(path)
        return [path]
    shards = []
    for p in sorted(path.rglob("*")):
        if not p.is_file() or any(part.startswith((".", "_")) for part in p.relative_to(path).parts):
            continue
        with contextlib.suppress(DataError):
            shard_format(p)
            shards.append(p)
    if not shards:
        raise DataError(f"input folder {path} holds no .csv, .tsv, .jsonl or .parquet files (optionally .gz).")
    return shards


def shard_key(shard: Path, input: str | os.PathLike[str]) -> str:
    """The name of a shard's output parts: its path under the input folder, ``/`` as ``__``."""
    root = Path(input)
    rel = shard.name if root.is_file() else shard.relative_to(root).as_posix()
    return rel.replace("/", "__")


def part_name(key: str, index: int, fmt: str) -> str:
    """The output file of chunk ``index`` of the shard named ``key``."""
    return f"{key}.part-{index:05d}{OUTPUT_SUFFIX[fmt]}"


def shard_columns(path: Path) -> list[str]:
    """The column names of a shard, read from its header (first line, Parquet schema) only.

    Raises:
        DataError: the shard cannot be read in its format.
    """
    fmt, _ = shard_format(path)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return [str(name) for name in pq.read_schema(path).names]
        first = next(iter_chunks(path, 1), None)
        if first is None:
            raise DataError(f"{path}: the file is empty; it needs a header row and at least one data row.")
        return [str(c) for c in first.columns]
    except DataError:
        raise
    except Exception as exc:  # pyarrow and pandas raise many kinds on a damaged file
        raise _unreadable(path, fmt, exc) from None


def _unreadable(path: Path, fmt: str, exc: BaseException) -> DataError:
    if isinstance(exc, UnicodeDecodeError):
        return DataError(f"{path}: not UTF-8 text ({exc.reason}); re-save the file as UTF-8.")
    if isinstance(exc, PermissionError):
        return DataError(f"{path}: permission denied; check the file's permissions.")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return DataError(f"{path}: cannot read it as {fmt.upper()} ({first}); check the file's format.")


def iter_chunks(path: str | os.PathLike[str], rows: int) -> Iterator[pd.DataFrame]:
    """Read a shard ``rows`` rows at a time, never more: the reason memory stays bounded.

    Text columns of CSV and TSV stay strings (an empty field is ``""``), so that every chunk of a
    shard has the same schema whatever its values.

    Raises:
        DataError: the shard cannot be read in its format.
    """
    p = Path(path)
    fmt, compression = shard_format(p)
    reader: Any
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            with pq.ParquetFile(p) as pf:
                for batch in pf.iter_batches(batch_size=rows):
                    yield batch.to_pandas()
            return
        if fmt in ("csv", "tsv"):
            reader = pd.read_csv(
                p,
                sep="," if fmt == "csv" else "\t",
                dtype=str,
                keep_default_na=False,
                compression=compression,
                encoding="utf-8",
                chunksize=rows,
            )
        else:
            reader = pd.read_json(p, lines=True, dtype=False, compression=compression, encoding="utf-8", chunksize=rows)
        with reader:
            for chunk in reader:
                chunk.columns = [str(c) for c in chunk.columns]
                yield chunk
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: the file is empty; it needs a header row and at least one data row.") from None
    except (ValueError, OSError, ImportError, pd.errors.ParserError) as exc:
        raise _unreadable(p, fmt, exc) from None
    except Exception as exc:
        if type(exc).__module__.startswith("pyarrow"):
            raise _unreadable(p, fmt, exc) from None
        raise


# --- output ---------------------------------------------------------------------------------------------


@dataclass
class BatchSummary:
    """What a run of :func:`run_batch` did.

    Attributes:
        rows: rows scored by this run (not those of shards skipped as done).
        shards: input shards scored by this run.
        parts: output files written by this run.
        skipped_shards: input shards skipped because an earlier run finished them.
        skipped_parts: chunks skipped because an earlier run wrote them (``local`` only).
        seconds: wall time of the run, model loading included.
        actors: under ``ray``, one entry per actor: its node and the rows it scored.
    """

    output: str
    engine: str
    rows: int = 0
    shards: int = 0
    parts: int = 0
    skipped_shards: int = 0
    skipped_parts: int = 0
    seconds: float = 0.0
    actors: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": round(self.rows_per_s, 1)}

    def line(self) -> str:
        """The summary as one line for the terminal."""
        text = (
            f"scored {self.rows} rows of {self.shards} shard(s) into {self.parts} file(s) in {self.seconds:.1f}s "
            f"({self.rows_per_s:.0f} rows/s); skipped {self.skipped_shards} finished shard(s)"
        )
        if self.skipped_parts:
            text += f" and {self.skipped_parts} finished chunk(s)"
        if self.actors:
            nodes = {a["node_id"] for a in self.actors}
            text += f"; {len(self.actors)} actor(s) on {len(nodes)} node(s)"
        return text


class Manifest:
    """``_manifest.json`` of an output folder: the run's settings and the input shards finished so far."""

    def __init__(self, output: Path, model: Path, input: Path, cfg: BatchConfig) -> None:
        self.path = output / MANIFEST
        self.data: dict[str, Any] = {
            "model": str(model.resolve()),
            "input": str(input.resolve()),
            "engine": cfg.engine,
            "text_col": cfg.text_col,
            "format": cfg.format,
            "batch_rows": cfg.batch_rows,
            "shards": {},
            "rows": 0,
            "complete": False,
        }
        self.previous_engine: str | None = None
        if self.path.is_file():
            self._resume()

    def _resume(self) -> None:
        import json

        try:
            old = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            raise ConfigError(f"{self.path} is damaged; remove the output folder or choose another OUTPUT.") from None
        for key, flag in (("model", "MODEL"), ("text_col", "--text-col"), ("format", "--format")):
            if old.get(key) != self.data[key]:
                raise ConfigError(
                    f"{self.path.parent} was written with {key} {old.get(key)!r}, not {self.data[key]!r}; "
                    f"pass the same {flag} to resume, or choose another OUTPUT."
                )
        self.previous_engine = old.get("engine")
        local = self.previous_engine == self.data["engine"] == "local"
        if old.get("batch_rows") != self.data["batch_rows"] and local:
            # a shard cut short under local is resumed chunk by chunk: the chunks must be the same
            raise ConfigError(
                f"{self.path.parent} was written with --batch-rows {old.get('batch_rows')}; "
                "pass the same to resume, or choose another OUTPUT."
            )
        self.data["shards"] = dict(old.get("shards", {}))

    def done(self, key: str) -> bool:
        return key in self.data["shards"]

    def finish_shard(self, key: str, rows: int, parts: int) -> None:
        self.data["shards"][key] = {"rows": rows, "parts": parts}
        self.save()

    def save(self, *, complete: bool = False) -> None:
        self.data["rows"] = sum(s["rows"] for s in self.data["shards"].values())
        self.data["complete"] = complete
        write_json(self.path, self.data)


def write_part(frame: pd.DataFrame, path: Path, fmt: str) -> None:
    """Write one output file atomically: complete under its name, or absent."""
    if fmt == "csv":
        with atomic_file(path, "w") as fh:
            frame.to_csv(fh, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_file(path, "wb") as fh:
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), fh)


def remove_dead_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries of writers that were killed (their process is gone) from an output folder."""
    removed = []
    for path in folder.iterdir():
        match = _TEMPORARY.fullmatch(path.name)
        if match is None or owner_alive(int(match["pid"])):
            continue
        remove(path)
        removed.append(path)
    return removed


def remove_parts(folder: Path, key: str) -> None:
    """Remove the output files of one input shard (a shard redone from its start)."""
    for path in folder.glob(f"{glob_escape(key)}.part-*"):
        path.unlink()


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# --- the run --------------------------------------------------------------------------------------------


def prepare(
    model: str | os.PathLike[str], input: str | os.PathLike[str], output: str | os.PathLike[str], cfg: BatchConfig
) -> tuple[list[Path], Manifest]:
    """Check everything a run needs before it loads a model; create the output folder.

    Returns:
        The input shards and the output's manifest (a rerun's, with the shards finished before).

    Raises:
        ConfigError: OUTPUT is a file, or was written with other settings.
        ModelError: MODEL is not a model folder.
        DataError: the input is unreadable, or a shard lacks the text column.
    """
    model_dir, out = Path(model), Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"OUTPUT {out} is a file; hrlm batch writes a folder of shards: choose a folder.")
    if not model_dir.is_dir():
        raise ModelError(f"MODEL {model_dir} is not a folder; pass a model folder written by `hrlm train`.")
    read_meta(model_dir)  # a ModelError naming what is missing
    shards = input_shards(input)
    for shard in shards:
        columns = shard_columns(shard)
        if cfg.text_col not in columns:
            raise DataError(
                f"column {cfg.text_col!r} not found in {shard}; columns are {sorted(columns)}. "
                "Pass --text-col to name the text column."
            )
    out.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(out)
    return shards, Manifest(out, model_dir, Path(input), cfg)


def run_batch(
    model: str | os.PathLike[str],
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    cfg: BatchConfig | None = None,
    *,
    progress: bool = True,
) -> BatchSummary:
    """Score every row of ``input`` with ``model`` into the folder ``output``; resume what a killed run left.

    Args:
        model: a model folder written by ``hrlm train`` (or ``compress``).
        input: a CSV, TSV, JSONL or Parquet file (text formats optionally ``.gz``) or a folder of them.
        output: the folder of scored shards; created, or resumed when an earlier run wrote it.
        cfg: engine, text column, output format, rows at a time, Ray actors and threads.
        progress: show a progress bar with rows/s.

    Returns:
        What the run did: rows, shards, files, seconds, the shards skipped as done.

    Raises:
        ConfigError, ModelError, DataError: see :func:`prepare`; MissingExtraError: ``ray`` without Ray.
    """
    cfg = cfg or BatchConfig()
    start = time.perf_counter()
    shards, manifest = prepare(model, input, output, cfg)
    if cfg.engine == "ray":
        from hrlm.inference.ray_batch import run_ray

        summary = run_ray(Path(model), shards, Path(input), Path(output), manifest, cfg, progress=progress)
    else:
        summary = _run_local(Path(model), shards, Path(input), Path(output), manifest, cfg, progress=progress)
    manifest.data["engine"] = cfg.engine
    manifest.save(complete=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _run_local(
    model: Path, shards: list[Path], input: Path, out: Path, manifest: Manifest, cfg: BatchConfig, *, progress: bool
) -> BatchSummary:
    summary = BatchSummary(output=str(out), engine="local")
    todo = [s for s in shards if not manifest.done(shard_key(s, input))]
    summary.skipped_shards = len(shards) - len(todo)
    # chunks of a shard cut short are trusted only when they were cut the same way, by this engine
    trust_parts = manifest.previous_engine in (None, "local")
    manifest.data["engine"] = "local"
    manifest.save()
    if not todo:
        return summary
    predictor = Predictor.from_dir(model, threads=cfg.threads, backend=cfg.backend)
    log.info("hrlm batch: backend %s (%s)", predictor.backend_name, predictor.backend_reason)
    bar = ProgressBar(_known_rows(todo), "scoring", unit="rows", fields={"shard": "-", "speed": "-"}, enabled=progress)
    started = time.perf_counter()
    try:
        for shard in todo:
            key = shard_key(shard, input)
            if not trust_parts:
                remove_parts(out, key)
            rows = parts = 0
            for index, chunk in enumerate(iter_chunks(shard, cfg.batch_rows)):
                target = out / part_name(key, index, cfg.format)
                if target.exists():
                    summary.skipped_parts += 1
                else:
                    write_part(score_frame(predictor, chunk, cfg.text_col), target, cfg.format)
                    summary.rows += len(chunk)
                rows += len(chunk)
                parts += 1
                rate = summary.rows / max(time.perf_counter() - started, 1e-9)
                bar.update(advance=len(chunk), shard=shard.name, speed=f"{rate:.0f} rows/s")
            summary.shards += 1
            summary.parts += parts
            manifest.finish_shard(key, rows, parts)
    finally:
        bar.close()
    return summary


def _known_rows(shards: list[Path]) -> int:
    """Rows of the shards for the progress bar: Parquet's metadata; lines of a text file (a cheap upper bound)."""
    import gzip

    import pyarrow.parquet as pq

    total = 0
    for shard in shards:
        fmt, compression = shard_format(shard)
        if fmt == "parquet":
            total += pq.ParquetFile(shard).metadata.num_rows
            continue
        opener: Any = gzip.open if compression else open
        with opener(shard, "rb") as fh:
            lines = sum(block.count(b"\n") for block in iter(lambda: fh.read(1 << 20), b""))
        total += max(lines - (fmt in ("csv", "tsv")), 1)
    return total
