"""The application factory: ``create_app(settings)`` builds a FastAPI app around one :class:`Service`."""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import Engine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hrlm._version import __version__
from hrlm.errors import HrlmError, PayloadTooLarge, ServiceError, Unauthorized
from hrlm.service.auth import FailureThrottle, gate
from hrlm.service.routes.audit_log import build_audit_log_router
from hrlm.service.routes.fairness import build_fairness_router
from hrlm.service.routes.jobs import build_job_router
from hrlm.service.routes.labelstudio import build_labelstudio_router
from hrlm.service.routes.monitor import build_monitor_router
from hrlm.service.routes.pages import build_docs_router, build_ui_router
from hrlm.service.routes.pages import open_paths as ui_open_paths
from hrlm.service.routes.predict import build_router
from hrlm.service.routes.registry import build_registry_router
from hrlm.service.routes.review import build_review_router
from hrlm.service.runtime import Service
from hrlm.service.served_model import ModelSource, quoted
from hrlm.service.settings import ServiceSettings

LABEL_STUDIO_PREFIX = "/labelstudio"  # the routes that take HTTP Basic credentials too (Label Studio sends them)
log = logging.getLogger("hrlm.service")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# which setting a pydantic error on a body field is about, so a 422 names the limit
_LIMITS = {("texts", "too_long"): "max_texts", ("texts", "string_too_long"): "max_text_chars"}
_LIMITS[("text", "string_too_long")] = "max_text_chars"
_EXAMPLE = '{"text": "My payslip is missing"}'

DESCRIPTION = """Predictions of hrlm models over HTTP. Every route but `/healthz` and `/readyz` needs
`Authorization: Bearer <token>`; create a token with `hrlm users add NAME --role client`.
Roles: `client` predicts, `reviewer` reads models (and, later, the review queue), `admin` does all and reads `/metrics`.

Errors are JSON `{"detail": ..., "error": ..., "request_id": ...}`: 401 no valid token, 403 wrong role,
404 no such thing, 409 a change the current state does not allow (a model version's stage, a second
retrain), 413 body too large, 415 a body that is not JSON, 422 invalid body or a limit exceeded (the message names
the limit), 429 rate limit or too many invalid tokens from one address (Retry-After), 503 overloaded or not
ready (Retry-After), 504 no answer within the request timeout. Every answer carries `X-Request-ID`, the
server's own id of the request; a client's `X-Request-ID` comes back as `X-Client-Request-ID`."""


class ServiceMiddleware:
    """Request id, the token gate, the body size limit, and request metrics by route template and status."""

    def __init__(
        self, app: ASGIApp, *, service: Service, open_paths: set[str], routes: Callable[[], list[Any]]
    ) -> None:
        self.app = app
        self.service = service
        self.max_body = service.settings.max_body_bytes
        self.metrics = service.metrics
        self.open_paths = open_paths
        self.routes = routes
        settings = service.settings
        self.throttle = FailureThrottle(settings.auth_fail_limit, settings.auth_fail_window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        # the server's request id is its own: a client's X-Request-ID is kept beside it, never instead of it,
        # so that no client can file its predictions under another request's id
        request_id = uuid.uuid4().hex
        given = _header(scope, b"x-request-id")
        client_id = given if given and _REQUEST_ID.match(given) else None
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        state["client_request_id"] = client_id
        status = 500
        ids = [(b"x-request-id", request_id.encode())]
        if client_id is not None:
            ids.append((b"x-client-request-id", client_id.encode()))

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [*message.get("headers", []), *ids]
                if not any(key.lower() == b"cache-control" for key, _ in headers):
                    # answers hold personal text: no browser or proxy keeps them (static files say otherwise)
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers
            await send(message)

        try:
            if scope["path"] not in self.open_paths:
                try:
                    address = (scope.get("client") or ("",))[0] or ""
                    authorization = _header(scope, b"authorization")
                    state["principal"] = await gate(
                        self.service,
                        authorization,
                        address=address,
                        throttle=self.throttle,
                        basic=scope["path"].startswith(LABEL_STUDIO_PREFIX),
                    )
                except HrlmError as exc:
                    await _send_error(send_wrapper, exc, request_id)
                    return
            length = _header(scope, b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                await _send_error(
                    send_wrapper, PayloadTooLarge(_too_large_text(int(length), self.max_body)), request_id
                )
                return
            await self.app(scope, self._limited(receive), send_wrapper)
        finally:
            labels = {"route": self._template(scope), "method": scope["method"], "status": str(status)}
            self.metrics.requests.labels(**labels).inc()
            self.metrics.latency.labels(**labels).observe(time.perf_counter() - start)

    def _template(self, scope: Scope) -> str:
        """The route template (``/v1/models/{version}``), not the path: one series per route, not per URL."""
        route = scope.get("route")
        if route is None:  # answered before routing (401, 413): find the route it was meant for
            for candidate in self.routes():
                if candidate.matches(scope)[0] == Match.FULL:
                    route = candidate
                    break
        return getattr(route, "path", None) or "unmatched"

    def _limited(self, receive: Receive) -> Receive:
        seen = 0
        limit = self.max_body

        async def wrapper() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    # an HTTPException: FastAPI turns any other error raised while reading a body into 400
                    raise StarletteHTTPException(413, _too_large_text(seen, limit))
            return message

        return wrapper


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


def _too_large_text(size: int, limit: int) -> str:
    return f"the request body has {size}+ bytes; the limit is max_body_bytes = {limit}. Send fewer texts per request."


async def _send_error(send: Send, exc: HrlmError, request_id: str) -> None:
    """Answer an error from the middleware, in the JSON shape of every other error."""
    body = json.dumps({"detail": str(exc), "error": type(exc).__name__, "request_id": request_id}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    for name, value in _error_headers(exc).items():
        headers.append((name.lower().encode(), value.encode()))
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _error_headers(exc: HrlmError) -> dict[str, str]:
    headers: dict[str, str] = {}
    if isinstance(exc, ServiceError) and exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after)))
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = "Bearer"
    return headers


