"""`python main.py` on a fresh checkout: creates var/ and .env, answers HTTP, stops cleanly on SIGINT;
names where its data, keys and outbox are; refuses an empty start beside a configured project."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from conftest import FAST_HASHING, TEST_MASTER_KEY, TEST_SALT
from fundaments import initialize_fundaments
from fundaments.config import Settings, fresh_start_problem, load_settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # app/ is the example application at the repository root, not installed
from app import app as console_app  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def clean_env(**extra: str) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH", "SYSTEMROOT")}
    return {**keep, **extra}


def project_copy(directory: Path) -> Path:
    """A project directory of its own: main.py copied, app/ linked (the checkout's own .env or var/,
    if a developer has them, stay out of the test)."""
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "main.py", directory / "main.py")
    (directory / "app").symlink_to(REPO / "app", target_is_directory=True)
    return directory / "main.py"


@pytest.mark.slow
def test_main_runs_in_an_empty_directory_and_stops_on_sigint(tmp_path: Path) -> None:
    port = free_port()
    main_py = project_copy(tmp_path)  # the first run of a fresh checkout, in its directory
    proc = subprocess.Popen(
        [sys.executable, str(main_py)],
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
    here = tmp_path.resolve()
    assert f"database: {here / 'var' / 'fundaments.db'} (SQLite, new: created now)" in output
    assert f"keys:     {here / '.env'}\n" in output
    assert f"outbox:   {here / 'var' / 'outbox'} (one .eml file per mail)" in output


def run_main(main_py: Path, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(main_py)],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("found", [".env", "var/fundaments.db"])
def test_main_run_elsewhere_refuses_an_empty_start_beside_a_configured_project(
    tmp_path: Path, found: str
) -> None:
    main_py = project_copy(tmp_path / "project")
    project = main_py.parent.resolve()
    (project / found).parent.mkdir(exist_ok=True)
    (project / found).write_text("DATABASE_URL=postgresql://app@db.internal/app\n" if found == ".env" else "")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run_main(main_py, elsewhere)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    assert f"refusing to start a new, empty database in {elsewhere.resolve()}" in proc.stderr
    assert f"the project directory has {project / found}" in proc.stderr
    assert f"cd {project} && python main.py" in proc.stderr and "set DATABASE_URL" in proc.stderr
    assert list(elsewhere.iterdir()) == []  # no .env with fresh keys, no var/: nothing was created


def test_main_run_elsewhere_with_its_own_env_starts_and_names_what_it_uses(tmp_path: Path) -> None:
    main_py = project_copy(tmp_path / "project")
    (main_py.parent / ".env").write_text("")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / ".env").write_text("DATABASE_URL=postgresql://app:pw-s3cr3t@127.0.0.1:1/none\n")
    proc = run_main(main_py, elsewhere)  # configured here on purpose: past the check, then no server
    assert "refusing" not in proc.stderr
    assert "database: postgresql://app:***@127.0.0.1:1/none (PostgreSQL)" in proc.stderr
    assert f"keys:     {elsewhere.resolve() / '.env'}" in proc.stderr
    assert "pw-s3cr3t" not in proc.stderr
    assert proc.returncode == 1 and "could not start" in proc.stderr


@pytest.mark.parametrize(
    ("case", "refused"),
    [
        ("in the project directory", False),
        ("elsewhere, beside a project .env", True),
        ("elsewhere, beside a project database", True),
        ("elsewhere, no project data", False),
        ("elsewhere, with its own .env", False),
        ("elsewhere, with its own database", False),
        ("elsewhere, DATABASE_URL set", False),
        ("elsewhere, FUNDAMENTS_ENV_FILE set", False),
        ("elsewhere, DATABASE_URL to PostgreSQL in the project .env only", True),
    ],
)
def test_fresh_start_problem_decides_by_what_each_directory_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, refused: bool
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    (project / "var").mkdir(parents=True)
    elsewhere.mkdir()
    environ: dict[str, str] = {}
    if "project .env" in case or case == "in the project directory":
        (project / ".env").write_text("DATABASE_URL=postgresql://app@db.internal/app\n")
    if "project database" in case:
        (project / "var" / "fundaments.db").write_bytes(b"")
    if "own .env" in case:
        (elsewhere / ".env").write_text("")
    if "own database" in case:
        (elsewhere / "var").mkdir()
        (elsewhere / "var" / "fundaments.db").write_bytes(b"")
    if "DATABASE_URL set" in case:
        environ["DATABASE_URL"] = "sqlite:///./var/new.db"
    if "FUNDAMENTS_ENV_FILE set" in case:
        environ["FUNDAMENTS_ENV_FILE"] = str(tmp_path / "chosen.env")
    monkeypatch.chdir(project if case == "in the project directory" else elsewhere)
    env_file = Path(environ.get("FUNDAMENTS_ENV_FILE", ".env"))
    settings = load_settings(
        env_file=tmp_path / "absent.env",
        **({"database_url": environ["DATABASE_URL"]} if "DATABASE_URL" in environ else {}),
    )
    problem = fresh_start_problem(project, settings, env_file, environ)
    assert (problem is not None) == refused, problem


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


def _settings(tmp_path: Path, **overrides: object) -> Settings:
    return load_settings(
        env_file=tmp_path / "absent.env",
        database_url=f"sqlite:///{tmp_path / 'fundaments.db'}",
        master_encryption_key=TEST_MASTER_KEY,
        persistent_encryption_salt=TEST_SALT,
        **FAST_HASHING,
        **overrides,
    )


async def test_the_served_console_has_header_keep_alive_size_and_concurrency_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """start_application hands uvicorn the limits: a slow-loris or connection flood is bounded."""
    seen: list[uvicorn.Config] = []

    async def serve(self: uvicorn.Server) -> None:  # instead of listening: keep the configuration
        seen.append(self.config)

    monkeypatch.setattr(console_app._Server, "serve", serve)
    monkeypatch.chdir(tmp_path)  # the console's var/ goes here
    started = await initialize_fundaments(_settings(tmp_path), configure_logs=False)
    try:
        await console_app.start_application(started)
    finally:
        await started.close()
    (config,) = seen
    limits = console_app.ServerLimits()
    assert config.timeout_keep_alive == limits.keep_alive_timeout == 5
    assert config.limit_concurrency == limits.max_concurrency == 1000
    assert config.h11_max_incomplete_event_size == limits.max_header_bytes == 16 * 1024
    assert isinstance(config.http, type) and issubclass(config.http, H11Protocol)
    assert config.http.__name__ == "HeaderTimeoutProtocol" and limits.header_timeout == 10.0
    assert config.proxy_headers is False and config.server_header is False


async def test_a_slow_loris_connection_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    """A request head that never completes ends the connection: on a fresh connection, and after a
    first request on a kept-alive one (the keep-alive timer is long here: only the header timer acts)."""

    async def hello(_request: Request) -> PlainTextResponse:
        return PlainTextResponse("hello")

    app = Starlette(routes=[Route("/", hello)])
    port = free_port()
    limits = console_app.ServerLimits(header_timeout=0.3, keep_alive_timeout=600)
    server = uvicorn.Server(console_app.server_config(app, _settings(tmp_path, port=port), limits))
    serving = asyncio.create_task(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        full = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        partial = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(partial)
        assert await asyncio.wait_for(reader.read(), 30) == b""  # closed, no answer: never a request
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(full)
        head = await asyncio.wait_for(reader.readuntil(b"hello"), 30)
        assert head.startswith(b"HTTP/1.1 200")
        writer.write(partial)  # the next request of the kept-alive connection, never finished
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()

        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # idle: nothing sent at all
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
    finally:
        server.should_exit = True
        await asyncio.wait_for(serving, 30)
