"""Load and validate labelled text: CSV, TSV, JSONL or Parquet, gzip allowed.

A :class:`Dataset` holds texts, their labels (one per text, or several for multi-label data), and
optionally a group and a given split per text. Every problem with a file becomes one
:class:`~hrlm.errors.DataError` line that names the file, the column or the row, and what to do.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from hrlm.errors import DataError, LabelError

log = logging.getLogger("hrlm")

FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".txt": "txt",
}
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
    "holdout": "test",
}


@dataclass
class Dataset:
    """Texts with their labels, and optionally a group and a given split for each text.

    ``labels`` holds a string per text for single-label data, a list of strings per text for
    multi-label data, and is ``None`` for unlabelled text.
    """

    texts: list[str]
    labels: list[Any] | None = None
    multi_label: bool = False
    groups: list[str] | None = None
    splits: list[str] | None = None
    source: str = "<memory>"
    notes: list[str] = field(default_factory=list)
    task_name: str = "label"
    extra_tasks: dict[str, tuple[list[Any], bool]] = field(default_factory=dict)
    """Labels of further tasks on the same texts (multi-task data): name -> (labels, multi_label)."""

    @property
    def task_names(self) -> list[str]:
        """The first task's name, then those of :attr:`extra_tasks`."""
        return [self.task_name, *self.extra_tasks]

    def for_task(self, name: str) -> Dataset:
        """The same texts labelled for one task only."""
        if name == self.task_name:
            return replace(self, extra_tasks={})
        if name not in self.extra_tasks:
            raise DataError(f"no task {name!r} in {self.source}; tasks are {self.task_names}.")
        labels, multi = self.extra_tasks[name]
        return replace(self, labels=labels, multi_label=multi, task_name=name, extra_tasks={})

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def label_names(self) -> list[str]:
        """Sorted distinct labels."""
        if self.labels is None:
            return []
        if self.multi_label:
            return sorted({lab for labs in self.labels for lab in labs})
        return sorted(set(self.labels))

    def label_counts(self) -> Counter[str]:
        """How many texts carry each label."""
        if self.labels is None:
            return Counter()
        if self.multi_label:
            return Counter(lab for labs in self.labels for lab in labs)
        return Counter(self.labels)

    def subset(self, indices: Sequence[int]) -> Dataset:
        """The rows at ``indices``, in that order."""

        def pick(values: list[Any] | None) -> list[Any] | None:
            return None if values is None else [values[i] for i in indices]

        return replace(
            self,
            texts=[self.texts[i] for i in indices],
            labels=pick(self.labels),
            groups=pick(self.groups),
            splits=pick(self.splits),
            notes=[],
            extra_tasks={k: ([v[i] for i in indices], multi) for k, (v, multi) in self.extra_tasks.items()},
        )

    def fingerprint(self) -> str:
        """A stable digest of the rows' texts, labels and groups, independent of row order."""
        rows = []
        for i, text in enumerate(self.texts):
            label = None if self.labels is None else self.labels[i]
            if self.multi_label and label is not None:
                label = sorted(label)
            group = None if self.groups is None else self.groups[i]
            row: list[Any] = [text, label, group]
            for values, multi in self.extra_tasks.values():
                row.append(sorted(values[i]) if multi else values[i])
            rows.append(hashlib.sha256(json.dumps(row).encode()).hexdigest())
        digest = hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()
        return f"sha256:{digest[:32]}"


def _format_of(path: Path) -> tuple[str, Literal["gzip"] | None]:
    suffixes = [s.lower() for s in path.suffixes]
    compression: Literal["gzip"] | None = None
    if suffixes and suffixes[-1] == ".gz":
        compression = "gzip"
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if fmt is None:
        raise DataError(f"{path}: unknown file type; use .csv, .tsv, .jsonl, .json, .parquet or .txt (optionally .gz).")
    return fmt, compression


