"""The console's recovery pages: forgot password, reset by mail link, email verification, "My account".

Anonymous pages (a forgotten password locks nobody out of them) built like the rest of the console:
server-rendered, every POST a form with the CSRF token, fixed sentences only. The links mailed by
fundaments (``{PUBLIC_BASE_URL}/reset-password?token=…``, ``/verify-email?token=…``) land on a GET
that changes nothing — mail scanners prefetch links — and shows a form; the token goes on in a
hidden field of its POST. Pages holding a token are sent with ``Cache-Control: no-store`` and
``Referrer-Policy: strict-origin``: whatever such a page loads or submits is told the origin only,
never the URL with the token. The console's default, ``same-origin``, would send that URL with
the stylesheet's request to any proxy log; ``no-referrer`` would make browsers send
``Origin: null`` with the form's POST, which the CSRF check rightly refuses (Fetch standard,
"append a request Origin header"). No log line of the console names a token, and
:func:`hide_link_tokens` masks the one in uvicorn's access log.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from app.console import PASSWORDS_DIFFER, Console, _field
from fundaments.config import Settings
from fundaments.emails import email_key_or_none
from fundaments.errors import (
    AuthenticationError,
    InvalidArgument,
    InvalidEmailError,
    PasswordPolicyError,
    RateLimited,
    ServiceUnavailable,
)
from fundaments.web import authenticated_user, get_context
from fundaments.web.ratelimits import limit_per_ip, limit_per_target

log = logging.getLogger("app")

MAX_EMAIL = 320  # RFC 3696 errata: 64 + 1 + 255; longer text is no address
MAX_TOKEN = 128  # fundaments' tokens are 43 characters; it refuses anything much longer
# The shape of a link's token (base64url). Anything else in ?token= is a mangled link: say so at
# once instead of copying arbitrary query text into the page.
TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{16,128}")
TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&#\s]*")
TOKEN_PAGE_HEADERS = {"referrer-policy": "strict-origin", "cache-control": "no-store"}

NOT_AN_ADDRESS = "That is not a valid email address. Check it and try again."
BUSY = "The server is busy; try again shortly."

# Messages of the "My account" page, chosen by the ?m= key of a redirect.
ACCOUNT_MESSAGES = {
    "verification_sent": "A confirmation link is on its way to your address. It works once.",
    "already_verified": "Your address is already confirmed; nothing was sent.",
    "no_address": "Your account has no email address; ask an administrator to set one.",
}
ACCOUNT_WARNINGS = frozenset({"already_verified", "no_address"})


class LinkTokenFilter(logging.Filter):
    """Masks a query string's ``token`` in the arguments of a log record ("GET /reset-password?token=***").

    The mailed links carry their token in the URL, and uvicorn's access log writes every request
    line with its query string (its formatter needs the arguments, so they are rewritten in place).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                TOKEN_IN_QUERY.sub(r"\1***", arg) if isinstance(arg, str) else arg for arg in record.args
            )
        return True


def hide_link_tokens(logger_name: str = "uvicorn.access") -> None:
    """Put a :class:`LinkTokenFilter` on the logger (once)."""
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, LinkTokenFilter) for f in logger.filters):
        logger.addFilter(LinkTokenFilter())


