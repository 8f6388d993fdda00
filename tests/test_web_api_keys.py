"""API keys through fundaments.web: ``Authorization: Bearer fk_…`` and ``X-API-Key`` authenticate as
the key's owner; no CSRF, no session, no cookie; ``require_scope``; and the attacks each rule answers.

FastAPI in process (httpx ASGITransport, the lifespan run by tests/asgi_lifespan.py), on SQLite;
one case on PostgreSQL. The WebSocket handshake is driven at the ASGI level.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI, WebSocket
from hypothesis import given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from starlette.requests import Request
from starlette.responses import JSONResponse

from asgi_lifespan import running
from conftest import FAST_HASHING, TEST_MASTER_KEY, TEST_SALT
from fundaments import initialize_fundaments
from fundaments.api_keys import _checksum  # the test builds a well-formed unknown key
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings, load_settings
from fundaments.security import API_KEY_PREFIX, Security, User
from fundaments.web import (
    SecurityMiddleware,
    auth_router,
    current_user,
    get_context,
    install,
    require_permission,
    require_scope,
    scope_required,
)

PASSWORD = "correct horse battery staple"
BASE = "https://api.test"
IP = "198.51.100.23"
UA = "ci-runner/1.0"
HOSTS = ["api.test"]
EVIL = "https://evil.example"


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite for this module (the PostgreSQL case builds its own settings)."""
    return f"sqlite:///{tmp_path / 'fundaments.db'}"


def build(**install_options: Any) -> FastAPI:
    app = FastAPI()
    install_options.setdefault("allowed_hosts", HOSTS)
    install(app, **install_options)
    app.include_router(auth_router(), prefix="/auth")

    @app.get("/whoami")
    async def whoami(request: Request, user: Annotated[User, Depends(current_user)]) -> dict[str, Any]:
        ctx = get_context(request)
        return {
            "user": user.username,
            "scope_user": request.scope["user"].username,
            "auth": ctx.auth,
            "api_key": ctx.api_key.id if ctx.api_key else None,
        }

    @app.post("/notes")
    async def add_note(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"created_by": user.username}

    @app.post("/v1/chat")
    async def chat(user: Annotated[User, Depends(require_scope("models:invoke"))]) -> dict[str, str]:
        return {"invoked_by": user.username}

    @app.get("/v1/models")
    async def models(user: Annotated[User, Depends(require_scope("models:list"))]) -> dict[str, str]:
        return {"listed_by": user.username}

    @app.delete("/v1/models")
    async def delete_model(user: Annotated[User, Depends(require_scope("models:delete"))]) -> dict[str, str]:
        return {"deleted_by": user.username}

    @app.get("/admin")
    async def admin(user: Annotated[User, Depends(require_permission("models:list"))]) -> dict[str, str]:
        return {"admin": user.username}

    @scope_required("models:list")
    async def plain(request: Request) -> JSONResponse:
        return JSONResponse({"plain": request.scope["user"].username})

    app.add_route("/plain", plain)

    @app.websocket("/ws")
    async def ws(websocket: WebSocket, user: Annotated[User, Depends(current_user)]) -> None:
        await websocket.accept()
        ctx = get_context(websocket)
        await websocket.send_json({"user": user.username, "auth": ctx.auth})
        await websocket.close()

    return app


def client(app: Any, ip: str = IP, **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=BASE, headers={"user-agent": UA, **headers})


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app), client(app) as http:
        yield http


async def make_owner(security: Security, name: str = "ci-owner") -> User:
    if not any(r.name == "invoker" for r in await security.list_roles()):
        await security.create_role("invoker", ["models:invoke", "models:list"])
    return await security.register_user(name, PASSWORD, roles=["invoker"])


async def make_token(security: Security, user: User, **overrides: Any) -> str:
    arguments: dict[str, Any] = {"name": "ci", "scopes": ["models:invoke"]}
    arguments.update(overrides)
    return (await security.create_api_key(user.id, **arguments)).token


@pytest.fixture
async def owner(fundaments: Fundaments) -> User:
    return await make_owner(fundaments.security)


