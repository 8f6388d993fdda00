"""Account queries: users, device cookies and the per-IP throttle.

Brute-force counters change with single conditional statements (``UPDATE … RETURNING``), never
read-modify-write, so that concurrent attempts from any number of processes cannot all slip past
the limit: an attempt must *claim* a place below the threshold before its password is verified.
"""

from __future__ import annotations

from fundaments.store.base import Executor, Row, like_containing

# --- users ---------------------------------------------------------------------------------------

# What every read of an account returns (fundaments.models.User without its roles).
USER_COLUMNS = (
    "id, username, is_disabled, must_change_password, created_at, email, email_verified, "
    "locked_until, last_login_at"
)


async def insert_user(
    tx: Executor,
    username: str,
    lookalike_key: str,
    password_hash: str,
    must_change_password: bool,
    now: float,
    email: str | None = None,
    email_key: str | None = None,
) -> Row | None:
    """The new account's row, or None when its username, look-alike key or address is taken — an
    address counts as taken by an account named so too, and a username by an account with that
    address, so that a login name means one account whatever ``LOGIN_WITH`` allows.

    ``ON CONFLICT DO NOTHING`` (SQLite and PostgreSQL alike) rather than a failing statement:
    a PostgreSQL transaction survives it, and the caller says which name is taken.
    """
    return await tx.fetchrow(
        "INSERT INTO fundaments_users (username, username_skeleton, password_hash, is_disabled, "  # noqa: S608 - USER_COLUMNS is a constant
        "must_change_password, failed_attempts, lock_count, privilege_epoch, created_at, updated_at, "
        "password_changed_at, email, email_key, email_verified) "
        "SELECT $1::varchar, $2, $3, FALSE, $4, 0, 0, 0, $5, $5, $5, $6::varchar, $7::varchar, FALSE "
        "WHERE NOT EXISTS (SELECT 1 FROM fundaments_users o WHERE o.email_key = $1::varchar "
        "OR ($7::varchar IS NOT NULL AND o.username = $7::varchar)) "
        f"ON CONFLICT DO NOTHING RETURNING {USER_COLUMNS}",
        username,
        lookalike_key,
        password_hash,
        must_change_password,
        now,
        email,
        email_key,
    )


