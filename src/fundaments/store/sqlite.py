"""SQLite backend: short reads on the event loop, every write on one writer thread.

Why: a primary-key read in WAL mode never waits for a writer and takes microseconds, so a thread
hop per read (what aiosqlite does) would cost far more than the read (DESIGN.md, storage facts).
Writes are serialized in-process by an asyncio lock and run on a single thread, so concurrent
tasks never see "database is locked"; across processes ``BEGIN IMMEDIATE`` plus a busy timeout
queue them.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, TypeVar

from fundaments.errors import ConstraintViolation, StorageError
from fundaments.store.base import CommitHooks, Dialect, Row, Transaction, to_sqlite

log = logging.getLogger(__name__)
T = TypeVar("T")

READER_BUSY_TIMEOUT_MS = 1_000  # a reader only waits during WAL recovery; keep the loop stall short
WRITER_BUSY_TIMEOUT_MS = 30_000  # another process holds the write lock: wait, off the loop
STATEMENT_CACHE = 512

# Set while a task holds the writer; a second write from the same task would wait on itself.
_holding_writer: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "fundaments_sqlite_writer", default=False
)

translate = lru_cache(maxsize=4096)(to_sqlite)


@lru_cache(maxsize=4096)
def _is_plain_read(sql: str) -> bool:
    head = sql.lstrip()[:6].upper()
    return head == "SELECT" and " RETURNING " not in sql.upper()


def prepare_path(path: Path) -> None:
    """Create the database's directory (mode 0700) and file (mode 0600) if they do not exist."""
    directory = path.parent
    if not directory.exists():
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)