@pytest.fixture
async def token(fundaments: Fundaments, owner: User) -> str:
    return await make_token(fundaments.security, owner)


@pytest.fixture
async def http(fundaments: Fundaments, owner: User) -> AsyncIterator[httpx.AsyncClient]:
    async with served(build(fundaments=fundaments)) as http:
        yield http


def key(token: str) -> dict[str, str]:
    return {"x-api-key": token}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def typo_of(token: str) -> str:
    at = 20
    return token[:at] + ("x" if token[at] != "x" else "y") + token[at + 1 :]


async def cookie_login(http: httpx.AsyncClient, username: str = "ci-owner") -> str:
    """A browser's login: the session cookie is in ``http``'s jar; the session's CSRF token returned."""
    csrf = (await http.get("/auth/csrf")).json()["csrf_token"]
    login = await http.post(
        "/auth/login",
        json={"username": username, "password": PASSWORD},
        headers={"origin": BASE, "x-csrf-token": csrf},
    )
    assert login.status_code == 200, login.text
    return str(login.json()["csrf_token"])


def assert_invalid_key(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.json()["code"] == "api_key_invalid"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "set-cookie" not in response.headers


# --- authentication --------------------------------------------------------------------------------
async def test_bearer_fk_and_x_api_key_both_authenticate_as_the_owner(
    http: httpx.AsyncClient, token: str, owner: User, fundaments: Fundaments
) -> None:
    [listed] = await fundaments.security.list_api_keys(owner.id)
    assert token.startswith(API_KEY_PREFIX)
    for headers in (bearer(token), key(token), {"authorization": f"bearer  {token} "}):
        response = await http.get("/whoami", headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {
            "user": "ci-owner",
            "scope_user": "ci-owner",
            "auth": "api_key",
            "api_key": listed.id,
        }
        assert response.headers["cache-control"] == "no-store"
        assert "set-cookie" not in response.headers


async def test_a_mistyped_key_is_401_without_any_database_call(
    http: httpx.AsyncClient, token: str, fundaments: Fundaments
) -> None:
    await fundaments["api_keys"].close()
    await fundaments["db"].close()  # from here any query raises (the middleware answers 500)
    for garbage in (typo_of(token), token[:-1], token + "x", "fk_", "", "fk_" + "-" * 38):
        assert_invalid_key(await http.get("/whoami", headers=key(garbage)))
        assert_invalid_key(await http.post("/notes", headers=bearer(garbage) if garbage else key(garbage)))
    body = API_KEY_PREFIX + "A" * 32  # a well-formed unknown key does reach the database
    well_formed = body + _checksum(body)
    assert (await http.get("/whoami", headers=key(well_formed))).status_code == 500


async def test_revoked_expired_wrong_ip_and_disabled_owner_keys_are_401(
    http: httpx.AsyncClient, fundaments: Fundaments, owner: User, clock: ManualClock
) -> None:
    security = fundaments.security
    revoked = await security.create_api_key(owner.id, name="revoked", scopes=["models:invoke"])
    expiring = await make_token(security, owner, name="expiring", expires_in=60)
    elsewhere = await make_token(security, owner, name="elsewhere", allowed_ips=["203.0.113.0/24"])
    fine = await make_token(security, owner, name="fine", allowed_ips=["198.51.100.0/24"])
    for token in (revoked.token, expiring, fine):
        assert (await http.get("/whoami", headers=key(token))).status_code == 200
    assert_invalid_key(await http.get("/whoami", headers=key(elsewhere)))
    assert await security.revoke_api_key(owner.id, revoked.key.id)
    assert_invalid_key(await http.get("/whoami", headers=bearer(revoked.token)))
    clock.advance(61)
    assert_invalid_key(await http.get("/whoami", headers=key(expiring)))
    await security.register_user("root", PASSWORD, roles=["admin"])
    await security.disable_user(owner.id)
    assert_invalid_key(await http.get("/whoami", headers=key(fine)))
    await security.enable_user(owner.id)
    assert (await http.get("/whoami", headers=key(fine))).status_code == 200


async def test_an_invalid_key_is_refused_even_where_anonymous_is_fine(http: httpx.AsyncClient) -> None:
    """Never silently anonymous: /auth/csrf serves anyone, but not a request with a dead key."""
    assert (await http.get("/auth/csrf")).status_code == 200
    assert_invalid_key(await http.get("/auth/csrf", headers=key("fk_not-a-key")))
    assert_invalid_key(await http.get("/auth/csrf", headers=key("x" * 1000)))  # too long to be one


# --- CSRF, cookies, sessions ---------------------------------------------------------------------
async def test_a_key_needs_no_csrf_token_but_a_cookie_still_does(http: httpx.AsyncClient, token: str) -> None:
    posted = await http.post("/notes", headers={**key(token), "origin": EVIL})
    assert posted.status_code == 200 and posted.json() == {"created_by": "ci-owner"}
    session_csrf = await cookie_login(http)  # the jar now holds the session cookie
    without = await http.post("/notes", headers={"origin": BASE})
    assert without.status_code == 403 and without.json()["code"] == "csrf_missing"
    with_csrf = await http.post("/notes", headers={"origin": BASE, "x-csrf-token": session_csrf})
    assert with_csrf.status_code == 200


async def test_attack_a_cookie_beside_a_garbage_key_does_not_skip_csrf(
    http: httpx.AsyncClient, token: str
) -> None:
    """A forged cross-site POST riding the victim's cookie, with an X-API-Key the attacker made up
    (a browser would need CORS for that header, but the rule must not depend on it): refused, never
    served as the cookie's user without a CSRF token."""
    await cookie_login(http)
    for forged in (key("fk_garbage"), key(typo_of(token)), bearer(typo_of(token)), key("")):
        response = await http.post("/notes", headers={**forged, "origin": EVIL})
        assert response.status_code in (401, 403), response.text
        assert response.json()["code"] in ("api_key_invalid", "cross_origin", "csrf_missing")
        assert "created_by" not in response.text


async def test_a_key_beside_a_cookie_wins_and_the_cookie_is_ignored(
    http: httpx.AsyncClient, fundaments: Fundaments, token: str
) -> None:
    await fundaments.security.register_user("mallory", PASSWORD, roles=["invoker"])
    await cookie_login(http, "mallory")
    response = await http.post("/notes", headers=key(token))
    assert response.status_code == 200 and response.json() == {"created_by": "ci-owner"}
    assert "set-cookie" not in response.headers
    http.cookies.set("__Host-session", "dead-session-token", domain="api.test")
    still = await http.get("/whoami", headers=key(token))  # a dead cookie is not even cleared
    assert still.status_code == 200 and "set-cookie" not in still.headers


async def test_no_set_cookie_is_ever_sent_on_an_api_key_request(http: httpx.AsyncClient, token: str) -> None:
    anonymous = await http.get("/auth/csrf")
    assert "set-cookie" in anonymous.headers  # the pre-session CSRF cookie, for a browser
    http.cookies.clear()
    with_key = await http.get("/auth/csrf", headers=key(token))
    assert with_key.status_code == 200 and "set-cookie" not in with_key.headers
    assert with_key.json()["csrf_token"] == ""  # nothing to protect: no cookie is involved
    logout = await http.post("/auth/logout", headers=key(token))
    assert logout.status_code == 200 and "set-cookie" not in logout.headers
    assert (await http.get("/whoami", headers=key(token))).status_code == 200  # the key lives on


async def test_an_api_key_request_cannot_log_in(
    http: httpx.AsyncClient, fundaments: Fundaments, owner: User, token: str
) -> None:
    for headers in (key(token), bearer(token)):
        response = await http.post(
            "/auth/login", json={"username": "ci-owner", "password": PASSWORD}, headers=headers
        )
        assert response.status_code == 403 and response.json()["code"] == "api_key_session_refused"
        assert "set-cookie" not in response.headers and "token" not in response.json()
    assert await fundaments.security.list_sessions(owner.id) == []  # none opened, not even briefly


async def test_attack_a_key_cannot_manage_its_owner_s_account(
    http: httpx.AsyncClient, fundaments: Fundaments, owner: User, token: str
) -> None:
    """A leaked key must not end its owner's sessions or change the password (auth_router's account
    routes need a session); /auth/me still answers with the owner."""
    person = await fundaments.security.user_login(
        "ci-owner", PASSWORD, {"ip_address": "127.0.0.1", "user_agent": "browser"}
    )
    assert person.session is not None
    for headers in (key(token), bearer(token)):
        listed = await http.get("/auth/sessions", headers=headers)
        assert listed.status_code == 403 and listed.json()["code"] == "session_required"
        ended = await http.delete(f"/auth/sessions/{person.session.id}", headers=headers)
        assert ended.status_code == 403 and ended.json()["code"] == "session_required"
        changed = await http.post(
            "/auth/password",
            json={"current_password": PASSWORD, "new_password": "a brand new passphrase 9"},
            headers=headers,
        )
        assert changed.status_code == 403 and changed.json()["code"] == "session_required"
        mailed = await http.post("/auth/verify-email/request", headers=headers)
        assert mailed.status_code == 403 and mailed.json()["code"] == "session_required"
    assert [s.id for s in await fundaments.security.list_sessions(owner.id)] == [person.session.id]
    assert await fundaments.security.user_login(
        "ci-owner", PASSWORD, {"ip_address": "127.0.0.1", "user_agent": "x"}
    )
    me = await http.get("/auth/me", headers=key(token))
    assert me.status_code == 200 and me.json()["username"] == "ci-owner"


# --- require_scope and require_permission ----------------------------------------------------------
async def test_require_scope_needs_the_key_s_scope_and_the_owner_s_permission(
    http: httpx.AsyncClient, fundaments: Fundaments, owner: User, token: str
) -> None:
    assert (await http.post("/v1/chat", headers=key(token))).json() == {"invoked_by": "ci-owner"}
    # The owner may list models; this key's scopes say models:invoke only.
    denied = await http.get("/v1/models", headers=key(token))
    assert denied.status_code == 403 and denied.json()["code"] == "scope_denied"
    # A key scoped models:* whose owner no longer holds models:* but only invoke and list.
    security = fundaments.security
    await security.create_role("all-models", ["models:*"])
    await security.grant_role(owner.id, "all-models")
    wide = await make_token(security, owner, name="wide", scopes=["models:*"])
    assert (await http.delete("/v1/models", headers=key(wide))).json() == {"deleted_by": "ci-owner"}
    await security.revoke_role(owner.id, "all-models")
    assert (await http.get("/v1/models", headers=key(wide))).status_code == 200
    refused = await http.delete("/v1/models", headers=key(wide))
    assert refused.status_code == 403 and refused.json()["code"] == "scope_denied"
    assert (await http.get("/plain", headers=key(wide))).json() == {"plain": "ci-owner"}
    plain = await http.get("/plain", headers=key(token))
    assert plain.status_code == 403 and plain.json()["code"] == "scope_denied"
    anonymous = await http.post("/v1/chat")
    assert anonymous.status_code == 401 and anonymous.json()["code"] == "authentication_required"


async def test_attack_require_permission_cannot_exceed_the_key_s_scopes(
    http: httpx.AsyncClient, fundaments: Fundaments, token: str
) -> None:
    """/admin needs models:list, which the owner holds and the key's scopes leave out."""
    response = await http.get("/admin", headers=key(token))
    assert response.status_code == 403 and response.json()["code"] == "permission_denied"
    await fundaments["audit"].close()  # background writes done
    denied = [e for e in await fundaments.security.audit_events(limit=100) if e.kind == "permission.denied"]
    assert denied and denied[-1].details["reason"] == "api_key_scope"


async def test_a_session_user_needs_the_permission_scope(
    http: httpx.AsyncClient, fundaments: Fundaments
) -> None:
    await fundaments.security.create_role("lister", ["models:list"])
    await fundaments.security.register_user("lister", PASSWORD, roles=["lister"])
    login = await http.post("/auth/login", json={"username": "lister", "password": PASSWORD})
    session = login.json()["token"]
    assert (await http.get("/v1/models", headers=bearer(session))).json() == {"listed_by": "lister"}
    denied = await http.post("/v1/chat", headers=bearer(session))
    assert denied.status_code == 403 and denied.json()["code"] == "scope_denied"


async def test_a_role_revoked_from_the_owner_is_a_403_on_the_next_request_here_and_elsewhere(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    a = await initialize_fundaments(make_settings(), clock=clock, configure_logs=False)
    b = await initialize_fundaments(make_settings(), clock=clock, configure_logs=False)
    try:
        owner = await make_owner(a.security)
        token = await make_token(a.security, owner)
        app_a, app_b = build(fundaments=a), build(fundaments=b)
        async with running(app_a), running(app_b), client(app_a) as on_a, client(app_b) as on_b:
            for http in (on_a, on_b):
                assert (await http.post("/v1/chat", headers=key(token))).status_code == 200
            await a.security.revoke_role(owner.id, "invoker")
            assert (await on_a.post("/v1/chat", headers=key(token))).status_code == 403  # at once here
            clock.advance(1)  # <= 1 s: the key and user caches are re-read ...
            await b["access_control"].refresh()  # ... and B's RBAC watcher has run (every 0.5 s)
            assert (await on_b.post("/v1/chat", headers=key(token))).status_code == 403
    finally:
        await b.close()
        await a.close()


# --- WebSockets ------------------------------------------------------------------------------------
async def handshake(
    app: Any, headers: dict[str, str], subprotocols: list[str] | None = None
) -> list[dict[str, Any]]:
    """One WebSocket handshake through ``app`` at the ASGI level: what the server would send."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "scheme": "wss",
        "path": "/ws",
        "raw_path": b"/ws",
        "query_string": b"",
        "root_path": "",
        "headers": [
            (n.encode(), v.encode()) for n, v in {"host": "api.test", "user-agent": UA, **headers}.items()
        ],
        "client": (IP, 50000),
        "server": ("api.test", 443),
        "subprotocols": subprotocols or [],
        "extensions": {"websocket.http.response": {}},
        "state": {},
    }
    inbox = [{"type": "websocket.connect"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return inbox.pop(0) if inbox else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_websocket_handshake_takes_the_key_the_same_ways(fundaments: Fundaments, token: str) -> None:
    app = build(fundaments=fundaments)
    async with running(app):
        for headers, offered in (
            (key(token), None),
            (bearer(token), None),
            ({}, ["fundaments.bearer", token]),
        ):
            sent = await handshake(app, headers, offered)
            assert sent[0]["type"] == "websocket.accept", sent
            assert json.loads(sent[1]["text"]) == {"user": "ci-owner", "auth": "api_key"}
            assert not any(name == b"set-cookie" for name, _ in sent[0].get("headers", ()))
        refused = await handshake(app, key(typo_of(token)))
        assert refused[0]["type"] == "websocket.http.response.start" and refused[0]["status"] == 401
        assert json.loads(refused[1]["body"])["code"] == "api_key_invalid"


# --- OpenAPI ---------------------------------------------------------------------------------------
async def test_openapi_offers_the_api_key_header_beside_bearer_and_cookie(http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["api key"]["type"] == "apiKey"
    assert schemes["api key"]["in"] == "header" and schemes["api key"]["name"] == "X-API-Key"
    chat = document["paths"]["/v1/chat"]["post"]
    assert chat["security"] == [{"bearer": []}, {"session cookie": []}, {"api key": []}]
    assert "security" not in document["paths"]["/auth/login"]["post"]


# --- PostgreSQL ------------------------------------------------------------------------------------
@pytest.mark.postgres
async def test_keys_through_the_web_on_postgres(
    postgres_url: str, tmp_path: Path, clock: ManualClock
) -> None:
    settings = load_settings(
        env_file=tmp_path / "absent.env",
        database_url=postgres_url,
        master_encryption_key=TEST_MASTER_KEY,
        persistent_encryption_salt=TEST_SALT,
        mail_url=f"file://{tmp_path}/outbox",
        **FAST_HASHING,
    )
    f = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        owner = await make_owner(f.security)
        created = await f.security.create_api_key(owner.id, name="ci", scopes=["models:invoke"])
        async with served(build(fundaments=f)) as http:
            assert (await http.post("/v1/chat", headers=bearer(created.token))).status_code == 200
            assert (await http.get("/v1/models", headers=key(created.token))).status_code == 403
            await f.security.revoke_api_key(owner.id, created.key.id)
            assert_invalid_key(await http.post("/v1/chat", headers=key(created.token)))
    finally:
        await f.close()


# --- secrets ---------------------------------------------------------------------------------------
async def test_the_token_never_reaches_the_logs(
    http: httpx.AsyncClient, fundaments: Fundaments, owner: User, token: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await http.get("/whoami", headers=key(token))
    await http.get("/v1/models", headers=key(token))  # 403
    await http.get("/whoami", headers=key(typo_of(token)))  # 401
    [listed] = await fundaments.security.list_api_keys(owner.id)
    await fundaments.security.revoke_api_key(owner.id, listed.id)
    await http.get("/whoami", headers=key(token))  # 401, audited
    await fundaments["audit"].close()
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert "refused GET /whoami: api_key_invalid" in logged
    for secret in (token, token[10:], typo_of(token)[10:]):
        assert secret not in logged
    for event in await fundaments.security.audit_events(limit=200):
        assert token[10:] not in json.dumps(event.details)


# --- rate limits -----------------------------------------------------------------------------------
@asynccontextmanager
async def limited(
    make_settings: Callable[..., Settings], clock: ManualClock, **overrides: Any
) -> AsyncIterator[tuple[Fundaments, httpx.AsyncClient]]:
    f = await initialize_fundaments(
        make_settings(**{"rate_limit_backend": "memory", **overrides}), clock=clock, configure_logs=False
    )
    try:
        async with served(build(fundaments=f)) as http:
            yield f, http
    finally:
        await f.close()


def assert_limited(response: httpx.Response, retry_after: int) -> None:
    assert response.status_code == 429, response.text
    assert response.json()["code"] == "rate_limited"
    assert response.headers["retry-after"] == str(retry_after)
    assert "ratelimit" in response.headers and "ratelimit-policy" in response.headers
    assert "set-cookie" not in response.headers


async def test_a_key_s_own_limit_answers_429_with_retry_after(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    async with limited(make_settings, clock) as (f, http):
        owner = await make_owner(f.security)
        token = await make_token(f.security, owner, rate_limit="3/minute")
        other = await make_token(f.security, owner, name="other", rate_limit="3/minute")
        for remaining in (2, 1, 0):
            allowed = await http.post("/v1/chat", headers=key(token))
            assert allowed.status_code == 200
            assert allowed.headers["ratelimit-policy"] == '"api-key";q=3;w=60'
            assert allowed.headers["ratelimit"].startswith(f'"api-key";r={remaining};t=')
        refused = await http.post("/v1/chat", headers=key(token))
        assert_limited(refused, 20)  # one every 20 s
        assert refused.headers["ratelimit"] == '"api-key";r=0;t=20'
        assert_limited(await http.get("/whoami", headers=bearer(token)), 20)  # every route: per key
        assert (await http.post("/v1/chat", headers=key(other))).status_code == 200  # its own budget
        clock.advance(20)
        assert (await http.post("/v1/chat", headers=key(token))).status_code == 200
        assert_limited(await http.post("/v1/chat", headers=key(token)), 20)
        sent = await handshake(http._transport.app, key(token))  # type: ignore[attr-defined]
        assert sent[0]["status"] == 429 and (b"retry-after", b"20") in sent[0]["headers"]


async def test_attack_five_keys_do_not_give_five_times_the_owner_s_limit(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    async with limited(make_settings, clock, api_key_user_rate_limit="4/minute") as (f, http):
        owner = await make_owner(f.security)
        tokens = [await make_token(f.security, owner, name=f"k{i}", rate_limit="2/minute") for i in range(5)]
        someone = await make_token(f.security, await make_owner(f.security, "someone"), name="s")
        answers = [
            (await http.post("/v1/chat", headers=key(t))).status_code for t in tokens for _ in range(2)
        ]
        assert answers.count(200) == 4 and answers.count(429) == 6
        refused = await http.post("/v1/chat", headers=key(tokens[4]))
        assert_limited(refused, 15)  # the owner's limit: one every 15 s
        assert refused.headers["ratelimit-policy"] == '"api-key";q=2;w=60, "api-key-owner";q=4;w=60'
        key_state, owner_state = refused.headers["ratelimit"].split(", ")
        assert key_state.startswith('"api-key";r=2;') and owner_state == '"api-key-owner";r=0;t=15'
        assert (await http.post("/v1/chat", headers=key(someone))).status_code == 200  # per owner
        # All or nothing: the requests the owner's limit refused did not use up k2..k4's own limits.
        clock.advance(60)
        assert [(await http.post("/v1/chat", headers=key(t))).status_code for t in tokens[2:4] * 2] == [
            200
        ] * 4


async def test_no_limit_configured_costs_no_decision(
    make_settings: Callable[..., Settings], clock: ManualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with limited(make_settings, clock) as (f, http):
        calls: list[object] = []
        real = f.security.rate_limit_all

        async def counting(*args: Any, **kwargs: Any) -> Any:
            calls.append(args)
            return await real(*args, **kwargs)

        monkeypatch.setattr(f.security, "rate_limit_all", counting)
        owner = await make_owner(f.security)
        token = await make_token(f.security, owner)
        for _ in range(20):
            assert (await http.post("/v1/chat", headers=key(token))).status_code == 200
        assert calls == []
        limited_token = await make_token(f.security, owner, name="limited", rate_limit="100/minute")
        assert (await http.post("/v1/chat", headers=key(limited_token))).status_code == 200
        assert len(calls) == 1  # one decision per request


async def test_the_429_path_logs_and_audits_no_secret(
    make_settings: Callable[..., Settings], clock: ManualClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with limited(make_settings, clock) as (f, http):
        owner = await make_owner(f.security)
        token = await make_token(f.security, owner, rate_limit="1/minute")
        assert (await http.post("/v1/chat", headers=key(token))).status_code == 200
        assert_limited(await http.post("/v1/chat", headers=bearer(token)), 60)
        await f["audit"].close()
        events = await f.security.audit_events(limit=200)
    logged = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    assert "429 for POST /v1/chat: RateLimited" in logged
    assert token[10:] not in logged
    assert all(token[10:] not in json.dumps(e.details) for e in events)


# --- docs/web.md -----------------------------------------------------------------------------------
def test_the_web_page_s_api_key_example_prints_what_the_page_shows(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    page = (repo / "docs" / "web.md").read_text()
    after = page[page.index("<!-- web-api-keys-example") :]
    code = re.search(r"```python\n(.*?)```", after, re.S)
    expected = re.search(r"```text\n(.*?)```", after, re.S)
    assert code and expected
    script = tmp_path / "web_api_keys_example.py"
    script.write_text(code.group(1))
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "MASTER_", "PERSISTENT_"))
    }
    env["PYTHONPATH"] = os.pathsep.join([str(repo / "src"), env.get("PYTHONPATH", "")])
    env["FUNDAMENTS_ENV_FILE"] = str(tmp_path / "absent.env")
    env["ARGON2_MEMORY_COST"], env["ARGON2_TIME_COST"] = "1024", "1"  # a test's cheap hashing
    result = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected.group(1)


# --- the credential parser (untrusted headers) -------------------------------------------------------
@hypothesis_settings(max_examples=300, deadline=None)
@given(
    authorization=st.none()
    | st.text(max_size=300)
    | st.builds(lambda t: "Bearer " + t, st.text(max_size=300)),
    api_key=st.none() | st.text(max_size=300),
    cookie=st.none() | st.text(max_size=300),
)
def test_presented_credentials_are_one_bounded_token_of_one_kind(
    authorization: str | None, api_key: str | None, cookie: str | None
) -> None:
    headers = {
        name: value
        for name, value in (("authorization", authorization), ("x-api-key", api_key))
        if value is not None
    }
    token, kind = SecurityMiddleware._presented_token(headers, cookie)
    assert token is None or (token.isascii() and 0 < len(token) <= 256)
    bearer_value = None
    if authorization is not None:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            bearer_value = value.strip()
    if bearer_value is not None:
        assert kind == ("api_key" if bearer_value.startswith(API_KEY_PREFIX) else "bearer")
    elif api_key is not None:
        assert kind == "api_key"  # a key header beside a cookie: the key, never the cookie
        assert token is None or token == api_key.strip()
    elif cookie is not None:
        assert kind == "cookie"
    else:
        assert (token, kind) == (None, None)


# --- pages for people ---------------------------------------------------------------------------------
async def test_attack_a_key_cannot_drive_the_console_as_its_owner(
    make_settings: Callable[..., Settings], clock: ManualClock, tmp_path: Path
) -> None:
    """The console checks permissions without the key (it is for people): a key scoped
    models:invoke of an administrator must not create a role there — unsafe requests with a key
    even skip CSRF. authenticated_user() is None on an API-key request, so the page sends it to /login."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from app.app import build_app

    f = await initialize_fundaments(
        make_settings(allowed_hosts=["console.test"]), clock=clock, configure_logs=False
    )
    app = build_app(f, data_dir=tmp_path / "app-data")
    try:
        boss = await f.security.register_user("boss", PASSWORD, roles=["admin"])
        token = await make_token(f.security, boss, scopes=["models:invoke"])
        transport = httpx.ASGITransport(app=app, client=(IP, 50000))
        async with (
            running(app),
            httpx.AsyncClient(transport=transport, base_url="https://console.test") as http,
        ):
            for headers in (key(token), bearer(token)):
                page = await http.get("/admin/roles", headers=headers)
                assert page.status_code == 303 and page.headers["location"] == "/login"
                created = await http.post(
                    "/admin/roles", data={"name": "escalated", "permissions": "*"}, headers=headers
                )
                assert created.status_code == 303 and created.headers["location"] == "/login"
        assert all(role.name != "escalated" for role in await f.security.list_roles())
    finally:
        app.state.secrets.close()
        await f.close()


async def test_on_redis_the_limits_hold_and_no_token_reaches_redis(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    """Issue 18: the key's limit on the shared Redis (REDIS_URL), and the token appears in no Redis
    key name and no value (SCAN + DUMP of every rate-limit key) — only the key's public id does."""
    from redis.asyncio import Redis

    from ratelimit_support import redis_test_url

    url = redis_test_url()
    async with limited(make_settings, clock, rate_limit_backend="redis", redis_url=url) as (f, http):
        owner = await make_owner(f.security, "redis-owner")
        created = await f.security.create_api_key(
            owner.id, name="ci", scopes=["models:invoke"], rate_limit="2/minute"
        )
        token = created.token
        assert (await http.post("/v1/chat", headers=key(token))).status_code == 200
        assert (await http.post("/v1/chat", headers=bearer(token))).status_code == 200
        assert_limited(await http.post("/v1/chat", headers=key(token)), 30)
        client = Redis.from_url(url)
        try:
            names = [name async for name in client.scan_iter(match="fundaments:rl:*", count=1000)]
            ours = [name for name in names if created.key.id.encode() in name]
            assert ours, names[:5]  # the limit really lives on Redis, under the key's public id
            for name in names:
                dumped = (await client.dump(name)) or b""
                for secret in (token, token[10:], token[3:20]):
                    assert secret.encode() not in name and secret.encode() not in dumped
        finally:
            await client.aclose()
