"""The console run by an administrator (issue 16): audit paging and filters, role editing and
deletion, confirmations for every destructive action, setting a password, per-user sessions,
asking before a secret is replaced, password hints from the policy. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from fundaments.bootstrap import Fundaments, ensure_admin
from fundaments.config import Settings
from test_web_console import BOB_PASSWORD, NEW_ADMIN_PASSWORD, Browser, build_app, signed_in_admin

MIN_LENGTH = 17  # not the default (15) and not the old hard-coded 8: the pages must read the setting
SET_PASSWORD = "an administrator's temporary passphrase"


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(allowed_hosts=["console.test"], password_min_length=MIN_LENGTH)


@pytest.fixture
async def console(fundaments: Fundaments, tmp_path: Path) -> AsyncIterator[tuple[object, str]]:
    password = await ensure_admin(fundaments.security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    yield app, password
    app.state.secrets.close()


async def signed_in(app: object, username: str, password: str, ip: str = "198.51.100.5") -> Browser:
    browser = Browser(app, ip=ip)
    await browser.get("/login")
    page = await browser.post("/login", username=username, password=password)
    assert page.url.path in ("/dashboard", "/password"), page.text
    return browser


def error_of(page: Any) -> str:
    found = re.search(r'id="error">([^<]*)<', page.text)
    return found.group(1) if found else ""


# --- audit ----------------------------------------------------------------------------------------
async def test_audit_kind_matches_a_part_of_the_name_and_like_wildcards_match_themselves(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    await fundaments.security.user_login(
        "admin", "wrong password!", {"ip_address": "192.0.2.9", "user_agent": "x"}
    )
    page = await admin.get("/admin/audit?kind=login")
    kinds = set(re.findall(r"<td><code>([^<]+)</code></td>", page.text))
    assert {"login.failed", "login.succeeded"} <= kinds and all("login" in k for k in kinds)
    for wildcard in ("%25", "_", "login%25failed", "login_failed"):  # % and _ as LIKE would read them
        page = await admin.get(f"/admin/audit?kind={wildcard}")
        assert page.status_code == 200 and "No events match." in page.text, wildcard
    await admin.close()


async def test_audit_pages_by_the_last_event_id_with_usernames_and_details(
    fundaments: Fundaments, console: tuple[object, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    security = fundaments.security
    bob = await security.register_user("bob", BOB_PASSWORD)
    admin_user = await security.get_user_by_username("admin")
    assert admin_user is not None
    await security.grant_role(bob.id, "member", actor_user_id=admin_user.id)
    await security.create_role("editor", ["articles:write"], actor_user_id=admin_user.id)
    calls: list[set[int]] = []
    lookup = security.usernames

    async def counted(ids: Any) -> dict[int, str]:
        calls.append(set(ids))
        return await lookup(calls[-1])

    monkeypatch.setattr(security, "usernames", counted)
    page = await admin.get("/admin/audit?limit=2")
    ids = [int(i) for i in re.findall(r"<tr class=\"[^\"]*\">\s*<td>(\d+)</td>", page.text)]
    assert len(ids) == 2 and len(calls) == 1  # one batched lookup for the page
    older = re.search(r'<a href="([^"]+)" id="older">', page.text)
    assert older is not None and f"before={ids[-1]}" in older.group(1) and "offset" not in older.group(1)
    second = await admin.get(older.group(1).replace("&amp;", "&"))
    next_ids = [int(i) for i in re.findall(r"<tr class=\"[^\"]*\">\s*<td>(\d+)</td>", second.text)]
    assert next_ids and max(next_ids) < min(ids) and 'id="newest"' in second.text
    every = await admin.get("/admin/audit?kind=role")
    assert f'<td class="actor">{admin_user.id} (admin)</td>' in every.text
    assert f'<td class="subject">{bob.id} (bob)</td>' in every.text
    assert "role: member" in every.text and "permissions: [&#34;articles:write&#34;]" in every.text
    await admin.close()


async def test_audit_details_and_names_are_escaped(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    await fundaments.security.user_login(
        "<b>x</b>", "whatever pass", {"ip_address": "192.0.2.9", "user_agent": "x"}
    )
    page = await admin.get("/admin/audit?kind=login.failed")
    assert "<b>x</b>" not in page.text and "&lt;b&gt;x&lt;/b&gt;" in page.text
    await admin.close()


@pytest.mark.parametrize(
    ("query", "says"),
    [("limit=abc", "The limit"), ("limit=-5", "The limit"), ("limit=5000", "The limit"),
     ("since=yesterday", "YYYY-MM-DD"), ("since=2026-1-5", "YYYY-MM-DD"), ("user_id=-1", "The user id"),
     ("before=abc", "page position")],
)  # fmt: skip
async def test_a_bad_audit_filter_is_a_400_saying_which(
    console: tuple[object, str], query: str, says: str
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    page = await admin.get(f"/admin/audit?{query}")
    assert page.status_code == 400 and says in error_of(page)
    assert "No events match." in page.text  # nothing shown as if the filter were not there
    await admin.close()


# --- roles ----------------------------------------------------------------------------------------
async def test_roles_are_edited_and_the_name_rule_is_stated_and_enforced_by_the_server(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    page = await admin.get("/admin/roles")
    assert "Role names: use 1 to 64 characters, lowercase letters" in page.text
    bad = await admin.post("/admin/roles", name="Bad Name")
    assert bad.status_code == 400 and error_of(bad).startswith("That role name is refused: use 1 to 64")
    assert "Bad Name" not in bad.text  # the rule, not an echo
    await admin.post("/admin/roles", name="editor", permissions="articles:read")
    edited = await admin.post("/admin/roles/editor/permissions", permissions="articles:read, articles:write")
    assert "The role was changed." in edited.text
    same = await admin.post("/admin/roles/editor/permissions", permissions="articles:write articles:read")
    assert "nothing changed" in same.text
    inherits = await admin.post("/admin/roles/editor/inherits", inherits=["member"])
    assert "The role was changed." in inherits.text
    roles = {r.name: r for r in await fundaments.security.list_roles()}
    assert roles["editor"].permissions == ("articles:read", "articles:write")
    assert roles["editor"].inherits == ("member",)
    cycle = await admin.post("/admin/roles/member/inherits", inherits=["editor"])
    assert cycle.status_code == 400 and "cycle" in error_of(cycle)
    wrong = await admin.post("/admin/roles/editor/permissions", permissions="not a permission!")
    assert wrong.status_code == 400
    for refused in (bad, cycle, wrong):  # no API function name reaches the administrator
        assert not re.search(r"\b(set|create|delete|grant|revoke)_[a-z_]+", error_of(refused)), error_of(
            refused
        )
    assert (await admin.get("/admin/roles/nosuchrole")).status_code == 404
    await admin.close()


async def test_deleting_a_role_confirms_first_saying_what_it_affects(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    security = fundaments.security
    await security.create_role("writer", ["articles:write"])
    await security.create_role("chief", inherits=["writer"])
    for name in ("bob", "carol"):
        await security.register_user(name, BOB_PASSWORD, roles=["writer"])
    page = await admin.get("/admin/roles/writer/delete")
    assert "2 account(s) holding it" in page.text and "chief" in page.text and 'name="confirmed"' in page.text
    unconfirmed = await admin.post("/admin/roles/writer/delete")  # the field the page adds is missing
    assert unconfirmed.url.path == "/admin/roles/writer/delete" and 'id="confirmation"' in unconfirmed.text
    assert "writer" in {r.name for r in await security.list_roles()}
    done = await admin.post("/admin/roles/writer/delete", confirmed="yes")
    assert "The role was deleted" in done.text
    assert "writer" not in {r.name for r in await security.list_roles()}
    await admin.close()


async def test_the_last_administrators_role_is_refused_with_a_409_and_the_reason(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    admin_user = await fundaments.security.get_user_by_username("admin")
    assert admin_user is not None
    attempts = [
        await admin.post("/admin/roles/admin/permissions", permissions="articles:read"),
        await admin.post("/admin/roles/admin/delete", confirmed="yes"),
        await admin.post(f"/admin/users/{admin_user.id}/revoke", role="admin", confirmed="yes"),
    ]
    for page in attempts:
        assert page.status_code == 409, page.status_code
        assert "it would leave no active account holding *" in error_of(page)
        assert "grant the admin role to another account first" in error_of(page)
    assert await fundaments.security.user_roles(admin_user.id) == ["admin"]
    assert await fundaments.security.check_permission(admin_user.id, "anything:at_all")
    await admin.close()


# --- users ----------------------------------------------------------------------------------------
async def test_the_grant_menu_starts_empty_and_an_empty_choice_grants_nothing(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    bob = await fundaments.security.register_user("bob", BOB_PASSWORD)
    page = await admin.get("/admin/users")
    select = re.search(r'<select name="role"[^>]*>\s*<option([^>]*)>([^<]*)</option>', page.text)
    assert select is not None and 'value=""' in select.group(1) and "selected" in select.group(1)
    assert select.group(2) == "Choose a role…"
    empty = await admin.post(f"/admin/users/{bob.id}/grant", role="")
    assert empty.status_code == 400 and error_of(empty) == "Choose a role to grant."
    assert await fundaments.security.user_roles(bob.id) == []
    await admin.close()


@pytest.mark.parametrize(("action", "fields"), [("revoke", {"role": "member"}), ("disable", {})])
async def test_revoke_and_disable_act_only_after_the_confirmation_page(
    fundaments: Fundaments, console: tuple[object, str], action: str, fields: dict[str, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    security = fundaments.security
    bob = await security.register_user("bob", BOB_PASSWORD, roles=["member"])

    async def state() -> tuple[list[str], bool]:
        user = await security.get_user(bob.id)
        assert user is not None
        return await security.user_roles(bob.id), user.is_disabled

    shown = await admin.get(
        f"/admin/users/{bob.id}/{action}?" + "&".join(f"{k}={v}" for k, v in fields.items())
    )
    assert 'id="confirmation"' in shown.text and "bob" in shown.text
    unconfirmed = await admin.post(f"/admin/users/{bob.id}/{action}", **fields)
    assert 'id="confirmation"' in unconfirmed.text and await state() == (["member"], False)
    wrong = await admin.post(f"/admin/users/{bob.id}/{action}", confirmed="no", **fields)
    assert 'id="confirmation"' in wrong.text and await state() == (["member"], False)
    done = await admin.post(f"/admin/users/{bob.id}/{action}", confirmed="yes", **fields)
    assert done.url.path == "/admin/users"
    assert await state() == (([], False) if action == "revoke" else (["member"], True))
    await admin.close()


async def test_revoking_a_role_the_account_lacks_shows_no_confirmation(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    bob = await fundaments.security.register_user("bob", BOB_PASSWORD)
    page = await admin.get(f"/admin/users/{bob.id}/revoke?role=%3Cscript%3E")
    assert page.status_code == 404 and "<script>" not in page.text and 'id="confirmation"' not in page.text
    await admin.close()


async def test_an_administrator_sets_a_password_that_must_be_changed(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    security = fundaments.security
    bob_user = await security.register_user("bob", BOB_PASSWORD)
    bob = await signed_in(app, "bob", BOB_PASSWORD)
    page = await admin.get(f"/admin/users/{bob_user.id}")
    assert f'minlength="{MIN_LENGTH}"' in page.text and "signs out every session" in page.text
    assert page.text.count('class="session-row"') == 1
    unconfirmed = await admin.http.post(
        f"/admin/users/{bob_user.id}/password",
        data={"csrf_token": admin.csrf, "new_password": SET_PASSWORD, "confirm_password": SET_PASSWORD},
        headers={"origin": "https://console.test"},
    )
    assert (
        unconfirmed.status_code == 303
        and "password" not in unconfirmed.headers["location"].split("/password")[-1]
    )
    assert (await bob.get("/dashboard")).url.path == "/dashboard"  # nothing happened
    short = await admin.post(
        f"/admin/users/{bob_user.id}/password",
        confirmed="yes",
        new_password="too short",
        confirm_password="too short",
    )
    assert short.status_code == 400 and str(MIN_LENGTH) in error_of(short)
    differ = await admin.post(
        f"/admin/users/{bob_user.id}/password",
        confirmed="yes",
        new_password=SET_PASSWORD,
        confirm_password="other",
    )
    assert differ.status_code == 400 and "do not match" in error_of(differ)
    done = await admin.post(
        f"/admin/users/{bob_user.id}/password",
        confirmed="yes",
        new_password=SET_PASSWORD,
        confirm_password=SET_PASSWORD,
        must_change="on",
    )
    assert "The password was set" in done.text
    assert (await bob.get("/dashboard")).url.path == "/login"  # every session of bob ended
    again = await signed_in(app, "bob", SET_PASSWORD, ip="198.51.100.6")
    assert (await again.get("/dashboard")).url.path == "/password"  # must choose their own
    admin_user = await security.get_user_by_username("admin")
    assert admin_user is not None
    own = await admin.post(
        f"/admin/users/{admin_user.id}/password",
        confirmed="yes",
        new_password=SET_PASSWORD,
        confirm_password=SET_PASSWORD,
    )
    assert own.status_code == 400 and "Change password page" in error_of(own)
    for browser in (admin, bob, again):
        await browser.close()


async def test_an_administrator_ends_one_session_of_a_user_after_confirming(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    bob_user = await fundaments.security.register_user("bob", BOB_PASSWORD)
    first = await signed_in(app, "bob", BOB_PASSWORD)
    second = await signed_in(app, "bob", BOB_PASSWORD, ip="198.51.100.9")
    sessions = await fundaments.security.list_sessions(bob_user.id)
    target = next(s for s in sessions if s.ip_address == "198.51.100.5")
    page = await admin.get(f"/admin/users/{bob_user.id}")
    assert page.text.count('class="session-row"') == 2 and target.id in page.text
    unconfirmed = await admin.post(f"/admin/users/{bob_user.id}/end-session", session_id=target.id)
    assert 'id="confirmation"' in unconfirmed.text
    assert (await first.get("/dashboard")).url.path == "/dashboard"
    done = await admin.post(f"/admin/users/{bob_user.id}/end-session", session_id=target.id, confirmed="yes")
    assert "The session was signed out." in done.text
    assert (await first.get("/dashboard")).url.path == "/login"
    assert (await second.get("/dashboard")).url.path == "/dashboard"
    foreign = await admin.get(f"/admin/users/{bob_user.id}/end-session?session_id=nosuchsession")
    assert foreign.status_code == 404
    for browser in (admin, first, second):
        await browser.close()


# --- secrets --------------------------------------------------------------------------------------
async def test_storing_under_a_taken_name_asks_first_and_overwrites_nothing_without_it(
    console: tuple[object, str],
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    await admin.post("/secrets", name="api key", value="first value")
    again = await admin.post("/secrets", name="api key", value="second value")
    assert again.status_code == 409 and "nothing was changed" in error_of(again)
    assert "second value" not in again.text  # the value is not sent back into the page
    shown = await admin.post("/secrets/reveal", name="api key")
    assert '<pre id="revealed-value">first value</pre>' in shown.text
    replaced = await admin.post("/secrets", name="api key", value="second value", replace="yes")
    assert "The secret was stored" in replaced.text
    shown = await admin.post("/secrets/reveal", name="api key")
    assert '<pre id="revealed-value">second value</pre>' in shown.text
    await admin.close()


async def test_deleting_a_secret_confirms_first(console: tuple[object, str]) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    await admin.post("/secrets", name="api key", value="the value")
    asked = await admin.post("/secrets/delete", name="api key")
    assert 'id="confirmation"' in asked.text and "cannot be undone" in asked.text
    assert "api key" in (await admin.get("/secrets")).text
    done = await admin.post("/secrets/delete", name="api key", confirmed="yes")
    assert "The secret was deleted." in done.text and "No secrets yet." in done.text
    missing = await admin.get("/secrets/delete?name=other")
    assert missing.status_code == 404
    await admin.close()


# --- password forms -------------------------------------------------------------------------------
async def test_password_hints_come_from_the_policy_and_every_user_has_the_link(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    await fundaments.security.register_user("bob", BOB_PASSWORD)
    bob = await signed_in(app, "bob", BOB_PASSWORD)
    for browser, path in ((bob, "/password"), (admin, "/admin/users")):
        page = await browser.get(path)
        assert f'minlength="{MIN_LENGTH}"' in page.text and f"{MIN_LENGTH} to 1024 characters" in page.text
        assert 'minlength="8"' not in page.text and "At least 8" not in page.text
    dashboard = await bob.get("/dashboard")
    assert '<a href="/password" id="nav-password"' in dashboard.text
    assert NEW_ADMIN_PASSWORD  # the admin signed in with it
    await admin.close()
    await bob.close()
