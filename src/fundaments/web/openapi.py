"""The security schemes :func:`~fundaments.web.current_user` declares, so FastAPI's OpenAPI document
lists them and ``/docs`` shows its Authorize button: ``HTTPBearer`` (the session token as
``Authorization: Bearer``) and ``APIKeyCookie`` (the session cookie).

They document only: the middleware has read the credentials before any route runs, so their
``__call__`` does nothing (and, typed ``HTTPConnection``, works on WebSocket routes too). Without
FastAPI installed both are None and the guards are plain Starlette functions.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import HTTPConnection

BEARER_SCHEME: Any = None
COOKIE_SCHEME: Any = None

try:
    from fastapi import Depends
    from fastapi.security import APIKeyCookie, HTTPBearer
except ImportError:  # plain Starlette: no OpenAPI document to describe anything in
    pass
else:

    class _DocumentedBearer(HTTPBearer):
        async def __call__(self, request: HTTPConnection) -> None:
            return None

    class _DocumentedCookie(APIKeyCookie):
        async def __call__(self, request: HTTPConnection) -> None:
            return None

    BEARER_SCHEME = Depends(
        _DocumentedBearer(
            auto_error=False,
            scheme_name="bearer",
            description="The session token: POST /auth/login answers it as `token`.",
        )
    )
    COOKIE_SCHEME = Depends(
        _DocumentedCookie(
            name="__Host-session",
            auto_error=False,
            scheme_name="session cookie",
            description="Set by POST /auth/login for browsers (`session` on http://localhost); "
            "unsafe requests also need X-CSRF-Token from GET /auth/csrf.",
        )
    )