def _request_id(request: Request) -> str | None:
    return getattr(request.state, "request_id", None)


def _error(request: Request, status: int, detail: str, kind: str, **extra: Any) -> JSONResponse:
    headers = extra.pop("headers", None)
    body = {"detail": detail, "error": kind, "request_id": _request_id(request), **extra}
    return JSONResponse(body, status_code=status, headers=headers)


async def _on_hrlm_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HrlmError)
    headers = _error_headers(exc)
    if exc.status >= 500:
        log.warning("request %s: %s %s", _request_id(request), exc.status, exc)
    return _error(request, exc.status, str(exc), type(exc).__name__, headers=headers or None)


async def _on_validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    settings: ServiceSettings = request.app.state.service.settings
    problems = exc.errors()
    for err in problems:
        if err.get("type") == "json_invalid":  # loc is ("body", character offset)
            at = next((p for p in err.get("loc", ()) if isinstance(p, int)), None)
            why = str((err.get("ctx") or {}).get("error", "not JSON"))
            where = f" at character {at}" if at is not None else ""
            detail = f"the body is not valid JSON{where} ({why}); send a JSON body such as {_EXAMPLE}."
            errors = [{"loc": ["body"], "msg": detail, "type": "json_invalid"}]
            return _error(request, 422, detail, "ValidationError", errors=errors)
    sent = request.headers.get("content-type", "")
    not_json = sent.split(";")[0].strip().lower() != "application/json" and not sent.split(";")[0].endswith("+json")
    if not_json and any(list(e.get("loc", ())) == ["body"] and "dict" in str(e.get("msg", "")) for e in problems):
        shown = f"Content-Type {quoted(sent)}" if sent else "no Content-Type"
        detail = (
            f"the body must be JSON: send it with the header Content-Type: application/json (this one had {shown})."
        )
        return _error(request, 415, detail, "UnsupportedMediaType")
    errors, parts = [], []
    for err in problems:
        loc = [quoted(str(p))[1:-1] for p in err.get("loc", ()) if p != "body"]  # an extra key may be any length
        where = ".".join(loc) or "body"
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        limit = _LIMITS.get((loc[0] if loc else "", str(err.get("type"))))
        if limit is not None:
            msg += f" (limit {limit} = {getattr(settings, limit)})"
        errors.append({"loc": loc, "msg": msg, "type": err.get("type")})
        parts.append(f"{where}: {msg}")
    return _error(request, 422, "; ".join(parts) or "invalid request", "ValidationError", errors=errors)


async def _on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    kind = PayloadTooLarge.__name__ if exc.status_code == 413 else "HTTPException"
    detail = str(exc.detail)
    cause = exc.__cause__
    if isinstance(cause, UnicodeDecodeError):  # FastAPI's "There was an error parsing the body"
        kind = "InvalidEncoding"
        detail = (
            f"the body is not valid UTF-8 (byte {cause.start} cannot be decoded); send the JSON body encoded as UTF-8."
        )
    elif exc.status_code == 400 and cause is not None:
        detail = f"cannot read the body ({type(cause).__name__}); send a JSON body encoded as UTF-8."
    return _error(request, exc.status_code, detail, kind, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error("request %s failed", _request_id(request), exc_info=exc)
    return _error(
        request, 500, "internal error; the server log has the details under this request id.", "InternalError"
    )


def create_app(
    settings: ServiceSettings | None = None, *, source: ModelSource | None = None, engine: Engine | None = None
) -> FastAPI:
    """Build the service's FastAPI app; the model and database open when the app starts (its lifespan).

    Args:
        settings: the service settings (default: from ``HRLM_*`` variables).
        source: where models come from (default: the ``settings.model`` folder).
        engine: a database engine (default: one for ``settings.database_url``).

    Example:
        >>> app = create_app(ServiceSettings(model="runs/router"))  # doctest: +SKIP
        >>> uvicorn.run(app, host="127.0.0.1", port=8000)  # doctest: +SKIP
    """
    settings = settings if settings is not None else ServiceSettings()
    service = Service(settings, source=source, engine=engine)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    # /docs is ours (build_docs_router: Swagger UI from the package, not a CDN); ReDoc would load from a CDN
    app = FastAPI(
        title="hrlm", version=__version__, description=DESCRIPTION, lifespan=lifespan, docs_url=None, redoc_url=None
    )
    app.state.service = service
    routers = [
        build_router(settings),
        build_registry_router(),
        build_review_router(),
        build_job_router(),
        build_fairness_router(),
        build_monitor_router(),
        build_audit_log_router(),
        build_labelstudio_router(),
        build_ui_router(),
        build_docs_router("hrlm"),
    ]
    for router in routers:
        app.include_router(router)
    app.add_exception_handler(HrlmError, _on_hrlm_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
    open_paths = {"/healthz", "/readyz"}
    # the web pages and their scripts and styles carry no data (it all comes from the token-checked API)
    open_paths |= ui_open_paths()
    if settings.metrics_open:
        open_paths.add("/metrics")
    if settings.docs_open:
        open_paths |= {"/docs", "/docs/oauth2-redirect", "/openapi.json"}
    # the routes themselves, not app.router.routes: FastAPI keeps each included router there as one nested entry
    app.add_middleware(
        ServiceMiddleware,
        service=service,
        open_paths=open_paths,
        routes=lambda: [r for router in routers for r in router.routes],
    )
    if settings.cors_origins:  # added last: outermost, so a preflight OPTIONS needs no token
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
        )
    return app
