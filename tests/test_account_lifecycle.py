"""Accounts as an administrator and a user see them: email addresses, login by address, what every
read returns (roles, lock, address, last login), deletion, unlocking only what is locked, keyset
listing — and the schema revision that brought them, applied to a database holding data."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest

from fundaments import Security, initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings, parse_database_url
from fundaments.errors import (
    EmailInUseError,
    InvalidEmailError,
    LastAdministratorError,
    PasswordPolicyError,
    PermissionDenied,
    UnknownUserError,
    UserExistsError,
)
from fundaments.models import LoginFailure, User
from test_web_console import Browser, console, settings  # noqa: F401 - fixtures

PASSWORD = "correct horse battery staple"
CLIENT = {"ip_address": "198.51.100.30", "user_agent": "Mozilla/5.0 lifecycle test"}


@pytest.fixture
def security(fundaments: Fundaments) -> Security:
    return fundaments.security


@pytest.fixture
async def root(security: Security) -> User:
    return await security.register_user("root", PASSWORD, roles=["admin"])


# --- email addresses ---------------------------------------------------------------------------------
async def test_an_address_is_normalized_and_unique_whatever_its_case(security: Security) -> None:
    ann = await security.register_user("ann", PASSWORD, email="  Ann.Smith@Example.COM ")
    assert ann.email == "Ann.Smith@example.com" and not ann.email_verified
    with pytest.raises(EmailInUseError, match="already uses this email address"):
        await security.register_user("ann2", PASSWORD, email="ann.smith@EXAMPLE.com")
    with pytest.raises(InvalidEmailError, match="not a usable email address"):
        await security.register_user("bob", PASSWORD, email="bob@")
    assert await security.get_user_by_username("ann2") is None  # nothing written
    assert (await security.get_user_by_email("ANN.SMITH@example.com")) == await security.get_user(ann.id)


async def test_a_login_name_means_one_account_in_both_directions(security: Security) -> None:
    """Attack: register the username "victim@example.com" while the victim logs in with that
    address (or take a victim's username as one's address), so that a login by that name reaches
    the attacker's account. Both are refused, so LOGIN_WITH=username_or_email stays unambiguous."""
    await security.register_user("victim", PASSWORD, email="victim@example.com")
    with pytest.raises(UserExistsError, match="another account's email address"):
        await security.register_user("Victim@Example.com", PASSWORD)
    await security.register_user("carol@example.org", PASSWORD)
    with pytest.raises(EmailInUseError):
        await security.register_user("mallory", PASSWORD, email="CAROL@example.org")


async def test_a_login_by_address_costs_the_same_chain_and_returns_the_account(
    security: Security, root: User, clock: ManualClock
) -> None:
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com", roles=["member"])
    clock.advance(10)
    result = await security.user_login("ANN@example.com", PASSWORD, CLIENT)
    assert result and result.user is not None
    assert result.user.id == ann.id and result.user.roles == ("member",)
    assert result.user.last_login_at == clock.now()
    [event] = await security.audit_events(kind="login.succeeded")
    assert event.username == "ann"  # the account's name, whatever was typed
    # a wrong password by address counts toward the same account's lock
    for i in range(5):
        assert not await security.user_login("ann@example.com", f"wrong {i}", CLIENT)
    assert (await security.user_login("ann", PASSWORD, CLIENT)).reason is LoginFailure.LOCKED


@pytest.mark.parametrize(
    ("login_with", "by_name", "by_address"),
    [("username", True, False), ("email", False, True), ("username_or_email", True, True)],
)
async def test_login_with_decides_what_a_login_name_may_be(
    make_settings: Callable[..., Settings],
    clock: ManualClock,
    login_with: str,
    by_name: bool,
    by_address: bool,
) -> None:
    app = await initialize_fundaments(make_settings(login_with=login_with), clock=clock, configure_logs=False)
    try:
        await app.security.register_user("ann", PASSWORD, email="ann@example.com")
        assert bool(await app.security.user_login("ann", PASSWORD, CLIENT)) is by_name
        assert bool(await app.security.user_login("ann@example.com", PASSWORD, CLIENT)) is by_address
    finally:
        await app.close()


# --- every read returns the whole account -------------------------------------------------------------
async def test_roles_lock_address_and_last_login_come_from_every_read(
    fundaments: Fundaments, security: Security, clock: ManualClock
) -> None:
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com", roles=["member"])
    await security.create_role("editor", ["articles:edit"])
    await security.grant_role(ann.id, "editor")
    login = await security.user_login("ann", PASSWORD, CLIENT)
    assert login.user is not None and login.user.roles == ("editor", "member")
    for i in range(5):
        await security.user_login("ann", f"wrong {i}", CLIENT)
    reads = [
        await security.get_user(ann.id),
        await security.get_user_by_username("ANN"),
        await security.get_user_by_email("ann@example.com"),
        *[u for u in await security.list_users() if u.id == ann.id],
    ]
    assert len(reads) == 4
    for user in reads:
        assert user is not None
        assert user.roles == ("editor", "member")
        assert user.email == "ann@example.com"
        assert user.is_locked and user.locked_until is not None and user.locked_until > clock.now()
        assert user.last_login_at is not None
    clock.advance(16 * 60)  # the lock runs out: no longer shown as locked
    after = await security.get_user(ann.id)
    assert after is not None and after.locked_until is None and not after.is_locked


