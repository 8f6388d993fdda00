"""Rate-limit decisions per second on each backend, and the Redis decision against its floor.

    python bench/ratelimit.py [--redis redis://127.0.0.1:6379/0] [--postgres postgresql://…/test]
                              [--seconds 1] [--rounds 3]

Prints, sequential decisions on one task:
1. Redis: ``security.rate_limit`` (the facade, Redis's own clock) vs a bare redis-py ``EVALSHA``
   of a trivial script (``return 1``) on the same client, in alternating batches of 1,000, and
   the median ratio of adjacent pairs (the bar: >= 0.8x — a decision is one round trip);
2. the database backend on SQLite and on PostgreSQL: allowed decisions (one upsert each, after the
   read) and refused ones (a spent key: the read alone);
3. the memory backend.
Keys cycle over 1,000 names, so allowed decisions write a new TAT each time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fundaments import initialize_fundaments
from fundaments.clock import SystemClock
from fundaments.config import load_settings, parse_database_url
from fundaments.ratelimit import DatabaseBackend, MemoryBackend, RateLimiter, parse_rate
from fundaments.store import open_database

KEYS = 1_000
LOOSE = "1000000/second"  # never refuses: every decision is an allowed one (a write)


async def rate(func: Callable[[int], Awaitable[object]], seconds: float) -> float:
    """Calls per second over at least ``seconds`` (0: one pass over the keys)."""
    done, start = 0, time.perf_counter()
    while not done or time.perf_counter() - start < seconds:
        for i in range(KEYS):
            await func(i)
        done += KEYS
    return done / (time.perf_counter() - start)


def show(values: list[float]) -> str:
    return f"{statistics.median(values):>9,.0f}/s (median of {len(values)})"


async def bench_redis(url: str, seconds: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            env_file=Path(tmp) / "absent.env",
            database_url=f"sqlite:///{tmp}/bench.db",
            mail_url=f"file://{tmp}/outbox",
            redis_url=url,
        )
        app = await initialize_fundaments(settings, configure_logs=False)
        try:
            security = app.security
            client = app["rate_limiter"].backend._client  # the same client, pool and connection
            trivial = await client.script_load("return 1")
            run = secrets.token_hex(4)
            names = [f"bench:{run}:{i}" for i in range(KEYS)]

            async def bare(i: int) -> object:
                return await client.evalsha(trivial, 0)

            async def decision(i: int) -> object:
                return await security.rate_limit(names[i], LOOSE)

            await rate(bare, 0.2)
            await rate(decision, 0.2)  # warm: script loaded, connection open
            # Short alternating batches, each decision batch against the bare batch just before
            # it: a loaded machine's drift hits both sides of a pair alike.
            bare_rates, decision_rates, ratios = [], [], []
            end = time.perf_counter() + 2 * seconds * rounds
            while time.perf_counter() < end:
                bare_rates.append(await rate(bare, 0))
                decision_rates.append(await rate(decision, 0))
                ratios.append(decision_rates[-1] / bare_rates[-1])
            ratio = statistics.median(ratios)
            low, _, high = statistics.quantiles(ratios, n=4)
            print(f"Redis  bare EVALSHA 'return 1':   {show(bare_rates)}")
            print(f"Redis  security.rate_limit:       {show(decision_rates)}")
            print(
                f"Redis  ratio decision/bare: median {ratio:.2f}x of {len(ratios)} pairs "
                f"(quartiles {low:.2f}-{high:.2f}; bar >= 0.8x)"
            )
        finally:
            await app.close()


async def bench_backend(label: str, limiter: RateLimiter, seconds: float, rounds: int) -> None:
    loose, tight = parse_rate(LOOSE), parse_rate("1/day")
    run = secrets.token_hex(4)
    names = [f"bench:{run}:{i}" for i in range(KEYS)]
    await limiter.hit("bench:spent", tight)

    async def allowed(i: int) -> object:
        return await limiter.hit(names[i], loose)

    async def refused(i: int) -> object:
        return await limiter.hit("bench:spent", tight)

    allowed_rates, refused_rates = [], []
    for _ in range(rounds):
        allowed_rates.append(await rate(allowed, seconds))
        refused_rates.append(await rate(refused, seconds))
    print(f"{label:<10} allowed: {show(allowed_rates)}   refused: {show(refused_rates)}")


async def bench_databases(postgres: str | None, seconds: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = await open_database(parse_database_url(f"sqlite:///{tmp}/bench.db"))
        try:
            await bench_backend("SQLite", RateLimiter(DatabaseBackend(db), SystemClock()), seconds, rounds)
        finally:
            await db.close()
    if not postgres:
        print("PostgreSQL skipped: pass --postgres or set FUNDAMENTS_TEST_POSTGRES_URL")
        return
    name = f"fundaments_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(postgres)
    await admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(postgres)
    try:
        db = await open_database(
            parse_database_url(urlunsplit((parts.scheme, parts.netloc, "/" + name, "", "")))
        )
        try:
            await bench_backend(
                "PostgreSQL", RateLimiter(DatabaseBackend(db), SystemClock()), seconds, rounds
            )
        finally:
            await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--redis", default=os.environ.get("FUNDAMENTS_TEST_REDIS_URL"))
    parser.add_argument("--postgres", default=os.environ.get("FUNDAMENTS_TEST_POSTGRES_URL"))
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    if args.redis:
        await bench_redis(args.redis, args.seconds, args.rounds)
    else:
        print("Redis skipped: pass --redis or set FUNDAMENTS_TEST_REDIS_URL")
    await bench_databases(args.postgres, args.seconds, args.rounds)
    await bench_backend("memory", RateLimiter(MemoryBackend(), SystemClock()), args.seconds, args.rounds)


if __name__ == "__main__":
    asyncio.run(main())
