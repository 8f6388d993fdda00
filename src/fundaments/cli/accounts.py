"""Accounts, sessions and the audit trail: ``users``, ``sessions``, ``audit`` (roles: roles.py)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from fundaments.cli.common import (
    CommandError,
    audit_app,
    err,
    fail,
    out,
    progress_bar,
    read_password,
    resolve_user,
    sessions_app,
    timestamp,
    users_app,
    with_security,
)
from fundaments.errors import (
    InvalidArgument,
    InvalidPasswordHashError,
    InvalidUsernameError,
    RoleError,
    UserExistsError,
)
from fundaments.security import AuditEvent, Security

IMPORT_HEADER = ["username", "password_hash"]
FOLLOW_PAGE = 1000  # events per --follow poll
MAX_SHOWN_NAME = 64  # characters of a rejected row's username echoed back

# --- users -----------------------------------------------------------------------------------------


@users_app.command("list")
def users_list(
    limit: int = typer.Option(100, min=1, max=1000, help="How many accounts."),
    after: int = typer.Option(0, min=0, help="Accounts with ids above this one (the last id of a page)."),
    search: str | None = typer.Option(None, help="Only accounts whose username or address contains this."),
) -> None:
    """Accounts in id order, with their state (disabled, locked), address and roles."""
    from fundaments.cli.users import account_state  # users.py registers commands on import too

    async def work(security: Security) -> None:
        users = await security.list_users(limit=limit, after_id=after, search=search)
        table = Table(show_header=True, header_style="bold")
        for name in ("id", "username", "state", "email", "roles", "last login"):
            table.add_column(name)
        for user in users:
            table.add_row(
                str(user.id),
                escape(user.username),
                account_state(user),
                escape(user.email or ""),
                ", ".join(user.roles),
                timestamp(user.last_login_at),
            )
        out.print(table)
        more = f"; next page: --after {users[-1].id}" if len(users) == limit else ""
        out.print(f"{len(users)} account(s){more}")

    with_security(work)


@users_app.command("create")
def users_create(
    username: str = typer.Argument(..., help="The new account's username."),
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="A role to grant (repeatable).")
    ] = None,
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
    must_change_password: bool = typer.Option(
        False, "--must-change-password", help="Ask for a new password at the first login."
    ),
    email: str | None = typer.Option(None, "--email", help="The account's email address (for recovery)."),
) -> None:
    """Create an account; the password comes from a hidden prompt or --password-stdin, never argv."""
    password = read_password(password_stdin)

    async def work(security: Security) -> None:
        user = await security.register_user(
            username, password, roles=role or (), must_change_password=must_change_password, email=email
        )
        out.print(
            f"created account #{user.id} {escape(user.username)}"
            + (f" ({', '.join(user.roles)})" if user.roles else "")
        )

    with_security(work)


@users_app.command("disable")
def users_disable(user: str = typer.Argument(..., help="Username or id.")) -> None:
    """Disable an account: every session ends at once, permission checks answer no."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        ended = await security.disable_user(account.id)
        out.print(f"disabled {escape(account.username)} (#{account.id}); {ended} session(s) ended")

    with_security(work)


@users_app.command("enable")
def users_enable(user: str = typer.Argument(..., help="Username or id.")) -> None:
    """Re-enable a disabled account."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        await security.enable_user(account.id)
        out.print(f"enabled {escape(account.username)} (#{account.id})")

    with_security(work)


@users_app.command("unlock")
def users_unlock(user: str = typer.Argument(..., help="Username or id.")) -> None:
    """Clear an account's lock, failure count and backoff."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        if await security.unlock_user(account.id):
            out.print(f"unlocked {escape(account.username)} (#{account.id})")
        else:
            out.print(f"{escape(account.username)} (#{account.id}) was not locked: nothing changed")

    with_security(work)