async def test_the_current_user_of_a_session_carries_its_roles(security: Security) -> None:
    ann = await security.register_user("ann", PASSWORD, roles=["member"])
    login = await security.user_login("ann", PASSWORD, CLIENT)
    assert login.session is not None
    session = await security.validate_session(login.session.token, CLIENT)
    assert session is not None
    user = await security.get_user(session.user_id)
    assert user is not None and user.id == ann.id and user.roles == ("member",)


# --- listing ------------------------------------------------------------------------------------------
async def test_listing_is_by_key_and_search_matches_literally(security: Security) -> None:
    names = [f"user{i:02d}" for i in range(12)] + ["50%_off", "x_y"]
    for name in names:
        await security.register_user(name, PASSWORD, email=f"{name.replace('%', 'pct')}@example.com")
    pages: list[list[str]] = []
    after = 0
    while page := await security.list_users(limit=5, after_id=after):
        pages.append([u.username for u in page])
        after = page[-1].id
    assert [n for page in pages for n in page] == names and len(pages) == 3
    assert [u.username for u in await security.list_users(search="USER0")] == names[:10]
    # LIKE wildcards in the search are literal: "%" and "_" do not match everything
    assert [u.username for u in await security.list_users(search="%")] == ["50%_off"]
    assert [u.username for u in await security.list_users(search="_")] == ["50%_off", "x_y"]
    assert [u.username for u in await security.list_users(search="pct_off@")] == ["50%_off"]
    assert await security.list_users(limit=2, offset=11) == (await security.list_users())[11:13]


# --- unlocking --------------------------------------------------------------------------------------------
async def test_an_unlock_of_an_unlocked_account_is_not_reported_as_one(security: Security) -> None:
    ann = await security.register_user("ann", PASSWORD)
    assert await security.unlock_user(ann.id) is False
    assert await security.audit_events(kind="account.unlocked") == []
    for i in range(5):
        await security.user_login("ann", f"wrong {i}", CLIENT)
    assert await security.unlock_user(ann.id) is True
    assert len(await security.audit_events(kind="account.unlocked")) == 1
    assert await security.user_login("ann", PASSWORD, CLIENT)
    with pytest.raises(UnknownUserError):
        await security.unlock_user(ann.id + 1000)


# --- deletion ---------------------------------------------------------------------------------------------
async def test_deleting_an_account_removes_everything_of_it_and_keeps_its_audit(
    fundaments: Fundaments, security: Security, root: User
) -> None:
    ann = await security.register_user("ann", PASSWORD, email="ann@example.com", roles=["member"])
    login = await security.user_login("ann", PASSWORD, CLIENT)
    assert login.session is not None
    await security.delete_user(ann.id, actor_user_id=root.id)
    assert await security.validate_session(login.session.token, CLIENT) is None
    assert await security.get_user(ann.id) is None
    assert await security.get_user_by_email("ann@example.com") is None
    db = fundaments["db"]
    for table in ("sessions", "devices", "user_roles", "account_tokens"):
        count = await db.fetchval(f"SELECT COUNT(*) FROM fundaments_{table} WHERE user_id = $1", ann.id)
        assert count == 0, table
    [event] = await security.audit_events(kind="user.deleted")
    assert (event.subject_user_id, event.username, event.actor_user_id) == (ann.id, "ann", root.id)
    assert (await security.verify_audit_chain(full=True)).ok
    # the name and the address are free again, and the new account never gets the old id
    again = await security.register_user("ann", PASSWORD, email="ann@example.com")
    assert again.id > ann.id
    with pytest.raises(UnknownUserError):
        await security.delete_user(ann.id)


async def test_the_newest_account_deleted_does_not_give_its_id_away(security: Security) -> None:
    """SQLite reuses the highest rowid of a table without AUTOINCREMENT: an audit event naming
    the deleted account would then name whoever registers next."""
    ann = await security.register_user("ann", PASSWORD)
    await security.delete_user(ann.id)
    bob = await security.register_user("bob", PASSWORD)
    assert bob.id > ann.id


async def test_deletion_follows_the_delegation_rule_and_keeps_an_administrator(
    security: Security, root: User
) -> None:
    await security.create_role("helpdesk", ["console:users"])
    helper = await security.register_user("helper", PASSWORD, roles=["helpdesk"])
    with pytest.raises(PermissionDenied):
        await security.delete_user(root.id, actor_user_id=helper.id)
    with pytest.raises(LastAdministratorError, match="grant the admin role to another account"):
        await security.delete_user(root.id)
    assert await security.get_user(root.id) is not None
    assert [e.kind for e in await security.audit_events(kind="user.deleted")] == []


