"""Storage: the schema (SQLAlchemy Core + Alembic) and every query, on SQLite and PostgreSQL.

Services receive a :class:`Database` and write SQL only through it (and only in this package's
query modules). See docs/schema.md.
"""

from __future__ import annotations

import os

import asyncpg

from fundaments.config import DatabaseURL, Settings
from fundaments.errors import StorageError
from fundaments.store.base import Database, Dialect, Executor, Row, Transaction
from fundaments.store.migrate import current, head_revision, upgrade
from fundaments.store.postgres import PostgresDatabase
from fundaments.store.sqlite import SQLiteDatabase


async def open_database(
    url: DatabaseURL, settings: Settings | None = None, *, migrate: bool = True
) -> Database:
    """Connect to the database named by ``url``, after upgrading its schema when ``migrate``."""
    if migrate:
        await upgrade(url)
    if url.dialect == "sqlite":
        assert url.sqlite_path is not None
        return SQLiteDatabase(url.sqlite_path)
    assert url.postgres_dsn is not None
    min_size = settings.db_pool_min_size if settings else 2
    max_size = settings.db_pool_max_size if settings else 20
    return await PostgresDatabase.connect(url.postgres_dsn, min_size=min_size, max_size=max_size)


PROBE_TIMEOUT = 5.0  # seconds


async def probe_database(url: DatabaseURL) -> None:
    """Raise StorageError (with the fix) unless the database can be reached and written."""
    if url.dialect == "sqlite":
        assert url.sqlite_path is not None
        directory = url.sqlite_path.parent
        existing = next((p for p in (directory, *directory.parents) if p.exists()), None)
        if existing is None or not os.access(existing, os.W_OK):
            raise StorageError(f"cannot create or write {url.sqlite_path}: {existing} is not writable")
        return
    try:
        conn = await asyncpg.connect(url.postgres_dsn, timeout=PROBE_TIMEOUT)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        raise StorageError(
            f"cannot connect to PostgreSQL at {url.masked}: {exc}; "
            "check DATABASE_URL and that the server is running"
        ) from None
    await conn.close()


__all__ = [
    "Database",
    "Dialect",
    "Executor",
    "PostgresDatabase",
    "Row",
    "SQLiteDatabase",
    "Transaction",
    "current",
    "head_revision",
    "open_database",
    "probe_database",
    "upgrade",
]
