"""Helpers of the rate-limit tests: the shared Redis, a Redis server of a test's own, backends.

The shared Redis (FUNDAMENTS_TEST_REDIS_URL) is never flushed: each test uses a key prefix of its
own and deletes only its keys. Outage tests start their own ``redis-server`` on a free port.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from fundaments.ratelimit import RedisBackend

REDIS_ENV = "FUNDAMENTS_TEST_REDIS_URL"


def redis_test_url() -> str:
    """The shared test Redis; skip without it, except under CI=true (a failure there)."""
    url = os.environ.get(REDIS_ENV)
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{REDIS_ENV} is not set under CI=true: Redis tests must run in CI")
        pytest.skip(f"{REDIS_ENV} not set: Redis tests skipped")
    return url


def unique_prefix() -> str:
    return f"fundaments-test:{secrets.token_hex(6)}:"


async def delete_prefix(url: str, prefix: str) -> None:
    client = aioredis.Redis.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=prefix + "*", count=1000)]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


def redis_backend(url: str, prefix: str, *, server_time: bool = False, timeout: float = 5.0) -> RedisBackend:
    return RedisBackend.from_url(url, timeout=timeout, server_time=server_time, prefix=prefix)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class OwnRedis:
    """A redis-server process of this test only (no persistence), to stop and start at will."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if os.environ.get("CI") == "true":
                pytest.fail("redis-server is not installed under CI=true: the outage tests must run")
            pytest.skip("redis-server not installed: the outage tests need one of their own")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("the test's own redis-server did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
