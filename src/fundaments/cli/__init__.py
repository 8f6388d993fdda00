"""The ``fundaments`` admin command (Typer + Rich). See docs/cli.md.

Every command works through ``Security`` (and ``config``/``bootstrap`` for configuration,
migrations and first set-up): an import-linter contract keeps it that way.
Exit codes: 0 success, 1 a failed check or operation, 2 usage. Errors are one clear line unless
``--debug``.
"""

from __future__ import annotations

import typer

from fundaments import __version__
from fundaments.cli import accounts, api_keys, files, mail, roles, setup, users
from fundaments.cli.common import State, app

__all__ = ["app", "main"]
_COMMAND_MODULES = (
    accounts,
    api_keys,
    files,
    mail,
    roles,
    setup,
    users,
)  # imported for the commands they register


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fundaments {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks and library logs."),
) -> None:
    """fundaments: one audited security layer."""
    State.debug = debug


def main() -> None:
    app()
