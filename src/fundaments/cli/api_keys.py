"""``keys api create|list|revoke|rotate``: API keys for machine clients (docs/api-keys.md).

A token is printed once, alone on stdout (``TOKEN=$(fundaments keys api create …)`` captures it);
what the key is and the warning that it cannot be shown again go to stderr. It is never logged.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from fundaments.cli.common import (
    TYPER_OPTIONS,
    CommandError,
    err,
    keys_app,
    out,
    resolve_user,
    timestamp,
    with_security,
)
from fundaments.security import ApiKey, ApiKeyCreated, Security

api_app = typer.Typer(help="API keys: create, list, revoke, rotate.", **TYPER_OPTIONS)
keys_app.add_typer(api_app, name="api")

DAY = 86_400
PIPED_WIDTH = 400  # columns of the listing when stdout is not a terminal
COLUMNS = (
    "id",
    "owner",
    "name",
    "prefix",
    "scopes",
    "created",
    "last used",
    "expires",
    "allowed ips",
    "state",
)
SHOWN_ONCE = "this token is shown once and cannot be shown again: store it now (only its prefix is kept)"


def _print_token(created: ApiKeyCreated, what: str) -> None:
    key = created.key
    err.print(
        f"{what} {escape(key.name)!r} ({key.id}, prefix {key.prefix}) for user #{key.user_id}", soft_wrap=True
    )
    err.print(f"[bold yellow]warning:[/] {SHOWN_ONCE}", markup=True, soft_wrap=True)
    typer.echo(created.token)  # stdout, alone, once


@api_app.command("create")
def api_create(
    user: str = typer.Option(..., "--user", help="The owner: a username or id."),
    name: str = typer.Option(..., "--name", help="What the key is for (shown in lists)."),
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope", "-s", help="A permission the key may use (repeatable); the owner must hold it."
        ),
    ] = None,
    expires_days: int | None = typer.Option(
        None, "--expires-days", min=1, max=3650, help="Days until it expires (default: never)."
    ),
    allow_ip: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-ip", help="An address or network it may be used from (repeatable; default any)."
        ),
    ] = None,
    rate_limit: str | None = typer.Option(None, "--rate-limit", help='Its own limit, such as "600/minute".'),
) -> None:
    """Create a key; its token is printed once on stdout."""

    async def work(security: Security) -> ApiKeyCreated:
        owner = await resolve_user(security, user)
        return await security.create_api_key(
            owner.id,
            name=name,
            scopes=scope or (),
            expires_in=None if expires_days is None else expires_days * DAY,
            allowed_ips=allow_ip or None,
            rate_limit=rate_limit,
        )

    _print_token(with_security(work), "created API key")


def _state(key: ApiKey) -> str:
    if key.revoked_at is not None:
        return f"revoked {timestamp(key.revoked_at)}"
    if key.previous_expires_at is not None:
        return f"live (previous token until {timestamp(key.previous_expires_at)})"
    return "live"


@api_app.command("list")
def api_list(
    user: str | None = typer.Option(
        None, "--user", help="Only this account's keys (default: every account's)."
    ),
    limit: int = typer.Option(100, min=1, max=1000, help="How many keys."),
    after: str | None = typer.Option(None, help="Keys after this key id (the last id of a page)."),
) -> None:
    """Keys with prefix, scopes, last use, expiry and state; never a token."""

    async def work(security: Security) -> None:
        if user is not None:
            owner = await resolve_user(security, user)
            keys = await security.list_api_keys(owner.id, after=after, limit=limit)
            owners = {owner.id: owner.username}
        else:
            keys = await security.list_all_api_keys(after=after, limit=limit)
            owners = await security.usernames({k.user_id for k in keys})
        table = Table(show_header=True, header_style="bold")
        for column in COLUMNS:  # ids and prefixes whole, to be copied into `revoke`/`rotate`
            table.add_column(column, no_wrap=column in ("id", "prefix"))
        for k in keys:
            table.add_row(
                k.id,
                escape(owners.get(k.user_id, f"#{k.user_id}")),
                escape(k.name),
                k.prefix + "…",
                " ".join(k.scopes),
                timestamp(k.created_at),
                timestamp(k.last_used_at) or "never",
                timestamp(k.expires_at) or "never",
                " ".join(str(n) for n in k.allowed_ips) or "any",
                _state(k),
            )
        # Piped or captured (no terminal to fit): one line per key, whole, for grep and scripts.
        shown = out if out.is_terminal else Console(highlight=False, soft_wrap=True, width=PIPED_WIDTH)
        shown.print(table)
        more = f"; next page: --after {keys[-1].id}" if len(keys) == limit else ""
        shown.print(f"{len(keys)} key(s){more}")

    with_security(work)


@api_app.command("revoke")
def api_revoke(
    key_id: str = typer.Argument(..., help="The key's id (key_…), from `keys api list`."),
    user: str = typer.Option(..., "--user", help="The owner: a username or id."),
) -> None:
    """Revoke a key for good: its current and previous tokens stop working at once."""

    async def work(security: Security) -> None:
        owner = await resolve_user(security, user)
        if not await security.revoke_api_key(owner.id, key_id):
            raise CommandError(
                f"{owner.username} has no live API key {key_id!r}: nothing was revoked "
                "(see `fundaments keys api list --user …`)"
            )
        out.print(f"revoked {escape(key_id)} of {escape(owner.username)} (#{owner.id})")

    with_security(work)


@api_app.command("rotate")
def api_rotate(
    key_id: str = typer.Argument(..., help="The key's id (key_…), from `keys api list`."),
    user: str = typer.Option(..., "--user", help="The owner: a username or id."),
    overlap: float = typer.Option(
        3600, "--overlap", min=0, max=7 * DAY, help="Seconds the replaced token keeps working (0: none)."
    ),
) -> None:
    """A new token for the same key id; printed once on stdout. Safe to retry (docs/api-keys.md)."""

    async def work(security: Security) -> ApiKeyCreated:
        owner = await resolve_user(security, user)
        return await security.rotate_api_key(owner.id, key_id, overlap_seconds=overlap)

    rotated = with_security(work)
    _print_token(rotated, "rotated API key")
    if rotated.key.previous_expires_at is not None:
        err.print(f"the replaced token works until {timestamp(rotated.key.previous_expires_at)}")
    else:
        err.print("the replaced token no longer works")
