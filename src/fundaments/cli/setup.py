"""Setting up and running: ``init``, ``serve``, ``config check``, ``db``, ``keys generate``."""

from __future__ import annotations

import asyncio
import runpy
import sys
from pathlib import Path

import typer
from rich.table import Table

from fundaments.bootstrap import check_database, ensure_admin, migrate_database, schema_revisions
from fundaments.cli.common import (
    app,
    config_app,
    db_app,
    fail,
    keys_app,
    out,
    quiet_logs,
    run,
    settings_or_exit,
    with_security,
)
from fundaments.config import (
    degraded_services,
    describe,
    ensure_env_keys,
    env_file_path,
    generate_keys,
    load_settings,
)
from fundaments.errors import FundamentsError
from fundaments.security import Security


@config_app.command("check")
def config_check() -> None:
    """Print the effective configuration (secrets masked), the services that will start, and every problem."""
    try:
        settings = load_settings()
    except FundamentsError as exc:
        out.print("[bold]Configuration problems[/] (fix these, then run again):")
        for problem in getattr(exc, "problems", [str(exc)]):
            out.print(f"  [red]✗[/] {problem}")
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
        out.print(f"[yellow]![/] {warning}")
    for problem in problems:
        out.print(f"[red]✗[/] {problem}")
    if problems:
        raise typer.Exit(1)
    out.print("[green]✓[/] configuration is valid")


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database schema to the newest revision."""
    settings = settings_or_exit()
    quiet_logs()
    revision = run(migrate_database(settings))
    out.print(f"database {settings.database.masked} is at revision {revision}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one this version ships (exit 1 if behind)."""
    settings = settings_or_exit()
    quiet_logs()
    current, head = run(schema_revisions(settings))
    state = "up to date" if current == head else "needs `fundaments db upgrade`"
    out.print(f"database revision: {current or '(empty)'}; newest: {head} ({state})")
    if current != head:
        raise typer.Exit(1)


@keys_app.command("generate")
def keys_generate() -> None:
    """Print a fresh MASTER_ENCRYPTION_KEY and PERSISTENT_ENCRYPTION_SALT for .env or a secret store."""
    for name, value in generate_keys().items():
        sys.stdout.write(f"{name}={value}\n")


@app.command("init")
def init() -> None:
    """First set-up: fresh keys in .env (mode 0600, never overwriting), the schema, the admin account.

    The admin's one-time password is printed once, here; it must be changed at the first login.
    """
    env_file = env_file_path()
    try:
        written = ensure_env_keys(env_file)
    except OSError as exc:
        raise fail(f"cannot write {env_file}: {exc.strerror or exc}") from None
    if written:
        out.print(
            f"wrote fresh {' and '.join(written)} to {env_file} (mode 0600): keep it secret and "
            "backed up; data encrypted under these keys cannot be read without them"
        )
    else:
        out.print(f"encryption keys already configured; {env_file} left as it was")
    settings = settings_or_exit()
    quiet_logs()
    revision = run(migrate_database(settings))
    out.print(f"database {settings.database.masked} is at revision {revision}")

    async def admin(security: Security) -> str | None:
        return await ensure_admin(security)

    password = with_security(admin)
    if password is None:
        out.print("accounts already exist: no administrator created")
        return
    # Plain stdout, not a log: logs may be shipped elsewhere.
    typer.echo(
        "\nCreated the administrator account.\n  username: admin\n"
        f"  password: {password}\n"
        "This password is shown once; you will be asked to change it at the first login."
    )


@app.command("serve")
def serve(
    root: str = typer.Option(
        ".", "--root", help="The repository root holding main.py and app/ (default: here)."
    ),
) -> None:
    """Run the application, exactly as `python main.py` in the repository root does.

    app/ is not part of the installed package, so ROOT is put first on sys.path and main.py is
    run as __main__: the same code, the same first-run set-up, the same clean Ctrl-C.
    """
    directory = Path(root).resolve()
    script = directory / "main.py"
    if not script.is_file() or not (directory / "app").is_dir():
        raise fail(f"no main.py and app/ in {directory}: run it in the repository root or pass --root")
    sys.path.insert(0, str(directory))
    sys.argv = [str(script)]
    runpy.run_path(str(script), run_name="__main__")  # ends in sys.exit(status)
