"""The example application: the console ``main.py`` serves with the started fundaments.

``build_app`` wires the pages of :mod:`app.console` behind ``fundaments.web.SecurityMiddleware``;
``start_application`` serves them with uvicorn on HOST:PORT until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import h11
import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Match, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Scope
from uvicorn.protocols.http.h11_impl import H11Protocol

from app.admin_audit import AuditPages
from app.admin_roles import RolePages
from app.admin_users import UserPages
from app.api_key_pages import ApiKeyPages
from app.console import HERE, Console, Redirect
from app.recovery_pages import RecoveryPages, hide_link_tokens
from app.secrets_store import SecretStore
from fundaments.bootstrap import Fundaments
from fundaments.config import Settings
from fundaments.errors import InvalidArgument
from fundaments.web import SecurityMiddleware

log = logging.getLogger("app")

Endpoint = Callable[[Request], Awaitable[Response]]


def build_app(fundaments: Fundaments, data_dir: Path | None = None) -> Starlette:
    """The console as an ASGI application; its own data (secrets) in ``data_dir`` (default ./var)."""
    data_dir = data_dir if data_dir is not None else Path("var")
    data_dir.mkdir(mode=0o700, exist_ok=True)
    secrets = SecretStore(data_dir / "console.db")
    settings = fundaments.settings
    console = Console(
        fundaments.security,
        secrets,
        settings.app_name,
        password_lengths=(settings.password_min_length, settings.password_max_length),
    )

    async def health(_request: Request) -> JSONResponse:
        # Anonymous: says only whether the console can serve, not which services run (issue 14).
        try:
            await fundaments.security.get_user(1)  # one primary-key read: the database answers
        except Exception as exc:  # any failure of the probe: "unavailable"
            log.warning("health check: the database did not answer (%s)", type(exc).__name__)
            return JSONResponse({"status": "unavailable"}, 503, headers={"retry-after": "5"})
        return JSONResponse({"status": "ok"})

    async def redirect(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Redirect)
        return RedirectResponse(exc.location, 303)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {400: "Bad request", 403: "Not allowed", 404: "Not found", 405: "Not allowed"}
        page = await console.render(
            request,
            "error.html",
            exc.status_code,
            title=titles.get(exc.status_code, "Error"),
            # 400 and 403 details are the console's own fixed sentences; never request text.
            detail=exc.detail if exc.status_code in (400, 403) else "There is nothing here.",
        )
        page.headers.update(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110 15.5.6; Starlette's Allow names only the first route's
            page.headers["allow"] = allowed_methods(routes, request.scope)
        return page

    async def invalid_argument(request: Request, exc: Exception) -> Response:
        # A facade refusal (a NUL byte, an over-long id) that no page caught: the client's input, a 400.
        assert isinstance(exc, InvalidArgument)
        log.info("refused %s %s: %s", request.method, request.url.path, exc)
        # Its messages are the facade's fixed sentences ("session_id must not contain NUL characters").
        return await http_error(request, HTTPException(400, f"The request was refused: {exc}."))

    routes = console_routes(console, health) + RecoveryPages(console, fundaments.settings).routes()
    middleware = [
        Middleware(
            SecurityMiddleware,
            security=fundaments.security,
            trusted_proxies=fundaments.settings.trusted_proxies,
            allowed_hosts=fundaments.settings.allowed_hosts,
            public_paths=["/static/"],
        )
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={Redirect: redirect, HTTPException: http_error, InvalidArgument: invalid_argument},
    )
    app.state.secrets = secrets
    return app


def console_routes(console: Console, health: Endpoint) -> list[BaseRoute]:
    """The console's route table (tests read it: every admin POST must refuse a non-admin)."""
    users, roles, audit = UserPages(console), RolePages(console), AuditPages(console)
    return [
        Route("/", console.home),
        Route("/health", health),
        Route("/login", console.login_page, methods=["GET"]),
        Route("/login", console.login_submit, methods=["POST"]),
        Route("/logout", console.logout_submit, methods=["POST"]),
        Route("/password", console.password_page, methods=["GET"]),
        Route("/password", console.password_submit, methods=["POST"]),
        Route("/dashboard", console.dashboard),
        Route("/sessions", console.sessions_page),
        Route("/sessions/revoke", console.sessions_revoke, methods=["POST"]),
        Route("/sessions/revoke-others", console.sessions_revoke_others, methods=["POST"]),
        Route("/secrets", console.secrets_page, methods=["GET"]),
        Route("/secrets", console.secrets_store, methods=["POST"]),
        Route("/secrets/reveal", console.secrets_reveal, methods=["POST"]),
        Route("/secrets/delete", console.secrets_delete_page, methods=["GET"]),
        Route("/secrets/delete", console.secrets_delete, methods=["POST"]),
        Route("/admin/users", console.users_page, methods=["GET"]),
        Route("/admin/users", console.users_create, methods=["POST"]),
        Route("/admin/users/{user_id:int}", users.detail, methods=["GET"]),
        Route("/admin/users/{user_id:int}/{action}", users.confirm_page, methods=["GET"]),
        Route("/admin/users/{user_id:int}/{action}", users.action, methods=["POST"]),
        Route("/admin/roles", roles.page, methods=["GET"]),
        Route("/admin/roles", roles.create, methods=["POST"]),
        Route("/admin/roles/{name}", roles.edit_page, methods=["GET"]),
        Route("/admin/roles/{name}/permissions", roles.set_permissions, methods=["POST"]),
        Route("/admin/roles/{name}/inherits", roles.set_inherits, methods=["POST"]),
        Route("/admin/roles/{name}/delete", roles.delete_page, methods=["GET"]),
        Route("/admin/roles/{name}/delete", roles.delete, methods=["POST"]),
        Route("/admin/audit", audit.page),
        Route("/admin/audit/verify", audit.verify_all, methods=["POST"]),
        *ApiKeyPages(console).routes(),  # /account/api-keys…, /admin/api-keys…
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]


