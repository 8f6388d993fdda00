"""SecurityMiddleware: sessions from a cookie or a bearer token, CSRF, body limits, trusted hosts,
security headers, client IP.

Plain ASGI, in the manner of Starlette's own ``SessionMiddleware``: all configuration in the
constructor, a ``send`` wrapper for the response headers, no framework magic. It calls the
``Security`` facade only.

For each HTTP request it
0. refuses a ``Host`` outside ``allowed_hosts`` (400) and a body over ``max_body_bytes`` (413:
   a larger ``Content-Length`` at once, a body without one as it streams in, whatever carries the
   CSRF token);
1. resolves the client IP: the direct peer, or the ``X-Forwarded-For`` address (rightmost
   untrusted hop) and ``X-Forwarded-Proto`` only when the peer is one of ``trusted_proxies`` —
   uvicorn's ``ProxyHeadersMiddleware`` does this part;
2. reads ``Authorization: Bearer <token>`` or else the session cookie and calls
   ``validate_session`` with that IP and the User-Agent; the user and session go on the scope
   (``scope["user"]`` and ``scope["fundaments"]``, a :class:`WebContext`). A bearer token that is
   not a live session is refused (401); a user who must change the password reaches only the
   password-change and logout paths (403, or a redirect for a browser's GET). An API key
   (``Authorization: Bearer fk_…`` or ``X-API-Key``) is checked with ``validate_api_key`` instead:
   its owner is the user, the key ``WebContext.api_key``; a key that is not a live one is refused
   (401 ``api_key_invalid``), a cookie beside a key is ignored, and no cookie or session is ever
   issued on such a request. Then a key with a ``rate_limit`` (or ``api_key_user_rate_limit``
   set) is counted in one ``rate_limit_all`` decision: 429 with ``Retry-After`` when refused;
3. checks CSRF on unsafe methods not authenticated by a validated bearer token or API key: a
   same-origin ``Origin`` (or, without one, ``Referer``) and a token, in the ``X-CSRF-Token``
   header or the ``csrf_token`` form field, derived from the session token (or, before a
   session exists, the double-submit value of the CSRF cookie). Failure: 403;
4. adds the security headers to every response (refusals and 500s included) and the cookies the
   request changed: a rotated session token, a cleared dead cookie, the cookies set by
   :func:`fundaments.web.login`; a ``Location`` pointing at the request's own host becomes relative;
5. answers an uncaught exception of the application itself: ``ServiceUnavailable`` (a full
   hashing pool) is 503 with ``Retry-After``, ``RateLimited`` 429, anything else a generic 500.

Every refusal is JSON ``{"detail": ..., "code": ...}`` for API clients (``Accept: application/json``,
a JSON body or a bearer token) and plain text for browsers, with one of the stable ``code`` values
of :class:`Refusal`.

A WebSocket handshake gets the Host check, the client IP and authentication the same way, from
``Authorization: Bearer``, the subprotocol pair ``["fundaments.bearer", "<token>"]`` or the session
cookie; the cookie only with a same-origin (or ``allowed_origins``) ``Origin``, against cross-site
WebSocket hijacking. A refused handshake is never accepted (see docs/web.md, "WebSockets").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import json
import logging
import math
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

from fundaments.config.settings import DEFAULT_ALLOWED_HOSTS
from fundaments.errors import FundamentsError, RateLimited, ServiceUnavailable
from fundaments.security import (
    API_KEY_PREFIX,
    MAX_IP_LENGTH,
    ApiKey,
    RateLimitDecision,
    RequestContext,
    Security,
    Session,
    User,
    parse_rate,
)
from fundaments.web.errors import Refused
from fundaments.web.ratelimit_headers import rate_limit_headers, retry_after_seconds

log = logging.getLogger(__name__)

SCOPE_KEY = "fundaments"
CSRF_FORM_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
MAX_TOKEN_LENGTH = 256  # longer cookie or header values are garbage, not tokens
DEVICE_COOKIE_MAX_AGE = 365 * 24 * 3600  # seconds: the OWASP device cookie outlives sessions
USER_CACHE_SECONDS = 1.0  # how long an account read by the middleware is reused (DESIGN: <= 1 s)
MAX_CACHED_USERS = 10_000
DRAIN_FACTOR = 4  # a refused body up to 4x max_body_bytes more is read and dropped before the 413
DRAIN_SECONDS = 5.0  # ... if it arrives within this time
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
RATE_LIMIT_LOG_SECONDS = 60.0  # one "429 for" line per method and path this often, not one per refusal
MAX_RATE_LIMIT_LOG_PATHS = 1_000

DEFAULT_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
# Features a console never needs, switched off for the page and every frame. Only names Chromium
# recognizes (an unknown one, such as the retired interest-cohort, logs a console error); Firefox
# and Safari ignore the header.
DEFAULT_PERMISSIONS_POLICY = (
    "accelerometer=(), autoplay=(), camera=(), display-capture=(), geolocation=(), gyroscope=(), "
    "magnetometer=(), microphone=(), midi=(), payment=(), publickey-credentials-get=(self), "
    "screen-wake-lock=(), usb=(), xr-spatial-tracking=()"
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
    auth: Literal["cookie", "bearer", "api_key"] | None = None
    # The API key that authenticated this request (``auth == "api_key"``; ``user`` is its owner).
    api_key: ApiKey | None = None
    device_token: str | None = None
    _token: str | None = field(default=None, repr=False)
    _presession_csrf: str | None = field(default=None, repr=False)
    _set_cookies: list[str] = field(default_factory=list, repr=False)
    _extra_headers: list[tuple[str, str]] = field(default_factory=list, repr=False)
    _forget_user: Callable[[int], None] | None = field(default=None, repr=False)
    _request_context: RequestContext | None = field(default=None, repr=False)
    # (policy name, decision) of the rate limits this request was counted against: None (the
    # usual case, no cost) or the RateLimit headers of its response.
    _rate_limits: list[tuple[str, RateLimitDecision]] | None = field(default=None, repr=False)

    @property
    def request_data(self) -> dict[str, str]:
        """The ``request_data`` of this request for the Security facade, as the seed's dict."""
        data = {"ip_address": self.client_ip, "user_agent": self.user_agent}
        if self.device_token:
            data["device_token"] = self.device_token
        return data

    @property
    def request_context(self) -> RequestContext:
        """The same as a RequestContext, built (and checked) once per request: what the middleware
        and the helpers pass to the facade."""
        found = self._request_context
        device = self.device_token or None
        if found is None or found.device_token != device:
            found = self._request_context = RequestContext(self.client_ip, self.user_agent, device)
        return found

    @property
    def csrf_token(self) -> str:
        """The token a form of this request's page must carry (``csrf_token`` field); "" on an
        API-key request, which needs none and never gets a cookie."""
        if self._token is not None and self.auth == "cookie":
            return csrf_token_for(self._token)
        if self.api_key is not None:
            return ""
        if self._presession_csrf is None:  # first anonymous page: issue the double-submit cookie
            self._presession_csrf = secrets.token_urlsafe(32)
            self._set_cookies.append(
                _cookie(self.cookies.csrf, self._presession_csrf, secure=self.cookies.secure)
            )
        return self._presession_csrf

    def start_session(
        self, token: str, user: User | None, session: Session | None, *, cookie: bool = True
    ) -> None:
        """Use ``token`` as this client's session from now on: the cookie is set on the response,
        unless ``cookie`` is False (a client that sends the token as a bearer token instead).

        Refused (403 ``api_key_session_refused``) on an API-key request: a key cannot open a session."""
        if self.api_key is not None:
            raise _no_session_refusal()
        if user is not None and self._forget_user is not None:
            self._forget_user(user.id)  # a login or password change: read the account afresh
        self._token, self.user, self.session = token, user, session
        self.auth = "cookie" if cookie else "bearer"
        if cookie:
            self._set_cookies.append(_cookie(self.cookies.session, token, secure=self.cookies.secure))

    def set_device_token(self, token: str) -> None:
        if self.api_key is not None:
            raise _no_session_refusal()
        self.device_token = token
        self._set_cookies.append(
            _cookie(self.cookies.device, token, secure=self.cookies.secure, max_age=DEVICE_COOKIE_MAX_AGE)
        )

    def end_session(self) -> str | None:
        """Forget the session of this request and clear its cookie; the token, if there was one.

        A bearer session leaves the cookie alone: that is another session, which lives on. An
        API-key request has no session: nothing ends, no cookie is touched, the key stays valid."""
        if self.api_key is not None:
            return None
        token, bearer = self._token, self.auth == "bearer"
        self._token, self.user, self.session, self.auth = None, None, None, None
        if not bearer:
            self._set_cookies.append(_cookie(self.cookies.session, "", secure=self.cookies.secure, max_age=0))
        return token

    @property
    def token(self) -> str | None:
        """The live session token of this request (after any rotation), or None."""
        return self._token

    def record_rate_limit(self, policy: str, decision: RateLimitDecision) -> None:
        """Put ``decision`` (under the policy name ``policy``) in the ``RateLimit`` and
        ``RateLimit-Policy`` headers of this request's response, allowed or refused alike."""
        if self._rate_limits is None:
            self._rate_limits = [(policy, decision)]
        else:
            self._rate_limits.append((policy, decision))

    def rate_limits_lack(self, decision: RateLimitDecision) -> bool:
        """Whether ``decision`` (this very object) is not recorded yet."""
        return all(seen is not decision for _, seen in self._rate_limits or ())

    @property
    def rate_limits(self) -> tuple[tuple[str, RateLimitDecision], ...]:
        """The (policy name, decision) pairs recorded for this request so far."""
        return tuple(self._rate_limits or ())


