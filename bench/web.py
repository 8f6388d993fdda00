"""What SecurityMiddleware costs: an authenticated GET through it vs the same route without it.

    python bench/web.py [--seconds 10] [--connections 32]

Each variant is served by one uvicorn worker in its own process (SQLite, real settings), the load
comes from another process on loopback: wrk (Debian's package) when it is installed, else an
async httpx client. Both requests carry the same session cookie; only the middleware reads it.
Bar (web issue): the middleware costs at most 25 % of the throughput on SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve()
USER_AGENT = "bench/web"
PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# --- the server process ---------------------------------------------------------------------------
async def serve(variant: str, port: int, workdir: Path) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fundaments import initialize_fundaments
    from fundaments.config import generate_keys, load_settings
    from fundaments.web import SecurityMiddleware, authenticated_user

    keys = generate_keys()
    settings = load_settings(
        env_file=workdir / "absent.env",
        database_url=f"sqlite:///{workdir / 'bench.db'}",
        master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
        persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
        log_level="WARNING",
    )
    fundaments = await initialize_fundaments(settings, configure_logs=False)
    security = fundaments.security
    if await security.get_user_by_username("bench") is None:
        await security.register_user("bench", PASSWORD)
    result = await security.user_login(
        "bench", PASSWORD, {"ip_address": "127.0.0.1", "user_agent": USER_AGENT}
    )
    assert result.session is not None and result.session.token is not None
    (workdir / f"token-{variant}").write_text(result.session.token)

    async def with_middleware(request: Request) -> JSONResponse:
        user = authenticated_user(request)
        return JSONResponse({"user": user.username if user else None})

    async def without(_request: Request) -> JSONResponse:
        return JSONResponse({"user": "bench"})

    if variant == "middleware":
        app = Starlette(
            routes=[Route("/me", with_middleware)],
            middleware=[Middleware(SecurityMiddleware, security=security)],
        )
    else:
        app = Starlette(routes=[Route("/me", without)])
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="off"
    )
    try:
        await uvicorn.Server(config).serve()
    finally:
        await fundaments.close()


# --- the load process -----------------------------------------------------------------------------
def run_wrk(url: str, cookie: str, seconds: int, connections: int) -> tuple[float, float]:
    out = subprocess.run(
        ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
         "-H", f"Cookie: session={cookie}", "-H", f"User-Agent: {USER_AGENT}", url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    value, unit = re.search(r"99%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
    p99_ms = float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]
    return rps, p99_ms


async def run_httpx(url: str, cookie: str, seconds: int, connections: int) -> tuple[float, float]:
    import httpx

    latencies: list[float] = []
    headers = {"cookie": f"session={cookie}", "user-agent": USER_AGENT}
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections)
    async with httpx.AsyncClient(limits=limits, headers=headers) as client:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                response = await client.get(url)
                assert response.status_code == 200
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(connections)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return len(latencies) / elapsed, latencies[int(len(latencies) * 0.99)] * 1000


def measure(variant: str, workdir: Path, seconds: int, connections: int) -> tuple[float, float]:
    import urllib.request

    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(HERE), "--serve", variant, "--port", str(port), "--dir", str(workdir)],
        env={**os.environ, "PYTHONPATH": str(HERE.parents[1] / "src")},
    )
    url = f"http://127.0.0.1:{port}/me"
    try:
        token_file = workdir / f"token-{variant}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if token_file.exists():
                    cookie = token_file.read_text()
                    request = urllib.request.Request(
                        url, headers={"Cookie": f"session={cookie}", "User-Agent": USER_AGENT}
                    )
                    with urllib.request.urlopen(request, timeout=1) as response:
                        body = json.loads(response.read())
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            raise SystemExit(f"the {variant} server did not start")
        assert body == {"user": "bench"}, body  # the middleware really authenticated the request
        if shutil.which("wrk"):
            run_wrk(url, cookie, 2, connections)  # warm-up
            return run_wrk(url, cookie, seconds, connections)
        asyncio.run(run_httpx(url, cookie, 2, connections))
        return asyncio.run(run_httpx(url, cookie, seconds, connections))
    finally:
        server.terminate()
        server.wait(timeout=20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; medians are reported")
    parser.add_argument("--serve", choices=["middleware", "plain"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.dir))
        return
    tool = "wrk" if shutil.which("wrk") else "httpx (install wrk for a lighter load generator)"
    print(f"load: {tool}, {args.connections} connections, {args.seconds} s per variant, one uvicorn worker")
    runs: dict[str, list[tuple[float, float]]] = {"plain": [], "middleware": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.rounds):  # alternating, so drift on a shared machine hits both alike
            for variant, found in runs.items():
                found.append(measure(variant, Path(tmp), args.seconds, args.connections))
    results = {v: (statistics.median(r for r, _ in found), statistics.median(p for _, p in found))
               for v, found in runs.items()}  # fmt: skip
    for variant, (rps, p99) in results.items():
        each = ", ".join(f"{r:.0f}" for r, _ in runs[variant])
        print(f"{variant:>10}: {rps:9.0f} requests/s   p99 {p99:6.2f} ms   (runs: {each})")
    cost = 1 - results["middleware"][0] / results["plain"][0]
    verdict = "within" if cost <= 0.25 else "OVER"
    print(f"middleware cost: {cost:.1%} of the throughput ({verdict} the 25 % bar)")


if __name__ == "__main__":
    main()
