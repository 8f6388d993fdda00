"""Soak test: the example console under legitimate users and attackers for N minutes, on PostgreSQL.

    python bench/soak.py [--minutes 2] [--users 300] [--victims 20]

Creates a fresh database ``fundaments_soak_<random>`` through ``FUNDAMENTS_TEST_POSTGRES_URL``
(default postgresql://postgres@127.0.0.1:5432/test), starts ``python main.py`` in a temporary
directory on a free loopback port (fresh keys in its environment), reads the administrator's
one-time password from its stdout, registers the simulated accounts with a second
``initialize_fundaments`` in this process (both share PostgreSQL), and then drives the console
over HTTP with async httpx clients:

- legitimate users (127.0.0.1): log in (retrying a refused login with backoff: the hashing pool
  answers BUSY under load and the console shows the same generic failure for every reason),
  browse the dashboard, sessions and secrets pages, store a secret and reveal it, log out, and
  check that the old cookie is dead. Any other answer is an error: there must be none.
- guessers and a sprayer (127.0.0.10.., each group its own source address, so the per-IP
  throttle of the legitimate users' address is not touched): each guesser address tries random
  wrong passwords on 5 real accounts (and now and then an unknown name), locking them; the sprayer
  tries common passwords across every account until its address is throttled. A wrong password
  that logs in is a successful attack.
- cookie thieves: a victim logs in, its live session cookie (or bearer token) is replayed from
  another address and/or User-Agent; a logged-out cookie is replayed from the victim's own client.
  A 200 on an authenticated page is a successful attack. ``SESSION_BINDING=strict`` revokes the
  session for everyone on a mismatch, so the victim's next request must go to /login.

Every legitimate user logs in once before the attackers start, so each holds a device cookie:
the accounts the guessers lock stay usable from the owners' known devices (OWASP device cookies).
The main.py process's RSS is sampled (psutil) every few seconds. Real settings throughout (Argon2id
19 MiB / t=2, THROTTLE_IP_FAILURES=50, LOCKOUT_THRESHOLD=5); nothing is relaxed.
Exit status 0 when legitimate errors = 0, successful attacks = 0 and the RSS is flat.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import os
import random
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import httpx
import psutil

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = os.environ.get("FUNDAMENTS_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
CSRF_RE = re.compile(r'name="csrf_token" value="([^"]+)"')
LEGIT_UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
THIEF_UA = "curl/8.5.0"
REFUSAL_RE = re.compile(r"login refused \((\w+)\)")
LOGIN_RETRIES = 10


@dataclass
class Stats:
    requests: int = 0
    legit_requests: int = 0
    legit_errors: int = 0
    legit_error_samples: list[str] = field(default_factory=list)
    legit_logins: int = 0
    login_retries: int = 0
    loops: int = 0
    secrets_revealed: int = 0
    dead_cookie_checks: int = 0
    guesses: int = 0
    guesses_refused: int = 0
    successful_attacks: int = 0
    attack_samples: list[str] = field(default_factory=list)
    replays: int = 0
    replays_refused: int = 0
    victim_sessions_revoked: int = 0
    victim_sessions_survived: int = 0
    attack_transport_errors: int = 0
    rss: list[tuple[float, int]] = field(default_factory=list)

    def legit_error(self, what: str) -> None:
        self.legit_errors += 1
        if len(self.legit_error_samples) < 10:
            self.legit_error_samples.append(what)

    def attack_succeeded(self, what: str) -> None:
        self.successful_attacks += 1
        if len(self.attack_samples) < 10:
            self.attack_samples.append(what)


STATS = Stats()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def csrf_of(response: httpx.Response) -> str:
    match = CSRF_RE.search(response.text)
    if match is None:
        raise LookupError(f"no csrf_token on {response.request.url.path} ({response.status_code})")
    return match.group(1)


# --- a browser-like client ------------------------------------------------------------------------
class Browser:
    def __init__(self, base: str, *, local_address: str = "127.0.0.1", user_agent: str = LEGIT_UA) -> None:
        self.base = base
        self.client = httpx.AsyncClient(
            base_url=base,
            # uvicorn closes a connection idle for 5 s; drop it first, or a request may race the close
            transport=httpx.AsyncHTTPTransport(
                local_address=local_address, limits=httpx.Limits(keepalive_expiry=2.0)
            ),
            headers={"User-Agent": user_agent, "Origin": base},
            follow_redirects=False,
            timeout=60.0,
        )
        self.csrf = ""

    async def get(self, path: str, **kw: Any) -> httpx.Response:
        response = await self.client.get(path, **kw)
        STATS.requests += 1
        if response.status_code == 200 and "csrf_token" in response.text:
            self.csrf = csrf_of(response)
        return response

    async def post(self, path: str, data: dict[str, str]) -> httpx.Response:
        response = await self.client.post(path, data={**data, "csrf_token": self.csrf})
        STATS.requests += 1
        if response.status_code in (200, 400, 401, 404) and "csrf_token" in response.text:
            self.csrf = csrf_of(response)
        return response

    def session_cookie(self) -> str | None:
        return self.client.cookies.get("session")

    async def aclose(self) -> None:
        await self.client.aclose()


def expect(response: httpx.Response, status: int, location: str | None = None) -> bool:
    if response.status_code != status:
        return False
    return location is None or response.headers.get("location", "").startswith(location)


def describe(response: httpx.Response) -> str:
    where = response.headers.get("location", "")
    return f"{response.request.method} {response.request.url.path} -> {response.status_code} {where}".strip()


# --- legitimate users -----------------------------------------------------------------------------
async def log_in(browser: Browser, username: str, password: str, *, legit: bool = True) -> bool:
    """Log in, retrying a refusal (BUSY under load) with exponential backoff and jitter."""
    for attempt in range(LOGIN_RETRIES):
        page = await browser.get("/login")
        if legit:
            STATS.legit_requests += 1
        if page.status_code == 303 and page.headers.get("location") == "/dashboard":
            return True  # still signed in
        if page.status_code != 200:
            STATS.legit_error(describe(page))
            return False
        response = await browser.post("/login", {"username": username, "password": password})
        if legit:
            STATS.legit_requests += 1
        if expect(response, 303, "/dashboard"):
            STATS.legit_logins += 1
            return True
        if response.status_code != 401:
            STATS.legit_error(describe(response))
            return False
        STATS.login_retries += 1
        await asyncio.sleep(min(5.0, 0.1 * 2**attempt) * random.uniform(0.5, 1.5))
    STATS.legit_error(f"login of {username} refused {LOGIN_RETRIES} times")
    return False


async def legit_step(browser: Browser, method: str, path: str, status: int, location: str | None = None,
                     data: dict[str, str] | None = None) -> httpx.Response | None:  # fmt: skip
    response = await (browser.get(path) if method == "GET" else browser.post(path, data or {}))
    STATS.legit_requests += 1
    if not expect(response, status, location):
        STATS.legit_error(describe(response))
        return None
    return response


async def think() -> None:
    await asyncio.sleep(random.uniform(0.2, 1.5))


async def legit_user(base: str, username: str, password: str, warmed: asyncio.Event,
                     start_gate: asyncio.Semaphore, deadline_box: list[float],
                     warmed_count: list[int]) -> None:  # fmt: skip
    browser = Browser(base)
    try:
        async with start_gate:  # the first login: a device cookie before the attackers start
            if await log_in(browser, username, password):
                await legit_step(browser, "GET", "/dashboard", 200)  # the session's CSRF token
                await legit_step(browser, "POST", "/logout", 303, "/login")
        warmed_count[0] += 1
        await warmed.wait()
        n = 0
        while time.monotonic() < deadline_box[0]:
            n += 1
            try:
                await legit_loop(browser, username, password, n)
            except httpx.HTTPError as exc:
                STATS.legit_error(f"{username}: {exc!r}")
                browser.client.cookies.delete("session")
    finally:
        await browser.aclose()


async def legit_loop(browser: Browser, username: str, password: str, n: int) -> None:
    """One visit: log in, browse, store and reveal a secret, log out, check the old cookie is dead."""
    if not await log_in(browser, username, password):
        await asyncio.sleep(1)
        return
    await think()
    if await legit_step(browser, "GET", "/dashboard", 200) is None:
        return
    await think()
    await legit_step(browser, "GET", "/sessions", 200)
    await think()
    await legit_step(browser, "GET", "/secrets", 200)
    name, value = f"note-{n % 3}", secrets.token_hex(12)
    await legit_step(
        browser, "POST", "/secrets", 303, "/secrets?m=secret_stored", {"name": name, "value": value}
    )
    revealed = await legit_step(browser, "POST", "/secrets/reveal", 200, None, {"name": name})
    if revealed is not None:
        if value in revealed.text:
            STATS.secrets_revealed += 1
        else:
            STATS.legit_error(f"secret {name} of {username} revealed a different value")
    await think()
    cookie = browser.session_cookie()
    await legit_step(browser, "POST", "/logout", 303, "/login?m=logged_out")
    if cookie is not None:  # the logged-out token, replayed by its own client: dead
        browser.client.cookies.set("session", cookie)
        dead = await browser.get("/dashboard")
        STATS.replays += 1
        if dead.status_code == 200:
            STATS.attack_succeeded(f"logged-out cookie of {username} still served /dashboard")
        else:
            STATS.replays_refused += 1
            STATS.dead_cookie_checks += 1
        browser.client.cookies.delete("session")
    STATS.loops += 1
    await think()


# --- attackers ------------------------------------------------------------------------------------
async def guesser(base: str, address: str, usernames: list[str], deadline_box: list[float],
                  spray: bool = False) -> None:  # fmt: skip
    browser = Browser(base, local_address=address, user_agent=f"python-requests/2.32 ({address})")
    common = ["Password123!Password", "correct horse battery staple", "Summer2026!Summer2026!",
              "qwertyuiopasdfghjkl", "letmeinletmeinletmein", "administrator123456"]  # fmt: skip
    try:
        page = await browser.get("/login")
        if page.status_code != 200:
            return
        i = random.randrange(10**6)  # workers of one address do not repeat each other
        while time.monotonic() < deadline_box[0]:
            i += 1
            if spray:
                username, password = (
                    usernames[i % len(usernames)],
                    common[(i // len(usernames)) % len(common)],
                )
            else:
                username = random.choice(usernames) if i % 10 else f"nobody{random.randrange(10**6)}"
                password = secrets.token_urlsafe(random.randint(8, 24))
            try:
                response = await browser.post("/login", {"username": username, "password": password})
            except httpx.HTTPError:
                STATS.attack_transport_errors += 1
                await asyncio.sleep(0.5)
                continue
            STATS.guesses += 1
            if response.status_code == 303:
                STATS.attack_succeeded(f"{address}: wrong password for {username} logged in")
                browser.client.cookies.delete("session")
                await browser.get("/login")
            elif response.status_code == 401:
                STATS.guesses_refused += 1
            await asyncio.sleep(random.uniform(0.02, 0.1))
    finally:
        await browser.aclose()


async def thief(base: str, n: int, victims: list[tuple[str, str]], deadline_box: list[float]) -> None:
    """A victim logs in; its live token is replayed from elsewhere; the victim must be logged out."""
    variants = [
        ("127.0.0.60", THIEF_UA, "cookie"),  # other address, other browser
        ("127.0.0.61", LEGIT_UA, "cookie"),  # other address, same browser string
        ("127.0.0.1", THIEF_UA, "cookie"),  # same address (a shared NAT), other browser
        ("127.0.0.62", LEGIT_UA, "bearer"),  # the token as a bearer from elsewhere
    ]
    username, password = victims[n % len(victims)]
    victim = Browser(base)
    thieves = {v: Browser(base, local_address=v[0], user_agent=v[1]) for v in variants}
    try:
        i = n
        while time.monotonic() < deadline_box[0]:
            variant = variants[i % len(variants)]
            i += 1
            if not await log_in(victim, username, password):
                await asyncio.sleep(1)
                continue
            if await legit_step(victim, "GET", "/dashboard", 200) is None:
                continue
            token = victim.session_cookie()
            assert token is not None
            stolen = thieves[variant]
            stolen.client.cookies.clear()
            if variant[2] == "cookie":
                stolen.client.cookies.set("session", token)
                replay = await stolen.get("/dashboard")
            else:
                replay = await stolen.get("/dashboard", headers={"Authorization": f"Bearer {token}"})
            STATS.replays += 1
            if replay.status_code == 200:
                STATS.attack_succeeded(f"replayed session of {username} via {variant} got 200")
            else:
                STATS.replays_refused += 1
            after = await victim.get("/dashboard")  # strict binding: revoked for everyone
            if after.status_code == 303 and after.headers.get("location") == "/login":
                STATS.victim_sessions_revoked += 1
            else:
                STATS.victim_sessions_survived += 1
                await legit_step(victim, "POST", "/logout", 303, "/login")
            victim.client.cookies.delete("session")
            await asyncio.sleep(random.uniform(0.5, 1.5))
    finally:
        await victim.aclose()
        for browser in thieves.values():
            await browser.aclose()


# --- the server -----------------------------------------------------------------------------------
async def sample_rss(pid: int, stop: asyncio.Event, every: float) -> None:
    process = psutil.Process(pid)
    start = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(psutil.Error):
            STATS.rss.append((time.monotonic() - start, process.memory_info().rss))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)


async def wait_for_password(out: Path, server: subprocess.Popen[bytes], timeout: float = 90) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise RuntimeError(f"main.py exited with {server.returncode}")
        match = re.search(r"password: (\S+)", out.read_text(errors="replace"))
        if match:
            return match.group(1)
        await asyncio.sleep(0.2)
    raise RuntimeError("main.py printed no administrator password")


async def wait_healthy(base: str, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=base) as client:
        while time.monotonic() < end:
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get("/health")).status_code == 200:
                    return
            await asyncio.sleep(0.2)
    raise RuntimeError("main.py did not answer /health")


async def register_accounts(env: dict[str, str], workdir: Path, count: int) -> list[tuple[str, str]]:
    """A second initialize_fundaments against the same database; Security.register_user per account."""
    os.environ.update(env)
    from fundaments import initialize_fundaments
    from fundaments.config import load_settings

    fundaments = await initialize_fundaments(
        load_settings(env_file=workdir / "absent.env", log_level="WARNING")
    )
    accounts = [(f"user{i:04d}", secrets.token_urlsafe(18)) for i in range(count)]
    gate = asyncio.Semaphore(4)

    async def one(username: str, password: str) -> None:
        async with gate:
            await fundaments.security.register_user(username, password, roles=["member"])

    try:
        await asyncio.gather(*(one(u, p) for u, p in accounts))
    finally:
        await fundaments.close()
    return accounts


async def admin_check(base: str, password: str) -> bool:
    """The one-time password works once: forced change, then the administrator's pages."""
    admin = Browser(base)
    try:
        page = await admin.get("/login")
        response = await admin.post("/login", {"username": "admin", "password": password})
        if not expect(response, 303, "/password"):
            print(f"admin login: {describe(response)} (login page {page.status_code})")
            return False
        await admin.get("/password")
        new = secrets.token_urlsafe(20)
        changed = await admin.post(
            "/password", {"current_password": password, "new_password": new, "confirm_password": new}
        )
        users = await admin.get("/admin/users")
        audit = await admin.get("/admin/audit")
        ok = expect(changed, 303, "/dashboard") and users.status_code == 200 and audit.status_code == 200
        if not ok:
            print(f"admin pages: {describe(changed)}, users {users.status_code}, audit {audit.status_code}")
        return ok
    finally:
        await admin.aclose()


