"""The roles pages: list and create roles, edit one's permissions and parents, delete one.

The naming rule shown on the page is the one the library enforces (``ROLE_NAME_RULE``); the form's
``pattern`` is a convenience, the server's refusal is what counts. Deleting a role goes through a
confirmation page saying how many accounts hold it and which roles inherit it.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from app.confirm import confirmation_page, confirmed, to_confirmation
from app.console import ROLES_PERMISSION, Console, _field, _sentence, refusal_status
from fundaments.errors import FundamentsError, RoleError
from fundaments.security import ROLE_NAME_RULE, Role

BAD_ROLE_NAME = f"That role name is refused: {ROLE_NAME_RULE}."
NO_SUCH_ROLE = "There is no role of that name."


def _names(text: str) -> list[str]:
    """ "a, b c" as ["a", "b", "c"]: the form takes commas or spaces."""
    return text.replace(",", " ").split()


def refusal_text(exc: FundamentsError) -> str:
    """The facade's refusal as a sentence for the page; a bad role name as the rule, not an echo."""
    if isinstance(exc, RoleError) and str(exc).startswith("invalid role name"):
        return BAD_ROLE_NAME
    return _sentence(exc)


class RolePages:
    def __init__(self, console: Console) -> None:
        self.console = console

    async def _role(self, request: Request) -> Role:
        """The stored role the path names (a 404 for any other name: it is never echoed)."""
        name = request.path_params["name"]
        role = next((r for r in await self.console.security.list_roles() if r.name == name), None)
        if role is None:
            raise HTTPException(404)
        return role

    async def page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        await self.console.signed_in(request, ROLES_PERMISSION)
        roles = await self.console.security.list_roles()
        return await self.console.render(
            request, "admin_roles.html", status, roles=roles, error=error, name_rule=ROLE_NAME_RULE
        )

    async def create(self, request: Request) -> Response:
        actor = await self.console.signed_in(request, ROLES_PERMISSION)
        form = await request.form()
        try:
            await self.console.security.create_role(
                _field(form, "name", 100).strip(),
                _names(_field(form, "permissions", 10_000)),
                _names(_field(form, "inherits", 2_000)),
                _field(form, "description", 500).strip() or None,
                actor_user_id=actor.id,
            )
        except FundamentsError as exc:
            return await self.page(request, status=refusal_status(exc), error=refusal_text(exc))
        return RedirectResponse("/admin/roles?m=role_created", 303)

    async def edit_page(self, request: Request, *, status: int = 200, error: str | None = None) -> Response:
        await self.console.signed_in(request, ROLES_PERMISSION)
        role = await self._role(request)
        others = [r.name for r in await self.console.security.list_roles() if r.name != role.name]
        return await self.console.render(
            request, "admin_role.html", status, role=role, others=others, error=error
        )

    async def set_permissions(self, request: Request) -> Response:
        return await self._change(request, "permissions")

    async def set_inherits(self, request: Request) -> Response:
        return await self._change(request, "inherits")

    async def _change(self, request: Request, what: str) -> Response:
        actor = await self.console.signed_in(request, ROLES_PERMISSION)
        role = await self._role(request)
        form = await request.form()
        security = self.console.security
        try:
            if what == "permissions":
                wanted = _names(_field(form, "permissions", 10_000))
                unchanged = sorted(set(wanted)) == list(role.permissions)
                await security.set_role_permissions(role.name, wanted, actor_user_id=actor.id)
            else:
                parents = [p for p in form.getlist("inherits") if isinstance(p, str)]
                unchanged = sorted(set(parents)) == list(role.inherits)
                await security.set_role_inherits(role.name, parents, actor_user_id=actor.id)
        except FundamentsError as exc:  # a bad permission, a cycle, the last administrator
            return await self.edit_page(request, status=refusal_status(exc), error=refusal_text(exc))
        done = "role_unchanged" if unchanged else "role_updated"
        return RedirectResponse(f"/admin/roles/{role.name}?m={done}", 303)

    async def delete_page(self, request: Request) -> Response:
        """GET: what deleting the role affects, and the form that does it."""
        await self.console.signed_in(request, ROLES_PERMISSION)
        role = await self._role(request)
        security = self.console.security
        holders = await security.role_holder_count(role.name)
        heirs = [r.name for r in await security.list_roles() if role.name in r.inherits]
        consequences = [
            f"The role “{role.name}” is deleted with its {len(role.permissions)} permission(s).",
            f"{holders} account(s) holding it lose it, and with it these permissions, at their next request."
            if holders
            else "No account holds it.",
            "These roles inherit it and lose what it gives: " + ", ".join(heirs) + "."
            if heirs
            else "No role inherits it.",
            "This cannot be undone; the role can be created again, but not its grants.",
        ]
        return await confirmation_page(
            self.console,
            request,
            title=f"Delete the role {role.name}?",
            consequences=consequences,
            action=f"/admin/roles/{role.name}/delete",
            fields={},
            button="Delete the role",
            cancel=f"/admin/roles/{role.name}",
        )

    async def delete(self, request: Request) -> Response:
        actor = await self.console.signed_in(request, ROLES_PERMISSION)
        role = await self._role(request)
        form = await request.form()
        if not confirmed(form):
            return to_confirmation(f"/admin/roles/{role.name}/delete")
        try:
            await self.console.security.delete_role(role.name, actor_user_id=actor.id)
        except FundamentsError as exc:  # the last administrator's role, a delegation refusal
            return await self.edit_page(request, status=refusal_status(exc), error=refusal_text(exc))
        return RedirectResponse("/admin/roles?m=role_deleted", 303)
