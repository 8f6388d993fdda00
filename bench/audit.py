"""What the audit trail costs: a login and a validate_session with and without it, same process.

    python bench/audit.py [--rounds 60] [--validations 20000]

The "without" runs replace AuditTrail.record by a no-op for the duration of the measurement (bench
only): the difference is what writing events costs. Bars (facade issue): at most 5 % of a login
(the hash dominates) and nothing measurable on an ordinary validate_session (only anomalies are
events). Real Argon2id parameters, SQLite.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fundaments import initialize_fundaments
from fundaments.audit import AuditTrail
from fundaments.config import generate_keys, load_settings

PASSWORD = "correct horse battery staple"
REQUEST = {"ip_address": "203.0.113.7", "user_agent": "bench/audit"}


@contextmanager
def audit_disabled() -> Iterator[None]:
    original = AuditTrail.record

    async def no_op(self: AuditTrail, kind: str, **_: Any) -> None:
        return None

    AuditTrail.record = no_op  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        AuditTrail.record = original  # type: ignore[method-assign]


async def login_ms(security: Any, device: str | None) -> float:
    data = {**REQUEST, **({"device_token": device} if device else {})}
    start = time.perf_counter()
    result = await security.user_login("dev@example.com", PASSWORD, data)
    elapsed = (time.perf_counter() - start) * 1000
    assert result, result.reason
    await security.user_logout(result.session.token)
    return elapsed


async def validations_per_second(security: Any, tokens: list[str], count: int) -> float:
    start = time.perf_counter()
    for n in range(count):
        await security.validate_session(tokens[n % len(tokens)], REQUEST)
    return count / (time.perf_counter() - start)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--validations", type=int, default=20_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keys = generate_keys()
        settings = load_settings(
            env_file=Path(tmp) / "none.env",
            database_url=f"sqlite:///{Path(tmp) / 'audit.db'}",
            master_encryption_key=keys["MASTER_ENCRYPTION_KEY"],
            persistent_encryption_salt=keys["PERSISTENT_ENCRYPTION_SALT"],
            session_cache_seconds=0,  # every validation reads the database
            session_max_per_user=1000,
            log_level="WARNING",
        )
        async with await initialize_fundaments(settings) as fundaments:
            security = fundaments["security"]
            await security.register_user("dev@example.com", PASSWORD)
            first = await security.user_login("dev@example.com", PASSWORD, REQUEST)
            device = first.device_token
            with_audit: list[float] = []
            without: list[float] = []
            for _ in range(args.rounds):  # interleaved: machine noise hits both alike
                with_audit.append(await login_ms(security, device))
                with audit_disabled():
                    without.append(await login_ms(security, device))
            on, off = statistics.median(with_audit), statistics.median(without)
            print(
                f"login median with audit {on:.2f} ms, without {off:.2f} ms: audit adds {on - off:.3f} ms "
                f"= {(on - off) / off * 100:.1f} % (bar: <= 5 %)"
            )

            tokens = []
            for _ in range(200):
                result = await security.user_login(
                    "dev@example.com", PASSWORD, {**REQUEST, "device_token": device}
                )
                tokens.append(result.session.token)
            rates_on, rates_off = [], []
            for _ in range(5):
                rates_on.append(await validations_per_second(security, tokens, args.validations // 5))
                with audit_disabled():
                    rates_off.append(await validations_per_second(security, tokens, args.validations // 5))
            r_on, r_off = statistics.median(rates_on), statistics.median(rates_off)
            print(
                f"validate_session with audit {r_on:,.0f}/s, without {r_off:,.0f}/s: "
                f"ratio {r_on / r_off:.2f}x "
                "(bar: no measurable difference)"
            )


if __name__ == "__main__":
    asyncio.run(main())
