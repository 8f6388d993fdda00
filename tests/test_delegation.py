"""Delegation: an actor passes on, takes away or overrules only permissions it holds itself.

The attack (issue 14): a user holding only ``console:users`` granted itself ``admin`` (``*``),
created accounts with ``roles=admin`` and disabled the real administrator. Each test below is the
attack through the facade; the console's own test drives it through the web pages.
"""

from __future__ import annotations

import pytest

from fundaments import Security
from fundaments.errors import PermissionDenied
from fundaments.models import User
from test_web_console import settings  # noqa: F401 - ALLOWED_HOSTS for the console's host

PASSWORD = "correct horse battery staple"


@pytest.fixture
def security(fundaments) -> Security:
    return fundaments["security"]


@pytest.fixture
async def helpdesk(security: Security) -> User:
    """An account that may manage users and nothing else: what the console's user page needs."""
    await security.create_role("user-admin", ["console:users", "tickets:read"])
    return await security.register_user("helpdesk", PASSWORD, roles=["user-admin"])


@pytest.fixture
async def admin(security: Security) -> User:
    await security.register_user("keeper", PASSWORD, roles=["admin"])  # root is not the last admin
    return await security.register_user("root", PASSWORD, roles=["admin"])


async def denials(security: Security) -> list[dict[str, object]]:
    events = await security.audit_events(kind="delegation.denied", limit=100)
    return [dict(e.details or {}, actor=e.actor_user_id, subject=e.subject_user_id) for e in events]


async def test_an_actor_cannot_grant_itself_a_role_beyond_its_permissions(
    security: Security, helpdesk: User
) -> None:
    with pytest.raises(PermissionDenied, match=r"does not hold \*") as refused:
        await security.grant_role(helpdesk.id, "admin", actor_user_id=helpdesk.id)
    assert refused.value.user_id == helpdesk.id and refused.value.permission == "*"
    assert await security.user_roles(helpdesk.id) == ["user-admin"]
    assert not await security.check_permission(helpdesk.id, "anything:at:all")
    assert await denials(security) == [
        {"action": "grant a role", "roles": ["admin"], "missing": ["*"], "actor": helpdesk.id,
         "subject": helpdesk.id}
    ]  # fmt: skip


async def test_an_actor_grants_roles_it_covers_and_wildcards_cover_narrower_grants(
    security: Security, helpdesk: User
) -> None:
    await security.create_role("reader", ["tickets:read"])
    await security.create_role("writer", ["tickets:write"])
    bob = await security.register_user("bob", PASSWORD)
    assert await security.grant_role(bob.id, "reader", actor_user_id=helpdesk.id)
    with pytest.raises(PermissionDenied, match="tickets:write"):
        await security.grant_role(bob.id, "writer", actor_user_id=helpdesk.id)
    await security.create_role("ticket-chief", ["tickets:*", "console:users"])
    chief = await security.register_user("chief", PASSWORD, roles=["ticket-chief"])
    assert await security.grant_role(bob.id, "writer", actor_user_id=chief.id)  # tickets:* covers it
    await security.create_role("all-tickets", ["tickets:*"])
    with pytest.raises(PermissionDenied, match=r"tickets:\*"):  # tickets:read does not cover tickets:*
        await security.grant_role(bob.id, "all-tickets", actor_user_id=helpdesk.id)


async def test_inherited_permissions_count_as_the_roles_own(security: Security, helpdesk: User) -> None:
    await security.create_role("sneaky", [], inherits=["admin"])  # no permission of its own
    bob = await security.register_user("bob", PASSWORD)
    with pytest.raises(PermissionDenied, match=r"\*"):
        await security.grant_role(bob.id, "sneaky", actor_user_id=helpdesk.id)
    assert await security.user_roles(bob.id) == []


async def test_an_account_cannot_be_created_with_roles_beyond_the_actor(
    security: Security, helpdesk: User
) -> None:
    with pytest.raises(PermissionDenied):
        await security.register_user(
            "mallory", PASSWORD, roles=["member", "admin"], actor_user_id=helpdesk.id
        )
    assert await security.get_user_by_username("mallory") is None  # nothing written
    user = await security.register_user("carol", PASSWORD, roles=["member"], actor_user_id=helpdesk.id)
    assert user.roles == ("member",)


@pytest.mark.parametrize("action", ["disable_user", "enable_user", "unlock_user"])
async def test_an_actor_cannot_overrule_an_account_holding_more(
    security: Security, helpdesk: User, admin: User, action: str
) -> None:
    if action == "enable_user":
        await security.disable_user(admin.id)  # a trusted caller (no actor) may
    with pytest.raises(PermissionDenied, match=r"\*"):
        await getattr(security, action)(admin.id, actor_user_id=helpdesk.id)
    assert (await security.get_user(admin.id)).is_disabled is (action == "enable_user")  # type: ignore[union-attr]
    assert [d["subject"] for d in await denials(security)] == [admin.id]
    bob = await security.register_user("bob", PASSWORD, roles=["member"])
    if action == "enable_user":
        await security.disable_user(bob.id)
    await getattr(security, action)(bob.id, actor_user_id=helpdesk.id)  # bob holds nothing helpdesk lacks