class BodyTooLarge(FundamentsError):
    """A request body grew past ``max_body_bytes`` (the middleware answers 413)."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """One way the middleware refuses a request: status, stable ``code``, a message for the client."""

    status: int
    code: str
    detail: str


HOST_NOT_ALLOWED = Refusal(400, "host_not_allowed", "Invalid Host header.")
BODY_TOO_LARGE = Refusal(413, "body_too_large", "Request body too large.")
CROSS_ORIGIN = Refusal(
    403,
    "cross_origin",
    "Forbidden: cross-origin request refused; send it from this site's own pages "
    "(or list the origin in allowed_origins).",
)
CSRF_MISSING = Refusal(
    403,
    "csrf_missing",
    "Forbidden: CSRF token missing; send the X-CSRF-Token header (the csrf_token of GET /auth/csrf, "
    "with auth_router) or the csrf_token form field.",
)
CSRF_MALFORMED = Refusal(403, "csrf_missing", "Forbidden: CSRF token missing (malformed form body).")
CSRF_INVALID = Refusal(403, "csrf_invalid", "Forbidden: CSRF token invalid; reload the page and try again.")
SESSION_INVALID = Refusal(
    401, "session_invalid", "The bearer token is not a live session; log in again for a new one."
)
API_KEY_INVALID = Refusal(
    401,
    "api_key_invalid",
    "The API key is not valid (mistyped, unknown, revoked, expired, or not allowed from this address); "
    "check it, or ask its owner for a new one.",
)
API_KEY_NO_SESSION = Refusal(
    403,
    "api_key_session_refused",
    "An API-key request cannot open a session: log in without the API key (the key authenticates "
    "each request by itself).",
)
PASSWORD_CHANGE_REQUIRED = Refusal(
    403, "password_change_required", "Change your password first; until then only that and logging out work."
)
SERVICE_BUSY = Refusal(503, "service_busy", "The service is busy; retry in a moment.")
SERVICE_STARTING = Refusal(503, "service_starting", "The service is starting or stopping; retry in a moment.")
RATE_LIMITED = Refusal(429, "rate_limited", "Too many requests; retry later.")


def rate_limited_answer(scope: Scope, exc: RateLimited) -> tuple[Refusal, tuple[tuple[str, str], ...]]:
    """The 429 refusal of ``exc`` and its ``Retry-After`` (whole seconds, rounded up, at least 1).

    The decision it carries joins the request's recorded rate limits (under the policy name
    ``default`` unless a helper recorded it already), so the answer, sent through the middleware,
    has the ``RateLimit`` and ``RateLimit-Policy`` headers too."""
    seconds = retry_after_seconds(exc.retry_after)
    ctx = scope.get(SCOPE_KEY)
    decision = exc.decision
    if (
        isinstance(ctx, WebContext)
        and isinstance(decision, RateLimitDecision)
        and ctx.rate_limits_lack(decision)
    ):
        ctx.record_rate_limit("default", decision)
    detail = f"Too many requests; retry after {seconds} s."
    return Refusal(RATE_LIMITED.status, RATE_LIMITED.code, detail), (("retry-after", str(seconds)),)


SERVER_ERROR = Refusal(500, "server_error", "Internal server error.")


def _no_session_refusal() -> Refused:
    return Refused(API_KEY_NO_SESSION.status, API_KEY_NO_SESSION.code, API_KEY_NO_SESSION.detail)


class _BoundedReceive:
    """``receive`` counting the body as it streams in; past ``limit`` bytes it raises BodyTooLarge."""

    __slots__ = ("done", "limit", "receive", "size", "tripped")

    def __init__(self, receive: Receive, limit: int) -> None:
        self.receive, self.limit, self.size, self.tripped, self.done = receive, limit, 0, False, False

    async def __call__(self) -> Message:
        message = await self.receive()
        if message["type"] == "http.request":
            self.size += len(message.get("body", b""))
            self.done = not message.get("more_body", False)
            if self.size > self.limit:
                self.tripped = True
                raise BodyTooLarge(f"request body over {self.limit} bytes")
        else:
            self.done = True
        return message

    async def drain(self, most: int) -> None:
        """Read and drop the rest of a refused body, if it ends within ``most`` more bytes and
        DRAIN_SECONDS. A server that closes the connection with the body unread makes the client's
        kernel see a reset, and most clients then lose the 413 they were sent (nginx's "lingering
        close" does the same). A larger or slower body is cut off: the 413 goes out regardless."""
        drained = 0
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_SECONDS):
                while not self.done and drained <= most:
                    message = await self.receive()
                    if message["type"] != "http.request":
                        break
                    drained += len(message.get("body", b""))
                    self.done = not message.get("more_body", False)


