"""The ``fundaments`` admin command (Typer + Rich)."""

from __future__ import annotations

import typer

from fundaments import __version__

app = typer.Typer(help="fundaments: the admin command.", no_args_is_help=True)


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


def main() -> None:
    app()
