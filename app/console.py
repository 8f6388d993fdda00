"""The console's pages: login, forced password change, dashboard, sessions, secrets, administration.

Server-rendered (Jinja2), no script: every action is a POST form carrying the CSRF token, answered
by a redirect (post/redirect/get) to a page that shows a fixed message chosen by a key — no
request text is ever echoed into a message. Everything goes through ``Security`` and ``fundaments.web``.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.confirm import confirmation_page, confirmed, to_confirmation
from app.secrets_store import MAX_NAME, MAX_VALUE, SecretStore, secret_context
from fundaments.errors import (
    AuthenticationError,
    DecryptionError,
    FundamentsError,
    LastAdministratorError,
    PasswordPolicyError,
    PermissionDenied,
    RateLimited,
    ServiceUnavailable,
)
from fundaments.security import API_KEYS_ADMIN_PERMISSION, LoginFailure, Security, User
from fundaments.web import authenticated_user, csrf_token, get_context, login, logout, use_rotated_session

log = logging.getLogger("app")

MAX_ID = 2**63 - 1  # the largest id a 64-bit column holds


def ascii_number(value: str, maximum: int = MAX_ID) -> int | None:
    """``value`` as a non-negative int if it is 1-19 ASCII digits not above ``maximum``, else None.

    ``str.isdigit`` alone accepts "²" and "①", which ``int`` then refuses: a 500 from a query string.
    """
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 19):
        return None
    number = int(value)
    return number if number <= maximum else None


def refuse_nul(value: str, name: str) -> str:
    """``value`` unchanged; a 400 if it contains NUL, which PostgreSQL refuses in text (a driver error)."""
    if "\x00" in value:
        raise HTTPException(400, f"The field {name} contains a NUL character; remove it and try again.")
    return value


HERE = Path(__file__).parent
LOGIN_FAILED = "Invalid username or password."  # every failure reason, a locked account included
PASSWORDS_DIFFER = "The two new passwords do not match."
NOTHING_DELETED = "There is no secret by that name; nothing was deleted."
REPLACE_HINT = "To replace it, tick “Replace the stored secret of that name” and store it again."

USERS_PERMISSION = "console:users"
USERS_PAGE = 50  # accounts per page of the users list
MAX_SEARCH = 100
ROLES_PERMISSION = "console:roles"
AUDIT_PERMISSION = "console:audit"

MESSAGES = {
    "password_changed": "Your password was changed. Every other session was signed out.",
    "session_revoked": "The session was signed out.",
    "others_revoked": "Every other session was signed out.",
    "secret_stored": "The secret was stored, encrypted.",
    "secret_deleted": "The secret was deleted.",
    "user_created": "The account was created.",
    "user_disabled": "The account was disabled and its sessions ended.",
    "user_enabled": "The account was enabled.",
    "user_unlocked": "The account was unlocked.",
    "user_deleted": "The account was deleted; its sessions ended. The audit trail keeps its id and name.",
    "role_granted": "The role was granted.",
    "role_revoked": "The role was revoked.",
    "role_created": "The role was created.",
    "role_updated": "The role was changed.",
    "role_unchanged": "The role already had those permissions and parents; nothing changed.",
    "role_deleted": "The role was deleted and revoked from every account holding it.",
    "password_set": "The password was set and every session of the account ended.",
    "user_session_ended": "The session was signed out.",
    "logged_out": "You are signed out.",
    # Nothing changed: said as such, never as a success (issue 14).
    "no_other_sessions": "There was no other session to sign out.",
    "user_already_disabled": "The account was already disabled; nothing changed.",
    "user_already_enabled": "The account was already enabled; nothing changed.",
    "user_not_locked": "The account was not locked; nothing changed.",
    "role_already_held": "The account already had that role; nothing changed.",
    "role_not_held": "The account did not have that role; nothing changed.",
}
UNCHANGED = frozenset(  # shown as a warning, not a success
    {
        "no_other_sessions",
        "user_already_disabled",
        "user_already_enabled",
        "user_not_locked",
        "role_already_held",
        "role_not_held",
        "role_unchanged",
    }
)


def refusal_status(exc: FundamentsError) -> int:
    """409 for a change that would leave no administrator, 403 for one the actor may not make
    (delegation), else 400 (bad input, unknown name)."""
    if isinstance(exc, LastAdministratorError):
        return 409
    return 403 if isinstance(exc, PermissionDenied) else 400


class Redirect(Exception):  # control flow: "go there instead", not an error
    def __init__(self, location: str) -> None:
        self.location = location


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "—"
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def describe_device(user_agent: str) -> str:
    """A human name for a User-Agent: "Chrome on Linux"."""
    browsers = (("Edg/", "Edge"), ("Firefox/", "Firefox"), ("Chrome/", "Chrome"), ("Safari/", "Safari"))
    systems = (("Android", "Android"), ("iPhone", "iOS"), ("Windows", "Windows"), ("Mac OS", "macOS"),
               ("Linux", "Linux"))  # fmt: skip
    browser = next((name for marker, name in browsers if marker in user_agent), None)
    system = next((name for marker, name in systems if marker in user_agent), None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or (user_agent[:40] or "unknown device")


def _sentence(exc: Exception) -> str:
    """A facade message as a sentence for the page: "The current password is not correct."."""
    text = str(exc)
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def _field(form: FormData, name: str, max_length: int = 1024) -> str:
    value = form.get(name)
    return refuse_nul(value[:max_length], name) if isinstance(value, str) else ""


def _fields(form: FormData, name: str, max_length: int = 1024) -> list[str]:
    return [refuse_nul(v[:max_length], name) for v in form.getlist(name) if isinstance(v, str)]


class Console:
    def __init__(
        self,
        security: Security,
        secrets: SecretStore,
        app_name: str,
        *,
        password_lengths: tuple[int, int] = (15, 1024),  # PASSWORD_MIN_LENGTH, PASSWORD_MAX_LENGTH
    ) -> None:
        self.security = security
        self.secrets = secrets
        self.app_name = app_name
        self.password_lengths = password_lengths
        self.templates = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            enable_async=True,
        )
        self.templates.filters["when"] = _when
        self.templates.filters["device"] = describe_device

    # --- plumbing ------------------------------------------------------------------------------
    async def render(self, request: Request, template: str, status: int = 200, **values: Any) -> HTMLResponse:
        user = authenticated_user(request)
        nav: dict[str, bool] = {}
        if user is not None and not user.must_change_password:
            for key, permission in (("users", USERS_PERMISSION), ("roles", ROLES_PERMISSION),
                                    ("audit", AUDIT_PERMISSION),
                                    ("api_keys", API_KEYS_ADMIN_PERMISSION)):  # fmt: skip
                nav[key] = await self.security.check_permission(user.id, permission)
        key = request.query_params.get("m", "")
        message = MESSAGES.get(key)
        html = await self.templates.get_template(template).render_async(
            request=request,
            user=user,
            nav=nav,
            csrf=csrf_token(request),
            app_name=self.app_name,
            password_min=self.password_lengths[0],  # the policy's, for hints and minlength
            password_max=self.password_lengths[1],
            message=message,
            message_class="warn" if key in UNCHANGED else "ok",
            path=request.url.path,
            **values,
        )
        return HTMLResponse(html, status)

    async def signed_in(self, request: Request, permission: str | None = None) -> User:
        """The user of the request, or a redirect (login / forced password change) or a 403."""
        user = authenticated_user(request)
        if user is None:
            raise Redirect("/login")
        if user.must_change_password and request.url.path != "/password":
            raise Redirect("/password")
        if permission is not None:
            try:
                await self.security.require_permission(
                    user.id, permission, request_data=get_context(request).request_context
                )
            except PermissionDenied:
                raise HTTPException(403, "You do not have permission to see this page.") from None
        return user

    # --- login ---------------------------------------------------------------------------------
    async def home(self, request: Request) -> Response:
        return RedirectResponse("/dashboard" if authenticated_user(request) else "/login", 303)

    async def login_page(self, request: Request) -> Response:
        if authenticated_user(request) is not None:
            return RedirectResponse("/dashboard", 303)
        return await self.render(request, "login.html")

    async def login_submit(self, request: Request) -> Response:
        form = await request.form()
        username = _field(form, "username", 256)
        result = await login(request, username, _field(form, "password"))
        if not result:
            log.info("login refused (%s)", result.reason.name if result.reason else "unknown")
            if result.reason is LoginFailure.BUSY:  # the hashing pool is full: no account was checked
                return await self._busy(request, 503, "Busy", "The server is busy; try again shortly.", 5)
            return await self.render(request, "login.html", 401, error=LOGIN_FAILED, username=username)
        assert result.user is not None
        return RedirectResponse("/password" if result.user.must_change_password else "/dashboard", 303)

    async def logout_submit(self, request: Request) -> Response:
        await logout(request)
        return RedirectResponse("/login?m=logged_out", 303)

    async def password_page(self, request: Request) -> Response:
        user = await self.signed_in(request)
        return await self.render(request, "password.html", forced=user.must_change_password)

    async def password_submit(self, request: Request) -> Response:
        user = await self.signed_in(request)
        form = await request.form()
        new = _field(form, "new_password")
        forced = user.must_change_password
        if new != _field(form, "confirm_password"):
            return await self.render(request, "password.html", 400, forced=forced, error=PASSWORDS_DIFFER)
        ctx = get_context(request)
        try:
            rotated = await self.security.change_password(
                user.id,
                _field(form, "current_password"),
                new,
                current_token=ctx.token,
                request_data=ctx.request_context,  # the check counts toward the lock of this device/account
            )
        except RateLimited as exc:  # another check of this session is running (CheckInFlightError)
            return await self._busy(
                request, 429, "Too many attempts at once", "Wait a moment.", exc.retry_after
            )
        except ServiceUnavailable:  # HashingBusyError: the hashing pool is full
            return await self._busy(request, 503, "Busy", "The server is busy; try again shortly.", 5)
        except AuthenticationError as exc:  # wrong, or locked: the facade's message says which
            return await self.render(request, "password.html", 400, forced=forced, error=_sentence(exc))
        except PasswordPolicyError as exc:
            return await self.render(request, "password.html", 400, forced=forced, error=str(exc))
        await use_rotated_session(request, rotated)
        return RedirectResponse("/dashboard?m=password_changed", 303)

    async def _busy(self, request: Request, status: int, title: str, detail: str, retry: float) -> Response:
        """A 429 or 503 page telling the client when to come back (``Retry-After``, whole seconds)."""
        page = await self.render(request, "error.html", status, title=title, detail=detail)
        page.headers["retry-after"] = str(max(1, math.ceil(retry)))
        return page

    # --- the user's own pages ------------------------------------------------------------------
    async def dashboard(self, request: Request) -> Response:
        user = await self.signed_in(request)
        return await self.render(
            request,
            "dashboard.html",
            roles=await self.security.user_roles(user.id),
            permissions=sorted(await self.security.user_permissions(user.id)),
            sessions=len(await self.security.list_sessions(user.id)),
            secrets=len(self.secrets.names(user.id)),
        )

    async def sessions_page(
        self, request: Request, *, status: int = 200, error: str | None = None
    ) -> Response:
        user = await self.signed_in(request)
        current = get_context(request).session
        return await self.render(
            request,
            "sessions.html",
            status,
            sessions=await self.security.list_sessions(user.id),
            current_id=current.id if current else None,
            error=error,
        )

    async def sessions_revoke(self, request: Request) -> Response:
        user = await self.signed_in(request)
        form = await request.form()
        if not await self.security.revoke_session(user.id, _field(form, "session_id", 64)):
            # Unknown, already ended, or another user's: the same answer for each.
            error = "You have no such session; nothing was signed out."
            return await self.sessions_page(request, status=404, error=error)
        return RedirectResponse("/sessions?m=session_revoked", 303)

    async def sessions_revoke_others(self, request: Request) -> Response:
        user = await self.signed_in(request)
        current = get_context(request).session
        ended = 0
        for session in await self.security.list_sessions(user.id):
            if current is None or session.id != current.id:
                ended += await self.security.revoke_session(user.id, session.id)
        return RedirectResponse(f"/sessions?m={'others_revoked' if ended else 'no_other_sessions'}", 303)

    async def secrets_page(self, request: Request, *, status: int = 200, **values: Any) -> Response:
        user = await self.signed_in(request)
        return await self.render(
            request, "secrets.html", status, secrets=self.secrets.names(user.id), **values
        )

    async def secrets_store(self, request: Request) -> Response:
        user = await self.signed_in(request)
        form = await request.form()
        name, value = _field(form, "name", MAX_NAME + 1).strip(), _field(form, "value", MAX_VALUE + 1)
        if not name or len(name) > MAX_NAME or not value or len(value) > MAX_VALUE:
            error = f"Give a name (1–{MAX_NAME} characters) and a value (1–{MAX_VALUE} characters)."
            return await self.secrets_page(request, status=400, error=error)
        try:
            envelope = self.security.encrypt_data(value, context=secret_context(user.id, name))
        except ServiceUnavailable:
            return await self.secrets_page(request, status=503, error="Encryption is not configured.")
        # Asks first: replacing needs the "replace" box, else nothing changes (the value is not
        # sent back into the page: the user enters it again).
        if self.secrets.get(user.id, name) is not None and form.get("replace") != "yes":
            error = "A secret of that name is stored already; nothing was changed. " + REPLACE_HINT
            return await self.secrets_page(request, status=409, error=error, existing=name)
        self.secrets.put(user.id, name, envelope)
        return RedirectResponse("/secrets?m=secret_stored", 303)

    async def secrets_reveal(self, request: Request) -> Response:
        user = await self.signed_in(request)
        form = await request.form()
        name = _field(form, "name", MAX_NAME)
        envelope = self.secrets.get(user.id, name)
        if envelope is None:
            return await self.secrets_page(request, status=404, error="There is no secret by that name.")
        try:
            value = self.security.decrypt_data(envelope, context=secret_context(user.id, name))
        except (DecryptionError, ServiceUnavailable):
            return await self.secrets_page(request, status=500, error="That secret cannot be decrypted.")
        return await self.secrets_page(request, revealed={"name": name, "value": value})

    async def secrets_delete_page(self, request: Request) -> Response:
        """GET: what deleting the secret means, and the form that does it."""
        user = await self.signed_in(request)
        name = refuse_nul(request.query_params.get("name", "")[:MAX_NAME], "name")
        if self.secrets.get(user.id, name) is None:
            return await self.secrets_page(request, status=404, error=NOTHING_DELETED)
        return await confirmation_page(
            self,
            request,
            title="Delete this secret?",
            consequences=[
                f"The secret “{name}” and its encrypted value are deleted.",
                "This cannot be undone: the value cannot be revealed again.",
            ],
            action="/secrets/delete",
            fields={"name": name},
            button="Delete the secret",
            cancel="/secrets",
        )

    async def secrets_delete(self, request: Request) -> Response:
        user = await self.signed_in(request)
        form = await request.form()
        name = _field(form, "name", MAX_NAME)
        if not confirmed(form):
            return to_confirmation("/secrets/delete", {"name": name})
        if not self.secrets.delete(user.id, name):
            return await self.secrets_page(request, status=404, error=NOTHING_DELETED)
        return RedirectResponse("/secrets?m=secret_deleted", 303)

    # --- administration ------------------------------------------------------------------------
    async def users_page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        await self.signed_in(request, USERS_PERMISSION)
        query = request.query_params
        search = refuse_nul(query.get("q", "")[:MAX_SEARCH], "q").strip()
        after = ascii_number(query.get("after", "0") or "0")
        if after is None:
            raise HTTPException(400, "The page link is not valid: after= must be an account id.")
        users = await self.security.list_users(limit=USERS_PAGE + 1, after_id=after, search=search or None)
        more, users = len(users) > USERS_PAGE, users[:USERS_PAGE]
        next_page = None
        if more:
            page = {"q": search, "after": users[-1].id} if search else {"after": users[-1].id}
            next_page = "/admin/users?" + urlencode(page)
        rows = [(u, list(u.roles)) for u in users]  # every read carries the roles: no query per row
        roles = [r.name for r in await self.security.list_roles()]
        return await self.render(
            request,
            "admin_users.html",
            status,
            rows=rows,
            roles=roles,
            error=error,
            search=search,
            next_page=next_page,
            first_page=after > 0,
        )

    async def users_create(self, request: Request) -> Response:
        actor = await self.signed_in(request, USERS_PERMISSION)
        form = await request.form()
        roles = _fields(form, "roles", 64)
        try:
            await self.security.register_user(
                _field(form, "username", 256).strip(),
                _field(form, "password"),
                roles=roles,
                must_change_password=form.get("must_change") == "on",
                actor_user_id=actor.id,
                email=_field(form, "email", 254).strip() or None,
            )
        except FundamentsError as exc:  # policy, taken name, bad role: the message says which
            return await self.users_page(request, status=refusal_status(exc), error=str(exc))
        return RedirectResponse("/admin/users?m=user_created", 303)
