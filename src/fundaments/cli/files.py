"""Encryption at the command line: ``encrypt``, ``decrypt`` and ``keys reencrypt``."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Literal

import typer
from rich.markup import escape

from fundaments.cli.common import app, fail, keys_app, out, progress_bar, with_security
from fundaments.security import ReencryptReport, Security

STDIO = "-"
COPY_CHUNK = 1 << 20  # bytes


def _spool_stdin(path: Path) -> None:
    """Copy stdin to ``path`` (mode 0600): the file format needs a seekable, sized input."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as target:
        shutil.copyfileobj(sys.stdin.buffer, target, COPY_CHUNK)


def _copy_to_stdout(path: Path) -> None:
    stdout = sys.stdout.buffer
    with path.open("rb") as produced:
        shutil.copyfileobj(produced, stdout, COPY_CHUNK)
    stdout.flush()


def _stdout_is_terminal() -> bool:
    return sys.stdout.isatty()


def _file_job(direction: Literal["encrypt", "decrypt"], source: str, output: str, force: bool) -> None:
    if direction == "encrypt" and output == STDIO and _stdout_is_terminal():
        raise fail("not writing encrypted data to a terminal: redirect it (-o - > FILE) or pass -o FILE")
    if source != STDIO and not Path(source).is_file():
        raise fail(f"{source}: no such file")
    if output != STDIO and Path(output).exists() and not force:
        raise fail(f"{output} already exists; pass --force to replace it")

    async def work(security: Security) -> None:
        job = security.encrypt_file if direction == "encrypt" else security.decrypt_file
        # Private scratch space for stdin/stdout: removed, whatever happens, when the job ends.
        with tempfile.TemporaryDirectory(prefix="fundaments-") as scratch:
            src = Path(scratch, "input") if source == STDIO else Path(source)
            dst = Path(scratch, "output") if output == STDIO else Path(output)
            if source == STDIO:
                _spool_stdin(src)
            with progress_bar(f"{direction}ing", bytes_=True) as progress:
                await job(src, dst, progress=progress)
            if output == STDIO:
                _copy_to_stdout(dst)

    with_security(work)


@app.command("encrypt")
def encrypt(
    source: str = typer.Argument(..., metavar="FILE", help="The file to encrypt; - for stdin."),
    output: str = typer.Option(..., "--output", "-o", metavar="OUT", help="Where to write; - for stdout."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Encrypt a file under the current key (streaming, constant memory; OUT is written mode 0600)."""
    _file_job("encrypt", source, output, force)


@app.command("decrypt")
def decrypt(
    source: str = typer.Argument(..., metavar="FILE", help="The encrypted file; - for stdin."),
    output: str = typer.Option(..., "--output", "-o", metavar="OUT", help="Where to write; - for stdout."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
) -> None:
    """Decrypt a file; OUT appears only once every segment authenticated (else exit 1, nothing written)."""
    _file_job("decrypt", source, output, force)


def _print_report(report: ReencryptReport) -> None:
    out.print(
        f"{report.table}.{report.column}: {report.scanned} of {report.total} row(s) scanned; "
        f"{report.reencrypted} re-encrypted under key {report.key_id}, "
        f"{report.current} already under it, {report.empty} empty, {report.failed} failed"
        + (
            f", {report.changed_meanwhile} changed by another writer meanwhile"
            if report.changed_meanwhile
            else ""
        )
    )
    if report.failed:
        keys = ", ".join(repr(key) for key in report.failed_keys)
        more = " …" if report.failed > len(report.failed_keys) else ""
        out.print(
            f"[red]✗[/] {report.failed} value(s) did not decrypt (not an envelope, a key no longer "
            f"configured in MASTER_ENCRYPTION_KEY_PREVIOUS, or another context); keys: {escape(keys)}{more}"
        )


@keys_app.command("reencrypt")
def keys_reencrypt(
    table: str = typer.Option(..., "--table", "-t", help="The table holding encrypted values."),
    column: str = typer.Option(..., "--column", "-c", help="The column holding the envelopes."),
    context_column: str | None = typer.Option(
        None, "--context-column", help="The column holding each value's encryption context."
    ),
    key_column: str = typer.Option("id", "--key-column", help="A unique, ordered key (the primary key)."),
    batch_size: int = typer.Option(500, "--batch-size", min=1, max=10_000, help="Rows per transaction."),
) -> None:
    """Re-encrypt stored values under the current MASTER_ENCRYPTION_KEY, batch by batch.

    Put the old key in MASTER_ENCRYPTION_KEY_PREVIOUS first. Each batch commits on its own and rows
    already under the current key are skipped: stop it (or lose the machine) at any point and run
    it again. Exit 1 if any value could not be decrypted.
    """

    async def work(security: Security) -> ReencryptReport:
        with progress_bar(f"{table}.{column}") as progress:
            return await security.reencrypt_column(
                table,
                column,
                key_column=key_column,
                context_column=context_column,
                batch_size=batch_size,
                progress=progress,
            )

    report = with_security(work)
    _print_report(report)
    if report.failed:
        raise typer.Exit(1)