async def test_two_administrators_deleting_each_other_at_once_leave_one(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    shared = make_settings()
    one = await initialize_fundaments(shared, clock=clock, configure_logs=False)
    two = await initialize_fundaments(shared, clock=clock, configure_logs=False)
    try:
        a = await one.security.register_user("alice", PASSWORD, roles=["admin"])
        b = await one.security.register_user("bob", PASSWORD, roles=["admin"])
        outcomes = await asyncio.gather(
            one.security.delete_user(b.id, actor_user_id=a.id),
            two.security.delete_user(a.id, actor_user_id=b.id),
            return_exceptions=True,
        )
        failed = [o for o in outcomes if isinstance(o, Exception)]
        assert len(failed) == 1, outcomes
        assert isinstance(failed[0], (LastAdministratorError, PermissionDenied, UnknownUserError))
        left = [u for u in await one.security.list_users() if "admin" in u.roles]
        assert len(left) == 1
    finally:
        await one.close()
        await two.close()


# --- the schema revision, on a database holding data --------------------------------------------------
def test_revision_0004_keeps_every_row_and_stops_id_reuse(tmp_path: Path) -> None:
    """A SQLite database at revision 0003 with accounts, devices, sessions and roles: the users
    table is rebuilt (AUTOINCREMENT) and nothing referring to it is lost or cascaded away."""
    from alembic import command

    from fundaments.store.migrate import _sqlite_engine, alembic_config

    url = parse_database_url(f"sqlite:///{tmp_path / 'old.db'}")
    engine = _sqlite_engine(url)
    with engine.connect() as connection:
        command.upgrade(alembic_config(connection), "0003")
        connection.commit()
    engine.dispose()
    db = sqlite3.connect(tmp_path / "old.db")
    db.executescript(
        """
        INSERT INTO fundaments_users (id, username, password_hash, created_at, updated_at, password_changed_at)
            VALUES (1, 'ann', 'x', 0, 0, 0), (7, 'bob', 'x', 0, 0, 0);
        INSERT INTO fundaments_devices (token_hash, user_id, created_at, last_used_at) VALUES (x'01', 7, 0, 0);
        INSERT INTO fundaments_sessions (token_hash, id, user_id, created_at, last_seen, expires_at,
            ip_address, user_agent) VALUES (x'02', 's1', 7, 0, 0, 9e9, '1.2.3.4', 'ua');
        INSERT INTO fundaments_roles (id, name, created_at) VALUES (1, 'member', 0);
        INSERT INTO fundaments_user_roles (user_id, role_id, granted_at) VALUES (7, 1, 0);
        """
    )
    db.commit()
    db.close()

    from fundaments.store.migrate import head_revision, upgrade

    assert asyncio.run(upgrade(url)) == head_revision()  # 0004 and any later revision
    db = sqlite3.connect(tmp_path / "old.db")
    assert db.execute(
        "SELECT id, username, email, email_verified FROM fundaments_users ORDER BY id"
    ).fetchall() == [
        (1, "ann", None, 0),
        (7, "bob", None, 0),
    ]
    for table in ("devices", "sessions", "user_roles"):
        assert db.execute(f"SELECT user_id FROM fundaments_{table}").fetchall() == [(7,)], table
    assert (
        "AUTOINCREMENT"
        in db.execute("SELECT sql FROM sqlite_master WHERE name = 'fundaments_users'").fetchone()[0]
    )
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("DELETE FROM fundaments_users WHERE id = 7")
    db.execute(
        "INSERT INTO fundaments_users (username, password_hash, created_at, updated_at, password_changed_at) "
        "VALUES ('carol', 'x', 0, 0, 0)"
    )
    assert db.execute("SELECT id FROM fundaments_users WHERE username = 'carol'").fetchone() == (8,)
    assert db.execute("SELECT COUNT(*) FROM fundaments_devices").fetchone() == (0,)  # cascaded now
    assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    db.close()


# --- the forced first-login change proves something ------------------------------------------------
async def test_the_forced_change_refuses_the_one_time_password_as_the_new_one(security: Security) -> None:
    ann = await security.register_user("ann", "one time passphrase 4711", must_change_password=True)
    with pytest.raises(PasswordPolicyError, match="must differ from the current one"):
        await security.change_password(ann.id, "one time passphrase 4711", "one time passphrase 4711")
    user = await security.get_user(ann.id)
    assert user is not None and user.must_change_password  # still owed
    await security.change_password(ann.id, "one time passphrase 4711", "my own passphrase 2026")
    user = await security.get_user(ann.id)
    assert user is not None and not user.must_change_password


async def test_the_console_forced_change_refuses_the_one_time_password(
    console: tuple[object, str],  # noqa: F811
) -> None:
    app, password = console
    admin = Browser(app)
    await admin.get("/login")
    await admin.post("/login", username="admin", password=password)
    same = await admin.post(
        "/password", current_password=password, new_password=password, confirm_password=password
    )
    assert same.status_code == 400 and "must differ" in same.text
    assert (await admin.get("/dashboard")).url.path == "/password"  # the change is still owed
    await admin.close()
