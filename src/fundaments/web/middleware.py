"""SecurityMiddleware: sessions from a cookie or a bearer token, CSRF, security headers, client IP.

Plain ASGI, in the manner of Starlette's own ``SessionMiddleware``: all configuration in the
constructor, a ``send`` wrapper for the response headers, no framework magic. It calls the
``Security`` facade only.

For each HTTP request it
1. resolves the client IP: the direct peer, or the ``X-Forwarded-For`` address (rightmost
   untrusted hop) and ``X-Forwarded-Proto`` only when the peer is one of ``trusted_proxies`` —
   uvicorn's ``ProxyHeadersMiddleware`` does this part;
2. reads ``Authorization: Bearer <token>`` or else the session cookie and calls
   ``validate_session`` with that IP and the User-Agent; the user and session go on the scope
   (``scope["user"]`` and ``scope["fundaments"]``, a :class:`WebContext`);
3. checks CSRF on unsafe methods that are not bearer-authenticated: a same-origin ``Origin`` (or,
   without one, ``Referer``) and a token, in the ``X-CSRF-Token`` header or the ``csrf_token``
   form field, derived from the session token (or, before a session exists, the double-submit
   value of the CSRF cookie). Failure: 403;
4. adds the security headers to every response and the cookies the request changed: a rotated
   session token, a cleared dead cookie, the cookies set by :func:`fundaments.web.login`.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import urlsplit

from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request, cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from fundaments.security import MAX_IP_LENGTH, Security, Session, User

log = logging.getLogger(__name__)

SCOPE_KEY = "fundaments"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
MAX_TOKEN_LENGTH = 256  # longer cookie or header values are garbage, not tokens
DEVICE_COOKIE_MAX_AGE = 365 * 24 * 3600  # seconds: the OWASP device cookie outlives sessions
USER_CACHE_SECONDS = 1.0  # how long an account read by the middleware is reused (DESIGN: <= 1 s)
MAX_CACHED_USERS = 10_000
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})

DEFAULT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)


@dataclass(frozen=True, slots=True)
class CookieNames:
    """The cookie names of one mode: ``__Host-`` names over https, bare names in the fallback."""

    session: str
    device: str
    csrf: str
    secure: bool


SECURE_COOKIES = CookieNames("__Host-session", "__Host-device", "__Host-csrf", secure=True)
LOCALHOST_COOKIES = CookieNames("session", "device", "csrf", secure=False)


def _cookie(name: str, value: str, *, secure: bool, max_age: int | None = None) -> str:
    # ASVS 5.0 3.3.1-3.3.4: HttpOnly, SameSite, host-only (__Host- needs Secure, Path=/, no Domain).
    parts = [f"{name}={value}", "Path=/", "HttpOnly", "SameSite=Lax"]
    if secure:
        parts.append("Secure")
    if max_age is not None:
        parts.append(f"Max-Age={max_age}")
    return "; ".join(parts)


def csrf_token_for(session_token: str) -> str:
    """The CSRF token of a session: an HMAC of the (secret) session token, so it needs no storage,
    works on every instance, and changes whenever the session token rotates."""
    return hmac.new(session_token.encode(), b"fundaments-csrf-v1", hashlib.sha256).hexdigest()


def _plausible_token(value: str | None) -> str | None:
    if not value or len(value) > MAX_TOKEN_LENGTH or not value.isascii():
        return None
    return value


@dataclass(slots=True, eq=False)
class WebContext:
    """What the middleware knows about one request; ``request.scope["fundaments"]``."""

    security: Security
    client_ip: str
    user_agent: str
    cookies: CookieNames
    user: User | None = None
    session: Session | None = None
    auth: Literal["cookie", "bearer"] | None = None
    device_token: str | None = None
    _token: str | None = field(default=None, repr=False)
    _presession_csrf: str | None = field(default=None, repr=False)
    _set_cookies: list[str] = field(default_factory=list, repr=False)
    _extra_headers: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _forget_user: Callable[[int], None] | None = field(default=None, repr=False)

    @property
    def request_data(self) -> dict[str, str]:
        """The ``request_data`` of this request for the Security facade."""
        data = {"ip_address": self.client_ip, "user_agent": self.user_agent}
        if self.device_token:
            data["device_token"] = self.device_token
        return data

    @property
    def csrf_token(self) -> str:
        """The token a form of this request's page must carry (``csrf_token`` field)."""
        if self._token is not None and self.auth == "cookie":
            return csrf_token_for(self._token)
        if self._presession_csrf is None:  # first anonymous page: issue the double-submit cookie
            self._presession_csrf = secrets.token_urlsafe(32)
            self._set_cookies.append(
                _cookie(self.cookies.csrf, self._presession_csrf, secure=self.cookies.secure)
            )
        return self._presession_csrf

    def start_session(self, token: str, user: User | None, session: Session | None) -> None:
        """Use ``token`` as this client's session from now on (the cookie is set on the response)."""
        if user is not None and self._forget_user is not None:
            self._forget_user(user.id)  # a login or password change: read the account afresh
        self._token, self.user, self.session, self.auth = token, user, session, "cookie"
        self._set_cookies.append(_cookie(self.cookies.session, token, secure=self.cookies.secure))

    def set_device_token(self, token: str) -> None:
        self.device_token = token
        self._set_cookies.append(
            _cookie(self.cookies.device, token, secure=self.cookies.secure, max_age=DEVICE_COOKIE_MAX_AGE)
        )

    def end_session(self) -> str | None:
        """Forget the session of this request and clear its cookie; the token, if there was one."""
        token, self._token, self.user, self.session, self.auth = self._token, None, None, None, None
        self._set_cookies.append(_cookie(self.cookies.session, "", secure=self.cookies.secure, max_age=0))
        return token

    @property
    def token(self) -> str | None:
        """The live session token of this request (after any rotation), or None."""
        return self._token


