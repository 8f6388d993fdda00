"""The ``fundaments`` admin command (Typer + Rich).

Exit codes: 0 success, 1 a failed check or operation, 2 usage. Errors are one clear line.
"""

from __future__ import annotations

import asyncio
import sys

import typer
from rich.console import Console
from rich.table import Table

from fundaments import __version__
from fundaments.bootstrap import check_database, migrate_database, schema_revisions
from fundaments.config import Settings, degraded_services, describe, generate_keys, load_settings
from fundaments.errors import FundamentsError

app = typer.Typer(help="fundaments: the admin command.", no_args_is_help=True, add_completion=False)
config_app = typer.Typer(help="Inspect the configuration.", no_args_is_help=True)
db_app = typer.Typer(help="Database schema migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="Encryption keys.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

out = Console()
err = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fundaments {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    """fundaments: one audited security layer."""


def _fail(message: str) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, markup=True, soft_wrap=True)
    return typer.Exit(1)


def _settings() -> Settings:
    try:
        return load_settings()
    except FundamentsError as exc:
        raise _fail(str(exc).replace("\n", "; ")) from None


@config_app.command("check")
def config_check() -> None:
    """Print the effective configuration (secrets masked), the services that will start, and every problem."""
    try:
        settings = load_settings()
    except FundamentsError as exc:
        out.print("[bold]Configuration problems[/] (fix these, then run again):")
        for problem in getattr(exc, "problems", [str(exc)]):
            out.print(f"  [red]✗[/] {problem}", highlight=False)
        raise typer.Exit(1) from None

    table = Table(title="Effective configuration", show_header=True, header_style="bold")
    table.add_column("variable")
    table.add_column("value", overflow="fold")
    for name, shown in describe(settings):
        table.add_row(name, shown)
    out.print(table)

    problems: list[str] = []
    database_problem = asyncio.run(check_database(settings))
    if database_problem:
        problems.append(database_problem)
    disabled = dict(degraded_services(settings))
    services = Table(title="Services", show_header=True, header_style="bold")
    services.add_column("service")
    services.add_column("starts")
    services.add_column("note", overflow="fold")
    services.add_row("database", "no" if database_problem else "yes", settings.database.masked)
    services.add_row(
        "encryption", "no" if "encryption" in disabled else "yes", disabled.get("encryption", "")
    )
    for name in ("accounts", "sessions", "access control", "audit"):
        services.add_row(name, "no" if database_problem else "yes", "needs the database")
    out.print(services)
    for warning in disabled.values():
        out.print(f"[yellow]![/] {warning}", highlight=False)
    for problem in problems:
        out.print(f"[red]✗[/] {problem}", highlight=False)
    if problems:
        raise typer.Exit(1)
    out.print("[green]✓[/] configuration is valid")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database schema to the newest revision."""
    settings = _settings()
    try:
        revision = asyncio.run(migrate_database(settings))
    except FundamentsError as exc:
        raise _fail(str(exc)) from None
    out.print(f"database {settings.database.masked} is at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one this version ships."""
    settings = _settings()
    try:
        current, head = asyncio.run(schema_revisions(settings))
    except FundamentsError as exc:
        raise _fail(str(exc)) from None
    state = "up to date" if current == head else "needs `fundaments db upgrade`"
    out.print(f"database revision: {current or '(empty)'}; newest: {head} ({state})")
    if current != head:
        raise typer.Exit(1)


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a fresh MASTER_ENCRYPTION_KEY and PERSISTENT_ENCRYPTION_SALT for .env or a secret store."""
    for name, value in generate_keys().items():
        sys.stdout.write(f"{name}={value}\n")


def main() -> None:
    app()
