"""The store on real SQLite files and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from fundaments.config import parse_database_url
from fundaments.errors import ConstraintViolation, StorageError
from fundaments.store import SQLiteDatabase, current, head_revision, open_database
from fundaments.store.base import to_sqlite
from fundaments.store.tables import metadata

EXPECTED_TABLES = {table.name for table in metadata.sorted_tables}


async def table_names(db) -> set[str]:
    if db.dialect == "sqlite":
        rows = await db.fetch("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = await db.fetch("SELECT tablename AS name FROM pg_tables WHERE schemaname = 'public'")
    return {row["name"] for row in rows}


async def test_migrates_an_empty_database_to_head(database_url: str) -> None:
    url = parse_database_url(database_url)
    assert await current(url) is None
    db = await open_database(url)
    try:
        assert await current(url) == head_revision()
        names = await table_names(db)
        assert names >= EXPECTED_TABLES
        assert all(name.startswith("fundaments_") for name in names if name not in ("sqlite_sequence",))
    finally:
        await db.close()


async def test_migration_is_idempotent(database_url: str) -> None:
    url = parse_database_url(database_url)
    for _ in range(2):
        db = await open_database(url)
        await db.close()
    assert await current(url) == head_revision()


async def test_same_sql_runs_on_both_dialects(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    try:
        assert await db.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, $2)", "hits", 1) == 1
        value = await db.fetchval(
            "UPDATE fundaments_state SET value = value + $2 WHERE key = $1 RETURNING value", "hits", 41
        )
        assert value == 42
        row = await db.fetchrow("SELECT key, value FROM fundaments_state WHERE key = $1", "hits")
        assert row is not None and row["key"] == "hits" and row["value"] == 42 and row[1] == 42
        assert await db.fetchrow("SELECT key FROM fundaments_state WHERE key = $1", "absent") is None
        await db.executemany(
            "INSERT INTO fundaments_state (key, value) VALUES ($1, $2)", [("a", 1), ("b", 2)]
        )
        rows = await db.fetch("SELECT key FROM fundaments_state ORDER BY key")
        assert [r["key"] for r in rows] == ["a", "b", "hits"]
    finally:
        await db.close()


async def test_sql_metacharacters_are_data_never_sql(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    evil = "x'); DROP TABLE fundaments_users; --"
    try:
        await db.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", evil)
        assert await db.fetchval("SELECT key FROM fundaments_state WHERE key = $1", evil) == evil
        assert "fundaments_users" in await table_names(db)
    finally:
        await db.close()


async def test_transaction_commits_together_or_not_at_all(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    try:
        with pytest.raises(ConstraintViolation):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", "first")
                await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", "first")
        assert await db.fetchval("SELECT count(*) FROM fundaments_state") == 0

        with pytest.raises(RuntimeError, match="application error"):
            async with db.transaction() as tx:
                await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", "second")
                raise RuntimeError("application error")
        assert await db.fetchval("SELECT count(*) FROM fundaments_state") == 0

        async with db.transaction() as tx:
            await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", "third")
            assert await tx.fetchval("SELECT value FROM fundaments_state WHERE key = $1", "third") == 1
        assert await db.fetchval("SELECT value FROM fundaments_state WHERE key = $1", "third") == 1
    finally:
        await db.close()


async def test_foreign_keys_are_enforced(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    try:
        with pytest.raises(ConstraintViolation):
            await db.execute(
                "INSERT INTO fundaments_user_roles (user_id, role_id, granted_at) VALUES (999, 999, 0)"
            )
    finally:
        await db.close()


async def test_cancelled_transaction_rolls_back(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    started = asyncio.Event()

    async def slow_writer() -> None:
        async with db.transaction() as tx:
            await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", "cancelled")
            started.set()
            await asyncio.sleep(10)

    try:
        task = asyncio.create_task(slow_writer())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await db.fetchval("SELECT count(*) FROM fundaments_state") == 0
        await db.execute(
            "INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", "after"
        )  # writer still works
    finally:
        await db.close()


async def test_two_hundred_concurrent_writers_never_see_database_is_locked(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    try:
        await db.execute("INSERT INTO fundaments_state (key, value) VALUES ('counter', 0)")

        async def writer(n: int) -> None:
            async with db.transaction() as tx:
                await tx.execute("UPDATE fundaments_state SET value = value + 1 WHERE key = 'counter'")
                await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, $2)", f"w{n}", n)

        await asyncio.gather(*(writer(n) for n in range(200)))
        assert await db.fetchval("SELECT value FROM fundaments_state WHERE key = 'counter'") == 200
        assert await db.fetchval("SELECT count(*) FROM fundaments_state") == 201
    finally:
        await db.close()


async def test_sqlite_write_inside_own_transaction_is_refused_not_deadlocked(tmp_path: Path) -> None:
    db = await open_database(parse_database_url(f"sqlite:///{tmp_path / 'x.db'}"))
    try:
        async with db.transaction():
            with pytest.raises(RuntimeError, match="run the statement on the transaction object"):
                await db.execute("INSERT INTO fundaments_state (key, value) VALUES ('x', 1)")
    finally:
        await db.close()


async def test_sqlite_reads_see_writes_committed_by_another_connection(tmp_path: Path) -> None:
    path = tmp_path / "shared.db"
    db = await open_database(parse_database_url(f"sqlite:///{path}"))
    try:
        other = sqlite3.connect(path)
        other.execute("INSERT INTO fundaments_state (key, value) VALUES ('from-elsewhere', 7)")
        other.commit()
        other.close()
        assert await db.fetchval("SELECT value FROM fundaments_state WHERE key = $1", "from-elsewhere") == 7
    finally:
        await db.close()


async def test_sqlite_file_and_directory_are_private(tmp_path: Path) -> None:
    path = tmp_path / "new-dir" / "app.db"
    db = await open_database(parse_database_url(f"sqlite:///{path}"))
    await db.close()
    assert path.parent.stat().st_mode & 0o777 == 0o700
    assert path.stat().st_mode & 0o777 == 0o600
    check = sqlite3.connect(path)
    assert check.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    check.close()


async def test_closed_database_refuses_writes(tmp_path: Path) -> None:
    db = SQLiteDatabase(tmp_path / "c.db")
    await db.close()
    await db.close()  # closing twice is harmless
    with pytest.raises(StorageError, match="closed"):
        await db.execute("SELECT 1")


async def test_unreachable_postgres_is_a_clear_storage_error() -> None:
    url = parse_database_url("postgresql://nobody@127.0.0.1:1/none")
    with pytest.raises(StorageError, match=r"migration failed on postgresql://nobody@127\.0\.0\.1:1/none"):
        await open_database(url)


def test_sqlite_translation() -> None:
    sql = "SELECT a FROM t WHERE b = $1 AND c = $12::text FOR UPDATE"
    assert to_sqlite(sql) == "SELECT a FROM t WHERE b = ?1 AND c = ?12"
    sql = "SELECT a FROM t WHERE ($1::bigint IS NULL OR a = $1) AND d > $2::double precision"
    assert to_sqlite(sql) == "SELECT a FROM t WHERE (?1 IS NULL OR a = ?1) AND d > ?2"


async def test_before_commit_hooks_run_last_in_order_and_never_on_rollback(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    ran: list[str] = []
    try:
        async with db.transaction() as tx:

            async def hook(name: str = "first") -> None:
                ran.append(name)
                await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, 1)", name)

            tx.before_commit(hook)
            tx.before_commit(lambda: hook("second"))
            await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ('body', 1)")
            assert ran == []
        assert ran == ["first", "second"]
        assert await db.fetchval("SELECT count(*) FROM fundaments_state") == 3

        with pytest.raises(RuntimeError):
            async with db.transaction() as tx:
                tx.before_commit(lambda: hook("never"))
                raise RuntimeError("rolled back")
        assert ran == ["first", "second"]
    finally:
        await db.close()


@pytest.mark.postgres
async def test_postgres_reads_survive_a_terminated_backend(postgres_url: str) -> None:
    import asyncpg

    db = await open_database(parse_database_url(postgres_url))
    try:
        await db.execute("INSERT INTO fundaments_state (key, value) VALUES ('k', 1)")
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        for _ in range(3):
            assert await db.fetchval("SELECT value FROM fundaments_state WHERE key = $1", "k") == 1
    finally:
        await db.close()


async def test_migrations_at_head_match_the_table_definitions(database_url: str) -> None:
    """tables.py and the migrations must describe the same schema: a column added to one and
    forgotten in the other is a difference Alembic's autogenerate comparison reports."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine
    from sqlalchemy.ext.asyncio import create_async_engine

    url = parse_database_url(database_url)
    db = await open_database(url)
    await db.close()

    def diff(connection) -> list:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        ignored = {"fundaments_alembic_version", "sqlite_sequence"}
        return [d for d in compare_metadata(context, metadata) if not _about_table(d, ignored)]

    if url.dialect == "sqlite":
        engine = create_engine(url.sqlalchemy_url)
        with engine.connect() as connection:
            differences = diff(connection)
        engine.dispose()
    else:
        engine = create_async_engine(url.sqlalchemy_url)
        async with engine.connect() as connection:
            differences = await connection.run_sync(diff)
        await engine.dispose()
    assert differences == []


def _about_table(difference, names: set[str]) -> bool:
    for item in difference if isinstance(difference, list) else [difference]:
        table = getattr(item[1], "name", None) if item[0] in ("add_table", "remove_table") else None
        if table in names:
            return True
    return False
