from __future__ import annotations

import os
from pathlib import Path

import pytest

from hrlm._fs import atomic_dir, atomic_file, write_json
from hrlm.errors import HrlmError


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