@users_app.command("set-password")
def users_set_password(
    user: str = typer.Argument(..., help="Username or id."),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="Read the password from stdin."),
    no_must_change: bool = typer.Option(
        False, "--no-must-change", help="Do not ask the owner for a new password at the next login."
    ),
) -> None:
    """Set an account's password without the old one (an administrator's reset).

    The password comes from a hidden prompt (asked twice) or --password-stdin, never argv. The
    policy applies; the account is unlocked and every session of it ends. Unless --no-must-change,
    the owner must choose a new password at the next login.
    """

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)  # before the prompt: a typo costs no typing
        password = read_password(password_stdin, label="New password")
        await security.set_password(account.id, password, must_change=not no_must_change)
        out.print(
            f"password of {escape(account.username)} (#{account.id}) set; every session ended"
            + ("" if no_must_change else "; a new one must be chosen at the next login")
        )

    with_security(work)


def _import_rows(text: str) -> list[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank row, without a ``username,password_hash`` header."""
    reader = csv.reader(io.StringIO(text, newline=""))
    rows = [(reader.line_num, row) for row in reader]
    if rows and [cell.strip().lower() for cell in rows[0][1]] == IMPORT_HEADER:
        rows = rows[1:]
    return [(line, row) for line, row in rows if any(cell.strip() for cell in row)]


@users_app.command("import")
def users_import(
    csv_file: str = typer.Argument(..., metavar="CSV", help="username,password_hash rows; - for stdin."),
    role: Annotated[
        list[str] | None, typer.Option("--role", "-r", help="A role to grant every imported account.")
    ] = None,
) -> None:
    """Import accounts with their existing hashes (PyFundaments/passlib, Django, Argon2).

    Each account is upgraded to the current hash at its first login. Every rejected row is
    reported with its line and reason; the others are imported. Exit 1 if any row was rejected.
    """
    try:
        text = sys.stdin.read() if csv_file == "-" else Path(csv_file).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise fail(f"cannot read {csv_file}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        rows = _import_rows(text)
    except csv.Error as exc:
        raise fail(f"{csv_file} is not valid CSV: {exc}") from None

    async def work(security: Security) -> tuple[int, list[tuple[int, str, str]]]:
        imported = 0
        rejected: list[tuple[int, str, str]] = []
        for line, row in rows:
            shown = row[0].strip()[:MAX_SHOWN_NAME] if row else ""
            if len(row) < len(IMPORT_HEADER):
                rejected.append((line, shown, "expected 2 fields (username,password_hash), found 1"))
                continue
            # An Argon2 hash holds commas (m=19456,t=2,p=1): unquoted, it spans the rest of the row.
            username, password_hash = row[0].strip(), ",".join(row[1:]).strip()
            if not username or not password_hash:
                rejected.append((line, shown, "empty username or password hash"))
                continue
            try:
                await security.register_user(username, password_hash=password_hash, roles=role or ())
            except (
                InvalidUsernameError,
                InvalidPasswordHashError,
                UserExistsError,
                RoleError,
                InvalidArgument,
            ) as exc:
                rejected.append((line, shown, str(exc)))
                continue
            imported += 1
        return imported, rejected

    imported, rejected = with_security(work)
    for line, name, reason in rejected:
        out.print(f"line {line}: {escape(name) or '(no username)'}: rejected: {escape(reason)}")
    out.print(f"imported {imported} account(s), rejected {len(rejected)}")
    if rejected:
        raise typer.Exit(1)


# --- sessions --------------------------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(user: str = typer.Argument(..., help="Username or id.")) -> None:
    """An account's live sessions, newest first."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        sessions = await security.list_sessions(account.id)
        table = Table(show_header=True, header_style="bold")
        table.add_column("id", no_wrap=True)
        for name in ("created", "last seen", "expires", "ip address", "user agent"):
            table.add_column(name, overflow="fold")
        for session in sessions:
            table.add_row(
                session.id,
                timestamp(session.created_at),
                timestamp(session.last_seen),
                timestamp(session.expires_at),
                escape(session.ip_address),
                escape(session.user_agent),
            )
        out.print(table)
        out.print(f"{len(sessions)} live session(s) of {escape(account.username)} (#{account.id})")

    with_security(work)


@sessions_app.command("revoke")
def sessions_revoke(
    session_id: str = typer.Argument(..., metavar="ID", help="The session's public id (from sessions list)."),
    user: str = typer.Option(..., "--user", "-u", help="The session's owner: username or id."),
) -> None:
    """End one session. Its owner is named too: a session id alone never ends someone else's session."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        if not await security.revoke_session(account.id, session_id):
            raise CommandError(f"{account.username} (#{account.id}) has no live session {session_id!r}")
        out.print(f"revoked session {escape(session_id)} of {escape(account.username)} (#{account.id})")

    with_security(work)


@sessions_app.command("revoke-all")
def sessions_revoke_all(user: str = typer.Argument(..., help="Username or id.")) -> None:
    """End every session of an account."""

    async def work(security: Security) -> None:
        account = await resolve_user(security, user)
        ended = await security.logout_all(account.id)
        out.print(f"ended {ended} session(s) of {escape(account.username)} (#{account.id})")

    with_security(work)


# --- audit -----------------------------------------------------------------------------------------


def _event_line(event: AuditEvent) -> str:
    parts = [f"#{event.id}", timestamp(event.occurred_at), event.kind, event.outcome]
    for label, value in (
        ("actor", event.actor_user_id),
        ("subject", event.subject_user_id),
        ("user", event.username),
        ("ip", event.ip_address),
        ("session", event.session_id),
    ):
        if value is not None:
            parts.append(f"{label}={value}")
    if event.details:
        parts.append(json.dumps(dict(event.details), sort_keys=True, ensure_ascii=True))
    return " ".join(parts)


def _print_events(events: list[AuditEvent]) -> None:
    for event in events:
        out.print(_event_line(event), markup=False, soft_wrap=True)


@audit_app.command("tail")
def audit_tail(
    limit: int = typer.Option(20, "--limit", "-n", min=1, max=10_000, help="How many recent events."),
    user: str | None = typer.Option(None, "--user", "-u", help="Only events by or about this account."),
    kind: str | None = typer.Option(
        None, "--kind", "-k", help="Only events of this kind, e.g. login.failed."
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new events until Ctrl-C."),
    interval: float = typer.Option(1.0, min=0.01, max=60, help="Seconds between polls with --follow."),
    max_polls: int = typer.Option(0, min=0, hidden=True, help="Stop --follow after this many polls (tests)."),
) -> None:
    """The most recent audit events, oldest first; --follow polls for new ones."""

    async def work(security: Security) -> None:
        user_id = (await resolve_user(security, user)).id if user is not None else None
        events = list(reversed(await security.audit_events(user_id=user_id, kind=kind, limit=limit)))
        _print_events(events)
        if not follow:
            return
        last_id = events[-1].id if events else 0
        since = events[-1].occurred_at if events else None
        polls = 0
        while not max_polls or polls < max_polls:
            await asyncio.sleep(interval)
            polls += 1
            page = await security.audit_events(user_id=user_id, kind=kind, since=since, limit=FOLLOW_PAGE)
            if len(page) == FOLLOW_PAGE and page[-1].id > last_id + 1:
                err.print(f"(more than {FOLLOW_PAGE} new events in one poll: older ones not shown)")
            fresh = [e for e in page if e.id > last_id]
            fresh.sort(key=lambda e: e.id)
            _print_events(fresh)
            if fresh:
                last_id, since = fresh[-1].id, max(since or 0.0, fresh[-1].occurred_at)

    with_security(work, interrupt_ok=True)


@audit_app.command("verify")
def audit_verify(
    full: bool = typer.Option(
        False, "--full", help="Re-verify every event and every checkpoint MAC, not only the newest part."
    ),
) -> None:
    """Verify the hash chain and its checkpoints; exit 1 naming the first broken event if anything
    was changed. Without --full: from the newest checkpoint to the head (cheap)."""

    async def work(security: Security) -> None:
        with progress_bar("verifying the audit trail") as progress:
            result = await security.verify_audit_chain(full=full, progress=progress if full else None)
        if result:
            scope = "every event and checkpoint" if full else "from the newest checkpoint"
            out.print(
                f"[green]✓[/] audit chain intact: {result.events_checked} event(s), "
                f"{result.checkpoints_checked} checkpoint(s); {result.events_hashed} hashed ({scope})"
            )
            return
        out.print(
            f"[red]✗[/] audit chain broken at event #{result.broken_event_id}: {escape(result.reason or '')} "
            f"(event {result.events_checked} in order); events from there on cannot be trusted"
        )
        raise typer.Exit(1)

    with_security(work)
