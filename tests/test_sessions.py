"""Sessions: fixation, binding (hijacking), timeouts, revocation, limits, caching across instances.

Every test runs on a SQLite file and on a fresh PostgreSQL database. Users are inserted with SQL
directly so these tests do not depend on the accounts service.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest

import fundaments.sessions as sessions_module
from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import UnknownUserError
from fundaments.models import RequestContext, Session, User
from fundaments.sessions import SessionManager, hash_token, normalize_ip, same_client_ip
from fundaments.store import Database

ALICE = RequestContext("203.0.113.7", "Mozilla/5.0 (X11; Linux x86_64) Firefox/130.0")
IDLE = 1_800
ABSOLUTE = 43_200


async def add_user(db: Database, clock: ManualClock, username: str = "alice@example.com") -> User:
    user_id = await db.fetchval(
        "INSERT INTO fundaments_users (username, password_hash, created_at, updated_at, password_changed_at) "
        "VALUES ($1, $2, $3, $3, $3) RETURNING id",
        username,
        "$argon2id$v=19$m=1024,t=1,p=1$not-a-real-hash",
        clock.now(),
    )
    return User(id=int(user_id), username=username)


async def bump_epoch(db: Database, user_id: int) -> None:
    await db.execute(
        "UPDATE fundaments_users SET privilege_epoch = privilege_epoch + 1 WHERE id = $1", user_id
    )


async def login(f: Fundaments, user: User, ctx: Any = ALICE) -> Session:
    db: Database = f["db"]
    async with db.transaction() as tx:
        session: Session = await f["sessions"].create(tx, user, ctx)
    return session


@dataclass
class Event:
    session_id: str | None
    subject_user_id: int | None
    outcome: str
    ip_address: str | None
    user_agent: str | None
    details: dict[str, Any]


async def events(f: Fundaments, kind: str) -> list[Event]:
    """Audit events of one kind, newest first (read directly: these tests are about sessions)."""
    rows = await f["db"].fetch(
        "SELECT session_id, subject_user_id, outcome, ip_address, user_agent, details "
        "FROM fundaments_audit_events WHERE kind = $1 ORDER BY id DESC",
        kind,
    )
    return [
        Event(
            r["session_id"],
            r["subject_user_id"],
            r["outcome"],
            r["ip_address"],
            r["user_agent"],
            json.loads(r["details"]),
        )
        for r in rows
    ]


async def session_rows(f: Fundaments) -> list[Any]:
    return list(await f["db"].fetch("SELECT * FROM fundaments_sessions ORDER BY created_at"))


@pytest.fixture
async def start(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> AsyncIterator[Callable[..., Awaitable[Fundaments]]]:
    """Start (another) set of services on this test's database with settings overrides."""
    started: list[Fundaments] = []

    async def make(**overrides: Any) -> Fundaments:
        f = await initialize_fundaments(make_settings(**overrides), clock=clock, configure_logs=False)
        started.append(f)
        return f

    yield make
    for f in reversed(started):
        await f.close()


# --- issuing ---------------------------------------------------------------------------------------
async def test_login_issues_a_256_bit_token_and_stores_only_its_hash(fundaments, clock):
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    assert session.token is not None and len(base64.urlsafe_b64decode(session.token + "=")) == 32
    assert session.user_id == user.id and session.username == user.username
    assert session.id != session.token and session.token not in repr(session)
    assert session.expires_at == clock.now() + ABSOLUTE
    [row] = await session_rows(fundaments)
    assert bytes(row["token_hash"]) == hashlib.sha256(session.token.encode()).digest()
    assert row["id"] == session.id and row["ip_address"] == ALICE.ip_address
    [created] = await events(fundaments, "session.created")
    assert created.session_id == session.id and created.subject_user_id == user.id
    assert created.ip_address == ALICE.ip_address and created.user_agent == ALICE.user_agent


async def test_validate_returns_the_session_for_its_client(fundaments, clock, request_data):
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user, request_data)
    valid = await fundaments["sessions"].validate(session.token, request_data)
    assert valid is not None
    assert (valid.id, valid.user_id, valid.username) == (session.id, user.id, user.username)
    assert valid.token is None and valid.rotated_token is None


