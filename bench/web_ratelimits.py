"""What a rate-limited route costs in process: an allowed request and a 429, beside the same route unlimited.

    python bench/web_ratelimits.py [--seconds 2] [--rounds 3] [--backend memory|database|all]

One FastAPI application behind ``install(app, fundaments=...)`` (a SQLite file in a temporary
directory), called directly as ASGI in this process (no server, no network), anonymous GETs from
one client IP:

- ``/plain``: no limit (the baseline: the middleware and FastAPI only);
- ``/noop-dep``: a dependency that does nothing (what FastAPI's dependency machinery alone costs);
- ``/allowed``: ``Depends(rate_limited("1000000000/second"))`` — every request allowed, counted,
  and answered with the RateLimit headers;
- ``/refused``: ``Depends(rate_limited("1/day"))`` spent by a first request — every request
  refused: RateLimited, the middleware's 429 JSON with Retry-After and the headers.

Requests per CPU second of this process (medians of ``--rounds``), and the cost per request over
``/plain``. The database backend on SQLite refuses with a plain read (a spent key is never
written); an allowed request is one upsert.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))


async def rate(app: Any, path: str, expected: int, seconds: float) -> float:
    """Requests per CPU second of ``app`` for GET ``path``; every answer must be ``expected``."""
    headers = [
        (b"host", b"localhost:8000"),
        (b"user-agent", b"bench/web_ratelimits"),
        (b"accept", b"application/json"),
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("localhost", 8000),
    }  # fmt: skip
    statuses: set[int] = set()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.add(message["status"])

    count, began = 0, time.process_time()
    deadline = began + seconds
    while count == 0 or time.process_time() < deadline:
        batch = 100 if seconds else 1
        for _ in range(batch):
            await app(dict(scope), receive, send)
        count += batch
    elapsed = time.process_time() - began
    assert statuses == {expected}, statuses
    return count / elapsed


async def run(backend: str, seconds: float, rounds: int) -> None:
    from fastapi import Depends, FastAPI

    from fundaments import initialize_fundaments
    from fundaments.config import generate_keys, load_settings
    from fundaments.web import install, rate_limited

    with tempfile.TemporaryDirectory() as workdir:
        keys = generate_keys()
        settings = load_settings(
            env_file=Path(workdir) / "absent.env",
            database_url=f"sqlite:///{Path(workdir) / 'bench.db'}",
            master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
            persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
            log_level="ERROR",
            rate_limit_backend=backend,
        )
        started = await initialize_fundaments(settings, configure_logs=False)
        try:
            import logging

            logging.getLogger("fundaments.web.middleware").setLevel(logging.ERROR)  # one 429 line each
            app = FastAPI()

            @app.get("/plain")
            async def plain() -> dict[str, bool]:
                return {"ok": True}

            async def noop() -> None:
                return None

            @app.get("/noop-dep", dependencies=[Depends(noop)])
            async def noop_dep() -> dict[str, bool]:
                return {"ok": True}

            @app.get("/allowed", dependencies=[Depends(rate_limited("1000000000/second"))])
            async def allowed() -> dict[str, bool]:
                return {"ok": True}

            @app.get("/refused", dependencies=[Depends(rate_limited("1/day"))])
            async def refused() -> dict[str, bool]:
                return {"ok": True}

            install(app, fundaments=started)
            await rate(app, "/refused", 200, 0.0)  # spends the one request of the day
            found: dict[str, list[float]] = {"/plain": [], "/noop-dep": [], "/allowed": [], "/refused": []}
            expected = {"/plain": 200, "/noop-dep": 200, "/allowed": 200, "/refused": 429}
            for _ in range(rounds):
                for path in found:
                    found[path].append(await rate(app, path, expected[path], seconds))
            base = statistics.median(found["/plain"])
            for path, rates in found.items():
                median = statistics.median(rates)
                print(
                    f"{backend:>8} {path:>10}: {median:8.0f}/s  {1e6 / median:6.1f} us/request  "
                    f"+{1e6 / median - 1e6 / base:5.1f} us over /plain"
                )
        finally:
            await started.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--backend", choices=["memory", "database", "all"], default="all")
    args = parser.parse_args()
    for backend in ["memory", "database"] if args.backend == "all" else [args.backend]:
        asyncio.run(run(backend, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
