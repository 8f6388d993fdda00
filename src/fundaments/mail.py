"""Mail delivery through a durable outbox: a request never waits for a mail server.

``Mailer.enqueue(tx, …)`` writes the finished RFC 5322 message into ``fundaments_mail_outbox`` in
the caller's transaction, so a mail exists exactly when the change that asked for it commits (a
rolled-back password reset sends nothing). A background task drains the outbox: it leases a batch,
hands each message to the transport (SMTP with STARTTLS or TLS, or ``.eml`` files), deletes what
was accepted and reschedules what failed with exponential backoff, giving up after
``MAIL_MAX_ATTEMPTS`` (audited ``mail.failed``; the row stays, without its message).

Delivery is at least once: a sender that dies after the server accepted a mail but before the row
was deleted leaves a lease that expires, and the mail goes out again with the same ``Message-ID``
(receivers and mail clients can tell the copy). Messages at rest are AEAD-encrypted when
encryption is configured: they hold single-use links.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Literal, Protocol

import aiosmtplib
from email_validator import EmailNotValidError, validate_email

from fundaments.audit import AuditTrail
from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.config.mail import MailURL
from fundaments.encryption import EncryptionService
from fundaments.errors import InvalidArgument
from fundaments.store import Database, Executor, Row
from fundaments.store import outbox as queries

log = logging.getLogger(__name__)

LEASE_SECONDS = 120.0  # a sender owns a claimed mail this long; SMTP_TIMEOUT keeps a send well inside
SMTP_TIMEOUT = 30.0
BATCH = 20  # mails leased per pass
MAX_BACKOFF = 3_600.0
POLL_SECONDS = 1.0  # how often the drainer looks for mails enqueued by this or another instance
MAX_SUBJECT = 200
MAX_BODY = 100_000
CONTEXT = "fundaments/mail-outbox"  # the AEAD context of stored messages
_ENCRYPTED, _PLAIN = "aead:", "plain:"


@dataclass(frozen=True, slots=True)
class MailStatus:
    """Where one mail of the outbox is: ``waiting`` (not yet sent, or being retried), ``delivered``
    (the server or the file outbox accepted it), or ``failed`` (given up: ``error`` says why)."""

    id: int
    state: Literal["waiting", "delivered", "failed"]
    attempts: int = 0
    error: str | None = None
    next_attempt_at: float | None = None


class MailDeliveryError(Exception):
    """A transport could not hand a message over; ``permanent`` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Transport(Protocol):
    async def deliver(self, message: EmailMessage, mail_id: int) -> None:
        """Hand the message over or raise MailDeliveryError (or OSError: retried)."""
        ...


class FileTransport:
    """One ``<id>.eml`` per mail in a directory (mode 0700; files 0600), written atomically.

    A mail sent again after a crash replaces its own file: the directory holds each mail once.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def deliver(self, message: EmailMessage, mail_id: int) -> None:
        await asyncio.to_thread(self._write, message.as_bytes(policy=email.policy.SMTP), mail_id)

    def _write(self, data: bytes, mail_id: int) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        final = self.directory / f"{mail_id:010d}.eml"
        partial = self.directory / f".{mail_id:010d}.eml.partial"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(partial, final)


class SmtpTransport:
    """aiosmtplib: ``smtp://`` upgrades with STARTTLS (required unless the host is loopback),
    ``smtps://`` speaks TLS from the first byte; certificates are verified."""

    def __init__(self, target: MailURL) -> None:
        self.target = target

    async def deliver(self, message: EmailMessage, mail_id: int) -> None:
        target = self.target
        try:
            await aiosmtplib.send(
                message,
                hostname=target.host,
                port=target.port,
                username=target.username,
                password=target.password,
                use_tls=target.scheme == "smtps",
                start_tls=None if target.scheme == "smtps" or target.loopback else True,
                timeout=SMTP_TIMEOUT,
            )
        except aiosmtplib.SMTPRecipientsRefused as exc:
            raise MailDeliveryError(f"the server refused the recipient ({exc})", permanent=True) from None
        except aiosmtplib.SMTPResponseException as exc:
            permanent = 500 <= exc.code < 600
            raise MailDeliveryError(f"the server answered {exc.code}", permanent=permanent) from None
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            raise MailDeliveryError(f"{type(exc).__name__}: {exc}"[:300]) from None


