"""The search space of ``hrlm tune``: which settings a trial draws, and from where, read from TOML.

Every searchable setting is a :class:`TrainConfig` field, named as there, plus ``stride_ratio``
(the stride as a fraction of ``max_length``, so that any drawn length gets a valid stride). Each is

- **fixed**: a plain value, ``epochs = 3``;
- **categorical**: a list, ``batch_size = [16, 32]``;
- **bounded**: a table, ``lr = {low = 1e-5, high = 3e-4, log = true}``; integers when both bounds
  are integers (``freeze_layers = {low = 0, high = 3}``), with an optional ``step``.

A ``--space`` file holds a ``[space]`` table; the keys it names replace the defaults of
:func:`default_space`, the others keep them. An unknown key, a bound the setting cannot take
(``dropout = {low = 0, high = 1.5}``) or ``low >= high`` is a :class:`ConfigError` naming the key.

Example:
    >>> space = load_space(None)
    >>> space["batch_size"].choices
    (16, 32)
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hrlm.config import TrainConfig
from hrlm.errors import ConfigError

if TYPE_CHECKING:
    import optuna

# The searchable settings; stride_ratio becomes TrainConfig.stride.
SEARCHABLE = (
    "lr",
    "batch_size",
    "epochs",
    "warmup_ratio",
    "weight_decay",
    "dropout",
    "freeze_layers",
    "max_length",
    "stride_ratio",
    "class_weights",
    "pooling",
    "ema_epochs",
)
_INTEGER = {"batch_size", "freeze_layers", "max_length"}


@dataclass(frozen=True)
class Param:
    """One setting's range: ``value`` (fixed), ``choices`` (categorical) or ``low``/``high`` (bounded)."""

    name: str
    value: Any = None
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @property
    def kind(self) -> str:
        """``fixed``, ``categorical``, ``int`` or ``float``."""
        if self.choices is not None:
            return "categorical"
        if self.low is None:
            return "fixed"
        return "int" if isinstance(self.low, int) and isinstance(self.high, int) else "float"

    def suggest(self, trial: optuna.Trial) -> Any:
        """The trial's value of this setting (drawn by the sampler unless fixed)."""
        kind = self.kind
        if kind == "fixed":
            return self.value
        if kind == "categorical":
            assert self.choices is not None
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None
        if kind == "int":
            step = int(self.step or 1)
            return trial.suggest_int(self.name, int(self.low), int(self.high), step=step, log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), step=self.step, log=self.log)

    def describe(self) -> str:
        """The range as a ``--space`` file writes it."""
        kind = self.kind
        if kind == "fixed":
            return repr(self.value)
        if kind == "categorical":
            return "[" + ", ".join(repr(c) for c in self.choices or ()) + "]"
        extra = ", log" if self.log else f", step {self.step:g}" if self.step else ""
        return f"{self.low:g} .. {self.high:g}{extra}"


def default_space(layers: int = 6) -> dict[str, Param]:
    """A search space that suits all-MiniLM-L6-v2 (6 layers, 384 wide) on a few thousand texts.

    Learning rates of 1e-5..3e-4 bracket what small sentence encoders fine-tune at (1e-4 is the
    project's default); at most ``layers - 2`` layers are frozen so that some always learn.

    Args:
        layers: transformer layers of the base encoder, which bound ``freeze_layers``.
    """
    most_frozen = max(0, min(4, layers - 2))
    space = {
        "lr": Param("lr", low=1e-5, high=3e-4, log=True),
        "batch_size": Param("batch_size", choices=(16, 32)),
        "epochs": Param("epochs", low=2, high=6),
        "warmup_ratio": Param("warmup_ratio", low=0.0, high=0.2),
        "weight_decay": Param("weight_decay", low=0.0, high=0.1),
        "dropout": Param("dropout", low=0.0, high=0.3),
        "freeze_layers": Param("freeze_layers", low=0, high=most_frozen)
        if most_frozen > 0
        else Param("freeze_layers", value=0),
        "max_length": Param("max_length", choices=(64, 128, 256)),
        "stride_ratio": Param("stride_ratio", value=0.25),
        "class_weights": Param("class_weights", choices=("none", "balanced")),
        "pooling": Param("pooling", choices=("auto", "mean", "cls")),
        "ema_epochs": Param("ema_epochs", value=0.0),
    }
    return space


