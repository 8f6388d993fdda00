"""A request through SecurityMiddleware leaves no reference cycle behind.

Objects in a cycle outlive their request until the cyclic garbage collector runs; on FastAPI that
collector took about a tenth of each request's time (docs/performance.md, "HTTP middleware").
Counted, not timed: ``gc.collect()`` returns how many unreachable objects it found.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Annotated, Any

import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route

from fundaments.bootstrap import Fundaments
from fundaments.security import User
from fundaments.web import SecurityMiddleware, authenticated_user, current_user
from test_web import PASSWORD, UA, login_token


@pytest.fixture
def collector_paused() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


async def call(app: Any, method: str, path: str, headers: dict[str, str], chunks: list[bytes]) -> int:
    """One request through the ASGI app, its body in ``chunks`` (no Content-Length: streamed)."""
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "https", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "client": ("203.0.113.7", 50000), "server": ("app.test", 443),
        "headers": [(b"host", b"app.test"), (b"user-agent", UA.encode()),
                    *((k.encode(), v.encode()) for k, v in headers.items())],
    }  # fmt: skip
    pending = list(chunks) or [b""]
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        body = pending.pop(0) if pending else b""
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def test_requests_through_the_middleware_leave_no_cyclic_garbage(
    fundaments: Fundaments, collector_paused: None
) -> None:
    async def me(request: Request) -> JSONResponse:
        user = authenticated_user(request)
        return JSONResponse({"user": user.username if user else None})

    async def swallow(request: Request) -> JSONResponse:
        try:
            await request.body()
        except Exception:  # as FastAPI does with a failed body read: the app answers 400 itself
            return JSONResponse({"detail": "bad body"}, 400)
        return JSONResponse({"read": True})

    async def read(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})  # BodyTooLarge leaves the app

    api = FastAPI()

    @api.get("/me")
    async def api_me(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"username": user.username}

    routes = [
        Route("/me", me),
        Route("/swallow", swallow, methods=["POST"]),
        Route("/read", read, methods=["POST"]),
        Mount("/api", api),
    ]
    middleware = Middleware(
        SecurityMiddleware, security=fundaments.security, max_body_bytes=1000, allowed_hosts=["app.test"]
    )
    app = Starlette(routes=routes, middleware=[middleware])
    await fundaments.security.register_user("alice", PASSWORD)
    token = await login_token(fundaments)
    cookie = {"cookie": f"__Host-session={token}"}
    bearer = {"authorization": f"Bearer {token}"}
    requests = [
        ("GET", "/me", cookie, [], 200),  # authenticated by the cookie
        ("GET", "/api/me", bearer, [], 200),  # FastAPI, Depends(current_user), bearer
        ("GET", "/me", {}, [], 200),  # anonymous
        ("GET", "/api/me", {"authorization": "Bearer not-a-session"}, [], 401),  # refused
        # a streamed body past the limit, the app answering itself: the 413 goes through the
        # send wrapper's own recursion; and the same body raising out of the app
        ("POST", "/swallow", bearer, [b"x" * 600, b"x" * 600], 413),
        ("POST", "/read", bearer, [b"x" * 600, b"x" * 600], 413),
    ]
    for method, path, headers, chunks, status in requests:
        assert await call(app, method, path, headers, chunks) == status  # warm: caches, lazy imports
    gc.collect()
    for method, path, headers, chunks, status in requests * 20:
        assert await call(app, method, path, headers, chunks) == status
    assert gc.collect() == 0
