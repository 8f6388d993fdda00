"""The README's FastAPI quick start, as a newcomer runs it: the file served by uvicorn in an empty
directory, then the README's curl session, whose output must be the README's, line for line."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
MARKER = "<!-- fastapi-quickstart"


def quick_start() -> tuple[str, list[tuple[str, list[str]]]]:
    """The README's code and its session: [(command, expected output lines)]."""
    readme = (REPO / "README.md").read_text()
    after = readme[readme.index(MARKER) :]
    code = re.search(r"```python\n(.*?)```", after, re.S)
    session = re.search(r"```console\n(.*?)```", after, re.S)
    assert code and session
    steps: list[tuple[str, list[str]]] = []
    for line in session.group(1).splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        else:
            steps[-1][1].append(line)
    return code.group(1), steps


def test_the_quick_start_is_at_most_15_lines() -> None:
    code, _ = quick_start()
    assert len(code.strip().splitlines()) <= 15


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("jq") is None, reason="needs curl and jq")
def test_the_readme_fastapi_quick_start_runs_and_prints_what_the_readme_shows(tmp_path: Path) -> None:
    code, steps = quick_start()
    (tmp_path / "hello.py").write_text(code)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "MASTER_", "PERSISTENT_", "MAIL_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    env["FUNDAMENTS_ENV_FILE"] = str(tmp_path / ".env")
    env["ARGON2_MEMORY_COST"], env["ARGON2_TIME_COST"] = "1024", "1"  # a test's cheap hashing
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "hello:app", "--host", "127.0.0.1", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        for _ in range(300):
            assert server.poll() is None, server.communicate()[0]
            try:
                httpx.get(f"http://127.0.0.1:{port}/auth/csrf", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        script = "set -e\n" + "\n".join(
            f"{command.replace('localhost:8000', f'127.0.0.1:{port}')}\necho" if out else
            command.replace("localhost:8000", f"127.0.0.1:{port}")
            for command, out in steps
        )  # fmt: skip
        result = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=60, cwd=tmp_path
        )
        expected = [line for _, out in steps for line in out]
        assert result.stdout.splitlines() == expected, result.stderr
    finally:
        server.terminate()
        log = server.communicate(timeout=30)[0]
    assert "Application startup complete" in log
    assert (tmp_path / "var").is_dir()  # SQLite under ./var of the directory it ran in
