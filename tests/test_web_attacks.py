"""Attacks on fundaments.web, each against the real middleware on SQLite and PostgreSQL (issue 14).

Every test here was checked to fail with the protection it names removed (see the commit messages).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Body, Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from fundaments.bootstrap import Fundaments
from fundaments.errors import ConfigurationError, RateLimited, ServiceUnavailable
from fundaments.passwords import HashingBusyError
from fundaments.security import User
from fundaments.web import (
    SecurityMiddleware,
    csrf_token,
    csrf_token_for,
    current_user,
    get_context,
    login,
    logout,
    use_rotated_session,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # app/: the example at the repository root
from app.app import build_app

PASSWORD = "correct horse battery staple"
UA = "Mozilla/5.0 (X11; Linux x86_64) web-attack-test"
ORIGIN = "https://app.test"
LIMIT = 10_000  # max_body_bytes of the test application
JSON = {"accept": "application/json"}
PAGE = {"accept": "text/html,application/xhtml+xml,*/*;q=0.8"}  # what a browser sends for a page


class Ran:
    """Which endpoints ran to their end (a refused request must never get there)."""

    def __init__(self) -> None:
        self.paths: list[str] = []


def build(fundaments: Fundaments, ran: Ran, **options: Any) -> Starlette:
    async def form_page(request: Request) -> JSONResponse:
        return JSONResponse({"csrf": csrf_token(request)})

    async def do_login(request: Request) -> JSONResponse:
        form = await request.form()
        result = await login(request, str(form["username"]), str(form["password"]))
        ran.paths.append("/login")
        return JSONResponse({"ok": bool(result)})

    async def do_logout(request: Request) -> JSONResponse:
        ended = await logout(request)
        ran.paths.append("/logout")
        return JSONResponse({"ended": ended})

    async def me(request: Request) -> JSONResponse:
        user = request.scope["user"]
        return JSONResponse({"user": user.username if user else None})

    async def upload(request: Request) -> JSONResponse:
        body = await request.body()
        ran.paths.append(request.url.path)
        return JSONResponse({"bytes": len(body)})

    async def changed(request: Request) -> JSONResponse:  # any method, any path below
        ran.paths.append(f"{request.method} {request.url.path}")
        return JSONResponse({"ok": True})

    async def boom(_request: Request) -> Response:
        raise RuntimeError("an application bug with a secret-looking value sk_live_123")

    async def busy(_request: Request) -> Response:
        raise HashingBusyError("every hashing worker is busy; retry in a moment")

    async def throttled(_request: Request) -> Response:
        raise RateLimited("too many password checks for this session", retry_after=2.5)

    async def unconfigured(_request: Request) -> Response:
        raise ServiceUnavailable("MASTER_ENCRYPTION_KEY is not set")

    async def started_then_boom(_request: Request) -> Response:
        class Broken(PlainTextResponse):
            async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
                await send({"type": "http.response.start", "status": 200, "headers": []})
                raise RuntimeError("broke mid-response")

        return Broken("")

    api = FastAPI()

    @api.post("/json")
    async def api_json(payload: Annotated[dict[str, Any], Body()]) -> dict[str, int]:
        ran.paths.append("/api/json")
        return {"keys": len(payload)}

    @api.get("/me")
    async def api_me(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"username": user.username}

    @api.post("/password")
    async def api_password(
        request: Request,
        user: Annotated[User, Depends(current_user)],
        change: Annotated[dict[str, str], Body()],
    ) -> dict[str, str | None]:
        ctx = get_context(request)
        rotated = await ctx.security.change_password(
            user.id, change["current"], change["new"], current_token=ctx.token, request_data=ctx.request_data
        )
        await use_rotated_session(request, rotated)
        ran.paths.append("/api/password")
        return {"token": rotated.token if rotated else None}

    options.setdefault("allowed_hosts", ["app.test"])
    options.setdefault("max_body_bytes", LIMIT)
    return Starlette(
        routes=[
            Route("/form", form_page),
            Route("/login", do_login, methods=["POST"]),
            Route("/logout", do_logout, methods=["POST"]),
            Route("/me", me),
            Route("/upload", upload, methods=["POST", "PUT"]),
            Route("/items", changed, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
            Route("/webhook", changed, methods=["POST"]),
            Route("/webhook-x", changed, methods=["POST"]),
            Route("/webhook/{rest:path}", changed, methods=["POST"]),
            Route("/boom", boom, methods=["GET", "POST"]),
            Route("/busy", busy, methods=["GET", "POST"]),
            Route("/unconfigured", unconfigured),
            Route("/throttled", throttled),
            Route("/started-then-boom", started_then_boom),
            Mount("/api", api),
        ],
        middleware=[Middleware(SecurityMiddleware, security=fundaments.security, **options)],
    )


def client(app: Starlette, base_url: str = ORIGIN) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    return httpx.AsyncClient(transport=transport, base_url=base_url, headers={"user-agent": UA})


@pytest.fixture
async def alice(fundaments: Fundaments) -> User:
    return await fundaments.security.register_user("alice", PASSWORD)


@pytest.fixture
def ran() -> Ran:
    return Ran()


@pytest.fixture
async def http(fundaments: Fundaments, ran: Ran) -> AsyncIterator[httpx.AsyncClient]:
    async with client(build(fundaments, ran)) as c:
        yield c


async def login_token(fundaments: Fundaments) -> str:
    result = await fundaments.security.user_login(
        "alice", PASSWORD, {"ip_address": "203.0.113.7", "user_agent": UA}
    )
    assert result and result.session and result.session.token
    return result.session.token


def session_headers(token: str, **extra: str) -> dict[str, str]:
    return {"cookie": f"__Host-session={token}", "origin": ORIGIN, **extra}


def csrf_headers(token: str, **extra: str) -> dict[str, str]:
    return session_headers(token, **{"x-csrf-token": csrf_token_for(token)}, **extra)


def set_cookies(response: httpx.Response) -> dict[str, str]:
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


async def chunks(total: int, size: int = 4096) -> AsyncIterator[bytes]:
    """A request body without Content-Length (chunked): ``total`` bytes in ``size`` pieces."""
    sent = 0
    while sent < total:
        piece = min(size, total - sent)
        sent += piece
        yield b"a" * piece


def assert_security_headers(response: httpx.Response) -> None:
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert "camera=()" in response.headers["permissions-policy"]
    assert response.headers["strict-transport-security"].startswith("max-age=")


# --- 1. every request body is bounded ----------------------------------------------------------
async def test_a_big_login_form_with_the_token_in_the_header_is_413_before_the_app(
    http: httpx.AsyncClient, ran: Ran, alice: User
) -> None:
    """The pen test's 419 MB POST /login: the token in X-CSRF-Token, so no form field to read."""
    presession = (await http.get("/form")).json()["csrf"]
    headers = {"origin": ORIGIN, "cookie": f"__Host-csrf={presession}", "x-csrf-token": presession}
    form = {"username": "alice", "password": PASSWORD, "padding": "x" * (LIMIT * 3)}
    response = await http.post("/login", data=form, headers=headers)
    assert response.status_code == 413
    assert response.text.startswith("Request body too large: the limit is 10000 bytes.")
    assert ran.paths == []  # the login endpoint never ran
    assert_security_headers(response)
    small = await http.post("/login", data={"username": "alice", "password": PASSWORD}, headers=headers)
    assert small.status_code == 200 and ran.paths == ["/login"]


