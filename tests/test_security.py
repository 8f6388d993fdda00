"""The Security facade's chains that span services: register, login, change password, disable."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from fundaments import Security
from fundaments.errors import AuthenticationError, PasswordPolicyError, RoleError, UserExistsError
from fundaments.models import LoginFailure

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a different long passphrase 42"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def security(fundaments) -> Security:
    return fundaments["security"]


async def kinds(security: Security, user_id: int) -> list[str]:
    return [e.kind for e in reversed(await security.audit_events(user_id=user_id, limit=1000))]


async def test_register_with_roles_is_one_transaction(security: Security) -> None:
    user = await security.register_user("Dev@Example.com", PASSWORD, roles=["member"])
    assert user.username == "dev@example.com" and user.roles == ("member",)
    assert await security.user_roles(user.id) == ["member"]
    with pytest.raises(RoleError):
        await security.register_user("other@example.com", PASSWORD, roles=["no-such-role"])
    assert await security.get_user_by_username("other@example.com") is None  # rolled back whole


@pytest.mark.parametrize(
    "variant", ["dev@example.com", "DEV@EXAMPLE.COM", "\uff44ev@example.com", " dev@example.com "]
)
async def test_register_refuses_lookalike_usernames(security: Security, variant: str) -> None:
    await security.register_user("dev@example.com", PASSWORD)
    with pytest.raises(UserExistsError):
        await security.register_user(variant, PASSWORD)


async def test_register_needs_exactly_one_secret(security: Security) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await security.register_user("x@example.com")
    with pytest.raises(ValueError, match="exactly one"):
        await security.register_user("x@example.com", PASSWORD, password_hash="$argon2id$...")
    with pytest.raises(PasswordPolicyError):
        await security.register_user("x@example.com", "short")


async def test_login_issues_a_new_bound_session_and_audits_in_one_go(
    security: Security, request_data
) -> None:
    user = await security.register_user("dev@example.com", PASSWORD)
    first = await security.user_login("dev@example.com", PASSWORD, request_data)
    second = await security.user_login("DEV@example.com", PASSWORD, request_data)
    assert first and second and first.session and second.session
    assert first.session.token != second.session.token  # fixation: a new token at every login
    assert first.device_token
    assert await security.validate_session(first.session.token, request_data) is not None
    events = await kinds(security, user.id)
    assert events.count("login.succeeded") == 2 and events.count("session.created") == 2


# Fixation (a token planted in the browser before login): tests/test_web_attacks.py, through the
# middleware on the real console; user_login takes no client token, so a test here could not fail.


async def test_failed_logins_give_reasons_and_lock_out_the_right_password(
    security: Security, request_data
) -> None:
    await security.register_user("dev@example.com", PASSWORD)
    for _ in range(5):
        failed = await security.user_login("dev@example.com", "wrong guess wrong guess", request_data)
        assert not failed and failed.reason is LoginFailure.INVALID_CREDENTIALS and failed.session is None
    locked = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert not locked and locked.reason is LoginFailure.LOCKED
    unknown = await security.user_login("nobody@example.com", PASSWORD, request_data)
    assert unknown.reason is LoginFailure.INVALID_CREDENTIALS


async def test_change_password_keeps_only_the_current_session_with_a_new_token(
    security: Security, request_data
) -> None:
    user = await security.register_user("dev@example.com", PASSWORD)
    here = await security.user_login("dev@example.com", PASSWORD, request_data)
    elsewhere = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert here.session and elsewhere.session and here.session.token and elsewhere.session.token
    with pytest.raises(AuthenticationError):
        await security.change_password(user.id, "not the password at all", NEW_PASSWORD, here.session.token)
    rotated = await security.change_password(
        user.id, PASSWORD, NEW_PASSWORD, current_token=here.session.token
    )
    assert rotated is not None and rotated.token and rotated.token != here.session.token
    assert await security.validate_session(here.session.token, request_data) is None
    assert await security.validate_session(elsewhere.session.token, request_data) is None
    assert await security.validate_session(rotated.token, request_data) is not None
    assert not await security.user_login("dev@example.com", PASSWORD, request_data)
    assert await security.user_login("dev@example.com", NEW_PASSWORD, request_data)
    assert "password.changed" in await kinds(security, user.id)


async def test_disable_ends_every_session_and_permission_then_enable_restores_login(
    security: Security, request_data
) -> None:
    await security.register_user("keeper@example.com", PASSWORD, roles=["admin"])  # not the last admin
    user = await security.register_user("dev@example.com", PASSWORD, roles=["admin"])
    login = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert login.session and login.session.token
    assert await security.check_permission(user.id, "anything:at_all")
    assert await security.disable_user(user.id) == 1
    assert await security.validate_session(login.session.token, request_data) is None
    assert not await security.check_permission(user.id, "anything:at_all")
    refused = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert refused.reason is LoginFailure.DISABLED
    await security.enable_user(user.id)
    assert await security.user_login("dev@example.com", PASSWORD, request_data)
    assert await security.check_permission(user.id, "anything:at_all")


async def test_a_role_change_rotates_the_session_at_once(
    security: Security, fundaments, clock, request_data
) -> None:
    user = await security.register_user("dev@example.com", PASSWORD)
    login = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert login.session and login.session.token
    assert await security.validate_session(login.session.token, request_data) is not None  # cached now
    await security.create_role("editor", permissions=["articles:write"])
    await security.grant_role(user.id, "editor")
    session = await security.validate_session(login.session.token, request_data)
    assert session is not None and session.rotated_token
    late = await security.validate_session(login.session.token, request_data)  # in the grace window
    assert late is not None and late.rotated_token == session.rotated_token
    clock.advance(fundaments.settings.session_rotation_grace)
    assert await security.validate_session(login.session.token, request_data) is None
    assert await security.validate_session(session.rotated_token, request_data) is not None


async def test_imported_passlib_hash_logs_in_and_is_upgraded(
    security: Security, fundaments, request_data
) -> None:
    import base64
    import hashlib

    salt = b"0123456789abcdef"
    digest = hashlib.pbkdf2_hmac("sha256", PASSWORD.encode(), salt, 29000)
    ab64 = lambda raw: base64.b64encode(raw).decode().rstrip("=").replace("+", ".")  # noqa: E731
    passlib_hash = f"$pbkdf2-sha256$29000${ab64(salt)}${ab64(digest)}"
    user = await security.register_user("old@example.com", password_hash=passlib_hash)
    assert await security.user_login("old@example.com", PASSWORD, request_data)
    stored = await fundaments["db"].fetchval(
        "SELECT password_hash FROM fundaments_users WHERE id = $1", user.id
    )
    assert stored.startswith("$argon2id$")


async def test_the_readme_quick_start_runs(capsys) -> None:
    spec = importlib.util.spec_from_file_location("quickstart", REPO / "examples" / "quickstart.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await module.main()
    out = capsys.readouterr().out
    assert "login ok: True" in out and "decrypted: SensitiveToken123" in out
    assert "same cookie from another IP: None" in out and "audit chain intact: True" in out


async def test_the_readme_recovery_example_prints_what_the_readme_shows(capsys) -> None:
    spec = importlib.util.spec_from_file_location("recovery", REPO / "examples" / "recovery.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    await module.main()
    out = capsys.readouterr().out
    readme = (REPO / "README.md").read_text()
    assert out in readme, out  # the README's output block is this run's, line for line
    assert "the same link again: this link is not valid any more" in out
