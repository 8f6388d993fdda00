"""`fundaments users|roles|sessions|audit`, through Typer's CliRunner, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from conftest import TEST_MASTER_KEY, TEST_SALT
from fundaments import initialize_fundaments
from fundaments.cli import app
from fundaments.cli.common import CommandError
from fundaments.config import load_settings
from fundaments.security import Security

PASSWORD = "correct horse battery staple"
# From test_passwords.py: passlib and Django hashes of PASSWORD.
PASSLIB = "$pbkdf2-sha256$1000$QYiR0ppTKsUYo9S6V2ot5Q$5sNrsm0LK2NsnIeCtRosu5ukrWVpci6i3s8y8L9A.tM"
DJANGO_PBKDF2 = "pbkdf2_sha256$1000$KRcjsUs03QbtNTUrL05jPK$p2Y090RSINdJpKHZX/wZFPWf2hTXDEZl1fJxtWv3BXg="
DJANGO_ARGON2 = (
    "argon2$argon2id$v=19$m=1024,t=1,p=8$WTV0UXJwMXJnNUljTHNrcFlkbGRRSw$"
    "Jlw7iW6zI790pZ4/wN2VwOrxG4m0izViv1bi9jo+Nkc"
)
REQUEST = {"ip_address": "203.0.113.7", "user_agent": "cli-test"}
CLEARED = ("MASTER_ENCRYPTION_KEY", "PERSISTENT_ENCRYPTION_SALT", "DATABASE_URL", "LOG_", "ARGON2", "PBKDF2")

Invoke = Callable[..., Result]


def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> None:
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith(CLEARED):
            monkeypatch.delenv(name)
    values = {
        "DATABASE_URL": database_url,
        "MASTER_ENCRYPTION_KEY": TEST_MASTER_KEY,
        "PERSISTENT_ENCRYPTION_SALT": TEST_SALT,
        "ARGON2_MEMORY_COST": "1024",
        "ARGON2_TIME_COST": "1",
        "PBKDF2_ITERATIONS": "1000",
        "FUNDAMENTS_ENV_FILE": str(tmp_path / "absent.env"),
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Invoke:
    """Run `fundaments ARGS` in-process against this test's database, with the test keys."""
    cli_environment(monkeypatch, tmp_path, database_url)
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, **env: str | None) -> Result:
        return runner.invoke(app, list(args), input=input, env=env or None)

    return invoke


def with_security(work: Callable[[Security], object]) -> object:
    """Run ``work(security)`` on services started from the same environment the command sees."""

    async def go() -> object:
        started = await initialize_fundaments(load_settings(), configure_logs=False)
        try:
            return await work(started.security)  # type: ignore[misc]
        finally:
            await started.close()

    return asyncio.run(go())


