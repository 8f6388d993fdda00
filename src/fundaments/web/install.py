"""``install(app)``: fundaments in front of a FastAPI or Starlette application in one line.

    app = FastAPI()
    install(app)            # SecurityMiddleware + a lifespan running initialize_fundaments()/close()

``initialize_fundaments()`` is async, so the started ``Security`` exists only once the server runs
the application's lifespan, while Starlette accepts middleware only before the application starts.
``install`` therefore adds a small middleware at once that builds the real
:class:`~fundaments.web.SecurityMiddleware` when the first request comes after start-up (a request
before that, or after shut-down, is answered 503), and wraps the application's own lifespan so
fundaments starts before it and closes after it.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from typing import Any

from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.routing import NoMatchFound
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fundaments.bootstrap import Fundaments, initialize_fundaments
from fundaments.config import Settings
from fundaments.errors import FundamentsError
from fundaments.security import Security
from fundaments.web.docs import secure_docs
from fundaments.web.errors import Refused, refused_handler
from fundaments.web.middleware import (
    DEFAULT_RAW_HEADERS,
    SERVICE_STARTING,
    SecurityMiddleware,
    _request_headers,
    get_context,
    send_refusal,
)
from fundaments.web.openapi import add_cookie_scheme

log = logging.getLogger(__name__)

Lifespan = Callable[[Any], AbstractAsyncContextManager[Any]]

# auth_router's routes a user who must change the password may reach, by route name: their paths
# are found with url_path_for, wherever (and under whatever prefix) the router is mounted.
OPEN_ROUTES = (
    "fundaments.auth.logout",
    "fundaments.auth.password",
    "fundaments.auth.me",
    "fundaments.auth.csrf",
)


class Installation:
    """What :func:`install` put on an application: the started fundaments while it runs."""

    def __init__(
        self,
        app: Starlette,
        settings: Settings | Callable[[], Settings] | None,
        fundaments: Fundaments | None,
        options: Mapping[str, Any],
    ) -> None:
        self.app = app
        self.settings = settings
        self.fundaments = fundaments
        self.owned = fundaments is None  # started (and closed) by the lifespan, not by the caller
        self.options = dict(options)
        self.middleware: SecurityMiddleware | None = None
        self.docs_csp: dict[str, str] = {}  # csp_by_path entries of FastAPI's docs pages (secure_docs)

    @property
    def security(self) -> Security | None:
        return self.fundaments.security if self.fundaments is not None else None

    def build(self, app: ASGIApp) -> SecurityMiddleware | None:
        """The SecurityMiddleware for the started fundaments (built once), or None before start."""
        if self.middleware is None and self.fundaments is not None:
            settings = self.fundaments.settings
            options = {
                "trusted_proxies": settings.trusted_proxies,
                "allowed_hosts": settings.allowed_hosts,
                "api_key_user_rate_limit": settings.api_key_user_rate_limit,
                **self.options,
            }
            # auth_router's logout, password, me and csrf stay reachable for a user who must change
            # the password, wherever the router is mounted (the routes are all known by now).
            exempt = list(options.get("password_change_exempt_paths", ("/logout",)))
            for name in OPEN_ROUTES:
                with suppress(NoMatchFound):  # NoMatchFound: auth_router is not mounted
                    exempt.append(self.app.url_path_for(name))
            options["password_change_exempt_paths"] = exempt
            if self.docs_csp:  # the application's own csp_by_path wins
                options["csp_by_path"] = {**self.docs_csp, **(options.get("csp_by_path") or {})}
            self.middleware = SecurityMiddleware(app, self.fundaments.security, **options)
        return self.middleware


class InstalledSecurity:
    """The middleware :func:`install` adds: SecurityMiddleware once fundaments has started."""

    def __init__(self, app: ASGIApp, installation: Installation) -> None:
        self.app = app
        self.installation = installation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.app(scope, receive, send)
            return
        middleware = self.installation.middleware or self.installation.build(self.app)
        if middleware is not None:
            await middleware(scope, receive, send)
        elif scope["type"] == "websocket":
            # 1013 "try again later": the server is up, fundaments is not (yet, or any more).
            await send({"type": "websocket.close", "code": 1013, "reason": "starting"})
        else:
            await send_refusal(send, _request_headers(scope), SERVICE_STARTING, (("retry-after", "1"),))


class HeadersOnErrors:
    """The outermost layer: a 5xx answered without the security headers gets them."""

    def __init__(self, app: ASGIApp, installation: Installation) -> None:
        self.app = app
        self.installation = installation

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 500:
                raw = list(message.get("headers", ()))
                if not any(name.lower() == b"x-content-type-options" for name, _ in raw):
                    middleware = self.installation.middleware
                    raw += middleware.raw_security_headers if middleware is not None else DEFAULT_RAW_HEADERS
                    message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_with_headers)


def install(
    app: Starlette,
    settings: Settings | Callable[[], Settings] | None = None,
    *,
    fundaments: Fundaments | None = None,
    docs_csp: bool = True,
    **options: Any,
) -> Installation:
    """Put fundaments in front of ``app`` (FastAPI or Starlette), before it starts.

    - adds the security middleware: sessions from cookie or bearer token, CSRF, body limits, trusted
      hosts, security headers; ``options`` are :class:`SecurityMiddleware`'s keyword arguments
      (``allowed_hosts`` and ``trusted_proxies`` default to the settings' ``ALLOWED_HOSTS`` and
      ``TRUSTED_PROXIES``);
    - wraps the application's lifespan: ``initialize_fundaments(settings)`` (settings from
      ``.env`` and the environment when None; a function returning Settings is called then, not
      at import) before the application's own start-up, ``close()``
      after its shut-down. A ConfigurationError stops the server with its message. Pass
      ``fundaments=`` to use one the application started itself: it is neither started nor closed;
    - makes FastAPI's ``/docs`` and ``/redoc`` work under the Content-Security-Policy, with
      self-hosted assets and a policy of their own (:mod:`fundaments.web.docs`); ``docs_csp=False``
      leaves FastAPI's docs routes as they are (the default policy then blocks them);
    - makes 401/403 refusals of :func:`current_user` and :func:`require_permission` JSON
      ``{"detail", "code"}``.

    Routes reach the started facade through the :func:`get_security` dependency.
    """
    if not isinstance(app, Starlette):
        raise TypeError(
            f"install() takes a FastAPI or Starlette application, not {type(app).__name__}; "
            "for another ASGI framework wrap it in SecurityMiddleware yourself (docs/web.md)"
        )
    if settings is not None and fundaments is not None:
        raise TypeError("install(): pass settings= or fundaments=, not both (fundaments has its settings)")
    if "security" in options:
        raise TypeError("install(): the security facade comes from fundaments=, not security=")
    installation = Installation(app, settings, fundaments, options)
    app.add_middleware(InstalledSecurity, installation=installation)  # raises once the app started
    app.add_exception_handler(Refused, refused_handler)  # type: ignore[arg-type]
    app.router.lifespan_context = _composed(installation, app.router.lifespan_context)
    # Starlette's ServerErrorMiddleware sits outside every user middleware: a 500 it answers (an
    # exception in a middleware added after install, outside ours) would lack the headers.
    build_stack = app.build_middleware_stack
    setattr(app, "build_middleware_stack", lambda: HeadersOnErrors(build_stack(), installation))  # noqa: B010
    generate = getattr(app, "openapi", None)
    if callable(generate):  # FastAPI: the session cookie beside the bearer scheme
        setattr(app, "openapi", lambda: add_cookie_scheme(generate()))  # noqa: B010
    if docs_csp:
        installation.docs_csp = secure_docs(app)
    app.state.fundaments_installation = installation
    return installation


def _composed(installation: Installation, own: Lifespan) -> Lifespan:
    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[Any]:
        if installation.owned:
            try:
                settings = installation.settings
                if callable(settings):
                    settings = settings()
                installation.fundaments = await initialize_fundaments(settings)
            except FundamentsError as exc:
                # uvicorn prints "Application startup failed. Exiting." after this line.
                log.error("fundaments could not start: %s", exc)
                raise
        try:
            async with own(app) as state:
                yield state
        finally:
            started, installation.middleware = installation.fundaments, None
            if installation.owned:
                installation.fundaments = None
                if started is not None:
                    await started.close()

    return lifespan


def get_security(connection: HTTPConnection) -> Security:
    """A dependency: the started :class:`Security` of this request's application.

    ``security: Security = Depends(get_security)`` in FastAPI; ``get_security(request)`` in a
    Starlette endpoint. Raises RuntimeError when the request did not pass the middleware.
    """
    return get_context(connection).security
