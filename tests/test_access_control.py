"""Access control on real SQLite and PostgreSQL: roles, grants, wildcards, inheritance, freshness."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from fundaments import initialize_fundaments
from fundaments.access_control import AccessControl
from fundaments.audit import AuditTrail
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import PermissionDenied, RoleError, StorageError, UnknownUserError
from fundaments.models import Role
from fundaments.store import Database, open_database

_counter = iter(range(1, 10**9))


async def add_user(db: Database, *, disabled: bool = False, username: str | None = None) -> int:
    """A user row straight in the table (the accounts service is not under test here)."""
    name = username or f"user{next(_counter)}@example.com"
    value = await db.fetchval(
        "INSERT INTO fundaments_users (username, password_hash, is_disabled, created_at, updated_at, "
        "password_changed_at) VALUES ($1, 'unused', $2, 0, 0, 0) RETURNING id",
        name,
        disabled,
    )
    return int(value)


async def set_disabled(f: Fundaments, user_id: int, disabled: bool) -> None:
    """What the accounts service does when disabling: invalidate first, then the row, one transaction."""
    async with f["db"].transaction() as tx:
        await f["access_control"].invalidate_user(tx, user_id)
        await tx.execute("UPDATE fundaments_users SET is_disabled = $2 WHERE id = $1", user_id, disabled)


async def epoch(db: Database, user_id: int) -> int:
    return int(await db.fetchval("SELECT privilege_epoch FROM fundaments_users WHERE id = $1", user_id))


async def events(f: Fundaments, kind: str) -> list[SimpleNamespace]:
    # Read straight from the table: AuditTrail.events() is another issue's, and on SQLite the
    # foundation's cast stripping currently swallows its "$1::bigint IS NULL OR ..." filters.
    rows = await f["db"].fetch(
        "SELECT kind, outcome, actor_user_id, subject_user_id, ip_address, user_agent, details "
        "FROM fundaments_audit_events "
        "WHERE kind = $1 ORDER BY id",
        kind,
    )
    found = []
    for row in rows:
        fields = {key: row[key] for key in row.keys()}  # noqa: SIM118 - asyncpg.Record iterates values
        found.append(SimpleNamespace(**{**fields, "details": json.loads(row["details"])}))
    return found


# --- defaults ------------------------------------------------------------------------------------
async def test_first_start_creates_admin_and_member(fundaments: Fundaments) -> None:
    roles = {r.name: r for r in await fundaments.security.list_roles()}
    assert roles["admin"].permissions == ("*",)
    assert roles["member"].permissions == ()
    assert isinstance(roles["admin"], Role)
    seeded = await events(fundaments, "role.created")
    assert sorted(e.details["role"] for e in seeded) == ["admin", "member"]


async def test_seeding_happens_once_even_after_the_operator_deletes_a_default(
    settings: Settings, clock: ManualClock
) -> None:
    first = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    await first.security.delete_role("member")
    await first.close()
    again = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        assert [r.name for r in await again.security.list_roles()] == ["admin"]
        assert len(await events(again, "role.created")) == 2
    finally:
        await again.close()


async def test_concurrent_first_starts_seed_each_role_once(settings: Settings, clock: ManualClock) -> None:
    # Instances racing through start() on one database (three pools / three SQLite writers).
    # Migrations run once first: concurrent migrations are the store's business, not this test's.
    await (await open_database(settings.database, settings)).close()
    dbs = [await open_database(settings.database, settings, migrate=False) for _ in range(3)]
    services = [AccessControl(db, settings, clock, AuditTrail(db, clock)) for db in dbs]
    try:
        await asyncio.gather(*(s.start() for s in services))
        names = [r.name for r in await services[0].list_roles()]
        assert names == ["admin", "member"]
        created = await dbs[0].fetchval(
            "SELECT count(*) FROM fundaments_audit_events WHERE kind = 'role.created'"
        )
        assert created == 2
    finally:
        for service, db in zip(services, dbs, strict=True):
            await service.close()
            await db.close()


SEEDER = """
import asyncio, sys
from fundaments.access_control import AccessControl
from fundaments.audit import AuditTrail
from fundaments.clock import SystemClock
from fundaments.config import load_settings
from fundaments.store import open_database

