"""The mail outbox against a real SMTP server (aiosmtpd, in this process) and the file outbox.

A mail is written in the transaction that asks for it and drained in the background: a server
that is down loses nothing, a crash after the handover sends a copy at most, a rollback sends none.
"""

from __future__ import annotations

import email
import email.policy
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from hypothesis import given
from hypothesis import strategies as st

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.config.mail import parse_mail_url
from fundaments.errors import ConfigurationError, InvalidArgument
from fundaments.mail import LEASE_SECONDS, FileTransport, Mailer, SmtpTransport, normalize_address


class Inbox:
    """aiosmtpd handler: every message the server accepted, parsed."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.refuse: int | None = None  # answer DATA with this code instead of 250

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        if self.refuse is not None:
            return f"{self.refuse} refused by the test server"
        parsed = email.message_from_bytes(envelope.content, _class=EmailMessage, policy=email.policy.default)
        self.messages.append(parsed)  # type: ignore[arg-type]
        return "250 OK"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class SmtpServer:
    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host, self.port = host, free_port(host)
        self.inbox = Inbox()
        self.controller: Controller | None = None

    def start(self) -> None:
        self.controller = Controller(self.inbox, hostname=self.host, port=self.port)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None

    @property
    def url(self) -> str:
        return f"smtp://{self.host}:{self.port}"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


def mailer_for(app: Fundaments, clock: ManualClock, settings: Settings | None = None) -> Mailer:
    """A Mailer on the app's database whose drain passes the test runs itself (no background task)."""
    settings = settings or app.settings
    return Mailer(app["db"], settings, clock, app["audit"], app["encryption"])


async def send(mailer: Mailer, app: Fundaments, to: str = "ann@example.com", **kw: str) -> int:
    async with app["db"].transaction() as tx:
        return await mailer.enqueue(
            tx,
            "test",
            to,
            kw.get("subject", "Your reset link"),
            kw.get("text", "Open https://example.com/reset?token=abc"),
            kw.get("html"),
        )


# --- MAIL_URL ----------------------------------------------------------------------------------
def test_mail_urls_parse_and_mask_the_password() -> None:
    target = parse_mail_url("smtp://ann%40corp:s3cret@mail.example.com")
    assert (target.scheme, target.host, target.port, target.username) == (
        "smtp",
        "mail.example.com",
        587,
        "ann@corp",
    )
    assert target.password == "s3cret" and "s3cret" not in target.masked and "s3cret" not in repr(target)
    assert parse_mail_url("smtps://mail.example.com").port == 465
    assert parse_mail_url("file:///var/spool/outbox").path == Path("/var/spool/outbox")
    assert parse_mail_url("file://./var/outbox").path == Path("var/outbox")
    assert parse_mail_url("smtp://127.0.0.1:2525").loopback and not target.loopback


@pytest.mark.parametrize(
    "url", ["mail.example.com", "http://mail.example.com", "smtp://:25", "smtp://host:99999", "file://"]
)
def test_bad_mail_urls_are_refused_at_start_with_the_fix(
    make_settings: Callable[..., Settings], url: str
) -> None:
    with pytest.raises(ConfigurationError, match="MAIL_URL"):
        make_settings(mail_url=url)


@pytest.mark.parametrize("value", ["nobody", "a <b@c>\r\nBcc: x@y.z"])
def test_a_bad_mail_from_is_refused(make_settings: Callable[..., Settings], value: str) -> None:
    with pytest.raises(ConfigurationError, match="MAIL_FROM"):
        make_settings(mail_from=value)


@given(st.text(max_size=300))
def test_address_validation_only_ever_raises_invalid_argument(address: str) -> None:
    try:
        normalized = normalize_address(address)
    except InvalidArgument:
        return
    assert "\n" not in normalized and "\r" not in normalized and "@" in normalized


