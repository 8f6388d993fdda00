"""Multi-factor queries: TOTP secrets and their last accepted step, recovery codes, login challenges.

Every "use once" is one conditional statement, atomic across processes on both databases: a TOTP
step is accepted by ``UPDATE … SET last_step = $n WHERE last_step < $n`` (PostgreSQL re-checks the
condition after a concurrent writer commits; SQLite's ``BEGIN IMMEDIATE`` serialises writers), a
recovery code and a challenge are spent by ``DELETE … RETURNING``. The changed row count says who won.
"""

from __future__ import annotations

from fundaments.store.base import Executor, Row


# --- TOTP ---------------------------------------------------------------------------------------
async def begin_totp(
    tx: Executor, user_id: int, pending_secret: str, pending_until: float, context: str, now: float
) -> None:
    """Store a secret waiting for confirmation; the confirmed one (if any) stays active meanwhile."""
    await tx.execute(
        "INSERT INTO fundaments_mfa_totp (user_id, pending_secret, pending_until, secret_context, "
        "last_step, created_at) VALUES ($1, $2, $3, $4, 0, $5) "
        "ON CONFLICT (user_id) DO UPDATE SET pending_secret = $2, pending_until = $3, secret_context = $4",
        user_id,
        pending_secret,
        pending_until,
        context,
        now,
    )


async def totp_row(db: Executor, user_id: int) -> Row | None:
    return await db.fetchrow(
        "SELECT secret, pending_secret, pending_until, secret_context, last_step "
        "FROM fundaments_mfa_totp WHERE user_id = $1",
        user_id,
    )


async def confirm_totp(tx: Executor, user_id: int, pending_secret: str, step: int, now: float) -> bool:
    """Make the pending secret the active one, if it is still ``pending_secret``; the confirming
    code's step becomes the last accepted one (never lower than before)."""
    changed = await tx.execute(
        "UPDATE fundaments_mfa_totp SET secret = pending_secret, pending_secret = NULL, "
        "pending_until = NULL, confirmed_at = $4, "
        "last_step = CASE WHEN last_step > $3::bigint THEN last_step ELSE $3::bigint END "
        "WHERE user_id = $1 AND pending_secret = $2",
        user_id,
        pending_secret,
        step,
        now,
    )
    return changed == 1


async def accept_step(tx: Executor, user_id: int, secret: str, step: int) -> bool:
    """Record ``step`` as the last accepted one if it is later than the stored one and the secret is
    still ``secret``: False when another request (any process) accepted this step or a later one."""
    changed = await tx.execute(
        "UPDATE fundaments_mfa_totp SET last_step = $3 WHERE user_id = $1 AND secret = $2 AND last_step < $3",
        user_id,
        secret,
        step,
    )
    return changed == 1


async def has_totp(db: Executor, user_id: int) -> bool:
    value = await db.fetchval(
        "SELECT 1 FROM fundaments_mfa_totp WHERE user_id = $1 AND secret IS NOT NULL", user_id
    )
    return value is not None


async def disable_totp(tx: Executor, user_id: int) -> int:
    return await tx.execute("DELETE FROM fundaments_mfa_totp WHERE user_id = $1", user_id)


# --- recovery codes -----------------------------------------------------------------------------
async def replace_recovery_codes(
    tx: Executor, user_id: int, code_hashes: list[bytes], key_id: str, now: float
) -> None:
    """The account's recovery codes become ``code_hashes``: every earlier one dies."""
    await tx.execute("DELETE FROM fundaments_mfa_recovery_codes WHERE user_id = $1", user_id)
    await tx.executemany(
        "INSERT INTO fundaments_mfa_recovery_codes (user_id, code_hash, key_id, created_at) "
        "VALUES ($1, $2, $3, $4)",
        [(user_id, code_hash, key_id, now) for code_hash in code_hashes],
    )


async def spend_recovery_code(tx: Executor, user_id: int, code_hash: bytes, key_id: str) -> bool:
    row = await tx.fetchrow(
        "DELETE FROM fundaments_mfa_recovery_codes WHERE user_id = $1 AND code_hash = $2 AND key_id = $3 "
        "RETURNING id",
        user_id,
        code_hash,
        key_id,
    )
    return row is not None


async def recovery_codes_left(db: Executor, user_id: int) -> int:
    return int(
        await db.fetchval("SELECT COUNT(*) FROM fundaments_mfa_recovery_codes WHERE user_id = $1", user_id)
    )


async def delete_recovery_codes(tx: Executor, user_id: int) -> int:
    return await tx.execute("DELETE FROM fundaments_mfa_recovery_codes WHERE user_id = $1", user_id)


# --- login challenges ---------------------------------------------------------------------------
async def insert_challenge(
    tx: Executor,
    token_hash: bytes,
    user_id: int,
    ip_address: str,
    user_agent: str,
    device_hash: bytes | None,
    devices: int,
    attempts: int,
    now: float,
    expires_at: float,
) -> None:
    await tx.execute(
        "INSERT INTO fundaments_mfa_challenges (token_hash, user_id, ip_address, user_agent, device_hash, "
        "devices, attempts_left, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        token_hash,
        user_id,
        ip_address,
        user_agent,
        device_hash,
        devices,
        attempts,
        now,
        expires_at,
    )


async def claim_challenge_attempt(tx: Executor, token_hash: bytes, now: float) -> Row | None:
    """Take one attempt of a live challenge before its code is checked: the challenge (with the
    attempts left after this one), or None when it is unknown, spent, expired or out of attempts."""
    return await tx.fetchrow(
        "UPDATE fundaments_mfa_challenges SET attempts_left = attempts_left - 1 "
        "WHERE token_hash = $1 AND attempts_left > 0 AND expires_at > $2 "
        "RETURNING user_id, ip_address, user_agent, device_hash, devices, attempts_left",
        token_hash,
        now,
    )


async def spend_challenge(tx: Executor, token_hash: bytes) -> bool:
    row = await tx.fetchrow(
        "DELETE FROM fundaments_mfa_challenges WHERE token_hash = $1 RETURNING user_id", token_hash
    )
    return row is not None


async def delete_challenges(tx: Executor, user_id: int) -> int:
    return await tx.execute("DELETE FROM fundaments_mfa_challenges WHERE user_id = $1", user_id)


async def purge_expired_challenges(tx: Executor, now: float) -> int:
    return await tx.execute(
        "DELETE FROM fundaments_mfa_challenges WHERE expires_at <= $1 OR attempts_left <= 0", now
    )
