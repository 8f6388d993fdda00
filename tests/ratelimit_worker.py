"""One process of the rate-limit exactness tests (tests/test_ratelimit_exactness.py).

    python tests/ratelimit_worker.py

For each scenario line read from stdin — a JSON object {"backend", "url", "prefix", "key",
"limit", "costs", "now"}, ``backend`` sqlite, postgres or redis, ``now`` a frozen clock (Unix
seconds) or "server" for the real clock (which Redis reads from its own TIME) — the worker prints
"ready", waits for "go", fires every request of the scenario at once (asyncio.gather) and prints
{"allowed": n, "cost": sum of the allowed costs}. Backends are opened once and kept.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from fundaments.clock import ManualClock, SystemClock
from fundaments.ratelimit import DatabaseBackend, RateLimiter, RedisBackend, parse_rate
from fundaments.store import Database, PostgresDatabase, SQLiteDatabase


async def main() -> None:
    databases: dict[str, Database] = {}
    backends: dict[tuple[str, str, str, bool], Any] = {}

    async def backend_for(scenario: dict[str, Any], server_time: bool) -> Any:
        kind, url, prefix = scenario["backend"], scenario["url"], scenario["prefix"]
        place = (kind, url, prefix, server_time and kind == "redis")
        if place not in backends:
            if kind == "redis":
                backends[place] = RedisBackend.from_url(
                    url, timeout=10.0, server_time=server_time, prefix=prefix
                )
            else:
                if url not in databases:
                    databases[url] = (
                        SQLiteDatabase(Path(url))
                        if kind == "sqlite"
                        else await PostgresDatabase.connect(url, min_size=1, max_size=8)
                    )
                backends[place] = DatabaseBackend(databases[url])
        return backends[place]

    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            scenario = json.loads(line)
            real = scenario["now"] == "server"
            clock = SystemClock() if real else ManualClock(float(scenario["now"]))
            limiter = RateLimiter(await backend_for(scenario, real), clock)
            rate = parse_rate(scenario["limit"])
            print("ready", flush=True)
            assert (await asyncio.to_thread(sys.stdin.readline)).strip() == "go"
            decisions = await asyncio.gather(
                *(limiter.hit(scenario["key"], rate, c) for c in scenario["costs"])
            )
            allowed = [c for c, d in zip(scenario["costs"], decisions, strict=True) if d.allowed]
            print(json.dumps({"allowed": len(allowed), "cost": sum(allowed)}), flush=True)
    finally:
        for backend in backends.values():
            await backend.close()
        for db in databases.values():
            await db.close()


if __name__ == "__main__":
    asyncio.run(main())
