"""Layer 3 service; being built in its issue."""

from __future__ import annotations

from fundaments.audit import AuditTrail
from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.store import Database


class SessionManager:
    def __init__(self, db: Database, settings: Settings, clock: Clock, audit: AuditTrail) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._audit = audit

    async def start(self) -> None:
        """Start background work (none yet)."""

    async def close(self) -> None:
        """Stop background work (none yet)."""
