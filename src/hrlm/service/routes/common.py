"""What the routes modules share: the OpenAPI error responses and the model-version path parameter.

No ``from __future__ import annotations``: FastAPI must see the annotations as objects.
"""

from typing import Annotated, Any

from fastapi import Path

from hrlm.service.schemas.predict import MAX_VERSION, VERSION_PATTERN, ErrorOut

Version = Annotated[
    str,
    Path(
        max_length=MAX_VERSION,
        pattern=VERSION_PATTERN,
        description="A model version, as GET /v1/models lists it (letters, digits, `.`, `_`, `-`).",
    ),
]


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that answers these statuses with an :class:`ErrorOut` body."""
    return {code: {"model": ErrorOut} for code in codes}
