"""fundaments.web on FastAPI: install(app), get_security, auth_router, JSON refusals, CSRF for JSON clients.

In process (httpx ASGITransport, the lifespan run by tests/asgi_lifespan.py); the example application
through a real uvicorn server is tests/test_fastapi_example.py. SQLite and PostgreSQL alike.
"""

from __future__ import annotations

import email
import email.policy
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from asgi_lifespan import StartupFailed, running
from fundaments.bootstrap import Fundaments
from fundaments.config import Settings
from fundaments.security import Security, User
from fundaments.web import auth_router, current_user, get_security, install, require_permission
from test_recovery import LINK, body

PASSWORD = "correct horse battery staple"
BASE = "https://api.test"
UA = "notes-cli/1.0"
HOSTS = ["api.test"]


def build(*, registration: bool = False, **install_options: Any) -> FastAPI:
    app = FastAPI()
    install_options.setdefault("allowed_hosts", HOSTS)
    install(app, **install_options)
    app.include_router(auth_router(registration=registration), prefix="/auth")

    @app.get("/notes")
    async def notes(
        user: Annotated[User, Depends(current_user)], security: Annotated[Security, Depends(get_security)]
    ) -> dict[str, Any]:
        return {"owner": user.username, "roles": await security.user_roles(user.id)}

    @app.post("/notes")
    async def add_note(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"created_by": user.username}

    @app.get("/admin")
    async def admin(user: Annotated[User, Depends(require_permission("notes:admin"))]) -> dict[str, str]:
        return {"admin": user.username}

    return app


def client(app: Any, ip: str = "203.0.113.7", **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=BASE, headers={"user-agent": UA, **headers})


