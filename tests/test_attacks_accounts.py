"""Attacks on the account layer found by the penetration test (issue 14), each as a test.

- ``change_password`` as a password oracle: a stolen session guessed the current password at
  hashing speed, and 80 parallel guesses filled the hashing pool so other users' logins failed BUSY.
- The per-IP throttle raced: 60 parallel unknown-user logins were all verified against a limit of 50.
- A locked account was recognizable, and its refusals were an unthrottled audit flood.
- On a shared IP, a known device of the account must still get through (OWASP device cookies).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from fundaments import Security, initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import AuthenticationError, CheckInFlightError, RateLimited
from fundaments.models import LoginFailure, RequestContext

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a different long passphrase 42"
OWNER = {"ip_address": "198.51.100.20", "user_agent": "Mozilla/5.0 owner"}
THIEF = {"ip_address": "203.0.113.66", "user_agent": "Mozilla/5.0 thief"}


@pytest.fixture
def security(fundaments: Fundaments) -> Security:
    return fundaments.security


async def start(make_settings: Callable[..., Settings], clock: ManualClock, **overrides: Any) -> Fundaments:
    return await initialize_fundaments(make_settings(**overrides), clock=clock, configure_logs=False)


async def login_failures(security: Security, reason: str) -> list[dict[str, Any]]:
    events = await security.audit_events(kind="login.failed", limit=1000)
    return [e.details or {} for e in events if (e.details or {}).get("reason") == reason]


# --- change_password: an oracle no more -----------------------------------------------------------
async def test_guessing_the_current_password_locks_the_account_and_ends_the_guessing_session(
    security: Security, fundaments: Fundaments
) -> None:
    user = await security.register_user("ann", PASSWORD)
    stolen = await security.user_login("ann", PASSWORD, THIEF)
    token = stolen.session.token  # type: ignore[union-attr]
    before = fundaments["user_handler"].verification_count
    for i in range(4):
        with pytest.raises(AuthenticationError, match="not correct"):
            await security.change_password(user.id, f"guess {i}", NEW_PASSWORD, token, request_data=THIEF)
    with pytest.raises(AuthenticationError, match="locked"):  # the fifth wrong guess locks
        await security.change_password(user.id, "guess 4", NEW_PASSWORD, token, request_data=THIEF)
    assert await security.validate_session(token, THIEF) is None  # the guessing session is over
    with pytest.raises(AuthenticationError, match="locked"):  # the right password, refused unhashed
        await security.change_password(user.id, PASSWORD, NEW_PASSWORD, request_data=THIEF)
    assert fundaments["user_handler"].verification_count - before == 5
    assert (await security.user_login("ann", PASSWORD, THIEF)).reason is LoginFailure.LOCKED
    kinds = [e.kind for e in await security.audit_events(user_id=user.id, limit=100)]
    assert kinds.count("password.change_failed") >= 5 and "account.locked" in kinds


async def test_the_lock_ends_and_the_counters_reset_after_a_change(
    security: Security, clock: ManualClock
) -> None:
    user = await security.register_user("ann", PASSWORD)
    for i in range(5):
        with pytest.raises(AuthenticationError):
            await security.change_password(user.id, f"guess {i}", NEW_PASSWORD, request_data=THIEF)
    clock.advance(15 * 60 + 1)
    await security.change_password(user.id, PASSWORD, NEW_PASSWORD, request_data=OWNER)
    for i in range(4):  # a fresh count: four wrong guesses do not lock
        with pytest.raises(AuthenticationError, match="not correct"):
            await security.change_password(user.id, f"again {i}", PASSWORD, request_data=OWNER)
    assert await security.user_login("ann", NEW_PASSWORD, OWNER)


async def test_a_flood_of_checks_from_one_session_runs_one_at_a_time(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """80 parallel /password posts from one session: one is checked, 79 refused at once (before any
    hash or pool place), and another user's login at the same moment is not BUSY."""
    app = await start(make_settings, clock, hashing_queue_size=8)
    try:
        security, uh = app.security, app["user_handler"]
        ann = await security.register_user("ann", PASSWORD)
        await security.register_user("bob", PASSWORD)
        token = (await security.user_login("ann", PASSWORD, THIEF)).session.token  # type: ignore[union-attr]
        before = uh.verification_count
        flood = [
            security.change_password(ann.id, f"guess {i}", NEW_PASSWORD, token, request_data=THIEF)
            for i in range(80)
        ]
        outcomes = await asyncio.gather(
            *flood, security.user_login("bob", PASSWORD, OWNER), return_exceptions=True
        )
        *guesses, bob = outcomes
        assert bob and not isinstance(bob, BaseException)  # bob's login was not crowded out
        in_flight = [g for g in guesses if isinstance(g, CheckInFlightError)]
        checked = sum(isinstance(g, AuthenticationError) for g in guesses)
        # One at a time: a late post may start after the first check ended (PostgreSQL round trips
        # spread the 80 out), so "checked" is 1, rarely 2 — never the 80 an unguarded flood runs.
        assert checked + len(in_flight) == 80 and 1 <= checked <= 3, (checked, len(in_flight))
        assert all(isinstance(g, RateLimited) and g.retry_after > 0 for g in in_flight)
        assert uh.verification_count - before == checked + 1  # ann's checked guesses and bob's login
    finally:
        await app.close()


