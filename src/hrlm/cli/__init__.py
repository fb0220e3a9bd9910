"""The ``hrlm`` command line: thin wrappers over the library, one module per command group.

``app`` holds the Typer app and what the command modules share; importing this package registers
every command on it: ``train`` (train, evaluate, predict), ``derive`` (pretrain, distill, compress),
``models`` (the registry), ``retrain`` (retrain, worker, jobs), ``serve`` (serve, users, db),
``batch`` (scoring large volumes), ``monitor`` (drift and quality over time),
``audit`` (bias audits), ``calibrate`` (batching measured per machine),
``purge`` (retention), ``tune`` (tune, ensemble) and ``demo``.
Exit status: 0 on success, 1 for a user error (one line on stderr, no traceback unless ``--debug``), 2 for bad usage.
"""

from __future__ import annotations

from hrlm.cli import audit, batch, calibrate, demo, derive, models, monitor, purge, retrain, review, serve, train, tune
from hrlm.cli.app import app, main

__all__ = [
    "app",
    "audit",
    "batch",
    "calibrate",
    "demo",
    "derive",
    "main",
    "models",
    "monitor",
    "purge",
    "retrain",
    "review",
    "serve",
    "train",
    "tune",
]
