"""The example application: what ``main.py`` hands the started fundaments to.

Until the web-integration issue lands this serves a health page and a status page; the console
(login, sessions, secrets, administration) arrives with that issue.
"""

from __future__ import annotations

import logging
import signal
from types import FrameType

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse
from starlette.routing import Route

from fundaments.bootstrap import Fundaments

log = logging.getLogger("app")

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def build_app(fundaments: Fundaments) -> Starlette:
    async def health(_request: Request) -> JSONResponse:
        return JSONResponse(
            {"status": "ok", "services": fundaments.started()},
            headers=SECURITY_HEADERS,
        )

    async def index(_request: Request) -> HTMLResponse:
        rows = "".join(
            f"<li>{name}: {'running' if up else 'disabled'}</li>" for name, up in fundaments.started().items()
        )
        page = f"<!doctype html><title>fundaments</title><h1>fundaments is running</h1><ul>{rows}</ul>"
        return HTMLResponse(page, headers=SECURITY_HEADERS)

    return Starlette(routes=[Route("/", index), Route("/health", health)])


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
    """Serve the example application on HOST:PORT until interrupted (Ctrl-C / SIGTERM)."""
    settings = fundaments.settings
    config = uvicorn.Config(
        build_app(fundaments),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        server_header=False,
        lifespan="off",
    )
    server = _Server(config)
    log.info("serving on http://%s:%s", settings.host, settings.port)
    await server.serve()
