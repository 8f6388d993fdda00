"""`fundaments users show|delete|list|unlock`: the whole account, its lock visible, deletion with
confirmation and the last-administrator guard, on SQLite and PostgreSQL."""

from __future__ import annotations

from fundaments.security import Security
from test_cli_admin import PASSWORD, REQUEST, Invoke, assert_one_line_error, cli, with_security  # noqa: F401


async def lock(security: Security, username: str) -> None:
    for i in range(5):
        await security.user_login(username, f"wrong {i}", REQUEST)


def test_show_names_state_address_roles_last_login_and_sessions(cli: Invoke) -> None:  # noqa: F811
    cli(
        "users",
        "create",
        "ann",
        "--password-stdin",
        "--role",
        "member",
        "--email",
        "Ann@Example.com",
        input=PASSWORD,
    )
    shown = cli("users", "show", "ann")
    assert shown.exit_code == 0, shown.output
    assert "active" in shown.stdout and "Ann@example.com (not verified)" in shown.stdout
    assert "member" in shown.stdout and "never" in shown.stdout

    async def log_in_then_lock(security: Security) -> None:
        assert await security.user_login("ann", PASSWORD, REQUEST)
        await lock(security, "ann")

    with_security(log_in_then_lock)
    shown = cli("users", "show", "1")
    assert "locked until" in shown.stdout and "never" not in shown.stdout
    assert REQUEST["ip_address"] in shown.stdout  # the live session
    listed = cli("users", "list")
    assert "locked until" in listed.stdout
    unlocked = cli("users", "unlock", "ann")
    assert "unlocked ann (#1)" in unlocked.stdout
    assert "active" in cli("users", "show", "ann").stdout


def test_list_pages_by_id_and_searches(cli: Invoke) -> None:  # noqa: F811
    for name in ("alice", "bob", "carol", "dave"):
        cli("users", "create", name, "--password-stdin", input=PASSWORD)
    first = cli("users", "list", "--limit", "2")
    assert "alice" in first.stdout and "carol" not in first.stdout and "--after 2" in first.stdout
    second = cli("users", "list", "--limit", "2", "--after", "2")
    assert "carol" in second.stdout and "dave" in second.stdout and "alice" not in second.stdout
    found = cli("users", "list", "--search", "AR")
    assert "carol" in found.stdout and "alice" not in found.stdout


def test_delete_asks_first_and_keeps_the_last_administrator(cli: Invoke) -> None:  # noqa: F811
    cli("users", "create", "root", "--password-stdin", "--role", "admin", input=PASSWORD)
    cli("users", "create", "ann", "--password-stdin", "--role", "member", input=PASSWORD)
    refused = cli("users", "delete", "ann", input="n\n")
    assert refused.exit_code == 1 and "nothing was changed" in refused.stderr
    assert cli("users", "show", "ann").exit_code == 0
    deleted = cli("users", "delete", "ann", input="y\n")
    assert deleted.exit_code == 0 and "deleted ann (#2)" in deleted.stdout
    assert_one_line_error(cli("users", "show", "ann"), "no account 'ann'")
    assert_one_line_error(cli("users", "delete", "root", "--yes"), "grant the admin role to another account")
    assert cli("users", "show", "root").exit_code == 0
    events = with_security(lambda s: s.audit_events(kind="user.deleted"))
    assert [(e.subject_user_id, e.username) for e in events] == [(2, "ann")]  # type: ignore[attr-defined]


def test_create_refuses_a_bad_or_taken_address_in_one_line(cli: Invoke) -> None:  # noqa: F811
    cli("users", "create", "ann", "--password-stdin", "--email", "ann@example.com", input=PASSWORD)
    assert_one_line_error(
        cli("users", "create", "bob", "--password-stdin", "--email", "ANN@example.com", input=PASSWORD),
        "already uses this email address",
    )
    assert_one_line_error(
        cli("users", "create", "bob", "--password-stdin", "--email", "bob@", input=PASSWORD),
        "not a usable email",
    )
