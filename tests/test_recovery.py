"""Account recovery over real mail: password reset, email verification, address changes, notices.

Mail goes through the real outbox to a real SMTP server (aiosmtpd on a loopback port) or the file
outbox; the tests read the link out of the delivered message as a user would.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import re
import statistics
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pyotp
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from fundaments import Security, initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import (
    AuthenticationError,
    EmailInUseError,
    InvalidArgument,
    InvalidEmailError,
    PasswordPolicyError,
)
from fundaments.models import LoginFailure
from test_mail import SmtpServer, smtp  # noqa: F401 - smtp is a fixture
from timing import assert_same_time

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase 2026"
CLIENT = {"ip_address": "198.51.100.40", "user_agent": "Mozilla/5.0 recovery test"}
LINK = re.compile(r"https?://[^\s\"<>]+[?]token=([A-Za-z0-9_%-]+)")


@pytest.fixture
async def app(
    make_settings: Callable[..., Settings],
    clock: ManualClock,
    smtp: SmtpServer,  # noqa: F811
) -> AsyncIterator[Fundaments]:
    started = await initialize_fundaments(
        make_settings(mail_url=smtp.url, reset_request_seconds=0, public_base_url="https://app.example"),
        clock=clock,
        configure_logs=False,
    )
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
def security(app: Fundaments) -> Security:
    return app.security


async def deliver(app: Fundaments, smtp: SmtpServer, expect: int | None = None) -> list[EmailMessage]:  # noqa: F811
    """Drain the outbox now; the messages the server received since the last call. With
    ``expect``, wait (5 s at most) for that many: another instance's drainer may hold them."""
    seen = getattr(smtp, "seen", 0)
    await app["mail"].send_due()  # waits for this instance's background pass, if one is running
    deadline = time.monotonic() + 5
    while expect is not None and len(smtp.inbox.messages) - seen < expect and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await app["mail"].send_due()
    smtp.seen = len(smtp.inbox.messages)  # type: ignore[attr-defined]
    return smtp.inbox.messages[seen:]


def body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def token_in(message: EmailMessage, path: str) -> str:
    match = LINK.search(body(message))
    assert match is not None and f"https://app.example{path}?token=" in body(message), body(message)
    return match.group(1)


async def reset_link(app: Fundaments, smtp: SmtpServer, address: str = "ann@example.com") -> str:  # noqa: F811
    await app.security.request_password_reset(address, CLIENT)
    [message] = await deliver(app, smtp, expect=1)
    assert message["To"] == address
    return token_in(message, "/reset-password")


