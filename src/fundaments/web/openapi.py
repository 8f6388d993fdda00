"""How fundaments' guards appear in FastAPI's OpenAPI document, at no cost per request.

:func:`documented` makes a guard (``current_user``, ``require_permission(...)``'s dependency) an
instance of FastAPI's ``HTTPBearer``: FastAPI lists every ``SecurityBase`` dependency as the
operation's security requirement, so ``openapi.json`` has the ``bearer`` scheme, each guarded
operation its ``security``, and ``/docs`` an Authorize button. The guard's ``__call__`` is the
guard itself: one dependency, as before (extra documenting dependencies cost FastAPI's dependency
solver ~10 us each per request, bench/web.py). :func:`add_cookie_scheme` (install() applies it to
the generated document) adds the session cookie and the ``X-API-Key`` header as the alternatives
to the bearer token.

Without FastAPI installed a guard stays the plain function.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from starlette.requests import HTTPConnection

T = TypeVar("T")
Guard = Callable[[HTTPConnection], Awaitable[T]]

BEARER = "bearer"
COOKIE = "session cookie"
API_KEY = "api key"
BEARER_DESCRIPTION = "The session token (POST /auth/login answers it as `token`) or an API key (`fk_…`)."
API_KEY_SCHEME = {
    "type": "apiKey",
    "in": "header",
    "name": "X-API-Key",
    "description": "An API key (`fk_…`, from create_api_key); the same as Authorization: Bearer fk_…. "
    "What it may do is its owner's permissions narrowed to its scopes; no CSRF token, no session.",
}
COOKIE_SCHEME = {
    "type": "apiKey",
    "in": "cookie",
    "name": "__Host-session",
    "description": "Set by POST /auth/login for browsers (`session` on http://localhost); unsafe "
    "requests also need X-CSRF-Token from GET /auth/csrf.",
}

try:
    from fastapi.security import HTTPBearer
except ImportError:  # plain Starlette: nothing to document
    HTTPBearer = None  # type: ignore[assignment,misc]


def documented(guard: Guard[T], name: str) -> Guard[T]:
    """``guard`` as a dependency FastAPI documents as requiring the bearer scheme."""
    if HTTPBearer is None:
        return guard

    class DocumentedGuard(HTTPBearer):
        async def __call__(self, request: HTTPConnection) -> T:  # type: ignore[override]
            return await guard(request)

        def __repr__(self) -> str:
            return name

    documented_guard = DocumentedGuard(auto_error=False, scheme_name=BEARER, description=BEARER_DESCRIPTION)
    documented_guard.__doc__ = guard.__doc__
    setattr(documented_guard, "__name__", name)  # noqa: B010 - FastAPI and logs name a dependency so
    return documented_guard


def add_cookie_scheme(document: dict[str, Any]) -> dict[str, Any]:
    """The OpenAPI ``document`` with the session cookie and the API-key header beside the bearer
    token, wherever an operation requires the bearer scheme (each one alternative: a list of
    requirement objects is "any of")."""
    schemes = document.setdefault("components", {}).setdefault("securitySchemes", {})
    if BEARER not in schemes:
        return document
    schemes.setdefault(COOKIE, dict(COOKIE_SCHEME))
    schemes.setdefault(API_KEY, dict(API_KEY_SCHEME))
    for path in document.get("paths", {}).values():
        for operation in path.values():
            security = operation.get("security") if isinstance(operation, dict) else None
            if security and {BEARER: []} in security:
                for alternative in (COOKIE, API_KEY):
                    if {alternative: []} not in security:
                        security.append({alternative: []})
    return document
