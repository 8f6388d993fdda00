"""Session queries. Every session row is keyed by the SHA-256 of its token, never the token.

The hot path is :func:`lookup`: one primary-key read joined to the user row (for the disabled
flag and the privilege epoch). On PostgreSQL it runs on :class:`PinnedLookup` — one dedicated
connection with the statement prepared, the way SQLite has its reader — because a pool checkout
and release per lookup costs as much as the query itself. Only when it misses does the session
manager try :func:`lookup_previous` (the rotation grace window). Everything else is a write inside
a transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol, cast

import asyncpg

from fundaments.errors import StorageError
from fundaments.store.base import Database, Executor, Row
from fundaments.store.postgres import COMMAND_TIMEOUT, PostgresDatabase

log = logging.getLogger(__name__)


class LookupRow(Protocol):
    """A LOOKUP row, read by column position (a driver row or a tuple)."""

    def __getitem__(self, index: int, /) -> Any: ...


# Column order is relied on: the session manager reads the row by position, for speed.
LOOKUP = (
    "SELECT s.id, s.user_id, s.created_at, s.last_seen, s.expires_at, s.ip_address, s.user_agent, "
    "s.privilege_epoch, u.username, u.privilege_epoch AS user_epoch, u.is_disabled "
    "FROM fundaments_sessions s JOIN fundaments_users u ON u.id = s.user_id "
    "WHERE s.token_hash = $1"
)
LOOKUP_MANY = (
    "SELECT s.id, s.user_id, s.created_at, s.last_seen, s.expires_at, s.ip_address, s.user_agent, "
    "s.privilege_epoch, u.username, u.privilege_epoch AS user_epoch, u.is_disabled, s.token_hash "
    "FROM fundaments_sessions s JOIN fundaments_users u ON u.id = s.user_id "
    "WHERE s.token_hash = ANY($1::bytea[])"
)
LOOKUP_WIDTH = 11  # columns of LOOKUP; LOOKUP_MANY adds the token hash
# A session by the token it had before its last privilege-change rotation: LOOKUP's columns, then
# the current token hash, the end of the grace window and the sealed successor token.
LOOKUP_PREVIOUS = (
    "SELECT s.id, s.user_id, s.created_at, s.last_seen, s.expires_at, s.ip_address, s.user_agent, "
    "s.privilege_epoch, u.username, u.privilege_epoch AS user_epoch, u.is_disabled, "
    "s.token_hash, s.previous_until, s.successor "
    "FROM fundaments_sessions s JOIN fundaments_users u ON u.id = s.user_id "
    "WHERE s.previous_token_hash = $1"
)
MAX_BATCH = 500  # token hashes per batched lookup
RETRY_PINNED_AFTER = 5.0  # seconds on the pool after the pinned connection failed


async def lookup(db: Executor, token_hash: bytes) -> LookupRow | None:
    """The session with this token hash and its user's epoch, disabled flag and name."""
    return await db.fetchrow(LOOKUP, token_hash)


async def lookup_previous(db: Executor, token_hash: bytes) -> LookupRow | None:
    """The session whose previous token has this hash (a LOOKUP_PREVIOUS row), whatever its
    deadline: the caller checks ``previous_until``."""
    return await db.fetchrow(LOOKUP_PREVIOUS, token_hash)


async def lock_user(tx: Executor, user_id: int) -> Row | None:
    """The user's privilege epoch and name, row-locked until the transaction ends (PostgreSQL):
    logins of one user queue here. Count the sessions in a later statement: a subquery here would
    read the snapshot from before the wait for the lock (READ COMMITTED) and miss a login that
    committed meanwhile."""
    return await tx.fetchrow(
        "SELECT privilege_epoch, username FROM fundaments_users WHERE id = $1 FOR UPDATE", user_id
    )


async def delete_expired_for_user(tx: Executor, user_id: int, now: float, idle_cutoff: float) -> list[Row]:
    return await tx.fetch(
        "DELETE FROM fundaments_sessions WHERE user_id = $1 AND (expires_at <= $2 OR last_seen <= $3) "
        "RETURNING id, token_hash, previous_token_hash",
        user_id,
        now,
        idle_cutoff,
    )


async def count_for_user(tx: Executor, user_id: int) -> int:
    value = await tx.fetchval("SELECT count(*) FROM fundaments_sessions WHERE user_id = $1", user_id)
    return int(value or 0)


