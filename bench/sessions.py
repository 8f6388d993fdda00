"""Session validation speed, against baselines measured in the same run.

    python bench/sessions.py                      # SQLite; PostgreSQL too when the URL is set
    FUNDAMENTS_TEST_POSTGRES_URL=postgresql://postgres@127.0.0.1:5432/test python bench/sessions.py

With 10,000 live sessions and random valid tokens:
- SQLite: ``validate`` vs Django's database session backend (``SessionStore(session_key=k).load()``
  on its own SQLite file) and vs a bare ``sqlite3`` primary-key SELECT;
- PostgreSQL: ``validate`` vs a bare ``asyncpg`` prepared primary-key fetch, sequential (one
  connection) and with 50 concurrent tasks (a pool of the same size as fundaments').
``cache`` is the default SESSION_CACHE_SECONDS=1; ``no cache`` is SESSION_CACHE_SECONDS=0, where
every validation reads the database; ``touch every request`` also sets SESSION_TOUCH_INTERVAL=0, so
each validation queues a last_seen write for the background writer (the default is one a minute).
Sequential contenders take turns every 500 lookups and concurrent ones run in turn, round after
round; figures are medians (ratios: medians of the per-round ratios), so noise from other work on
the machine hits them alike. Prints rates, ratios,
and p50/p99 latency at 50 tasks.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import random
import secrets
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.config import Settings, load_settings
from fundaments.models import RequestContext
from fundaments.sessions import SessionManager

LIVE_SESSIONS = 10_000
USERS = 2_000
CONCURRENCY = 50
CLIENT = RequestContext("203.0.113.7", "Mozilla/5.0 (X11; Linux x86_64) bench")


def rate(count: int, seconds: float) -> float:
    return count / seconds


def best_of(runs: int, measure: Callable[[], float]) -> float:
    """The median rate of ``runs`` measurements (each returns operations per second)."""
    return statistics.median(measure() for _ in range(runs))


# --- fixtures ------------------------------------------------------------------------------------
async def seed(f: Fundaments) -> list[str]:
    """USERS users and LIVE_SESSIONS sessions, written in bulk; the session tokens."""
    db = f["db"]
    now = time.time()
    async with db.transaction() as tx:
        await tx.executemany(
            "INSERT INTO fundaments_users (username, password_hash, created_at, updated_at, "
            "password_changed_at) VALUES ($1, $2, $3, $3, $3)",
            [(f"user{i}@example.com", "x", now) for i in range(USERS)],
        )
    ids = [int(r["id"]) for r in await db.fetch("SELECT id FROM fundaments_users ORDER BY id")]
    tokens = [secrets.token_urlsafe(32) for _ in range(LIVE_SESSIONS)]
    rows = [
        (
            hashlib.sha256(t.encode()).digest(),
            secrets.token_urlsafe(16),
            ids[i % len(ids)],
            now,
            now,
            now + 43_200,
            CLIENT.ip_address,
            CLIENT.user_agent,
        )
        for i, t in enumerate(tokens)
    ]
    async with db.transaction() as tx:
        await tx.executemany(
            "INSERT INTO fundaments_sessions (token_hash, id, user_id, created_at, last_seen, expires_at, "
            "ip_address, user_agent, privilege_epoch) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0)",
            rows,
        )
    # One session made the real way, to check the seeded rows look like real ones.
    async with db.transaction() as tx:
        from fundaments.models import User

        real = await f["sessions"].create(tx, User(id=ids[0], username="user0@example.com"), CLIENT)
    assert await f["sessions"].validate(real.token, CLIENT) is not None
    assert await f["sessions"].validate(tokens[0], CLIENT) is not None
    return tokens


def manager(f: Fundaments, **overrides: Any) -> SessionManager:
    settings: Settings = f["config"].model_copy(update=overrides)
    return SessionManager(f["db"], settings, f["sessions"]._clock, f["audit"])


async def concurrent(
    validate: Callable[[str], Awaitable[Any]], sample: list[str], tasks: int = CONCURRENCY
) -> tuple[float, float, float]:
    """Rate, p50 and p99 latency (ms) with ``tasks`` tasks sharing the sample."""
    latencies: list[float] = []

    async def worker(part: list[str]) -> None:
        clock = time.perf_counter
        for token in part:
            t0 = clock()
            await validate(token)
            latencies.append(clock() - t0)

    parts = [sample[i::tasks] for i in range(tasks)]
    started = time.perf_counter()
    await asyncio.gather(*(worker(p) for p in parts))
    elapsed = time.perf_counter() - started
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1e3
    p99 = latencies[int(len(latencies) * 0.99)] * 1e3
    return rate(len(sample), elapsed), p50, p99


def line(name: str, value: float, unit: str = "/s") -> None:
    shown = f"{value:>12.3f}" if unit == " ms" else f"{value:>12,.0f}"
    print(f"  {name:<58} {shown}{unit}")


# --- Django ---------------------------------------------------------------------------------------
def django_rate(directory: Path, sample_size: int, runs: int) -> float:
    """Django's database session backend on its own SQLite file: ``SessionStore(k).load()``."""
    import django
    from django.conf import settings as dj

    dj.configure(
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(directory / "django.db")}},
        INSTALLED_APPS=["django.contrib.sessions"],
        SESSION_ENGINE="django.contrib.sessions.backends.db",
        SECRET_KEY=secrets.token_hex(32),
        USE_TZ=True,
    )
    django.setup()
    from django.contrib.sessions.backends.db import SessionStore
    from django.contrib.sessions.models import Session as DjangoSession
    from django.core.management import call_command
    from django.utils import timezone

    call_command("migrate", "sessions", verbosity=0)
    encoder = SessionStore()
    expire = timezone.now() + timezone.timedelta(hours=12)
    keys = [secrets.token_hex(16) for _ in range(LIVE_SESSIONS)]
    DjangoSession.objects.bulk_create(
        [
            DjangoSession(
                session_key=k, session_data=encoder.encode({"_auth_user_id": str(i)}), expire_date=expire
            )
            for i, k in enumerate(keys)
        ],
        batch_size=1_000,
    )
    assert SessionStore(session_key=keys[0]).load() == {"_auth_user_id": "0"}
    sample = random.choices(keys, k=sample_size)

    def measure() -> float:
        started = time.perf_counter()
        for key in sample:
            SessionStore(session_key=key).load()
        return rate(len(sample), time.perf_counter() - started)

    return best_of(runs, measure)


