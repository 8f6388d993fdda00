"""Account queries: users, device cookies and the per-IP throttle.

Brute-force counters change with single conditional statements (``UPDATE … RETURNING``), never
read-modify-write, so that concurrent attempts from any number of processes cannot all slip past
the limit: an attempt must *claim* a place below the threshold before its password is verified.
"""

from __future__ import annotations

from fundaments.store.base import Executor, Row

# --- users ---------------------------------------------------------------------------------------


async def insert_user(
    tx: Executor,
    username: str,
    lookalike_key: str,
    password_hash: str,
    must_change_password: bool,
    now: float,
) -> Row | None:
    """The new account's row, or None when its username or look-alike key is taken.

    ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL alike) rather than a failing statement:
    a PostgreSQL transaction survives it, and the caller says which name is taken.
    """
    return await tx.fetchrow(
        "INSERT INTO fundaments_users (username, username_skeleton, password_hash, is_disabled, "
        "must_change_password, failed_attempts, lock_count, privilege_epoch, created_at, updated_at, "
        "password_changed_at) "
        "VALUES ($1, $2, $3, FALSE, $4, 0, 0, 0, $5, $5, $5) ON CONFLICT DO NOTHING "
        "RETURNING id, username, is_disabled, must_change_password, created_at",
        username,
        lookalike_key,
        password_hash,
        must_change_password,
        now,
    )


async def name_holder(db: Executor, username: str, lookalike_key: str) -> Row | None:
    """The account holding ``username`` or, failing that, ``lookalike_key``: (id, username)."""
    return await db.fetchrow(
        "SELECT id, username FROM fundaments_users WHERE username = $1 OR username_skeleton = $2 "
        "ORDER BY CASE WHEN username = $1 THEN 0 ELSE 1 END LIMIT 1",
        username,
        lookalike_key,
    )


async def users_without_lookalike_key(db: Executor, after_id: int, limit: int) -> list[Row]:
    """Accounts created before revision 0002 (no look-alike key yet), by id from ``after_id``."""
    return await db.fetch(
        "SELECT id, username FROM fundaments_users WHERE username_skeleton IS NULL AND id > $1 "
        "ORDER BY id LIMIT $2",
        after_id,
        limit,
    )


async def set_lookalike_key(tx: Executor, user_id: int, lookalike_key: str) -> bool:
    """Give an account its look-alike key unless another account holds it already."""
    changed = await tx.execute(
        "UPDATE fundaments_users SET username_skeleton = $2 WHERE id = $1 AND username_skeleton IS NULL "
        "AND NOT EXISTS (SELECT 1 FROM fundaments_users o WHERE o.username_skeleton = $2)",
        user_id,
        lookalike_key,
    )
    return changed > 0


async def lookalike_key_holder(db: Executor, lookalike_key: str) -> int | None:
    value = await db.fetchval("SELECT id FROM fundaments_users WHERE username_skeleton = $1", lookalike_key)
    return None if value is None else int(value)


async def user_by_id(db: Executor, user_id: int) -> Row | None:
    return await db.fetchrow(
        "SELECT id, username, is_disabled, must_change_password, created_at FROM fundaments_users "
        "WHERE id = $1",
        user_id,
    )


async def user_by_username(db: Executor, username: str) -> Row | None:
    return await db.fetchrow(
        "SELECT id, username, is_disabled, must_change_password, created_at FROM fundaments_users "
        "WHERE username = $1",
        username,
    )


async def usernames(db: Executor, user_ids: list[int]) -> list[Row]:
    """(id, username) of the accounts among ``user_ids`` (at most a few hundred: one placeholder each)."""
    if not user_ids:
        return []
    placeholders = ", ".join(f"${i + 1}" for i in range(len(user_ids)))
    return await db.fetch(
        f"SELECT id, username FROM fundaments_users WHERE id IN ({placeholders})",  # noqa: S608 - placeholders only
        *user_ids,
    )


async def list_users(db: Executor, limit: int, offset: int) -> list[Row]:
    return await db.fetch(
        "SELECT id, username, is_disabled, must_change_password, created_at FROM fundaments_users "
        "ORDER BY id LIMIT $1 OFFSET $2",
        limit,
        offset,
    )


