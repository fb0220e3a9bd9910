"""Which extra of ``pip install hrlm[...]`` brings which import, and the error that says so.

``pip install hrlm`` trains, evaluates and predicts. The rest comes with an extra (pyproject.toml)::

    serve      the REST service, its store and the review pages: fastapi, uvicorn, sqlalchemy, alembic, ...
    postgres   the store on PostgreSQL: psycopg
    queue      retrain jobs on Redis (``hrlm worker``): rq, redis
    onnx       the ONNX Runtime backends and ``hrlm compress --onnx``: onnxruntime, onnx, onnxscript
    openvino   the OpenVINO backends and openvino-int8's calibration: openvino, nncf
    ray        ``hrlm batch --engine ray``, ``hrlm train --workers`` and ``hrlm pretrain --workers``: ray
    tune       ``hrlm tune``: optuna
    audit      ``hrlm audit`` and the bias audit of the promotion gate: fairlearn
    all        every one of them

A package that needs an extra imports its dependencies inside :func:`needs_extras`, so that a
missing one is a one-line :class:`MissingExtraError` naming the extra, not a traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from hrlm.errors import MissingExtraError

__all__ = ["EXTRA_OF_MODULE", "MissingExtraError", "missing_extra", "needs_extras"]

# top-level import name -> the extra that installs it
EXTRA_OF_MODULE = {
    "alembic": "serve",
    "fastapi": "serve",
    "httptools": "serve",
    "jinja2": "serve",
    "prometheus_client": "serve",
    "pydantic": "serve",
    "pydantic_core": "serve",
    "pydantic_settings": "serve",
    "sqlalchemy": "serve",
    "starlette": "serve",
    "uvicorn": "serve",
    "uvloop": "serve",
    "psycopg": "postgres",
    "redis": "queue",
    "rq": "queue",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "openvino": "openvino",
    "nncf": "openvino",
    "ray": "ray",
    "optuna": "tune",
    "fairlearn": "audit",
    "captum": "serve",
}


def missing_extra(exc: ModuleNotFoundError, what: str) -> MissingExtraError | None:
    """The error to raise instead of ``exc`` when the missing module belongs to an extra, else ``None``.

    Args:
        exc: the error of a failed import.
        what: what needs the module, for the message (``"hrlm serve"``, ``"hrlm.service"``).

    Example:
        >>> missing_extra(ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn"), "hrlm serve").message
        "hrlm serve needs the serve extra (uvicorn is not installed): pip install 'hrlm[serve]'"
    """
    module = (exc.name or "").partition(".")[0]
    extra = EXTRA_OF_MODULE.get(module)
    if extra is None:
        return None
    return MissingExtraError(
        f"{what} needs the {extra} extra ({module} is not installed): pip install 'hrlm[{extra}]'", extra
    )


@contextlib.contextmanager
def needs_extras(what: str) -> Iterator[None]:
    """Turn a missing module of an extra, imported in the block, into a :class:`MissingExtraError`.

    Any other missing module is raised as it is: that is a bug or a broken install, not a choice.

    Example:
        >>> with needs_extras("hrlm.service"):  # doctest: +SKIP
        ...     from hrlm.service.app import create_app
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        error = missing_extra(exc, what)
        if error is None:
            raise
        raise error from exc