# --- paired rounds -----------------------------------------------------------------------------------
Lookup = Callable[[str], Awaitable[Any]]


CHUNK = 500  # sequential contenders take turns every CHUNK lookups


async def paired_rounds(
    contenders: dict[str, tuple[Lookup, int]], sample: list[str], runs: int
) -> dict[str, list[tuple[float, float, float]]]:
    """Measure every contender once per round so machine noise hits all of them alike.

    ``contenders`` maps a name to (lookup, tasks). Sequential ones (tasks 1) take turns every
    CHUNK lookups, in a rotating order, so each pair is measured within milliseconds of each
    other; concurrent ones then run the whole sample in turn. Each entry of the result is
    (rate, p50 ms, p99 ms) per round.
    """
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in contenders}
    serial = [name for name, (_, tasks) in contenders.items() if tasks == 1]
    parallel = [name for name, (_, tasks) in contenders.items() if tasks > 1]
    for round_number in range(runs):
        spent = dict.fromkeys(serial, 0.0)
        for turn, start in enumerate(range(0, len(sample), CHUNK)):
            chunk = sample[start : start + CHUNK]
            shift = (round_number + turn) % len(serial)
            for name in serial[shift:] + serial[:shift]:
                lookup = contenders[name][0]
                started = time.perf_counter()
                for token in chunk:
                    await lookup(token)
                spent[name] += time.perf_counter() - started
        for name in serial:
            results[name].append((len(sample) / spent[name], 0.0, 0.0))
        shift = round_number % max(len(parallel), 1)
        for name in parallel[shift:] + parallel[:shift]:
            lookup, tasks = contenders[name]
            results[name].append(await concurrent(lookup, sample, tasks))
    return results


