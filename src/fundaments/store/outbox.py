"""Mail-outbox queries: enqueue in the caller's transaction, claim due mails under a lease, settle.

A sender claims a batch by setting ``claimed_until`` (a lease) in one statement; on PostgreSQL the
rows are picked ``FOR UPDATE SKIP LOCKED`` so several instances drain one outbox without sending a
mail twice; on SQLite the statement holds the write lock. A sender that dies mid-batch leaves its
lease to expire, and the mail is sent again: delivery is at least once.
"""

from __future__ import annotations

from fundaments.store.base import Executor, Row


async def insert(
    tx: Executor, kind: str, recipient: str, message: str, now: float, *, not_before: float | None = None
) -> int:
    value = await tx.fetchval(
        "INSERT INTO fundaments_mail_outbox (created_at, kind, recipient, message, attempts, "
        "next_attempt_at) VALUES ($1, $2, $3, $4, 0, $5) RETURNING id",
        now,
        kind,
        recipient,
        message,
        now if not_before is None else not_before,
    )
    return int(value)


async def claim_due(tx: Executor, now: float, lease_until: float, limit: int) -> list[Row]:
    """Lease up to ``limit`` mails that are due and not leased by a live sender, oldest first."""
    return await tx.fetch(
        "UPDATE fundaments_mail_outbox SET claimed_until = $2, attempts = attempts + 1 "
        "WHERE id IN (SELECT id FROM fundaments_mail_outbox WHERE failed_at IS NULL "
        "AND next_attempt_at <= $1 AND (claimed_until IS NULL OR claimed_until <= $1) "
        "ORDER BY next_attempt_at, id LIMIT $3 FOR UPDATE SKIP LOCKED) "
        "RETURNING id, kind, recipient, message, attempts, created_at",
        now,
        lease_until,
        limit,
    )


async def delete_sent(tx: Executor, mail_id: int, lease_until: float) -> bool:
    """Forget a mail the server accepted; False if the lease was lost (another sender has it now)."""
    changed = await tx.execute(
        "DELETE FROM fundaments_mail_outbox WHERE id = $1 AND claimed_until = $2", mail_id, lease_until
    )
    return changed == 1


async def retry_later(tx: Executor, mail_id: int, lease_until: float, at: float, error: str) -> None:
    await tx.execute(
        "UPDATE fundaments_mail_outbox SET claimed_until = NULL, next_attempt_at = $3, last_error = $4 "
        "WHERE id = $1 AND claimed_until = $2",
        mail_id,
        lease_until,
        at,
        error,
    )


async def give_up(tx: Executor, mail_id: int, lease_until: float, now: float, error: str) -> None:
    """Stop retrying; the row stays (without its message) for the operator to see."""
    await tx.execute(
        "UPDATE fundaments_mail_outbox SET claimed_until = NULL, failed_at = $3, last_error = $4, "
        "message = '' WHERE id = $1 AND claimed_until = $2",
        mail_id,
        lease_until,
        now,
        error,
    )


async def next_due(db: Executor) -> float | None:
    """When the next waiting mail is due (None: nothing waits)."""
    value = await db.fetchval(
        "SELECT min(CASE WHEN claimed_until IS NULL OR claimed_until < next_attempt_at "
        "THEN next_attempt_at ELSE claimed_until END) FROM fundaments_mail_outbox WHERE failed_at IS NULL"
    )
    return None if value is None else float(value)


async def counts(db: Executor) -> tuple[int, int]:
    """(mails waiting, mails given up on)."""
    row = await db.fetchrow(
        "SELECT count(*) FILTER (WHERE failed_at IS NULL) AS waiting, "
        "count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed FROM fundaments_mail_outbox"
    )
    assert row is not None
    return int(row["waiting"]), int(row["failed"])


async def status(db: Executor, mail_id: int, kind: str, recipient: str) -> Row | None:
    """The outbox row of a waiting or given-up mail; None once it was sent (its row is deleted).

    ``kind`` and ``recipient`` must match too: SQLite may reuse the id of a deleted newest row.
    """
    return await db.fetchrow(
        "SELECT attempts, next_attempt_at, last_error, failed_at FROM fundaments_mail_outbox "
        "WHERE id = $1 AND kind = $2 AND recipient = $3",
        mail_id,
        kind,
        recipient,
    )
