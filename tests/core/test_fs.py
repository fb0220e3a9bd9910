from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hrlm._fs import (
    STALE_AFTER_S,
    UNOWNED_STALE_AFTER_S,
    atomic_dir,
    atomic_file,
    check_out_dir,
    remove_stale_temporaries,
    write_json,
)
from hrlm.errors import ConfigError, HrlmError


def test_atomic_file_appears_whole_with_usual_permissions(tmp_path: Path) -> None:
    target = tmp_path / "a.json"
    write_json(target, {"x": 1})
    assert target.read_text().strip() == '{\n  "x": 1\n}'
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(target) as fh:
        fh.write("half")
        raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_replaces_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("1")
    with pytest.raises(HrlmError, match="--overwrite"), atomic_dir(target):
        pass
    with pytest.raises(RuntimeError), atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
        raise RuntimeError("crash")
    assert [p.name for p in target.iterdir()] == ["old"]
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "new").write_text("2")
    assert [p.name for p in target.iterdir()] == ["new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_atomic_dir_gives_files_made_private_the_usual_permissions(tmp_path: Path) -> None:
    with atomic_dir(tmp_path / "model") as tmp:
        (tmp / "weights").write_bytes(b"x")
        (tmp / "weights").chmod(0o600)  # as safetensors writes them
        (tmp / "sub").mkdir(mode=0o700)
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "model" / "weights").stat().st_mode & 0o777 == 0o666 & ~mask
    assert (tmp_path / "model" / "sub").stat().st_mode & 0o777 == 0o777 & ~mask


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_write_killed_with_sigkill_leaves_a_temporary_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "model"
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from hrlm._fs import atomic_dir\n"
            f"with atomic_dir({str(target)!r}) as tmp:\n"
            "    (tmp / 'weights').write_bytes(b'x' * 100000)\n"
            "    print('writing', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    with writer:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    (left,) = [p for p in tmp_path.iterdir() if p.name.startswith(".model.")]
    assert left.is_dir() and left.name.endswith(".tmp") and f".{writer.pid}-" in left.name
    assert not target.exists()

    with atomic_dir(target) as tmp:  # a fresh temporary is not removed: its owner may be slow, not dead
        (tmp / "weights").write_bytes(b"y")
    assert left.exists()

    _age(left, STALE_AFTER_S + 60)
    with atomic_dir(target, overwrite=True) as tmp:
        (tmp / "weights").write_bytes(b"z")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert (target / "weights").read_bytes() == b"z"


def test_temporaries_of_live_writers_and_of_other_targets_are_kept(tmp_path: Path) -> None:
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        own_live = tmp_path / f".model.{alive.pid}-abcdefgh.tmp"
        other_target = tmp_path / ".model.v2.999999999-abcdefgh.tmp"
        unowned_young = tmp_path / ".model.abcdefgh.tmp"
        unowned_old = tmp_path / ".model.ijklmnop.tmp"
        stale_file = tmp_path / ".model.999999999-qrstuvwx.tmp"
        for path in (own_live, other_target, unowned_young, unowned_old):
            path.mkdir()
        stale_file.write_text("half")
        for path in (own_live, other_target, unowned_young, stale_file):
            _age(path, STALE_AFTER_S + 60)
        _age(unowned_old, UNOWNED_STALE_AFTER_S + 60)
        removed = remove_stale_temporaries(tmp_path / "model")
        assert sorted(p.name for p in removed) == sorted([unowned_old.name, stale_file.name])
        assert own_live.exists() and other_target.exists() and unowned_young.exists()
    finally:
        alive.kill()
        alive.wait()


def test_the_old_folder_of_a_write_killed_between_its_renames_is_kept(tmp_path: Path) -> None:
    old = tmp_path / ".model.old-999999999"
    old.mkdir()
    _age(old, STALE_AFTER_S + 60)
    assert remove_stale_temporaries(tmp_path / "model") == []  # "model" is missing: old is the last copy
    (tmp_path / "model").mkdir()
    assert remove_stale_temporaries(tmp_path / "model") == [old]


def test_atomic_file_removes_the_stale_temporaries_of_its_target(tmp_path: Path) -> None:
    stale = tmp_path / ".a.json.999999999-abcdefgh.tmp"
    stale.write_text("{")
    _age(stale, STALE_AFTER_S + 60)
    write_json(tmp_path / "a.json", {"x": 1})
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_check_out_dir_refuses_a_non_empty_folder_without_overwrite(tmp_path: Path) -> None:
    check_out_dir(tmp_path / "new")
    (tmp_path / "empty").mkdir()
    check_out_dir(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    with pytest.raises(ConfigError, match=r"full already exists and is not empty; .* --overwrite"):
        check_out_dir(tmp_path / "full")
    check_out_dir(tmp_path / "full", overwrite=True)
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(tmp_path / "full" / "mine.txt", overwrite=True)
