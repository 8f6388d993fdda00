"""Mail: ``mail test ADDRESS`` — one mail through the real outbox, and what became of it."""

from __future__ import annotations

import asyncio

import typer
from rich.markup import escape

from fundaments.cli.common import CommandError, mail_app, out, with_security
from fundaments.security import Security

POLL_SECONDS = 0.2  # how often the outbox row is looked at while waiting


@mail_app.command("test")
def mail_test(
    address: str = typer.Argument(..., help="Where to send the test mail."),
    timeout: float = typer.Option(30.0, min=0.1, max=600, help="Seconds to wait for the outcome."),
) -> None:
    """Send a test mail through the outbox (MAIL_URL) and wait until it is delivered or given up.

    Exit 0 when the SMTP server (or the file outbox) accepted it; 1 when it was refused, or not
    delivered within --timeout (it then stays in the outbox and is retried like every mail).
    """

    async def work(security: Security) -> None:
        mail_id = await security.send_test_mail(address)
        out.print(
            f"queued test mail #{mail_id} to {escape(address)} via {escape(security.mail_destination)}; "
            f"waiting up to {timeout:g} s"
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            status = await security.mail_status(mail_id, address)
            if status.state == "delivered":
                out.print(f"[green]✓[/] delivered test mail #{mail_id} to {escape(address)}")
                return
            if status.state == "failed":
                raise CommandError(
                    f"test mail #{mail_id} to {address} failed after {status.attempts} attempt(s) and "
                    f"was given up: {status.error}; check MAIL_URL, MAIL_FROM and the address"
                )
            if loop.time() >= deadline:
                last = f"; the last attempt failed: {status.error}" if status.error else ""
                raise CommandError(
                    f"test mail #{mail_id} to {address} not delivered within {timeout:g} s "
                    f"({status.attempts} attempt(s){last}); it stays in the outbox and is retried "
                    "by the running application — check that the mail server is reachable (MAIL_URL)"
                )
            await asyncio.sleep(POLL_SECONDS)

    with_security(work)
