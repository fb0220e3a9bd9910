"""The ``hrlm`` command line: thin wrappers over the library, one module per command group.

``app`` holds the Typer app and what the command modules share; importing this package registers
every command on it: ``train`` (train, evaluate, predict), ``derive`` (pretrain, distill, compress),
``models`` (the registry), ``retrain`` (retrain, worker, jobs), ``serve`` (serve, users, db) and
``demo``. Exit status: 0 on success, 1 for a user error (one line on stderr, no traceback unless
``--debug``), 2 for bad usage.
"""

from __future__ import annotations

from hrlm.cli import demo, derive, models, retrain, serve, train
from hrlm.cli.app import app, main

__all__ = ["app", "demo", "derive", "main", "models", "retrain", "serve", "train"]
