"""``users show``, ``users delete``, ``users mfa-status`` and ``users mfa-reset``: one account in
full, its removal, its second factors and an operator's reset of them (the rest: accounts.py)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from fundaments.cli.common import (
    CommandError,
    confirm,
    out,
    resolve_user,
    timestamp,
    users_app,
    with_security,
)
from fundaments.security import Security, User


def account_state(user: User) -> str:
    """One phrase for the account's state: disabled, locked (until when), active; a pending change."""
    if user.is_disabled:
        state = "disabled"
    elif user.locked_until is not None:
        state = f"locked until {timestamp(user.locked_until)}"
    else:
        state = "active"
    if user.must_change_password:
        state += ", must change password"
    return state


@users_app.command("show")
def users_show(user: str = typer.Argument(..., help="Username or id.")) -> None:
    """One account: state and lock, address, roles, last login and its live sessions."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        sessions = await security.list_sessions(account.id)
        address = "(none)"
        if account.email is not None:
            address = escape(account.email) + (" (verified)" if account.email_verified else " (not verified)")
        rows = [
            ("id", str(account.id)),
            ("username", escape(account.username)),
            ("state", account_state(account)),
            ("email", address),
            ("roles", ", ".join(account.roles) or "(none)"),
            ("created", timestamp(account.created_at)),
            ("last login", timestamp(account.last_login_at) or "never"),
            ("sessions", str(len(sessions))),
        ]
        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for name, value in rows:
            table.add_row(name, value)
        out.print(table)
        if sessions:
            listing = Table(show_header=True, header_style="bold")
            for name in ("session", "ip", "user agent", "created", "last seen"):
                listing.add_column(name)
            for s in sessions:
                listing.add_row(
                    s.id,
                    s.ip_address,
                    escape(s.user_agent[:60]),
                    timestamp(s.created_at),
                    timestamp(s.last_seen),
                )
            out.print(listing)

    with_security(work)


@users_app.command("delete")
def users_delete(
    user: str = typer.Argument(..., help="Username or id."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Delete an account for good: sessions, roles, devices and links go; the audit keeps its id.
    The last administrator cannot be deleted."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        sessions = await security.list_sessions(account.id)
        out.print(
            f"{escape(account.username)} (#{account.id}): roles {', '.join(account.roles) or '(none)'}, "
            f"{len(sessions)} live session(s)"
        )
        if not yes:
            confirm(f"Delete the account {account.username!r} for good?")
        await security.delete_user(account.id)
        out.print(f"deleted {escape(account.username)} (#{account.id}); {len(sessions)} session(s) ended")

    with_security(work)


@users_app.command("mfa-status")
def users_mfa_status(user: str = typer.Argument(..., help="Username or id.")) -> None:
    """The account's second factors: TOTP on or off, passkeys, recovery codes left."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        status = await security.mfa_status(account.id)
        table = Table(show_header=False, box=None)
        table.add_column(style="bold")
        table.add_column()
        for name, value in (
            ("account", f"{escape(account.username)} (#{account.id})"),
            ("totp", "on" if status.totp else "off"),
            ("passkeys", str(status.passkeys)),
            ("recovery codes left", str(status.recovery_codes_left)),
        ):
            table.add_row(name, value)
        out.print(table)

    with_security(work)


@users_app.command("mfa-reset")
def users_mfa_reset(
    user: str = typer.Argument(..., help="Username or id."),
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Turn the account's TOTP off (a lost phone): its secret and recovery codes are removed and
    signing in needs the password alone until it enrols again. Audited; the owner is told by mail."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        status = await security.mfa_status(account.id)
        if not status.totp:
            raise CommandError(
                f"{account.username!r} has no two-factor sign-in (TOTP is off): nothing to reset"
            )
        out.print(
            f"{escape(account.username)} (#{account.id}): TOTP on, "
            f"{status.recovery_codes_left} recovery code(s) left"
        )
        if not yes:
            confirm(f"Turn off two-factor sign-in of {account.username!r}?")
        if not await security.disable_totp(account.id):  # turned off meanwhile
            raise CommandError(f"{account.username!r} has no two-factor sign-in any more: nothing changed")
        out.print(f"two-factor sign-in of {escape(account.username)} (#{account.id}) turned off")

    with_security(work)
