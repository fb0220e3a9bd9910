"""Run settings as validated data.

A :class:`TrainConfig` holds every setting of a training run. Precedence is the defaults, then a
TOML file, then command-line flags; an unknown key is an error, never a silent no-op. The resolved
config is written into every model folder (``hrlm.json``) so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar, Self

from hrlm.errors import ConfigError

TRUNCATE_MODES = ("none", "head", "head+tail")
AGGREGATIONS = ("mean", "max")
POOLINGS = ("auto", "pooler", "cls", "mean")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("auto", "torch-fp32", "torch-bf16", "torch-fp16", "torch-int8", "onnx-fp32", "onnx-int8")
CLASS_WEIGHTS = ("none", "balanced")
METHODS = ("auto", "finetune", "setfit")
AUGMENT_MODES = ("none", "noise", "contextual", "both")
METRICS = ("macro_f1", "weighted_f1", "micro_f1", "accuracy", "loss")


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    """Raise :class:`ConfigError` naming the setting when ``value`` is not one of ``allowed``."""
    if value not in allowed:
        raise ConfigError(f"{name} = {value!r} is not valid; choose one of {', '.join(allowed)}.")


def _at_least(name: str, value: float, low: float) -> None:
    if value < low:
        raise ConfigError(f"{name} = {value!r} is too small; it must be at least {low}.")


def _fraction(name: str, value: float, *, inclusive_zero: bool = True) -> None:
    ok = (0.0 <= value < 1.0) if inclusive_zero else (0.0 < value < 1.0)
    if not ok:
        raise ConfigError(f"{name} = {value!r} must be a fraction in [0, 1).")


class _Settings:
    """What every settings dataclass shares: strict construction from TOML and flags, and back to a dict."""

    section: ClassVar[str] = ""
    __dataclass_fields__: ClassVar[dict[str, Any]]  # every subclass is a dataclass

    @classmethod
    def names(cls) -> list[str]:
        """Names of every setting."""
        return [f.name for f in fields(cls)]

    @classmethod
    def from_sources(cls, path: str | Path | None = None, **overrides: Any) -> Self:
        """Build a config from defaults, then a TOML file, then ``overrides`` (``None`` ignored).

        The TOML file may hold the keys at top level or under a table named by ``section``
        (``[train]``, ``[pretrain]``).

        Raises:
            ConfigError: the file is unreadable, or holds an unknown key or a bad value.
        """
        values: dict[str, Any] = {}
        if path is not None:
            values.update(load_toml(path, section=cls.section))
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Self:
        """Build a config from a mapping; unknown keys raise :class:`ConfigError`."""
        known = set(cls.names())
        unknown = {k: v for k, v in values.items() if k not in known}
        if unknown:
            raise ConfigError(f"unknown setting(s) {sorted(unknown)}; valid keys are {sorted(known)}.")
        types = {f.name: str(f.type) for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in values.items():
            clean[key] = _coerce(key, value, types[key])
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-serialisable mapping."""
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> Self:
        """A copy with some settings changed (validated again)."""
        return dataclasses.replace(self, **changes)


