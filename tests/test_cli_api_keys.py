"""`fundaments keys api create|list|revoke|rotate` through Typer's CliRunner, on SQLite and
PostgreSQL: the token alone on stdout once, never in a listing; one-line errors, exit 1."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from fundaments.security import Security
from test_cli_admin import PASSWORD, Invoke, assert_one_line_error, cli, with_security  # noqa: F401

CLIENT = {"ip_address": "198.51.100.20", "user_agent": "cli-test"}
TOKEN = re.compile(r"^fk_[0-9A-Za-z]{38}$")


def setup_owner(cli: Invoke, name: str = "ann") -> None:  # noqa: F811
    role = cli("roles", "create", "invoker", "--permission", "models:*")
    assert role.exit_code == 0 or "already exists" in role.stderr, role.output
    created = cli("users", "create", name, "--password-stdin", "--role", "invoker", input=PASSWORD)
    assert created.exit_code == 0, created.output


def validate(token: str) -> object:
    async def work(security: Security) -> object:
        return await security.validate_api_key(token, CLIENT)

    return with_security(work)


def test_create_prints_the_token_once_alone_on_stdout_and_list_shows_the_prefix(cli: Invoke) -> None:  # noqa: F811
    setup_owner(cli)
    created = cli(
        "keys", "api", "create", "--user", "ann", "--name", "ci", "--scope", "models:invoke",
        "--scope", "models:list", "--expires-days", "90", "--allow-ip", "198.51.100.0/24",
        "--rate-limit", "600/minute",
    )  # fmt: skip
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert TOKEN.match(token) and created.stdout == token + "\n"  # `TOKEN=$(…)` gets exactly it
    assert "shown once" in created.stderr and token not in created.stderr
    key = validate(token)
    assert key is not None and key.scopes == ("models:invoke", "models:list")  # type: ignore[attr-defined]
    assert key.rate_limit == "600/minute" and str(key.allowed_ips[0]) == "198.51.100.0/24"  # type: ignore[attr-defined]
    for args in (("keys", "api", "list"), ("keys", "api", "list", "--user", "ann")):
        listed = cli(*args)
        assert listed.exit_code == 0, listed.output
        assert token[:10] in listed.stdout and token[10:] not in listed.output
        assert "ci" in listed.stdout and "ann" in listed.stdout and "models:list" in listed.stdout
        assert "1 key(s)" in listed.stdout


def test_list_pages_by_key_id(cli: Invoke) -> None:  # noqa: F811
    setup_owner(cli, "ann")
    setup_owner(cli, "bob")
    tokens = [cli("keys", "api", "create", "--user", u, "--name", f"k-{u}-{i}").stdout.strip()
              for u in ("ann", "bob") for i in range(2)]  # fmt: skip
    assert all(TOKEN.match(t) for t in tokens)
    first = cli("keys", "api", "list", "--limit", "3")
    after = re.search(r"next page: --after (key_\w+)", first.stdout)
    assert after is not None and "3 key(s)" in first.stdout
    second = cli("keys", "api", "list", "--limit", "3", "--after", after.group(1))
    assert "1 key(s)" in second.stdout and "next page" not in second.stdout
    names = set(re.findall(r"k-(?:ann|bob)-\d", first.stdout + second.stdout))
    assert names == {"k-ann-0", "k-ann-1", "k-bob-0", "k-bob-1"}  # each once over the two pages
    only_bob = cli("keys", "api", "list", "--user", "bob")
    assert "k-bob-0" in only_bob.stdout and "k-ann" not in only_bob.stdout


def test_rotate_prints_a_new_token_and_the_old_one_keeps_its_overlap(cli: Invoke) -> None:  # noqa: F811
    setup_owner(cli)
    old = cli("keys", "api", "create", "--user", "ann", "--name", "ci").stdout.strip()
    key_id = re.search(r"key_\w+", cli("keys", "api", "list").stdout).group(0)  # type: ignore[union-attr]
    rotated = cli("keys", "api", "rotate", "--user", "ann", key_id, "--overlap", "600")
    assert rotated.exit_code == 0, rotated.output
    new = rotated.stdout.strip()
    assert TOKEN.match(new) and new != old and "works until" in rotated.stderr
    assert validate(new) is not None and validate(old) is not None
    again = cli("keys", "api", "rotate", "--user", "ann", key_id, "--overlap", "0")
    assert "no longer works" in again.stderr and validate(again.stdout.strip()) is not None
    assert validate(new) is None  # overlap 0: the replaced token dies at once


def test_revoke_kills_the_key_and_a_second_revoke_fails_clearly(cli: Invoke) -> None:  # noqa: F811
    setup_owner(cli)
    token = cli("keys", "api", "create", "--user", "ann", "--name", "ci").stdout.strip()
    key_id = re.search(r"key_\w+", cli("keys", "api", "list").stdout).group(0)  # type: ignore[union-attr]
    done = cli("keys", "api", "revoke", "--user", "ann", key_id)
    assert done.exit_code == 0 and f"revoked {key_id}" in done.stdout
    assert validate(token) is None
    assert "revoked" in cli("keys", "api", "list").stdout
    assert_one_line_error(cli("keys", "api", "revoke", "--user", "ann", key_id), "no live API key")
    assert_one_line_error(cli("keys", "api", "rotate", "--user", "ann", key_id), "is revoked")


def test_errors_are_one_line_with_exit_1(cli: Invoke) -> None:  # noqa: F811
    setup_owner(cli, "ann")
    setup_owner(cli, "bob")
    bobs = cli("keys", "api", "create", "--user", "bob", "--name", "bob's").stdout.strip()
    bob_key = re.search(r"key_\w+", cli("keys", "api", "list", "--user", "bob").stdout).group(0)  # type: ignore[union-attr]
    lacking = cli("keys", "api", "create", "--user", "ann", "--name", "x", "--scope", "users:delete")
    assert_one_line_error(lacking, "does not hold users:delete")
    assert lacking.stdout == ""  # no token for a refused key
    assert_one_line_error(
        cli("keys", "api", "create", "--user", "nobody", "--name", "x"), "no account 'nobody'"
    )
    assert_one_line_error(
        cli("keys", "api", "create", "--user", "ann", "--name", "x", "--allow-ip", "10.0.0.1/8"), "host bits"
    )
    assert_one_line_error(
        cli("keys", "api", "create", "--user", "ann", "--name", "x", "--rate-limit", "fast"), "600/minute"
    )
    # Another account's key by its id: refused, and bob's key stays live.
    assert_one_line_error(cli("keys", "api", "revoke", "--user", "ann", bob_key), "no live API key")
    assert_one_line_error(cli("keys", "api", "rotate", "--user", "ann", bob_key), "has no API key")
    assert validate(bobs) is not None
    usage = cli("keys", "api", "create", "--user", "ann", "--name", "x", "--expires-days", "0")
    assert usage.exit_code == 2 and "Traceback" not in usage.output
    assert cli("keys", "api", "list", "--user", "ann").stdout.count("key_") == 0  # nothing was created


def test_the_cli_docs_block_runs(cli: Invoke) -> None:  # noqa: F811
    """docs/cli.md's `keys api` session: every `$ fundaments` line runs, in order, with exit 0."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    block = text.split("<!-- cli-api-keys:", 1)[1].split("```console\n", 1)[1].split("```", 1)[0]
    commands = [
        line[len("$ fundaments ") :] for line in block.splitlines() if line.startswith("$ fundaments ")
    ]
    assert [c.split()[:3] for c in commands] == [["keys", "api", "create"], ["keys", "api", "list"],
                                                 ["keys", "api", "rotate"], ["keys", "api", "revoke"]]  # fmt: skip
    role = cli("roles", "create", "invoker", "--permission", "models:*")
    assert role.exit_code == 0, role.output
    assert (
        cli("users", "create", "ci-bot", "--password-stdin", "--role", "invoker", input=PASSWORD).exit_code
        == 0
    )
    key_id = ""
    for command in commands:
        result = cli(*shlex.split(command.replace("KEY_ID", key_id)))
        assert result.exit_code == 0, (command, result.output)
        if command.startswith("keys api create"):
            assert TOKEN.match(result.stdout.strip()) and "shown once" in result.stderr
            shown = block.split("\n$ fundaments keys api list")[0].splitlines()[1:]  # the block's output
            assert shown[1] == result.stderr.splitlines()[1]  # the warning, word for word
        if command.startswith("keys api list"):
            key_id = re.search(r"key_\w+", result.stdout).group(0)  # type: ignore[union-attr]
    assert "revoked" in cli("keys", "api", "list", "--user", "ci-bot").stdout
