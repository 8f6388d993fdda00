"""API keys on SQLite and PostgreSQL: create, validate, list, revoke, rotate, scopes, owners, the
cache across instances, batched last_used_at, and the attacks each protection answers."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from fundaments import initialize_fundaments
from fundaments.api_keys import DIGEST_PURPOSE, TOKEN_LENGTH, _checksum
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import InvalidArgument, PermissionDenied, StorageError, UnknownApiKeyError
from fundaments.models import ApiKey, ApiKeyCreated, RequestContext
from fundaments.security import Security

PASSWORD = "Correct-Horse-Battery-Staple-42"
CLIENT = {"ip_address": "198.51.100.23", "user_agent": "ci-runner/1.0"}
OUTSIDE = {"ip_address": "203.0.113.9", "user_agent": "ci-runner/1.0"}
DAY = 86_400


@pytest.fixture
async def start(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> AsyncIterator[Callable[..., Awaitable[Fundaments]]]:
    """Start (another) set of services on this test's database, sharing the manual clock."""
    started: list[Fundaments] = []

    async def make(**overrides: Any) -> Fundaments:
        f = await initialize_fundaments(make_settings(**overrides), clock=clock, configure_logs=False)
        started.append(f)
        return f

    yield make
    for f in reversed(started):
        await f.close()


async def owner(security: Security, name: str = "ci-owner", perms: tuple[str, ...] = ("models:*",)) -> int:
    if not any(r.name == "invoker" for r in await security.list_roles()):
        await security.create_role("invoker", list(perms))
    user = await security.register_user(name, PASSWORD, roles=["invoker"])
    return user.id


async def make_key(security: Security, user_id: int, **overrides: Any) -> ApiKeyCreated:
    arguments: dict[str, Any] = {"name": "ci", "scopes": ["models:invoke"], "expires_in": 90 * DAY}
    arguments.update(overrides)
    return await security.create_api_key(user_id, **arguments)


async def events(f: Fundaments, kind: str) -> list[Any]:
    await f["audit"].close()  # background writes done
    found = [e for e in await f["security"].audit_events(limit=500) if e.kind == kind]
    return sorted(found, key=lambda e: e.id)


