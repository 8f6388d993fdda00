"""Accounts at the UserHandler level: usernames, registration, imports and upgrades, lockout with
backoff, device cookies, the IP throttle, disabled accounts and the hashing pool — on SQLite and
PostgreSQL, with the injected clock (no sleeping)."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import (
    InvalidPasswordHashError,
    InvalidUsernameError,
    PasswordPolicyError,
    UnknownUserError,
    UserExistsError,
)
from fundaments.models import LoginFailure, RequestContext, User
from fundaments.user_handler import CredentialCheck, UserHandler, normalize_username, throttle_key

PASSWORD = "correct horse battery staple"
OWNER = RequestContext("198.51.100.10", "owner-browser")
ATTACKER = RequestContext("203.0.113.66", "attacker-script")

PASSLIB = "$pbkdf2-sha256$29000$d06JEaL0vleKMaYUAuCcEw$tUEGSJTiG/l8neGF46Qj6JAfHdkJjGRWdcqDaOHpQPs"
DJANGO_PBKDF2 = "pbkdf2_sha256$1000$KRcjsUs03QbtNTUrL05jPK$p2Y090RSINdJpKHZX/wZFPWf2hTXDEZl1fJxtWv3BXg="
DJANGO_ARGON2 = "argon2$argon2id$v=19$m=1024,t=1,p=8$WTV0UXJwMXJnNUljTHNrcFlkbGRRSw$Jlw7iW6zI790pZ4/wN2VwOrxG4m0izViv1bi9jo+Nkc"


@pytest.fixture
def uh(fundaments: Fundaments) -> UserHandler:
    handler: UserHandler = fundaments["user_handler"]
    return handler


async def register(fundaments: Fundaments, username: str, password: str = PASSWORD, **kw: Any) -> User:
    uh: UserHandler = fundaments["user_handler"]
    encoded = await uh.prepare_password(password, username=username)
    async with fundaments["db"].transaction() as tx:
        return await uh.create(tx, username, encoded, **kw)


async def import_user(fundaments: Fundaments, username: str, password_hash: str) -> User:
    uh: UserHandler = fundaments["user_handler"]
    async with fundaments["db"].transaction() as tx:
        return await uh.create(tx, username, uh.validate_imported_hash(password_hash))


async def login(
    fundaments: Fundaments, username: str, password: str, ctx: RequestContext = OWNER
) -> tuple[CredentialCheck, str | None]:
    """authenticate, then complete_login in a transaction on success (what user_login does)."""
    uh: UserHandler = fundaments["user_handler"]
    check = await uh.authenticate(username, password, ctx)
    if not check:
        return check, None
    async with fundaments["db"].transaction() as tx:
        device = await uh.complete_login(tx, check, ctx)
    return check, device


async def stored_hash(fundaments: Fundaments, user_id: int) -> str:
    value = await fundaments["db"].fetchval(
        "SELECT password_hash FROM fundaments_users WHERE id = $1", user_id
    )
    return str(value)


async def events(fundaments: Fundaments, kind: str) -> list[Any]:
    return await fundaments["audit"].events(kind=kind, limit=1000)


async def started(make_settings: Callable[..., Settings], clock: ManualClock, **overrides: Any) -> Fundaments:
    return await initialize_fundaments(make_settings(**overrides), clock=clock, configure_logs=False)


# --- usernames ------------------------------------------------------------------------------------


def test_usernames_are_normalized() -> None:
    assert normalize_username("  Alice@Example.COM ") == "alice@example.com"
    assert normalize_username("ａlice@example.com") == "alice@example.com"  # full-width a
    assert normalize_username("STRASSE") == normalize_username("straße")  # case folding, not lower()


@pytest.mark.parametrize("bad", ["", "   ", "a" * 255, "bob\x00", "bob\nadmin", "bo\u200bb", "bo\u2028b"])
def test_unusable_usernames_are_refused(bad: str) -> None:
    with pytest.raises(InvalidUsernameError):
        normalize_username(bad)


@hsettings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
@example("bo\u200bb")  # zero-width space (Cf): random text rarely holds one
@example("bo\u2028b")  # line separator (Zl)
def test_username_normalization_is_idempotent_and_safe(raw: str) -> None:
    try:
        name = normalize_username(raw)
    except InvalidUsernameError:
        return
    assert normalize_username(name) == name
    assert 0 < len(name) <= 254
    assert name == name.strip()
    assert name == unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", raw).casefold()).strip()
    invisible = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}  # control, zero-width, unassigned, separators
    assert not {unicodedata.category(ch) for ch in name} & invisible


async def test_normalized_usernames_collide(fundaments: Fundaments) -> None:
    first = await register(fundaments, "Alice@Example.com")
    assert first.username == "alice@example.com"
    for other in ("alice@example.com", "ａlice@example.com", " ALICE@EXAMPLE.COM "):
        with pytest.raises(UserExistsError):
            await register(fundaments, other)
    users = await fundaments["user_handler"].list()
    assert [u.username for u in users] == ["alice@example.com"]


async def test_registration_is_audited_without_secrets(fundaments: Fundaments) -> None:
    user = await register(fundaments, "dev@example.com")
    [event] = await events(fundaments, "user.registered")
    assert event.subject_user_id == user.id and event.username == "dev@example.com"
    assert event.details["hash_algorithm"] == "argon2id"
    rows = await fundaments["db"].fetch("SELECT details FROM fundaments_audit_events")
    assert all(
        PASSWORD not in r["details"] and "argon2" not in r["details"].replace('"argon2id"', "") for r in rows
    )


async def test_prepare_password_enforces_the_policy(uh: UserHandler) -> None:
    with pytest.raises(PasswordPolicyError) as info:
        await uh.prepare_password("dev12345", username="dev@example.com")
    assert len(info.value.failures) >= 2
    encoded = await uh.prepare_password("ｃorrect horse battery staple", username="dev@example.com")
    assert uh.passwords.verify(PASSWORD, encoded)  # NFKC before hashing


async def test_create_refuses_what_is_not_a_hash(fundaments: Fundaments, uh: UserHandler) -> None:
    with pytest.raises(InvalidPasswordHashError):
        uh.validate_imported_hash("not-a-hash")
    with pytest.raises(InvalidPasswordHashError):
        async with fundaments["db"].transaction() as tx:
            await uh.create(tx, "dev@example.com", PASSWORD)


# --- login, imports and upgrades ------------------------------------------------------------------


async def test_successful_login_returns_a_device_token(fundaments: Fundaments, uh: UserHandler) -> None:
    user = await register(fundaments, "dev@example.com")
    check, device = await login(fundaments, "DEV@example.com", PASSWORD)
    assert check and check.user == user and check.reason is None and check.username == "dev@example.com"
    assert check.upgraded_hash is None
    assert device and len(device) >= 43
    with_cookie = RequestContext(OWNER.ip_address, OWNER.user_agent, device)
    check2, device2 = await login(fundaments, "dev@example.com", PASSWORD, with_cookie)
    assert check2 and device2 == device


async def test_wrong_password_and_unknown_user_give_the_same_reason(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    await register(fundaments, "dev@example.com")
    wrong = await uh.authenticate("dev@example.com", PASSWORD + "!", OWNER)
    unknown = await uh.authenticate("nobody@example.com", PASSWORD, OWNER)
    invalid = await uh.authenticate("bad\x00name", PASSWORD, OWNER)
    for check in (wrong, unknown, invalid):
        assert not check and check.reason is LoginFailure.INVALID_CREDENTIALS
    failed = await events(fundaments, "login.failed")
    assert [e.details["reason"] for e in failed] == ["invalid_credentials"] * 3
    assert uh.verification_count == 3  # the unknown usernames were verified against the dummy hash too


@pytest.mark.parametrize(
    "legacy", [PASSLIB, DJANGO_PBKDF2, DJANGO_ARGON2], ids=["passlib", "django_pbkdf2", "django_argon2"]
)
async def test_imported_hashes_are_upgraded_to_argon2id_on_login(fundaments: Fundaments, legacy: str) -> None:
    user = await import_user(fundaments, "old@example.com", legacy)
    check, _ = await login(fundaments, "old@example.com", PASSWORD)
    assert check and check.upgraded_hash is not None
    upgraded = await stored_hash(fundaments, user.id)
    assert upgraded.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    [event] = await events(fundaments, "password.upgraded")
    assert event.details["to"] == "argon2id" and event.subject_user_id == user.id
    again, _ = await login(fundaments, "old@example.com", PASSWORD)
    assert again and again.upgraded_hash is None
    assert await stored_hash(fundaments, user.id) == upgraded


async def test_argon2_hashes_with_weaker_parameters_are_upgraded(fundaments: Fundaments) -> None:
    import argon2

    weak = argon2.PasswordHasher(time_cost=1, memory_cost=512, parallelism=1).hash(PASSWORD)
    user = await import_user(fundaments, "weak@example.com", weak)
    assert (await login(fundaments, "weak@example.com", PASSWORD))[0]
    assert "m=1024,t=1,p=1" in await stored_hash(fundaments, user.id)


async def test_wrong_password_does_not_upgrade(fundaments: Fundaments) -> None:
    user = await import_user(fundaments, "old@example.com", PASSLIB)
    assert not (await login(fundaments, "old@example.com", "wrong password entirely"))[0]
    assert await stored_hash(fundaments, user.id) == PASSLIB


async def test_pbkdf2_setting_upgrades_argon2_to_pbkdf2(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await started(make_settings, clock, password_hasher="pbkdf2_sha256")
    try:
        user = await import_user(app, "old@example.com", DJANGO_ARGON2)
        assert (await login(app, "old@example.com", PASSWORD))[0]
        assert (await stored_hash(app, user.id)).startswith("$pbkdf2-sha256$1000$")
    finally:
        await app.close()


async def test_upgrade_does_not_overwrite_a_password_changed_meanwhile(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    user = await import_user(fundaments, "old@example.com", PASSLIB)
    check = await uh.authenticate("old@example.com", PASSWORD, OWNER)
    assert check and check.upgraded_hash
    new_hash = await uh.prepare_password("another long passphrase here", username="old@example.com")
    async with fundaments["db"].transaction() as tx:
        await uh.set_password(tx, user.id, new_hash)
    async with fundaments["db"].transaction() as tx:
        await uh.complete_login(tx, check, OWNER)
    assert await stored_hash(fundaments, user.id) == new_hash


async def test_complete_login_refuses_a_failed_check(fundaments: Fundaments, uh: UserHandler) -> None:
    check = await uh.authenticate("nobody@example.com", PASSWORD, OWNER)
    with pytest.raises(ValueError):
        async with fundaments["db"].transaction() as tx:
            await uh.complete_login(tx, check, OWNER)


# --- lockout --------------------------------------------------------------------------------------


async def fail(
    fundaments: Fundaments, username: str, times: int, ctx: RequestContext = ATTACKER
) -> list[LoginFailure]:
    reasons = []
    for _ in range(times):
        check = await fundaments["user_handler"].authenticate(username, "not the password at all", ctx)
        assert check.reason is not None
        reasons.append(check.reason)
    return reasons


async def test_five_failures_lock_the_account_and_the_right_password_is_refused(
    fundaments: Fundaments, uh: UserHandler, clock: ManualClock
) -> None:
    await register(fundaments, "dev@example.com")
    assert await fail(fundaments, "dev@example.com", 5) == [LoginFailure.INVALID_CREDENTIALS] * 5
    verified = uh.verification_count
    check = await uh.authenticate("dev@example.com", PASSWORD, OWNER)
    assert check.reason is LoginFailure.LOCKED and not check
    assert uh.verification_count == verified  # no hash computed while locked
    [locked] = await events(fundaments, "account.locked")
    assert locked.details["locked_until"] == clock.now() + 900
    clock.advance(899)
    assert (await uh.authenticate("dev@example.com", PASSWORD, OWNER)).reason is LoginFailure.LOCKED
    clock.advance(1)
    assert (await login(fundaments, "dev@example.com", PASSWORD))[0]


async def test_success_resets_the_consecutive_count(fundaments: Fundaments, uh: UserHandler) -> None:
    await register(fundaments, "dev@example.com")
    await fail(fundaments, "dev@example.com", 4)
    assert (await login(fundaments, "dev@example.com", PASSWORD))[0]
    assert await fail(fundaments, "dev@example.com", 4) == [LoginFailure.INVALID_CREDENTIALS] * 4
    assert (await login(fundaments, "dev@example.com", PASSWORD))[0]


async def test_the_right_password_on_the_last_allowed_attempt_gets_in(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    # The fifth attempt sets the lock before its hash is checked (so racing attempts are refused);
    # when it turns out right, complete_login lifts that lock again.
    await register(fundaments, "dev@example.com")
    await fail(fundaments, "dev@example.com", 4)
    check = await uh.authenticate("dev@example.com", PASSWORD, OWNER)
    assert check
    assert (await uh.authenticate("dev@example.com", PASSWORD, OWNER)).reason is LoginFailure.LOCKED
    async with fundaments["db"].transaction() as tx:
        await uh.complete_login(tx, check, OWNER)
    assert (await login(fundaments, "dev@example.com", PASSWORD))[0]
    assert not await events(fundaments, "account.locked")


async def test_repeated_locks_double_up_to_the_maximum(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await started(make_settings, clock, lockout_base_seconds=900, lockout_max_seconds=3000)
    try:
        await register(app, "dev@example.com")
        for expected in (900, 1800, 3000, 3000):
            assert (await fail(app, "dev@example.com", 5))[-1] is LoginFailure.INVALID_CREDENTIALS
            assert (await fail(app, "dev@example.com", 1)) == [LoginFailure.LOCKED]
            clock.advance(expected - 1)
            assert (await fail(app, "dev@example.com", 1)) == [LoginFailure.LOCKED]
            clock.advance(1)
        locks = await events(app, "account.locked")
        assert [e.details["lock_count"] for e in reversed(locks)] == [1, 2, 3, 4]
        assert (await login(app, "dev@example.com", PASSWORD))[0]  # success ends the backoff
        await fail(app, "dev@example.com", 5)
        clock.advance(900)
        assert (await login(app, "dev@example.com", PASSWORD))[0]
    finally:
        await app.close()


async def test_permanent_mode_locks_until_an_administrator_unlocks(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await started(make_settings, clock, lockout_max_seconds=0)
    try:
        user = await register(app, "dev@example.com")
        await fail(app, "dev@example.com", 5)
        clock.advance(10 * 365 * 86_400)
        assert (
            await app["user_handler"].authenticate("dev@example.com", PASSWORD, OWNER)
        ).reason is LoginFailure.LOCKED
        await app["security"].unlock_user(user.id, actor_user_id=99)
        [event] = await events(app, "account.unlocked")
        assert event.actor_user_id == 99 and event.subject_user_id == user.id
        assert (await login(app, "dev@example.com", PASSWORD))[0]
    finally:
        await app.close()


async def test_admin_unlock_clears_the_lock(fundaments: Fundaments, uh: UserHandler) -> None:
    user = await register(fundaments, "dev@example.com")
    await fail(fundaments, "dev@example.com", 5)
    await uh.unlock(user.id)
    assert (await login(fundaments, "dev@example.com", PASSWORD))[0]
    with pytest.raises(UnknownUserError):
        await uh.unlock(user.id + 1000)


async def test_concurrent_wrong_attempts_verify_at_most_threshold_times(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    await register(fundaments, "dev@example.com")
    checks = await asyncio.gather(
        *(uh.authenticate("dev@example.com", f"wrong guess number {i}", ATTACKER) for i in range(40))
    )
    reasons = [c.reason for c in checks]
    assert reasons.count(LoginFailure.INVALID_CREDENTIALS) == 5
    assert uh.verification_count == 5
    assert reasons.count(LoginFailure.LOCKED) + reasons.count(LoginFailure.BUSY) == 35


# --- device cookies -------------------------------------------------------------------------------


async def test_a_known_device_is_not_locked_out_by_failures_from_elsewhere(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    await register(fundaments, "dev@example.com")
    _, device = await login(fundaments, "dev@example.com", PASSWORD)
    await fail(fundaments, "dev@example.com", 5)  # the attacker locks the account
    with_cookie = RequestContext(OWNER.ip_address, OWNER.user_agent, device)
    assert (await uh.authenticate("dev@example.com", PASSWORD, OWNER)).reason is LoginFailure.LOCKED
    check, same = await login(fundaments, "dev@example.com", PASSWORD, with_cookie)
    assert check and same == device
    # the device login did not lift the account lock for everyone else
    assert (await uh.authenticate("dev@example.com", PASSWORD, ATTACKER)).reason is LoginFailure.LOCKED


async def test_a_device_counts_its_own_failures(
    fundaments: Fundaments, uh: UserHandler, clock: ManualClock
) -> None:
    await register(fundaments, "dev@example.com")
    _, device = await login(fundaments, "dev@example.com", PASSWORD)
    with_cookie = RequestContext(OWNER.ip_address, OWNER.user_agent, device)
    assert await fail(fundaments, "dev@example.com", 6, with_cookie) == [
        LoginFailure.INVALID_CREDENTIALS
    ] * 5 + [LoginFailure.LOCKED]
    [locked] = await events(fundaments, "account.locked")
    assert locked.details["scope"] == "device"
    assert (await login(fundaments, "dev@example.com", PASSWORD))[0]  # the account itself is not locked
    clock.advance(900)
    assert (await login(fundaments, "dev@example.com", PASSWORD, with_cookie))[0]


async def test_a_device_token_of_another_account_or_a_forged_one_bypasses_nothing(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    await register(fundaments, "dev@example.com")
    await register(fundaments, "eve@example.com")
    _, eves_device = await login(fundaments, "eve@example.com", PASSWORD)
    await fail(fundaments, "dev@example.com", 5)
    for token in (eves_device, "forged-token", "x" * 5000, "ünïcode"):
        ctx = RequestContext(ATTACKER.ip_address, ATTACKER.user_agent, token)
        assert (await uh.authenticate("dev@example.com", PASSWORD, ctx)).reason is LoginFailure.LOCKED


async def test_devices_per_account_are_bounded(fundaments: Fundaments) -> None:
    user = await register(fundaments, "dev@example.com")
    count_sql = "SELECT COUNT(*) FROM fundaments_devices WHERE user_id = $1"
    counts = []
    for _ in range(45):
        _, device = await login(fundaments, "dev@example.com", PASSWORD)
        counts.append(await fundaments["db"].fetchval(count_sql, user.id))
    assert max(counts) == 29 and counts[-1] >= 20
    # the newest device survives every prune and still bypasses a lock
    await fail(fundaments, "dev@example.com", 5)
    ctx = RequestContext(OWNER.ip_address, OWNER.user_agent, device)
    assert (await login(fundaments, "dev@example.com", PASSWORD, ctx))[0]


# --- the IP throttle ------------------------------------------------------------------------------


async def test_ip_throttle_stops_spraying_and_spares_other_ips(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await started(make_settings, clock, throttle_ip_failures=6, throttle_ip_window=600)
    uh: UserHandler = app["user_handler"]
    try:
        await register(app, "dev@example.com")
        for i in range(6):  # one guess on each of six names, most of them unknown
            assert (
                await uh.authenticate(f"user{i}@example.com", "summer2024 summer2024", ATTACKER)
            ).reason is (LoginFailure.INVALID_CREDENTIALS)
        verified = uh.verification_count
        assert (await uh.authenticate("dev@example.com", PASSWORD, ATTACKER)).reason is LoginFailure.THROTTLED
        assert uh.verification_count == verified
        assert (await login(app, "dev@example.com", PASSWORD, OWNER))[0]  # another IP is unaffected
        [event] = await events(app, "ip.throttled")
        assert event.ip_address == ATTACKER.ip_address
        clock.advance(600)
        assert (await login(app, "dev@example.com", PASSWORD, ATTACKER))[0]
    finally:
        await app.close()


def test_ipv6_clients_are_throttled_per_64() -> None:
    assert throttle_key("2001:db8:1:2:aaaa::1") == throttle_key("2001:db8:1:2:bbbb::2") == "2001:db8:1:2::/64"
    assert throttle_key("2001:db8:1:3::1") != throttle_key("2001:db8:1:2::1")
    assert throttle_key("::ffff:203.0.113.7") == "203.0.113.7"
    assert throttle_key(" 203.0.113.7") == "203.0.113.7"


# --- disabled accounts, passwords, reading --------------------------------------------------------


async def test_disabled_accounts_cannot_log_in(fundaments: Fundaments, uh: UserHandler) -> None:
    user = await register(fundaments, "dev@example.com")
    async with fundaments["db"].transaction() as tx:
        await uh.set_disabled(tx, user.id, True, actor_user_id=1)
    assert (await uh.authenticate("dev@example.com", PASSWORD, OWNER)).reason is LoginFailure.DISABLED
    assert (await uh.authenticate("dev@example.com", "wrong password entirely", OWNER)).reason is (
        LoginFailure.INVALID_CREDENTIALS
    )
    assert (await uh.get(user.id)).is_disabled  # type: ignore[union-attr]
    await fundaments["security"].enable_user(user.id, actor_user_id=1)
    assert (await login(fundaments, "dev@example.com", PASSWORD))[0]
    kinds = [e.kind for e in await fundaments["audit"].events(user_id=user.id, limit=50)]
    assert "user.disabled" in kinds and "user.enabled" in kinds
    with pytest.raises(UnknownUserError):
        async with fundaments["db"].transaction() as tx:
            await uh.set_disabled(tx, user.id + 1000, True)


async def test_the_current_password_check_counts_toward_the_lock(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    user = await register(fundaments, "dev@example.com")
    for attempt in range(1, 6):
        check = await uh.check_current_password(user.id, "not the password at all", OWNER, flight_key="s")
        assert not check and not check.locked and check.caused_lock is (attempt == 5)
    verified = uh.verification_count
    refused = await uh.check_current_password(user.id, PASSWORD, OWNER, flight_key="s")
    assert not refused and refused.locked  # the right password too, while the lock lasts
    assert uh.verification_count == verified  # and no hash was computed for it
    assert len(await events(fundaments, "password.change_failed")) == 6
    [locked] = await events(fundaments, "account.locked")
    assert locked.subject_user_id == user.id
    assert (await uh.authenticate("dev@example.com", PASSWORD, OWNER)).reason is LoginFailure.LOCKED
    with pytest.raises(UnknownUserError):
        await uh.check_current_password(user.id + 1000, PASSWORD, OWNER, flight_key="s")


async def test_set_password_bumps_the_epoch_and_clears_must_change(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    user = await register(fundaments, "dev@example.com", must_change_password=True)
    assert user.must_change_password
    epoch = "SELECT privilege_epoch FROM fundaments_users WHERE id = $1"
    before = await fundaments["db"].fetchval(epoch, user.id)
    new_hash = await uh.prepare_password("a different long passphrase", username="dev@example.com")
    async with fundaments["db"].transaction() as tx:
        await uh.set_password(tx, user.id, new_hash, actor_user_id=user.id)
    assert await fundaments["db"].fetchval(epoch, user.id) == before + 1
    assert not (await uh.get(user.id)).must_change_password  # type: ignore[union-attr]
    assert (await login(fundaments, "dev@example.com", "a different long passphrase"))[0]
    assert not (await login(fundaments, "dev@example.com", PASSWORD))[0]
    [event] = await events(fundaments, "password.changed")
    assert event.actor_user_id == user.id
    with pytest.raises(UnknownUserError):
        async with fundaments["db"].transaction() as tx:
            await uh.set_password(tx, user.id + 1000, new_hash)


async def test_reading_accounts_through_the_facade(fundaments: Fundaments) -> None:
    security = fundaments["security"]
    users = [await register(fundaments, f"user{i}@example.com") for i in range(3)]
    assert await security.get_user(users[1].id) == users[1]
    assert await security.get_user(999_999) is None
    assert await security.get_user_by_username("USER2@example.com") == users[2]
    assert await security.get_user_by_username("bad\x00") is None
    assert await security.list_users() == users
    assert await security.list_users(limit=1, offset=1) == [users[1]]


# --- the hashing pool under a flood ---------------------------------------------------------------


async def test_a_full_hashing_pool_answers_busy_at_once(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await started(make_settings, clock, hashing_concurrency=1, hashing_queue_size=0)
    uh: UserHandler = app["user_handler"]
    try:
        await register(app, "dev@example.com")
        with uh.passwords.pool.reserve():
            check = await uh.authenticate("dev@example.com", PASSWORD, OWNER)
            assert check.reason is LoginFailure.BUSY
        [event] = await events(app, "login.failed")
        assert event.details["reason"] == "busy"
        assert (await login(app, "dev@example.com", PASSWORD))[0]  # BUSY counted no failure
    finally:
        await app.close()


async def test_a_flood_of_logins_is_bounded(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    app = await started(
        make_settings,
        clock,
        hashing_concurrency=2,
        hashing_queue_size=8,
        lockout_threshold=1000,
        throttle_ip_failures=100_000,
    )
    uh: UserHandler = app["user_handler"]
    try:
        await register(app, "dev@example.com")
        checks = await asyncio.gather(
            *(uh.authenticate("dev@example.com", "wrong password entirely", ATTACKER) for _ in range(300))
        )
        reasons = {c.reason for c in checks}
        assert reasons <= {LoginFailure.INVALID_CREDENTIALS, LoginFailure.BUSY}
        assert LoginFailure.BUSY in reasons
        assert uh.passwords.pool.in_flight == 0
    finally:
        await app.close()


@hsettings(max_examples=300, deadline=None)
@given(st.one_of(st.ip_addresses().map(str), st.text(max_size=60)))
def test_throttle_keys_are_bounded_for_any_client_address(raw: str) -> None:
    key = throttle_key(raw)
    assert isinstance(key, str) and len(key) <= 64
    assert throttle_key(raw) == key


@hsettings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.text(max_size=300), st.integers()))
def test_device_token_hashing_accepts_only_plausible_tokens(raw: object) -> None:
    from fundaments.user_handler import hash_device_token

    digest = hash_device_token(raw)
    if digest is not None:
        assert isinstance(raw, str) and raw.isascii() and 0 < len(raw) <= 256 and len(digest) == 32


async def test_no_password_reaches_the_audit_trail_or_the_logs(
    fundaments: Fundaments, uh: UserHandler, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    wrong = "my wrong guess that must stay secret"
    await register(fundaments, "dev@example.com")
    _, device = await login(fundaments, "dev@example.com", PASSWORD)
    await fail(fundaments, "dev@example.com", 6)
    await uh.authenticate("dev@example.com", wrong, OWNER)
    rows = await fundaments["db"].fetch("SELECT * FROM fundaments_audit_events")
    dumped = " ".join(str(dict(r)) for r in rows) + " ".join(r.getMessage() for r in caplog.records)
    assert device is not None
    for secret in (PASSWORD, wrong, "not the password at all", device, "$argon2id$"):
        assert secret not in dumped


async def test_authenticate_accepts_request_dicts_and_odd_input(
    fundaments: Fundaments, uh: UserHandler
) -> None:
    await register(fundaments, "dev@example.com")
    check = await uh.authenticate("dev@example.com", PASSWORD, {"ip_address": "192.0.2.1", "user_agent": "x"})  # type: ignore[arg-type]
    assert check
    for password in (None, 12345, b"bytes", "x" * 5000):
        odd = await uh.authenticate("dev@example.com", password, OWNER)  # type: ignore[arg-type]
        assert odd.reason is LoginFailure.INVALID_CREDENTIALS