def transport_for(target: MailURL) -> Transport:
    if target.scheme == "file":
        assert target.path is not None
        return FileTransport(target.path)
    return SmtpTransport(target)


def normalize_address(address: object) -> str:
    """The address as a mail server wants it (domain in IDNA form checked, no display name);
    InvalidArgument naming the problem otherwise."""
    if not isinstance(address, str) or len(address) > 254:
        raise InvalidArgument("a mail address must be a string of at most 254 characters")
    try:
        return validate_email(address, check_deliverability=False).normalized
    except EmailNotValidError as exc:
        raise InvalidArgument(f"{address!r} is not a usable mail address: {exc}") from None


class Mailer:
    """Builds messages, keeps them in the outbox, and drains it in the background."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        audit: AuditTrail,
        encryption: EncryptionService | None,
        transport: Transport | None = None,
    ) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._audit = audit
        self._encryption = encryption
        self.transport = transport if transport is not None else transport_for(settings.mail)
        self._sender = email.utils.parseaddr(settings.mail_from)[1]
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._drain_lock = asyncio.Lock()
        self.on_delivered: Callable[[int], Awaitable[None]] | None = None  # tests: after the handover

    @property
    def description(self) -> str:
        return self._settings.mail.masked

    # --- composing -------------------------------------------------------------------------------
    def compose(self, to: str, subject: str, text: str, html: str | None = None) -> EmailMessage:
        """A plain-text message (with an HTML alternative when given), From MAIL_FROM, a fresh
        Message-ID; InvalidArgument for a bad address or a header that would break the message."""
        recipient = normalize_address(to)
        if not isinstance(subject, str) or not subject.strip() or len(subject) > MAX_SUBJECT:
            raise InvalidArgument(f"a mail subject must be 1 to {MAX_SUBJECT} characters")
        if any(c in subject for c in "\r\n\0"):
            raise InvalidArgument("a mail subject must be one line")
        if len(text) > MAX_BODY or (html is not None and len(html) > MAX_BODY):
            raise InvalidArgument(f"a mail body must be at most {MAX_BODY} characters")
        message = EmailMessage()
        message["From"] = self._settings.mail_from
        message["To"] = recipient
        message["Subject"] = subject
        message["Date"] = email.utils.formatdate(self._clock.now(), usegmt=True)
        message["Message-ID"] = email.utils.make_msgid(domain=self._sender.rpartition("@")[2] or None)
        message.set_content(text)
        if html is not None:
            message.add_alternative(html, subtype="html")
        return message

    async def enqueue(
        self, tx: Executor, kind: str, to: str, subject: str, text: str, html: str | None = None
    ) -> int:
        """Put a mail in the outbox inside ``tx``: it is sent once ``tx`` commits (never if it rolls
        back). Returns the outbox id."""
        message = self.compose(to, subject, text, html)
        stored = self._seal(message.as_bytes(policy=email.policy.SMTP))
        return await queries.insert(tx, kind, str(message["To"]), stored, self._clock.now())

    def _seal(self, data: bytes) -> str:
        if self._encryption is None:
            return _PLAIN + data.decode("ascii", "surrogateescape")
        return _ENCRYPTED + self._encryption.encrypt(data, context=CONTEXT)

    def _open(self, stored: str) -> EmailMessage:
        if stored.startswith(_ENCRYPTED):
            if self._encryption is None:
                raise MailDeliveryError("the mail was stored encrypted and encryption is off", permanent=True)
            data = self._encryption.decrypt(stored[len(_ENCRYPTED) :], context=CONTEXT)
        elif stored.startswith(_PLAIN):
            data = stored[len(_PLAIN) :].encode("ascii", "surrogateescape")
        else:
            raise MailDeliveryError("the stored mail is in an unknown format", permanent=True)
        parsed = email.message_from_bytes(data, _class=EmailMessage, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    # --- draining --------------------------------------------------------------------------------
    async def send_due(self, *, limit: int = BATCH) -> int:
        """One pass: lease the mails that are due, hand each over, settle it. How many went out."""
        async with self._drain_lock:
            now = self._clock.now()
            due = await queries.next_due(self._db)  # a read: an idle outbox costs no write
            if due is None or due > now:
                return 0
            lease = now + LEASE_SECONDS
            async with self._db.transaction() as tx:
                rows = await queries.claim_due(tx, now, lease, limit)
            sent = 0
            for row in sorted(rows, key=lambda r: int(r["id"])):
                if await self._send_one(row, lease):
                    sent += 1
            return sent

    async def _send_one(self, row: Row, lease: float) -> bool:
        mail_id, attempts = int(row["id"]), int(row["attempts"])
        try:
            message = self._open(str(row["message"]))
            await self.transport.deliver(message, mail_id)
        except (MailDeliveryError, OSError, ValueError) as exc:
            await self._failed(mail_id, str(row["kind"]), attempts, lease, exc)
            return False
        if self.on_delivered is not None:
            await self.on_delivered(mail_id)
        async with self._db.transaction() as tx:
            if not await queries.delete_sent(tx, mail_id, lease):
                log.warning(
                    "mail %d was sent after its lease ran out: another sender may send it too",
                    mail_id,
                )
        return True

    async def _failed(self, mail_id: int, kind: str, attempts: int, lease: float, exc: Exception) -> None:
        now = self._clock.now()
        permanent = isinstance(exc, MailDeliveryError) and exc.permanent
        error = f"{type(exc).__name__}: {exc}"[:500]
        async with self._db.transaction() as tx:
            if permanent or attempts >= self._settings.mail_max_attempts:
                await queries.give_up(tx, mail_id, lease, now, error)
                await self._audit.record(
                    "mail.failed",
                    tx=tx,
                    outcome="failure",
                    details={"mail_id": mail_id, "mail_kind": kind, "attempts": attempts, "error": error},
                )
                log.error("mail %d (%s) given up after %d attempts: %s", mail_id, kind, attempts, error)
                return
            backoff = min(self._settings.mail_retry_seconds * 2 ** (attempts - 1), MAX_BACKOFF)
            await queries.retry_later(tx, mail_id, lease, now + backoff, error)
        log.warning("mail %d (%s) not sent, retrying in %.0f s: %s", mail_id, kind, backoff, error)

    async def status(self, mail_id: int, kind: str, recipient: str) -> MailStatus:
        """Where the mail ``enqueue`` returned ``mail_id`` for is now (``recipient`` as enqueued)."""
        row = await queries.status(self._db, mail_id, kind, normalize_address(recipient))
        if row is None:
            return MailStatus(mail_id, "delivered")
        error = None if row["last_error"] is None else str(row["last_error"])
        if row["failed_at"] is not None:
            return MailStatus(mail_id, "failed", int(row["attempts"]), error)
        return MailStatus(mail_id, "waiting", int(row["attempts"]), error, float(row["next_attempt_at"]))

    async def pending(self) -> tuple[int, int]:
        """(mails waiting, mails given up on)."""
        return await queries.counts(self._db)

    # --- the background task -----------------------------------------------------------------------
    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="fundaments-mail-outbox")

    async def close(self) -> None:
        task, self._task = self._task, None
        self._stopping.set()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                while await self.send_due():
                    pass
            except Exception:  # a database hiccup must not end the drainer; the next pass retries
                log.exception("the mail outbox could not be drained; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), POLL_SECONDS)
