"""Every audit event kind of the facade issue is produced by the action that should produce it,
with the right actor and subject, in SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from fundaments import Security, initialize_fundaments
from fundaments.errors import DecryptionError, PermissionDenied
from fundaments.models import AuditEvent

PASSWORD = "correct horse battery staple"
IDLE = 1_800


async def latest(security: Security, kind: str) -> AuditEvent:
    for _ in range(50):  # events from synchronous calls are written by a background task
        events = await security.audit_events(kind=kind, limit=1)
        if events:
            return events[0]
        await asyncio.sleep(0.01)
    raise AssertionError(f"no {kind} event")


@pytest.fixture
async def started(make_settings, clock):
    fundaments = await initialize_fundaments(
        make_settings(throttle_ip_failures=8), clock=clock, configure_logs=False
    )
    try:
        yield fundaments
    finally:
        await fundaments.close()


async def test_every_event_kind_with_actor_and_subject(started, clock, request_data) -> None:
    security: Security = started["security"]
    admin = await security.register_user("admin@example.com", PASSWORD, roles=["admin"])
    user = await security.register_user("dev@example.com", PASSWORD, actor_user_id=admin.id)

    event = await latest(security, "user.registered")
    assert (event.actor_user_id, event.subject_user_id, event.username) == (
        admin.id,
        user.id,
        "dev@example.com",
    )

    login = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert login.session and login.session.token
    event = await latest(security, "login.succeeded")
    assert (event.actor_user_id, event.subject_user_id) == (user.id, user.id)
    assert event.ip_address == request_data["ip_address"] and event.session_id == login.session.id
    event = await latest(security, "session.created")
    assert event.subject_user_id == user.id and event.session_id == login.session.id

    for _ in range(5):
        await security.user_login("dev@example.com", "wrong guess, wrong guess", request_data)
    event = await latest(security, "login.failed")
    assert event.outcome == "failure" and event.subject_user_id == user.id
    assert event.details["reason"] in ("invalid_credentials", "locked")
    event = await latest(security, "account.locked")
    assert event.subject_user_id == user.id

    await security.unlock_user(user.id, actor_user_id=admin.id)
    event = await latest(security, "account.unlocked")
    assert (event.actor_user_id, event.subject_user_id) == (admin.id, user.id)

    spray = {"ip_address": "198.51.100.66", "user_agent": "sprayer"}
    for n in range(9):
        await security.user_login(f"nobody{n}@example.com", "guess guess guess", spray)
    event = await latest(security, "ip.throttled")
    assert event.ip_address == "198.51.100.66" and event.outcome == "failure"

    await security.create_role("editor", permissions=["articles:write"], actor_user_id=admin.id)
    event = await latest(security, "role.created")
    assert (
        event.actor_user_id == admin.id and event.details.get("role", event.details.get("name")) == "editor"
    )
    await security.grant_role(user.id, "editor", actor_user_id=admin.id)
    event = await latest(security, "role.granted")
    assert (event.actor_user_id, event.subject_user_id) == (admin.id, user.id)

    rotated = await security.validate_session(login.session.token, request_data)
    assert rotated is not None and rotated.rotated_token
    event = await latest(security, "session.rotated")
    assert event.subject_user_id == user.id and event.session_id == login.session.id

    await security.revoke_role(user.id, "editor", actor_user_id=admin.id)
    event = await latest(security, "role.revoked")
    assert (event.actor_user_id, event.subject_user_id) == (admin.id, user.id)

    with pytest.raises(PermissionDenied):
        await security.require_permission(user.id, "articles:write")
    event = await latest(security, "permission.denied")
    assert event.subject_user_id == user.id and event.outcome == "failure"

    stolen = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert stolen.session and stolen.session.token
    await security.validate_session(stolen.session.token, {**request_data, "ip_address": "192.0.2.99"})
    event = await latest(security, "session.hijack_suspected")
    assert event.subject_user_id == user.id and event.session_id == stolen.session.id
    assert "192.0.2.99" in str(event.details) or event.ip_address == "192.0.2.99"

    idle = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert idle.session and idle.session.token
    clock.advance(IDLE + 1)
    assert await security.validate_session(idle.session.token, request_data) is None
    event = await latest(security, "session.expired")
    assert event.subject_user_id == user.id and event.session_id == idle.session.id

    current = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert current.session and current.session.token
    await security.user_logout(current.session.token)
    event = await latest(security, "session.revoked")
    assert event.subject_user_id == user.id and event.session_id == current.session.id

    await security.change_password(user.id, PASSWORD, "another long passphrase 7")
    event = await latest(security, "password.changed")
    assert (event.actor_user_id, event.subject_user_id) == (user.id, user.id)

    await security.disable_user(user.id, actor_user_id=admin.id)
    event = await latest(security, "user.disabled")
    assert (event.actor_user_id, event.subject_user_id) == (admin.id, user.id)

    envelope = security.encrypt_data("SensitiveToken123", context=f"user:{user.id}:api_key")
    security.reencrypt(envelope, context=f"user:{user.id}:api_key")
    event = await latest(security, "keys.reencrypted")
    assert event.details["key_id"]

    with pytest.raises(DecryptionError):
        security.decrypt_data(envelope, context="user:someone-else:api_key")
    event = await latest(security, "decrypt.failed")
    assert event.outcome == "failure" and "SensitiveToken123" not in str(event.details)

    assert await security.verify_audit_chain()


async def test_a_flood_of_bad_tokens_is_one_event_with_a_count(started) -> None:
    security: Security = started["security"]
    for _ in range(500):
        with pytest.raises(DecryptionError):
            security.decrypt_data("fe1_not-a-real-envelope")
    await started["audit"].close()  # writes the count of what was folded
    events = await security.audit_events(kind="decrypt.failed", limit=100)
    assert len(events) == 2
    assert events[0].details["suppressed_before"] == 499
