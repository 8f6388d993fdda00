"""fundaments.web over ASGI (httpx, in process): cookies, bearer tokens, CSRF, headers, client IP, guards.

Every test runs on SQLite and on PostgreSQL (the ``fundaments`` fixture).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from fundaments.bootstrap import Fundaments
from fundaments.security import User
from fundaments.web import (
    DEFAULT_PERMISSIONS_POLICY,
    SecurityMiddleware,
    csrf_token,
    csrf_token_for,
    current_user,
    get_context,
    login,
    login_required,
    logout,
    permission_required,
    require_permission,
)

PASSWORD = "correct horse battery staple"
UA = "Mozilla/5.0 (X11; Linux x86_64) web-test"
ORIGIN = "https://app.test"


def build(fundaments: Fundaments, **options: Any) -> Starlette:
    async def me(request: Request) -> JSONResponse:
        ctx = get_context(request)
        return JSONResponse(
            {
                "user": ctx.user.username if ctx.user else None,
                "auth": ctx.auth,
                "client_ip": ctx.client_ip,
                "scope_user": request.scope["user"].username if request.scope["user"] else None,
            }
        )

    async def form_page(request: Request) -> JSONResponse:
        return JSONResponse({"csrf": csrf_token(request)})

    async def do_login(request: Request) -> JSONResponse:
        form = await request.form()
        result = await login(request, str(form["username"]), str(form["password"]))
        return JSONResponse({"ok": bool(result), "csrf": csrf_token(request) if result else None})

    async def do_logout(request: Request) -> JSONResponse:
        return JSONResponse({"ended": await logout(request)})

    async def echo(request: Request) -> JSONResponse:
        form = await request.form()
        return JSONResponse({"value": form.get("value"), "user": request.scope["user"].username})

    @login_required
    async def private(request: Request) -> Response:
        return JSONResponse({"private": True})

    @permission_required("reports:read")
    async def reports(request: Request) -> Response:
        return JSONResponse({"reports": []})

    api = FastAPI()

    @api.get("/me")
    async def api_me(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"username": user.username}

    @api.get("/reports")
    async def api_reports(
        user: Annotated[User, Depends(require_permission("reports:read"))],
    ) -> dict[str, str]:
        return {"reader": user.username}

    @api.post("/items")
    async def api_items(user: Annotated[User, Depends(current_user)]) -> dict[str, str]:
        return {"created_by": user.username}

    options.setdefault("allowed_origins", [])
    options.setdefault("allowed_hosts", ["app.test", "localhost", "127.0.0.1", "::1"])
    return Starlette(
        routes=[
            Route("/me", me),
            Route("/form", form_page),
            Route("/login", do_login, methods=["POST"]),
            Route("/logout", do_logout, methods=["POST"]),
            Route("/echo", echo, methods=["POST"]),
            Route("/private", private),
            Route("/reports", reports),
            Mount("/api", api),
        ],
        middleware=[Middleware(SecurityMiddleware, security=fundaments.security, **options)],
    )


def client(
    app: Starlette, ip: str = "203.0.113.7", base_url: str = ORIGIN, port: int = 50000
) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, port))
    return httpx.AsyncClient(transport=transport, base_url=base_url, headers={"user-agent": UA})


def set_cookies(response: httpx.Response) -> dict[str, str]:
    """name -> the whole Set-Cookie line."""
    return {line.split("=", 1)[0]: line for line in response.headers.get_list("set-cookie")}


def cookie_value(line: str) -> str:
    return line.split(";", 1)[0].split("=", 1)[1]


@pytest.fixture
async def alice(fundaments: Fundaments) -> User:
    return await fundaments.security.register_user("alice", PASSWORD)


@pytest.fixture
async def app(fundaments: Fundaments) -> Starlette:
    return build(fundaments)


@pytest.fixture
async def http(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    async with client(app) as c:
        yield c


async def login_token(fundaments: Fundaments, ip: str = "203.0.113.7") -> str:
    result = await fundaments.security.user_login("alice", PASSWORD, {"ip_address": ip, "user_agent": UA})
    assert result and result.session and result.session.token
    return result.session.token


def with_session(token: str, **extra: str) -> dict[str, str]:
    return {"cookie": f"__Host-session={token}", **extra}


def csrf_headers(token: str) -> dict[str, str]:
    return with_session(token, origin=ORIGIN, **{"x-csrf-token": csrf_token_for(token)})


# --- the session cookie -------------------------------------------------------------------------
async def test_no_cookie_is_anonymous_and_guards_answer_401(http: httpx.AsyncClient) -> None:
    body = (await http.get("/me")).json()
    assert body == {"user": None, "auth": None, "client_ip": "203.0.113.7", "scope_user": None}
    private = await http.get("/private")
    needed = "Authentication required: send Authorization: Bearer <token> or the session cookie."
    assert private.status_code == 401
    assert private.json() == {"detail": needed, "code": "authentication_required"}
    assert private.headers["www-authenticate"] == "Bearer"
    api = await http.get("/api/me")  # FastAPI's own handler (install() adds the code: test_web_fastapi)
    assert api.status_code == 401 and api.json() == {"detail": needed}


async def test_login_form_sets_a_host_prefixed_secure_httponly_lax_cookie(
    http: httpx.AsyncClient, alice: User
) -> None:
    page = await http.get("/form")
    csrf_line = set_cookies(page)["__Host-csrf"]
    assert csrf_line.endswith("; Path=/; HttpOnly; SameSite=Lax; Secure")
    presession = page.json()["csrf"]
    assert cookie_value(csrf_line) == presession
    response = await http.post(
        "/login",
        data={"username": "alice", "password": PASSWORD, "csrf_token": presession},
        headers={"origin": ORIGIN, "cookie": f"__Host-csrf={presession}"},
    )
    assert response.status_code == 200 and response.json()["ok"] is True
    cookies = set_cookies(response)
    session_line = cookies["__Host-session"]
    assert session_line.endswith("; Path=/; HttpOnly; SameSite=Lax; Secure")
    assert "Domain" not in session_line and "Max-Age" not in session_line  # host-only, browser session
    assert "Max-Age=31536000" in cookies["__Host-device"] and "Secure" in cookies["__Host-device"]
    token = cookie_value(session_line)
    assert response.json()["csrf"] == csrf_token_for(token)  # the next page's token follows the session
    assert response.headers["cache-control"] == "no-store"
    me = await http.get("/me", headers=with_session(token))
    assert (
        me.json()["user"] == "alice" and me.json()["auth"] == "cookie" and me.json()["scope_user"] == "alice"
    )
    assert me.headers["cache-control"] == "no-store"


async def test_wrong_password_sets_no_session_cookie(http: httpx.AsyncClient, alice: User) -> None:
    presession = (await http.get("/form")).json()["csrf"]
    response = await http.post(
        "/login",
        data={"username": "alice", "password": "wrong password!", "csrf_token": presession},
        headers={"origin": ORIGIN, "cookie": f"__Host-csrf={presession}"},
    )
    assert response.json()["ok"] is False
    assert "__Host-session" not in set_cookies(response)


async def test_tampered_cookie_is_anonymous_and_cleared(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    token = await login_token(fundaments)
    tampered = token[:-2] + ("AA" if not token.endswith("AA") else "BB")
    for value in (tampered, "x" * 5000, "not a token"):
        response = await http.get("/private", headers={"cookie": f"__Host-session={value}"})
        assert response.status_code == 401
        cleared = set_cookies(response)["__Host-session"]
        assert cleared.startswith("__Host-session=;") and "Max-Age=0" in cleared
    assert (await http.get("/private", headers=with_session(token))).status_code == 200


async def test_cookie_replayed_from_another_ip_is_refused_and_the_session_revoked(
    fundaments: Fundaments, app: Starlette, alice: User
) -> None:
    token = await login_token(fundaments, ip="203.0.113.7")
    async with client(app, ip="198.51.100.66") as thief:
        stolen = await thief.get("/private", headers=with_session(token))
    assert stolen.status_code == 401
    async with client(app, ip="203.0.113.7") as owner:  # strict binding revoked it (hijack suspected)
        assert (await owner.get("/private", headers=with_session(token))).status_code == 401
    events = await fundaments.security.audit_events(kind="session.hijack_suspected")
    assert events


async def test_privilege_change_rotates_the_session_cookie(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User, clock: Any
) -> None:
    await fundaments.security.create_role("analyst", permissions=["reports:read"])
    token = await login_token(fundaments)
    await fundaments.security.grant_role(alice.id, "analyst")
    response = await http.get("/reports", headers=with_session(token))
    assert response.status_code == 200
    new_line = set_cookies(response)["__Host-session"]
    new_token = cookie_value(new_line)
    assert new_token != token and new_line.endswith("; Path=/; HttpOnly; SameSite=Lax; Secure")
    # A request in flight with the old cookie (SESSION_ROTATION_GRACE) gets the same new one.
    late = await http.get("/private", headers=with_session(token))
    assert late.status_code == 200 and cookie_value(set_cookies(late)["__Host-session"]) == new_token
    clock.advance(fundaments.settings.session_rotation_grace)
    assert (await http.get("/private", headers=with_session(token))).status_code == 401  # old one dead
    again = await http.get("/private", headers=with_session(new_token))
    assert again.status_code == 200 and "__Host-session" not in set_cookies(again)


async def test_logout_ends_the_session_and_clears_the_cookie(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    token = await login_token(fundaments)
    response = await http.post("/logout", headers=csrf_headers(token))
    assert response.json() == {"ended": True}
    assert "Max-Age=0" in set_cookies(response)["__Host-session"]
    assert (await http.get("/private", headers=with_session(token))).status_code == 401


async def test_login_over_an_existing_session_ends_the_old_one(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    old = await login_token(fundaments)
    response = await http.post(
        "/login", data={"username": "alice", "password": PASSWORD}, headers=csrf_headers(old)
    )
    new = cookie_value(set_cookies(response)["__Host-session"])
    assert new != old
    assert (await http.get("/private", headers=with_session(old))).status_code == 401
    assert (await http.get("/private", headers=with_session(new))).status_code == 200


async def test_disabled_user_cookie_stops_working(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    token = await login_token(fundaments)
    await fundaments.security.disable_user(alice.id)
    assert (await http.get("/private", headers=with_session(token))).status_code == 401


# --- CSRF ---------------------------------------------------------------------------------------
async def test_csrf_token_in_form_field_or_header_passes_and_the_body_still_reaches_the_app(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    token = await login_token(fundaments)
    by_field = await http.post(
        "/echo",
        data={"value": "hello", "csrf_token": csrf_token_for(token)},
        headers=with_session(token, origin=ORIGIN),
    )
    assert by_field.status_code == 200 and by_field.json() == {"value": "hello", "user": "alice"}
    by_header = await http.post("/echo", data={"value": "multi"}, headers=csrf_headers(token))
    assert by_header.json()["value"] == "multi"
    multipart = await http.post(
        "/echo",
        data={"value": "parts", "csrf_token": csrf_token_for(token)},
        files={"f": ("a.txt", b"abc")},
        headers=with_session(token, origin=ORIGIN),
    )
    assert multipart.status_code == 200 and multipart.json()["value"] == "parts"


@pytest.mark.parametrize(
    ("case", "expect"),
    [
        ("missing", "CSRF token missing"),
        ("wrong", "CSRF token invalid"),
        ("other session's", "CSRF token invalid"),
        ("cross-origin", "cross-origin request refused"),
        ("null origin", "cross-origin request refused"),
        ("no origin or referer", "cross-origin request refused"),
        ("http origin for https site", "cross-origin request refused"),
    ],
)
async def test_csrf_failures_are_refused_with_403(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User, case: str, expect: str
) -> None:
    token = await login_token(fundaments)
    good = csrf_token_for(token)
    headers = with_session(token, origin=ORIGIN)
    data = {"value": "x", "csrf_token": good}
    if case == "missing":
        del data["csrf_token"]
    elif case == "wrong":
        data["csrf_token"] = "0" * 64
    elif case == "other session's":
        data["csrf_token"] = csrf_token_for(await login_token(fundaments))
    elif case == "cross-origin":
        headers["origin"] = "https://evil.test"
    elif case == "null origin":
        headers["origin"] = "null"
    elif case == "no origin or referer":
        del headers["origin"]
    elif case == "http origin for https site":
        headers["origin"] = "http://app.test"
    response = await http.post("/echo", data=data, headers=headers)
    assert response.status_code == 403
    assert expect in response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]


async def test_same_origin_referer_stands_in_for_a_missing_origin(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    token = await login_token(fundaments)
    headers = with_session(
        token, referer=f"{ORIGIN}/settings?tab=1", **{"x-csrf-token": csrf_token_for(token)}
    )
    assert (await http.post("/echo", data={"value": "r"}, headers=headers)).status_code == 200
    headers["referer"] = "https://evil.test/app.test"
    assert (await http.post("/echo", data={"value": "r"}, headers=headers)).status_code == 403


async def test_login_form_needs_the_presession_token(http: httpx.AsyncClient, alice: User) -> None:
    form = {"username": "alice", "password": PASSWORD}
    no_cookie = await http.post("/login", data={**form, "csrf_token": "abc"}, headers={"origin": ORIGIN})
    assert no_cookie.status_code == 403
    presession = (await http.get("/form")).json()["csrf"]
    mismatch = await http.post(
        "/login",
        data={**form, "csrf_token": "forged"},
        headers={"origin": ORIGIN, "cookie": f"__Host-csrf={presession}"},
    )
    assert mismatch.status_code == 403
    cross = await http.post(
        "/login",
        data={**form, "csrf_token": presession},
        headers={"origin": "https://evil.test", "cookie": f"__Host-csrf={presession}"},
    )
    assert cross.status_code == 403


async def test_dead_session_cookie_does_not_pass_csrf_with_its_old_token(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    token = await login_token(fundaments)
    await fundaments.security.user_logout(token)
    response = await http.post("/echo", data={"value": "x"}, headers=csrf_headers(token))
    assert response.status_code == 403


async def test_oversized_form_is_refused_before_the_app(fundaments: Fundaments, alice: User) -> None:
    app = build(fundaments, max_form_bytes=1000)
    token = await login_token(fundaments)
    async with client(app) as http:
        response = await http.post(
            "/echo", data={"value": "x" * 5000}, headers=with_session(token, origin=ORIGIN)
        )
    assert response.status_code == 413


async def test_exempt_path_skips_csrf(fundaments: Fundaments, alice: User) -> None:
    app = build(fundaments, csrf_exempt_paths=["/echo"])
    token = await login_token(fundaments)
    async with client(app) as http:
        response = await http.post("/echo", data={"value": "hook"}, headers=with_session(token))
    assert response.status_code == 200


async def test_allowed_origins_are_accepted(fundaments: Fundaments, alice: User) -> None:
    app = build(fundaments, allowed_origins=["https://admin.app.test/"])
    token = await login_token(fundaments)
    headers = csrf_headers(token) | {"origin": "https://admin.app.test"}
    async with client(app) as http:
        assert (await http.post("/echo", data={"value": "o"}, headers=headers)).status_code == 200


# --- headers ------------------------------------------------------------------------------------
EVERY_RESPONSE = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "x-frame-options": "DENY",
    "cross-origin-opener-policy": "same-origin",
    "permissions-policy": DEFAULT_PERMISSIONS_POLICY,
}


@pytest.mark.parametrize("path", ["/me", "/api/me", "/does-not-exist", "/form"])
async def test_every_response_carries_the_security_headers(http: httpx.AsyncClient, path: str) -> None:
    response = await http.get(path)
    for name, value in EVERY_RESPONSE.items():
        assert response.headers[name] == value
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'none'" in csp and "base-uri 'none'" in csp and "form-action 'self'" in csp
    assert response.headers["strict-transport-security"] == "max-age=63072000; includeSubDomains"


async def test_no_hsts_over_plain_http_and_anonymous_pages_may_be_cached(app: Starlette) -> None:
    async with client(app, base_url="http://app.test") as http:
        response = await http.get("/me")
    assert "strict-transport-security" not in response.headers
    assert "cache-control" not in response.headers
    assert response.headers["x-content-type-options"] == "nosniff"


# --- bearer tokens ------------------------------------------------------------------------------
async def test_bearer_token_authenticates_and_needs_no_csrf(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    token = await login_token(fundaments)
    bearer = {"authorization": f"Bearer {token}"}
    me = await http.get("/api/me", headers=bearer)
    assert me.status_code == 200 and me.json() == {"username": "alice"}
    assert me.headers["cache-control"] == "no-store"
    assert (await http.get("/me", headers=bearer)).json()["auth"] == "bearer"
    created = await http.post("/api/items", headers=bearer)  # no Origin, no CSRF token
    assert created.status_code == 200 and created.json() == {"created_by": "alice"}
    assert "set-cookie" not in created.headers


async def test_invalid_bearer_token_is_401_and_sets_no_cookie(http: httpx.AsyncClient, alice: User) -> None:
    for value in ("Bearer nonsense", "Bearer ", "Bearer " + "A" * 1000):
        response = await http.post("/api/items", headers={"authorization": value})
        assert response.status_code == 401
        assert "set-cookie" not in response.headers


async def test_bearer_token_rotation_is_returned_in_a_header(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    await fundaments.security.create_role("analyst", permissions=["reports:read"])
    token = await login_token(fundaments)
    await fundaments.security.grant_role(alice.id, "analyst")
    response = await http.get("/api/reports", headers={"authorization": f"Bearer {token}"})
    assert response.status_code == 200
    new = response.headers["x-session-token"]
    assert new != token and "set-cookie" not in response.headers
    assert (await http.get("/api/me", headers={"authorization": f"Bearer {new}"})).status_code == 200


async def test_bearer_from_another_network_is_audited_and_from_another_client_refused(
    fundaments: Fundaments, app: Starlette, alice: User
) -> None:
    """SESSION_BINDING_BEARER=agent: a phone changes networks all day (the IP change is audited);
    a token replayed by another program (another User-Agent) is a theft and kills the session."""
    token = await login_token(fundaments, ip="203.0.113.7")
    async with client(app, ip="198.51.100.66") as roaming:
        moved = await roaming.get("/api/me", headers={"authorization": f"Bearer {token}"})
        assert moved.status_code == 200
        (event,) = await fundaments.security.audit_events(kind="session.hijack_suspected")
        assert event.details["action"] == "allowed" and event.details["mismatch"] == ["ip_address"]
        stolen = await roaming.get(
            "/api/me", headers={"authorization": f"Bearer {token}", "user-agent": "curl/8"}
        )
        assert stolen.status_code == 401
        after = await roaming.get("/api/me", headers={"authorization": f"Bearer {token}"})
        assert after.status_code == 401  # revoked for good


async def test_a_cookie_from_another_ip_is_still_refused(
    fundaments: Fundaments, app: Starlette, alice: User
) -> None:
    token = await login_token(fundaments, ip="203.0.113.7")
    async with client(app, ip="198.51.100.66") as thief:
        response = await thief.get("/me", headers=with_session(token))
    assert response.json()["user"] is None  # SESSION_BINDING=strict for cookies


# --- client IP and proxies ----------------------------------------------------------------------
async def test_untrusted_peer_forwarded_for_is_ignored(fundaments: Fundaments) -> None:
    app = build(fundaments, trusted_proxies=["10.0.0.0/8"])
    async with client(app, ip="198.51.100.20", base_url="http://app.test") as http:
        response = await http.get("/me", headers={"x-forwarded-for": "1.2.3.4", "x-forwarded-proto": "https"})
    assert response.json()["client_ip"] == "198.51.100.20"
    assert "strict-transport-security" not in response.headers  # the forged proto did not count


async def test_no_trusted_proxies_means_forwarded_for_is_never_trusted(fundaments: Fundaments) -> None:
    async with client(build(fundaments), ip="127.0.0.1") as http:
        response = await http.get("/me", headers={"x-forwarded-for": "1.2.3.4"})
    assert response.json()["client_ip"] == "127.0.0.1"


async def test_trusted_proxy_forwarded_for_and_proto_are_used(fundaments: Fundaments) -> None:
    app = build(fundaments, trusted_proxies=["10.0.0.0/8", "192.0.2.1"])
    async with client(app, ip="10.1.2.3", base_url="http://app.test") as http:
        # The client forged the left part; the rightmost untrusted hop is the real client.
        response = await http.get(
            "/me",
            headers={"x-forwarded-for": "6.6.6.6, 198.51.100.9, 10.9.9.9", "x-forwarded-proto": "https"},
        )
    assert response.json()["client_ip"] == "198.51.100.9"
    assert response.headers["strict-transport-security"].startswith("max-age=")
    async with client(app, ip="192.0.2.1", base_url="http://app.test") as http:
        assert (await http.get("/me", headers={"x-forwarded-for": "203.0.113.50"})).json()[
            "client_ip"
        ] == "203.0.113.50"


async def test_session_through_a_trusted_proxy_is_bound_to_the_forwarded_ip(
    fundaments: Fundaments, alice: User
) -> None:
    app = build(fundaments, trusted_proxies=["10.0.0.0/8"])
    token = await login_token(fundaments, ip="198.51.100.9")
    async with client(app, ip="10.0.0.5") as http:
        ok = await http.get("/private", headers=with_session(token, **{"x-forwarded-for": "198.51.100.9"}))
        assert ok.status_code == 200
        other = await http.get(
            "/private", headers=with_session(token, **{"x-forwarded-for": "198.51.100.10"})
        )
        assert other.status_code == 401


# --- permissions --------------------------------------------------------------------------------
async def test_permission_guards_answer_401_then_403_then_200(
    fundaments: Fundaments, http: httpx.AsyncClient, alice: User
) -> None:
    assert (await http.get("/reports")).status_code == 401
    assert (await http.get("/api/reports")).status_code == 401
    token = await login_token(fundaments)
    starlette_denied = await http.get("/reports", headers=with_session(token))
    denied_detail = "Permission denied: this needs 'reports:read'."
    assert starlette_denied.status_code == 403
    assert starlette_denied.json() == {"detail": denied_detail, "code": "permission_denied"}
    api_denied = await http.get("/api/reports", headers={"authorization": f"Bearer {token}"})
    assert api_denied.status_code == 403 and api_denied.json() == {"detail": denied_detail}
    denied = await fundaments.security.audit_events(kind="permission.denied")
    assert denied and denied[0].ip_address == "203.0.113.7" and denied[0].user_agent == UA
    await fundaments.security.create_role("analyst", permissions=["reports:read"])
    await fundaments.security.grant_role(alice.id, "analyst")
    allowed = await http.get("/reports", headers=with_session(token))
    assert allowed.status_code == 200
    rotated = cookie_value(set_cookies(allowed)["__Host-session"])
    assert (await http.get("/api/reports", headers={"authorization": f"Bearer {rotated}"})).json() == {
        "reader": "alice"
    }


# --- plain-http localhost development -----------------------------------------------------------
async def test_plain_http_localhost_uses_the_logged_fallback_cookie(
    fundaments: Fundaments, alice: User, caplog: pytest.LogCaptureFixture
) -> None:
    app = build(fundaments)
    caplog.set_level(logging.WARNING, logger="fundaments.web")
    async with client(app, ip="127.0.0.1", base_url="http://127.0.0.1:8000") as http:
        presession = (await http.get("/form")).json()["csrf"]
        response = await http.post(
            "/login",
            data={"username": "alice", "password": PASSWORD, "csrf_token": presession},
            headers={"origin": "http://127.0.0.1:8000", "cookie": f"csrf={presession}"},
        )
        line = set_cookies(response)["session"]
        assert line.endswith("; Path=/; HttpOnly; SameSite=Lax") and "Secure" not in line
        token = cookie_value(line)
        me = await http.get("/me", headers={"cookie": f"session={token}"})
        assert me.json()["user"] == "alice"
        # The __Host- name is the only one read over https: no downgrade by a planted bare cookie.
    async with client(app, ip="127.0.0.1", base_url="https://127.0.0.1:8000") as https:
        assert (await https.get("/me", headers={"cookie": f"session={token}"})).json()["user"] is None
    assert any("plain-http development fallback" in r.getMessage() for r in caplog.records)
    assert token not in caplog.text


async def test_plain_http_elsewhere_keeps_secure_cookies(fundaments: Fundaments) -> None:
    async with client(
        build(fundaments, allowed_hosts=["app.example"]), base_url="http://app.example"
    ) as http:
        assert "Secure" in set_cookies(await http.get("/form"))["__Host-csrf"]
    async with client(build(fundaments, allow_insecure_localhost=False), base_url="http://localhost") as http:
        assert "__Host-csrf" in set_cookies(await http.get("/form"))


async def test_lifespan_and_websocket_scopes_pass_through(fundaments: Fundaments) -> None:
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    middleware = SecurityMiddleware(inner, fundaments.security)
    await middleware({"type": "lifespan"}, None, None)  # type: ignore[arg-type]
    # An anonymous handshake reaches the app (tests/test_web_websockets.py: the rest of the rules).
    websocket = {"type": "websocket", "path": "/ws", "headers": [(b"host", b"localhost")]}
    await middleware(websocket, None, None)  # type: ignore[arg-type]
    assert seen == ["lifespan", "websocket"] and websocket["user"] is None


async def test_helpers_need_the_middleware() -> None:
    with pytest.raises(RuntimeError, match="SecurityMiddleware is not installed"):
        get_context({"type": "http"})


async def test_public_paths_skip_the_session_lookup_and_never_clear_the_cookie(
    fundaments: Fundaments, alice: User
) -> None:
    app = build(fundaments, public_paths=["/me"])
    token = await login_token(fundaments)
    async with client(app) as http:
        response = await http.get("/me", headers=with_session(token))
        assert response.json()["user"] is None and "set-cookie" not in response.headers
        dead = await http.get("/me", headers=with_session("dead-token"))
        assert "set-cookie" not in dead.headers
        assert dead.headers["x-content-type-options"] == "nosniff"
        assert (await http.post("/me", headers=with_session(token))).status_code == 403  # CSRF still applies
