"""Nothing secret reaches the database or any log line, even at DEBUG (facade issue)."""

from __future__ import annotations

import logging

import pyotp
import pytest

from fundaments import Security
from fundaments.errors import DecryptionError
from fundaments.store.tables import metadata

PASSWORD = "Unique-Passphrase-For-The-Scan-2026"
WRONG_PASSWORD = "Another-Unique-Wrong-Guess-2026"
PLAINTEXT = "SensitiveToken123-scan-marker"


async def database_bytes(fundaments) -> list[bytes]:
    db = fundaments["db"]
    if db.dialect == "sqlite":
        path = db.path
        files = [path, path.with_name(path.name + "-wal")]
        return [f.read_bytes() for f in files if f.exists()]
    blobs = []
    for table in metadata.sorted_tables:
        rows = await db.fetch(f"SELECT row_to_json(t)::text AS j FROM {table.name} t")
        blobs.extend(row["j"].encode() for row in rows)
    return blobs


async def test_password_token_and_plaintext_appear_nowhere(fundaments, request_data, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    security: Security = fundaments["security"]
    user = await security.register_user("auditee@example.com", PASSWORD, roles=["member"])
    await security.user_login("auditee@example.com", WRONG_PASSWORD, request_data)
    login = await security.user_login("auditee@example.com", PASSWORD, request_data)
    assert login.session and login.session.token and login.device_token
    assert await security.validate_session(login.session.token, request_data)
    await security.validate_session(login.session.token, {**request_data, "ip_address": "192.0.2.1"})
    envelope = security.encrypt_data(PLAINTEXT, context=f"user:{user.id}:api_key")
    with pytest.raises(DecryptionError):
        security.decrypt_data(envelope, context="user:0:api_key")
    await fundaments["audit"].close()  # background audit writes are done
    await fundaments["sessions"].flush_touches()

    needles = {
        "password": PASSWORD,
        "wrong password": WRONG_PASSWORD,
        "session token": login.session.token,
        "device token": login.device_token,
        "plaintext": PLAINTEXT,
    }
    logs = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records).encode()
    assert b"login.succeeded" in logs  # the audit lines were captured
    for blob in [*await database_bytes(fundaments), logs]:
        for name, secret in needles.items():
            for form in (secret.encode(), secret.encode("utf-16-le")):
                assert form not in blob, f"the {name} leaked"


async def test_api_key_tokens_appear_nowhere(fundaments, request_data, caplog) -> None:
    """Created, rotated (previous and lost-answer tokens too), validated, refused and revoked: no
    token in the database file or its WAL (PostgreSQL: any row), the audit trail or any log line."""
    caplog.set_level(logging.DEBUG)
    security: Security = fundaments["security"]
    await security.create_role("invoker", ["models:invoke"])
    user = await security.register_user("machine-owner", PASSWORD, roles=["invoker"])
    created = await security.create_api_key(
        user.id, name="ci", scopes=["models:invoke"], expires_in=3600, allowed_ips=["198.51.100.0/24"]
    )
    lost = await security.rotate_api_key(user.id, created.key.id, overlap_seconds=600)
    rotated = await security.rotate_api_key(user.id, created.key.id, overlap_seconds=600)  # a retry
    client = {**request_data, "ip_address": "198.51.100.5"}
    assert await security.validate_api_key(rotated.token, client) is not None
    assert await security.validate_api_key(created.token, request_data) is None  # wrong IP: audited
    assert await security.validate_api_key(lost.token, client) is None  # unknown: audited
    other = await security.create_api_key(user.id, name="other", scopes=["models:invoke"])
    assert await security.revoke_api_key(user.id, other.key.id)
    assert await security.validate_api_key(other.token, client) is None
    await fundaments["api_keys"].flush_last_used()
    await fundaments["audit"].close()

    needles = {
        "api key": created.token,
        "lost rotated api key": lost.token,
        "rotated api key": rotated.token,
        "revoked api key": other.token,
    }
    logs = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records).encode()
    events = await security.audit_events(limit=100)
    assert {"api_key.created", "api_key.rotated", "api_key.refused", "api_key.revoked"} <= {
        e.kind for e in events
    }
    audit = repr(events).encode()
    for blob in [*await database_bytes(fundaments), logs, audit]:
        for name, secret in needles.items():
            for form in (secret.encode(), secret.encode("utf-16-le"), secret[10:].encode()):
                assert form not in blob, f"the {name} leaked"


async def test_totp_secret_recovery_codes_and_mfa_token_appear_nowhere(
    fundaments, request_data, clock, caplog
) -> None:
    """The multi-factor issue: the TOTP secret is stored encrypted, recovery codes as keyed digests,
    the mfa_token as a digest; none of them (nor a code typed) reaches the database, its WAL or a log."""
    caplog.set_level(logging.DEBUG)
    security: Security = fundaments["security"]
    user = await security.register_user("mfa-scan@example.com", PASSWORD, email="mfa-scan@example.com")
    enrolment = await security.begin_totp_enrolment(user.id)
    totp = pyotp.TOTP(enrolment.secret)
    codes = await security.confirm_totp_enrolment(user.id, totp.at(clock.now()))
    clock.advance(30)
    first = await security.user_login("mfa-scan@example.com", PASSWORD, request_data)
    assert first.mfa_token
    assert await security.verify_mfa(first.mfa_token, codes[0], request_data)
    second = await security.user_login("mfa-scan@example.com", PASSWORD, request_data)
    assert second.mfa_token
    assert not await security.verify_mfa(second.mfa_token, "Z" * 16, request_data)
    assert await security.verify_mfa(second.mfa_token, totp.at(clock.now()), request_data)
    await fundaments["mail"].send_due()
    await fundaments["audit"].close()

    needles = {
        "totp secret": enrolment.secret,
        "mfa token": first.mfa_token,
        "other mfa token": second.mfa_token,
    }
    for i, code in enumerate(codes):
        needles[f"recovery code {i}"] = code
        needles[f"recovery code {i} (canonical)"] = code.replace("-", "")
    logs = "\n".join(record.getMessage() + (record.exc_text or "") for record in caplog.records).encode()
    assert b"login.succeeded" in logs
    for blob in [*await database_bytes(fundaments), logs]:
        for name, secret in needles.items():
            for form in (secret.encode(), secret.encode("utf-16-le"), secret.lower().encode()):
                assert form not in blob, f"the {name} leaked"
