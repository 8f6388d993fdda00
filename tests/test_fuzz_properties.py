"""Property tests of the untrusted inputs that had none yet (issue 10; inventory in docs/fuzzing.md).

Already covered elsewhere: envelopes and file streams (test_encryption_fuzz.py), session tokens and
request_data (test_sessions_properties.py), username normalization and device tokens
(test_accounts.py), password policy and hash parsing (test_passwords.py), permission and role
name grammar (test_access_control_properties.py), DATABASE_URL (test_config.py).

Here, end to end through the public surfaces:
- ``register_user`` with any username, password or imported hash: a User, or one of the documented
  errors, and then nothing written (no user row, no role grant);
- ``create_role`` with any name, permissions and parents: a Role or RoleError, and then no role row;
- ``SecurityMiddleware`` with arbitrary Cookie, Authorization, Origin, Referer, X-Forwarded-For,
  X-CSRF-Token, Content-Type header bytes and bodies: a documented status, never 500, never an
  exception, and the security headers on every response;
- ``fundaments users import`` with arbitrary CSV text: exit 0 or 1, each row imported or reported
  with its line and reason, no traceback, and exactly the reported number of accounts written.
"""

from __future__ import annotations

import asyncio
import json
import os
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from typer.testing import CliRunner

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.cli import app as cli_app
from fundaments.config import Settings
from fundaments.errors import (
    InvalidArgument,
    InvalidPasswordHashError,
    InvalidUsernameError,
    PasswordPolicyError,
    RoleError,
    UserExistsError,
)
from fundaments.models import LoginFailure
from fundaments.web import SecurityMiddleware, csrf_token, csrf_token_for, login, login_required
from test_cli_admin import cli_environment