async def main():
    settings = load_settings(
        env_file=sys.argv[2], database_url=sys.argv[1], db_pool_min_size=1, db_pool_max_size=2
    )
    db = await open_database(settings.database, settings, migrate=False)
    access = AccessControl(db, settings, SystemClock(), AuditTrail(db, SystemClock()))
    await access.start()
    await access.close()
    await db.close()
    print("seeded")

asyncio.run(main())
"""


async def test_processes_starting_together_seed_each_role_once(settings: Settings, tmp_path: Path) -> None:
    await (await open_database(settings.database, settings)).close()  # schema first, once
    url = settings.database_url.get_secret_value()
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable, "-c", SEEDER, url, str(tmp_path / "absent.env"), stdout=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outputs = [await p.communicate() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert all(out.strip() == b"seeded" for out, _ in outputs)
    db = await open_database(settings.database, settings, migrate=False)
    try:
        names = [r["name"] for r in await db.fetch("SELECT name FROM fundaments_roles ORDER BY name")]
        assert names == ["admin", "member"]
        assert (
            await db.fetchval("SELECT count(*) FROM fundaments_audit_events WHERE kind = 'role.created'") == 2
        )
        assert await db.fetchval("SELECT count(*) FROM fundaments_role_permissions") == 1
    finally:
        await db.close()


async def test_default_roles_can_be_turned_off(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    f = await initialize_fundaments(
        make_settings(rbac_default_roles=False), clock=clock, configure_logs=False
    )
    try:
        assert await f.security.list_roles() == []
    finally:
        await f.close()


# --- checks --------------------------------------------------------------------------------------
async def test_grant_then_check_then_revoke_takes_effect_at_once(fundaments: Fundaments) -> None:
    security = fundaments.security
    user = await add_user(fundaments["db"])
    await security.create_role("editor", permissions=["articles:write", "articles:read"])
    assert not await security.check_permission(user, "articles:write")
    assert await security.grant_role(user, "editor") is True
    assert await security.check_permission(user, "articles:write")
    assert await security.check_permission(user, "articles:read")
    assert not await security.check_permission(user, "articles:delete")
    assert await security.user_roles(user) == ["editor"]
    assert await security.revoke_role(user, "editor") is True
    assert not await security.check_permission(user, "articles:write")  # same instance: no waiting
    assert await security.user_roles(user) == []


async def test_flat_permissions_work_like_the_seed(fundaments: Fundaments) -> None:
    security = fundaments.security
    user = await add_user(fundaments["db"])
    await security.create_role("operator", permissions=["can_manage_users"])
    await security.grant_role(user, "operator")
    assert await security.check_permission(user, "can_manage_users")
    assert not await security.check_permission(user, "can_manage_roles")


async def test_wildcards_cover_their_prefix_only(fundaments: Fundaments) -> None:
    security = fundaments.security
    chief, admin = await add_user(fundaments["db"]), await add_user(fundaments["db"])
    await security.create_role("chief", permissions=["articles:*"])
    await security.grant_role(chief, "chief")
    await security.grant_role(admin, "admin")
    for allowed in ("articles:write", "articles:comments:delete", "articles:*"):
        assert await security.check_permission(chief, allowed), allowed
    for denied in ("article:write", "articlesx:write", "articles", "users:write", "*", "can_manage_users"):
        assert not await security.check_permission(chief, denied), denied
    for anything in ("articles:write", "can_manage_users", "a:b:c:d", "*", "users:*"):
        assert await security.check_permission(admin, anything), anything
    for malformed in ("", "articles:", ":write", "articles::write", "arti cles:write", "*:write", "x" * 129):
        assert not await security.check_permission(admin, malformed), malformed


async def test_inheritance_chains_are_followed_and_changes_propagate(fundaments: Fundaments) -> None:
    security = fundaments.security
    user = await add_user(fundaments["db"])
    await security.create_role("reader", permissions=["articles:read"])
    await security.create_role("writer", permissions=["articles:write"], inherits=["reader"])
    await security.create_role("editor", permissions=["articles:publish"], inherits=["writer"])
    await security.grant_role(user, "editor")
    for perm in ("articles:read", "articles:write", "articles:publish"):
        assert await security.check_permission(user, perm)
    assert await security.user_permissions(user) == {"articles:read", "articles:write", "articles:publish"}
    before = await epoch(fundaments["db"], user)
    await security.set_role_permissions("reader", ["articles:read", "comments:read"])
    assert await security.check_permission(user, "comments:read")  # through two levels, at once
    assert await epoch(fundaments["db"], user) == before + 1  # the grandchild's holder rotates too
    await security.set_role_inherits("writer", [])
    assert not await security.check_permission(user, "articles:read")
    assert await security.check_permission(user, "articles:write")
    roles = {r.name: r for r in await security.list_roles()}
    assert roles["editor"].inherits == ("writer",) and roles["writer"].inherits == ()


async def test_an_inheritance_cycle_is_refused_with_its_path(fundaments: Fundaments) -> None:
    security = fundaments.security
    await security.create_role("a", permissions=["x:read"])
    await security.create_role("b", inherits=["a"])
    await security.create_role("c", inherits=["b"])
    with pytest.raises(RoleError, match=r"cycle refused: a -> c -> b -> a"):
        await security.set_role_inherits("a", ["c"])
    with pytest.raises(RoleError, match=r"a -> a"):
        await security.set_role_inherits("a", ["a"])
    with pytest.raises(RoleError, match=r"d -> d"):
        await security.create_role("d", inherits=["d"])
    roles = {r.name: r for r in await security.list_roles()}
    assert roles["a"].inherits == () and "d" not in roles  # nothing half-written


async def test_deleting_a_granted_role_revokes_it_everywhere(fundaments: Fundaments) -> None:
    security, db = fundaments.security, fundaments["db"]
    holder, heir_holder = await add_user(db), await add_user(db)
    await security.create_role("editor", permissions=["articles:write"])
    await security.create_role("chief", permissions=["articles:publish"], inherits=["editor"])
    await security.grant_role(holder, "editor")
    await security.grant_role(heir_holder, "chief")
    assert await security.check_permission(heir_holder, "articles:write")
    epochs = (await epoch(db, holder), await epoch(db, heir_holder))
    await security.delete_role("editor", actor_user_id=heir_holder)
    assert not await security.check_permission(holder, "articles:write")
    assert not await security.check_permission(heir_holder, "articles:write")
    assert await security.check_permission(heir_holder, "articles:publish")
    assert await security.user_roles(holder) == []
    assert (await epoch(db, holder), await epoch(db, heir_holder)) == (epochs[0] + 1, epochs[1] + 1)
    [deleted] = await events(fundaments, "role.deleted")
    assert deleted.details == {"role": "editor", "affected_users": 2}
    assert deleted.actor_user_id == heir_holder
    assert {r.name: r for r in await security.list_roles()}["chief"].inherits == ()
    with pytest.raises(RoleError, match="unknown role 'editor'"):
        await security.grant_role(holder, "editor")


async def test_unknown_names_are_refused_or_denied(fundaments: Fundaments) -> None:
    security = fundaments.security
    user = await add_user(fundaments["db"])
    with pytest.raises(RoleError, match="unknown role 'ghost'"):
        await security.grant_role(user, "ghost")
    with pytest.raises(RoleError, match="unknown role 'ghost'"):
        await security.revoke_role(user, "ghost")
    with pytest.raises(RoleError, match="unknown role 'ghost'"):
        await security.create_role("child", inherits=["ghost"])
    with pytest.raises(RoleError, match="unknown role"):
        await security.delete_role("ghost")
    with pytest.raises(RoleError, match="unknown role"):
        await security.set_role_permissions("ghost", ["a:b"])
    with pytest.raises(UnknownUserError):
        await security.grant_role(999_999, "member")
    with pytest.raises(UnknownUserError):
        await security.user_roles(999_999)
    with pytest.raises(UnknownUserError):
        await security.user_permissions(999_999)
    assert not await security.check_permission(999_999, "articles:read")
    assert not await security.check_permission(user, "never:granted")
    with pytest.raises(RoleError, match="already exists"):
        await security.create_role("admin")
    assert [r.name for r in await security.list_roles()] == ["admin", "member"]


BAD_ROLE_NAMES: list[Any] = [
    "",
    "Admin",
    "1role",
    "role name",
    "x" * 65,
    "r'; DROP TABLE fundaments_roles; --",
    "rôle",
    "a\nb",
    "admin\n",
    None,
    7,
]
BAD_PERMISSIONS: list[Any] = [
    "",
    "a:",
    ":a",
    "a::b",
    "*:write",
    "a:*:b",
    "a b",
    "a;b",
    "x" * 129,
    "a'--",
    "é:write",
    "a:b\n",
    5,
    None,
]


async def test_bad_role_names_are_refused_and_never_reach_sql(fundaments: Fundaments) -> None:
    user = await add_user(fundaments["db"])
    for bad in BAD_ROLE_NAMES:
        with pytest.raises(RoleError):
            await fundaments.security.create_role(bad)
        with pytest.raises(RoleError):
            await fundaments.security.grant_role(user, bad)
        with pytest.raises(RoleError):
            await fundaments.security.create_role("ok", inherits=[bad])
    assert [r.name for r in await fundaments.security.list_roles()] == ["admin", "member"]


async def test_bad_permissions_are_refused(fundaments: Fundaments) -> None:
    for bad in BAD_PERMISSIONS:
        with pytest.raises(RoleError):
            await fundaments.security.create_role("r", permissions=[bad])
        with pytest.raises(RoleError):
            await fundaments.security.set_role_permissions("member", ["ok:read", bad])
    roles = await fundaments.security.list_roles()
    assert [(r.name, r.permissions) for r in roles] == [("admin", ("*",)), ("member", ())]


async def test_a_single_string_is_not_taken_for_a_list(fundaments: Fundaments) -> None:
    with pytest.raises(RoleError, match="not a single string"):
        await fundaments.security.create_role("r", permissions="articles:write")  # type: ignore[arg-type]
    with pytest.raises(RoleError, match="not a single string"):
        await fundaments.security.create_role("r", inherits="member")  # type: ignore[arg-type]


GARBAGE: list[Any] = [None, "1", 1.0, True, False, 0, -1, 2**63, 2**200, [], {}, object(), b"1", (1,)]


async def test_check_permission_never_raises_on_garbage(fundaments: Fundaments) -> None:
    security = fundaments.security
    admin = await add_user(fundaments["db"])
    await security.grant_role(admin, "admin")
    for junk in GARBAGE:
        assert await security.check_permission(junk, "articles:read") is False
        if not isinstance(junk, str):  # "1" is a valid flat permission name
            assert await security.check_permission(admin, junk) is False
        with pytest.raises(PermissionDenied):
            await security.require_permission(junk, "articles:read")
    assert await security.check_permission(admin, "articles:read") is True


async def test_disabled_users_are_denied_everything(fundaments: Fundaments) -> None:
    security, db = fundaments.security, fundaments["db"]
    born_disabled = await add_user(db, disabled=True)
    await security.grant_role(born_disabled, "admin")
    assert not await security.check_permission(born_disabled, "articles:read")
    assert await security.user_permissions(born_disabled) == frozenset()
    user = await add_user(db)
    await security.grant_role(user, "admin")
    assert await security.check_permission(user, "articles:read")  # warm
    await set_disabled(fundaments, user, True)
    assert not await security.check_permission(user, "articles:read")
    await set_disabled(fundaments, user, False)
    assert await security.check_permission(user, "articles:read")


async def test_require_permission_raises_and_audits_the_denial(
    fundaments: Fundaments, request_data: dict[str, str]
) -> None:
    security = fundaments.security
    user = await add_user(fundaments["db"])
    await security.create_role("reader", permissions=["articles:read"])
    await security.grant_role(user, "reader")
    await security.require_permission(user, "articles:read")
    with pytest.raises(PermissionDenied) as denied:
        await security.require_permission(user, "articles:write")
    assert denied.value.user_id == user and denied.value.permission == "articles:write"
    [event] = await events(fundaments, "permission.denied")
    assert event.outcome == "failure" and event.subject_user_id == user
    assert event.details == {"permission": "articles:write"}
    with pytest.raises(PermissionDenied):
        await security.require_permission(user, "articles:delete", request_data=request_data)
    with pytest.raises(PermissionDenied):  # a malformed context does not hide the denial
        await security.require_permission(user, "articles:delete", request_data={"bogus": 1})
    located, unlocated = (await events(fundaments, "permission.denied"))[1:]
    assert located.ip_address == request_data["ip_address"]
    assert located.user_agent == request_data["user_agent"]
    assert unlocated.ip_address is None


async def test_grants_and_revocations_are_audited_with_the_actor(fundaments: Fundaments) -> None:
    security, db = fundaments.security, fundaments["db"]
    actor, user = await add_user(db), await add_user(db)
    await security.create_role("chief", permissions=["articles:*"])  # an actor passes on only what it holds
    await security.grant_role(actor, "chief")
    await security.create_role("editor", permissions=["articles:write"], actor_user_id=actor)
    assert await security.grant_role(user, "editor", actor_user_id=actor) is True
    assert await security.grant_role(user, "editor", actor_user_id=actor) is False  # already held
    assert await security.revoke_role(user, "editor", actor_user_id=actor) is True
    assert await security.revoke_role(user, "editor", actor_user_id=actor) is False
    [granted] = [e for e in await events(fundaments, "role.granted") if e.subject_user_id == user]
    [revoked] = await events(fundaments, "role.revoked")
    created = [e for e in await events(fundaments, "role.created") if e.details["role"] == "editor"]
    for event in (granted, revoked, *created):
        assert event.actor_user_id == actor
    assert granted.subject_user_id == user and granted.details == {"role": "editor"}
    assert revoked.subject_user_id == user
    granted_by = await db.fetchval("SELECT count(*) FROM fundaments_user_roles WHERE user_id = $1", user)
    assert granted_by == 0
    assert await fundaments["audit"].verify_chain()


async def test_privilege_changes_bump_the_session_epoch(fundaments: Fundaments) -> None:
    security, db = fundaments.security, fundaments["db"]
    user, bystander = await add_user(db), await add_user(db)
    start = await epoch(db, user)
    await security.grant_role(user, "member")
    assert await epoch(db, user) == start + 1
    await security.grant_role(user, "member")  # no change, no rotation
    assert await epoch(db, user) == start + 1
    await security.set_role_permissions("member", ["profile:edit"])
    assert await epoch(db, user) == start + 2
    await security.revoke_role(user, "member")
    assert await epoch(db, user) == start + 3
    assert await epoch(db, bystander) == 0


async def test_grant_inside_a_callers_transaction_commits_or_rolls_back_with_it(
    fundaments: Fundaments,
) -> None:
    db, access, security = fundaments["db"], fundaments["access_control"], fundaments.security
    user = await add_user(db)
    assert not await security.check_permission(user, "anything:at-all")  # cached: no roles
    with pytest.raises(RuntimeError, match="boom"):
        async with db.transaction() as tx:
            await access.grant_role(user, "admin", tx=tx)
            raise RuntimeError("boom")
    assert not await security.check_permission(user, "anything:at-all")
    assert await events(fundaments, "role.granted") == []
    async with db.transaction() as tx:
        assert await access.grant_role(user, "admin", tx=tx) is True
    assert await security.check_permission(user, "anything:at-all")
    assert await security.user_roles(user) == ["admin"]


async def test_list_roles_shows_what_is_stored(fundaments: Fundaments, clock: ManualClock) -> None:
    security = fundaments.security
    created = await security.create_role(
        "editor", permissions=["b:write", "a:read", "a:read"], inherits=["member"], description="Writes"
    )
    assert created == Role("editor", ("a:read", "b:write"), ("member",), "Writes", clock.now())
    assert {r.name: r for r in await security.list_roles()}["editor"] == created


# --- freshness across instances -------------------------------------------------------------------
async def wait_until(predicate: Callable[[], Any], limit: float) -> float:
    """Seconds until ``await predicate()`` is true (real time: this measures propagation)."""
    start = time.monotonic()
    while time.monotonic() - start < limit + 0.5:
        if await predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.01)
    raise AssertionError(f"not true after {limit + 0.5} s")


async def test_a_revoke_on_one_instance_is_refused_on_another_within_a_second(
    settings: Settings, clock: ManualClock
) -> None:
    a = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    b = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        user = await add_user(a["db"])
        await a.security.create_role("editor", permissions=["articles:write"])
        await a.security.grant_role(user, "editor")
        await wait_until(lambda: b.security.check_permission(user, "articles:write"), 1.0)
        assert await b.security.check_permission(user, "articles:write")  # warm on B
        await a.security.revoke_role(user, "editor")
        assert not await a.security.check_permission(user, "articles:write")

        async def refused_on_b() -> bool:
            return not await b.security.check_permission(user, "articles:write")

        assert await wait_until(refused_on_b, 1.0) < 1.0
        # and a disabled user, through the same counter
        await a.security.grant_role(user, "admin")
        await wait_until(lambda: b.security.check_permission(user, "x:y"), 1.0)
        await set_disabled(a, user, True)
        assert not await a.security.check_permission(user, "x:y")

        async def disabled_on_b() -> bool:
            return not await b.security.check_permission(user, "x:y")

        assert await wait_until(disabled_on_b, 1.0) < 1.0
    finally:
        await a.close()
        await b.close()


async def test_a_role_change_on_one_instance_reaches_another(settings: Settings, clock: ManualClock) -> None:
    a = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    b = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        user = await add_user(a["db"])
        await a.security.create_role("editor", permissions=["articles:write"])
        await a.security.grant_role(user, "editor")
        await wait_until(lambda: b.security.check_permission(user, "articles:write"), 1.0)
        await a.security.set_role_permissions("editor", ["articles:publish"])
        assert await wait_until(lambda: b.security.check_permission(user, "articles:publish"), 1.0) < 1.0
        assert not await b.security.check_permission(user, "articles:write")
    finally:
        await a.close()
        await b.close()


async def test_the_watcher_fails_closed_when_the_database_is_gone(fundaments: Fundaments) -> None:
    access = fundaments["access_control"]
    user = await add_user(fundaments["db"])
    await access.grant_role(user, "admin")
    assert await access.check_permission(user, "x:y")
    await fundaments["db"].close()
    await access.refresh()  # what the watcher does every RBAC_REFRESH_SECONDS
    with pytest.raises(StorageError) as raised:  # fail closed, with the store's typed error
        await access.check_permission(user, "x:y")
    assert type(raised.value) is StorageError


async def test_a_load_that_raced_a_change_is_not_cached(
    fundaments: Fundaments, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cold check reads the old grants, a revoke commits, then the check's load finishes:
    that answer may serve the in-flight check, but must not be cached for the next one."""
    from fundaments.store import rbac

    security = fundaments.security
    await security.grant_role(await add_user(fundaments["db"]), "admin")  # not the last administrator
    user = await add_user(fundaments["db"])
    await security.grant_role(user, "admin")
    real_load_user = rbac.load_user
    read_done, release = asyncio.Event(), asyncio.Event()

    async def slow_return(db: Any, user_id: int) -> Any:
        rows = await real_load_user(db, user_id)  # the real query, against the real database
        read_done.set()
        await release.wait()  # the reply is "on the wire" while the revoke commits
        return rows

    fundaments["access_control"]._invalidate_all()
    monkeypatch.setattr(rbac, "load_user", slow_return)
    in_flight = asyncio.create_task(security.check_permission(user, "x:y"))
    await read_done.wait()
    monkeypatch.setattr(rbac, "load_user", real_load_user)
    await security.revoke_role(user, "admin")
    release.set()
    await in_flight
    assert not await security.check_permission(user, "x:y")
