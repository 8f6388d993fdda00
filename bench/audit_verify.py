"""What verifying the audit trail costs per console view: full vs incremental, at 100k and 1M events.

    python bench/audit_verify.py [--events 100000 1000000] [--views 20]

Builds a SQLite trail of N chained events with a MAC'ed checkpoint every 1,000 (bulk inserts with
sqlite3, the same hashes and MACs the appender computes), then measures with the real services:
- full: ``verify_audit_chain(full=True)`` (every event and checkpoint MAC), and the worst
  event-loop stall while it runs (a 1 ms ticker);
- incremental, fresh process: the first view after a start (from the newest checkpoint);
- incremental per view: with 10 new events since the previous view (median of --views).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

from fundaments import initialize_fundaments
from fundaments.audit import (
    CHECKPOINT_PURPOSE,
    EVENT_FIELDS,
    AuditTrail,
    canonical,
    chain_hash,
    checkpoint_mac,
)
from fundaments.config import Settings, generate_keys, load_settings
from fundaments.store.audit import GENESIS_HASH

EVERY = 1_000


def build(path: Path, events: int, keys: list[tuple[str, bytes]]) -> None:
    """Append ``events`` chained events and their checkpoints straight into the SQLite file."""
    key_id, key = keys[0]
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA synchronous = OFF")
    prev = conn.execute("SELECT hash FROM fundaments_audit_events ORDER BY id DESC LIMIT 1").fetchone()
    prev_hash = prev[0] if prev else GENESIS_HASH
    start = conn.execute("SELECT count(*), coalesce(max(id), 0) FROM fundaments_audit_events").fetchone()
    count, next_id = start[0], start[1] + 1
    prev_mac = conn.execute(
        "SELECT mac FROM fundaments_audit_checkpoints ORDER BY id DESC LIMIT 1"
    ).fetchone()
    mac_before = prev_mac[0] if prev_mac else None
    rows, marks = [], []
    for n in range(events - count):
        fields = {
            "occurred_at": 1_764_633_600.0 + n,
            "kind": "login.failed",
            "outcome": "failure",
            "actor_user_id": None,
            "subject_user_id": n % 5000 + 1,
            "username": f"user{n % 5000}@example.com",
            "ip_address": "203.0.113.7",
            "user_agent": "bench/audit_verify",
            "session_id": None,
            "details": canonical({"reason": "invalid_credentials"}),
        }
        digest = chain_hash(prev_hash, canonical(fields))
        event_id = next_id + n
        rows.append((event_id, *(fields[k] for k in EVENT_FIELDS), prev_hash, digest))
        prev_hash = digest
        count += 1
        if count % EVERY == 0:
            created = fields["occurred_at"]
            mac = checkpoint_mac(key, key_id=key_id, prev_mac=mac_before, event_id=event_id,
                                 event_hash=digest, events=count, created_at=created)  # fmt: skip
            marks.append((event_id, digest, count, created, key_id, mac))
            mac_before = mac
    with conn:
        conn.executemany(
            "INSERT INTO fundaments_audit_events (id, occurred_at, kind, outcome, actor_user_id, "
            "subject_user_id, username, ip_address, user_agent, session_id, details, prev_hash, hash) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        conn.executemany(
            "INSERT INTO fundaments_audit_checkpoints "
            "(event_id, event_hash, events, created_at, key_id, mac) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            marks,
        )
    conn.close()


async def with_lag(coro: object) -> tuple[float, float, object]:
    """(seconds, worst event-loop stall in ms, result) of awaiting ``coro``."""
    worst = 0.0
    done = False

    async def ticker() -> None:
        nonlocal worst
        while not done:
            before = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - before - 0.001)

    tick = asyncio.create_task(ticker())
    start = time.perf_counter()
    result = await coro  # type: ignore[misc]
    elapsed = time.perf_counter() - start
    done = True
    await tick
    return elapsed, worst * 1000, result


async def measure(settings: Settings, path: Path, events: int, views: int) -> None:
    async with await initialize_fundaments(settings, configure_logs=False) as fundaments:
        keys = fundaments["encryption"].purpose_keys(CHECKPOINT_PURPOSE)
    started = time.perf_counter()
    build(path, events, keys)
    built = time.perf_counter() - started
    async with await initialize_fundaments(settings, configure_logs=False) as fundaments:
        security = fundaments.security
        audit: AuditTrail = fundaments["audit"]
        first, first_lag, first_result = await with_lag(security.verify_audit_chain())
        assert first_result, first_result
        full, full_lag, full_result = await with_lag(security.verify_audit_chain(full=True))
        assert full_result and full_result.events_checked == events, full_result
        per_view = []
        for _ in range(views):
            for n in range(10):
                await audit.record("bench.event", details={"n": n})
            start = time.perf_counter()
            result = await security.verify_audit_chain()
            per_view.append(time.perf_counter() - start)
            assert result and result.events_hashed == 10, result
        view = statistics.median(per_view)
        print(
            f"{events:>9,} events (built in {built:.1f} s): full {full:.2f} s "
            f"({full / events * 1e6:.2f} µs/event, worst loop stall {full_lag:.1f} ms); "
            f"first view after start {first * 1000:.1f} ms ({first_result.events_hashed} hashed, "
            f"stall {first_lag:.1f} ms); per view with 10 new events {view * 1000:.2f} ms; "
            f"full / per view = {full / view:,.0f}x"
        )


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--views", type=int, default=20)
    args = parser.parse_args()
    for events in args.events:
        with tempfile.TemporaryDirectory() as tmp:
            keys = generate_keys()
            path = Path(tmp) / "audit.db"
            settings = load_settings(
                env_file=Path(tmp) / "none.env",
                database_url=f"sqlite:///{path}",
                master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
                persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
                audit_checkpoint_every=EVERY,
                log_level="WARNING",
            )
            await measure(settings, path, events, args.views)


if __name__ == "__main__":
    asyncio.run(main())