# FUNDAMENTS_FUZZ_EXAMPLES raises the budget for a long run (docs/fuzzing.md); CI keeps the default.
EXAMPLES = int(os.environ.get("FUNDAMENTS_FUZZ_EXAMPLES", "60"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
PASSWORD = "correct horse battery staple"
PASSLIB = "$pbkdf2-sha256$1000$QYiR0ppTKsUYo9S6V2ot5Q$5sNrsm0LK2NsnIeCtRosu5ukrWVpci6i3s8y8L9A.tM"
DJANGO_ARGON2 = (
    "argon2$argon2id$v=19$m=1024,t=1,p=8$WTV0UXJwMXJnNUljTHNrcFlkbGRRSw$"
    "Jlw7iW6zI790pZ4/wN2VwOrxG4m0izViv1bi9jo+Nkc"
)
HOST = "app.test"
ORIGIN = f"https://{HOST}"
PEER = "203.0.113.7"
SECURITY_HEADERS = {
    b"content-security-policy",
    b"x-content-type-options",
    b"referrer-policy",
    b"x-frame-options",
    b"cross-origin-opener-policy",
}
MAX_FORM_BYTES = 2_000  # the harness middleware's max_form_bytes
UNSAFE_METHODS = {"POST", "PUT", "DELETE", "PATCH"}
# The methods of each route of the harness app (Starlette adds HEAD to GET); other paths are 404.
ROUTE_METHODS = {"/me": {"GET", "HEAD"}, "/login": {"POST"}, "/private": {"GET", "HEAD", "POST"}}


def documented_statuses(method: str, path: str, body: bytes, signed_in: bool) -> set[int]:
    """The one answer the harness documents for ``method`` on ``path``, and the refusals that may
    come first: 403 (CSRF) for an unsafe method, 413 for a body over MAX_FORM_BYTES."""
    guard = ({403} if method in UNSAFE_METHODS else set()) | ({413} if len(body) > MAX_FORM_BYTES else set())
    if path not in ROUTE_METHODS:
        return guard | {404}
    if method not in ROUTE_METHODS[path]:
        return guard | {405}  # with Allow: checked by documented_answer
    if path == "/me":
        return guard | {200}
    if path == "/login":  # never the right password here: {"ok": false}; 400 an unparseable form
        return guard | {200, 400}
    if not signed_in:  # /private is login_required
        return guard | {401}
    return guard | ({200, 400} if method == "POST" else {200})


def documented_answer(harness: Harness, parts: dict[str, Any]) -> list[tuple[bytes, bytes]]:
    """Drive ``parts``: its status must be the documented one, a 405 must carry the route's Allow;
    the response headers (with the security headers checked)."""
    oracle = {**parts, "method": "GET", "path": "/me", "body": b"", "content-type": None}
    me: list[bytes] = []
    seen, _ = drive(harness, oracle, me)  # the same headers: who the middleware sees (before, as a
    # binding mismatch revokes the session for both). Refused before routing — a host not allowed
    # (400), a bearer token that authenticates nobody (401) — the request gets the same refusal.
    refused_first = seen in (400, 401)
    signed_in = not refused_first and json.loads(me[0])["user"] is not None
    status, headers = drive(harness, parts)
    if refused_first:
        expected = {seen} | ({413} if len(parts["body"]) > MAX_FORM_BYTES else set())
    else:
        expected = documented_statuses(parts["method"], parts["path"], parts["body"], signed_in)
    assert status in expected, (status, expected)
    if status == 405:
        allow = dict(headers)[b"allow"].decode()
        assert {m.strip() for m in allow.split(",")} == ROUTE_METHODS[parts["path"]], allow
    assert {name.lower() for name, _ in headers} >= SECURITY_HEADERS
    return headers


class Harness:
    """Services and an ASGI app on their own event loop, so Hypothesis can drive them synchronously."""

    def __init__(self, make_settings: Callable[..., Settings]) -> None:
        self.loop = asyncio.new_event_loop()
        self.f: Fundaments = self.run(initialize_fundaments(make_settings(), configure_logs=False))
        self.alice = self.run(self.f.security.register_user("alice", PASSWORD))
        self.run(self.f.security.create_role("fuzzrole", ["articles:read"]))
        self.app = _web_app(self.f)
        self.token = self.run(self._login())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _login(self) -> str:
        result = await self.f.security.user_login("alice", PASSWORD, {"ip_address": PEER, "user_agent": "ua"})
        assert result.session is not None and result.session.token is not None
        return result.session.token

    def count(self, table: str) -> int:
        return int(self.run(self.f["db"].fetchval(f"SELECT count(*) FROM fundaments_{table}")))

    def close(self) -> None:
        self.run(self.f.close())
        self.loop.close()


@pytest.fixture
def harness(make_settings: Callable[..., Settings]) -> Iterator[Harness]:
    h = Harness(make_settings)
    try:
        yield h
    finally:
        h.close()


# --- register_user ------------------------------------------------------------------------------
usernames = st.one_of(
    st.text(max_size=40),
    st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=20),  # surrogates too
    st.sampled_from(["alice", "ALICE", "Alice ", "ａｌｉｃｅ", "al\x00ice", "a" * 255, "\ud800bob", " "]),
    st.sampled_from(["аlice", "alıce", "álice", "ｍ" * 254, "bo\u0301\u0301b"]),  # look-alikes (TR 39)
)
passwords = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", PASSWORD, "pass\x00word-is-long-enough", "\ud800" * 12, "password", "x" * 5000]),
)
imported_hashes = st.one_of(
    st.text(max_size=80),
    st.sampled_from([PASSLIB, DJANGO_ARGON2, PASSLIB + "\x00", "$argon2id$", "pbkdf2_sha256$", "\ud800"]),
    st.text(max_size=40).map(lambda t: "$pbkdf2-sha256$" + t),
    st.text(max_size=40).map(lambda t: "$argon2id$v=19$m=1024,t=1,p=1$" + t),
)
REGISTER_ERRORS = (
    InvalidUsernameError,
    PasswordPolicyError,
    InvalidPasswordHashError,
    UserExistsError,
    RoleError,
    InvalidArgument,
)


@FUZZ
@given(
    username=usernames,
    secret=st.one_of(passwords.map(lambda p: ("password", p)), imported_hashes.map(lambda h: ("hash", h))),
    roles=st.lists(st.sampled_from(["fuzzrole", "ghost", "", "Fuzzrole", "a b"]), max_size=2),
)
@example(username="\ud800bob", secret=("password", PASSWORD), roles=[])
@example(username="bob", secret=("password", "\ud800" * 12), roles=[])
@example(username="bob", secret=("hash", PASSLIB + "\x00"), roles=[])
@example(username="bob", secret=("hash", PASSLIB), roles=["fuzzrole", "ghost"])
@example(username="ALICE", secret=("hash", PASSLIB), roles=[])
def test_register_user_returns_a_user_or_a_documented_error_and_writes_nothing(
    harness: Harness, username: str, secret: tuple[str, str], roles: list[str]
) -> None:
    before = harness.count("users"), harness.count("user_roles")
    kind, value = secret
    arguments: dict[str, Any] = {"password": value} if kind == "password" else {"password_hash": value}
    try:
        user = harness.run(harness.f.security.register_user(username, roles=roles, **arguments))
    except REGISTER_ERRORS:
        assert (harness.count("users"), harness.count("user_roles")) == before
        return
    assert harness.count("users") == before[0] + 1
    assert harness.run(harness.f.security.get_user(user.id)) is not None
    harness.run(harness.f["db"].execute("DELETE FROM fundaments_user_roles WHERE user_id = $1", user.id))
    harness.run(harness.f["db"].execute("DELETE FROM fundaments_users WHERE id = $1", user.id))