async def test_a_big_bearer_upload_is_413_and_an_api_client_gets_json(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, alice: User
) -> None:
    bearer = {"authorization": f"Bearer {await login_token(fundaments)}"}
    response = await http.post("/upload", content=b"x" * (LIMIT + 1), headers=bearer)
    assert response.status_code == 413 and ran.paths == []
    assert response.json() == {
        "detail": "Request body too large: the limit is 10000 bytes.",
        "code": "body_too_large",
    }
    exact = await http.post("/upload", content=b"x" * LIMIT, headers=bearer)
    assert exact.status_code == 200 and exact.json() == {"bytes": LIMIT}


async def test_a_chunked_body_without_content_length_is_counted_as_it_streams(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, alice: User
) -> None:
    bearer = {"authorization": f"Bearer {await login_token(fundaments)}"}
    response = await http.post("/upload", content=chunks(LIMIT * 5), headers=bearer)
    assert "content-length" not in response.request.headers  # really streamed
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    assert ran.paths == []  # the endpoint's read failed: it never returned
    token = await login_token(fundaments)
    form_field = await http.post(  # the middleware's own form read (token in the body) is bounded too
        "/upload",
        content=chunks(LIMIT * 5),
        headers=session_headers(token, **{"content-type": "application/x-www-form-urlencoded"}),
    )
    assert form_field.status_code == 413 and ran.paths == []
    fits = await http.post("/upload", content=chunks(LIMIT - 10), headers=bearer)
    assert fits.status_code == 200 and fits.json() == {"bytes": LIMIT - 10}