async def login_gate(
    db: Executor,
    username: str,
    ip_key: str,
    window_open_after: float,
    device_hash: bytes | None,
    device_used_after: float,
) -> Row:
    """In one read: the client IP's failures in its open window (``ip_failures``, NULL for none),
    the account a login names (``id`` NULL when there is none) and whether ``device_hash`` is a
    device cookie of that account used since ``device_used_after`` (``device_hash`` NULL if not)."""
    row = await db.fetchrow(
        "SELECT t.failures AS ip_failures, u.id, u.username, u.is_disabled, u.must_change_password, "
        "u.created_at, u.password_hash, d.token_hash AS device_hash, "
        "(SELECT COUNT(*) FROM fundaments_devices c WHERE c.user_id = u.id) AS devices "
        "FROM (SELECT 1 AS one) AS g "
        "LEFT JOIN fundaments_users u ON u.username = $1 "
        "LEFT JOIN fundaments_ip_throttle t ON t.ip_address = $2 AND t.window_start > $3::float8 "
        "LEFT JOIN fundaments_devices d ON d.token_hash = $4::bytea AND d.user_id = u.id "
        "AND d.last_used_at >= $5::float8",
        username,
        ip_key,
        window_open_after,
        device_hash,
        device_used_after,
    )
    assert row is not None
    return row


async def device_of_user(db: Executor, token_hash: bytes, user_id: int, used_after: float) -> bool:
    """Whether ``token_hash`` is a device cookie of ``user_id`` used since ``used_after``."""
    found = await db.fetchval(
        "SELECT 1 FROM fundaments_devices WHERE token_hash = $1 AND user_id = $2 AND last_used_at >= $3",
        token_hash,
        user_id,
        used_after,
    )
    return found is not None


async def password_hash(db: Executor, user_id: int) -> str | None:
    value = await db.fetchval("SELECT password_hash FROM fundaments_users WHERE id = $1", user_id)
    return None if value is None else str(value)


def _claim_sql(table: str, key: str) -> str:
    # F = failures so far, restarting at 0 once an earlier lock has run out. The attempt that brings
    # F to the threshold sets the lock *now*, before its password is checked, so every concurrent
    # attempt after it is refused without a verification; a success then clears it.
    effective = (
        "(CASE WHEN locked_until IS NOT NULL AND locked_until <= $2::float8 THEN 0 ELSE failed_attempts END)"
    )
    duration = (
        "(CASE WHEN lock_count >= $5::int THEN $6::float8 ELSE $4::float8 * (1::bigint << lock_count) END)"
    )
    return (
        f"UPDATE {table} SET "  # noqa: S608 - table and key are constants of this module
        f"failed_attempts = {effective} + 1, "
        f"locked_until = CASE WHEN {effective} + 1 >= $3::int THEN $2::float8 + {duration} ELSE NULL END, "
        f"lock_count = CASE WHEN {effective} + 1 >= $3::int THEN lock_count + 1 ELSE lock_count END "
        f"WHERE {key} = $1 AND (locked_until IS NULL OR locked_until <= $2::float8) "
        "RETURNING failed_attempts, locked_until, lock_count"
    )


_CLAIM_USER = _claim_sql("fundaments_users", "id")
_CLAIM_DEVICE = _claim_sql("fundaments_devices", "token_hash")


async def claim_user_attempt(
    tx: Executor, user_id: int, now: float, threshold: int, lock: tuple[float, int, float]
) -> Row | None:
    """Count one attempt on the account before verifying it; None when the account is locked.

    ``lock`` is (base seconds, doublings before the cap, cap seconds).
    """
    return await tx.fetchrow(_CLAIM_USER, user_id, now, threshold, *lock)


async def claim_device_attempt(
    tx: Executor, token_hash: bytes, now: float, threshold: int, lock: tuple[float, int, float]
) -> Row | None:
    """The same on one device cookie's own counters."""
    return await tx.fetchrow(_CLAIM_DEVICE, token_hash, now, threshold, *lock)


async def release_user_attempt(tx: Executor, user_id: int) -> None:
    """Undo a claim that was not a wrong password (a disabled account, a full hashing pool)."""
    await tx.execute(
        "UPDATE fundaments_users SET failed_attempts = failed_attempts - 1 "
        "WHERE id = $1 AND failed_attempts > 0",
        user_id,
    )


async def release_device_attempt(tx: Executor, token_hash: bytes) -> None:
    await tx.execute(
        "UPDATE fundaments_devices SET failed_attempts = failed_attempts - 1 "
        "WHERE token_hash = $1 AND failed_attempts > 0",
        token_hash,
    )


async def reset_user_failures(tx: Executor, user_id: int, now: float) -> None:
    await tx.execute(
        "UPDATE fundaments_users SET failed_attempts = 0, lock_count = 0, locked_until = NULL, "
        "updated_at = $2 WHERE id = $1",
        user_id,
        now,
    )


