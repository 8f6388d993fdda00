"""Attack tests for protections no test guarded (issue 14 §2): each was checked to fail with its
protection removed (scripts/mutations.toml names the mutation that each one kills).

On SQLite and PostgreSQL, with the injected clock; no mock of the database. A hang is an answer
here too: the cycle tests run under a watchdog, so a resolver that loops fails instead of
blocking CI forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from conftest import TEST_MASTER_KEY
from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments, ensure_admin
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import AuthenticationError, DecryptionError
from fundaments.models import LoginFailure, RequestContext
from fundaments.passwords import Hasher
from fundaments.user_handler import UserHandler
from test_accounts import OWNER, PASSWORD, events, fail, login, register

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # app/ is the example application at the repository root
from app.app import build_app  # noqa: E402
from app.secrets_store import secret_context  # noqa: E402

from test_web_console import Browser, settings, signed_in_admin  # noqa: E402, F401 - settings: ALLOWED_HOSTS

NEW_PASSWORD = "a different and longer passphrase"
NEW_KEY = "new-master-key-ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
NINETY_DAYS = 90 * 86_400  # the documented idle expiry of a device cookie, as a literal: the spec
HANG_SECONDS = 20.0  # far beyond any honest answer: only a loop gets here


@pytest.fixture
def uh(fundaments: Fundaments) -> UserHandler:
    handler: UserHandler = fundaments["user_handler"]
    return handler


@contextlib.contextmanager
def watchdog(seconds: float) -> Iterator[None]:
    """TimeoutError in the main thread after ``seconds``. asyncio.wait_for alone cannot stop a loop
    that never awaits (it blocks the event loop itself); a SIGALRM handler can."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds:.0f} s: it hangs")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


async def bounded(coro: Coroutine[Any, Any, Any]) -> Any:
    with watchdog(HANG_SECONDS + 5):
        return await asyncio.wait_for(coro, timeout=HANG_SECONDS)


async def started(make_settings: Callable[..., Settings], clock: ManualClock, **overrides: Any) -> Fundaments:
    return await initialize_fundaments(make_settings(**overrides), clock=clock, configure_logs=False)


async def session_rows(f: Fundaments, user_id: int) -> list[str]:
    rows = await f["db"].fetch("SELECT id FROM fundaments_sessions WHERE user_id = $1 ORDER BY id", user_id)
    return [str(r["id"]) for r in rows]


# --- device cookies: idle expiry, unlock ------------------------------------------------------------


async def test_a_device_cookie_unused_for_90_days_no_longer_bypasses_the_account_lock(
    fundaments: Fundaments, uh: UserHandler, clock: ManualClock
) -> None:
    await register(fundaments, "dev@example.com")
    _, device = await login(fundaments, "dev@example.com", PASSWORD)
    with_cookie = RequestContext(OWNER.ip_address, OWNER.user_agent, device)

    clock.advance(NINETY_DAYS - 60)  # still a known device, a minute before it expires
    await fail(fundaments, "dev@example.com", 5)
    assert (await uh.authenticate("dev@example.com", PASSWORD, OWNER)).reason is LoginFailure.LOCKED
    check, _ = await login(fundaments, "dev@example.com", PASSWORD, with_cookie)
    assert check  # the device passes the account lock (and this login counts as its use)

    clock.advance(NINETY_DAYS + 1)  # unused for 90 days and a second: a stranger now
    await fail(fundaments, "dev@example.com", 5)
    check = await uh.authenticate("dev@example.com", PASSWORD, with_cookie)
    assert check.reason is LoginFailure.LOCKED and not check


async def test_an_idle_device_cookie_counts_toward_the_account_lock_when_changing_the_password(
    fundaments: Fundaments, clock: ManualClock, request_data: dict[str, str]
) -> None:
    security = fundaments.security
    user = await security.register_user("dev@example.com", PASSWORD)
    first = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert first.device_token is not None
    clock.advance(NINETY_DAYS + 1)
    stale = {**request_data, "device_token": first.device_token}
    for _ in range(5):
        with pytest.raises(AuthenticationError):
            await security.change_password(user.id, "wrong guess number", NEW_PASSWORD, request_data=stale)
    [locked] = await events(fundaments, "account.locked")
    assert locked.details["scope"] == "account"  # not the stale device's own counter
    refused = await security.user_login(
        "dev@example.com", PASSWORD, {"ip_address": "198.51.100.9", "user_agent": "x"}
    )
    assert refused.reason is LoginFailure.LOCKED


