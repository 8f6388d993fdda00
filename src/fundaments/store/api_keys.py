"""API-key queries. A key row is found by the keyed digest of its token, never by the token.

The hot path is :data:`LOOKUP`: one read of the unique digest index joined to the owner's row (for
the disabled flag). Only when it misses is :data:`LOOKUP_OLD` tried (a token replaced by a
rotation, inside its overlap). The service reads both rows by column position.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg

from fundaments.errors import StorageError
from fundaments.store.base import Database, Executor, Row, to_sqlite
from fundaments.store.postgres import PostgresDatabase
from fundaments.store.sqlite import READER_BUSY_TIMEOUT_MS, SQLiteDatabase

log = logging.getLogger(__name__)
RETRY_PINNED_AFTER = 5.0  # seconds on the pool after the pinned connection failed


class Reader(Protocol):
    """What the hot-path reads need: the database, or a :class:`PinnedReader`."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...


class HotReader(Reader, Protocol):
    async def close(self) -> None: ...


def hot_reader(db: Database) -> HotReader | None:
    """A dedicated reader for the hot-path reads: :class:`PinnedReader` on PostgreSQL,
    :class:`SQLiteReader` on SQLite."""
    if isinstance(db, PostgresDatabase):
        return PinnedReader(db)
    if isinstance(db, SQLiteDatabase):
        return SQLiteReader(db)
    return None


_COLUMNS = (
    "k.id, k.user_id, k.name, k.prefix, k.scopes, k.created_at, k.expires_at, k.last_used_at, "
    "k.allowed_ips, k.revoked_at, k.rate_limit, k.old_expires_at, k.current_used, u.is_disabled"
)
# Column order is relied on (fundaments.api_keys reads rows by position).
LOOKUP = (
    f"SELECT {_COLUMNS} FROM fundaments_api_keys k JOIN fundaments_users u ON u.id = k.user_id "  # noqa: S608 - constant
    "WHERE k.digest = $1"
)
LOOKUP_OLD = (
    f"SELECT {_COLUMNS} FROM fundaments_api_keys k JOIN fundaments_users u ON u.id = k.user_id "  # noqa: S608 - constant
    "WHERE k.old_digest = $1"
)
# What can change about a key once it exists (its name, scopes, allowlist and expiry cannot): a key
# already parsed is re-read with these six columns only, and kept when they are the same.
_STATE = "k.id, k.expires_at, k.revoked_at, k.old_expires_at, k.current_used, u.is_disabled"
STATE = (
    f"SELECT {_STATE} FROM fundaments_api_keys k JOIN fundaments_users u ON u.id = k.user_id "  # noqa: S608 - constant
    "WHERE k.digest = $1"
)
STATE_OLD = (
    f"SELECT {_STATE} FROM fundaments_api_keys k JOIN fundaments_users u ON u.id = k.user_id "  # noqa: S608 - constant
    "WHERE k.old_digest = $1"
)
LISTED_COLUMNS = (
    "id, user_id, name, prefix, scopes, created_at, expires_at, last_used_at, allowed_ips, "
    "revoked_at, rate_limit, old_expires_at"
)


async def lookup(db: Reader, digest: bytes) -> Row | None:
    return await db.fetchrow(LOOKUP, digest)


async def lookup_old(db: Reader, digest: bytes) -> Row | None:
    """The key whose previous token has this digest, whatever its deadline (the caller checks
    ``old_expires_at``)."""
    return await db.fetchrow(LOOKUP_OLD, digest)


async def insert(
    tx: Executor,
    *,
    key_id: str,
    user_id: int,
    name: str,
    prefix: str,
    digest: bytes,
    digest_key_id: str,
    scopes: str,
    allowed_ips: str,
    rate_limit: str | None,
    now: float,
    expires_at: float | None,
) -> None:
    await tx.execute(
        "INSERT INTO fundaments_api_keys (id, user_id, name, prefix, digest, key_id, scopes, "
        "allowed_ips, rate_limit, created_at, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        key_id,
        user_id,
        name,
        prefix,
        digest,
        digest_key_id,
        scopes,
        allowed_ips,
        rate_limit,
        now,
        expires_at,
    )


async def lock_owner(tx: Executor, user_id: int) -> Row | None:
    """The owner's row, locked until the transaction ends (PostgreSQL): creations of one owner's
    keys queue here, so the per-owner limit holds across instances."""
    return await tx.fetchrow("SELECT id, is_disabled FROM fundaments_users WHERE id = $1 FOR UPDATE", user_id)


