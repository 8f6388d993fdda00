"""No user enumeration by timing: an unknown username costs one dummy verification with the
current hasher, so it takes as long as a known username with a wrong password.

This test uses the real Argon2id parameters (OWASP: m=19 MiB, t=2, p=1); medians over 30 attempts
each, interleaved so that machine noise falls on both sides alike, measured again before a
failure is reported (tests/timing.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from fundaments import initialize_fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.models import LoginFailure, RequestContext
from timing import assert_same_time

PASSWORD = "correct horse battery staple"
ROUNDS = 30
REAL_HASHING = {"argon2_memory_cost": 19 * 1024, "argon2_time_cost": 2, "argon2_parallelism": 1}


@pytest.mark.slow
async def test_unknown_and_known_usernames_take_the_same_time(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    settings = make_settings(**REAL_HASHING, lockout_threshold=1000, throttle_ip_failures=1_000_000)
    app = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        uh = app["user_handler"]
        encoded = await uh.prepare_password(PASSWORD, username="known@example.com")
        async with app["db"].transaction() as tx:
            await uh.create(tx, "known@example.com", encoded)
        ctx = RequestContext("203.0.113.9", "timing")

        async def timed(username: str) -> float:
            start = time.perf_counter()
            check = await uh.authenticate(username, "a wrong password of some length", ctx)
            elapsed = time.perf_counter() - start
            assert check.reason is LoginFailure.INVALID_CREDENTIALS
            return elapsed

        for _ in range(3):  # warm caches on both paths
            await timed("known@example.com")
            await timed("unknown@example.com")
        rounds = iter(range(10**6))

        async def measure() -> tuple[list[float], list[float]]:
            known, unknown = [], []
            for _ in range(ROUNDS):
                known.append(await timed("known@example.com"))
                unknown.append(await timed(f"unknown{next(rounds)}@example.com"))
            return known, unknown

        await assert_same_time(measure, names=("known", "unknown"))
    finally:
        await app.close()


@pytest.mark.slow
async def test_a_locked_account_takes_as_long_as_an_unknown_one(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """No hash is computed while an account is locked, yet the refusal must not come back faster
    than the dummy verification of an unknown name (2-4 ms against 22-25 ms before the fix)."""
    settings = make_settings(**REAL_HASHING, throttle_ip_failures=1_000_000)
    app = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        uh = app["user_handler"]
        encoded = await uh.prepare_password(PASSWORD, username="locked@example.com")
        async with app["db"].transaction() as tx:
            await uh.create(tx, "locked@example.com", encoded)
        ctx = RequestContext("203.0.113.9", "timing")
        for i in range(3):  # warm the caches before the lock: the first attempts after start are slow
            await uh.authenticate(f"warm{i}@example.com", PASSWORD, ctx)
        for i in range(settings.lockout_threshold):
            await uh.authenticate("locked@example.com", f"wrong guess {i}", ctx)

        async def timed(username: str, expected: LoginFailure) -> float:
            start = time.perf_counter()
            check = await uh.authenticate(username, PASSWORD, ctx)
            elapsed = time.perf_counter() - start
            assert check.reason is expected
            return elapsed

        for _ in range(3):
            await timed("locked@example.com", LoginFailure.LOCKED)
            await timed("unknown@example.com", LoginFailure.INVALID_CREDENTIALS)
        rounds = iter(range(10**6))

        async def measure() -> tuple[list[float], list[float]]:
            locked, unknown = [], []
            for _ in range(ROUNDS):
                locked.append(await timed("locked@example.com", LoginFailure.LOCKED))
                unknown.append(
                    await timed(f"unknown{next(rounds)}@example.com", LoginFailure.INVALID_CREDENTIALS)
                )
            return locked, unknown

        await assert_same_time(measure, names=("locked", "unknown"))
    finally:
        await app.close()
