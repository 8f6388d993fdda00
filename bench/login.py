"""Login cost against its floor, one bare Argon2id verify with the same parameters (same process).

    python bench/login.py [--rounds 40] [--flood 1000]

Prints:
1. the median of ``authenticate`` + ``complete_login`` (in a transaction, as user_login does) on
   SQLite against the median bare ``argon2.PasswordHasher.verify``: the orchestration overhead
   (login minus verify) as a share of the verify time;
2. logins per second with 1 client and with 8 concurrent clients, and their ratio;
3. event-loop lag (a 10 ms ticker) while ``--flood`` logins arrive at once, with peak RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import argon2

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.config import load_settings
from fundaments.models import LoginFailure, RequestContext

PASSWORD = "correct horse battery staple"
USERNAME = "bench@example.com"


async def login(app: Fundaments, ctx: RequestContext) -> LoginFailure | None:
    """authenticate + complete_login in a transaction, as Security.user_login runs them."""
    uh = app["user_handler"]
    check = await uh.authenticate(USERNAME, PASSWORD, ctx)
    if not check:
        return check.reason
    async with app["db"].transaction() as tx:
        await uh.complete_login(tx, check, ctx)
    return None


async def device_token(app: Fundaments, ctx: RequestContext) -> str:
    uh = app["user_handler"]
    check = await uh.authenticate(USERNAME, PASSWORD, ctx)
    async with app["db"].transaction() as tx:
        return str(await uh.complete_login(tx, check, ctx))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main(rounds: int, flood: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            env_file=Path(tmp) / "absent.env",
            database_url=f"sqlite:///{tmp}/bench.db",
            lockout_threshold=1000,
            throttle_ip_failures=1_000_000,
        )
        app = await initialize_fundaments(settings, configure_logs=False)
        try:
            uh = app["user_handler"]
            encoded = await uh.prepare_password(PASSWORD, username=USERNAME)
            async with app["db"].transaction() as tx:
                await uh.create(tx, USERNAME, encoded)
            ctx = RequestContext("203.0.113.7", "bench")
            bare = argon2.PasswordHasher(
                memory_cost=settings.argon2_memory_cost,
                time_cost=settings.argon2_time_cost,
                parallelism=settings.argon2_parallelism,
            )
            print(
                f"Argon2id m={settings.argon2_memory_cost} KiB t={settings.argon2_time_cost} "
                f"p={settings.argon2_parallelism}; HASHING_CONCURRENCY={settings.hashing_concurrency}, "
                f"HASHING_QUEUE_SIZE={settings.hashing_queue_size}"
            )

            # 1. login vs one bare verify, interleaved; from a new device (no cookie: a device row
            # is inserted) and from a returning one (its device cookie presented)
            returning = RequestContext(ctx.ip_address, ctx.user_agent, await device_token(app, ctx))
            for _ in range(3):
                await login(app, ctx)
                await login(app, returning)
                bare.verify(encoded, PASSWORD)
            verify_times, new_times, returning_times = [], [], []
            for _ in range(rounds):
                start = time.perf_counter()
                bare.verify(encoded, PASSWORD)
                verify_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                assert await login(app, ctx) is None
                new_times.append(time.perf_counter() - start)
                start = time.perf_counter()
                assert await login(app, returning) is None
                returning_times.append(time.perf_counter() - start)
            v = statistics.median(verify_times)
            print(f"bare verify median                  {v * 1000:8.2f} ms")
            for label, times in (("new device", new_times), ("returning device", returning_times)):
                lg = statistics.median(times)
                print(
                    f"login median, {label:<17}     {lg * 1000:8.2f} ms: overhead {(lg - v) * 1000:5.2f} ms "
                    f"= {(lg - v) / v:.1%} of the verify (bar: 10%)"
                )

            # 2. throughput, 1 vs 8 clients
            async def client(n: int) -> None:
                for _ in range(n):
                    assert await login(app, ctx) is None

            per_client = max(4, rounds // 2)
            start = time.perf_counter()
            await client(per_client * 2)
            single = per_client * 2 / (time.perf_counter() - start)
            start = time.perf_counter()
            await asyncio.gather(*(client(per_client) for _ in range(8)))
            multi = 8 * per_client / (time.perf_counter() - start)
            print(f"logins/s, 1 client     {single:8.1f}")
            print(f"logins/s, 8 clients    {multi:8.1f}  ({multi / single:.2f}x; bar: 1.6x on 2 cores)")
            # The machine's own ceiling: bare verifies on 1 thread vs HASHING_CONCURRENCY threads.
            n = per_client * 4
            with ThreadPoolExecutor(1) as one, ThreadPoolExecutor(settings.hashing_concurrency) as many:
                start = time.perf_counter()
                list(one.map(lambda _: bare.verify(encoded, PASSWORD), range(n)))
                serial = n / (time.perf_counter() - start)
                start = time.perf_counter()
                list(many.map(lambda _: bare.verify(encoded, PASSWORD), range(n)))
                parallel = n / (time.perf_counter() - start)
            print(
                f"bare verifies/s, 1 vs {settings.hashing_concurrency} threads "
                f"{serial:.1f} vs {parallel:.1f} "
                f"({parallel / serial:.2f}x: the hardware ceiling for the ratio above)"
            )

            # 3. a flood with a 10 ms ticker measuring event-loop lag
            lags: list[float] = []
            stop = asyncio.Event()

            async def ticker() -> None:
                while not stop.is_set():
                    before = time.perf_counter()
                    await asyncio.sleep(0.010)
                    lags.append(time.perf_counter() - before - 0.010)

            tick = asyncio.create_task(ticker())
            await asyncio.sleep(0.05)
            start = time.perf_counter()
            outcomes = await asyncio.gather(*(login(app, ctx) for _ in range(flood)))
            elapsed = time.perf_counter() - start
            stop.set()
            await tick
            lags.sort()
            p99 = lags[int(len(lags) * 0.99) - 1] if lags else 0.0
            ok = sum(1 for o in outcomes if o is None)
            busy = sum(1 for o in outcomes if o is LoginFailure.BUSY)
            print(
                f"flood of {flood}: {ok} logged in, {busy} BUSY, in {elapsed:.2f} s; "
                f"ticker lag p50 {statistics.median(lags) * 1000:.2f} ms, p99 {p99 * 1000:.2f} ms, "
                f"max {lags[-1] * 1000:.2f} ms (bar: p99 < 50 ms)"
            )
            print(f"peak RSS               {peak_rss_mib():8.1f} MiB (bar: < 500 MiB)")
        finally:
            await app.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--flood", type=int, default=1000)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.flood))