async def delete_oldest(tx: Executor, user_id: int, how_many: int) -> list[Row]:
    return await tx.fetch(
        "DELETE FROM fundaments_sessions WHERE token_hash IN ("
        "SELECT token_hash FROM fundaments_sessions WHERE user_id = $1 "
        "ORDER BY created_at, id LIMIT $2) RETURNING id, token_hash, previous_token_hash",
        user_id,
        how_many,
    )


async def insert(
    tx: Executor,
    *,
    token_hash: bytes,
    session_id: str,
    user_id: int,
    now: float,
    expires_at: float,
    ip_address: str,
    user_agent: str,
    privilege_epoch: int,
) -> None:
    await tx.execute(
        "INSERT INTO fundaments_sessions (token_hash, id, user_id, created_at, last_seen, expires_at, "
        "ip_address, user_agent, privilege_epoch) VALUES ($1, $2, $3, $4, $4, $5, $6, $7, $8)",
        token_hash,
        session_id,
        user_id,
        now,
        expires_at,
        ip_address,
        user_agent,
        privilege_epoch,
    )


async def delete_by_hash(tx: Executor, token_hash: bytes) -> Row | None:
    return await tx.fetchrow(
        "DELETE FROM fundaments_sessions WHERE token_hash = $1 "
        "RETURNING id, user_id, token_hash, previous_token_hash",
        token_hash,
    )


async def delete_by_previous_hash(tx: Executor, token_hash: bytes, now: float) -> Row | None:
    """End the session whose previous token (still in its grace window) has this hash."""
    return await tx.fetchrow(
        "DELETE FROM fundaments_sessions WHERE previous_token_hash = $1 AND previous_until > $2 "
        "RETURNING id, user_id, token_hash, previous_token_hash",
        token_hash,
        now,
    )


async def delete_by_id(tx: Executor, user_id: int, session_id: str) -> Row | None:
    return await tx.fetchrow(
        "DELETE FROM fundaments_sessions WHERE id = $1 AND user_id = $2 "
        "RETURNING id, user_id, token_hash, previous_token_hash",
        session_id,
        user_id,
    )


async def delete_all_for_user(tx: Executor, user_id: int, except_session_id: str | None) -> list[Row]:
    if except_session_id is None:
        return await tx.fetch(
            "DELETE FROM fundaments_sessions WHERE user_id = $1 "
            "RETURNING id, token_hash, previous_token_hash",
            user_id,
        )
    return await tx.fetch(
        "DELETE FROM fundaments_sessions WHERE user_id = $1 AND id <> $2 "
        "RETURNING id, token_hash, previous_token_hash",
        user_id,
        except_session_id,
    )


async def rotate_if_stale(
    tx: Executor,
    old_hash: bytes,
    new_hash: bytes,
    now: float,
    *,
    previous_until: float | None = None,
    successor: bytes | None = None,
) -> Row | None:
    """Give the session a new token hash if its epoch is behind its user's; the updated row.

    The old hash, ``previous_until`` and the sealed ``successor`` go into the same row (all NULL
    when there is no grace window), replacing those of any earlier rotation.
    """
    return await tx.fetchrow(
        "UPDATE fundaments_sessions SET token_hash = $2, last_seen = $3, privilege_epoch = "
        "(SELECT u.privilege_epoch FROM fundaments_users u WHERE u.id = fundaments_sessions.user_id), "
        "previous_token_hash = $4, previous_until = $5, successor = $6 "
        "WHERE token_hash = $1 AND privilege_epoch < "
        "(SELECT u.privilege_epoch FROM fundaments_users u WHERE u.id = fundaments_sessions.user_id) "
        "RETURNING id, user_id, created_at, last_seen, expires_at, ip_address, user_agent, privilege_epoch",
        old_hash,
        new_hash,
        now,
        old_hash if previous_until is not None else None,
        previous_until,
        successor,
    )


async def token_hash_for_id(tx: Executor, session_id: str) -> Row | None:
    return await tx.fetchrow(
        "SELECT token_hash, previous_token_hash, user_id FROM fundaments_sessions WHERE id = $1 FOR UPDATE",
        session_id,
    )


async def rotate_by_id(tx: Executor, session_id: str, new_hash: bytes, now: float) -> Row | None:
    """A new token hash for the session, at its user's current epoch, with no grace for the
    previous token (any earlier one's ends too); the updated row."""
    return await tx.fetchrow(
        "UPDATE fundaments_sessions SET token_hash = $2, last_seen = $3, privilege_epoch = "
        "(SELECT u.privilege_epoch FROM fundaments_users u WHERE u.id = fundaments_sessions.user_id), "
        "previous_token_hash = NULL, previous_until = NULL, successor = NULL "
        "WHERE id = $1 "
        "RETURNING id, user_id, created_at, last_seen, expires_at, ip_address, user_agent, privilege_epoch",
        session_id,
        new_hash,
        now,
    )