def _connect(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(
        path,
        isolation_level=None,  # autocommit; transactions are explicit BEGIN IMMEDIATE … COMMIT
        check_same_thread=False,
        cached_statements=STATEMENT_CACHE,
        timeout=busy_timeout_ms / 1000,
    )
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    conn.execute("PRAGMA foreign_keys = ON")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: consistent after a crash, fast commits
    return conn


def _storage_error(exc: sqlite3.Error) -> StorageError:
    return StorageError(f"SQLite error: {exc}")


class _Cursorless:
    """Statement helpers shared by the reader (on the loop) and the writer (on its thread)."""

    @staticmethod
    def fetchrow_sync(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> Row | None:
        cursor = conn.execute(translate(sql), args)
        try:
            row: Row | None = cursor.fetchone()
            return row
        finally:
            cursor.close()  # releases the read snapshot at once

    @staticmethod
    def fetch_sync(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> list[Row]:
        cursor = conn.execute(translate(sql), args)
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    @staticmethod
    def execute_sync(conn: sqlite3.Connection, sql: str, args: Sequence[Any]) -> int:
        cursor = conn.execute(translate(sql), args)
        try:
            if cursor.description is not None:
                cursor.fetchall()  # RETURNING rows must be drained for the statement to finish
            return cursor.rowcount if cursor.rowcount >= 0 else 0
        finally:
            cursor.close()

    @staticmethod
    def executemany_sync(conn: sqlite3.Connection, sql: str, args: Sequence[Sequence[Any]]) -> None:
        conn.executemany(translate(sql), args).close()


class _Transaction(CommitHooks):
    """The statements of one open transaction; each runs on the writer thread.

    ``BEGIN IMMEDIATE`` is sent together with the first statement (one thread hop fewer): a
    transaction that runs no statement never takes the write lock.
    """

    __slots__ = ("__weakref__", "_db", "begun")

    def __init__(self, db: SQLiteDatabase) -> None:
        super().__init__()
        self._db = db
        self.begun = False

    async def _run(self, func: Callable[..., T], sql: str, args: Any) -> T:
        writer = self._db._writer

        def call() -> T:
            if not self.begun:
                writer.execute("BEGIN IMMEDIATE")
                self.begun = True
            return func(writer, sql, args)

        return await self._db._on_writer(call)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self._run(_Cursorless.fetchrow_sync, sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._run(_Cursorless.fetch_sync, sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._run(_Cursorless.execute_sync, sql, args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._run(_Cursorless.executemany_sync, sql, args)


class SQLiteDatabase:
    """The store interface on one SQLite file."""

    dialect: Dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.description = f"sqlite:///{self.path}"
        prepare_path(self.path)
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fundaments-sqlite-writer")
        try:
            self._writer = self._writer_thread.submit(_connect, self.path, WRITER_BUSY_TIMEOUT_MS).result()
            self._reader = _connect(self.path, READER_BUSY_TIMEOUT_MS)
        except sqlite3.Error as exc:
            self._writer_thread.shutdown(wait=False)
            raise StorageError(
                f"cannot open the SQLite database {self.path}: {exc}; check the path in DATABASE_URL "
                "and that the directory is writable"
            ) from None
        for suffix in ("-wal", "-shm"):
            sidecar = self.path.with_name(self.path.name + suffix)
            if sidecar.exists():
                sidecar.chmod(0o600)
        self._write_lock = asyncio.Lock()
        self._closed = False

    # --- reads (on the event loop) and single writes --------------------------------------------
    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        if _is_plain_read(sql):
            try:
                return _Cursorless.fetchrow_sync(self._reader, sql, args)
            except sqlite3.Error as exc:
                raise _storage_error(exc) from exc
        return await self._single(_Cursorless.fetchrow_sync, sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        if _is_plain_read(sql):
            try:
                return _Cursorless.fetch_sync(self._reader, sql, args)
            except sqlite3.Error as exc:
                raise _storage_error(exc) from exc
        return await self._single(_Cursorless.fetch_sync, sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else row[0]

    async def execute(self, sql: str, *args: Any) -> int:
        return await self._single(_Cursorless.execute_sync, sql, args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await self._single(_Cursorless.executemany_sync, sql, args)

    async def _single(self, func: Callable[..., T], sql: str, args: Any) -> T:
        """One write statement as its own transaction, in one hop to the writer thread.

        Still ``BEGIN IMMEDIATE`` … ``COMMIT`` rather than autocommit: an autocommit write first
        reads, and upgrading that read to a write fails at once (no busy wait) when another process
        committed in between.
        """
        writer = self._writer

        def call() -> T:
            writer.execute("BEGIN IMMEDIATE")
            try:
                result = func(writer, sql, args)
            except BaseException:
                writer.execute("ROLLBACK")
                raise
            writer.execute("COMMIT")
            return result

        async with self._writer_held():
            return await self._on_writer(call)

    # --- transactions ----------------------------------------------------------------------------
    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Transaction]:
        async with self._writer_held():
            tx = _Transaction(self)
            try:
                yield tx
                await tx.run_commit_hooks()
            except BaseException:
                if tx.begun:
                    await asyncio.shield(self._on_writer(self._rollback))
                raise
            if tx.begun:
                await asyncio.shield(self._on_writer(self._commit))

    @asynccontextmanager
    async def _writer_held(self) -> AsyncIterator[None]:
        """Hold the in-process write lock; refuse a second one from the same task (it would deadlock)."""
        if self._closed:
            raise StorageError("the database is closed")
        if _holding_writer.get():
            raise RuntimeError(
                "a write outside the open transaction would wait on itself: "
                "run the statement on the transaction object instead"
            )
        async with self._write_lock:
            token = _holding_writer.set(True)
            try:
                yield
            finally:
                _holding_writer.reset(token)

    def _commit(self) -> None:
        self._writer.execute("COMMIT")

    def _rollback(self) -> None:
        if self._writer.in_transaction:
            self._writer.execute("ROLLBACK")

    async def _on_writer(self, func: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._writer_thread, func, *args)
        except sqlite3.IntegrityError as exc:
            raise ConstraintViolation(f"constraint violated: {exc}") from exc
        except sqlite3.Error as exc:
            raise _storage_error(exc) from exc

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        async with self._write_lock:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._writer_thread, self._writer.close)
        self._reader.close()
        self._writer_thread.shutdown(wait=True)