def slope_mib_per_min(samples: list[tuple[float, int]]) -> float:
    if len(samples) < 2:
        return 0.0
    xs = [t / 60 for t, _ in samples]
    ys = [r / 2**20 for _, r in samples]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / den if den else 0.0


def report(args: argparse.Namespace, elapsed: float, server_log: str) -> bool:
    """Print the numbers; whether the RSS was flat."""
    reasons = collections.Counter(REFUSAL_RE.findall(server_log))
    access = collections.Counter(re.findall(r'HTTP/1\.1" (\d{3})', server_log))
    events = collections.Counter(re.findall(r'"kind":"([a-z_.]+)"', server_log))
    samples = STATS.rss
    # The first half includes the warm-up (connection pools, caches, allocator arenas filling);
    # flat means: over the second half, the fitted slope and the total growth stay small.
    second = [s for s in samples if s[0] >= samples[-1][0] * 0.5]
    first, last, peak = samples[0][1] / 2**20, samples[-1][1] / 2**20, max(r for _, r in samples) / 2**20
    second_first = second[0][1] / 2**20
    slope, slope_all = slope_mib_per_min(second), slope_mib_per_min(samples)
    flat = slope < args.max_slope and last - second_first < max(8.0, 0.05 * second_first)
    per_minute = [f"{r / 2**20:.0f}" for t, r in samples if int(t) % 60 < args.rss_every]
    lines = [
        "",
        "=== soak results ===",
        f"measured phase: {elapsed:.0f} s; {args.users} users, {args.victims} victims,"
        f" {args.guessers} guesser addresses + 1 sprayer with {args.workers} clients each",
        f"requests served (all clients, whole run): {STATS.requests}"
        f" (server access log: {sum(access.values())}, by status {dict(sorted(access.items()))})",
        f"legitimate: {STATS.legit_requests} requests, {STATS.loops} full visits,"
        f" {STATS.legit_logins} logins, {STATS.login_retries} login retries,"
        f" {STATS.secrets_revealed} secrets stored and revealed, errors {STATS.legit_errors}",
        *(f"  legit error: {sample}" for sample in STATS.legit_error_samples),
        f"guesses: {STATS.guesses} ({STATS.guesses_refused} refused,"
        f" {STATS.attack_transport_errors} transport errors)",
        f"replayed tokens: {STATS.replays} ({STATS.replays_refused} refused;"
        f" {STATS.dead_cookie_checks} logged-out cookies); victims' live sessions revoked by the replay:"
        f" {STATS.victim_sessions_revoked}, survived: {STATS.victim_sessions_survived}",
        f"successful attacks: {STATS.successful_attacks}",
        *(f"  attack: {sample}" for sample in STATS.attack_samples),
        f"login refusals by reason (server log): {dict(sorted(reasons.items()))}",
        f"audit events (server log): {dict(sorted(events.items()))}",
        f"main.py RSS: first {first:.1f} MiB, last {last:.1f} MiB, max {peak:.1f} MiB"
        f" ({len(samples)} samples; each minute: {' '.join(per_minute)} MiB);"
        f" slope over the whole run {slope_all:+.2f} MiB/min; over the second half"
        f" {slope:+.2f} MiB/min, from {second_first:.1f} MiB"
        f" -> {'flat' if flat else 'NOT FLAT'}",
    ]
    print("\n".join(lines), flush=True)
    return flat