async def test_unlock_user_also_clears_the_lock_of_a_device(fundaments: Fundaments, uh: UserHandler) -> None:
    user = await register(fundaments, "dev@example.com")
    _, device = await login(fundaments, "dev@example.com", PASSWORD)
    with_cookie = RequestContext(OWNER.ip_address, OWNER.user_agent, device)
    assert await fail(fundaments, "dev@example.com", 5, with_cookie) == [LoginFailure.INVALID_CREDENTIALS] * 5
    assert (await uh.authenticate("dev@example.com", PASSWORD, with_cookie)).reason is LoginFailure.LOCKED
    await fundaments.security.unlock_user(user.id)
    check, same = await login(fundaments, "dev@example.com", PASSWORD, with_cookie)
    assert check and same == device


# --- change_password and the current session ----------------------------------------------------------


async def test_an_idle_current_token_does_not_survive_a_password_change(
    fundaments: Fundaments, clock: ManualClock, request_data: dict[str, str]
) -> None:
    security = fundaments.security
    user = await security.register_user("dev@example.com", PASSWORD)
    current = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert current.session is not None and current.session.token is not None
    clock.advance(fundaments["config"].session_idle_timeout)  # idle for exactly the timeout: dead
    kept = await security.change_password(user.id, PASSWORD, NEW_PASSWORD, current.session.token)
    assert kept is None
    assert await session_rows(fundaments, user.id) == []
    assert await security.validate_session(current.session.token, request_data) is None


async def test_an_expired_current_token_does_not_survive_a_password_change(
    make_settings: Callable[..., Settings], clock: ManualClock, request_data: dict[str, str]
) -> None:
    f = await started(make_settings, clock, session_idle_timeout=1800, session_absolute_timeout=3000)
    try:
        security = f.security
        user = await security.register_user("dev@example.com", PASSWORD)
        current = await security.user_login("dev@example.com", PASSWORD, request_data)
        assert current.session is not None and current.session.token is not None
        clock.advance(1500)
        assert await security.validate_session(current.session.token, request_data) is not None  # a touch
        clock.advance(1500)  # active 1,500 s ago (not idle) but 3,000 s old: past the absolute timeout
        kept = await security.change_password(user.id, PASSWORD, NEW_PASSWORD, current.session.token)
        assert kept is None
        assert await session_rows(f, user.id) == []
    finally:
        await f.close()


async def test_a_token_of_another_user_is_never_the_survivor_of_a_password_change(
    fundaments: Fundaments, request_data: dict[str, str]
) -> None:
    security = fundaments.security
    alice = await security.register_user("alice@example.com", PASSWORD)
    await security.register_user("bob@example.com", PASSWORD)
    alices = await security.user_login("alice@example.com", PASSWORD, request_data)
    bobs = await security.user_login("bob@example.com", PASSWORD, request_data)
    assert alices.session is not None and bobs.session is not None and bobs.session.token is not None
    kept = await security.change_password(alice.id, PASSWORD, NEW_PASSWORD, bobs.session.token)
    assert kept is None  # no session of bob's comes back to alice's caller, rotated or not
    assert await session_rows(fundaments, alice.id) == []
    still = await security.validate_session(bobs.session.token, request_data)
    assert still is not None and still.id == bobs.session.id and still.rotated_token is None


# --- disable, then enable ---------------------------------------------------------------------------


async def privilege_epoch(f: Fundaments, user_id: int) -> int:
    return int(await f["db"].fetchval("SELECT privilege_epoch FROM fundaments_users WHERE id = $1", user_id))


async def test_disabling_bumps_the_privilege_epoch_and_enabling_does_not(fundaments: Fundaments) -> None:
    security = fundaments.security
    user = await security.register_user("dev@example.com", PASSWORD)
    before = await privilege_epoch(fundaments, user.id)
    await security.disable_user(user.id)
    assert await privilege_epoch(fundaments, user.id) == before + 1
    await security.enable_user(user.id)
    assert await privilege_epoch(fundaments, user.id) == before + 1


async def test_sessions_from_before_a_disable_stay_dead_after_enable(
    fundaments: Fundaments, request_data: dict[str, str]
) -> None:
    security = fundaments.security
    user = await security.register_user("dev@example.com", PASSWORD)
    tokens = []
    for _ in range(3):
        result = await security.user_login("dev@example.com", PASSWORD, request_data)
        assert result.session is not None and result.session.token is not None
        tokens.append(result.session.token)
    assert await security.disable_user(user.id) == 3
    await security.enable_user(user.id)
    for token in tokens:
        # None, not a session rotated to the new epoch: the token was ended, not merely outdated
        assert await security.validate_session(token, request_data) is None
    assert await session_rows(fundaments, user.id) == []
    fresh = await security.user_login("dev@example.com", PASSWORD, request_data)
    assert fresh and fresh.session is not None


