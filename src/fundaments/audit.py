"""The audit trail: an append-only, hash-chained record of every security decision.

Each event is written in the same transaction as the change it records, so a crash cannot keep
the change and lose the event; each also goes out as one JSON line on the ``fundaments.audit``
logger for shipping elsewhere. Nothing secret is ever passed in: callers hand over ids, the
username as typed (normalized, truncated) and small JSON details.

Every ``checkpoint_every`` events the appender also writes a checkpoint: the chain head, the number
of events up to it, and an HMAC under a key derived from the master key over those and the previous
checkpoint's MAC. Checkpoints are a MAC chain a database writer cannot extend or re-link, and they
let a verification start from the newest one instead of from the first event (docs/audit.md).
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import hmac
import json
import logging
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fundaments.clock import Clock
from fundaments.models import AuditEvent, RequestContext, storable_text
from fundaments.store import Database, Executor, Row, Transaction
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

CHECKPOINT_PURPOSE = "audit-checkpoint"  # EncryptionService.purpose_keys(...)
CHECKPOINT_EVERY = 1_000  # AUDIT_CHECKPOINT_EVERY
VERIFY_CHUNK = 2_000  # events read and hashed per step (hashing runs off the event loop)


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


def checkpoint_mac(
    key: bytes,
    *,
    key_id: str,
    prev_mac: str | None,
    event_id: int,
    event_hash: str,
    events: int,
    created_at: float,
) -> str:
    """The HMAC-SHA256 of a checkpoint: its fields and the previous checkpoint's MAC (a MAC chain)."""
    message = canonical(
        {
            "key_id": key_id,
            "prev_mac": prev_mac or "",
            "event_id": event_id,
            "event_hash": event_hash,
            "events": events,
            "created_at": created_at,
        }
    )
    return hmac.new(key, message.encode("ascii"), hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """Truthy when the chain is intact; otherwise names the first event that does not fit.

    ``events_checked`` is the position the verification reached in the chain: every event up to the
    head when intact, the broken event's position otherwise. ``events_hashed`` is how many of them
    this run recomputed (an incremental run starts at the newest verified checkpoint).
    """

    ok: bool
    events_checked: int
    broken_event_id: int | None = None
    reason: str | None = None
    events_hashed: int = 0
    checkpoints_checked: int = 0
    full: bool = False
    verified_at: float | None = None  # clock time the verification finished
    head_event_id: int = 0  # the newest event the verification covered
    broken_checkpoint_id: int | None = None

    def __bool__(self) -> bool:
        return self.ok


@dataclass(frozen=True, slots=True)
class _Mark:
    """The high-water mark: how far the chain has been verified in this process."""

    event_id: int
    event_hash: str
    events: int
    checkpoint: Row | None  # the newest checkpoint verified


class _Broken(Exception):  # control flow inside a verification: where and why it stopped
    def __init__(self, event_id: int | None, position: int, reason: str, checkpoint_id: int | None = None):
        super().__init__(reason)
        self.event_id = event_id
        self.position = position
        self.reason = reason
        self.checkpoint_id = checkpoint_id


CHECKPOINT_FIELDS = ("id", "event_id", "event_hash", "events", "created_at", "key_id", "mac")


def _same_checkpoint(a: Row, b: Row) -> bool:
    return all(a[name] == b[name] for name in CHECKPOINT_FIELDS)


def _check_events(rows: Sequence[Row], prev: str) -> tuple[str, int, str | None]:
    """Recompute ``rows``' links and hashes from ``prev``: (last hash, index of the first bad row or
    len(rows), why it is bad). CPU-bound; runs on a worker thread."""
    for index, row in enumerate(rows):
        if row["prev_hash"] != prev:
            return prev, index, "link to the previous event is broken"
        if chain_hash(prev, canonical({k: row[k] for k in EVENT_FIELDS})) != row["hash"]:
            return prev, index, "event content does not match its hash"
        prev = row["hash"]
    return prev, len(rows), None


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

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        checkpoint_keys: Sequence[tuple[str, bytes]] = (),
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        """``checkpoint_keys``: (key id, key) pairs, the current first — from
        ``EncryptionService.purpose_keys(CHECKPOINT_PURPOSE)``; without them checkpoints carry no MAC."""
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self._db = db
        self._clock = clock
        self._keys = dict(checkpoint_keys)
        self._current_key = checkpoint_keys[0] if checkpoint_keys else None
        self._every = checkpoint_every
        self._mark: _Mark | None = None
        self._failure: ChainVerification | None = None  # stands until a full verification passes
        self._last: ChainVerification | None = None
        self._last_full: ChainVerification | None = None
        self._full_running: asyncio.Future[ChainVerification] | None = None
        self._verify_lock = asyncio.Lock()
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
        # The events already on their way first: a count lands after the event it follows (two
        # writes started together may take the chain's lock in either order, PostgreSQL's pool).
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
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
        state = await queries.append_state(tx)
        prev = queries.GENESIS_HASH if state["head_hash"] is None else str(state["head_hash"])
        rows = []
        for fields in batch:
            digest = chain_hash(prev, canonical(fields))
            rows.append((*fields.values(), prev, digest))
            prev = digest
        ids = await queries.insert_events(tx, rows)
        for event_id, fields in zip(ids, batch, strict=True):
            # json.dumps escapes control characters, so a crafted username cannot forge a log line.
            audit_log.info(canonical({"id": event_id, **fields, "details": json.loads(fields["details"])}))
        if ids:
            await self._checkpoint_if_due(tx, ids[-1], prev, state)
        return ids

    async def _checkpoint_if_due(self, tx: Executor, head_id: int, head_hash: str, newest: Row) -> None:
        """Under the chain lock, in the appending transaction: a checkpoint at the head once
        ``checkpoint_every`` events follow the newest one. In the same transaction, so a checkpoint
        never covers events that rolled back, and a reader that sees an event also sees its checkpoint."""
        base_id = 0 if newest["event_id"] is None else int(newest["event_id"])
        if head_id - base_id < self._every:  # ids only grow: never more events than that since
            return
        since = await queries.count_events_after(tx, base_id)
        if since < self._every:
            return
        events = since + (0 if newest["events"] is None else int(newest["events"]))
        created_at = self._clock.now()
        key_id = mac = None
        if self._current_key is not None:
            key_id, key = self._current_key
            mac = checkpoint_mac(
                key,
                key_id=key_id,
                prev_mac=newest["mac"],
                event_id=head_id,
                event_hash=head_hash,
                events=events,
                created_at=created_at,
            )
        checkpoint_id = await queries.insert_checkpoint(
            tx, head_id, head_hash, events, created_at, key_id, mac
        )
        # Shipped with the events: a copy outside the database pins the head against truncation.
        audit_log.info(
            canonical(
                {"checkpoint": checkpoint_id, "event_id": head_id, "event_hash": head_hash,
                 "events": events, "created_at": created_at, "key_id": key_id, "mac": mac}
            )
        )  # fmt: skip

    async def start(self) -> None:
        """Write an overdue checkpoint (a trail from before checkpoints, or AUDIT_CHECKPOINT_EVERY
        lowered), so verification never reports a checkpoint missing that was only never written."""
        head_id, _hash = await queries.chain_head(self._db)
        newest = await queries.newest_checkpoint(self._db)
        if head_id - (0 if newest is None else int(newest["event_id"])) < self._every:
            return
        async with self._db.transaction() as tx:
            await queries.lock_chain(tx, self._db.dialect)
            state = await queries.append_state(tx)
            if state["head_id"] is not None:
                await self._checkpoint_if_due(tx, int(state["head_id"]), str(state["head_hash"]), state)

    async def events(
        self,
        *,
        user_id: int | None = None,
        kind: str | None = None,
        kind_contains: str | None = None,
        since: float | None = None,
        before_id: int | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Events, newest first, by subject or actor user, kind and time; older than ``before_id``."""
        rows = await queries.events(
            self._db,
            user_id=user_id,
            kind=kind,
            kind_contains=kind_contains,
            since=since,
            before_id=before_id,
            limit=limit,
        )
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

    @property
    def last_verification(self) -> ChainVerification | None:
        """The newest verification result of this process (None before the first)."""
        return self._last

    async def verify_chain(
        self, *, full: bool = False, progress: Callable[[int, int], object] | None = None
    ) -> ChainVerification:
        """Verify the chain: incrementally by default, from the newest verified point to the head.

        Incremental: from this process's high-water mark (or, in a fresh process, the newest
        checkpoint whose MAC verifies) on: that point still stands, every newer event's hash and link,
        every newer checkpoint's MAC, event hash and count, and no checkpoint missing at the head.
        ``full=True`` does all of it from the first event and the first checkpoint, calling
        ``progress(events done, events in all)`` as it goes. A break, once found, is reported by every
        incremental verification until a full one passes. Verifications run one at a time.
        """
        if not full:
            return await self._verify_locked(False, progress)
        # Full runs cost seconds at a million events: callers arriving during one share its result.
        if self._full_running is None:
            task = asyncio.ensure_future(self._verify_locked(True, progress))
            self._full_running = task
            task.add_done_callback(self._full_finished)
        return await asyncio.shield(self._full_running)

    def _full_finished(self, task: asyncio.Future[ChainVerification]) -> None:
        self._full_running = None
        if not task.cancelled() and task.exception() is not None:
            log.error("audit verification failed to run: %s", task.exception())

    @property
    def last_full_verification(self) -> ChainVerification | None:
        """The newest full verification result of this process (None before the first)."""
        return self._last_full

    async def _verify_locked(
        self, full: bool, progress: Callable[[int, int], object] | None
    ) -> ChainVerification:
        async with self._verify_lock:
            if not full and self._failure is not None:
                return self._failure
            result = await self._verify(full, progress)
            self._last = result
            if full:
                self._last_full = result
            if full or not result:
                self._failure = None if result else result
            return result

    def _checkpoint_problem(self, row: Row, prev_mac: str | None) -> str | None:
        """Why a checkpoint row does not verify under the MAC chain (None: it does, or no keys)."""
        if not self._keys:
            return None  # documented: without MASTER_ENCRYPTION_KEY checkpoints are not authenticated
        name = f"checkpoint #{row['id']}"
        if row["mac"] is None:
            return f"{name} has no MAC: forged, or written while MASTER_ENCRYPTION_KEY was not set"
        key_id = str(row["key_id"] or "")
        key = self._keys.get(key_id)
        if key is None:
            shown = (
                key_id if key_id.isascii() and key_id.isalnum() and len(key_id) <= 32 else "an unknown key"
            )
            return (
                f"{name} is under key {shown}, which is not configured: add that master key to "
                "MASTER_ENCRYPTION_KEY_PREVIOUS (or the checkpoint is forged)"
            )
        expected = checkpoint_mac(
            key,
            key_id=key_id,
            prev_mac=prev_mac,
            event_id=int(row["event_id"]),
            event_hash=str(row["event_hash"]),
            events=int(row["events"]),
            created_at=float(row["created_at"]),
        )
        if not hmac.compare_digest(expected, str(row["mac"])):
            return f"{name} does not verify: it was forged or edited, or a checkpoint before it was deleted"
        return None

    async def _verify(self, full: bool, progress: Callable[[int, int], object] | None) -> ChainVerification:
        # Pin the head first: an event and its checkpoint commit together, and ids only grow, so
        # everything up to it is visible now and stays put, whatever is appended meanwhile.
        # The newest checkpoint is read before the head: every checkpoint seen then must pin an event
        # that is still there, while one appended meanwhile for a newer event is left for next time.
        known = await queries.newest_checkpoint(self._db)
        head_id, _ = await queries.chain_head(self._db)
        checked = 0
        position = 0
        try:
            start_id, start_hash, position, base, pending, checked = await self._starting_point(
                full, head_id, known
            )
            total = 0
            if progress is not None:
                total = position + await queries.count_events_between(self._db, start_id, head_id)
                progress(position, total)
            last_id, last_hash, position, hashed = await self._walk(
                start_id, start_hash, position, head_id, pending, progress, total
            )
            newest = pending[-1] if pending else base
            covered = 0 if newest is None else int(newest["events"])
            if position - covered >= self._every:
                raise _Broken(
                    last_id,
                    position,
                    f"no checkpoint covers the newest {position - covered} events: newer checkpoints were "
                    "deleted (or AUDIT_CHECKPOINT_EVERY was lowered and nothing was recorded since)",
                )
        except _Broken as broken:
            return ChainVerification(
                False,
                broken.position,
                broken.event_id,
                broken.reason,
                checkpoints_checked=checked,
                full=full,
                verified_at=self._clock.now(),
                head_event_id=head_id,
                broken_checkpoint_id=broken.checkpoint_id,
            )
        checked += len(pending)
        if last_id:
            self._mark = _Mark(last_id, last_hash, position, newest)
        return ChainVerification(
            True,
            position,
            events_hashed=hashed,
            checkpoints_checked=checked,
            full=full,
            verified_at=self._clock.now(),
            head_event_id=last_id,
        )

    async def _starting_point(
        self, full: bool, head_id: int, known: Row | None
    ) -> tuple[int, str, int, Row | None, list[Row], int]:
        """(event id, its hash, its position, the checkpoint there, the newer checkpoints to check
        on the way — MACs already verified —, checkpoints checked so far)."""
        mark = None if full else self._mark
        known_id = 0 if known is None else int(known["id"])
        if full:
            pending = await queries.checkpoints(
                self._db, from_id=0, at_most_event_id=head_id, known_id=known_id
            )
            self._check_macs(None, pending)
            return 0, queries.GENESIS_HASH, 0, None, pending, 0
        if mark is not None:
            if await queries.event_hash(self._db, mark.event_id) != mark.event_hash:
                raise _Broken(
                    mark.event_id,
                    mark.events,
                    f"event #{mark.event_id}, verified before, is gone or changed: the trail was "
                    "truncated or rewritten",
                )
            base = mark.checkpoint
            rows = await queries.checkpoints(
                self._db,
                from_id=0 if base is None else int(base["id"]),
                at_most_event_id=head_id,
                known_id=known_id,
            )
            if base is not None:
                if not rows or not _same_checkpoint(rows[0], base):
                    raise _Broken(
                        int(base["event_id"]),
                        int(base["events"]),
                        f"checkpoint #{base['id']}, verified before, is gone or changed: the trail was "
                        "truncated or rewritten",
                        int(base["id"]),
                    )
                rows = rows[1:]
            self._check_macs(base, rows)
            return mark.event_id, mark.event_hash, mark.events, base, rows, 1 if base is not None else 0
        base = known
        if base is None:
            return 0, queries.GENESIS_HASH, 0, None, [], 0
        self._check_macs(await queries.checkpoint_before(self._db, int(base["id"])), [base])
        event_id, position = int(base["event_id"]), int(base["events"])
        if await queries.event_hash(self._db, event_id) != base["event_hash"]:
            raise _Broken(
                event_id,
                position,
                f"the event checkpoint #{base['id']} pins is gone or changed",
                int(base["id"]),
            )
        return event_id, str(base["event_hash"]), position, base, [], 1

    def _check_macs(self, before: Row | None, rows: Sequence[Row]) -> None:
        prev_mac = None if before is None else before["mac"]
        prev_event = 0 if before is None else int(before["event_id"])
        for row in rows:
            problem = self._checkpoint_problem(row, prev_mac)
            if problem is None and int(row["event_id"]) <= prev_event:
                problem = f"checkpoint #{row['id']} is out of order"
            if problem is not None:
                raise _Broken(int(row["event_id"]), int(row["events"]), problem, int(row["id"]))
            prev_mac, prev_event = row["mac"], int(row["event_id"])

    async def _walk(
        self,
        after_id: int,
        prev: str,
        position: int,
        head_id: int,
        pending: list[Row],
        progress: Callable[[int, int], object] | None,
        total: int,
    ) -> tuple[int, str, int, int]:
        """Hash every event after ``after_id`` up to ``head_id``, matching ``pending`` checkpoints on
        the way: (last event id, its hash, its position, events hashed)."""
        waiting = iter(pending)
        checkpoint = next(waiting, None)
        hashed = 0
        last_id = after_id
        while True:
            rows = await queries.events_after(self._db, last_id, head_id, VERIFY_CHUNK)
            if not rows:
                break
            # The hashing is CPU-bound (about 9 µs an event): off the loop, so pages keep answering.
            end_hash, good, reason = await asyncio.to_thread(_check_events, rows, prev)
            for index, row in enumerate(rows[:good] if reason is None else rows[: good + 1]):
                row_id = int(row["id"])
                if checkpoint is not None and int(checkpoint["event_id"]) < row_id:
                    raise _Broken(
                        int(checkpoint["event_id"]),
                        int(checkpoint["events"]),
                        f"the event checkpoint #{checkpoint['id']} pins is gone",
                        int(checkpoint["id"]),
                    )
                if reason is not None and index == good:
                    raise _Broken(row_id, position + index + 1, reason)
                if checkpoint is not None and int(checkpoint["event_id"]) == row_id:
                    if checkpoint["event_hash"] != row["hash"]:
                        raise _Broken(
                            row_id, position + index + 1,
                            f"event does not match the hash checkpoint #{checkpoint['id']} pins",
                            int(checkpoint["id"]),
                        )  # fmt: skip
                    if int(checkpoint["events"]) != position + index + 1:
                        raise _Broken(
                            row_id,
                            position + index + 1,
                            f"checkpoint #{checkpoint['id']} counts {checkpoint['events']} events up to "
                            f"here, the chain holds {position + index + 1}: events were deleted or inserted",
                            int(checkpoint["id"]),
                        )
                    checkpoint = next(waiting, None)
            prev = end_hash
            position += len(rows)
            hashed += len(rows)
            last_id = int(rows[-1]["id"])
            if progress is not None:
                progress(position, max(total, position))
        if checkpoint is not None:
            raise _Broken(
                int(checkpoint["event_id"]),
                int(checkpoint["events"]),
                f"the event checkpoint #{checkpoint['id']} pins is gone: the trail was truncated",
                int(checkpoint["id"]),
            )
        return last_id, prev, position, hashed
