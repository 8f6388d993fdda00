"""The `fundaments` command: --version, config check, keys generate, db upgrade/current."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from fundaments import __version__
from fundaments.config import load_settings

KEY = "m" * 48
SALT = "cd" * 16


def run(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    return subprocess.run(
        ["fundaments", *args],
        cwd=cwd,
        env={**base, "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_version(tmp_path: Path) -> None:
    result = run("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"fundaments {__version__}"


def test_config_check_masks_secrets_and_passes(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    result = run(
        "config",
        "check",
        cwd=tmp_path,
        MASTER_ENCRYPTION_KEY=KEY,
        PERSISTENT_ENCRYPTION_SALT=SALT,
        DATABASE_URL=db,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert KEY not in result.stdout and SALT not in result.stdout
    assert "configuration is valid" in result.stdout
    assert "MASTER_ENCRYPTION_KEY" in result.stdout


def test_config_check_masks_dsn_password(tmp_path: Path) -> None:
    result = run("config", "check", cwd=tmp_path, DATABASE_URL="postgresql://app:pw-s3cr3t@127.0.0.1:1/none")
    assert "pw-s3cr3t" not in result.stdout + result.stderr
    assert result.returncode == 1  # nothing listens on port 1: a problem
    assert "cannot connect to PostgreSQL" in result.stdout


def test_config_check_lists_every_problem_and_exits_1(tmp_path: Path) -> None:
    result = run(
        "config",
        "check",
        cwd=tmp_path,
        MASTER_ENCRYPTION_KEY="your_256_bit_key_here",
        PERSISTENT_ENCRYPTION_SALT="xyz",
    )
    assert result.returncode == 1
    assert "MASTER_ENCRYPTION_KEY is still the placeholder" in result.stdout
    assert "PERSISTENT_ENCRYPTION_SALT must be hex, at least 16 bytes" in result.stdout


def test_config_check_warns_about_absent_keys_but_passes(tmp_path: Path) -> None:
    result = run("config", "check", cwd=tmp_path, DATABASE_URL=f"sqlite:///{tmp_path / 'db.sqlite'}")
    assert result.returncode == 0
    assert "encryption is disabled" in result.stdout


def test_keys_generate_prints_valid_fresh_keys(tmp_path: Path) -> None:
    first = run("keys", "generate", cwd=tmp_path)
    second = run("keys", "generate", cwd=tmp_path)
    assert first.returncode == 0 and first.stdout != second.stdout
    env_file = tmp_path / "generated.env"
    env_file.write_text(first.stdout)
    assert load_settings(env_file=env_file).encryption_configured


def test_db_upgrade_then_current(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    before = run("db", "current", cwd=tmp_path, DATABASE_URL=db)
    assert before.returncode == 1 and "needs `fundaments db upgrade`" in before.stdout
    upgraded = run("db", "upgrade", cwd=tmp_path, DATABASE_URL=db)
    assert upgraded.returncode == 0, upgraded.stderr
    after = run("db", "current", cwd=tmp_path, DATABASE_URL=db)
    assert after.returncode == 0 and "up to date" in after.stdout


@pytest.mark.parametrize("args", [["nonsense"], ["config", "bogus"]])
def test_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    assert run(*args, cwd=tmp_path).returncode == 2
