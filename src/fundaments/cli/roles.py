"""Roles: ``roles list|create|edit|delete|grant|revoke``.

A change that would leave no enabled account holding ``*`` (revoking the last administrator's
role, dropping ``*`` from it, deleting it) is refused by the facade with LastAdministratorError,
shown as one line and exit 1 like every other error.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fundaments.cli.common import CommandError, confirm, fail, out, resolve_user, roles_app, with_security
from fundaments.errors import FundamentsError
from fundaments.security import Security


@roles_app.command("list")
def roles_list() -> None:
    """Every role with its own permissions and parents."""

    async def work(security: Security) -> None:
        table = Table(show_header=True, header_style="bold")
        for name in ("role", "permissions", "inherits", "description"):
            table.add_column(name, overflow="fold")
        for role in await security.list_roles():
            table.add_row(
                escape(role.name),
                escape(", ".join(role.permissions)),
                escape(", ".join(role.inherits)),
                escape(role.description or ""),
            )
        out.print(table)

    with_security(work)


@roles_app.command("create")
def roles_create(
    name: str = typer.Argument(..., help="The role's name."),
    permission: Annotated[
        list[str] | None,
        typer.Option("--permission", "-p", help="A permission, e.g. reports:read (repeatable)."),
    ] = None,
    inherits: Annotated[
        list[str] | None, typer.Option("--inherits", help="A parent role (repeatable).")
    ] = None,
    description: str | None = typer.Option(None, "--description", help="What the role is for."),
) -> None:
    """Create a role."""

    async def work(security: Security) -> None:
        role = await security.create_role(name, permission or (), inherits or (), description)
        out.print(f"created role {escape(role.name)}")

    with_security(work)


@roles_app.command("grant")
def roles_grant(
    user: str = typer.Argument(..., help="Username or id."),
    role: str = typer.Argument(..., help="Role name."),
) -> None:
    """Grant a role to an account (its sessions rotate at their next request)."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        if await security.grant_role(account.id, role):
            out.print(f"granted {escape(role)} to {escape(account.username)} (#{account.id})")
        else:
            out.print(f"{escape(account.username)} (#{account.id}) already held {escape(role)}")

    with_security(work)


@roles_app.command("revoke")
def roles_revoke(
    user: str = typer.Argument(..., help="Username or id."),
    role: str = typer.Argument(..., help="Role name."),
) -> None:
    """Revoke a role from an account."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        if await security.revoke_role(account.id, role):
            out.print(f"revoked {escape(role)} from {escape(account.username)} (#{account.id})")
        else:
            out.print(f"{escape(account.username)} (#{account.id}) did not hold {escape(role)}")

    with_security(work)


@roles_app.command("edit")
def roles_edit(
    name: str = typer.Argument(..., help="The role's name."),
    permission: Annotated[
        list[str] | None,
        typer.Option("--permission", "-p", help="The role's permissions from now on (repeatable)."),
    ] = None,
    inherits: Annotated[
        list[str] | None,
        typer.Option("--inherits", help="The roles it inherits from now on (repeatable)."),
    ] = None,
    no_permissions: bool = typer.Option(False, "--no-permissions", help="Remove every own permission."),
    no_inherits: bool = typer.Option(False, "--no-inherits", help="Inherit no role any more."),
) -> None:
    """Replace a role's own permissions and/or the roles it inherits (what is not given stays)."""
    if (permission and no_permissions) or (inherits and no_inherits):
        raise fail("--permission with --no-permissions (or --inherits with --no-inherits) contradict")
    new_permissions = [] if no_permissions else permission
    new_inherits = [] if no_inherits else inherits
    if new_permissions is None and new_inherits is None:
        out.print("nothing to change: give --permission, --inherits, --no-permissions or --no-inherits")
        raise typer.Exit(2)

    async def work(security: Security) -> None:
        if new_permissions is not None:
            await security.set_role_permissions(name, new_permissions)
        if new_inherits is not None:
            try:
                await security.set_role_inherits(name, new_inherits)
            except FundamentsError as exc:
                if new_permissions is None:
                    raise
                raise CommandError(f"permissions replaced, inheritance unchanged: {exc}") from None
        role = next((r for r in await security.list_roles() if r.name == name), None)
        if role is None:  # deleted by someone else meanwhile
            raise CommandError(f"role {name!r} was deleted while it was being edited")
        out.print(
            f"role {escape(role.name)}: permissions {escape(', '.join(role.permissions)) or '(none)'}; "
            f"inherits {escape(', '.join(role.inherits)) or '(nothing)'}"
        )

    with_security(work)


@roles_app.command("delete")
def roles_delete(
    name: str = typer.Argument(..., help="The role's name."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking."),
) -> None:
    """Delete a role: revoked from every holder, removed from the roles inheriting it. Says how
    many accounts it affects and asks first (--yes skips the question)."""

    async def work(security: Security) -> None:
        direct, affected = await security.role_holders(name)
        out.print(
            f"role {escape(name)} is held by {direct} account(s)"
            + (f", and through roles inheriting it by {affected - direct} more" if affected > direct else "")
        )
        if not yes:
            confirm(f"Delete role {name} and revoke it from {affected} account(s)?")
        await security.delete_role(name)
        out.print(f"deleted role {escape(name)}; {affected} account(s) affected")

    with_security(work)