async def test_a_disabled_accounts_roles_still_count(security: Security, helpdesk: User, admin: User) -> None:
    await security.disable_user(admin.id)
    assert await security.user_permissions(admin.id) == frozenset()  # effective: nothing while disabled
    with pytest.raises(PermissionDenied):
        await security.enable_user(admin.id, actor_user_id=helpdesk.id)  # but enabling gives back `*`


async def test_revoking_a_role_from_a_stronger_account_is_refused(
    security: Security, helpdesk: User, admin: User
) -> None:
    with pytest.raises(PermissionDenied):
        await security.revoke_role(admin.id, "admin", actor_user_id=helpdesk.id)
    assert await security.user_roles(admin.id) == ["admin"]


async def test_role_edits_follow_the_same_rule(security: Security, helpdesk: User) -> None:
    with pytest.raises(PermissionDenied, match="billing:refund"):
        await security.create_role("refunds", ["billing:refund"], actor_user_id=helpdesk.id)
    with pytest.raises(PermissionDenied, match=r"\*"):
        await security.create_role("heir", [], inherits=["admin"], actor_user_id=helpdesk.id)
    with pytest.raises(PermissionDenied, match=r"\*"):  # taking `*` away from admin is overruling it
        await security.set_role_permissions("admin", ["tickets:read"], actor_user_id=helpdesk.id)
    with pytest.raises(PermissionDenied, match=r"\*"):
        await security.set_role_inherits("user-admin", ["admin"], actor_user_id=helpdesk.id)
    with pytest.raises(PermissionDenied, match=r"\*"):
        await security.delete_role("admin", actor_user_id=helpdesk.id)
    assert {r.name for r in await security.list_roles()} == {"admin", "member", "user-admin"}
    await security.create_role("reader", ["tickets:read"], actor_user_id=helpdesk.id)
    await security.set_role_permissions("reader", ["console:users"], actor_user_id=helpdesk.id)
    await security.delete_role("reader", actor_user_id=helpdesk.id)


async def test_holders_of_star_and_trusted_callers_are_not_limited(
    security: Security, helpdesk: User, admin: User
) -> None:
    assert await security.grant_role(helpdesk.id, "admin", actor_user_id=admin.id)
    assert await security.revoke_role(helpdesk.id, "admin")  # no actor: the CLI, a migration
    assert await denials(security) == []


async def test_a_disabled_or_unknown_actor_holds_nothing(security: Security, helpdesk: User) -> None:
    bob = await security.register_user("bob", PASSWORD)
    await security.disable_user(helpdesk.id)
    with pytest.raises(PermissionDenied):
        await security.grant_role(bob.id, "user-admin", actor_user_id=helpdesk.id)
    with pytest.raises(PermissionDenied):
        await security.grant_role(bob.id, "user-admin", actor_user_id=10_000)


async def test_the_check_reads_the_actors_permissions_fresh(security: Security, helpdesk: User) -> None:
    bob = await security.register_user("bob", PASSWORD)
    await security.create_role("reader", ["tickets:read"])
    assert await security.check_permission(helpdesk.id, "tickets:read")  # warm the cache
    await security.set_role_permissions("user-admin", ["console:users"])
    with pytest.raises(PermissionDenied, match="tickets:read"):
        await security.grant_role(bob.id, "reader", actor_user_id=helpdesk.id)


# --- through the console, as the penetration test did it --------------------------------------------
async def test_a_console_user_admin_cannot_make_itself_admin_or_disable_the_administrator(
    fundaments, tmp_path
) -> None:
    from test_web_console import Browser, build_app, ensure_admin

    security: Security = fundaments.security
    password = await ensure_admin(security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    try:
        await security.create_role("user-admin", ["console:users"])
        helpdesk = await security.register_user("helpdesk", PASSWORD, roles=["user-admin"])
        root = await security.get_user_by_username("admin")
        assert root is not None
        browser = Browser(app)
        await browser.get("/login")
        assert (await browser.post("/login", username="helpdesk", password=PASSWORD)).url.path == "/dashboard"
        await browser.get("/admin/users")
        grant = await browser.post(f"/admin/users/{helpdesk.id}/grant", role="admin")
        assert grant.status_code == 403 and "does not hold *" in grant.text
        create = await browser.post("/admin/users", username="mallory", password=PASSWORD, roles="admin")
        assert create.status_code == 403
        disable = await browser.post(f"/admin/users/{root.id}/disable", confirmed="yes")
        assert disable.status_code == 403
        assert await security.user_roles(helpdesk.id) == ["user-admin"]
        assert await security.get_user_by_username("mallory") is None
        assert not (await security.get_user(root.id)).is_disabled  # type: ignore[union-attr]
        assert len(await denials(security)) == 3
        fine = await browser.post("/admin/users", username="carol", password=PASSWORD, roles="member")
        assert fine.status_code == 200 and await security.get_user_by_username("carol") is not None
        await browser.close()
    finally:
        app.state.secrets.close()
