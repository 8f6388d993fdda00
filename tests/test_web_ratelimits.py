"""fundaments.web rate limits: rate_limited(), the 429 answer, the RateLimit headers, auth_router's limits.

FastAPI in process (httpx ASGITransport, the lifespan run by tests/asgi_lifespan.py), the memory
backend (one process, the injected clock: every number is exact) unless a test says otherwise;
one test on the shared Redis.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from asgi_lifespan import running
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import InvalidArgument
from fundaments.security import RateLimitDecision, Security
from fundaments.web import get_security, install, rate_limited

PASSWORD = "correct horse battery staple"
BASE = "https://api.test"
HOSTS = ["api.test"]
JSON = {"accept": "application/json"}
PAGE = {"accept": "text/html,application/xhtml+xml"}


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(rate_limit_backend="memory")


@rate_limited("2/minute", name="star")
async def star_endpoint(request: Request) -> Response:
    return JSONResponse({"ok": True})


def build(fundaments: Fundaments, **options: Any) -> FastAPI:
    app = FastAPI()
    options.setdefault("allowed_hosts", HOSTS)
    install(app, fundaments=fundaments, **options)

    @app.get("/limited", dependencies=[Depends(rate_limited("3/minute"))])
    async def limited() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/decision")
    async def decision(d: Annotated[RateLimitDecision, Depends(rate_limited("5/minute"))]) -> dict[str, int]:
        return {"remaining": d.remaining}

    @app.get("/mine", dependencies=[Depends(rate_limited("2/minute", key="user"))])
    async def mine() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/tenant", dependencies=[Depends(rate_limited("1/minute", key=lambda r: r.headers["x-tenant"]))])
    async def tenant() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/unlimited")
    async def unlimited() -> dict[str, bool]:
        return {"ok": True}

    @app.get("/enforced")
    async def enforced(security: Annotated[Security, Depends(get_security)]) -> dict[str, bool]:
        await security.enforce_rate_limit("ip:route-own:enforced", "1/hour")
        return {"ok": True}

    app.add_route("/star", star_endpoint)
    return app


def client(app: Any, ip: str = "203.0.113.7", **headers: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(ip, 50000))
    return httpx.AsyncClient(transport=transport, base_url=BASE, headers={"user-agent": "t/1", **headers})


@pytest.fixture
async def app(fundaments: Fundaments) -> AsyncIterator[FastAPI]:
    application = build(fundaments)
    async with running(application):
        yield application


async def test_allowed_responses_carry_the_ratelimit_headers_and_the_burst_ends_in_a_429(
    app: FastAPI,
) -> None:
    async with client(app, **JSON) as http:
        answers = [await http.get("/limited") for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    for answer in answers:
        assert answer.headers["ratelimit-policy"] == '"limited";q=3;w=60'
    # 3/minute: one request every 20 s; the clock stands still, so each one pushes the reset 20 s on.
    assert [a.headers["ratelimit"] for a in answers] == [
        '"limited";r=2;t=20',
        '"limited";r=1;t=40',
        '"limited";r=0;t=60',
        '"limited";r=0;t=20',  # refused: t is the wait, the same as Retry-After
    ]
    refused = answers[3]
    assert refused.json() == {"detail": "Too many requests; retry after 20 s.", "code": "rate_limited"}
    assert refused.headers["retry-after"] == "20"
    assert refused.headers["content-type"] == "application/json"
    assert (
        refused.headers["x-content-type-options"] == "nosniff"
        and refused.headers["cache-control"] == "no-store"
    )


async def test_a_browser_gets_the_429_as_text_with_the_same_headers(app: FastAPI) -> None:
    async with client(app, **PAGE) as http:
        for _ in range(3):
            assert (await http.get("/limited")).status_code == 200
        refused = await http.get("/limited")
    assert refused.status_code == 429 and refused.headers["content-type"].startswith("text/plain")
    assert refused.text == "Too many requests; retry after 20 s.\n"
    assert refused.headers["retry-after"] == "20" and refused.headers["ratelimit"] == '"limited";r=0;t=20'


async def test_retry_after_matches_the_decision_and_the_client_may_come_back_then(
    app: FastAPI, fundaments: Fundaments, clock: ManualClock
) -> None:
    async with client(app, **JSON) as http:
        for _ in range(3):
            await http.get("/limited")
        clock.advance(7.5)
        refused = await http.get("/limited")
        decision = await fundaments.security.rate_limit("ip:203.0.113.7:limited", "3/minute", cost=0)
        assert refused.headers["retry-after"] == str(math.ceil(12.5)) == "13"
        assert decision.reset_after == pytest.approx(52.5)
        clock.advance(12.4)
        assert (await http.get("/limited")).status_code == 429
        clock.advance(0.1)
        assert (await http.get("/limited")).status_code == 200


async def test_a_burst_from_one_ip_is_refused_while_another_ip_passes(app: FastAPI) -> None:
    async with client(app, "198.51.100.1", **JSON) as attacker, client(app, "198.51.100.2", **JSON) as other:
        assert [(await attacker.get("/limited")).status_code for _ in range(10)] == [200] * 3 + [429] * 7
        assert (await other.get("/limited")).status_code == 200


async def test_ipv6_clients_are_keyed_by_their_whole_address(app: FastAPI, fundaments: Fundaments) -> None:
    async with client(app, "2001:db8::1", **JSON) as first, client(app, "2001:db8::2", **JSON) as second:
        assert [(await first.get("/limited")).status_code for _ in range(4)] == [200, 200, 200, 429]
        assert (await second.get("/limited")).status_code == 200
    spent = await fundaments.security.rate_limit("ip:{2001:db8::1}:limited", "3/minute", cost=0)
    assert spent.remaining == 0


async def test_x_forwarded_for_does_not_change_the_key_unless_the_peer_is_a_trusted_proxy(
    fundaments: Fundaments,
) -> None:
    """Attack: a client rotating X-Forwarded-For to get a fresh limit per request."""
    direct = build(fundaments)
    async with running(direct), client(direct, "198.51.100.9", **JSON) as http:
        codes = [
            (await http.get("/limited", headers={"x-forwarded-for": f"192.0.2.{n}"})).status_code
            for n in range(6)
        ]
    assert codes == [200, 200, 200, 429, 429, 429]

    proxied = build(fundaments, trusted_proxies=["10.0.0.1"])
    async with running(proxied), client(proxied, "10.0.0.1", **JSON) as proxy:
        for n in range(5):  # the proxy's X-Forwarded-For names the client: one limit per client
            answer = await proxy.get("/limited", headers={"x-forwarded-for": f"192.0.2.{100 + n}"})
            assert answer.status_code == 200
        same = [
            (await proxy.get("/limited", headers={"x-forwarded-for": "192.0.2.100"})).status_code
            for _ in range(3)
        ]
    assert same == [200, 200, 429]


async def test_a_rate_limited_raised_inside_a_route_is_a_429_not_a_500(app: FastAPI) -> None:
    async with client(app, **JSON) as http:
        assert (await http.get("/enforced")).status_code == 200
        refused = await http.get("/enforced")
    assert refused.status_code == 429 and refused.json()["code"] == "rate_limited"
    assert refused.headers["retry-after"] == "3600"
    assert refused.headers["ratelimit-policy"] == '"default";q=1;w=3600'
    assert refused.headers["ratelimit"] == '"default";r=0;t=3600'


async def test_unlimited_routes_carry_no_ratelimit_headers(app: FastAPI) -> None:
    async with client(app, **JSON) as http:
        answer = await http.get("/unlimited")
        enforced = await http.get("/enforced")  # the route's own allowed call records nothing
    assert answer.status_code == 200 and enforced.status_code == 200
    for response in (answer, enforced):
        assert "ratelimit" not in response.headers and "ratelimit-policy" not in response.headers


async def test_the_dependency_returns_its_decision(app: FastAPI) -> None:
    async with client(app, **JSON) as http:
        assert [(await http.get("/decision")).json()["remaining"] for _ in range(3)] == [4, 3, 2]


async def test_the_starlette_decorator_limits_too(app: FastAPI) -> None:
    async with client(app, **JSON) as http:
        answers = [await http.get("/star") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["ratelimit"] == '"star";r=1;t=30'
    assert answers[2].json()["code"] == "rate_limited"


async def test_user_keys_count_per_user_and_anonymous_requests_per_ip(
    app: FastAPI, fundaments: Fundaments
) -> None:
    security = fundaments.security
    await security.register_user("alice", PASSWORD)
    await security.register_user("bob", PASSWORD)
    tokens = {}
    async with client(app, **JSON) as http:
        for name in ("alice", "bob"):
            result = await security.user_login(
                name, PASSWORD, {"ip_address": "203.0.113.7", "user_agent": "t/1"}
            )
            assert result.session is not None and result.session.token is not None
            tokens[name] = {"authorization": f"Bearer {result.session.token}"}
        alice = [(await http.get("/mine", headers=tokens["alice"])).status_code for _ in range(3)]
        bob = [(await http.get("/mine", headers=tokens["bob"])).status_code for _ in range(2)]
        anonymous = [(await http.get("/mine")).status_code for _ in range(3)]  # the same IP: its own key
    assert alice == [200, 200, 429] and bob == [200, 200] and anonymous == [200, 200, 429]


async def test_a_key_function_names_the_bucket(app: FastAPI) -> None:
    async with client(app, **JSON) as http:
        first = [(await http.get("/tenant", headers={"x-tenant": "acme"})).status_code for _ in range(2)]
        other = await http.get("/tenant", headers={"x-tenant": "globex"})
    assert first == [200, 429] and other.status_code == 200


def test_malformed_limits_fail_at_once() -> None:
    for bad in ("10/fortnight", "0/minute", "lots"):
        with pytest.raises(InvalidArgument):
            rate_limited(bad)
    with pytest.raises(InvalidArgument):
        rate_limited("1/minute", cost=-1)
    with pytest.raises(InvalidArgument):
        rate_limited("1/minute", key="session")  # type: ignore[arg-type]


async def test_on_redis_a_burst_is_refused_across_instances(
    make_settings: Callable[..., Settings], clock: ManualClock
) -> None:
    from fundaments import initialize_fundaments
    from fundaments.ratelimit import redis_key
    from ratelimit_support import redis_test_url

    url = redis_test_url()
    name = f"redis-{secrets.token_hex(6)}"  # a key of this test's own on the shared server
    settings = make_settings(redis_url=url, rate_limit_backend="redis")
    first = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    second = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    apps = []
    for started in (first, second):
        application = FastAPI()
        install(application, fundaments=started, allowed_hosts=HOSTS)

        @application.get("/r", dependencies=[Depends(rate_limited("3/minute", name=name))])
        async def r() -> dict[str, bool]:
            return {"ok": True}

        apps.append(application)
    try:
        codes = []
        async with (
            running(apps[0]),
            running(apps[1]),
            client(apps[0], **JSON) as one,
            client(apps[1], **JSON) as two,
        ):
            for n in range(5):
                codes.append((await (one if n % 2 else two).get("/r")).status_code)
        assert codes == [200, 200, 200, 429, 429]
    finally:
        await first["rate_limiter"].backend._client.delete(redis_key(f"ip:203.0.113.7:{name}"))
        await first.close()
        await second.close()


# --- auth_router: per-IP and per-target limits on the anonymous routes ---------------------------
def auth_app(fundaments: Fundaments) -> FastAPI:
    from fundaments.web import auth_router

    application = FastAPI()
    install(application, fundaments=fundaments, allowed_hosts=HOSTS)
    application.include_router(auth_router(registration=True), prefix="/auth")
    return application


@pytest.fixture
def limited_settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings(
        rate_limit_backend="memory",
        rate_limit_register="3/hour",
        rate_limit_account_mail="4/hour",
        rate_limit_account_mail_target="2/hour",
        reset_request_seconds=0.0,
    )


@pytest.fixture
async def auth(limited_settings: Settings, clock: ManualClock) -> AsyncIterator[tuple[FastAPI, Fundaments]]:
    from fundaments import initialize_fundaments

    started = await initialize_fundaments(limited_settings, clock=clock, configure_logs=False)
    application = auth_app(started)
    try:
        async with running(application):
            yield application, started
    finally:
        await started.close()


async def test_a_register_flood_from_one_ip_is_refused(auth: tuple[FastAPI, Fundaments]) -> None:
    """Attack: one client creating accounts in bulk."""
    application, started = auth
    async with client(application, "198.51.100.20", **JSON) as http:
        codes = []
        for n in range(6):
            body = {"username": f"bulk{n}", "password": PASSWORD}
            codes.append((await http.post("/auth/register", json=body)).status_code)
        refused = await http.post("/auth/register", json={"username": "late", "password": PASSWORD})
    assert codes == [201, 201, 201, 429, 429, 429]
    assert refused.json()["code"] == "rate_limited" and refused.headers["retry-after"] == "1200"
    assert refused.headers["ratelimit-policy"] == '"register";q=3;w=3600'
    assert await started.security.get_user_by_username("bulk3") is None  # refused before the account
    async with client(application, "198.51.100.21", **JSON) as other:
        assert (
            await other.post("/auth/register", json={"username": "x1", "password": PASSWORD})
        ).status_code == 201


async def test_password_reset_is_limited_per_address_across_ips(auth: tuple[FastAPI, Fundaments]) -> None:
    """Attack: many IPs (a botnet) flooding one victim's inbox with reset mails."""
    application, started = auth
    await started.security.register_user("victim", PASSWORD, email="victim@example.com")
    codes = []
    for n, address in enumerate(
        ["victim@example.com", "Victim@Example.com ", "VICTIM@example.com", "victim@example.com"]
    ):
        async with client(application, f"192.0.2.{n + 1}", **JSON) as http:  # a fresh IP each time
            codes.append((await http.post("/auth/password-reset", json={"email": address})).status_code)
    assert codes == [202, 202, 429, 429]  # 2/hour per address, however it is spelled
    async with client(application, "192.0.2.50", **JSON) as http:
        other = await http.post("/auth/password-reset", json={"email": "someone@example.com"})
        assert other.status_code == 202  # another address is not affected
        assert other.headers["ratelimit"].startswith('"account-mail";r=3;')
        assert '"account-mail-address";r=1;' in other.headers["ratelimit"]