async def test_fastapi_turning_the_failed_read_into_400_still_gives_413(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, alice: User
) -> None:
    bearer = {"authorization": f"Bearer {await login_token(fundaments)}", "content-type": "application/json"}
    response = await http.post("/api/json", content=chunks(LIMIT * 2), headers=bearer)
    assert response.status_code == 413 and response.json()["code"] == "body_too_large"
    assert ran.paths == []


async def test_max_form_bytes_is_still_accepted_as_the_former_name(fundaments: Fundaments, ran: Ran) -> None:
    middleware = SecurityMiddleware(build(fundaments, ran), fundaments.security, max_form_bytes=123)
    assert middleware.max_body_bytes == 123
    assert SecurityMiddleware(build(fundaments, ran), fundaments.security).max_body_bytes == 1_000_000


async def test_a_content_length_over_the_limit_is_refused_without_reading_a_byte(
    fundaments: Fundaments, ran: Ran
) -> None:
    app = build(fundaments, ran)
    read: list[object] = []
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        read.append("receive")
        return {"type": "http.request", "body": b"x" * 100, "more_body": True}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "https", "path": "/upload", "raw_path": b"/upload", "query_string": b"",
        "root_path": "", "client": ("203.0.113.7", 50000), "server": ("app.test", 443),
        "headers": [(b"host", b"app.test"), (b"content-length", b"419000000"), (b"origin", ORIGIN.encode())],
    }  # fmt: skip
    await app(scope, receive, send)
    assert sent[0]["status"] == 413 and (b"connection", b"close") in sent[0]["headers"]
    assert read == [] and ran.paths == []


# --- 2. a 500 carries the security headers -----------------------------------------------------
async def test_an_uncaught_exception_is_a_generic_500_with_the_security_headers(
    http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="fundaments.web.middleware"):
        page = await http.get("/boom", headers=PAGE)
    assert page.status_code == 500 and page.text == "Internal server error.\n"
    assert page.headers["content-type"] == "text/plain; charset=utf-8"
    assert_security_headers(page)
    assert "sk_live" not in page.text
    (record,) = [r for r in caplog.records if r.name == "fundaments.web.middleware"]
    assert record.getMessage() == "unhandled RuntimeError in GET /boom" and record.exc_info is not None
    api = await http.get("/boom", headers=JSON)
    assert api.status_code == 500 and api.json() == {
        "detail": "Internal server error.",
        "code": "server_error",
    }
    assert_security_headers(api)


async def test_an_exception_after_the_response_started_is_re_raised(http: httpx.AsyncClient) -> None:
    with pytest.raises(RuntimeError, match="broke mid-response"):  # the server closes the connection
        await http.get("/started-then-boom")


# --- 3. Permissions-Policy ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        ("GET", "/me", {}),
        ("GET", "/missing", {}),
        ("POST", "/items", {"origin": "https://evil.test"}),  # a refusal
        ("GET", "/boom", {}),  # a 500
    ],
)
async def test_every_response_switches_off_powerful_features(
    http: httpx.AsyncClient, method: str, path: str, headers: dict[str, str]
) -> None:
    response = await http.request(method, path, headers=headers)
    policy = dict(part.split("=", 1) for part in response.headers["permissions-policy"].split(", "))
    for feature in ("camera", "microphone", "geolocation", "payment", "usb", "display-capture"):
        assert policy[feature] == "()", feature
    assert "interest-cohort" not in policy  # retired: Chromium logs an error for unknown features


async def test_the_permissions_policy_can_be_replaced(fundaments: Fundaments, ran: Ran) -> None:
    async with client(build(fundaments, ran, permissions_policy="camera=(self)")) as http:
        assert (await http.get("/me")).headers["permissions-policy"] == "camera=(self)"


# --- 4. trusted hosts, relative redirects ------------------------------------------------------
async def test_an_untrusted_host_is_refused_before_routing_so_no_redirect_names_it(
    http: httpx.AsyncClient,
) -> None:
    response = await http.get("/me/", headers={"host": "evil.example", **PAGE})  # Starlette would redirect
    assert response.status_code == 400 and response.text == "Invalid Host header.\n"
    assert "location" not in response.headers and "set-cookie" not in response.headers
    api = await http.get("/me", headers={"host": "evil.example", **JSON})
    assert api.json() == {"detail": "Invalid Host header.", "code": "host_not_allowed"}
    assert (await http.get("/me/", headers={"host": "app.test"})).status_code == 307