async def replace_hash(tx: Executor, user_id: int, old_hash: str, new_hash: str, now: float) -> bool:
    """Store an upgraded hash unless the password changed meanwhile."""
    changed = await tx.execute(
        "UPDATE fundaments_users SET password_hash = $3, updated_at = $4 "
        "WHERE id = $1 AND password_hash = $2",
        user_id,
        old_hash,
        new_hash,
        now,
    )
    return changed > 0


async def unlock_user(tx: Executor, user_id: int, now: float) -> bool:
    changed = await tx.execute(
        "UPDATE fundaments_users SET failed_attempts = 0, lock_count = 0, locked_until = NULL, "
        "updated_at = $2 WHERE id = $1",
        user_id,
        now,
    )
    await tx.execute(
        "UPDATE fundaments_devices SET failed_attempts = 0, lock_count = 0, locked_until = NULL "
        "WHERE user_id = $1",
        user_id,
    )
    return changed > 0


async def set_password(
    tx: Executor, user_id: int, password_hash: str, now: float, *, must_change: bool = False
) -> bool:
    changed = await tx.execute(
        "UPDATE fundaments_users SET password_hash = $2, password_changed_at = $3, updated_at = $3, "
        "must_change_password = $4, privilege_epoch = privilege_epoch + 1 WHERE id = $1",
        user_id,
        password_hash,
        now,
        must_change,
    )
    return changed > 0


async def set_disabled(tx: Executor, user_id: int, disabled: bool, now: float) -> bool:
    # Disabling is a privilege change: bump the epoch so sessions issued before it stop counting.
    changed = await tx.execute(
        "UPDATE fundaments_users SET is_disabled = $2, updated_at = $3, "
        "privilege_epoch = privilege_epoch + (CASE WHEN $2 THEN 1 ELSE 0 END) WHERE id = $1",
        user_id,
        disabled,
        now,
    )
    return changed > 0


# --- device cookies ------------------------------------------------------------------------------


async def touch_device(tx: Executor, token_hash: bytes, now: float) -> None:
    await tx.execute(
        "UPDATE fundaments_devices SET failed_attempts = 0, lock_count = 0, locked_until = NULL, "
        "last_used_at = $2 WHERE token_hash = $1",
        token_hash,
        now,
    )


async def insert_device(tx: Executor, token_hash: bytes, user_id: int, now: float) -> None:
    await tx.execute(
        "INSERT INTO fundaments_devices (token_hash, user_id, failed_attempts, lock_count, created_at, "
        "last_used_at) VALUES ($1, $2, 0, 0, $3, $3)",
        token_hash,
        user_id,
        now,
    )


async def prune_devices(tx: Executor, user_id: int, keep: int) -> None:
    """Keep the newest ``keep`` devices of an account: logins without a cookie must not grow the table."""
    await tx.execute(
        "DELETE FROM fundaments_devices WHERE user_id = $1 AND token_hash NOT IN ("
        "SELECT token_hash FROM fundaments_devices WHERE user_id = $1 "
        "ORDER BY last_used_at DESC, created_at DESC LIMIT $2)",
        user_id,
        keep,
    )


# --- the per-IP throttle -------------------------------------------------------------------------


async def claim_ip_attempt(
    tx: Executor, ip_address: str, now: float, window: float, limit: int
) -> int | None:
    """Count one attempt from this IP before its password is verified; the new count, or None when
    the IP has used up its window (a new window starts once the old one ran out).

    One conditional upsert, like the account claim: however many attempts race, at most ``limit``
    per window get a place, in every process sharing the database.
    """
    value = await tx.fetchval(
        "INSERT INTO fundaments_ip_throttle AS t (ip_address, window_start, failures) VALUES ($1, $2, 1) "
        "ON CONFLICT (ip_address) DO UPDATE SET "
        "failures = CASE WHEN t.window_start + $3::float8 <= $2::float8 THEN 1 ELSE t.failures + 1 END, "
        "window_start = CASE WHEN t.window_start + $3::float8 <= $2::float8 THEN $2::float8 "
        "ELSE t.window_start END "
        "WHERE t.window_start + $3::float8 <= $2::float8 OR t.failures < $4::int "
        "RETURNING failures",
        ip_address,
        now,
        window,
        limit,
    )
    return None if value is None else int(value)


async def release_ip_attempt(tx: Executor, ip_address: str) -> None:
    """Undo an IP claim that was not a failure (the right password, a disabled account)."""
    await tx.execute(
        "UPDATE fundaments_ip_throttle SET failures = failures - 1 WHERE ip_address = $1 AND failures > 0",
        ip_address,
    )


async def prune_ip_throttle(tx: Executor, window_start_before: float) -> int:
    return await tx.execute(
        "DELETE FROM fundaments_ip_throttle WHERE window_start <= $1", window_start_before
    )
