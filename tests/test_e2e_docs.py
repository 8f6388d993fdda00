"""FastAPI's /docs and /redoc in real headless Chromium, under install(app)'s security headers.

A FastAPI service with ``install(app)`` runs in a real uvicorn server on a free port (its own
SQLite file); the browser loads Swagger UI and ReDoc, waits until each has rendered the API's
operations, and its console log must show no Content-Security-Policy violation and no failed
load. The machine reaches no CDN, so the pages pass only with self-hosted assets. Debian's
chromium and chromium-driver, as in tests/test_e2e_console.py (skipped without them, except
under CI=true).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import FAST_HASHING, TEST_MASTER_KEY, TEST_SALT
from test_e2e_console import SCREENSHOTS, Browser, _need_browser, free_port

pytestmark = pytest.mark.slow

SERVICE = """
from fastapi import FastAPI
from pydantic import BaseModel

from fundaments.web import install


class Note(BaseModel):
    title: str
    body: str = ""


app = FastAPI(title="Notes service")


@app.get("/notes", tags=["notes"], summary="List the notes")
async def notes() -> list[Note]:
    return [Note(title="first")]


@app.post("/notes", tags=["notes"], summary="Write a note")
async def write(note: Note) -> Note:
    return note


@app.get("/health", tags=["ops"])
async def health() -> dict[str, str]:
    return {"status": "ok"}


install(app)
"""


class Service:
    """``uvicorn service:app`` in its own folder, on a free port; its output kept by a thread."""

    def __init__(self, workdir: Path) -> None:
        (workdir / "service.py").write_text(SERVICE)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        path = os.pathsep.join([str(workdir), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {
            **keep,
            "PYTHONPATH": path,
            "DATABASE_URL": f"sqlite:///{workdir / 'service.db'}",
            "MASTER_ENCRYPTION_KEY": TEST_MASTER_KEY,
            "PERSISTENT_ENCRYPTION_SALT": TEST_SALT,
            "MAIL_URL": f"file://{workdir / 'outbox'}",
            **{name.upper(): str(value) for name, value in FAST_HASHING.items()},
        }
        command = [sys.executable, "-m", "uvicorn", "service:app", "--host", "127.0.0.1"]
        self.proc = subprocess.Popen(
            [*command, "--port", str(self.port)],
            cwd=workdir,
            env=env,
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

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.base}/health", timeout=1):
                    return
            except OSError:
                assert self.proc.poll() is None, "".join(self.lines)
                time.sleep(0.1)
        raise AssertionError("the service never answered:\n" + "".join(self.lines))

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return "".join(self.lines)


@pytest.fixture
def service(tmp_path: Path) -> Iterator[Service]:
    _need_browser()
    workdir = tmp_path / "service"
    workdir.mkdir()
    started = Service(workdir)
    try:
        started.wait_ready()
        yield started
    finally:
        output = started.stop()
        assert "Traceback" not in output, output


@pytest.fixture
def browser(service: Service, tmp_path: Path) -> Iterator[Browser]:
    opened = Browser("docs", service.base, tmp_path / "profile")
    try:
        yield opened
    finally:
        opened.quit()


def rendered(browser: Browser, css: str, timeout: float = 30) -> list[Any]:
    """The elements matching ``css`` once the page's script has drawn at least one."""
    from selenium.webdriver.support.wait import WebDriverWait

    WebDriverWait(browser.driver, timeout).until(lambda driver: driver.find_elements("css selector", css))
    return list(browser.driver.find_elements("css selector", css))


def console_problems(browser: Browser) -> list[str]:
    """Every console error (a CSP violation, a failed load, an exception) and CSP warning."""
    return [
        entry["message"]
        for entry in browser.driver.get_log("browser")
        if entry["level"] == "SEVERE" or "Content Security Policy" in entry["message"]
    ]


def shot(browser: Browser, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.driver.save_screenshot(str(SCREENSHOTS / f"docs-{name}.png"))


def test_swagger_ui_renders_under_the_csp_in_chromium(service: Service, browser: Browser) -> None:
    browser.open("/docs")
    operations = rendered(browser, ".opblock")
    summaries = {o.find_element("css selector", ".opblock-summary-path").text for o in operations}
    assert {"/notes", "/health"} <= summaries
    assert browser.driver.find_element("css selector", ".info .title").text.startswith("Notes service")
    # Swagger UI's own script runs: open an operation and try it against the real server.
    operations[0].find_element("css selector", ".opblock-summary").click()
    rendered(browser, ".try-out__btn")[0].click()
    rendered(browser, ".execute")[0].click()
    answer = rendered(browser, ".live-responses-table tbody .response-col_status")
    assert answer[0].text.strip() == "200"
    shot(browser, "swagger-ui")
    problems = console_problems(browser)
    assert not problems, problems


def test_redoc_renders_under_the_csp_in_chromium(service: Service, browser: Browser) -> None:
    browser.open("/redoc")
    menu = rendered(browser, "[role=menuitem]")
    labels = " ".join(item.text for item in menu)
    assert "List the notes" in labels or "notes" in labels.lower(), labels
    assert "Notes service" in browser.driver.find_element("tag name", "h1").text
    # The search index runs in ReDoc's Web Worker (worker-src blob:).
    browser.driver.find_element("css selector", "input[placeholder='Search...']").send_keys("write")
    found = rendered(browser, "[data-role='search:results'] [role=menuitem]")
    assert "Write a note" in found[0].text
    shot(browser, "redoc")
    problems = console_problems(browser)
    assert not problems, problems
