"""One TOTP code sent by two processes at once, each finishing its own login: exactly one gets
in — on PostgreSQL and on one SQLite file shared by both processes. No in-process lock is involved:
the database decides, twice over — the second request's claim on the account's lock row waits for
the first's commit (and then reads the step it accepted), and the step is accepted only by
``UPDATE … WHERE last_step < $n``. With both removed this test fails on both databases."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pyotp
import pytest

from conftest import FAST_HASHING, TEST_MASTER_KEY, TEST_SALT
from fundaments import initialize_fundaments
from fundaments.config import load_settings
from fundaments.models import LoginFailure

PASSWORD = "a long passphrase for the race 2026"
CLIENT = {"ip_address": "203.0.113.70", "user_agent": "race"}

CHILD = r"""
import asyncio, json, sys, time
from fundaments import initialize_fundaments
from fundaments.config import load_settings

async def main(overrides, token, code, start_at, client):
    app = await initialize_fundaments(load_settings(env_file="/nonexistent/.env", **overrides), configure_logs=False)
    try:
        await asyncio.sleep(max(0.0, start_at - time.time()))  # line the processes up, not a timeout
        result = await app.security.verify_mfa(token, code, client)
        print(json.dumps({"ok": bool(result), "reason": result.reason.value if result.reason else None}))
    finally:
        await app.close()

asyncio.run(main(json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4]), json.loads(sys.argv[5])))
"""


@pytest.mark.slow
async def test_one_code_from_two_processes_lets_exactly_one_in(database_url: str, tmp_path: Path) -> None:
    overrides = {
        "database_url": database_url,
        "master_encryption_key": TEST_MASTER_KEY,
        "persistent_encryption_salt": TEST_SALT,
        "mail_url": f"file://{tmp_path}/outbox",
        "lockout_threshold": 100,
        **FAST_HASHING,
    }
    app = await initialize_fundaments(
        load_settings(env_file=tmp_path / "absent.env", **overrides), configure_logs=False
    )
    try:
        security = app.security
        user = await security.register_user("racer", PASSWORD)
        enrolment = await security.begin_totp_enrolment(user.id)
        totp = pyotp.TOTP(enrolment.secret)
        await security.confirm_totp_enrolment(user.id, totp.at(time.time()))
        tokens = []
        for _ in range(2):
            step = await security.user_login("racer", PASSWORD, CLIENT)
            assert step.reason is LoginFailure.MFA_REQUIRED and step.mfa_token
            tokens.append(step.mfa_token)
        code = totp.at(time.time(), counter_offset=1)  # after the confirming step, inside the window
        start_at = time.time() + 3.0
        procs = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    CHILD,
                    json.dumps(overrides),
                    token,
                    code,
                    str(start_at),
                    json.dumps(CLIENT),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for token in tokens
        ]
        outcomes = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outcomes.append(json.loads(out.strip().splitlines()[-1]))
        assert sorted(o["ok"] for o in outcomes) == [False, True], outcomes
        assert [o["reason"] for o in outcomes if not o["ok"]] == ["invalid_credentials"]
    finally:
        await app.close()
