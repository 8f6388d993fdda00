"""Audit-trail queries: append chained events and their checkpoints, read both back."""

from __future__ import annotations

from typing import Any

from fundaments.store.base import Executor, Row, like_containing

GENESIS_HASH = "0" * 64
CHAIN_LOCK_KEY = 0x61756474  # "audt": serializes appends across PostgreSQL instances


async def lock_chain(tx: Executor, dialect: str) -> None:
    """Hold the chain's append lock until the transaction ends (SQLite: the write lock already does)."""
    if dialect == "postgresql":
        await tx.execute("SELECT pg_advisory_xact_lock($1)", CHAIN_LOCK_KEY)


_INSERT = (
    "INSERT INTO fundaments_audit_events (occurred_at, kind, outcome, actor_user_id, subject_user_id, "
    "username, ip_address, user_agent, session_id, details, prev_hash, hash) VALUES "
)
_COLUMNS = 12
MAX_EVENTS_PER_INSERT = 64  # 768 parameters: far below both drivers' limits


def _placeholders(rows: int) -> str:
    return ", ".join(
        "(" + ", ".join(f"${row * _COLUMNS + column + 1}" for column in range(_COLUMNS)) + ")"
        for row in range(rows)
    )


async def insert_events(tx: Executor, rows: list[tuple[Any, ...]]) -> list[int]:
    """Insert events (each a 12-tuple in column order) in one statement per 64; their ids, in order.

    Only the number of placeholders varies; every value is a parameter.
    """
    ids: list[int] = []
    for start in range(0, len(rows), MAX_EVENTS_PER_INSERT):
        chunk = rows[start : start + MAX_EVENTS_PER_INSERT]
        values = [value for row in chunk for value in row]
        result = await tx.fetch(_INSERT + _placeholders(len(chunk)) + " RETURNING id", *values)
        ids.extend(sorted(int(row["id"]) for row in result))
    return ids


async def events(
    db: Executor,
    *,
    user_id: int | None = None,
    kind: str | None = None,
    kind_contains: str | None = None,
    since: float | None = None,
    before_id: int | None = None,
    limit: int = 100,
) -> list[Row]:
    """Newest first; ``before_id`` pages by key (events older than that id), never by OFFSET."""
    pattern = None if kind_contains is None else like_containing(kind_contains)
    return await db.fetch(
        "SELECT * FROM fundaments_audit_events "
        "WHERE ($1::bigint IS NULL OR subject_user_id = $1 OR actor_user_id = $1) "
        "AND ($2::text IS NULL OR kind = $2) AND ($3::float8 IS NULL OR occurred_at >= $3) "
        "AND ($4::text IS NULL OR kind LIKE $4 ESCAPE '\\') AND ($5::bigint IS NULL OR id < $5) "
        "ORDER BY id DESC LIMIT $6",
        user_id,
        kind,
        since,
        pattern,
        before_id,
        limit,
    )


# --- checkpoints -----------------------------------------------------------------------------------


async def chain_head(tx: Executor) -> tuple[int, str]:
    """(id, hash) of the newest event; (0, GENESIS_HASH) for an empty trail."""
    row = await tx.fetchrow("SELECT id, hash FROM fundaments_audit_events ORDER BY id DESC LIMIT 1")
    return (0, GENESIS_HASH) if row is None else (int(row["id"]), str(row["hash"]))


async def append_state(tx: Executor) -> Row:
    """In one statement (one writer-thread hop on SQLite): the newest event's id and hash, and the
    newest checkpoint's event id, count and MAC (NULL when there is none)."""
    row = await tx.fetchrow(
        "SELECT (SELECT id FROM fundaments_audit_events ORDER BY id DESC LIMIT 1) AS head_id, "
        "(SELECT hash FROM fundaments_audit_events ORDER BY id DESC LIMIT 1) AS head_hash, "
        "(SELECT event_id FROM fundaments_audit_checkpoints ORDER BY id DESC LIMIT 1) AS event_id, "
        "(SELECT events FROM fundaments_audit_checkpoints ORDER BY id DESC LIMIT 1) AS events, "
        "(SELECT mac FROM fundaments_audit_checkpoints ORDER BY id DESC LIMIT 1) AS mac"
    )
    assert row is not None  # a SELECT without FROM always yields one row
    return row


async def newest_checkpoint(db: Executor, *, at_most_event_id: int | None = None) -> Row | None:
    return await db.fetchrow(
        "SELECT * FROM fundaments_audit_checkpoints "
        "WHERE ($1::bigint IS NULL OR event_id <= $1) ORDER BY id DESC LIMIT 1",
        at_most_event_id,
    )


async def checkpoint_before(db: Executor, checkpoint_id: int) -> Row | None:
    return await db.fetchrow(
        "SELECT * FROM fundaments_audit_checkpoints WHERE id < $1 ORDER BY id DESC LIMIT 1",
        checkpoint_id,
    )


async def checkpoints(db: Executor, *, from_id: int, at_most_event_id: int, known_id: int) -> list[Row]:
    """Checkpoints with ``id >= from_id`` in id order: every one up to ``known_id`` (the newest seen
    before the head was read) and any newer one covering events up to ``at_most_event_id``."""
    return await db.fetch(
        "SELECT * FROM fundaments_audit_checkpoints "
        "WHERE id >= $1 AND (event_id <= $2 OR id <= $3) ORDER BY id",
        from_id,
        at_most_event_id,
        known_id,
    )


async def count_events_after(tx: Executor, event_id: int) -> int:
    return int(await tx.fetchval("SELECT count(*) FROM fundaments_audit_events WHERE id > $1", event_id))


async def count_events_between(db: Executor, after_id: int, at_most_id: int) -> int:
    return int(
        await db.fetchval(
            "SELECT count(*) FROM fundaments_audit_events WHERE id > $1 AND id <= $2", after_id, at_most_id
        )
    )


async def insert_checkpoint(
    tx: Executor,
    event_id: int,
    event_hash: str,
    events: int,
    created_at: float,
    key_id: str | None,
    mac: str | None,
) -> int:
    return int(
        await tx.fetchval(
            "INSERT INTO fundaments_audit_checkpoints "
            "(event_id, event_hash, events, created_at, key_id, mac) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            event_id,
            event_hash,
            events,
            created_at,
            key_id,
            mac,
        )
    )


async def event_hash(db: Executor, event_id: int) -> str | None:
    value = await db.fetchval("SELECT hash FROM fundaments_audit_events WHERE id = $1", event_id)
    return None if value is None else str(value)


async def events_after(db: Executor, after_id: int, at_most_id: int, limit: int) -> list[Row]:
    """Up to ``limit`` events with ``after_id < id <= at_most_id``, in id order (keyset pages)."""
    return await db.fetch(
        "SELECT * FROM fundaments_audit_events WHERE id > $1 AND id <= $2 ORDER BY id LIMIT $3",
        after_id,
        at_most_id,
        limit,
    )
