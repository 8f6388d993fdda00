"""fundaments' single entry point: configure, initialize the fundaments, run the application.

    python main.py

On a fresh checkout with no configuration it creates ./var/ (the SQLite database) and writes
freshly generated keys to .env (mode 0600), never overwriting an existing value. Relative paths
are the working directory's; at start it names the database, keys and outbox it uses, and it
refuses to create an empty database elsewhere while this directory holds a .env or a database
(README: "Where the data lives").
"""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path

from fundaments import initialize_fundaments
from fundaments.bootstrap import ensure_admin
from fundaments.config import (
    ensure_env_keys,
    env_file_path,
    fresh_start_problem,
    load_settings,
    state_locations,
)
from fundaments.errors import FundamentsError

log = logging.getLogger("fundaments.main")
PROJECT_DIR = Path(__file__).resolve().parent


async def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    env_file = env_file_path()
    try:
        problem = fresh_start_problem(PROJECT_DIR, load_settings(), env_file)  # before writing anything
        if problem is not None:
            log.critical("fundaments did not start: %s", problem)
            return 1
        written = ensure_env_keys(env_file)
        if written:
            log.warning(
                "no encryption keys were configured: generated %s and wrote them to %s (mode 0600); "
                "back this file up — data encrypted with these keys cannot be read without them",
                " and ".join(written),
                env_file,
            )
        settings = load_settings()
        for line in state_locations(settings, env_file):
            log.info("%s", line)
        fundaments = await initialize_fundaments(settings)
    except FundamentsError as exc:
        log.critical("fundaments could not start: %s", exc)
        return 1
    for name, up in fundaments.started().items():
        log.info("service %-15s %s", name, "started" if up else "disabled (see the warnings above)")
    password = await ensure_admin(fundaments.security)
    if password is not None:  # to the terminal only: logs may be shipped elsewhere
        print(
            f"\nCreated the administrator account.\n  username: admin\n  password: {password}\n"
            "This password is shown once; you will be asked to change it at the first login.\n",
            flush=True,
        )
    from app.app import start_application

    try:
        await start_application(fundaments)
    finally:
        await fundaments.close()
        log.info("fundaments closed")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except KeyboardInterrupt:
        sys.exit(0)
