"""The README's account-recovery example, runnable: python examples/recovery.py

A forgotten password, reset by mail: the link goes to the file outbox (one .eml per mail, the
default MAIL_URL) of a throw-away directory, and is read back from it as a user would.
"""

from __future__ import annotations

import asyncio
import email
import email.message
import email.policy
import re
import tempfile
from pathlib import Path

from fundaments import Security, initialize_fundaments
from fundaments.config import generate_keys, load_settings
from fundaments.errors import AuthenticationError


def read_outbox(directory: Path) -> list[email.message.EmailMessage]:
    return [
        email.message_from_bytes(
            path.read_bytes(), _class=email.message.EmailMessage, policy=email.policy.default
        )
        for path in sorted(directory.glob("*.eml"))
    ]


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keys()
        settings = load_settings(
            env_file=Path(tmp) / "none.env",
            database_url=f"sqlite:///{Path(tmp) / 'recovery.db'}",
            mail_url=f"file://{tmp}/outbox",
            public_base_url="https://app.example",
            master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
            persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
            log_level="WARNING",
        )
        async with await initialize_fundaments(settings) as fundaments:
            security: Security = fundaments["security"]
            request_data = {"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0 (recovery)"}

            await security.register_user("ann", "correct horse battery staple", email="Ann@Example.com")
            print(
                "answer for a known address:",
                await security.request_password_reset("ann@example.com", request_data),
            )
            print(
                "answer for an unknown one: ",
                await security.request_password_reset("bob@example.com", request_data),
            )

            await fundaments["mail"].send_due()  # the background sender would, within a second
            [mail] = await asyncio.to_thread(read_outbox, Path(tmp, "outbox"))
            print("mails in the outbox: 1, to", mail["To"], "-", mail["Subject"])
            body = mail.get_body(preferencelist=("plain",)).get_content()  # type: ignore[union-attr]
            link = re.search(r"https://app\.example/reset-password\?token=(\S+)", body)
            assert link is not None
            print("link:", link.group(0).split("=")[0] + "=… (256 random bits, single use, 30 minutes)")

            user = await security.reset_password(link.group(1), "a new long passphrase 2026", request_data)
            print("reset:", user.username, "- locked:", user.is_locked)
            try:
                await security.reset_password(link.group(1), "another passphrase 2027", request_data)
            except AuthenticationError as exc:
                print("the same link again:", exc)
            print(
                "old password:",
                bool(await security.user_login("ann", "correct horse battery staple", request_data)),
            )
            print(
                "new password, by address:",
                bool(
                    await security.user_login("ANN@example.com", "a new long passphrase 2026", request_data)
                ),
            )


if __name__ == "__main__":
    asyncio.run(main())