async def test_password_reset_is_limited_per_ip_across_addresses(auth: tuple[FastAPI, Fundaments]) -> None:
    application, _ = auth
    async with client(application, "192.0.2.77", **JSON) as http:
        codes = [
            (await http.post("/auth/password-reset", json={"email": f"u{n}@example.com"})).status_code
            for n in range(6)
        ]
        bad = await http.post("/auth/password-reset", json={"email": "not an address"})
    assert codes == [202, 202, 202, 202, 429, 429]
    assert bad.status_code == 429  # the IP limit comes first, before the body is even read


async def test_email_verification_requests_are_limited_per_account(auth: tuple[FastAPI, Fundaments]) -> None:
    application, started = auth
    await started.security.register_user("carol", PASSWORD, email="carol@example.com")
    codes = []
    for n in range(3):
        result = await started.security.user_login(
            "carol", PASSWORD, {"ip_address": f"192.0.2.{n + 10}", "user_agent": "t/1"}
        )
        assert result.session is not None and result.session.token is not None
        async with client(
            application, f"192.0.2.{n + 10}", authorization=f"Bearer {result.session.token}"
        ) as http:
            codes.append((await http.post("/auth/verify-email/request")).status_code)
    assert codes == [202, 202, 429]


def test_the_limit_settings_refuse_what_is_not_a_rate(make_settings: Callable[..., Settings]) -> None:
    from fundaments.errors import ConfigurationError

    assert make_settings(rate_limit_register="20/Minutes").rate_limit_register == "20/Minutes"
    for bad in ("5 per hour", "0/hour", "5/fortnight", ""):
        with pytest.raises((ConfigurationError, ValueError)):
            make_settings(rate_limit_register=bad)


