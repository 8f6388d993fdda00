"""`fundaments roles edit|delete` and the last-administrator guard through every CLI path, on
SQLite and PostgreSQL (the `cli` fixture of test_cli_admin.py)."""

# ruff: noqa: F811 - `cli` is a pytest fixture imported from test_cli_admin and taken as an argument

from __future__ import annotations

import pytest

from fundaments.security import Security
from test_cli_admin import PASSWORD, Invoke, assert_one_line_error, cli, with_security  # noqa: F401 - cli is a fixture

LAST_ADMIN = "it would leave no active account holding *"


def roles(cli: Invoke) -> dict[str, tuple[list[str], list[str]]]:
    """name -> (own permissions, inherits), as stored now."""

    async def read(security: Security) -> dict[str, tuple[list[str], list[str]]]:
        return {r.name: (sorted(r.permissions), sorted(r.inherits)) for r in await security.list_roles()}

    result = with_security(read)
    assert isinstance(result, dict)
    return result


def user_roles(username: str) -> list[str]:
    async def read(security: Security) -> list[str]:
        user = await security.get_user_by_username(username)
        assert user is not None
        return await security.user_roles(user.id)

    result = with_security(read)
    assert isinstance(result, list)
    return result


# --- roles edit ------------------------------------------------------------------------------------


def test_roles_edit_replaces_permissions_and_inheritance(cli: Invoke) -> None:
    cli("roles", "create", "editor", "-p", "articles:write", "-p", "articles:read")
    cli("roles", "create", "chief", "-p", "articles:publish")
    result = cli("roles", "edit", "chief", "-p", "articles:*", "-p", "reports:read", "--inherits", "editor")
    assert result.exit_code == 0, result.output
    assert "role chief: permissions articles:*, reports:read; inherits editor" in result.stdout
    assert roles(cli)["chief"] == (["articles:*", "reports:read"], ["editor"])


def test_roles_edit_changes_only_what_is_given(cli: Invoke) -> None:
    cli("roles", "create", "editor", "-p", "articles:write")
    cli("roles", "create", "chief", "-p", "articles:publish", "--inherits", "editor")
    assert cli("roles", "edit", "chief", "-p", "articles:delete").exit_code == 0
    assert roles(cli)["chief"] == (["articles:delete"], ["editor"])
    assert cli("roles", "edit", "chief", "--no-inherits").exit_code == 0
    assert roles(cli)["chief"] == (["articles:delete"], [])
    assert cli("roles", "edit", "chief", "--no-permissions").exit_code == 0
    assert roles(cli)["chief"] == ([], [])


def test_roles_edit_needs_something_to_change(cli: Invoke) -> None:
    cli("roles", "create", "editor", "-p", "articles:write")
    assert cli("roles", "edit", "editor").exit_code == 2
    assert cli("roles", "edit", "editor", "-p", "a:b", "--no-permissions").exit_code == 1
    assert roles(cli)["editor"] == (["articles:write"], [])


def test_roles_edit_failures_are_one_line(cli: Invoke) -> None:
    cli("roles", "create", "editor", "-p", "articles:write")
    cli("roles", "create", "chief", "--inherits", "editor")
    assert_one_line_error(cli("roles", "edit", "ghost", "-p", "a:b"), "unknown role 'ghost'")
    assert_one_line_error(cli("roles", "edit", "editor", "--inherits", "chief"), "inheritance cycle refused")
    assert cli("roles", "edit", "editor", "-p", "not a permission!").exit_code == 1
    result = cli("roles", "edit", "editor", "-p", "articles:read", "--inherits", "chief")
    assert_one_line_error(result, "permissions replaced, inheritance unchanged: inheritance cycle refused")
    assert roles(cli)["editor"] == (["articles:read"], [])


# --- roles delete ----------------------------------------------------------------------------------


