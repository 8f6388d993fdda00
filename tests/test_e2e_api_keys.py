"""The API-keys page in real headless Chromium (`python main.py`, as tests/test_e2e_console.py):
a key is created, its token shown once with the Copy button that app/static/copy.js reveals, the
button puts the token in the clipboard, and the console log shows no CSP violation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from test_e2e_console import ADMIN_PASSWORD, Browser, Server, server  # noqa: F401 - server: a fixture

pytestmark = pytest.mark.slow


def test_create_a_key_and_copy_its_token_in_chromium(server: Server, tmp_path: Path) -> None:  # noqa: F811
    one_time = server.admin_password()
    server.wait_ready()
    admin = Browser("api-keys", server.base, tmp_path / "profile-api-keys")
    try:
        admin.login("admin", one_time)
        admin.fill(current_password=one_time, new_password=ADMIN_PASSWORD, confirm_password=ADMIN_PASSWORD)
        admin.click("change-password")
        assert admin.path == "/dashboard"
        admin.click("nav-api-keys")  # linked from the navigation
        assert admin.path == "/account/api-keys" and "No API keys yet." in admin.text
        admin.fill(key_name="deploy", key_scopes="models:invoke", key_expires="90")
        admin.click("create-key-button")
        token = admin.driver.find_element("id", "new-token").text
        assert re.fullmatch(r"fk_[0-9A-Za-z]{38}", token), admin.text
        copy = admin.driver.find_element("id", "copy-token")
        assert copy.is_displayed()  # copy.js ran (the button is hidden without script)
        admin.driver.execute_cdp_cmd(
            "Browser.grantPermissions",
            {"origin": server.base, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]},
        )
        copy.click()
        status = admin.driver.find_element("id", "copy-status")
        from selenium.webdriver.support.wait import WebDriverWait

        WebDriverWait(admin.driver, 10).until(lambda _driver: status.text != "")
        assert status.text == "Copied.", status.text
        pasted = admin.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "navigator.clipboard.readText().then(done, (e) => done('refused: ' + e));"
        )
        assert pasted == token
        admin.shot("api-keys-created")  # asserts no Content-Security-Policy message in the log
        admin.open("/account/api-keys")
        assert token not in admin.driver.page_source and token[:10] in admin.text  # the prefix only
        admin.open("/admin/api-keys")
        assert "deploy" in admin.text and token not in admin.driver.page_source
        admin.shot("api-keys-admin")
    finally:
        admin.quit()