@asynccontextmanager
async def served(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with running(app), client(app) as http:
        yield http


@pytest.fixture
async def alice(fundaments: Fundaments) -> User:
    await fundaments.security.create_role("reader", permissions=["notes:read"])
    return await fundaments.security.register_user(
        "alice", PASSWORD, roles=["reader"], email="alice@example.com"
    )


@pytest.fixture
async def http(fundaments: Fundaments, alice: User) -> AsyncIterator[httpx.AsyncClient]:
    """The app on the test's started fundaments (install(app, fundaments=...): the manual clock)."""
    async with served(build(fundaments=fundaments, registration=True)) as http:
        yield http


async def json_login(http: httpx.AsyncClient, username: str = "alice", password: str = PASSWORD) -> str:
    response = await http.post("/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


# --- install(): lifespan, 503 before start, get_security ----------------------------------------
async def test_install_starts_fundaments_in_the_lifespan_and_closes_it_after(settings: Settings) -> None:
    order: list[str] = []

    @asynccontextmanager
    async def own(app: FastAPI) -> AsyncIterator[None]:
        installation = app.state.fundaments_installation
        order.append(f"app start (fundaments up: {installation.security is not None})")
        yield
        order.append(f"app stop (fundaments up: {installation.security is not None})")

    app = FastAPI(lifespan=own)
    installation = install(app, settings, allowed_hosts=HOSTS)

    @app.get("/who")
    async def who(security: Annotated[Security, Depends(get_security)]) -> dict[str, bool]:
        return {"same": security is installation.security}

    async with client(app, accept="application/json") as http:
        early = await http.get("/who")
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        assert early.json()["code"] == "service_starting"
        assert early.headers["x-content-type-options"] == "nosniff"
        async with running(app):
            assert (await http.get("/who")).json() == {"same": True}
            started = installation.fundaments
            assert started is not None
        assert (await http.get("/who")).status_code == 503  # after shut-down
    assert order == ["app start (fundaments up: True)", "app stop (fundaments up: True)"]
    assert started is not None and installation.fundaments is None
    with pytest.raises(Exception, match=r"closed|Security manager"):
        await started.security.get_user(1)  # closed with the app


async def test_a_configuration_error_stops_the_start_with_its_message(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    # A database the process cannot open: initialize_fundaments raises, the server must not serve.
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    app = FastAPI()
    install(app, make_settings(database_url=f"sqlite:///{blocker}/db.sqlite3"), allowed_hosts=HOSTS)
    with pytest.raises(StartupFailed) as failed:
        async with running(app):
            pass
    assert str(blocker) in str(failed.value) or "database" in str(failed.value).lower()


async def test_install_with_an_application_s_own_fundaments_neither_starts_nor_closes_it(
    fundaments: Fundaments, alice: User
) -> None:
    app = build(fundaments=fundaments)
    async with served(app) as http:
        assert (await http.get("/auth/me", headers=bearer(await json_login(http)))).status_code == 200
    assert (await fundaments.security.get_user(alice.id)) is not None  # still open


def test_install_refuses_what_cannot_work(settings: Settings, fundaments: Fundaments) -> None:
    with pytest.raises(TypeError, match="FastAPI or Starlette"):
        install(object())  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not both"):
        install(FastAPI(), settings, fundaments=fundaments)
    with pytest.raises(TypeError, match="fundaments="):
        install(FastAPI(), security=fundaments.security)


async def test_install_after_the_start_is_refused(fundaments: Fundaments) -> None:
    app = build(fundaments=fundaments)
    async with running(app):
        with pytest.raises(RuntimeError, match="after an application has started"):
            install(app, fundaments=fundaments)


async def test_install_works_on_plain_starlette(fundaments: Fundaments, alice: User) -> None:
    async def me(request: Request) -> JSONResponse:
        user = request.scope["user"]
        return JSONResponse(
            {"user": user.username if user else None, "same": get_security(request) is not None}
        )

    app = Starlette(routes=[Route("/me", me)])
    install(app, fundaments=fundaments, allowed_hosts=HOSTS)
    result = await fundaments.security.user_login(
        "alice", PASSWORD, {"ip_address": "203.0.113.7", "user_agent": UA}
    )
    assert result.session is not None and result.session.token is not None
    async with running(app), client(app) as http:
        assert (await http.get("/me", headers=bearer(result.session.token))).json() == {
            "user": "alice",
            "same": True,
        }


# --- the JSON login and what follows ------------------------------------------------------------
async def test_a_script_logs_in_with_json_and_uses_the_bearer_token(http: httpx.AsyncClient) -> None:
    response = await http.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"token", "token_type", "user", "expires_at", "csrf_token"}
    assert body["user"]["username"] == "alice" and body["user"]["roles"] == ["reader"]
    assert PASSWORD not in response.text and body["token_type"] == "bearer"
    assert response.headers["cache-control"] == "no-store"
    me = await http.get("/auth/me", headers=bearer(body["token"]))
    assert me.status_code == 200 and me.json()["email"] == "alice@example.com"
    notes = await http.get("/notes", headers=bearer(body["token"]))
    assert notes.json() == {"owner": "alice", "roles": ["reader"]}
    posted = await http.post("/notes", headers=bearer(body["token"]))  # bearer: no CSRF token needed
    assert posted.status_code == 200


async def test_login_by_form_and_by_email(http: httpx.AsyncClient) -> None:
    form = await http.post("/auth/login", data={"username": "alice@example.com", "password": PASSWORD})
    assert form.status_code == 200 and form.json()["user"]["username"] == "alice"


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (b"{not json", "application/json"),
        (b'["alice", "pw"]', "application/json"),
        (b'{"username": "alice"}', "application/json"),
        (b'{"username": "alice", "password": 12345678}', "application/json"),
        (b"", "application/json"),
        (b"username=alice", "application/x-www-form-urlencoded"),
    ],
)
async def test_a_malformed_login_body_is_422_without_an_echo(
    http: httpx.AsyncClient, body: bytes, content_type: str
) -> None:
    response = await http.post("/auth/login", content=body, headers={"content-type": content_type})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_body"
    assert "12345678" not in response.text and "alice" not in response.text


async def test_wrong_passwords_and_unknown_users_get_one_answer(http: httpx.AsyncClient) -> None:
    wrong = await http.post("/auth/login", json={"username": "alice", "password": "wrong password!"})
    nobody = await http.post("/auth/login", json={"username": "nobody", "password": "wrong password!"})
    assert wrong.status_code == nobody.status_code == 401
    assert (
        wrong.json() == nobody.json() == {"detail": "Invalid username or password.", "code": "login_failed"}
    )
    assert "set-cookie" not in {k.lower() for k in wrong.headers}