async def test_the_documented_example_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, database_url: str
) -> None:
    """docs/web.md's "Rate limits" block, run as written: install(app) reads the settings from the
    environment (this test's database, the memory backend)."""
    import re
    from pathlib import Path

    from conftest import FAST_HASHING, TEST_MASTER_KEY, TEST_SALT

    doc = (Path(__file__).resolve().parents[1] / "docs" / "web.md").read_text()
    section = doc.split("## Rate limits\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert block is not None
    environment = {
        "FUNDAMENTS_ENV_FILE": str(tmp_path / "absent.env"),
        "DATABASE_URL": database_url,
        "MASTER_ENCRYPTION_KEY": TEST_MASTER_KEY,
        "PERSISTENT_ENCRYPTION_SALT": TEST_SALT,
        "MAIL_URL": f"file://{tmp_path}/outbox",
        "RATE_LIMIT_BACKEND": "memory",
        **{name.upper(): str(value) for name, value in FAST_HASHING.items()},
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    namespace: dict[str, Any] = {}
    exec(compile(block[1], "docs/web.md", "exec"), namespace)
    app = namespace["app"]
    async with running(app):
        transport = httpx.ASGITransport(app=app, client=("203.0.113.7", 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=JSON) as http:
            searches = [await http.post("/search") for _ in range(31)]
            assert [s.status_code for s in searches] == [200] * 30 + [429]
            assert searches[-1].headers["retry-after"] in (
                "1",
                "2",
            )  # the real clock: 2 s minus the burst's time
            assert searches[-1].headers["ratelimit-policy"] == '"search";q=30;w=60'
            export = await http.post("/export")
            assert export.headers["ratelimit-policy"] == '"export";q=5;w=3600'
            reports = [
                (await http.get("/tenant-report", headers={"x-tenant": "acme"})).status_code
                for _ in range(11)
            ]
            assert reports == [200] * 10 + [429]
            assert (await http.get("/tenant-report", headers={"x-tenant": "globex"})).status_code == 200


async def test_a_flood_of_refusals_is_not_a_flood_of_log_lines(
    app: FastAPI, caplog: pytest.LogCaptureFixture
) -> None:
    """Attack: a client hammering a spent limit to fill the disk with log lines."""
    caplog.set_level("WARNING", logger="fundaments.web.middleware")
    async with client(app, **JSON) as http:
        codes = [(await http.get("/limited")).status_code for _ in range(50)]
    assert codes.count(429) == 47
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("429 for")]
    assert lines == ["429 for GET /limited: RateLimited; further ones are logged once per 60 s"]


async def test_a_dependency_run_outside_the_event_loop_fails_closed() -> None:
    """A FastAPI that took rate_limited() for a sync dependency would run it in a worker thread and
    never await the check: it must refuse then, not let every request through unlimited."""
    import asyncio

    from starlette.requests import Request as StarletteRequest

    guard = rate_limited("1/minute")
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "query_string": b""}
    with pytest.raises(RuntimeError, match="would not apply"):
        await asyncio.to_thread(guard, StarletteRequest(scope))