async def live_for_user(db: Executor, user_id: int, now: float, idle_cutoff: float) -> list[Row]:
    return await db.fetch(
        "SELECT token_hash, id, user_id, created_at, last_seen, expires_at, ip_address, user_agent "
        "FROM fundaments_sessions WHERE user_id = $1 AND expires_at > $2 AND last_seen > $3 "
        "ORDER BY created_at DESC, id",
        user_id,
        now,
        idle_cutoff,
    )


async def touch_many(tx: Executor, touches: Sequence[tuple[float, bytes]]) -> None:
    """Move ``last_seen`` forward (never back) for each ``(when, token_hash)``."""
    await tx.executemany(
        "UPDATE fundaments_sessions SET last_seen = $1 WHERE token_hash = $2 AND last_seen < $1", touches
    )


async def purge_batch(tx: Executor, now: float, idle_cutoff: float, limit: int) -> int:
    """Delete up to ``limit`` sessions past their absolute or idle deadline; how many went."""
    return await tx.execute(
        "DELETE FROM fundaments_sessions WHERE token_hash IN ("
        "SELECT token_hash FROM fundaments_sessions WHERE expires_at <= $1 "
        "UNION SELECT token_hash FROM fundaments_sessions WHERE last_seen <= $2 LIMIT $3)",
        now,
        idle_cutoff,
        limit,
    )


