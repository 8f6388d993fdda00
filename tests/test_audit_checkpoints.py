"""Audit checkpoints: a MAC chain over the hash chain's head, incremental verification from it, and
the attacks of issue 14 (section 2) by someone who can write the database but has no master key.

Every tamper test edits the real SQLite file or PostgreSQL database directly, the way an attacker
with database access would, and each was checked to fail with its protection removed (named in the
test's docstring).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from typing import Any

import pytest

from fundaments import initialize_fundaments
from fundaments.audit import (
    CHECKPOINT_PURPOSE,
    EVENT_FIELDS,
    AuditTrail,
    canonical,
    chain_hash,
    checkpoint_mac,
)
from fundaments.bootstrap import Fundaments
from fundaments.config import parse_database_url
from fundaments.store import Database, open_database

EVERY = 10


@pytest.fixture
async def started(make_settings, clock):
    fundaments = await initialize_fundaments(
        make_settings(audit_checkpoint_every=EVERY), clock=clock, configure_logs=False
    )
    try:
        yield fundaments
    finally:
        await fundaments.close()


def fresh_trail(fundaments: Fundaments, clock: Any) -> AuditTrail:
    """A second process on the same database: same keys, no memory of earlier verifications."""
    return AuditTrail(
        fundaments["db"],
        clock,
        checkpoint_keys=fundaments["encryption"].purpose_keys(CHECKPOINT_PURPOSE),
        checkpoint_every=EVERY,
    )


async def record(audit: AuditTrail, count: int) -> list[int]:
    ids = []
    for n in range(count):
        event_id = await audit.record("test.event", details={"n": n})
        assert event_id is not None
        ids.append(event_id)
    return ids


async def grow_to(audit: AuditTrail, db: Database, events: int) -> list[int]:
    """Record events until the trail holds ``events`` (start-up may have written some)."""
    have = int(await db.fetchval("SELECT count(*) FROM fundaments_audit_events"))
    assert have < events
    await record(audit, events - have)
    return [int(r["id"]) for r in await db.fetch("SELECT id FROM fundaments_audit_events ORDER BY id")]


async def checkpoints(db: Database) -> list[Any]:
    return await db.fetch("SELECT * FROM fundaments_audit_checkpoints ORDER BY id")


async def rechain_from(db: Database, first_id: int) -> None:
    """What an attacker does after an edit: recompute every hash from ``first_id`` to the head, so the
    hash chain alone looks intact."""
    prev_row = await db.fetchrow(
        "SELECT hash FROM fundaments_audit_events WHERE id < $1 ORDER BY id DESC LIMIT 1", first_id
    )
    prev = "0" * 64 if prev_row is None else prev_row["hash"]
    rows = await db.fetch("SELECT * FROM fundaments_audit_events WHERE id >= $1 ORDER BY id", first_id)
    async with db.transaction() as tx:
        for row in rows:
            digest = chain_hash(prev, canonical({k: row[k] for k in EVENT_FIELDS}))
            await tx.execute(
                "UPDATE fundaments_audit_events SET prev_hash = $1, hash = $2 WHERE id = $3",
                prev,
                digest,
                row["id"],
            )
            prev = digest


async def event_at_position(db: Database, position: int) -> int:
    return int(
        await db.fetchval(
            "SELECT id FROM fundaments_audit_events ORDER BY id LIMIT 1 OFFSET $1", position - 1
        )
    )


# --- what is written -------------------------------------------------------------------------------


async def test_a_checkpoint_every_n_events_pins_head_and_count_under_a_mac_chain(started) -> None:
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 3 * EVERY + 5)
    rows = await checkpoints(db)
    assert [int(r["events"]) for r in rows] == [EVERY, 2 * EVERY, 3 * EVERY]
    (key_id, key), *_ = started["encryption"].purpose_keys(CHECKPOINT_PURPOSE)
    prev_mac = None
    for row in rows:
        position = int(row["events"])
        assert int(row["event_id"]) == ids[position - 1]
        assert row["event_hash"] == await db.fetchval(
            "SELECT hash FROM fundaments_audit_events WHERE id = $1", row["event_id"]
        )
        assert row["key_id"] == key_id
        expected = checkpoint_mac(
            key,
            key_id=key_id,
            prev_mac=prev_mac,
            event_id=int(row["event_id"]),
            event_hash=row["event_hash"],
            events=position,
            created_at=float(row["created_at"]),
        )
        assert hmac.compare_digest(row["mac"], expected)
        prev_mac = row["mac"]


async def test_a_rolled_back_event_writes_no_checkpoint(started) -> None:
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    await grow_to(audit, db, EVERY - 1)
    with pytest.raises(RuntimeError):
        async with db.transaction() as tx:
            await audit.record("test.event", tx=tx)
            raise RuntimeError("the change failed")
    assert await checkpoints(db) == []
    await record(audit, 1)
    assert [int(r["events"]) for r in await checkpoints(db)] == [EVERY]


async def test_concurrent_writers_keep_one_chain_and_one_checkpoint_chain(
    started, database_url, clock
) -> None:
    """Four instances (each its own connection pool or SQLite writer) appending at once."""
    keys = started["encryption"].purpose_keys(CHECKPOINT_PURPOSE)
    databases = [await open_database(parse_database_url(database_url)) for _ in range(4)]
    try:
        trails = [AuditTrail(db, clock, checkpoint_keys=keys, checkpoint_every=EVERY) for db in databases]
        await asyncio.gather(*(record(trail, 25) for trail in trails))
    finally:
        for db in databases:
            await db.close()
    db = started["db"]
    total = int(await db.fetchval("SELECT count(*) FROM fundaments_audit_events"))
    assert [int(r["events"]) for r in await checkpoints(db)] == list(range(EVERY, total + 1, EVERY))
    result = await started["audit"].verify_chain(full=True)
    assert result, result
    assert result.events_checked == total and result.checkpoints_checked == total // EVERY


# --- incremental and full verification ------------------------------------------------------------


async def test_incremental_verification_hashes_only_the_new_events(started, clock) -> None:
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    await grow_to(audit, db, 3 * EVERY + 4)
    first = await audit.verify_chain()
    assert first and first.events_checked == 3 * EVERY + 4 and not first.full
    await record(audit, 3)
    second = await audit.verify_chain()
    assert second and second.events_hashed == 3 and second.events_checked == 3 * EVERY + 7
    assert audit.last_verification is second and second.verified_at == clock.now()
    # A fresh process starts at the newest checkpoint whose MAC verifies, not at the first event.
    fresh = await fresh_trail(started, clock).verify_chain()
    assert fresh and fresh.events_hashed == 7 and fresh.events_checked == 3 * EVERY + 7
    full = await audit.verify_chain(full=True)
    assert full.full and full.events_hashed == 3 * EVERY + 7 and full.checkpoints_checked == 3


async def test_full_verification_reports_progress_to_the_end(started) -> None:
    audit: AuditTrail = started["audit"]
    await grow_to(audit, started["db"], 2 * EVERY + 1)
    calls: list[tuple[int, int]] = []
    result = await audit.verify_chain(full=True, progress=lambda done, total: calls.append((done, total)))
    assert result
    assert calls[0] == (0, 2 * EVERY + 1) and calls[-1] == (2 * EVERY + 1, 2 * EVERY + 1)


async def test_a_break_stays_reported_until_a_full_verification_passes(started) -> None:
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 2 * EVERY + 3)
    await db.execute("UPDATE fundaments_audit_events SET outcome = 'failure' WHERE id = $1", ids[2])
    broken = await audit.verify_chain(full=True)
    assert not broken and broken.broken_event_id == ids[2]
    await record(audit, 1)
    assert await audit.verify_chain() is broken  # the cheap view does not forget it
    assert started["security"].last_audit_verification is broken


async def test_concurrent_full_verifications_share_one_run(started) -> None:
    """A flood of "verify everything" clicks costs one full run, not one each.
    Mutation checked: without the shared future in verify_chain the results are distinct objects."""
    audit: AuditTrail = started["audit"]
    await grow_to(audit, started["db"], EVERY + 1)
    results = await asyncio.gather(*(audit.verify_chain(full=True) for _ in range(5)))
    assert all(result is results[0] for result in results) and results[0].full


# --- the attacks (issue 14, section 2) -------------------------------------------------------------


async def test_editing_only_prev_hash_is_detected(started, clock) -> None:
    """Mutation checked: without the link comparison in _check_events this passes unnoticed (the
    recomputed hash uses the chain's own previous hash, not the stored prev_hash)."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 2 * EVERY + 5)
    target = ids[2 * EVERY + 2]  # after the newest checkpoint: in the incremental window
    await db.execute("UPDATE fundaments_audit_events SET prev_hash = $1 WHERE id = $2", "f" * 64, target)
    result = await audit.verify_chain(full=True)
    assert not result
    assert (result.broken_event_id, result.reason) == (target, "link to the previous event is broken")
    fresh = await fresh_trail(started, clock).verify_chain()  # inside the incremental window too
    assert not fresh and fresh.broken_event_id == target


async def test_deleting_a_middle_event_and_relinking_is_detected_by_the_checkpoint(started, clock) -> None:
    """The attacker deletes an event and recomputes every later hash: the chain itself is
    consistent, but the checkpoint after the gap pins another hash and count.
    Mutation checked: without the pinned-hash and count comparisons in _walk, full verification passes."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 2 * EVERY + 5)
    victim = ids[EVERY + 3]
    await db.execute("DELETE FROM fundaments_audit_events WHERE id = $1", victim)
    await rechain_from(db, ids[EVERY + 4])
    result = await audit.verify_chain(full=True)
    assert not result
    second = (await checkpoints(db))[1]
    assert result.broken_checkpoint_id == second["id"] and result.broken_event_id == ids[2 * EVERY - 1]
    assert "pins" in (result.reason or "")


async def test_relinking_and_rewriting_the_checkpoints_is_detected_by_their_mac(started, clock) -> None:
    """The attacker also rewrites the checkpoints' hash and count to match: without the key the MAC
    cannot follow. Mutation checked: with _checkpoint_problem returning None, both verifications pass."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 2 * EVERY + 5)
    await db.execute("DELETE FROM fundaments_audit_events WHERE id = $1", ids[3])
    await rechain_from(db, ids[4])
    for row in await checkpoints(db):
        new_hash = await db.fetchval(
            "SELECT hash FROM fundaments_audit_events WHERE id = $1", row["event_id"]
        )
        await db.execute(
            "UPDATE fundaments_audit_checkpoints SET event_hash = $1, events = $2 WHERE id = $3",
            new_hash,
            int(row["events"]) - 1,
            row["id"],
        )
    first = (await checkpoints(db))[0]
    result = await audit.verify_chain(full=True)
    assert not result and result.broken_checkpoint_id == first["id"]
    assert "does not verify" in (result.reason or "")
    fresh = await fresh_trail(started, clock).verify_chain()  # the newest checkpoint fails alone
    assert not fresh and fresh.broken_checkpoint_id == (await checkpoints(db))[-1]["id"]


async def test_a_checkpoint_forged_without_the_key_is_detected(started, clock) -> None:
    """The attacker rewrites an event, recomputes the chain and appends a checkpoint over the forged
    head with a MAC under a key of its own (and, second variant, with no MAC at all).
    Mutation checked: with _checkpoint_problem returning None the fresh incremental run passes."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, EVERY + 5)
    await db.execute("UPDATE fundaments_audit_events SET outcome = 'success' WHERE id = $1", ids[EVERY + 1])
    await rechain_from(db, ids[EVERY + 1])
    head = await db.fetchrow("SELECT id, hash FROM fundaments_audit_events ORDER BY id DESC LIMIT 1")
    real = (await checkpoints(db))[-1]
    key_id = started["encryption"].key_id
    guessed = hashlib.sha256(b"attacker's key").digest()
    mac = checkpoint_mac(guessed, key_id=key_id, prev_mac=real["mac"], event_id=int(head["id"]),
                         event_hash=head["hash"], events=EVERY + 5, created_at=1.0)  # fmt: skip
    for forged_mac in (mac, None):
        await db.execute("DELETE FROM fundaments_audit_checkpoints WHERE id > $1", real["id"])
        await db.execute(
            "INSERT INTO fundaments_audit_checkpoints (event_id, event_hash, events, created_at, key_id, mac) "
            "VALUES ($1, $2, $3, $4, $5, $6)",
            head["id"], head["hash"], EVERY + 5, 1.0, key_id, forged_mac,
        )  # fmt: skip
        forged = (await checkpoints(db))[-1]
        fresh = await fresh_trail(started, clock).verify_chain()
        assert not fresh and fresh.broken_checkpoint_id == forged["id"], fresh
        full = await fresh_trail(started, clock).verify_chain(full=True)
        assert not full and full.broken_checkpoint_id == forged["id"], full


async def test_deleting_the_first_checkpoint_breaks_the_mac_chain(started) -> None:
    """Mutation checked: a MAC over the checkpoint's own fields only (prev_mac left out) passes."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    await grow_to(audit, db, 2 * EVERY + 1)
    first, second = await checkpoints(db)
    await db.execute("DELETE FROM fundaments_audit_checkpoints WHERE id = $1", first["id"])
    result = await audit.verify_chain(full=True)
    assert not result and result.broken_checkpoint_id == second["id"]


async def truncate(db: Database, ids: list[int], keep: int, *, checkpoints_after: int | None) -> None:
    """Delete every event after the ``keep``-th, and the checkpoints pinning events after
    ``checkpoints_after`` (None: keep every checkpoint)."""
    await db.execute("DELETE FROM fundaments_audit_events WHERE id > $1", ids[keep - 1])
    if checkpoints_after is not None:
        await db.execute(
            "DELETE FROM fundaments_audit_checkpoints WHERE event_id > $1", ids[checkpoints_after - 1]
        )


async def test_truncating_the_tail_is_detected_against_the_high_water_mark(started, clock) -> None:
    """The newest events and the newest checkpoint go; this process verified them before.
    Mutation checked: without the mark's event check in _starting_point the incremental run passes."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 2 * EVERY + 5)
    assert await audit.verify_chain()
    await truncate(db, ids, EVERY + 5, checkpoints_after=EVERY)
    result = await audit.verify_chain()
    assert not result and result.broken_event_id == ids[-1] and "truncated" in (result.reason or "")
    # The documented limit: a process that never saw the lost tail cannot tell from the database.
    assert await fresh_trail(started, clock).verify_chain(full=True)


async def test_truncating_below_a_remaining_checkpoint_is_detected(started, clock) -> None:
    """The events go but a checkpoint pinning one of them stays.
    Mutation checked: without the pinned-event check in _starting_point the fresh run passes."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 2 * EVERY + 5)
    await truncate(db, ids, EVERY + 5, checkpoints_after=None)
    pinning = (await checkpoints(db))[-1]
    fresh = await fresh_trail(started, clock).verify_chain()
    assert not fresh and fresh.broken_checkpoint_id == pinning["id"]
    full = await fresh_trail(started, clock).verify_chain(full=True)
    assert not full and full.broken_checkpoint_id == pinning["id"]


async def test_deleting_the_newest_checkpoint_alone_is_detected_by_the_missing_checkpoint(
    started, clock
) -> None:
    """The newest checkpoint goes, the events stay: more events follow the newest checkpoint left
    than the setting allows. Mutation checked: without the gap rule in _verify both runs pass."""
    audit: AuditTrail = started["audit"]
    db: Database = started["db"]
    ids = await grow_to(audit, db, 2 * EVERY + 5)
    await db.execute("DELETE FROM fundaments_audit_checkpoints WHERE event_id > $1", ids[EVERY - 1])
    fresh = await fresh_trail(started, clock).verify_chain()
    assert not fresh and "no checkpoint covers the newest" in (fresh.reason or "")
    full = await fresh_trail(started, clock).verify_chain(full=True)
    assert not full and "no checkpoint covers the newest" in (full.reason or "")


# --- keys ------------------------------------------------------------------------------------------


async def test_checkpoints_under_a_retired_master_key_verify_after_rotation(make_settings, clock) -> None:
    old_key = "an-old-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
    new_key = "a-new-master-key-0123456789abcdefghijklmnopqrstuvwxyz!"
    async with await initialize_fundaments(
        make_settings(audit_checkpoint_every=EVERY, master_encryption_key=old_key),
        clock=clock,
        configure_logs=False,
    ) as before:
        await grow_to(before["audit"], before["db"], EVERY + 1)
        old_id = before["encryption"].key_id
    rotated = make_settings(
        audit_checkpoint_every=EVERY, master_encryption_key=new_key, master_encryption_key_previous=old_key
    )
    async with await initialize_fundaments(rotated, clock=clock, configure_logs=False) as after:
        await grow_to(after["audit"], after["db"], 2 * EVERY + 1)
        rows = await checkpoints(after["db"])
        assert [r["key_id"] for r in rows] == [old_id, after["encryption"].key_id]
        result = await after["security"].verify_audit_chain(full=True)
        assert result and result.checkpoints_checked == 2
    dropped = make_settings(audit_checkpoint_every=EVERY, master_encryption_key=new_key)
    async with await initialize_fundaments(dropped, clock=clock, configure_logs=False) as later:
        result = await later["security"].verify_audit_chain(full=True)
        assert not result and "MASTER_ENCRYPTION_KEY_PREVIOUS" in (result.reason or "")


# --- the console -----------------------------------------------------------------------------------

from test_web_console import Browser, console, settings, signed_in_admin  # noqa: E402,F401 - console, settings: fixtures


async def test_console_shows_the_incremental_result_and_verifies_everything_on_post(
    console,  # noqa: F811 - the fixture imported above
    fundaments,
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    page = await admin.get("/admin/audit")
    assert "Audit chain intact" in page.text and "not run since this server started" in page.text
    assert fundaments.security.last_audit_verification is not None
    assert not fundaments.security.last_audit_verification.full
    page = await admin.post("/admin/audit/verify")
    assert page.url.path == "/admin/audit" and "Full verification: intact" in page.text
    full = fundaments.security.last_full_audit_verification
    assert full and full.full and full.events_hashed == full.events_checked
    await admin.close()


async def test_verify_everything_needs_its_permission_and_the_csrf_token(
    console,  # noqa: F811 - the fixture imported above
    fundaments,
) -> None:
    """Mutation checked: with audit_verify_all asking for AUDIT_PERMISSION only, the auditor's POST runs."""
    app, password = console
    admin = await signed_in_admin(app, password)
    security = fundaments.security
    await security.create_role("auditor", permissions=["console:audit"])
    await security.register_user("auditor", "a reviewer's long passphrase", roles=["auditor"])
    await admin.close()
    auditor = Browser(app, ip="203.0.113.9")
    await auditor.get("/login")
    await auditor.post("/login", username="auditor", password="a reviewer's long passphrase")
    page = await auditor.get("/admin/audit")
    assert page.status_code == 200 and 'id="verify-all"' not in page.text
    refused = await auditor.post("/admin/audit/verify")
    assert refused.status_code == 403
    assert security.last_full_audit_verification is None
    forged = await auditor.http.post("/admin/audit/verify", headers={"origin": "https://console.test"})
    assert forged.status_code == 403 and security.last_full_audit_verification is None
    await auditor.close()


# --- the command -----------------------------------------------------------------------------------

from test_cli_admin import cli, with_security  # noqa: E402,F401 - the cli fixture


def test_cli_verify_full_checks_what_the_incremental_run_skips(
    cli,  # noqa: F811 - the fixture imported above
    monkeypatch,
) -> None:
    """An edit before the newest checkpoint: the cheap run (from the checkpoint) cannot see it, --full does."""
    monkeypatch.setenv("AUDIT_CHECKPOINT_EVERY", str(EVERY))

    async def fill_and_tamper(security: Any) -> None:
        for n in range(2 * EVERY):
            await security._audit.record("test.event", details={"n": n})
        db = security._db  # the test plays the attacker with database access
        first = await db.fetchval("SELECT min(id) FROM fundaments_audit_events")
        await db.execute("UPDATE fundaments_audit_events SET outcome = 'forged' WHERE id = $1", first)

    with_security(fill_and_tamper)
    cheap = cli("audit", "verify")
    assert cheap.exit_code == 0 and "audit chain intact" in cheap.stdout
    full = cli("audit", "verify", "--full")
    assert full.exit_code == 1 and "event content does not match its hash" in full.stdout
