"""What an API-key request costs through the web layer: a FastAPI route behind ``install(app)`` and
``Depends(require_scope("models:invoke"))``, authenticated by ``X-API-Key``, vs the bare route.

    python bench/web_api_keys.py [--seconds 10] [--rounds 3] [--connections 32] [--warmup 2]
    python bench/web_api_keys.py --quick               # one short round: does it run at all
    python bench/web_api_keys.py --in-process [--seconds 2]   # no server: the ASGI apps called directly

Four configurations, each on its own uvicorn server (one worker, a free loopback port, a SQLite
file in a temporary directory), measured with wrk from another process (bench/web.py's machinery:
interleaved rotating rounds, medians, the server process's CPU time per request from /proc):

- the bare FastAPI route (bench/web.py's ``fastapi-plain``);
- the route behind install() + require_scope, the key without a rate limit;
- the same with the key's own limit (``rate_limit="100000000/minute"``, never reached: the cost of
  a decision, not of a refusal) and ``API_KEY_USER_RATE_LIMIT`` (the owner's, across keys) on the
  memory backend: one ``rate_limit_all`` over two limits per request;
- the same on the database backend (SQLite: reads, then the upserts in one transaction);
- the same on Redis (one EVALSHA per request) when FUNDAMENTS_TEST_REDIS_URL is set.

Before any load every configuration must answer ``{"user": "bench"}`` with the key (the middleware
really authenticated it) and 401 without; any non-2xx answer under load fails the run.
--in-process calls the same applications directly in this process (bench/web.py's ``_asgi_rate``:
requests per CPU second, so other processes' load on a shared machine does not count as cost).

Bar (issue 18): an authenticated API-key request through the middleware and the limit costs at most
30 % of the bare route's throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
sys.path.insert(0, str(HERE.parent))
import web as webbench  # noqa: E402 - bench/web.py: servers, wrk, CPU time

PASSWORD = webbench.PASSWORD
LIMIT = "100000000/minute"  # never reached in a run: each request pays a decision, none a refusal
REDIS_ENV = "FUNDAMENTS_TEST_REDIS_URL"  # set: a Redis-backend configuration too
SERVERS = ("fastapi-plain", "apikey", "apikey-memory", "apikey-database", "apikey-redis")
LABELS = {
    "fastapi-plain": "bare route",
    "apikey": "install + require_scope, X-API-Key, no limit",
    "apikey-memory": "... + per-key and per-user limit, memory backend",
    "apikey-database": "... + per-key and per-user limit, database backend (SQLite)",
    "apikey-redis": "... + per-key and per-user limit, Redis backend (one EVALSHA)",
}


async def serve(variant: str, port: int, workdir: Path, http_impl: str) -> None:
    import uvicorn

    workdir.mkdir(parents=True, exist_ok=True)
    started = None
    if variant == "fastapi-plain":
        app = webbench.fastapi_app(variant, workdir)
        (workdir / "token").write_text("fk_" + "x" * 38)  # the same header weight
    else:
        app, started = await api_key_app(variant, workdir)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on",
        http=http_impl,
    )  # fmt: skip
    try:
        await uvicorn.Server(config).serve()
    finally:
        if started is not None:
            await started.close()


async def api_key_app(variant: str, workdir: Path) -> tuple[Any, Any]:
    from fastapi import Depends, FastAPI

    from fundaments import initialize_fundaments
    from fundaments.security import User
    from fundaments.web import install, require_scope

    settings = webbench.bench_settings(workdir)
    if variant != "apikey":
        backend = variant.removeprefix("apikey-")
        update: dict[str, Any] = {"rate_limit_backend": backend, "api_key_user_rate_limit": LIMIT}
        if backend == "redis":
            from pydantic import SecretStr

            update["redis_url"] = SecretStr(os.environ[REDIS_ENV])
        settings = settings.model_copy(update=update)
    started = await initialize_fundaments(settings, configure_logs=False)
    security = started.security
    await security.create_role("invoker", ["models:invoke"])
    user = await security.register_user("bench", PASSWORD, roles=["invoker"])
    created = await security.create_api_key(
        user.id, name="bench", scopes=["models:invoke"], rate_limit=None if variant == "apikey" else LIMIT
    )
    (workdir / "token").write_text(created.token)

    app = FastAPI()

    @app.get("/me")
    async def me(user: User = Depends(require_scope("models:invoke"))) -> dict[str, str]:  # noqa: B008
        return {"user": user.username}

    install(app, fundaments=started)
    return app, started


@dataclass
class Server:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    token: str = ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/me"

    @property
    def headers(self) -> dict[str, str]:
        return {"User-Agent": webbench.USER_AGENT, "X-API-Key": self.token}


def start(name: str, workdir: Path, http_impl: str) -> Server:
    port = webbench.free_port()
    command = [sys.executable, str(HERE), "--serve", name, "--port", str(port), "--dir", str(workdir)]
    command += ["--http", http_impl]
    return Server(name, port, subprocess.Popen(command))


def ready(server: Server, workdir: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        if server.process.poll() is not None:
            raise SystemExit(f"the {server.name} server exited with {server.process.returncode}")
        if time.monotonic() > deadline:
            raise SystemExit(f"the {server.name} server did not start")
        token = workdir / server.name / "token"
        if token.exists():
            server.token = token.read_text()
            try:
                status, body, _ = webbench.http(server.url, server.headers)
                if status == 200:
                    assert body == {"user": "bench"}, body
                    break
            except OSError:
                pass
        time.sleep(0.2)
    if server.name != "fastapi-plain":  # it is the key that authenticates
        status, _, _ = webbench.http(server.url, {"User-Agent": webbench.USER_AGENT})
        assert status == 401, status


def measure(server: Server, args: argparse.Namespace) -> tuple[float, float, float, float]:
    if args.warmup:
        webbench.run_wrk(server.url, server.headers, args.warmup, args.connections, None)
    before = webbench.cpu_seconds(server.process.pid)
    rps, p50, p99 = webbench.run_wrk(server.url, server.headers, args.seconds, args.connections, None)
    cpu = webbench.cpu_seconds(server.process.pid) - before
    return rps, p50, p99, cpu / (rps * args.seconds) * 1e6


async def in_process(seconds: float, rounds: int) -> None:
    """The configurations as ASGI apps in this process, each on its own started fundaments."""
    names = [n for n in SERVERS if n != "apikey-redis" or os.environ.get(REDIS_ENV)]
    with tempfile.TemporaryDirectory() as tmp:
        apps: dict[str, tuple[Any, Any, str]] = {}
        try:
            for name in names:
                workdir = Path(tmp) / name
                workdir.mkdir()
                if name == "fastapi-plain":
                    apps[name] = (webbench.fastapi_app(name, workdir), None, "fk_" + "x" * 38)
                else:
                    app, started = await api_key_app(name, workdir)
                    apps[name] = (app, started, (workdir / "token").read_text())
            found: dict[str, list[float]] = {name: [] for name in names}
            for round_ in range(rounds):
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    app, _, token = apps[name]
                    extra = [(b"x-api-key", token.encode())]
                    found[name].append(await webbench._asgi_rate(app, "GET", "/me", extra, b"", seconds))
        finally:
            for _, started, _ in apps.values():
                if started is not None:
                    await started.close()
    base = statistics.median(found["fastapi-plain"])
    print(f"in process, {rounds} rounds of {seconds} s per configuration (requests per CPU second)")
    for name in names:
        rate = statistics.median(found[name])
        print(
            f"{LABELS[name]:>62}: {rate:7.0f}/s  ratio {rate / base:.3f}  "
            f"cost {1 - rate / base:6.1%}  +{1e6 / rate - 1e6 / base:5.1f} us"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--http", choices=["auto", "h11", "httptools"], default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--serve", choices=SERVERS)
    parser.add_argument("--port", type=int)
    parser.add_argument("--dir", type=Path)
    args = parser.parse_args()
    if args.http == "auto":
        args.http = "httptools" if importlib.util.find_spec("httptools") else "h11"
    if args.serve:
        asyncio.run(serve(args.serve, args.port, args.dir, args.http))
        return
    if args.in_process:
        asyncio.run(in_process(args.seconds, args.rounds))
        return
    if args.quick:
        args.seconds, args.warmup, args.rounds, args.connections = 1, 0, 1, 8
    if not shutil.which("wrk"):
        raise SystemExit("this bench needs wrk (apt-get install wrk)")
    print(
        f"uvicorn {importlib.metadata.version('uvicorn')} ({args.http}), wrk -t2, {args.connections} "
        f"connections, {args.seconds} s per run after a {args.warmup} s warm-up, {args.rounds} "
        "interleaved rounds (medians), one uvicorn worker per server"
    )
    names = SERVERS if os.environ.get(REDIS_ENV) else SERVERS[:-1]
    runs: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        servers = {name: start(name, workdir / name, args.http) for name in names}
        try:
            for server in servers.values():
                ready(server, workdir)
            for round_ in range(args.rounds):
                order = names[round_ % len(names) :] + names[: round_ % len(names)]
                for name in order:
                    runs[name].append(measure(servers[name], args))
        finally:
            for server in servers.values():
                server.process.terminate()
            for server in servers.values():
                server.process.wait(timeout=20)
    medians = {n: tuple(statistics.median(r[i] for r in runs[n]) for i in range(4)) for n in names}
    base, base_cpu = medians["fastapi-plain"][0], medians["fastapi-plain"][3]
    print()
    print(
        "| configuration | requests/s (runs) | p50 ms | p99 ms | ratio | cost | server CPU/request | added |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        rps, p50, p99, cpu = medians[name]
        each = ", ".join(f"{r[0]:,.0f}" for r in runs[name])
        ratio = rps / base
        cost = "baseline" if name == "fastapi-plain" else f"{1 - ratio:.1%}"
        added = "" if name == "fastapi-plain" else f"+{cpu - base_cpu:.0f} us"
        print(
            f"| {LABELS[name]} | **{rps:,.0f}** ({each}) | {p50:.2f} | {p99:.2f} | {ratio:.3f} | {cost} "
            f"| {cpu:.0f} us | {added} |"
        )
    print()
    for name in names[1:]:
        cost = 1 - medians[name][0] / base
        verdict = "within" if cost <= 0.30 else "OVER"
        print(f"{LABELS[name]}: costs {cost:.1%} of the throughput ({verdict} the 30 % bar)")


if __name__ == "__main__":
    main()