def summarize(
    rounds: dict[str, list[tuple[float, float, float]]], ratios: dict[str, tuple[str, str]]
) -> dict[str, float]:
    """Median rate (and p50/p99 for concurrent runs) per contender; median paired ratios."""
    out: dict[str, float] = {}
    for name, values in rounds.items():
        out[name] = statistics.median(v[0] for v in values)
        if any(v[2] for v in values):
            out[f"{name}: p50 ms"] = statistics.median(v[1] for v in values)
            out[f"{name}: p99 ms"] = statistics.median(v[2] for v in values)
    for label, (ours, base) in ratios.items():
        out[label] = statistics.median(a[0] / b[0] for a, b in zip(rounds[ours], rounds[base], strict=True))
    return out


async def started_manager(f: Fundaments, **overrides: Any) -> SessionManager:
    sessions = manager(f, **overrides)
    await sessions.start()
    return sessions


def validator(sessions: SessionManager) -> Lookup:
    async def validate(token: str) -> Any:
        return await sessions.validate(token, CLIENT)

    return validate


# --- SQLite -------------------------------------------------------------------------------------------
async def sqlite_part(directory: Path, sample_size: int, runs: int) -> dict[str, float]:
    settings = load_settings(
        env_file=directory / "absent.env", database_url=f"sqlite:///{directory / 'f.db'}"
    )
    f = await initialize_fundaments(settings, configure_logs=False)
    conn = sqlite3.connect(Path(settings.database.sqlite_path or ""), isolation_level=None)
    try:
        tokens = await seed(f)
        sample = random.choices(tokens, k=sample_size)
        hashed = {t: hashlib.sha256(t.encode()).digest() for t in tokens}
        sql = "SELECT * FROM fundaments_sessions WHERE token_hash = ?"

        async def bare(token: str) -> Any:  # the baseline: no hashing, no checks, no coroutine inside
            return conn.execute(sql, (hashed[token],)).fetchone()

        cached = await started_manager(f)
        uncached = await started_manager(f, session_cache_seconds=0)
        rounds = await paired_rounds(
            {
                "validate, no cache": (validator(uncached), 1),
                "validate, cache": (validator(cached), 1),
                "bare sqlite3 PK SELECT": (bare, 1),
                f"validate, no cache, {CONCURRENCY} tasks": (validator(uncached), CONCURRENCY),
                f"validate, cache, {CONCURRENCY} tasks": (validator(cached), CONCURRENCY),
            },
            sample,
            runs,
        )
        await cached.close()
        await uncached.close()
        # Apart, because its background writes would slow whatever ran next.
        touching = await started_manager(f, session_cache_seconds=0, session_touch_interval=0)
        rounds.update(
            await paired_rounds(
                {
                    "validate, no cache, touch every request": (validator(touching), 1),
                    "bare (again)": (bare, 1),
                },
                sample,
                runs,
            )
        )
        await touching.close()
        return summarize(
            rounds,
            {
                "ratio no cache / bare sqlite3": ("validate, no cache", "bare sqlite3 PK SELECT"),
                "ratio no cache, touch every request / bare sqlite3": (
                    "validate, no cache, touch every request",
                    "bare (again)",
                ),
                "ratio cache / bare sqlite3": ("validate, cache", "bare sqlite3 PK SELECT"),
            },
        )
    finally:
        conn.close()
        await f.close()


# --- PostgreSQL -------------------------------------------------------------------------------------
async def make_database(admin_url: str) -> str:
    name = f"fundaments_bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


async def drop_database(admin_url: str, url: str) -> None:
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{urlsplit(url).path.lstrip("/")}" WITH (FORCE)')
    finally:
        await conn.close()


async def _no_reset(connection: Any) -> None:
    """Like fundaments' pool: nothing to reset between users of a connection."""


