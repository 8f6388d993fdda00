"""The audit trail: hash chain, tamper evidence, concurrent appends, log lines that cannot be forged."""

from __future__ import annotations

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest

from fundaments.audit import AuditTrail

APPENDER = """
import asyncio, sys
from fundaments.audit import AuditTrail
from fundaments.clock import SystemClock
from fundaments.config import parse_database_url
from fundaments.store import open_database

async def main():
    db = await open_database(parse_database_url(sys.argv[1]))
    audit = AuditTrail(db, SystemClock())
    for n in range(int(sys.argv[2])):
        await audit.record("test.append", details={"process": sys.argv[3], "n": n})
    await db.close()

asyncio.run(main())
"""


async def record_three(audit: AuditTrail) -> list[int]:
    return [
        await audit.record("user.registered", subject_user_id=1, username="alice@example.com"),
        await audit.record(
            "login.failed", outcome="failure", subject_user_id=1, details={"reason": "invalid_credentials"}
        ),
        await audit.record("login.succeeded", subject_user_id=1, ip_address="203.0.113.7", session_id="abc"),
    ]


async def test_events_come_back_newest_first_with_filters(fundaments) -> None:
    audit: AuditTrail = fundaments["audit"]
    ids = await record_three(audit)
    await audit.record("test.role_created", actor_user_id=2, details={"role": "editor"})
    events = await audit.events(user_id=1)
    assert [e.id for e in events] == list(reversed(ids))
    assert events[1].details == {"reason": "invalid_credentials"}
    assert [e.kind for e in await audit.events(kind="test.role_created")] == ["test.role_created"]
    assert len(await audit.events(limit=2)) == 2
    assert (await audit.events(user_id=2))[0].actor_user_id == 2


async def test_intact_chain_verifies(fundaments) -> None:
    audit: AuditTrail = fundaments["audit"]
    before = (await audit.verify_chain()).events_checked  # start-up may have recorded events already
    await record_three(audit)
    result = await audit.verify_chain()
    assert result and result.events_checked == before + 3


@pytest.mark.parametrize(
    "tamper",
    [
        "UPDATE fundaments_audit_events SET outcome = 'success' WHERE id = $1",
        "UPDATE fundaments_audit_events SET details = '{}' WHERE id = $1",
        "DELETE FROM fundaments_audit_events WHERE id = $1",
    ],
    ids=["edit-outcome", "edit-details", "delete"],
)
async def test_tampering_with_one_row_is_pinpointed(fundaments, tamper: str) -> None:
    audit: AuditTrail = fundaments["audit"]
    ids = await record_three(audit)
    await fundaments["db"].execute(tamper, ids[1])
    result = await audit.verify_chain()
    assert not result
    expected = ids[1] if not tamper.startswith("DELETE") else ids[2]
    assert result.broken_event_id == expected


async def test_reordering_rows_is_detected(fundaments) -> None:
    audit: AuditTrail = fundaments["audit"]
    ids = await record_three(audit)
    db = fundaments["db"]
    async with db.transaction() as tx:  # swap the first two events' positions
        await tx.execute("UPDATE fundaments_audit_events SET id = -1 WHERE id = $1", ids[0])
        await tx.execute("UPDATE fundaments_audit_events SET id = $1 WHERE id = $2", ids[0], ids[1])
        await tx.execute("UPDATE fundaments_audit_events SET id = $1 WHERE id = -1", ids[1])
    result = await audit.verify_chain()
    assert not result and result.broken_event_id == ids[0]


async def test_log_line_is_one_json_object_even_with_a_newline_in_the_username(fundaments, caplog) -> None:
    audit: AuditTrail = fundaments["audit"]
    with caplog.at_level(logging.INFO, logger="fundaments.audit"):
        await audit.record("login.failed", outcome="failure", username='mallory\n{"kind": "login.succeeded"}')
    lines = [r.getMessage() for r in caplog.records if r.name == "fundaments.audit"]
    assert len(lines) == 1 and "\n" not in lines[0]
    assert json.loads(lines[0])["kind"] == "login.failed"
    assert isinstance(json.loads(lines[0])["details"], dict)  # nested, not JSON in a string


async def test_oversized_details_stay_valid_json(fundaments) -> None:
    audit: AuditTrail = fundaments["audit"]
    await audit.record("test.big", details={"blob": "x" * 100_000})
    event = (await audit.events(kind="test.big"))[0]
    assert event.details["truncated"] is True
    assert await audit.verify_chain()


async def test_event_is_part_of_the_callers_transaction(fundaments) -> None:
    audit: AuditTrail = fundaments["audit"]
    with pytest.raises(RuntimeError):
        async with fundaments["db"].transaction() as tx:
            await audit.record("user.registered", tx=tx, subject_user_id=9)
            raise RuntimeError("the change failed")
    assert await audit.events(user_id=9) == []


@pytest.mark.postgres
@pytest.mark.slow
async def test_four_processes_appending_keep_one_chain_on_postgres(postgres_url: str, tmp_path: Path) -> None:
    from fundaments.clock import SystemClock
    from fundaments.config import parse_database_url
    from fundaments.store import open_database

    db = await open_database(parse_database_url(postgres_url))  # migrate once before the race
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            APPENDER,
            postgres_url,
            "500",
            str(p),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for p in range(4)
    ]
    for proc in procs:
        _, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
    audit = AuditTrail(db, SystemClock())
    try:
        result = await audit.verify_chain()
        assert result, result
        assert result.events_checked == 2000
    finally:
        await db.close()


@pytest.mark.parametrize("text", ["nul\x00byte", "lone\udc80surrogate", "x" * 10_000])
async def test_unstorable_client_strings_never_break_an_audit_write(fundaments, text: str) -> None:
    audit: AuditTrail = fundaments["audit"]
    await audit.record("login.failed", outcome="failure", username=text, user_agent=text, ip_address=text)
    event = (await audit.events(kind="login.failed"))[0]
    assert "\x00" not in (event.username or "") and len(event.username or "") <= 254
    assert await audit.verify_chain()


async def test_record_soon_from_inside_a_transaction_is_written_after_it(fundaments) -> None:
    audit: AuditTrail = fundaments["audit"]
    async with fundaments["db"].transaction() as tx:
        await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ('x', 1)")
        audit.record_soon("test.soon", details={"n": 1})
    await audit.close()
    assert [e.kind for e in await audit.events(kind="test.soon")] == ["test.soon"]