# --- the file outbox ---------------------------------------------------------------------------
async def test_a_committed_mail_becomes_one_private_eml_file(
    fundaments: Fundaments, clock: ManualClock, tmp_path: Path
) -> None:
    mailer = mailer_for(fundaments, clock)
    assert isinstance(mailer.transport, FileTransport)
    mail_id = await send(mailer, fundaments, html="<p>Open <a href='https://example.com'>it</a></p>")
    assert await mailer.send_due() == 1
    outbox = tmp_path / "outbox"
    [path] = outbox.glob("*.eml")
    assert path.name == f"{mail_id:010d}.eml"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and stat.S_IMODE(outbox.stat().st_mode) == 0o700
    message = email.message_from_bytes(path.read_bytes(), _class=EmailMessage, policy=email.policy.default)
    assert message["To"] == "ann@example.com" and message["Subject"] == "Your reset link"
    assert message["From"] == fundaments.settings.mail_from and message["Message-ID"]
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]  # type: ignore[attr-defined]
    assert await mailer.send_due() == 0
    assert await mailer.pending() == (0, 0)


async def test_a_rolled_back_transaction_sends_nothing(fundaments: Fundaments, clock: ManualClock) -> None:
    mailer = mailer_for(fundaments, clock)
    with pytest.raises(RuntimeError):
        async with fundaments["db"].transaction() as tx:
            await mailer.enqueue(tx, "test", "ann@example.com", "Reset", "a link")
            raise RuntimeError("the change that asked for the mail failed")
    assert await mailer.pending() == (0, 0) and await mailer.send_due() == 0


async def test_the_stored_message_is_encrypted_at_rest(fundaments: Fundaments, clock: ManualClock) -> None:
    mailer = mailer_for(fundaments, clock)
    await send(mailer, fundaments, text="the link https://example.com/reset?token=SECRET-TOKEN-123")
    stored = await fundaments["db"].fetchval("SELECT message FROM fundaments_mail_outbox")
    assert "SECRET-TOKEN-123" not in stored and "ann@example.com" not in stored.split(":", 1)[1]
    assert await mailer.send_due() == 1


@pytest.mark.parametrize(
    ("to", "subject"),
    [("ann@example.com\r\nBcc: all@example.com", "Reset"), ("ann@example.com", "Reset\r\nBcc: all@example.com"),
     ("not an address", "Reset"), ("ann@example.com", "")],
)  # fmt: skip
async def test_header_injection_and_bad_addresses_are_refused(
    fundaments: Fundaments, clock: ManualClock, to: str, subject: str
) -> None:
    mailer = mailer_for(fundaments, clock)
    with pytest.raises(InvalidArgument):
        await send(mailer, fundaments, to=to, subject=subject)
    assert await mailer.pending() == (0, 0)


# --- SMTP ----------------------------------------------------------------------------------------
async def test_mail_reaches_a_real_smtp_server(
    make_settings: Callable[..., Settings], fundaments: Fundaments, clock: ManualClock, smtp: SmtpServer
) -> None:
    mailer = mailer_for(fundaments, clock, make_settings(mail_url=smtp.url))
    assert isinstance(mailer.transport, SmtpTransport)
    await send(mailer, fundaments, to="Ann@EXAMPLE.com")
    assert await mailer.send_due() == 1
    [message] = smtp.inbox.messages
    assert message["To"] == "Ann@example.com" and "token=abc" in message.get_content()  # type: ignore[attr-defined]


