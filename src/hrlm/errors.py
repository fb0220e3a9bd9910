"""Errors raised by hrlm.

Every error a user can cause is an :class:`HrlmError`. Each one says what went wrong and what to
do about it in a single line, and carries the HTTP status the service answers with and the exit
code the CLI ends with::

    HrlmError                  500   something hrlm cannot recover from
    ├── ConfigError            422   a setting has a bad value or an unknown name
    ├── DataError              422   a data file is missing, unreadable or malformed
    │   └── LabelError         422   a label is unknown to the model or too rare to learn
    ├── EncoderError           422   the base encoder cannot be found or is not BERT-family
    └── ModelError             422   a model folder is missing or damaged
        └── ModelNotFound      404
"""

from __future__ import annotations


class HrlmError(Exception):
    """Base class of every error hrlm raises on purpose."""

    status: int = 500
    exit_code: int = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ConfigError(HrlmError):
    """A configuration value is invalid, or a configuration key is unknown."""

    status = 422


class DataError(HrlmError):
    """A data file is missing, unreadable, or does not have the expected shape."""

    status = 422


class LabelError(DataError):
    """A label is unknown to the model, or a class has too few examples to learn."""


class EncoderError(HrlmError):
    """The base encoder cannot be resolved locally."""

    status = 422


class ModelError(HrlmError):
    """A model folder is missing, incomplete, or was written by an incompatible version."""

    status = 422


class ModelNotFound(ModelError):
    """No model exists at the given path."""

    status = 404
