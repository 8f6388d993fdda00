"""PostgreSQL backend: an asyncpg pool; asyncpg prepares and caches each statement per connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from fundaments.config import mask_dsn
from fundaments.errors import ConstraintViolation, StorageError
from fundaments.store.base import CommitHooks, Dialect, Row, Transaction, rowcount_from_status

log = logging.getLogger(__name__)

STATEMENT_CACHE_SIZE = 512
COMMAND_TIMEOUT = 30.0  # seconds
READ_ATTEMPTS = 4  # a read after lost connections: the held one and the pool's (min size 2) may all be dead


async def _keep_session_state(connection: Any) -> None:
    """Pool release hook. asyncpg's default runs ``RESET ALL; UNLISTEN *; …`` on every release —
    one extra round trip per query. fundaments sets no session state on pooled connections
    (advisory locks and LISTEN use dedicated connections) and asyncpg still rolls back any open
    transaction before this hook, so nothing leaks between users of a connection."""


def _translate(exc: Exception) -> StorageError:
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError):
        return ConstraintViolation(f"constraint violated: {exc}")
    return StorageError(f"PostgreSQL error: {type(exc).__name__}: {exc}")


# What a statement on a connection whose backend died raises, depending on when it notices.
_CONNECTION_LOST = (asyncpg.InterfaceError, asyncpg.PostgresConnectionError, asyncpg.InternalClientError)
# Every driver error a statement may raise: callers get StorageError (a closed pool too), not asyncpg's.
_DRIVER_ERRORS = (asyncpg.PostgresError, *_CONNECTION_LOST)


async def _connect_direct(dsn: str) -> Any:
    """A connection of its own (not a pool proxy, which the pool detaches when the backend dies)."""
    return await asyncpg.connect(
        dsn, statement_cache_size=STATEMENT_CACHE_SIZE, command_timeout=COMMAND_TIMEOUT
    )


class _Runner:
    """Statements on one acquired connection (inside a transaction)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def _run(self, method: str, sql: str, args: Sequence[Any]) -> Any:
        return await getattr(self._conn, method)(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            row: Row | None = await self._run("fetchrow", sql, args)
            return row
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            rows: list[Row] = await self._run("fetch", sql, args)
            return rows
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self._run("fetchval", sql, args)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc

    async def execute(self, sql: str, *args: Any) -> int:
        try:
            status: str = await self._run("execute", sql, args)
            return rowcount_from_status(status)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(sql, args)
        except _DRIVER_ERRORS as exc:
            raise _translate(exc) from exc


class _TransactionRunner(CommitHooks, _Runner):
    """The statements of one open transaction on its connection."""

    def __init__(self, conn: Any) -> None:
        CommitHooks.__init__(self)
        _Runner.__init__(self, conn)


class PostgresDatabase(_Runner):
    """The store interface on a PostgreSQL database through an asyncpg pool."""

    dialect: Dialect = "postgresql"

    def __init__(self, pool: Any, dsn: str, direct: Any = None) -> None:
        super().__init__(pool)
        self._pool = pool
        self.dsn = dsn
        self.description = mask_dsn(dsn)
        # One connection held out of the pool for single statements while it is free: a pool
        # acquire/release costs about a quarter of a primary-key lookup on loopback.
        self._direct = direct
        self._direct_busy = False
        self._reconnecting: asyncio.Task[None] | None = None

    async def _run(self, method: str, sql: str, args: Sequence[Any]) -> Any:
        for attempt in range(READ_ATTEMPTS):
            try:
                return await self._run_once(method, sql, args)
            except _CONNECTION_LOST:
                # A connection died (server restart, terminated backend). A read is safe to run
                # again — the pool replaces dead connections as it finds them; a write may or may
                # not have committed, so its error goes up.
                if attempt == READ_ATTEMPTS - 1 or sql.lstrip()[:6].upper() != "SELECT":
                    raise
                await asyncio.sleep(0)  # let the pool see the connections it lost
        raise AssertionError("unreachable")

    async def _run_once(self, method: str, sql: str, args: Sequence[Any]) -> Any:
        direct = self._direct
        if direct is None or self._direct_busy:
            return await getattr(self._pool, method)(sql, *args)
        if direct.is_closed():
            self._lose_direct(direct)
            return await getattr(self._pool, method)(sql, *args)
        self._direct_busy = True
        try:
            return await getattr(direct, method)(sql, *args)
        except _CONNECTION_LOST:
            self._lose_direct(direct)
            raise
        finally:
            self._direct_busy = False

    def _lose_direct(self, direct: Any) -> None:
        """Drop a dead held connection; the pool serves single statements until a new one is up."""
        self._direct = None
        direct.terminate()
        if self._reconnecting is None or self._reconnecting.done():
            self._reconnecting = asyncio.get_running_loop().create_task(self._reconnect())

    async def _reconnect(self) -> None:
        try:
            self._direct = await _connect_direct(self.dsn)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.warning("PostgreSQL: the held connection could not be replaced (%s); using the pool", exc)

    @classmethod
    async def connect(cls, dsn: str, *, min_size: int = 2, max_size: int = 20) -> PostgresDatabase:
        try:
            pool = await asyncpg.create_pool(
                dsn,
                min_size=min_size,
                max_size=max_size,
                statement_cache_size=STATEMENT_CACHE_SIZE,
                command_timeout=COMMAND_TIMEOUT,
                reset=_keep_session_state,
            )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StorageError(
                f"cannot connect to PostgreSQL at {mask_dsn(dsn)}: {exc}; check DATABASE_URL and that "
                "the server is running"
            ) from None
        return cls(pool, dsn, direct=await _connect_direct(dsn))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._pool.acquire() as conn, conn.transaction():
            tx = _TransactionRunner(conn)
            yield tx
            await tx.run_commit_hooks()

    async def close(self) -> None:
        if self._reconnecting is not None:
            self._reconnecting.cancel()
        if self._direct is not None:
            await self._direct.close()
            self._direct = None
        await self._pool.close()
