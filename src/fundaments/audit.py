"""The audit trail: an append-only, hash-chained record of every security decision.

Each event is written in the same transaction as the change it records, so a crash cannot keep
the change and lose the event; each also goes out as one JSON line on the ``fundaments.audit``
logger for shipping elsewhere. Nothing secret is ever passed in: callers hand over ids, the
username as typed (normalized, truncated) and small JSON details.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import json
import logging
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fundaments.clock import Clock
from fundaments.models import AuditEvent, RequestContext, storable_text
from fundaments.store import Database, Executor, Transaction
from fundaments.store import audit as queries

audit_log = logging.getLogger("fundaments.audit")
log = logging.getLogger(__name__)

COALESCE_SECONDS = 60.0  # record_soon: repeats of one kind within this window become a count
MAX_BURST_KEYS = 10_000  # record_coalesced: distinct (kind, key) bursts remembered at once
OVERFLOW_KEY = "*"  # beyond MAX_BURST_KEYS, new keys share one burst per kind

EVENT_FIELDS = (
    "occurred_at",
    "kind",
    "outcome",
    "actor_user_id",
    "subject_user_id",
    "username",
    "ip_address",
    "user_agent",
    "session_id",
    "details",
)
MAX_USERNAME = 254
MAX_USER_AGENT = 512
MAX_IP = 64
MAX_SESSION_ID = 32
MAX_DETAILS_CHARS = 4_096


def canonical(fields: Mapping[str, Any]) -> str:
    """The canonical JSON form an event's hash covers."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def chain_hash(prev_hash: str, canonical_form: str) -> str:
    return hashlib.sha256((prev_hash + canonical_form).encode("ascii")).hexdigest()


def _text(value: str | None, limit: int) -> str | None:
    return None if value is None else storable_text(str(value)[:limit])


def _details_json(details: Mapping[str, Any] | None) -> str:
    text = canonical(details or {})
    if len(text) > MAX_DETAILS_CHARS:  # keep it valid JSON rather than cut mid-value
        text = canonical({"truncated": True, "size": len(text)})
    return text


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """Truthy when the chain is intact; otherwise names the first event that does not fit."""

    ok: bool
    events_checked: int
    broken_event_id: int | None = None
    reason: str | None = None

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class _About:
    """Who a coalesced event is about: repeated in the summary event of its burst."""

    outcome: str
    subject_user_id: int | None
    username: str | None
    client: RequestContext | None
    details: Mapping[str, Any]


@dataclass(slots=True)
class _Burst:
    started: float
    suppressed: int = 0
    about: _About | None = None  # record_coalesced only