def load_space(path: str | Path | None, *, layers: int = 6) -> dict[str, Param]:
    """The default space with the keys of ``path``'s ``[space]`` table replacing their defaults.

    Raises:
        ConfigError: the file is unreadable, has a table other than ``[space]``, or a key that is
            unknown, badly shaped or out of the setting's bounds (the message names the key).
    """
    space = default_space(layers)
    if path is None:
        return space
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read the search space {path}: {exc.strerror or exc}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}.") from None
    table = raw.get("space", raw)
    other = sorted(k for k in raw if k != "space") if "space" in raw else []
    if other:
        raise ConfigError(f"{path}: unknown table(s) {other}; a search space file holds one [space] table.")
    space.update(parse_space(table, source=str(path)))
    return space


def parse_space(table: Mapping[str, Any], *, source: str = "space") -> dict[str, Param]:
    """Read a ``[space]`` mapping into :class:`Param`s, each checked against its setting."""
    out: dict[str, Param] = {}
    for key, spec in table.items():
        where = f"{source}: space.{key}"
        if key not in SEARCHABLE:
            raise ConfigError(f"{where} is not a searchable setting; choose from {', '.join(SEARCHABLE)}.")
        if isinstance(spec, dict):
            param = _bounded(key, spec, where)
        elif isinstance(spec, list):
            if not spec:
                raise ConfigError(f"{where} = [] lists no choice; give at least one value.")
            param = Param(key, choices=tuple(spec))
        else:
            param = Param(key, value=spec)
        for value in _corners(param):
            _check_value(key, value, where)
        out[key] = param
    return out


def _bounded(key: str, spec: dict[str, Any], where: str) -> Param:
    unknown = sorted(set(spec) - {"low", "high", "log", "step"})
    if unknown or "low" not in spec or "high" not in spec:
        raise ConfigError(f"{where} must be a table {{low = ..., high = ...}} with optional log and step.")
    low, high, log, step = spec["low"], spec["high"], spec.get("log", False), spec.get("step")
    if key in ("class_weights", "pooling"):
        raise ConfigError(f"{where} takes a value or a list of choices, not bounds.")
    numbers = (low, high) + ((step,) if step is not None else ())
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in numbers):
        raise ConfigError(f"{where}: low, high and step must be numbers.")
    if key in _INTEGER and not (isinstance(low, int) and isinstance(high, int)):
        raise ConfigError(f"{where}: {key} takes whole numbers; write low and high without a decimal point.")
    if not low < high:
        raise ConfigError(f"{where}: low = {low!r} must be smaller than high = {high!r}.")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: log must be true or false.")
    if log and low <= 0:
        raise ConfigError(f"{where}: a log scale needs low > 0, not {low!r}.")
    if step is not None and (step <= 0 or log):
        raise ConfigError(f"{where}: step must be positive, and cannot be combined with log.")
    return Param(key, low=low, high=high, log=log, step=step)


def _corners(param: Param) -> list[Any]:
    if param.kind == "fixed":
        return [param.value]
    if param.kind == "categorical":
        return list(param.choices or ())
    return [param.low, param.high]


def _check_value(key: str, value: Any, where: str) -> None:
    """Reject a value the setting cannot take, by building a TrainConfig with it."""
    if key == "stride_ratio":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 0.5:
            raise ConfigError(f"{where}: stride_ratio = {value!r} must be a fraction of max_length in [0, 0.5].")
        return
    if key in _INTEGER and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: {value!r} is not a whole number.")
    try:
        TrainConfig.from_dict({key: value})
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def suggest(space: Mapping[str, Param], trial: optuna.Trial) -> dict[str, Any]:
    """The trial's settings, as :class:`TrainConfig` fields (``stride_ratio`` becomes ``stride``)."""
    values = {name: param.suggest(trial) for name, param in space.items()}
    return to_settings(values)


def to_settings(values: Mapping[str, Any]) -> dict[str, Any]:
    """Space values (a trial's ``params`` with the fixed ones) as :class:`TrainConfig` fields."""
    out = {k: v for k, v in values.items() if k != "stride_ratio"}
    if "epochs" in out:
        out["epochs"] = float(out["epochs"])
    ratio = values.get("stride_ratio")
    if ratio is not None:
        length = int(out.get("max_length", TrainConfig().max_length))
        out["stride"] = min(round(ratio * length), length - 3)
    return out


def fixed_values(space: Mapping[str, Param]) -> dict[str, Any]:
    """The values of the fixed settings, which a trial's ``params`` do not record."""
    return {name: p.value for name, p in space.items() if p.kind == "fixed"}


def max_epochs(space: Mapping[str, Param]) -> float:
    """The most epochs a trial may train (Hyperband's largest resource)."""
    epochs = space.get("epochs")
    if epochs is None:
        return TrainConfig().epochs
    return float(max(_corners(epochs)))
