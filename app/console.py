"""The console's pages: login, forced password change, dashboard, sessions, secrets, administration.

Server-rendered (Jinja2), no script: every action is a POST form carrying the CSRF token, answered
by a redirect (post/redirect/get) to a page that shows a fixed message chosen by a key — no
request text is ever echoed into a message. Everything goes through ``Security`` and ``fundaments.web``.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.secrets_store import MAX_NAME, MAX_VALUE, SecretStore, secret_context
from fundaments.errors import (
    AuthenticationError,
    DecryptionError,
    FundamentsError,
    PasswordPolicyError,
    PermissionDenied,
    ServiceUnavailable,
)
from fundaments.security import Security, User
from fundaments.web import authenticated_user, csrf_token, get_context, login, logout, use_rotated_session

log = logging.getLogger("app")

HERE = Path(__file__).parent
LOGIN_FAILED = "Invalid username or password."  # every failure reason, a locked account included

USERS_PERMISSION = "console:users"
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
    "role_granted": "The role was granted.",
    "role_revoked": "The role was revoked.",
    "role_created": "The role was created.",
    "logged_out": "You are signed out.",
}


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


def _field(form: FormData, name: str, max_length: int = 1024) -> str:
    value = form.get(name)
    return value[:max_length] if isinstance(value, str) else ""


class Console:
    def __init__(self, security: Security, secrets: SecretStore, app_name: str) -> None:
        self.security = security
        self.secrets = secrets
        self.app_name = app_name
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
                                    ("audit", AUDIT_PERMISSION)):  # fmt: skip
                nav[key] = await self.security.check_permission(user.id, permission)
        message = MESSAGES.get(request.query_params.get("m", ""))
        html = await self.templates.get_template(template).render_async(
            request=request,
            user=user,
            nav=nav,
            csrf=csrf_token(request),
            app_name=self.app_name,
            message=message,
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
                    user.id, permission, request_data=get_context(request).request_data
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
        error = None
        if new != _field(form, "confirm_password"):
            error = "The two new passwords do not match."
        else:
            try:
                rotated = await self.security.change_password(
                    user.id, _field(form, "current_password"), new, current_token=get_context(request).token
                )
            except AuthenticationError:
                error = "The current password is not correct."
            except PasswordPolicyError as exc:
                error = str(exc)  # says which rule, never the password
            else:
                await use_rotated_session(request, rotated)
                return RedirectResponse("/dashboard?m=password_changed", 303)
        return await self.render(request, "password.html", 400, forced=user.must_change_password, error=error)

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

    async def sessions_page(self, request: Request) -> Response:
        user = await self.signed_in(request)
        current = get_context(request).session
        return await self.render(
            request,
            "sessions.html",
            sessions=await self.security.list_sessions(user.id),
            current_id=current.id if current else None,
        )

    async def sessions_revoke(self, request: Request) -> Response:
        user = await self.signed_in(request)
        form = await request.form()
        await self.security.revoke_session(user.id, _field(form, "session_id", 64))
        return RedirectResponse("/sessions?m=session_revoked", 303)

    async def sessions_revoke_others(self, request: Request) -> Response:
        user = await self.signed_in(request)
        current = get_context(request).session
        for session in await self.security.list_sessions(user.id):
            if current is None or session.id != current.id:
                await self.security.revoke_session(user.id, session.id)
        return RedirectResponse("/sessions?m=others_revoked", 303)

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

    async def secrets_delete(self, request: Request) -> Response:
        user = await self.signed_in(request)
        form = await request.form()
        self.secrets.delete(user.id, _field(form, "name", MAX_NAME))
        return RedirectResponse("/secrets?m=secret_deleted", 303)

    # --- administration ------------------------------------------------------------------------
    async def users_page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        await self.signed_in(request, USERS_PERMISSION)
        users = await self.security.list_users(limit=1000)
        rows = [(u, await self.security.user_roles(u.id)) for u in users]
        roles = [r.name for r in await self.security.list_roles()]
        return await self.render(request, "admin_users.html", status, rows=rows, roles=roles, error=error)

    async def users_create(self, request: Request) -> Response:
        actor = await self.signed_in(request, USERS_PERMISSION)
        form = await request.form()
        roles = [r for r in form.getlist("roles") if isinstance(r, str)]
        try:
            await self.security.register_user(
                _field(form, "username", 256).strip(),
                _field(form, "password"),
                roles=roles,
                must_change_password=form.get("must_change") == "on",
                actor_user_id=actor.id,
            )
        except FundamentsError as exc:  # policy, taken name, bad role: the message says which
            return await self.users_page(request, status=400, error=str(exc))
        return RedirectResponse("/admin/users?m=user_created", 303)

    async def users_action(self, request: Request) -> Response:
        actor = await self.signed_in(request, USERS_PERMISSION)
        form = await request.form()
        action = request.path_params["action"]
        try:
            user_id = int(request.path_params["user_id"])
            if action == "disable":
                if user_id == actor.id:
                    return await self.users_page(request, status=400, error="You cannot disable yourself.")
                await self.security.disable_user(user_id, actor_user_id=actor.id)
            elif action == "enable":
                await self.security.enable_user(user_id, actor_user_id=actor.id)
            elif action == "unlock":
                await self.security.unlock_user(user_id, actor_user_id=actor.id)
            elif action in ("grant", "revoke"):
                change = self.security.grant_role if action == "grant" else self.security.revoke_role
                await change(user_id, _field(form, "role", 64), actor_user_id=actor.id)
            else:
                raise HTTPException(404)
        except (FundamentsError, ValueError) as exc:
            return await self.users_page(request, status=400, error=str(exc))
        done = {"disable": "user_disabled", "enable": "user_enabled", "unlock": "user_unlocked",
                "grant": "role_granted", "revoke": "role_revoked"}[action]  # fmt: skip
        return RedirectResponse(f"/admin/users?m={done}", 303)

    async def roles_page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        await self.signed_in(request, ROLES_PERMISSION)
        return await self.render(
            request, "admin_roles.html", status, roles=await self.security.list_roles(), error=error
        )

    async def roles_create(self, request: Request) -> Response:
        actor = await self.signed_in(request, ROLES_PERMISSION)
        form = await request.form()
        split = _field(form, "permissions", 10_000).replace(",", " ").split()
        inherits = _field(form, "inherits", 2_000).replace(",", " ").split()
        try:
            await self.security.create_role(
                _field(form, "name", 64).strip(),
                split,
                inherits,
                _field(form, "description", 500).strip() or None,
                actor_user_id=actor.id,
            )
        except FundamentsError as exc:
            return await self.roles_page(request, status=400, error=str(exc))
        return RedirectResponse("/admin/roles?m=role_created", 303)

    async def audit_page(self, request: Request) -> Response:
        user = await self.signed_in(request, AUDIT_PERMISSION)
        query = request.query_params
        filters = _audit_filters(query)
        events = await self.security.audit_events(
            user_id=filters["user_id"], kind=filters["kind"], since=filters["since"], limit=filters["limit"]
        )
        # Incremental: only the events since the last verification are hashed, off the event loop.
        chain = await self.security.verify_audit_chain()
        return await self.render(
            request,
            "admin_audit.html",
            events=events,
            chain=chain,
            full=self.security.last_full_audit_verification,
            can_verify_all=await self.security.check_permission(user.id, AUDIT_VERIFY_PERMISSION),
            filters=filters,
            raw=dict(query),
        )

    async def audit_verify_all(self, request: Request) -> Response:
        """POST: re-verify every event and checkpoint MAC (seconds at a million events)."""
        await self.signed_in(request, AUDIT_VERIFY_PERMISSION)
        await self.security.verify_audit_chain(full=True)
        return RedirectResponse("/admin/audit", 303)


AUDIT_VERIFY_PERMISSION = "console:audit:verify"  # the full re-verification: admins (*) by default


def _audit_filters(query: Mapping[str, str]) -> dict[str, Any]:
    def number(name: str) -> int | None:
        value = query.get(name, "").strip()
        return int(value) if value.isdigit() and len(value) < 19 else None

    since = None
    day = query.get("since", "").strip()
    if day:
        try:
            since = dt.datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=dt.UTC).timestamp()
        except ValueError:
            since = None
    kind = query.get("kind", "").strip()[:64] or None
    return {
        "user_id": number("user_id"),
        "kind": kind,
        "since": since,
        "limit": min(number("limit") or 100, 1000),
    }
