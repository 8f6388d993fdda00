"""The Security facade: the one API an application, the web layer and the CLI call.

Every security action goes through here, so each chain (a login is always throttled, verified,
regenerated, bound and audited) is written once, in one place. The services below are internal.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fundaments.access_control import AccessControl
from fundaments.audit import AuditTrail
from fundaments.config import Settings
from fundaments.encryption import EncryptionService
from fundaments.errors import ServiceUnavailable
from fundaments.sessions import SessionManager
from fundaments.store import Database
from fundaments.user_handler import UserHandler

CORE_SERVICES = ("user_handler", "sessions", "access_control")

ENCRYPTION_UNAVAILABLE = (
    "encryption is not configured: set MASTER_ENCRYPTION_KEY (at least 32 characters) and "
    "PERSISTENT_ENCRYPTION_SALT (hex, at least 16 bytes); `fundaments keys generate` prints both"
)


class Security:
    """One object for every security action. Build it with ``initialize_fundaments()``."""

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

    @property
    def encryption_available(self) -> bool:
        return self._encryption is not None

    def _require_encryption(self) -> EncryptionService:
        if self._encryption is None:
            raise ServiceUnavailable(ENCRYPTION_UNAVAILABLE)
        return self._encryption

    # --- encryption ---------------------------------------------------------------------------

    # --- accounts ------------------------------------------------------------------------------

    # --- sessions ------------------------------------------------------------------------------

    # --- access control ------------------------------------------------------------------------

    # --- audit ---------------------------------------------------------------------------------