async def test_sessions_listing_and_ending_one(http: httpx.AsyncClient) -> None:
    first, second = await json_login(http), await json_login(http)
    listed = (await http.get("/auth/sessions", headers=bearer(second))).json()
    assert len(listed) == 2 and [s["current"] for s in listed].count(True) == 1
    other = next(s["id"] for s in listed if not s["current"])
    assert "token" not in json.dumps(listed).lower().replace("token_", "")
    ended = await http.delete(f"/auth/sessions/{other}", headers=bearer(second))
    assert ended.status_code == 204
    assert (await http.get("/auth/me", headers=bearer(first))).status_code == 401
    again = await http.delete(f"/auth/sessions/{other}", headers=bearer(second))
    assert again.status_code == 404 and again.json()["code"] == "session_not_found"


async def test_logout_ends_the_bearer_session(http: httpx.AsyncClient) -> None:
    token = await json_login(http)
    assert (await http.post("/auth/logout", headers=bearer(token))).status_code == 200
    dead = await http.get("/auth/me", headers=bearer(token))
    assert dead.status_code == 401 and dead.json()["code"] == "session_invalid"


async def test_password_change_returns_a_new_token_and_ends_the_others(http: httpx.AsyncClient) -> None:
    token, other = await json_login(http), await json_login(http)
    changed = await http.post(
        "/auth/password",
        json={"current_password": PASSWORD, "new_password": "a brand new passphrase"},
        headers=bearer(token),
    )
    assert changed.status_code == 200
    new = changed.json()["token"]
    assert new != token
    assert (await http.get("/auth/me", headers=bearer(new))).status_code == 200
    for dead in (token, other):
        assert (await http.get("/auth/me", headers=bearer(dead))).status_code == 401
    wrong = await http.post(
        "/auth/password",
        json={"current_password": "not it at all", "new_password": "another passphrase"},
        headers=bearer(new),
    )
    assert wrong.status_code == 403 and wrong.json()["code"] == "current_password_wrong"
    weak = await http.post(
        "/auth/password", json={"current_password": "a brand new passphrase", "new_password": "short"},
        headers=bearer(new),
    )  # fmt: skip
    assert weak.status_code == 422 and weak.json()["code"] == "password_policy"


async def test_a_user_who_must_change_the_password_reaches_only_the_router_s_open_paths(
    fundaments: Fundaments, http: httpx.AsyncClient
) -> None:
    await fundaments.security.register_user("carol", "temporary passphrase", must_change_password=True)
    token = await json_login(http, "carol", "temporary passphrase")
    refused = await http.get("/notes", headers=bearer(token))
    assert refused.status_code == 403 and refused.json()["code"] == "password_change_required"
    assert (await http.get("/auth/me", headers=bearer(token))).json()["must_change_password"] is True
    changed = await http.post(
        "/auth/password",
        json={"current_password": "temporary passphrase", "new_password": "my own passphrase now"},
        headers=bearer(token),
    )
    assert changed.status_code == 200
    assert (await http.get("/notes", headers=bearer(changed.json()["token"]))).status_code == 200


async def test_registration_is_off_unless_enabled(fundaments: Fundaments) -> None:
    async with served(build(fundaments=fundaments)) as http:
        closed = await http.post("/auth/register", json={"username": "eve", "password": PASSWORD})
        assert closed.status_code in (404, 405)
    assert await fundaments.security.get_user_by_username("eve") is None


async def test_registration_when_enabled(http: httpx.AsyncClient) -> None:
    made = await http.post(
        "/auth/register", json={"username": "dave", "password": PASSWORD, "email": "d@example.com"}
    )
    assert made.status_code == 201 and made.json()["username"] == "dave" and made.json()["roles"] == []
    taken = await http.post("/auth/register", json={"username": "dave", "password": PASSWORD})
    assert taken.status_code == 409 and taken.json()["code"] == "account_exists"
    weak = await http.post("/auth/register", json={"username": "erin", "password": "dave"})
    assert weak.status_code == 422 and weak.json()["code"] == "password_policy"
    assert (
        await http.post("/auth/login", json={"username": "dave", "password": PASSWORD})
    ).status_code == 200


