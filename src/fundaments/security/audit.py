"""The audit part of the facade: reading events and verifying the hash chain."""

from __future__ import annotations

from fundaments.audit import ChainVerification
from fundaments.errors import InvalidArgument
from fundaments.models import AuditEvent
from fundaments.security._core import SecurityCore

MAX_AUDIT_PAGE = 10_000


class AuditPart(SecurityCore):
    """``audit_events`` and ``verify_audit_chain``."""

    async def audit_events(
        self,
        *,
        user_id: int | None = None,
        kind: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Audit events, newest first: about or by ``user_id``, of ``kind``, at or after ``since``."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidArgument(f"limit must be an integer between 1 and {MAX_AUDIT_PAGE}")
        return await self._require_audit().events(user_id=user_id, kind=kind, since=since, limit=limit)

    async def verify_audit_chain(self) -> ChainVerification:
        """Truthy when every audit event still matches the hash chain; else names the first broken one."""
        return await self._require_audit().verify_chain()
