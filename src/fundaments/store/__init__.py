"""Storage: the schema (SQLAlchemy Core + Alembic) and every query, on SQLite and PostgreSQL.

Services receive a :class:`Database` and write SQL only through it (and only in this package's
query modules). See docs/schema.md.
"""

from __future__ import annotations

from fundaments.config import DatabaseURL, Settings
from fundaments.store.base import Database, Dialect, Executor, Row
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


__all__ = [
    "Database",
    "Dialect",
    "Executor",
    "PostgresDatabase",
    "Row",
    "SQLiteDatabase",
    "current",
    "head_revision",
    "open_database",
    "upgrade",
]
