"""What the rotation grace window costs: a normal validation (should be unchanged), a miss, a grace answer.

    python bench/rotation.py                     # SQLite; PostgreSQL too when the URL is set
    PYTHONPATH=/path/to/other/checkout/src python bench/rotation.py   # the same figures for other code

Runs against whichever fundaments is importable, so the same script measures the code before the
grace window (where the grace rows are skipped) and after it: run it both ways, in turns, and
compare. With bench/sessions.py's 10,000 live sessions, sequential, paired rounds (medians):
- ``normal``: a valid token, with the cache (SESSION_CACHE_SECONDS=1) and without (0); ``cache
  hit`` draws from 100 tokens only, so nearly every validation is answered from memory;
- ``unknown``: a token that is no session; with the grace window enabled a miss also looks at
  ``previous_token_hash`` (indexed), so this is the one path that gets dearer;
- ``grace``: a token rotated by a privilege change, inside its window (no cache: grace answers are
  never cached): two reads and an AES-GCM open.
No timed assertions: figures to read, not to pass.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import secrets
import sys
import tempfile
from pathlib import Path
from typing import Any

from sessions import (
    CLIENT,
    drop_database,
    line,
    make_database,
    manager,
    paired_rounds,
    seed,
    started_manager,
    summarize,
    validator,
)

from fundaments import initialize_fundaments
from fundaments.config import Settings, load_settings

GRACE_SUPPORTED = "session_rotation_grace" in Settings.model_fields
ROTATED = 500  # sessions rotated for the grace figures


async def rotated_tokens(f: Any, tokens: list[str]) -> list[str]:
    """Rotate ROTATED of the seeded sessions by a privilege change; their old tokens."""
    old = tokens[-ROTATED:]
    db = f["db"]
    await db.execute("UPDATE fundaments_users SET privilege_epoch = privilege_epoch + 1")
    rotating = manager(f, session_cache_seconds=0, session_rotation_grace=300)  # outlasts the run
    for token in old:
        rotated = await rotating.validate(token, CLIENT)
        assert rotated is not None and rotated.rotated_token, "the seeded session did not rotate"
    # The other sessions take the new epoch as they are, so "normal" stays a plain validation.
    await db.execute("UPDATE fundaments_sessions SET privilege_epoch = 1 WHERE privilege_epoch = 0")
    return old


async def measure(url: str, directory: Path, sample_size: int, runs: int) -> dict[str, float]:
    settings = load_settings(env_file=directory / "absent.env", database_url=url)
    f = await initialize_fundaments(settings, configure_logs=False)
    managers: list[Any] = []
    try:
        tokens = await seed(f)
        live = tokens[:-ROTATED]
        grace_on = {"session_rotation_grace": 300} if GRACE_SUPPORTED else {}
        cached = await started_manager(f, **grace_on)
        uncached = await started_manager(f, session_cache_seconds=0, **grace_on)
        managers += [cached, uncached]
        contenders: dict[str, Any] = {
            "normal, cache hit": (validator(cached), 1),
            "normal, cache": (validator(cached), 1),
            "normal, no cache": (validator(uncached), 1),
            "unknown, no cache": (validator(uncached), 1),
        }
        samples = {
            "normal, cache hit": random.choices(live[:100], k=sample_size),  # the CPU path alone
            "normal, cache": random.choices(live, k=sample_size),
            "normal, no cache": random.choices(live, k=sample_size),
            "unknown, no cache": [secrets.token_urlsafe(32) for _ in range(sample_size)],
        }
        if GRACE_SUPPORTED:
            off = await started_manager(f, session_cache_seconds=0, session_rotation_grace=0)
            managers.append(off)
            contenders["unknown, no cache, grace off"] = (validator(off), 1)
            samples["unknown, no cache, grace off"] = samples["unknown, no cache"]
            old = await rotated_tokens(f, tokens)
            contenders["grace answer, no cache"] = (validator(uncached), 1)
            samples["grace answer, no cache"] = random.choices(old, k=sample_size)
        # paired_rounds takes one sample for all; give each contender its own tokens by position.
        index = {name: iter(range(10**12)) for name in contenders}

        def by_position(name: str, lookup: Any) -> Any:
            own = samples[name]

            async def run(_: str) -> Any:
                return await lookup(own[next(index[name]) % len(own)])

            return run

        wrapped = {name: (by_position(name, lookup), tasks) for name, (lookup, tasks) in contenders.items()}
        rounds = await paired_rounds(wrapped, samples["normal, cache"], runs)
        return summarize(rounds, {})
    finally:
        for sessions in managers:
            await sessions.close()
        await f.close()


def report(title: str, figures: dict[str, float]) -> None:
    print(title)
    for name, value in figures.items():
        line(name, value)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sample", type=int, default=10_000, help="validations per measurement")
    parser.add_argument("--runs", type=int, default=5, help="rounds (figures are medians)")
    parser.add_argument("--postgres", default=os.environ.get("FUNDAMENTS_TEST_POSTGRES_URL"))
    args = parser.parse_args()
    import fundaments

    print(f"fundaments from {Path(fundaments.__file__).parent}; grace window: {GRACE_SUPPORTED}")
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        report(
            "SQLite",
            asyncio.run(measure(f"sqlite:///{directory / 'f.db'}", directory, args.sample, args.runs)),
        )
        if args.postgres:

            async def on_postgres() -> dict[str, float]:
                url = await make_database(args.postgres)
                try:
                    return await measure(url, directory, args.sample, args.runs)
                finally:
                    await drop_database(args.postgres, url)

            report("PostgreSQL", asyncio.run(on_postgres()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