class SecurityMiddleware:
    """Authenticate, CSRF-check, bound and harden every HTTP request of an ASGI application."""

    def __init__(
        self,
        app: ASGIApp,
        security: Security,
        *,
        trusted_proxies: Iterable[str] = (),  # IPs or networks whose X-Forwarded-* headers count
        allowed_hosts: Iterable[
            str
        ] = DEFAULT_ALLOWED_HOSTS,  # Host names answered; "*.x" subdomains, "*" any
        allow_insecure_localhost: bool = True,  # plain-http cookies for http://localhost development
        allowed_origins: Iterable[str] = (),  # extra origins accepted for unsafe requests
        csrf_exempt_paths: Iterable[str] = (),  # exact paths without CSRF checks (e.g. webhooks)
        public_paths: Iterable[str] = (),  # path prefixes served without a session lookup (assets)
        max_body_bytes: int = 1_000_000,  # every request body, in bytes; larger ones get 413
        max_form_bytes: int | None = None,  # the former name of max_body_bytes (wins when given)
        password_change_path: str = "/password",  # noqa: S107 - a path; where a user who must change the password does it
        password_change_exempt_paths: Iterable[str] = ("/logout",),  # further exact paths they may reach
        content_security_policy: str = DEFAULT_CSP,
        # path prefix -> the CSP of the responses under it, instead of content_security_policy
        # (the longest matching prefix wins; "/docs" covers /docs and /docs/..., not /docsearch)
        csp_by_path: Mapping[str, str] | None = None,
        permissions_policy: str = DEFAULT_PERMISSIONS_POLICY,
        hsts_max_age: int = 63_072_000,  # seconds (two years), sent over https only
        # all of one owner's API keys together ("N/minute"), beside each key's own rate_limit;
        # install() passes API_KEY_USER_RATE_LIMIT
        api_key_user_rate_limit: str | None = None,
    ) -> None:
        self.app = app
        self.security = security
        self.allow_insecure_localhost = allow_insecure_localhost
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in allowed_origins)
        self.csrf_exempt_paths = frozenset(csrf_exempt_paths)
        self.public_paths = tuple(public_paths)
        self.max_body_bytes = max_form_bytes if max_form_bytes is not None else max_body_bytes
        self.max_drain_bytes = DRAIN_FACTOR * self.max_body_bytes  # read past a refusal at most
        self._too_large = Refusal(
            413, BODY_TOO_LARGE.code, f"Request body too large: the limit is {self.max_body_bytes} bytes."
        )
        self.password_change_path = password_change_path
        if api_key_user_rate_limit is not None:
            parse_rate(api_key_user_rate_limit)  # InvalidArgument now, not on the first key's request
        self.api_key_user_rate_limit = api_key_user_rate_limit
        self.password_change_paths = frozenset({password_change_path, *password_change_exempt_paths})
        hosts = [h.strip().lower() for h in allowed_hosts]
        hosts = [h[1:-1] if h.startswith("[") and h.endswith("]") else h for h in hosts]
        self.any_host = "*" in hosts
        self.allowed_hosts = frozenset(h for h in hosts if not h.startswith("*"))
        self.allowed_host_suffixes = tuple(h[1:] for h in hosts if h.startswith("*."))
        self.hsts = f"max-age={hsts_max_age}; includeSubDomains"
        self.headers = security_headers(content_security_policy, permissions_policy)
        self._raw_headers = [(name.encode(), value.encode()) for name, value in self.headers]
        # Longest prefix first, each with its whole header list built once, so a response costs one
        # prefix scan (and nothing at all without the mapping).
        self._raw_headers_by_path: list[tuple[str, list[tuple[bytes, bytes]]]] = []
        for prefix, csp in sorted((csp_by_path or {}).items(), key=lambda item: -len(item[0].rstrip("/"))):
            raw = [(n.encode(), v.encode()) for n, v in security_headers(csp, permissions_policy)]
            self._raw_headers_by_path.append((prefix.rstrip("/"), raw))
        self._csp_prefixes = tuple(prefix for prefix, _ in self._raw_headers_by_path)
        self._added_names = frozenset(name for name, _ in self._raw_headers)  # the same on every path
        self._raw_hsts = self.hsts.encode()
        proxies = [str(ipaddress.ip_network(p, strict=False)) for p in trusted_proxies]
        # uvicorn's implementation (rightmost untrusted X-Forwarded-For hop); none: the peer is the client.
        self._entry: ASGIApp = self._secured
        if proxies:
            self._entry = ProxyHeadersMiddleware(self._secured, proxies)  # type: ignore[arg-type,assignment]
        self._websocket_entry: ASGIApp = self._websocket
        if proxies:
            self._websocket_entry = ProxyHeadersMiddleware(self._websocket, proxies)  # type: ignore[arg-type,assignment]
        self._warned_insecure = False
        self._warned_no_api_keys = False
        # user id -> (fetched at, User). Safe to reuse for USER_CACHE_SECONDS: disabling a user ends
        # their sessions (validate_session fails first), and the helpers drop entries they change.
        self._users: dict[int, tuple[float, User]] = {}
        # "METHOD /path" -> (when its 429 was last logged, refusals since): a flood of refusals,
        # what rate limits are for, must not become a flood of log lines.
        self._rate_limit_logged: dict[str, tuple[float, int]] = {}

    @property
    def raw_security_headers(self) -> list[tuple[bytes, bytes]]:
        """The headers every response gets (HSTS apart), as raw ASGI pairs."""
        return self._raw_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket_entry(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        await self._entry(scope, receive, send)

    # --- one request ---------------------------------------------------------------------------
    async def _secured(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _request_headers(scope)
        host = _hostname(headers.get("host", ""))
        if not self._host_allowed(host):
            # The hint goes to the log only; the client learns nothing about the configuration.
            log.warning(
                "refused %s %s: Host %r is not in ALLOWED_HOSTS (add it there to serve it)",
                scope["method"], scope["path"], host[:100],
            )  # fmt: skip
            await self._refuse(send, headers, HOST_NOT_ALLOWED)
            return
        bounded = _BoundedReceive(receive, self.max_body_bytes)

        cookie_names = self._cookie_names(scope, host)
        cookies = cookie_parser(headers.get("cookie", ""))
        ctx = self._context(scope, headers, cookie_names, cookies)
        ctx._presession_csrf = _plausible_token(cookies.get(cookie_names.csrf))
        scope[SCOPE_KEY] = ctx
        scope["user"] = None

        https = scope.get("scheme") == "https"
        own_host = headers.get("host", "").lower()
        started = False
        replaced = False  # the app's response is dropped: the body limit tripped before it started
        own = False  # the message is the middleware's own answer

        async def send_wrapper(message: Message) -> None:
            nonlocal started, replaced, own
            if replaced and not own:
                return
            if message["type"] == "http.response.start":
                if bounded.tripped and not own:
                    # The app caught BodyTooLarge (FastAPI turns a failed body read into a 400).
                    replaced = own = True
                    await bounded.drain(self.max_drain_bytes)
                    # (F821: ruff reads the ``del`` at the end of _secured as "never defined")
                    await self._refuse(send_wrapper, headers, self._too_large, CONNECTION_CLOSE)  # noqa: F821
                    own = False  # what the app sends after this is dropped
                    return
                started = True
                # Raw header lists, not MutableHeaders: this runs on every response (bench/web.py).
                raw = list(message.get("headers", ()))
                present = {name.lower() for name, _ in raw}
                added = self._path_headers(scope) if self._raw_headers_by_path else self._raw_headers
                if present.isdisjoint(self._added_names):  # the usual case: the app set none of them
                    raw += added
                else:
                    raw.extend(h for h in added if h[0] not in present)
                if https:
                    raw.append((b"strict-transport-security", self._raw_hsts))
                if ctx.user is not None or ctx._set_cookies:
                    if b"cache-control" in present:
                        raw = [h for h in raw if h[0].lower() != b"cache-control"]
                    raw.append(NO_STORE)
                if b"location" in present:  # Starlette builds redirects from the Host header
                    raw = [
                        (n, _relative_location(v, own_host) if n.lower() == b"location" else v)
                        for n, v in raw
                    ]
                if ctx._extra_headers:
                    raw.extend((name.encode(), value.encode()) for name, value in ctx._extra_headers)
                if ctx._rate_limits is not None:
                    raw.extend((n.encode(), v.encode()) for n, v in rate_limit_headers(ctx._rate_limits))
                if ctx._set_cookies and ctx.api_key is None:  # an API-key request never gets a cookie
                    raw.extend((b"set-cookie", cookie.encode()) for cookie in ctx._set_cookies)
                message["headers"] = raw
            await send(message)

        length = headers.get("content-length")
        if length is not None and length.isascii() and length.isdigit() and int(length) > self.max_body_bytes:
            # Refused before anything reads it: no session lookup, no byte of the body.
            log.warning(
                "refused %s %s: %s (Content-Length)", scope["method"], scope["path"], BODY_TOO_LARGE.code
            )
            own = True
            if int(length) <= self.max_body_bytes + self.max_drain_bytes:
                await bounded.drain(self.max_drain_bytes + self.max_body_bytes)
            await self._refuse(send_wrapper, headers, self._too_large, CONNECTION_CLOSE)
            return
        try:
            receive, refusal = await self._admit(scope, bounded, headers, ctx, cookies)
            if refusal is not None:
                own = True
                log.warning("refused %s %s: %s", scope["method"], scope["path"], refusal.code)
                extra = BEARER_CHALLENGE if refusal in UNAUTHENTICATED else ()
                if refusal is PASSWORD_CHANGE_REQUIRED and _browser_page(scope, headers):
                    await self._redirect(send_wrapper, self.password_change_path)
                else:
                    await self._refuse(send_wrapper, headers, refusal, extra)
                return
            await self.app(scope, receive, send_wrapper)
        except Exception as exc:
            if started:
                raise  # the response is on its way: the server closes the connection
            own = True
            if bounded.tripped:
                await bounded.drain(self.max_drain_bytes)
            await self._answer_exception(scope, send_wrapper, headers, exc, bounded.tripped)
        finally:
            # send_wrapper calls itself (a tripped body limit's 413 goes through it), so it holds
            # itself in its closure: a reference cycle per request, which kept the context, the
            # session and the closure cells (23 objects) alive until the cyclic garbage collector
            # ran, about 10 % of a request's time on FastAPI (bench/web.py, docs/performance.md).
            # Emptying its cell frees them when the request ends. Nothing calls it after that: an
            # ASGI app sends nothing once its call has returned.
            del send_wrapper

    async def _answer_exception(
        self, scope: Scope, send: Send, headers: Mapping[str, str], exc: Exception, too_large: bool
    ) -> None:
        """The answer to an exception that left the app before its response started."""
        where = f"{scope['method']} {scope['path']}"
        if isinstance(exc, BodyTooLarge) or too_large:
            log.warning("refused %s: %s", where, BODY_TOO_LARGE.code)
            await self._refuse(send, headers, self._too_large, CONNECTION_CLOSE)
        elif isinstance(exc, RateLimited):
            self._log_rate_limited(where, exc)
            await self._refuse(send, headers, *rate_limited_answer(scope, exc))
        elif isinstance(exc, ServiceUnavailable):  # HashingBusyError: the hashing pool is full
            log.warning("503 for %s: %s", where, type(exc).__name__)
            retry_after = float(getattr(exc, "retry_after", 1.0))
            retry = (("retry-after", str(max(1, math.ceil(retry_after)))),)
            await self._refuse(send, headers, SERVICE_BUSY, retry)
        else:
            # Starlette's ServerErrorMiddleware sits outside this one: answered there, a 500 would
            # carry none of the security headers. The traceback goes to the log (through its
            # redaction filter), never to the client.
            log.error("unhandled %s in %s", type(exc).__name__, where, exc_info=exc)
            await self._refuse(send, headers, SERVER_ERROR)

    def _log_rate_limited(self, where: str, exc: RateLimited) -> None:
        """One warning per ``where`` per RATE_LIMIT_LOG_SECONDS, counting the refusals in between."""
        now = time.monotonic()
        last, unlogged = self._rate_limit_logged.get(where, (-math.inf, 0))
        if now - last < RATE_LIMIT_LOG_SECONDS:
            self._rate_limit_logged[where] = (last, unlogged + 1)
            return
        if len(self._rate_limit_logged) >= MAX_RATE_LIMIT_LOG_PATHS:
            self._rate_limit_logged.clear()
        self._rate_limit_logged[where] = (now, 0)
        more = f" (and {unlogged} more since the last line)" if unlogged else ""
        log.warning(
            "429 for %s: %s%s; further ones are logged once per %g s",
            where, type(exc).__name__, more, RATE_LIMIT_LOG_SECONDS,
        )  # fmt: skip

    async def _admit(
        self,
        scope: Scope,
        receive: Receive,
        headers: Mapping[str, str],
        ctx: WebContext,
        cookies: Mapping[str, str],
    ) -> tuple[Receive, Refusal | None]:
        """Authenticate the request and run the checks due before the app: the ``receive`` to
        hand on (a read form body is replayed) and a refusal, or None."""
        path = scope["path"]
        presented, auth = self._presented_token(headers, cookies.get(ctx.cookies.session))
        if self.public_paths and path.startswith(self.public_paths):
            # Assets: no lookup, and no clearing of a cookie that a parallel page request may
            # just have rotated (past SESSION_ROTATION_GRACE the old token is dead; clearing would
            # log the user out).
            presented, auth = None, None
        if presented is not None:
            await self._authenticate(ctx, presented, auth)
        elif auth == "cookie":  # a cookie that cannot be a token
            ctx.end_session()
        scope["user"] = ctx.user
        # A bearer header that authenticates nothing is refused rather than served as anonymous:
        # it can neither switch CSRF off nor let a logout clear a cookie whose session lives on.
        # Exempt paths (webhooks) may use Authorization for a scheme of their own.
        # So is an API key that is not a live one (typo, revoked, expired, wrong address).
        if auth == "bearer" and ctx.auth != "bearer" and path not in self.csrf_exempt_paths:
            return receive, SESSION_INVALID
        if auth == "api_key" and ctx.auth != "api_key" and path not in self.csrf_exempt_paths:
            return receive, API_KEY_INVALID
        key = ctx.api_key
        if key is not None and (key.rate_limit is not None or self.api_key_user_rate_limit is not None):
            await self._limit_api_key(ctx, key)  # RateLimited: answered 429 by _answer_exception
        user = ctx.user
        if user is not None and user.must_change_password and path not in self.password_change_paths:
            return receive, PASSWORD_CHANGE_REQUIRED
        # A browser never attaches an Authorization (or X-API-Key) header cross-site: a validated
        # bearer token or API key needs no CSRF token. ctx.auth, not auth: only a credential that
        # validated switches CSRF off (a cookie beside a garbage key was refused above).
        if scope["method"] not in SAFE_METHODS and ctx.auth != "bearer" and ctx.auth != "api_key":
            return await self._check_csrf(scope, receive, headers, ctx, presented)
        return receive, None

    def _context(
        self, scope: Scope, headers: Mapping[str, str], names: CookieNames, cookies: Mapping[str, str]
    ) -> WebContext:
        """The WebContext of an HTTP request or a WebSocket handshake, before authentication."""
        client = scope.get("client")
        client_ip = client[0] if client else "0.0.0.0"  # noqa: S104 - no peer (in-process tests)
        return WebContext(
            security=self.security,
            # A forwarded "address" longer than any IP is garbage from the proxy's header: keep it
            # bounded (request_data refuses longer ones with ValueError, which would be a 500).
            client_ip=client_ip[:MAX_IP_LENGTH],
            user_agent=headers.get("user-agent", ""),
            cookies=names,
            device_token=_plausible_token(cookies.get(names.device)),
            _forget_user=self.forget_user,
        )

    def _host_allowed(self, host: str) -> bool:
        if self.any_host or host in self.allowed_hosts:
            return True
        return bool(self.allowed_host_suffixes) and host.endswith(self.allowed_host_suffixes)

    def _cookie_names(self, scope: Scope, host: str) -> CookieNames:
        if scope.get("scheme") == "https" or not self.allow_insecure_localhost:
            return SECURE_COOKIES
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
    ) -> tuple[str | None, Literal["cookie", "bearer", "api_key"] | None]:
        """The credential of the request and its kind, one per request, in this order:
        ``Authorization: Bearer`` (an API key when it starts with ``fk_``, else a session token),
        ``X-API-Key``, the session cookie. A cookie beside an API key is ignored, never used."""
        authorization = headers.get("authorization")
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer":
                value = value.strip()
                return _plausible_token(value), "api_key" if value.startswith(API_KEY_PREFIX) else "bearer"
        api_key = headers.get(API_KEY_HEADER)
        if api_key is not None:
            return _plausible_token(api_key.strip()), "api_key"
        if cookie is not None:
            return _plausible_token(cookie), "cookie"
        return None, None

    async def _authenticate(
        self, ctx: WebContext, token: str, auth: Literal["cookie", "bearer", "api_key"] | None
    ) -> None:
        if auth == "api_key":
            await self._authenticate_api_key(ctx, token)
            return
        # SESSION_BINDING for cookies, SESSION_BINDING_BEARER for bearer clients (which roam networks).
        session = await self.security.validate_session(token, ctx.request_context, bearer=auth == "bearer")
        user = await self._user(session.user_id) if session is not None else None
        if session is None or user is None or user.is_disabled:
            if auth == "cookie":
                ctx.end_session()  # a dead cookie is cleared (on a handshake too), not sent forever
            return
        ctx.user, ctx.session, ctx.auth, ctx._token = user, session, auth, token
        if session.rotated_token:  # a privilege change: the old token lives SESSION_ROTATION_GRACE more
            ctx._token = session.rotated_token
            if auth == "cookie":
                ctx._set_cookies.append(
                    _cookie(ctx.cookies.session, session.rotated_token, secure=ctx.cookies.secure)
                )
            else:
                ctx._extra_headers.append(("x-session-token", session.rotated_token))

    async def _authenticate_api_key(self, ctx: WebContext, token: str) -> None:
        """The key and its owner on ``ctx``, or nothing (the caller refuses): a mistyped token
        costs no I/O (the checksum), a known one a cached lookup; the owner comes through the user
        cache and a disabled one is refused."""
        try:
            key = await self.security.validate_api_key(token, ctx.request_context)
        except ServiceUnavailable:  # API keys are not running (no encryption keys): no key is valid
            if not self._warned_no_api_keys:
                self._warned_no_api_keys = True
                log.warning(
                    "refusing API keys: they are not running (set MASTER_ENCRYPTION_KEY and "
                    "PERSISTENT_ENCRYPTION_SALT to use them)"
                )
            return
        if key is None:
            return
        user = await self._user(key.user_id)
        if user is None or user.is_disabled:
            return
        ctx.user, ctx.api_key, ctx.auth = user, key, "api_key"

    async def _limit_api_key(self, ctx: WebContext, key: ApiKey) -> None:
        """Count this request against the key's own limit and its owner's limit across all their
        keys, in one all-or-nothing decision (a request refused by one uses up neither); both go
        in the response's RateLimit headers (policies ``api-key`` and ``api-key-owner``). Refused:
        RateLimited, which the middleware answers 429 with Retry-After (the longest wait). Both
        keys start ``user:<owner id>``: one Redis Cluster slot."""
        owner = f"user:{key.user_id}"
        checks: list[tuple[str, str]] = []
        policies: list[str] = []
        if key.rate_limit is not None:
            checks.append((f"{owner}:apikey:{key.id}", key.rate_limit))
            policies.append(KEY_POLICY)
        if self.api_key_user_rate_limit is not None:
            checks.append((f"{owner}:apikeys", self.api_key_user_rate_limit))
            policies.append(OWNER_POLICY)
        if not checks:
            return
        decisions = await self.security.rate_limit_all(checks)
        for policy, decision in zip(policies, decisions, strict=True):
            ctx.record_rate_limit(policy, decision)
        if not decisions[0].allowed:
            at = max(range(len(decisions)), key=lambda i: decisions[i].retry_after)
            whose = "this API key" if policies[at] == KEY_POLICY else "this API key's owner (all keys)"
            raise RateLimited(
                f"the rate limit of {whose} is reached",
                retry_after=decisions[at].retry_after,
                decision=decisions[at],
            )

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
    ) -> tuple[Receive, Refusal | None]:
        if scope["path"] in self.csrf_exempt_paths:
            return receive, None
        if not cookies_sent(headers) and "origin" not in headers and "referer" not in headers:
            # No cookie: nothing a forged request could ride on, and no Origin or Referer: not a
            # browser (browsers send Origin on every POST, "null" from opaque origins). A script's or
            # an app's JSON login or register needs no pre-session token (docs/web.md, "CSRF").
            return receive, None
        if not self._same_origin(scope, headers):
            return receive, CROSS_ORIGIN
        if ctx.auth == "cookie" and presented is not None:
            expected = csrf_token_for(presented)  # the token the page was rendered with
        elif ctx._presession_csrf is not None:
            expected = ctx._presession_csrf
        else:
            return receive, CSRF_MISSING
        given = headers.get(CSRF_HEADER)
        if given is None and _content_type(headers) in FORM_TYPES:
            body = await _read_body(receive)  # bounded: BodyTooLarge past max_body_bytes
            try:
                form = await Request(dict(scope), _replay(body, receive)).form()
            except (HTTPException, MultiPartException):  # malformed multipart: no token to read
                return receive, CSRF_MALFORMED
            receive = _replay(body, receive)
            field_value = form.get(CSRF_FORM_FIELD)
            given = field_value if isinstance(field_value, str) else None
            await form.close()
        if given is None:
            return receive, CSRF_MISSING
        if not hmac.compare_digest(given.encode(), expected.encode()):
            return receive, CSRF_INVALID
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

    # --- WebSockets ----------------------------------------------------------------------------
    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Authenticate one WebSocket handshake: refuse it before the app sees it, or hand it on
        with the user on the scope (None for an anonymous handshake: the app decides)."""
        headers = _request_headers(scope)
        host = _hostname(headers.get("host", ""))
        if not self._host_allowed(host):
            log.warning(
                "refused WebSocket %s: Host %r is not in ALLOWED_HOSTS (add it there to serve it)",
                scope["path"], host[:100],
            )  # fmt: skip
            await self._deny_websocket(scope, send, HOST_NOT_ALLOWED)
            return
        secure = scope.get("scheme") in ("wss", "https")
        # The cookie names of the page that opened the socket: its scheme is http(s), not ws(s).
        cookie_names = self._cookie_names({"scheme": "https" if secure else "http"}, host)
        cookies = cookie_parser(headers.get("cookie", ""))
        ctx = self._context(scope, headers, cookie_names, cookies)
        scope[SCOPE_KEY] = ctx
        scope["user"] = None

        offered = _take_bearer_subprotocol(scope)  # the token leaves the scope before the app runs
        presented, auth = self._presented_token(headers, cookies.get(cookie_names.session))
        if offered is not None and auth not in ("bearer", "api_key"):  # headers first, then the subprotocol
            presented = _plausible_token(offered)
            auth = "api_key" if offered.startswith(API_KEY_PREFIX) else "bearer"
        refusal = None
        if auth == "cookie" and not self._websocket_origin_allowed(scope, headers, secure):
            # Cross-site WebSocket hijacking: a browser attaches the cookie to a handshake that any
            # site opens, and no CORS rule stops it. No lookup is done for it.
            refusal = CROSS_SITE_WEBSOCKET
        elif presented is not None:
            await self._authenticate(ctx, presented, auth)
        if refusal is None and auth == "bearer" and ctx.auth != "bearer":
            refusal = SESSION_INVALID
        elif refusal is None and auth == "api_key" and ctx.auth != "api_key":
            refusal = API_KEY_INVALID
        limited: tuple[tuple[str, str], ...] = ()
        if refusal is None and ctx.api_key is not None:
            try:
                await self._limit_api_key(ctx, ctx.api_key)
            except RateLimited as exc:
                refusal, retry = rate_limited_answer(scope, exc)
                limited = (*retry, *rate_limit_headers(ctx.rate_limits))
        if refusal is None and ctx.user is not None and ctx.user.must_change_password:
            refusal = PASSWORD_CHANGE_REQUIRED
        if refusal is not None:
            log.warning("refused WebSocket %s: %s", scope["path"], refusal.code)
            extra = BEARER_CHALLENGE if refusal in UNAUTHENTICATED else limited
            await self._deny_websocket(scope, send, refusal, extra)
            return
        scope["user"] = ctx.user
        remaining = scope.get("subprotocols") or ()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "websocket.accept":
                # A browser fails the handshake unless the server picks one of the offered
                # subprotocols: the marker, never the token.
                if offered is not None and message.get("subprotocol") not in remaining:
                    message["subprotocol"] = BEARER_SUBPROTOCOL
                cookies_set = ctx._set_cookies if ctx.api_key is None else ()  # never on an API key
                extra = [(b"set-cookie", cookie.encode()) for cookie in cookies_set]
                extra += [(name.encode(), value.encode()) for name, value in ctx._extra_headers]
                if ctx._rate_limits is not None:
                    extra += [(n.encode(), v.encode()) for n, v in rate_limit_headers(ctx._rate_limits)]
                if extra:
                    message["headers"] = [*message.get("headers", ()), *extra]
            await send(message)

        await self.app(scope, receive, send_wrapper)

    def _websocket_origin_allowed(self, scope: Scope, headers: Mapping[str, str], secure: bool) -> bool:
        """The handshake comes from this site's own pages (ws -> http, wss -> https, same Host) or
        from one of ``allowed_origins``. No ``Origin`` (or ``null``) is not same-origin."""
        origin = headers.get("origin")
        if not origin:
            return False
        own = f"{'https' if secure else 'http'}://{headers.get('host', '')}".lower()
        origin = origin.rstrip("/").lower()
        return origin == own or origin in self.allowed_origins

    async def _deny_websocket(
        self, scope: Scope, send: Send, refusal: Refusal, extra: Iterable[tuple[str, str]] = ()
    ) -> None:
        """Refuse a handshake before it is accepted: an HTTP answer with the refusal's status and
        JSON where the server offers ``websocket.http.response`` (uvicorn does), else a close with
        1008, which the server turns into a 403."""
        if "websocket.http.response" not in (scope.get("extensions") or {}):
            await send({"type": "websocket.close", "code": WS_POLICY_VIOLATION, "reason": refusal.code})
            return
        body = json.dumps({"detail": refusal.detail, "code": refusal.code}).encode()
        raw = [
            *self._raw_headers,
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            *((name.encode(), value.encode()) for name, value in extra),
        ]
        await send({"type": "websocket.http.response.start", "status": refusal.status, "headers": raw})
        await send({"type": "websocket.http.response.body", "body": body})

    def _path_headers(self, scope: Scope) -> list[tuple[bytes, bytes]]:
        """The security headers of the longest ``csp_by_path`` prefix holding this path."""
        path: str = scope["path"]
        root = scope.get("root_path", "")
        if root and path.startswith(root):  # the prefixes are the application's own paths
            path = path[len(root) :]
        if not path.startswith(self._csp_prefixes):  # most paths: one C call
            return self._raw_headers
        for prefix, raw in self._raw_headers_by_path:
            if path.startswith(prefix) and (len(path) == len(prefix) or path[len(prefix)] == "/"):
                return raw
        return self._raw_headers

    # --- the middleware's own answers ----------------------------------------------------------
    async def _refuse(
        self,
        send: Send,
        headers: Mapping[str, str],
        refusal: Refusal,
        extra: Iterable[tuple[str, str]] = (),
    ) -> None:
        """Answer ``refusal`` with this middleware's security headers."""
        await send_refusal(send, headers, refusal, extra, self._raw_headers)

    async def _redirect(self, send: Send, location: str) -> None:
        raw = [*self._raw_headers, (b"location", location.encode()), (b"content-length", b"0")]
        raw.append((b"cache-control", b"no-store"))
        await send({"type": "http.response.start", "status": 303, "headers": raw})
        await send({"type": "http.response.body", "body": b""})


