"""Rate limits: the limit parser, GCRA's semantics on an injected clock, and every backend giving
the same decisions for the same sequence (memory, SQLite, PostgreSQL, Redis)."""

from __future__ import annotations

import logging
import math
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fundaments.clock import ManualClock, SystemClock
from fundaments.config import load_settings, parse_database_url
from fundaments.errors import ConfigurationError, InvalidArgument, RateLimited, ServiceUnavailable
from fundaments.models import RateLimitDecision
from fundaments.ratelimit import (
    MAX_LIMIT,
    US,
    WINDOWS,
    DatabaseBackend,
    MemoryBackend,
    RateLimiter,
    RedisBackend,
    parse_rate,
    redis_key,
)
from fundaments.security import Security
from fundaments.store import open_database
from fundaments.store import ratelimit as queries
from ratelimit_support import delete_prefix, redis_backend, redis_test_url, unique_prefix

# --- the parser (untrusted input: limits may come from an API key's row or a config file) ----------


@pytest.mark.parametrize(("unit", "seconds"), sorted(WINDOWS.items()))
def test_every_unit_parses_to_its_window(unit: str, seconds: int) -> None:
    rate = parse_rate(f"7/{unit}")
    assert (rate.limit, rate.window) == (7, seconds)
    assert rate.interval * 7 == rate.period and rate.period >= seconds * US


@pytest.mark.parametrize("text", ["100/minutes", " 100 / Minute ", "100/DAY", "100/secs", "100/hours"])
def test_plurals_case_and_spaces_are_accepted(text: str) -> None:
    assert parse_rate(text).limit == 100


@pytest.mark.parametrize(
    "text",
    [
        "",
        "100",
        "/minute",
        "0/minute",
        "-1/minute",
        "+1/minute",
        "1.5/minute",
        "1e3/second",
        "100/week",
        "100/minute/extra",
        "100 per minute",
        "１００/minute",  # full-width digits: int() would take them, the parser does not
        "100/ｍinute",
        "100/m1n",
        f"{MAX_LIMIT + 1}/second",
        "1" * 70 + "/second",
        "100/minute\x00",
    ],
)
def test_garbage_limits_are_refused_with_the_accepted_form(text: str) -> None:
    with pytest.raises(InvalidArgument, match="N/second, N/minute, N/hour or N/day"):
        parse_rate(text)


@pytest.mark.parametrize("value", [None, 100, b"100/minute", ["100/minute"]])
def test_non_text_limits_are_refused(value: Any) -> None:
    with pytest.raises(InvalidArgument):
        parse_rate(value)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
@example("9999999999/d")
@example("1/s")
def test_any_text_parses_to_a_bounded_rate_or_is_refused(text: str) -> None:
    try:
        rate = parse_rate(text)
    except InvalidArgument:
        return
    assert 1 <= rate.limit <= MAX_LIMIT
    assert rate.window in set(WINDOWS.values())
    # the burst is exactly the limit, and the sustained rate never exceeds it
    assert rate.period == rate.limit * rate.interval
    assert rate.window * US <= rate.period < rate.window * US + rate.limit


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, MAX_LIMIT),
    st.sampled_from(sorted(WINDOWS)),
    st.sampled_from(["", " ", "  "]),
    st.booleans(),
)
def test_well_formed_limits_round_trip(limit: int, unit: str, space: str, upper: bool) -> None:
    text = f"{space}{limit}{space}/{space}{unit.upper() if upper else unit}{space}"
    rate = parse_rate(text)
    assert (rate.limit, rate.window) == (limit, WINDOWS[unit])


# --- GCRA semantics, on the memory backend with an injected clock -----------------------------------


@pytest.fixture
def limiter(clock: ManualClock) -> RateLimiter:
    return RateLimiter(MemoryBackend(), clock)


async def hits(limiter: RateLimiter, key: str, limit: str, n: int, cost: int = 1) -> list[RateLimitDecision]:
    return [await limiter.hit(key, parse_rate(limit), cost) for _ in range(n)]