# --- create_role --------------------------------------------------------------------------------
role_names = st.one_of(
    st.text(max_size=30), st.sampled_from(["fuzzrole", "editor", "Editor", "a:b", "\ud800", "x" * 200])
)
permission_names = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["articles:read", "articles:*", "*", "a::b", ":", "A:b", "\ud800:x", "a:" + "b" * 300]),
)


@FUZZ
@given(
    name=role_names,
    permissions=st.lists(permission_names, max_size=3),
    inherits=st.lists(st.sampled_from(["fuzzrole", "ghost", "", "editor"]), max_size=2),
    description=st.none() | st.text(max_size=30) | st.sampled_from(["\ud800", "nul\x00"]),
)
@example(name="editor", permissions=["articles:write"], inherits=["ghost"], description=None)
@example(name="editor", permissions=["ok:read", "BAD"], inherits=[], description=None)
def test_create_role_returns_a_role_or_role_error_and_writes_nothing(
    harness: Harness, name: str, permissions: list[str], inherits: list[str], description: str | None
) -> None:
    tables = ("roles", "role_permissions", "role_inherits")
    before = [harness.count(t) for t in tables]
    try:
        role = harness.run(harness.f.security.create_role(name, permissions, inherits, description))
    except (RoleError, InvalidArgument):
        assert [harness.count(t) for t in tables] == before
        return
    harness.run(harness.f.security.delete_role(role.name))


# --- the web middleware -------------------------------------------------------------------------
def _web_app(f: Fundaments) -> Starlette:
    async def me(request: Request) -> JSONResponse:
        user = request.scope["user"]
        return JSONResponse({"user": user.username if user else None, "csrf": csrf_token(request)})

    async def do_login(request: Request) -> Response:
        form = await request.form()
        result = await login(request, str(form.get("username", "")), str(form.get("password", "")))
        return RedirectResponse("/me", 303) if result else JSONResponse({"ok": False})

    @login_required
    async def private(request: Request) -> Response:
        form = await request.form()
        return JSONResponse({"fields": len(form)})

    return Starlette(
        routes=[
            Route("/me", me),
            Route("/login", do_login, methods=["POST"]),
            Route("/private", private, methods=["GET", "POST"]),
        ],
        middleware=[
            Middleware(
                SecurityMiddleware,
                security=f.security,
                trusted_proxies=["203.0.113.0/24"],
                allowed_hosts=[HOST, "localhost", "::1"],
                max_form_bytes=2_000,
            )
        ],
    )


def header_bytes(*specials: bytes) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=60), st.text(max_size=40).map(lambda t: t.encode()), st.sampled_from(specials)
    )


SESSION = b"<session>"  # replaced by the harness's live token
CSRF = b"<csrf>"  # replaced by the CSRF token of that session
cookies = header_bytes(
    b"__Host-session=" + SESSION,
    b"__Host-session=" + SESSION + b"; __Host-csrf=abc",
    b"__Host-csrf=abc",
    b"__Host-session=",
    b'__Host-session="\\x"; a',
    b"__Host-session=" + b"x" * 300,
    b"__Host-device=\xff\xfe; __Host-session=\x00",
    b";;;=;=",
)
authorizations = header_bytes(b"Bearer " + SESSION, b"Bearer ", b"bearer  x", b"Basic YTpi", b"Bearer \xff")
origins = header_bytes(ORIGIN.encode(), ORIGIN.encode() + b"/", b"null", b"https://evil.test", b"http://[")
referers = header_bytes(
    ORIGIN.encode() + b"/me", b"http://[", b"https://[::1", b"https://a]b/", b"//x", b"https://[x]/"
)
forwarded = header_bytes(b"198.51.100.1", b"1.2.3.4, 5.6.7.8", b"garbage, , ,", b"::1", b"[::1]:80")
csrf_headers = header_bytes(CSRF, b"abc", b"")
content_types = st.sampled_from(
    [
        None,
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=B",
        b"multipart/form-data",
        b"multipart/form-data; boundary=",
        b"text/plain",
        b"application/x-www-form-urlencoded; charset=\xff",
    ]
)
bodies = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"csrf_token=" + CSRF,
            b"csrf_token=abc&username=alice&password=x",
            b"csrf_token=%ff%fe&&=&%",
            b'--B\r\nContent-Disposition: form-data; name="csrf_token"\r\n\r\n' + CSRF + b"\r\n--B--\r\n",
            b"--B\r\nContent-Disposition: form-data; name=csrf_token; filename=a\r\n\r\nabc\r\n--B--\r\n",
            b"--B\r\nbroken",
            b"x" * 2_500,
        ]
    ),
)