_WANTED_HEADERS = frozenset(
    {
        b"host",
        b"cookie",
        b"user-agent",
        b"authorization",
        b"origin",
        b"referer",
        b"content-type",
        b"content-length",
        b"accept",
        b"x-csrf-token",
        b"x-api-key",
    }
)
FORM_TYPES = frozenset({"application/x-www-form-urlencoded", "multipart/form-data"})
NO_STORE = (b"cache-control", b"no-store")
CONNECTION_CLOSE = (("connection", "close"),)  # the rest of a refused body is never read
BEARER_CHALLENGE = (("www-authenticate", 'Bearer error="invalid_token"'),)
UNAUTHENTICATED = (SESSION_INVALID, API_KEY_INVALID)  # 401 with BEARER_CHALLENGE
KEY_POLICY = "api-key"  # the RateLimit policy names of an API key's own limit and its owner's
OWNER_POLICY = "api-key-owner"
API_KEY_HEADER = "x-api-key"


# WebSocket handshakes. A browser cannot set Authorization on one, so its bearer token travels as
# a pair of offered subprotocols, ["fundaments.bearer", "<token>"]; the middleware removes both
# from the scope and answers the marker, never the token.
BEARER_SUBPROTOCOL = "fundaments.bearer"
WS_POLICY_VIOLATION = 1008  # RFC 6455 7.4.1
CROSS_SITE_WEBSOCKET = Refusal(
    403,
    "cross_origin",
    "Forbidden: a WebSocket handshake with the session cookie must come from this site's own pages "
    "(Origin); other clients authenticate with a bearer token.",
)


