"""Redis going away mid-run: the configured fail mode holds, no decision waits past the timeout,
one log line per outage, and limits resume when Redis is back.

The server is this test's own ``redis-server`` (never the shared one), stopped and started again on
the same port. Durations are measured on the loop's clock against a generous bound (the timeout
plus a second): the point is "bounded", not "fast".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from fundaments.clock import ManualClock
from fundaments.ratelimit import RateLimiter, RedisBackend, parse_rate
from ratelimit_support import OwnRedis, free_port

TIMEOUT = 0.2  # RATE_LIMIT_REDIS_TIMEOUT of these tests
BOUND = TIMEOUT + 1.0
RATE = parse_rate("3/minute")


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "is unreachable or failing" in r.getMessage()]


def recovery_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "reachable again" in r.getMessage()]


async def timed(limiter: RateLimiter, key: str, **kwargs: object) -> tuple[bool, float]:
    loop = asyncio.get_running_loop()
    start = loop.time()
    decision = await limiter.hit(key, RATE, **kwargs)  # type: ignore[arg-type]
    return decision.allowed, loop.time() - start


@pytest.fixture
async def backend(own_redis: OwnRedis) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend.from_url(own_redis.url, timeout=TIMEOUT, server_time=False, retry_interval=0.0)
    try:
        yield backend
    finally:
        await backend.close()


async def test_fail_closed_holds_while_redis_is_down_and_limits_resume_after(
    own_redis: OwnRedis, backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="fundaments.ratelimit")
    limiter = RateLimiter(backend, ManualClock(), fail="closed", fail_retry_after=1.0)
    assert [(await timed(limiter, "user:1"))[0] for _ in range(2)] == [True, True]

    own_redis.stop()
    for _ in range(5):
        allowed, took = await timed(limiter, "user:1")
        assert not allowed and took < BOUND
        decision = await limiter.hit("user:2", RATE)  # a fresh key is refused too: nothing passes
        assert not decision.allowed and decision.retry_after == 1.0 and decision.remaining == 0
    assert not backend.available
    assert len(outage_lines(caplog)) == 1  # once per outage, not once per request
    assert "RATE_LIMIT_FAIL" in outage_lines(caplog)[0]
    # a route may choose otherwise for itself
    assert (await limiter.hit("user:1", RATE, fail="open")).allowed
    assert [d.allowed for d in await limiter.hit_all([("a", RATE, 1), ("b", RATE, 1)])] == [False, False]
    assert [d.allowed for d in await limiter.hit_all([("a", RATE, 1), ("b", RATE, 9)], fail="open")] == [
        False,
        False,
    ]  # one cost above its limit: refused together, in any mode

    own_redis.start()  # an empty server: the state and the loaded script are gone
    assert [(await timed(limiter, "user:1"))[0] for _ in range(4)] == [True, True, True, False]
    assert backend.available and len(recovery_lines(caplog)) == 1

    own_redis.stop()  # a second outage is logged again, once
    for _ in range(3):
        assert not (await timed(limiter, "user:1"))[0]
    assert len(outage_lines(caplog)) == 2


async def test_fail_open_allows_while_redis_is_down(
    own_redis: OwnRedis, backend: RedisBackend, caplog: pytest.LogCaptureFixture
) -> None:
    limiter = RateLimiter(backend, ManualClock(), fail="open")
    await limiter.hit("k", RATE, 3)
    assert not (await limiter.hit("k", RATE)).allowed
    own_redis.stop()
    for _ in range(5):
        allowed, took = await timed(limiter, "k")
        assert allowed and took < BOUND
    assert (await limiter.hit("k", RATE, fail="closed")).allowed is False
    assert not (await limiter.hit("k", RATE, 4)).allowed  # above the limit: refused in any mode
    assert len(outage_lines(caplog)) == 1


async def test_a_redis_that_accepts_but_never_answers_costs_one_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The worst outage: the connection opens and the reply never comes (a hung server, a
    black-holing network). The decision comes after the timeout; while the outage lasts, later
    decisions do not touch the network until the retry interval is over."""
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()  # read everything, answer nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = RedisBackend.from_url(f"redis://127.0.0.1:{port}/0", timeout=TIMEOUT, retry_interval=30.0)
    limiter = RateLimiter(backend, ManualClock())
    try:
        allowed, took = await timed(limiter, "k")
        assert not allowed and TIMEOUT * 0.9 <= took < BOUND
        connections = len(held)
        for _ in range(20):
            allowed, took = await timed(limiter, "k")
            assert not allowed and took < BOUND
        assert len(held) == connections  # no new connection while the circuit is open
        # the probe is due and 50 requests arrive at once: one of them probes, the others do not wait
        backend._next_probe = 0.0
        loop = asyncio.get_running_loop()
        start = loop.time()
        decisions = await asyncio.gather(*(limiter.hit(f"k{i}", RATE) for i in range(50)))
        assert not any(d.allowed for d in decisions) and loop.time() - start < BOUND
        await asyncio.sleep(0.05)  # let the silent server register what connected
        assert len(held) <= connections + 1
        assert len(outage_lines(caplog)) == 1
    finally:
        await backend.close()
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_the_outage_line_never_shows_the_redis_password(caplog: pytest.LogCaptureFixture) -> None:
    url = f"redis://:hunter2-redis-secret@127.0.0.1:{free_port()}/0"  # nothing listens there
    backend = RedisBackend.from_url(url, timeout=TIMEOUT)
    try:
        assert not (await RateLimiter(backend, ManualClock()).hit("k", RATE)).allowed
    finally:
        await backend.close()
    assert len(outage_lines(caplog)) == 1
    assert "hunter2-redis-secret" not in caplog.text and ":***@127.0.0.1" in caplog.text
