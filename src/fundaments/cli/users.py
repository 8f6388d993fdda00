"""``users show`` and ``users delete``: one account in full, and its removal (the rest: accounts.py)."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from fundaments.cli.common import confirm, out, resolve_user, timestamp, users_app, with_security
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
