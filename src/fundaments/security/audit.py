"""The audit part of the facade: reading events and verifying the hash chain."""

from __future__ import annotations

from collections.abc import Callable

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

    async def verify_audit_chain(
        self, *, full: bool = False, progress: Callable[[int, int], object] | None = None
    ) -> ChainVerification:
        """Truthy when the audit trail still matches its hash chain and checkpoints; else names the
        first event (or checkpoint) that does not fit.

        Incremental by default: from the newest verified point (this process's high-water mark, or
        the newest checkpoint whose MAC verifies) to the head, so it costs the events since then.
        ``full=True`` re-verifies every event and every checkpoint MAC, calling
        ``progress(done, total)``. A break stays reported until a full verification passes.
        """
        if not isinstance(full, bool):
            raise InvalidArgument("full must be True or False")
        return await self._require_audit().verify_chain(full=full, progress=progress)

    @property
    def last_audit_verification(self) -> ChainVerification | None:
        """The newest ``verify_audit_chain`` result of this process, with its ``verified_at`` time;
        None before the first. Costs nothing: shows the state without recomputing it."""
        return self._require_audit().last_verification

    @property
    def last_full_audit_verification(self) -> ChainVerification | None:
        """The newest ``verify_audit_chain(full=True)`` result of this process; None before the first."""
        return self._require_audit().last_full_verification
