"""An administrator's actions on one account: its page (roles, sessions, set a password) and the
actions of the users list, the destructive ones through a confirmation page.

``POST /admin/users/<id>/<action>`` does an action. Revoking a role, disabling, ending a session
and setting a password act only with ``confirmed=yes``, which only their confirmation page (a GET
of the same path) sends; without it the POST changes nothing and leads to that page.
"""

from __future__ import annotations

from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.confirm import confirmation_page, confirmed, to_confirmation
from app.console import PASSWORDS_DIFFER, USERS_PERMISSION, Console, _field, _sentence, refusal_status
from fundaments.errors import FundamentsError, InvalidArgument, UnknownUserError
from fundaments.security import MAX_SESSION_ID, User

USER_ACTIONS = ("disable", "enable", "unlock", "grant", "revoke", "end-session", "password", "delete")
CONFIRMED_ACTIONS = frozenset({"disable", "revoke", "end-session", "password", "delete"})  # destructive
NOT_HELD = "The account does not hold that role; nothing to revoke."
NO_SUCH_SESSION = "The account has no such session; nothing to sign out."
CHOOSE_A_ROLE = "Choose a role to grant."
SET_OWN = "Change your own password on the Change password page: it asks for the current one."


class UserPages:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def _target(self, request: Request) -> User:
        user_id: int = request.path_params["user_id"]  # the route's int convertor: ASCII digits
        user = await self.console.security.get_user(user_id) if 0 < user_id < 2**63 else None
        if user is None:
            raise HTTPException(404)
        return user

    # --- pages -----------------------------------------------------------------------------------
    async def detail(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        """One account: roles, live sessions, and the form to set its password."""
        actor = await self.console.signed_in(request, USERS_PERMISSION)
        target = await self._target(request)
        security = self.console.security
        return await self.console.render(
            request,
            "admin_user.html",
            status,
            target=target,
            target_roles=await security.user_roles(target.id),
            sessions=await security.list_sessions(target.id),
            mfa=await security.mfa_status(target.id),
            is_self=target.id == actor.id,
            error=error,
        )

    async def confirm_page(self, request: Request) -> Response:
        """GET /admin/users/<id>/<action>: what the destructive action will do, and its form."""
        await self.console.signed_in(request, USERS_PERMISSION)
        action = request.path_params["action"]
        if action not in CONFIRMED_ACTIONS:
            raise HTTPException(404)
        target = await self._target(request)
        security, query = self.console.security, request.query_params
        back, path = f"/admin/users/{target.id}", f"/admin/users/{target.id}/{action}"
        if action == "password":
            return await self.detail(request)  # the page with the form, which says what happens
        if action == "revoke":
            role = query.get("role", "")
            if role not in await security.user_roles(target.id):
                return await self.detail(request, status=404, error=NOT_HELD)
            title = f"Revoke the role {role} from {target.username}?"
            consequences = [
                f"{target.username} loses the role “{role}” and its permissions at the next request.",
                "It can be granted again later.",
            ]
            return await confirmation_page(
                self.console, request, title=title, consequences=consequences, action=path,
                fields={"role": role}, button="Revoke the role", cancel=back,
            )  # fmt: skip
        if action == "end-session":
            session_id = query.get("session_id", "")[:MAX_SESSION_ID]
            if session_id not in {s.id for s in await security.list_sessions(target.id)}:
                return await self.detail(request, status=404, error=NO_SUCH_SESSION)
            return await confirmation_page(
                self.console, request, title=f"Sign out a session of {target.username}?",
                consequences=["That browser is signed out at once; the account can sign in again."],
                action=path, fields={"session_id": session_id}, button="Sign out the session", cancel=back,
            )  # fmt: skip
        sessions = len(await security.list_sessions(target.id))
        if action == "delete":
            roles = ", ".join(target.roles) or "none"
            return await confirmation_page(
                self.console, request, title=f"Delete {target.username} for good?",
                consequences=[f"{sessions} live session(s) end now; its roles ({roles}), remembered devices "
                              "and reset links are removed.",
                              "This cannot be undone. The audit trail keeps the account's id and name; "
                              "the id is never given to another account."],
                action=path, fields={}, button="Delete the account", cancel=back,
            )  # fmt: skip
        return await confirmation_page(
            self.console, request, title=f"Disable {target.username}?",
            consequences=[f"{target.username} can no longer sign in; {sessions} live session(s) end now.",
                          "Every permission check for the account answers no until it is enabled again."],
            action=path, fields={}, button="Disable the account", cancel=back,
        )  # fmt: skip

    # --- the action --------------------------------------------------------------------------------
    async def action(self, request: Request) -> Response:
        actor = await self.console.signed_in(request, USERS_PERMISSION)
        form = await request.form()
        action = request.path_params["action"]
        if action not in USER_ACTIONS:
            raise HTTPException(404)
        user_id: int = request.path_params["user_id"]
        if action in CONFIRMED_ACTIONS and not confirmed(form):  # nothing happens without the page
            fields = {"role": _field(form, "role", 64), "session_id": _field(form, "session_id", 64)}
            return to_confirmation(f"/admin/users/{user_id}/{action}", {} if action == "password" else fields)
        try:
            done = await self._act(actor, action, user_id, form)
        except FundamentsError as exc:  # unknown user or role, a refused change: the message says which
            if action in ("password", "end-session"):
                return await self.detail(request, status=refusal_status(exc), error=_sentence(exc))
            return await self.console.users_page(request, status=refusal_status(exc), error=_sentence(exc))
        if action in ("password", "end-session"):
            return RedirectResponse(f"/admin/users/{user_id}?m={done}", 303)
        return RedirectResponse(f"/admin/users?m={done}", 303)

    async def _act(self, actor: User, action: str, user_id: int, form: FormData) -> str:
        """Do ``action`` to the account; the key of the message saying what happened (or that nothing did)."""
        security = self.console.security
        if action in ("grant", "revoke"):
            role = _field(form, "role", 64)
            if not role:
                raise InvalidArgument(CHOOSE_A_ROLE)
            change = security.grant_role if action == "grant" else security.revoke_role
            changed = await change(user_id, role, actor_user_id=actor.id)
            if action == "grant":
                return "role_granted" if changed else "role_already_held"
            return "role_revoked" if changed else "role_not_held"
        if action == "unlock":
            unlocked = await security.unlock_user(user_id, actor_user_id=actor.id)
            return "user_unlocked" if unlocked else "user_not_locked"
        if action == "delete":
            if user_id == actor.id:
                raise InvalidArgument("You cannot delete your own account here.")
            await security.delete_user(user_id, actor_user_id=actor.id)
            return "user_deleted"
        target = await security.get_user(user_id)
        if target is None:
            raise UnknownUserError(f"no account has id {user_id}")
        if action == "end-session":
            if not await security.revoke_session(user_id, _field(form, "session_id", MAX_SESSION_ID)):
                raise InvalidArgument(NO_SUCH_SESSION)
            return "user_session_ended"
        if action == "password":
            return await self._set_password(actor, target, form)
        if action == "disable":
            if user_id == actor.id:
                raise InvalidArgument("You cannot disable yourself.")
            if target.is_disabled:
                return "user_already_disabled"
            await security.disable_user(user_id, actor_user_id=actor.id)
            return "user_disabled"
        if not target.is_disabled:
            return "user_already_enabled"
        await security.enable_user(user_id, actor_user_id=actor.id)
        return "user_enabled"

    async def _set_password(self, actor: User, target: User, form: FormData) -> str:
        if target.id == actor.id:
            raise InvalidArgument(SET_OWN)
        new = _field(form, "new_password")
        if new != _field(form, "confirm_password"):
            raise InvalidArgument(PASSWORDS_DIFFER)
        await self.console.security.set_password(
            target.id, new, actor_user_id=actor.id, must_change=form.get("must_change") == "on"
        )
        return "password_set"
