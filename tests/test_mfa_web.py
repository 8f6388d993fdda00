"""The JSON login router's second step: /login answers 401 ``mfa_required`` with an mfa_token (no
cookie, no session), /login/mfa finishes the login as /login does; the mfa_token is refused by
every route as a bearer token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pyotp
import pytest

from fundaments.account_tokens import PASSWORD_RESET
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.security import User
from test_web_fastapi import PASSWORD, bearer, build, client, served


@pytest.fixture
async def totp(fundaments: Fundaments, clock: ManualClock) -> pyotp.TOTP:
    clock.set((int(clock.now()) // 30) * 30 + 15)
    user: User = await fundaments.security.register_user("alice", PASSWORD, email="alice@example.com")
    enrolment = await fundaments.security.begin_totp_enrolment(user.id)
    generator = pyotp.TOTP(enrolment.secret)
    await fundaments.security.confirm_totp_enrolment(user.id, generator.at(clock.now()))
    clock.advance(30)
    return generator


@pytest.fixture
async def http(fundaments: Fundaments, totp: pyotp.TOTP) -> AsyncIterator[httpx.AsyncClient]:
    async with served(build(fundaments=fundaments)) as http:
        yield http


async def mfa_required(http: httpx.AsyncClient) -> str:
    response = await http.post("/auth/login", json={"username": "alice", "password": PASSWORD})
    assert response.status_code == 401, response.text
    body = response.json()
    assert body["code"] == "mfa_required" and body["expires_in"] == 300
    assert "set-cookie" not in response.headers  # no session cookie, no device cookie
    return str(body["mfa_token"])


async def test_a_script_logs_in_in_two_steps(
    http: httpx.AsyncClient, totp: pyotp.TOTP, clock: ManualClock, fundaments: Fundaments
) -> None:
    token = await mfa_required(http)
    assert not await fundaments.security.list_sessions(1)
    wrong = await http.post("/auth/login/mfa", json={"mfa_token": token, "code": "000000"})
    assert wrong.status_code == 401
    assert wrong.json() == {
        "detail": "The code is not right; try the current one.",
        "code": "mfa_code_wrong",
        "retry": True,
    }
    done = await http.post("/auth/login/mfa", json={"mfa_token": token, "code": totp.at(clock.now())})
    assert done.status_code == 200, done.text
    body = done.json()
    assert set(body) == {"token", "token_type", "user", "expires_at", "csrf_token"}
    assert done.headers["cache-control"] == "no-store"
    me = await http.get("/auth/me", headers=bearer(body["token"]))
    assert me.status_code == 200 and me.json()["username"] == "alice"
    again = await http.post("/auth/login/mfa", json={"mfa_token": token, "code": totp.at(clock.now())})
    assert again.status_code == 401 and again.json()["code"] == "mfa_token_invalid"
    assert again.json()["retry"] is False


async def test_an_mfa_token_is_no_bearer_token(http: httpx.AsyncClient) -> None:
    token = await mfa_required(http)
    for path in ("/auth/me", "/notes", "/auth/sessions"):
        response = await http.get(path, headers=bearer(token))
        assert response.status_code == 401, path
    assert (await http.post("/notes", headers=bearer(token))).status_code in (401, 403)


async def test_the_second_step_from_another_client_is_refused(
    http: httpx.AsyncClient, fundaments: Fundaments, totp: pyotp.TOTP, clock: ManualClock
) -> None:
    token = await mfa_required(http)
    async with client(build(fundaments=fundaments), ip="192.0.2.50") as elsewhere:
        stolen = await elsewhere.post(
            "/auth/login/mfa", json={"mfa_token": token, "code": totp.at(clock.now())}
        )
    assert stolen.status_code == 401 and stolen.json()["code"] == "mfa_token_invalid"
    after = await http.post("/auth/login/mfa", json={"mfa_token": token, "code": totp.at(clock.now())})
    assert after.status_code == 401  # the token died when it was shown from elsewhere


async def test_a_reset_over_json_asks_for_the_second_factor(
    http: httpx.AsyncClient, fundaments: Fundaments, totp: pyotp.TOTP, clock: ManualClock
) -> None:
    tokens = fundaments["account_tokens"]
    async with fundaments["db"].transaction() as tx:
        link = await tokens.issue(tx, await tokens.account(tx, 1), PASSWORD_RESET)
    new = {"token": link, "new_password": "a brand new passphrase 2026"}
    refused = await http.post("/auth/password-reset/confirm", json=new)
    assert refused.status_code == 401 and refused.json()["code"] == "second_factor_required"
    done = await http.post(
        "/auth/password-reset/confirm", json={**new, "second_factor": totp.at(clock.now())}
    )
    assert done.status_code == 200, done.text
    assert (
        await http.post("/auth/login", json={"username": "alice", "password": new["new_password"]})
    ).json()["code"] == "mfa_required"
