"""`python main.py` on a fresh checkout: creates var/ and .env, answers HTTP, stops cleanly on SIGINT."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "SYSTEMROOT")}
    return {**keep, **extra}


@pytest.mark.slow
def test_main_runs_in_an_empty_directory_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "main.py")],
        cwd=tmp_path,
        env=clean_env(PORT=str(port)),
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
        assert body is not None, "main.py never answered HTTP"
        assert '"status":"ok"' in body
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output
    assert "fundaments closed" in output
    assert (tmp_path / "var").is_dir()
    assert (tmp_path / "var").stat().st_mode & 0o777 == 0o700
    env_file = tmp_path / ".env"
    assert env_file.stat().st_mode & 0o777 == 0o600
    text = env_file.read_text()
    assert "MASTER_ENCRYPTION_KEY=" in text and "PERSISTENT_ENCRYPTION_SALT=" in text
    key = next(
        line.split("=", 1)[1] for line in text.splitlines() if line.startswith("MASTER_ENCRYPTION_KEY=")
    )
    assert key not in output  # the generated key is never printed
    assert "wrote them to .env" in output
    assert "Created the administrator account." in output and "username: admin" in output


def test_main_refuses_an_invalid_setting_with_one_clear_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "main.py")],
        cwd=tmp_path,
        env=clean_env(MASTER_ENCRYPTION_KEY="too-short-key", PERSISTENT_ENCRYPTION_SALT="00" * 16),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "MASTER_ENCRYPTION_KEY is 13 characters; use at least 32 (fundaments keys generate)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "too-short-key" not in proc.stderr