def assert_one_line_error(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr


# --- users -----------------------------------------------------------------------------------------


def test_users_create_from_stdin_then_list(cli: Invoke) -> None:
    created = cli("users", "create", "alice", "--password-stdin", "--role", "member", input=PASSWORD + "\n")
    assert created.exit_code == 0, created.output
    assert "created account #1 alice (member)" in created.stdout
    listed = cli("users", "list")
    assert listed.exit_code == 0 and "alice" in listed.stdout and "member" in listed.stdout
    assert PASSWORD not in created.output + listed.output


def test_users_create_from_hidden_prompt_never_echoes_the_password(cli: Invoke) -> None:
    result = cli("users", "create", "bob", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert PASSWORD not in result.output
    assert "created account #1 bob" in result.stdout


def test_users_create_has_no_password_argument(cli: Invoke) -> None:
    assert cli("users", "create", "bob", "--password", PASSWORD).exit_code == 2
    assert cli("users", "create", "bob", PASSWORD).exit_code == 2


def test_users_create_refuses_a_weak_password_in_one_line(cli: Invoke) -> None:
    result = cli("users", "create", "bob", "--password-stdin", input="short\n")
    assert_one_line_error(result, "at least 15 characters")
    assert "short" not in result.output


def test_users_create_with_empty_stdin_fails(cli: Invoke) -> None:
    assert_one_line_error(
        cli("users", "create", "bob", "--password-stdin", input=""), "stdin held no password"
    )


def test_users_create_duplicate_fails(cli: Invoke) -> None:
    assert cli("users", "create", "bob", "--password-stdin", input=PASSWORD).exit_code == 0
    assert_one_line_error(cli("users", "create", "BOB", "--password-stdin", input=PASSWORD), "already exists")


def test_users_disable_enable_unlock_by_name_and_id(cli: Invoke) -> None:
    cli("users", "create", "carol", "--password-stdin", input=PASSWORD)
    disabled = cli("users", "disable", "carol")
    assert disabled.exit_code == 0 and "disabled carol (#1); 0 session(s) ended" in disabled.stdout
    assert "disabled" in cli("users", "list").stdout
    enabled = cli("users", "enable", "1")
    assert enabled.exit_code == 0 and "enabled carol (#1)" in enabled.stdout
    unlocked = cli("users", "unlock", "carol")  # not locked: said so, nothing audited
    assert unlocked.exit_code == 0 and "carol (#1) was not locked: nothing changed" in unlocked.stdout


@pytest.mark.parametrize("command", ["disable", "enable", "unlock"])
def test_users_commands_name_an_unknown_account(cli: Invoke, command: str) -> None:
    assert_one_line_error(cli("users", command, "nobody"), "no account 'nobody'")


NEW_PASSWORD = "a brand new passphrase, chosen by the admin"


def login_state(username: str, password: str) -> tuple[bool, bool]:
    """(the password logs in, the account must change its password)."""

    async def check(security: Security) -> tuple[bool, bool]:
        login = await security.user_login(username, password, REQUEST)
        return bool(login), bool(login.user and login.user.must_change_password)

    result = with_security(check)
    assert isinstance(result, tuple)
    return result


def test_users_set_password_from_the_hidden_prompt_forces_a_change(cli: Invoke) -> None:
    cli("users", "create", "carol", "--password-stdin", input=PASSWORD)
    result = cli("users", "set-password", "carol", input=f"{NEW_PASSWORD}\n{NEW_PASSWORD}\n")
    assert result.exit_code == 0, result.output
    assert NEW_PASSWORD not in result.output
    assert (
        "password of carol (#1) set" in result.stdout and "must be chosen at the next login" in result.stdout
    )
    assert login_state("carol", PASSWORD) == (False, False)
    assert login_state("carol", NEW_PASSWORD) == (True, True)


def test_users_set_password_from_stdin_without_forcing_a_change(cli: Invoke) -> None:
    cli("users", "create", "carol", "--password-stdin", input=PASSWORD)
    result = cli("users", "set-password", "1", "--password-stdin", "--no-must-change", input=NEW_PASSWORD)
    assert result.exit_code == 0, result.output
    assert "must be chosen" not in result.stdout
    assert login_state("carol", NEW_PASSWORD) == (True, False)


def test_users_set_password_asks_twice_and_refuses_a_mismatch(cli: Invoke) -> None:
    cli("users", "create", "carol", "--password-stdin", input=PASSWORD)
    result = cli("users", "set-password", "carol", input=f"{NEW_PASSWORD}\nsomething else entirely\n")
    assert_one_line_error(result, "no password given")  # the prompt asks again; input ends
    assert "do not match" in result.stdout
    assert login_state("carol", PASSWORD) == (True, False)


def test_users_set_password_has_no_password_argument(cli: Invoke) -> None:
    cli("users", "create", "carol", "--password-stdin", input=PASSWORD)
    assert cli("users", "set-password", "carol", NEW_PASSWORD).exit_code == 2
    assert cli("users", "set-password", "carol", "--password", NEW_PASSWORD).exit_code == 2


def test_users_set_password_refuses_a_policy_failure_in_one_line(cli: Invoke) -> None:
    cli("users", "create", "carol", "--password-stdin", input=PASSWORD)
    result = cli("users", "set-password", "carol", "--password-stdin", input="short\n")
    assert_one_line_error(result, "at least 15 characters")
    assert "short" not in result.output
    assert login_state("carol", PASSWORD) == (True, False)


def test_users_set_password_names_an_unknown_account_before_asking(cli: Invoke) -> None:
    result = cli("users", "set-password", "nobody")
    assert_one_line_error(result, "no account 'nobody'")
    assert "New password" not in result.output


def test_users_set_password_ends_every_session(cli: Invoke) -> None:
    log_in_twice(cli)
    result = cli("users", "set-password", "erin", "--password-stdin", input=NEW_PASSWORD)
    assert result.exit_code == 0, result.output
    assert "0 live session(s)" in cli("sessions", "list", "erin").stdout


def test_users_import_reports_every_rejected_row_and_imports_the_rest(cli: Invoke, tmp_path: Path) -> None:
    csv_file = tmp_path / "users.csv"
    csv_file.write_text(
        "username,password_hash\n"
        f"dora,{PASSLIB}\n"
        f"emil,{DJANGO_PBKDF2}\n"
        f'"fred","{DJANGO_ARGON2}"\n'
        "\n"
        "gina,md5$abc$def\n"
        f"dora,{DJANGO_PBKDF2}\n"
        "hans\n"
        f"ivan,{PASSLIB},extra\n"
        f",{PASSLIB}\n"
        f"{'x' * 300},{PASSLIB}\n",
        encoding="utf-8",
    )
    result = cli("users", "import", str(csv_file), "--role", "member")
    assert result.exit_code == 1, result.output
    out = result.stdout
    assert "line 6: gina: rejected: password_hash is not a supported hash" in out
    assert "line 7: dora: rejected: an account named 'dora' already exists" in out
    assert "line 8: hans: rejected: expected 2 fields (username,password_hash), found 1" in out
    assert "line 9: ivan: rejected: password_hash is not a supported hash" in out
    assert "line 10: (no username): rejected: empty username or password hash" in out
    assert "line 11: " in out and "x" * 65 not in out  # the username is cut when echoed
    assert "imported 3 account(s), rejected 6" in out

    async def check(security: Security) -> None:
        for name in ("dora", "emil", "fred"):
            login = await security.user_login(name, PASSWORD, REQUEST)
            assert login, (name, login.reason)
            assert await security.user_roles(login.user.id) == ["member"]  # type: ignore[union-attr]

    with_security(check)


def test_users_import_from_stdin_all_good_exits_0(cli: Invoke) -> None:
    result = cli("users", "import", "-", input=f"dora,{PASSLIB}\nemil,{DJANGO_ARGON2}\n")  # unquoted: commas
    assert result.exit_code == 0, result.output
    assert "imported 2 account(s), rejected 0" in result.stdout


def test_users_import_of_a_missing_file_fails(cli: Invoke, tmp_path: Path) -> None:
    assert_one_line_error(cli("users", "import", str(tmp_path / "nope.csv")), "cannot read")


def test_users_import_with_an_unknown_role_rejects_rows(cli: Invoke) -> None:
    result = cli("users", "import", "-", "--role", "ghost", input=f"dora,{PASSLIB}\n")
    assert result.exit_code == 1 and "line 1: dora: rejected:" in result.stdout and "ghost" in result.stdout


# --- roles -----------------------------------------------------------------------------------------


def test_roles_create_list_grant_revoke(cli: Invoke) -> None:
    cli("users", "create", "dora", "--password-stdin", input=PASSWORD)
    created = cli(
        "roles", "create", "auditor", "-p", "audit:read", "-p", "reports:*", "--inherits", "member",
        "--description", "reads the trail",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    listed = cli("roles", "list")
    assert "auditor" in listed.stdout and "audit:read" in listed.stdout and "reads the trail" in listed.stdout
    granted = cli("roles", "grant", "dora", "auditor")
    assert granted.exit_code == 0 and "granted auditor to dora (#1)" in granted.stdout
    assert "already held auditor" in cli("roles", "grant", "1", "auditor").stdout
    revoked = cli("roles", "revoke", "dora", "auditor")
    assert revoked.exit_code == 0 and "revoked auditor from dora" in revoked.stdout
    assert "did not hold auditor" in cli("roles", "revoke", "dora", "auditor").stdout


def test_roles_failures_are_one_line(cli: Invoke) -> None:
    cli("users", "create", "dora", "--password-stdin", input=PASSWORD)
    assert cli("roles", "grant", "dora", "ghost").exit_code == 1
    assert cli("roles", "create", "bad", "-p", "not a permission!").exit_code == 1
    assert_one_line_error(cli("roles", "create", "member"), "member")  # exists (seeded)
    assert_one_line_error(cli("roles", "grant", "nobody", "member"), "no account 'nobody'")


# --- sessions --------------------------------------------------------------------------------------


def log_in_twice(cli: Invoke) -> list[str]:
    cli("users", "create", "erin", "--password-stdin", input=PASSWORD)

    async def log_in(security: Security) -> list[str]:
        ids = []
        for _ in range(2):
            login = await security.user_login("erin", PASSWORD, REQUEST)
            assert login.session is not None
            ids.append(login.session.id)
        return ids

    ids = with_security(log_in)
    assert isinstance(ids, list)
    return ids


def test_sessions_list_revoke_and_revoke_all(cli: Invoke) -> None:
    first, second = log_in_twice(cli)
    listed = cli("sessions", "list", "erin")
    assert listed.exit_code == 0 and first in listed.stdout and second in listed.stdout
    assert "2 live session(s) of erin (#1)" in listed.stdout
    revoked = cli("sessions", "revoke", first, "--user", "erin")
    assert revoked.exit_code == 0 and f"revoked session {first} of erin" in revoked.stdout
    assert_one_line_error(cli("sessions", "revoke", first, "--user", "1"), "has no live session")
    ended = cli("sessions", "revoke-all", "1")
    assert ended.exit_code == 0 and "ended 1 session(s) of erin (#1)" in ended.stdout
    assert "0 live session(s)" in cli("sessions", "list", "erin").stdout


def test_sessions_revoke_needs_the_owner(cli: Invoke) -> None:
    assert cli("sessions", "revoke", "abc").exit_code == 2


def test_sessions_of_an_unknown_user_fail(cli: Invoke) -> None:
    assert_one_line_error(cli("sessions", "list", "nobody"), "no account 'nobody'")


# --- audit -----------------------------------------------------------------------------------------


def test_audit_tail_filters_by_user_and_kind(cli: Invoke) -> None:
    log_in_twice(cli)
    cli("users", "create", "fay", "--password-stdin", input=PASSWORD)
    everything = cli("audit", "tail", "-n", "100")
    assert everything.exit_code == 0
    assert "login.succeeded" in everything.stdout and "user=fay" in everything.stdout
    lines = everything.stdout.splitlines()
    ids = [int(line.split()[0][1:]) for line in lines]
    assert ids == sorted(ids)  # oldest first
    logins = cli("audit", "tail", "--kind", "login.succeeded").stdout.splitlines()
    assert len(logins) == 2 and all("login.succeeded" in line for line in logins)
    fay = cli("audit", "tail", "--user", "fay").stdout
    assert "user=fay" in fay and "erin" not in fay
    assert len(cli("audit", "tail", "-n", "1").stdout.splitlines()) == 1


def test_audit_tail_follow_polls_and_stops(cli: Invoke) -> None:
    cli("users", "create", "fay", "--password-stdin", input=PASSWORD)
    result = cli(
        "audit", "tail", "--follow", "--interval", "0.01", "--max-polls", "3", "--kind", "user.registered"
    )
    assert result.exit_code == 0, result.output
    assert result.stdout.count("user.registered") == 1  # printed once, not again at each poll


def test_audit_tail_follow_stops_cleanly_on_ctrl_c(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = 0
    real_sleep = asyncio.sleep

    async def interrupted_sleep(delay: float) -> None:
        nonlocal calls
        if delay != 0.37:  # another service's timer (asyncio.sleep is patched for the whole process)
            await real_sleep(delay)
            return
        calls += 1
        if calls == 2:  # Ctrl-C: asyncio.run cancels the command, then raises KeyboardInterrupt
            os.kill(os.getpid(), signal.SIGINT)
        await real_sleep(0.05)

    monkeypatch.setattr("fundaments.cli.accounts.asyncio.sleep", interrupted_sleep)
    result = cli("audit", "tail", "--follow", "--interval", "0.37")
    assert result.exit_code == 0, result.output
    assert calls == 2


def test_audit_verify_passes_then_names_the_first_broken_event(cli: Invoke) -> None:
    cli("users", "create", "gus", "--password-stdin", input=PASSWORD)
    intact = cli("audit", "verify")
    assert intact.exit_code == 0 and "audit chain intact" in intact.stdout

    async def tamper(security: Security) -> None:
        events = await security.audit_events(kind="user.registered")
        db = security._db  # the test plays the attacker with database access
        assert db is not None
        await db.execute("UPDATE fundaments_audit_events SET outcome = 'failure' WHERE id = $1", events[0].id)

    with_security(tamper)
    broken = cli("audit", "verify")
    assert broken.exit_code == 1
    assert "audit chain broken at event #" in broken.stdout
    assert "event content does not match its hash" in broken.stdout


# --- configuration and error handling --------------------------------------------------------------


def test_invalid_configuration_is_one_line_exit_1(cli: Invoke) -> None:
    result = cli("users", "list", MASTER_ENCRYPTION_KEY="your_256_bit_key_here")
    assert_one_line_error(result, "MASTER_ENCRYPTION_KEY is still the placeholder")


def test_unreachable_database_is_one_line_exit_1(cli: Invoke) -> None:
    result = cli("users", "list", DATABASE_URL="postgresql://app:pw-s3cr3t@127.0.0.1:1/none")
    assert result.exit_code == 1
    assert "Traceback" not in result.output and "pw-s3cr3t" not in result.output


def test_debug_shows_the_traceback(cli: Invoke) -> None:
    quiet = cli("users", "disable", "nobody")
    assert quiet.exit_code == 1 and quiet.exception is not None and isinstance(quiet.exception, SystemExit)
    loud = cli("--debug", "users", "disable", "nobody")
    assert loud.exit_code == 1 and isinstance(loud.exception, CommandError)


@pytest.mark.parametrize(
    "args",
    [
        ["users"],
        ["users", "create"],
        ["users", "list", "--limit", "0"],
        ["roles", "grant", "x"],
        ["audit", "nope"],
    ],
)
def test_usage_errors_exit_2(cli: Invoke, args: list[str]) -> None:
    assert cli(*args).exit_code == 2
