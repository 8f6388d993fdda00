"""The console's recovery pages over ASGI, with real mail: forgot password, the reset link, email
verification, "My account".

Mail goes through the real outbox to a real SMTP server (aiosmtpd on a loopback port) or to the
file outbox; each test reads the link out of the delivered message and follows it as a user would.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from starlette.routing import Route

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from test_mail import SmtpServer
from test_web_console import BASE, Browser, build_app  # type: ignore[attr-defined]

PASSWORD = "correct horse battery staple"
NEW_PASSWORD = "a brand new passphrase 2026"
ANN = "ann@example.com"
LINK = re.compile(r"(https?://[^\s\"<>]+)(/(?:reset-password|verify-email))[?]token=([A-Za-z0-9_%-]+)")
SENT = "If an account has this address, a link to choose a new password is on its way."
RESET_DONE = "Your password was changed and every session of your account was signed out."
LINK_INVALID = "This link is not valid any more"
CLIENT = {"ip_address": "192.0.2.1", "user_agent": "Mozilla/5.0 recovery test"}
SERVER_LOGGERS = ("app", "fundaments", "starlette", "uvicorn")  # not the test's own client or SMTP server


class Mailbox:
    """The mails the console sent, read where they were delivered: an SMTP server or the outbox.

    Outbox files are told apart by Message-ID, not by name: on SQLite an emptied outbox table
    hands out its ids again, so a later mail's ``<id>.eml`` can replace an earlier one's.
    """

    def __init__(self, fundaments: Fundaments, smtp: SmtpServer | None, outbox: Path) -> None:
        self.fundaments, self.smtp, self.outbox = fundaments, smtp, outbox
        self.seen: set[str] = set()

    def _new(self) -> list[EmailMessage]:
        if self.smtp is not None:
            delivered = list(self.smtp.inbox.messages)
        else:
            delivered = [
                email.message_from_bytes(p.read_bytes(), _class=EmailMessage, policy=email.policy.default)
                for p in sorted(self.outbox.glob("*.eml"))
            ]
        return [m for m in delivered if str(m["Message-ID"]) not in self.seen]

    async def take(self, expect: int = 0) -> list[EmailMessage]:
        """Drain the outbox now; the mails delivered since the last call (waiting up to 5 s for
        ``expect`` of them: the background drainer may hold them)."""
        await self.fundaments["mail"].send_due()
        deadline = time.monotonic() + 5
        while len(self._new()) < expect and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            await self.fundaments["mail"].send_due()
        messages = self._new()
        self.seen |= {str(m["Message-ID"]) for m in messages}
        return messages

    async def link(self, to: str, path: str) -> tuple[str, str]:
        """The one new mail to ``to``: its link as a path on the console, and the token."""
        [message] = await self.take(expect=1)
        assert message["To"] == to
        part = message.get_body(preferencelist=("plain",))
        assert part is not None
        found = LINK.search(str(part.get_content()))
        assert found is not None and found.group(1) == BASE and found.group(2) == path, found
        return f"{found.group(2)}?token={found.group(3)}", found.group(3)


@pytest.fixture
def transport(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "smtp"))


@pytest.fixture
def smtp_server(transport: str) -> Iterator[SmtpServer | None]:
    if transport != "smtp":
        yield None
        return
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(make_settings: Callable[..., Settings], smtp_server: SmtpServer | None) -> Settings:
    # As test_web_console's: ALLOWED_HOSTS is BASE's host; links point at BASE; no padding wait.
    mail = {"mail_url": smtp_server.url} if smtp_server is not None else {}  # else the file outbox
    return make_settings(
        allowed_hosts=["console.test"], public_base_url=BASE, reset_request_seconds=0, **mail
    )


@pytest.fixture
async def app(fundaments: Fundaments, tmp_path: Path) -> AsyncIterator[object]:
    built = build_app(fundaments, data_dir=tmp_path / "app-data")
    yield built
    built.state.secrets.close()


@pytest.fixture
def mailbox(fundaments: Fundaments, smtp_server: SmtpServer | None, tmp_path: Path) -> Mailbox:
    return Mailbox(fundaments, smtp_server, tmp_path / "outbox")


async def ask_for_reset(app: object, address: str = ANN, ip: str = "203.0.113.7") -> Browser:
    browser = Browser(app, ip=ip)
    login = await browser.get("/login")
    assert 'href="/forgot-password"' in login.text
    await browser.get("/forgot-password")
    sent = await browser.post("/forgot-password", email=address)
    assert sent.status_code == 200 and sent.url.path == "/forgot-password/sent"
    assert SENT in sent.text
    return browser


def hidden_token(page: str) -> str | None:
    found = re.search(r'name="token" value="([^"]*)"', page)
    return found.group(1) if found else None


# --- the reset, end to end ------------------------------------------------------------------------------
@pytest.mark.parametrize("transport", ["smtp", "file"], indirect=True)
async def test_forgot_password_mail_link_reset_then_only_the_new_password_works(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    security = fundaments.security
    await security.register_user("ann", PASSWORD, email=ANN)
    old = Browser(app, ip="198.51.100.9")  # ann signed in elsewhere before she forgot the password
    await old.get("/login")
    assert (await old.post("/login", username="ann", password=PASSWORD)).url.path == "/dashboard"

    browser = await ask_for_reset(app)
    path, token = await mailbox.link(ANN, "/reset-password")
    form = await browser.get(path)
    assert form.status_code == 200 and hidden_token(form.text) == token
    assert form.headers["referrer-policy"] == "strict-origin" and form.headers["cache-control"] == "no-store"
    minimum = fundaments.settings.password_min_length
    assert f'minlength="{minimum}"' in form.text and f"At least {minimum} characters." in form.text

    differ = await browser.post("/reset-password", token=token, new_password=NEW_PASSWORD,
                                confirm_password=NEW_PASSWORD + "!")  # fmt: skip
    assert differ.status_code == 400 and "do not match" in differ.text and hidden_token(differ.text) == token
    weak = await browser.post("/reset-password", token=token, new_password="short", confirm_password="short")
    assert weak.status_code == 400 and f"use at least {minimum} characters" in weak.text
    assert hidden_token(weak.text) == token and weak.headers["referrer-policy"] == "strict-origin"

    done = await browser.post(
        "/reset-password", token=token, new_password=NEW_PASSWORD, confirm_password=NEW_PASSWORD
    )
    assert done.url.path == "/reset-password/done" and RESET_DONE in done.text
    assert 'href="/login"' in done.text and token not in done.text
    [notice] = await mailbox.take(expect=1)
    assert notice["To"] == ANN and "password was changed" in notice["Subject"]

    assert (await old.get("/dashboard")).url.path == "/login"  # the old session cookie is dead
    refused = await browser.post("/login", username="ann", password=PASSWORD)
    assert refused.status_code == 401
    await browser.get("/login")
    signed_in = await browser.post("/login", username="ann", password=NEW_PASSWORD)
    assert signed_in.url.path == "/dashboard"
    await browser.close()
    await old.close()


async def test_a_used_link_shows_how_to_get_a_new_one_and_changes_nothing(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    await fundaments.security.register_user("ann", PASSWORD, email=ANN)
    browser = await ask_for_reset(app)
    path, token = await mailbox.link(ANN, "/reset-password")
    await browser.get(path)
    await browser.post(
        "/reset-password", token=token, new_password=NEW_PASSWORD, confirm_password=NEW_PASSWORD
    )
    opened = await browser.get(path)  # the link again: dead, said at once (the GET spends nothing)
    assert opened.status_code == 400 and LINK_INVALID in opened.text and hidden_token(opened.text) is None
    again = await browser.post(
        "/reset-password",
        token=token,
        new_password="a third passphrase 999",
        confirm_password="a third passphrase 999",
    )
    assert again.status_code == 400 and LINK_INVALID in again.text  # and its POST is refused
    assert 'href="/forgot-password"' in again.text and hidden_token(again.text) is None
    assert again.headers["referrer-policy"] == "strict-origin"
    assert not await fundaments.security.user_login("ann", "a third passphrase 999", CLIENT)
    assert await fundaments.security.user_login("ann", NEW_PASSWORD, CLIENT)
    await browser.close()


async def test_a_newer_link_replaces_the_older_and_a_tampered_token_is_refused(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    await fundaments.security.register_user("ann", PASSWORD, email=ANN)
    browser = await ask_for_reset(app)
    _, first = await mailbox.link(ANN, "/reset-password")
    await ask_for_reset(app)
    _, second = await mailbox.link(ANN, "/reset-password")
    await browser.get("/forgot-password")
    for bad in (first, second[:-1] + ("A" if second[-1] != "A" else "B")):
        page = await browser.post(
            "/reset-password", token=bad, new_password=NEW_PASSWORD, confirm_password=NEW_PASSWORD
        )
        assert page.status_code == 400 and LINK_INVALID in page.text
    ok = await browser.post(
        "/reset-password", token=second, new_password=NEW_PASSWORD, confirm_password=NEW_PASSWORD
    )
    assert ok.url.path == "/reset-password/done"
    await browser.close()


@pytest.mark.parametrize(
    "query", ["", "?token=", "?token=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "?token=" + "a" * 200]
)
@pytest.mark.parametrize("path", ["/reset-password", "/verify-email"])
async def test_a_mangled_link_is_refused_at_once_without_copying_it_into_the_page(
    app: object, path: str, query: str
) -> None:
    browser = Browser(app)
    page = await browser.get(path + query)
    assert page.status_code == 400 and LINK_INVALID in page.text
    assert hidden_token(page.text) is None and "<script>alert" not in page.text and "a" * 200 not in page.text
    await browser.close()


# --- no enumeration ---------------------------------------------------------------------------------------
async def test_known_unknown_and_disabled_addresses_get_the_same_page(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    security = fundaments.security
    await security.register_user("ann", PASSWORD, email=ANN)
    bob = await security.register_user("bob", PASSWORD, email="bob@example.com")
    await security.disable_user(bob.id)
    pages = []
    for address in (ANN, "nobody@example.com", "bob@example.com"):
        browser = Browser(app)
        await browser.get("/forgot-password")
        page = await browser.post("/forgot-password", email=address)
        pages.append((page.status_code, str(page.url), page.text, page.history[0].status_code))
        await browser.close()
    assert pages[0] == pages[1] == pages[2]
    assert [m["To"] for m in await mailbox.take(expect=1)] == [ANN]  # a mail only to the live account


async def test_text_that_is_no_address_gets_the_form_again_with_a_fixed_message(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    browser = Browser(app)
    await browser.get("/forgot-password")
    for junk in ("not an address", "a@b@c", "ann@<b>example</b>.com", "x" * 400 + "@example.com"):
        page = await browser.post("/forgot-password", email=junk)
        assert page.status_code == 400 and page.url.path == "/forgot-password"
        assert re.search(
            r'id="error">That is not a valid email address\. Check it and try again\.<', page.text
        )
        assert "<b>example" not in page.text  # a refilled field is escaped, never markup
    assert await mailbox.take() == []
    await browser.close()


# --- email verification -----------------------------------------------------------------------------------
async def test_a_signed_in_user_sees_the_address_and_confirms_it_with_a_post_not_a_get(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    security = fundaments.security
    ann = await security.register_user("ann", PASSWORD, email=ANN)
    browser = Browser(app)
    await browser.get("/login")
    await browser.post("/login", username="ann", password=PASSWORD)
    account = await browser.get("/account")
    assert 'id="account-email">ann@example.com<' in account.text and "not confirmed" in account.text
    sent = await browser.post("/account/verify-email")
    assert sent.url.path == "/account" and "A confirmation link is on its way" in sent.text
    path, token = await mailbox.link(ANN, "/verify-email")

    scanner = Browser(app, ip="192.0.2.80")  # a mail scanner prefetching the link, twice
    for _ in range(2):
        confirm = await scanner.get(path)
        assert confirm.status_code == 200 and 'id="confirm-email"' in confirm.text
        assert hidden_token(confirm.text) == token and confirm.headers["referrer-policy"] == "strict-origin"
    user = await security.get_user(ann.id)
    assert user is not None and not user.email_verified  # the GETs verified nothing

    done = await browser.post("/verify-email", token=token)
    assert done.url.path == "/verify-email/done" and "Your email address is confirmed." in done.text
    user = await security.get_user(ann.id)
    assert user is not None and user.email_verified
    again = await scanner.post("/verify-email", token=token)
    assert again.status_code == 400 and LINK_INVALID in again.text and 'href="/account"' in again.text
    account = await browser.get("/account")
    assert 'id="email-status">confirmed<' in account.text and 'id="send-verification"' not in account.text
    already = await browser.post("/account/verify-email")  # a stale page's button
    assert "already confirmed; nothing was sent" in already.text
    assert await mailbox.take() == []
    await browser.close()
    await scanner.close()


async def test_an_account_without_an_address_is_told_so(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    await fundaments.security.register_user("carl", PASSWORD)
    browser = Browser(app)
    await browser.get("/login")
    await browser.post("/login", username="carl", password=PASSWORD)
    account = await browser.get("/account")
    assert "No email address." in account.text and 'id="send-verification"' not in account.text
    page = await browser.post("/account/verify-email")
    assert "has no email address" in page.text and await mailbox.take() == []
    assert (await Browser(app).get("/account")).url.path == "/login"  # signed out: the sign-in page
    await browser.close()


# --- attacks ------------------------------------------------------------------------------------------------
def recovery_posts() -> list[str]:
    from app.console import Console
    from app.recovery_pages import RecoveryPages

    unbuilt = object.__new__(RecoveryPages)  # the table only names the handlers
    unbuilt.console = object.__new__(Console)
    return [r.path for r in unbuilt.routes() if isinstance(r, Route) and "POST" in (r.methods or ())]


async def test_every_recovery_post_needs_the_csrf_token_and_changes_nothing_without_it(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    security = fundaments.security
    ann = await security.register_user("ann", PASSWORD, email=ANN)
    await security.request_password_reset(ANN, CLIENT)
    _, reset = await mailbox.link(ANN, "/reset-password")
    await security.request_email_verification(ann.id)
    _, verify = await mailbox.link(ANN, "/verify-email")
    browser = Browser(app)
    await browser.get("/login")
    await browser.post("/login", username="ann", password=PASSWORD)  # signed in: /account/* too
    fields = {"email": ANN, "token": reset, "new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
    posts = recovery_posts()
    assert set(posts) == {"/forgot-password", "/reset-password", "/verify-email", "/account/verify-email"}
    for path in posts:
        data = {**fields, "token": verify if path == "/verify-email" else reset}
        for csrf in ({}, {"csrf_token": "0" * 64}, {"csrf_token": browser.csrf[:-1]}):
            page = await browser.http.post(path, data={**data, **csrf}, headers={"origin": BASE})
            assert page.status_code == 403, (path, csrf, page.status_code)
        cross = await browser.http.post(  # the right token from another origin
            path, data={**data, "csrf_token": browser.csrf}, headers={"origin": "https://evil.test"}
        )
        assert cross.status_code == 403, path
    assert await mailbox.take() == []
    user = await security.get_user(ann.id)
    assert user is not None and not user.email_verified
    assert await security.user_login("ann", PASSWORD, CLIENT)
    assert await security.reset_password(reset, NEW_PASSWORD, CLIENT)  # both unspent
    assert (await security.verify_email(verify)).email_verified
    await browser.close()


async def test_an_anonymous_form_needs_the_cookie_its_page_set(app: object, mailbox: Mailbox) -> None:
    """The double-submit token of an anonymous page: a forged form from a browser without the
    console's CSRF cookie is refused, whatever token it carries."""
    browser = Browser(app)
    await browser.get("/forgot-password")
    stranger = Browser(app, ip="192.0.2.66")  # never loaded a page of the console
    page = await stranger.http.post(
        "/forgot-password", data={"csrf_token": browser.csrf, "email": ANN}, headers={"origin": BASE}
    )
    assert page.status_code == 403
    await browser.close()
    await stranger.close()