# --- the reset, end to end ------------------------------------------------------------------------------
async def test_a_reset_link_sets_a_new_password_once_and_ends_every_session(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com")
    session = (await security.user_login("ann", PASSWORD, CLIENT)).session
    assert session is not None
    for i in range(5):  # and the account is locked
        await security.user_login("ann", f"wrong {i}", CLIENT)
    [lock_notice] = await deliver(app, smtp)
    assert "locked" in lock_notice["Subject"]
    token = await reset_link(app, smtp)
    assert len(token) >= 43  # 256 bits, base64url
    assert await security.password_reset_link_valid(token)  # and asking spends nothing
    assert await security.password_reset_link_valid(token)
    user = await security.reset_password(token, NEW_PASSWORD, CLIENT)
    assert user.id == ann.id and not user.is_locked and not user.must_change_password
    assert await security.validate_session(session.token, CLIENT) is None
    assert not await security.user_login("ann", PASSWORD, CLIENT)
    assert await security.user_login("ann", NEW_PASSWORD, CLIENT)
    assert not await security.password_reset_link_valid(token)
    with pytest.raises(AuthenticationError, match="ask for a new one"):
        await security.reset_password(token, "yet another passphrase 77", CLIENT)  # single use
    [notice] = await deliver(app, smtp)
    assert notice["To"] == "ann@example.com" and "password was changed" in notice["Subject"]
    assert "The password of your account was changed" in body(notice) and token not in body(notice)
    kinds = [e.kind for e in await security.audit_events(user_id=ann.id)]
    assert "password_reset.requested" in kinds and "password.changed" in kinds
    # the database holds no usable link: only the digest of a token is ever stored
    db = app["db"]
    raw = await db.fetch("SELECT token_hash FROM fundaments_account_tokens")
    assert all(token.encode() not in bytes(row["token_hash"]) for row in raw)


async def test_a_reset_link_dies_when_it_expires(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
    clock: ManualClock,
) -> None:
    await security.register_user("ann", PASSWORD, email="ann@example.com")
    token = await reset_link(app, smtp)
    clock.advance(30 * 60 + 1)
    with pytest.raises(AuthenticationError):
        await security.reset_password(token, NEW_PASSWORD, CLIENT)
    assert await security.user_login("ann", PASSWORD, CLIENT)


async def test_a_tampered_or_foreign_token_opens_nothing(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    await security.register_user("ann", PASSWORD, email="ann@example.com")
    token = await reset_link(app, smtp)
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for bad in (flipped, token + "x", token[:-1], "", "x" * 5000, token.upper()):
        with pytest.raises(AuthenticationError):
            await security.reset_password(bad, NEW_PASSWORD, CLIENT)
    # a verification token is no reset token, and a reset token verifies no address
    await security.request_email_verification((await security.get_user_by_username("ann")).id)  # type: ignore[union-attr]
    [verify_mail] = await deliver(app, smtp)
    verification = token_in(verify_mail, "/verify-email")
    with pytest.raises(AuthenticationError):
        await security.reset_password(verification, NEW_PASSWORD, CLIENT)
    with pytest.raises(AuthenticationError):
        await security.verify_email(token)
    assert await security.reset_password(token, NEW_PASSWORD, CLIENT)  # both still work for their purpose
    assert (await security.verify_email(verification)).email_verified


async def test_a_newer_link_a_password_change_or_an_address_change_kill_a_link(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com")
    first = await reset_link(app, smtp)
    second = await reset_link(app, smtp)
    with pytest.raises(AuthenticationError):
        await security.reset_password(first, NEW_PASSWORD, CLIENT)
    await security.change_password(ann.id, PASSWORD, "the owner changed it 1234")
    await deliver(app, smtp)  # the change's notice
    with pytest.raises(AuthenticationError):
        await security.reset_password(second, NEW_PASSWORD, CLIENT)
    third = await reset_link(app, smtp)
    await security.set_email(ann.id, "ann@example.org")
    [changed] = await deliver(app, smtp)
    assert changed["To"] == "ann@example.com"
    with pytest.raises(AuthenticationError):
        await security.reset_password(third, NEW_PASSWORD, CLIENT)
    await security.disable_user(ann.id)
    await security.enable_user(ann.id)
    fourth = await reset_link(app, smtp, "ann@example.org")
    await security.disable_user(ann.id)
    with pytest.raises(AuthenticationError):  # a disabled account is not reset back into use
        await security.reset_password(fourth, NEW_PASSWORD, CLIENT)
    assert await security.user_login("ann", "the owner changed it 1234", CLIENT) is not None


async def test_a_refused_new_password_keeps_the_link_usable(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    await security.register_user("ann", PASSWORD, email="ann@example.com")
    token = await reset_link(app, smtp)
    with pytest.raises(PasswordPolicyError):
        await security.reset_password(token, "short", CLIENT)
    assert await security.reset_password(token, NEW_PASSWORD, CLIENT)


async def test_two_requests_racing_with_one_link_set_one_password(
    make_settings: Callable[..., Settings],
    clock: ManualClock,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    shared = make_settings(mail_url=smtp.url, reset_request_seconds=0, public_base_url="https://app.example")
    one = await initialize_fundaments(shared, clock=clock, configure_logs=False)
    two = await initialize_fundaments(shared, clock=clock, configure_logs=False)
    try:
        await one.security.register_user("ann", PASSWORD, email="ann@example.com")
        token = await reset_link(one, smtp)
        outcomes = await asyncio.gather(
            one.security.reset_password(token, "first racer passphrase 1", CLIENT),
            two.security.reset_password(token, "second racer passphrase 2", CLIENT),
            return_exceptions=True,
        )
        assert sorted(type(o).__name__ for o in outcomes) == ["AuthenticationError", "User"]
        winner = (
            "first racer passphrase 1"
            if not isinstance(outcomes[0], Exception)
            else "second racer passphrase 2"
        )
        assert await one.security.user_login("ann", winner, CLIENT)
    finally:
        await one.close()
        await two.close()


# --- no enumeration ---------------------------------------------------------------------------------------
async def test_every_kind_of_address_gets_the_same_answer_and_only_a_live_account_a_mail(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    await security.register_user("ann", PASSWORD, email="ann@example.com")
    bob = await security.register_user("bob", PASSWORD, email="bob@example.com")
    await security.disable_user(bob.id)
    carol = await security.register_user("carol", PASSWORD, email="carol@example.com")
    for i in range(5):
        await security.user_login("carol", f"wrong {i}", CLIENT)
    await deliver(app, smtp)  # carol's lock notice
    answers = [
        await security.request_password_reset(address, CLIENT)
        for address in ("ann@example.com", "nobody@example.com", "bob@example.com", "carol@example.com")
    ]
    assert answers == [None, None, None, None]
    sent = await deliver(app, smtp)
    assert sorted(m["To"] for m in sent) == ["ann@example.com", "carol@example.com"]  # locked: may recover
    outcomes = {
        e.subject_user_id: e.details["outcome"]
        for e in await security.audit_events(kind="password_reset.requested")
    }
    assert outcomes == {None: "unknown_address", bob.id: "disabled", carol.id: "sent", 1: "sent"}
    with pytest.raises(InvalidEmailError):  # not an address at all: says nothing about accounts
        await security.request_password_reset("not an address", CLIENT)


async def test_requests_are_throttled_per_address_and_per_ip_with_the_same_answer(
    make_settings: Callable[..., Settings],
    clock: ManualClock,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    app = await initialize_fundaments(
        make_settings(
            mail_url=smtp.url, reset_request_seconds=0, reset_requests_per_address=2, reset_requests_per_ip=5
        ),
        clock=clock,
        configure_logs=False,
    )
    try:
        security = app.security
        await security.register_user("ann", PASSWORD, email="ann@example.com")
        for _ in range(4):
            assert await security.request_password_reset("ann@example.com", CLIENT) is None
        assert len(await deliver(app, smtp)) == 2  # per address
        other = {"ip_address": "203.0.113.99", "user_agent": "x"}
        for i in range(8):
            await security.request_password_reset(f"someone{i}@example.com", other)
        await security.request_password_reset("ann@example.com", {**other, "ip_address": "203.0.113.99"})
        assert await deliver(app, smtp) == []  # the IP used its 5, and ann's address its 2
        throttled = await security.audit_events(kind="password_reset.throttled")
        assert 1 <= len(throttled) <= 2  # coalesced: a flood is not an event per request
        clock.advance(3601)  # a new window
        await security.request_password_reset("ann@example.com", CLIENT)
        assert len(await deliver(app, smtp)) == 1
    finally:
        await app.close()


@pytest.mark.slow
async def test_a_known_and_an_unknown_address_take_the_same_time(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """Medians of 50 requests each, interleaved; the default padding is 250 ms, 40 ms here. With
    RESET_REQUEST_SECONDS=0 the known address (token, mail, encryption, outbox) is measurably slower."""
    app = await initialize_fundaments(
        make_settings(
            reset_request_seconds=0.04, reset_requests_per_address=1000, reset_requests_per_ip=100_000
        ),
        clock=clock,
        configure_logs=False,
    )
    try:
        security = app.security
        await security.register_user("ann", PASSWORD, email="ann@example.com")
        serial = iter(range(10**6))

        async def timed(address: str) -> float:
            start = time.perf_counter()
            await security.request_password_reset(address, CLIENT)
            return time.perf_counter() - start

        async def measure() -> tuple[list[float], list[float]]:
            known, unknown = [], []
            for _ in range(50):
                known.append(await timed("ann@example.com"))
                unknown.append(await timed(f"nobody{next(serial)}@example.com"))
            return known, unknown

        await timed("ann@example.com")
        await timed("warm@example.com")
        await assert_same_time(measure, names=("known", "unknown"))
        assert statistics.median((await measure())[0]) >= 0.04
    finally:
        await app.close()


# --- email verification and address changes ---------------------------------------------------------------
async def test_an_address_is_verified_by_its_link_once(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com")
    await security.request_email_verification(ann.id)
    [message] = await deliver(app, smtp)
    token = token_in(message, "/verify-email")
    user = await security.verify_email(token)
    assert user.email_verified and (await security.get_user(ann.id)).email_verified  # type: ignore[union-attr]
    with pytest.raises(AuthenticationError):
        await security.verify_email(token)
    await security.request_email_verification(ann.id)
    [again] = await deliver(app, smtp)
    await security.set_email(ann.id, "ann@example.net")  # the link was for the old address
    with pytest.raises(AuthenticationError):
        await security.verify_email(token_in(again, "/verify-email"))
    assert not (await security.get_user(ann.id)).email_verified  # type: ignore[union-attr]
    bob = await security.register_user("bob", PASSWORD)
    with pytest.raises(InvalidArgument, match="no email address"):
        await security.request_email_verification(bob.id)


async def test_an_address_change_tells_the_old_address_and_refuses_a_taken_one(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com")
    await security.register_user("bob", PASSWORD, email="bob@example.com")
    with pytest.raises(EmailInUseError):
        await security.set_email(ann.id, "BOB@example.com")
    changed = await security.set_email(ann.id, "ann@example.org")
    assert changed.email == "ann@example.org" and not changed.email_verified
    [notice] = await deliver(app, smtp)
    assert notice["To"] == "ann@example.com" and "a***@example.org" in body(notice)
    assert "ann@example.org" not in body(notice)  # masked: the old address's reader may not be ann


# --- security notices --------------------------------------------------------------------------------------
async def test_the_owner_hears_of_a_password_set_a_lock_and_optionally_a_new_device(
    make_settings: Callable[..., Settings],
    clock: ManualClock,
    smtp: SmtpServer,  # noqa: F811
) -> None:
    app = await initialize_fundaments(
        make_settings(mail_url=smtp.url, notify_new_device_login=True), clock=clock, configure_logs=False
    )
    try:
        security = app.security
        root = await security.register_user("root", PASSWORD, roles=["admin"])
        ann = await security.register_user("ann", PASSWORD, email="ann@example.com")
        first = await security.user_login("ann", PASSWORD, CLIENT)
        assert await deliver(app, smtp) == []  # the first device of an account is no news
        await security.user_login("ann", PASSWORD, {**CLIENT, "device_token": first.device_token})
        assert await deliver(app, smtp) == []  # a known device
        await security.user_login("ann", PASSWORD, {"ip_address": "192.0.2.77", "user_agent": "other"})
        [new_device] = await deliver(app, smtp)
        assert "new device" in new_device["Subject"] and "192.0.2.77" in body(new_device)
        for i in range(5):
            await security.user_login("ann", f"wrong {i}", CLIENT)
        [locked] = await deliver(app, smtp)
        assert "locked" in locked["Subject"] and CLIENT["ip_address"] in body(locked)
        await security.set_password(ann.id, "set by the administrator 42", actor_user_id=root.id)
        [set_mail] = await deliver(app, smtp)
        assert "An administrator set a new password" in body(set_mail)
    finally:
        await app.close()


async def test_a_reset_mail_lands_in_the_file_outbox_by_default(
    fundaments: Fundaments, tmp_path: Path
) -> None:
    """MAIL_URL's default is a directory of .eml files (tests: under tmp_path): a developer opens
    the mail there."""
    security = fundaments.security
    await security.register_user("ann", PASSWORD, email="ann@example.com")
    await security.request_password_reset("ann@example.com", CLIENT)
    await fundaments["mail"].send_due()
    [path] = list((tmp_path / "outbox").glob("*.eml"))
    assert path.stat().st_mode & 0o777 == 0o600
    message = email.message_from_bytes(path.read_bytes(), _class=EmailMessage, policy=email.policy.default)
    match = LINK.search(body(message))  # type: ignore[arg-type]
    assert match is not None
    assert await security.reset_password(match.group(1), NEW_PASSWORD, CLIENT)


async def test_a_mail_server_that_is_down_delivers_the_link_once_it_is_back(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    server = SmtpServer()  # not started: connection refused
    app = await initialize_fundaments(
        make_settings(mail_url=server.url, reset_request_seconds=0, mail_retry_seconds=30),
        clock=clock,
        configure_logs=False,
    )
    try:
        await app.security.register_user("ann", PASSWORD, email="ann@example.com")
        await app.security.request_password_reset("ann@example.com", CLIENT)  # answers at once
        assert await app["mail"].send_due() == 0
        server.start()
        clock.advance(31)
        assert await app["mail"].send_due() == 1
        token = LINK.search(body(server.inbox.messages[0]))
        assert token is not None and await app.security.reset_password(token.group(1), NEW_PASSWORD, CLIENT)
        clock.advance(3600)
        await app["mail"].send_due()
        assert [m["Subject"] for m in server.inbox.messages][:1] == ["Reset your fundaments password"]
        assert len([m for m in server.inbox.messages if "Reset" in m["Subject"]]) == 1
    finally:
        server.stop()
        await app.close()


# --- untrusted input --------------------------------------------------------------------------------
@pytest.fixture
def loop_app(
    make_settings: Callable[..., Settings],
) -> Iterator[tuple[asyncio.AbstractEventLoop, Fundaments]]:
    """Services on their own event loop, so that Hypothesis can drive them from a plain test."""
    loop = asyncio.new_event_loop()
    started = loop.run_until_complete(
        initialize_fundaments(make_settings(reset_request_seconds=0), configure_logs=False)
    )
    try:
        yield loop, started
    finally:
        loop.run_until_complete(started.close())
        loop.close()


untrusted = st.one_of(
    st.text(max_size=200),
    st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=60),  # surrogates too
    st.sampled_from(["a@b.c", "ann@example.com\x00", "@", "ann@exa mple.com", "ann@" + "x" * 300 + ".com"]),
    st.binary(max_size=50),
    st.integers(),
    st.none(),
)


@hypothesis_settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(value=untrusted)
def test_any_token_or_address_is_refused_with_a_typed_error_only(
    loop_app: tuple[asyncio.AbstractEventLoop, Fundaments], value: object
) -> None:
    loop, app = loop_app
    with pytest.raises(AuthenticationError):
        loop.run_until_complete(app.security.reset_password(value, NEW_PASSWORD, CLIENT))  # type: ignore[arg-type]
    with pytest.raises(AuthenticationError):
        loop.run_until_complete(app.security.verify_email(value))  # type: ignore[arg-type]
    try:
        loop.run_until_complete(app.security.request_password_reset(value, CLIENT))  # type: ignore[arg-type]
    except InvalidEmailError as exc:
        assert "\x00" not in str(exc)


async def test_a_reset_does_not_bypass_the_second_factor(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
    clock: ManualClock,
) -> None:
    """ASVS 6.4.3. With TOTP enrolled, reset_password without ``second_factor`` (or with a wrong
    one) is refused and the token survives; with a valid code it succeeds, and the next login
    still asks for the second factor. Hook: RecoveryPart._reset_second_factor (MfaPart's)."""
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com")
    enrolment = await security.begin_totp_enrolment(ann.id)
    totp = pyotp.TOTP(enrolment.secret)
    await security.confirm_totp_enrolment(ann.id, totp.at(clock.now()))
    await deliver(app, smtp, expect=1)  # the "two-factor sign-in was turned on" notice
    clock.advance(30)
    token = await reset_link(app, smtp)
    for wrong in (None, "000000", "not a code"):
        with pytest.raises(AuthenticationError, match="second_factor"):
            await security.reset_password(token, NEW_PASSWORD, CLIENT, second_factor=wrong)
    assert await security.password_reset_link_valid(token)  # the link survived the refusals
    user = await security.reset_password(token, NEW_PASSWORD, CLIENT, second_factor=totp.at(clock.now()))
    assert user.id == ann.id
    result = await security.user_login("ann", NEW_PASSWORD, CLIENT)
    assert not result and result.reason is LoginFailure.MFA_REQUIRED and result.mfa_token
    assert (await security.mfa_status(ann.id)).totp  # the reset left the second factor on
    clock.advance(30)
    assert await security.verify_mfa(result.mfa_token, totp.at(clock.now()), CLIENT)


async def test_wrong_second_factors_at_reset_lock_the_account(
    app: Fundaments,
    security: Security,
    smtp: SmtpServer,  # noqa: F811
    clock: ManualClock,
) -> None:
    """The reset's code check is no side door for guessing codes: it counts toward the lock."""
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com")
    enrolment = await security.begin_totp_enrolment(ann.id)
    totp = pyotp.TOTP(enrolment.secret)
    await security.confirm_totp_enrolment(ann.id, totp.at(clock.now()))
    await deliver(app, smtp, expect=1)
    clock.advance(30)
    token = await reset_link(app, smtp)
    for _ in range(app.settings.lockout_threshold):
        with pytest.raises(AuthenticationError):
            await security.reset_password(token, NEW_PASSWORD, CLIENT, second_factor="000000")
    with pytest.raises(AuthenticationError, match="locked"):
        await security.reset_password(token, NEW_PASSWORD, CLIENT, second_factor=totp.at(clock.now()))
