"""The console's users list as an administrator runs a site with it: search, pages by id, the lock
state visible with Unlock only where there is a lock, addresses, deletion behind a confirmation."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from fundaments.bootstrap import Fundaments, ensure_admin
from test_web_console import Browser, build_app, settings, signed_in_admin  # noqa: F401 - settings: a fixture

PASSWORD = "correct horse battery staple"
CLIENT = {"ip_address": "198.51.100.61", "user_agent": "Mozilla/5.0 users test"}


@pytest.fixture
async def admin(fundaments: Fundaments, tmp_path: Path) -> AsyncIterator[Browser]:
    password = await ensure_admin(fundaments.security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    browser = await signed_in_admin(app, password)
    yield browser
    await browser.close()
    app.state.secrets.close()


def usernames(page: str) -> list[str]:
    return re.findall(r'<td><a href="/admin/users/\d+">([^<]+)</a></td>', page)


async def test_search_and_pages_by_id(fundaments: Fundaments, admin: Browser) -> None:
    for i in range(60):
        await fundaments.security.register_user(f"user{i:02d}", PASSWORD, email=f"u{i:02d}@example.com")
    first = await admin.get("/admin/users")
    assert len(usernames(first.text)) == 50 and usernames(first.text)[0] == "admin"
    link = re.search(r'href="(/admin/users\?after=\d+)" id="next-page"', first.text)
    assert link is not None
    second = await admin.get(link.group(1).replace("&amp;", "&"))
    assert usernames(second.text) == [f"user{i:02d}" for i in range(49, 60)]
    assert 'id="next-page"' not in second.text
    found = await admin.get("/admin/users?q=USER5")
    assert usernames(found.text) == [f"user5{i}" for i in range(10)]
    by_address = await admin.get("/admin/users?q=u07@")
    assert usernames(by_address.text) == ["user07"] and "u07@example.com" in by_address.text
    assert "No account matches" in (await admin.get("/admin/users?q=%25%25")).text  # % is literal
    bad = await admin.get("/admin/users?after=abc")
    assert bad.status_code == 400


async def test_a_locked_account_shows_so_and_only_it_has_unlock(
    fundaments: Fundaments, admin: Browser
) -> None:
    ann = await fundaments.security.register_user("ann", PASSWORD)
    await fundaments.security.register_user("bob", PASSWORD)
    page = await admin.get("/admin/users")
    assert "lock-state" not in page.text and "unlock-user" not in page.text
    for i in range(5):
        await fundaments.security.user_login("ann", f"wrong {i}", CLIENT)
    page = await admin.get("/admin/users")
    assert page.text.count('class="pill bad lock-state"') == 1
    assert page.text.count("unlock-user") == 1 and f"/admin/users/{ann.id}/unlock" in page.text
    detail = await admin.get(f"/admin/users/{ann.id}")
    assert "locked until" in detail.text
    done = await admin.post(f"/admin/users/{ann.id}/unlock")
    assert "The account was unlocked." in done.text
    again = await admin.post(f"/admin/users/{ann.id}/unlock")  # a stale page: nothing to unlock
    assert "was not locked; nothing changed" in again.text
    unlocked = [e for e in await fundaments.security.audit_events(kind="account.unlocked")]
    assert len(unlocked) == 1


async def test_delete_needs_its_confirmation_page(fundaments: Fundaments, admin: Browser) -> None:
    ann = await fundaments.security.register_user("ann", PASSWORD, roles=["member"])
    await fundaments.security.user_login("ann", PASSWORD, CLIENT)
    unconfirmed = await admin.post(f"/admin/users/{ann.id}/delete")  # no confirmed=yes: the page
    assert "Delete ann for good?" in unconfirmed.text and "1 live session(s)" in unconfirmed.text
    assert await fundaments.security.get_user(ann.id) is not None
    done = await admin.post(f"/admin/users/{ann.id}/delete", confirmed="yes")
    assert "The account was deleted" in done.text and "ann" not in usernames(done.text)
    assert await fundaments.security.get_user(ann.id) is None
    [event] = await fundaments.security.audit_events(kind="user.deleted")
    assert event.username == "ann"


async def test_the_last_administrator_cannot_be_deleted_here(fundaments: Fundaments, admin: Browser) -> None:
    other = await fundaments.security.register_user("other", PASSWORD, roles=["admin"])
    await fundaments.security.disable_user(other.id)  # a disabled holder does not count
    root = await fundaments.security.get_user_by_username("admin")
    assert root is not None
    refused = await admin.post(f"/admin/users/{root.id}/delete", confirmed="yes")  # itself
    assert refused.status_code == 400 and "cannot delete your own account" in refused.text
    assert await fundaments.security.get_user(root.id) is not None


async def test_an_account_is_created_with_an_address(fundaments: Fundaments, admin: Browser) -> None:
    page = await admin.post("/admin/users", username="carol", password=PASSWORD, email="Carol@Example.com")
    assert "The account was created." in page.text and "Carol@example.com" in page.text
    taken = await admin.post("/admin/users", username="dave", password=PASSWORD, email="carol@example.COM")
    assert taken.status_code == 400 and "already uses this email address" in taken.text
    assert await fundaments.security.get_user_by_username("dave") is None
