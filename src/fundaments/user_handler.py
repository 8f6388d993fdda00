"""Accounts: registration, credential checks and brute-force protection.

A login's credential half runs in a fixed order, each gate cheaper than the next:

1. a place in the hashing pool (else ``BUSY`` at once);
2. the client IP's failure window (else ``THROTTLED``);
3. the account's lock — or, when the client presents a valid device cookie for this account, that
   device's own lock (OWASP "device cookies": failures from elsewhere do not lock out a known
   device). Passing this gate *claims* one failure in a single conditional UPDATE before the hash
   is computed, so however many attempts race, at most ``LOCKOUT_THRESHOLD`` are verified;
4. the hash, on a worker thread; an unknown username is verified against a dummy hash of the
   current scheme so it costs the same time.

A failure is counted and audited in its own transaction. A success writes nothing here: the
caller resets the counters, stores an upgraded hash and records the device in its own transaction
with :meth:`UserHandler.complete_login`, together with the session it creates. See docs/accounts.md.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import ipaddress
import logging
import secrets
import statistics
import time
import unicodedata
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from fundaments.audit import AuditTrail
from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.emails import EmailAddress, email_key_or_none, normalize_email
from fundaments.errors import (
    CheckInFlightError,
    ConstraintViolation,
    EmailInUseError,
    InvalidPasswordHashError,
    InvalidUsernameError,
    UnknownUserError,
    UserExistsError,
)
from fundaments.models import LoginFailure, RequestContext, User
from fundaments.passwords import HashingBusyError, PasswordService
from fundaments.store import Database, Executor, Row
from fundaments.store import users as queries
from fundaments.usernames import lookalike_key, require_single_script

log = logging.getLogger(__name__)

MAX_USERNAME_LENGTH = 254
# Control, format (zero-width), surrogate, private-use and unassigned characters, line and
# paragraph separators: invisible or ambiguous, they would make look-alike usernames possible.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
PERMANENT_LOCK_SECONDS = 1e12  # LOCKOUT_MAX_SECONDS=0: ~31,700 years, i.e. until an administrator unlocks
DEVICE_TOKEN_BYTES = 32
DEVICE_IDLE_SECONDS = 90 * 86_400  # a device cookie unused this long no longer bypasses a lock
DEVICES_PER_USER = 20  # kept after a prune
DEVICE_PRUNE_SLACK = 10  # prune once this many more have piled up: one DELETE per ten new devices
MAX_DEVICE_TOKEN_LENGTH = 256
IPV6_THROTTLE_PREFIX = 64  # one IPv6 client usually holds a whole /64
IP_PRUNE_EVERY = 1_024  # IP claims between deletions of expired IP windows
VERIFICATION_SAMPLES = 64  # recent verified wrong attempts' durations: how long a locked refusal takes
MAX_DOUBLINGS = 40  # keeps the SQL shift (1 << lock_count) far inside 64 bits whatever the settings
USERNAMES_PER_QUERY = 500  # ids per IN (...) list: far below both drivers' parameter limits
LOOKALIKE_BACKFILL_BATCH = 500  # accounts per transaction when start() gives old rows their key
LOOKALIKE_BACKFILL_TRIES = 3  # another instance backfilling the same rows at once: try the batch again


def normalize_username(username: str) -> str:
    """The stored form of a username: NFKC, case-folded, trimmed; InvalidUsernameError if unusable.

    ``Alice@Example.com``, ``alice@example.com`` and ``ａlice@example.com`` (full-width a) all
    become ``alice@example.com``: one account.
    """
    if not isinstance(username, str):
        raise InvalidUsernameError("username must be a string")
    if len(username) > 4 * MAX_USERNAME_LENGTH:  # refuse before spending time normalizing it
        raise InvalidUsernameError(f"username is longer than {MAX_USERNAME_LENGTH} characters")
    name = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", username).casefold()).strip()
    if not name:
        raise InvalidUsernameError("username is empty")
    if len(name) > MAX_USERNAME_LENGTH:
        raise InvalidUsernameError(f"username is longer than {MAX_USERNAME_LENGTH} characters")
    if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in name):
        raise InvalidUsernameError("username contains control or invisible characters")
    return name


def hash_device_token(token: object) -> bytes | None:
    """SHA-256 of a device token, or None for anything that cannot be one of ours."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_DEVICE_TOKEN_LENGTH or not token.isascii():
        return None
    return hashlib.sha256(token.encode("ascii")).digest()


def throttle_key(ip_address: str) -> str:
    """The IP-throttle bucket of a client: the address itself, or its /64 for IPv6."""
    try:
        address = ipaddress.ip_address(ip_address.strip())
    except ValueError:
        return ip_address[:64]
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.ip_network(f"{address}/{IPV6_THROTTLE_PREFIX}", strict=False))
    return str(address)


def _printable(text: object) -> str:
    """An unusable username as the audit can store it: NUL and other invisible characters replaced."""
    raw = text if isinstance(text, str) else ""
    return "".join(ch if ch.isprintable() else "\ufffd" for ch in raw[:MAX_USERNAME_LENGTH])


