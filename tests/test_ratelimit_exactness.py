"""Exactness across processes: 4 processes × 200 simultaneous requests against 100/minute allow
exactly 100, on a shared SQLite file, on PostgreSQL and on Redis; cost-weighted limits sum exactly.

Each worker (tests/ratelimit_worker.py) is a separate Python process with its own connections; all
four are released at once. A frozen injected clock makes "exactly 100" exact (with a real clock,
100/minute earns one more request every 0.6 s); a last scenario runs on the real clock — Redis's own
TIME — against 100/day, where nothing is earned during the test.
"""

from __future__ import annotations

import json
import random
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from fundaments.clock import ManualClock
from fundaments.config import parse_database_url
from fundaments.ratelimit import DatabaseBackend, RateLimiter, parse_rate
from fundaments.store import open_database, upgrade
from ratelimit_support import delete_prefix, redis_backend, redis_test_url, unique_prefix

pytestmark = pytest.mark.slow  # four Python processes start: a few seconds

WORKER = Path(__file__).with_name("ratelimit_worker.py")
PROCESSES = 4
REQUESTS = 200
FROZEN = 1_700_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres), "redis"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    if request.param == "sqlite":
        return "sqlite", str(tmp_path / "shared.db")
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("postgres_url")
    return "redis", redis_test_url()


@pytest.fixture
async def parent_backend(place: tuple[str, str]) -> AsyncIterator[tuple[Any, str]]:
    """The backend as the test process sees it (schema migrated first), and the Redis prefix."""
    kind, url = place
    prefix = unique_prefix()
    if kind == "redis":
        backend = redis_backend(url, prefix)
        try:
            yield backend, prefix
        finally:
            await backend.close()
            await delete_prefix(url, prefix)
        return
    database_url = parse_database_url(f"sqlite:///{url}" if kind == "sqlite" else url)
    await upgrade(database_url)
    db = await open_database(database_url, migrate=False)
    try:
        yield DatabaseBackend(db), prefix
    finally:
        await db.close()


class Workers:
    """The worker processes, started once for the module (Python's start-up is most of their cost)."""

    def __init__(self) -> None:
        self.processes = [
            subprocess.Popen(
                [sys.executable, str(WORKER)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
                bufsize=1,
            )
            for _ in range(PROCESSES)
        ]

    def _read(self, process: subprocess.Popen[str]) -> str:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"a rate-limit worker died (exit code {process.wait(timeout=30)})")
        return line.strip()

    def _write(self, process: subprocess.Popen[str], text: str) -> None:
        assert process.stdin is not None
        process.stdin.write(text + "\n")
        process.stdin.flush()

    def run(self, scenarios: list[dict[str, Any]]) -> list[dict[str, int]]:
        """One scenario per worker, released together; each worker's outcome."""
        for process, scenario in zip(self.processes, scenarios, strict=True):
            self._write(process, json.dumps(scenario))
        for process in self.processes:
            assert self._read(process) == "ready"
        for process in self.processes:
            self._write(process, "go")
        return [json.loads(self._read(process)) for process in self.processes]

    def close(self) -> None:
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.close()
        for process in self.processes:
            process.wait(timeout=30)


@pytest.fixture(scope="module")
def workers() -> Iterator[Workers]:
    started = Workers()
    try:
        yield started
    finally:
        started.close()


async def test_four_processes_allow_exactly_the_limit(
    place: tuple[str, str], parent_backend: tuple[Any, str], workers: Workers
) -> None:
    kind, url = place
    backend, prefix = parent_backend
    where = {"backend": kind, "url": url, "prefix": prefix}
    count_key, cost_key, real_key = (
        f"user:{secrets.token_hex(4)}:{name}" for name in ("requests", "tokens", "day")
    )
    rng = random.Random(18)
    costs = [[rng.randint(1, 9) for _ in range(REQUESTS)] for _ in range(PROCESSES)]
    counted = workers.run(
        [{**where, "key": count_key, "limit": "100/minute", "costs": [1] * REQUESTS, "now": FROZEN}]
        * PROCESSES
    )
    weighted = workers.run(
        [{**where, "key": cost_key, "limit": "1000/minute", "costs": c, "now": FROZEN} for c in costs]
    )
    real = workers.run(
        [{**where, "key": real_key, "limit": "100/day", "costs": [1] * REQUESTS, "now": "server"}] * PROCESSES
    )
    assert sum(r["allowed"] for r in counted) == 100
    assert sum(r["allowed"] for r in real) == 100
    # cost-weighted: what was allowed is exactly what the key has consumed, never above the limit
    allowed_cost = sum(r["cost"] for r in weighted)
    left = await RateLimiter(backend, ManualClock(FROZEN)).hit(cost_key, parse_rate("1000/minute"), 0)
    assert allowed_cost <= 1000 and allowed_cost + left.remaining == 1000
    assert allowed_cost > 900  # the requests were many more than the limit: it was filled up
