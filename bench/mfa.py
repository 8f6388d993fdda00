"""What TOTP adds to a login, beside the login's Argon2id verify (same process, SQLite).

    python bench/mfa.py [--rounds 20]

Prints the medians of:
1. one bare ``argon2.PasswordHasher.verify`` with the default parameters (the login's floor);
2. a password-only ``user_login`` (account without a second factor);
3. ``user_login`` (answering MFA_REQUIRED) + ``verify_mfa`` with a TOTP code, for an account
   with TOTP, and the difference to 2. — the bar: TOTP adds at most 2 ms;
4. the TOTP check alone (decrypt the secret, three HMAC-SHA1 codes compared in constant time);
5. ``verify_mfa`` with a recovery code against 1. — the bar: at most one password verification.
The manual clock moves one 30 s step per round, so every round has a fresh code.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import argon2
import pyotp

from fundaments import initialize_fundaments
from fundaments.clock import ManualClock
from fundaments.config import load_settings
from fundaments.mfa import matching_step

PASSWORD = "a long passphrase for the bench 2026"
CLIENT = {"ip_address": "203.0.113.9", "user_agent": "bench"}
KEY = "bench-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
SALT = "00112233445566778899aabbccddeeff"


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


async def main(rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            env_file=Path(tmp) / "absent.env",
            database_url=f"sqlite:///{tmp}/bench.db",
            master_encryption_key=KEY,
            persistent_encryption_salt=SALT,
            mail_url=f"file://{tmp}/outbox",
            lockout_threshold=1000,
            throttle_ip_failures=100_000,
        )
        clock = ManualClock(time.time())
        app = await initialize_fundaments(settings, clock=clock, configure_logs=False)
        try:
            security = app.security
            await security.register_user("plain-bench", PASSWORD)
            with_totp = await security.register_user("totp-bench", PASSWORD)
            enrolment = await security.begin_totp_enrolment(with_totp.id)
            totp = pyotp.TOTP(enrolment.secret)
            codes = await security.confirm_totp_enrolment(with_totp.id, totp.at(clock.now()))
            hasher = argon2.PasswordHasher(
                memory_cost=settings.argon2_memory_cost, time_cost=settings.argon2_time_cost
            )
            stored = hasher.hash(PASSWORD)

            verify, password_only, two_step, check_only, recovery, second = [], [], [], [], [], []
            for i in range(rounds):
                clock.advance(30)
                started = time.perf_counter()
                hasher.verify(stored, PASSWORD)
                verify.append(time.perf_counter() - started)

                started = time.perf_counter()
                assert await security.user_login("plain-bench", PASSWORD, CLIENT)
                password_only.append(time.perf_counter() - started)

                started = time.perf_counter()
                step = await security.user_login("totp-bench", PASSWORD, CLIENT)
                halfway = time.perf_counter()
                assert await security.verify_mfa(step.mfa_token, totp.at(clock.now()), CLIENT)  # type: ignore[arg-type]
                two_step.append(time.perf_counter() - started)
                second.append(time.perf_counter() - halfway)

                started = time.perf_counter()
                for _ in range(100):
                    secret = app["encryption"].decrypt_text(
                        app["encryption"].encrypt(enrolment.secret, context="c"), context="c"
                    )
                    matching_step(secret, totp.at(clock.now()), clock.now())
                check_only.append((time.perf_counter() - started) / 100)

                if i < len(codes):
                    step = await security.user_login("totp-bench", PASSWORD, CLIENT)
                    started = time.perf_counter()
                    assert await security.verify_mfa(step.mfa_token, codes[i], CLIENT)  # type: ignore[arg-type]
                    recovery.append(time.perf_counter() - started)
        finally:
            await app.close()

    print(f"argon2id verify (default parameters)      {ms(verify):8.2f} ms")
    print(f"user_login, password only                 {ms(password_only):8.2f} ms")
    print(f"user_login + verify_mfa (TOTP)            {ms(two_step):8.2f} ms")
    paired = [b - a for a, b in zip(password_only, two_step, strict=True)]  # same round, same load
    print(f"  TOTP adds (median of paired rounds)     {ms(paired):8.2f} ms  (bar: <= 2 ms)")
    print(f"  of which verify_mfa                     {ms(second):8.2f} ms")
    print(f"  TOTP check alone (decrypt + 3 codes)    {ms(check_only):8.3f} ms (includes one encrypt)")
    print(f"verify_mfa with a recovery code           {ms(recovery):8.2f} ms  (bar: <= one verify)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    asyncio.run(main(parser.parse_args().rounds))