def _take_bearer_subprotocol(scope: Scope) -> str | None:
    """The token offered as ``fundaments.bearer, <token>`` ("" when the marker has none), or None.

    Both entries leave ``scope["subprotocols"]`` and the ``Sec-WebSocket-Protocol`` header, so
    the application can neither choose the token as its subprotocol nor log it."""
    offered = list(scope.get("subprotocols") or ())
    if BEARER_SUBPROTOCOL not in offered:
        return None
    at = offered.index(BEARER_SUBPROTOCOL)
    token = offered[at + 1] if at + 1 < len(offered) else ""
    del offered[at : at + 2]
    scope["subprotocols"] = offered
    headers = [(n, v) for n, v in scope["headers"] if n.lower() != b"sec-websocket-protocol"]
    if offered:
        headers.append((b"sec-websocket-protocol", ", ".join(offered).encode("latin-1")))
    scope["headers"] = headers
    return token


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


def security_headers(content_security_policy: str, permissions_policy: str) -> list[tuple[str, str]]:
    """The headers added to every response (HSTS apart: https only)."""
    return [
        ("content-security-policy", content_security_policy),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
        ("x-frame-options", "DENY"),
        ("cross-origin-opener-policy", "same-origin"),
        ("permissions-policy", permissions_policy),
    ]


