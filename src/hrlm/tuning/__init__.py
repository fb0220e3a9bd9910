"""Hyperparameter search: ``hrlm tune``'s study, search space and report.

Modules: ``space`` (the searchable settings, fixed, bounded or categorical, and their TOML),
``search`` (the Optuna study: TPE, Hyperband on the per-epoch validation score; the final model and
the ensemble), ``refit`` (the final model trained on train and validation together), ``storage``
(the SQLite or PostgreSQL study that survives a kill and that several workers share, with
heartbeats), ``store`` (``best.toml``, ``trials.csv``/``.json``) and ``report`` (PNG and HTML).
Optuna is the ``tune`` extra; it is imported only when a study runs.
"""

from __future__ import annotations

from hrlm.tuning.search import (
    CV_BELOW,
    PruningReporter,
    TuneResult,
    best_value,
    trial_line,
    tune,
    tune_splits,
)
from hrlm.tuning.space import SEARCHABLE, Param, default_space, load_space, parse_space
from hrlm.tuning.storage import open_study, storage_url
from hrlm.tuning.store import write_best_toml

__all__ = [
    "CV_BELOW",
    "SEARCHABLE",
    "Param",
    "PruningReporter",
    "TuneResult",
    "best_value",
    "default_space",
    "load_space",
    "open_study",
    "parse_space",
    "storage_url",
    "trial_line",
    "tune",
    "tune_splits",
    "write_best_toml",
]
