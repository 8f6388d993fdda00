"""Account-token queries (password reset, email verification) and the request throttle.

A token is spent by deleting its row (``DELETE … RETURNING``): of two requests presenting the same
token at once, on any number of instances, exactly one gets the row back. The request throttle
counts requests per key in fixed windows with one conditional upsert, atomic across processes.
"""

from __future__ import annotations

from fundaments.store.base import Executor, Row


async def insert(
    tx: Executor, token_hash: bytes, user_id: int, purpose: str, binding: bytes, now: float, expires_at: float
) -> None:
    await tx.execute(
        "INSERT INTO fundaments_account_tokens (token_hash, user_id, purpose, binding, created_at, "
        "expires_at) VALUES ($1, $2, $3, $4, $5, $6)",
        token_hash,
        user_id,
        purpose,
        binding,
        now,
        expires_at,
    )


async def delete_for_user(tx: Executor, user_id: int, purpose: str) -> int:
    """Spend every outstanding token of ``purpose`` of the account: how many there were."""
    return await tx.execute(
        "DELETE FROM fundaments_account_tokens WHERE user_id = $1 AND purpose = $2", user_id, purpose
    )


async def find(db: Executor, token_hash: bytes, purpose: str) -> Row | None:
    """The token with its account's current state (what its binding is checked against)."""
    return await db.fetchrow(
        "SELECT t.user_id, t.binding, t.expires_at, u.id, u.username, u.password_hash, u.email, u.email_key, "
        "u.is_disabled FROM fundaments_account_tokens t JOIN fundaments_users u ON u.id = t.user_id "
        "WHERE t.token_hash = $1 AND t.purpose = $2",
        token_hash,
        purpose,
    )


async def spend(tx: Executor, token_hash: bytes, purpose: str) -> Row | None:
    """Delete the token and return it (user_id, binding, expires_at): None when it is gone."""
    return await tx.fetchrow(
        "DELETE FROM fundaments_account_tokens WHERE token_hash = $1 AND purpose = $2 "
        "RETURNING user_id, binding, expires_at",
        token_hash,
        purpose,
    )


async def purge_expired(tx: Executor, now: float) -> int:
    return await tx.execute("DELETE FROM fundaments_account_tokens WHERE expires_at <= $1", now)


async def subject(db: Executor, user_id: int) -> Row | None:
    """What a new token of the account is bound to, and where its mail goes."""
    return await db.fetchrow(
        "SELECT id, username, password_hash, email, email_key, is_disabled FROM fundaments_users "
        "WHERE id = $1",
        user_id,
    )


async def subject_by_email_key(db: Executor, email_key: str) -> Row | None:
    return await db.fetchrow(
        "SELECT id, username, password_hash, email, email_key, is_disabled, locked_until "
        "FROM fundaments_users WHERE email_key = $1",
        email_key,
    )


# --- the request throttle ---------------------------------------------------------------------------
async def claim_request(tx: Executor, key: str, now: float, window: float, limit: int) -> int | None:
    """Count one request of ``key`` in its window (a new window once the old one ran out): the
    count, or None when the window already holds ``limit`` requests (nothing is counted then)."""
    value = await tx.fetchval(
        "INSERT INTO fundaments_request_throttle AS t (key, window_start, count) VALUES ($1, $2, 1) "
        "ON CONFLICT (key) DO UPDATE SET "
        "count = CASE WHEN t.window_start + $3::float8 <= $2::float8 THEN 1 ELSE t.count + 1 END, "
        "window_start = CASE WHEN t.window_start + $3::float8 <= $2::float8 THEN $2::float8 "
        "ELSE t.window_start END "
        "WHERE t.window_start + $3::float8 <= $2::float8 OR t.count < $4::int "
        "RETURNING count",
        key,
        now,
        window,
        limit,
    )
    return None if value is None else int(value)


async def prune_requests(tx: Executor, before: float) -> int:
    return await tx.execute("DELETE FROM fundaments_request_throttle WHERE window_start <= $1", before)
