"""The Security facade's encryption methods, built by initialize_fundaments on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.encryption import AUTHENTICATION_FAILED
from fundaments.errors import DecryptionError, ServiceUnavailable

KEY_A = "facade-master-key-A-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_B = "facade-master-key-B-0123456789abcdefghijklmnopqrstuvwxyz"


async def started(settings: Settings, clock: ManualClock) -> Fundaments:
    return await initialize_fundaments(settings, clock=clock, configure_logs=False)


async def test_encrypt_and_decrypt_data_through_security(fundaments: Fundaments) -> None:
    security = fundaments.security
    token = security.encrypt_data("SensitiveToken123", context="user:42:api_key")
    assert isinstance(token, str) and token.startswith("fe1_")
    assert security.decrypt_data(token, context="user:42:api_key") == "SensitiveToken123"
    assert security.decrypt_bytes(token, context="user:42:api_key") == b"SensitiveToken123"
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        security.decrypt_data(token, context="user:43:api_key")
    with pytest.raises(ValueError):  # DecryptionError is a ValueError
        security.decrypt_data("garbage")


async def test_encryption_without_keys_raises_service_unavailable_naming_the_variables(
    make_settings: Callable[..., Settings], clock: ManualClock, tmp_path: Path
) -> None:
    app = await started(make_settings(master_encryption_key=None, persistent_encryption_salt=None), clock)
    try:
        security = app.security
        assert not security.encryption_available
        for call in (
            lambda: security.encrypt_data("x"),
            lambda: security.decrypt_data("fe1_x"),
            lambda: security.decrypt_bytes("fe1_x"),
            lambda: security.reencrypt("fe1_x"),
        ):
            with pytest.raises(
                ServiceUnavailable, match=r"MASTER_ENCRYPTION_KEY.*PERSISTENT_ENCRYPTION_SALT"
            ):
                call()
        with pytest.raises(ServiceUnavailable):
            await security.encrypt_file(tmp_path / "a", tmp_path / "b")
        with pytest.raises(ServiceUnavailable):
            await security.decrypt_file(tmp_path / "a", tmp_path / "b")
    finally:
        await app.close()


async def test_rotation_through_settings(make_settings: Callable[..., Settings], clock: ManualClock) -> None:
    old_app = await started(make_settings(master_encryption_key=KEY_A), clock)
    try:
        old_token = old_app.security.encrypt_data("before rotation", context="row:1")
    finally:
        await old_app.close()
    app = await started(
        make_settings(master_encryption_key=KEY_B, master_encryption_key_previous=f"{KEY_A}"), clock
    )
    try:
        security = app.security
        assert security.decrypt_data(old_token, context="row:1") == "before rotation"
        moved = security.reencrypt(old_token, context="row:1")
        new_token = security.encrypt_data("after rotation")
    finally:
        await app.close()
    only_a = await started(make_settings(master_encryption_key=KEY_A), clock)
    try:
        with pytest.raises(DecryptionError):
            only_a.security.decrypt_data(new_token)
        with pytest.raises(DecryptionError):
            only_a.security.decrypt_data(moved, context="row:1")
    finally:
        await only_a.close()
    only_b = await started(make_settings(master_encryption_key=KEY_B), clock)
    try:
        assert only_b.security.decrypt_data(moved, context="row:1") == "before rotation"
    finally:
        await only_b.close()


async def test_files_round_trip_in_a_worker_thread_with_progress_on_the_loop(
    fundaments: Fundaments, tmp_path: Path
) -> None:
    security = fundaments.security
    data = os.urandom(3 * 1024 * 1024 + 17)  # four 1 MiB segments
    (tmp_path / "plain.bin").write_bytes(data)
    loop_thread = threading.get_ident()
    seen: list[tuple[int, int, bool]] = []

    def progress(done: int, total: int) -> None:
        seen.append((done, total, threading.get_ident() == loop_thread))

    await security.encrypt_file(tmp_path / "plain.bin", tmp_path / "sealed.enc", progress=progress)
    assert [s[:2] for s in seen][-1] == (len(data), len(data))
    assert len(seen) == 4 and all(on_loop for _, _, on_loop in seen)
    await security.decrypt_file(str(tmp_path / "sealed.enc"), str(tmp_path / "out.bin"))
    assert (tmp_path / "out.bin").read_bytes() == data


async def test_failed_file_decryption_is_audited_without_data(fundaments: Fundaments, tmp_path: Path) -> None:
    security = fundaments.security
    (tmp_path / "plain.bin").write_bytes(b"secret file contents")
    await security.encrypt_file(tmp_path / "plain.bin", tmp_path / "sealed.enc")
    sealed = bytearray((tmp_path / "sealed.enc").read_bytes())
    sealed[-1] ^= 1
    (tmp_path / "sealed.enc").write_bytes(sealed)
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        await security.decrypt_file(tmp_path / "sealed.enc", tmp_path / "out.bin")
    assert not (tmp_path / "out.bin").exists()
    events = await fundaments["audit"].events(kind="decrypt.failed")
    assert len(events) == 1
    assert events[0].outcome == "failure"
    assert events[0].details == {"operation": "decrypt_file", "error": AUTHENTICATION_FAILED}
    assert "secret" not in repr(events[0])


async def test_cancelled_file_job_leaves_no_output(fundaments: Fundaments, tmp_path: Path) -> None:
    security = fundaments.security
    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    (tmp_path / "plain.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    task: asyncio.Task[None] | None = None

    def cancel_on_first_segment(done: int, total: int) -> None:
        assert task is not None
        task.cancel()  # called again for segments already in flight: must not matter

    task = asyncio.ensure_future(
        security.encrypt_file(
            tmp_path / "plain.bin", tmp_path / "sealed.enc", progress=cancel_on_first_segment
        )
    )
    with pytest.raises(asyncio.CancelledError):
        await task
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.bin"]


async def test_failing_progress_callback_stops_the_job_and_leaves_no_output(
    fundaments: Fundaments, tmp_path: Path
) -> None:
    tmp_path = tmp_path / "files"
    tmp_path.mkdir()
    (tmp_path / "plain.bin").write_bytes(os.urandom(3 * 1024 * 1024))

    def fail(done: int, total: int) -> None:
        raise RuntimeError("progress display broke")

    with pytest.raises(RuntimeError, match="progress display broke"):
        await fundaments.security.encrypt_file(tmp_path / "plain.bin", tmp_path / "sealed.enc", progress=fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.bin"]
