"""The mail part of the facade: an operator's test of the mail setup (``fundaments mail test``)."""

from __future__ import annotations

from fundaments.errors import ServiceUnavailable
from fundaments.mail import Mailer, MailStatus
from fundaments.security._core import SecurityCore

TEST_KIND = "test"
TEST_SUBJECT = "fundaments test mail"
TEST_TEXT = (
    "This is a test mail from fundaments, sent by an administrator (fundaments mail test).\n"
    "It arrived, so mail delivery works: password resets and security notices will arrive too.\n"
)


class MailPart(SecurityCore):
    """``send_test_mail`` and ``mail_status``."""

    def _require_mail(self) -> Mailer:
        if self._mail is None:
            raise ServiceUnavailable("mail is not running: build Security with initialize_fundaments()")
        return self._mail

    async def send_test_mail(self, to: str) -> int:
        """Put a test mail to ``to`` in the outbox (sent by the background task like every mail);
        its outbox id. InvalidArgument for an unusable address."""
        mailer = self._require_mail()
        async with self._transaction() as tx:
            return await mailer.enqueue(tx, TEST_KIND, to, TEST_SUBJECT, TEST_TEXT)

    async def mail_status(self, mail_id: int, to: str) -> MailStatus:
        """Where the test mail ``send_test_mail(to)`` returned ``mail_id`` for is now."""
        return await self._require_mail().status(mail_id, TEST_KIND, to)

    @property
    def mail_destination(self) -> str:
        """Where mail goes (MAIL_URL, the password masked)."""
        return self._require_mail().description