async def test_a_burst_of_exactly_the_limit_then_one_per_interval(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    burst = await hits(limiter, "k", "100/minute", 101)
    assert [d.allowed for d in burst] == [True] * 100 + [False]
    assert [d.remaining for d in burst[:3]] == [99, 98, 97] and burst[99].remaining == 0
    refused = burst[100]
    assert refused.retry_after == pytest.approx(0.6) and refused.reset_after == pytest.approx(60.0)
    assert (refused.limit, refused.window) == (100, 60.0)
    clock.advance(0.6)
    assert [d.allowed for d in await hits(limiter, "k", "100/minute", 2)] == [True, False]
    clock.advance(60)
    assert sum(d.allowed for d in await hits(limiter, "k", "100/minute", 150)) == 100


async def test_exactly_at_the_boundary_is_allowed_a_microsecond_before_is_not(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    await hits(limiter, "k", "10/second", 10)
    clock.advance(0.1 - 1 / US)
    assert not (await limiter.hit("k", parse_rate("10/second"))).allowed
    clock.advance(1 / US)
    decision = await limiter.hit("k", parse_rate("10/second"))
    assert decision.allowed and decision.retry_after == 0.0 and decision.remaining == 0


async def test_an_allowed_decision_reports_what_is_left_and_when_it_is_full_again(
    limiter: RateLimiter,
) -> None:
    decision = await limiter.hit("k", parse_rate("100/day"), 25)
    assert decision == RateLimitDecision(
        allowed=True, remaining=75, retry_after=0.0, reset_after=25 * 864.0, limit=100, window=86_400.0
    )
    assert decision  # truthy when allowed


async def test_cost_weighs_a_request_and_a_refusal_consumes_nothing(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    rate = parse_rate("100000/day")
    assert (await limiter.hit("user:42:tokens", rate, 99_000)).remaining == 1_000
    refused = await limiter.hit("user:42:tokens", rate, 1_234)
    assert not refused.allowed and refused.remaining == 1_000
    assert refused.retry_after == pytest.approx(234 * 0.864)
    small = await limiter.hit("user:42:tokens", rate, 1_000)  # the refusal took nothing
    assert small.allowed and small.remaining == 0


async def test_a_cost_above_the_limit_is_refused_forever_without_consuming(limiter: RateLimiter) -> None:
    rate = parse_rate("10/minute")
    too_big = await limiter.hit("k", rate, 11)
    assert not too_big.allowed and math.isinf(too_big.retry_after) and too_big.remaining == 10
    assert (await limiter.hit("k", rate, 10)).allowed


async def test_cost_zero_reads_the_state_without_counting(limiter: RateLimiter) -> None:
    rate = parse_rate("5/minute")
    await limiter.hit("k", rate, 2)
    for _ in range(3):
        peek = await limiter.hit("k", rate, 0)
        assert peek.allowed and peek.remaining == 3
    assert (await limiter.hit("fresh", rate, 0)).remaining == 5


async def test_a_flood_of_refused_requests_does_not_delay_recovery(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    """Attack: hammering a limited key must not push its TAT further (a refusal stores nothing)."""
    await hits(limiter, "k", "10/minute", 10)
    await hits(limiter, "k", "10/minute", 1_000)
    clock.advance(6)
    assert (await limiter.hit("k", parse_rate("10/minute"))).allowed


async def test_no_double_burst_at_a_window_edge(limiter: RateLimiter, clock: ManualClock) -> None:
    """Attack on fixed windows: the limit just before an edge and again just after it. GCRA allows
    the limit once, then only what the elapsed time has earned."""
    clock.set(1_700_000_040.0 - 0.01)  # 10 ms before a minute boundary
    first = sum(d.allowed for d in await hits(limiter, "k", "100/minute", 100))
    clock.advance(0.02)  # 10 ms after it
    second = sum(d.allowed for d in await hits(limiter, "k", "100/minute", 100))
    assert (first, second) == (100, 0)


async def test_a_clock_going_backwards_never_loosens_a_limit(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    rate = parse_rate("10/minute")
    await hits(limiter, "k", "10/minute", 10)
    clock.advance(-30)  # NTP step back
    stepped_back = await limiter.hit("k", rate)
    assert not stepped_back.allowed and stepped_back.retry_after == pytest.approx(36.0)
    assert stepped_back.reset_after == pytest.approx(90.0)
    clock.advance(30 + 6)  # back to where it was, plus one interval
    assert [d.allowed for d in await hits(limiter, "k", "10/minute", 2)] == [True, False]


async def test_keys_are_independent_and_a_changed_limit_keeps_the_used_share(
    limiter: RateLimiter, clock: ManualClock
) -> None:
    await hits(limiter, "user:1", "2/minute", 2)
    assert not (await limiter.hit("user:1", parse_rate("2/minute"))).allowed
    assert (await limiter.hit("user:2", parse_rate("2/minute"))).allowed
    # A key's state is time (its TAT), not a count: raised to 10/minute, the key has used its
    # whole window, and half of it back after 30 s — the share used carries over to the new limit.
    assert (await limiter.hit("user:1", parse_rate("10/minute"), 0)).remaining == 0
    clock.advance(30)
    assert (await limiter.hit("user:1", parse_rate("10/minute"), 0)).remaining == 5


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["5/second", "10/minute", "7/hour"]),
    st.lists(st.tuples(st.floats(-0.5, 3.0), st.integers(0, 8)), min_size=1, max_size=60),
)
def test_allowed_cost_never_exceeds_the_burst_plus_what_time_earned(
    limit: str, ops: list[tuple[float, int]]
) -> None:
    """For any sequence: over any span of allowed requests, their cost is at most the limit plus
    the intervals elapsed — the GCRA bound, which no window edge and no clock step can break."""
    import asyncio

    rate = parse_rate(limit)
    clock = ManualClock()
    limiter = RateLimiter(MemoryBackend(), clock)
    allowed: list[tuple[int, int]] = []  # (now µs, cost)
    highest = 0

    async def run() -> None:
        nonlocal highest
        for step, cost in ops:
            clock.advance(step * rate.window / 5)
            now = round(clock.now() * US)
            decision = await limiter.hit("k", rate, cost)
            if decision.allowed and cost:
                highest = max(highest, now)
                allowed.append((highest, cost))  # time as the limiter's TAT saw it: never backwards

    asyncio.run(run())
    for i in range(len(allowed)):
        total = 0
        for j in range(i, len(allowed)):
            total += allowed[j][1]
            assert total <= rate.limit + (allowed[j][0] - allowed[i][0]) // rate.interval


async def test_a_full_memory_table_drops_replenished_keys_first(clock: ManualClock, caplog) -> None:
    backend = MemoryBackend(max_keys=100)
    limiter = RateLimiter(backend, clock)
    rate = parse_rate("1/second")
    for i in range(50):
        await limiter.hit(f"old:{i}", rate)
    clock.advance(2)  # the 50 old keys are fully replenished now
    for i in range(50):
        await limiter.hit(f"live:{i}", rate)
    await limiter.hit("one more", rate)
    assert len(backend) == 51 and not caplog.records
    assert not (await limiter.hit("live:0", rate)).allowed  # a live key kept its state
    with caplog.at_level(logging.WARNING, logger="fundaments.ratelimit"):
        for i in range(60):
            await limiter.hit(f"flood:{i}", rate)
    assert len(backend) <= 100
    assert "RATE_LIMIT_MEMORY_KEYS" in caplog.text


# --- every backend gives the same decisions ---------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "redis"])
def backend_place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """(kind, URL): resolved outside the event loop (the PostgreSQL fixture runs its own)."""
    kind = request.param
    if kind == "sqlite":
        return kind, f"sqlite:///{tmp_path / 'rl.db'}"
    if kind == "postgres":
        return kind, request.getfixturevalue("postgres_url")
    return kind, redis_test_url() if kind == "redis" else ""


@pytest.fixture
async def backend(backend_place: tuple[str, str]) -> AsyncIterator[Any]:
    kind, url = backend_place
    if kind == "memory":
        yield MemoryBackend()
        return
    if kind == "redis":
        prefix = unique_prefix()
        redis = redis_backend(url, prefix)
        try:
            yield redis
        finally:
            await redis.close()
            await delete_prefix(url, prefix)
        return
    db = await open_database(parse_database_url(url))
    try:
        yield DatabaseBackend(db)
    finally:
        await db.close()


SCENARIO: list[tuple[float, str, str, int]] = [  # (clock step in seconds, key, limit, cost)
    *[(0.0, "user:42:requests", "5/second", 1)] * 7,
    (0.2, "user:42:requests", "5/second", 1),
    (0.2, "user:42:requests", "5/second", 1),
    (0.0, "user:42:requests", "5/second", 0),
    (0.0, "user:42:tokens", "1000/minute", 400),
    (0.0, "user:42:tokens", "1000/minute", 700),
    (0.0, "user:42:tokens", "1000/minute", 1001),
    (6.0, "user:42:tokens", "1000/minute", 700),
    (-5.0, "user:42:tokens", "1000/minute", 1),  # the clock steps back
    (0.0, "ip:203.0.113.7", "3/hour", 1),
    (0.0, "ip:203.0.113.7", "3/hour", 3),
    (1200.0, "ip:203.0.113.7", "3/hour", 1),
    (3600.0, "user:42:requests", "5/second", 5),
    (0.0, "user:42:requests", "5/second", 1),
    (86_400.0, "ip:203.0.113.7", "3/hour", 0),
]


async def run_scenario(backend: Any) -> list[RateLimitDecision]:
    clock = ManualClock()
    limiter = RateLimiter(backend, clock)
    decisions = []
    for step, key, limit, cost in SCENARIO:
        clock.advance(step)
        decisions.append(await limiter.hit(key, parse_rate(limit), cost))
    return decisions


async def test_every_backend_gives_the_same_decisions(backend: Any) -> None:
    reference = await run_scenario(MemoryBackend())
    assert [d.allowed for d in reference[:7]] == [True] * 5 + [False] * 2
    assert [d.allowed for d in reference[10:13]] == [True, False, False]
    assert await run_scenario(backend) == reference


async def test_the_database_purge_removes_only_replenished_rows(database_url: str) -> None:
    db = await open_database(parse_database_url(database_url))
    try:
        now = 1_700_000_000 * US
        for i in range(5):
            assert await queries.consume(db, db.dialect, f"old:{i}", now, 10 * US, 60 * US) == now + 10 * US
        assert await queries.consume(db, db.dialect, "live", now + 20 * US, 10 * US, 60 * US) == now + 30 * US
        assert await queries.purge(db, now + 10 * US, limit=3) == 3  # bounded
        assert await queries.purge(db, now + 10 * US, limit=100) == 2
        assert await queries.tat(db, "live") == now + 30 * US
        assert await queries.tat(db, "old:0") is None
        if db.dialect == "postgresql":  # the upsert's asynchronous commit is local to its own transaction
            assert await db.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await db.close()


# --- Redis specifics ----------------------------------------------------------------------------------


async def run_all_or_nothing(backend: Any) -> list[list[RateLimitDecision]]:
    clock = ManualClock()
    limiter = RateLimiter(backend, clock)
    per_key, per_user = parse_rate("3/minute"), parse_rate("5/minute")
    steps = [
        *[[("key:a", per_key, 1), ("user:9", per_user, 1)]] * 4,  # the 4th: key:a is spent
        [("user:9", per_user, 0)],  # the refusal did not count against the user
        *[[("key:b", per_key, 1), ("user:9", per_user, 1)]] * 3,  # the 3rd: the user is spent
        [("key:b", per_key, 0)],  # ... and key:b was not counted for it
        [("key:c", per_key, 4), ("user:9", per_user, 0)],  # above a limit: refused, nothing counted
        [("key:c", per_key, 0)],
    ]
    outcomes = []
    for checks in steps:
        outcomes.append(await limiter.hit_all(checks))
        clock.advance(0.001)
    return outcomes


async def test_several_limits_are_counted_all_or_nothing(backend: Any) -> None:
    reference = await run_all_or_nothing(MemoryBackend())
    assert [all(d.allowed for d in step) for step in reference] == [True] * 3 + [False, True] + [True] * 2 + [
        False,
        True,
        False,
        True,
    ]
    assert [d.allowed for d in reference[3]] == [False, False]  # the decisions agree ...
    assert reference[3][0].retry_after > 0 and reference[3][1].retry_after == 0  # ... each with its numbers
    assert (
        reference[4][0].remaining == 2 and reference[8][0].remaining == 1 and reference[10][0].remaining == 3
    )
    assert math.isinf(reference[9][0].retry_after)
    assert await run_all_or_nothing(backend) == reference


async def test_all_or_nothing_is_exact_under_concurrency(backend: Any) -> None:
    """200 simultaneous requests against a key's 100/minute and its owner's 150/minute: exactly 100
    pass, and the owner's limit counted exactly those 100 (none of the refused ones)."""
    import asyncio

    limiter = RateLimiter(backend, ManualClock())
    key, owner = parse_rate("100/minute"), parse_rate("150/minute")
    outcomes = await asyncio.gather(
        *(limiter.hit_all([("key:k", key, 1), ("user:u", owner, 1)]) for _ in range(200))
    )
    assert sum(all(d.allowed for d in pair) for pair in outcomes) == 100
    assert (await limiter.hit("user:u", owner, 0)).remaining == 50


async def test_rate_limit_all_checks_its_arguments(fundaments) -> None:
    security: Security = fundaments.security
    decisions = await security.rate_limit_all([("key:1", "10/minute"), ("user:1", "100/hour", 5)])
    assert [d.remaining for d in decisions] == [9, 95]
    for bad in ([], [("k", "1/s")] * 2, [("k",)], ["k"], [("k", "1/s", 1, 1)], [("k", "1/s")] * 17):
        with pytest.raises(InvalidArgument):
            await security.rate_limit_all(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "stored"),
    [
        ("user:42:tokens", "p:{user:42}:tokens"),
        ("user:42:requests:models", "p:{user:42}:requests:models"),
        ("user:42", "p:{user:42}"),
        ("global", "p:{global}"),
        ("{tenant:7}:user:1", "p:{tenant:7}:user:1"),
        ("ip:{2001:db8::1}:login", "p:ip:{2001:db8::1}:login"),  # the caller's braces are the tag
    ],
)
def test_redis_keys_carry_a_hash_tag_so_a_users_keys_share_a_slot(key: str, stored: str) -> None:
    assert redis_key(key, "p:") == stored


async def test_redis_stores_one_value_per_key_under_its_tag_and_lets_it_expire() -> None:
    url = redis_test_url()
    prefix = unique_prefix()
    backend = redis_backend(url, prefix, server_time=True)
    try:
        limiter = RateLimiter(backend, SystemClock())
        first = await limiter.hit("user:42:requests", parse_rate("10/second"), 3)
        assert first.allowed and first.remaining == 7
        client = backend._client
        assert [k async for k in client.scan_iter(match=prefix + "*")] == [
            f"{prefix}{{user:42}}:requests".encode()
        ]
        ttl = await client.pttl(f"{prefix}{{user:42}}:requests")
        assert 0 < ttl <= 300  # server time: the key lives until it is replenished (3 × 100 ms)
        # (a server that forgot the script — restarted — loads it again: tests/test_ratelimit_redis_outage.py)
    finally:
        await backend.close()
        await delete_prefix(url, prefix)


# --- the facade and the settings ------------------------------------------------------------------


async def test_security_rate_limit_and_enforce(fundaments) -> None:
    security: Security = fundaments.security
    assert fundaments.started()["rate_limiter"]
    assert fundaments["rate_limiter"].backend.name == "database"  # no REDIS_URL
    decision = await security.rate_limit("user:42:tokens", limit="100000/day", cost=1234)
    assert decision.allowed and decision.remaining == 100_000 - 1234
    await security.enforce_rate_limit("user:7", "2/minute")
    await security.enforce_rate_limit("user:7", "2/minute")
    with pytest.raises(RateLimited) as refused:
        await security.enforce_rate_limit("user:7", "2/minute")
    assert refused.value.retry_after == pytest.approx(30.0)
    assert isinstance(refused.value.decision, RateLimitDecision) and not refused.value.decision.allowed
    assert "retry after 30 s" in str(refused.value)
    for bad in [("", "1/s", 1), ("k" * 201, "1/s", 1), ("k\x00", "1/s", 1), ("k", "1/fortnight", 1)]:
        with pytest.raises(InvalidArgument):
            await security.rate_limit(*bad)
    for cost in (-1, True, 1.5, 10**13):
        with pytest.raises(InvalidArgument):
            await security.rate_limit("k", "1/s", cost)


async def test_security_without_a_rate_limiter_says_so(fundaments) -> None:
    services = {key: fundaments[key] for key in fundaments if key != "rate_limiter"}
    with pytest.raises(ServiceUnavailable, match="rate limits are not running"):
        await Security(services).rate_limit("k", "1/s")


def test_the_backend_follows_redis_url_unless_overridden(tmp_path: Path) -> None:
    def settings_(**values: Any) -> Any:
        return load_settings(env_file=tmp_path / "absent.env", **values)

    assert settings_().rate_limit_backend_choice == "database"
    assert settings_(redis_url="redis://127.0.0.1:6379/0").rate_limit_backend_choice == "redis"
    assert (
        settings_(redis_url="redis://h/0", rate_limit_backend="Memory").rate_limit_backend_choice == "memory"
    )
    assert settings_(rate_limit_backend="database").rate_limit_fail == "closed"
    with pytest.raises(ConfigurationError, match="REDIS_URL is not set"):
        settings_(rate_limit_backend="redis")
    with pytest.raises(ConfigurationError, match="REDIS_URL"):
        settings_(redis_url="http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="RATE_LIMIT_FAIL"):
        settings_(rate_limit_fail="sometimes")
    secret = settings_(redis_url="redis://:s3cret-redis-pass@cache:6379/0")
    assert "s3cret-redis-pass" in secret.secret_values()  # so the log filter masks it
    from fundaments.config.settings import describe

    assert "s3cret-redis-pass" not in str(describe(secret))


async def test_from_settings_builds_the_chosen_backend(tmp_path: Path) -> None:
    settings_ = load_settings(
        env_file=tmp_path / "absent.env", redis_url="redis://127.0.0.1:1/0", rate_limit_redis_timeout=0.5
    )
    limiter = RateLimiter.from_settings(settings_, db=None, clock=SystemClock())  # type: ignore[arg-type]
    assert isinstance(limiter.backend, RedisBackend) and limiter.backend._server_time
    await limiter.close()
    memory = load_settings(env_file=tmp_path / "absent.env", rate_limit_backend="memory")
    assert isinstance(RateLimiter.from_settings(memory, None, ManualClock()).backend, MemoryBackend)  # type: ignore[arg-type]


async def test_the_documented_example_runs(fundaments, capsys) -> None:
    """docs/ratelimits.md's first example, run as written against a started Security."""
    import re
    import textwrap

    doc = (Path(__file__).resolve().parents[1] / "docs" / "ratelimits.md").read_text()
    block = re.search(r"```python\n(.*?)```", doc, re.DOTALL)
    assert block is not None
    source = "async def example(security):\n" + textwrap.indent(block[1], "    ")
    namespace: dict[str, Any] = {"RateLimited": RateLimited}
    exec(compile(source, "docs/ratelimits.md", "exec"), namespace)
    security: Security = fundaments.security
    for _ in range(10):
        await security.rate_limit("ip:203.0.113.7:login", "10/minute")  # spent: the example's enforce refuses
    await namespace["example"](security)
    assert capsys.readouterr().out.strip() == "6.0 0"


async def test_initialize_fundaments_with_redis_url_limits_on_redis(
    make_settings, clock: ManualClock
) -> None:
    from fundaments import initialize_fundaments

    url = redis_test_url()
    started = await initialize_fundaments(make_settings(redis_url=url), clock=clock, configure_logs=False)
    key = f"user:{secrets.token_hex(6)}:requests"
    try:
        backend = started["rate_limiter"].backend
        assert isinstance(backend, RedisBackend) and not backend._server_time  # the injected clock decides
        assert [(await started.security.rate_limit(key, "2/hour")).allowed for _ in range(3)] == [
            True,
            True,
            False,
        ]
        assert await backend._client.exists(redis_key(key)) == 1
    finally:
        await started["rate_limiter"].backend._client.delete(redis_key(key))
        await started.close()


def test_revision_0006_adds_the_table_and_downgrades(tmp_path: Path) -> None:
    import sqlite3

    from alembic import command

    from fundaments.store.migrate import _sqlite_engine, alembic_config

    url = parse_database_url(f"sqlite:///{tmp_path / 'm.db'}")

    def tables() -> set[str]:
        with sqlite3.connect(url.sqlite_path) as db:
            return {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    engine = _sqlite_engine(url)
    try:
        with engine.connect() as connection:
            command.upgrade(alembic_config(connection), "0006")
            connection.commit()
        assert "fundaments_rate_limits" in tables()
        with engine.connect() as connection:
            command.downgrade(alembic_config(connection), "0005")
            connection.commit()
        assert "fundaments_rate_limits" not in tables() and "fundaments_sessions" in tables()
    finally:
        engine.dispose()