# What a dead or killed connection raises. InternalClientError too: a backend terminated mid-query
# can leave the client protocol in a state where the next call fails with "cannot switch to state".
_BROKEN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class PinnedLookup:
    """Session lookups on PostgreSQL over one dedicated connection; concurrent lookups are batched.

    The first lookup runs at once as a prepared primary-key fetch. Lookups that arrive while it is
    in flight wait, and are then answered together by one ``= ANY($1)`` query, so 50 concurrent
    requests cost two round trips instead of 50 pool checkouts. If the connection breaks (or a
    caller is cancelled mid-query) it is dropped and lookups go through the pool for a few seconds
    before a new one is opened.
    """

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._conn: Any = None
        self._single: Any = None
        self._many: Any = None
        self._previous: Any = None
        self._busy = False
        self._waiting: dict[bytes, list[asyncio.Future[LookupRow | None]]] = {}
        self._drainer: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._busy_since = 0.0
        self._closed = False

    @classmethod
    def for_database(cls, db: Database) -> PinnedLookup | None:
        """A pinned lookup for a PostgreSQL database; None for SQLite (its reads are already local)."""
        return cls(db) if isinstance(db, PostgresDatabase) else None

    async def fetch(self, token_hash: bytes) -> LookupRow | None:
        """The LOOKUP row for ``token_hash`` (indexable by column position), or None."""
        single = self._single
        if self._busy or single is None or self._closed:
            return await self._fetch_slow(token_hash)
        self._busy = True
        self._busy_since = time.monotonic()
        try:
            # No per-query timer here (it costs 4% of a lookup): _fetch_slow is the watchdog.
            row: LookupRow | None = await single.fetchrow(token_hash)
        except BaseException as exc:
            # Broken, or cancelled mid-query: the connection's state is unknown; never reuse it.
            self._discard()
            self._hand_over()
            if isinstance(exc, _BROKEN):
                return await lookup(self._db, token_hash)
            raise
        if self._waiting:
            self._hand_over()
        else:
            self._busy = False
        return row

    async def fetch_previous(self, token_hash: bytes) -> LookupRow | None:
        """The LOOKUP_PREVIOUS row for ``token_hash`` (a miss of :meth:`fetch`, mostly), on the
        pinned connection when it is free, else through the pool; never batched (it is rare)."""
        previous = self._previous
        if self._busy or previous is None or self._closed:
            return await lookup_previous(self._db, token_hash)
        self._busy = True
        self._busy_since = time.monotonic()
        try:
            row: LookupRow | None = await previous.fetchrow(token_hash)
        except BaseException as exc:  # as in fetch: never reuse a connection in an unknown state
            self._discard()
            self._hand_over()
            if isinstance(exc, _BROKEN):
                return await lookup_previous(self._db, token_hash)
            raise
        if self._waiting:
            self._hand_over()
        else:
            self._busy = False
        return row

    async def _fetch_slow(self, token_hash: bytes) -> LookupRow | None:
        if self._closed or (self._single is None and time.monotonic() < self._retry_at):
            return await lookup(self._db, token_hash)
        if self._busy:
            if self._conn is not None and time.monotonic() - self._busy_since > COMMAND_TIMEOUT:
                log.warning("session lookup connection stuck for %.0f s; replacing it", COMMAND_TIMEOUT)
                self._discard()  # the stuck fetch fails, falls back to the pool and hands over
            future: asyncio.Future[LookupRow | None] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(token_hash, []).append(future)
            return await future
        self._busy = True  # first use, or the connection was dropped: (re)connect
        try:
            await self._connection()
        except StorageError:
            self._hand_over()
            return await lookup(self._db, token_hash)
        except BaseException:
            self._hand_over()
            raise
        self._busy = False  # (closed meanwhile: _connection raised StorageError above)
        return await self.fetch(token_hash)

    def _hand_over(self) -> None:
        """Pass the connection to the lookups that queued while it was busy (or free it)."""
        if self._waiting and not self._closed:
            self._drainer = asyncio.get_running_loop().create_task(self._drain())  # stays busy
            return
        self._busy = False
        self._fail_waiting()

    def _fail_waiting(self) -> None:
        waiting, self._waiting = self._waiting, {}
        _answer(waiting, error=StorageError("the session store is closed"))

    async def _connection(self) -> Any:
        if self._conn is None:
            try:
                conn = await asyncpg.connect(self._db.dsn)
                self._single = await conn.prepare(LOOKUP)
                self._many = await conn.prepare(LOOKUP_MANY)
                self._previous = await conn.prepare(LOOKUP_PREVIOUS)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                self._retry_at = time.monotonic() + RETRY_PINNED_AFTER
                raise StorageError(f"PostgreSQL error: {type(exc).__name__}: {exc}") from None
            if self._closed:  # closed while connecting
                conn.terminate()
                self._single = self._many = self._previous = None
                raise StorageError("the session store is closed")
            self._conn = conn
        return self._conn

    async def _fetch_many(self, hashes: list[bytes]) -> dict[bytes, LookupRow]:
        if self._conn is None and time.monotonic() < self._retry_at:
            rows = await self._db.fetch(LOOKUP_MANY, hashes)
        else:
            try:
                await self._connection()
                self._busy_since = time.monotonic()
                rows = await self._many.fetch(hashes, timeout=COMMAND_TIMEOUT)
            except StorageError:
                rows = await self._db.fetch(LOOKUP_MANY, hashes)
            except _BROKEN:
                self._discard()
                rows = await self._db.fetch(LOOKUP_MANY, hashes)
        return {bytes(row[LOOKUP_WIDTH]): tuple(cast(Iterable[Any], row))[:LOOKUP_WIDTH] for row in rows}

    async def _drain(self) -> None:
        try:
            while self._waiting and not self._closed:
                keys = list(itertools.islice(self._waiting, MAX_BATCH))
                batch = {key: self._waiting.pop(key) for key in keys}
                try:
                    found = await self._fetch_many(keys)
                except BaseException as exc:
                    error = exc if isinstance(exc, Exception) else StorageError("the session store is closed")
                    _answer(batch, error=error)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                _answer(batch, found=found)
        finally:
            self._busy = False
            self._drainer = None
            self._fail_waiting()  # closed while some still wait: nobody else will answer them

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._single = self._many = self._previous = None
        self._retry_at = time.monotonic() + RETRY_PINNED_AFTER
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        self._closed = True
        drainer = self._drainer
        if drainer is not None:
            drainer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await drainer
        conn, self._conn = self._conn, None
        self._single = self._many = self._previous = None
        if conn is not None:
            try:
                await asyncio.wait_for(conn.close(), timeout=5)
            except (OSError, TimeoutError, asyncpg.InterfaceError):
                conn.terminate()
        if self._drainer is None and not self._busy:
            self._fail_waiting()


def _answer(
    waiting: dict[bytes, list[asyncio.Future[LookupRow | None]]],
    *,
    found: dict[bytes, LookupRow] | None = None,
    error: BaseException | None = None,
) -> None:
    for key, futures in waiting.items():
        for future in futures:
            if future.done():  # its caller was cancelled
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(found.get(key) if found else None)