def _optional(strategy: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes | None]:
    return st.none() | strategy


request_parts = st.fixed_dictionaries(
    {
        "method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"]),
        "path": st.sampled_from(["/me", "/login", "/private", "/missing"]),
        "scheme": st.sampled_from(["https", "http"]),
        "host": st.sampled_from([HOST.encode(), b"localhost:8000", b"[::1]:8000", b"\xff[", b""]),
        "cookie": _optional(cookies),
        "authorization": _optional(authorizations),
        "origin": _optional(origins),
        "referer": _optional(referers),
        "x-forwarded-for": _optional(forwarded),
        "x-forwarded-proto": _optional(header_bytes(b"https", b"http", b"ws")),
        "x-csrf-token": _optional(csrf_headers),
        "user-agent": _optional(header_bytes(b"Mozilla/5.0")),
        "content-type": content_types,
        "body": bodies,
    }
)
HEADER_PARTS = (
    "cookie",
    "authorization",
    "origin",
    "referer",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-csrf-token",
    "user-agent",
    "content-type",
)
# A POST to /private over https carrying the test's session cookie and no other header: the base of
# the hand-written requests below, each naming only what it changes.
SESSION_POST: dict[str, Any] = {
    "method": "POST",
    "path": "/private",
    "scheme": "https",
    "host": HOST.encode(),
    "cookie": b"__Host-session=" + SESSION,
    **dict.fromkeys(HEADER_PARTS[1:]),
    "body": b"",
}


