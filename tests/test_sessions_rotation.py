"""The rotation grace window (SESSION_ROTATION_GRACE) and binding per authentication type
(SESSION_BINDING_BEARER), on SQLite and PostgreSQL.

After a privilege change rotates a session, the token it had keeps answering, with the one new
token, for the window: a client's requests already in flight across the change all succeed. Every
way a session ends kills both tokens at once.
"""

# ruff: noqa: F811 - `start` is a pytest fixture imported from test_sessions
from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from collections.abc import Awaitable, Callable

import pytest
from alembic import command
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import load_settings, parse_database_url
from fundaments.errors import ConfigurationError
from fundaments.models import RequestContext, Session
from fundaments.security import Security
from fundaments.sessions import SessionManager, open_successor, seal_successor
from fundaments.store.migrate import _sqlite_engine, alembic_config
from test_sessions import (
    ALICE,
    OTHER_AGENT,
    OTHER_SUBNET,
    _needles,
    add_user,
    bump_epoch,
    events,
    login,
    session_rows,
    start,  # noqa: F401 - a fixture
)

GRACE = 30  # the default SESSION_ROTATION_GRACE
PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a different long passphrase 42"
PHONE = RequestContext("203.0.113.7", "ExampleApp/3.1 (iPhone; iOS 18.1)")
PHONE_ON_4G = RequestContext("198.51.100.23", PHONE.user_agent)
PHONE_THIEF = RequestContext("198.51.100.23", "curl/8.5.0")

Start = Callable[..., Awaitable[Fundaments]]


async def rotated_session(f: Fundaments, clock: ManualClock) -> tuple[Session, str]:
    """A logged-in session of a new user whose privileges then changed, validated once: the
    session as issued (with its old token) and the new token the rotation gave it."""
    sessions: SessionManager = f["sessions"]
    user = await add_user(f["db"], clock)
    session = await login(f, user)
    await bump_epoch(f["db"], user.id)
    sessions.invalidate_cache()
    rotated = await sessions.validate(session.token, ALICE)
    assert rotated is not None and rotated.rotated_token
    return session, rotated.rotated_token


async def audit_count(f: Fundaments) -> int:
    return int(await f["db"].fetchval("SELECT count(*) FROM fundaments_audit_events"))


# --- the window -------------------------------------------------------------------------------------
async def test_parallel_requests_across_a_role_change_all_succeed_with_one_new_token(fundaments, clock):
    security: Security = fundaments["security"]
    user = await security.register_user("alice@example.com", PASSWORD)
    login_result = await security.user_login("alice@example.com", PASSWORD, ALICE)
    token = login_result.session.token
    assert await security.validate_session(token, ALICE) is not None  # cached now
    await security.create_role("editor", permissions=["articles:write"])
    await security.grant_role(user.id, "editor")

    results = await asyncio.gather(*(security.validate_session(token, ALICE) for _ in range(5)))

    assert all(r is not None for r in results), "a request in flight across the change was refused"
    new_tokens = {r.rotated_token for r in results}
    assert len(new_tokens) == 1 and None not in new_tokens and token not in new_tokens
    [new_token] = new_tokens
    assert {r.id for r in results} == {login_result.session.id}
    fresh = await security.validate_session(new_token, ALICE)
    assert fresh is not None and fresh.rotated_token is None and fresh.id == login_result.session.id
    rotations = await events(fundaments, "session.rotated")
    assert len(rotations) == 1 and rotations[0].details["grace_seconds"] == GRACE
    assert len(await session_rows(fundaments)) == 1