DEFAULT_RAW_HEADERS = [
    (name.encode(), value.encode())
    for name, value in security_headers(DEFAULT_CSP, DEFAULT_PERMISSIONS_POLICY)
]


async def send_refusal(
    send: Send,
    headers: Mapping[str, str],
    refusal: Refusal,
    extra: Iterable[tuple[str, str]] = (),
    raw_headers: Iterable[tuple[bytes, bytes]] = DEFAULT_RAW_HEADERS,
) -> None:
    """Answer ``refusal``: JSON ``{"detail", "code"}`` for API clients, plain text for browsers,
    with the security headers."""
    if _wants_json(headers):
        body = json.dumps({"detail": refusal.detail, "code": refusal.code}).encode()
        content_type = b"application/json"
    else:
        body = f"{refusal.detail}\n".encode()
        content_type = b"text/plain; charset=utf-8"
    raw = [
        *raw_headers,
        (b"content-type", content_type),
        (b"content-length", str(len(body)).encode()),
    ]
    raw += [(b"cache-control", b"no-store"), *((n.encode(), v.encode()) for n, v in extra)]
    await send({"type": "http.response.start", "status": refusal.status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def cookies_sent(headers: Mapping[str, str]) -> bool:
    """Whether the request carries any cookie (ambient credentials a forged request could use)."""
    return bool(headers.get("cookie", "").strip())


def _hostname(host_header: str) -> str:
    """The host name of a ``Host`` header, lower case, without port or IPv6 brackets."""
    host = host_header.strip().lower()
    if host.startswith("["):
        end = host.find("]")
        return host[1:end] if end > 0 else host
    return host.partition(":")[0].rstrip(".")


def _content_type(headers: Mapping[str, str]) -> str:
    return headers.get("content-type", "").split(";")[0].strip().lower()


def _api_client(headers: Mapping[str, str]) -> bool:
    """Says it is an API client: it accepts JSON, sends JSON, or authenticates with a bearer token
    or an API key."""
    if "application/json" in headers.get("accept", ""):
        return True
    content_type = _content_type(headers)
    if content_type == "application/json" or content_type.endswith("+json"):
        return True
    return headers.get("authorization", "")[:7].lower() == "bearer " or API_KEY_HEADER in headers


def _wants_json(headers: Mapping[str, str]) -> bool:
    """JSON refusals for an API client, and for anything that is neither a browser's page request
    (``Accept: text/html``) nor a form post (plain text for those)."""
    if _api_client(headers):
        return True
    return "text/html" not in headers.get("accept", "") and _content_type(headers) not in FORM_TYPES


def browser_like(headers: Mapping[str, str]) -> bool:
    """A request a browser may have sent: browsers add Origin to every POST (Referer, cookies).
    A client with none of them keeps its session token itself: no cookie is set for it."""
    return "origin" in headers or "referer" in headers or cookies_sent(headers)


def _browser_page(scope: Scope, headers: Mapping[str, str]) -> bool:
    """A GET or HEAD that does not say it is an API client's: it may be a page, so a redirect."""
    return scope["method"] in ("GET", "HEAD") and not _api_client(headers)


def _relative_location(value: bytes, own_host: str) -> bytes:
    """``Location: http://<the request's Host>/x`` as ``/x``: Starlette builds absolute redirects
    (the trailing-slash one among them) from the Host header, which the client wrote."""
    text = value.decode("latin-1")
    lowered = text.lower()
    for prefix in ("http://", "https://", "//"):
        if lowered.startswith(prefix):
            rest = text[len(prefix) :]
            netloc, slash, tail = rest.partition("/")
            if netloc.lower() != own_host:
                return value  # another site: the application's deliberate choice
            relative = "/" + tail if slash else "/"
            if not slash and ("?" in netloc or "#" in netloc):
                return value
            if relative.startswith("//"):  # "//evil.example" would be protocol-relative
                relative = "/" + relative.lstrip("/")
            return relative.encode("latin-1")
    return value


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


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