async def test_a_known_device_changes_the_password_while_a_thief_locked_the_account(
    security: Security,
) -> None:
    """The device-cookie rule holds for the password check as for logins: failures from elsewhere
    lock the account, not the owner's known device; the device's own guesses lock only the device."""
    user = await security.register_user("ann", PASSWORD)
    first = await security.user_login("ann", PASSWORD, OWNER)
    device = {**OWNER, "device_token": first.device_token}
    for i in range(5):
        await security.user_login("ann", f"thief guess {i}", THIEF)
    assert (await security.user_login("ann", PASSWORD, THIEF)).reason is LoginFailure.LOCKED
    await security.change_password(user.id, PASSWORD, NEW_PASSWORD, request_data=device)
    for i in range(5):
        with pytest.raises(AuthenticationError):
            await security.change_password(user.id, f"device guess {i}", PASSWORD, request_data=device)
    with pytest.raises(AuthenticationError, match="locked"):  # the device is locked now
        await security.change_password(user.id, NEW_PASSWORD, PASSWORD, request_data=device)


# --- the per-IP throttle ------------------------------------------------------------------------
async def test_parallel_logins_cannot_race_past_the_ip_throttle(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await start(make_settings, clock, throttle_ip_failures=50, hashing_queue_size=1000)
    try:
        uh = app["user_handler"]
        before = uh.verification_count
        checks = await asyncio.gather(
            *(app.security.user_login(f"nobody{i}", "a wrong password", THIEF) for i in range(60))
        )
        reasons = [c.reason for c in checks]
        assert reasons.count(LoginFailure.INVALID_CREDENTIALS) == 50
        assert reasons.count(LoginFailure.THROTTLED) == 10
        assert uh.verification_count - before == 50  # claimed before the hash: no more were verified
    finally:
        await app.close()


async def test_a_device_of_the_account_passes_a_throttled_shared_ip(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await start(make_settings, clock, throttle_ip_failures=3)
    try:
        security = app.security
        await security.register_user("ann", PASSWORD)
        await security.register_user("bob", PASSWORD)
        office = {"ip_address": "192.0.2.10", "user_agent": "Mozilla/5.0 office"}
        ann_device = (await security.user_login("ann", PASSWORD, office)).device_token
        bob_device = (await security.user_login("bob", PASSWORD, office)).device_token
        for i in range(3):  # a colleague (or a sprayer) behind the same NAT
            await security.user_login(f"nobody{i}", "a wrong password", office)
        assert (await security.user_login("ann", PASSWORD, office)).reason is LoginFailure.THROTTLED
        assert await security.user_login("ann", PASSWORD, {**office, "device_token": ann_device})
        wrong_device = {**office, "device_token": bob_device}  # another account's cookie does not help
        assert (await security.user_login("ann", PASSWORD, wrong_device)).reason is LoginFailure.THROTTLED
        junk = {**office, "device_token": "x" * 43}
        assert (await security.user_login("ann", PASSWORD, junk)).reason is LoginFailure.THROTTLED
    finally:
        await app.close()


async def test_refusals_of_a_locked_account_count_toward_the_ip_throttle(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await start(make_settings, clock, throttle_ip_failures=10)
    try:
        security = app.security
        await security.register_user("ann", PASSWORD)
        await security.register_user("bob", PASSWORD)
        reasons = [(await security.user_login("ann", f"guess {i}", THIEF)).reason for i in range(10)]
        assert reasons == [LoginFailure.INVALID_CREDENTIALS] * 5 + [LoginFailure.LOCKED] * 5
        assert (await security.user_login("bob", PASSWORD, THIEF)).reason is LoginFailure.THROTTLED
    finally:
        await app.close()


async def test_successful_logins_give_their_ip_place_back(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """An office of many users behind one address logs in all day: successes are not failures."""
    app = await start(make_settings, clock, throttle_ip_failures=3)
    try:
        await app.security.register_user("ann", PASSWORD)
        for _ in range(10):
            assert await app.security.user_login("ann", PASSWORD, OWNER)
        await app.security.user_login("ann", "one wrong password", OWNER)
        for _ in range(5):
            assert await app.security.user_login("ann", PASSWORD, OWNER)
    finally:
        await app.close()


# --- locked accounts: not a flood, not recognizable ------------------------------------------------
async def test_a_flood_of_logins_against_a_locked_account_is_a_few_audit_rows(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await start(make_settings, clock, throttle_ip_failures=100_000)
    try:
        security = app.security
        await security.register_user("ann", PASSWORD)
        for i in range(5):
            await security.user_login("ann", f"guess {i}", THIEF)
        for _ in range(200):
            assert (await security.user_login("ann", PASSWORD, THIEF)).reason is LoginFailure.LOCKED
        locked = await login_failures(security, "locked")
        assert len(locked) == 1 and "suppressed_before" not in locked[0]  # the first of the burst
        clock.advance(61)  # the next burst starts with the count of the last one
        await security.user_login("ann", PASSWORD, THIEF)
        locked = await login_failures(security, "locked")
        assert len(locked) == 2 and locked[0]["suppressed_before"] == 199
        other = {**THIEF, "ip_address": "203.0.113.67"}  # another source is its own burst
        await security.user_login("ann", PASSWORD, other)
        assert len(await login_failures(security, "locked")) == 3
    finally:
        await app.close()


async def test_the_counts_of_an_open_burst_are_written_at_close(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    settings = make_settings(throttle_ip_failures=100_000)
    app = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        await app.security.register_user("ann", PASSWORD)
        for i in range(5):
            await app.security.user_login("ann", f"guess {i}", THIEF)
        for _ in range(30):
            await app.security.user_login("ann", PASSWORD, THIEF)
    finally:
        await app.close()
    reopened = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        locked = await login_failures(reopened.security, "locked")
        assert sorted(d.get("suppressed_before", 0) for d in locked) == [0, 29]  # 1 + 29 = 30 refusals
        assert [d.get("summary") for d in locked if d.get("suppressed_before")] == [True]
        assert await reopened.security.verify_audit_chain()
    finally:
        await reopened.close()


async def test_a_locked_refusal_waits_as_long_as_a_verification(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """No hash is computed for a locked account, but it answers no faster than a verification
    (the timing itself is measured with real Argon2 in tests/test_accounts_timing.py)."""
    app = await start(make_settings, clock)
    try:
        uh = app["user_handler"]
        await app.security.register_user("ann", PASSWORD)
        for i in range(5):
            await app.security.user_login("ann", f"guess {i}", THIEF)
        assert uh._typical_attempt_seconds() > 0
        before = uh.verification_count
        check = await uh.authenticate("ann", PASSWORD, RequestContext(**THIEF))
        assert check.reason is LoginFailure.LOCKED and uh.verification_count == before
    finally:
        await app.close()
