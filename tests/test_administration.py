"""Administration through the facade: an administrator's password reset, deleting an account, and
the guard that keeps at least one enabled account holding ``*`` whatever path a change takes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from fundaments import Security, initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import (
    LastAdministratorError,
    PasswordPolicyError,
    PermissionDenied,
    UnknownUserError,
)
from fundaments.models import LoginFailure, User
from test_cli_admin import assert_one_line_error, cli  # noqa: F401 - cli is a fixture
from test_web_console import settings  # noqa: F401 - ALLOWED_HOSTS for the console's host

PASSWORD = "correct horse battery staple"
TEMPORARY = "a temporary passphrase 4242"
CLIENT = {"ip_address": "198.51.100.20", "user_agent": "Mozilla/5.0 admin test"}


@pytest.fixture
def security(fundaments: Fundaments) -> Security:
    return fundaments.security


@pytest.fixture
async def root(security: Security) -> User:
    return await security.register_user("root", PASSWORD, roles=["admin"])


# --- set_password -----------------------------------------------------------------------------------
async def test_an_administrators_reset_ends_sessions_unlocks_and_forces_a_change(
    security: Security, root: User
) -> None:
    ann = await security.register_user("ann", PASSWORD)
    session = (await security.user_login("ann", PASSWORD, CLIENT)).session
    for i in range(5):
        await security.user_login("ann", f"wrong {i}", CLIENT)
    assert (await security.user_login("ann", PASSWORD, CLIENT)).reason is LoginFailure.LOCKED
    await security.set_password(ann.id, TEMPORARY, actor_user_id=root.id)
    assert await security.validate_session(session.token, CLIENT) is None  # type: ignore[union-attr]
    assert not await security.user_login("ann", PASSWORD, CLIENT)
    result = await security.user_login("ann", TEMPORARY, CLIENT)  # the lock was cleared
    assert result and result.user.must_change_password  # type: ignore[union-attr]
    [event] = [e for e in await security.audit_events(kind="password.changed") if e.subject_user_id == ann.id]
    assert event.actor_user_id == root.id and event.details == {
        "must_change": True,
        "set_by_administrator": True,
    }


async def test_a_reset_follows_the_policy_and_the_delegation_rule(security: Security, root: User) -> None:
    ann = await security.register_user("ann", PASSWORD)
    with pytest.raises(PasswordPolicyError):
        await security.set_password(ann.id, "short", actor_user_id=root.id)
    await security.create_role("helpdesk", ["console:users"])
    helper = await security.register_user("helper", PASSWORD, roles=["helpdesk"])
    with pytest.raises(PermissionDenied):  # root holds `*`, the helper does not
        await security.set_password(root.id, TEMPORARY, actor_user_id=helper.id)
    assert await security.user_login("root", PASSWORD, CLIENT)
    await security.set_password(ann.id, TEMPORARY, actor_user_id=helper.id, must_change=False)
    assert not (await security.user_login("ann", TEMPORARY, CLIENT)).user.must_change_password  # type: ignore[union-attr]
    with pytest.raises(UnknownUserError):
        await security.set_password(10_000, TEMPORARY)


# --- the last administrator -------------------------------------------------------------------------
async def test_the_last_administrator_cannot_be_removed_by_any_call(security: Security, root: User) -> None:
    refused = [
        security.disable_user(root.id),
        security.revoke_role(root.id, "admin"),
        security.delete_role("admin"),
        security.set_role_permissions("admin", ["console:users"]),
    ]
    for call in refused:
        with pytest.raises(LastAdministratorError, match="grant the admin role to another account"):
            await call
    assert await security.check_permission(root.id, "anything")
    assert await security.user_roles(root.id) == ["admin"]


async def test_administrators_by_inheritance_count_and_a_second_one_frees_the_first(
    security: Security, root: User
) -> None:
    await security.create_role("owner", [], inherits=["admin"])
    other = await security.register_user("other", PASSWORD, roles=["owner"])
    await security.revoke_role(root.id, "admin")  # `other` holds * through inheritance
    with pytest.raises(LastAdministratorError):
        await security.set_role_inherits("owner", [])
    with pytest.raises(LastAdministratorError):
        await security.disable_user(other.id)
    await security.grant_role(root.id, "admin")
    await security.disable_user(other.id)
    with pytest.raises(LastAdministratorError):  # a disabled holder does not count
        await security.revoke_role(root.id, "admin")


async def test_a_site_without_administrators_is_not_blocked(security: Security) -> None:
    """An application that never used `*` may still revoke and disable: the guard only keeps an
    administrator that exists."""
    ann = await security.register_user("ann", PASSWORD, roles=["member"])
    await security.revoke_role(ann.id, "member")
    await security.disable_user(ann.id)


async def test_two_administrators_demoting_each_other_at_once_leave_one(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """Two instances, two last administrators, each revoking the other's role at the same moment:
    the RBAC lock orders the two transactions, and the second sees the first's effect."""
    shared = make_settings()
    one = await initialize_fundaments(shared, clock=clock, configure_logs=False)
    two = await initialize_fundaments(shared, clock=clock, configure_logs=False)
    try:
        a = await one.security.register_user("alice", PASSWORD, roles=["admin"])
        b = await one.security.register_user("bob", PASSWORD, roles=["admin"])
        for _ in range(5):
            if len(await one.security.user_roles(a.id)) == 0:
                await one.security.grant_role(a.id, "admin")
            if len(await one.security.user_roles(b.id)) == 0:
                await one.security.grant_role(b.id, "admin")
            outcomes = await asyncio.gather(
                one.security.revoke_role(b.id, "admin"),
                two.security.revoke_role(a.id, "admin"),
                return_exceptions=True,
            )
            assert sorted(type(o).__name__ for o in outcomes) == ["LastAdministratorError", "bool"]
            held = [await one.security.user_roles(u) for u in (a.id, b.id)]
            assert held.count(["admin"]) == 1
    finally:
        await one.close()
        await two.close()


# --- the same guard from the admin command and the console -------------------------------------------
def test_the_cli_refuses_to_remove_the_last_administrator_in_one_line(cli) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    assert (
        cli("users", "create", "root", "--password-stdin", "--role", "admin", input=PASSWORD).exit_code == 0
    )
    assert_one_line_error(cli("users", "disable", "root"), "no active account holding *")
    assert_one_line_error(cli("roles", "revoke", "root", "admin"), "grant the admin role to another account")
    assert (
        cli("users", "create", "spare", "--password-stdin", "--role", "admin", input=PASSWORD).exit_code == 0
    )
    assert cli("roles", "revoke", "root", "admin").exit_code == 0


async def test_the_console_refuses_to_remove_the_last_administrator(fundaments: Fundaments, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from test_web_console import build_app, ensure_admin, signed_in_admin

    password = await ensure_admin(fundaments.security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    try:
        admin = await signed_in_admin(app, password)
        root = await fundaments.security.get_user_by_username("admin")
        await admin.get("/admin/users")
        page = await admin.post(f"/admin/users/{root.id}/revoke", role="admin", confirmed="yes")  # type: ignore[union-attr]
        assert page.status_code == 409 and "no active account holding *" in page.text
        assert await fundaments.security.user_roles(root.id) == ["admin"]  # type: ignore[union-attr]
        await admin.close()
    finally:
        app.state.secrets.close()
