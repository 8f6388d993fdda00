"""The audit part of the facade: reading events and verifying the hash chain."""

from __future__ import annotations

from collections.abc import Callable

from fundaments.audit import ChainVerification
from fundaments.errors import InvalidArgument
from fundaments.models import AuditEvent
from fundaments.security._core import SecurityCore, text_argument

MAX_AUDIT_PAGE = 10_000
MAX_KIND = 64  # longer than any event kind


class AuditPart(SecurityCore):
    """``audit_events`` and ``verify_audit_chain``."""

    async def audit_events(
        self,
        *,
        user_id: int | None = None,
        kind: str | None = None,
        kind_contains: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Audit events, newest first: about or by ``user_id``, of ``kind`` (exactly) or with
        ``kind_contains`` in it ("login" finds ``login.failed``; ``%`` and ``_`` match themselves),
        at or after ``since``. The next page: ``before_id`` = the last event's id (keyset, no OFFSET)."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidArgument(f"limit must be an integer between 1 and {MAX_AUDIT_PAGE}")
        if before_id is not None and (
            isinstance(before_id, bool) or not isinstance(before_id, int) or not 0 < before_id < 2**63
        ):
            raise InvalidArgument("before_id must be a positive integer (an AuditEvent.id)")
        if kind_contains is not None:
            kind_contains = text_argument(kind_contains, "kind_contains", MAX_KIND)
        return await self._require_audit().events(
            user_id=user_id,
            kind=kind,
            kind_contains=kind_contains,
            since=since,
            before_id=before_id,
            limit=limit,
        )

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
