"""Errors raised by hrlm.

Every error a user can cause is an :class:`HrlmError`. Each one says what went wrong and what to
do about it in a single line, and carries the HTTP status the service answers with and the exit
code the CLI ends with::

    HrlmError                  500   something hrlm cannot recover from
    ├── ConfigError            422   a setting has a bad value or an unknown name
    ├── DataError              422   a data file is missing, unreadable or malformed
    │   └── LabelError         422   a label is unknown to the model or too rare to learn
    ├── EncoderError           422   the base encoder cannot be found or is not BERT-family
    ├── MissingExtraError      500   a package of an extra is not installed (the message names the extra)
    ├── ModelError             422   a model folder is missing or damaged
    │   └── ModelNotFound      404
    ├── NotFound               404   a named thing (a user, a model version) does not exist
    ├── Conflict               409   the request clashes with the current state (a model version's stage)
    ├── StoreError             503   the database cannot be reached, migrated or written
    └── ServiceError           500   the REST service refuses a request (hrlm.service)
        ├── Unauthorized       401   no valid API token
        ├── Forbidden          403   the token's role may not use this route
        ├── PayloadTooLarge    413   the request body is over the size limit
        ├── RateLimited        429   the token sent too many requests (retry_after seconds)
        ├── Overloaded         503   too many texts are waiting for the model (retry_after seconds)
        └── RequestTimeout     504   the answer took longer than the request timeout
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


class MissingExtraError(HrlmError, ImportError):
    """A package of an extra is not installed; the message names the extra to install.

    It is an :class:`ImportError` too, so code that guards an optional import keeps working.
    """

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra


class ModelError(HrlmError):
    """A model folder is missing, incomplete, or was written by an incompatible version."""

    status = 422


class ModelNotFound(ModelError):
    """No model exists at the given path."""

    status = 404


class NotFound(HrlmError):
    """A named thing (a user, a model version) does not exist."""

    status = 404


class Conflict(HrlmError):
    """The request clashes with the current state.

    For example a stage change the version's stage does not allow, a retrain while another runs,
    or a promotion on a service that serves a plain model folder.
    """

    status = 409


class StoreError(HrlmError):
    """The database cannot be reached, migrated or written."""

    status = 503


class ServiceError(HrlmError):
    """The REST service refuses a request; ``retry_after`` (seconds) becomes a Retry-After header."""

    retry_after: float | None = None


class Unauthorized(ServiceError):
    """No valid API token came with the request."""

    status = 401


class Forbidden(ServiceError):
    """The token is valid but its role may not use this route."""

    status = 403


class PayloadTooLarge(ServiceError):
    """The request body is larger than the configured limit."""

    status = 413


class RateLimited(ServiceError):
    """The token sent more requests than its rate limit allows."""

    status = 429

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(ServiceError):
    """More texts wait for the model than the queue holds."""

    status = 503

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestTimeout(ServiceError):
    """The answer took longer than the request timeout."""

    status = 504