async def count_live(tx: Executor, user_id: int, now: float) -> int:
    value = await tx.fetchval(
        "SELECT count(*) FROM fundaments_api_keys WHERE user_id = $1 AND revoked_at IS NULL "
        "AND (expires_at IS NULL OR expires_at > $2)",
        user_id,
        now,
    )
    return int(value or 0)


async def list_for_user(db: Executor, user_id: int, after: str | None, limit: int) -> list[Row]:
    """The owner's keys in creation order, ``limit`` at most, after the key ``after`` (keyset
    pagination on the (user_id, created_at, id) index: every page costs the same)."""
    if after is None:
        return await db.fetch(
            f"SELECT {LISTED_COLUMNS} FROM fundaments_api_keys WHERE user_id = $1 "  # noqa: S608 - constant
            "ORDER BY created_at, id LIMIT $2",
            user_id,
            limit,
        )
    return await db.fetch(
        f"SELECT {LISTED_COLUMNS} FROM fundaments_api_keys WHERE user_id = $1 AND (created_at, id) > "  # noqa: S608
        "(SELECT created_at, id FROM fundaments_api_keys WHERE id = $2 AND user_id = $1) "
        "ORDER BY created_at, id LIMIT $3",
        user_id,
        after,
        limit,
    )


async def list_all(db: Executor, after: str | None, limit: int) -> list[Row]:
    """Every account's keys in id order, ``limit`` at most, with ids above ``after`` (keyset
    pagination on the primary key: every page costs the same, no OFFSET)."""
    if after is None:
        return await db.fetch(
            f"SELECT {LISTED_COLUMNS} FROM fundaments_api_keys ORDER BY id LIMIT $1",  # noqa: S608 - constant
            limit,
        )
    return await db.fetch(
        f"SELECT {LISTED_COLUMNS} FROM fundaments_api_keys WHERE id > $1 ORDER BY id LIMIT $2",  # noqa: S608
        after,
        limit,
    )


async def get_for_update(tx: Executor, user_id: int, key_id: str) -> Row | None:
    """The owner's key with what a rotation decides on, row-locked (PostgreSQL) until ``tx`` ends."""
    return await tx.fetchrow(
        f"SELECT {LISTED_COLUMNS}, digest, key_id, old_digest, old_key_id, current_used "  # noqa: S608
        "FROM fundaments_api_keys "
        "WHERE id = $1 AND user_id = $2 FOR UPDATE",
        key_id,
        user_id,
    )


async def revoke(tx: Executor, user_id: int, key_id: str, now: float) -> Row | None:
    """Revoke the key (both its tokens at once); its digests, or None when it is not the owner's
    or already revoked."""
    return await tx.fetchrow(
        "UPDATE fundaments_api_keys SET revoked_at = $3, old_expires_at = NULL "
        "WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL RETURNING digest, old_digest",
        key_id,
        user_id,
        now,
    )


async def rotate(
    tx: Executor,
    key_id: str,
    *,
    digest: bytes,
    digest_key_id: str,
    prefix: str,
    old_digest: bytes | None,
    old_key_id: str | None,
    old_expires_at: float | None,
    now: float,
) -> None:
    await tx.execute(
        "UPDATE fundaments_api_keys SET digest = $2, key_id = $3, prefix = $4, old_digest = $5, "
        "old_key_id = $6, old_expires_at = $7, rotated_at = $8, current_used = FALSE WHERE id = $1",
        key_id,
        digest,
        digest_key_id,
        prefix,
        old_digest,
        old_key_id,
        old_expires_at,
        now,
    )


async def mark_current_used(db: Executor, key_id: str) -> None:
    await db.execute(
        "UPDATE fundaments_api_keys SET current_used = TRUE WHERE id = $1 AND current_used = FALSE", key_id
    )


async def touch_many(tx: Executor, touches: Sequence[tuple[float, str]]) -> None:
    """Move ``last_used_at`` forward (never back) for each ``(when, key id)``."""
    await tx.executemany(
        "UPDATE fundaments_api_keys SET last_used_at = $1 WHERE id = $2 "
        "AND (last_used_at IS NULL OR last_used_at < $1)",
        touches,
    )