# --- role-inheritance cycles stored behind the API's back ---------------------------------------------


async def store_cycle(f: Fundaments) -> int:
    """Roles a -> b -> c -> a, the last edge inserted directly (the API refuses it); a user holding a."""
    security, db = f.security, f["db"]
    await security.create_role("cyc-c", permissions=["x:c"])
    await security.create_role("cyc-b", permissions=["x:b"], inherits=["cyc-c"])
    await security.create_role("cyc-a", permissions=["x:a"], inherits=["cyc-b"])
    user = await security.register_user("dev@example.com", PASSWORD)
    await db.execute(
        "INSERT INTO fundaments_role_inherits (role_id, parent_id) SELECT c.id, a.id "
        "FROM fundaments_roles c, fundaments_roles a WHERE c.name = 'cyc-c' AND a.name = 'cyc-a'"
    )
    await db.execute("UPDATE fundaments_state SET value = value + 1 WHERE key = 'rbac_version'")
    await f["access_control"].refresh()  # what the watcher does: the stored policy is read afresh
    await security.grant_role(user.id, "cyc-b")
    return user.id


async def test_a_role_cycle_stored_in_the_database_does_not_hang_check_permission(
    fundaments: Fundaments,
) -> None:
    user_id = await store_cycle(fundaments)
    security = fundaments.security
    for permission in ("x:a", "x:b", "x:c"):  # b -> c -> a -> b: every role of the cycle counts once
        assert await bounded(security.check_permission(user_id, permission)) is True
    assert await bounded(security.check_permission(user_id, "x:d")) is False
    assert await bounded(security.user_permissions(user_id)) == frozenset({"x:a", "x:b", "x:c"})


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
async def test_changing_a_role_inside_a_stored_cycle_terminates(
    fundaments: Fundaments, request_data: dict[str, str]
) -> None:
    """The epoch bump of a role's heirs is a recursive query: on a cycle it must stop. PostgreSQL
    only: a runaway SQLite query runs in a thread that no timeout can stop."""
    user_id = await store_cycle(fundaments)
    before = await privilege_epoch(fundaments, user_id)
    await bounded(fundaments.security.set_role_permissions("cyc-a", ["x:a", "x:z"]))
    assert await privilege_epoch(fundaments, user_id) == before + 1  # the holder of cyc-b, once
    assert await bounded(fundaments.security.check_permission(user_id, "x:z")) is True


# --- encrypted values bound to their row ----------------------------------------------------------------


async def test_a_secret_encrypted_for_one_user_does_not_decrypt_as_another_users(
    fundaments: Fundaments,
) -> None:
    security = fundaments.security
    alice = await security.register_user("alice@example.com", PASSWORD)
    bob = await security.register_user("bob@example.com", PASSWORD)
    envelope = security.encrypt_data("sk-live-alice", context=secret_context(alice.id, "api key"))
    assert security.decrypt_data(envelope, context=secret_context(alice.id, "api key")) == "sk-live-alice"
    with pytest.raises(DecryptionError):
        security.decrypt_data(envelope, context=secret_context(bob.id, "api key"))


async def test_a_secret_copied_to_another_users_row_in_the_console_does_not_decrypt(
    fundaments: Fundaments, tmp_path: Path
) -> None:
    password = await ensure_admin(fundaments.security)
    assert password is not None
    app = build_app(fundaments, data_dir=tmp_path / "app-data")
    try:
        admin = await signed_in_admin(app, password)
        await admin.post("/secrets", name="api key", value="sk-live-0123456789")
        await fundaments.security.register_user("bob", "a long and private passphrase")
        bob = Browser(app, ip="198.51.100.5")
        await bob.get("/login")
        assert (
            await bob.post("/login", username="bob", password="a long and private passphrase")
        ).url.path == ("/dashboard")
        admin_user = await fundaments.security.get_user_by_username("admin")
        bob_user = await fundaments.security.get_user_by_username("bob")
        assert admin_user is not None and bob_user is not None
        store = app.state.secrets  # type: ignore[attr-defined]
        store.put(bob_user.id, "api key", store.get(admin_user.id, "api key"))  # the row copied
        stolen = await bob.post("/secrets/reveal", name="api key")
        assert stolen.status_code == 500 and "cannot be decrypted" in stolen.text
        assert "sk-live-0123456789" not in stolen.text
        own = await admin.post("/secrets/reveal", name="api key")
        assert '<pre id="revealed-value">sk-live-0123456789</pre>' in own.text
        await admin.close()
        await bob.close()
    finally:
        app.state.secrets.close()  # type: ignore[attr-defined]


