"""What every command shares: the sub-command groups, the consoles, one way to run a command
against started services, and one way to fail (one clear line, exit 1; ``--debug`` for the
traceback)."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TimeRemainingColumn

from fundaments.bootstrap import initialize_fundaments
from fundaments.config import Settings, load_settings
from fundaments.errors import FundamentsError
from fundaments.security import Security, User

T = TypeVar("T")

# Typer's pretty tracebacks show local variables by default: a password read from a prompt would
# be printed. Never.
TYPER_OPTIONS: dict[str, Any] = {"no_args_is_help": True, "pretty_exceptions_show_locals": False}

app = typer.Typer(help="fundaments: the admin command.", add_completion=False, **TYPER_OPTIONS)
config_app = typer.Typer(help="Inspect the configuration.", **TYPER_OPTIONS)
db_app = typer.Typer(help="Database schema migrations.", **TYPER_OPTIONS)
keys_app = typer.Typer(
    help="Encryption keys: generate, re-encrypt stored values; API keys (keys api …).", **TYPER_OPTIONS
)
users_app = typer.Typer(
    help="Accounts: list, create, set-password, disable, enable, unlock, import.", **TYPER_OPTIONS
)
roles_app = typer.Typer(help="Roles: list, create, edit, delete, grant, revoke.", **TYPER_OPTIONS)
sessions_app = typer.Typer(help="Live sessions: list and revoke.", **TYPER_OPTIONS)
audit_app = typer.Typer(help="The audit trail: tail and verify.", **TYPER_OPTIONS)
mail_app = typer.Typer(help="Mail delivery: send a test mail.", **TYPER_OPTIONS)
for _sub, _name in (
    (config_app, "config"),
    (db_app, "db"),
    (keys_app, "keys"),
    (users_app, "users"),
    (roles_app, "roles"),
    (sessions_app, "sessions"),
    (audit_app, "audit"),
    (mail_app, "mail"),
):
    app.add_typer(_sub, name=_name)

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False)


class State:
    debug = False  # set by the root callback for this invocation


class CommandError(Exception):
    """A failure the operator can fix, said in one line (exit 1)."""


def fail(message: str) -> typer.Exit:
    """Print ``error: message`` on stderr; the Exit(1) to raise."""
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True, soft_wrap=True)
    return typer.Exit(1)


def _one_line(exc: BaseException) -> str:
    return str(exc).replace("\n", "; ") or type(exc).__name__


def run(work: Coroutine[Any, Any, T], *, interrupt_ok: bool = False) -> T:
    """Run ``work`` on a fresh event loop; any error becomes one line and exit 1 (unless --debug)."""
    try:
        return asyncio.run(work)
    except typer.Exit:
        raise
    except KeyboardInterrupt:
        if interrupt_ok:
            raise typer.Exit(0) from None
        raise fail("interrupted") from None
    except (FundamentsError, CommandError, OSError) as exc:
        if State.debug:
            raise
        raise fail(_one_line(exc)) from None
    except Exception as exc:
        if State.debug:
            raise
        raise fail(
            f"unexpected {type(exc).__name__}: {_one_line(exc)} (run with --debug for details)"
        ) from None


def settings_or_exit() -> Settings:
    """The configuration, or one line naming every problem and exit 1."""
    try:
        return load_settings()
    except FundamentsError as exc:
        raise fail(_one_line(exc)) from None


def quiet_logs() -> None:
    """Without --debug the command's own output is the report: library logs only for errors."""
    if not State.debug:
        for name in ("fundaments", "alembic"):
            logging.getLogger(name).setLevel(logging.ERROR)


def with_security(work: Callable[[Security], Awaitable[T]], *, interrupt_ok: bool = False) -> T:
    """Start the services from the configuration, run ``work(security)``, close them."""
    settings = settings_or_exit()
    quiet_logs()

    async def go() -> T:
        fundaments = await initialize_fundaments(settings, configure_logs=State.debug)
        try:
            return await work(fundaments.security)
        finally:
            await fundaments.close()

    return run(go(), interrupt_ok=interrupt_ok)


async def resolve_user(security: Security, ref: str) -> User:
    """The account named by ``ref``: a numeric id, else a username."""
    user = None
    if ref.isdecimal() and 0 < int(ref) < 2**63:
        user = await security.get_user(int(ref))
    if user is None:
        user = await security.get_user_by_username(ref)
    if user is None:
        raise CommandError(f"no account {ref!r} (give a username or a numeric id)")
    return user


def read_password(from_stdin: bool, *, confirm: bool = True, label: str = "Password") -> str:
    """A password from the first line of stdin or a hidden prompt; never from argv."""
    if from_stdin:
        line = sys.stdin.readline().rstrip("\r\n")
        if not line:
            raise fail("--password-stdin: stdin held no password")
        return line
    try:
        password: str = typer.prompt(label, hide_input=True, confirmation_prompt=confirm)
    except typer.Abort:  # end of input at the prompt, or Ctrl-C
        raise fail("no password given (use --password-stdin when stdin is not a terminal)") from None
    return password


def confirm(question: str, *, hint: str = "pass --yes to skip this question") -> None:
    """Ask ``question`` (default no); CommandError unless the answer is yes."""
    try:
        agreed = typer.confirm(question, default=False)
    except typer.Abort:  # end of input: nobody answered
        agreed = False
    if not agreed:
        raise CommandError(f"not confirmed: nothing was changed ({hint})")


def timestamp(value: float | None) -> str:
    if value is None:
        return ""
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


@contextmanager
def progress_bar(label: str, *, bytes_: bool = False) -> Iterator[Callable[[int, int], None] | None]:
    """A Rich progress bar on stderr when it is a terminal (``callback(done, total)``); else None."""
    if not err.is_terminal:
        yield None
        return
    columns: list[Any] = ["{task.description}", BarColumn(), TaskProgressColumn()]
    columns += [DownloadColumn()] if bytes_ else ["{task.completed}/{task.total}"]
    with Progress(*columns, TimeRemainingColumn(), console=err, transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
