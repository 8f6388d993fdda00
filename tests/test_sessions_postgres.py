"""PostgreSQL only: the pinned lookup connection, its batching of concurrent lookups, and recovery."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import load_settings
from fundaments.errors import StorageError
from fundaments.models import RequestContext, Session, User
from fundaments.sessions import SessionManager

pytestmark = pytest.mark.postgres

CLIENT = RequestContext("203.0.113.7", "Mozilla/5.0 test")


@pytest.fixture
async def pg(postgres_url: str, tmp_path: Path, clock: ManualClock) -> AsyncIterator[Fundaments]:
    settings = load_settings(
        env_file=tmp_path / "absent.env", database_url=postgres_url, session_cache_seconds=0
    )
    f = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        yield f
    finally:
        await f.close()


async def logins(f: Fundaments, clock: ManualClock, count: int) -> list[Session]:
    db = f["db"]
    issued = []
    for i in range(count):
        user_id = await db.fetchval(
            "INSERT INTO fundaments_users (username, password_hash, created_at, updated_at, password_changed_at) "
            "VALUES ($1, 'x', $2, $2, $2) RETURNING id",
            f"user{i}@example.com",
            clock.now(),
        )
        async with db.transaction() as tx:
            issued.append(await f["sessions"].create(tx, User(id=int(user_id), username=f"user{i}"), CLIENT))
    return issued


async def test_concurrent_lookups_are_batched_and_each_gets_its_own_answer(pg, clock):
    sessions: SessionManager = pg["sessions"]
    issued = await logins(pg, clock, 20)
    bogus = [secrets.token_urlsafe(32) for _ in range(10)]
    tokens = [s.token for s in issued] * 3 + bogus  # duplicates too
    expected = {s.token: s.id for s in issued}
    for _ in range(3):
        results = await asyncio.gather(*(sessions.validate(t, CLIENT) for t in tokens))
        for token, result in zip(tokens, results, strict=True):
            if token in expected:
                assert result is not None and result.id == expected[token]
            else:
                assert result is None


async def test_a_killed_lookup_connection_is_replaced(pg, clock):
    sessions: SessionManager = pg["sessions"]
    [session] = await logins(pg, clock, 1)
    assert await sessions.validate(session.token, CLIENT) is not None
    pids = await pg["db"].fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    admin = await asyncpg.connect(pg["db"].dsn)
    try:
        for row in pids:
            await admin.execute("SELECT pg_terminate_backend($1)", row["pid"])
    finally:
        await admin.close()
    for _ in range(3):  # the pinned connection and the pool's are all dead: each lookup recovers
        result = await sessions.validate(session.token, CLIENT)
        assert result is not None and result.id == session.id
    results = await asyncio.gather(*(sessions.validate(session.token, CLIENT) for _ in range(20)))
    assert all(r is not None and r.id == session.id for r in results)


async def test_a_cancelled_lookup_does_not_poison_the_next(pg, clock):
    sessions: SessionManager = pg["sessions"]
    issued = await logins(pg, clock, 3)
    for _ in range(5):
        tasks = [asyncio.create_task(sessions.validate(s.token, CLIENT)) for s in issued * 4]
        await asyncio.sleep(0)
        for task in tasks[::3]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for s in issued:
            assert (await sessions.validate(s.token, CLIENT)).id == s.id


async def test_close_answers_or_fails_every_waiting_lookup(pg, clock):
    sessions: SessionManager = pg["sessions"]
    issued = await logins(pg, clock, 2)
    tasks = [asyncio.create_task(sessions.validate(s.token, CLIENT)) for s in issued * 10]
    await asyncio.sleep(0)
    await sessions.close()
    _done, pending = await asyncio.wait(tasks, timeout=10)
    assert not pending
    # The lookup already on the pinned connection gets its own answer; every one queued behind it
    # is failed with the store's typed error (never left waiting, never another token's session).
    first, *queued = tasks
    assert first.exception() is None and first.result() is not None
    assert first.result().id == issued[0].id
    for task in queued:
        error = task.exception()
        assert isinstance(error, StorageError) and "closed" in str(error)


async def test_a_stuck_lookup_connection_is_replaced_by_the_next_lookup(pg, clock, monkeypatch):
    import fundaments.store.sessions as store_sessions

    sessions: SessionManager = pg["sessions"]
    [session] = await logins(pg, clock, 1)
    assert await sessions.validate(session.token, CLIENT) is not None
    pinned = sessions._lookup._conn
    assert pinned is not None
    locker = await asyncpg.connect(pg["db"].dsn)
    try:
        transaction = locker.transaction()
        await transaction.start()
        await locker.execute("LOCK TABLE fundaments_sessions IN ACCESS EXCLUSIVE MODE")  # reads now block
        stuck = asyncio.create_task(sessions.validate(session.token, CLIENT))
        await asyncio.sleep(0.3)
        assert not stuck.done()
        monkeypatch.setattr(store_sessions, "COMMAND_TIMEOUT", 0.2)
        waiting = asyncio.create_task(sessions.validate(session.token, CLIENT))
        await asyncio.sleep(0.3)
        await transaction.rollback()
    finally:
        await locker.close()
    results = await asyncio.wait_for(asyncio.gather(stuck, waiting), timeout=10)
    assert all(r is not None and r.id == session.id for r in results)
    assert sessions._lookup._conn is not pinned
