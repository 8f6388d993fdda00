"""End to end in real headless Chromium: `python main.py`, then the console as people use it.

Debian's chromium and chromium-driver (installed by .ci/run), driven by Selenium. Skipped with a
reason when they are absent, except under CI=true, where they must be there. Screenshots of every
page go to e2e-screenshots/ (git-ignored; FUNDAMENTS_E2E_SCREENSHOTS overrides the folder).
"""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(os.environ.get("FUNDAMENTS_E2E_SCREENSHOTS", REPO / "e2e-screenshots"))
ADMIN_PASSWORD = "an operator's own long passphrase"
CAROL_TEMPORARY = "a temporary passphrase from the admin 31"
CAROL_PASSWORD = "she keeps a long private passphrase"
DAVE_PASSWORD = "my first long passphrase here"
DAVE_NEW_PASSWORD = "a fresh passphrase chosen later"
DAVE_EMAIL = "dave@example.com"
GENERIC = "Invalid username or password."

pytestmark = pytest.mark.slow


def _need_browser() -> None:
    problem = None
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        problem = f"{CHROMIUM} and {CHROMEDRIVER} are needed (apt-get install chromium chromium-driver)"
    else:
        try:
            import selenium  # noqa: F401
        except ImportError:
            problem = "selenium is not installed (pip install -e '.[test]')"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(f"under CI=true the browser test must run: {problem}")
        pytest.skip(problem)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    """`python main.py` in an empty directory; its output collected by a thread."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
        self.proc = subprocess.Popen(
            [sys.executable, str(REPO / "main.py")],
            cwd=workdir,
            env={**keep, "PORT": str(self.port), "PUBLIC_BASE_URL": self.base},  # mailed links come here
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)

    def admin_password(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                found = re.match(r"\s+password: (\S+)", line)
                if found:
                    return found.group(1)
            assert self.proc.poll() is None, "".join(self.lines)
            time.sleep(0.1)
        raise AssertionError("main.py printed no admin password:\n" + "".join(self.lines))

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        raise AssertionError("main.py never answered:\n" + "".join(self.lines))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return "".join(self.lines)


def _node_swapped(error: Exception) -> bool:
    """True if a WebDriver error means the element's document was replaced (a stale element)."""
    from selenium.common.exceptions import StaleElementReferenceException

    return isinstance(error, StaleElementReferenceException) or (
        "does not belong to the document" in str(error)
    )