class AuditTrail:
    """Appends and reads audit events."""

    def __init__(self, db: Database, clock: Clock) -> None:
        self._db = db
        self._clock = clock
        self._bursts: dict[str, _Burst] = {}
        self._keyed_bursts: dict[tuple[str, str], _Burst] = {}
        self._pending: set[asyncio.Task[int | None]] = set()
        # Events waiting for their transaction's commit; a rolled-back transaction's entry goes
        # away with the transaction object.
        self._batches: weakref.WeakKeyDictionary[Transaction, list[dict[str, Any]]] = (
            weakref.WeakKeyDictionary()
        )

    def record_soon(
        self,
        kind: str,
        *,
        outcome: str = "success",
        details: Mapping[str, Any] | None = None,
        window: float = COALESCE_SECONDS,
    ) -> None:
        """Record an event from synchronous code (``decrypt_data`` failing, say), in the background.

        Repeats of ``kind`` within ``window`` seconds are counted, not written one by one, so a
        flood of bad input cannot turn into a flood of database writes: the next event written
        (or ``close()``) carries ``suppressed_before``, how many were folded into it.
        """
        now = self._clock.now()
        burst = self._bursts.get(kind)
        if burst is not None and now - burst.started < window:
            burst.suppressed += 1
            return
        self._bursts[kind] = _Burst(now)
        extra = {"suppressed_before": burst.suppressed} if burst is not None and burst.suppressed else {}
        self._schedule(kind, outcome, {**(details or {}), **extra})

    async def record_coalesced(
        self,
        kind: str,
        *,
        key: str,
        outcome: str = "failure",
        subject_user_id: int | None = None,
        username: str | None = None,
        client: RequestContext | None = None,
        details: Mapping[str, Any] | None = None,
        window: float = COALESCE_SECONDS,
    ) -> int | None:
        """Record an event an unauthenticated client can repeat at will (a refused login), at most
        once per ``key`` (its source: reason, account, client) and ``window`` seconds.

        The first event of a burst is written at once (its id returned); repeats inside the window
        are only counted, and the next event written for the key — or ``close()`` — carries
        ``suppressed_before``, so a flood costs one write per source and window, not one per request.
        At most MAX_BURST_KEYS sources are told apart; beyond that new ones share one burst per kind.
        """
        now = self._clock.now()
        burst_key = (kind, key)
        burst = self._keyed_bursts.get(burst_key)
        if burst is None and len(self._keyed_bursts) >= MAX_BURST_KEYS:
            self._prune_keyed_bursts(now, window)
            if len(self._keyed_bursts) >= MAX_BURST_KEYS:
                burst_key = (kind, OVERFLOW_KEY)
                burst = self._keyed_bursts.get(burst_key)
        if burst is not None and 0.0 <= now - burst.started < window:
            burst.suppressed += 1
            return None
        about = _About(outcome, subject_user_id, username, client, dict(details or {}))
        self._keyed_bursts[burst_key] = _Burst(now, about=about)
        extra = {"suppressed_before": burst.suppressed} if burst is not None and burst.suppressed else {}
        return await self.record(
            kind,
            outcome=outcome,
            subject_user_id=subject_user_id,
            username=username,
            client=client,
            details={**(details or {}), **extra},
        )

    def _prune_keyed_bursts(self, now: float, window: float) -> None:
        """Forget bursts whose window ended; their counts go out as summary events first."""
        for burst_key, burst in list(self._keyed_bursts.items()):
            if not 0.0 <= now - burst.started < window:
                del self._keyed_bursts[burst_key]
                if burst.suppressed:
                    self._schedule_summary(burst_key[0], burst)

    def _schedule_summary(self, kind: str, burst: _Burst) -> None:
        about = burst.about or _About("failure", None, None, None, {})
        summary = {**about.details, "suppressed_before": burst.suppressed, "summary": True}
        self._schedule(kind, about.outcome, summary, about)
        burst.suppressed = 0

    def _schedule(
        self, kind: str, outcome: str, details: Mapping[str, Any], about: _About | None = None
    ) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop: nothing can be written from here
            log.warning("audit event %s not recorded: no running event loop", kind)
            return
        # A fresh context: a caller inside a transaction must not hand its "holds the writer" mark
        # to a task that opens a transaction of its own.
        record = self.record(
            kind,
            outcome=outcome,
            details=details,
            subject_user_id=about.subject_user_id if about else None,
            username=about.username if about else None,
            client=about.client if about else None,
        )
        task = loop.create_task(record, context=contextvars.Context())
        self._pending.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[int | None]) -> None:
        self._pending.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("audit event could not be written: %s", task.exception())

    async def close(self) -> None:
        """Write the counts of coalesced events and wait for background writes to finish."""
        for kind, burst in list(self._bursts.items()):
            if burst.suppressed:
                self._schedule(
                    kind,
                    "failure" if kind.endswith("failed") else "success",
                    {"suppressed_before": burst.suppressed},
                )
                burst.suppressed = 0
        for (kind, _key), burst in list(self._keyed_bursts.items()):
            if burst.suppressed:
                self._schedule_summary(kind, burst)
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)

    async def record(
        self,
        kind: str,
        *,
        outcome: str = "success",
        tx: Executor | None = None,
        actor_user_id: int | None = None,
        subject_user_id: int | None = None,
        username: str | None = None,
        ip_address: str | None = None,
        user_agent: str | None = None,
        session_id: str | None = None,
        details: Mapping[str, Any] | None = None,
        client: RequestContext | None = None,
    ) -> int | None:
        """Append one event: in a transaction of its own (its id is returned), or as part of ``tx``,
        written when ``tx`` commits and not at all when it rolls back (then None is returned).
        ``client`` fills ``ip_address`` and ``user_agent`` unless they are given."""
        if client is not None:
            ip_address = client.ip_address if ip_address is None else ip_address
            user_agent = client.user_agent if user_agent is None else user_agent
        fields: dict[str, Any] = {
            "occurred_at": self._clock.now(),
            "kind": kind,
            "outcome": outcome,
            "actor_user_id": actor_user_id,
            "subject_user_id": subject_user_id,
            "username": _text(username, MAX_USERNAME),
            "ip_address": _text(ip_address, MAX_IP),
            "user_agent": _text(user_agent, MAX_USER_AGENT),
            "session_id": _text(session_id, MAX_SESSION_ID),
            "details": _details_json(details),
        }
        if tx is None:
            async with self._db.transaction() as own_tx:
                return (await self._append(own_tx, [fields]))[0]
        if isinstance(tx, Transaction):
            # Appended just before the caller's transaction commits, all of its events at once: the
            # chain lock is then always the last lock taken, and is held only for the commit.
            batch = self._batches.get(tx)
            if batch is None:
                batch = self._batches[tx] = []
                tx.before_commit(lambda: self._append_at_commit(tx, batch))
            batch.append(fields)
            return None
        return (await self._append(tx, [fields]))[0]

    async def _append_at_commit(self, tx: Executor, batch: list[dict[str, Any]]) -> None:
        await self._append(tx, batch)

    async def _append(self, tx: Executor, batch: list[dict[str, Any]]) -> list[int]:
        await queries.lock_chain(tx, self._db.dialect)
        prev = await queries.last_hash(tx)
        rows = []
        for fields in batch:
            digest = chain_hash(prev, canonical(fields))
            rows.append((*fields.values(), prev, digest))
            prev = digest
        ids = await queries.insert_events(tx, rows)
        for event_id, fields in zip(ids, batch, strict=True):
            # json.dumps escapes control characters, so a crafted username cannot forge a log line.
            audit_log.info(canonical({"id": event_id, **fields, "details": json.loads(fields["details"])}))
        return ids

    async def events(
        self,
        *,
        user_id: int | None = None,
        kind: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events, newest first, filtered by subject or actor user, kind and time."""
        rows = await queries.events(self._db, user_id=user_id, kind=kind, since=since, limit=limit)
        return [
            AuditEvent(
                id=int(r["id"]),
                occurred_at=float(r["occurred_at"]),
                kind=r["kind"],
                outcome=r["outcome"],
                actor_user_id=r["actor_user_id"],
                subject_user_id=r["subject_user_id"],
                username=r["username"],
                ip_address=r["ip_address"],
                user_agent=r["user_agent"],
                session_id=r["session_id"],
                details=json.loads(r["details"]),
            )
            for r in rows
        ]

    async def verify_chain(self) -> ChainVerification:
        """Recompute every hash in order; the first event whose hash or link does not match."""
        prev = queries.GENESIS_HASH
        rows = await queries.all_events_in_order(self._db)
        for count, row in enumerate(rows, start=1):
            fields = {k: row[k] for k in EVENT_FIELDS}
            if row["prev_hash"] != prev:
                return ChainVerification(False, count, int(row["id"]), "link to the previous event is broken")
            if chain_hash(prev, canonical(fields)) != row["hash"]:
                return ChainVerification(
                    False, count, int(row["id"]), "event content does not match its hash"
                )
            prev = row["hash"]
        return ChainVerification(True, len(rows))
