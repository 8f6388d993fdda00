"""Password-reset requests and logins by address, against their baselines (same process).

    python bench/recovery.py [--rounds 50] [--login-rounds 40]

Prints:
1. ``request_password_reset`` for a known address vs an unknown one, interleaved, p50/p99 and the
   ratio of the medians: first with the padding off (RESET_REQUEST_SECONDS=0: the raw work, which
   differs — a token, a mail composed, encrypted and queued for the known address only), then with
   the default padding (0.25 s), which is what an attacker measures;
2. ``user_login`` by email address vs by username, real Argon2id parameters, interleaved, medians
   and their ratio (the bar: within 5 %).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import tempfile
import time
from pathlib import Path

from fundaments import initialize_fundaments
from fundaments.config import load_settings

PASSWORD = "correct horse battery staple"
KEYS = {
    "master_encryption_key": secrets.token_urlsafe(48),
    "persistent_encryption_salt": secrets.token_hex(16),
}
CLIENT = {"ip_address": "203.0.113.7", "user_agent": "bench"}


def p99(values: list[float]) -> float:
    return sorted(values)[max(0, int(len(values) * 0.99) - 1)]


def line(name: str, values: list[float]) -> str:
    return f"{name:>8}: p50 {statistics.median(values) * 1000:8.2f} ms  p99 {p99(values) * 1000:8.2f} ms"


async def resets(tmp: str, rounds: int, padding: float | None) -> None:
    overrides = {} if padding is None else {"reset_request_seconds": padding}
    settings = load_settings(
        env_file=Path(tmp) / "absent.env",
        database_url=f"sqlite:///{tmp}/reset-{padding}.db",
        mail_url=f"file://{tmp}/outbox",
        **KEYS,
        reset_requests_per_address=1000,
        reset_requests_per_ip=100_000,
        **overrides,
    )
    app = await initialize_fundaments(settings, configure_logs=False)
    try:
        security = app.security
        await security.register_user("ann", PASSWORD, email="ann@example.com")
        known: list[float] = []
        unknown: list[float] = []
        for i in range(rounds + 3):
            pair = [("ann@example.com", known), (f"nobody{i}@example.com", unknown)]
            for address, into in pair if i % 2 else reversed(pair):  # each goes first half the time
                start = time.perf_counter()
                await security.request_password_reset(address, CLIENT)
                if i >= 3:  # warm-up rounds are not counted
                    into.append(time.perf_counter() - start)
        label = f"RESET_REQUEST_SECONDS={settings.reset_request_seconds}"
        ratio = statistics.median(known) / statistics.median(unknown)
        print(f"request_password_reset, {rounds} each, {label}")
        print(line("known", known))
        print(line("unknown", unknown))
        print(f"   ratio known/unknown (medians): {ratio:.3f}")
    finally:
        await app.close()


async def logins(tmp: str, rounds: int) -> None:
    settings = load_settings(
        env_file=Path(tmp) / "absent.env",
        database_url=f"sqlite:///{tmp}/login.db",
        mail_url=f"file://{tmp}/outbox",
        **KEYS,
        lockout_threshold=1000,
        throttle_ip_failures=1_000_000,
    )
    app = await initialize_fundaments(settings, configure_logs=False)
    try:
        security = app.security
        await security.register_user("ann", PASSWORD, email="ann@example.com")
        by_name: list[float] = []
        by_address: list[float] = []
        for i in range(rounds + 3):
            pair = [("ann", by_name), ("ann@example.com", by_address)]
            for login, into in pair if i % 2 else reversed(pair):  # each goes first half the time
                start = time.perf_counter()
                result = await security.user_login(login, PASSWORD, CLIENT)
                elapsed = time.perf_counter() - start
                assert result, result.reason
                if i >= 3:
                    into.append(elapsed)
        print(
            f"user_login, {rounds} each, "
            f"Argon2id m={settings.argon2_memory_cost} KiB t={settings.argon2_time_cost}"
        )
        print(line("username", by_name))
        print(line("address", by_address))
        ratio = statistics.median(by_address) / statistics.median(by_name)
        print(f"   ratio address/username (medians): {ratio:.3f}")
    finally:
        await app.close()


async def main(rounds: int, login_rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        await resets(tmp, rounds, 0.0)
        await resets(tmp, rounds, None)
        await logins(tmp, login_rounds)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--login-rounds", type=int, default=40)
    args = parser.parse_args()
    asyncio.run(main(args.rounds, args.login_rounds))
