"""hrlm: fine-tune, serve and keep improving BERT-style models on HR text.

Example:
    >>> import hrlm
    >>> result = hrlm.train("tickets.csv", "runs/tickets")  # doctest: +SKIP
    >>> hrlm.load("runs/tickets").predict("Where is my payslip?").label  # doctest: +SKIP
    'payroll'
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hrlm._version import __version__

_LAZY = {
    "ConfigError": "hrlm.errors",
    "DataError": "hrlm.errors",
    "Dataset": "hrlm.data",
    "EncoderError": "hrlm.errors",
    "HrlmError": "hrlm.errors",
    "LabelError": "hrlm.errors",
    "ModelError": "hrlm.errors",
    "ModelNotFound": "hrlm.errors",
    "Prediction": "hrlm.inference.predictor",
    "Predictor": "hrlm.inference.predictor",
    "TrainConfig": "hrlm.config",
    "TrainResult": "hrlm.training.fitting",
    "evaluate": "hrlm.inference.scoring",
    "fit": "hrlm.training.fitting",
    "load": "hrlm.inference.predictor",
    "load_dataset": "hrlm.data",
    "split_dataset": "hrlm.data",
    "train": "hrlm.training.fitting",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    # Imports are lazy so that `import hrlm` and `hrlm --help` stay fast: torch loads only when used.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'hrlm' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from hrlm.config import TrainConfig
    from hrlm.data import Dataset, load_dataset, split_dataset
    from hrlm.errors import (
        ConfigError,
        DataError,
        EncoderError,
        HrlmError,
        LabelError,
        ModelError,
        ModelNotFound,
    )
    from hrlm.inference import Prediction, Predictor, evaluate, load
    from hrlm.training import TrainResult, fit, train
