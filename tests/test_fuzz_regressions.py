"""Regression tests of the findings of the fuzzers (issue 10; see docs/fuzzing.md).

1. An unparseable Referer (``http://[``) on an unsafe request without Origin raised ValueError in
   the middleware's same-origin check: a 500 instead of the 403 of a cross-origin request.
2. A malformed multipart body (no boundary, a part without a name, a bad part header, over 1000
   fields) on a same-origin unsafe request raised Starlette's HTTPException(400) from inside the
   middleware, outside the app's exception handling: a 500 instead of a 403.
3. A forwarded client address longer than 45 characters (X-Forwarded-For from a trusted proxy
   that passes the client's header on) reached request_data, which refuses it with ValueError:
   every request from that client answered 500.
4. A password with lone surrogates (``"\\ud800"``, which JSON can carry) raised UnicodeEncodeError
   from the password policy and the hashers: register_user and change_password raised an
   undocumented error, user_login crashed instead of failing the login.
5. A role description with a lone surrogate or NUL raised UnicodeEncodeError (SQLite) or
   StorageError (PostgreSQL) from create_role. (Numbered as in docs/fuzzing.md.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from fundaments.bootstrap import Fundaments
from fundaments.errors import PasswordPolicyError
from fundaments.models import LoginFailure
from fundaments.passwords import PasswordPolicy
from fundaments.web import SecurityMiddleware, get_context

PASSWORD = "correct horse battery staple"
ORIGIN = "https://app.test"
SURROGATES = "\ud800\udfff-lone-surrogates-\udc80"
SECURITY_HEADERS = {"content-security-policy", "x-content-type-options", "x-frame-options"}


@pytest.fixture
async def http(fundaments: Fundaments) -> AsyncIterator[httpx.AsyncClient]:
    async def ok(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[Route("/action", ok, methods=["POST"])],
        middleware=[Middleware(SecurityMiddleware, security=fundaments.security, allowed_hosts=["app.test"])],
    )
    transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN, headers={"user-agent": "ua"}) as c:
        yield c


@pytest.mark.parametrize("referer", ["http://[", "https://[::1", "https://a]b/", "https://[x]/"])
async def test_an_unparseable_referer_is_refused_as_cross_origin_not_a_500(
    http: httpx.AsyncClient, referer: str
) -> None:
    response = await http.post(
        "/action", headers={"referer": referer, "x-csrf-token": "abc", "cookie": "__Host-csrf=abc"}
    )
    assert response.status_code == 403
    assert "cross-origin" in response.text
    assert set(response.headers) >= SECURITY_HEADERS


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("multipart/form-data", b"x"),  # no boundary
        ("multipart/form-data; boundary=B", b"--B\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--B--\r\n"),
        ("multipart/form-data; boundary=B", b"--B\r\nbad header line\r\n\r\nabc\r\n--B--\r\n"),
        (
            "multipart/form-data; boundary=B",
            b"".join(
                b'--B\r\nContent-Disposition: form-data; name="f%d"\r\n\r\nx\r\n' % i for i in range(1001)
            )
            + b"--B--\r\n",
        ),
    ],
)
async def test_a_malformed_multipart_form_is_refused_with_403_not_a_500(
    http: httpx.AsyncClient, content_type: str, body: bytes
) -> None:
    response = await http.post(
        "/action",
        content=body,
        headers={"origin": ORIGIN, "content-type": content_type, "cookie": "__Host-csrf=abc"},
    )
    assert response.status_code == 403
    assert "malformed form body" in response.text
    assert set(response.headers) >= SECURITY_HEADERS


async def test_a_well_formed_multipart_form_still_passes_the_csrf_check(
    http: httpx.AsyncClient,
) -> None:
    body = b'--B\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\nabc\r\n--B--\r\n'
    response = await http.post(
        "/action",
        content=body,
        headers={
            "origin": ORIGIN,
            "content-type": "multipart/form-data; boundary=B",
            "cookie": "__Host-csrf=abc",
        },
    )
    assert response.status_code == 200


def test_the_policy_refuses_lone_surrogates_with_a_reason() -> None:
    policy = PasswordPolicy(min_length=8, max_length=128, app_name="fundaments")
    assert policy.failures(SURROGATES) == [
        "use only valid Unicode characters (this one has unpaired surrogates)"
    ]
    with pytest.raises(PasswordPolicyError):
        policy.check(SURROGATES)


async def test_register_user_with_a_lone_surrogate_password_raises_policy_error_and_writes_nothing(
    fundaments: Fundaments,
) -> None:
    before = await fundaments["db"].fetchval("SELECT count(*) FROM fundaments_users")
    with pytest.raises(PasswordPolicyError):
        await fundaments.security.register_user("bob", SURROGATES)
    assert await fundaments["db"].fetchval("SELECT count(*) FROM fundaments_users") == before


async def test_login_with_a_lone_surrogate_password_fails_like_a_wrong_password(
    fundaments: Fundaments, request_data: dict[str, str]
) -> None:
    await fundaments.security.register_user("alice", PASSWORD)
    result = await fundaments.security.user_login("alice", SURROGATES, request_data)
    assert not result
    assert result.reason is LoginFailure.INVALID_CREDENTIALS
    assert await fundaments.security.user_login("alice", PASSWORD, request_data)


async def test_change_password_to_lone_surrogates_raises_policy_error(fundaments: Fundaments) -> None:
    user = await fundaments.security.register_user("alice", PASSWORD)
    with pytest.raises(PasswordPolicyError):
        await fundaments.security.change_password(user.id, PASSWORD, SURROGATES)


async def test_an_overlong_forwarded_address_is_bounded_not_a_500(fundaments: Fundaments) -> None:
    async def me(request: Request) -> PlainTextResponse:
        return PlainTextResponse(get_context(request).client_ip)

    app = Starlette(
        routes=[Route("/me", me)],
        middleware=[
            Middleware(
                SecurityMiddleware,
                security=fundaments.security,
                trusted_proxies=["10.0.0.0/8"],
                allowed_hosts=["app.test"],
            )
        ],
    )
    token = (await fundaments.security.register_user("alice", PASSWORD)) and (
        await fundaments.security.user_login("alice", PASSWORD, {"ip_address": "x", "user_agent": "ua"})
    ).session.token  # type: ignore[union-attr]
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url=ORIGIN, headers={"user-agent": "ua"}) as c:
        forwarded = "0" * 6 + "\u00e9" * 60
        response = await c.get("/me", headers={"x-forwarded-for": forwarded.encode("latin-1")})
        # The session was created at another address. A bearer token (SESSION_BINDING_BEARER=agent)
        # writes the audited IP change with the bounded address; a cookie (strict) is revoked, the
        # revocation audited with it. Neither may be a 500.
        roamed = await c.get(
            "/me",
            headers={"x-forwarded-for": forwarded.encode("latin-1"), "authorization": f"Bearer {token}"},
        )
        revoked = await c.get(
            "/me",
            headers={"x-forwarded-for": forwarded.encode("latin-1"), "cookie": f"__Host-session={token}"},
        )
    assert response.status_code == 200
    assert response.text == forwarded[:45]
    assert set(response.headers) >= SECURITY_HEADERS
    assert roamed.status_code == 200 and set(roamed.headers) >= SECURITY_HEADERS
    assert revoked.status_code == 200 and "max-age=0" in revoked.headers["set-cookie"].lower()
    events = await fundaments.security.audit_events(kind="session.hijack_suspected")
    assert {e.details["action"] for e in events} == {"allowed", "revoked"}
    assert all(len(e.ip_address or "") <= 45 for e in events)


@pytest.mark.parametrize("description", ["\ud800", "nul\x00in it", "ok \udfff and \x00"])
async def test_a_role_description_with_nul_or_lone_surrogates_is_stored_cleaned(
    fundaments: Fundaments, description: str
) -> None:
    """Finding 5: raised UnicodeEncodeError (SQLite) or StorageError (PostgreSQL), not a Role or RoleError."""
    expected = "".join("\ufffd" if c == "\x00" or 0xD800 <= ord(c) <= 0xDFFF else c for c in description)
    await fundaments.security.create_role("editor", ["articles:write"], description=description)
    stored = next(r for r in await fundaments.security.list_roles() if r.name == "editor")
    assert stored.description == expected