def _first_non_utf8(path: Path, compression: str | None) -> tuple[int, int, int, str] | None:
    """The file offset, line (from 1), value and reason of the first byte that is not UTF-8 (of the
    decompressed content for a .gz file); ``None`` when the file decodes."""
    import gzip

    opener: Any = gzip.open if compression else open
    offset, line, pending = 0, 1, b""
    try:
        with opener(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                data = pending + chunk
                try:
                    data.decode("utf-8")
                    good = len(data)
                except UnicodeDecodeError as exc:
                    if exc.end != len(data) or exc.reason != "unexpected end of data":
                        return offset + exc.start, line + data.count(b"\n", 0, exc.start), data[exc.start], exc.reason
                    good = exc.start  # a character cut by the chunk boundary: decode it with the next chunk
                line += data.count(b"\n", 0, good)
                offset += good
                pending = data[good:]
    except OSError:
        return None
    return (offset, line, pending[0], "unexpected end of data") if pending else None


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a data file into a DataFrame of strings (lists kept for JSON list columns).

    Raises:
        DataError: the file is missing, unreadable, not UTF-8, or malformed.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {str(p)!r} not found; check the path.")
    if p.is_dir():
        raise DataError(f"{str(p)!r} is a folder; pass a data file (.csv, .tsv, .jsonl, .parquet).")
    fmt, compression = _format_of(p)
    try:
        if fmt in ("csv", "tsv"):
            frame = pd.read_csv(
                p,
                sep="," if fmt == "csv" else "\t",
                dtype=str,
                keep_default_na=False,
                compression=compression,
                encoding="utf-8",
            )
        elif fmt == "jsonl":
            frame = pd.read_json(p, lines=True, dtype=False, compression=compression, encoding="utf-8")
        elif fmt == "json":
            frame = pd.read_json(p, dtype=False, compression=compression, encoding="utf-8")
        elif fmt == "parquet":
            frame = pd.read_parquet(p)
        else:
            import gzip

            opener: Any = gzip.open if compression else open
            with opener(p, "rt", encoding="utf-8") as fh:
                frame = pd.DataFrame({"text": [line.rstrip("\n") for line in fh if line.strip()]})
    except UnicodeDecodeError as exc:
        # exc.start counts from the start of the reader's buffer, not of the file: find the byte again
        where = _first_non_utf8(p, compression) or (exc.start, None, exc.object[exc.start], exc.reason)
        offset, line, byte, reason = where
        at = f"byte 0x{byte:02x} at offset {offset}" + (f", line {line}" if line is not None else "")
        raise DataError(f"{p}: not UTF-8 text ({at}: {reason}); re-save the file as UTF-8.") from None
    except PermissionError:
        raise DataError(f"{p}: permission denied; check the file's permissions.") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{p}: the file is empty; it needs a header row and at least one data row.") from None
    except (ValueError, pd.errors.ParserError, OSError, ImportError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: cannot read it as {fmt.upper()} ({first}); check the file's format.") from None
    frame.columns = [str(c) for c in frame.columns]
    return frame


def _column(frame: pd.DataFrame, name: str, path: Path, flag: str) -> pd.Series:
    if name not in frame.columns:
        raise DataError(
            f"column {name!r} not found in {path}; columns are {sorted(frame.columns)}. "
            f"Pass {flag} to name the right column."
        )
    return frame[name]


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and value != value:
        return True
    return isinstance(value, str) and not value.strip()


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _parse_labels(value: Any, sep: str | None) -> list[str]:
    if _is_list(value):
        items = list(value)
    elif isinstance(value, str) and value.strip().startswith("["):
        try:
            items = json.loads(value)
        except ValueError:
            items = [value]
    elif sep is not None:
        items = str(value).split(sep)
    else:
        items = [value]
    return sorted({str(v).strip() for v in items if str(v).strip()})


def load_dataset(
    path: str | Path,
    *,
    text_col: str = "text",
    label_col: str | None = "label",
    label_sep: str | None = None,
    split_col: str | None = None,
    group_col: str | None = None,
    strict: bool = False,
) -> Dataset:
    """Read and validate a labelled (or, with ``label_col=None``, unlabelled) data file.

    Rows with an empty text or an empty label are dropped and counted in ``Dataset.notes``; with
    ``strict=True`` they are an error. A label column holding lists (JSONL, Parquet, or a JSON list
    in a CSV cell) or ``label_sep`` makes the dataset multi-label.

    Example:
        >>> ds = load_dataset("tickets.csv", label_col="category")  # doctest: +SKIP

    Raises:
        DataError: for a missing or unreadable file, an unknown column or an empty dataset.
    """
    p = Path(path)
    frame = read_table(p)
    if len(frame) == 0:
        raise DataError(f"{p}: no data rows; the dataset is empty.")
    texts_raw = _column(frame, text_col, p, "--text-col")
    label_cols = [c.strip() for c in label_col.split(",") if c.strip()] if label_col else []
    if len(set(label_cols)) != len(label_cols):
        raise DataError(f"label columns {label_cols} name a column twice; list each task's column once.")
    columns = {c: _column(frame, c, p, "--label-col") for c in label_cols}
    groups_raw = _column(frame, group_col, p, "--group-col") if group_col else None
    splits_raw = _column(frame, split_col, p, "--split-col") if split_col else None

    def is_multi(values: pd.Series) -> bool:
        if any(_is_list(v) or (isinstance(v, str) and v.strip().startswith("[")) for v in values.head(100)):
            return True
        if label_sep is None:
            return False
        # One label column: --label-sep makes it multi-label. Several: those whose cells use the separator.
        return len(label_cols) == 1 or any(isinstance(v, str) and label_sep in v for v in values)

    multi = {c: is_multi(v) for c, v in columns.items()}
    keep: list[int] = []
    empty_text: list[int] = []
    empty_label: dict[str, list[int]] = {c: [] for c in label_cols}
    texts: list[str] = []
    labels: dict[str, list[Any]] = {c: [] for c in label_cols}
    for i, raw in enumerate(texts_raw.tolist()):
        if _is_missing(raw):
            empty_text.append(i)
            continue
        row: dict[str, Any] = {}
        for col, values in columns.items():
            value = values.iat[i]
            parsed = [] if not _is_list(value) and _is_missing(value) else _parse_labels(value, label_sep)
            if not parsed and not multi[col]:
                empty_label[col].append(i)
                break
            row[col] = parsed if multi[col] else parsed[0] if len(parsed) == 1 else str(value).strip()
        else:
            for col, value in row.items():
                labels[col].append(value)
            keep.append(i)
            texts.append(str(raw))

    notes = []
    missing = [(empty_text, "text", text_col)] + [(rows, "label", col) for col, rows in empty_label.items()]
    for rows, what, col in missing:
        if not rows:
            continue
        where = f"{len(rows)} row(s) with an empty {what} in column {col!r} (first: data row {rows[0] + 1})"
        if strict:
            raise DataError(f"{p}: {where}; fill or remove them, or drop --strict to skip them.")
        notes.append(f"dropped {where}")
        log.warning("%s: dropped %s", p, where)
    if not texts:
        raise DataError(f"{p}: every row has an empty text or label; the dataset is empty.")

    splits = None
    if splits_raw is not None:
        splits = []
        for i in keep:
            raw_split = str(splits_raw.iat[i]).strip().lower()
            if raw_split not in SPLIT_NAMES:
                raise DataError(
                    f"{p}: split {splits_raw.iat[i]!r} in column {split_col!r} (data row {i + 1}) is not one of "
                    f"train, validation (val, dev), test; fix the value or drop --split-col."
                )
            splits.append(SPLIT_NAMES[raw_split])
    groups = None if groups_raw is None else [str(groups_raw.iat[i]) for i in keep]
    first = label_cols[0] if label_cols else "label"
    return Dataset(
        texts=texts,
        labels=labels[first] if label_cols else None,
        multi_label=bool(label_cols and multi[first]),
        groups=groups,
        splits=splits,
        source=str(p),
        notes=notes,
        task_name=first,
        extra_tasks={c: (labels[c], multi[c]) for c in label_cols[1:]},
    )


def check_label_counts(ds: Dataset, minimum: int = 2) -> None:
    """Fail when a class has fewer than ``minimum`` examples, or when there is only one class (every task)."""
    if ds.extra_tasks:
        for name in ds.task_names:
            _check_counts(ds.for_task(name), minimum, f" (task {name!r})")
    else:
        _check_counts(ds, minimum, "")


def _check_counts(ds: Dataset, minimum: int, task: str) -> None:
    counts = ds.label_counts()
    if not counts:
        raise LabelError(f"{ds.source}: no labels found; a training file needs a label column.")
    rare = sorted(k for k, v in counts.items() if v < minimum)
    if rare:
        shown = ", ".join(f"{k!r} ({counts[k]})" for k in rare[:5])
        more = f" and {len(rare) - 5} more" if len(rare) > 5 else ""
        raise LabelError(
            f"{ds.source}{task}: class(es) {shown}{more} have fewer than {minimum} examples; "
            "add examples or merge or remove those classes."
        )
    if len(counts) < 2 and not ds.multi_label:
        raise LabelError(
            f"{ds.source}{task}: only one class ({next(iter(counts))!r}); a classifier needs at least two."
        )


def _stratum(ds: Dataset, i: int, counts: Counter[str]) -> str:
    assert ds.labels is not None
    if ds.multi_label:
        labs = ds.labels[i]
        return min(labs, key=lambda lab: counts[lab]) if labs else ""
    return str(ds.labels[i])


def split_dataset(ds: Dataset, *, val_size: float = 0.1, test_size: float = 0.1, seed: int = 42) -> dict[str, Dataset]:
    """Split into ``train``, ``validation`` and ``test``.

    A given split column wins (a missing validation part is carved from train). Otherwise the split
    is seeded and stratified by label; with groups, every group stays on one side.
    """
    rng = random.Random(seed)
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    if ds.splits is not None:
        for i, s in enumerate(ds.splits):
            parts[s].append(i)
        if not parts["train"]:
            raise DataError(f"{ds.source}: the split column marks no row as 'train'.")
        if not parts["validation"] and val_size > 0:
            sub = ds.subset(parts["train"])
            inner = _split_indices(sub, rng, val_size, 0.0)
            parts["validation"] = [parts["train"][j] for j in inner["validation"]]
            parts["train"] = [parts["train"][j] for j in inner["train"]]
    else:
        parts = _split_indices(ds, rng, val_size, test_size)
    return {name: ds.subset(idx) for name, idx in parts.items()}


def _split_indices(ds: Dataset, rng: random.Random, val_size: float, test_size: float) -> dict[str, list[int]]:
    parts: dict[str, list[int]] = {"train": [], "validation": [], "test": []}
    if ds.groups is not None:
        members: dict[str, list[int]] = defaultdict(list)
        for i, g in enumerate(ds.groups):
            members[g].append(i)
        names = sorted(members)
        rng.shuffle(names)
        n = len(ds)
        targets = {"test": test_size * n, "validation": val_size * n}
        filled = {"test": 0, "validation": 0}
        for g in names:
            side = next((s for s in ("test", "validation") if filled[s] + len(members[g]) / 2 < targets[s]), "train")
            parts[side].extend(members[g])
            if side != "train":
                filled[side] += len(members[g])
        return {k: sorted(v) for k, v in parts.items()}
    counts = ds.label_counts()
    strata: dict[str, list[int]] = defaultdict(list)
    for i in range(len(ds)):
        strata[_stratum(ds, i, counts) if ds.labels is not None else ""].append(i)
    for key in sorted(strata):
        idx = strata[key]
        rng.shuffle(idx)
        n_test = round(len(idx) * test_size)
        n_val = round(len(idx) * val_size)
        while n_test + n_val >= len(idx) and (n_test or n_val):
            if n_test >= n_val and n_test:
                n_test -= 1
            else:
                n_val -= 1
        parts["test"].extend(idx[:n_test])
        parts["validation"].extend(idx[n_test : n_test + n_val])
        parts["train"].extend(idx[n_test + n_val :])
    return {k: sorted(v) for k, v in parts.items()}


def dataset_from_records(texts: Sequence[str], labels: Sequence[Any] | None = None, **kwargs: Any) -> Dataset:
    """Build a :class:`Dataset` in memory; a label that is a list makes it multi-label."""
    labs = None if labels is None else list(labels)
    multi = labs is not None and len(labs) > 0 and isinstance(labs[0], (list, tuple))
    if multi and labs is not None:
        labs = [sorted(set(map(str, x))) for x in labs]
    elif labs is not None:
        labs = [str(x) for x in labs]
    return Dataset(texts=list(texts), labels=labs, multi_label=multi, **kwargs)
