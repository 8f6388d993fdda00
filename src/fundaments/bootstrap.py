"""Wiring: ``initialize_fundaments()`` builds every service from configuration and injects it.

Nothing here is a module-level singleton: two calls give two independent sets of services (two
application instances in one test, say), each closed by its own ``close()``.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterator, Mapping
from types import TracebackType
from typing import Any, cast

from fundaments import store
from fundaments.access_control import AccessControl
from fundaments.account_tokens import AccountTokens
from fundaments.api_keys import DIGEST_PURPOSE, ApiKeys
from fundaments.audit import CHECKPOINT_PURPOSE, AuditTrail
from fundaments.clock import Clock, SystemClock
from fundaments.config import Settings, configure_logging, degraded_services, load_settings
from fundaments.encryption import EncryptionService
from fundaments.errors import PasswordPolicyError, StorageError, UserExistsError
from fundaments.mail import Mailer
from fundaments.mfa import MfaService
from fundaments.passwords import PasswordService
from fundaments.ratelimit import RateLimiter
from fundaments.security import Security
from fundaments.sessions import SessionManager
from fundaments.store import Database, open_database, probe_database
from fundaments.user_handler import UserHandler

log = logging.getLogger(__name__)

SERVICE_KEYS = (
    "config",
    "db",
    "encryption",
    "user_handler",
    "sessions",
    "access_control",
    "audit",
    "mail",
    "account_tokens",
    "api_keys",
    "rate_limiter",
    "mfa",
    "security",
)


class Fundaments(Mapping[str, Any]):
    """The started services, read-only: ``fundaments["security"]``. Close with ``await close()``."""

    def __init__(self, services: dict[str, Any]) -> None:
        self._services = {key: services.get(key) for key in SERVICE_KEYS}
        self._closed = False

    def __getitem__(self, key: str) -> Any:
        return self._services[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._services)

    def __len__(self) -> int:
        return len(self._services)

    @property
    def security(self) -> Security:
        return cast(Security, self._services["security"])

    @property
    def settings(self) -> Settings:
        return cast(Settings, self._services["config"])

    def started(self) -> dict[str, bool]:
        """Which services are running (``False``: disabled or failed, reason in the log)."""
        return {key: self._services[key] is not None for key in SERVICE_KEYS}

    async def close(self) -> None:
        """Stop background work and dispose of the database connections. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for key in ("api_keys", "mail", "access_control", "sessions", "user_handler", "rate_limiter"):
            service = self._services.get(key)
            if service is not None:
                await service.close()
        audit: AuditTrail | None = self._services.get("audit")
        if audit is not None:
            await audit.close()
        db: Database | None = self._services.get("db")
        if db is not None:
            await db.close()

    async def __aenter__(self) -> Fundaments:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


async def _build_encryption(settings: Settings) -> EncryptionService | None:
    for _service, warning in degraded_services(settings):
        log.warning(warning)
    if not settings.encryption_configured:
        return None
    assert settings.master_encryption_key is not None and settings.encryption_salt is not None
    # PBKDF2 with 600,000 iterations takes a few hundred milliseconds: keep it off the loop.
    return await asyncio.to_thread(
        EncryptionService,
        settings.master_encryption_key.get_secret_value(),
        settings.encryption_salt,
        settings.previous_master_keys,
    )


ADMIN_USERNAME = "admin"
ADMIN_PASSWORD_BYTES = 18  # 24 URL-safe characters, 144 bits


async def ensure_admin(security: Security, username: str = ADMIN_USERNAME) -> str | None:
    """On a database without any account, create ``username`` with the ``admin`` role and a random
    one-time password that must be changed at the first login; that password, or None when accounts
    already exist. Print it once to the operator's terminal, never to a log."""
    if await security.list_users(limit=1):
        return None
    while True:
        password = secrets.token_urlsafe(ADMIN_PASSWORD_BYTES)
        try:
            await security.register_user(username, password, roles=["admin"], must_change_password=True)
        except PasswordPolicyError:
            continue  # a random string that happens to contain the username: draw again
        except UserExistsError:
            return None  # another instance starting at the same moment created it
        return password


async def check_database(settings: Settings) -> str | None:
    """None when the configured database can be reached; else the problem with its fix."""
    try:
        await probe_database(settings.database)
    except StorageError as exc:
        return str(exc)
    return None


async def migrate_database(settings: Settings) -> str | None:
    """Upgrade the schema to the newest revision; the revision afterwards."""
    return await store.upgrade(settings.database)


async def schema_revisions(settings: Settings) -> tuple[str | None, str | None]:
    """(revision the database is at, newest revision this version ships)."""
    return await store.current(settings.database), store.head_revision()


async def initialize_fundaments(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    configure_logs: bool = True,
) -> Fundaments:
    """Build and start every service; the returned mapping holds them under SERVICE_KEYS.

    Raises ConfigurationError for an invalid setting and StorageError when the database cannot be
    opened or migrated: without storage no security decision can be made.
    """
    settings = settings if settings is not None else load_settings()
    clock = clock or SystemClock()
    if configure_logs:
        configure_logging(settings)
    db = await open_database(settings.database, settings)
    log.info("database ready: %s", db.description)
    try:
        encryption = await _build_encryption(settings)
        # Checkpoint MACs use a key derived from the master key: a database dump cannot forge them.
        audit = AuditTrail(
            db,
            clock,
            checkpoint_keys=encryption.purpose_keys(CHECKPOINT_PURPOSE) if encryption else (),
            checkpoint_every=settings.audit_checkpoint_every,
        )
        await audit.start()
        passwords = PasswordService.from_settings(settings)
        user_handler = UserHandler(db, settings, clock, audit, passwords)
        sessions = SessionManager(db, settings, clock, audit)
        access_control = AccessControl(db, settings, clock, audit)
        mail = Mailer(db, settings, clock, audit, encryption)
        account_tokens = AccountTokens(db, settings, clock)
        # Keyed digests under a key derived from the master key: a dump cannot test a token.
        # Without encryption configured there is no such key, and no API keys (ServiceUnavailable).
        api_keys = None
        if encryption is not None:
            api_keys = ApiKeys(db, settings, clock, audit, encryption.purpose_keys(DIGEST_PURPOSE))
        rate_limiter = RateLimiter.from_settings(settings, db, clock)
        log.info("rate limits: %s backend", rate_limiter.backend.name)
        mfa = MfaService(db, settings, clock, encryption)
        await user_handler.start()
        await sessions.start()
        await access_control.start()
        await mail.start()
        if api_keys is not None:
            await api_keys.start()
    except BaseException:
        await db.close()
        raise
    services: dict[str, Any] = {
        "config": settings,
        "db": db,
        "encryption": encryption,
        "user_handler": user_handler,
        "sessions": sessions,
        "access_control": access_control,
        "audit": audit,
        "mail": mail,
        "account_tokens": account_tokens,
        "api_keys": api_keys,
        "rate_limiter": rate_limiter,
        "mfa": mfa,
    }
    services["security"] = Security(services)
    fundaments = Fundaments(services)
    started = ", ".join(key for key, up in fundaments.started().items() if up)
    log.info("fundaments started: %s", started)
    return fundaments
