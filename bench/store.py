"""Storage benchmark: the store interface against the bare drivers, in the same process.

    python bench/store.py [--postgres postgresql://postgres@127.0.0.1:5432/test] [--seconds 2]

Prints reads/s for a primary-key lookup through the store vs a bare sqlite3 SELECT on the same
file (target: >= 0.5x) and vs a bare asyncpg prepared fetch (target: >= 0.8x), and the throughput
of 200 concurrent short write transactions on SQLite (target: no "database is locked").
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fundaments.config import parse_database_url
from fundaments.store import open_database

ROWS = 10_000
SQL = "SELECT key, value FROM fundaments_state WHERE key = $1"


def rate_sync(func: Callable[[str], object], keys: list[str], seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for key in keys[:1000]:
            func(key)
        done += 1000
        random.shuffle(keys)
    return done / (time.perf_counter() - start)


async def rate_async(func: Callable[[str], Awaitable[object]], keys: list[str], seconds: float) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for key in keys[:1000]:
            await func(key)
        done += 1000
        random.shuffle(keys)
    return done / (time.perf_counter() - start)


async def concurrent_rate(
    func: Callable[[str], Awaitable[object]], keys: list[str], tasks: int, per_task: int
) -> float:
    async def worker() -> None:
        for _ in range(per_task):
            await func(random.choice(keys))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return tasks * per_task / (time.perf_counter() - start)


def best_of(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f}/s (median of {len(values)})"


async def bench_sqlite(seconds: float, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.db"
        db = await open_database(parse_database_url(f"sqlite:///{path}"))
        keys = [secrets.token_hex(8) for _ in range(ROWS)]
        await db.executemany(
            "INSERT INTO fundaments_state (key, value) VALUES ($1, $2)", [(k, i) for i, k in enumerate(keys)]
        )
        bare = sqlite3.connect(path)
        bare.row_factory = sqlite3.Row
        bare_sql = SQL.replace("$1", "?")

        def bare_read(key: str) -> object:
            return bare.execute(bare_sql, (key,)).fetchone()

        async def store_read(key: str) -> object:
            return await db.fetchrow(SQL, key)

        bare_rates, store_rates = [], []
        for _ in range(rounds):  # interleaved rounds: machine noise hits both sides alike
            bare_rates.append(rate_sync(bare_read, keys, seconds))
            store_rates.append(await rate_async(store_read, keys, seconds))
        ratio = statistics.median(store_rates) / statistics.median(bare_rates)
        print(f"SQLite PK read  bare sqlite3: {best_of(bare_rates)}")
        print(f"SQLite PK read  store:        {best_of(store_rates)}  ratio {ratio:.2f}x (target >= 0.5x)")

        await db.execute("INSERT INTO fundaments_state (key, value) VALUES ('counter', 0)")
        errors = 0

        async def writer(n: int) -> None:
            nonlocal errors
            try:
                async with db.transaction() as tx:
                    await tx.execute("UPDATE fundaments_state SET value = value + 1 WHERE key = 'counter'")
                    await tx.execute("INSERT INTO fundaments_state (key, value) VALUES ($1, $2)", f"w{n}", n)
            except Exception as exc:  # counted, not hidden
                errors += 1
                print("writer error:", exc)

        start = time.perf_counter()
        await asyncio.gather(*(writer(n) for n in range(200)))
        elapsed = time.perf_counter() - start
        counter = await db.fetchval("SELECT value FROM fundaments_state WHERE key = 'counter'")
        print(
            f"SQLite 200 concurrent writers: {200 / elapsed:,.0f} transactions/s, errors {errors}, "
            f"counter {counter} (expected 200)"
        )
        bare.close()
        await db.close()


async def bench_postgres(admin_url: str, seconds: float, rounds: int) -> None:
    name = f"fundaments_bench_{secrets.token_hex(4)}"
    admin = await asyncpg.connect(admin_url)
    await admin.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(admin_url)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    try:
        db = await open_database(parse_database_url(url))
        keys = [secrets.token_hex(8) for _ in range(ROWS)]
        await db.executemany(
            "INSERT INTO fundaments_state (key, value) VALUES ($1, $2)", [(k, i) for i, k in enumerate(keys)]
        )
        bare = await asyncpg.connect(url)
        statement = await bare.prepare(SQL)

        async def bare_read(key: str) -> object:
            return await statement.fetchrow(key)

        async def store_read(key: str) -> object:
            return await db.fetchrow(SQL, key)

        bare_rates, store_rates = [], []
        for _ in range(rounds):
            bare_rates.append(await rate_async(bare_read, keys, seconds))
            store_rates.append(await rate_async(store_read, keys, seconds))
        ratio = statistics.median(store_rates) / statistics.median(bare_rates)
        print(f"PostgreSQL PK read  bare asyncpg prepared: {best_of(bare_rates)}")
        print(
            f"PostgreSQL PK read  store (pool):          {best_of(store_rates)}  "
            f"ratio {ratio:.2f}x (target >= 0.8x)"
        )
        pool_bare = await asyncpg.create_pool(url, min_size=20, max_size=20)

        async def pool_bare_read(key: str) -> object:
            async with pool_bare.acquire() as conn:
                return await conn.fetchrow(SQL, key)

        conc_bare = await concurrent_rate(pool_bare_read, keys, 50, 400)
        conc_store = await concurrent_rate(store_read, keys, 50, 400)
        print(
            f"PostgreSQL 50 tasks  bare asyncpg pool: {conc_bare:,.0f}/s  store: {conc_store:,.0f}/s  "
            f"ratio {conc_store / conc_bare:.2f}x"
        )
        await pool_bare.close()
        await bare.close()
        await db.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--postgres", default=os.environ.get("FUNDAMENTS_TEST_POSTGRES_URL"))
    parser.add_argument("--seconds", type=float, default=1.0, help="per measurement round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    await bench_sqlite(args.seconds, args.rounds)
    if args.postgres:
        await bench_postgres(args.postgres, args.seconds, args.rounds)
    else:
        print("PostgreSQL skipped: pass --postgres or set FUNDAMENTS_TEST_POSTGRES_URL")


if __name__ == "__main__":
    asyncio.run(main())