async def test_a_server_that_is_down_loses_no_mail_and_gets_it_once(
    make_settings: Callable[..., Settings], fundaments: Fundaments, clock: ManualClock
) -> None:
    server = SmtpServer()  # not started yet: connection refused
    mailer = mailer_for(fundaments, clock, make_settings(mail_url=server.url, mail_retry_seconds=30))
    await send(mailer, fundaments)
    assert await mailer.send_due() == 0
    row = await fundaments["db"].fetchrow(
        "SELECT attempts, next_attempt_at, last_error FROM fundaments_mail_outbox"
    )
    assert row["attempts"] == 1 and row["next_attempt_at"] == clock.now() + 30 and row["last_error"]
    clock.advance(10)
    assert await mailer.send_due() == 0  # not due yet: no new attempt
    clock.advance(21)
    assert await mailer.send_due() == 0  # second attempt, still down: backoff doubles
    assert (
        await fundaments["db"].fetchval("SELECT next_attempt_at FROM fundaments_mail_outbox")
        == clock.now() + 60
    )
    server.start()
    try:
        clock.advance(61)
        assert await mailer.send_due() == 1
        clock.advance(3600)
        assert await mailer.send_due() == 0
        assert len(server.inbox.messages) == 1
    finally:
        server.stop()


async def test_a_permanent_refusal_is_given_up_and_audited(
    make_settings: Callable[..., Settings], fundaments: Fundaments, clock: ManualClock, smtp: SmtpServer
) -> None:
    smtp.inbox.refuse = 554
    mailer = mailer_for(fundaments, clock, make_settings(mail_url=smtp.url))
    mail_id = await send(mailer, fundaments)
    assert await mailer.send_due() == 0
    assert await mailer.pending() == (0, 1)
    [event] = await fundaments.security.audit_events(kind="mail.failed")
    assert event.details["mail_id"] == mail_id and event.details["attempts"] == 1
    assert await fundaments["db"].fetchval("SELECT message FROM fundaments_mail_outbox") == ""  # link gone


async def test_temporary_refusals_stop_after_the_last_attempt(
    make_settings: Callable[..., Settings], fundaments: Fundaments, clock: ManualClock, smtp: SmtpServer
) -> None:
    smtp.inbox.refuse = 451
    mailer = mailer_for(fundaments, clock, make_settings(mail_url=smtp.url, mail_max_attempts=3))
    await send(mailer, fundaments)
    for _ in range(3):
        await mailer.send_due()
        clock.advance(3600)
    assert await mailer.pending() == (0, 1)
    assert len(await fundaments.security.audit_events(kind="mail.failed")) == 1


async def test_starttls_is_required_for_a_server_off_this_machine(
    make_settings: Callable[..., Settings], fundaments: Fundaments, clock: ManualClock
) -> None:
    """A plain SMTP server on a non-loopback address: the password and the links must not cross
    the network in clear, so the mail is not handed over (the server offers no STARTTLS)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 9))  # no packet is sent: this only picks the outgoing address
        address = probe.getsockname()[0]
    finally:
        probe.close()
    if address.startswith("127."):
        pytest.skip("this machine has no non-loopback IPv4 address to bind a test server to")
    server = SmtpServer(address)
    server.start()
    try:
        mailer = mailer_for(fundaments, clock, make_settings(mail_url=server.url))
        await send(mailer, fundaments)
        assert await mailer.send_due() == 0
        assert server.inbox.messages == []
        error = await fundaments["db"].fetchval("SELECT last_error FROM fundaments_mail_outbox")
        assert "STARTTLS" in error or "TLS" in error
    finally:
        server.stop()


# --- crashes and several senders ------------------------------------------------------------------
async def test_a_leased_mail_cannot_be_claimed_again_until_the_lease_ends(
    fundaments: Fundaments, clock: ManualClock
) -> None:
    from fundaments.store import outbox

    mailer = mailer_for(fundaments, clock)
    await send(mailer, fundaments)
    now = clock.now()
    async with fundaments["db"].transaction() as tx:
        [claimed] = await outbox.claim_due(tx, now, now + LEASE_SECONDS, 10)
    async with fundaments["db"].transaction() as tx:
        assert await outbox.claim_due(tx, now + 1, now + 1 + LEASE_SECONDS, 10) == []
    async with fundaments["db"].transaction() as tx:
        [again] = await outbox.claim_due(tx, now + LEASE_SECONDS, now + 2 * LEASE_SECONDS, 10)
    assert again["id"] == claimed["id"] and again["attempts"] == 2
    async with fundaments["db"].transaction() as tx:  # the first sender's lease is gone: it settles nothing
        assert not await outbox.delete_sent(tx, claimed["id"], now + LEASE_SECONDS)


CHILD = r"""
import asyncio, os, signal, sys
from fundaments import initialize_fundaments
from fundaments.config import load_settings

