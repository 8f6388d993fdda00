"""Log in and out from a request, and the guards of routes: FastAPI dependencies and Starlette decorators.

Every helper works on a request that went through :class:`SecurityMiddleware`; the cookies they
change are written by the middleware on whatever response the route returns.

FastAPI (a :class:`~fundaments.web.Refused` becomes ``{"detail": ..., "code": ...}`` JSON with status
401 or 403 under :func:`~fundaments.web.install`, ``{"detail": ...}`` without it; on a WebSocket
route the guards close the handshake with 1008)::

    @api.get("/me")
    async def me(user: User = Depends(current_user)) -> dict[str, str]: ...

    @api.post("/articles", dependencies=[Depends(require_permission("articles:write"))])

    @api.post("/v1/chat", dependencies=[Depends(require_scope("models:invoke"))])  # API keys

Starlette::

    @permission_required("articles:write")
    async def create(request: Request) -> Response: ...

On a request authenticated by an API key (``Authorization: Bearer fk_…`` or ``X-API-Key``) the
user is the key's owner, and every permission check is the owner's permissions intersected with
the key's scopes: ``require_permission`` and ``require_scope`` alike, so a key never does more
than its scopes allow.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable

from starlette.exceptions import HTTPException, WebSocketException
from starlette.requests import HTTPConnection, Request
from starlette.responses import JSONResponse, Response

from fundaments.errors import InvalidArgument, PermissionDenied
from fundaments.security import LoginResult, Session, User
from fundaments.web.errors import Refused, refusal_body
from fundaments.web.middleware import API_KEY_NO_SESSION, WS_POLICY_VIOLATION, get_context
from fundaments.web.openapi import documented

Endpoint = Callable[[Request], Awaitable[Response]]


async def login(request: HTTPConnection, username: str, password: str, *, cookie: bool = True) -> LoginResult:
    """Log in with this request's client IP, User-Agent and device cookie.

    On success the session cookie and the device cookie are set on the response (``cookie=False``:
    neither, for a client that keeps the token itself) and the request counts as authenticated
    from here on; a session presented before is ended (fixation). On failure ``reason`` says why,
    for logs: show the user one generic message.

    Refused (403 ``api_key_session_refused``) on a request authenticated by an API key, before the
    password is even checked: a key cannot open a session (nor be used to try passwords).
    """
    ctx = get_context(request)
    if ctx.api_key is not None:
        no = API_KEY_NO_SESSION
        raise _refused(request, no.status, no.code, no.detail)
    result = await ctx.security.user_login(username, password, ctx.request_context)
    await _start_session(request, result, cookie=cookie)
    return result


async def verify_mfa(
    request: HTTPConnection, mfa_token: str, code: str, *, cookie: bool = True
) -> LoginResult:
    """Finish a login that answered ``MFA_REQUIRED`` with the second factor's ``code``, from this
    request's client (the one the password came from: the mfa_token is bound to it). On success
    exactly what :func:`login` does on success: the cookies, the authenticated request, fixation."""
    ctx = get_context(request)
    result = await ctx.security.verify_mfa(mfa_token, code, ctx.request_context)
    await _start_session(request, result, cookie=cookie)
    return result


async def _start_session(request: HTTPConnection, result: LoginResult, *, cookie: bool) -> None:
    if not result:
        return
    ctx = get_context(request)
    assert result.session is not None and result.session.token is not None
    previous = ctx.token
    if previous is not None and ctx.auth == "cookie":
        await ctx.security.user_logout(previous)
    ctx.start_session(result.session.token, result.user, result.session, cookie=cookie)
    request.scope["user"] = result.user
    if result.device_token and cookie:
        ctx.set_device_token(result.device_token)


async def logout(request: HTTPConnection) -> bool:
    """End this request's session and clear its cookie; False if there was no live session."""
    ctx = get_context(request)
    token = ctx.end_session()
    request.scope["user"] = None
    return await ctx.security.user_logout(token) if token is not None else False


async def use_rotated_session(request: HTTPConnection, session: Session | None) -> None:
    """After ``change_password(..., current_token=...)``: make its rotated session this client's
    cookie, with the account read afresh (``must_change_password`` is cleared by then)."""
    if session is not None and session.token is not None:
        ctx = get_context(request)
        user = await ctx.security.get_user(session.user_id)
        ctx.start_session(session.token, user, session, cookie=ctx.auth != "bearer")
        request.scope["user"] = user


def csrf_token(request: HTTPConnection) -> str:
    """The CSRF token a form on this request's page must send as its ``csrf_token`` field."""
    return get_context(request).csrf_token


def authenticated_user(request: HTTPConnection) -> User | None:
    """The user of this request's session (cookie or bearer token), or None — None too on a request
    authenticated by an API key.

    Pages for people (the console, anything that checks permissions without the key) must not act
    for a key: through them a key scoped ``models:invoke`` would reach everything its owner may do,
    and unsafe requests with a key skip CSRF. Routes meant for keys use :func:`require_scope` (or
    :func:`current_user` and ``get_context(request).api_key``)."""
    ctx = get_context(request)
    return ctx.user if ctx.api_key is None else None