async def test_with_any_host_allowed_redirects_to_the_request_host_are_relative(
    fundaments: Fundaments, ran: Ran
) -> None:
    async with client(build(fundaments, ran, allowed_hosts=["*"])) as http:
        response = await http.get("/me/?next=1", headers={"host": "evil.example"})
        assert response.status_code == 307 and response.headers["location"] == "/me?next=1"
        ported = await http.get("/me/", headers={"host": "evil.example:8443"})
        assert ported.headers["location"] == "/me"


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        (b"http://app.test/a/b?c=d#e", b"/a/b?c=d#e"),
        (b"https://APP.test", b"/"),
        (b"//app.test/x", b"/x"),
        (b"https://app.test//evil.example/x", b"/evil.example/x"),  # never protocol-relative
        (b"https://elsewhere.example/x", b"https://elsewhere.example/x"),  # another site: kept
        (b"/already/relative", b"/already/relative"),
    ],
)
def test_location_rewriting(location: bytes, expected: bytes) -> None:
    from fundaments.web.middleware import _relative_location

    assert _relative_location(location, "app.test") == expected


@pytest.mark.parametrize(
    ("host", "allowed"),
    [
        ("localhost", True),
        ("localhost:8000", True),
        ("127.0.0.1:8000", True),
        ("[::1]:8000", True),
        ("console.localhost", True),
        ("LOCALHOST", True),
        ("localhost.evil.example", False),
        ("127.0.0.1.nip.io", False),
        ("evil.example", False),
        ("", False),
    ],
)
async def test_the_default_allows_loopback_names_only(
    fundaments: Fundaments, ran: Ran, host: str, allowed: bool
) -> None:
    app = build(fundaments, ran)
    del app.user_middleware[0].kwargs["allowed_hosts"]  # the middleware's own default
    async with client(app, base_url="http://localhost") as http:
        response = await http.get("/me", headers={"host": host})
    assert (response.status_code == 200) is allowed, response.status_code


async def test_wildcard_entries_match_subdomains_only(fundaments: Fundaments, ran: Ran) -> None:
    async with client(build(fundaments, ran, allowed_hosts=["*.app.test", "[2001:db8::1]"])) as http:
        assert (await http.get("/me", headers={"host": "eu.app.test"})).status_code == 200
        assert (await http.get("/me", headers={"host": "[2001:db8::1]:443"})).status_code == 200
        assert (await http.get("/me", headers={"host": "app.test"})).status_code == 400
        assert (await http.get("/me", headers={"host": "evilapp.test"})).status_code == 400


def test_allowed_hosts_setting_parses_and_explains(tmp_path: Path) -> None:
    from fundaments.config import load_settings

    env = tmp_path / "absent.env"
    assert load_settings(env_file=env).allowed_hosts == ["localhost", "127.0.0.1", "::1", "*.localhost"]
    parsed = load_settings(env_file=env, allowed_hosts="App.Example, [::1], *.example.com")
    assert parsed.allowed_hosts == ["app.example", "::1", "*.example.com"]
    for bad in ("https://app.example", "app.example:8000", "app.example/path", "a b"):
        with pytest.raises(ConfigurationError, match=r"ALLOWED_HOSTS entry .* is not a host name"):
            load_settings(env_file=env, allowed_hosts=bad)


async def test_the_console_never_redirects_to_a_forged_host(fundaments: Fundaments, tmp_path: Path) -> None:
    """The pen test's finding on `python main.py`: GET /login/ with Host: evil.example."""
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    try:
        async with client(app, base_url="http://127.0.0.1:8000") as http:
            forged = await http.get("/login/", headers={"host": "evil.example"})
            assert forged.status_code == 400 and "evil.example" not in forged.headers.get("location", "")
            own = await http.get("/login/")
            assert own.status_code == 307 and own.headers["location"] == "/login"
    finally:
        app.state.secrets.close()