async def run(args: argparse.Namespace) -> int:
    db_name = f"fundaments_soak_{secrets.token_hex(4)}"
    admin_conn = await asyncpg.connect(ADMIN_URL)
    await admin_conn.execute(f'CREATE DATABASE "{db_name}"')
    await admin_conn.close()
    workdir = Path(tempfile.mkdtemp(prefix="fundaments-soak-"))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "DATABASE_URL": with_database(ADMIN_URL, db_name),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "MASTER_ENCRYPTION_KEY": secrets.token_urlsafe(48),
        "PERSISTENT_ENCRYPTION_SALT": secrets.token_hex(16),
        "LOG_LEVEL": "INFO",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("FUNDAMENTS_ENV_FILE", None)
    out, err = workdir / "stdout.txt", workdir / "stderr.txt"
    print(f"database {db_name}, main.py on {base}, workdir {workdir}", flush=True)
    with out.open("wb") as out_file, err.open("wb") as err_file:
        server = subprocess.Popen(
            [sys.executable, args.server_script], cwd=workdir, env=env, stdout=out_file, stderr=err_file
        )
    stop_rss = asyncio.Event()
    rss_task: asyncio.Task[None] | None = None
    status = 1
    try:
        admin_password = await wait_for_password(out, server)
        await wait_healthy(base)
        print("main.py is up; the administrator's one-time password was read from its stdout", flush=True)
        rss_task = asyncio.create_task(sample_rss(server.pid, stop_rss, args.rss_every))
        t0 = time.monotonic()
        accounts = await register_accounts(env, workdir, args.users + args.victims)
        users, victims = accounts[: args.users], accounts[args.users :]
        print(f"registered {len(accounts)} accounts in {time.monotonic() - t0:.1f} s", flush=True)
        admin_ok = await admin_check(base, admin_password)
        print(
            f"administrator: one-time password, forced change, admin pages: {'ok' if admin_ok else 'FAILED'}"
        )

        deadline_box = [float("inf")]
        warmed = asyncio.Event()
        gate = asyncio.Semaphore(16)
        t_warm = time.monotonic()
        warmed_count = [0]
        legit = [
            asyncio.create_task(legit_user(base, u, p, warmed, gate, deadline_box, warmed_count))
            for u, p in users
        ]
        while warmed_count[0] < len(users) and not all(t.done() for t in legit):
            await asyncio.sleep(0.2)
        print(f"warm-up: {STATS.legit_logins} first logins in {time.monotonic() - t_warm:.1f} s "
              f"({STATS.login_retries} retries); attackers start now", flush=True)  # fmt: skip
        t_start = time.monotonic()
        deadline_box[0] = t_start + args.minutes * 60
        warmed.set()
        names = [u for u, _ in users] + ["admin"]
        attackers = [
            asyncio.create_task(guesser(base, f"127.0.0.{10 + g}", names[5 * g : 5 * g + 5], deadline_box))
            for g in range(args.guessers)
        ]
        attackers.append(asyncio.create_task(guesser(base, "127.0.0.40", names, deadline_box, spray=True)))
        attackers += [asyncio.create_task(thief(base, n, victims, deadline_box)) for n in range(len(victims))]
        last = t_start
        while time.monotonic() < deadline_box[0]:
            await asyncio.sleep(5)
            if time.monotonic() - last >= 30:
                last = time.monotonic()
                rss = STATS.rss[-1][1] / 2**20 if STATS.rss else 0
                print(
                    f"  t={last - t_start:5.0f}s requests={STATS.requests} loops={STATS.loops}"
                    f" legit_errors={STATS.legit_errors} retries={STATS.login_retries}"
                    f" guesses={STATS.guesses} replays={STATS.replays}"
                    f" attacks_ok={STATS.successful_attacks} rss={rss:.1f} MiB",
                    flush=True,
                )
        results = await asyncio.gather(*legit, *attackers, return_exceptions=True)
        elapsed = time.monotonic() - t_start
        crashed = [r for r in results if isinstance(r, BaseException)]
        for exc in crashed[:5]:
            print(f"task failed: {exc!r}")
        stop_rss.set()
        await rss_task

        server_log = err.read_text(errors="replace") + out.read_text(errors="replace")
        flat = report(args, elapsed, server_log)
        ok = STATS.legit_errors == 0 and STATS.successful_attacks == 0 and flat and admin_ok and not crashed
        print("PASS" if ok else "FAIL")
        status = 0 if ok else 1
    finally:
        stop_rss.set()
        if rss_task is not None and not rss_task.done():
            rss_task.cancel()
        if server.poll() is None:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        conn = await asyncpg.connect(ADMIN_URL)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)')
        finally:
            await conn.close()
        print(f"main.py exited with {server.returncode}; dropped {db_name}; logs kept in {workdir}")
    return status


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0)
    parser.add_argument("--users", type=int, default=300)
    parser.add_argument("--victims", type=int, default=20)
    parser.add_argument("--guessers", type=int, default=6, help="attacker source addresses 127.0.0.10..")
    parser.add_argument("--workers", type=int, default=4, help="concurrent clients per attacker address")
    parser.add_argument("--server-script", default=str(ROOT / "main.py"), help="(diagnosis: a wrapper)")
    parser.add_argument("--rss-every", type=float, default=5.0, help="seconds between RSS samples")
    parser.add_argument(
        "--max-slope",
        type=float,
        default=2.0,
        help="second-half RSS slope (MiB/min) above which it is not flat",
    )
    return asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    sys.exit(main())
