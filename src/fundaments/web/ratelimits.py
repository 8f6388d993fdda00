"""``rate_limited(...)``: a route's rate limit, as a FastAPI dependency or a Starlette decorator.

    @app.post("/search", dependencies=[Depends(rate_limited("30/minute"))])       # FastAPI
    async def search(...): ...

    @rate_limited("5/hour", key="user", name="exports")                           # Starlette
    async def export(request: Request) -> Response: ...

Each request is counted by :meth:`Security.enforce_rate_limit` under a namespaced key:
``ip:<client IP>:<name>`` (the middleware's client IP, which honours ``trusted_proxies`` and
nothing else), ``user:<id>:<name>`` (the signed-in user; the IP for an anonymous request) or
``custom:<what key(request) returned>:<name>``. ``name`` defaults to the route's name, never the
raw path (``/items/1`` and ``/items/2`` share one limit). Allowed or refused, the decision goes in
the response's ``RateLimit``/``RateLimit-Policy`` headers; a refusal raises
:class:`~fundaments.errors.RateLimited`, which the middleware answers 429 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import sys
from collections.abc import Awaitable, Callable
from typing import Any, Literal, Protocol, overload

from starlette.exceptions import WebSocketException
from starlette.requests import HTTPConnection, Request
from starlette.responses import Response

from fundaments.config.settings import Settings
from fundaments.errors import InvalidArgument, RateLimited
from fundaments.security import Rate, RateLimitDecision, parse_rate
from fundaments.web.middleware import WebContext, get_context

Endpoint = Callable[[Request], Awaitable[Response]]
KeyFunction = Callable[[HTTPConnection], "str | Awaitable[str]"]
MAX_PART = 120  # characters of a client-chosen key part kept as is; longer ones are hashed
WS_TRY_AGAIN_LATER = 1013  # RFC 6455 7.4.1


class RateLimitGuard(Protocol):
    """What :func:`rate_limited` returns: a dependency, and a decorator of Starlette endpoints."""

    @overload
    def __call__(self, request: HTTPConnection, /) -> Awaitable[RateLimitDecision]: ...
    @overload
    def __call__(self, request: Endpoint, /) -> Endpoint: ...


def _bounded(part: str) -> str:
    """A key part of at most MAX_PART characters: longer ones become their SHA-256 (the limit key
    must stay under 200 characters whatever a key function or a route name brings)."""
    if len(part) <= MAX_PART:
        return part
    return "h" + hashlib.sha256(part.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def ip_key(address: str, name: str) -> str:
    """``ip:<address>:<name>``; an IPv6 address in braces (docs/ratelimits.md, "Keys")."""
    where = f"{{{address}}}" if ":" in address else address
    return f"ip:{where}:{_bounded(name)}"


def client_key(ctx: WebContext, kind: Literal["ip", "user"], name: str) -> str:
    """The limit key of this request's client: its user for ``user`` (its IP when anonymous)."""
    if kind == "user" and ctx.user is not None:
        return f"user:{ctx.user.id}:{_bounded(name)}"
    return ip_key(ctx.client_ip, name)


def _route_name(connection: HTTPConnection) -> str:
    route = connection.scope.get("route")
    name = getattr(route, "name", None)
    if isinstance(name, str) and name:
        return name
    endpoint = connection.scope.get("endpoint")
    return str(getattr(endpoint, "__name__", None) or "route")


async def enforce(
    connection: HTTPConnection,
    key: str,
    limit: str | Rate,
    cost: int = 1,
    *,
    policy: str,
    fail: Literal["closed", "open"] | None = None,
) -> RateLimitDecision:
    """Count this request under ``key`` against ``limit`` and record the decision for the response
    headers (under ``policy``); RateLimited when refused. The building block of :func:`rate_limited`,
    for routes whose key is known only inside (a body field, say)."""
    ctx = get_context(connection)
    try:
        decision = await ctx.security.enforce_rate_limit(key, limit, cost, fail=fail)
    except RateLimited as exc:
        if isinstance(exc.decision, RateLimitDecision):
            ctx.record_rate_limit(policy, exc.decision)
        if connection.scope["type"] == "websocket":
            raise WebSocketException(WS_TRY_AGAIN_LATER, "rate limited") from None
        raise
    ctx.record_rate_limit(policy, decision)
    return decision


