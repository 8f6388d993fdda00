"""Shared fixtures: real SQLite files, a fresh PostgreSQL database per test, an injected clock.

PostgreSQL tests read FUNDAMENTS_TEST_POSTGRES_URL. Without it they skip with a reason, except
under CI=true, where a missing database fails the run instead of silently skipping.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings, load_settings

POSTGRES_ENV = "FUNDAMENTS_TEST_POSTGRES_URL"
REDIS_ENV = "FUNDAMENTS_TEST_REDIS_URL"
TEST_MASTER_KEY = "test-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
TEST_SALT = "00112233445566778899aabbccddeeff"

# Cheap hashing for tests that are not about hashing (as Django's test settings do);
# tests about parameters, upgrades and timing build their own settings with the real ones.
FAST_HASHING = {"argon2_memory_cost": 1024, "argon2_time_cost": 1, "pbkdf2_iterations": 1000}


def postgres_admin_url() -> str | None:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{POSTGRES_ENV} is not set under CI=true: PostgreSQL tests must run in CI")
        pytest.skip(
            f"{POSTGRES_ENV} not set: PostgreSQL tests skipped (see README: running against PostgreSQL)"
        )
    return url


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))


async def create_database(admin_url: str) -> str:
    name = f"fundaments_test_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return _with_database(admin_url, name)


async def drop_database(admin_url: str, url: str) -> None:
    name = urlsplit(url).path.lstrip("/")
    conn = await asyncpg.connect(admin_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """configure_logging (called by initialize_fundaments and the logging tests) changes process-wide
    logger state; put it back so one test's configuration cannot hide the next test's log lines."""
    package = logging.getLogger("fundaments")
    saved = (list(package.handlers), package.level, package.propagate)
    root_filters = {h: list(h.filters) for h in logging.getLogger().handlers}
    yield
    for handler in package.handlers:
        if handler not in saved[0]:
            handler.close()
    package.handlers[:] = saved[0]
    package.setLevel(saved[1])
    package.propagate = saved[2]
    for handler, filters in root_filters.items():
        handler.filters[:] = filters


@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A fresh, empty PostgreSQL database for this test, dropped afterwards."""
    admin = postgres_admin_url()
    assert admin is not None
    url = asyncio.run(create_database(admin))
    try:
        yield url
    finally:
        asyncio.run(drop_database(admin, url))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The DATABASE_URL of an empty database: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'fundaments.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    """Settings on this test's database with test keys and cheap hashing; keyword overrides win."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "master_encryption_key": TEST_MASTER_KEY,
            "persistent_encryption_salt": TEST_SALT,
            "mail_url": f"file://{tmp_path}/outbox",  # never ./var/outbox of the checkout
            **FAST_HASHING,
            **overrides,
        }
        return load_settings(env_file=tmp_path / "absent.env", **values)

    return make


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    return make_settings()


@pytest.fixture
async def fundaments(settings: Settings, clock: ManualClock) -> AsyncIterator[Fundaments]:
    """Every service started on this test's database, with the manual clock; closed afterwards."""
    started = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        yield started
    finally:
        await started.close()


@pytest.fixture
def request_data() -> dict[str, str]:
    return {"ip_address": "203.0.113.7", "user_agent": "Mozilla/5.0 (X11; Linux x86_64) test"}