async def test_password_reset_by_mail_through_the_router(
    fundaments: Fundaments, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    asked = await http.post("/auth/password-reset", json={"email": "alice@example.com"})
    unknown = await http.post("/auth/password-reset", json={"email": "nobody@example.com"})
    assert asked.status_code == unknown.status_code == 202 and asked.json() == unknown.json()
    await fundaments["mail"].send_due()
    mails = sorted((tmp_path / "outbox").glob("*.eml"))
    assert len(mails) == 1
    message = email.message_from_bytes(
        mails[0].read_bytes(), _class=EmailMessage, policy=email.policy.default
    )
    token = LINK.search(body(message)).group(1)  # type: ignore[arg-type,union-attr]
    confirmed = await http.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "reset passphrase ok"}
    )
    assert confirmed.status_code == 200 and confirmed.json()["username"] == "alice"
    reused = await http.post(
        "/auth/password-reset/confirm", json={"token": token, "new_password": "another one entirely"}
    )
    assert reused.status_code == 400 and reused.json()["code"] == "invalid_link"
    assert (
        await http.post("/auth/login", json={"username": "alice", "password": "reset passphrase ok"})
    ).status_code == 200


# --- CSRF for JSON clients ----------------------------------------------------------------------
async def test_a_cookieless_script_needs_no_presession_token_but_a_cross_site_page_is_refused(
    http: httpx.AsyncClient,
) -> None:
    script = await http.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert script.status_code == 200
    http.cookies.clear()
    # The same request from an attacker's page: a browser adds Origin (login CSRF).
    forged = await http.post(
        "/auth/login",
        json={"username": "alice", "password": PASSWORD},
        headers={"origin": "https://evil.test"},
    )
    assert forged.status_code == 403 and forged.json()["code"] == "cross_origin"
    referred = await http.post(
        "/auth/login",
        data={"username": "alice", "password": PASSWORD},
        headers={"referer": "https://evil.test/x"},
    )
    assert referred.status_code == 403


async def test_a_request_with_cookies_keeps_both_checks(http: httpx.AsyncClient) -> None:
    """A browser holding cookies (here only the pre-session CSRF one) gets the full check."""
    assert (await http.get("/auth/csrf")).status_code == 200  # sets the csrf cookie
    assert http.cookies
    no_origin = await http.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert no_origin.status_code == 403 and no_origin.json()["code"] == "cross_origin"
    no_token = await http.post(
        "/auth/login", json={"username": "alice", "password": PASSWORD}, headers={"origin": BASE}
    )
    assert no_token.status_code == 403 and no_token.json()["code"] == "csrf_missing"
    assert "GET /auth/csrf" in no_token.json()["detail"]


async def test_browser_style_cookie_login_then_csrf_then_post(http: httpx.AsyncClient) -> None:
    csrf = (await http.get("/auth/csrf")).json()["csrf_token"]
    login = await http.post(
        "/auth/login",
        json={"username": "alice", "password": PASSWORD},
        headers={"origin": BASE, "x-csrf-token": csrf},
    )
    assert login.status_code == 200
    cookie = next(line for line in login.headers.get_list("set-cookie") if line.startswith("__Host-session="))
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Lax" in cookie
    session_csrf = (await http.get("/auth/csrf")).json()["csrf_token"]
    assert session_csrf == login.json()["csrf_token"] != csrf
    without = await http.post("/notes", headers={"origin": BASE})
    assert without.status_code == 403 and without.json()["code"] == "csrf_missing"
    stale = await http.post("/notes", headers={"origin": BASE, "x-csrf-token": csrf})
    assert stale.status_code == 403 and stale.json()["code"] == "csrf_invalid"
    posted = await http.post("/notes", headers={"origin": BASE, "x-csrf-token": session_csrf})
    assert posted.status_code == 200 and posted.json() == {"created_by": "alice"}
    logout = await http.post("/auth/logout", headers={"origin": BASE, "x-csrf-token": session_csrf})
    assert logout.status_code == 200
    assert (await http.get("/auth/me")).status_code == 401


