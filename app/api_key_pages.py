"""API keys in the console: a user's own keys (create, revoke, rotate) and the administrators' view
of every account's keys.

A key's token is shown once, in the answer to the POST that made it (a creation or a rotation):
never in a redirect's URL, a message key, a cookie or the log, and the middleware sends every
signed-in page with ``Cache-Control: no-store``, so the browser does not keep it either. Every
later page shows the prefix only. The copy button is ``app/static/copy.js`` (``script-src 'self'``:
no inline script); without script the token is selectable text and the button stays hidden.

Revoking goes through a confirmation page (``confirmed=yes``, as every destructive action of the
console). Rotating asks how long the replaced token keeps working; its form is the confirmation.
A key id of another account is answered as an unknown one (404): nothing reveals whether it exists.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import BaseRoute, Route

from app.confirm import confirmation_page, confirmed, to_confirmation
from app.console import Console, _field, _sentence, ascii_number, refusal_status
from fundaments.errors import FundamentsError, InvalidArgument, UnknownApiKeyError
from fundaments.security import API_KEYS_ADMIN_PERMISSION, ApiKey, ApiKeyCreated, User
from fundaments.web import get_context

KEYS_PATH = "/account/api-keys"
ADMIN_PATH = "/admin/api-keys"
ADMIN_PAGE = 50  # keys per page of the administrators' list
KEY_ID = re.compile(r"key_[0-9A-Za-z]{16}")
DAY = 86_400
MAX_DAYS = 3650  # the facade's MAX_LIFETIME: ten years
OVERLAPS = ((0, "none: the old token stops at once"), (3600, "1 hour"), (86_400, "1 day"),
            (7 * 86_400, "7 days"))  # fmt: skip
NO_SUCH_KEY = "You have no such API key; nothing was changed."
NO_SUCH_KEY_ADMIN = "That account has no such live API key; nothing was changed."
SHOWN_ONCE = "Copy the token now: it is shown only on this page and cannot be shown again."
BAD_DAYS = f"Expires in (days) must be a whole number from 1 to {MAX_DAYS}, or empty for no expiry."
BAD_OVERLAP = "Choose how long the old token keeps working from the list."

MESSAGES = {
    "api_key_revoked": "The API key was revoked: its tokens no longer work.",
}


def _words(text: str) -> list[str]:
    """The entries of a free-text list field: separated by spaces, commas or new lines."""
    return [word for word in re.split(r"[\s,]+", text) if word]


def _key_id(request: Request) -> str:
    key_id: str = request.path_params["key_id"]
    if not KEY_ID.fullmatch(key_id):
        raise HTTPException(404)
    return key_id


class ApiKeyPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    def routes(self) -> list[BaseRoute]:
        return [
            Route(KEYS_PATH, self.page, methods=["GET"]),
            Route(KEYS_PATH, self.create, methods=["POST"]),
            Route(KEYS_PATH + "/{key_id}/revoke", self.revoke_page, methods=["GET"]),
            Route(KEYS_PATH + "/{key_id}/revoke", self.revoke, methods=["POST"]),
            Route(KEYS_PATH + "/{key_id}/rotate", self.rotate_page, methods=["GET"]),
            Route(KEYS_PATH + "/{key_id}/rotate", self.rotate, methods=["POST"]),
            Route(ADMIN_PATH, self.admin_page, methods=["GET"]),
            Route(ADMIN_PATH + "/{user_id:int}/{key_id}/revoke", self.admin_revoke_page, methods=["GET"]),
            Route(ADMIN_PATH + "/{user_id:int}/{key_id}/revoke", self.admin_revoke, methods=["POST"]),
        ]

    # --- the user's own keys ----------------------------------------------------------------------
    async def _own_keys(self, user: User) -> list[ApiKey]:
        keys: list[ApiKey] = []
        after = None
        while True:  # API_KEY_MAX_PER_USER bounds the live keys; pages of 1,000
            page = await self.console.security.list_api_keys(user.id, after=after, limit=1000)
            keys += page
            if len(page) < 1000:
                return keys
            after = page[-1].id

    async def _own_key(self, user: User, key_id: str) -> ApiKey | None:
        return next((k for k in await self._own_keys(user) if k.id == key_id), None)

    async def page(
        self,
        request: Request,
        *,
        status: int = 200,
        error: str | None = None,
        created: ApiKeyCreated | None = None,
        rotated: bool = False,
        form: dict[str, str] | None = None,
    ) -> Response:
        user = await self.console.signed_in(request)
        key = request.query_params.get("m", "")
        values: dict[str, Any] = {}
        if key in MESSAGES:
            values["notice"] = MESSAGES[key]
        return await self.console.render(
            request,
            "api_keys.html",
            status,
            keys=await self._own_keys(user),
            error=error,
            created=created,
            rotated=rotated,
            shown_once=SHOWN_ONCE,
            form=form or {},
            max_days=MAX_DAYS,
            **values,
        )

    async def create(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        form = await request.form()
        kept = {  # the form again after a refusal: what was typed (never a token)
            name: _field(form, name, 4096)
            for name in ("name", "scopes", "expires_days", "allowed_ips", "rate_limit")
        }
        try:
            arguments = self._create_arguments(kept)
            created = await self.console.security.create_api_key(user.id, actor_user_id=user.id, **arguments)
        except FundamentsError as exc:  # a bad field, a scope the user lacks, too many keys: which
            return await self.page(request, status=refusal_status(exc), error=_sentence(exc), form=kept)
        # Not a redirect: the token travels in this answer only (no-store), never in a URL.
        return await self.page(request, created=created)

    @staticmethod
    def _create_arguments(fields: dict[str, str]) -> dict[str, Any]:
        days_text = fields["expires_days"].strip()
        expires_in = None
        if days_text:
            days = ascii_number(days_text, MAX_DAYS)
            if not days:
                raise InvalidArgument(BAD_DAYS)
            expires_in = days * DAY
        allowed = _words(fields["allowed_ips"])
        return {
            "name": fields["name"].strip(),
            "scopes": _words(fields["scopes"]),
            "expires_in": expires_in,
            "allowed_ips": allowed or None,
            "rate_limit": fields["rate_limit"].strip() or None,
        }

    async def revoke_page(self, request: Request) -> Response:
        """GET: what revoking the key does, and the form that does it."""
        user = await self.console.signed_in(request)
        key = await self._own_key(user, _key_id(request))
        if key is None or key.is_revoked:
            return await self.page(request, status=404, error=NO_SUCH_KEY)
        return await confirmation_page(
            self.console,
            request,
            title=f"Revoke the API key “{key.name}”?",
            consequences=[
                f"Every client using the key {key.prefix}… is refused from now on (its previous "
                "token too, if a rotation left one working).",
                "This cannot be undone: create a new key to give access again.",
            ],
            action=f"{KEYS_PATH}/{key.id}/revoke",
            fields={},
            button="Revoke the key",
            cancel=KEYS_PATH,
        )

    async def revoke(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        key_id = _key_id(request)
        form = await request.form()
        if not confirmed(form):
            return to_confirmation(f"{KEYS_PATH}/{key_id}/revoke")
        if not await self.console.security.revoke_api_key(user.id, key_id, actor_user_id=user.id):
            # Unknown, already revoked, or another account's: the same answer for each.
            return await self.page(request, status=404, error=NO_SUCH_KEY)
        return RedirectResponse(f"{KEYS_PATH}?m=api_key_revoked", 303)

    async def rotate_page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        """GET: the rotation form: what happens, and how long the old token keeps working."""
        user = await self.console.signed_in(request)
        key = await self._own_key(user, _key_id(request))
        if key is None or key.is_revoked:
            return await self.page(request, status=404, error=NO_SUCH_KEY)
        return await self.console.render(
            request, "api_key_rotate.html", status, key=key, overlaps=OVERLAPS, error=error
        )

    async def rotate(self, request: Request) -> Response:
        user = await self.console.signed_in(request)
        key_id = _key_id(request)
        form = await request.form()
        overlap = self._overlap(form)
        if overlap is None or not confirmed(form):
            return to_confirmation(f"{KEYS_PATH}/{key_id}/rotate")
        try:
            rotated = await self.console.security.rotate_api_key(
                user.id, key_id, overlap_seconds=overlap, actor_user_id=user.id
            )
        except UnknownApiKeyError:  # not the user's, revoked or expired: one answer
            return await self.page(request, status=404, error=NO_SUCH_KEY)
        except FundamentsError as exc:
            return await self.rotate_page(request, status=refusal_status(exc), error=_sentence(exc))
        return await self.page(request, created=rotated, rotated=True)

    @staticmethod
    def _overlap(form: FormData) -> int | None:
        value = ascii_number(_field(form, "overlap", 16) or "-")
        return value if value in {seconds for seconds, _ in OVERLAPS} else None

    # --- administration -------------------------------------------------------------------------
    async def _admin(self, request: Request) -> User:
        return await self.console.signed_in(request, API_KEYS_ADMIN_PERMISSION)

    async def admin_page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        actor = await self._admin(request)
        after_text = request.query_params.get("after", "")
        if after_text and not KEY_ID.fullmatch(after_text):
            raise HTTPException(400, "The page link is not valid: after= must be a key id.")
        security = self.console.security
        keys = await security.list_all_api_keys(
            after=after_text or None,
            limit=ADMIN_PAGE + 1,
            actor_user_id=actor.id,
            request_data=get_context(request).request_context,
        )
        more, keys = len(keys) > ADMIN_PAGE, keys[:ADMIN_PAGE]
        owners = await security.usernames({k.user_id for k in keys})
        key = request.query_params.get("m", "")
        return await self.console.render(
            request,
            "admin_api_keys.html",
            status,
            rows=[(k, owners.get(k.user_id, f"#{k.user_id}")) for k in keys],
            error=error,
            notice=MESSAGES.get(key),
            next_page=f"{ADMIN_PATH}?{urlencode({'after': keys[-1].id})}" if more else None,
            first_page=bool(after_text),
        )

    async def _admin_target(self, request: Request) -> tuple[int, str]:
        user_id: int = request.path_params["user_id"]
        if not 0 < user_id < 2**63:
            raise HTTPException(404)
        return user_id, _key_id(request)

    async def admin_revoke_page(self, request: Request) -> Response:
        await self._admin(request)
        user_id, key_id = await self._admin_target(request)
        owner = await self.console.security.get_user(user_id)
        key = None
        if owner is not None:
            key = await self._own_key(owner, key_id)
        if owner is None or key is None or key.is_revoked:
            return await self.admin_page(request, status=404, error=NO_SUCH_KEY_ADMIN)
        return await confirmation_page(
            self.console,
            request,
            title=f"Revoke {owner.username}'s API key “{key.name}”?",
            consequences=[
                f"Every client using the key {key.prefix}… is refused from now on; "
                f"{owner.username} can create a new one.",
                "This cannot be undone. The audit trail records you as the one who revoked it.",
            ],
            action=f"{ADMIN_PATH}/{user_id}/{key_id}/revoke",
            fields={},
            button="Revoke the key",
            cancel=ADMIN_PATH,
        )

    async def admin_revoke(self, request: Request) -> Response:
        actor = await self._admin(request)
        user_id, key_id = await self._admin_target(request)
        form = await request.form()
        if not confirmed(form):
            return to_confirmation(f"{ADMIN_PATH}/{user_id}/{key_id}/revoke")
        try:
            revoked = await self.console.security.revoke_api_key(user_id, key_id, actor_user_id=actor.id)
        except FundamentsError as exc:  # delegation: the owner holds permissions the actor lacks
            return await self.admin_page(request, status=refusal_status(exc), error=_sentence(exc))
        if not revoked:
            return await self.admin_page(request, status=404, error=NO_SUCH_KEY_ADMIN)
        return RedirectResponse(f"{ADMIN_PATH}?m=api_key_revoked", 303)