async def test_the_old_token_answers_until_the_window_ends_then_never(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, new_token = await rotated_session(fundaments, clock)
    clock.advance(GRACE - 0.5)
    late = await sessions.validate(session.token, ALICE)
    assert late is not None and late.rotated_token == new_token
    assert await sessions.find(session.token) is not None
    clock.advance(0.5)  # exactly GRACE after the rotation: over
    assert await sessions.validate(session.token, ALICE) is None
    assert await sessions.find(session.token) is None
    assert await sessions.revoke(session.token) is False
    assert await sessions.validate(new_token, ALICE) is not None  # the session itself lives on


async def test_grace_validations_are_not_audited_one_by_one(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, new_token = await rotated_session(fundaments, clock)
    before = await audit_count(fundaments)
    for _ in range(10):
        assert (await sessions.validate(session.token, ALICE)).rotated_token == new_token
    assert await audit_count(fundaments) == before
    assert len(await events(fundaments, "session.rotated")) == 1


async def test_the_grace_path_never_rotates_twice(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, new_token = await rotated_session(fundaments, clock)
    await bump_epoch(fundaments["db"], session.user_id)  # a second privilege change in the window
    sessions.invalidate_cache()
    for _ in range(3):
        again = await sessions.validate(session.token, ALICE)
        assert again is not None and again.rotated_token == new_token
    [row] = await session_rows(fundaments)
    assert bytes(row["token_hash"]) == hashlib.sha256(new_token.encode()).digest()
    assert len(await events(fundaments, "session.rotated")) == 1
    # The new token is the stale one now: it rotates, and the first token's window ends with that.
    newest = await sessions.validate(new_token, ALICE)
    assert newest is not None and newest.rotated_token not in (None, new_token)
    assert await sessions.validate(session.token, ALICE) is None
    assert (await sessions.validate(new_token, ALICE)).rotated_token == newest.rotated_token


# --- every end of the session ends both tokens ----------------------------------------------------------
async def test_logout_with_the_new_token_kills_the_old_one(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, new_token = await rotated_session(fundaments, clock)
    assert await sessions.validate(session.token, ALICE) is not None
    assert await sessions.revoke(new_token) is True
    assert await sessions.validate(session.token, ALICE) is None
    assert await sessions.validate(new_token, ALICE) is None


async def test_logout_with_the_old_token_in_the_window_ends_the_session(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, new_token = await rotated_session(fundaments, clock)
    assert await sessions.revoke(session.token) is True
    assert await sessions.validate(new_token, ALICE) is None
    assert await sessions.validate(session.token, ALICE) is None
    assert await session_rows(fundaments) == []


async def _change_password(security: Security, user_id: int, token: str, new_token: str) -> None:
    await security.change_password(user_id, PASSWORD, NEW_PASSWORD, current_token=new_token)


async def _change_password_with_the_old_token(
    security: Security, user_id: int, token: str, new_token: str
) -> None:
    await security.change_password(user_id, PASSWORD, NEW_PASSWORD, current_token=token)


async def _logout_all(security: Security, user_id: int, token: str, new_token: str) -> None:
    await security.logout_all(user_id)


async def _revoke_by_id(security: Security, user_id: int, token: str, new_token: str) -> None:
    [listed] = await security.list_sessions(user_id)
    assert await security.revoke_session(user_id, listed.id)


async def _disable(security: Security, user_id: int, token: str, new_token: str) -> None:
    await security.disable_user(user_id)


async def _delete(security: Security, user_id: int, token: str, new_token: str) -> None:
    await security.delete_user(user_id)


ENDINGS = {
    "change_password": _change_password,
    "change_password_with_the_old_token": _change_password_with_the_old_token,
    "logout_all": _logout_all,
    "revoke_session": _revoke_by_id,
    "disable_user": _disable,
    "delete_user": _delete,
}


@pytest.mark.parametrize("ending", list(ENDINGS))
async def test_account_actions_kill_the_old_token_at_once(fundaments, clock, ending):
    security: Security = fundaments["security"]
    user = await security.register_user("alice@example.com", PASSWORD)
    token = (await security.user_login("alice@example.com", PASSWORD, ALICE)).session.token
    await security.create_role("editor", permissions=["articles:write"])
    await security.grant_role(user.id, "editor")
    new_token = (await security.validate_session(token, ALICE)).rotated_token
    assert new_token and (await security.validate_session(token, ALICE)).rotated_token == new_token

    await ENDINGS[ending](security, user.id, token, new_token)

    assert await security.validate_session(token, ALICE) is None
    if ending.startswith("change_password"):  # the current session survives under a third token
        assert await security.validate_session(new_token, ALICE) is None
        [row] = await session_rows(fundaments)
        assert row["previous_token_hash"] is None and row["successor"] is None
    else:
        assert await security.validate_session(new_token, ALICE) is None


async def test_an_explicit_rotation_ends_the_previous_tokens_window(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, new_token = await rotated_session(fundaments, clock)
    async with fundaments["db"].transaction() as tx:
        third = await sessions.rotate(tx, session.id)
    assert await sessions.validate(session.token, ALICE) is None
    assert await sessions.validate(new_token, ALICE) is None
    assert (await sessions.validate(third.token, ALICE)).rotated_token is None
    [row] = await session_rows(fundaments)
    assert (row["previous_token_hash"], row["previous_until"], row["successor"]) == (None, None, None)


async def test_a_successor_that_is_not_the_current_token_is_refused(fundaments, clock):
    """Defence in depth: grace columns left behind by an older rotation (a restored backup, say)
    lead to a dead token, never to a session."""
    sessions: SessionManager = fundaments["sessions"]
    db = fundaments["db"]
    session, _ = await rotated_session(fundaments, clock)
    [before] = await session_rows(fundaments)
    async with db.transaction() as tx:
        await sessions.rotate(tx, session.id)
    await db.execute(
        "UPDATE fundaments_sessions SET previous_token_hash = $1, previous_until = $2, successor = $3",
        bytes(before["previous_token_hash"]),
        before["previous_until"],
        bytes(before["successor"]),
    )
    assert await sessions.validate(session.token, ALICE) is None


async def test_a_disabled_account_gets_nothing_from_the_old_token(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, _ = await rotated_session(fundaments, clock)
    await fundaments["db"].execute(
        "UPDATE fundaments_users SET is_disabled = $1 WHERE id = $2", True, session.user_id
    )
    assert await sessions.validate(session.token, ALICE) is None


async def test_idle_and_absolute_timeouts_apply_to_the_old_token(start: Start, clock):
    f = await start(session_idle_timeout=20, session_absolute_timeout=3600)
    sessions: SessionManager = f["sessions"]
    session, new_token = await rotated_session(f, clock)
    clock.advance(20)  # idle longer than the timeout, still inside the 30 s window
    assert await sessions.validate(session.token, ALICE) is None
    assert await sessions.validate(new_token, ALICE) is None  # it expired, for both tokens
    [expired] = await events(f, "session.expired")
    assert expired.details["reason"] == "idle"


# --- binding applies to the grace path ----------------------------------------------------------------
async def test_the_old_token_from_another_client_is_a_hijack(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    session, new_token = await rotated_session(fundaments, clock)
    assert await sessions.validate(session.token, OTHER_SUBNET) is None  # strict cookie binding
    assert await sessions.validate(new_token, ALICE) is None, "the owner's session must end too"
    assert await sessions.validate(session.token, ALICE) is None
    [event] = await events(fundaments, "session.hijack_suspected")
    assert event.session_id == session.id and event.details["action"] == "revoked"


# --- what the database holds ------------------------------------------------------------------------------
async def test_a_database_dump_does_not_hold_the_new_token(fundaments, clock):
    session, new_token = await rotated_session(fundaments, clock)
    [row] = await session_rows(fundaments)
    assert bytes(row["previous_token_hash"]) == hashlib.sha256(session.token.encode()).digest()
    sealed = bytes(row["successor"])
    dump = json.dumps(
        {k: (bytes(v).hex() if isinstance(v, bytes | memoryview) else v) for k, v in dict(row).items()}
    )
    for needle in _needles(new_token):
        assert needle not in sealed and needle not in dump.encode()
        assert needle.hex().encode() not in dump.encode()
    # Only the old token opens it; what the database knows of the old token (its hash) does not.
    assert open_successor(session.token, sealed, session.id) == new_token
    previous_hash = bytes(row["previous_token_hash"])
    with pytest.raises(InvalidTag):  # the stored hash is not the key
        AESGCM(previous_hash).decrypt(sealed[:12], sealed[12:], session.id.encode())
    assert open_successor(previous_hash.hex(), sealed, session.id) is None
    assert open_successor(new_token, sealed, session.id) is None
    assert open_successor(session.token, sealed, "another-session") is None
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    assert open_successor(session.token, tampered, session.id) is None


def test_sealing_is_randomized_and_round_trips():
    one, two = seal_successor("old", "new", "sid"), seal_successor("old", "new", "sid")
    assert one != two
    assert open_successor("old", one, "sid") == open_successor("old", two, "sid") == "new"
    assert open_successor("old", b"short", "sid") is None and open_successor("old", b"", "sid") is None


# --- SESSION_ROTATION_GRACE=0 ---------------------------------------------------------------------------
async def test_grace_zero_kills_the_old_token_at_once(start: Start, clock):
    f = await start(session_rotation_grace=0)
    sessions: SessionManager = f["sessions"]
    user = await add_user(f["db"], clock)
    session = await login(f, user)
    await bump_epoch(f["db"], user.id)
    results = await asyncio.gather(*(sessions.validate(session.token, ALICE) for _ in range(5)))
    winners = [r for r in results if r is not None]
    assert len(winners) == 1 and winners[0].rotated_token  # today's 1 x 200, 4 x 401
    assert await sessions.validate(session.token, ALICE) is None
    assert await sessions.find(session.token) is None
    assert await sessions.revoke(session.token) is False
    [row] = await session_rows(f)
    assert (row["previous_token_hash"], row["previous_until"], row["successor"]) == (None, None, None)


def test_grace_setting_bounds(make_settings):
    assert make_settings().session_rotation_grace == GRACE
    assert make_settings(session_rotation_grace=0).session_rotation_grace == 0
    for bad in (-1, 301):
        with pytest.raises(ConfigurationError, match="SESSION_ROTATION_GRACE"):
            make_settings(session_rotation_grace=bad)


# --- across instances ---------------------------------------------------------------------------------
@pytest.mark.parametrize("cache_seconds", [0, 1])
async def test_two_instances_racing_the_same_stale_token_get_the_same_new_token(
    start: Start, clock, cache_seconds
):
    a = await start(session_cache_seconds=cache_seconds)
    b = await start(session_cache_seconds=cache_seconds)
    user = await add_user(a["db"], clock)
    session = await login(a, user)
    for f in (a, b):
        assert await f["sessions"].validate(session.token, ALICE) is not None
    await bump_epoch(a["db"], user.id)
    a["sessions"].invalidate_cache()
    b["sessions"].invalidate_cache()
    results = await asyncio.gather(
        *(f["sessions"].validate(session.token, ALICE) for _ in range(4) for f in (a, b))
    )
    assert all(r is not None for r in results)
    new_tokens = {r.rotated_token for r in results}
    assert len(new_tokens) == 1 and None not in new_tokens
    assert len(await events(a, "session.rotated")) == 1
    [new_token] = new_tokens
    for f in (a, b):
        assert (await f["sessions"].validate(new_token, ALICE)).rotated_token is None


async def test_logout_on_one_instance_ends_the_old_token_on_another_at_once(start: Start, clock):
    a = await start()
    b = await start()
    session, new_token = await rotated_session(a, clock)
    assert (await b["sessions"].validate(session.token, ALICE)).rotated_token == new_token
    assert await a["sessions"].revoke(new_token) is True
    assert await b["sessions"].validate(session.token, ALICE) is None  # grace reads are never cached


# --- binding per authentication type ------------------------------------------------------------------
async def test_a_bearer_session_survives_a_network_change_and_it_is_audited(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user, PHONE)
    assert fundaments.settings.session_binding_bearer == "agent"
    for _ in range(3):  # audited once per (session, client), as the log mode does
        moved = await sessions.validate(session.token, PHONE_ON_4G, bearer=True)
        assert moved is not None and moved.id == session.id
    assert await sessions.validate(session.token, PHONE, bearer=True) is not None
    [event] = await events(fundaments, "session.hijack_suspected")
    assert event.outcome == "failure" and event.details["action"] == "allowed"
    assert event.details["binding"] == "agent" and event.details["mismatch"] == ["ip_address"]
    assert event.details["request_ip_address"] == PHONE_ON_4G.ip_address


async def test_a_bearer_token_from_another_user_agent_is_revoked(fundaments, clock):
    security: Security = fundaments["security"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user, PHONE)
    assert await security.validate_session(session.token, PHONE_THIEF, bearer=True) is None
    assert await security.validate_session(session.token, PHONE, bearer=True) is None
    [event] = await events(fundaments, "session.hijack_suspected")
    assert event.details["action"] == "revoked" and "user_agent" in event.details["mismatch"]


async def test_the_same_user_agent_from_the_same_ip_is_no_event(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user, PHONE)
    assert await sessions.validate(session.token, PHONE, bearer=True) is not None
    assert await events(fundaments, "session.hijack_suspected") == []


@pytest.mark.parametrize("thief", [OTHER_SUBNET, OTHER_AGENT])
async def test_cookie_sessions_keep_strict_binding(fundaments, clock, thief):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user)
    assert await sessions.validate(session.token, thief) is None  # bearer=False: SESSION_BINDING
    assert await sessions.validate(session.token, ALICE) is None


async def test_agent_mode_for_cookies_and_strict_for_bearer(start: Start, clock):
    f = await start(session_binding="agent", session_binding_bearer="strict")
    sessions: SessionManager = f["sessions"]
    user = await add_user(f["db"], clock)
    cookie, bearer = await login(f, user, PHONE), await login(f, user, PHONE)
    assert await sessions.validate(cookie.token, PHONE_ON_4G) is not None
    assert await sessions.validate(bearer.token, PHONE_ON_4G, bearer=True) is None
    assert await sessions.validate(cookie.token, PHONE_THIEF) is None


def test_binding_settings_accept_the_same_modes(make_settings):
    settings = make_settings(session_binding="Agent", session_binding_bearer=" OFF ")
    assert (settings.session_binding, settings.session_binding_bearer) == ("agent", "off")
    with pytest.raises(ConfigurationError, match="SESSION_BINDING_BEARER"):
        make_settings(session_binding_bearer="loose")


async def test_a_bearer_grace_validation_from_a_new_network_gets_the_new_token(fundaments, clock):
    sessions: SessionManager = fundaments["sessions"]
    user = await add_user(fundaments["db"], clock)
    session = await login(fundaments, user, PHONE)
    await bump_epoch(fundaments["db"], user.id)
    sessions.invalidate_cache()
    first = await sessions.validate(session.token, PHONE, bearer=True)
    moved = await sessions.validate(session.token, PHONE_ON_4G, bearer=True)
    assert moved is not None and moved.rotated_token == first.rotated_token
    assert await sessions.validate(session.token, PHONE_THIEF, bearer=True) is None
    assert await sessions.validate(first.rotated_token, PHONE, bearer=True) is None


# --- the migration ------------------------------------------------------------------------------------
def test_revision_0005_keeps_existing_sessions_valid(tmp_path, clock):
    """A database at 0004 with a live session: after the upgrade it still validates, its grace
    columns are NULL, and it rotates with a grace window like a new one; 0005 also downgrades."""
    path = tmp_path / "old.db"
    url = parse_database_url(f"sqlite:///{path}")
    engine = _sqlite_engine(url)
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0004")
        connection.commit()
    engine.dispose()
    token = "a" * 43
    db = sqlite3.connect(path)
    db.execute(
        "INSERT INTO fundaments_users (id, username, password_hash, created_at, updated_at, "
        "password_changed_at) VALUES (7, 'bob', 'x', 0, 0, 0)"
    )
    db.execute(
        "INSERT INTO fundaments_sessions (token_hash, id, user_id, created_at, last_seen, expires_at, "
        "ip_address, user_agent) VALUES (?, 's1', 7, ?, ?, ?, ?, ?)",
        (
            hashlib.sha256(token.encode()).digest(),
            clock.now(),
            clock.now(),
            clock.now() + 3600,
            ALICE.ip_address,
            ALICE.user_agent,
        ),
    )
    db.commit()
    db.close()

    async def exercise() -> None:
        settings = load_settings(env_file=tmp_path / "absent.env", database_url=f"sqlite:///{path}")
        f = await initialize_fundaments(settings, clock=clock, configure_logs=False)
        try:
            sessions: SessionManager = f["sessions"]
            assert (await sessions.validate(token, ALICE)).id == "s1"
            [row] = await session_rows(f)
            assert (row["previous_token_hash"], row["previous_until"], row["successor"]) == (None, None, None)
            await bump_epoch(f["db"], 7)
            sessions.invalidate_cache()
            rotated = (await sessions.validate(token, ALICE)).rotated_token
            assert rotated and (await sessions.validate(token, ALICE)).rotated_token == rotated
        finally:
            await f.close()

    asyncio.run(exercise())
    engine = _sqlite_engine(url)
    with engine.connect() as connection:
        command.downgrade(alembic_config(connection), "0004")
        connection.commit()
        columns = {c[1] for c in connection.exec_driver_sql("PRAGMA table_info(fundaments_sessions)")}
    engine.dispose()
    assert "successor" not in columns and "token_hash" in columns
