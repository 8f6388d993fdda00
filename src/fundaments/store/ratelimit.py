"""Rate-limit queries: one theoretical arrival time (TAT, integer microseconds) per key.

A decision is one upsert that applies GCRA in SQL (see fundaments.ratelimit): the row is written
only when the request is allowed, and the database's row lock (PostgreSQL) or write lock (SQLite,
``BEGIN IMMEDIATE``) makes it exact across every process that shares the database.
"""

from __future__ import annotations

from fundaments.store.base import Dialect, Executor

CONSUME = {
    "sqlite": (
        "INSERT INTO fundaments_rate_limits AS r (key, tat) VALUES ($1, $2 + $3) "
        "ON CONFLICT (key) DO UPDATE SET tat = (CASE WHEN r.tat > $2 THEN r.tat ELSE $2 END) + $3 "
        "WHERE (CASE WHEN r.tat > $2 THEN r.tat ELSE $2 END) + $3 - $4 <= $2 "
        "RETURNING tat"
    ),
    # PostgreSQL: the same upsert, whose transaction commits without waiting for the WAL flush
    # (only this one: set_config(…, true) is local to it). The flush costs more than the decision
    # (341 vs 3,168 upserts/s measured); a server crash may forget the last fraction of a second
    # of consumption — of rate limits only, never of accounts, sessions or lock counters.
    "postgresql": (
        "WITH s AS (SELECT set_config('synchronous_commit', 'off', true)) "
        "INSERT INTO fundaments_rate_limits AS r (key, tat) SELECT $1, $2::bigint + $3::bigint FROM s "
        "ON CONFLICT (key) DO UPDATE SET "
        "tat = (CASE WHEN r.tat > $2::bigint THEN r.tat ELSE $2::bigint END) + $3::bigint "
        "WHERE (CASE WHEN r.tat > $2::bigint THEN r.tat ELSE $2::bigint END) + $3::bigint - $4::bigint "
        "<= $2::bigint "
        "RETURNING tat"
    ),
}


async def consume(
    db: Executor, dialect: Dialect, key: str, now: int, increment: int, period: int
) -> int | None:
    """Add ``increment`` to the key's TAT (``max(tat, now)``) unless that puts it more than
    ``period`` past ``now``: the new TAT, or None when refused (nothing written then). A new key
    is allowed whenever ``increment <= period``."""
    value = await db.fetchval(CONSUME[dialect], key, now, increment, period)
    return None if value is None else int(value)


async def tat(db: Executor, key: str) -> int | None:
    value = await db.fetchval("SELECT tat FROM fundaments_rate_limits WHERE key = $1", key)
    return None if value is None else int(value)


async def purge(db: Executor, now: int, limit: int) -> int:
    """Delete up to ``limit`` fully replenished rows (``tat <= now``: the same as no row).

    The outer ``tat <= $1`` is checked again on a row updated meanwhile (PostgreSQL re-evaluates
    it on the newest version), so a key that was just consumed is never deleted."""
    return await db.execute(
        "DELETE FROM fundaments_rate_limits WHERE tat <= $1::bigint AND key IN "
        "(SELECT key FROM fundaments_rate_limits WHERE tat <= $1::bigint LIMIT $2::int)",
        now,
        limit,
    )