# --- creating and validating -------------------------------------------------------------------------
async def test_design_example_creates_validates_and_checks_permission(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    created = await security.create_api_key(
        uid,
        name="ci",
        scopes=["models:invoke"],
        expires_in=90 * DAY,
        allowed_ips=["198.51.100.0/24"],
        rate_limit="600/minute",
    )
    assert created.token.startswith("fk_") and len(created.token) == TOKEN_LENGTH
    assert created.token not in repr(created) and "token" not in repr(created)
    key = created.key
    assert key.id.startswith("key_") and key.name == "ci" and key.prefix == created.token[:10]
    assert key.scopes == ("models:invoke",) and key.rate_limit == "600/minute" and key.user_id == uid
    assert key.expires_at == fundaments["sessions"]._clock.now() + 90 * DAY
    assert [str(n) for n in key.allowed_ips] == ["198.51.100.0/24"] and key.revoked_at is None

    validated = await security.validate_api_key(created.token, CLIENT)
    assert isinstance(validated, ApiKey) and validated.id == key.id and validated.user_id == uid
    assert await security.check_permission(uid, "models:invoke", api_key=validated)
    assert not await security.check_permission(uid, "models:delete", api_key=validated)  # owner has it
    assert await security.check_permission(uid, "models:delete")  # ... without the key
    assert [k.id for k in await security.list_api_keys(uid)] == [key.id]
    [event] = await events(fundaments, "api_key.created")
    assert event.details["api_key_id"] == key.id and event.details["scopes"] == ["models:invoke"]


async def test_only_a_keyed_digest_is_stored(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    created = await make_key(security, uid)
    row = await fundaments["db"].fetchrow("SELECT * FROM fundaments_api_keys WHERE id = $1", created.key.id)
    values = [row[k] for k in row.keys()]  # noqa: SIM118
    assert created.token not in [v for v in values if isinstance(v, str)]
    assert bytes(row["digest"]) != hashlib.sha256(created.token.encode()).digest()  # not a bare hash
    [(key_id, key)] = fundaments["encryption"].purpose_keys(DIGEST_PURPOSE)
    assert bytes(row["digest"]) == hmac.new(key, created.token.encode(), hashlib.sha256).digest()
    assert row["key_id"] == key_id


async def test_typos_and_garbage_are_refused_without_any_database_call(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    token = (await make_key(security, uid)).token
    unknown_but_well_formed = "fk_" + "A" * 32 + _checksum("fk_" + "A" * 32)
    await fundaments["api_keys"].close()  # its dedicated PostgreSQL reader too
    await fundaments["db"].close()  # from here any query raises
    with pytest.raises((StorageError, asyncpg.InterfaceError)):
        await security.validate_api_key(unknown_but_well_formed, CLIENT)  # this one does reach it
    typo = token[:10] + ("b" if token[10] == "a" else "a") + token[11:]
    for garbage in (typo, token[:-1], token + "x", "", "fk_", "Bearer " + token, None, 42, b"fk_x", "é" * 41):
        assert await security.validate_api_key(garbage, CLIENT) is None
    assert security.api_key_checksum_ok(token) and not security.api_key_checksum_ok(typo)


async def test_unknown_revoked_and_expired_keys_are_refused_and_audited_coalesced(fundaments, clock) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    unknown = "fk_" + "Z" * 32 + _checksum("fk_" + "Z" * 32)
    for _ in range(50):
        assert await security.validate_api_key(unknown, CLIENT) is None
    short = await make_key(security, uid, expires_in=60)
    assert await security.validate_api_key(short.token, CLIENT) is not None
    clock.advance(60)
    assert await security.validate_api_key(short.token, CLIENT) is None  # expired, though cached
    revoked = await make_key(security, uid, name="revoked")
    assert await security.validate_api_key(revoked.token, CLIENT) is not None
    assert await security.revoke_api_key(uid, revoked.key.id) is True
    assert await security.revoke_api_key(uid, revoked.key.id) is False  # already
    for _ in range(20):
        assert await security.validate_api_key(revoked.token, CLIENT) is None
    refused = await events(fundaments, "api_key.refused")
    reasons = [e.details["reason"] for e in refused if not e.details.get("summary")]
    assert sorted(reasons) == ["expired", "revoked", "unknown"]  # one write per reason and source
    assert sum(e.details.get("suppressed_before", 0) for e in refused) == 49 + 19
    assert all(unknown not in str(e.details) for e in refused)
    listed = {k.id: k for k in await security.list_api_keys(uid)}
    assert listed[revoked.key.id].revoked_at is not None and listed[revoked.key.id].is_revoked


async def test_the_ip_allowlist_admits_only_its_networks(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    created = await make_key(security, uid, allowed_ips=["198.51.100.0/24", "2001:db8::/32"])
    assert await security.validate_api_key(created.token, CLIENT) is not None
    assert await security.validate_api_key(created.token, {**CLIENT, "ip_address": "::ffff:198.51.100.9"})
    assert await security.validate_api_key(created.token, RequestContext("2001:db8::1", "x")) is not None
    assert await security.validate_api_key(created.token, OUTSIDE) is None
    assert await security.validate_api_key(created.token, {**CLIENT, "ip_address": "garbage"}) is None
    with pytest.raises(InvalidArgument):
        await security.validate_api_key(created.token, {"user_agent": "no ip"})
    with pytest.raises(ValueError, match="allowed_ips"):
        await make_key(security, uid, allowed_ips=["198.51.100.7/24"])
    refused = await events(fundaments, "api_key.refused")
    event, summary = [e for e in refused if e.details["reason"] == "ip_not_allowed"]
    assert summary.details["summary"] and summary.details["suppressed_before"] == 1  # coalesced
    assert event.ip_address == OUTSIDE["ip_address"] and event.details["api_key_id"] == created.key.id


async def test_arguments_are_checked(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    for bad in (
        {"rate_limit": "lots"},
        {"expires_in": 0},
        {"expires_in": "1d"},
        {"name": ""},
        {"scopes": "models:invoke"},
    ):
        with pytest.raises(ValueError):
            await make_key(security, uid, **bad)
    with pytest.raises(InvalidArgument):
        await security.rotate_api_key(uid, (await make_key(security, uid)).key.id, overlap_seconds=-1)


async def test_at_most_api_key_max_per_user_live_keys(make_settings, clock) -> None:
    f = await initialize_fundaments(make_settings(api_key_max_per_user=2), clock=clock, configure_logs=False)
    try:
        security = f["security"]
        uid = await owner(security)
        first = await make_key(security, uid)
        await make_key(security, uid)
        with pytest.raises(PermissionDenied, match="API_KEY_MAX_PER_USER"):
            await make_key(security, uid)
        await security.revoke_api_key(uid, first.key.id)
        await make_key(security, uid)
    finally:
        await f.close()


async def test_listing_pages_by_keyset(fundaments, clock) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    other = await owner(security, "someone-else")
    made = []
    for i in range(5):
        made.append((await make_key(security, uid, name=f"k{i}")).key.id)
        clock.advance(1)
    await make_key(security, other)
    first = await security.list_api_keys(uid, limit=2)
    second = await security.list_api_keys(uid, after=first[-1].id, limit=2)
    third = await security.list_api_keys(uid, after=second[-1].id, limit=2)
    assert [k.id for k in first + second + third] == made
    assert await security.list_api_keys(uid, after=third[-1].id) == []


# --- rotation ------------------------------------------------------------------------------------------
async def test_rotation_keeps_the_id_and_the_old_token_works_only_for_the_overlap(fundaments, clock) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    created = await make_key(security, uid)
    rotated = await security.rotate_api_key(uid, created.key.id, overlap_seconds=3600)
    assert rotated.key.id == created.key.id and rotated.token != created.token
    assert rotated.key.previous_expires_at == clock.now() + 3600 and rotated.key.prefix == rotated.token[:10]
    assert (await security.validate_api_key(created.token, CLIENT)).id == created.key.id  # inside
    assert (await security.validate_api_key(rotated.token, CLIENT)).id == created.key.id
    clock.advance(3599)
    assert await security.validate_api_key(created.token, CLIENT) is not None
    clock.advance(1)
    assert await security.validate_api_key(created.token, CLIENT) is None  # after: never again
    assert await security.validate_api_key(rotated.token, CLIENT) is not None
    [refused] = [e for e in await events(fundaments, "api_key.refused") if not e.details.get("summary")]
    assert refused.details == {"reason": "previous_token_expired", "api_key_id": created.key.id}
    again = await security.rotate_api_key(uid, created.key.id, overlap_seconds=3600)
    clock.advance(10 * DAY)
    assert await security.validate_api_key(created.token, CLIENT) is None
    assert await security.validate_api_key(again.token, CLIENT) is not None


async def test_rotation_with_no_overlap_kills_the_old_token_at_once(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    created = await make_key(security, uid)
    assert await security.validate_api_key(created.token, CLIENT) is not None  # cached
    rotated = await security.rotate_api_key(uid, created.key.id, overlap_seconds=0)
    assert rotated.key.previous_expires_at is None
    assert await security.validate_api_key(created.token, CLIENT) is None
    assert await security.validate_api_key(rotated.token, CLIENT) is not None


async def test_revoking_kills_the_current_and_the_previous_token_at_once(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    created = await make_key(security, uid)
    rotated = await security.rotate_api_key(uid, created.key.id, overlap_seconds=3600)
    assert await security.validate_api_key(created.token, CLIENT) is not None
    assert await security.validate_api_key(rotated.token, CLIENT) is not None
    assert await security.revoke_api_key(uid, created.key.id)
    assert await security.validate_api_key(created.token, CLIENT) is None
    assert await security.validate_api_key(rotated.token, CLIENT) is None
    with pytest.raises(UnknownApiKeyError):
        await security.rotate_api_key(uid, created.key.id)  # revoked for good: no new token


async def test_a_retried_rotation_keeps_the_token_the_client_holds(fundaments, clock) -> None:
    """The client rotates, the answer is lost (it never sees the new token), it rotates again:
    the token it holds still works, and the token of the lost answer is dead."""
    security: Security = fundaments["security"]
    uid = await owner(security)
    original = await make_key(security, uid)
    lost = await security.rotate_api_key(uid, original.key.id, overlap_seconds=600)
    clock.advance(300)
    retried = await security.rotate_api_key(uid, original.key.id, overlap_seconds=600)
    assert await security.validate_api_key(original.token, CLIENT) is not None  # still the previous
    assert await security.validate_api_key(lost.token, CLIENT) is None  # the never-seen one is dead
    assert await security.validate_api_key(retried.token, CLIENT) is not None
    clock.advance(599)  # the overlap counts from the retry
    assert await security.validate_api_key(original.token, CLIENT) is not None
    clock.advance(1)
    assert await security.validate_api_key(original.token, CLIENT) is None
    [first, second] = await events(fundaments, "api_key.rotated")
    assert first.details["previous_kept"] is False and second.details["previous_kept"] is True


async def test_a_rotation_after_the_new_token_was_used_replaces_the_previous(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    original = await make_key(security, uid)
    first = await security.rotate_api_key(uid, original.key.id, overlap_seconds=600)
    assert await security.validate_api_key(first.token, CLIENT) is not None  # the client got it
    second = await security.rotate_api_key(uid, original.key.id, overlap_seconds=600)
    assert await security.validate_api_key(original.token, CLIENT) is None
    assert await security.validate_api_key(first.token, CLIENT) is not None  # now the previous
    assert await security.validate_api_key(second.token, CLIENT) is not None


async def test_rotation_is_only_for_the_owners_live_keys(fundaments, clock) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    other = await owner(security, "mallory")
    created = await make_key(security, uid, expires_in=60)
    for user, key_id in ((other, created.key.id), (uid, "key_nope"), (uid, 42)):
        with pytest.raises(UnknownApiKeyError):
            await security.rotate_api_key(user, key_id)
    assert await security.revoke_api_key(other, created.key.id) is False
    clock.advance(60)
    with pytest.raises(UnknownApiKeyError, match="expired"):
        await security.rotate_api_key(uid, created.key.id)


# --- several instances -----------------------------------------------------------------------------
async def test_a_revoked_or_expired_key_fails_on_another_instance_within_the_cache_bound(
    start, clock
) -> None:
    a = await start()
    b = await start()
    uid = await owner(a["security"])
    created = await make_key(a["security"], uid)
    short = await make_key(a["security"], uid, name="short", expires_in=30)
    assert await b["security"].validate_api_key(created.token, CLIENT) is not None  # cached on B
    assert await b["security"].validate_api_key(short.token, CLIENT) is not None
    for _ in range(3):  # re-read (unchanged) each time the bound runs out: each re-read bounds again
        clock.advance(b.settings.api_key_cache_seconds)
        assert await b["security"].validate_api_key(created.token, CLIENT) is not None
    assert await a["security"].revoke_api_key(uid, created.key.id)
    assert await a["security"].validate_api_key(created.token, CLIENT) is None  # at once on A
    clock.advance(b.settings.api_key_cache_seconds)  # <= 1 s
    assert await b["security"].validate_api_key(created.token, CLIENT) is None
    clock.advance(30)
    assert await b["security"].validate_api_key(short.token, CLIENT) is None


async def test_a_rotation_elsewhere_ends_the_previous_token_after_its_overlap(start, clock) -> None:
    a = await start()
    b = await start()
    uid = await owner(a["security"])
    created = await make_key(a["security"], uid)
    assert await b["security"].validate_api_key(created.token, CLIENT) is not None
    rotated = await a["security"].rotate_api_key(uid, created.key.id, overlap_seconds=0)
    clock.advance(1)
    assert await b["security"].validate_api_key(created.token, CLIENT) is None
    assert await b["security"].validate_api_key(rotated.token, CLIENT) is not None


# --- scopes and owners ----------------------------------------------------------------------------
async def test_a_key_cannot_do_what_its_owner_cannot(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security, perms=("models:invoke",))
    with pytest.raises(PermissionDenied, match="models:delete"):
        await make_key(security, uid, scopes=["models:invoke", "models:delete"])
    with pytest.raises(PermissionDenied):
        await make_key(security, uid, scopes=["*"])
    key = await security.validate_api_key((await make_key(security, uid)).token, CLIENT)
    assert await security.check_permission(uid, "models:invoke", api_key=key)
    assert not await security.check_permission(uid, "admin:anything", api_key=key)
    with pytest.raises(PermissionDenied, match="does not allow"):
        await security.require_permission(uid, "models:list", api_key=key, request_data=CLIENT)
    await security.require_permission(uid, "models:invoke", api_key=key)
    other = await owner(security, "eve")
    assert not await security.check_permission(other, "models:invoke", api_key=key)  # not eve's key
    assert not await security.check_permission(uid, "models:invoke", api_key="not a key")  # type: ignore[arg-type]
    [denied] = [e for e in await events(fundaments, "permission.denied") if e.details.get("api_key_id")]
    assert denied.details["reason"] == "api_key_scope" and denied.ip_address == CLIENT["ip_address"]


async def test_wildcard_scopes_follow_rbac(fundaments) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security, perms=("models:*",))
    key = (await make_key(security, uid, scopes=["models:*"])).key
    assert await security.check_permission(uid, "models:invoke", api_key=key)
    assert await security.check_permission(uid, "models:weights:read", api_key=key)
    assert not await security.check_permission(uid, "billing:read", api_key=key)


async def test_a_role_revoked_from_the_owner_narrows_the_key_here_and_elsewhere(start) -> None:
    a = await start()
    b = await start()
    uid = await owner(a["security"])
    created = await make_key(a["security"], uid)
    key_b = await b["security"].validate_api_key(created.token, CLIENT)
    assert await a["security"].check_permission(uid, "models:invoke", api_key=created.key)
    assert await b["security"].check_permission(uid, "models:invoke", api_key=key_b)
    await a["security"].revoke_role(uid, "invoker")
    assert not await a["security"].check_permission(uid, "models:invoke", api_key=created.key)  # at once
    await b["access_control"].refresh()  # what B's watcher does every RBAC_REFRESH_SECONDS (0.5 s)
    assert not await b["security"].check_permission(uid, "models:invoke", api_key=key_b)


async def test_a_disabled_or_deleted_owner_kills_the_keys(start, clock) -> None:
    a = await start()
    b = await start()
    uid = await owner(a["security"])
    await a["security"].register_user("root", PASSWORD, roles=["admin"])
    created = await make_key(a["security"], uid)
    assert await a["security"].validate_api_key(created.token, CLIENT) is not None
    assert await b["security"].validate_api_key(created.token, CLIENT) is not None
    await a["security"].disable_user(uid)
    assert await a["security"].validate_api_key(created.token, CLIENT) is None  # at once here
    clock.advance(1)
    assert await b["security"].validate_api_key(created.token, CLIENT) is None  # within 1 s there
    await a["security"].enable_user(uid)
    assert await a["security"].validate_api_key(created.token, CLIENT) is not None
    await a["security"].delete_user(uid)
    assert await a["security"].validate_api_key(created.token, CLIENT) is None
    assert await a["db"].fetchval("SELECT count(*) FROM fundaments_api_keys") == 0  # gone with it
    reasons = {e.details["reason"] for e in await events(a, "api_key.refused")}
    assert {"owner_disabled", "unknown"} <= reasons


# --- last_used_at ------------------------------------------------------------------------------------
async def test_last_used_at_is_written_in_batches_not_per_request(fundaments, clock) -> None:
    security: Security = fundaments["security"]
    uid = await owner(security)
    created = await make_key(security, uid)
    db = fundaments["db"]
    for _ in range(100):
        clock.advance(0.01)
        assert await security.validate_api_key(created.token, CLIENT) is not None
    stored = "SELECT last_used_at FROM fundaments_api_keys WHERE id = $1"
    assert await db.fetchval(stored, created.key.id) is None  # nothing written per request
    [listed] = await security.list_api_keys(uid)
    assert listed.last_used_at == clock.now()  # the pending use is reported
    assert await fundaments["api_keys"].flush_last_used() == 1  # one row, one batch
    assert await db.fetchval(stored, created.key.id) == clock.now()
    clock.advance(5)
    await security.validate_api_key(created.token, CLIENT)
    await fundaments["api_keys"].close()  # close writes what is pending
    assert await db.fetchval(stored, created.key.id) == clock.now()


# --- master-key rotation ----------------------------------------------------------------------------
async def test_keys_survive_a_master_key_rotation_and_move_to_the_new_key(make_settings, clock) -> None:
    old_master = "old-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
    first = await initialize_fundaments(
        make_settings(master_encryption_key=old_master), clock=clock, configure_logs=False
    )
    try:
        uid = await owner(first["security"])
        created = await make_key(first["security"], uid)
        rotated_once = await make_key(first["security"], uid, name="rotating")
        rotated = await first["security"].rotate_api_key(uid, rotated_once.key.id, overlap_seconds=600)
        old_key_id = first["encryption"].purpose_keys(DIGEST_PURPOSE)[0][0]
    finally:
        await first.close()
    second = await initialize_fundaments(
        make_settings(master_encryption_key_previous=old_master), clock=clock, configure_logs=False
    )
    try:
        security = second["security"]
        new_key_id = second["encryption"].purpose_keys(DIGEST_PURPOSE)[0][0]
        assert new_key_id != old_key_id
        for token in (created.token, rotated.token, rotated_once.token):
            assert await security.validate_api_key(token, CLIENT) is not None
        rows = await second["db"].fetch("SELECT key_id, old_key_id FROM fundaments_api_keys")
        assert {r["key_id"] for r in rows} == {new_key_id}  # re-digested under the current key
        assert {r["old_key_id"] for r in rows} == {None, new_key_id}
    finally:
        await second.close()


async def test_without_encryption_configured_api_keys_say_what_to_configure(make_settings, clock) -> None:
    from fundaments.errors import ServiceUnavailable

    f = await initialize_fundaments(
        make_settings(master_encryption_key=None, persistent_encryption_salt=None),
        clock=clock,
        configure_logs=False,
    )
    try:
        assert f["api_keys"] is None
        with pytest.raises(ServiceUnavailable, match="MASTER_ENCRYPTION_KEY"):
            await f["security"].validate_api_key("fk_x", CLIENT)
    finally:
        await f.close()


@pytest.mark.postgres
async def test_postgres_reads_survive_a_terminated_backend(make_settings, clock, postgres_url) -> None:
    """The dedicated read connection is killed under the service: validations go on (through the
    pool, then a new dedicated connection), and a revocation is still seen."""
    f = await initialize_fundaments(make_settings(api_key_cache_seconds=0), clock=clock, configure_logs=False)
    try:
        security = f["security"]
        uid = await owner(security)
        created = await make_key(security, uid)
        assert await security.validate_api_key(created.token, CLIENT) is not None
        admin = await asyncpg.connect(postgres_url)
        try:
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await admin.close()
        for _ in range(3):
            assert await security.validate_api_key(created.token, CLIENT) is not None
        assert await security.revoke_api_key(uid, created.key.id)
        assert await security.validate_api_key(created.token, CLIENT) is None
    finally:
        await f.close()
