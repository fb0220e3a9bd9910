"""Atomic writes: a folder or file appears complete or not at all.

A write goes to a hidden temporary beside its target, ``.NAME.PID-XXXXXXXX.tmp``, named after the
process that owns it, and is renamed into place when complete. A process killed mid-write (SIGKILL,
power loss) leaves its temporary behind; the next write to the same target removes every such
temporary whose owner is gone and which is older than :data:`STALE_AFTER_S`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hrlm.errors import ConfigError, HrlmError

# A temporary is stale once its owning process is gone and it is this old: the age guards against a
# process id that was reused, or a clock step, turning a live writer's folder into "stale".
STALE_AFTER_S = 300.0
# A temporary of an older hrlm names no owner; it is removed only when a day old.
UNOWNED_STALE_AFTER_S = 86400.0


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _usual_mode(path: Path, *, folder: bool) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (0600/0700) the permissions the umask would."""
    path.chmod((0o777 if folder else 0o666) & ~_umask())


def check_out_dir(path: str | os.PathLike[str], *, overwrite: bool = False, flag: str = "--out") -> None:
    """Refuse to write a folder over an existing non-empty one unless ``overwrite``.

    Raises:
        ConfigError: ``path`` is a file, or a non-empty folder and ``overwrite`` is false.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{p} is a file, not a folder; choose another {flag}.")
    if not overwrite and p.is_dir() and any(p.iterdir()):
        raise ConfigError(
            f"{p} already exists and is not empty; choose another {flag} or pass --overwrite to replace it."
        )


def owner_alive(pid: int) -> bool:
    """Whether process ``pid`` (the owner of a temporary) still runs; this process always does."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: the process exists but belongs to another user
        return True
    return True


def _temporary_pattern(name: str) -> re.Pattern[str]:
    """Temporaries of target ``name``: ours (``.NAME.PID-XXXXXXXX.tmp``, ``.NAME.old-PID``) and an older
    hrlm's (``.NAME.XXXXXXXX.tmp``, no owner). The 8 random characters of mkdtemp/mkstemp hold no dot."""
    return re.compile(
        rf"\.{re.escape(name)}\.(?:(?P<pid>\d+)-[a-z0-9_]{{8}}\.tmp|old-(?P<old>\d+)|[a-z0-9_]{{8}}\.tmp)"
    )


def remove_stale_temporaries(target: str | os.PathLike[str], *, now: float | None = None) -> list[Path]:
    """Remove the temporaries that writers of ``target`` left behind when they were killed.

    A temporary is removed when its owning process (named in it) is gone and it is older than
    :data:`STALE_AFTER_S`, or, naming no owner, older than :data:`UNOWNED_STALE_AFTER_S`.

    Returns:
        The temporaries removed.
    """
    final = Path(target)
    if not final.parent.is_dir():
        return []
    pattern = _temporary_pattern(final.name)
    now = time.time() if now is None else now
    removed = []
    for path in final.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None:
            continue
        pid = match.group("pid") or match.group("old")
        if match.group("old") and not final.exists():
            continue  # killed between its two renames: the old folder is the only copy left
        try:
            age = now - path.lstat().st_mtime
        except OSError:
            continue  # removed meanwhile
        stale = age > STALE_AFTER_S and not owner_alive(int(pid)) if pid else age > UNOWNED_STALE_AFTER_S
        if not stale:
            continue
        remove(path)
        removed.append(path)
    return removed


def remove(path: Path) -> None:
    """Remove a file, a link or a folder tree, whichever ``path`` is; one already gone is no error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; rename it to ``target`` when the block succeeds.

    On error the temporary folder is removed and an existing ``target`` is left untouched. With
    ``overwrite`` an existing ``target`` is replaced only after the new folder is complete. Stale
    temporaries of ``target`` that killed writers left are removed first (:func:`remove_stale_temporaries`).
    """
    final = Path(target)
    if final.exists() and not overwrite:
        raise HrlmError(f"{final} already exists; choose another --out or pass --overwrite.")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.{os.getpid()}-", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        # Some writers (safetensors, mkstemp) create 0600 files; give everything the umask's permissions.
        for path in tmp.rglob("*"):
            _usual_mode(path, folder=path.is_dir())
        _usual_mode(tmp, folder=True)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write JSON atomically (temporary file, fsync, rename)."""
    with atomic_file(path) as fh:
        json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside ``path`` and rename it into place when the block succeeds."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(p)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{os.getpid()}-", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        _usual_mode(Path(tmp), folder=False)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
