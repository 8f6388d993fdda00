"""What every part of the facade shares: the injected services and the argument checks.

Each part of :class:`~fundaments.security.Security` (accounts, sessions, access, encryption,
audit, key rotation) derives from :class:`SecurityCore` and holds no state of its own, as the
command groups of redis-py's client do: the one ``Security`` object inherits them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any

from fundaments.access_control import AccessControl
from fundaments.account_tokens import AccountTokens
from fundaments.api_keys import ApiKeys
from fundaments.audit import AuditTrail
from fundaments.config import Settings
from fundaments.encryption import EncryptionService
from fundaments.errors import InvalidArgument, ServiceUnavailable
from fundaments.mail import Mailer
from fundaments.models import RequestContext
from fundaments.ratelimit import RateLimiter
from fundaments.security import notices
from fundaments.sessions import SessionManager
from fundaments.store import Database, Executor, Transaction
from fundaments.user_handler import UserHandler

CORE_SERVICES = ("user_handler", "sessions", "access_control")

ENCRYPTION_UNAVAILABLE = (
    "encryption is not configured: set MASTER_ENCRYPTION_KEY (at least 32 characters) and "
    "PERSISTENT_ENCRYPTION_SALT (hex, at least 16 bytes); `fundaments keys generate` prints both"
)


def user_id_argument(value: object, name: str = "user_id") -> int:
    """``value`` as a user id; InvalidArgument unless it is a positive 64-bit int."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidArgument(f"{name} must be a positive integer (a User.id), not {type(value).__name__}")
    return value


def optional_user_id(value: object, name: str) -> int | None:
    return None if value is None else user_id_argument(value, name)


def text_argument(value: object, name: str, max_length: int) -> str:
    """``value`` if it is a non-empty string of at most ``max_length`` characters without NUL."""
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InvalidArgument(f"{name} must be a non-empty string of at most {max_length} characters")
    if "\x00" in value:  # PostgreSQL refuses NUL in text: say so instead of a driver error
        raise InvalidArgument(f"{name} must not contain NUL characters")
    return value


class SecurityCore:
    """The services behind the facade, as ``initialize_fundaments()`` injects them."""

    def __init__(self, services: Mapping[str, Any]) -> None:
        for name in CORE_SERVICES:
            if services.get(name) is None:
                raise RuntimeError(f"Security manager failed to initialize: {name} missing")
        self._users: UserHandler = services["user_handler"]
        self._sessions: SessionManager = services["sessions"]
        self._access: AccessControl = services["access_control"]
        self._encryption: EncryptionService | None = services.get("encryption")
        self._audit: AuditTrail | None = services.get("audit")
        self._db: Database | None = services.get("db")
        self._settings: Settings | None = services.get("config")
        self._mail: Mailer | None = services.get("mail")
        self._tokens: AccountTokens | None = services.get("account_tokens")
        self._api_keys: ApiKeys | None = services.get("api_keys")
        self._rate_limiter: RateLimiter | None = services.get("rate_limiter")  # optional: not a core service

    @property
    def settings(self) -> Settings | None:
        """The settings this facade was started with (None when built without them); read-only."""
        return self._settings

    @property
    def encryption_available(self) -> bool:
        return self._encryption is not None

    def _require_encryption(self) -> EncryptionService:
        if self._encryption is None:
            raise ServiceUnavailable(ENCRYPTION_UNAVAILABLE)
        return self._encryption

    def _require_audit(self) -> AuditTrail:
        if self._audit is None:
            raise ServiceUnavailable(
                "the audit trail is not running: build Security with initialize_fundaments()"
            )
        return self._audit

    def _require_db(self) -> Database:
        if self._db is None:
            raise ServiceUnavailable("no database: build Security with initialize_fundaments()")
        return self._db

    def _transaction(self) -> AbstractAsyncContextManager[Transaction]:
        return self._require_db().transaction()

    def _require_settings(self) -> Settings:
        if self._settings is None:
            raise ServiceUnavailable("no settings: build Security with initialize_fundaments()")
        return self._settings

    def _require_mail(self) -> Mailer:
        if self._mail is None:
            raise ServiceUnavailable("mail is not running: build Security with initialize_fundaments()")
        return self._mail

    def _require_tokens(self) -> AccountTokens:
        if self._tokens is None:
            raise ServiceUnavailable(
                "account tokens are not running: build Security with initialize_fundaments()"
            )
        return self._tokens

    def _require_api_keys(self) -> ApiKeys:
        if self._api_keys is None:
            raise ServiceUnavailable(
                "API keys are not running: they need MASTER_ENCRYPTION_KEY and "
                "PERSISTENT_ENCRYPTION_SALT (their digests are keyed with a key derived from them); "
                "`fundaments keys generate` prints both"
            )
        return self._api_keys

    def _api_keys_changed(self) -> None:
        """After a change to an account (disabled, deleted): its keys' cached state is stale here."""
        if self._api_keys is not None:
            self._api_keys.invalidate_cache()

    def _now(self) -> float:
        return self._require_tokens().now()

    async def _notify(self, tx: Executor, to: str | None, notice: notices.Notice) -> None:
        """Queue a notice to the account's address in ``tx``; nothing without an address or mail."""
        if to is not None and self._mail is not None:
            await self._mail.enqueue(tx, notice.kind, to, notice.subject, notice.text, notice.html)

    async def _notify_password_changed(
        self, tx: Executor, user_id: int, ctx: RequestContext | None, *, by_administrator: bool
    ) -> None:
        user = await self._users.get(user_id, tx=tx)
        if user is None or user.email is None or self._settings is None:
            return
        ip = ctx.ip_address if ctx is not None else None
        notice = notices.password_changed(
            self._settings, user.username, self._now(), ip, by_administrator=by_administrator
        )
        await self._notify(tx, user.email, notice)
