"""WebSocket handshakes through SecurityMiddleware, over a real uvicorn server and a real client.

The server listens on a loopback socket bound by the test (no port race; a connection made before
uvicorn starts serving waits in the backlog); the client is the ``websockets`` package. Every test
runs on SQLite and PostgreSQL, and under both of uvicorn's WebSocket implementations.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import pytest
import uvicorn
from fastapi import Depends, FastAPI, WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from fundaments.bootstrap import Fundaments
from fundaments.security import User
from fundaments.web import SecurityMiddleware, current_user, get_context, require_permission

PASSWORD = "correct horse battery staple"
UA = "Mozilla/5.0 (X11; Linux x86_64) websocket-test"
EVIL = "https://evil.example"
BEARER = "fundaments.bearer"


@dataclass
class Seen:
    """What reached the application behind the middleware, and what it sent."""

    scopes: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)

    def refusals(self) -> list[tuple[int, str]]:
        """The app's closes other than a normal one (1000): the guards'."""
        closes = [(m["code"], m.get("reason", "")) for m in self.sent if m["type"] == "websocket.close"]
        return [close for close in closes if close[0] != 1000]


def build(fundaments: Fundaments, seen: Seen, **options: Any) -> SecurityMiddleware:
    api = FastAPI()

    @api.websocket("/ws/me")
    async def me(websocket: WebSocket, user: Annotated[User, Depends(current_user)]) -> None:
        offered = websocket.scope["subprotocols"]
        await websocket.accept(subprotocol="chat.v1" if "chat.v1" in offered else None)
        ctx = get_context(websocket)
        await websocket.send_json(
            {
                "user": user.username,
                "scope_user": websocket.scope["user"].username,
                "auth": ctx.auth,
                "client_ip": ctx.client_ip,
                "subprotocols": offered,
                "protocol_header": websocket.headers.get("sec-websocket-protocol"),
            }
        )
        await websocket.close()

    @api.websocket("/ws/reports")
    async def reports(
        websocket: WebSocket, user: Annotated[User, Depends(require_permission("reports:read"))]
    ) -> None:
        await websocket.accept()
        await websocket.send_json({"reader": user.username})
        await websocket.close()

    @api.websocket("/ws/anyone")
    async def anyone(websocket: WebSocket) -> None:  # the app decides: anonymous is fine here
        await websocket.accept()
        user = websocket.scope["user"]
        await websocket.send_json({"user": user.username if user else None})
        await websocket.close()

    async def recorded(scope: Any, receive: Any, send: Any) -> None:
        seen.scopes.append(scope)

        async def recording_send(message: Any) -> None:
            seen.sent.append(message)
            await send(message)

        await api(scope, receive, recording_send)

    options.setdefault("allowed_hosts", ["127.0.0.1", "localhost"])
    return SecurityMiddleware(recorded, fundaments.security, **options)


@dataclass
class Live:
    """A running server: its port, what its app saw, and how to restart it with other options."""

    port: int
    seen: Seen

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"


@pytest.fixture(params=["websockets-sansio", "wsproto"])
def ws_impl(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def serve(fundaments: Fundaments, ws_impl: str) -> AsyncIterator[Callable[..., Any]]:
    """``await serve(**middleware_options)`` starts a uvicorn server; all are stopped at the end."""
    servers: list[tuple[uvicorn.Server, asyncio.Task[None]]] = []

    async def start(**options: Any) -> Live:
        seen = Seen()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        config = uvicorn.Config(
            build(fundaments, seen, **options),
            ws=ws_impl,  # type: ignore[arg-type]
            lifespan="off",
            proxy_headers=False,  # only the middleware's trusted_proxies decide (as main.py)
            log_config=None,
            log_level="warning",
        )
        server = uvicorn.Server(config)
        servers.append((server, asyncio.create_task(server.serve(sockets=[sock]))))
        return Live(sock.getsockname()[1], seen)

    yield start
    for server, task in servers:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def live(serve: Callable[..., Any]) -> Live:
    started: Live = await serve()
    return started


@pytest.fixture
async def alice(fundaments: Fundaments) -> User:
    return await fundaments.security.register_user("alice", PASSWORD)


async def login_token(fundaments: Fundaments, ip: str = "127.0.0.1") -> str:
    result = await fundaments.security.user_login("alice", PASSWORD, {"ip_address": ip, "user_agent": UA})
    assert result and result.session and result.session.token
    return result.session.token


def dial(
    live: Live,
    path: str,
    *,
    origin: str | None = None,
    headers: dict[str, str] | None = None,
    subprotocols: list[str] | None = None,
    sock: socket.socket | None = None,
    user_agent: str = UA,
) -> Any:
    return connect(
        live.url(path),
        origin=origin,  # type: ignore[arg-type]
        additional_headers=headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        user_agent_header=user_agent,
        open_timeout=30,
        sock=sock,
    )


async def refused(live: Live, path: str, **kwargs: Any) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as caught:
        async with dial(live, path, **kwargs):
            pass
    return caught.value


async def first_message(ws: ClientConnection) -> Any:
    return json.loads(await ws.recv())


# --- the session cookie and the Origin check (cross-site WebSocket hijacking) -------------------
async def test_cookie_from_the_sites_own_page_connects_and_the_route_sees_the_user(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    token = await login_token(fundaments)
    async with dial(live, "/ws/me", origin=live.origin, headers={"cookie": f"session={token}"}) as ws:
        body = await first_message(ws)
    assert body["user"] == body["scope_user"] == "alice"
    assert body["auth"] == "cookie" and body["client_ip"] == "127.0.0.1"


async def test_cookie_from_a_cross_site_page_is_refused_before_the_app(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    """CSWSH: evil.example's script opens a socket to us; the browser attaches alice's cookie."""
    token = await login_token(fundaments)
    for origin in (
        EVIL,
        "null",
        f"https://127.0.0.1:{live.port}",
        f"http://127.0.0.1:{live.port}.evil.example",
    ):
        denied = await refused(live, "/ws/me", origin=origin, headers={"cookie": f"session={token}"})
        assert denied.response.status_code == 403 and b'"code": "cross_origin"' in denied.response.body
    assert live.seen.scopes == []  # never accepted, never routed
    assert await fundaments.security.validate_session(token, {"ip_address": "127.0.0.1", "user_agent": UA})


async def test_cookie_without_an_origin_is_refused(fundaments: Fundaments, live: Live, alice: User) -> None:
    token = await login_token(fundaments)
    denied = await refused(live, "/ws/anyone", headers={"cookie": f"session={token}"})
    assert denied.response.status_code == 403 and live.seen.scopes == []


async def test_an_allowed_origin_may_use_the_cookie(
    fundaments: Fundaments, serve: Callable[..., Any], alice: User
) -> None:
    live: Live = await serve(allowed_origins=["https://console.example"])
    token = await login_token(fundaments)
    cookie = {"cookie": f"session={token}"}
    async with dial(live, "/ws/me", origin="https://console.example", headers=cookie) as ws:
        assert (await first_message(ws))["user"] == "alice"
    assert (await refused(live, "/ws/me", origin=EVIL, headers=cookie)).response.status_code == 403


async def test_a_dead_cookie_from_the_own_site_is_anonymous_and_cleared(live: Live, alice: User) -> None:
    async with dial(live, "/ws/anyone", origin=live.origin, headers={"cookie": "session=garbage"}) as ws:
        assert (await first_message(ws))["user"] is None
        cleared = ws.response.headers.get_all("set-cookie")
    assert cleared == ["session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0"]


# --- bearer tokens ------------------------------------------------------------------------------
async def test_bearer_in_the_authorization_header_connects_without_an_origin_check(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    token = await login_token(fundaments)
    for origin in (None, EVIL):  # a browser cannot set Authorization: no page can forge this
        async with dial(live, "/ws/me", origin=origin, headers={"authorization": f"Bearer {token}"}) as ws:
            body = await first_message(ws)
        assert body["user"] == "alice" and body["auth"] == "bearer"


async def test_bearer_as_a_subprotocol_connects_and_the_token_is_never_echoed(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    token = await login_token(fundaments)
    async with dial(live, "/ws/me", origin=live.origin, subprotocols=[BEARER, token]) as ws:
        body = await first_message(ws)
        answered = ws.response.headers.get_all("sec-websocket-protocol")
        assert ws.subprotocol == BEARER
        raw_headers = str(ws.response.headers)
    assert answered == [BEARER] and token not in raw_headers
    assert body["user"] == "alice" and body["auth"] == "bearer"
    assert body["subprotocols"] == [] and body["protocol_header"] is None  # the app never sees it


async def test_the_apps_own_subprotocol_survives_beside_the_token(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    token = await login_token(fundaments)
    async with dial(live, "/ws/me", subprotocols=["chat.v1", BEARER, token]) as ws:
        body = await first_message(ws)
        assert ws.subprotocol == "chat.v1" and token not in str(ws.response.headers)
    assert body["subprotocols"] == ["chat.v1"] and body["protocol_header"] == "chat.v1"


async def test_a_bearer_subprotocol_wins_over_a_cookie(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    """A cross-site page may offer a subprotocol token (its own); the victim's cookie is not used."""
    token = await login_token(fundaments)
    bob = await fundaments.security.register_user("bob", PASSWORD)
    result = await fundaments.security.user_login(
        "bob", PASSWORD, {"ip_address": "127.0.0.1", "user_agent": UA}
    )
    assert result.session and result.session.token and bob
    async with dial(
        live, "/ws/me", origin=EVIL, headers={"cookie": f"session={token}"},
        subprotocols=[BEARER, result.session.token],
    ) as ws:  # fmt: skip
        assert (await first_message(ws))["user"] == "bob"


