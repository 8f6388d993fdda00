"""API-key validation speed, against floors measured in the same run.

    python bench/api_keys.py                      # SQLite; PostgreSQL too when the URL is set
    FUNDAMENTS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python bench/api_keys.py

With KEYS live keys of one owner and the tokens taken in turn:
- warm: ``security.validate_api_key(token, request_data)`` with every key cached, vs the bare floor
  ``hmac.new(k, token, sha256).digest()`` + a dict lookup (bars: ≥ 200,000/s, ≥ 0.5× the floor);
- cold: API_KEY_CACHE_SECONDS=0, so every validation reads the database, vs a bare prepared
  read of the same row by its digest (sqlite3 on its own connection; asyncpg prepared statement on
  one connection) (bar: ≥ 0.8×).
Contenders take turns, round after round; figures are medians (ratios: medians of the per-round
ratios), so noise from other work on the machine hits them alike.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from fundaments import initialize_fundaments
from fundaments.api_keys import DIGEST_PURPOSE
from fundaments.bootstrap import Fundaments
from fundaments.clock import SystemClock
from fundaments.config import load_settings

KEYS = 1_000
ROUNDS = 7
REQUEST = {"ip_address": "198.51.100.23", "user_agent": "bench/1.0"}
KEY = "bench-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
SALT = "00112233445566778899aabbccddeeff"


async def measure(run: Callable[[], Awaitable[int]]) -> float:
    started = time.perf_counter()
    count = await run()
    return count / (time.perf_counter() - started)


async def rounds(contenders: dict[str, Callable[[], Awaitable[int]]]) -> dict[str, list[float]]:
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(ROUNDS):
        for name, run in contenders.items():
            rates[name].append(await measure(run))
    return rates


def report(rates: dict[str, list[float]], ours: str, floor: str) -> float:
    for name, values in rates.items():
        print(f"  {name:<58} {statistics.median(values):>12,.0f}/s")
    ratio = statistics.median(a / b for a, b in zip(rates[ours], rates[floor], strict=True))
    print(f"  {'ratio ' + ours + ' / ' + floor:<58} {ratio:>12.2f}x")
    return ratio


async def start(database_url: str, **overrides: Any) -> Fundaments:
    settings = load_settings(
        env_file=Path("/nonexistent"),
        database_url=database_url,
        master_encryption_key=KEY,
        persistent_encryption_salt=SALT,
        argon2_memory_cost=1024,
        argon2_time_cost=1,
        log_level="WARNING",
        api_key_max_per_user=KEYS,
        **overrides,
    )
    return await initialize_fundaments(settings, clock=SystemClock(), configure_logs=False)


async def make_keys(f: Fundaments) -> list[str]:
    security = f["security"]
    await security.create_role("invoker", ["models:invoke"])
    user = await security.register_user("bench-owner", "Bench-Passphrase-2026-xyz", roles=["invoker"])
    return [
        (await security.create_api_key(user.id, name=f"k{i}", scopes=["models:invoke"])).token
        for i in range(KEYS)
    ]


async def warm(database_url: str) -> tuple[float, float]:
    f = await start(database_url, api_key_cache_size=KEYS * 2)
    try:
        tokens = await make_keys(f)
        security = f["security"]
        for token in tokens:  # fill the cache
            assert await security.validate_api_key(token, REQUEST) is not None
        (_, key), *_ = f["encryption"].purpose_keys(DIGEST_PURPOSE)
        table = {hmac.new(key, t.encode(), hashlib.sha256).digest(): t for t in tokens}
        sample = tokens * 50

        async def ours() -> int:
            validate = security.validate_api_key
            for token in sample:
                await validate(token, REQUEST)
            return len(sample)

        async def floor() -> int:
            sha256 = hashlib.sha256
            for token in sample:
                table.get(hmac.new(key, token.encode(), sha256).digest())
            return len(sample)

        print(f"warm validation ({database_url.split(':')[0]}, {KEYS} cached keys, one core)")
        rates = await rounds({"validate_api_key (cached)": ours, "floor: hmac.new + dict lookup": floor})
        ratio = report(rates, "validate_api_key (cached)", "floor: hmac.new + dict lookup")
        return statistics.median(rates["validate_api_key (cached)"]), ratio
    finally:
        await f.close()


async def cold(database_url: str) -> float:
    f = await start(database_url, api_key_cache_seconds=0)
    try:
        tokens = await make_keys(f)
        security = f["security"]
        (_, key), *_ = f["encryption"].purpose_keys(DIGEST_PURPOSE)
        digests = [hmac.new(key, t.encode(), hashlib.sha256).digest() for t in tokens]
        sample = tokens * 5
        sample_digests = digests * 5
        # The bare read of bench/sessions.py: the whole row by its indexed key, no join, no checks.
        bare_sql = "SELECT * FROM fundaments_api_keys WHERE digest = "
        narrow_sql = "SELECT id, revoked_at FROM fundaments_api_keys WHERE digest = "
        conn: Any
        if f["db"].dialect == "sqlite":
            conn = sqlite3.connect(f["db"].path, check_same_thread=False)
            conn.execute("PRAGMA journal_mode = WAL")

            def bare_read(sql: str) -> Callable[[], Awaitable[int]]:
                async def bare() -> int:
                    execute = conn.execute
                    for digest in sample_digests:
                        cursor = execute(sql, (digest,))
                        cursor.fetchone()
                        cursor.close()
                    return len(sample_digests)

                return bare

            bare, narrow = bare_read(bare_sql + "?"), bare_read(narrow_sql + "?")
            name = "bare sqlite3 SELECT * by digest (own connection)"
        else:
            conn = await asyncpg.connect(database_url)

            def bare_read(statement: Any) -> Callable[[], Awaitable[int]]:
                async def bare() -> int:
                    for digest in sample_digests:
                        await statement.fetchrow(digest)
                    return len(sample_digests)

                return bare

            bare = bare_read(await conn.prepare(bare_sql + "$1"))
            narrow = bare_read(await conn.prepare(narrow_sql + "$1"))
            name = "bare asyncpg prepared SELECT * by digest (one connection)"

        async def ours() -> int:
            validate = security.validate_api_key
            for token in sample:
                await validate(token, REQUEST)
            return len(sample)

        print(f"cold validation ({f['db'].dialect}, API_KEY_CACHE_SECONDS=0: every call reads the database)")
        narrow_name = "  (for scale: a bare read of two columns)"
        rates = await rounds({"validate_api_key (database)": ours, name: bare, narrow_name: narrow})
        ratio = report(
            {k: v for k, v in rates.items() if k != narrow_name}, "validate_api_key (database)", name
        )
        print(f"  {narrow_name:<58} {statistics.median(rates[narrow_name]):>12,.0f}/s")
        if f["db"].dialect == "sqlite":
            conn.close()
        else:
            await conn.close()
        return ratio
    finally:
        await f.close()


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        sqlite_url = f"sqlite:///{directory}/bench.db"
        rate, ratio = await warm(sqlite_url)
        print(f"  bars: >= 200,000/s ({'met' if rate >= 200_000 else 'NOT met'}), "
              f">= 0.5x floor ({'met' if ratio >= 0.5 else 'NOT met'})")  # fmt: skip
        cold_ratio = await cold(f"sqlite:///{directory}/cold.db")
        print(f"  bar: >= 0.8x ({'met' if cold_ratio >= 0.8 else 'NOT met'})")
    admin = os.environ.get("FUNDAMENTS_TEST_POSTGRES_URL")
    if admin:
        import secrets
        from urllib.parse import urlsplit, urlunsplit

        name = f"fundaments_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        await conn.close()
        parts = urlsplit(admin)
        url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
        try:
            cold_ratio = await cold(url)
            print(f"  bar: >= 0.8x ({'met' if cold_ratio >= 0.8 else 'NOT met'})")
        finally:
            conn = await asyncpg.connect(admin)
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