class SecurityMiddleware:
    """Authenticate, CSRF-check and harden every HTTP request of an ASGI application."""

    def __init__(
        self,
        app: ASGIApp,
        security: Security,
        *,
        trusted_proxies: Iterable[str] = (),  # IPs or networks whose X-Forwarded-* headers count
        allow_insecure_localhost: bool = True,  # plain-http cookies for http://localhost development
        allowed_origins: Iterable[str] = (),  # extra origins accepted for unsafe requests
        csrf_exempt_paths: Iterable[str] = (),  # exact paths without CSRF checks (e.g. webhooks)
        public_paths: Iterable[str] = (),  # path prefixes served without a session lookup (assets)
        max_form_bytes: int = 1_000_000,  # bodies read for the csrf_token form field, in bytes
        content_security_policy: str = DEFAULT_CSP,
        hsts_max_age: int = 63_072_000,  # seconds (two years), sent over https only
    ) -> None:
        self.app = app
        self.security = security
        self.allow_insecure_localhost = allow_insecure_localhost
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.csrf_exempt_paths = frozenset(csrf_exempt_paths)
        self.public_paths = tuple(public_paths)
        self.max_form_bytes = max_form_bytes
        self.hsts = f"max-age={hsts_max_age}; includeSubDomains"
        self.headers = [
            ("content-security-policy", content_security_policy),
            ("x-content-type-options", "nosniff"),
            ("referrer-policy", "same-origin"),
            ("x-frame-options", "DENY"),
            ("cross-origin-opener-policy", "same-origin"),
        ]
        self._raw_headers = [(name.encode(), value.encode()) for name, value in self.headers]
        self._raw_hsts = self.hsts.encode()
        proxies = [str(ipaddress.ip_network(p, strict=False)) for p in trusted_proxies]
        # uvicorn's implementation (rightmost untrusted X-Forwarded-For hop); none: the peer is the client.
        self._entry: ASGIApp = self._secured
        if proxies:
            self._entry = ProxyHeadersMiddleware(self._secured, proxies)  # type: ignore[arg-type,assignment]
        self._warned_insecure = False
        # user id -> (fetched at, User). Safe to reuse for USER_CACHE_SECONDS: disabling a user ends
        # their sessions (validate_session fails first), and the helpers drop entries they change.
        self._users: dict[int, tuple[float, User]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._entry(scope, receive, send)

    # --- one request ---------------------------------------------------------------------------
    async def _secured(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _request_headers(scope)
        cookie_names = self._cookie_names(scope, headers)
        cookies = cookie_parser(headers.get("cookie", ""))
        client = scope.get("client")
        client_ip = client[0] if client else "0.0.0.0"  # noqa: S104 - no peer (in-process tests)
        ctx = WebContext(
            security=self.security,
            # A forwarded "address" longer than any IP is garbage from the proxy's header: keep it
            # bounded (request_data refuses longer ones with ValueError, which would be a 500).
            client_ip=client_ip[:MAX_IP_LENGTH],
            user_agent=headers.get("user-agent", ""),
            cookies=cookie_names,
            device_token=_plausible_token(cookies.get(cookie_names.device)),
            _forget_user=self.forget_user,
        )
        ctx._presession_csrf = _plausible_token(cookies.get(cookie_names.csrf))
        scope[SCOPE_KEY] = ctx
        scope["user"] = None

        presented, auth = self._presented_token(headers, cookies.get(cookie_names.session))
        if self.public_paths and scope["path"].startswith(self.public_paths):
            # Assets: no lookup, and no clearing of a cookie that a parallel page request may
            # just have rotated (the old token is dead at once; clearing would log the user out).
            presented, auth = None, None
        if presented is not None:
            await self._authenticate(ctx, presented, auth)
        elif auth == "cookie":  # a cookie that cannot be a token
            ctx.end_session()
        scope["user"] = ctx.user

        # A browser never attaches an Authorization header cross-site: bearer requests need no CSRF token.
        if scope["method"] not in SAFE_METHODS and auth != "bearer":
            receive, refusal = await self._check_csrf(scope, receive, headers, ctx, presented)
            if refusal is not None:
                await self._refuse(scope, send, 413 if refusal == "too large" else 403, refusal)
                return

        https = scope.get("scheme") == "https"

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Raw header lists, not MutableHeaders: this runs on every response (bench/web.py).
                raw = list(message.get("headers", ()))
                present = {name.lower() for name, _ in raw}
                raw.extend(h for h in self._raw_headers if h[0] not in present)
                if https:
                    raw.append((b"strict-transport-security", self._raw_hsts))
                if ctx.user is not None or ctx._set_cookies:
                    raw = [h for h in raw if h[0].lower() != b"cache-control"]
                    raw.append((b"cache-control", b"no-store"))
                raw.extend((name.encode(), value.encode()) for name, value in ctx._extra_headers)
                raw.extend((b"set-cookie", cookie.encode()) for cookie in ctx._set_cookies)
                message["headers"] = raw
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _cookie_names(self, scope: Scope, headers: Mapping[str, str]) -> CookieNames:
        if scope.get("scheme") == "https" or not self.allow_insecure_localhost:
            return SECURE_COOKIES
        host = headers.get("host", "").lower()
        host = host[1 : host.find("]")] if host.startswith("[") else host.partition(":")[0]
        if host in LOOPBACK_NAMES or host.endswith(".localhost"):
            if not self._warned_insecure:
                self._warned_insecure = True
                log.warning(
                    "plain-http development fallback: the session cookie is 'session' without Secure "
                    "and without the __Host- prefix, for http://%s only; serve over https (or behind "
                    "a TRUSTED_PROXIES proxy sending X-Forwarded-Proto: https) in production",
                    host,
                )
            return LOCALHOST_COOKIES
        # Plain http from elsewhere: Secure cookies, which a browser will not store over http.
        return SECURE_COOKIES

    @staticmethod
    def _presented_token(
        headers: Mapping[str, str], cookie: str | None
    ) -> tuple[str | None, Literal["cookie", "bearer"] | None]:
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                return _plausible_token(value.strip()), "bearer"
        if cookie is not None:
            return _plausible_token(cookie), "cookie"
        return None, None

    async def _authenticate(
        self, ctx: WebContext, token: str, auth: Literal["cookie", "bearer"] | None
    ) -> None:
        session = await self.security.validate_session(token, ctx.request_data)
        user = await self._user(session.user_id) if session is not None else None
        if session is None or user is None or user.is_disabled:
            if auth == "cookie":
                ctx.end_session()  # a dead cookie is cleared, not sent forever
            return
        ctx.user, ctx.session, ctx.auth, ctx._token = user, session, auth, token
        if session.rotated_token:  # a privilege change: the old token is dead from now on
            ctx._token = session.rotated_token
            if auth == "cookie":
                ctx._set_cookies.append(
                    _cookie(ctx.cookies.session, session.rotated_token, secure=ctx.cookies.secure)
                )
            else:
                ctx._extra_headers.append(("x-session-token", session.rotated_token))

    async def _user(self, user_id: int) -> User | None:
        now = time.monotonic()
        cached = self._users.get(user_id)
        if cached is not None and now - cached[0] < USER_CACHE_SECONDS:
            return cached[1]
        user = await self.security.get_user(user_id)
        if len(self._users) >= MAX_CACHED_USERS:
            self._users.clear()
        if user is not None:
            self._users[user_id] = (now, user)
        return user

    def forget_user(self, user_id: int) -> None:
        """Drop the cached account of ``user_id`` (after a change to it by this process)."""
        self._users.pop(user_id, None)

    # --- CSRF ----------------------------------------------------------------------------------
    async def _check_csrf(
        self,
        scope: Scope,
        receive: Receive,
        headers: Mapping[str, str],
        ctx: WebContext,
        presented: str | None,
    ) -> tuple[Receive, str | None]:
        if scope["path"] in self.csrf_exempt_paths:
            return receive, None
        if not self._same_origin(scope, headers):
            return receive, "cross-origin request refused"
        if ctx.auth == "cookie" and presented is not None:
            expected = csrf_token_for(presented)  # the token the page was rendered with
        elif ctx._presession_csrf is not None:
            expected = ctx._presession_csrf
        else:
            return receive, "CSRF token missing"
        given = headers.get(CSRF_HEADER)
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if given is None and content_type in ("application/x-www-form-urlencoded", "multipart/form-data"):
            body = await self._read_body(receive)
            if body is None:
                return receive, "too large"
            try:
                form = await Request(dict(scope), _replay(body, receive)).form()
            except (HTTPException, MultiPartException):  # malformed multipart: no token to read
                return receive, "CSRF token missing (malformed form body)"
            receive = _replay(body, receive)
            field_value = form.get(CSRF_FORM_FIELD)
            given = field_value if isinstance(field_value, str) else None
            await form.close()
        if given is None:
            return receive, "CSRF token missing"
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return receive, "CSRF token invalid"
        return receive, None

    def _same_origin(self, scope: Scope, headers: Mapping[str, str]) -> bool:
        own = f"{scope.get('scheme', 'http')}://{headers.get('host', '')}".lower()
        origin = headers.get("origin")
        if origin is None:  # some older browsers omit Origin on same-origin POSTs; Referer then
            referer = headers.get("referer")
            if not referer:
                return False
            try:
                parts = urlsplit(referer)
            except ValueError:  # e.g. "http://[": an unparseable Referer is not same-origin
                return False
            origin = f"{parts.scheme}://{parts.netloc}"
        origin = origin.rstrip("/").lower()
        return origin == own or origin in self.allowed_origins

    async def _read_body(self, receive: Receive) -> bytes | None:
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_form_bytes:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _refuse(self, scope: Scope, send: Send, status: int, reason: str) -> None:
        log.warning("refused %s %s: %s", scope["method"], scope["path"], reason)
        body = f"Forbidden: {reason}\n".encode() if status == 403 else b"Request body too large\n"
        headers = [(name.encode(), value.encode()) for name, value in self.headers]
        headers += [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


_WANTED_HEADERS = frozenset(
    {
        b"host",
        b"cookie",
        b"user-agent",
        b"authorization",
        b"origin",
        b"referer",
        b"content-type",
        b"x-csrf-token",
    }
)


def _request_headers(scope: Scope) -> dict[str, str]:
    """The request headers the middleware reads, in one pass (the first of each; cookies joined)."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in _WANTED_HEADERS:
            key = name.decode("latin-1")
            if key not in found:
                found[key] = value.decode("latin-1")
            elif key == "cookie":  # HTTP/2 may split the Cookie header
                found[key] += "; " + value.decode("latin-1")
    return found


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands out ``body`` once, then defers to the real one (disconnects)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def get_context(scope_or_request: Any) -> WebContext:
    """The :class:`WebContext` of a request (a Starlette ``Request`` or an ASGI scope)."""
    scope = getattr(scope_or_request, "scope", scope_or_request)
    ctx = scope.get(SCOPE_KEY)
    if not isinstance(ctx, WebContext):
        raise RuntimeError("SecurityMiddleware is not installed on this application")
    return ctx
