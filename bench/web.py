"""What SecurityMiddleware costs: an authenticated GET through it vs the same route without it.

    python bench/web.py [--seconds 10] [--connections 32]
    python bench/web.py --in-process [--seconds 2]     # no server, no network: the middleware alone

--in-process calls the ASGI applications directly, in this process (a bare Starlette app, then the
same app behind the middleware), for an authenticated GET and for a bearer POST with a 1 KB body (the
path of the body limit's ``receive`` wrapper). Run it once with PYTHONPATH pointing at another
checkout (e.g. the commit before a change) to compare versions on the same machine.

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
from typing import Any

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


# --- in process: the middleware alone ---------------------------------------------------------
async def in_process(seconds: float, rounds: int) -> None:
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    import fundaments
    from fundaments import initialize_fundaments
    from fundaments.config import generate_keys, load_settings
    from fundaments.web import SecurityMiddleware
    from fundaments.web import middleware as middleware_module

    async def me(request: Request) -> JSONResponse:
        return JSONResponse({"ok": True})

    async def echo(request: Request) -> JSONResponse:
        return JSONResponse({"bytes": len(await request.body())})

    routes = [Route("/me", me), Route("/echo", echo, methods=["POST"])]
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keys()
        settings = load_settings(
            env_file=Path(tmp) / "absent.env",
            database_url=f"sqlite:///{Path(tmp) / 'bench.db'}",
            master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
            persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
            log_level="WARNING",
        )
        started = await initialize_fundaments(settings, configure_logs=False)
        try:
            await started.security.register_user("bench", PASSWORD)
            login = await started.security.user_login(
                "bench", PASSWORD, {"ip_address": "127.0.0.1", "user_agent": USER_AGENT}
            )
            assert login.session is not None and login.session.token is not None
            token = login.session.token.encode()
            apps = {
                "bare": Starlette(routes=routes),
                "middleware": Starlette(
                    routes=routes, middleware=[Middleware(SecurityMiddleware, security=started.security)]
                ),
            }
            body = b"x" * 1024
            requests = {
                "GET /me (cookie)": ("GET", "/me", [(b"cookie", b"session=" + token)], b""),
                "POST /echo 1 KB (bearer)": (
                    "POST", "/echo",
                    [(b"authorization", b"Bearer " + token), (b"content-length", b"1024"),
                     (b"content-type", b"application/octet-stream")],
                    body,
                ),
            }  # fmt: skip
            source = Path(fundaments.__file__).parent
            print(f"in process, fundaments from {source}, {rounds} rounds of {seconds} s per variant")
            wrapper = getattr(middleware_module, "_BoundedReceive", None)
            for label, (method, path, extra, payload) in requests.items():
                found: dict[str, list[float]] = {"bare": [], "middleware": [], "no body wrapper": []}
                variants = [*apps.items(), ("no body wrapper", apps["middleware"])]
                for round_ in range(rounds):  # alternating and rotating: drift and order hit all alike
                    for variant, app in variants[round_ % 3 :] + variants[: round_ % 3]:
                        if variant == "no body wrapper":
                            if wrapper is None:  # a version without the body limit's wrapper
                                continue
                            middleware_module._BoundedReceive = _unbounded  # type: ignore[attr-defined]
                        try:
                            rate = await _asgi_rate(app, method, path, extra, payload, seconds)
                            found[variant].append(rate)
                        finally:
                            if wrapper is not None:
                                middleware_module._BoundedReceive = wrapper  # type: ignore[attr-defined]
                bare, through = statistics.median(found["bare"]), statistics.median(found["middleware"])
                line = (
                    f"{label:>26}: bare {bare:7.0f}/s  middleware {through:7.0f}/s  "
                    f"ratio {through / bare:.3f}  "
                    f"cost {1e6 / through - 1e6 / bare:5.1f} us"
                )
                if found["no body wrapper"]:
                    unwrapped = statistics.median(found["no body wrapper"])
                    line += (
                        f"  | without the body wrapper {unwrapped:7.0f}/s: the wrapper costs "
                        f"{1e6 / through - 1e6 / unwrapped:4.1f} us ({1 - through / unwrapped:.1%})"
                    )
                print(line)
        finally:
            await started.close()


def _unbounded(receive: Any, limit: int) -> Any:
    """Stands in for the middleware's body-limit wrapper: the plain ``receive`` (never trips)."""
    receive.tripped = False
    return receive


async def _asgi_rate(
    app: Any, method: str, path: str, extra: list[tuple[bytes, bytes]], body: bytes, seconds: float
) -> float:
    """Requests per CPU second of ``app`` called directly with one ASGI request, for ``seconds``."""
    headers = [(b"host", b"localhost:8000"), (b"user-agent", USER_AGENT.encode()), *extra]
    scope_base = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "headers": headers, "client": ("127.0.0.1", 50000),
        "server": ("localhost", 8000),
    }  # fmt: skip
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    # CPU time of this process, not wall-clock time: on a shared machine other processes' load
    # would otherwise show up as middleware cost.
    count = 0
    deadline = time.process_time() + seconds
    began = time.process_time()
    while time.process_time() < deadline:
        for _ in range(200):
            await app(dict(scope_base), receive, send)
        count += 200
    elapsed = time.process_time() - began
    assert set(statuses) == {200}, set(statuses)  # the middleware really let each request through
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs; medians are reported")
    parser.add_argument("--in-process", action="store_true", help="the middleware alone, no server")
    parser.add_argument("--serve", choices=["middleware", "plain"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.dir))
        return
    if args.in_process:
        asyncio.run(in_process(float(args.seconds), args.rounds))
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
