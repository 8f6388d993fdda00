"""Attacks on the example console (app/), each on SQLite and PostgreSQL, through the real ASGI app.

Every test here was checked to fail with the protection it names removed (issue 14).
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from starlette.routing import Route

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments, ensure_admin
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import AuthenticationError
from test_web_console import BASE, BOB_PASSWORD, UA, Browser, build_app, settings, signed_in_admin  # noqa: F401 - settings: ALLOWED_HOSTS for BASE

MEMBER_IP = "198.51.100.5"
NEW_PASSWORD = "an entirely new passphrase"


@pytest.fixture
async def console(fundaments: Fundaments, tmp_path: Path) -> AsyncIterator[tuple[object, str]]:
    """The console app on this test's database, and the generated administrator password."""
    password = await ensure_admin(fundaments.security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    yield app, password
    app.state.secrets.close()


async def signed_in_member(fundaments: Fundaments, app: object, username: str = "bob") -> Browser:
    await fundaments.security.register_user(username, BOB_PASSWORD, roles=["member"])
    member = Browser(app, ip=MEMBER_IP)
    await member.get("/login")
    page = await member.post("/login", username=username, password=BOB_PASSWORD)
    assert page.url.path == "/dashboard", page.text
    return member


# --- 1. input that used to reach int() or the database as is: a 400 page, never a 500 ----------
@pytest.mark.parametrize(
    "query",
    ["limit=%C2%B2", "user_id=%E2%91%A0", "kind=%00", "kind=login%00.failed", "limit=99999999999999999999"],
)
async def test_audit_filters_refuse_non_ascii_digits_and_nul_without_a_500(
    console: tuple[object, str], query: str
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    page = await admin.get(f"/admin/audit?{query}")
    assert page.status_code in (200, 400), page.status_code  # ignored filter or refused, never 500
    if "%00" in query:
        assert page.status_code == 400 and "NUL" in page.text
    assert "content-security-policy" in page.headers
    await admin.close()


@pytest.mark.parametrize("session_id", ["x\x00", "\x00", "a" * 30 + "\x00" + "b"])
async def test_revoking_a_session_id_with_nul_is_a_400(
    fundaments: Fundaments, console: tuple[object, str], session_id: str
) -> None:
    app, _ = console
    member = await signed_in_member(fundaments, app)
    page = await member.post("/sessions/revoke", session_id=session_id)
    assert page.status_code == 400 and "NUL" in page.text
    assert "content-security-policy" in page.headers
    assert len(await fundaments.security.list_sessions(await _user(fundaments, "bob"))) == 1
    await member.close()


async def test_a_facade_refusal_no_page_catches_is_a_400(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, _ = console
    member = await signed_in_member(fundaments, app)
    page = await member.post("/sessions/revoke")  # no session_id: the facade's InvalidArgument
    assert page.status_code == 400 and "session_id must be a non-empty string" in page.text
    assert "content-security-policy" in page.headers
    await member.close()


async def _user(fundaments: Fundaments, username: str) -> int:
    user = await fundaments.security.get_user_by_username(username)
    assert user is not None
    return user.id


def test_ascii_number_takes_ascii_digits_only() -> None:
    from app.console import ascii_number

    assert ascii_number("42") == 42 and ascii_number(" 7 ") == 7 and ascii_number("0") == 0
    for junk in ("²", "①", "٣", "-1", "1e3", "", "12a", "9" * 20, str(2**63)):
        assert ascii_number(junk) is None, junk
    assert ascii_number("1001", maximum=1000) is None


# --- 2. /health tells an anonymous client nothing but whether the console serves ----------------
async def test_health_says_only_ok_and_503_when_the_database_is_gone(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, _ = console
    browser = Browser(app)
    health = await browser.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    await fundaments["db"].close()
    health = await browser.get("/health")
    assert health.status_code == 503 and health.json() == {"status": "unavailable"}
    assert health.headers["retry-after"] == "5" and "content-security-policy" in health.headers
    await browser.close()


# --- 3. a 405 names the methods the path has ----------------------------------------------------
@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("PUT", "/login", "GET, HEAD, POST"),
        ("DELETE", "/secrets", "GET, HEAD, POST"),
        ("PATCH", "/logout", "POST"),
        ("GET", "/sessions/revoke", "POST"),
        ("PUT", "/dashboard", "GET, HEAD"),
    ],
)
async def test_a_405_carries_allow_with_every_method_of_the_path(
    console: tuple[object, str], method: str, path: str, allow: str
) -> None:
    app, _ = console
    browser = Browser(app)
    await browser.get("/login")  # the pre-session CSRF cookie and token
    response = await browser.http.request(
        method, path, headers={"origin": "https://console.test", "x-csrf-token": browser.csrf}
    )
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert "content-security-policy" in response.headers
    await browser.close()


# --- 4. an action that did nothing says so ------------------------------------------------------
async def test_revoking_an_unknown_or_foreign_session_says_nothing_was_signed_out(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    member = await signed_in_member(fundaments, app)
    admin_id = await _user(fundaments, "admin")
    (admin_session,) = await fundaments.security.list_sessions(admin_id)
    for session_id in ("no-such-session", admin_session.id):
        page = await member.post("/sessions/revoke", session_id=session_id)
        assert page.status_code == 404 and "You have no such session; nothing was signed out." in page.text
        assert "The session was signed out." not in page.text
    assert [s.id for s in await fundaments.security.list_sessions(admin_id)] == [admin_session.id]
    alone = await member.post("/sessions/revoke-others")
    assert "There was no other session to sign out." in alone.text
    assert "Every other session was signed out." not in alone.text
    await member.close()
    await admin.close()


async def test_deleting_a_missing_secret_says_nothing_was_deleted(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, _ = console
    member = await signed_in_member(fundaments, app)
    page = await member.post("/secrets/delete", name="never stored")
    assert page.status_code == 404 and "There is no secret by that name; nothing was deleted." in page.text
    assert "The secret was deleted." not in page.text
    await member.close()


@pytest.mark.parametrize(
    ("action", "fields", "says"),
    [
        ("grant", {"role": "member"}, "The account already had that role; nothing changed."),
        ("revoke", {"role": "admin"}, "The account did not have that role; nothing changed."),
        ("enable", {}, "The account was already enabled; nothing changed."),
    ],
)
async def test_user_actions_that_change_nothing_say_so(
    fundaments: Fundaments, console: tuple[object, str], action: str, fields: dict[str, str], says: str
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    bob = await fundaments.security.register_user("bob", BOB_PASSWORD, roles=["member"])
    page = await admin.post(f"/admin/users/{bob.id}/{action}", confirmed="yes", **fields)
    assert says in page.text and 'class="notice warn"' in page.text
    for success in ("The role was granted.", "The role was revoked.", "The account was enabled."):
        assert success not in page.text
    await admin.close()


async def test_disabling_twice_says_the_second_time_that_nothing_changed(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    bob = await fundaments.security.register_user("bob", BOB_PASSWORD)
    first = await admin.post(f"/admin/users/{bob.id}/disable", confirmed="yes")
    assert "The account was disabled and its sessions ended." in first.text
    second = await admin.post(f"/admin/users/{bob.id}/disable", confirmed="yes")
    assert "The account was already disabled; nothing changed." in second.text
    unknown = await admin.post("/admin/users/999999/enable")
    assert unknown.status_code == 400 and "No account has id 999999." in unknown.text
    await admin.close()


# --- 5. the console's own database is readable by its owner only ---------------------------------
def test_console_db_and_its_wal_files_are_mode_0600_whatever_the_umask(tmp_path: Path) -> None:
    from app.secrets_store import SecretStore

    path = tmp_path / "console.db"
    previous = os.umask(0o022)
    try:
        store = SecretStore(path)
        store.put(1, "name", "envelope")  # a write: the -wal and -shm files exist now
        files = [path, path.with_name("console.db-wal"), path.with_name("console.db-shm")]
        assert all(f.exists() for f in files)
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
        for f in files:
            f.chmod(0o644)  # files from before the fix, the -wal and -shm still in use
        restarted = SecretStore(path)  # a restart fixes the modes of what it finds
        assert {f.name: stat.S_IMODE(f.stat().st_mode) for f in files} == {f.name: 0o600 for f in files}
        restarted.close()
        store.close()
    finally:
        os.umask(previous)


# --- 6. a stolen session cannot guess the current password at hashing speed ----------------------
@pytest.mark.parametrize("device_cookie", [True, False], ids=["with-device-cookie", "session-cookie-only"])
async def test_a_flood_of_password_changes_from_one_session_is_throttled_and_locks(
    fundaments: Fundaments, console: tuple[object, str], device_cookie: bool
) -> None:
    app, _ = console
    member = await signed_in_member(fundaments, app)
    device = member.http.cookies.get("__Host-device")
    assert device is not None
    if not device_cookie:  # the attacker stole the session cookie only: the account's lock counts
        member.http.cookies.delete("__Host-device")
    bob = await _user(fundaments, "bob")

    async def guess(current: str) -> httpx.Response:
        fields = {"csrf_token": member.csrf, "current_password": current}
        fields |= {"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
        return await member.http.post("/password", data=fields, headers={"origin": BASE})

    async def wrong_guesses_checked() -> int:
        events = await fundaments.security.audit_events(kind="password.change_failed", user_id=bob)
        return sum(1 for e in events if e.details.get("reason") == "invalid_credentials")

    responses = await asyncio.gather(*(guess(f"wrong guess number {i}") for i in range(80)))
    statuses = Counter(r.status_code for r in responses)
    assert set(statuses) <= {400, 429}, statuses  # never a 500 (the issue saw 497 of them)
    assert 1 <= statuses[400] <= 5 and statuses[429] >= 75, statuses
    assert await wrong_guesses_checked() == statuses[400]  # a 429 is refused before any hash
    for response in responses:
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            assert "content-security-policy" in response.headers
    while (checked := await wrong_guesses_checked()) < 5:  # one at a time: each is checked
        page = await guess("yet another wrong guess")
        assert page.status_code == 400
        said = "account is locked" if checked + 1 == 5 else "The current password is not correct."
        assert said in page.text, page.text
    # Five wrong guesses: locked. The guessing session is ended, the right password refused.
    refused = await guess(BOB_PASSWORD)
    assert refused.status_code == 403  # the session is dead, and with it the form's CSRF token
    assert (await member.get("/dashboard")).url.path == "/login"
    assert await wrong_guesses_checked() == 5
    request_data = {"ip_address": MEMBER_IP, "user_agent": UA}
    if device_cookie:
        request_data["device_token"] = device
    with pytest.raises(AuthenticationError, match="locked"):
        await fundaments.security.change_password(bob, BOB_PASSWORD, NEW_PASSWORD, request_data=request_data)
    assert not await fundaments.security.user_login("bob", NEW_PASSWORD, request_data)
    await member.close()


async def test_a_full_hashing_pool_is_a_503_with_retry_after_not_a_500(
    make_settings: Callable[..., Settings], clock: ManualClock, tmp_path: Path
) -> None:
    started = await initialize_fundaments(
        make_settings(hashing_concurrency=1, hashing_queue_size=0, allowed_hosts=["console.test"]),
        clock=clock,
        configure_logs=False,
    )
    app = build_app(started, data_dir=tmp_path / "app-data")
    try:
        members = [await signed_in_member(started, app, f"member{i}") for i in range(6)]

        async def change(member: Browser) -> httpx.Response:
            fields = {"csrf_token": member.csrf, "current_password": "a wrong guess here"}
            fields |= {"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
            return await member.http.post("/password", data=fields, headers={"origin": BASE})

        responses = await asyncio.gather(*(change(m) for m in members))
        statuses = Counter(r.status_code for r in responses)
        assert set(statuses) == {400, 503}, statuses  # one hash at a time, the others told to retry
        busy = next(r for r in responses if r.status_code == 503)
        assert busy.headers["retry-after"] == "5" and "The server is busy" in busy.text
        for member in members:
            await member.close()
        clients = [Browser(app, ip=f"192.0.2.{i}") for i in range(6)]
        for client in clients:
            await client.get("/login")
        logins = await asyncio.gather(
            *(c.post("/login", username="member0", password="a wrong guess here") for c in clients)
        )
        assert Counter(r.status_code for r in logins).keys() == {401, 503}
        assert all(r.headers["retry-after"] == "5" for r in logins if r.status_code == 503)
        for client in clients:
            await client.close()
    finally:
        app.state.secrets.close()
        await started.close()


# --- 8. every admin POST refuses a member ---------------------------------------------------------
def admin_posts() -> list[tuple[str, str | None]]:
    """Every POST route under /admin, read from the console's own route table, one entry per action."""
    from app.admin_users import USER_ACTIONS
    from app.app import console_routes
    from app.console import Console

    unbuilt = object.__new__(Console)  # the table only names the handlers: no services are needed
    posts: list[tuple[str, str | None]] = []
    for route in console_routes(unbuilt, health=unbuilt.home):
        if isinstance(route, Route) and "POST" in (route.methods or ()) and route.path.startswith("/admin"):
            actions = USER_ACTIONS if "{action}" in route.path else (None,)
            posts += [(route.path, action) for action in actions]
    return posts


ADMIN_POSTS = admin_posts()
FORM = {"username": "mallory", "password": "a long and private passphrase 2",
        "roles": "admin", "name": "owned", "permissions": "*", "inherits": "admin", "confirmed": "yes",
        "new_password": "a long and private passphrase 3",
        "confirm_password": "a long and private passphrase 3"}  # fmt: skip
ACCOUNT_TABLES = ("users", "user_roles", "roles", "role_permissions", "role_inherits", "devices", "api_keys")


def test_the_admin_route_table_is_read_and_has_the_grant_route() -> None:
    assert ("/admin/users/{user_id:int}/{action}", "grant") in ADMIN_POSTS
    assert {"/admin/users", "/admin/roles", "/admin/roles/{name}/delete"} <= {path for path, _ in ADMIN_POSTS}
    assert ("/admin/users/{user_id:int}/{action}", "password") in ADMIN_POSTS


@pytest.mark.parametrize("target", ["bob", "admin", "carol"])  # self, the administrator, a disabled one
@pytest.mark.parametrize(("template", "action"), ADMIN_POSTS, ids=[f"{p}:{a}" for p, a in ADMIN_POSTS])
async def test_every_admin_post_refuses_a_member_and_changes_nothing(
    fundaments: Fundaments, console: tuple[object, str], template: str, action: str | None, target: str
) -> None:
    app, _ = console
    security, db = fundaments.security, fundaments["db"]
    member = await signed_in_member(fundaments, app)
    carol = await security.register_user("carol", BOB_PASSWORD)
    await security.disable_user(carol.id)
    for username in ("bob", "admin", "carol"):  # failures an unlock would clear
        await security.user_login(username, "not the password", {"ip_address": "192.0.2.1", "user_agent": UA})

    async def state() -> list[list[tuple[object, ...]]]:
        return [
            [tuple(row) for row in await db.fetch(f"SELECT * FROM fundaments_{t}")] for t in ACCOUNT_TABLES
        ]

    bob_key = await security.create_api_key(await _user(fundaments, "bob"), name="bob's key")
    before = await state()
    path = template.replace("{user_id:int}", str(await _user(fundaments, target)))
    path = path.replace("{key_id}", bob_key.key.id)  # /admin/api-keys/<owner>/<key>/revoke
    path = path.replace("{action}", action or "").replace("{name}", "member")
    assert "{" not in path, f"teach this test how to fill the parameters of {template}"
    # Granting itself admin is refused by the facade's delegation rule too; granting "member" to carol
    # or revoking it from bob (within the member's own permissions) only by the console's check.
    role = "admin" if (target, action) == ("bob", "grant") else "member"
    fields = {"csrf_token": member.csrf, "role": role, **FORM}
    page = await member.http.post(path, data=fields, headers={"origin": BASE})  # no redirect followed
    assert page.status_code == 403, (path, page.status_code)
    assert "You do not have permission" in page.text
    assert await state() == before
    assert not await security.check_permission(await _user(fundaments, "bob"), "console:users")
    await member.close()