def _user(row: Row, now: float, roles: builtins.list[str] | tuple[str, ...] = ()) -> User:
    locked_until = row["locked_until"]
    last_login = row["last_login_at"]
    return User(
        id=int(row["id"]),
        username=row["username"],
        is_disabled=bool(row["is_disabled"]),
        must_change_password=bool(row["must_change_password"]),
        created_at=float(row["created_at"]),
        roles=tuple(roles),
        email=row["email"],
        email_verified=bool(row["email_verified"]),
        locked_until=float(locked_until) if locked_until is not None and locked_until > now else None,
        last_login_at=None if last_login is None else float(last_login),
    )


@dataclass(frozen=True, slots=True)
class PasswordCheck:
    """The outcome of :meth:`UserHandler.check_current_password`; truthy when the password matched.

    ``locked``: refused unverified, the account (or device) being locked; ``caused_lock``: this
    wrong password was the one that locked it.
    """

    matched: bool
    locked: bool = False
    caused_lock: bool = False
    device_hash: bytes | None = field(default=None, repr=False)

    def __bool__(self) -> bool:
        return self.matched


@dataclass(frozen=True, slots=True)
class CredentialCheck:
    """The outcome of :meth:`UserHandler.authenticate`; truthy only when the password was right."""

    user: User | None
    reason: LoginFailure | None
    username: str  # normalized (or as typed, when it cannot be normalized): for the audit
    upgraded_hash: str | None = field(default=None, repr=False)
    stored_hash: str | None = field(default=None, repr=False)  # what upgraded_hash replaces
    device_hash: bytes | None = field(default=None, repr=False)  # the valid device cookie presented
    device_token: str | None = field(default=None, repr=False)
    devices: int = 0  # devices the account had: complete_login prunes only when at the limit
    ip_claim: str | None = None  # the IP-throttle key whose claim complete_login releases
    locked_until: float | None = None  # set when this attempt locked the account (not a device)

    def __bool__(self) -> bool:
        return self.reason is None and self.user is not None


