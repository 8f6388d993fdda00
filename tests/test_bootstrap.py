"""initialize_fundaments: wiring, graceful degradation, the Security failure mode, concurrent start."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

from fundaments import Security, initialize_fundaments
from fundaments.bootstrap import SERVICE_KEYS
from fundaments.config import load_settings
from fundaments.errors import ServiceUnavailable
from fundaments.store import current, head_revision


async def test_every_service_starts_and_is_reachable_by_key(fundaments) -> None:
    assert set(fundaments) == set(SERVICE_KEYS)
    assert all(fundaments.started().values())
    assert isinstance(fundaments["security"], Security)
    assert fundaments.security is fundaments["security"]
    with pytest.raises(TypeError):
        fundaments["security"] = None  # read-only mapping


async def test_without_keys_encryption_is_none_and_the_rest_works(make_settings, clock) -> None:
    settings = make_settings(master_encryption_key=None, persistent_encryption_salt=None)
    async with await initialize_fundaments(settings, clock=clock, configure_logs=False) as started:
        assert started["encryption"] is None
        assert started["security"] is not None
        assert started.started()["user_handler"]
        security: Security = started["security"]
        assert not security.encryption_available
        with pytest.raises(ServiceUnavailable, match="MASTER_ENCRYPTION_KEY"):
            security._require_encryption()


def test_security_without_services_names_the_missing_one() -> None:
    with pytest.raises(RuntimeError, match=r"^Security manager failed to initialize: user_handler missing$"):
        Security({})


@pytest.mark.parametrize("missing", ["user_handler", "sessions", "access_control"])
async def test_security_missing_each_core_service(fundaments, missing: str) -> None:
    services = dict(fundaments)
    services[missing] = None
    with pytest.raises(RuntimeError, match=f"Security manager failed to initialize: {missing} missing"):
        Security(services)


async def test_security_without_encryption_still_starts(fundaments) -> None:
    services = dict(fundaments)
    del services["encryption"]
    assert not Security(services).encryption_available


async def test_close_is_idempotent(settings, clock) -> None:
    started = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    await started.close()
    await started.close()


async def test_two_instances_are_independent(settings, clock) -> None:
    first = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    second = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        assert first["db"] is not second["db"]
        assert first["security"] is not second["security"]
    finally:
        await first.close()
        await second.close()


STARTER = """
import asyncio, sys
from fundaments import initialize_fundaments
from fundaments.config import load_settings

async def main():
    started = await initialize_fundaments(load_settings(database_url=sys.argv[1]), configure_logs=False)
    ok = started.started()["security"]
    await started.close()
    print("started" if ok else "failed")

asyncio.run(main())
"""


async def test_three_processes_start_at_once_on_a_fresh_database(database_url: str, tmp_path: Path) -> None:
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            STARTER,
            database_url,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    results = [await proc.communicate() for proc in procs]
    for proc, (out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
        assert out.decode().strip() == "started"
    assert await current(load_settings(database_url=database_url).database) == head_revision()


async def test_three_instances_start_at_once_in_one_process(settings, clock) -> None:
    # Alembic keeps the running migration in module globals: concurrent starts must not overlap.
    started = await asyncio.gather(
        *(initialize_fundaments(settings, clock=clock, configure_logs=False) for _ in range(3))
    )
    try:
        assert all(f.started()["security"] for f in started)
        assert await current(settings.database) == head_revision()
    finally:
        for instance in started:
            await instance.close()


async def test_first_run_creates_one_admin_with_a_one_time_password(fundaments, request_data) -> None:
    from fundaments.bootstrap import ensure_admin

    security = fundaments["security"]
    password = await ensure_admin(security)
    assert password is not None and len(password) >= 24
    assert await ensure_admin(security) is None  # accounts exist now: never a second admin
    admin = await security.get_user_by_username("admin")
    assert admin is not None and admin.must_change_password
    assert await security.user_roles(admin.id) == ["admin"]
    assert await security.user_login("admin", password, request_data)