# --- reencrypt_column's compare-and-swap ------------------------------------------------------------------


async def test_reencrypt_column_does_not_overwrite_a_value_changed_meanwhile(
    make_settings: Callable[..., Settings], fundaments: Fundaments, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fundaments.security import key_rotation

    db = fundaments["db"]
    await db.execute("CREATE TABLE app_tokens (id INTEGER PRIMARY KEY, secret TEXT)")
    old = fundaments.security
    await db.executemany(
        "INSERT INTO app_tokens (id, secret) VALUES ($1, $2)",
        [(i, old.encrypt_data(f"v{i}")) for i in range(1, 6)],
    )
    rotated = await initialize_fundaments(
        make_settings(master_encryption_key=NEW_KEY, master_encryption_key_previous=TEST_MASTER_KEY),
        configure_logs=False,
    )
    written = rotated.security.encrypt_data("written meanwhile")
    real_read_batch = key_rotation.read_batch

    async def read_then_an_application_writes(tx: Any, ref: Any, after: Any, limit: int) -> Any:
        rows = await real_read_batch(tx, ref, after, limit)  # the real query, on the real database
        if after is None:  # the application stores a new value in row 3 after the batch was read
            if db.dialect == "postgresql":  # from another connection, committed at once
                writer = await asyncpg.connect(db.dsn)
                try:
                    await writer.execute("UPDATE app_tokens SET secret = $1 WHERE id = 3", written)
                finally:
                    await writer.close()
            else:  # SQLite's write lock is the batch's: the change comes from inside it
                await tx.execute("UPDATE app_tokens SET secret = $1 WHERE id = 3", written)
        return rows

    monkeypatch.setattr(key_rotation, "read_batch", read_then_an_application_writes)
    try:
        report = await rotated.security.reencrypt_column("app_tokens", "secret")
        assert (report.reencrypted, report.changed_meanwhile, report.failed) == (4, 1, 0)
        value = await db.fetchval("SELECT secret FROM app_tokens WHERE id = 3")
        assert value == written  # the writer's value, not the re-encrypted old one
        assert rotated.security.decrypt_data(value) == "written meanwhile"
    finally:
        await rotated.close()


# --- a huge password is refused before any hash -----------------------------------------------------------


class CountingHasher(Hasher):
    """A real hasher that counts what it computes (injected in place of the configured ones)."""

    def __init__(self, inner: Hasher) -> None:
        self.inner = inner
        self.algorithm = inner.algorithm
        self.computed = 0

    def handles(self, encoded: str) -> bool:
        return self.inner.handles(encoded)

    def is_valid(self, encoded: str) -> bool:
        return self.inner.is_valid(encoded)

    def encode(self, password: str) -> str:
        self.computed += 1
        return self.inner.encode(password)

    def verify(self, password: str, encoded: str) -> bool:
        self.computed += 1
        return self.inner.verify(password, encoded)

    def must_update(self, encoded: str) -> bool:
        return self.inner.must_update(encoded)


def count_hashes(f: Fundaments) -> Callable[[], int]:
    passwords = f["user_handler"].passwords
    counting = [CountingHasher(h) for h in passwords.verifiers]
    passwords.hasher = counting[passwords.verifiers.index(passwords.hasher)]
    passwords.verifiers = counting
    return lambda: sum(h.computed for h in counting)


async def test_a_5000_character_password_is_refused_without_computing_a_hash(
    fundaments: Fundaments, request_data: dict[str, str]
) -> None:
    security = fundaments.security
    user = await security.register_user("dev@example.com", PASSWORD)
    await security.user_login("dev@example.com", PASSWORD, request_data)  # the dummy hash exists too
    hashes = count_hashes(fundaments)
    huge = "x" * 5000
    for username in ("dev@example.com", "nobody@example.com"):
        result = await security.user_login(username, huge, request_data)
        assert result.reason is LoginFailure.INVALID_CREDENTIALS
    with pytest.raises(AuthenticationError):
        await security.change_password(user.id, huge, NEW_PASSWORD)
    assert hashes() == 0
    wrong = await security.user_login("dev@example.com", "an ordinary wrong password", request_data)
    assert wrong.reason is LoginFailure.INVALID_CREDENTIALS
    assert hashes() == 1  # the counter sees a verification when one happens