async def test_create_for_a_missing_user_is_refused(fundaments, clock):
    with pytest.raises(UnknownUserError):
        await login(fundaments, User(id=424242, username="ghost"))


async def test_missing_request_field_is_a_value_error(fundaments, clock):
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    for broken in ({"ip_address": "203.0.113.7"}, {"user_agent": "x"}, {}, None):
        with pytest.raises(ValueError, match=r"ip_address|user_agent|request_data"):
            await fundaments["sessions"].validate(session.token, broken)
    with pytest.raises(ValueError):
        await fundaments["sessions"].validate("whatever", {"ip_address": "1.2.3.4"})


# --- fixation ----------------------------------------------------------------------------------------
async def test_each_login_issues_a_different_token_and_id(fundaments, clock):
    user = await add_user(fundaments["db"], clock)
    issued = [await login(fundaments, user) for _ in range(5)]
    assert len({s.token for s in issued}) == 5 and len({s.id for s in issued}) == 5


# Fixation with a planted token is tested where a token can be planted, through the middleware:
# tests/test_web_attacks.py::test_console_login_kills_a_planted_session_cookie_and_csrf_cookie
# (the session layer takes no client token, so a test here could not fail).


async def test_privilege_change_rotates_the_token_and_kills_the_old_one(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    assert (await sessions.validate(session.token, ALICE)).rotated_token is None
    await bump_epoch(fundaments["db"], user.id)
    sessions.invalidate_cache()  # what the facade does after a privilege change on this instance
    rotated = await sessions.validate(session.token, ALICE)
    assert rotated is not None and rotated.rotated_token and rotated.rotated_token != session.token
    assert rotated.id == session.id and rotated.expires_at == session.expires_at
    # Within SESSION_ROTATION_GRACE the old token answers with the same new token, then never.
    assert (await sessions.validate(session.token, ALICE)).rotated_token == rotated.rotated_token
    clock.advance(fundaments.settings.session_rotation_grace)
    assert await sessions.validate(session.token, ALICE) is None
    again = await sessions.validate(rotated.rotated_token, ALICE)
    assert again is not None and again.rotated_token is None and again.id == session.id
    [event] = await events(fundaments, "session.rotated")
    assert event.session_id == session.id and event.details["to_epoch"] == 1


async def test_privilege_change_elsewhere_rotates_within_the_cache_bound(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    await sessions.validate(session.token, ALICE)  # now cached
    await bump_epoch(fundaments["db"], user.id)  # as another instance would
    clock.advance(fundaments.settings.session_cache_seconds)
    rotated = await sessions.validate(session.token, ALICE)
    assert rotated is not None and rotated.rotated_token


async def test_concurrent_requests_with_a_stale_token_rotate_it_once(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    await bump_epoch(fundaments["db"], user.id)
    results = await asyncio.gather(*(sessions.validate(session.token, ALICE) for _ in range(8)))
    rotated = {r.rotated_token for r in results if r is not None and r.rotated_token}
    assert len(rotated) == 1  # every one of them got the same new token (the grace window)
    live = [t for t in rotated if await sessions.validate(t, ALICE) is not None]
    assert len(live) == 1
    assert len(await events(fundaments, "session.rotated")) == 1
    assert len(await session_rows(fundaments)) == 1


# --- binding (hijacking) -------------------------------------------------------------------------------
OTHER_SUBNET = RequestContext("198.51.100.9", ALICE.user_agent)
SAME_SUBNET = RequestContext("203.0.113.200", ALICE.user_agent)
OTHER_AGENT = RequestContext(ALICE.ip_address, "curl/8.5.0")

# (binding mode, attacker) -> whether the attacker is let in
BINDING_CASES = {
    ("strict", "other_subnet"): False,
    ("strict", "same_subnet"): False,
    ("strict", "other_agent"): False,
    ("subnet", "other_subnet"): False,
    ("subnet", "same_subnet"): True,
    ("subnet", "other_agent"): False,
    ("log", "other_subnet"): True,
    ("log", "same_subnet"): True,
    ("log", "other_agent"): True,
    ("off", "other_subnet"): True,
    ("off", "same_subnet"): True,
    ("off", "other_agent"): True,
}
ATTACKERS = {"other_subnet": OTHER_SUBNET, "same_subnet": SAME_SUBNET, "other_agent": OTHER_AGENT}


@pytest.mark.parametrize(("mode", "attacker"), list(BINDING_CASES))
async def test_binding_modes_against_a_stolen_token(start, clock, mode, attacker):
    f = await start(session_binding=mode)
    sessions: SessionManager = f["sessions"]
    user = await add_user(f["db"], clock)
    session = await login(f, user)
    assert await sessions.validate(session.token, ALICE) is not None  # cached for the victim
    thief = ATTACKERS[attacker]
    let_in = BINDING_CASES[(mode, attacker)]
    assert (await sessions.validate(session.token, thief) is not None) is let_in
    victim_still_in = await sessions.validate(session.token, ALICE) is not None
    suspected = await events(f, "session.hijack_suspected")
    if let_in:
        assert victim_still_in
    else:
        assert not victim_still_in, "a binding mismatch must revoke the session for everyone"
        assert await session_rows(f) == []
    if mode in ("off",) or (mode == "subnet" and attacker == "same_subnet"):
        assert suspected == []
    else:
        [event] = suspected
        assert event.outcome == "failure" and event.session_id == session.id
        assert event.subject_user_id == user.id
        assert event.details["session_ip_address"] == ALICE.ip_address
        assert event.details["session_user_agent"] == ALICE.user_agent
        assert event.details["request_ip_address"] == thief.ip_address
        assert event.details["request_user_agent"] == thief.user_agent
        assert event.details["action"] == ("allowed" if mode == "log" else "revoked")


async def test_log_mode_audits_a_client_once_not_every_request(start, clock):
    f = await start(session_binding="log")
    user = await add_user(f["db"], clock)
    session = await login(f, user)
    for _ in range(5):
        assert await f["sessions"].validate(session.token, OTHER_SUBNET) is not None
    assert len(await events(f, "session.hijack_suspected")) == 1


@pytest.mark.parametrize("agent", ["Mozilla\x00", "\udcff", "evil\x00'; DROP TABLE x; --"])
async def test_a_thief_with_an_unstorable_user_agent_still_gets_the_session_revoked(fundaments, clock, agent):
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    assert (
        await fundaments["sessions"].validate(session.token, RequestContext(ALICE.ip_address, agent)) is None
    )
    assert await session_rows(fundaments) == []
    [event] = await events(fundaments, "session.hijack_suspected")
    assert event.details["request_user_agent"].startswith(agent[:1].replace("\udcff", "\ufffd"))


async def test_longest_unstorable_client_strings_still_fit(fundaments, clock):
    client = RequestContext("\udcff" * 45, "\x00\ud800" * 400)  # the user agent is cut to 512
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user, client)
    assert await fundaments["sessions"].validate(session.token, client) is not None
    assert len(session.user_agent) == 512 and len(session.ip_address) == 45


@pytest.mark.parametrize(
    ("stored", "presented", "mode", "same"),
    [
        ("2001:db8:1:2::10", "2001:db8:1:2:ffff::1", "subnet", True),
        ("2001:db8:1:2::10", "2001:db8:1:3::10", "subnet", False),
        ("2001:db8:1:2::10", "2001:DB8:1:2:0:0:0:10", "strict", True),
        ("2001:db8:1:2::10", "2001:db8:1:2::11", "strict", False),
        ("203.0.113.7", "::ffff:203.0.113.7", "strict", True),
        ("203.0.113.7", "203.0.114.7", "subnet", False),
        ("203.0.113.7", "::ffff:203.0.113.9", "subnet", True),
        ("203.0.113.7", "2001:db8::1", "subnet", False),
        ("unix-socket", "unix-socket", "subnet", True),
        ("unix-socket", "unix-socket2", "subnet", False),
    ],
)
def test_client_ip_comparison(stored, presented, mode, same):
    assert same_client_ip(normalize_ip(stored), presented, mode) is same


async def test_ipv6_client_in_subnet_mode(start, clock):
    f = await start(session_binding="subnet")
    sessions: SessionManager = f["sessions"]
    user = await add_user(f["db"], clock)
    home = RequestContext("2001:db8:aa:bb::1", "UA")
    session = await login(f, user, home)
    assert await sessions.validate(session.token, RequestContext("2001:db8:aa:bb:1::5", "UA"))
    assert await sessions.validate(session.token, RequestContext("2001:db8:aa:cc::1", "UA")) is None
    assert await sessions.validate(session.token, home) is None


# --- lifetime ----------------------------------------------------------------------------------------
async def test_idle_timeout(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    clock.advance(IDLE - 1)
    assert await sessions.validate(session.token, ALICE) is not None  # activity resets the idle clock
    clock.advance(IDLE - 1)
    assert await sessions.validate(session.token, ALICE) is not None
    clock.advance(IDLE)
    assert await sessions.validate(session.token, ALICE) is None
    [event] = await events(fundaments, "session.expired")
    assert event.details == {"reason": "idle"} and event.session_id == session.id
    assert await session_rows(fundaments) == []


async def test_activity_survives_a_restart_once_written(start, clock):
    f = await start()
    user = await add_user(f["db"], clock)
    session = await login(f, user)
    clock.advance(IDLE - 10)
    assert await f["sessions"].validate(session.token, ALICE) is not None
    assert await f["sessions"].flush_touches() == 1
    [row] = await session_rows(f)
    assert row["last_seen"] == clock.now()
    other = await start()  # another instance sees the touch
    clock.advance(IDLE - 10)
    assert await other["sessions"].validate(session.token, ALICE) is not None


async def test_touches_are_written_at_most_once_per_interval(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    for _ in range(10):
        clock.advance(5)
        await sessions.validate(session.token, ALICE)
    assert await sessions.flush_touches() == 0  # 50 s < SESSION_TOUCH_INTERVAL (60 s)
    clock.advance(15)
    await sessions.validate(session.token, ALICE)
    assert await sessions.flush_touches() == 1


async def test_close_writes_pending_touches(start, clock):
    f = await start()
    user = await add_user(f["db"], clock)
    session = await login(f, user)
    clock.advance(300)
    await f["sessions"].validate(session.token, ALICE)
    await f["sessions"].close()
    [row] = await session_rows(f)
    assert row["last_seen"] == clock.now()


async def test_background_writer_flushes_touches(fundaments, clock):
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    clock.advance(300)
    await fundaments["sessions"].validate(session.token, ALICE)
    for _ in range(100):  # the writer runs every FLUSH_INTERVAL (1 s) of real time
        [row] = await session_rows(fundaments)
        if row["last_seen"] == clock.now():
            break
        await asyncio.sleep(0.05)
    assert row["last_seen"] == clock.now()


async def test_absolute_timeout_ends_even_an_active_session(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    elapsed = 0
    while elapsed + 1_000 < ABSOLUTE:
        clock.advance(1_000)
        elapsed += 1_000
        assert await sessions.validate(session.token, ALICE) is not None
    clock.advance(ABSOLUTE - elapsed)
    assert await sessions.validate(session.token, ALICE) is None
    [event] = await events(fundaments, "session.expired")
    assert event.details == {"reason": "absolute"}


async def test_max_sessions_per_user_revokes_the_oldest(start, clock):
    f = await start(session_max_per_user=3)
    sessions: SessionManager = f["sessions"]
    user = await add_user(f["db"], clock)
    other = await add_user(f["db"], clock, "bob@example.com")
    bobs = await login(f, other)
    issued = []
    for _ in range(5):
        issued.append(await login(f, user))
        clock.advance(1)
    assert [await sessions.validate(s.token, ALICE) is not None for s in issued] == [
        False,
        False,
        True,
        True,
        True,
    ]
    assert sorted(s.id for s in await sessions.list_for_user(user.id)) == sorted(s.id for s in issued[2:])
    assert await sessions.validate(bobs.token, ALICE) is not None
    revoked = [e for e in await events(f, "session.revoked") if e.details["reason"] == "max_per_user"]
    assert [e.details["session_ids"] for e in reversed(revoked)] == [[issued[0].id], [issued[1].id]]


async def test_concurrent_logins_respect_the_limit(start, clock):
    f = await start(session_max_per_user=3)
    user = await add_user(f["db"], clock)
    await asyncio.gather(*(login(f, user) for _ in range(12)))
    assert len(await session_rows(f)) == 3


async def test_purge_removes_expired_sessions_in_batches(fundaments, clock, monkeypatch):
    monkeypatch.setattr(sessions_module, "PURGE_BATCH", 2)
    sessions: SessionManager = fundaments["sessions"]
    db = fundaments["db"]
    idle_users = [await add_user(db, clock, f"idle{i}@example.com") for i in range(5)]
    for user in idle_users:
        await login(fundaments, user)
    clock.advance(IDLE - 5)
    active = await login(fundaments, await add_user(db, clock, "active@example.com"))
    clock.advance(10)
    assert await sessions.purge_expired() == 5
    rows = await session_rows(fundaments)
    assert [row["id"] for row in rows] == [active.id]
    clock.advance(ABSOLUTE)
    assert await sessions.purge_expired() == 1


# --- revocation --------------------------------------------------------------------------------------
async def test_logout_kills_the_token_at_once(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    keep = await login(fundaments, user)
    assert await sessions.validate(session.token, ALICE) is not None  # cached
    assert await sessions.revoke(session.token) is True
    assert await sessions.validate(session.token, ALICE) is None
    assert await sessions.revoke(session.token) is False
    assert await sessions.validate(keep.token, ALICE) is not None
    [event] = await events(fundaments, "session.revoked")
    assert event.details["reason"] == "logout" and event.session_id == session.id


@pytest.mark.parametrize(
    "garbage", ["", "x", "\x00" * 43, "é" * 43, "A" * 10_240, "' OR 1=1 --", None, b"bytes"]
)
async def test_logout_of_garbage_is_false(fundaments, garbage):
    assert await fundaments["sessions"].revoke(garbage) is False


async def test_logout_all_ends_every_session_of_that_user_only(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    db = fundaments["db"]
    user = await add_user(db, clock)
    bob = await add_user(db, clock, "bob@example.com")
    mine = [await login(fundaments, user) for _ in range(3)]
    bobs = await login(fundaments, bob)
    for s in mine:
        assert await sessions.validate(s.token, ALICE) is not None
    assert await sessions.revoke_all(user.id) == 3
    assert all([await sessions.validate(s.token, ALICE) is None for s in mine])
    assert await sessions.validate(bobs.token, ALICE) is not None
    assert await sessions.revoke_all(user.id) == 0
    [event] = await events(fundaments, "session.revoked")
    assert event.details["reason"] == "logout_all" and event.details["count"] == 3


async def test_revoke_by_id_needs_the_owner(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    bob = await add_user(fundaments["db"], clock, "bob@example.com")
    session = await login(fundaments, user)
    assert await sessions.revoke_by_id(bob.id, session.id) is False
    assert await sessions.revoke_by_id(user.id, "no-such-id") is False
    assert await sessions.revoke_by_id(user.id, "x" * 10_000) is False
    assert await sessions.validate(session.token, ALICE) is not None
    assert await sessions.revoke_by_id(user.id, session.id) is True
    assert await sessions.validate(session.token, ALICE) is None


async def test_password_change_revokes_others_and_rotates_the_current(fundaments, clock):
    """What Security.change_password composes from these primitives, in one transaction."""
    sessions: SessionManager = fundaments["sessions"]
    db = fundaments["db"]
    user = await add_user(db, clock)
    current = await login(fundaments, user)
    others = [await login(fundaments, user) for _ in range(2)]
    for s in (current, *others):
        assert await sessions.validate(s.token, ALICE) is not None
    async with db.transaction() as tx:
        await tx.execute(
            "UPDATE fundaments_users SET privilege_epoch = privilege_epoch + 1 WHERE id = $1", user.id
        )
        revoked = await sessions.revoke_all(
            user.id, tx=tx, except_session_id=current.id, reason="password_changed"
        )
        rotated = await sessions.rotate(tx, current.id)
    assert revoked == 2
    assert rotated.id == current.id and rotated.token and rotated.token != current.token
    assert all([await sessions.validate(s.token, ALICE) is None for s in (current, *others)])
    fresh = await sessions.validate(rotated.token, ALICE)
    assert fresh is not None and fresh.rotated_token is None  # the rotation took the new epoch
    with pytest.raises(LookupError):
        async with db.transaction() as tx:
            await sessions.rotate(tx, "no-such-session")


async def test_disabled_user_has_no_valid_session(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    db = fundaments["db"]
    user = await add_user(db, clock)
    first, second = await login(fundaments, user), await login(fundaments, user)
    await db.execute("UPDATE fundaments_users SET is_disabled = $1 WHERE id = $2", True, user.id)
    assert await sessions.validate(first.token, ALICE) is None  # refused even before revocation
    async with db.transaction() as tx:
        assert await sessions.revoke_all(user.id, tx=tx, reason="user_disabled") == 2
    await db.execute("UPDATE fundaments_users SET is_disabled = $1 WHERE id = $2", False, user.id)
    assert await sessions.validate(second.token, ALICE) is None


async def test_deleted_user_has_no_valid_session(fundaments, clock):
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    await fundaments["db"].execute("DELETE FROM fundaments_users WHERE id = $1", user.id)
    assert await fundaments["sessions"].validate(session.token, ALICE) is None


async def test_revocation_inside_an_open_transaction_is_not_undone_by_the_cache(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    db = fundaments["db"]
    user = await add_user(db, clock)
    session = await login(fundaments, user)
    async with db.transaction() as tx:
        await sessions.revoke_all(user.id, tx=tx)
        # A concurrent request still sees the committed row, but must not cache it.
        during = await asyncio.create_task(sessions.validate(session.token, ALICE))
        assert during is not None
    assert await sessions.validate(session.token, ALICE) is None


async def test_list_sessions_shows_live_sessions_without_tokens(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    old = await login(fundaments, user)
    clock.advance(IDLE + 1)
    new = await login(fundaments, user, RequestContext("198.51.100.1", "Phone"))
    listed = await sessions.list_for_user(user.id)
    assert [s.id for s in listed] == [new.id]
    assert listed[0].token is None and listed[0].ip_address == "198.51.100.1"
    assert old.id not in {s.id for s in listed}


# --- across instances --------------------------------------------------------------------------------
async def test_two_instances_share_sessions_and_revocations(start, clock):
    a = await start()
    b = await start()
    user = await add_user(a["db"], clock)
    session = await login(a, user)
    assert await b["sessions"].validate(session.token, ALICE) is not None  # login on A, valid on B
    assert await a["security"].user_logout(session.token) is True
    assert await a["sessions"].validate(session.token, ALICE) is None  # at once on A
    clock.advance(b.settings.session_cache_seconds)
    assert await b["sessions"].validate(session.token, ALICE) is None  # within the cache bound on B


async def test_without_a_cache_revocation_is_seen_everywhere_at_once(start, clock):
    a = await start(session_cache_seconds=0)
    b = await start(session_cache_seconds=0)
    user = await add_user(a["db"], clock)
    session = await login(a, user)
    assert await b["sessions"].validate(session.token, ALICE) is not None
    assert await a["sessions"].revoke_all(user.id) == 1
    assert await b["sessions"].validate(session.token, ALICE) is None


# --- the facade --------------------------------------------------------------------------------------
async def test_security_facade_session_methods(fundaments, clock, request_data):
    security = fundaments["security"]
    user = await add_user(fundaments["db"], clock)
    one, two, three = [await login(fundaments, user, request_data) for _ in range(3)]
    assert (await security.validate_session(one.token, request_data)).id == one.id
    assert {s.id for s in await security.list_sessions(user.id)} == {one.id, two.id, three.id}
    assert await security.revoke_session(user.id, two.id) is True
    assert await security.validate_session(two.token, request_data) is None
    assert await security.user_logout(one.token) is True
    assert await security.user_logout(one.token) is False
    assert await security.logout_all(user.id) == 1
    assert await security.validate_session(three.token, request_data) is None
    assert await security.list_sessions(user.id) == []


# --- secrets stay secret -------------------------------------------------------------------------------
def _needles(token: str) -> list[bytes]:
    raw = base64.urlsafe_b64decode(token + "=")
    return [token.encode(), raw, token.encode("utf-16-le")]


async def _exercise(f: Fundaments, clock: ManualClock) -> list[str]:
    sessions: SessionManager = f["sessions"]
    user = await add_user(f["db"], clock)
    tokens: list[str] = []
    kept = await login(f, user)
    tokens.append(kept.token)
    logged_out = await login(f, user)
    tokens.append(logged_out.token)
    await sessions.validate(logged_out.token, ALICE)
    await sessions.revoke(logged_out.token)
    hijacked = await login(f, user)
    tokens.append(hijacked.token)
    await sessions.validate(hijacked.token, OTHER_SUBNET)
    rotated = await login(f, user)
    tokens.append(rotated.token)
    await bump_epoch(f["db"], user.id)
    fresh = await sessions.validate(rotated.token, ALICE)
    tokens.append(fresh.rotated_token)
    clock.advance(120)
    await sessions.validate(kept.token, ALICE)
    await sessions.flush_touches()
    return tokens


async def test_raw_token_is_nowhere_in_the_database_or_logs(fundaments, clock, caplog, database_url):
    caplog.set_level(logging.DEBUG)
    tokens = await _exercise(fundaments, clock)
    if fundaments["db"].dialect == "sqlite":
        path = fundaments["db"].path
        wal = path.with_name(path.name + "-wal")
        assert wal.exists() and wal.stat().st_size > 0, "the WAL should hold recent pages to scan"
        blobs = [path.read_bytes(), wal.read_bytes()]
    else:
        blobs = []
        for table in ("fundaments_sessions", "fundaments_audit_events", "fundaments_users"):
            rows = await fundaments["db"].fetch(f"SELECT row_to_json(t)::text AS j FROM {table} t")
            blobs.extend(row["j"].encode() for row in rows)
    logs = "\n".join(r.getMessage() for r in caplog.records).encode()
    assert logs, "expected audit lines in the log"
    for token in tokens:
        for needle in _needles(token):
            for blob in [*blobs, logs]:
                assert needle not in blob


# --- bad input -----------------------------------------------------------------------------------------
BAD_TOKENS = [
    "",
    " ",
    "\x00",
    "\x00" * 43,
    "A" * 43,
    "A" * 10_240,
    "é" * 43,
    "\ud800",
    "'; DROP TABLE fundaments_sessions; --",
    "' OR '1'='1",
    "%s%s%s",
    "$1",
    "?1",
    None,
    b"token",
    12345,
]


@pytest.mark.parametrize("token", BAD_TOKENS)
async def test_bad_tokens_are_none_never_errors(fundaments, clock, token):
    user = await add_user(fundaments["db"], clock)
    real = await login(fundaments, user)
    assert await fundaments["sessions"].validate(token, ALICE) is None
    assert await fundaments["sessions"].validate(real.token, ALICE) is not None
    assert len(await session_rows(fundaments)) == 1


async def test_near_miss_tokens_are_refused(fundaments, clock):
    user = await add_user(fundaments["db"], clock)
    real = (await login(fundaments, user)).token
    assert real is not None
    for near in (real[:-1], real + "A", real.upper(), real + "\x00", " " + real, real[::-1]):
        assert await fundaments["sessions"].validate(near, ALICE) is None
    assert await fundaments["sessions"].validate(real, ALICE) is not None


def test_hash_token_only_accepts_short_ascii_strings():
    assert hash_token("abc") == hashlib.sha256(b"abc").digest()
    assert hash_token("") is None and hash_token("é") is None and hash_token("a" * 257) is None
    assert hash_token(None) is None and hash_token(b"abc") is None
