"""Multi-factor authentication: TOTP enrolment and replay protection, recovery codes, the login
chain's second step (the mfa_token) and its attacks, on SQLite and PostgreSQL with the manual clock."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import pyotp
import pytest

from fundaments import Security, initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import AuthenticationError, InvalidArgument, PermissionDenied
from fundaments.mfa import RECOVERY_CODES, parse_code
from fundaments.models import LoginFailure, LoginResult

PASSWORD = "a long passphrase for the test 2026"
CLIENT = {"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0 mfa test"}
STEP = 30


def mid_step(clock: ManualClock) -> None:
    """Put the clock in the middle of a 30 s step, so ±1 step is exactly one step away."""
    clock.set((int(clock.now()) // STEP) * STEP + STEP / 2)


async def enrol(security: Security, clock: ManualClock, user_id: int) -> tuple[pyotp.TOTP, list[str]]:
    enrolment = await security.begin_totp_enrolment(user_id)
    totp = pyotp.TOTP(enrolment.secret)
    codes = await security.confirm_totp_enrolment(user_id, totp.at(clock.now()))
    clock.advance(STEP)  # the confirming code's step is spent: logins use the next one
    return totp, codes


async def ann_with_totp(
    security: Security, clock: ManualClock, name: str = "ann", **kwargs: object
) -> tuple[int, pyotp.TOTP, list[str]]:
    mid_step(clock)
    user = await security.register_user(name, PASSWORD, **kwargs)  # type: ignore[arg-type]
    totp, codes = await enrol(security, clock, user.id)
    return user.id, totp, codes


async def password_step(security: Security, name: str = "ann", client: dict[str, str] = CLIENT) -> str:
    result = await security.user_login(name, PASSWORD, client)
    assert not result and result.reason is LoginFailure.MFA_REQUIRED and result.mfa_token
    return result.mfa_token


async def count(app: Fundaments, table: str, user_id: int) -> int:
    return int(await app["db"].fetchval(f"SELECT COUNT(*) FROM {table} WHERE user_id = $1", user_id))


# --- enrolment ------------------------------------------------------------------------------------
async def test_enrolment_is_pending_until_a_valid_code_confirms_it(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    mid_step(clock)
    user = await security.register_user("ann", PASSWORD)
    enrolment = await security.begin_totp_enrolment(user.id)
    assert len(enrolment.secret) == 32  # base32 of 160 bits
    assert enrolment.uri.startswith("otpauth://totp/fundaments:ann?secret=")
    assert "issuer=fundaments" in enrolment.uri
    assert enrolment.secret not in repr(enrolment)
    assert not (await security.mfa_status(user.id)).totp
    assert await security.user_login("ann", PASSWORD, CLIENT)  # nothing active yet: a session

    with pytest.raises(AuthenticationError):
        await security.confirm_totp_enrolment(user.id, "000000")
    totp = pyotp.TOTP(enrolment.secret)
    codes = await security.confirm_totp_enrolment(user.id, totp.at(clock.now()))
    assert len(codes) == RECOVERY_CODES == len(set(codes))
    status = await security.mfa_status(user.id)
    assert status.totp and status.passkeys == 0 and status.recovery_codes_left == RECOVERY_CODES
    events = await fundaments["audit"].events(user_id=user.id, kind="mfa.totp_enabled")
    assert len(events) == 1


async def test_an_enrolment_not_confirmed_in_time_expires(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user = await security.register_user("ann", PASSWORD)
    enrolment = await security.begin_totp_enrolment(user.id)
    clock.advance(fundaments.settings.mfa_enrolment_ttl + 1)
    with pytest.raises(AuthenticationError):
        await security.confirm_totp_enrolment(user.id, pyotp.TOTP(enrolment.secret).at(clock.now()))
    assert not (await security.mfa_status(user.id)).totp


async def test_the_issuer_comes_from_mfa_issuer(make_settings: Callable[..., Settings], clock) -> None:
    app = await initialize_fundaments(
        make_settings(mfa_issuer="Example Corp"), clock=clock, configure_logs=False
    )
    try:
        user = await app.security.register_user("ann", PASSWORD)
        enrolment = await app.security.begin_totp_enrolment(user.id)
        assert "issuer=Example%20Corp" in enrolment.uri
    finally:
        await app.close()


# --- the login chain ------------------------------------------------------------------------------
async def test_a_right_password_is_not_a_login_for_an_account_with_totp(
    fundaments: Fundaments, clock
) -> None:
    security = fundaments.security
    user_id, totp, _ = await ann_with_totp(security, clock)
    result = await security.user_login("ann", PASSWORD, CLIENT)
    assert not result and result.reason is LoginFailure.MFA_REQUIRED
    assert result.session is None and result.device_token is None and result.user is None
    assert result.mfa_token and result.mfa_token not in repr(result)
    assert await count(fundaments, "fundaments_sessions", user_id) == 0  # no session row
    assert (await security.get_user(user_id)).last_login_at is None  # type: ignore[union-attr]

    done = await security.verify_mfa(result.mfa_token, totp.at(clock.now()), CLIENT)
    assert done and done.session is not None and done.session.token and done.device_token
    assert done.user is not None and done.user.id == user_id and done.user.last_login_at == clock.now()
    assert await security.validate_session(done.session.token, CLIENT)
    [event] = await fundaments["audit"].events(user_id=user_id, kind="login.succeeded")
    assert event.details["second_factor"] == "totp" and event.session_id == done.session.id


async def test_an_accepted_code_is_refused_again_same_or_next_request(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    _, totp, _ = await ann_with_totp(security, clock)
    code = totp.at(clock.now())
    token = await password_step(security)
    assert await security.verify_mfa(token, code, CLIENT)
    again = await security.verify_mfa(token, code, CLIENT)  # the same request again
    assert not again and again.mfa_token is None  # the token was spent with the success
    replay = await security.verify_mfa(await password_step(security), code, CLIENT)  # next login
    assert not replay and replay.reason is LoginFailure.INVALID_CREDENTIALS
    clock.advance(STEP)
    assert await security.verify_mfa(replay.mfa_token, totp.at(clock.now()), CLIENT)  # type: ignore[arg-type]


async def test_an_accepted_code_is_refused_by_another_instance(
    fundaments: Fundaments, settings: Settings, clock
) -> None:
    security = fundaments.security
    _, totp, _ = await ann_with_totp(security, clock)
    code = totp.at(clock.now())
    assert await security.verify_mfa(await password_step(security), code, CLIENT)
    other = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        token = await password_step(other.security)
        assert not await other.security.verify_mfa(token, code, CLIENT)
    finally:
        await other.close()


@pytest.mark.parametrize(("offset", "accepted"), [(-2, False), (-1, True), (0, True), (1, True), (2, False)])
async def test_one_step_of_drift_either_way_is_accepted_two_are_not(
    fundaments: Fundaments, clock, offset: int, accepted: bool
) -> None:
    security = fundaments.security
    _, totp, _ = await ann_with_totp(security, clock)
    clock.advance(5 * STEP)  # far past the confirming step
    code = totp.at(clock.now(), counter_offset=offset)
    assert bool(await security.verify_mfa(await password_step(security), code, CLIENT)) is accepted


async def test_concurrent_requests_with_one_code_let_exactly_one_in(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    _, totp, _ = await ann_with_totp(security, clock)
    tokens = [await password_step(security) for _ in range(4)]
    code = totp.at(clock.now())
    results = await asyncio.gather(*(security.verify_mfa(t, code, CLIENT) for t in tokens))
    assert sum(bool(r) for r in results) == 1


async def test_wrong_codes_lock_the_account_like_wrong_passwords(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user_id, totp, _ = await ann_with_totp(security, clock, email="ann@example.com")
    threshold = fundaments.settings.lockout_threshold
    assert not await security.user_login("ann", "a wrong passphrase entirely", CLIENT)  # one wrong password
    waiting = await password_step(security)  # a challenge opened before the lock
    token = await password_step(security)
    for _ in range(threshold - 1):
        result = await security.verify_mfa(token, "000000", CLIENT)
        assert result.reason is LoginFailure.INVALID_CREDENTIALS
    user = await security.get_user(user_id)
    assert user is not None and user.is_locked
    assert (await security.user_login("ann", PASSWORD, CLIENT)).reason is LoginFailure.LOCKED
    locked = await security.verify_mfa(waiting, totp.at(clock.now()), CLIENT)  # the right code
    assert locked.reason is LoginFailure.LOCKED
    [event] = await fundaments["audit"].events(user_id=user_id, kind="account.locked")
    assert event.details["scope"] == "account"
    kinds = [r["kind"] for r in await fundaments["db"].fetch("SELECT kind FROM fundaments_mail_outbox")]
    sent = [p.read_text() for p in Path(fundaments.settings.mail_url.get_secret_value()[7:]).glob("*.eml")]
    assert "account_locked" in kinds or any("your account was locked" in text for text in sent)


async def test_a_right_password_does_not_reset_the_second_factor_failures(
    fundaments: Fundaments, clock
) -> None:
    """Else whoever knows the password gets a fresh set of code guesses at every login."""
    security = fundaments.security
    user_id, _, _ = await ann_with_totp(security, clock)
    threshold = fundaments.settings.lockout_threshold
    for _ in range(threshold - 1):
        token = await password_step(security)
        assert not await security.verify_mfa(token, "000000", CLIENT)
    token = await password_step(security)  # still allowed: threshold - 1 failures
    assert not await security.verify_mfa(token, "111111", CLIENT)
    user = await security.get_user(user_id)
    assert user is not None and user.is_locked


async def test_a_challenge_has_its_own_attempt_budget(make_settings: Callable[..., Settings], clock) -> None:
    app = await initialize_fundaments(
        make_settings(mfa_challenge_attempts=3, lockout_threshold=100), clock=clock, configure_logs=False
    )
    try:
        _, totp, _ = await ann_with_totp(app.security, clock)
        token = await password_step(app.security)
        results = [await app.security.verify_mfa(token, "000000", CLIENT) for _ in range(3)]
        assert [r.mfa_token is not None for r in results] == [True, True, False]
        assert not await app.security.verify_mfa(token, totp.at(clock.now()), CLIENT)  # out of attempts
    finally:
        await app.close()


async def test_an_mfa_token_expires(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    _, totp, _ = await ann_with_totp(security, clock)
    token = await password_step(security)
    clock.advance(fundaments.settings.mfa_token_ttl)
    assert not await security.verify_mfa(token, totp.at(clock.now()), CLIENT)


async def test_an_mfa_token_from_another_client_is_refused_and_dies(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    _, totp, _ = await ann_with_totp(security, clock)
    for other in ({**CLIENT, "ip_address": "192.0.2.99"}, {**CLIENT, "user_agent": "curl/8.0"}):
        token = await password_step(security)
        assert not await security.verify_mfa(token, totp.at(clock.now()), other)
        assert not await security.verify_mfa(token, totp.at(clock.now()), CLIENT)  # the stolen token died
    assert await security.verify_mfa(await password_step(security), totp.at(clock.now()), CLIENT)


async def test_an_mfa_token_is_never_a_session(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    _, _, _ = await ann_with_totp(security, clock)
    token = await password_step(security)
    assert await security.validate_session(token, CLIENT) is None
    assert await security.validate_session(token, CLIENT, bearer=True) is None  # type: ignore[call-arg]
    assert not await security.user_logout(token)
    # Different table, different digest: no session row carries the token's SHA-256 either.
    digest = hashlib.sha256(token.encode()).digest()
    assert (
        await fundaments["db"].fetchval(
            "SELECT COUNT(*) FROM fundaments_sessions WHERE token_hash = $1", digest
        )
        == 0
    )


async def test_verify_mfa_refuses_malformed_input_as_a_wrong_code(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    await ann_with_totp(security, clock)
    token = await password_step(security)
    for code in ("", "12345", "1234567", "x" * 10_000, None, 123456, "１２３４５６"):
        result = await security.verify_mfa(token, code, CLIENT)  # type: ignore[arg-type]
        assert result.reason in (LoginFailure.INVALID_CREDENTIALS, LoginFailure.LOCKED)
    for bad in (None, "", "x" * 10_000, 42):
        assert not await security.verify_mfa(bad, "123456", CLIENT)  # type: ignore[arg-type]


async def test_a_disabled_account_cannot_finish_its_login(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user_id, totp, _ = await ann_with_totp(security, clock)
    token = await password_step(security)
    await security.disable_user(user_id)
    result = await security.verify_mfa(token, totp.at(clock.now()), CLIENT)
    assert result.reason is LoginFailure.DISABLED


# --- recovery codes -------------------------------------------------------------------------------
async def test_each_recovery_code_works_once_in_any_typing(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user_id, _, codes = await ann_with_totp(security, clock, email="ann@example.com")
    typed = codes[0].lower().replace("-", " ")
    done = await security.verify_mfa(await password_step(security), typed, CLIENT)
    assert done
    [event] = await fundaments["audit"].events(user_id=user_id, kind="login.succeeded")
    assert event.details["second_factor"] == "recovery_code"
    assert (await security.mfa_status(user_id)).recovery_codes_left == RECOVERY_CODES - 1
    assert not await security.verify_mfa(await password_step(security), codes[0], CLIENT)
    assert await security.verify_mfa(await password_step(security), codes[1], CLIENT)
    [used, *_] = await fundaments["audit"].events(user_id=user_id, kind="mfa.recovery_code_used")
    assert used.details["left"] == RECOVERY_CODES - 2
    await fundaments["mail"].send_due()
    outbox = Path(fundaments.settings.mail_url.get_secret_value()[len("file://") :])
    mails = [p.read_text() for p in outbox.glob("*.eml")]
    assert sum("a recovery code was used" in m for m in mails) == 2
    assert not any(code in m for m in mails for code in codes)


async def test_regenerated_recovery_codes_kill_the_old_set(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user_id, _, old = await ann_with_totp(security, clock)
    new = await security.regenerate_recovery_codes(user_id)
    assert not set(old) & set(new)
    assert (await security.mfa_status(user_id)).recovery_codes_left == RECOVERY_CODES
    assert not await security.verify_mfa(await password_step(security), old[3], CLIENT)
    assert await security.verify_mfa(await password_step(security), new[3], CLIENT)
    with pytest.raises(InvalidArgument):
        await security.regenerate_recovery_codes((await security.register_user("bob", PASSWORD)).id)


async def test_recovery_codes_are_stored_as_keyed_digests(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user_id, _, codes = await ann_with_totp(security, clock)
    rows = await fundaments["db"].fetch(
        "SELECT code_hash, key_id FROM fundaments_mfa_recovery_codes WHERE user_id = $1", user_id
    )
    assert len(rows) == RECOVERY_CODES
    stored = {bytes(r["code_hash"]) for r in rows}
    for code in codes:
        canonical = parse_code(code)[1]  # type: ignore[index]
        assert hashlib.sha256(canonical.encode()).digest() not in stored  # not a plain hash
        assert canonical.encode() not in b"".join(stored)
    assert {r["key_id"] for r in rows} == {fundaments["encryption"].key_id}


async def test_a_recovery_code_raced_by_two_logins_lets_one_in(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    _, _, codes = await ann_with_totp(security, clock)
    tokens = [await password_step(security) for _ in range(3)]
    results = await asyncio.gather(*(security.verify_mfa(t, codes[5], CLIENT) for t in tokens))
    assert sum(bool(r) for r in results) == 1


# --- turning it off, deleting, rotating keys --------------------------------------------------------
async def test_disable_totp_is_audited_told_and_delegated(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    member = await security.register_user("mallory", PASSWORD, roles=["member"])
    admin = await security.register_user("root", PASSWORD, roles=["admin"])
    user_id, _, _ = await ann_with_totp(security, clock, email="ann@example.com", roles=["admin"])
    with pytest.raises(PermissionDenied):
        await security.disable_totp(user_id, actor_user_id=member.id)  # overruling an admin
    assert (await security.mfa_status(user_id)).totp
    assert await security.disable_totp(user_id, actor_user_id=admin.id)
    assert not await security.disable_totp(user_id, actor_user_id=admin.id)  # nothing left to turn off
    status = await security.mfa_status(user_id)
    assert not status.totp and status.recovery_codes_left == 0
    [event] = await fundaments["audit"].events(user_id=user_id, kind="mfa.totp_disabled")
    assert event.actor_user_id == admin.id and event.details["by_administrator"] is True
    assert await security.user_login("ann", PASSWORD, CLIENT)  # the password alone again
    await fundaments["mail"].send_due()
    outbox = Path(fundaments.settings.mail_url.get_secret_value()[len("file://") :])
    assert any("two-factor sign-in was turned off" in p.read_text() for p in outbox.glob("*.eml"))


async def test_deleting_an_account_removes_its_mfa_rows(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user_id, _, _ = await ann_with_totp(security, clock)
    await password_step(security)
    tables = ("fundaments_mfa_totp", "fundaments_mfa_recovery_codes", "fundaments_mfa_challenges")
    assert all([await count(fundaments, t, user_id) for t in tables])
    await security.delete_user(user_id)
    assert [await count(fundaments, t, user_id) for t in tables] == [0, 0, 0]


async def test_key_rotation_reencrypts_the_totp_secrets(
    make_settings: Callable[..., Settings], clock
) -> None:
    from conftest import TEST_MASTER_KEY

    first = await initialize_fundaments(make_settings(), clock=clock, configure_logs=False)
    try:
        _, totp, _ = await ann_with_totp(first.security, clock)
    finally:
        await first.close()
    new_key = "a-new-master-key-0123456789abcdefghijklmnopqrstu"
    rotated = await initialize_fundaments(
        make_settings(master_encryption_key=new_key, master_encryption_key_previous=TEST_MASTER_KEY),
        clock=clock,
        configure_logs=False,
    )
    try:
        report = await rotated.security.reencrypt_column(
            "fundaments_mfa_totp", "secret", key_column="user_id", context_column="secret_context"
        )
        assert report.complete and report.reencrypted == 1
    finally:
        await rotated.close()
    only_new = await initialize_fundaments(
        make_settings(master_encryption_key=new_key), clock=clock, configure_logs=False
    )
    try:
        token = await password_step(only_new.security)
        assert await only_new.security.verify_mfa(token, totp.at(clock.now()), CLIENT)
    finally:
        await only_new.close()


# --- a password reset does not remove or bypass the second factor ----------------------------------
async def test_a_reset_password_still_asks_for_the_second_factor(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    user_id, totp, _ = await ann_with_totp(security, clock)
    await security.set_password(user_id, "an administrator's new passphrase", must_change=False)
    result = await security.user_login("ann", "an administrator's new passphrase", CLIENT)
    assert result.reason is LoginFailure.MFA_REQUIRED
    assert isinstance(result, LoginResult) and result.mfa_token
    assert await security.verify_mfa(result.mfa_token, totp.at(clock.now()), CLIENT)


async def test_a_known_device_is_not_locked_out_by_someone_else_s_wrong_codes(
    fundaments: Fundaments, clock
) -> None:
    """The device-cookie rule holds for the second factor as for passwords (OWASP device cookies)."""
    security = fundaments.security
    user_id, totp, _ = await ann_with_totp(security, clock)
    first = await security.verify_mfa(await password_step(security), totp.at(clock.now()), CLIENT)
    assert first and first.device_token
    attacker = {"ip_address": "198.51.100.66", "user_agent": "attacker"}
    token = await password_step(security, client=attacker)  # knows the password, not the code
    for _ in range(fundaments.settings.lockout_threshold):
        assert not await security.verify_mfa(token, "000000", attacker)
    user = await security.get_user(user_id)
    assert user is not None and user.is_locked
    ann = {**CLIENT, "device_token": first.device_token}
    clock.advance(STEP)
    again = await security.verify_mfa(await password_step(security, client=ann), totp.at(clock.now()), ann)
    assert again and again.device_token == first.device_token


async def test_the_code_that_confirmed_the_enrolment_cannot_log_in(fundaments: Fundaments, clock) -> None:
    security = fundaments.security
    mid_step(clock)
    user = await security.register_user("ann", PASSWORD)
    enrolment = await security.begin_totp_enrolment(user.id)
    code = pyotp.TOTP(enrolment.secret).at(clock.now())
    await security.confirm_totp_enrolment(user.id, code)
    assert not await security.verify_mfa(await password_step(security), code, CLIENT)