def drive(
    harness: Harness, parts: dict[str, Any], body_out: list[bytes] | None = None
) -> tuple[int, list[tuple[bytes, bytes]]]:
    """Send one raw ASGI request; the status and headers of the response (exceptions propagate),
    and its body appended to ``body_out`` when given."""
    csrf = csrf_token_for(harness.token).encode()

    def fill(value: bytes) -> bytes:
        return value.replace(SESSION, harness.token.encode()).replace(CSRF, csrf)

    headers = [(b"host", parts["host"])]
    for name in HEADER_PARTS:
        if parts[name] is not None:
            headers.append((name.encode(), fill(parts[name])))
    body = fill(parts["body"])
    path = parts["path"]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": parts["method"],
        "scheme": parts["scheme"],
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": (PEER, 50000),
        "server": (HOST, 443),
    }
    chunks = [body[i : i + 700] for i in range(0, len(body), 700)] or [b""]
    messages = [
        {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
        for i, chunk in enumerate(chunks)
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(0)
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    harness.run(harness.app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    if body_out is not None:
        body_out.append(b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body"))
    return start["status"], list(start.get("headers", []))


@FUZZ
@given(parts=request_parts)
@example(parts={**SESSION_POST, "referer": b"http://[", "x-csrf-token": CSRF})
@example(
    parts={
        **SESSION_POST,
        "origin": ORIGIN.encode(),
        "content-type": b"multipart/form-data; boundary=B",
        "body": b"--B\r\nbroken",
    }
)
def test_middleware_answers_a_documented_status_with_the_security_headers(
    harness: Harness, parts: dict[str, Any]
) -> None:
    harness.token = harness.run(harness._login())  # a live session for every example
    users_before = harness.count("users")
    headers = documented_answer(harness, parts)
    for name, value in headers:
        if name == b"set-cookie" and value.startswith(b"__Host-"):
            assert b"Secure" in value and b"Domain" not in value
    assert harness.count("users") == users_before


@FUZZ
@given(
    method=st.sampled_from(["POST", "PUT", "DELETE", "PATCH"]),
    cookie=st.sampled_from([b"__Host-session=" + SESSION, b"__Host-csrf=abc"]),
    content_type=content_types.filter(lambda c: c is not None)
    | st.binary(max_size=60).map(lambda b: b"multipart/form-data; " + b),
    body=bodies,
)
@example(method="POST", cookie=b"__Host-csrf=abc", content_type=b"multipart/form-data", body=b"x")
@example(
    method="POST",
    cookie=b"__Host-session=" + SESSION,
    content_type=b"multipart/form-data; boundary=B",
    body=b"--B\r\nContent-Disposition: form-data\r\n\r\nabc\r\n--B--\r\n",
)
def test_csrf_form_bodies_of_same_origin_requests_never_cause_a_500(
    harness: Harness, method: str, cookie: bytes, content_type: bytes, body: bytes
) -> None:
    """The path where the middleware itself parses the form: same origin, a token expected, no header."""
    harness.token = harness.run(harness._login())
    parts = {
        **SESSION_POST,
        "method": method,
        "cookie": cookie,
        "origin": ORIGIN.encode(),
        "content-type": content_type,
        "body": body,
    }
    documented_answer(harness, parts)


# --- fundaments users import ------------------------------------------------------------------
csv_cells = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["alice", "bob", "BOB", PASSLIB, DJANGO_ARGON2, '"', '""', ",", "\r", "\n", "\ufeff"]),
)
csv_rows = st.lists(st.lists(csv_cells, max_size=4).map(",".join), max_size=6).map("\n".join)
csv_texts = st.one_of(
    csv_rows,
    st.text(max_size=200),
    st.just("username,password_hash\n" + f"bob,{PASSLIB}\n" + f"carl,{DJANGO_ARGON2}\n"),
)


@pytest.fixture
def import_cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str) -> Iterator[Harness]:
    """The `fundaments` CLI's environment on this test's database, and a harness on the same one."""
    cli_environment(monkeypatch, tmp_path, database_url)
    from fundaments.config import load_settings

    h = Harness(lambda: load_settings())
    try:
        yield h
    finally:
        h.close()


@settings(max_examples=max(25, EXAMPLES // 4), deadline=None, suppress_health_check=list(HealthCheck))
@given(text=csv_texts, role=st.sampled_from([None, "fuzzrole", "ghost"]))
@example(text='bob,"unterminated\nsecond', role=None)
@example(text="a\x00b,c", role=None)
@example(text="\ud800,x", role=None)
def test_users_import_reports_every_row_and_never_crashes(
    import_cli: Harness, text: str, role: str | None
) -> None:
    before = import_cli.count("users")
    arguments = ["users", "import", "-"] + (["--role", role] if role else [])
    result = CliRunner().invoke(cli_app, arguments, input=text.encode("utf-8", "surrogatepass"))
    output = result.output
    assert result.exit_code in (0, 1), output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in output and "unexpected" not in output, output
    written = import_cli.count("users") - before
    summary = [line for line in output.splitlines() if line.startswith("imported ")]
    if summary:
        imported, rejected = (int(word) for word in summary[-1].replace(",", " ").split() if word.isdigit())
        assert written == imported
        assert sum(1 for line in output.splitlines() if line.startswith("line ")) == rejected
        assert result.exit_code == (1 if rejected else 0)
    else:  # unreadable as a whole: one error line, nothing written
        assert result.exit_code == 1 and "error:" in output, output
        assert written == 0
    import_cli.run(
        import_cli.f["db"].execute(
            "DELETE FROM fundaments_user_roles WHERE user_id <> $1", import_cli.alice.id
        )
    )
    import_cli.run(
        import_cli.f["db"].execute("DELETE FROM fundaments_users WHERE id <> $1", import_cli.alice.id)
    )


# --- user_login ---------------------------------------------------------------------------------
@FUZZ
@given(username=usernames, password=passwords)
@example(username="alice", password="\ud800" * 12)
@example(username="\ud800", password=PASSWORD)
@example(username=" ＡＬＩＣＥ", password=PASSWORD)
@example(username="alice", password=PASSWORD + " ")
def test_user_login_with_any_credentials_returns_a_result_and_never_raises(
    harness: Harness, username: str, password: str
) -> None:
    result = harness.run(
        harness.f.security.user_login(username, password, {"ip_address": PEER, "user_agent": "ua"})
    )
    # The one right answer, from a reference of its own: alice's name in any case or width, her
    # password after NFKC (PASSWORD is ASCII, so no surrogate or look-alike can equal it).
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold()).strip()
    expected = name == "alice" and unicodedata.normalize("NFKC", password) == PASSWORD
    if expected:
        assert result and result.reason is None
        assert result.user is not None and result.user.id == harness.alice.id
        assert result.session is not None and result.session.user_id == harness.alice.id
    else:
        assert not result and result.session is None
        assert result.reason is LoginFailure.INVALID_CREDENTIALS
    harness.run(harness.f.security.unlock_user(harness.alice.id))
    harness.run(harness.f["db"].execute("DELETE FROM fundaments_ip_throttle"))
