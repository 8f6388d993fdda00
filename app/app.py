"""The example application: the console ``main.py`` serves with the started fundaments.

``build_app`` wires the pages of :mod:`app.console` behind ``fundaments.web.SecurityMiddleware``;
``start_application`` serves them with uvicorn on HOST:PORT until Ctrl-C / SIGTERM.
"""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from app.console import HERE, Console, Redirect
from app.secrets_store import SecretStore
from fundaments.bootstrap import Fundaments
from fundaments.web import SecurityMiddleware

log = logging.getLogger("app")


def build_app(fundaments: Fundaments, data_dir: Path | None = None) -> Starlette:
    """The console as an ASGI application; its own data (secrets) in ``data_dir`` (default ./var)."""
    data_dir = data_dir if data_dir is not None else Path("var")
    data_dir.mkdir(mode=0o700, exist_ok=True)
    secrets = SecretStore(data_dir / "console.db")
    console = Console(fundaments.security, secrets, fundaments.settings.app_name)

    async def health(_request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "services": fundaments.started()})

    async def redirect(_request: Request, exc: Exception) -> Response:
        assert isinstance(exc, Redirect)
        return RedirectResponse(exc.location, 303)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        titles = {403: "Not allowed", 404: "Not found", 405: "Not allowed"}
        return await console.render(
            request,
            "error.html",
            exc.status_code,
            title=titles.get(exc.status_code, "Error"),
            detail=exc.detail if exc.status_code == 403 else "There is nothing here.",
        )

    routes = [
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
        Route("/secrets/delete", console.secrets_delete, methods=["POST"]),
        Route("/admin/users", console.users_page, methods=["GET"]),
        Route("/admin/users", console.users_create, methods=["POST"]),
        Route("/admin/users/{user_id:int}/{action}", console.users_action, methods=["POST"]),
        Route("/admin/roles", console.roles_page, methods=["GET"]),
        Route("/admin/roles", console.roles_create, methods=["POST"]),
        Route("/admin/audit", console.audit_page),
        Route("/admin/audit/verify", console.audit_verify_all, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [
        Middleware(
            SecurityMiddleware,
            security=fundaments.security,
            trusted_proxies=fundaments.settings.trusted_proxies,
            public_paths=["/static/"],
        )
    ]
    app = Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={Redirect: redirect, HTTPException: http_error},
    )
    app.state.secrets = secrets
    return app


class _Server(uvicorn.Server):
    """uvicorn's server, minus re-raising SIGINT/SIGTERM after the graceful shutdown.

    uvicorn re-raises the signal so a bare script dies with it; here main.py still has to close
    the fundaments (database pools, background tasks), so the shutdown ends in a normal return.
    """

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True  # a second Ctrl-C: stop waiting for open connections
        self.should_exit = True


async def start_application(fundaments: Fundaments) -> None:
    """Serve the console on HOST:PORT until interrupted (Ctrl-C / SIGTERM)."""
    settings = fundaments.settings
    app = build_app(fundaments)
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
    )
    server = _Server(config)
    log.info("serving on http://%s:%s", settings.host, settings.port)
    try:
        await server.serve()
    finally:
        app.state.secrets.close()
