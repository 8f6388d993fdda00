"""Schema migrations with Alembic, run programmatically at start-up and by ``fundaments db``.

On PostgreSQL the upgrade holds an advisory lock, so several instances starting at once run it
one after the other (the later ones find the schema current). On SQLite the write lock of the
migration transaction serializes processes.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, create_engine, event, text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from fundaments.config import DatabaseURL
from fundaments.errors import StorageError
from fundaments.store.sqlite import prepare_path
from fundaments.store.tables import VERSION_TABLE

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
ADVISORY_LOCK_KEY = 0x66756E64  # "fund": fundaments' migration lock


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def _current(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _upgrade(connection: Connection) -> str | None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.commit()
    try:
        before = _current(connection)
        if before != head_revision():
            command.upgrade(alembic_config(connection), "head")
            connection.commit()
            log.info("database schema upgraded from %s to %s", before or "empty", head_revision())
        return _current(connection)
    finally:
        if connection.dialect.name == "postgresql":
            connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
            connection.commit()


def _sqlite_engine(url: DatabaseURL) -> Any:
    assert url.sqlite_path is not None
    prepare_path(url.sqlite_path)
    engine = create_engine(url.sqlalchemy_url, poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def _pragmas(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA busy_timeout = 30000")
        dbapi_connection.execute("PRAGMA journal_mode = WAL")

    return engine


# Alembic keeps the running migration in module globals (``alembic.context``, ``alembic.op``), so
# two migrations in one process must never overlap, even on different databases: every migration
# runs on a worker thread holding this lock (PostgreSQL's in an event loop of its own there).
_ALEMBIC_LOCK = threading.Lock()


@contextmanager
def _sqlite_file_lock(path: Path) -> Iterator[None]:
    """Serialize migrations of one SQLite file across processes (PostgreSQL uses an advisory lock)."""
    lock_path = path.with_name(path.name + ".migrate-lock")
    fd = os.open(lock_path, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _run_sqlite(url: DatabaseURL, action: Callable[[Connection], str | None]) -> str | None:
    assert url.sqlite_path is not None
    engine = _sqlite_engine(url)
    try:
        with _sqlite_file_lock(url.sqlite_path), engine.connect() as connection:
            return action(connection)
    finally:
        engine.dispose()


async def _run_postgres(url: DatabaseURL, action: Callable[[Connection], str | None]) -> str | None:
    connect_args: dict[str, Any] = {}
    if url.sslmode is not None:
        connect_args["ssl"] = url.sslmode
    engine = create_async_engine(url.sqlalchemy_url, poolclass=NullPool, connect_args=connect_args)
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(action)
    finally:
        await engine.dispose()


def _run_locked(url: DatabaseURL, action: Callable[[Connection], str | None]) -> str | None:
    with _ALEMBIC_LOCK:
        if url.dialect == "sqlite":
            return _run_sqlite(url, action)
        return asyncio.run(_run_postgres(url, action))


async def _run(url: DatabaseURL, action: Callable[[Connection], str | None]) -> str | None:
    try:
        return await asyncio.to_thread(_run_locked, url, action)
    except StorageError:
        raise
    except Exception as exc:
        raise StorageError(f"database migration failed on {url.masked}: {type(exc).__name__}: {exc}") from exc


async def upgrade(url: DatabaseURL) -> str | None:
    """Bring the schema to the newest revision; the revision it is at afterwards."""
    return await _run(url, _upgrade)


async def current(url: DatabaseURL) -> str | None:
    """The schema revision the database is at (None: empty)."""
    return await _run(url, _current)