# --- FastAPI dependencies (plain Starlette types: FastAPI accepts them; no FastAPI import) ----
# Typed HTTPConnection, which FastAPI injects on HTTP and WebSocket routes alike. On a WebSocket
# the refusal is a WebSocketException: FastAPI closes the handshake with 1008 (policy violation).
def _refused(
    connection: HTTPConnection, status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> Exception:
    if connection.scope["type"] == "websocket":
        return WebSocketException(WS_POLICY_VIOLATION, code.replace("_", " "))  # a short close reason
    return Refused(status, code, detail, headers=headers)


async def _current_user(request: HTTPConnection) -> User:
    """The user of this request or WebSocket; 401 (a WebSocket: close 1008) when there is none.

    Under FastAPI it is documented in OpenAPI as needing the bearer token or the session cookie
    (fundaments.web.openapi)."""
    user = get_context(request).user
    if user is None:
        raise _refused(
            request,
            401,
            "authentication_required",
            "Authentication required: send Authorization: Bearer <token> or the session cookie.",
            {"WWW-Authenticate": "Bearer"},
        )
    return user


current_user = documented(_current_user, "current_user")


async def _session_user(request: HTTPConnection) -> User:
    """The user of this request when it carries a session (cookie or bearer session token): 401
    without one, 403 ``session_required`` for an API key. For what only the person may do —
    list and end sessions, change the password: an API key acts for a program, never for its owner's
    account (a leaked CI key must not log its owner out everywhere or take over the password)."""
    user = await _current_user(request)
    if get_context(request).api_key is not None:
        raise _refused(
            request,
            403,
            "session_required",
            "This needs a logged-in session: an API key cannot manage sessions or the password.",
        )
    return user


session_user = documented(_session_user, "session_user")


def require_permission(permission: str) -> Callable[[HTTPConnection], Awaitable[User]]:
    """A dependency returning the user when they hold ``permission``.

    401 without a user; 403 (and an audited ``permission.denied``) without the permission. On a
    WebSocket route both are a close with 1008. On an API-key request the key's scopes must cover
    ``permission`` too (``check_permission(..., api_key=key)``).
    """
    return _permission_guard(
        permission,
        "require_permission",
        "permission_denied",
        f"Permission denied: this needs {permission!r}.",
    )


def require_scope(scope: str) -> Callable[[HTTPConnection], Awaitable[User]]:
    """A dependency returning the user when this request may use ``scope`` (``"models:invoke"``).

    On a request authenticated by an API key: the key's owner holds the permission ``scope`` and
    the key's scopes cover it (the owner's permissions intersected with the key's scopes, the RBAC
    cache: a role revoked from the owner narrows the key at once). On a session (cookie or bearer
    token): the user holds the permission ``scope``. 401 without authentication; 403 ``scope_denied``
    (audited ``permission.denied``) otherwise. On a WebSocket route both are a close with 1008.
    """
    if not isinstance(scope, str) or not scope:
        raise InvalidArgument("require_scope() takes a permission name, e.g. 'models:invoke'")
    return _permission_guard(
        scope,
        "require_scope",
        "scope_denied",
        f"Scope denied: this needs {scope!r}, which the API key's scopes and its owner's permissions "
        "(or the session user's) must both cover.",
    )


def _permission_guard(
    permission: str, kind: str, code: str, detail: str
) -> Callable[[HTTPConnection], Awaitable[User]]:
    async def dependency(request: HTTPConnection) -> User:
        user = await current_user(request)
        ctx = get_context(request)
        try:
            await ctx.security.require_permission(
                user.id, permission, request_data=ctx.request_context, api_key=ctx.api_key
            )
        except PermissionDenied:
            raise _refused(request, 403, code, detail) from None
        return user

    name = f"{kind}({permission!r})"
    dependency.__name__ = name
    return documented(dependency, name)


# --- Starlette route decorators ---------------------------------------------------------------
def _guarded(endpoint: Endpoint, check: Callable[[Request], Awaitable[object]]) -> Endpoint:
    """``endpoint`` behind ``check``: its HTTPException (401/403) becomes a JSON answer."""

    @functools.wraps(endpoint)
    async def guarded(request: Request) -> Response:
        try:
            await check(request)
        except HTTPException as exc:
            body = refusal_body(exc) if isinstance(exc, Refused) else {"detail": exc.detail}
            return JSONResponse(body, exc.status_code, headers=exc.headers)
        return await endpoint(request)

    return guarded


def login_required(endpoint: Endpoint) -> Endpoint:
    """A Starlette endpoint that answers 401 JSON unless the request is authenticated."""
    return _guarded(endpoint, current_user)


def permission_required(permission: str) -> Callable[[Endpoint], Endpoint]:
    """A Starlette endpoint that answers 401/403 JSON unless the user holds ``permission``."""
    check = require_permission(permission)
    return lambda endpoint: _guarded(endpoint, check)


def scope_required(scope: str) -> Callable[[Endpoint], Endpoint]:
    """A Starlette endpoint that answers 401/403 JSON unless the request may use ``scope``
    (:func:`require_scope`)."""
    check = require_scope(scope)
    return lambda endpoint: _guarded(endpoint, check)
