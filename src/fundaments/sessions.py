"""Sessions: a new random token at every login, bound to its client, with idle and absolute timeouts.

Only the SHA-256 of a token is stored, so a copy of the database yields no usable session.
Validation is one indexed read (on SQLite, run on the event loop); ``last_seen`` is written at
most once per ``SESSION_TOUCH_INTERVAL`` by a background writer, in batches, off the request path.
A small in-process cache may answer for ``SESSION_CACHE_SECONDS``; a revocation made here evicts at
once, one made by another instance is seen within that bound. After a privilege-change rotation the
previous token still answers, with the new token, for ``SESSION_ROTATION_GRACE`` seconds (parallel
requests of a client in flight across the change). See docs/sessions.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import secrets
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fundaments.audit import AuditTrail
from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.errors import FundamentsError, UnknownUserError
from fundaments.models import RequestContext, Session, User
from fundaments.store import Database, Executor, Row
from fundaments.store import sessions as queries
from fundaments.store.sessions import LookupRow

log = logging.getLogger(__name__)

TOKEN_BYTES = 32  # 256 bits from secrets
SESSION_ID_BYTES = 16  # the public id: unguessable too, though it is not a credential
MAX_TOKEN_LENGTH = 256  # a real token is 43 characters; anything far longer is not ours
FLUSH_INTERVAL = 1.0  # seconds between batched last_seen writes
MAX_PENDING_TOUCHES = 10_000  # flush early beyond this many
PURGE_INTERVAL = 60.0  # seconds between purges of expired rows
PURGE_BATCH = 500  # rows per purge statement: the writer is never held for long
CACHE_MAX_ENTRIES = 100_000
TOMBSTONE_SECONDS = 60.0  # a revoked hash stays out of the cache this long after the revocation
TOMBSTONE_PRUNE_AT = 1_000
LOGGED_MISMATCHES_MAX = 10_000  # binding "log" mode: remembered (session, client) pairs
REVOKE_AUDIT_MAX_IDS = 50
SUCCESSOR_LABEL = b"fundaments/session-successor/v1\x00"  # domain separation of the sealing key
NONCE_BYTES = 12

_Request = RequestContext | Mapping[str, Any]

# The tuple layout of queries.LOOKUP.
_ID, _USER_ID, _CREATED, _LAST_SEEN, _EXPIRES, _IP, _UA, _EPOCH, _USERNAME, _USER_EPOCH, _DISABLED = range(11)
# queries.LOOKUP_PREVIOUS adds these.
_TOKEN_HASH, _PREVIOUS_UNTIL, _SUCCESSOR = range(11, 14)


def hash_token(token: object) -> bytes | None:
    """SHA-256 of a token string, or None for anything that cannot be one of ours."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_LENGTH or not token.isascii():
        return None
    return hashlib.sha256(token.encode("ascii")).digest()


def _successor_cipher(previous_token: str) -> AESGCM:
    # A key only the holder of the previous token can derive: the database stores SHA-256 of the
    # token alone, which says nothing about SHA-256 of the label and the token.
    return AESGCM(hashlib.sha256(SUCCESSOR_LABEL + previous_token.encode("ascii")).digest())