def rate_limited(
    limit: str,
    *,
    key: Literal["ip", "user"] | KeyFunction = "ip",
    cost: int = 1,
    name: str | None = None,
    fail: Literal["closed", "open"] | None = None,
) -> RateLimitGuard:
    """A rate limit of ``limit`` (``"10/minute"``) on a route, per client IP (``key="ip"``), per
    signed-in user (``"user"``, the IP when anonymous) or per ``key(request)`` (a function, sync
    or async, returning a string). ``cost`` weighs each request; ``name`` names the limit (the
    key's last part and the policy name of the headers), by default the route's name — give each
    limit of a route with several its own. ``fail`` overrides RATE_LIMIT_FAIL for it.

    FastAPI: ``dependencies=[Depends(rate_limited("10/minute"))]`` (or a parameter
    ``decision: RateLimitDecision = Depends(...)``). Starlette: ``@rate_limited("10/minute")`` on
    the endpoint. A refusal raises RateLimited: 429 with Retry-After under the middleware (a close
    with 1013 on a WebSocket route). InvalidArgument at once for a malformed limit, cost or key.
    """
    rate = parse_rate(limit)  # InvalidArgument now, at import, rather than on the first request
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise InvalidArgument("cost must be a non-negative integer (the weight of one request)")
    if key not in ("ip", "user") and not callable(key):
        raise InvalidArgument('key must be "ip", "user" or a function of the request returning a string')

    async def check(connection: HTTPConnection, endpoint_name: str | None) -> RateLimitDecision:
        ctx = get_context(connection)
        policy = name or endpoint_name or _route_name(connection)
        if key == "ip" or key == "user":
            bucket = client_key(ctx, key, policy)
        else:
            value = key(connection)
            if inspect.isawaitable(value):
                value = await value
            if not isinstance(value, str) or not value:
                raise InvalidArgument("a rate_limited key function must return a non-empty string")
            bucket = f"custom:{_bounded(value)}:{_bounded(policy)}"
        return await enforce(connection, bucket, rate, cost, policy=policy, fail=fail)

    def guard(request: HTTPConnection) -> Any:
        if isinstance(request, HTTPConnection):  # the dependency: FastAPI awaits what it returns
            try:
                asyncio.get_running_loop()
            except RuntimeError:  # called in a worker thread: what comes back would never be awaited
                raise RuntimeError(
                    "rate_limited() was called as a synchronous dependency, so its limit would not "
                    "apply; this FastAPI does not recognize it as async: upgrade FastAPI"
                ) from None
            return check(request, None)
        endpoint: Endpoint = request  # type: ignore[unreachable]  # typed for FastAPI; a function here
        own_name = getattr(endpoint, "__name__", None)

        @functools.wraps(endpoint)
        async def limited(request: Request) -> Response:
            await check(request, own_name)
            return await endpoint(request)

        return limited

    # FastAPI awaits a dependency whose function is a coroutine function; guard is a plain one (so
    # that it can also decorate), marked as returning an awaitable. tests/test_web_ratelimits.py
    # proves both forms limit. A FastAPI that ignored the mark would run guard in a worker thread
    # and never await the check: guard then refuses (a 500) rather than let everything through.
    if sys.version_info >= (3, 12):
        inspect.markcoroutinefunction(guard)
    else:
        guard._is_coroutine = getattr(asyncio.coroutines, "_is_coroutine")  # type: ignore[attr-defined]  # noqa: B009
    guard.__name__ = f"rate_limited({limit!r})"
    return guard  # type: ignore[return-value]


# --- the limits of auth_router's (and the console's) anonymous mail and registration routes ----
def limit_setting(connection: HTTPConnection, name: str) -> str:
    """The rate limit setting ``name`` (``rate_limit_register``, ...) of the running Security, or
    its default when the facade was built without settings."""
    settings = get_context(connection).security.settings
    value = getattr(settings, name, None) if settings is not None else None
    return value if isinstance(value, str) else str(Settings.model_fields[name].default)


async def limit_per_ip(connection: HTTPConnection, policy: str, setting: str) -> RateLimitDecision:
    """Count this request against the limit setting ``setting`` per client IP; RateLimited beyond."""
    ctx = get_context(connection)
    limit = limit_setting(connection, setting)
    return await enforce(connection, client_key(ctx, "ip", policy), limit, policy=policy)


async def limit_per_target(
    connection: HTTPConnection,
    policy: str,
    target: str,
    setting: str = "rate_limit_account_mail_target",
) -> RateLimitDecision:
    """The same per target (an address's lookup key, ``user:<id>``), whatever IPs the requests come
    from, so one inbox cannot be flooded from many. The key holds a digest, never the address."""
    digest = hashlib.sha256(target.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return await enforce(
        connection, f"mail:{digest}:{policy}", limit_setting(connection, setting), policy=policy
    )