class UserHandler:
    """Accounts and their brute-force protection, on the injected database, clock and audit trail."""

    def __init__(
        self, db: Database, settings: Settings, clock: Clock, audit: AuditTrail, passwords: PasswordService
    ) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._audit = audit
        self._passwords = passwords
        self._threshold = settings.lockout_threshold
        self._lock = self._lock_parameters(settings)
        self._claims_since_prune = 0
        self.verification_count = 0  # password verifications this process ran for logins (tests, metrics)
        self._attempt_seconds: deque[float] = deque(maxlen=VERIFICATION_SAMPLES)
        self._password_checks: set[str] = set()  # change_password checks in flight, per session/user

    @staticmethod
    def _lock_parameters(settings: Settings) -> tuple[float, int, float]:
        """(base seconds, doublings before the cap, cap seconds) for the claim statement."""
        base, cap = float(settings.lockout_base_seconds), float(settings.lockout_max_seconds)
        if cap == 0:
            return PERMANENT_LOCK_SECONDS, 0, PERMANENT_LOCK_SECONDS
        doublings = 0
        while base * 2**doublings < cap and doublings < MAX_DOUBLINGS:
            doublings += 1
        return base, doublings, cap

    @property
    def passwords(self) -> PasswordService:
        return self._passwords

    async def start(self) -> None:
        """Delete IP-throttle windows that have run out; give accounts from before revision 0002
        their look-alike key; make the dummy hash for unknown users."""
        async with self._db.transaction() as tx:
            await queries.prune_ip_throttle(tx, self._clock.now() - self._settings.throttle_ip_window)
        await self.backfill_lookalike_keys()
        await asyncio.to_thread(self._passwords.dummy_hash)

    async def backfill_lookalike_keys(self) -> int:
        """Give every account without one its look-alike key; the number of keys written.

        Idempotent and cheap once done (an indexed ``IS NULL`` read). Two existing accounts whose
        names look alike both stay: the one holding the key keeps it (in id order, the older), the
        other keeps NULL — a warning names both ids — until an administrator renames or deletes one.
        """
        written, after = 0, 0
        while rows := await queries.users_without_lookalike_key(self._db, after, LOOKALIKE_BACKFILL_BATCH):
            for attempt in range(LOOKALIKE_BACKFILL_TRIES):
                try:
                    filled, collisions = await self._backfill_batch(rows)
                except ConstraintViolation:  # another instance wrote one of these keys meanwhile
                    if attempt == LOOKALIKE_BACKFILL_TRIES - 1:
                        raise
                    continue
                break
            written += filled
            for user_id, holder in collisions:
                log.warning(
                    "accounts %d and %d have look-alike usernames (Unicode TR 39); account %d keeps "
                    "no look-alike key: rename or delete one of them",
                    holder,
                    user_id,
                    user_id,
                )
            after = int(rows[-1]["id"])
        return written

    async def _backfill_batch(self, rows: builtins.list[Row]) -> tuple[int, builtins.list[tuple[int, int]]]:
        filled, collisions = 0, []
        async with self._db.transaction() as tx:
            for row in rows:
                key = lookalike_key(row["username"])
                if await queries.set_lookalike_key(tx, int(row["id"]), key):
                    filled += 1
                elif (holder := await queries.lookalike_key_holder(tx, key)) not in (None, int(row["id"])):
                    collisions.append((int(row["id"]), int(holder)))
        return filled, collisions

    async def close(self) -> None:
        """Stop the hashing threads."""
        self._passwords.close()

    # --- registration and passwords -------------------------------------------------------------
    normalize_username = staticmethod(normalize_username)

    async def check_new_email(self, email: str) -> EmailAddress:
        """The normalized address of a new account or an address change, once no other account
        uses it (as its address or as its username). Raises InvalidEmailError, EmailInUseError."""
        address = normalize_email(email)
        if await queries.email_key_holder(self._db, address.key) is not None:
            raise EmailInUseError("another account already uses this email address")
        return address

    async def check_new_username(self, username: str) -> str:
        """The normalized name of a new account, once the look-alike rules accept it.

        Cheap (no hash): call it before :meth:`prepare_password`, so a refused name costs no
        hashing. Raises InvalidUsernameError (unusable, or mixing scripts: see
        fundaments.usernames) or UserExistsError when the name, or one that looks like it, is
        taken. :meth:`create` checks again, atomically.
        """
        name = normalize_username(username)
        require_single_script(name)
        holder = await queries.name_holder(self._db, name, lookalike_key(name))
        if holder is not None:
            raise self._exists(name, holder)
        return name

    @staticmethod
    def _exists(name: str, holder: Row) -> UserExistsError:
        if holder["username"] == name:
            return UserExistsError(f"an account named {name!r} already exists")
        if holder["email_key"] == name:
            return UserExistsError(
                f"{name!r} is another account's email address, which logs in as that account; "
                "choose another username"
            )
        return UserExistsError(
            f"an account whose name looks like {name!r} already exists: names that look alike "
            "(Unicode TR 39 confusables, accents ignored) cannot both be used; choose another username"
        )

    async def prepare_password(self, password: str, *, username: str) -> str:
        """The current scheme's hash of a new password, after the policy accepted it.

        Raises PasswordPolicyError listing every rule it breaks, or HashingBusyError (a
        ServiceUnavailable) when the hashing pool is full. Both run on a hashing thread: the first
        policy check loads the common-password list.
        """
        if not isinstance(password, str):
            raise TypeError("password must be a string")
        pool = self._passwords.pool
        with pool.reserve():
            return await pool.run(self._check_and_encode, password, username)

    def _check_and_encode(self, password: str, username: str) -> str:
        self._passwords.check_policy(password, username=username)
        return self._passwords.encode(password)

    def validate_imported_hash(self, password_hash: str) -> str:
        """``password_hash`` unchanged if it is a supported format; InvalidPasswordHashError otherwise."""
        return self._passwords.validate_import(password_hash)

    async def create(
        self,
        tx: Executor,
        username: str,
        password_hash: str,
        *,
        must_change_password: bool = False,
        actor_user_id: int | None = None,
        email: str | None = None,
    ) -> User:
        """Insert an account in ``tx``; UserExistsError when its normalized username, or one that
        looks like it (:func:`fundaments.usernames.lookalike_key`), is taken; EmailInUseError when
        its address is; InvalidUsernameError when it mixes scripts, InvalidEmailError for an
        address that is not one."""
        name = normalize_username(username)
        require_single_script(name)
        address = normalize_email(email) if email is not None else None
        hasher = self._passwords.identify(password_hash)
        if hasher is None:
            raise InvalidPasswordHashError(
                "password_hash is not a supported hash (prepare_password makes one)"
            )
        key = lookalike_key(name)
        row = await queries.insert_user(
            tx,
            name,
            key,
            password_hash,
            must_change_password,
            self._clock.now(),
            address.address if address else None,
            address.key if address else None,
        )
        if row is None:
            holder = await queries.name_holder(tx, name, key)
            if holder is not None:
                raise self._exists(name, holder)
            if address is not None and await queries.email_key_holder(tx, address.key) is not None:
                raise EmailInUseError("another account already uses this email address")
            # the conflicting account was deleted in between: still taken now
            raise UserExistsError(f"an account named {name!r} already exists")
        user = _user(row, self._clock.now())
        await self._audit.record(
            "user.registered",
            tx=tx,
            actor_user_id=actor_user_id,
            subject_user_id=user.id,
            username=name,
            details={
                "hash_algorithm": hasher.algorithm,
                "must_change_password": must_change_password,
                "email": address is not None,
            },
        )
        return user

    async def check_current_password(
        self, user_id: int, password: str, ctx: RequestContext | None, *, flight_key: str
    ) -> PasswordCheck:
        """Check the account's current password (a password change) as a login would: it claims a
        place under the account's lock — or, with a live device cookie of this account in ``ctx``,
        under that device's — before any hash, so a stolen session cannot guess at hashing speed.

        ``flight_key`` (the session, or the user without one) may have one check in flight at a
        time: a flood from one session is refused at once instead of filling the hashing pool.
        Raises UnknownUserError, HashingBusyError (the pool is full), CheckInFlightError.
        """
        if flight_key in self._password_checks:
            raise CheckInFlightError(
                "a password check for this session is already running; wait for its answer"
            )
        self._password_checks.add(flight_key)
        try:
            with self._passwords.pool.reserve():
                return await self._check_current_password(user_id, password, ctx)
        finally:
            self._password_checks.discard(flight_key)

    async def _check_current_password(
        self, user_id: int, password: str, ctx: RequestContext | None
    ) -> PasswordCheck:
        now = self._clock.now()
        stored = await queries.password_hash(self._db, user_id)
        if stored is None:
            raise UnknownUserError(f"no account has id {user_id}")
        device_hash = hash_device_token(ctx.device_token) if ctx is not None and ctx.device_token else None
        if device_hash is not None and not await queries.device_of_user(
            self._db, device_hash, user_id, now - DEVICE_IDLE_SECONDS
        ):
            device_hash = None
        typed: object = password
        password = typed if isinstance(typed, str) else ""
        verification: asyncio.Future[tuple[bool, str | None]] | None = None
        try:
            async with self._db.transaction() as tx:
                claim = await self._claim_attempt(tx, user_id, device_hash, now)
                if claim is not None:
                    verification = asyncio.ensure_future(self._verify(password, stored))
        except BaseException:
            if verification is not None:
                verification.cancel()
            raise
        if claim is None or verification is None:
            await self._audit.record_coalesced(
                "password.change_failed",
                key=f"locked|{user_id}",
                subject_user_id=user_id,
                client=ctx,
                details={"reason": "locked", "device": device_hash is not None},
            )
            return PasswordCheck(matched=False, locked=True, device_hash=device_hash)
        matched, _upgraded = await verification  # the new password is hashed afresh anyway
        if matched:
            return PasswordCheck(matched=True, device_hash=device_hash)
        async with self._db.transaction() as tx:
            await self._audit.record(
                "password.change_failed",
                outcome="failure",
                tx=tx,
                actor_user_id=user_id,
                subject_user_id=user_id,
                client=ctx,
                details={"reason": "invalid_credentials", "device": device_hash is not None},
            )
            locked_now = await self._audit_lock(tx, None, user_id, ctx, claim, device=device_hash is not None)
        return PasswordCheck(matched=False, caused_lock=locked_now, device_hash=device_hash)

    async def reset_failures_after_change(self, tx: Executor, user_id: int, check: PasswordCheck) -> None:
        """After a password change that proved the current password: clear the counter it claimed."""
        if check.device_hash is not None:
            await queries.touch_device(tx, check.device_hash, self._clock.now())
        else:
            await queries.reset_user_failures(tx, user_id, self._clock.now())

    async def set_password(
        self,
        tx: Executor,
        user_id: int,
        password_hash: str,
        *,
        actor_user_id: int | None = None,
        must_change: bool = False,
        via: str | None = None,
    ) -> None:
        """Store a new hash; bumps the privilege epoch and sets must_change_password as given
        (cleared by default: the owner chose it). Audited ``password.changed``, with
        ``set_by_administrator`` when another account set it and ``via`` (``"reset"``: a reset link)."""
        if self._passwords.identify(password_hash) is None:
            raise InvalidPasswordHashError(
                "password_hash is not a supported hash (prepare_password makes one)"
            )
        now = self._clock.now()
        if not await queries.set_password(tx, user_id, password_hash, now, must_change=must_change):
            raise UnknownUserError(f"no account has id {user_id}")
        details: dict[str, object] = {"must_change": must_change}
        if actor_user_id is not None and actor_user_id != user_id:
            details["set_by_administrator"] = True
        if via is not None:
            details["via"] = via
        await self._audit.record(
            "password.changed", tx=tx, actor_user_id=actor_user_id, subject_user_id=user_id, details=details
        )

    async def set_email(
        self, tx: Executor, user_id: int, address: EmailAddress | None, *, actor_user_id: int | None = None
    ) -> None:
        """Give the account ``address`` (unverified) or none, in ``tx``; audited ``email.changed``
        (without the address: the audit trail keeps no contact data it does not need)."""
        key = address.key if address else None
        if not await queries.set_email(
            tx, user_id, address.address if address else None, key, self._clock.now()
        ):
            raise UnknownUserError(f"no account has id {user_id}")
        await self._audit.record(
            "email.changed",
            tx=tx,
            actor_user_id=actor_user_id,
            subject_user_id=user_id,
            details={"removed": address is None},
        )

    async def mark_email_verified(self, tx: Executor, user_id: int, email_key: str) -> bool:
        """Mark the account's address verified if it still is ``email_key``; audited ``email.verified``."""
        if not await queries.mark_email_verified(tx, user_id, email_key, self._clock.now()):
            return False
        await self._audit.record("email.verified", tx=tx, actor_user_id=user_id, subject_user_id=user_id)
        return True

    async def set_disabled(
        self, tx: Executor, user_id: int, disabled: bool, *, actor_user_id: int | None = None
    ) -> None:
        """Disable or enable an account in ``tx`` (disabling bumps its privilege epoch)."""
        if not await queries.set_disabled(tx, user_id, bool(disabled), self._clock.now()):
            raise UnknownUserError(f"no account has id {user_id}")
        kind = "user.disabled" if disabled else "user.enabled"
        await self._audit.record(kind, tx=tx, actor_user_id=actor_user_id, subject_user_id=user_id)

    async def enable(self, user_id: int, *, actor_user_id: int | None = None) -> None:
        """Enable an account in a transaction of its own."""
        async with self._db.transaction() as tx:
            await self.set_disabled(tx, user_id, False, actor_user_id=actor_user_id)

    async def clear_lock(self, tx: Executor, user_id: int) -> None:
        """Clear the account's (and its devices') failure counts and locks in ``tx``, unaudited:
        for a caller whose own event says why (an administrator's password reset)."""
        await queries.unlock_user(tx, user_id, self._clock.now())

    async def unlock(self, user_id: int, *, actor_user_id: int | None = None) -> bool:
        """Clear the account's lock, failure count and backoff, and those of its devices; False
        (nothing written, nothing audited) when neither the account nor a device of it is locked."""
        async with self._db.transaction() as tx:
            now = self._clock.now()
            locked = await queries.lock_state(tx, user_id, now)
            if locked is None:
                raise UnknownUserError(f"no account has id {user_id}")
            if not locked:
                return False
            await queries.unlock_user(tx, user_id, now)
            await self._audit.record(
                "account.unlocked", tx=tx, actor_user_id=actor_user_id, subject_user_id=user_id
            )
        return True

    async def delete(self, tx: Executor, user_id: int, *, actor_user_id: int | None = None) -> None:
        """Delete the account in ``tx`` with its devices, roles and tokens (its sessions: the
        caller ends them first, audited); ``user.deleted`` keeps its id and username."""
        row = await queries.delete_user(tx, user_id)
        if row is None:
            raise UnknownUserError(f"no account has id {user_id}")
        await self._audit.record(
            "user.deleted",
            tx=tx,
            actor_user_id=actor_user_id,
            subject_user_id=user_id,
            username=row["username"],
        )

    # --- reading --------------------------------------------------------------------------------
    async def _with_roles(self, db: Executor, row: Row | None) -> User | None:
        if row is None:
            return None
        roles = await queries.role_names_of(db, [int(row["id"])])
        return _user(row, self._clock.now(), roles.get(int(row["id"]), ()))

    async def get(self, user_id: int, *, tx: Executor | None = None) -> User | None:
        db = tx or self._db
        return await self._with_roles(db, await queries.user_by_id(db, user_id))

    async def get_by_username(self, username: str) -> User | None:
        try:
            name = normalize_username(username)
        except InvalidUsernameError:
            return None
        return await self._with_roles(self._db, await queries.user_by_username(self._db, name))

    async def usernames(self, user_ids: Iterable[int]) -> dict[int, str]:
        """The username of each existing account among ``user_ids``, in one query per 500 ids."""
        wanted = sorted(set(user_ids))
        found: dict[int, str] = {}
        for start in range(0, len(wanted), USERNAMES_PER_QUERY):
            rows = await queries.usernames(self._db, wanted[start : start + USERNAMES_PER_QUERY])
            found.update((int(row["id"]), str(row["username"])) for row in rows)
        return found

    async def get_by_email(self, email: str) -> User | None:
        key = email_key_or_none(email)
        if key is None:
            return None
        return await self._with_roles(self._db, await queries.user_by_email_key(self._db, key))

    async def list(
        self, limit: int = 100, *, after_id: int = 0, search: str | None = None
    ) -> builtins.list[User]:
        """Accounts in id order after ``after_id``, ``limit`` (at most 1,000) of them; ``search``
        matches part of the username or address, case-insensitively. Two queries whatever the page."""
        limit = max(0, min(int(limit), 1000))
        needle = (
            unicodedata.normalize("NFKC", search).casefold().strip()[:MAX_USERNAME_LENGTH] if search else None
        )
        rows = await queries.list_users(self._db, limit, max(0, int(after_id)), needle or None)
        roles = await queries.role_names_of(self._db, [int(row["id"]) for row in rows])
        now = self._clock.now()
        return [_user(row, now, roles.get(int(row["id"]), ())) for row in rows]

    async def list_from_offset(self, limit: int, offset: int) -> builtins.list[User]:
        """The first wave's ``offset`` paging, kept for callers of it: walks the keys to ``offset``."""
        after_id = 0
        while offset > 0:
            step = await self.list(min(offset, 1000), after_id=after_id)
            if not step:
                return []
            after_id, offset = step[-1].id, offset - len(step)
        return await self.list(limit, after_id=after_id)

    # --- the credential half of a login ---------------------------------------------------------
    async def authenticate(self, username: str, password: str, ctx: RequestContext) -> CredentialCheck:
        """Check a username and password behind the IP throttle and the account or device lock.

        Failures are counted and audited here, each in its own transaction; a success is not
        written: pass the result to :meth:`complete_login` in the caller's transaction.
        """
        try:
            name = normalize_username(username)
        except InvalidUsernameError:
            name = None
        audit_name = name if name is not None else _printable(username)
        email_key = ""  # "" is no one's address
        login_with = self._settings.login_with
        if login_with != "username" and isinstance(username, str) and "@" in username:
            email_key = email_key_or_none(username) or ""
        if login_with == "email":
            name = None
        ctx = RequestContext.coerce(ctx)
        typed: object = password  # untrusted input: a non-string never matches
        password = typed if isinstance(typed, str) else ""
        started = time.perf_counter()
        verified = self.verification_count
        try:
            with self._passwords.pool.reserve():
                check = await self._authenticate(name, email_key, audit_name, password, ctx)
        except HashingBusyError:
            await self._record_refusal(LoginFailure.BUSY, audit_name, None, ctx)
            return CredentialCheck(None, LoginFailure.BUSY, audit_name)
        elapsed = time.perf_counter() - started
        if check.reason is LoginFailure.LOCKED:
            # No hash is computed for a locked account, but answering at once would tell a locked
            # account from an unknown one (which costs a dummy verification): take as long as a
            # verified attempt takes, waiting outside the hashing pool (no CPU, no place).
            await asyncio.sleep(max(0.0, self._typical_attempt_seconds() - elapsed))
        elif check.reason is LoginFailure.INVALID_CREDENTIALS and self.verification_count == verified + 1:
            # One verified wrong attempt, start to end: what a locked refusal must look like (a
            # success writes less and would make the refusal shorter than an unknown name's).
            self._attempt_seconds.append(elapsed)
        return check

    async def _authenticate(
        self, name: str | None, email_key: str, audit_name: str, password: str, ctx: RequestContext
    ) -> CredentialCheck:
        now = self._clock.now()
        ip_key = throttle_key(ctx.ip_address)
        window = float(self._settings.throttle_ip_window)
        limit = self._settings.throttle_ip_failures
        presented = hash_device_token(ctx.device_token) if ctx.device_token else None
        # One read answers every gate: the IP's open window, the account ("" is no one's name) and
        # whether the device cookie presented is a live one of that account.
        row = await queries.login_gate(
            self._db, name or "", ip_key, now - window, presented, now - DEVICE_IDLE_SECONDS, email_key
        )
        device_hash = presented if row["device_hash"] is not None else None
        # A known device of this account passes the IP throttle: on a shared address (an office
        # NAT) others' failures must not lock it out (OWASP device cookies). Its own lock still holds.
        if device_hash is None and (row["ip_failures"] or 0) >= limit:
            await self._record_refusal(LoginFailure.THROTTLED, audit_name, None, ctx)
            return CredentialCheck(None, LoginFailure.THROTTLED, audit_name)

        user = _user(row, now) if row["id"] is not None else None
        stored: str | None = row["password_hash"] if user is not None else None
        claim: Row | None = None
        throttled = False
        verification: asyncio.Future[tuple[bool, str | None]] | None = None
        try:
            async with self._db.transaction() as tx:
                # Claims before the hash: the IP's place in its window, then the account's (or the
                # device's) place below the lock threshold. However many attempts race, in however
                # many processes, at most the limits get verified.
                if device_hash is None:
                    ip_count = await queries.claim_ip_attempt(tx, ip_key, now, window, limit)
                    throttled = ip_count is None
                    if ip_count == limit:
                        await self._audit_ip_throttled(tx, ctx, ip_key, ip_count)
                    self._claims_since_prune += 1
                    if self._claims_since_prune >= IP_PRUNE_EVERY:  # windows of IPs long gone
                        self._claims_since_prune = 0
                        await queries.prune_ip_throttle(tx, now - window)
                if not throttled:
                    if user is None:
                        # An unknown name fails whatever the password, but it is verified against
                        # the dummy hash and audited afterwards, as a known name's failure is, so
                        # it costs the same time.
                        verification = asyncio.ensure_future(self._verify(password, None))
                    else:
                        claim = await self._claim_attempt(tx, user.id, device_hash, now)
                        if claim is not None:
                            # The claim is ours from here (the row, or SQLite's write lock, is held
                            # until the commit), so the hash may start while the commit is on its way.
                            verification = asyncio.ensure_future(self._verify(password, stored))
        except BaseException:
            if verification is not None:
                verification.cancel()
            raise
        if throttled:
            await self._record_refusal(LoginFailure.THROTTLED, audit_name, None, ctx)
            return CredentialCheck(None, LoginFailure.THROTTLED, audit_name)
        if user is None:
            assert verification is not None
            await verification
            await self._record_failure(audit_name, None, ctx, None, device=False)
            return CredentialCheck(None, LoginFailure.INVALID_CREDENTIALS, audit_name)
        if claim is None or verification is None:
            # Refused before any hash; the IP's claim stays counted, so hammering a locked account
            # runs into the IP throttle too.
            await self._record_refusal(
                LoginFailure.LOCKED, audit_name, user.id, ctx, device=device_hash is not None
            )
            return CredentialCheck(user, LoginFailure.LOCKED, audit_name)

        matched, upgraded = await verification
        if not matched:
            locked = await self._record_failure(
                audit_name, user.id, ctx, claim, device=device_hash is not None
            )
            locked_until = float(claim["locked_until"]) if locked and device_hash is None else None
            return CredentialCheck(
                user, LoginFailure.INVALID_CREDENTIALS, audit_name, locked_until=locked_until
            )

        ip_claim = ip_key if device_hash is None else None
        if user.is_disabled:
            async with self._db.transaction() as tx:
                if device_hash is not None:
                    await queries.release_device_attempt(tx, device_hash)
                else:
                    await queries.release_user_attempt(tx, user.id)
                if ip_claim is not None:
                    await queries.release_ip_attempt(tx, ip_claim)
                await self._audit_failure(tx, LoginFailure.DISABLED, audit_name, user.id, ctx)
            return CredentialCheck(user, LoginFailure.DISABLED, audit_name)

        return CredentialCheck(
            user,
            None,
            audit_name,
            upgraded_hash=upgraded,
            stored_hash=stored,
            device_hash=device_hash,
            device_token=ctx.device_token if device_hash is not None else None,
            devices=int(row["devices"]),
            ip_claim=ip_claim,
        )

    async def _claim_attempt(
        self, tx: Executor, user_id: int, device_hash: bytes | None, now: float
    ) -> Row | None:
        """Claim a place below the lock threshold — the device's own with a live device cookie of
        the account, else the account's — or None while that lock holds."""
        if device_hash is not None:
            return await queries.claim_device_attempt(tx, device_hash, now, self._threshold, self._lock)
        return await queries.claim_user_attempt(tx, user_id, now, self._threshold, self._lock)

    async def _verify(self, password: str, stored: str | None) -> tuple[bool, str | None]:
        """Whether the password matches, and its upgraded hash when the stored one is due: one trip
        to a hashing thread (the caller holds a pool place). ``stored=None`` is an unknown user,
        verified against the dummy hash of the current scheme."""
        if len(password) > self._settings.password_max_length:
            return False, None  # no such password can have been set; do not spend a hash on it
        pool = self._passwords.pool
        self.verification_count += 1
        if stored is None:
            stored = self._passwords.cached_dummy_hash() or await pool.run(self._passwords.dummy_hash)
        return await pool.run(self._check_password, password, stored)

    def _typical_attempt_seconds(self) -> float:
        """The median duration of the last verified wrong attempts (as their callers waited)."""
        if not self._attempt_seconds:
            return 0.0
        return float(statistics.median(self._attempt_seconds))

    def _check_password(self, password: str, stored: str) -> tuple[bool, str | None]:
        if not self._passwords.verify(password, stored):
            return False, None
        if self._passwords.must_update(stored):
            return True, self._passwords.encode(password)
        return True, None

    async def complete_login(self, tx: Executor, check: CredentialCheck, ctx: RequestContext) -> str:
        """Record a successful check in ``tx``: reset the counters, store an upgraded hash, record
        the device. Returns the device token for the client to keep (the one presented, or a new one).
        """
        if not check or check.user is None:
            raise ValueError("complete_login needs a successful CredentialCheck")
        user_id = check.user.id
        now = self._clock.now()
        # A login through a device cookie leaves the account's own counter alone: resetting it
        # would hand an attacker, who cannot use that cookie, a fresh set of guesses.
        await queries.record_login(tx, user_id, now, reset_failures=check.device_hash is None)
        await self._record_right_password(tx, check, now)
        if check.device_hash is not None and check.device_token is not None:
            await queries.touch_device(tx, check.device_hash, now)
            return check.device_token
        token = secrets.token_urlsafe(DEVICE_TOKEN_BYTES)
        token_hash = hash_device_token(token)
        assert token_hash is not None
        await queries.insert_device(tx, token_hash, user_id, now)
        if check.devices + 1 >= DEVICES_PER_USER + DEVICE_PRUNE_SLACK:
            await queries.prune_devices(tx, user_id, DEVICES_PER_USER)
        return token

    async def _record_right_password(self, tx: Executor, check: CredentialCheck, now: float) -> None:
        """What a right password changes whatever follows: the IP's claim released, an upgraded hash."""
        assert check.user is not None
        if check.ip_claim is not None:  # the right password is not a failure of this IP
            await queries.release_ip_attempt(tx, check.ip_claim)
        if (
            check.upgraded_hash is not None
            and check.stored_hash is not None
            and await queries.replace_hash(tx, check.user.id, check.stored_hash, check.upgraded_hash, now)
        ):
            old = self._passwords.identify(check.stored_hash)
            await self._audit.record(
                "password.upgraded",
                tx=tx,
                subject_user_id=check.user.id,
                username=check.username,
                details={
                    "from": old.algorithm if old else "unknown",
                    "to": self._passwords.hasher.algorithm,
                },
            )

    async def complete_password_step(self, tx: Executor, check: CredentialCheck) -> None:
        """Record a right password of an account with a second factor, in ``tx``: the IP's claim
        released, an upgraded hash stored and this attempt's claim on the lock given back — but the
        failure count is *not* reset and nothing says "logged in" (no last login, no device):
        that is :meth:`complete_login`'s, after the second factor. Resetting here would give
        whoever knows the password a fresh set of second-factor guesses at every login."""
        if not check or check.user is None:
            raise ValueError("complete_password_step needs a successful CredentialCheck")
        await self._record_right_password(tx, check, self._clock.now())
        if check.device_hash is not None:
            await queries.release_device_attempt(tx, check.device_hash)
        else:
            await queries.release_user_attempt(tx, check.user.id)

    async def claim_second_factor(self, tx: Executor, user_id: int, device_hash: bytes | None) -> Row | None:
        """Claim a place below the lock threshold for a second-factor attempt, exactly as a password
        attempt does (the device's own lock with the device cookie the password came with, else the
        account's); None while that lock holds."""
        return await self._claim_attempt(tx, user_id, device_hash, self._clock.now())

    async def second_factor_failed(
        self,
        tx: Executor,
        username: str,
        user_id: int,
        ctx: RequestContext,
        claim: Row,
        *,
        device: bool,
        factor: str,
    ) -> float | None:
        """A wrong second factor (counted by its claim already), in ``tx``: audited ``login.failed``
        with reason ``invalid_second_factor``, and ``account.locked`` when it set the lock. The
        account's lock end when this attempt locked the account (not a device), else None."""
        await self._audit.record(
            "login.failed",
            outcome="failure",
            tx=tx,
            subject_user_id=user_id,
            username=username,
            client=ctx,
            details={"reason": "invalid_second_factor", "factor": factor, "device": device},
        )
        locked = await self._audit_lock(tx, username, user_id, ctx, claim, device=device)
        return float(claim["locked_until"]) if locked and not device else None

    async def release_second_factor_claim(self, tx: Executor, user_id: int) -> None:
        """Give back a second-factor attempt's claim that proved right without a login (a reset)."""
        await queries.release_user_attempt(tx, user_id)

    async def second_factor_locked(
        self, username: str, user_id: int, ctx: RequestContext, *, device: bool
    ) -> None:
        """A second-factor attempt refused unchecked, the account (or device) being locked:
        audited as a locked login is (coalesced per source)."""
        await self._record_refusal(LoginFailure.LOCKED, username, user_id, ctx, device=device)

    async def logged_in_user(self, tx: Executor, check: CredentialCheck) -> User:
        """The account of a login :meth:`complete_login` just recorded in ``tx``: as the check
        read it, with its roles, this login's time, and no lock once its counter was reset."""
        assert check.user is not None
        roles = await queries.role_names_of(tx, [check.user.id])
        locked_until = check.user.locked_until if check.device_hash is not None else None
        return replace(
            check.user,
            roles=tuple(roles.get(check.user.id, ())),
            last_login_at=self._clock.now(),
            locked_until=locked_until,
        )

    # --- failure bookkeeping --------------------------------------------------------------------
    async def _record_failure(
        self, username: str, user_id: int | None, ctx: RequestContext, claim: Row | None, *, device: bool
    ) -> bool:
        """A wrong password (counted by its claims already): audit it, with the lock it caused
        (whether it caused one)."""
        async with self._db.transaction() as tx:
            await self._audit_failure(
                tx, LoginFailure.INVALID_CREDENTIALS, username, user_id, ctx, device=device
            )
            return await self._audit_lock(tx, username, user_id, ctx, claim, device=device)

    async def _audit_lock(
        self,
        tx: Executor,
        username: str | None,
        user_id: int | None,
        ctx: RequestContext | None,
        claim: Row | None,
        *,
        device: bool,
    ) -> bool:
        """Audit ``account.locked`` when ``claim`` was the attempt that set the lock; whether it was."""
        if claim is None or int(claim["failed_attempts"]) != self._threshold:
            return False
        await self._audit.record(
            "account.locked",
            outcome="failure",
            tx=tx,
            subject_user_id=user_id,
            username=username,
            client=ctx,
            details={
                "scope": "device" if device else "account",
                "locked_until": float(claim["locked_until"]),
                "lock_count": int(claim["lock_count"]),
                "permanent": self._lock[0] == PERMANENT_LOCK_SECONDS,
            },
        )
        return True

    async def _audit_ip_throttled(self, tx: Executor, ctx: RequestContext, ip_key: str, count: int) -> None:
        await self._audit.record(
            "ip.throttled",
            outcome="failure",
            tx=tx,
            ip_address=ctx.ip_address,
            details={"key": ip_key, "failures": count, "window": self._settings.throttle_ip_window},
        )

    async def _record_refusal(
        self,
        reason: LoginFailure,
        username: str,
        user_id: int | None,
        ctx: RequestContext,
        *,
        device: bool = False,
    ) -> None:
        """An attempt refused before any hash (locked, throttled, busy): audited once per source and
        window (the first of a burst, then a count), so a flood of refusals is not a flood of writes."""
        await self._audit.record_coalesced(
            "login.failed",
            key=f"{reason.value}|{user_id if user_id is not None else ''}|{throttle_key(ctx.ip_address)}",
            subject_user_id=user_id,
            username=username,
            client=ctx,
            details={"reason": reason.value, "device": device},
        )

    async def _audit_failure(
        self,
        tx: Executor,
        reason: LoginFailure,
        username: str,
        user_id: int | None,
        ctx: RequestContext,
        *,
        device: bool = False,
    ) -> None:
        await self._audit.record(
            "login.failed",
            outcome="failure",
            tx=tx,
            subject_user_id=user_id,
            username=username,
            client=ctx,
            details={"reason": reason.value, "device": device},
        )