@dataclass
class TrainConfig(_Settings):
    """Settings of one fine-tuning run.

    Every field has a working default; ``TrainConfig()`` trains a sensible single-label classifier
    on the packaged all-MiniLM-L6-v2 encoder.

    Example:
        >>> cfg = TrainConfig(epochs=2, max_length=128)
        >>> cfg.lr
        0.0001
    """

    section: ClassVar[str] = "train"

    # data
    text_col: str = "text"
    label_col: str = "label"
    label_sep: str | None = None
    task_weights: str | None = None
    split_col: str | None = None
    group_col: str | None = None
    strict: bool = False
    val_size: float = 0.1
    test_size: float = 0.1
    # encoder and long texts
    base: str | None = None
    max_length: int = 256
    stride: int | None = None
    truncate: str = "none"
    aggregate: str = "mean"
    pooling: str = "auto"
    # optimisation
    epochs: float = 4.0
    batch_size: int = 32
    grad_accum: int = 1
    lr: float = 1e-4
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    dropout: float | None = None
    class_weights: str = "none"
    seed: int = 42
    # regularisation and schedule of evaluation
    early_stopping_patience: int = 2
    metric: str = "macro_f1"
    eval_steps: int | None = None
    freeze_layers: int = 0
    freeze_encoder: bool = False
    # little data: few-shot method and augmentation of the training split
    method: str = "auto"
    few_shot_below: int = 16
    setfit_pairs: int = 20
    setfit_lr: float = 2e-5
    augment: str = "none"
    augment_copies: int = 1
    augment_seed: int = 13
    augment_mlm: str | None = None
    # hardware
    precision: str = "auto"
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        check_choice("truncate", self.truncate, TRUNCATE_MODES)
        check_choice("aggregate", self.aggregate, AGGREGATIONS)
        check_choice("pooling", self.pooling, POOLINGS)
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        check_choice("class_weights", self.class_weights, CLASS_WEIGHTS)
        check_choice("metric", self.metric, METRICS)
        check_choice("method", self.method, METHODS)
        check_choice("augment", self.augment, AUGMENT_MODES)
        _at_least("few_shot_below", self.few_shot_below, 0)
        _at_least("setfit_pairs", self.setfit_pairs, 1)
        _at_least("augment_copies", self.augment_copies, 1)
        if not 0 < self.setfit_lr < 1:
            raise ConfigError(f"setfit_lr = {self.setfit_lr!r} must be between 0 and 1 (try 2e-5).")
        if self.augment in ("contextual", "both") and not self.augment_mlm:
            raise ConfigError(
                f"augment = {self.augment!r} needs augment_mlm: the folder of an encoder with a trained "
                "masked-LM head (run `hrlm pretrain` and pass its --out folder)."
            )
        _at_least("max_length", self.max_length, 8)
        if self.max_length > 8192:
            raise ConfigError(f"max_length = {self.max_length} is too large; use at most 8192.")
        if self.stride is None:
            self.stride = self.max_length // 4
        _at_least("stride", self.stride, 0)
        if self.stride >= self.max_length - 2:
            raise ConfigError(
                f"stride = {self.stride} must be smaller than max_length - 2 = {self.max_length - 2}; "
                "stride is the number of tokens consecutive windows share."
            )
        if not self.epochs > 0:
            raise ConfigError(f"epochs = {self.epochs!r} must be greater than 0.")
        _at_least("batch_size", self.batch_size, 1)
        _at_least("grad_accum", self.grad_accum, 1)
        if not 0 < self.lr < 1:
            raise ConfigError(f"lr = {self.lr!r} must be between 0 and 1 (try 1e-4).")
        _fraction("warmup_ratio", self.warmup_ratio)
        _at_least("weight_decay", self.weight_decay, 0.0)
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm = {self.max_grad_norm!r} must be greater than 0.")
        if self.dropout is not None:
            _fraction("dropout", self.dropout)
        _fraction("val_size", self.val_size)
        _fraction("test_size", self.test_size)
        if self.val_size + self.test_size >= 0.9:
            raise ConfigError("val_size + test_size must leave at least 10% of the data for training.")
        _at_least("early_stopping_patience", self.early_stopping_patience, 0)
        if self.eval_steps is not None:
            _at_least("eval_steps", self.eval_steps, 1)
        _at_least("freeze_layers", self.freeze_layers, 0)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)
        if self.label_sep == "":
            raise ConfigError("label_sep must not be empty; omit it for single-label data.")


@dataclass
class PretrainConfig(_Settings):
    """Settings of domain-adaptive pretraining (``hrlm pretrain``): masked LM, optionally with NSP.

    Example:
        >>> PretrainConfig(whole_word=True).mlm_probability
        0.15
    """

    section: ClassVar[str] = "pretrain"

    text_col: str = "text"
    base: str | None = None
    max_length: int = 256
    mlm_probability: float = 0.15
    whole_word: bool = False
    nsp: bool = False
    epochs: float = 1.0
    batch_size: int = 32
    lr: float = 5e-5
    warmup_ratio: float = 0.06
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    head_steps: int = 300
    head_lr: float = 1e-3
    val_size: float = 0.05
    eval_steps: int | None = None
    seed: int = 42
    precision: str = "auto"
    device: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        check_choice("precision", self.precision, PRECISIONS)
        check_choice("device", self.device, DEVICES)
        _at_least("max_length", self.max_length, 16)
        if not 0.0 < self.mlm_probability < 1.0:
            raise ConfigError(f"mlm_probability = {self.mlm_probability!r} must be between 0 and 1 (try 0.15).")
        if not self.epochs > 0:
            raise ConfigError(f"epochs = {self.epochs!r} must be greater than 0.")
        _at_least("batch_size", self.batch_size, 1)
        for name in ("lr", "head_lr"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"{name} = {getattr(self, name)!r} must be between 0 and 1.")
        _fraction("warmup_ratio", self.warmup_ratio)
        _at_least("weight_decay", self.weight_decay, 0.0)
        if not self.max_grad_norm > 0:
            raise ConfigError(f"max_grad_norm = {self.max_grad_norm!r} must be greater than 0.")
        _at_least("head_steps", self.head_steps, 0)
        _fraction("val_size", self.val_size, inclusive_zero=False)
        if self.eval_steps is not None:
            _at_least("eval_steps", self.eval_steps, 1)
        if self.threads is not None:
            _at_least("threads", self.threads, 1)


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Check a value against a field's annotation; widen ints to floats where a float is wanted."""
    if value is None and "None" in annotation:
        return None
    base = annotation.split("|")[0].strip()
    if base == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    expected = {"int": int, "float": float, "str": str, "bool": bool}[base]
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise ConfigError(f"{key} = {value!r} must be a {base}.")
    return value


def load_toml(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """Read a TOML file; with ``section``, return that table when the file has one."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} not found; pass an existing TOML file to --config.")
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {str(p)!r} is not valid TOML: {exc}.") from None
    if section and isinstance(data.get(section), dict):
        return dict(data[section])
    return data
