"""Two-factor sign-in in the console: the account's security page (TOTP on or off, recovery codes
left), enrolling TOTP with a QR code, regenerating the recovery codes, turning TOTP off; and an
administrator's reset of another account's TOTP.

The QR code is an ``<svg>`` rendered here by ``segno`` (no script, no ``style`` attribute: the CSP
holds), beside the secret as text for apps that cannot scan. The enrolment's secret is never put in
a form or a URL: the facade keeps it (encrypted, pending) until a code confirms it. Recovery codes
are shown once, in the answer to the POST that made them (signed-in pages are ``no-store``), never
after a redirect. Turning TOTP off, for oneself or for another account, goes through a
confirmation page (``confirmed=yes``).
"""

from __future__ import annotations

import io

import segno
from markupsafe import Markup
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from app.confirm import confirmation_page, confirmed, to_confirmation
from app.console import MAX_CODE, USERS_PERMISSION, Console, _field, _sentence, refusal_status
from fundaments.errors import AuthenticationError, FundamentsError, ServiceUnavailable
from fundaments.security import User

SECURITY_PATH = "/account/security"
CODES_ONCE = (
    "Store these recovery codes somewhere safe (a password manager, or printed): each signs in once "
    "instead of a code of the app. They are shown only on this page."
)
NOT_CONFIRMED = (
    "The code is not correct, or the enrolment expired: type the current code of the app you just "
    "set up, or begin again."
)
NO_ENCRYPTION = "Two-factor sign-in needs encryption, which this server does not have configured."


def qr_svg(uri: str) -> Markup:
    """The ``otpauth://`` URI as an inline ``<svg>`` element: no XML declaration, no style."""
    buffer = io.BytesIO()
    segno.make(uri, error="m").save(
        buffer, kind="svg", xmldecl=False, svgns=True, svgclass="qr", lineclass=None, scale=5, border=2
    )
    svg = buffer.getvalue().decode("ascii").strip()
    assert svg.startswith("<svg") and "style" not in svg and "<script" not in svg
    return Markup(svg)  # noqa: S704 - segno's own markup of a URI we made, not request text


def grouped_secret(secret: str) -> str:
    """The base32 secret in groups of four, as apps that take it typed show it."""
    return " ".join(secret[i : i + 4] for i in range(0, len(secret), 4))


class MfaPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def routes(self) -> list[BaseRoute]:
        return [
            Route(SECURITY_PATH, self.page, methods=["GET"]),
            Route(SECURITY_PATH + "/totp", self.begin, methods=["POST"]),
            Route(SECURITY_PATH + "/totp/confirm", self.confirm, methods=["POST"]),
            Route(SECURITY_PATH + "/recovery-codes", self.regenerate, methods=["POST"]),
            Route(SECURITY_PATH + "/totp/disable", self.disable_page, methods=["GET"]),
            Route(SECURITY_PATH + "/totp/disable", self.disable, methods=["POST"]),
            Route("/admin/users/{user_id:int}/mfa-reset", self.admin_reset_page, methods=["GET"]),
            Route("/admin/users/{user_id:int}/mfa-reset", self.admin_reset, methods=["POST"]),
        ]

    # --- the user's own -----------------------------------------------------------------------
    async def page(self, request: Request, *, status: int = 200, **values: object) -> Response:
        user = await self.console.signed_in(request)
        return await self.console.render(
            request,
            "security.html",
            status,
            mfa=await self.console.security.mfa_status(user.id),
            codes_once=CODES_ONCE,
            **values,
        )

    async def begin(self, request: Request) -> Response:
        """POST: a new secret, shown as a QR code and as text, and the form confirming it."""
        user = await self.console.signed_in(request)
        try:
            enrolment = await self.console.security.begin_totp_enrolment(user.id)
        except ServiceUnavailable:
            return await self.page(request, status=503, error=NO_ENCRYPTION)
        return await self.page(
            request, enrolling=True, qr=qr_svg(enrolment.uri), secret=grouped_secret(enrolment.secret)
        )

    async def confirm(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        form = await request.form()
        try:
            codes = await self.console.security.confirm_totp_enrolment(
                user.id, _field(form, "code", MAX_CODE)
            )
        except AuthenticationError:
            # The secret is not shown again (it is not in the form): the app has it, or begin anew.
            return await self.page(request, status=400, enrolling=True, error=NOT_CONFIRMED)
        # Not a redirect: the codes travel in this answer only (no-store), never in a URL.
        return await self.page(
            request, recovery_codes=codes, notice="Two-factor sign-in is on.", notice_class="ok"
        )

    async def regenerate(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        try:
            codes = await self.console.security.regenerate_recovery_codes(user.id)
        except FundamentsError as exc:  # no second factor: the message says to enrol first
            return await self.page(request, status=400, error=_sentence(exc))
        notice = "New recovery codes: every earlier one stopped working."
        return await self.page(request, recovery_codes=codes, notice=notice, notice_class="ok")

    async def disable_page(self, request: Request) -> Response:
        await self.console.signed_in(request)
        return await confirmation_page(
            self.console,
            request,
            title="Turn two-factor sign-in off?",
            consequences=[
                "Signing in needs only your password again.",
                "The authenticator app's codes and every recovery code stop working; turning it on "
                "again needs a new enrolment.",
            ],
            action=SECURITY_PATH + "/totp/disable",
            fields={},
            button="Turn two-factor sign-in off",
            cancel=SECURITY_PATH,
        )

    async def disable(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        if not confirmed(await request.form()):
            return to_confirmation(SECURITY_PATH + "/totp/disable")
        done = await self.console.security.disable_totp(user.id, actor_user_id=user.id)
        return RedirectResponse(f"{SECURITY_PATH}?m={'totp_disabled' if done else 'totp_not_enabled'}", 303)

    # --- administration -------------------------------------------------------------------------
    async def _target(self, request: Request) -> User:
        user_id: int = request.path_params["user_id"]
        target = await self.console.security.get_user(user_id) if 0 < user_id < 2**63 else None
        if target is None:
            raise HTTPException(404)
        return target

    async def admin_reset_page(self, request: Request) -> Response:
        await self.console.signed_in(request, USERS_PERMISSION)
        target = await self._target(request)
        return await confirmation_page(
            self.console,
            request,
            title=f"Reset the two-factor sign-in of {target.username}?",
            consequences=[
                f"{target.username}'s TOTP secret and recovery codes are removed: signing in needs "
                "only the password until they enrol again.",
                "Do this only once you are sure who asked (a lost phone). It is audited with you as "
                "the actor, and the owner is told by mail.",
            ],
            action=f"/admin/users/{target.id}/mfa-reset",
            fields={},
            button="Reset two-factor sign-in",
            cancel=f"/admin/users/{target.id}",
        )

    async def admin_reset(self, request: Request) -> Response:
        actor = await self.console.signed_in(request, USERS_PERMISSION)
        target = await self._target(request)
        if not confirmed(await request.form()):
            return to_confirmation(f"/admin/users/{target.id}/mfa-reset")
        try:
            done = await self.console.security.disable_totp(target.id, actor_user_id=actor.id)
        except FundamentsError as exc:  # delegation: the account holds permissions the actor lacks
            raise HTTPException(refusal_status(exc), _sentence(exc)) from None
        return RedirectResponse(
            f"/admin/users/{target.id}?m={'mfa_reset' if done else 'mfa_not_enabled'}", 303
        )