def allowed_methods(routes: list[BaseRoute], scope: Scope) -> str:
    """The ``Allow`` value for the path of ``scope``: the methods of every route matching it."""
    methods: set[str] = set()
    for route in routes:
        if isinstance(route, Route) and route.methods and route.matches(scope)[0] is not Match.NONE:
            methods |= route.methods
    return ", ".join(sorted(methods))


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGINT/SIGTERM after the graceful shutdown.

    uvicorn re-raises the signal so a bare script dies with it; here main.py still has to close
    the fundaments (database pools, background tasks), so the shutdown ends in a normal return.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open connections
        self.should_exit = True


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one client may hold of the server: time to send a request head, idle keep-alive time,
    connections and requests at once, the size of a request head."""

    header_timeout: float = 10.0  # seconds from a request's first byte (or the connection) to its full head
    keep_alive_timeout: int = 5  # seconds an idle keep-alive connection stays open
    max_concurrency: int = 1000  # connections or running requests; beyond: 503 (uvicorn's limit_concurrency)
    max_header_bytes: int = 16 * 1024  # an unfinished request head larger than this: 400 and closed


def header_timeout_protocol(seconds: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection whose request head is not complete in ``seconds``.

    uvicorn's own timer runs only between requests (``timeout_keep_alive``), and h11 has none: a
    client sending one header byte at a time (slow loris) held a connection forever. The deadline
    starts with the connection, and again with the first byte of each following request; a body's
    pace is not bounded here (its size is, by SecurityMiddleware).
    """

    class HeaderTimeoutProtocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still waiting for the whole head
                if self._header_timer is None:
                    self._arm_header_timer()
            else:
                self._disarm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _arm_header_timer(self) -> None:
            self._header_timer = self.loop.call_later(seconds, self._header_timed_out)

        def _disarm_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _header_timed_out(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                log.info("closed a connection that sent no complete request head in %s s", seconds)
                self.transport.close()

    return HeaderTimeoutProtocol


DEFAULT_LIMITS = ServerLimits()


def server_config(app: ASGIApp, settings: Settings, limits: ServerLimits = DEFAULT_LIMITS) -> uvicorn.Config:
    """uvicorn's configuration for the console: HOST:PORT, the limits, no proxy headers."""
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        server_header=False,
        lifespan="off",
        # X-Forwarded-* are honoured by SecurityMiddleware for TRUSTED_PROXIES only; uvicorn's own
        # default would trust them from 127.0.0.1 (FORWARDED_ALLOW_IPS), so it is switched off.
        proxy_headers=False,
        http=header_timeout_protocol(limits.header_timeout),
        timeout_keep_alive=limits.keep_alive_timeout,
        limit_concurrency=limits.max_concurrency,
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )
    hide_link_tokens()  # uvicorn's access log (configured just now) would write the mailed links' tokens
    return config


async def start_application(fundaments: Fundaments, limits: ServerLimits = DEFAULT_LIMITS) -> None:
    """Serve the console on HOST:PORT until interrupted (Ctrl-C / SIGTERM)."""
    settings = fundaments.settings
    app = build_app(fundaments)
    server = _Server(server_config(app, settings, limits))
    log.info("serving on http://%s:%s", settings.host, settings.port)
    try:
        await server.serve()
    finally:
        app.state.secrets.close()
