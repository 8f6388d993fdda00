"""The console's API-key pages over ASGI, on SQLite and PostgreSQL: the token shown once and never
again (not in a later page, a Location, a cookie or the log), revoke and rotate behind CSRF and a
confirmation, another account's key id answered as unknown (IDOR), the administrators' view."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from fundaments.bootstrap import Fundaments, ensure_admin
from fundaments.security import API_KEYS_ADMIN_PERMISSION
from test_web_console import (  # noqa: F401 - settings: ALLOWED_HOSTS for BASE
    BASE,
    BOB_PASSWORD,
    REPO,
    Browser,
    build_app,
    settings,
    signed_in_admin,
)

TOKEN = re.compile(r"fk_[0-9A-Za-z]{38}")
CLIENT = {"ip_address": "198.51.100.9", "user_agent": "ci-runner/1.0"}


@pytest.fixture
async def site(fundaments: Fundaments, tmp_path: Path) -> AsyncIterator[tuple[object, str]]:
    password = await ensure_admin(fundaments.security)
    assert password is not None
    await fundaments.security.create_role("invoker", ["models:invoke", "models:list"])
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    yield app, password
    app.state.secrets.close()


async def member(fundaments: Fundaments, app: object, username: str = "bob") -> Browser:
    await fundaments.security.register_user(username, BOB_PASSWORD, roles=["invoker"])
    browser = Browser(app, ip="198.51.100.5")
    await browser.get("/login")
    page = await browser.post("/login", username=username, password=BOB_PASSWORD)
    assert page.url.path == "/dashboard", page.text
    return browser


async def uid(fundaments: Fundaments, username: str) -> int:
    user = await fundaments.security.get_user_by_username(username)
    assert user is not None
    return user.id


def shown_token(page: httpx.Response) -> str:
    found = re.search(r'<code id="new-token" class="token">(fk_[0-9A-Za-z]+)</code>', page.text)
    assert found, page.text
    return found.group(1)


async def test_the_token_is_shown_once_and_then_only_its_prefix(
    fundaments: Fundaments, site: tuple[object, str], caplog: pytest.LogCaptureFixture
) -> None:
    app, _ = site
    caplog.set_level(logging.DEBUG)
    bob = await member(fundaments, app)
    page = await bob.get("/account/api-keys")
    assert 'href="/account/api-keys"' in page.text and "No API keys yet." in page.text  # linked in the nav
    created = await bob.http.post(
        "/account/api-keys",
        data={"csrf_token": bob.csrf, "name": "ci", "scopes": "models:invoke, models:list",
              "expires_days": "90", "allowed_ips": "198.51.100.0/24", "rate_limit": "600/minute"},
        headers={"origin": BASE},
    )  # fmt: skip
    assert created.status_code == 200 and "location" not in created.headers  # no redirect carries it
    token = shown_token(created)
    assert created.headers["cache-control"] == "no-store"
    assert "shown only on this page" in created.text and 'id="copy-token"' in created.text
    assert '<script src="/static/copy.js" defer></script>' in created.text
    assert all(token not in value for value in created.headers.values())  # no cookie, no header
    key = await fundaments.security.validate_api_key(token, CLIENT)
    assert (
        key is not None and key.scopes == ("models:invoke", "models:list") and key.rate_limit == "600/minute"
    )
    assert key.expires_at is not None and str(key.allowed_ips[0]) == "198.51.100.0/24"
    for path in ("/account/api-keys", "/dashboard", "/admin/api-keys"):  # every later page
        later = await bob.get(path)
        assert token not in later.text
    listed = await bob.get("/account/api-keys")
    assert f"<code>{token[:10]}…</code>" in listed.text and token[10:] not in listed.text
    assert "models:list" in listed.text and "198.51.100.0/24" in listed.text
    assert token not in caplog.text and token[10:] not in caplog.text  # nor the log
    await bob.close()


async def test_refusals_show_the_facades_message_and_keep_the_form(
    fundaments: Fundaments, site: tuple[object, str]
) -> None:
    app, _ = site
    bob = await member(fundaments, app)
    await bob.get("/account/api-keys")
    lacking = await bob.post("/account/api-keys", name="wide", scopes="models:invoke users:delete")
    assert lacking.status_code == 403
    assert "does not hold users:delete" in lacking.text and "grant the owner a role" in lacking.text
    assert 'value="models:invoke users:delete"' in lacking.text  # typed values kept (no token)
    for fields, words in (
        ({"expires_days": "0"}, "whole number from 1 to 3650"),
        ({"expires_days": "²"}, "whole number from 1 to 3650"),
        ({"allowed_ips": "198.51.100.1/24"}, "host bits zero"),
        ({"rate_limit": "lots"}, "must look like &#39;600/minute&#39;"),
        ({"name": ""}, "name"),
    ):
        refused = await bob.post("/account/api-keys", **{"name": "ci", **fields})
        assert refused.status_code == 400 and words in refused.text, (fields, refused.text)
    assert await fundaments.security.list_api_keys(await uid(fundaments, "bob")) == []
    await bob.close()


async def test_revoke_and_rotate_refuse_a_post_without_csrf(
    fundaments: Fundaments, site: tuple[object, str]
) -> None:
    app, _ = site
    bob = await member(fundaments, app)
    created = await fundaments.security.create_api_key(await uid(fundaments, "bob"), name="ci")
    key_id = created.key.id
    for path, fields in ((f"/account/api-keys/{key_id}/revoke", {"confirmed": "yes"}),
                         (f"/account/api-keys/{key_id}/rotate", {"confirmed": "yes", "overlap": "0"}),
                         ("/account/api-keys", {"name": "forged"})):  # fmt: skip
        forged = await bob.http.post(path, data=fields, headers={"origin": BASE})  # attack: no csrf_token
        assert forged.status_code == 403, path
        cross = await bob.http.post(  # attack: another site's form
            path, data={"csrf_token": bob.csrf, **fields}, headers={"origin": "https://evil.example"}
        )
        assert cross.status_code == 403, path
    [key] = await fundaments.security.list_api_keys(await uid(fundaments, "bob"))
    assert key.revoked_at is None and key.prefix == created.token[:10]  # neither revoked nor rotated
    assert await fundaments.security.validate_api_key(created.token, CLIENT) is not None
    await bob.close()


async def test_revoke_goes_through_its_confirmation_page(
    fundaments: Fundaments, site: tuple[object, str]
) -> None:
    app, _ = site
    bob = await member(fundaments, app)
    created = await fundaments.security.create_api_key(await uid(fundaments, "bob"), name="ci")
    path = f"/account/api-keys/{created.key.id}/revoke"
    page = await bob.post(path)  # the row button's POST without confirmed=yes: the page, nothing done
    assert "Revoke the API key “ci”?" in page.text and page.url.path == path
    assert await fundaments.security.validate_api_key(created.token, CLIENT) is not None
    done = await bob.post(path, confirmed="yes")
    assert done.url.path == "/account/api-keys" and "The API key was revoked" in done.text
    assert await fundaments.security.validate_api_key(created.token, CLIENT) is None
    assert "revoked" in done.text and 'class="small danger revoke-key"' not in done.text
    again = await bob.post(path, confirmed="yes")
    assert again.status_code == 404 and "no such API key" in again.text
    await bob.close()


async def test_rotate_shows_the_new_token_once_and_the_old_one_keeps_its_overlap(
    fundaments: Fundaments, site: tuple[object, str]
) -> None:
    app, _ = site
    bob = await member(fundaments, app)
    created = await fundaments.security.create_api_key(await uid(fundaments, "bob"), name="ci")
    path = f"/account/api-keys/{created.key.id}/rotate"
    form = await bob.get(path)
    assert 'name="overlap"' in form.text and "Rotate the API key “ci”?" in form.text
    odd = await bob.post(path, confirmed="yes", overlap="12345")  # not one of the choices: the form
    assert odd.url.path == path
    rotated = await bob.http.post(
        path, data={"csrf_token": bob.csrf, "confirmed": "yes", "overlap": "3600"}, headers={"origin": BASE}
    )
    assert rotated.status_code == 200 and "location" not in rotated.headers
    new = shown_token(rotated)
    assert new != created.token and "New token for “ci”" in rotated.text
    assert "keeps working until" in rotated.text
    assert await fundaments.security.validate_api_key(new, CLIENT) is not None
    assert await fundaments.security.validate_api_key(created.token, CLIENT) is not None  # the overlap
    later = await bob.get("/account/api-keys")
    assert new not in later.text and created.token not in later.text and new[:10] in later.text
    await bob.close()


async def test_another_accounts_key_cannot_be_revoked_or_rotated_by_its_id(
    fundaments: Fundaments, site: tuple[object, str]
) -> None:
    app, _ = site
    bob = await member(fundaments, app)
    await fundaments.security.register_user("ann", BOB_PASSWORD, roles=["invoker"])
    anns = await fundaments.security.create_api_key(await uid(fundaments, "ann"), name="ann's")
    base = f"/account/api-keys/{anns.key.id}"
    for response in (
        await bob.get(base + "/revoke"),  # attack: IDOR, the id of ann's key
        await bob.post(base + "/revoke", confirmed="yes"),
        await bob.get(base + "/rotate"),
        await bob.post(base + "/rotate", confirmed="yes", overlap="0"),
    ):
        assert response.status_code == 404 and "You have no such API key" in response.text
        assert "ann&#39;s" not in response.text
    [key] = await fundaments.security.list_api_keys(await uid(fundaments, "ann"))
    assert key.revoked_at is None and key.prefix == anns.token[:10]  # neither revoked nor rotated
    assert (await bob.get("/account/api-keys/not-a-key/revoke")).status_code == 404
    await bob.close()


async def test_the_admin_view_needs_its_permission_and_revokes_as_the_actor(
    fundaments: Fundaments, site: tuple[object, str]
) -> None:
    app, password = site
    bob = await member(fundaments, app)
    bobs = await fundaments.security.create_api_key(await uid(fundaments, "bob"), name="bob's ci")
    refused = await bob.get("/admin/api-keys")  # attack: a member opens the admin view
    assert refused.status_code == 403 and "bob&#39;s ci" not in refused.text
    assert 'href="/admin/api-keys"' not in (await bob.get("/dashboard")).text
    denied = await fundaments.security.audit_events(kind="permission.denied")
    assert any(e.details.get("permission") == API_KEYS_ADMIN_PERMISSION for e in denied)
    admin_path = f"/admin/api-keys/{await uid(fundaments, 'bob')}/{bobs.key.id}/revoke"
    forged = await bob.post(admin_path, confirmed="yes")  # attack: a member posts the admin revoke
    assert forged.status_code == 403
    assert await fundaments.security.validate_api_key(bobs.token, CLIENT) is not None

    admin = await signed_in_admin(app, password)
    listing = await admin.get("/admin/api-keys")
    assert listing.status_code == 200 and 'href="/admin/api-keys"' in listing.text  # in the nav
    assert "bob&#39;s ci" in listing.text and ">bob</a>" in listing.text and bobs.token not in listing.text
    confirm = await admin.post(admin_path)
    assert "Revoke bob's API key “bob's ci”?" in confirm.text.replace("&#39;", "'")
    done = await admin.post(admin_path, confirmed="yes")
    assert done.url.path == "/admin/api-keys" and "The API key was revoked" in done.text
    assert await fundaments.security.validate_api_key(bobs.token, CLIENT) is None
    [event] = await fundaments.security.audit_events(kind="api_key.revoked")
    root = await uid(fundaments, "admin")
    assert event.actor_user_id == root and event.subject_user_id == await uid(fundaments, "bob")
    wrong_owner = await admin.post(f"/admin/api-keys/{root}/{bobs.key.id}/revoke", confirmed="yes")
    assert wrong_owner.status_code == 404
    assert (await admin.get("/admin/api-keys?after=x")).status_code == 400
    await admin.close()
    await bob.close()


async def test_the_admin_view_pages_by_key_id(fundaments: Fundaments, site: tuple[object, str]) -> None:
    app, password = site
    await fundaments.security.register_user("ann", BOB_PASSWORD, roles=["invoker"])
    ann = await uid(fundaments, "ann")
    ids = sorted([(await fundaments.security.create_api_key(ann, name=f"k{i}")).key.id for i in range(55)])
    admin = await signed_in_admin(app, password)
    first = await admin.get("/admin/api-keys")
    assert first.text.count('class="api-key-row"') == 50
    link = re.search(r'href="(/admin/api-keys\?after=key_[0-9A-Za-z]+)" id="next-page"', first.text)
    assert link is not None and link.group(1).endswith(ids[49])
    second = await admin.get(link.group(1))
    assert second.text.count('class="api-key-row"') == 5 and 'id="next-page"' not in second.text
    assert all(key_id in second.text for key_id in ids[50:])
    await admin.close()


async def test_the_copy_script_is_served_from_static_under_the_csp(site: tuple[object, str]) -> None:
    app, _ = site
    browser = Browser(app)
    script = await browser.http.get("/static/copy.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert "navigator.clipboard" in script.text and "button.hidden = false" in script.text
    page = await browser.http.get("/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "unsafe-inline" not in page.headers["content-security-policy"].split("script-src")[1].split(";")[0]
    template = (REPO / "app" / "templates" / "api_keys.html").read_text()
    assert 'id="copy-token" data-copy="new-token" hidden' in template  # no script: no dead button
    await browser.close()
