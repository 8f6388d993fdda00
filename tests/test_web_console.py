"""The example console (app/) over ASGI: login, forced password change, sessions, secrets, admin pages."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from fundaments.bootstrap import Fundaments, ensure_admin
from fundaments.config import Settings

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # app/ is the example application at the repository root, not installed
from app.app import build_app  # noqa: E402

BASE = "https://console.test"
UA = "Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0 console-test"
NEW_ADMIN_PASSWORD = "a much better operator passphrase"
BOB_PASSWORD = "a long and private passphrase"
TEMPLATES = REPO / "app" / "templates"


class Browser:
    """An httpx client that follows the console like a browser: cookies, CSRF field, Origin."""

    def __init__(self, app: object, ip: str = "203.0.113.7") -> None:
        transport = httpx.ASGITransport(app=app, client=(ip, 40000))  # type: ignore[arg-type]
        self.http = httpx.AsyncClient(transport=transport, base_url=BASE, headers={"user-agent": UA})
        self.csrf = ""

    async def get(self, path: str) -> httpx.Response:
        response = await self.http.get(path, follow_redirects=True)
        self._remember(response)
        return response

    async def post(self, path: str, **fields: str | list[str]) -> httpx.Response:
        response = await self.http.post(
            path, data={"csrf_token": self.csrf, **fields}, headers={"origin": BASE}, follow_redirects=True
        )
        self._remember(response)
        return response

    def _remember(self, response: httpx.Response) -> None:
        found = re.search(r'name="csrf_token" value="([^"]+)"', response.text)
        if found:
            self.csrf = found.group(1)

    async def close(self) -> None:
        await self.http.aclose()


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(allowed_hosts=["console.test"])  # ALLOWED_HOSTS: BASE's host


@pytest.fixture
async def console(fundaments: Fundaments, tmp_path: Path) -> AsyncIterator[tuple[object, str]]:
    password = await ensure_admin(fundaments.security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    yield app, password
    app.state.secrets.close()


async def signed_in_admin(app: object, password: str) -> Browser:
    admin = Browser(app)
    await admin.get("/login")
    page = await admin.post("/login", username="admin", password=password)
    assert page.url.path == "/password" and "one-time password" in page.text
    page = await admin.post(
        "/password",
        current_password=password,
        new_password=NEW_ADMIN_PASSWORD,
        confirm_password=NEW_ADMIN_PASSWORD,
    )
    assert page.url.path == "/dashboard", page.text
    return admin


async def test_templates_have_no_inline_script_or_style() -> None:
    for template in TEMPLATES.glob("*.html"):
        text = template.read_text()
        # Scripts only from the console's static files (CSP script-src 'self'), never inline.
        outside = re.sub(r'<script src="/static/[a-z-]+\.js" defer></script>', "", text)
        assert "<script" not in outside and "style=" not in text and "<style" not in text, template.name
        assert not re.search(r"\son[a-z]+=", text), template.name  # no event-handler attributes


async def test_login_failure_is_one_generic_message_for_every_reason(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, _ = console
    await fundaments.security.register_user("bob", BOB_PASSWORD)
    browser = Browser(app)
    await browser.get("/login")
    unknown = await browser.post("/login", username="nobody", password="whatever password")
    wrong = await browser.post("/login", username="bob", password="wrong password!")
    assert unknown.status_code == wrong.status_code == 401
    for _ in range(5):
        await browser.post("/login", username="bob", password="wrong password!")
    locked = await browser.post("/login", username="bob", password=BOB_PASSWORD)  # right password, locked
    assert locked.status_code == 401
    messages = {re.search(r'id="error">([^<]*)<', r.text).group(1) for r in (unknown, wrong, locked)}  # type: ignore[union-attr]
    assert messages == {"Invalid username or password."}
    assert "lock" not in locked.text.lower()
    await browser.close()


async def test_generated_admin_must_change_the_password_before_anything_else(
    console: tuple[object, str],
) -> None:
    app, password = console
    admin = Browser(app)
    await admin.get("/login")
    page = await admin.post("/login", username="admin", password=password)
    assert page.url.path == "/password"
    for path in ("/dashboard", "/secrets", "/admin/users"):
        assert (await admin.get(path)).url.path == "/password"
    mismatch = await admin.post(
        "/password", current_password=password, new_password="one passphrase here", confirm_password="other"
    )
    assert mismatch.status_code == 400 and "do not match" in mismatch.text
    weak = await admin.post(
        "/password", current_password=password, new_password="password", confirm_password="password"
    )
    assert weak.status_code == 400
    page = await admin.post(
        "/password",
        current_password=password,
        new_password=NEW_ADMIN_PASSWORD,
        confirm_password=NEW_ADMIN_PASSWORD,
    )
    assert page.url.path == "/dashboard" and "Welcome, admin" in page.text
    assert (await admin.get("/admin/users")).status_code == 200
    await admin.close()


async def test_admin_creates_a_user_who_sees_no_admin_pages(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    page = await admin.get("/admin/users")
    assert 'href="/admin/audit"' in page.text
    created = await admin.post("/admin/users", username="bob", password=BOB_PASSWORD, roles=["member"])
    assert "The account was created." in created.text and ">bob<" in created.text
    taken = await admin.post("/admin/users", username="bob", password=BOB_PASSWORD)
    assert taken.status_code == 400

    bob = Browser(app, ip="198.51.100.5")
    await bob.get("/login")
    dashboard = await bob.post("/login", username="bob", password=BOB_PASSWORD)
    assert dashboard.url.path == "/dashboard"
    assert "/admin/" not in dashboard.text
    for path in ("/admin/users", "/admin/roles", "/admin/audit"):
        denied = await bob.get(path)
        assert denied.status_code == 403 and "You do not have permission" in denied.text
    bob_user = await fundaments.security.get_user_by_username("bob")
    assert bob_user is not None
    granted = await admin.post(f"/admin/users/{bob_user.id}/grant", role="admin")
    assert "The role was granted." in granted.text
    assert (await bob.get("/admin/audit")).status_code == 200  # the rotated cookie followed
    await admin.post(f"/admin/users/{bob_user.id}/disable", confirmed="yes")
    assert (await bob.get("/dashboard")).url.path == "/login"
    await admin.close()
    await bob.close()


async def test_secrets_are_encrypted_bound_to_the_user_and_revealed_on_demand(
    fundaments: Fundaments, console: tuple[object, str]
) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    stored = await admin.post("/secrets", name="api key", value="sk-live-0123456789")
    assert "The secret was stored, encrypted." in stored.text
    assert "sk-live-0123456789" not in stored.text
    revealed = await admin.post("/secrets/reveal", name="api key")
    assert '<pre id="revealed-value">sk-live-0123456789</pre>' in revealed.text
    store = app.state.secrets  # type: ignore[attr-defined]
    admin_user = await fundaments.security.get_user_by_username("admin")
    assert admin_user is not None
    envelope = store.get(admin_user.id, "api key")
    assert envelope and "sk-live" not in envelope
    store.put(admin_user.id, "copied", envelope)  # a value moved to another name does not decrypt
    moved = await admin.post("/secrets/reveal", name="copied")
    assert moved.status_code == 500 and "cannot be decrypted" in moved.text
    deleted = await admin.post("/secrets/delete", name="api key", confirmed="yes")
    assert "The secret was deleted." in deleted.text
    await admin.close()


async def test_sessions_page_revokes_one_and_all_others(console: tuple[object, str]) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    second = Browser(app, ip="198.51.100.77")
    await second.get("/login")
    await second.post("/login", username="admin", password=NEW_ADMIN_PASSWORD)
    third = Browser(app, ip="198.51.100.78")
    await third.get("/login")
    await third.post("/login", username="admin", password=NEW_ADMIN_PASSWORD)
    page = await admin.get("/sessions")
    assert page.text.count('class="session-row"') == 3 and "this session" in page.text
    session_ids = re.findall(r'name="session_id" value="([^"]+)"', page.text)
    assert len(session_ids) == 2
    await admin.post("/sessions/revoke", session_id=session_ids[0])
    page = await admin.post("/sessions/revoke-others")
    assert page.text.count('class="session-row"') == 1
    for other in (second, third):
        assert (await other.get("/dashboard")).url.path == "/login"
        await other.close()
    await admin.close()


async def test_audit_page_filters_and_shows_the_chain_status(console: tuple[object, str]) -> None:
    app, password = console
    admin = await signed_in_admin(app, password)
    page = await admin.get("/admin/audit?kind=login.succeeded&limit=5&since=2000-01-01&user_id=1")
    assert "Audit chain intact" in page.text and "login.succeeded" in page.text
    assert "password.changed" not in page.text
    for junk in ("limit=abc", "since=yesterday", "user_id=-1", "limit=-5", "limit=0", "before=-1"):
        refused = await admin.get(f"/admin/audit?{junk}")
        assert refused.status_code == 400 and 'id="error"' in refused.text, junk
    roles = await admin.post("/admin/roles", name="editor", permissions="articles:read, articles:write")
    assert "The role was created." in roles.text and "articles:write" in roles.text
    await admin.close()


async def test_pages_carry_the_security_headers_and_health_answers(console: tuple[object, str]) -> None:
    app, _ = console
    browser = Browser(app)
    page = await browser.get("/login")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY"
    css = await browser.get("/static/style.css")
    assert css.status_code == 200 and "text/css" in css.headers["content-type"]
    health = await browser.get("/health")
    assert health.json()["status"] == "ok"
    forged = await browser.http.post(
        "/login", data={"username": "admin", "password": "x"}, headers={"origin": BASE}
    )
    assert forged.status_code == 403
    await browser.close()
