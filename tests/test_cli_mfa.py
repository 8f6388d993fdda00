"""`fundaments users mfa-status|mfa-reset`: the second factors of an account, and an operator's
reset (confirmation unless --yes, one-line error without MFA), on SQLite and PostgreSQL."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pyotp

from fundaments.security import Security
from test_cli_admin import PASSWORD, Invoke, assert_one_line_error, cli, with_security  # noqa: F401


async def enrol(security: Security) -> list[str]:
    user = await security.get_user_by_username("ann")
    assert user is not None
    enrolment = await security.begin_totp_enrolment(user.id)
    return await security.confirm_totp_enrolment(user.id, pyotp.TOTP(enrolment.secret).now())


def test_status_shows_totp_passkeys_and_codes_left(cli: Invoke) -> None:  # noqa: F811
    cli("users", "create", "ann", "--password-stdin", input=PASSWORD)
    off = cli("users", "mfa-status", "ann")
    assert off.exit_code == 0, off.output
    assert re.search(r"totp\s+off", off.stdout) and re.search(r"recovery codes left\s+0\b", off.stdout)
    codes = with_security(enrol)
    on = cli("users", "mfa-status", "1")
    assert re.search(r"totp\s+on", on.stdout) and re.search(r"recovery codes left\s+10\b", on.stdout)
    assert re.search(r"passkeys\s+0\b", on.stdout)
    assert all(code not in on.output for code in codes)  # never a code
    assert_one_line_error(cli("users", "mfa-status", "nobody"), "no account 'nobody'")


def test_reset_asks_first_then_turns_totp_off(cli: Invoke) -> None:  # noqa: F811
    cli("users", "create", "ann", "--password-stdin", input=PASSWORD)
    assert_one_line_error(cli("users", "mfa-reset", "ann", "--yes"), "has no two-factor sign-in")
    with_security(enrol)
    refused = cli("users", "mfa-reset", "ann", input="n\n")
    assert refused.exit_code == 1 and "nothing was changed" in refused.stderr
    assert with_security(lambda s: s.mfa_status(1)).totp  # type: ignore[attr-defined]
    done = cli("users", "mfa-reset", "ann", input="y\n")
    assert done.exit_code == 0 and "turned off" in done.stdout, done.output
    assert not with_security(lambda s: s.mfa_status(1)).totp  # type: ignore[attr-defined]
    with_security(enrol)
    assert cli("users", "mfa-reset", "ann", "--yes").exit_code == 0
    events = with_security(lambda s: s.audit_events(kind="mfa.totp_disabled"))
    assert [e.subject_user_id for e in events] == [1, 1]  # type: ignore[attr-defined]


def test_the_cli_docs_block_runs(cli: Invoke) -> None:  # noqa: F811
    """docs/cli.md's two-factor session: every `$ fundaments` line runs, in order, with exit 0."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    block = text.split("<!-- cli-mfa:", 1)[1].split("```console\n", 1)[1].split("```", 1)[0]
    commands = [
        line[len("$ fundaments ") :] for line in block.splitlines() if line.startswith("$ fundaments ")
    ]
    assert len(commands) == 3
    cli("users", "create", "ann", "--password-stdin", input=PASSWORD)
    with_security(enrol)
    results = [cli(*shlex.split(command)) for command in commands]
    assert all(r.exit_code == 0 for r in results), [r.output for r in results]
    assert re.search(r"totp\s+on", results[0].stdout) and re.search(r"totp\s+off", results[2].stdout)