async def main(env_file, url, mail_url, master, salt):
    settings = load_settings(env_file=env_file, database_url=url, mail_url=mail_url,
                             master_encryption_key=master, persistent_encryption_salt=salt)
    app = await initialize_fundaments(settings, configure_logs=False)
    mailer = app["mail"]
    await mailer.close()  # this test drives the drain itself
    async def die(mail_id):
        os.kill(os.getpid(), signal.SIGKILL)  # the server has the mail; the outbox row is not settled
    mailer.on_delivered = die
    async with app["db"].transaction() as tx:
        await mailer.enqueue(tx, "test", "ann@example.com", "Reset", "the link")
    await mailer.send_due()
    print("not killed")

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_crash_after_the_handover_sends_at_most_one_copy(
    make_settings: Callable[..., Settings], smtp: SmtpServer, tmp_path: Path
) -> None:
    settings = make_settings(mail_url=smtp.url)
    app = await initialize_fundaments(settings, configure_logs=False)
    await app["mail"].close()
    try:
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp_path / "absent.env"), settings.database_url.get_secret_value(),
             smtp.url, settings.master_encryption_key.get_secret_value(),  # type: ignore[union-attr]
             settings.persistent_encryption_salt.get_secret_value()],  # type: ignore[union-attr]
            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )  # fmt: skip
        assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
        assert len(smtp.inbox.messages) == 1
        clock = ManualClock(time.time())
        mailer = mailer_for(app, clock, settings)
        assert await mailer.send_due() == 0  # the dead sender's lease still holds
        clock.advance(LEASE_SECONDS + 1)
        assert await mailer.send_due() == 1  # it expired: sent again
        clock.advance(3600)
        assert await mailer.send_due() == 0
        first, second = smtp.inbox.messages
        assert first["Message-ID"] == second["Message-ID"]  # one mail, one duplicate, recognizable
    finally:
        await app.close()


async def test_two_instances_draining_one_outbox_send_each_mail_once(
    make_settings: Callable[..., Settings], clock: ManualClock, smtp: SmtpServer
) -> None:
    import asyncio

    settings = make_settings(mail_url=smtp.url)
    one = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    two = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        for app in (one, two):
            await app["mail"].close()
        senders = [mailer_for(app, clock) for app in (one, two) for _ in range(4)]  # 8 claimers
        for i in range(60):
            await send(senders[0], one, to=f"user{i}@example.com")

        async def drain(mailer: Mailer) -> int:
            total = 0
            while sent := await mailer.send_due(limit=2):
                total += sent
            return total

        counts = await asyncio.gather(*(drain(m) for m in senders))
        assert sum(counts) == 60
        recipients = sorted(str(m["To"]) for m in smtp.inbox.messages)
        assert recipients == sorted(f"user{i}@example.com" for i in range(60))
    finally:
        await one.close()
        await two.close()


async def test_an_emptied_outbox_never_reuses_a_file_name(fundaments: Fundaments, clock: ManualClock) -> None:
    """FileTransport names a mail's file by its outbox id: with SQLite reusing the highest id of an
    emptied table, the next mail would overwrite the last one's .eml."""
    mailer = fundaments["mail"]
    first = await send(mailer, fundaments, subject="first")
    await mailer.send_due()
    second = await send(mailer, fundaments, subject="second")
    await mailer.send_due()
    assert second > first
    directory = mailer.transport.directory
    subjects = sorted(
        email.message_from_bytes(p.read_bytes(), policy=email.policy.default)["Subject"]
        for p in directory.glob("*.eml")
    )
    assert subjects == ["first", "second"]