class Browser:
    """One headless Chromium with its own profile: a separate browser context."""

    def __init__(self, name: str, base: str, profile: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--window-size=1280,900",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver: Any = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
        self.driver.implicitly_wait(5)
        self.name, self.base = name, base

    def open(self, path: str) -> None:
        self.driver.get(self.base + path)

    def fill(self, **fields: str) -> None:
        for element_id, value in fields.items():
            element = self.driver.find_element("id", element_id.replace("_", "-"))
            element.clear()
            element.send_keys(value)

    def click(self, element_id: str, by: str = "id") -> None:
        """Click a submit button and wait until the next page has replaced this one."""
        from selenium.webdriver.support.wait import WebDriverWait

        page = self._ready()
        self._retry(lambda: self.driver.find_element(by, element_id).click())
        WebDriverWait(self.driver, 15).until(lambda driver: self._replaced(page))
        self._ready()

    @staticmethod
    def _replaced(page: Any) -> bool:
        """True once ``page`` (a document's root element) belongs to a document no longer shown.

        Selenium's ``staleness_of`` expects StaleElementReferenceException; Chromium may instead
        answer "Node with given id does not belong to the document" for the same state.
        """
        from selenium.common.exceptions import WebDriverException

        try:
            page.is_enabled()
        except WebDriverException as error:
            if _node_swapped(error):
                return True
            raise
        return False

    def _ready(self) -> Any:
        """Wait until the current document has finished loading; return its root element."""
        from selenium.webdriver.support.wait import WebDriverWait

        WebDriverWait(self.driver, 15).until(
            lambda driver: driver.execute_script("return document.readyState") == "complete"
        )
        return self.driver.find_element("tag name", "html")

    def _retry(self, action: Any) -> None:
        """Run a DOM action, again if Chromium replaced the node under it (a known chromedriver race).

        Chromium answers "Node with given id does not belong to the document" when an element
        lookup and a document swap cross; the second attempt finds the element in the new document.
        """
        from selenium.common.exceptions import WebDriverException

        for attempt in range(3):
            try:
                action()
                return
            except WebDriverException as error:
                if attempt == 2 or not _node_swapped(error):
                    raise
                self._ready()

    @property
    def path(self) -> str:
        return str(self.driver.current_url).removeprefix(self.base).split("?")[0]

    @property
    def text(self) -> str:
        return str(self.driver.find_element("tag name", "body").text)

    def shot(self, step: str) -> None:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        self.driver.save_screenshot(str(SCREENSHOTS / f"{step}-{self.name}.png"))
        # The page works under the strict Content-Security-Policy: nothing was blocked.
        problems = [
            e["message"] for e in self.driver.get_log("browser") if "Content Security Policy" in e["message"]
        ]
        assert not problems, problems

    def login(self, username: str, password: str) -> None:
        self.open("/login")
        self._ready()

        def type_credentials() -> None:
            self.driver.find_element("id", "username").clear()
            self.driver.find_element("id", "username").send_keys(username)
            self.driver.find_element("id", "password").clear()
            self.driver.find_element("id", "password").send_keys(password)

        self._retry(type_credentials)
        self.click("sign-in")

    def quit(self) -> None:
        self.driver.quit()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    _need_browser()
    workdir = tmp_path / "run"
    workdir.mkdir()
    started = Server(workdir)
    try:
        yield started
    finally:
        output = started.stop()
        assert "fundaments closed" in output, output


def test_console_scenario_in_chromium(server: Server, tmp_path: Path) -> None:
    one_time = server.admin_password()
    server.wait_ready()
    browsers: list[Browser] = []

    def browser(name: str) -> Browser:
        opened = Browser(name, server.base, tmp_path / f"profile-{name}")
        browsers.append(opened)
        return opened

    try:
        admin = browser("admin")
        admin.open("/")
        assert admin.path == "/login"
        admin.shot("01-login")
        admin.login("admin", one_time)
        assert admin.path == "/password" and "one-time password" in admin.text
        admin.shot("02-forced-password-change")
        admin.fill(current_password=one_time, new_password=ADMIN_PASSWORD, confirm_password=ADMIN_PASSWORD)
        admin.click("change-password")
        assert admin.path == "/dashboard" and "Welcome, admin" in admin.text
        admin.shot("03-dashboard")

        admin.open("/admin/users")
        admin.fill(new_username="carol", new_user_password=CAROL_PASSWORD)
        admin.click("create-user")
        assert "The account was created." in admin.text and "carol" in admin.text
        admin.shot("04-users")
        admin.open("/admin/roles")
        admin.shot("05-roles")
        admin.open("/admin/audit")
        assert "Audit chain intact" in admin.text and "user.registered" in admin.text
        admin.shot("06-audit")

        carol = browser("carol")  # a second browser context
        carol.login("carol", CAROL_PASSWORD)
        assert carol.path == "/dashboard" and "Users" not in carol.driver.find_element("tag name", "nav").text
        carol.open("/admin/users")
        assert "You do not have permission" in carol.text
        carol.open("/secrets")
        carol.fill(secret_name="backup key", secret_value="s3cr3t-backup-value-42")
        carol.click("store-secret")
        assert (
            "The secret was stored, encrypted." in carol.text and "s3cr3t-backup-value-42" not in carol.text
        )
        carol.click("button.reveal-secret", by="css selector")
        assert carol.driver.find_element("id", "revealed-value").text == "s3cr3t-backup-value-42"
        carol.shot("07-secrets")

        other = browser("carol-elsewhere")  # carol's second session
        other.login("carol", CAROL_PASSWORD)
        assert other.path == "/dashboard"
        carol.open("/sessions")
        assert len(carol.driver.find_elements("css selector", "tr.session-row")) == 2
        carol.shot("08-sessions")
        carol.click("button.revoke-session", by="css selector")
        assert "The session was signed out." in carol.text
        assert len(carol.driver.find_elements("css selector", "tr.session-row")) == 1
        other.open("/dashboard")
        assert other.path == "/login"  # the revoked context is signed out
        other.shot("09-revoked-context")

        other.driver.delete_all_cookies()  # a stranger's browser: no device cookie
        for _ in range(5):
            other.login("carol", "not carol's password")
            assert GENERIC in other.text
        other.login("carol", CAROL_PASSWORD)  # the right password, but the account is locked now
        assert other.path == "/login"
        assert other.driver.find_element("id", "error").text == GENERIC
        assert "lock" not in other.text.lower()
        other.shot("10-locked-generic-message")

        admin.open("/admin/users")  # the lock is visible, with an Unlock button on carol's row only
        assert len(admin.driver.find_elements("css selector", ".lock-state")) == 1
        assert len(admin.driver.find_elements("css selector", "button.unlock-user")) == 1
        admin.open("/admin/users/2")  # carol: an administrator sets a temporary password
        admin.fill(set_password=CAROL_TEMPORARY, set_password_again=CAROL_TEMPORARY)
        admin.click("set-password-submit")
        assert "The password was set" in admin.text
        admin.shot("11-admin-set-password")
        carol.open("/dashboard")
        assert carol.path == "/login"  # every session of carol ended
        carol.login("carol", CAROL_TEMPORARY)  # the lock was cleared; the change is forced
        assert carol.path == "/password"
        carol.fill(
            current_password=CAROL_TEMPORARY, new_password=CAROL_PASSWORD, confirm_password=CAROL_PASSWORD
        )
        carol.click("change-password")
        assert carol.path == "/dashboard"

        carol.click("logout")
        assert carol.path == "/login" and "You are signed out." in carol.text
        carol.open("/secrets")
        assert carol.path == "/login"
        carol.shot("12-logged-out")

        admin.open("/admin/users/2")  # deleting carol asks first, then does it
        admin.click("button.delete-user", by="css selector")
        assert "Delete carol for good?" in admin.text and "cannot be undone" in admin.text
        admin.shot("13-confirm-delete")
        admin.click("confirm")
        assert "The account was deleted" in admin.text
        assert not admin.driver.find_elements("link text", "carol")
        carol.login("carol", CAROL_PASSWORD)
        assert carol.path == "/login" and carol.driver.find_element("id", "error").text == GENERIC
    finally:
        for opened in browsers:
            opened.quit()


def register_with_email(workdir: Path, username: str, password: str, address: str) -> None:
    """An account with an email address, made through the facade in a process of its own on the
    running server's database (the console has no form for addresses yet)."""
    script = (
        "import asyncio, sys\n"
        "from fundaments import initialize_fundaments\n"
        "async def main():\n"
        "    started = await initialize_fundaments(configure_logs=False)\n"
        "    try:\n"
        "        await started.security.register_user(sys.argv[1], sys.argv[2], email=sys.argv[3])\n"
        "    finally:\n"
        "        await started.close()\n"
        "asyncio.run(main())\n"
    )
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "PYTHONPATH")}
    subprocess.run(
        [sys.executable, "-c", script, username, password, address],
        cwd=workdir,
        env=keep,
        check=True,
        timeout=60,
    )


