"""`fundaments mail test ADDRESS`: through the real outbox to a real SMTP server (aiosmtpd, in this
process) and to the default file outbox, on SQLite and PostgreSQL (the `cli` fixture)."""

# ruff: noqa: F811 - `cli` and `smtp` are pytest fixtures imported from sibling modules

from __future__ import annotations

import email
import email.policy
import stat
from email.message import EmailMessage
from pathlib import Path

from fundaments.security import Security
from test_cli_admin import Invoke, assert_one_line_error, cli, with_security  # noqa: F401 - cli is a fixture
from test_mail import SmtpServer, smtp  # noqa: F401 - smtp is a fixture

ADDRESS = "ann@example.com"


def test_mail_test_is_delivered_to_the_smtp_server(cli: Invoke, smtp: SmtpServer) -> None:
    result = cli("mail", "test", ADDRESS, "--timeout", "20", MAIL_URL=smtp.url)
    assert result.exit_code == 0, result.output
    assert f"queued test mail #1 to {ADDRESS} via smtp://127.0.0.1:{smtp.port}" in result.stdout
    assert f"delivered test mail #1 to {ADDRESS}" in result.stdout
    (message,) = smtp.inbox.messages
    assert message["To"] == ADDRESS and message["Subject"] == "fundaments test mail"
    assert "mail delivery works" in message.get_content()


def test_mail_test_reports_a_refusal_in_one_line(cli: Invoke, smtp: SmtpServer) -> None:
    smtp.inbox.refuse = 550
    result = cli("mail", "test", ADDRESS, "--timeout", "20", MAIL_URL=smtp.url)
    assert_one_line_error(
        result, "test mail #1 to ann@example.com failed after 1 attempt(s) and was given up"
    )
    assert "the server answered 550" in result.stderr and "check MAIL_URL" in result.stderr
    assert smtp.inbox.messages == []


def test_mail_test_gives_up_waiting_when_the_server_is_down(cli: Invoke) -> None:
    down = SmtpServer()  # a free port nobody listens on
    result = cli("mail", "test", ADDRESS, "--timeout", "1.5", MAIL_URL=down.url)
    assert_one_line_error(result, "test mail #1 to ann@example.com not delivered within 1.5 s (1 attempt(s)")
    assert "the last attempt failed:" in result.stderr and "stays in the outbox" in result.stderr

    async def waiting(security: Security) -> str:
        return (await security.mail_status(1, ADDRESS)).state

    assert with_security(waiting) == "waiting"  # kept for the application's drainer to retry


def test_mail_test_writes_to_the_default_file_outbox(cli: Invoke, tmp_path: Path) -> None:
    result = cli("mail", "test", ADDRESS, "--timeout", "20")  # MAIL_URL unset: file://./var/outbox
    assert result.exit_code == 0, result.output
    assert "via file://var/outbox" in result.stdout and "delivered test mail #1" in result.stdout
    outbox = tmp_path / "var" / "outbox"
    (eml,) = outbox.glob("*.eml")
    assert eml.name == "0000000001.eml"
    assert stat.S_IMODE(eml.stat().st_mode) == 0o600 and stat.S_IMODE(outbox.stat().st_mode) == 0o700
    message = email.message_from_bytes(eml.read_bytes(), _class=EmailMessage, policy=email.policy.default)
    assert message["To"] == ADDRESS and message["Subject"] == "fundaments test mail"


def test_mail_test_refuses_an_unusable_address_in_one_line(cli: Invoke, tmp_path: Path) -> None:
    assert_one_line_error(cli("mail", "test", "ann@@example"), "is not a usable mail address")
    assert_one_line_error(cli("mail", "test", "ann@example.com\r\nBcc: eve@example.com"), "mail address")
    assert not (tmp_path / "var" / "outbox").exists()