async def redigest(tx: Executor, old: bytes, new: bytes, digest_key_id: str) -> int:
    """Move a current token's digest from a retired master key's to the current key's."""
    return await tx.execute(
        "UPDATE fundaments_api_keys SET digest = $2, key_id = $3 WHERE digest = $1", old, new, digest_key_id
    )


async def redigest_old(tx: Executor, old: bytes, new: bytes, digest_key_id: str) -> int:
    """The same for a previous token inside its overlap."""
    return await tx.execute(
        "UPDATE fundaments_api_keys SET old_digest = $2, old_key_id = $3 WHERE old_digest = $1",
        old,
        new,
        digest_key_id,
    )


def row_tuple(row: Row) -> tuple[Any, ...]:
    return tuple(row[i] for i in range(len(row.keys())))


# What a dead or killed connection raises (as in store/sessions.py).
_BROKEN = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


class PinnedReader:
    """The hot-path reads (:data:`LOOKUP`, :data:`LOOKUP_OLD`, :data:`STATE`, :data:`STATE_OLD`) on
    PostgreSQL over one dedicated connection with the statements prepared, as sessions do: the
    general path's statement-cache lookup and per-query timer cost a fifth of a primary-key read.

    One read at a time: while it is busy, or broken (for RETRY_PINNED_AFTER seconds), reads go
    through the database's own connections, which keep their timeouts. A read cancelled or failed
    mid-query drops the connection (its state is unknown) and a new one is opened later.
    """

    _SQL = (LOOKUP, LOOKUP_OLD, STATE, STATE_OLD)

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db
        self._conn: Any = None
        self._statements: dict[str, Any] = {}
        self._busy = False
        self._retry_at = 0.0
        self._closed = False

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        statement = self._statements.get(sql)
        if statement is None or self._busy:
            if (
                self._conn is None
                and not self._busy
                and not self._closed
                and time.monotonic() >= self._retry_at
            ):
                await self._open()
                statement = self._statements.get(sql)
            if statement is None or self._busy:
                return await self._db.fetchrow(sql, *args)
        self._busy = True
        try:
            row: Row | None = await statement.fetchrow(*args)
        except BaseException as exc:
            self._discard()
            if isinstance(exc, _BROKEN):
                return await self._db.fetchrow(sql, *args)
            raise
        finally:
            self._busy = False
        return row

    async def _open(self) -> None:
        self._busy = True
        try:
            conn = await asyncpg.connect(self._db.dsn)
            statements = {sql: await conn.prepare(sql) for sql in self._SQL}
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            self._retry_at = time.monotonic() + RETRY_PINNED_AFTER
            log.warning(
                "API-key reads: no dedicated PostgreSQL connection (%s); using the pool", type(exc).__name__
            )
            return
        finally:
            self._busy = False
        if self._closed:
            conn.terminate()
            return
        self._conn, self._statements = conn, statements

    def _discard(self) -> None:
        conn, self._conn = self._conn, None
        self._statements = {}
        self._retry_at = time.monotonic() + RETRY_PINNED_AFTER
        if conn is not None:
            conn.terminate()

    async def close(self) -> None:
        self._closed = True
        conn, self._conn = self._conn, None
        self._statements = {}
        if conn is not None:
            try:
                await conn.close(timeout=5)
            except (OSError, TimeoutError, asyncpg.InterfaceError):
                conn.terminate()


class SQLiteReader:
    """The hot-path reads on a SQLite connection of their own, on the event loop (a WAL read never
    waits for a writer), returning plain tuples: the store's ``sqlite3.Row`` rows and per-call
    statement rewriting cost a third of a short indexed read, and these rows are read by position."""

    _SQL = (LOOKUP, LOOKUP_OLD, STATE, STATE_OLD)

    def __init__(self, db: SQLiteDatabase) -> None:
        try:
            self._conn = sqlite3.connect(
                db.path, isolation_level=None, check_same_thread=False, timeout=READER_BUSY_TIMEOUT_MS / 1000
            )
            self._conn.execute("PRAGMA query_only = ON")
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite error: {exc}") from None
        self._sql = {sql: to_sqlite(sql) for sql in self._SQL}

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            cursor = self._conn.execute(self._sql.get(sql) or to_sqlite(sql), args)
            try:
                row: Row | None = cursor.fetchone()
            finally:
                cursor.close()  # releases the read snapshot at once
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite error: {exc}") from None
        return row

    async def close(self) -> None:
        self._conn.close()
