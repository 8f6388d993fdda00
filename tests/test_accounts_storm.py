"""The storm: 4 processes × 50 concurrent wrong passwords on one account, one database (PostgreSQL,
and SQLite too).

Every attempt must claim a place below the lockout threshold in one conditional UPDATE before its
hash is computed, so at most LOCKOUT_THRESHOLD verifications happen however the attempts race.
Verifications are counted twice, independently: each process reports how many hashes its
UserHandler computed, and each verified wrong password leaves one ``login.failed`` event with
reason ``invalid_credentials`` (refused attempts leave reason ``locked``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fundaments import initialize_fundaments
from fundaments.config import load_settings
from fundaments.models import LoginFailure, RequestContext

PASSWORD = "correct horse battery staple"
PROCESSES = 4
ATTEMPTS = 50
# Slow enough (a few ms per hash) that the attempts of all four processes overlap in time.
STORM_HASHING = {"argon2_memory_cost": 8192, "argon2_time_cost": 2, "pbkdf2_iterations": 1000}

CHILD = r"""
import asyncio, json, sys, time
from collections import Counter
from fundaments import initialize_fundaments
from fundaments.config import load_settings
from fundaments.models import RequestContext

ATTEMPTS = int(sys.argv[4])

async def main(url, start_at, overrides):
    settings = load_settings(env_file="/nonexistent/.env", database_url=url, **overrides)
    app = await initialize_fundaments(settings, configure_logs=False)
    uh = app["user_handler"]
    try:
        ctx = RequestContext("203.0.113.66", "storm")
        await asyncio.sleep(max(0.0, start_at - time.time()))  # line the processes up, not a timeout
        checks = await asyncio.gather(
            *(uh.authenticate("victim@example.com", f"wrong guess {i}", ctx) for i in range(ATTEMPTS))
        )
        print(json.dumps({"verifications": uh.verification_count,
                          "reasons": Counter(c.reason.value for c in checks)}))
    finally:
        await app.close()

asyncio.run(main(sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])))
"""


def storm_settings(url: str, tmp_path: Path) -> dict[str, Any]:
    return {
        "database_url": url,
        **STORM_HASHING,
        "hashing_queue_size": 1000,
        "throttle_ip_failures": 100_000,
    }


@pytest.mark.slow
async def test_storm_from_four_processes_verifies_at_most_threshold_times(
    database_url: str, tmp_path: Path
) -> None:
    """On PostgreSQL (what the issue asks for) and on one SQLite file shared by the four processes."""
    overrides = storm_settings(database_url, tmp_path)
    app = await initialize_fundaments(
        load_settings(env_file=tmp_path / "absent.env", **overrides), configure_logs=False
    )
    try:
        uh = app["user_handler"]
        encoded = await uh.prepare_password(PASSWORD, username="victim@example.com")
        async with app["db"].transaction() as tx:
            await uh.create(tx, "victim@example.com", encoded)

        start_at = time.time() + 4.0
        child_overrides = {k: v for k, v in overrides.items() if k != "database_url"}
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    database_url,
                    str(start_at),
                    json.dumps(child_overrides),
                    str(ATTEMPTS),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(PROCESSES)
        ]
        results = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            results.append(json.loads(out.strip().splitlines()[-1]))

        verifications = sum(r["verifications"] for r in results)
        invalid = sum(r["reasons"].get("invalid_credentials", 0) for r in results)
        locked = sum(r["reasons"].get("locked", 0) for r in results)
        assert invalid + locked == PROCESSES * ATTEMPTS
        assert verifications == 5  # all wrong: exactly the threshold, then the lock
        assert invalid == verifications

        failed = await app["audit"].events(kind="login.failed", limit=1000)
        audited = [e for e in failed if e.details["reason"] == "invalid_credentials"]
        assert len(audited) == verifications
        # Locked refusals are coalesced per source: each process wrote the first of its burst and,
        # at close, a summary carrying how many it folded in — every attempt is accounted for, in
        # a handful of rows instead of one per attempt.
        refused = [e for e in failed if e.details["reason"] == "locked"]
        assert len(refused) == 2 * PROCESSES
        counted = sum(
            int(not e.details.get("summary")) + e.details.get("suppressed_before", 0) for e in refused
        )
        assert counted == locked

        check = await uh.authenticate("victim@example.com", PASSWORD, RequestContext("198.51.100.1", "owner"))
        assert check.reason is LoginFailure.LOCKED
    finally:
        await app.close()
