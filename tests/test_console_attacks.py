"""Attacks on the example console (app/), each on SQLite and PostgreSQL, through the real ASGI app.

Every test here was checked to fail with the protection it names removed (issue 14).
"""

from __future__ import annotations

import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fundaments.bootstrap import Fundaments, ensure_admin
from test_web_console import BOB_PASSWORD, Browser, build_app, signed_in_admin

MEMBER_IP = "198.51.100.5"


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
    page = await admin.post(f"/admin/users/{bob.id}/{action}", **fields)
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
    first = await admin.post(f"/admin/users/{bob.id}/disable")
    assert "The account was disabled and its sessions ended." in first.text
    second = await admin.post(f"/admin/users/{bob.id}/disable")
    assert "The account was already disabled; nothing changed." in second.text
    unknown = await admin.post("/admin/users/999999/enable")
    assert unknown.status_code == 400 and "no account has id 999999" in unknown.text
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