async def postgres_part(admin_url: str, directory: Path, sample_size: int, runs: int) -> dict[str, float]:
    url = await make_database(admin_url)
    try:
        settings = load_settings(env_file=directory / "absent.env", database_url=url)
        f = await initialize_fundaments(settings, configure_logs=False)
        sql = "SELECT * FROM fundaments_sessions WHERE token_hash = $1"
        conn = await asyncpg.connect(url)
        # For 50 tasks: a pool the shape of fundaments' (size, no RESET ALL on release).
        pool = await asyncpg.create_pool(
            url, min_size=settings.db_pool_max_size, max_size=settings.db_pool_max_size, reset=_no_reset
        )
        try:
            tokens = await seed(f)
            sample = random.choices(tokens, k=sample_size)
            hashed = {t: hashlib.sha256(t.encode()).digest() for t in tokens}
            stmt = await conn.prepare(sql)

            async def bare(token: str) -> Any:
                return await stmt.fetchrow(hashed[token])

            async def bare_pool(token: str) -> Any:
                return await pool.fetchrow(sql, hashed[token])

            assert await bare(sample[0]) is not None and await bare_pool(sample[0]) is not None
            cached = await started_manager(f)
            uncached = await started_manager(f, session_cache_seconds=0)
            rounds = await paired_rounds(
                {
                    "validate, no cache": (validator(uncached), 1),
                    "validate, cache": (validator(cached), 1),
                    "bare asyncpg prepared fetch": (bare, 1),
                    f"validate, no cache, {CONCURRENCY} tasks": (validator(uncached), CONCURRENCY),
                    f"validate, cache, {CONCURRENCY} tasks": (validator(cached), CONCURRENCY),
                    f"bare asyncpg pool fetch, {CONCURRENCY} tasks": (bare_pool, CONCURRENCY),
                },
                sample,
                runs,
            )
            await cached.close()
            await uncached.close()
            touching = await started_manager(f, session_cache_seconds=0, session_touch_interval=0)
            rounds.update(
                await paired_rounds(
                    {
                        "validate, no cache, touch every request": (validator(touching), 1),
                        "bare (again)": (bare, 1),
                    },
                    sample,
                    runs,
                )
            )
            await touching.close()
        finally:
            await conn.close()
            await pool.close()
            await f.close()
        conc = f"{CONCURRENCY} tasks"
        return summarize(
            rounds,
            {
                "ratio no cache / bare asyncpg, sequential": (
                    "validate, no cache",
                    "bare asyncpg prepared fetch",
                ),
                "ratio cache / bare asyncpg, sequential": ("validate, cache", "bare asyncpg prepared fetch"),
                "ratio no cache, touch every request / bare asyncpg, sequential": (
                    "validate, no cache, touch every request",
                    "bare (again)",
                ),
                f"ratio no cache / bare asyncpg, {conc}": (
                    f"validate, no cache, {conc}",
                    f"bare asyncpg pool fetch, {conc}",
                ),
                f"ratio cache / bare asyncpg, {conc}": (
                    f"validate, cache, {conc}",
                    f"bare asyncpg pool fetch, {conc}",
                ),
            },
        )
    finally:
        await drop_database(admin_url, url)


def report(title: str, r: dict[str, float]) -> None:
    print(title)
    for name, value in r.items():
        if name.startswith("ratio"):
            print(f"  {name:<58} {value:>12.2f}x")
        else:
            line(name, value, " ms" if name.endswith(" ms") else "/s")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample", type=int, default=20_000, help="validations per measurement")
    parser.add_argument("--runs", type=int, default=5, help="rounds (figures are medians)")
    parser.add_argument("--postgres", default=os.environ.get("FUNDAMENTS_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    random.seed(2026)
    versions = f"python {sys.version.split()[0]}, sqlite {sqlite3.sqlite_version}"
    print(f"{versions}, {LIVE_SESSIONS:,} live sessions, random valid tokens")
    print(f"sample {args.sample:,} validations per measurement, {args.runs} rounds, medians")
    print("cache: SESSION_CACHE_SECONDS=1 (default); no cache: 0, every validation reads the database")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        sqlite_results = asyncio.run(sqlite_part(directory, args.sample, args.runs))
        # Django's ORM is synchronous: it runs outside the event loop.
        django = django_rate(directory, args.sample, args.runs)
        sqlite_results["Django SessionStore(k).load()"] = django
        sqlite_results["ratio no cache / Django"] = sqlite_results["validate, no cache"] / django
        sqlite_results["ratio cache / Django"] = sqlite_results["validate, cache"] / django
        report("SQLite (bars: >= 0.25x bare sqlite3, >= 5x Django)", sqlite_results)
        if args.postgres:
            pg = asyncio.run(postgres_part(args.postgres, directory, args.sample // 2, args.runs))
            report("PostgreSQL (bar: >= 0.8x bare asyncpg, sequential and 50 tasks)", pg)
        else:
            print("PostgreSQL: skipped (set FUNDAMENTS_TEST_POSTGRES_URL or --postgres)")


if __name__ == "__main__":
    main()
