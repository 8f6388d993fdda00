"""examples/fastapi_app through a real uvicorn server: what a newcomer's client meets.

JSON login and a bearer token, a browser-style cookie login with CSRF, parallel requests across a
session rotation, a chunked body over the limit, WebSockets, a forced exception; and the app started
the way the README says (``uvicorn examples.fastapi_app:app`` in a fresh directory).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from examples.fastapi_app import create_app
from websockets.exceptions import InvalidStatus

from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.security import User
from live_server import live_server

PASSWORD = "correct horse battery staple"
UA = "notes-cli/1.0"  # the same client over HTTP and WebSocket (the session is bound to it)
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def ann(fundaments: Fundaments) -> User:
    await fundaments.security.create_role("notes-admin", permissions=["notes:admin"])
    return await fundaments.security.register_user("ann", PASSWORD, email="ann@example.com")


@pytest.fixture
async def base(fundaments: Fundaments, ann: User, tmp_path: Path) -> AsyncIterator[str]:
    app = create_app(fundaments=fundaments, notes_path=tmp_path / "notes.db")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("an application bug, internals 0xdeadbeef")

    async with live_server(app) as url:
        yield url


@pytest.fixture
async def http(base: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base, headers={"user-agent": UA}) as client:
        yield client


async def token_of(http: httpx.AsyncClient, username: str = "ann") -> str:
    response = await http.post("/auth/login", json={"username": username, "password": PASSWORD})
    assert response.status_code == 200, response.text
    assert "set-cookie" not in response.headers  # a script keeps the token itself
    return str(response.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_json_login_bearer_me_and_notes_encrypted_at_rest(
    http: httpx.AsyncClient, tmp_path: Path
) -> None:
    token = await token_of(http)
    me = await http.get("/auth/me", headers=bearer(token))
    assert me.status_code == 200 and me.json()["username"] == "ann"
    made = await http.post(
        "/notes", json={"title": "plans", "body": "the launch is on friday"}, headers=bearer(token)
    )
    assert made.status_code == 201
    listed = (await http.get("/notes", headers=bearer(token))).json()
    assert listed == {
        "notes": [{"id": made.json()["id"], "title": "plans", "body": "the launch is on friday"}],
        "next_after": None,
    }
    assert b"friday" not in (tmp_path / "notes.db").read_bytes()  # only ciphertext on disk
    sessions = (await http.get("/auth/sessions", headers=bearer(token))).json()
    assert [s["current"] for s in sessions] == [True] and sessions[0]["user_agent"] == "notes-cli/1.0"


async def test_another_users_note_is_not_found_and_the_admin_route_needs_the_permission(
    fundaments: Fundaments, http: httpx.AsyncClient, ann: User
) -> None:
    await fundaments.security.register_user("bob", PASSWORD)
    ann_token, bob_token = await token_of(http), await token_of(http, "bob")
    note = (await http.post("/notes", json={"title": "t", "body": "ann's"}, headers=bearer(ann_token))).json()
    stolen = await http.get(f"/notes/{note['id']}", headers=bearer(bob_token))
    assert stolen.status_code == 404 and stolen.json()["code"] == "note_not_found"
    denied = await http.get("/admin/stats", headers=bearer(ann_token))
    assert denied.status_code == 403 and denied.json()["code"] == "permission_denied"
    await fundaments.security.grant_role(ann.id, "notes-admin")
    stats = await http.get("/admin/stats", headers=bearer(ann_token))
    assert stats.status_code == 200 and stats.json() == {"notes": 1, "owners": 1}


async def test_browser_style_cookie_login_then_csrf_then_post(base: str) -> None:
    async with httpx.AsyncClient(
        base_url=base, headers={"user-agent": "Mozilla/5.0 test", "origin": base}
    ) as browser:
        presession = (await browser.get("/auth/csrf")).json()["csrf_token"]
        login = await browser.post(
            "/auth/login",
            json={"username": "ann", "password": PASSWORD},
            headers={"x-csrf-token": presession},
        )
        assert login.status_code == 200 and "session" in browser.cookies
        csrf = (await browser.get("/auth/csrf")).json()["csrf_token"]
        refused = await browser.post("/notes", json={"title": "x", "body": "y"})
        assert refused.status_code == 403 and refused.json()["code"] == "csrf_missing"
        made = await browser.post("/notes", json={"title": "x", "body": "y"}, headers={"x-csrf-token": csrf})
        assert made.status_code == 201
        forged = await browser.post(
            "/notes",
            json={"title": "x", "body": "y"},
            headers={"x-csrf-token": csrf, "origin": "https://evil.test"},
        )
        assert forged.status_code == 403 and forged.json()["code"] == "cross_origin"


async def test_five_parallel_requests_across_a_rotation_all_succeed_and_the_old_token_dies_after_the_window(
    fundaments: Fundaments, http: httpx.AsyncClient, ann: User, clock: ManualClock
) -> None:
    token = await token_of(http)
    await fundaments.security.grant_role(ann.id, "notes-admin")  # a privilege change: rotation due
    clock.advance(2)  # past the session cache
    answers = await asyncio.gather(*(http.get("/admin/stats", headers=bearer(token)) for _ in range(5)))
    assert [a.status_code for a in answers] == [200] * 5
    rotated = {a.headers.get("x-session-token") for a in answers}
    assert len(rotated) == 1 and None not in rotated and token not in rotated
    (new,) = rotated
    assert (await http.get("/auth/me", headers=bearer(new))).status_code == 200
    clock.advance(fundaments.settings.session_rotation_grace + 1)
    dead = await http.get("/auth/me", headers=bearer(token))
    assert dead.status_code == 401 and dead.json()["code"] == "session_invalid"
    assert (await http.get("/auth/me", headers=bearer(new))).status_code == 200


async def test_a_2_mb_chunked_body_is_413_json(http: httpx.AsyncClient) -> None:
    token = await token_of(http)

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(32):
            yield b"x" * 65_536

    response = await http.post(
        "/notes", content=chunks(), headers={**bearer(token), "content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    assert response.headers["connection"] == "close"


async def test_websocket_with_and_without_a_session(http: httpx.AsyncClient, base: str) -> None:
    token = await token_of(http)
    ws_url = base.replace("http://", "ws://") + "/live"
    async with websockets.connect(ws_url, additional_headers=bearer(token), user_agent_header=UA) as ws:
        assert json.loads(await ws.recv()) == {"user": "ann"}
        await ws.send("hi")
        assert json.loads(await ws.recv()) == {"echo": "hi", "user": "ann"}
    async with websockets.connect(
        ws_url, subprotocols=["fundaments.bearer", token], user_agent_header=UA
    ) as ws:  # type: ignore[list-item]
        assert json.loads(await ws.recv()) == {"user": "ann"}
        assert ws.subprotocol == "fundaments.bearer"
    with pytest.raises(InvalidStatus) as anonymous:
        async with websockets.connect(ws_url):
            pass
    assert anonymous.value.response.status_code == 403  # current_user closed it (1008) before accept
    with pytest.raises(InvalidStatus) as junk:
        async with websockets.connect(ws_url, additional_headers=bearer("x" * 43)):
            pass
    assert junk.value.response.status_code == 401


async def test_a_forced_exception_is_a_500_with_the_security_headers(http: httpx.AsyncClient) -> None:
    response = await http.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "code": "server_error"}
    assert "0xdeadbeef" not in response.text and "Traceback" not in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.slow
def test_uvicorn_serves_the_example_from_a_fresh_directory(tmp_path: Path) -> None:
    """As the README says: ``uvicorn examples.fastapi_app:app``: keys written on first start."""
    port = _free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
        "FUNDAMENTS_ENV_FILE": str(tmp_path / ".env"),
        "DATABASE_URL": f"sqlite:///{tmp_path}/fundaments.db",
        "NOTES_DB": str(tmp_path / "notes.db"),
        "MAIL_URL": f"file://{tmp_path}/outbox",
        "ARGON2_MEMORY_COST": "1024",
        "ARGON2_TIME_COST": "1",
    }
    for name in ("MASTER_ENCRYPTION_KEY", "PERSISTENT_ENCRYPTION_SALT"):
        env.pop(name, None)
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "examples.fastapi_app:app", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_until_up(url, server)
        with httpx.Client(base_url=url) as client:
            made = client.post("/auth/register", json={"username": "zoe", "password": PASSWORD})
            assert made.status_code == 201, made.text
            token = client.post("/auth/login", json={"username": "zoe", "password": PASSWORD}).json()["token"]
            note = client.post("/notes", json={"title": "a", "body": "b"}, headers=bearer(token))
            assert note.status_code == 201
        assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
        assert "MASTER_ENCRYPTION_KEY=" in (tmp_path / ".env").read_text()
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0]
    assert "Application startup complete" in output
    assert PASSWORD not in output


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(url: str, server: subprocess.Popen[str]) -> None:
    import time

    for _ in range(300):
        if server.poll() is not None:
            raise AssertionError(f"uvicorn exited: {server.communicate()[0]}")
        try:
            httpx.get(f"{url}/auth/csrf", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError("uvicorn did not start within 15 s")


async def test_a_declared_2_mb_body_is_413_that_the_client_can_read(http: httpx.AsyncClient) -> None:
    """The refused body is read and dropped (up to 4x the limit) before the answer: closed unread,
    the client's kernel would see a reset and the 413 would be lost."""
    token = await token_of(http)
    response = await http.post(
        "/notes", content=b"x" * 2_000_000, headers={**bearer(token), "content-type": "application/json"}
    )
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