# --- 5. only a validated bearer token switches CSRF off ----------------------------------------
@pytest.mark.parametrize(
    "authorization", ["Bearer junk", "Bearer ", "bearer " + "A" * 43, "Bearer " + "x" * 500]
)
async def test_a_junk_bearer_header_is_401_and_does_not_switch_csrf_off(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, alice: User, authorization: str
) -> None:
    token = await login_token(fundaments)
    # A live cookie, no Origin, no CSRF token: only the Authorization header would let this through.
    headers = {"cookie": f"__Host-session={token}", "authorization": authorization}
    response = await http.post("/items", headers=headers)
    assert response.status_code == 401 and ran.paths == []
    assert response.json() == {
        "detail": "The bearer token is not a live session; log in again for a new one.",
        "code": "session_invalid",
    }
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    assert "set-cookie" not in response.headers


async def test_a_bearer_of_a_disabled_user_is_401(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, alice: User
) -> None:
    token = await login_token(fundaments)
    await fundaments.security.disable_user(alice.id)
    response = await http.put("/items", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 401 and ran.paths == []


async def test_a_logout_with_a_junk_bearer_leaves_the_live_cookie_session_alone(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, alice: User
) -> None:
    token = await login_token(fundaments)
    response = await http.post("/logout", headers=csrf_headers(token, authorization="Bearer junk"))
    assert response.status_code == 401 and ran.paths == []
    assert "set-cookie" not in response.headers  # the cookie is not cleared
    assert (await http.get("/me", headers=session_headers(token))).json() == {"user": "alice"}


async def test_a_bearer_logout_ends_that_session_and_not_the_browser_cookie(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    cookie_token, bearer_token = await login_token(fundaments), await login_token(fundaments)
    response = await http.post(
        "/logout",
        headers={"cookie": f"__Host-session={cookie_token}", "authorization": f"Bearer {bearer_token}"},
    )
    assert response.json() == {"ended": True}
    assert "set-cookie" not in response.headers
    assert (await http.get("/me", headers=session_headers(cookie_token))).json() == {"user": "alice"}
    assert (await http.get("/api/me", headers={"authorization": f"Bearer {bearer_token}"})).status_code == 401


async def test_a_csrf_exempt_webhook_may_use_its_own_authorization_scheme(
    fundaments: Fundaments, ran: Ran
) -> None:
    async with client(build(fundaments, ran, csrf_exempt_paths=["/webhook"])) as http:
        hook = await http.post("/webhook", headers={"authorization": "Bearer whsec_provider_secret"})
    assert hook.status_code == 200 and ran.paths == ["POST /webhook"]


# --- 6. CSRF on every unsafe method; exempt paths are exact -------------------------------------
@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
async def test_every_unsafe_method_needs_same_origin_and_the_token(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, alice: User, method: str
) -> None:
    token = await login_token(fundaments)
    missing = await http.request(method, "/items", headers=session_headers(token))
    assert missing.status_code == 403 and "CSRF token missing" in missing.text
    wrong = await http.request(method, "/items", headers=session_headers(token, **{"x-csrf-token": "0" * 64}))
    assert wrong.status_code == 403 and "CSRF token invalid" in wrong.text
    cross = await http.request(
        method, "/items", headers=csrf_headers(token) | {"origin": "https://evil.test"}
    )
    assert cross.status_code == 403 and "cross-origin" in cross.text
    assert ran.paths == []
    good = await http.request(method, "/items", headers=csrf_headers(token))
    assert good.status_code == 200 and ran.paths == [f"{method} /items"]


@pytest.mark.parametrize(
    "path", ["/webhook-x", "/webhook/", "/webhook/x", "/webhook/%2e%2e/webhook-x", "/WEBHOOK"]
)
async def test_a_csrf_exempt_path_is_exact_and_its_neighbours_are_checked(
    fundaments: Fundaments, ran: Ran, alice: User, path: str
) -> None:
    token = await login_token(fundaments)
    async with client(build(fundaments, ran, csrf_exempt_paths=["/webhook"])) as http:
        neighbour = await http.post(
            path, headers={"cookie": f"__Host-session={token}"}
        )  # no Origin, no token
        assert neighbour.status_code == 403 and "cross-origin" in neighbour.text and ran.paths == []
        hook = await http.post("/webhook", headers={"cookie": f"__Host-session={token}"})
        assert hook.status_code == 200 and ran.paths == ["POST /webhook"]


# --- 7. must_change_password on every surface ---------------------------------------------------
NEW_PASSWORD = "a much better passphrase now"


@pytest.fixture
async def forced(fundaments: Fundaments) -> User:
    """An account an administrator created with a temporary password."""
    return await fundaments.security.register_user("alice", PASSWORD, must_change_password=True)


async def test_a_bearer_client_that_must_change_the_password_reaches_only_that_and_logout(
    fundaments: Fundaments, ran: Ran, forced: User
) -> None:
    async with client(build(fundaments, ran, password_change_path="/api/password")) as http:
        bearer = {"authorization": f"Bearer {await login_token(fundaments)}"}
        for method, path in (("GET", "/api/me"), ("GET", "/me"), ("POST", "/items"), ("DELETE", "/items")):
            refused = await http.request(method, path, headers=bearer)
            assert refused.status_code == 403, path
            assert refused.json() == {
                "detail": "Change your password first; until then only that and logging out work.",
                "code": "password_change_required",
            }
        assert ran.paths == []
        changed = await http.post(
            "/api/password", json={"current": PASSWORD, "new": NEW_PASSWORD}, headers=bearer
        )
        assert changed.status_code == 200 and ran.paths == ["/api/password"]
        rotated = {"authorization": f"Bearer {changed.json()['token']}"}
        assert (await http.get("/api/me", headers=rotated)).json() == {"username": "alice"}
        assert (await http.post("/items", headers=rotated)).status_code == 200


async def test_a_user_who_must_change_the_password_may_log_out(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, forced: User
) -> None:
    token = await login_token(fundaments)
    response = await http.post("/logout", headers={"authorization": f"Bearer {token}"})
    assert response.json() == {"ended": True}
    assert (await http.get("/api/me", headers={"authorization": f"Bearer {token}"})).status_code == 401


async def test_a_browser_is_sent_to_the_password_page_and_its_posts_are_refused(
    fundaments: Fundaments, http: httpx.AsyncClient, ran: Ran, forced: User
) -> None:
    token = await login_token(fundaments)
    page = await http.get("/me", headers=session_headers(token))
    assert page.status_code == 303 and page.headers["location"] == "/password"
    assert_security_headers(page)
    posted = await http.post("/items", headers=csrf_headers(token))  # not a form post: JSON
    assert posted.status_code == 403 and posted.json()["code"] == "password_change_required"
    assert ran.paths == []


# --- 8. a full hashing pool is 503 with Retry-After, never a 500 --------------------------------
async def test_hashing_busy_is_503_with_retry_after(http: httpx.AsyncClient) -> None:
    page = await http.get("/busy", headers=PAGE)
    assert page.status_code == 503 and page.headers["retry-after"] == "1"
    assert page.text == "The service is busy; retry in a moment.\n"
    assert_security_headers(page)
    api = await http.get("/busy", headers=JSON)
    assert api.status_code == 503 and api.headers["retry-after"] == "1"
    assert api.json() == {"detail": "The service is busy; retry in a moment.", "code": "service_busy"}


async def test_any_service_unavailable_is_503_without_its_message(http: httpx.AsyncClient) -> None:
    response = await http.get("/unconfigured", headers=JSON)
    assert response.status_code == 503 and response.json()["code"] == "service_busy"
    assert "MASTER_ENCRYPTION_KEY" not in response.text  # configuration is for the log


async def test_rate_limited_is_429_with_the_retry_after_rounded_up(http: httpx.AsyncClient) -> None:
    response = await http.get("/throttled", headers=JSON)
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert response.json() == {"detail": "Too many requests; retry after 3 s.", "code": "rate_limited"}
    assert "ratelimit" not in response.headers  # a throttle without a decision: no RateLimit headers


# --- 9. session fixation: a token planted in the browser before login is dead after it ---------
class PlantedBrowser:
    """A browser whose cookies an attacker set before the victim logs in (a sibling subdomain, a
    shared machine, an injected Set-Cookie): every cookie is sent and replaced as a browser would."""

    def __init__(self, app: object, base_url: str, cookies: dict[str, str]) -> None:
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))  # type: ignore[arg-type]
        self.http = httpx.AsyncClient(transport=transport, base_url=base_url, headers={"user-agent": UA})
        self.origin = base_url
        self.cookies = dict(cookies)

    async def request(self, method: str, path: str, **form: str) -> httpx.Response:
        headers = {"cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}
        if method != "GET":
            headers["origin"] = self.origin
        response = await self.http.request(method, path, data=form or None, headers=headers)
        for line in response.headers.get_list("set-cookie"):
            name, _, rest = line.partition("=")
            value = rest.split(";", 1)[0]
            if "Max-Age=0" in line:
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response

    async def aclose(self) -> None:
        await self.http.aclose()


async def test_console_login_kills_a_planted_session_cookie_and_csrf_cookie(
    fundaments: Fundaments, tmp_path: Path
) -> None:
    """On the real console: the attacker knows both planted values; after the victim logs in,
    neither is worth anything and the victim's session cookie is one the attacker never saw."""
    await fundaments.security.register_user("victim", PASSWORD)
    mallory = await fundaments.security.register_user("mallory", "an attacker's own passphrase")
    mallory_login = await fundaments.security.user_login(
        "mallory", "an attacker's own passphrase", {"ip_address": "203.0.113.7", "user_agent": UA}
    )
    assert mallory_login.session is not None and mallory_login.session.token is not None
    planted_csrf = "attacker-chosen-csrf-value-0123456789abcdef"
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    for planted_session in ("attacker-chosen-session-id-0123456789abcdef", mallory_login.session.token):
        browser = PlantedBrowser(app, "https://localhost", {"__Host-csrf": planted_csrf})
        await browser.request("GET", "/login")  # the victim opens the login page ...
        browser.cookies["__Host-session"] = planted_session  # ... and the attacker plants a session
        form_csrf = (
            planted_csrf if planted_session.startswith("attacker") else csrf_token_for(planted_session)
        )
        landed = await browser.request(
            "POST", "/login", username="victim", password=PASSWORD, csrf_token=form_csrf
        )
        assert landed.status_code == 303 and landed.headers["location"] == "/dashboard"
        victim_token = browser.cookies["__Host-session"]
        assert victim_token not in (planted_session, planted_csrf)
        assert "Welcome, victim" in (await browser.request("GET", "/dashboard")).text
        # The planted token is dead: no page of anyone, a bearer request 401.
        for planted in (planted_session, planted_csrf):
            assert (
                await fundaments.security.validate_session(
                    planted, {"ip_address": "203.0.113.7", "user_agent": UA}
                )
                is None
            )
            attacker = PlantedBrowser(app, "https://localhost", {"__Host-session": planted})
            assert (await attacker.request("GET", "/dashboard")).headers["location"] == "/login"
            await attacker.aclose()
        # The planted pre-session CSRF value no longer passes for the victim's session.
        forged = await browser.request("POST", "/sessions/revoke-others", csrf_token=planted_csrf)
        assert forged.status_code == 403 and "CSRF token invalid" in forged.text
        await browser.aclose()
    app.state.secrets.close()
    assert await fundaments.security.list_sessions(mallory.id) == []  # the planted one was ended


async def test_a_planted_live_session_is_ended_by_the_login_helper(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    """The same through fundaments.web.login on a plain Starlette app, with a bearer check."""
    planted = await login_token(fundaments)  # a live session the attacker holds (their own login)
    response = await http.post(
        "/login", data={"username": "alice", "password": PASSWORD}, headers=csrf_headers(planted)
    )
    fresh = set_cookies(response)["__Host-session"].split(";", 1)[0].split("=", 1)[1]
    assert response.json() == {"ok": True} and fresh != planted
    assert (await http.get("/api/me", headers={"authorization": f"Bearer {planted}"})).status_code == 401
    assert (await http.get("/api/me", headers={"authorization": f"Bearer {fresh}"})).json() == {
        "username": "alice"
    }


async def test_the_consoles_login_refuses_a_big_form_with_the_token_in_the_header(
    fundaments: Fundaments, tmp_path: Path
) -> None:
    """The pen test's request against `python main.py`, at 2 MB instead of 419 MB."""
    await fundaments.security.register_user("victim", PASSWORD)
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    browser = PlantedBrowser(app, "https://localhost", {})
    try:
        await browser.request("GET", "/login")
        token = browser.cookies["__Host-csrf"]
        response = await browser.http.post(
            "/login",
            data={"username": "victim", "password": PASSWORD, "padding": "x" * 2_000_000},
            headers={"origin": "https://localhost", "cookie": f"__Host-csrf={token}", "x-csrf-token": token},
        )
        assert response.status_code == 413 and "__Host-session" not in response.headers.get("set-cookie", "")
        assert (
            await fundaments.security.list_sessions(
                (await fundaments.security.get_user_by_username("victim")).id
            )
            == []
        )
    finally:
        await browser.aclose()
        app.state.secrets.close()