async def test_no_log_line_and_no_referer_carries_a_link_token(
    fundaments: Fundaments, app: object, mailbox: Mailbox, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await fundaments.security.register_user("ann", PASSWORD, email=ANN)
    browser = await ask_for_reset(app)
    path, token = await mailbox.link(ANN, "/reset-password")
    form = await browser.get(path)
    await browser.post("/reset-password", token=token, new_password="short", confirm_password="short")
    await browser.post(
        "/reset-password", token=token, new_password=NEW_PASSWORD, confirm_password=NEW_PASSWORD
    )
    await browser.post(
        "/reset-password", token=token, new_password=NEW_PASSWORD, confirm_password=NEW_PASSWORD
    )
    logged = "\n".join(r.getMessage() for r in caplog.records if r.name.split(".")[0] in SERVER_LOGGERS)
    assert "password reset" in logged and token not in logged
    # What the form page loads (its stylesheet) or submits gets the origin as Referer, not its URL.
    assert form.headers["referrer-policy"] == "strict-origin"
    assert 'name="token"' in form.text and f"?token={token}" not in form.text
    await browser.close()


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def test_uvicorns_access_log_masks_the_token_of_a_link(settings: Settings) -> None:
    """The mailed link's GET is a request line like any other: uvicorn logs it, query included."""
    from app.app import server_config

    server_config(object(), settings)  # type: ignore[arg-type]  # configures uvicorn's loggers
    access, collect = logging.getLogger("uvicorn.access"), Collect()
    access.addHandler(collect)
    try:
        token = "k_cOmOFUbo6jOrBsYsr58Bs5GKw3uLF1ceC4IAhRweM"
        path = f"/reset-password?token={token}&x=1"
        access.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET", path, "1.1", 200)
    finally:
        access.removeHandler(collect)
    assert collect.lines == ['127.0.0.1:5000 - "GET /reset-password?token=***&x=1 HTTP/1.1" 200']


async def test_a_full_hashing_pool_is_a_503_with_retry_after_and_the_link_stays_usable(
    make_settings: Callable[..., Settings], clock: ManualClock, tmp_path: Path
) -> None:
    started = await initialize_fundaments(
        make_settings(
            hashing_concurrency=1,
            hashing_queue_size=0,
            allowed_hosts=["console.test"],
            public_base_url=BASE,
            reset_request_seconds=0,
        ),
        clock=clock,
        configure_logs=False,
    )
    app = build_app(started, data_dir=tmp_path / "app-data")
    try:
        addresses = [f"user{i}@example.com" for i in range(6)]
        for i, address in enumerate(addresses):
            await started.security.register_user(f"user{i}", PASSWORD, email=address)
            await started.security.request_password_reset(address, CLIENT)
        mails = await Mailbox(started, None, tmp_path / "outbox").take(expect=len(addresses))
        tokens = {
            str(m["To"]): LINK.search(str(m.get_body(("plain",)).get_content())).group(3) for m in mails
        }  # type: ignore[union-attr]
        browsers = [Browser(app, ip=f"192.0.2.{i}") for i in range(len(addresses))]
        for browser, address in zip(browsers, addresses, strict=True):
            await browser.get(f"/reset-password?token={tokens[address]}")

        async def reset(browser: Browser, address: str) -> int:
            fields = {"csrf_token": browser.csrf, "token": tokens[address]}
            fields |= {"new_password": NEW_PASSWORD, "confirm_password": NEW_PASSWORD}
            page = await browser.http.post("/reset-password", data=fields, headers={"origin": BASE})
            if page.status_code == 503:
                assert page.headers["retry-after"] == "5" and "The server is busy" in page.text
            return page.status_code

        statuses = await asyncio.gather(*(reset(b, a) for b, a in zip(browsers, addresses, strict=True)))
        assert set(statuses) == {303, 503}, statuses  # one hash at a time, the others told to retry
        for status, browser, address in zip(statuses, browsers, addresses, strict=True):
            if status == 503:  # the link was not spent: the retry works
                assert await reset(browser, address) == 303
        for browser in browsers:
            await browser.close()
    finally:
        app.state.secrets.close()
        await started.close()


async def test_a_reset_flood_against_one_address_from_many_ips_gets_the_429_page(
    fundaments: Fundaments, app: object, mailbox: Mailbox
) -> None:
    """Attack: a botnet asking for reset mails to one victim (RATE_LIMIT_ACCOUNT_MAIL_TARGET, 5/hour
    per address by default, as auth_router's POST /password-reset)."""
    await fundaments.security.register_user("ann", PASSWORD, email=ANN)
    statuses = []
    for n in range(7):
        browser = Browser(app, ip=f"198.51.100.{n + 1}")
        await browser.get("/forgot-password")
        page = await browser.post("/forgot-password", email=ANN.upper() if n % 2 else ANN)
        statuses.append(page.status_code)
        if page.status_code == 429:
            assert "Too many attempts" in page.text and int(page.headers["retry-after"]) >= 1
            assert '"account-mail-address";r=0;' in page.headers["ratelimit"]
        await browser.close()
    assert statuses == [200] * 5 + [429] * 2
    assert len(await mailbox.take(expect=3)) == 3  # the silent throttle behind it: 3 mails an hour