class RecoveryPages:
    """GET/POST /forgot-password, /reset-password, /verify-email and the signed-in /account page."""

    def __init__(self, console: Console, settings: Settings) -> None:
        self.console = console
        self.security = console.security
        self.min_length = settings.password_min_length
        self.max_length = settings.password_max_length
        self.reset_minutes = settings.password_reset_ttl // 60

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/forgot-password", self.forgot_page, methods=["GET"]),
            Route("/forgot-password", self.forgot_submit, methods=["POST"]),
            Route("/forgot-password/sent", self.forgot_sent, methods=["GET"]),
            Route("/reset-password", self.reset_page, methods=["GET"]),
            Route("/reset-password", self.reset_submit, methods=["POST"]),
            Route("/reset-password/done", self.reset_done, methods=["GET"]),
            Route("/verify-email", self.verify_page, methods=["GET"]),
            Route("/verify-email", self.verify_submit, methods=["POST"]),
            Route("/verify-email/done", self.verify_done, methods=["GET"]),
            Route("/account", self.account_page, methods=["GET"]),
            Route("/account/verify-email", self.account_send_verification, methods=["POST"]),
        ]

    async def _page(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        return await self.console.render(request, template, status, **values)

    async def _token_page(
        self, request: Request, template: str, status: int = 200, **values: Any
    ) -> HTMLResponse:
        page = await self._page(request, template, status, **values)
        page.headers.update(TOKEN_PAGE_HEADERS)
        return page

    async def _busy(self, request: Request, exc: Exception) -> Response:
        """The console's 429/503 page for a facade that is throttling or overloaded."""
        if isinstance(exc, RateLimited):
            return await self.console._busy(
                request, 429, "Too many attempts", "Wait a moment.", exc.retry_after
            )
        return await self.console._busy(request, 503, "Busy", BUSY, 5)

    # --- forgot password ---------------------------------------------------------------------------
    async def forgot_page(self, request: Request) -> Response:
        return await self._page(request, "forgot_password.html")

    async def forgot_submit(self, request: Request) -> Response:
        form = await request.form()
        email = _field(form, "email", MAX_EMAIL + 1).strip()
        if not email or len(email) > MAX_EMAIL:
            return await self._page(request, "forgot_password.html", 400, error=NOT_AN_ADDRESS)
        try:
            # auth_router's limits: per client IP, and per address asked for (account or not).
            await limit_per_ip(request, "account-mail", "rate_limit_account_mail")
            key = email_key_or_none(email)
            if key is not None:
                await limit_per_target(request, "account-mail-address", key)
            # Known, unknown, disabled or throttled: the facade answers alike, after the same time.
            await self.security.request_password_reset(email, get_context(request).request_context)
        except InvalidEmailError:  # not an address at all: that says nothing about any account
            return await self._page(request, "forgot_password.html", 400, error=NOT_AN_ADDRESS, email=email)
        except (RateLimited, ServiceUnavailable) as exc:
            log.warning("password reset request not taken: %s", type(exc).__name__)
            return await self._busy(request, exc)
        return RedirectResponse("/forgot-password/sent", 303)

    async def forgot_sent(self, request: Request) -> Response:
        return await self._page(request, "forgot_password_sent.html", minutes=self.reset_minutes)

    # --- reset -------------------------------------------------------------------------------------
    def _link_token(self, request: Request) -> str | None:
        token = request.query_params.get("token", "")
        return token if TOKEN_SHAPE.fullmatch(token) else None

    async def _invalid_link(self, request: Request, which: str) -> Response:
        return await self._token_page(request, "link_invalid.html", 400, which=which)

    async def _reset_form(self, request: Request, token: str, status: int = 200, **values: Any) -> Response:
        return await self._token_page(
            request,
            "reset_password.html",
            status,
            token=token,
            min_length=self.min_length,
            max_length=self.max_length,
            **values,
        )

    async def reset_page(self, request: Request) -> Response:
        token = self._link_token(request)
        if token is None or not await self.security.password_reset_link_valid(token):
            return await self._invalid_link(request, "reset")
        return await self._reset_form(request, token)

    async def reset_submit(self, request: Request) -> Response:
        form = await request.form()
        token = _field(form, "token", MAX_TOKEN + 1)
        if not TOKEN_SHAPE.fullmatch(token):
            return await self._invalid_link(request, "reset")
        new = _field(form, "new_password", self.max_length + 1)
        if new != _field(form, "confirm_password", self.max_length + 1):
            return await self._reset_form(request, token, 400, error=PASSWORDS_DIFFER)
        try:
            user = await self.security.reset_password(token, new, get_context(request).request_context)
        except AuthenticationError:  # used, replaced, expired or never issued: one answer
            log.info("password reset refused: the link is not valid")
            return await self._invalid_link(request, "reset")
        except PasswordPolicyError as exc:  # the token stays usable: the form again, with it
            return await self._reset_form(request, token, 400, error=str(exc))
        except (RateLimited, ServiceUnavailable) as exc:
            return await self._busy(request, exc)
        signed_in = authenticated_user(request)
        if signed_in is not None and signed_in.id == user.id:
            get_context(request).end_session()  # its session ended with the others: drop the cookie
        log.info("password reset for user %s", user.id)
        return RedirectResponse("/reset-password/done", 303)

    async def reset_done(self, request: Request) -> Response:
        return await self._page(request, "reset_password_done.html")

    # --- email verification --------------------------------------------------------------------------
    async def verify_page(self, request: Request) -> Response:
        # A GET changes nothing: scanners and previews fetch links in mails before anyone reads them.
        token = self._link_token(request)
        if token is None:
            return await self._invalid_link(request, "verify")
        return await self._token_page(request, "verify_email.html", token=token)

    async def verify_submit(self, request: Request) -> Response:
        form = await request.form()
        token = _field(form, "token", MAX_TOKEN + 1)
        if not TOKEN_SHAPE.fullmatch(token):
            return await self._invalid_link(request, "verify")
        try:
            await self.security.verify_email(token)
        except AuthenticationError:
            log.info("email verification refused: the link is not valid")
            return await self._invalid_link(request, "verify")
        return RedirectResponse("/verify-email/done", 303)

    async def verify_done(self, request: Request) -> Response:
        return await self._page(request, "verify_email_done.html")

    # --- the signed-in user's account --------------------------------------------------------------
    async def account_page(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        fresh = await self.security.get_user(user.id) or user  # the middleware's copy may be seconds old
        key = request.query_params.get("m", "")
        return await self._page(
            request,
            "account.html",
            account=fresh,
            notice=ACCOUNT_MESSAGES.get(key),
            notice_class="warn" if key in ACCOUNT_WARNINGS else "ok",
        )

    async def account_send_verification(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        fresh = await self.security.get_user(user.id)
        if fresh is None or fresh.email is None:
            return RedirectResponse("/account?m=no_address", 303)
        if fresh.email_verified:
            return RedirectResponse("/account?m=already_verified", 303)
        try:
            await limit_per_ip(request, "account-mail", "rate_limit_account_mail")
            await limit_per_target(request, "account-mail-account", f"user:{user.id}")
            await self.security.request_email_verification(user.id)
        except InvalidArgument:  # the address was removed meanwhile
            return RedirectResponse("/account?m=no_address", 303)
        except (RateLimited, ServiceUnavailable) as exc:
            return await self._busy(request, exc)
        return RedirectResponse("/account?m=verification_sent", 303)
