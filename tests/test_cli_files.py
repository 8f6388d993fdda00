"""`fundaments encrypt|decrypt`, `keys reencrypt` (also killed halfway), `init`, `serve`, the entry point."""

from __future__ import annotations

import asyncio
import io
import os
import signal
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import Result
from rich.console import Console
from typer.testing import CliRunner

from conftest import TEST_MASTER_KEY, TEST_SALT
from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.cli import app, common, files
from fundaments.config import Settings, load_settings
from fundaments.encryption import EncryptionService
from fundaments.errors import InvalidArgument
from fundaments.security import Security
from test_cli_admin import CLEARED, cli_environment

REPO = Path(__file__).resolve().parents[1]
NEW_KEY = "n" * 20 + "new-master-key-for-rotation-tests"
OTHER_KEY = "o" * 48
DATA = os.urandom(200_000) + b"tail"

Invoke = Callable[..., Result]


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Invoke:
    cli_environment(monkeypatch, tmp_path, database_url)
    runner = CliRunner()

    def invoke(*args: str, input: str | bytes | None = None, **env: str | None) -> Result:
        return runner.invoke(app, list(args), input=input, env=env or None)

    return invoke


def assert_one_line_error(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert text in result.stderr


# --- encrypt / decrypt -----------------------------------------------------------------------------


def test_encrypt_then_decrypt_files(cli: Invoke, tmp_path: Path) -> None:
    (tmp_path / "plain.bin").write_bytes(DATA)
    encrypted = cli("encrypt", "plain.bin", "-o", "sealed.fse")
    assert encrypted.exit_code == 0, encrypted.output
    sealed = tmp_path / "sealed.fse"
    assert sealed.stat().st_mode & 0o777 == 0o600 and DATA[:64] not in sealed.read_bytes()
    decrypted = cli("decrypt", "sealed.fse", "-o", "back.bin")
    assert decrypted.exit_code == 0, decrypted.output
    assert (tmp_path / "back.bin").read_bytes() == DATA


def test_stdin_and_stdout_stream(cli: Invoke, tmp_path: Path) -> None:
    encrypted = cli("encrypt", "-", "-o", "-", input=DATA)
    assert encrypted.exit_code == 0, encrypted.stderr
    (tmp_path / "sealed").write_bytes(encrypted.stdout_bytes)
    decrypted = cli("decrypt", "-", "-o", "-", input=encrypted.stdout_bytes)
    assert decrypted.exit_code == 0 and decrypted.stdout_bytes == DATA


def test_decrypt_with_the_wrong_key_fails_and_writes_nothing(cli: Invoke, tmp_path: Path) -> None:
    (tmp_path / "plain.bin").write_bytes(DATA)
    assert cli("encrypt", "plain.bin", "-o", "sealed.fse").exit_code == 0
    result = cli("decrypt", "sealed.fse", "-o", "back.bin", MASTER_ENCRYPTION_KEY=OTHER_KEY)
    assert_one_line_error(result, "authentication failed")
    assert not (tmp_path / "back.bin").exists()


def test_decrypt_of_tampered_or_garbage_input_fails(cli: Invoke, tmp_path: Path) -> None:
    (tmp_path / "plain.bin").write_bytes(DATA)
    cli("encrypt", "plain.bin", "-o", "sealed.fse")
    sealed = bytearray((tmp_path / "sealed.fse").read_bytes())
    sealed[len(sealed) // 2] ^= 1
    (tmp_path / "tampered.fse").write_bytes(bytes(sealed))
    assert cli("decrypt", "tampered.fse", "-o", "x").exit_code == 1
    garbage = cli("decrypt", "-", "-o", "-", input=b"not an encrypted file")
    assert garbage.exit_code == 1 and garbage.stdout_bytes == b""
    assert not (tmp_path / "x").exists()


def test_file_commands_refuse_missing_input_and_existing_output(cli: Invoke, tmp_path: Path) -> None:
    assert_one_line_error(cli("encrypt", "nope.bin", "-o", "out"), "nope.bin: no such file")
    (tmp_path / "plain.bin").write_bytes(b"x")
    (tmp_path / "out").write_bytes(b"keep me")
    assert_one_line_error(cli("encrypt", "plain.bin", "-o", "out"), "already exists; pass --force")
    assert (tmp_path / "out").read_bytes() == b"keep me"
    assert cli("encrypt", "plain.bin", "-o", "out", "--force").exit_code == 0
    assert (tmp_path / "out").read_bytes() != b"keep me"
    assert cli("encrypt", "plain.bin").exit_code == 2  # -o is required


def test_encrypt_without_keys_names_the_missing_configuration(cli: Invoke, tmp_path: Path) -> None:
    (tmp_path / "plain.bin").write_bytes(b"x")
    result = cli(
        "encrypt", "plain.bin", "-o", "out", MASTER_ENCRYPTION_KEY=None, PERSISTENT_ENCRYPTION_SALT=None
    )
    assert_one_line_error(result, "encryption is not configured")


# --- keys reencrypt --------------------------------------------------------------------------------


def seed_table(rows: int, *, bad_context_ids: tuple[int, ...] = ()) -> None:
    """app_secrets(id, owner, secret, plain): secret = plain encrypted under the configured key,
    bound to owner; rows in ``bad_context_ids`` are bound to another context; id 0 is NULL."""

    async def go() -> None:
        started = await initialize_fundaments(load_settings(), configure_logs=False)
        try:
            security: Security = started.security
            db = started["db"]
            await db.execute(
                "CREATE TABLE app_secrets (id INTEGER PRIMARY KEY, owner TEXT, secret TEXT, plain TEXT)"
            )
            values = []
            for i in range(1, rows + 1):
                owner, plain = f"user:{i}:token", f"secret number {i}"
                context = "elsewhere" if i in bad_context_ids else owner
                values.append((i, owner, security.encrypt_data(plain, context=context), plain))
            values.append((0, "user:0:token", None, None))
            await db.executemany(
                "INSERT INTO app_secrets (id, owner, secret, plain) VALUES ($1, $2, $3, $4)", values
            )
        finally:
            await started.close()

    asyncio.run(go())


def read_table() -> list[tuple[int, str, str | None, str | None]]:
    async def go() -> list[tuple[int, str, str | None, str | None]]:
        started = await initialize_fundaments(load_settings(), configure_logs=False)
        try:
            rows = await started["db"].fetch("SELECT id, owner, secret, plain FROM app_secrets ORDER BY id")
            return [(r[0], r[1], r[2], r[3]) for r in rows]
        finally:
            await started.close()

    return asyncio.run(go())


def test_keys_reencrypt_moves_every_value_to_the_new_key(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_table(120)
    before = read_table()
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", NEW_KEY)
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY_PREVIOUS", TEST_MASTER_KEY)
    result = cli(
        "keys", "reencrypt", "--table", "app_secrets", "--column", "secret", "--context-column", "owner",
        "--batch-size", "50",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "121 of 121 row(s) scanned; 120 re-encrypted" in result.stdout
    assert "0 already under it, 1 empty, 0 failed" in result.stdout
    after = read_table()
    assert [row[0] for row in after] == [row[0] for row in before]  # none lost
    new_only = EncryptionService(NEW_KEY, bytes.fromhex(TEST_SALT))
    for (_, owner, secret, plain), (_, _, old_secret, _) in zip(after, before, strict=True):
        if plain is None:
            assert secret is None
            continue
        assert secret != old_secret and secret is not None
        assert new_only.decrypt_text(secret, context=owner) == plain
    again = cli(
        "keys", "reencrypt", "--table", "app_secrets", "--column", "secret", "--context-column", "owner"
    )
    assert (
        again.exit_code == 0 and "0 re-encrypted" in again.stdout and "120 already under it" in again.stdout
    )

    async def audited(security: Security) -> None:
        events = await security.audit_events(kind="keys.reencrypted")
        assert sum(e.details["reencrypted"] for e in events) == 120 and len(events) == 3  # one per batch
        assert events[0].details["table"] == "app_secrets"
        assert await security.verify_audit_chain()

    async def go() -> None:
        started = await initialize_fundaments(load_settings(), configure_logs=False)
        try:
            await audited(started.security)
        finally:
            await started.close()

    asyncio.run(go())


def test_keys_reencrypt_reports_values_that_do_not_decrypt(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_table(30, bad_context_ids=(7, 19))
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", NEW_KEY)
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY_PREVIOUS", TEST_MASTER_KEY)
    args = ("keys", "reencrypt", "-t", "app_secrets", "-c", "secret", "--context-column", "owner")
    result = cli(*args)
    assert result.exit_code == 1, result.output
    assert "28 re-encrypted" in result.stdout and "2 failed" in result.stdout
    assert "keys: 7, 19" in result.stdout
    rows = {row[0]: row for row in read_table()}
    old_only = EncryptionService(TEST_MASTER_KEY, bytes.fromhex(TEST_SALT))
    assert old_only.decrypt_text(rows[7][2] or "", context="elsewhere") == rows[7][3]  # left as it was


def test_keys_reencrypt_without_the_old_key_fails_every_row(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_table(5)
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", NEW_KEY)
    result = cli("keys", "reencrypt", "-t", "app_secrets", "-c", "secret", "--context-column", "owner")
    assert (
        result.exit_code == 1
        and "5 failed" in result.stdout
        and "MASTER_ENCRYPTION_KEY_PREVIOUS" in result.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-t", "app_secrets; DROP TABLE x", "-c", "secret"], "table must be a plain SQL name"),
        (["-t", "app_secrets", "-c", 'secret"'], "column must be a plain SQL name"),
        (["-t", "app_secrets", "-c", "secret", "--key-column", "1id"], "key_column must be a plain SQL name"),
        (["-t", "no_such_table", "-c", "secret"], "no_such_table"),
    ],
)
def test_keys_reencrypt_refuses_bad_names(cli: Invoke, args: list[str], message: str) -> None:
    seed_table(1)
    assert_one_line_error(cli("keys", "reencrypt", *args), message)


def test_keys_reencrypt_needs_keys(cli: Invoke) -> None:
    result = cli("keys", "reencrypt", "-t", "t", "-c", "c", MASTER_ENCRYPTION_KEY=None)
    assert_one_line_error(result, "encryption is not configured")


# --- subprocesses: the installed entry point -------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    keep = {
        k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG") and not k.startswith(CLEARED)
    }
    return {**keep, "COLUMNS": "200", **extra}


ROWS = 20_000


@pytest.mark.slow
def test_keys_reencrypt_killed_halfway_then_run_again_loses_nothing(tmp_path: Path) -> None:
    db_file = tmp_path / "app.db"
    old = EncryptionService(TEST_MASTER_KEY, bytes.fromhex(TEST_SALT))
    with sqlite3.connect(db_file) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("CREATE TABLE app_secrets (id INTEGER PRIMARY KEY, owner TEXT, secret TEXT, orig TEXT)")
        values = []
        for i in range(1, ROWS + 1):
            secret = old.encrypt(f"value {i}", context=f"user:{i}")
            values.append((i, f"user:{i}", secret, secret))
        conn.executemany("INSERT INTO app_secrets VALUES (?, ?, ?, ?)", values)
    env = clean_env(
        DATABASE_URL=f"sqlite:///{db_file}",
        MASTER_ENCRYPTION_KEY=NEW_KEY,
        MASTER_ENCRYPTION_KEY_PREVIOUS=TEST_MASTER_KEY,
        PERSISTENT_ENCRYPTION_SALT=TEST_SALT,
        FUNDAMENTS_ENV_FILE=str(tmp_path / "absent.env"),
    )
    command = [
        "fundaments",
        "keys",
        "reencrypt",
        "-t",
        "app_secrets",
        "-c",
        "secret",
        "--context-column",
        "owner",
    ]
    command += ["--batch-size", "100"]

    def changed() -> int:
        with sqlite3.connect(db_file, timeout=10) as reader:
            return int(reader.execute("SELECT COUNT(*) FROM app_secrets WHERE secret <> orig").fetchone()[0])

    proc = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while changed() < ROWS // 5 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    done_before = changed()
    assert 0 < done_before < ROWS, "the run must be killed halfway"

    rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{ROWS - done_before} re-encrypted" in rerun.stdout
    assert f"{done_before} already under it" in rerun.stdout

    new_only = EncryptionService(NEW_KEY, bytes.fromhex(TEST_SALT))
    with sqlite3.connect(db_file) as conn:
        rows = conn.execute("SELECT id, owner, secret FROM app_secrets ORDER BY id").fetchall()
    assert [row[0] for row in rows] == list(range(1, ROWS + 1))
    for i, owner, secret in rows:
        assert new_only.decrypt_text(secret, context=owner) == f"value {i}"


def test_installed_entry_point_init_creates_keys_admin_and_never_overwrites(tmp_path: Path) -> None:
    env = clean_env(
        DATABASE_URL=f"sqlite:///{tmp_path / 'var' / 'db.sqlite'}",
        ARGON2_MEMORY_COST="1024",
        ARGON2_TIME_COST="1",
    )
    first = subprocess.run(
        ["fundaments", "init"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stdout + first.stderr
    env_file = tmp_path / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    written = env_file.read_text()
    key = next(
        line.split("=", 1)[1] for line in written.splitlines() if line.startswith("MASTER_ENCRYPTION_KEY=")
    )
    assert key not in first.stdout + first.stderr
    assert "Created the administrator account." in first.stdout and first.stdout.count("password: ") == 1
    second = subprocess.run(
        ["fundaments", "init"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert second.returncode == 0
    assert env_file.read_text() == written
    assert "left as it was" in second.stdout and "accounts already exist" in second.stdout
    assert "password: " not in second.stdout
    listed = subprocess.run(
        ["fundaments", "users", "list"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0 and "admin" in listed.stdout and "must change password" in listed.stdout


def test_serve_outside_the_repository_says_where_to_run_it(tmp_path: Path) -> None:
    result = subprocess.run(
        ["fundaments", "serve"], cwd=tmp_path, env=clean_env(), capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "no main.py and app/" in result.stderr and "Traceback" not in result.stderr


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.slow
def test_serve_runs_main_py_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(
        PORT=str(port), DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}", ARGON2_MEMORY_COST="1024"
    )
    proc = subprocess.Popen(
        ["fundaments", "serve", "--root", str(REPO)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        body = None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    body = response.read().decode()
                    break
            except OSError:
                time.sleep(0.2)
        assert body is not None and '"status":"ok"' in body
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "fundaments closed" in output and "Created the administrator account." in output
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600


# --- Security.reencrypt_column directly ------------------------------------------------------------


async def test_reencrypt_column_keeps_binary_columns_binary_and_reports_progress(
    make_settings: Callable[..., Settings], fundaments: Fundaments
) -> None:
    db = fundaments["db"]
    blob = "BYTEA" if db.dialect == "postgresql" else "BLOB"
    await db.execute(f"CREATE TABLE app_blobs (pk TEXT PRIMARY KEY, secret {blob})")
    old = fundaments.security
    await db.executemany(
        "INSERT INTO app_blobs (pk, secret) VALUES ($1, $2)",
        [(f"k{i:03}", old.encrypt_data(f"v{i}").encode("ascii")) for i in range(25)],
    )
    rotated = await initialize_fundaments(
        make_settings(master_encryption_key=NEW_KEY, master_encryption_key_previous=TEST_MASTER_KEY),
        configure_logs=False,
    )
    try:
        calls: list[tuple[int, int]] = []
        report = await rotated.security.reencrypt_column(
            "app_blobs", "secret", key_column="pk", batch_size=10, progress=lambda d, t: calls.append((d, t))
        )
        assert (report.total, report.reencrypted, report.failed) == (25, 25, 0) and report.complete
        assert calls == [(0, 25), (10, 25), (20, 25), (25, 25)]
        rows = await db.fetch("SELECT pk, secret FROM app_blobs ORDER BY pk")
        new_only = EncryptionService(NEW_KEY, bytes.fromhex(TEST_SALT))
        for i, row in enumerate(rows):
            assert isinstance(row[1], bytes)
            assert new_only.decrypt_text(row[1]) == f"v{i}"
        with pytest.raises(InvalidArgument, match="batch_size"):
            await rotated.security.reencrypt_column("app_blobs", "secret", batch_size=0)
        with pytest.raises(InvalidArgument, match="context_column must be a plain SQL name"):
            await rotated.security.reencrypt_column("app_blobs", "secret", context_column="a b")
    finally:
        await rotated.close()


def test_progress_bar_only_on_a_terminal(
    cli: Invoke, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "plain.bin").write_bytes(DATA)
    assert "encrypting" not in cli("encrypt", "plain.bin", "-o", "a").output  # not a terminal: no bar
    screen = io.StringIO()
    monkeypatch.setattr(common, "err", Console(file=screen, force_terminal=True, width=100))
    assert cli("encrypt", "plain.bin", "-o", "b").exit_code == 0
    assert "encrypting" in screen.getvalue() and "100%" in screen.getvalue()


def test_encrypt_refuses_to_write_binary_to_a_terminal(cli: Invoke, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "_stdout_is_terminal", lambda: True)
    assert_one_line_error(
        cli("encrypt", "-", "-o", "-", input=b"x"), "not writing encrypted data to a terminal"
    )
