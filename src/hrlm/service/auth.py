"""Who may call what: bearer tokens checked against their stored hashes, roles, per-token rate limits.

Every request but those to ``/healthz`` and ``/readyz`` passes :func:`gate` in the middleware
first (401 without a valid token, before the body is read), then its route's :func:`require`
(403 for the wrong role, 429 over the rate limit). A token checked against
the database is trusted for ``auth_cache_s`` seconds (default 5) before it is checked again, so a
revocation takes effect within that time.

Guessing tokens is throttled per client address (:class:`FailureThrottle`): after
``auth_fail_limit`` invalid tokens within ``auth_fail_window_s`` seconds, every request from that
address answers 429 with ``Retry-After`` until the oldest failure leaves the window, whatever
token it carries.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.exc import SQLAlchemyError

from hrlm.errors import Forbidden, RateLimited, StoreError, Unauthorized
from hrlm.store.users import Principal, authenticate, hash_token, parse_token

bearer = HTTPBearer(auto_error=False, description="An API token from `hrlm users add NAME --role ROLE`.")
HOW = "send the header `Authorization: Bearer <token>`; `hrlm users add NAME --role client` creates a token."


class Authenticator:
    """Checks tokens, remembering the valid ones for ``ttl_s`` seconds."""

    def __init__(self, engine: Engine, ttl_s: float = 5.0) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[str, Principal, float]] = {}

    async def check(self, token: str) -> Principal | None:
        """The principal of a valid token, else ``None``."""
        key_id = parse_token(token)
        if key_id is None:
            return None
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is not None and hit[2] > now:
            return hit[1] if hmac.compare_digest(hit[0], hash_token(token)) else None
        try:
            found = await asyncio.to_thread(authenticate, self.engine, token)
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot check the token: the database is unreachable ({type(exc).__name__}).") from None
        if found is None:
            self._cache.pop(key_id, None)
            return None
        principal, stored_hash = found
        if self.ttl_s > 0:
            self._cache[key_id] = (stored_hash, principal, now + self.ttl_s)
        return principal


class RateLimiter:
    """A token bucket per key: ``per_minute`` requests a minute on average, ``burst`` at once."""

    def __init__(self, per_minute: float, burst: int) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}

    def hit(self, key: str) -> float | None:
        """Take one request from ``key``'s bucket; ``None`` if allowed, else seconds until it would be."""
        if self.rate <= 0:
            return None
        now = time.monotonic()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens - 1.0, now)
        return None


class FailureThrottle:
    """Failed token checks per client address in a sliding window: ``limit`` of them in ``window_s`` seconds.

    Holds at most ``max_addresses`` addresses (the oldest are forgotten first), so that a flood from
    many addresses cannot grow it without bound. ``limit = 0`` turns it off.

    Example:
        >>> throttle = FailureThrottle(limit=2, window_s=60)
        >>> throttle.failed("10.0.0.1"); throttle.failed("10.0.0.1")
        >>> throttle.wait("10.0.0.1") > 0, throttle.wait("10.0.0.2")
        (True, None)
    """

    def __init__(self, limit: int, window_s: float, max_addresses: int = 100_000) -> None:
        self.limit = limit
        self.window_s = window_s
        self.max_addresses = max_addresses
        self._failures: dict[str, deque[float]] = {}

    def wait(self, address: str) -> float | None:
        """Seconds until ``address`` may try a token again; ``None`` if it may now."""
        times = self._recent(address, time.monotonic())
        if self.limit <= 0 or times is None or len(times) < self.limit:
            return None
        return times[0] + self.window_s - time.monotonic()

    def failed(self, address: str) -> None:
        """Count one failed token check of ``address``."""
        if self.limit <= 0:
            return
        now = time.monotonic()
        times = self._recent(address, now)
        if times is None:
            if len(self._failures) >= self.max_addresses:
                self._failures.pop(next(iter(self._failures)))
            times = self._failures[address] = deque(maxlen=self.limit)
        times.append(now)

    def _recent(self, address: str, now: float) -> deque[float] | None:
        times = self._failures.get(address)
        if times is None:
            return None
        while times and times[0] <= now - self.window_s:
            times.popleft()
        if not times:
            del self._failures[address]
            return None
        return times


async def gate(
    service: Any,
    authorization: str | None,
    *,
    address: str = "",
    throttle: FailureThrottle | None = None,
    basic: bool = False,
) -> Principal:
    """The principal of an ``Authorization: Bearer`` header, else :class:`Unauthorized`.

    With ``basic`` (the routes Label Studio calls), HTTP Basic credentials are taken too: the
    password is the token, the user name is ignored.

    Runs in the middleware, before the body is read or a route is chosen: a request without a
    valid token reaches neither a route nor the model nor the prediction store. With a
    ``throttle``, an ``address`` that sent too many invalid tokens gets :class:`RateLimited`
    before its token is looked at.
    """
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if basic and scheme.lower() == "basic":  # Label Studio's ML backend connection: the password is the token
        token = _basic_password(token)
        scheme = "bearer"
    if scheme.lower() != "bearer" or not token:
        service.metrics.auth_failures.labels(status="401").inc()
        raise Unauthorized(f"this route needs an API token: {HOW}")
    wait = throttle.wait(address) if throttle is not None else None
    if wait is not None:
        assert throttle is not None
        retry = max(1, math.ceil(wait))
        service.metrics.auth_failures.labels(status="429").inc()
        raise RateLimited(
            f"too many invalid API tokens from this address ({throttle.limit} within auth_fail_window_s = "
            f"{throttle.window_s:g} s); retry after {retry} s with a valid token.",
            retry_after=retry,
        )
    principal = await service.auth.check(token)
    if principal is None:
        service.metrics.auth_failures.labels(status="401").inc()
        if throttle is not None:
            throttle.failed(address)
        raise Unauthorized(f"the API token is not valid or was revoked: {HOW}")
    return principal


def require(*roles: str) -> Callable[..., Awaitable[Principal]]:
    """A FastAPI dependency admitting the gate's principal if it has one of ``roles`` (403, 429 otherwise)."""

    async def dependency(
        request: Request, credentials: HTTPAuthorizationCredentials | None = Security(bearer)
    ) -> Principal:
        service = request.app.state.service
        principal: Principal | None = getattr(request.state, "principal", None)
        if principal is None:  # the gate lets nobody through without one
            raise Unauthorized(f"this route needs an API token: {HOW}")
        if principal.role not in roles:
            service.metrics.auth_failures.labels(status="403").inc()
            raise Forbidden(
                f"user {principal.name!r} has role {principal.role!r}; {_route(request)} needs role "
                f"{' or '.join(roles)}. An admin can issue one with `hrlm users add NAME --role {roles[0]}`."
            )
        key = parse_token(credentials.credentials.strip()) if credentials is not None else None
        wait = service.limiter.hit(key or principal.name)
        if wait is not None:
            retry = max(1, math.ceil(wait))
            raise RateLimited(
                f"this token of user {principal.name!r} is over the rate limit of {service.settings.rate_limit:g} "
                f"requests a minute; retry after {retry} s.",
                retry_after=retry,
            )
        return principal

    return dependency


def _basic_password(credentials: str) -> str:
    """The password of HTTP Basic credentials (``base64(user:password)``); empty when they do not decode."""
    try:
        decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2].strip()


def _route(request: Request) -> str:
    """The route's template (``/v1/models/{version}``), not the path a client sent, for messages."""
    route = request.scope.get("route")
    return str(getattr(route, "path", None) or "this route")
