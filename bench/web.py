"""What SecurityMiddleware and install(app) cost: an authenticated GET vs the same route without them.

    python bench/web.py [--seconds 10] [--rounds 3] [--connections 32] [--framework all|starlette|fastapi]
                        [--pin split|none] [--http auto|h11|httptools]
    python bench/web.py --quick                        # one short round: does it run at all
    python bench/web.py --in-process [--seconds 2]     # no server, no network: the middleware alone

Over HTTP (the default), six configurations, each on its own uvicorn server (one worker, a free
loopback port, a SQLite file in a temporary directory, cheap Argon2 for the set-up logins only):

- Starlette: the bare route; the route behind ``SecurityMiddleware`` with the session cookie; the
  same with ``Authorization: Bearer`` (the server logs in in-process and hands the token over);
- FastAPI: the bare route; the route with ``install(app)`` and ``Depends(current_user)``, through
  a bearer token (a script's JSON ``POST /auth/login``) and through the session cookie (a
  browser-like login: same Origin, the pre-session CSRF cookie and token of ``GET /auth/csrf``);
  ``auth_router(registration=True)`` is mounted after the route; the bench registers over HTTP.

Before any load, every configuration must answer ``{"user": "bench"}`` (the middleware really
authenticated it), and a run with any non-2xx answer or socket error fails. The load is wrk
(Debian's package) from another process on loopback, else an async httpx client. The
configurations are run interleaved in rotating order, ``--rounds`` times, and the table gives the
medians: requests/s, p50, p99, the ratio to the framework's bare route, and the server process's
CPU time (user + system, /proc) per request, which depends less on how the load and the server
share the two cores. ``--pin split`` puts every server on CPU 0 and wrk on CPU 1 (taskset); on
the 2-core machine it gave noisier numbers than leaving the placement to the scheduler (the default).
Bar (issues 14 and 15): at most 25 % of the throughput.

--in-process calls the ASGI applications directly, in this process (a bare Starlette app, then the
same app behind the middleware; the FastAPI route bare and installed), for an authenticated GET and
for a bearer POST with a 1 KB body (the path of the body limit's ``receive`` wrapper). Run it once
with PYTHONPATH pointing at another checkout (e.g. the commit before a change) to compare versions
on the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
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
SERVERS = ("plain", "plain-headers", "middleware", "fastapi-plain", "fastapi-install")


def bench_settings(workdir: Path) -> Any:
    """Real settings on a SQLite file in ``workdir``; Argon2 cheap, for the set-up logins only
    (the measured requests hash nothing)."""
    from fundaments.config import generate_keys, load_settings

    keys = generate_keys()
    return load_settings(
        env_file=workdir / "absent.env",
        database_url=f"sqlite:///{workdir / 'bench.db'}",
        master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
        persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
        log_level="WARNING",
        argon2_memory_cost=1024,
        argon2_time_cost=1,
    )


async def serve(variant: str, port: int, workdir: Path, http_impl: str) -> None:
    import uvicorn

    workdir.mkdir(parents=True, exist_ok=True)
    if variant.startswith("fastapi"):
        app: Any = fastapi_app(variant, workdir)
        lifespan = "on"  # install(app) starts fundaments in the lifespan
        fundaments = None
    else:
        app, fundaments = await starlette_app(variant, workdir)
        lifespan = "off"
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan=lifespan,
        http=http_impl,
    )  # fmt: skip
    try:
        await uvicorn.Server(config).serve()
    finally:
        if fundaments is not None:
            await fundaments.close()


async def starlette_app(variant: str, workdir: Path) -> tuple[Any, Any]:
    """The Starlette route, bare or behind SecurityMiddleware; the session token in a file."""
    from starlette.applications import Starlette
    from starlette.middleware import Middleware
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from fundaments import initialize_fundaments
    from fundaments.web import DEFAULT_CSP, DEFAULT_PERMISSIONS_POLICY, SecurityMiddleware, authenticated_user
    from fundaments.web.middleware import security_headers

    fundaments = await initialize_fundaments(bench_settings(workdir), configure_logs=False)
    security = fundaments.security
    if await security.get_user_by_username("bench") is None:
        await security.register_user("bench", PASSWORD)
    result = await security.user_login(
        "bench", PASSWORD, {"ip_address": "127.0.0.1", "user_agent": USER_AGENT}
    )
    assert result.session is not None and result.session.token is not None
    (workdir / "token").write_text(result.session.token)

    async def with_middleware(request: Request) -> JSONResponse:
        user = authenticated_user(request)
        return JSONResponse({"user": user.username if user else None})

    async def without(_request: Request) -> JSONResponse:
        return JSONResponse({"user": "bench"})

    # The bare route answering with the headers the middleware adds: what they cost on the wire.
    headers = dict(security_headers(DEFAULT_CSP, DEFAULT_PERMISSIONS_POLICY), **{"cache-control": "no-store"})

    async def with_headers(_request: Request) -> JSONResponse:
        return JSONResponse({"user": "bench"}, headers=headers)

    if variant == "middleware":
        app = Starlette(
            routes=[Route("/me", with_middleware)],
            middleware=[Middleware(SecurityMiddleware, security=security)],
        )
    elif variant == "plain-headers":
        app = Starlette(routes=[Route("/me", with_headers)])
    else:
        app = Starlette(routes=[Route("/me", without)])
    return app, fundaments


def fastapi_app(variant: str, workdir: Path) -> Any:
    """The FastAPI route, bare or with ``install(app)`` and ``Depends(current_user)``.

    The installed app also mounts ``auth_router(registration=True)`` (after ``/me``, so routing
    finds ``/me`` first as in the bare app): the load process registers and logs in over HTTP.
    """
    from fastapi import Depends, FastAPI

    from fundaments.security import User
    from fundaments.web import auth_router, current_user, install

    app = FastAPI()
    if variant == "fastapi-install":

        @app.get("/me")
        async def me(user: User = Depends(current_user)) -> dict[str, str]:  # noqa: B008
            return {"user": user.username}

        install(app, bench_settings(workdir))
        app.include_router(auth_router(registration=True), prefix="/auth")
    else:

        @app.get("/me")
        async def bare() -> dict[str, str]:
            return {"user": "bench"}

    return app


# --- the load process -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    """One measured configuration: a server and the credential the load sends."""

    framework: str
    label: str
    server: str
    auth: str  # "cookie" or "bearer": which header carries the session token
    baseline: bool = False
    judged: bool = True  # held to the 25 % bar (not the headers-only reference)


CONFIGS = (
    Config("Starlette", "bare route", "plain", "cookie", baseline=True),
    Config(
        "Starlette", "bare route + the middleware's response headers", "plain-headers", "cookie", judged=False
    ),
    Config("Starlette", "SecurityMiddleware, cookie", "middleware", "cookie"),
    Config("Starlette", "SecurityMiddleware, bearer", "middleware", "bearer"),
    Config("FastAPI", "bare route", "fastapi-plain", "bearer", baseline=True),
    Config("FastAPI", "install + current_user, bearer", "fastapi-install", "bearer"),
    Config("FastAPI", "install + current_user, cookie", "fastapi-install", "cookie"),
)


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    token: str = ""
    cookie: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/me"

    def headers(self, auth: str) -> dict[str, str]:
        credential = (
            {"Authorization": f"Bearer {self.token}"}
            if auth == "bearer"
            else {"Cookie": f"session={self.cookie}"}
        )
        return {"User-Agent": USER_AGENT, **credential}


def http(url: str, headers: dict[str, str], body: Any = None) -> tuple[int, Any, dict[str, str]]:
    """One request with urllib: status, JSON body, headers (Set-Cookie lines joined by newlines)."""
    import urllib.error
    import urllib.request

    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            status, raw, found = response.status, response.read(), response.headers
    except urllib.error.HTTPError as exc:
        status, raw, found = exc.code, exc.read(), exc.headers
    answer = {k.lower(): v for k, v in found.items()}
    answer["set-cookie"] = "\n".join(found.get_all("set-cookie") or ())
    return status, json.loads(raw) if raw.startswith((b"{", b"[")) else raw, answer


def start(name: str, workdir: Path, pin: str | None, http_impl: str) -> Server:
    port = free_port()
    command = [sys.executable, str(HERE), "--serve", name, "--port", str(port), "--dir", str(workdir)]
    command += ["--http", http_impl]
    if pin is not None:
        command = ["taskset", "-c", pin, *command]
    path = [str(HERE.parents[1] / "src"), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return Server(name, port, subprocess.Popen(command, env=env))


def ready(server: Server, workdir: Path) -> None:
    """Wait for ``server``, get its session token (a login), check the route really authenticates."""
    deadline = time.monotonic() + 60
    base = f"http://127.0.0.1:{server.port}"
    while True:
        if server.process.poll() is not None:
            raise SystemExit(f"the {server.name} server exited with {server.process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the {server.name} server did not start")
        try:
            if server.name == "fastapi-install":
                status, csrf, headers = http(f"{base}/auth/csrf", {"User-Agent": USER_AGENT})
                if status == 200:  # started (503 before): register, then log in
                    agent = {"User-Agent": USER_AGENT}
                    credentials = {"username": "bench", "password": PASSWORD}
                    status, body, _ = http(f"{base}/auth/register", agent, credentials)
                    assert status in (201, 409), (status, body)
                    # A script's login (no cookie, no Origin): the bearer token only.
                    status, body, _ = http(f"{base}/auth/login", agent, credentials)
                    assert status == 200, (status, body)
                    server.token = body["token"]
                    # A browser's login: same Origin, the pre-session CSRF cookie and token of
                    # GET /auth/csrf; the session comes back as a cookie.
                    presession = re.search(r"(?:^|\n)csrf=([^;]+)", headers["set-cookie"])
                    assert presession is not None, headers["set-cookie"]
                    browser = {
                        **agent, "Origin": base, "Cookie": f"csrf={presession.group(1)}",
                        "X-CSRF-Token": csrf["csrf_token"],
                    }  # fmt: skip
                    status, body, headers = http(f"{base}/auth/login", browser, credentials)
                    assert status == 200, (status, body)
                    found = re.search(r"(?:^|\n)session=([^;]+)", headers["set-cookie"])
                    assert found is not None, headers["set-cookie"]
                    server.cookie = found.group(1)
                    break
            elif server.name == "fastapi-plain":  # no fundaments: the headers only weigh the same
                server.token = server.cookie = "x" * 43
                status, _, _ = http(server.url, server.headers("cookie"))
                if status == 200:
                    break
            elif (workdir / server.name / "token").exists():
                server.token = server.cookie = (workdir / server.name / "token").read_text()
                status, _, _ = http(server.url, server.headers("cookie"))
                if status == 200:
                    break
        except OSError:
            pass
        time.sleep(0.2)
    for auth in ("cookie", "bearer"):  # the middleware really authenticated the request
        status, body, _ = http(server.url, server.headers(auth))
        assert (status, body) == (200, {"user": "bench"}), (server.name, auth, status, body)


def run_wrk(
    url: str, headers: dict[str, str], seconds: float, connections: int, pin: str | None
) -> tuple[float, float, float]:
    """requests/s, p50 and p99 in ms; fails on any non-2xx answer or socket error."""
    command = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--latency"]
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    if pin is not None:
        command = ["taskset", "-c", pin, *command]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    out = done.stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"wrk saw failed requests:\n{out}")

    def percentile(name: str) -> float:
        value, unit = re.search(rf"{name}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, percentile("50"), percentile("99")


async def run_httpx(
    url: str, headers: dict[str, str], seconds: float, connections: int
) -> tuple[float, float, float]:
    import httpx

    latencies: list[float] = []
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
    return (
        len(latencies) / elapsed,
        latencies[len(latencies) // 2] * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


def measure(
    server: Server, auth: str, seconds: int, connections: int, pin: str | None, warmup: int
) -> tuple[float, float, float, float]:
    """requests/s, p50 ms, p99 ms, and the server's CPU time (user + system) per request in us:
    the last one does not depend on how the two cores are shared between server and load."""
    headers = server.headers(auth)
    if shutil.which("wrk"):
        if warmup:
            run_wrk(server.url, headers, warmup, connections, pin)
        before = cpu_seconds(server.process.pid)
        rps, p50, p99 = run_wrk(server.url, headers, seconds, connections, pin)
    else:
        if warmup:
            asyncio.run(run_httpx(server.url, headers, warmup, connections))
        before = cpu_seconds(server.process.pid)
        rps, p50, p99 = asyncio.run(run_httpx(server.url, headers, seconds, connections))
    cpu = cpu_seconds(server.process.pid) - before
    return rps, p50, p99, cpu / (rps * seconds) * 1e6


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc; taskset exec()s, so same pid)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def over_http(args: argparse.Namespace) -> None:
    wanted = [c for c in CONFIGS if args.framework in ("all", c.framework.lower())]
    names = sorted({c.server for c in wanted}, key=SERVERS.index)
    server_pin, load_pin = (None, None) if args.pin == "none" else ("0", "1")
    tool = "wrk -t2" if shutil.which("wrk") else "httpx (install wrk for a lighter load generator)"
    pinning = "unpinned" if server_pin is None else "server on CPU 0, load on CPU 1 (taskset)"
    if args.http == "auto":
        args.http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    print(
        f"uvicorn {importlib.metadata.version('uvicorn')} ({args.http}), load: {tool}, "
        f"{args.connections} connections, {args.seconds} s per run after a "
        f"{args.warmup} s warm-up, {args.rounds} interleaved rounds (medians), one uvicorn worker "
        f"per server, {pinning}"
    )
    runs: dict[Config, list[tuple[float, float, float, float]]] = {c: [] for c in wanted}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        servers = {name: start(name, workdir / name, server_pin, args.http) for name in names}
        try:
            for server in servers.values():
                ready(server, workdir)
            for round_ in range(args.rounds):  # interleaved and rotating: drift hits all alike
                order = wanted[round_ % len(wanted) :] + wanted[: round_ % len(wanted)]
                for config in order:
                    server = servers[config.server]
                    found = measure(
                        server, config.auth, args.seconds, args.connections, load_pin, args.warmup
                    )
                    runs[config].append(found)
        finally:
            for server in servers.values():
                server.process.terminate()
            for server in servers.values():
                server.process.wait(timeout=20)
    print()
    print(
        "| framework | configuration | requests/s (runs) | p50 ms | p99 ms | ratio | cost "
        "| server CPU/request | CPU ratio |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    verdicts = []
    for framework in dict.fromkeys(c.framework for c in wanted):
        rows = [c for c in wanted if c.framework == framework]
        medians = {c: tuple(statistics.median(r[i] for r in runs[c]) for i in range(4)) for c in rows}
        base, base_cpu = next((medians[c][0], medians[c][3]) for c in rows if c.baseline)
        for config in rows:
            rps, p50, p99, cpu = medians[config]
            each = ", ".join(f"{r[0]:,.0f}" for r in runs[config])
            ratio = rps / base
            cost = "baseline" if config.baseline else f"{1 - ratio:.1%}"
            print(
                f"| {framework} | {config.label} | **{rps:,.0f}** ({each}) | {p50:.2f} | {p99:.2f} "
                f"| {ratio:.3f} | {cost} | {cpu:.0f} us | {base_cpu / cpu:.3f} |"
            )
            if config.judged and not config.baseline:
                verdicts.append((f"{framework}, {config.label}", 1 - ratio))
    print()
    for label, cost in verdicts:
        verdict = "within" if cost <= 0.25 else "OVER"
        print(f"{label}: costs {cost:.1%} of the throughput ({verdict} the 25 % bar)")


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
            await _in_process_fastapi(started, token, seconds, rounds)
        finally:
            await started.close()


async def _in_process_fastapi(started: Any, token: bytes, seconds: float, rounds: int) -> None:
    """The FastAPI route bare and with ``install(app, fundaments=...)`` + ``Depends(current_user)``."""
    from fastapi import Depends, FastAPI

    from fundaments.security import User
    from fundaments.web import current_user, install

    bare, installed = FastAPI(), FastAPI()

    @bare.get("/me")
    async def me_bare() -> dict[str, str]:
        return {"user": "bench"}

    @installed.get("/me")
    async def me(user: User = Depends(current_user)) -> dict[str, str]:  # noqa: B008
        return {"user": user.username}

    install(installed, fundaments=started)  # already started: no lifespan needed
    requests = {
        "FastAPI GET /me (bearer)": [(b"authorization", b"Bearer " + token)],
        "FastAPI GET /me (cookie)": [(b"cookie", b"session=" + token)],
    }
    for label, extra in requests.items():
        found: dict[str, list[float]] = {"bare": [], "installed": []}
        variants = [("bare", bare), ("installed", installed)]
        for round_ in range(rounds):
            for variant, app in variants[round_ % 2 :] + variants[: round_ % 2]:
                found[variant].append(await _asgi_rate(app, "GET", "/me", extra, b"", seconds))
        plain, through = statistics.median(found["bare"]), statistics.median(found["installed"])
        print(
            f"{label:>26}: bare {plain:7.0f}/s  installed {through:7.0f}/s  "
            f"ratio {through / plain:.3f}  cost {1e6 / through - 1e6 / plain:5.1f} us"
        )


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
    parser.add_argument("--warmup", type=int, default=2, help="seconds of load before each run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs; medians are reported")
    parser.add_argument("--framework", choices=["all", "starlette", "fastapi"], default="all")
    parser.add_argument(
        "--pin", choices=["split", "none"], default="none",
        help="split: the servers on CPU 0 and wrk on CPU 1 (taskset); none: the scheduler decides",
    )  # fmt: skip
    parser.add_argument(
        "--http", choices=["auto", "h11", "httptools"], default="auto",
        help="uvicorn's HTTP parser; auto: httptools when installed (uvicorn[standard]), else h11",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="one short round: does it run at all")
    parser.add_argument("--in-process", action="store_true", help="the middleware alone, no server")
    parser.add_argument("--serve", choices=SERVERS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.connections = 1, 0, 1, 8
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.dir, args.http))
        return
    if args.in_process:
        asyncio.run(in_process(args.seconds, args.rounds))
        return
    over_http(args)


if __name__ == "__main__":
    main()