def holders_of_editor(cli: Invoke) -> None:
    """editor held by dora directly; chief (inheriting editor) by emil."""
    for name in ("dora", "emil"):
        cli("users", "create", name, "--password-stdin", input=PASSWORD)
    cli("roles", "create", "editor", "-p", "articles:write")
    cli("roles", "create", "chief", "--inherits", "editor")
    cli("roles", "grant", "dora", "editor")
    cli("roles", "grant", "emil", "chief")


def test_roles_delete_says_who_holds_it_and_asks_first(cli: Invoke) -> None:
    holders_of_editor(cli)
    declined = cli("roles", "delete", "editor", input="n\n")
    assert "role editor is held by 1 account(s), and through roles inheriting it by 1 more" in declined.stdout
    assert "Delete role editor and revoke it from 2 account(s)?" in declined.stdout
    assert_one_line_error(declined, "not confirmed: nothing was changed (pass --yes")
    assert "editor" in roles(cli) and user_roles("dora") == ["editor"]

    confirmed = cli("roles", "delete", "editor", input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert "deleted role editor; 2 account(s) affected" in confirmed.stdout
    assert "editor" not in roles(cli) and roles(cli)["chief"] == ([], [])
    assert user_roles("dora") == []


def test_roles_delete_without_an_answer_changes_nothing(cli: Invoke) -> None:
    holders_of_editor(cli)
    assert_one_line_error(cli("roles", "delete", "editor", input=""), "not confirmed")
    assert "editor" in roles(cli)


def test_roles_delete_yes_skips_the_question(cli: Invoke) -> None:
    holders_of_editor(cli)
    result = cli("roles", "delete", "editor", "--yes")
    assert result.exit_code == 0, result.output
    assert "?" not in result.stdout and "deleted role editor" in result.stdout
    assert "editor" not in roles(cli)


def test_roles_delete_of_an_unknown_role_is_one_line(cli: Invoke) -> None:
    assert_one_line_error(cli("roles", "delete", "ghost", "--yes"), "unknown role 'ghost'")


# --- the last administrator, through every CLI path -------------------------------------------------


@pytest.fixture
def one_admin(cli: Invoke) -> Invoke:
    """root holds admin (every permission); nobody else does."""
    created = cli("users", "create", "root", "--role", "admin", "--password-stdin", input=PASSWORD)
    assert created.exit_code == 0, created.output
    cli("users", "create", "dora", "--role", "member", "--password-stdin", input=PASSWORD)
    return cli


@pytest.mark.parametrize(
    "args",
    [
        ["roles", "revoke", "root", "admin"],
        ["roles", "edit", "admin", "-p", "users:read"],
        ["roles", "edit", "admin", "--no-permissions"],
        ["roles", "delete", "admin", "--yes"],
        ["users", "disable", "root"],
    ],
    ids=["revoke", "edit", "edit-none", "delete", "disable"],
)
def test_the_last_administrator_cannot_be_removed(one_admin: Invoke, args: list[str]) -> None:
    assert_one_line_error(one_admin(*args), LAST_ADMIN)
    assert user_roles("root") == ["admin"]
    assert roles(one_admin)["admin"] == (["*"], [])
    assert "disabled" not in one_admin("users", "list").stdout


def test_the_last_administrator_cannot_be_removed_by_confirmed_delete(one_admin: Invoke) -> None:
    result = one_admin("roles", "delete", "admin", input="y\n")
    assert "role admin is held by 1 account(s)" in result.stdout
    assert_one_line_error(result, LAST_ADMIN)
    assert user_roles("root") == ["admin"]


def test_an_administrator_can_go_once_another_holds_the_role(one_admin: Invoke) -> None:
    assert one_admin("roles", "grant", "dora", "admin").exit_code == 0
    assert one_admin("roles", "revoke", "root", "admin").exit_code == 0
    assert_one_line_error(one_admin("users", "disable", "dora"), LAST_ADMIN)
    assert_one_line_error(one_admin("roles", "edit", "admin", "-p", "users:read"), LAST_ADMIN)
