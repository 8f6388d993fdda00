"""The console's two-factor pages over ASGI, on SQLite and PostgreSQL: the second login step (the
mfa_token only in a POST form of a no-store page, CSRF on it, a wrong code answered generically, an
mfa_token that is over sends back to the login page, the token alone is no session)."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pyotp
import pytest

from fundaments.bootstrap import Fundaments, ensure_admin
from fundaments.clock import ManualClock
from fundaments.security import User
from test_web_console import (  # noqa: F401 - settings: ALLOWED_HOSTS for BASE
    BASE,
    BOB_PASSWORD,
    Browser,
    build_app,
    settings,
    signed_in_admin,
)

GENERIC = "The code is not correct (or was used already); type the current one."


@pytest.fixture
async def site(fundaments: Fundaments, tmp_path: Path) -> AsyncIterator[tuple[object, str]]:
    password = await ensure_admin(fundaments.security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    yield app, password
    app.state.secrets.close()


@pytest.fixture
async def bob_totp(fundaments: Fundaments, clock: ManualClock) -> pyotp.TOTP:
    """bob, with TOTP on (the enrolment's code spent: the clock moves to the next step)."""
    clock.set((int(clock.now()) // 30) * 30 + 15)
    user: User = await fundaments.security.register_user("bob", BOB_PASSWORD)
    enrolment = await fundaments.security.begin_totp_enrolment(user.id)
    generator = pyotp.TOTP(enrolment.secret)
    await fundaments.security.confirm_totp_enrolment(user.id, generator.at(clock.now()))
    clock.advance(30)
    return generator


def hidden_token(page: httpx.Response) -> str:
    found = re.search(r'name="mfa_token" value="([^"]+)"', page.text)
    assert found, page.text
    return found.group(1)


async def password_step(app: object) -> tuple[Browser, httpx.Response]:
    browser = Browser(app)
    await browser.get("/login")
    page = await browser.post("/login", username="bob", password=BOB_PASSWORD)
    return browser, page


async def test_password_then_totp_code_signs_in(
    fundaments: Fundaments, site: tuple[object, str], bob_totp: pyotp.TOTP, clock: ManualClock
) -> None:
    app, _ = site
    browser, page = await password_step(app)
    assert page.status_code == 200 and page.url.path == "/login"  # the POST's own answer, no redirect
    assert 'action="/login/code"' in page.text and 'id="code"' in page.text
    assert page.headers["cache-control"] == "no-store"
    token = hidden_token(page)
    assert all(token not in value for value in page.headers.values())  # not in a cookie or a Location
    assert browser.http.cookies.get("__Host-session") is None  # the password alone: no session
    assert not await fundaments.security.list_sessions(1) and not await fundaments.security.list_sessions(2)
    done = await browser.post("/login/code", mfa_token=token, code=bob_totp.at(clock.now()))
    assert done.status_code == 200 and done.url.path == "/dashboard", done.text
    assert 'id="signed-in-as">bob<' in done.text
    assert browser.http.cookies.get("__Host-session") is not None
    assert browser.http.cookies.get("__Host-device") is not None  # as a password-only login
    assert len(await fundaments.security.list_sessions(2)) == 1
    await browser.close()


async def test_a_recovery_code_signs_in_once(
    fundaments: Fundaments, site: tuple[object, str], clock: ManualClock
) -> None:
    app, _ = site
    clock.set((int(clock.now()) // 30) * 30 + 15)
    user = await fundaments.security.register_user("bob", BOB_PASSWORD)
    generator = pyotp.TOTP((await fundaments.security.begin_totp_enrolment(user.id)).secret)
    codes = await fundaments.security.confirm_totp_enrolment(user.id, generator.at(clock.now()))
    browser, page = await password_step(app)
    done = await browser.post("/login/code", mfa_token=hidden_token(page), code=codes[0].lower())
    assert done.url.path == "/dashboard", done.text
    await browser.close()
    again, page = await password_step(app)
    refused = await again.post("/login/code", mfa_token=hidden_token(page), code=codes[0])
    assert refused.status_code == 401 and GENERIC in refused.text  # used already
    await again.close()


async def test_a_wrong_code_is_refused_generically_and_the_token_tries_again(
    fundaments: Fundaments, site: tuple[object, str], bob_totp: pyotp.TOTP, clock: ManualClock
) -> None:
    app, _ = site
    browser, page = await password_step(app)
    token = hidden_token(page)
    for wrong in ("000000", "not a code", ""):
        refused = await browser.post("/login/code", mfa_token=token, code=wrong)
        assert refused.status_code == 401 and GENERIC in refused.text, wrong
        assert refused.headers["cache-control"] == "no-store"
        assert hidden_token(refused) == token  # the same challenge, until its budget or expiry
        assert browser.http.cookies.get("__Host-session") is None
    done = await browser.post("/login/code", mfa_token=token, code=bob_totp.at(clock.now()))
    assert done.url.path == "/dashboard"
    await browser.close()


async def test_an_expired_or_spent_token_goes_back_to_the_login_page(
    fundaments: Fundaments, site: tuple[object, str], bob_totp: pyotp.TOTP, clock: ManualClock
) -> None:
    app, _ = site
    browser, page = await password_step(app)
    token = hidden_token(page)
    clock.advance(fundaments.security.mfa_token_ttl + 1)
    late = await browser.post("/login/code", mfa_token=token, code=bob_totp.at(clock.now()))
    assert late.url.path == "/login" and "sign in again" in late.text  # attack: a stale challenge
    assert browser.http.cookies.get("__Host-session") is None
    for forged in ("", "x" * 43, "a" * 500):  # attack: no token, a guessed one, an over-long one
        refused = await browser.post("/login/code", mfa_token=forged, code=bob_totp.at(clock.now()))
        assert refused.url.path == "/login" and browser.http.cookies.get("__Host-session") is None
    browser2, page = await password_step(app)
    token = hidden_token(page)
    await browser2.post("/login/code", mfa_token=token, code=bob_totp.at(clock.now()))
    await browser2.post("/logout")
    clock.advance(30)
    reused = await browser2.post("/login/code", mfa_token=token, code=bob_totp.at(clock.now()))
    assert reused.url.path == "/login"  # attack: a used challenge once more
    await browser.close()
    await browser2.close()


async def test_the_mfa_token_alone_gives_no_access(
    fundaments: Fundaments, site: tuple[object, str], bob_totp: pyotp.TOTP
) -> None:
    app, _ = site
    browser, page = await password_step(app)
    token = hidden_token(page)
    thief = Browser(app)
    thief.http.cookies.set("__Host-session", token, domain="console.test")
    for path in ("/dashboard", "/account", "/sessions", "/account/security"):
        as_cookie = await thief.http.get(path)  # attack: the token as the session cookie
        assert as_cookie.status_code == 303 and as_cookie.headers["location"] == "/login", path
        as_bearer = await browser.http.get(path, headers={"authorization": f"Bearer {token}"})  # attack
        assert as_bearer.status_code in (303, 401), path
        assert 'id="signed-in-as"' not in as_bearer.text
    await thief.close()
    await browser.close()


async def test_the_code_form_needs_its_csrf_token(
    fundaments: Fundaments, site: tuple[object, str], bob_totp: pyotp.TOTP, clock: ManualClock
) -> None:
    app, _ = site
    browser, page = await password_step(app)
    token = hidden_token(page)
    code = bob_totp.at(clock.now())
    forged = await browser.http.post(  # attack: no csrf_token
        "/login/code", data={"mfa_token": token, "code": code}, headers={"origin": BASE}
    )
    assert forged.status_code == 403
    cross = await browser.http.post(  # attack: another site's form
        "/login/code",
        data={"csrf_token": browser.csrf, "mfa_token": token, "code": code},
        headers={"origin": "https://evil.example"},
    )
    assert cross.status_code == 403
    assert browser.http.cookies.get("__Host-session") is None
    done = await browser.post("/login/code", mfa_token=token, code=code)  # the code was not spent
    assert done.url.path == "/dashboard"
    await browser.close()


# --- the account's security page ------------------------------------------------------------------
async def signed_in_bob(fundaments: Fundaments, app: object) -> Browser:
    await fundaments.security.register_user("bob", BOB_PASSWORD, email="bob@example.com")
    browser = Browser(app)
    await browser.get("/login")
    page = await browser.post("/login", username="bob", password=BOB_PASSWORD)
    assert page.url.path == "/dashboard", page.text
    return browser


def shown_codes(page: httpx.Response) -> list[str]:
    return re.findall(r'<code class="recovery-code">([0-9A-Z-]+)</code>', page.text)


async def test_enrolment_shows_a_qr_svg_and_the_secret_then_the_codes_once(
    fundaments: Fundaments, site: tuple[object, str], clock: ManualClock
) -> None:
    app, _ = site
    bob = await signed_in_bob(fundaments, app)
    page = await bob.get("/account/security")
    assert 'href="/account/security"' in page.text and 'id="totp-state">off<' in page.text  # in the nav
    begun = await bob.post("/account/security/totp")
    assert begun.status_code == 200 and "location" not in begun.headers
    assert begun.headers["cache-control"] == "no-store"
    svg = re.search(r'<div class="qr-box" id="qr">(<svg .*?</svg>)</div>', begun.text, re.S)
    assert svg and "style" not in svg.group(1) and "<script" not in svg.group(1)
    csp = begun.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp  # the inline svg needs neither
    secret = re.search(r'<code id="totp-secret">([A-Z2-7 ]+)</code>', begun.text)
    assert secret, begun.text
    generator = pyotp.TOTP(secret.group(1).replace(" ", ""))
    assert generator.secret not in begun.text.replace(secret.group(0), "")  # not in a hidden field
    wrong = await bob.post("/account/security/totp/confirm", code="000000")
    assert wrong.status_code == 400 and "not correct" in wrong.text
    assert not (await fundaments.security.mfa_status(2)).totp
    done = await bob.post("/account/security/totp/confirm", code=generator.at(clock.now()))
    assert done.status_code == 200 and "location" not in done.headers and done.url.path.endswith("/confirm")
    codes = shown_codes(done)
    assert len(codes) == 10 and done.headers["cache-control"] == "no-store"
    assert 'id="totp-state">on<' in done.text and 'id="codes-left">10<' in done.text
    later = await bob.get("/account/security")
    assert not shown_codes(later) and all(code not in later.text for code in codes)  # shown once
    status = await fundaments.security.mfa_status(2)
    assert status.totp and status.recovery_codes_left == 10
    await bob.close()


async def test_regenerate_shows_a_new_set_and_the_old_one_dies(
    fundaments: Fundaments, site: tuple[object, str], clock: ManualClock
) -> None:
    app, _ = site
    bob = await signed_in_bob(fundaments, app)
    off = await bob.post("/account/security/recovery-codes")
    assert off.status_code == 400 and "enrol TOTP first" in off.text
    generator = pyotp.TOTP((await fundaments.security.begin_totp_enrolment(2)).secret)
    old = await fundaments.security.confirm_totp_enrolment(2, generator.at(clock.now()))
    await bob.get("/account/security")
    forged = await bob.http.post("/account/security/recovery-codes", headers={"origin": BASE})  # no csrf
    assert forged.status_code == 403
    new = await bob.post("/account/security/recovery-codes")
    codes = shown_codes(new)
    assert len(codes) == 10 and not set(codes) & set(old)
    browser, page = await password_step(app)
    refused = await browser.post("/login/code", mfa_token=hidden_token(page), code=old[0])
    assert refused.status_code == 401  # a code of the old set
    done = await browser.post("/login/code", mfa_token=hidden_token(refused), code=codes[0])
    assert done.url.path == "/dashboard"
    await browser.close()
    await bob.close()


async def test_disable_needs_the_confirmation_and_csrf(
    fundaments: Fundaments, site: tuple[object, str], clock: ManualClock
) -> None:
    app, _ = site
    bob = await signed_in_bob(fundaments, app)
    generator = pyotp.TOTP((await fundaments.security.begin_totp_enrolment(2)).secret)
    await fundaments.security.confirm_totp_enrolment(2, generator.at(clock.now()))
    await bob.get("/account/security")
    forged = await bob.http.post(  # attack: no csrf_token
        "/account/security/totp/disable", data={"confirmed": "yes"}, headers={"origin": BASE}
    )
    assert forged.status_code == 403
    unconfirmed = await bob.post("/account/security/totp/disable")  # no confirmed=yes: the page
    assert (
        unconfirmed.url.path == "/account/security/totp/disable" and 'id="confirmation"' in unconfirmed.text
    )
    assert (await fundaments.security.mfa_status(2)).totp
    done = await bob.post("/account/security/totp/disable", confirmed="yes")
    assert done.url.path == "/account/security" and "Two-factor sign-in is off" in done.text
    assert not (await fundaments.security.mfa_status(2)).totp
    again = await bob.post("/account/security/totp/disable", confirmed="yes")
    assert "was not on; nothing changed" in again.text
    await bob.close()


# --- an administrator's reset -----------------------------------------------------------------------
async def test_an_administrator_resets_mfa_with_the_permission_and_a_confirmation(
    fundaments: Fundaments, site: tuple[object, str], clock: ManualClock
) -> None:
    app, password = site
    bob = await signed_in_bob(fundaments, app)
    generator = pyotp.TOTP((await fundaments.security.begin_totp_enrolment(2)).secret)
    await fundaments.security.confirm_totp_enrolment(2, generator.at(clock.now()))
    await fundaments.security.register_user("carol", BOB_PASSWORD, email="carol@example.com")
    denied = await bob.post("/admin/users/3/mfa-reset", confirmed="yes")  # attack: no console:users
    assert denied.status_code == 403
    denied = await bob.get("/admin/users/2/mfa-reset")
    assert denied.status_code == 403
    admin = await signed_in_admin(app, password)
    page = await admin.get("/admin/users/2")
    assert 'id="mfa-state">TOTP on<' in page.text and "10 recovery code(s) left" in page.text
    forged = await admin.http.post(  # attack: no csrf_token
        "/admin/users/2/mfa-reset", data={"confirmed": "yes"}, headers={"origin": BASE}
    )
    assert forged.status_code == 403
    asked = await admin.post("/admin/users/2/mfa-reset")  # no confirmed=yes: the confirmation page
    assert 'id="confirmation"' in asked.text and (await fundaments.security.mfa_status(2)).totp
    done = await admin.post("/admin/users/2/mfa-reset", confirmed="yes")
    assert done.url.path == "/admin/users/2" and "was turned off" in done.text
    assert not (await fundaments.security.mfa_status(2)).totp
    assert 'id="mfa-state">off<' in done.text
    events = await fundaments.security.audit_events(kind="mfa.totp_disabled")
    assert [(e.actor_user_id, e.subject_user_id) for e in events] == [(1, 2)]
    assert (await admin.post("/admin/users/3/mfa-reset", confirmed="yes")).status_code == 200
    assert "had no two-factor sign-in" in (await admin.get("/admin/users/3?m=mfa_not_enabled")).text
    assert (await admin.get("/admin/users/99/mfa-reset")).status_code == 404
    browser, page = await password_step(app)  # bob signs in with the password alone again
    assert page.url.path == "/dashboard"
    await browser.close()
    await admin.close()
    await bob.close()
