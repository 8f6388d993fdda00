"""``Security.list_all_api_keys``: every account's keys in id pages (keyset, no OFFSET), guarded by
``api_keys:admin`` when an actor is named, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from fundaments.bootstrap import Fundaments
from fundaments.errors import InvalidArgument, PermissionDenied
from fundaments.security import API_KEYS_ADMIN_PERMISSION, Security

PASSWORD = "Correct-Horse-Battery-Staple-42"


async def two_owners(security: Security) -> tuple[int, int]:
    await security.create_role("invoker", ["models:*"])
    ann = await security.register_user("ann", PASSWORD, roles=["invoker"])
    bob = await security.register_user("bob", PASSWORD, roles=["invoker"])
    return ann.id, bob.id


async def test_pages_cover_every_account_once_in_id_order(fundaments: Fundaments) -> None:
    security = fundaments.security
    ann, bob = await two_owners(security)
    created = [await security.create_api_key(uid, name=f"k{i}") for i in range(3) for uid in (ann, bob)]
    await security.revoke_api_key(ann, created[0].key.id)
    seen = []
    after = None
    while True:
        page = await security.list_all_api_keys(after=after, limit=2)
        if not page:
            break
        assert len(page) <= 2
        seen += page
        after = page[-1].id
    assert [k.id for k in seen] == sorted(c.key.id for c in created)  # each once, id order
    assert {k.user_id for k in seen} == {ann, bob}
    revoked = {k.id for k in seen if k.is_revoked}
    assert revoked == {created[0].key.id}  # revoked keys are listed, marked
    assert await security.usernames({k.user_id for k in seen}) == {ann: "ann", bob: "bob"}


async def test_an_actor_needs_the_admin_permission_and_a_denial_is_audited(fundaments: Fundaments) -> None:
    security = fundaments.security
    ann, _ = await two_owners(security)
    await security.create_api_key(ann, name="ci")
    with pytest.raises(PermissionDenied):
        await security.list_all_api_keys(actor_user_id=ann)  # holds models:*, not api_keys:admin
    denied = await security.audit_events(kind="permission.denied")
    assert any(e.details.get("permission") == API_KEYS_ADMIN_PERMISSION for e in denied)
    await security.create_role("key-auditor", [API_KEYS_ADMIN_PERMISSION])
    auditor = await security.register_user("carol", PASSWORD, roles=["key-auditor"])
    assert len(await security.list_all_api_keys(actor_user_id=auditor.id)) == 1
    assert len(await security.list_all_api_keys()) == 1  # no actor: a trusted caller (the CLI)


async def test_bad_page_arguments_are_refused(fundaments: Fundaments) -> None:
    for arguments in ({"limit": 0}, {"limit": 1001}, {"limit": True}, {"after": "x" * 33}, {"after": 5}):
        with pytest.raises(InvalidArgument):
            await fundaments.security.list_all_api_keys(**arguments)  # type: ignore[arg-type]