async def name_holder(db: Executor, username: str, lookalike_key: str) -> Row | None:
    """The account holding ``username``, or failing that ``lookalike_key``, or having ``username``
    as its address: (id, username, email_key)."""
    return await db.fetchrow(
        "SELECT id, username, email_key FROM fundaments_users "
        "WHERE username = $1 OR username_skeleton = $2 OR email_key = $1 "
        "ORDER BY CASE WHEN username = $1 THEN 0 WHEN username_skeleton = $2 THEN 1 ELSE 2 END LIMIT 1",
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
    return await db.fetchrow(f"SELECT {USER_COLUMNS} FROM fundaments_users WHERE id = $1", user_id)  # noqa: S608 - USER_COLUMNS is a constant of this module


async def user_by_username(db: Executor, username: str) -> Row | None:
    return await db.fetchrow(f"SELECT {USER_COLUMNS} FROM fundaments_users WHERE username = $1", username)  # noqa: S608 - USER_COLUMNS is a constant of this module


async def usernames(db: Executor, user_ids: list[int]) -> list[Row]:
    """(id, username) of the accounts among ``user_ids`` (at most a few hundred: one placeholder each)."""
    if not user_ids:
        return []
    placeholders = ", ".join(f"${i + 1}" for i in range(len(user_ids)))
    return await db.fetch(
        f"SELECT id, username FROM fundaments_users WHERE id IN ({placeholders})",  # noqa: S608 - placeholders only
        *user_ids,
    )


async def user_by_email_key(db: Executor, email_key: str) -> Row | None:
    return await db.fetchrow(f"SELECT {USER_COLUMNS} FROM fundaments_users WHERE email_key = $1", email_key)  # noqa: S608 - USER_COLUMNS is a constant of this module


async def list_users(db: Executor, limit: int, after_id: int, search: str | None = None) -> list[Row]:
    """Accounts in id order after ``after_id`` (keyset pagination); ``search`` matches anywhere in
    the (normalized) username or the address, case-insensitively."""
    if not search:
        return await db.fetch(
            f"SELECT {USER_COLUMNS} FROM fundaments_users WHERE id > $1 ORDER BY id LIMIT $2",  # noqa: S608 - USER_COLUMNS is a constant of this module
            after_id,
            limit,
        )
    return await db.fetch(
        f"SELECT {USER_COLUMNS} FROM fundaments_users WHERE id > $1 "  # noqa: S608 - USER_COLUMNS is a constant of this module
        "AND (username LIKE $3 ESCAPE '\\' OR email_key LIKE $3 ESCAPE '\\') ORDER BY id LIMIT $2",
        after_id,
        limit,
        like_containing(search),
    )


async def role_names_of(db: Executor, user_ids: list[int]) -> dict[int, list[str]]:
    """The role names each of ``user_ids`` holds directly, in one query (ids are parameters)."""
    if not user_ids:
        return {}
    marks = ", ".join(f"${i}" for i in range(1, len(user_ids) + 1))
    rows = await db.fetch(
        "SELECT ur.user_id, r.name FROM fundaments_user_roles ur "  # noqa: S608 - placeholders only
        f"JOIN fundaments_roles r ON r.id = ur.role_id WHERE ur.user_id IN ({marks}) ORDER BY r.name",
        *user_ids,
    )
    found: dict[int, list[str]] = {}
    for row in rows:
        found.setdefault(int(row["user_id"]), []).append(row["name"])
    return found


async def set_email(tx: Executor, user_id: int, email: str | None, email_key: str | None, now: float) -> bool:
    """Give an account an address (unverified) or none; False when the account does not exist.

    The caller checks beforehand that no other account holds ``email_key``; the unique index
    refuses a race (the transaction fails).
    """
    changed = await tx.execute(
        "UPDATE fundaments_users SET email = $2, email_key = $3, email_verified = FALSE, updated_at = $4 "
        "WHERE id = $1",
        user_id,
        email,
        email_key,
        now,
    )
    return changed > 0


async def mark_email_verified(tx: Executor, user_id: int, email_key: str, now: float) -> bool:
    """Mark the address verified if it is still ``email_key``."""
    changed = await tx.execute(
        "UPDATE fundaments_users SET email_verified = TRUE, updated_at = $3 WHERE id = $1 AND email_key = $2",
        user_id,
        email_key,
        now,
    )
    return changed > 0


async def email_key_holder(db: Executor, email_key: str) -> int | None:
    """The account whose address, or whose username, is ``email_key`` (one name, one account)."""
    value = await db.fetchval(
        "SELECT id FROM fundaments_users WHERE email_key = $1 OR username = $1 LIMIT 1", email_key
    )
    return None if value is None else int(value)


async def delete_user(tx: Executor, user_id: int) -> Row | None:
    """Delete an account; its sessions, devices, roles and tokens go with it (their foreign keys
    are ON DELETE CASCADE, enforced on both databases). The deleted row's id and username, or None."""
    return await tx.fetchrow("DELETE FROM fundaments_users WHERE id = $1 RETURNING id, username", user_id)


async def login_gate(
    db: Executor,
    username: str,
    ip_key: str,
    window_open_after: float,
    device_hash: bytes | None,
    device_used_after: float,
    email_key: str = "",
) -> Row:
    """In one read: the client IP's failures in its open window (``ip_failures``, NULL for none),
    the account a login names by username or by ``email_key`` (``id`` NULL when there is none;
    "" is no one's) and whether ``device_hash`` is a device cookie of that account used since
    ``device_used_after`` (``device_hash`` NULL if not). No address equals another account's
    username (:func:`email_key_holder`), so at most one account matches."""
    row = await db.fetchrow(
        "SELECT t.failures AS ip_failures, u.id, u.username, u.is_disabled, u.must_change_password, "
        "u.created_at, u.email, u.email_verified, u.locked_until, u.last_login_at, "
        "u.password_hash, d.token_hash AS device_hash, "
        "(SELECT COUNT(*) FROM fundaments_devices c WHERE c.user_id = u.id) AS devices "
        "FROM (SELECT 1 AS one) AS g "
        "LEFT JOIN fundaments_users u ON (u.username = $1 OR u.email_key = $6) "
        "LEFT JOIN fundaments_ip_throttle t ON t.ip_address = $2 AND t.window_start > $3::float8 "
        "LEFT JOIN fundaments_devices d ON d.token_hash = $4::bytea AND d.user_id = u.id "
        "AND d.last_used_at >= $5::float8",
        username,
        ip_key,
        window_open_after,
        device_hash,
        device_used_after,
        email_key,
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


async def record_login(tx: Executor, user_id: int, now: float, *, reset_failures: bool) -> None:
    """A successful login, in one write: the last-login time and, with ``reset_failures``, the
    failure counter, backoff and lock cleared."""
    if reset_failures:
        await tx.execute(
            "UPDATE fundaments_users SET failed_attempts = 0, lock_count = 0, locked_until = NULL, "
            "updated_at = $2, last_login_at = $2 WHERE id = $1",
            user_id,
            now,
        )
    else:
        await tx.execute("UPDATE fundaments_users SET last_login_at = $2 WHERE id = $1", user_id, now)


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


async def lock_state(tx: Executor, user_id: int, now: float) -> bool | None:
    """Whether the account or one of its devices is locked at ``now``; None: no such account.
    Locks the account's row (PostgreSQL) so that a concurrent unlock waits and then finds it clear."""
    locked_until = await tx.fetchrow(
        "SELECT locked_until FROM fundaments_users WHERE id = $1 FOR UPDATE", user_id
    )
    if locked_until is None:
        return None
    if locked_until["locked_until"] is not None and locked_until["locked_until"] > now:
        return True
    device = await tx.fetchval(
        "SELECT 1 FROM fundaments_devices WHERE user_id = $1 AND locked_until > $2 LIMIT 1", user_id, now
    )
    return device is not None


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