def seal_successor(previous_token: str, new_token: str, session_id: str) -> bytes:
    """The new token of a rotated session, sealed with AES-256-GCM under a key derived from the
    previous token and bound to the session id: a copy of the database does not reveal it."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + _successor_cipher(previous_token).encrypt(
        nonce, new_token.encode("ascii"), session_id.encode("utf-8")
    )


def open_successor(previous_token: str, sealed: bytes, session_id: str) -> str | None:
    """The token :func:`seal_successor` sealed, or None if ``sealed`` is not that (tampered, or
    sealed under another token or session)."""
    sealed = bytes(sealed)
    try:
        plain = _successor_cipher(previous_token).decrypt(
            sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], session_id.encode("utf-8")
        )
        return plain.decode("ascii")
    except (InvalidTag, ValueError):  # UnicodeDecodeError is a ValueError
        return None


def _parse_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:203.0.113.7 is the IPv4 client 203.0.113.7
    return address


def normalize_ip(text: str) -> str:
    """The canonical text of an IP address (compressed IPv6, IPv4 for v4-mapped); other text as is."""
    address = _parse_ip(text)
    return text.strip() if address is None else str(address)


def same_client_ip(stored: str, presented: str, mode: str) -> bool:
    """Whether ``presented`` matches the session's ``stored`` (normalized) IP under ``mode``
    (``subnet``: the same /24 or /64; any other mode: the same address)."""
    if presented == stored:
        return True
    if mode == "subnet":
        a, b = _parse_ip(stored), _parse_ip(presented)
        if a is None or b is None or a.version != b.version:
            return False
        prefix_bits = 8 if a.version == 4 else 64  # same /24 (IPv4) or /64 (IPv6)
        return int(a) >> prefix_bits == int(b) >> prefix_bits
    return normalize_ip(presented) == stored


class _Cached:
    """A session row as read, kept for at most SESSION_CACHE_SECONDS."""

    __slots__ = ("fetched_at", "last_seen", "row")

    def __init__(self, row: LookupRow, fetched_at: float) -> None:
        self.row = row
        self.fetched_at = fetched_at
        self.last_seen: float = row[_LAST_SEEN]


def _session(row: LookupRow, *, last_seen: float | None = None, **extra: Any) -> Session:
    return Session(
        id=row[0],
        user_id=int(row[1]),
        created_at=float(row[2]),
        last_seen=float(row[3] if last_seen is None else last_seen),
        expires_at=float(row[4]),
        ip_address=row[5],
        user_agent=row[6],
        **extra,
    )


class SessionManager:
    """Creates, validates, rotates and revokes sessions; purges expired ones in the background."""

    def __init__(self, db: Database, settings: Settings, clock: Clock, audit: AuditTrail) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._audit = audit
        self._binding = settings.session_binding
        self._bearer_binding = settings.session_binding_bearer
        self._grace = float(settings.session_rotation_grace)
        self._idle = float(settings.session_idle_timeout)
        self._absolute = float(settings.session_absolute_timeout)
        self._max_per_user = settings.session_max_per_user
        # last_seen must be written well within the idle timeout, or other instances (and the
        # purge) would see an active session as idle.
        self._touch_interval = min(float(settings.session_touch_interval), self._idle / 2)
        self._cache_seconds = float(settings.session_cache_seconds)
        self._cache: dict[bytes, _Cached] = {}
        self._generation = 0  # bumped by invalidate_cache(): reads begun before it are not cached
        self._tombstones: dict[bytes, float] = {}
        self._pending: dict[bytes, float] = {}  # token hash -> last_seen not yet written
        self._flushing: dict[bytes, float] = {}  # the batch being written right now
        self._logged_mismatches: set[tuple[bytes, str, str]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lookup: queries.PinnedLookup | None = None  # PostgreSQL: a dedicated read connection

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the background writer of last_seen touches and the purge of expired rows (and, on
        PostgreSQL, use a dedicated connection for lookups)."""
        if self._lookup is None:
            self._lookup = queries.PinnedLookup.for_database(self._db)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._background(), name="fundaments-sessions-background"
            )

    async def close(self) -> None:
        """Stop the background task and write the touches still pending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        lookup, self._lookup = self._lookup, None
        if lookup is not None:
            await lookup.close()
        try:
            await self.flush_touches()
        except FundamentsError as exc:
            log.warning("could not write pending session touches at close: %s", exc)

    async def _background(self) -> None:
        loop = asyncio.get_running_loop()
        next_purge = loop.time() + PURGE_INTERVAL
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), FLUSH_INTERVAL)
            self._wake.clear()
            try:
                await self.flush_touches()
                if loop.time() >= next_purge:
                    next_purge = loop.time() + PURGE_INTERVAL
                    await self.purge_expired()
            except FundamentsError as exc:  # the database is down: try again next round
                log.warning("session background work failed, retrying: %s", exc)
            except Exception:  # a bug must not stop the writer for the life of the process
                log.exception("session background work failed, retrying")

    # --- creating ------------------------------------------------------------------------------
    async def create(self, tx: Executor, user: User, ctx: _Request) -> Session:
        """A new session for ``user`` inside ``tx``; the returned Session carries the token.

        Copies the user's privilege epoch, binds the session to the client, revokes the oldest
        sessions beyond SESSION_MAX_PER_USER, and audits ``session.created``. Raises
        UnknownUserError if the user row does not exist.
        """
        context = RequestContext.coerce(ctx)
        now = self._clock.now()
        user_row = await queries.lock_user(tx, user.id)
        if user_row is None:
            raise UnknownUserError(f"no user with id {user.id}; cannot start a session")
        over = await queries.count_for_user(tx, user.id) - self._max_per_user + 1
        if over > 0:  # rare: only then are the user's dead rows cleared before counting again
            await queries.delete_expired_for_user(tx, user.id, now, now - self._idle)
            over = await queries.count_for_user(tx, user.id) - self._max_per_user + 1
        if over > 0:
            evicted = await queries.delete_oldest(tx, user.id, over)
            self._forget_rows(evicted)
            await self._audit_revoked(tx, user.id, [row["id"] for row in evicted], "max_per_user", context)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        session_id = secrets.token_urlsafe(SESSION_ID_BYTES)
        ip = normalize_ip(context.ip_address)
        expires_at = now + self._absolute
        await queries.insert(
            tx,
            token_hash=hashlib.sha256(token.encode("ascii")).digest(),
            session_id=session_id,
            user_id=user.id,
            now=now,
            expires_at=expires_at,
            ip_address=ip,
            user_agent=context.user_agent,
            privilege_epoch=int(user_row["privilege_epoch"]),
        )
        await self._audit.record(
            "session.created",
            tx=tx,
            actor_user_id=user.id,
            subject_user_id=user.id,
            username=user_row["username"],
            ip_address=ip,
            user_agent=context.user_agent,
            session_id=session_id,
            details={"binding": self._binding, "expires_at": expires_at},
        )
        return Session(
            id=session_id,
            user_id=user.id,
            created_at=now,
            last_seen=now,
            expires_at=expires_at,
            ip_address=ip,
            user_agent=context.user_agent,
            token=token,
            username=user_row["username"],
        )

    # --- validating ------------------------------------------------------------------------------
    async def validate(self, token: str, request_data: _Request, *, bearer: bool = False) -> Session | None:
        """The live session for ``token`` seen from this client, or None.

        None for any token that is not a live session of an enabled user (whatever the string), a
        timed-out session, or a binding mismatch (which revokes it, except where the binding mode
        only logs). ``bearer``: the token came in an Authorization header rather than a cookie, so
        SESSION_BINDING_BEARER applies instead of SESSION_BINDING. A session older than its user's
        privilege epoch comes back with a new token in ``rotated_token``; for SESSION_ROTATION_GRACE
        seconds the presented token still answers, with that same new token, then it is dead.
        Raises ValueError only when ``request_data`` lacks or garbles ``ip_address``/``user_agent``.
        """
        ctx = RequestContext.coerce(request_data)
        token_hash = hash_token(token)
        if token_hash is None:
            return None
        binding = self._bearer_binding if bearer else self._binding
        now = self._clock.now()
        row: LookupRow | None
        cached = self._cache.get(token_hash)
        if cached is not None and 0.0 <= now - cached.fetched_at < self._cache_seconds:
            row = cached.row
            last_seen = cached.last_seen
        else:
            generation = self._generation
            if self._lookup is not None:
                row = await self._lookup.fetch(token_hash)
            else:
                row = await queries.lookup(self._db, token_hash)
            if row is None:
                if self._grace > 0:  # only a miss pays for the second look
                    return await self._validate_previous(token, token_hash, ctx, binding)
                return None
            last_seen = row[_LAST_SEEN]
            if self._pending or self._flushing:  # a touch not yet written is newer than the row
                for pending in (self._pending.get(token_hash), self._flushing.get(token_hash)):
                    if pending is not None and pending > last_seen:
                        last_seen = pending
            cached = None
            if (
                self._cache_seconds > 0
                and generation == self._generation
                and token_hash not in self._tombstones
            ):
                if len(self._cache) >= CACHE_MAX_ENTRIES:
                    self._cache.clear()
                cached = self._cache[token_hash] = _Cached(row, now)
                cached.last_seen = last_seen

        if (
            row[_DISABLED]
            or now >= row[_EXPIRES]
            or now - last_seen >= self._idle
            or (binding != "off" and (row[_UA] != ctx.user_agent or row[_IP] != ctx.ip_address))
        ) and await self._refused(token_hash, token_hash, row, last_seen, now, ctx, binding):
            return None
        if row[_EPOCH] < row[_USER_EPOCH]:
            return await self._rotate_stale(token, token_hash, row, ctx, binding)
        if now - last_seen >= self._touch_interval:
            last_seen = now
            self._pending[token_hash] = now
            if cached is not None:
                cached.last_seen = now
            if len(self._pending) >= MAX_PENDING_TOUCHES:
                self._wake.set()
        return Session(
            id=row[_ID],
            user_id=row[_USER_ID],
            created_at=row[_CREATED],
            last_seen=last_seen,
            expires_at=row[_EXPIRES],
            ip_address=row[_IP],
            user_agent=row[_UA],
            username=row[_USERNAME],
        )

    async def _refused(
        self,
        token_hash: bytes,
        stored_hash: bytes,
        row: LookupRow,
        last_seen: float,
        now: float,
        ctx: RequestContext,
        binding: str,
    ) -> bool:
        """Whether the session ``row`` must be refused to this client (ending it where the reason
        calls for that). ``token_hash`` is the presented token's; ``stored_hash`` the row's key
        (the same, except for a previous token in its grace window)."""
        if row[_DISABLED]:
            return True
        if now >= row[_EXPIRES]:
            await self._expire(stored_hash, row, "absolute", ctx)
            return True
        if now - last_seen >= self._idle:
            await self._expire(stored_hash, row, "idle", ctx)
            return True
        if binding == "off":
            return False
        mismatch = self._mismatch(row, ctx, binding)
        if not mismatch:
            return False
        if binding == "log" or (binding == "agent" and "user_agent" not in mismatch):
            await self._log_mismatch(token_hash, row, ctx, mismatch, binding)
            return False
        await self._hijack(stored_hash, row, ctx, mismatch, binding)
        return True

    async def _validate_previous(
        self,
        token: str,
        token_hash: bytes,
        ctx: RequestContext,
        binding: str,
        row: LookupRow | None = None,
    ) -> Session | None:
        """The session ``token`` was rotated out of, if that was within SESSION_ROTATION_GRACE:
        returned with the new token (the same one every time) in ``rotated_token``, never rotated
        again, never touched; the same checks as any validation first. Read from the database
        every time (never the cache), so an end of the session is seen here at once."""
        if row is None:
            if self._lookup is not None:
                row = await self._lookup.fetch_previous(token_hash)
            else:
                row = await queries.lookup_previous(self._db, token_hash)
            if row is None:
                return None
        now = self._clock.now()
        if not now < row[_PREVIOUS_UNTIL]:
            return None
        stored_hash = bytes(row[_TOKEN_HASH])
        last_seen = max(row[_LAST_SEEN], self._pending.get(stored_hash, 0.0))
        if await self._refused(token_hash, stored_hash, row, last_seen, now, ctx, binding):
            return None
        new_token = open_successor(token, row[_SUCCESSOR], row[_ID])
        if new_token is None or hash_token(new_token) != stored_hash:
            return None
        return _session(
            row, last_seen=last_seen, token=new_token, rotated_token=new_token, username=row[_USERNAME]
        )

    async def find(self, token: str) -> Session | None:
        """The live session for ``token`` with no binding check and no side effect (no touch, no
        audit); for callers that already trust the token, such as change_password's current one.
        A previous token within its rotation grace window finds the session it was rotated into."""
        token_hash = hash_token(token)
        if token_hash is None:
            return None
        now = self._clock.now()
        row = await queries.lookup(self._db, token_hash)
        stored_hash = token_hash
        if row is None and self._grace > 0:
            row = await queries.lookup_previous(self._db, token_hash)
            if row is None or not now < row[_PREVIOUS_UNTIL]:
                return None
            stored_hash = bytes(row[_TOKEN_HASH])
        if row is None or row[_DISABLED] or now >= row[_EXPIRES]:
            return None
        last_seen = max(row[_LAST_SEEN], self._pending.get(stored_hash, 0.0))
        if now - last_seen >= self._idle:
            return None
        return _session(row, last_seen=last_seen, username=row[_USERNAME])

    @staticmethod
    def _mismatch(row: LookupRow, ctx: RequestContext, binding: str) -> list[str]:
        mismatch = []
        if not same_client_ip(row[_IP], ctx.ip_address, binding):
            mismatch.append("ip_address")
        if row[_UA] != ctx.user_agent:
            mismatch.append("user_agent")
        return mismatch

    @staticmethod
    def _clients(row: LookupRow, ctx: RequestContext, mismatch: list[str]) -> dict[str, Any]:
        return {
            "mismatch": mismatch,
            "session_ip_address": row[_IP],
            "session_user_agent": row[_UA],
            "request_ip_address": ctx.ip_address,
            "request_user_agent": ctx.user_agent,
        }

    async def _record_about(
        self,
        row: LookupRow,
        ctx: RequestContext,
        kind: str,
        details: Mapping[str, Any],
        *,
        tx: Executor | None = None,
        outcome: str = "success",
    ) -> None:
        """An audit event about the looked-up session ``row``: its owner, its id, this client."""
        await self._audit.record(
            kind,
            outcome=outcome,
            tx=tx,
            subject_user_id=row[_USER_ID],
            username=row[_USERNAME],
            client=ctx,
            session_id=row[_ID],
            details=details,
        )

    async def _expire(self, stored_hash: bytes, row: LookupRow, reason: str, ctx: RequestContext) -> None:
        self._forget_hashes([stored_hash])
        async with self._db.transaction() as tx:
            deleted = await queries.delete_by_hash(tx, stored_hash)
            if deleted is None:
                return  # another request got there first
            self._forget_rows([deleted])
            await self._record_about(row, ctx, "session.expired", {"reason": reason}, tx=tx)

    async def _hijack(
        self, stored_hash: bytes, row: LookupRow, ctx: RequestContext, mismatch: list[str], binding: str
    ) -> None:
        self._forget_hashes([stored_hash])
        async with self._db.transaction() as tx:
            deleted = await queries.delete_by_hash(tx, stored_hash)
            if deleted is None:
                return
            self._forget_rows([deleted])
            await self._record_about(
                row,
                ctx,
                "session.hijack_suspected",
                {"binding": binding, "action": "revoked", **self._clients(row, ctx, mismatch)},
                tx=tx,
                outcome="failure",
            )
        log.warning("session %s revoked: client changed (%s)", row[_ID], ", ".join(mismatch))

    async def _log_mismatch(
        self, token_hash: bytes, row: LookupRow, ctx: RequestContext, mismatch: list[str], binding: str
    ) -> None:
        key = (token_hash, ctx.ip_address, ctx.user_agent)
        if key in self._logged_mismatches:
            return
        if len(self._logged_mismatches) >= LOGGED_MISMATCHES_MAX:
            self._logged_mismatches.clear()
        self._logged_mismatches.add(key)
        await self._record_about(
            row,
            ctx,
            "session.hijack_suspected",
            {"binding": binding, "action": "allowed", **self._clients(row, ctx, mismatch)},
            outcome="failure",
        )

    async def _rotate_stale(
        self, token: str, token_hash: bytes, row: LookupRow, ctx: RequestContext, binding: str
    ) -> Session | None:
        new_token = secrets.token_urlsafe(TOKEN_BYTES)
        new_hash = hashlib.sha256(new_token.encode("ascii")).digest()
        now = self._clock.now()
        grace: dict[str, Any] = {}
        if self._grace > 0:
            grace = {
                "previous_until": now + self._grace,
                "successor": seal_successor(token, new_token, row[_ID]),
            }
        self._forget_hashes([token_hash])
        raced: LookupRow | None = None
        async with self._db.transaction() as tx:
            updated = await queries.rotate_if_stale(tx, token_hash, new_hash, now, **grace)
            if updated is None:
                # Revoked, or rotated by a concurrent request (here or on another instance): on
                # PostgreSQL the UPDATE waited for that one to commit, so its row is visible now.
                if self._grace > 0:
                    raced = await queries.lookup_previous(tx, token_hash)
            else:
                await self._record_about(
                    row,
                    ctx,
                    "session.rotated",
                    {
                        "reason": "privilege_change",
                        "from_epoch": row[_EPOCH],
                        "to_epoch": int(updated["privilege_epoch"]),
                        "grace_seconds": self._grace,
                    },
                    tx=tx,
                )
        if updated is None:  # the winner's new token, through the grace path, or nothing
            if raced is None:
                return None
            return await self._validate_previous(token, token_hash, ctx, binding, raced)
        return _session(updated, token=new_token, rotated_token=new_token, username=row[_USERNAME])

    # --- rotating and revoking -----------------------------------------------------------------
    async def rotate(self, tx: Executor, session_id: str) -> Session:
        """A new token for session ``session_id`` inside ``tx`` (after a password change, say).

        The session keeps its id and deadlines and takes its user's current privilege epoch;
        the old token is dead once ``tx`` commits, with no grace window, and so is a token still in
        the grace window of an earlier rotation. Raises LookupError if there is no such session.
        """
        current = await queries.token_hash_for_id(tx, session_id)
        if current is None:
            raise LookupError(f"no session with id {session_id!r}")
        new_token = secrets.token_urlsafe(TOKEN_BYTES)
        self._forget_rows([current])  # the previous token's grace, if any, ends here too
        updated = await queries.rotate_by_id(
            tx, session_id, hashlib.sha256(new_token.encode("ascii")).digest(), self._clock.now()
        )
        assert updated is not None  # the row is locked by token_hash_for_id
        await self._audit.record(
            "session.rotated",
            tx=tx,
            subject_user_id=int(updated["user_id"]),
            session_id=session_id,
            details={"reason": "explicit", "to_epoch": int(updated["privilege_epoch"])},
        )
        return _session(updated, token=new_token, rotated_token=new_token)

    async def revoke(self, token: str) -> bool:
        """Log out: end the session of ``token`` (or of the session it was rotated into, within
        the grace window). False if it was not a live session."""
        token_hash = hash_token(token)
        if token_hash is None:
            return False
        self._forget_hashes([token_hash])
        async with self._db.transaction() as tx:
            row = await queries.delete_by_hash(tx, token_hash)
            if row is None and self._grace > 0:
                row = await queries.delete_by_previous_hash(tx, token_hash, self._clock.now())
            if row is None:
                return False
            self._forget_rows([row])
            await self._audit.record(
                "session.revoked",
                tx=tx,
                actor_user_id=int(row["user_id"]),
                subject_user_id=int(row["user_id"]),
                session_id=row["id"],
                details={"reason": "logout", "count": 1},
            )
        return True

    async def revoke_by_id(self, user_id: int, session_id: str, *, reason: str = "revoked") -> bool:
        """End the session ``session_id`` if it belongs to ``user_id``."""
        if not isinstance(session_id, str) or len(session_id) > 64:
            return False
        async with self._db.transaction() as tx:
            row = await queries.delete_by_id(tx, user_id, session_id)
            if row is None:
                return False
            self._forget_rows([row])
            await self._audit.record(
                "session.revoked",
                tx=tx,
                subject_user_id=user_id,
                session_id=session_id,
                details={"reason": reason, "count": 1},
            )
        return True

    async def revoke_all(
        self,
        user_id: int,
        *,
        tx: Executor | None = None,
        except_session_id: str | None = None,
        reason: str = "logout_all",
    ) -> int:
        """End every session of ``user_id`` (but ``except_session_id``); how many ended.

        Inside ``tx`` when given (a password change, a disabled account), else on its own.
        """
        if tx is None:
            async with self._db.transaction() as own_tx:
                return await self._revoke_all(own_tx, user_id, except_session_id, reason)
        return await self._revoke_all(tx, user_id, except_session_id, reason)

    async def _revoke_all(
        self, tx: Executor, user_id: int, except_session_id: str | None, reason: str
    ) -> int:
        rows = await queries.delete_all_for_user(tx, user_id, except_session_id)
        self._forget_rows(rows)
        if rows:
            await self._audit_revoked(tx, user_id, [row["id"] for row in rows], reason, None)
        return len(rows)

    async def _audit_revoked(
        self, tx: Executor, user_id: int, session_ids: Sequence[str], reason: str, ctx: RequestContext | None
    ) -> None:
        if not session_ids:
            return
        await self._audit.record(
            "session.revoked",
            tx=tx,
            subject_user_id=user_id,
            ip_address=ctx.ip_address if ctx else None,
            user_agent=ctx.user_agent if ctx else None,
            session_id=session_ids[0] if len(session_ids) == 1 else None,
            details={
                "reason": reason,
                "count": len(session_ids),
                "session_ids": list(session_ids[:REVOKE_AUDIT_MAX_IDS]),
            },
        )

    async def list_for_user(self, user_id: int) -> list[Session]:
        """The user's live sessions, newest first (no tokens)."""
        now = self._clock.now()
        rows = await queries.live_for_user(self._db, user_id, now, now - self._idle)
        sessions = []
        for row in rows:
            token_hash = bytes(row["token_hash"])
            last_seen = max(row["last_seen"], self._pending.get(token_hash, 0.0))
            if now - last_seen < self._idle:
                sessions.append(_session(tuple(cast(Iterable[Any], row))[1:], last_seen=last_seen))
        return sessions

    # --- the cache -------------------------------------------------------------------------------
    def invalidate_cache(self) -> None:
        """Forget every cached session, so the next validation reads the database.

        Call after a privilege change made elsewhere in this process (a role granted, say) for the
        epoch rotation to take effect here at once rather than within SESSION_CACHE_SECONDS.
        """
        self._generation += 1
        self._cache.clear()

    def _forget_rows(self, rows: Iterable[Row]) -> None:
        """_forget_hashes for ended or re-keyed session rows: their token and any previous token
        still in its grace window (a deleted row takes both with it)."""
        hashes = []
        for row in rows:
            hashes.append(bytes(row["token_hash"]))
            if row["previous_token_hash"] is not None:
                hashes.append(bytes(row["previous_token_hash"]))
        self._forget_hashes(hashes)

    def _forget_hashes(self, hashes: Iterable[bytes]) -> None:
        """Drop revoked sessions from the cache and keep them out of it for a while: a read that
        began before the revocation committed must not put the old row back."""
        now = self._clock.now()
        if len(self._tombstones) >= TOMBSTONE_PRUNE_AT:
            self._tombstones = {
                h: t for h, t in self._tombstones.items() if 0.0 <= now - t < TOMBSTONE_SECONDS
            }
            if len(self._tombstones) >= CACHE_MAX_ENTRIES:  # a revocation storm: stop caching for now
                self.invalidate_cache()
                self._tombstones.clear()
        for token_hash in hashes:
            token_hash = bytes(token_hash)
            self._cache.pop(token_hash, None)
            self._pending.pop(token_hash, None)
            if self._cache_seconds > 0:
                self._tombstones[token_hash] = now

    # --- background work ---------------------------------------------------------------------
    async def flush_touches(self) -> int:
        """Write the pending last_seen updates in one batch; how many."""
        if not self._pending or self._flushing:
            return 0
        self._flushing, self._pending = self._pending, {}
        try:
            batch = [(when, token_hash) for token_hash, when in self._flushing.items()]
            async with self._db.transaction() as tx:
                await queries.touch_many(tx, batch)
            return len(batch)
        except BaseException:
            for token_hash, when in self._flushing.items():  # keep them for the next round
                self._pending.setdefault(token_hash, when)
            raise
        finally:
            self._flushing = {}

    async def purge_expired(self) -> int:
        """Delete expired sessions in batches of PURGE_BATCH; how many went."""
        await self.flush_touches()  # a touch not yet written would make an active session look idle
        total = 0
        while True:
            now = self._clock.now()
            async with self._db.transaction() as tx:
                deleted = await queries.purge_batch(tx, now, now - self._idle, PURGE_BATCH)
            total += deleted
            if deleted < PURGE_BATCH:
                break
            await asyncio.sleep(0)  # let requests run between batches
        if total:
            log.info("purged %d expired sessions", total)
        return total