# --- every refusal's shape ----------------------------------------------------------------------
async def test_every_refusal_is_json_with_a_code(fundaments: Fundaments, http: httpx.AsyncClient) -> None:
    token = await json_login(http)
    cases = {
        "authentication_required": await http.get("/notes"),
        "permission_denied": await http.get("/admin", headers=bearer(token)),
        "session_invalid": await http.get("/notes", headers=bearer("x" * 43)),
        "cross_origin": await http.post("/notes", headers={"origin": "https://evil.test", "cookie": "a=b"}),
        "body_too_large": await http.post(
            "/auth/login", content=b"x" * 1_000_001, headers={"content-type": "application/json"}
        ),
        "login_failed": await http.post(
            "/auth/login", json={"username": "alice", "password": "nope nope nope"}
        ),
    }
    for code, response in cases.items():
        assert response.headers["content-type"] == "application/json", code
        assert response.json()["code"] == code, (code, response.text)
        assert set(response.json()) == {"detail", "code"}, code
        assert response.json()["detail"], code
    assert cases["authentication_required"].status_code == 401
    assert cases["permission_denied"].status_code == 403
    assert cases["body_too_large"].status_code == 413


async def test_a_browser_form_post_still_gets_plain_text(http: httpx.AsyncClient) -> None:
    refused = await http.post(
        "/notes",
        data={"x": "1"},
        headers={"origin": "https://evil.test", "cookie": "a=b", "accept": "text/html"},
    )
    assert refused.status_code == 403 and refused.headers["content-type"].startswith("text/plain")


async def test_a_chunked_body_over_the_limit_is_413_json(http: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 50_000

    response = await http.post("/auth/login", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"


async def test_an_exception_is_a_500_with_the_security_headers_and_no_traceback(
    fundaments: Fundaments,
) -> None:
    app = build(fundaments=fundaments)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internals 1234")

    async with running(app), client(app, accept="application/json") as http:
        response = await http.get("/boom")
    assert response.status_code == 500
    assert response.json() == {"detail": "Internal server error.", "code": "server_error"}
    assert "secret internals" not in response.text and "Traceback" not in response.text
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


# --- OpenAPI ------------------------------------------------------------------------------------
async def test_openapi_declares_the_bearer_and_cookie_schemes_and_each_refusal(
    http: httpx.AsyncClient,
) -> None:
    document = (await http.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["bearer"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearer"]["description"],
    }
    assert (
        schemes["session cookie"]["in"] == "cookie" and schemes["session cookie"]["name"] == "__Host-session"
    )
    notes = document["paths"]["/notes"]["get"]
    assert {"bearer": []} in notes["security"] and {"session cookie": []} in notes["security"]
    login = document["paths"]["/auth/login"]["post"]
    assert "security" not in login  # anonymous
    assert set(login["requestBody"]["content"]) == {"application/json", "application/x-www-form-urlencoded"}
    assert {"401", "413", "422", "429", "503"} <= set(login["responses"])
    me = document["paths"]["/auth/me"]["get"]
    assert "401" in me["responses"] and {"bearer": []} in me["security"]


async def test_a_500_from_outside_the_middleware_still_carries_the_headers(fundaments: Fundaments) -> None:
    """Starlette's ServerErrorMiddleware answers an exception of a middleware added after install
    (outside ours); install's outermost layer adds the headers to that 500 too."""
    app = build(fundaments=fundaments)

    class Broken:
        def __init__(self, app: Any) -> None:
            self.app = app

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                raise RuntimeError("a middleware bug")
            await self.app(scope, receive, send)

    app.add_middleware(Broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False, client=("203.0.113.7", 50000))
    async with running(app), httpx.AsyncClient(transport=transport, base_url=BASE) as http:
        response = await http.get("/notes")
    assert response.status_code == 500 and "a middleware bug" not in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