def mail_to(outbox: Path, address: str, subject: str = "", timeout: float = 20) -> EmailMessage:
    """The newest mail to ``address`` (its subject starting so) in the file outbox, once the
    server's drainer wrote it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for path in sorted(outbox.glob("*.eml"), reverse=True):
            message = email.message_from_bytes(
                path.read_bytes(), _class=EmailMessage, policy=email.policy.default
            )
            if message["To"] == address and str(message["Subject"]).startswith(subject):
                return message  # type: ignore[return-value]
        time.sleep(0.2)
    raise AssertionError(f"no mail to {address} in {outbox}")


def test_forgotten_password_reset_through_the_mailed_link_in_chromium(server: Server, tmp_path: Path) -> None:
    """Forgot password -> the mail in ./var/outbox -> its link opened in the browser -> a new
    password -> signed in with it; the old one refused, and the link's token in no log line."""
    server.admin_password()
    server.wait_ready()
    register_with_email(tmp_path / "run", "dave", DAVE_PASSWORD, DAVE_EMAIL)
    dave = Browser("dave", server.base, tmp_path / "profile-dave")
    try:
        dave.open("/login")
        dave.click("forgot-password")
        assert dave.path == "/forgot-password"
        dave.fill(email=DAVE_EMAIL)
        dave.shot("12-forgot-password")
        dave.click("send-reset-link")
        assert dave.path == "/forgot-password/sent" and "If an account has this address" in dave.text
        dave.shot("13-reset-link-sent")

        message = mail_to(tmp_path / "run" / "var" / "outbox", DAVE_EMAIL, subject="Reset")
        part = message.get_body(preferencelist=("plain",))
        assert part is not None
        found = re.search(r"(\S+/reset-password\?token=([A-Za-z0-9_-]+))", str(part.get_content()))
        assert found is not None and found.group(1).startswith(server.base + "/reset-password?token=")
        link, token = found.group(1), found.group(2)
        dave.driver.get(link)
        assert dave.path == "/reset-password" and "At least 15 characters." in dave.text
        dave.shot("14-reset-password")
        dave.fill(new_password=DAVE_NEW_PASSWORD, confirm_password=DAVE_NEW_PASSWORD)
        dave.click("reset-password")
        assert dave.path == "/reset-password/done", dave.text
        assert "every session of your account was signed out" in dave.text
        # The form's page sent the origin as Referer (and a real Origin: the CSRF check passed).
        assert dave.driver.execute_script("return document.referrer") == server.base + "/"
        dave.shot("15-password-reset")

        dave.login("dave", DAVE_PASSWORD)
        assert dave.path == "/login" and GENERIC in dave.text
        dave.login("dave", DAVE_NEW_PASSWORD)
        assert dave.path == "/dashboard" and "Welcome, dave" in dave.text
        dave.open("/account")
        assert DAVE_EMAIL in dave.text and "not confirmed" in dave.text
        dave.shot("16-account")
        dave.click("send-verification")
        assert "A confirmation link is on its way" in dave.text
        verification = mail_to(tmp_path / "run" / "var" / "outbox", DAVE_EMAIL, subject="Confirm")
        part = verification.get_body(preferencelist=("plain",))
        assert part is not None
        found = re.search(r"(\S+/verify-email\?token=[A-Za-z0-9_-]+)", str(part.get_content()))
        assert found is not None and found.group(1).startswith(server.base + "/verify-email?token=")
        dave.driver.get(found.group(1))
        assert dave.path == "/verify-email" and "Confirm my address" in dave.text
        dave.shot("17-verify-email")
        dave.click("confirm-email")
        assert dave.path == "/verify-email/done" and "Your email address is confirmed." in dave.text
        dave.open("/account")
        assert dave.driver.find_element("id", "email-status").text == "confirmed"
    finally:
        dave.quit()
    output = server.stop()
    assert "/reset-password" in output or "password reset" in output, output  # the server did log the flow
    assert token not in output  # ... never with the token (access log included)