@pytest.mark.parametrize("how", ["header", "subprotocol", "empty subprotocol"])
async def test_a_garbage_bearer_is_refused_with_401(live: Live, alice: User, how: str) -> None:
    kwargs: dict[str, Any] = {
        "header": {"headers": {"authorization": "Bearer not-a-session"}},
        "subprotocol": {"subprotocols": [BEARER, "not-a-session"]},
        "empty subprotocol": {"subprotocols": [BEARER]},
    }[how]
    denied = await refused(live, "/ws/anyone", origin=live.origin, **kwargs)
    assert denied.response.status_code == 401 and b'"code": "session_invalid"' in denied.response.body
    assert denied.response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert live.seen.scopes == []  # not served as anonymous


async def test_a_logged_out_bearer_is_refused(fundaments: Fundaments, live: Live, alice: User) -> None:
    token = await login_token(fundaments)
    await fundaments.security.user_logout(token)
    denied = await refused(live, "/ws/me", subprotocols=[BEARER, token])
    assert denied.response.status_code == 401


async def test_a_bearer_replayed_by_another_client_is_refused(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    """SESSION_BINDING_BEARER=agent: another IP alone is a roaming phone; another User-Agent is
    another program holding the token."""
    token = await login_token(fundaments, ip="198.51.100.9")
    denied = await refused(
        live, "/ws/me", headers={"authorization": f"Bearer {token}"}, user_agent="thief/1.0"
    )
    assert denied.response.status_code == 401


async def test_a_rotated_bearer_token_comes_back_in_the_handshake_response(
    fundaments: Fundaments, live: Live, alice: User, clock: Any
) -> None:
    await fundaments.security.create_role("analyst", permissions=["reports:read"])
    token = await login_token(fundaments)
    await fundaments.security.grant_role(alice.id, "analyst")
    async with dial(live, "/ws/reports", subprotocols=[BEARER, token]) as ws:
        assert (await first_message(ws)) == {"reader": "alice"}
        rotated = ws.response.headers["x-session-token"]
    assert rotated != token
    # Within SESSION_ROTATION_GRACE the old token still opens, answered with the same new token.
    async with dial(live, "/ws/me", subprotocols=[BEARER, token]) as ws:
        assert ws.response.headers["x-session-token"] == rotated
    clock.advance(fundaments.settings.session_rotation_grace)
    assert (await refused(live, "/ws/me", subprotocols=[BEARER, token])).response.status_code == 401
    async with dial(live, "/ws/me", subprotocols=[BEARER, rotated]) as ws:
        assert (await first_message(ws))["user"] == "alice"


# --- the guards ---------------------------------------------------------------------------------
async def test_anonymous_handshakes_reach_the_app_and_current_user_closes_them_with_1008(
    live: Live,
) -> None:
    async with dial(live, "/ws/anyone") as ws:
        assert (await first_message(ws)) == {"user": None}
    denied = await refused(live, "/ws/me")
    # A close before accept reaches the client as uvicorn's 403; the guard's code is 1008.
    assert denied.response.status_code == 403
    assert live.seen.refusals() == [(1008, "authentication required")]


async def test_require_permission_closes_with_1008_until_the_role_is_granted(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    assert (await refused(live, "/ws/reports")).response.status_code == 403
    token = await login_token(fundaments)
    auth = {"authorization": f"Bearer {token}"}
    assert (await refused(live, "/ws/reports", headers=auth)).response.status_code == 403
    assert live.seen.refusals() == [(1008, "authentication required"), (1008, "permission denied")]
    denied = await fundaments.security.audit_events(kind="permission.denied")
    assert denied and denied[0].ip_address == "127.0.0.1" and denied[0].user_agent == UA
    await fundaments.security.create_role("analyst", permissions=["reports:read"])
    await fundaments.security.grant_role(alice.id, "analyst")
    async with dial(live, "/ws/reports", headers=auth) as ws:
        assert (await first_message(ws)) == {"reader": "alice"}


async def test_a_user_who_must_change_the_password_cannot_open_a_socket(
    fundaments: Fundaments, live: Live, alice: User
) -> None:
    await fundaments.security.set_password(alice.id, "a temporary long passphrase", must_change=True)
    result = await fundaments.security.user_login(
        "alice", "a temporary long passphrase", {"ip_address": "127.0.0.1", "user_agent": UA}
    )
    assert result.session and result.session.token
    denied = await refused(live, "/ws/anyone", headers={"authorization": f"Bearer {result.session.token}"})
    assert denied.response.status_code == 403 and b"password_change_required" in denied.response.body


# --- host and client IP -------------------------------------------------------------------------
async def test_a_handshake_for_a_host_not_allowed_is_refused(live: Live) -> None:
    sock = socket.create_connection(("127.0.0.1", live.port))
    with pytest.raises(InvalidStatus) as caught:
        async with connect("ws://evil.example/ws/anyone", sock=sock, open_timeout=30):
            pass
    assert caught.value.response.status_code == 400
    assert b'"code": "host_not_allowed"' in caught.value.response.body and live.seen.scopes == []


async def test_forwarded_for_counts_only_from_a_trusted_proxy(
    fundaments: Fundaments, serve: Callable[..., Any], alice: User
) -> None:
    def auth(token: str) -> dict[str, str]:
        return {"authorization": f"Bearer {token}", "x-forwarded-for": "198.51.100.9"}

    untrusted: Live = await serve()
    token = await login_token(fundaments, ip="198.51.100.9")
    async with dial(untrusted, "/ws/me", headers=auth(token)) as ws:  # bearer binding: IP logged only
        assert (await first_message(ws))["client_ip"] == "127.0.0.1"  # the peer, not the header
    behind_proxy: Live = await serve(trusted_proxies=["127.0.0.1"])
    async with dial(behind_proxy, "/ws/me", headers=auth(token)) as ws:
        body = await first_message(ws)
    assert body["user"] == "alice" and body["client_ip"] == "198.51.100.9"


# --- servers without the websocket.http.response extension --------------------------------------
async def test_without_the_denial_extension_a_refusal_is_a_close_with_1008(
    fundaments: Fundaments, alice: User
) -> None:
    token = await login_token(fundaments)
    seen = Seen()
    middleware = build(fundaments, seen)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "websocket",
        "path": "/ws/me",
        "scheme": "ws",
        "client": ("127.0.0.1", 50000),
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"origin", EVIL.encode()),
            (b"cookie", f"session={token}".encode()),
        ],
        "subprotocols": [],
    }
    await middleware(scope, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008, "reason": "cross_origin"}] and seen.scopes == []
