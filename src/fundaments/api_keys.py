"""API keys for machine clients: prefixed tokens that reject typos offline, stored as keyed digests.

Format (as GitHub's tokens): ``fk_`` + 32 random base62 characters (190 bits from ``secrets``) +
the CRC32 of the first 35 characters in 6 base62 characters: 41 characters a secret scanner can
recognise, and a typo — any one character changed, dropped or added — fails :func:`checksum_ok`
with no I/O (CRC32 detects every error of one byte; a change of length fails the length check).
The checksum is not a secret and proves nothing: anyone can make a token that passes it.

Storage: only HMAC-SHA256 of the token under a key derived from the master key
(``EncryptionService.purpose_keys("api-key-digest")``), with the id of the master key it is under.
A database dump alone cannot test a candidate token. After a master-key rotation the digest under
the current key misses; each previous key is tried in turn (a handful of HMACs and indexed reads,
only for tokens that miss), and a key found under an old one is re-digested under the current key
at once, so it costs that once. Storing the key id alone cannot replace trying: the digest is what
finds the row.

Validation: checksum, digest, a bounded in-process cache (digest -> the key as read, for at most
``API_KEY_CACHE_SECONDS`` ≤ 1 s, so a revocation or a disabled owner elsewhere is seen within that),
then the database. A warm validation builds nothing: the cached :class:`ApiKey` is returned as is.
``last_used_at`` is kept in memory and written in batches every ``API_KEY_LAST_USED_INTERVAL``
seconds and at close. Refusals (unknown, revoked, expired, previous token past its overlap, owner
disabled, client IP not allowed) are audited ``api_key.refused`` with the reason, coalesced per
reason and source; malformed tokens are refused before any I/O and not audited at all.

Rotation keeps the id and issues a new token; the replaced token works for ``overlap_seconds``
more, then never again. A retried rotation — the client never saw the new token — keeps the
original token as the previous one instead of the never-used new one (see :meth:`ApiKeys.rotate`).
See docs/api-keys.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import math
import re
import secrets
import zlib
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, cast

from fundaments.access_control import validate_permission, wildcard_keys
from fundaments.audit import AuditTrail
from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.errors import (
    FundamentsError,
    InvalidArgument,
    PermissionDenied,
    UnknownApiKeyError,
    UnknownUserError,
)
from fundaments.models import ApiKey, ApiKeyCreated, IPNetwork, RequestContext
from fundaments.store import Database, Row
from fundaments.store import api_keys as queries

log = logging.getLogger(__name__)

DIGEST_PURPOSE = "api-key-digest"  # EncryptionService.purpose_keys(...)
TOKEN_PREFIX = "fk_"  # noqa: S105 - the token type, not a secret
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
RANDOM_CHARS = 32  # 32 · log2(62) ≈ 190.5 bits
CHECKSUM_CHARS = 6  # 62**6 > 2**32
BODY_LENGTH = len(TOKEN_PREFIX) + RANDOM_CHARS
TOKEN_LENGTH = BODY_LENGTH + CHECKSUM_CHARS  # 41
DISPLAY_PREFIX = 10  # "fk_" and 7 random characters: enough to tell keys apart, 148 bits stay hidden
KEY_ID_PREFIX = "key_"
KEY_ID_CHARS = 16  # 95 bits: not a credential, but not guessable either
MAX_NAME = 64
MAX_SCOPES = 100
MAX_ALLOWED_IPS = 100
MAX_OVERLAP = 7 * 86_400  # seconds
MAX_LIFETIME = 10 * 365 * 86_400  # seconds
MAX_PAGE = 1_000
ADMIN_PERMISSION = "api_keys:admin"  # see every account's keys (Security.list_all_api_keys)
IP_MEMO_MAX = 256  # per cached key: client IPs already judged against its allowlist
RATE_LIMIT = re.compile(r"[1-9][0-9]{0,8}/(second|minute|hour|day)")

_PAIRS = [a + b for a in ALPHABET for b in ALPHABET]  # 3,844 two-character base62 numerals


def _checksum(body: str) -> str:
    """The CRC32 of ``body`` as exactly CHECKSUM_CHARS base62 characters."""
    high, low = divmod(zlib.crc32(body.encode("ascii")), 3844)
    top, mid = divmod(high, 3844)
    return _PAIRS[top] + _PAIRS[mid] + _PAIRS[low]


def checksum_ok(token: object) -> bool:
    """Whether ``token`` has the shape of an API key and its checksum matches: no I/O, never raises.

    True says only that the token is not garbled (a typo, a truncated paste); whether it is a key
    is for :meth:`ApiKeys.validate` to find out.
    """
    return (
        type(token) is str
        and len(token) == TOKEN_LENGTH
        and token.startswith(TOKEN_PREFIX)
        and token.isascii()
        and token[3:].isalnum()
        and _checksum(token[:BODY_LENGTH]) == token[BODY_LENGTH:]
    )


def new_token() -> str:
    body = TOKEN_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(RANDOM_CHARS))
    return body + _checksum(body)


def new_key_id() -> str:
    return KEY_ID_PREFIX + "".join(secrets.choice(ALPHABET) for _ in range(KEY_ID_CHARS))


class Digester:
    """HMAC-SHA256 under one key, with the padded key states computed once.

    The same value as ``hmac.new(key, token, sha256).digest()`` (tests check it) at about a third
    of the cost: the two key blocks are hashed here, not on every call.
    """

    __slots__ = ("_inner", "_outer", "key_id")

    def __init__(self, key_id: str, key: bytes) -> None:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        block = key.ljust(64, b"\x00")
        self.key_id = key_id
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def digest(self, token: str) -> bytes:
        inner = self._inner.copy()
        inner.update(token.encode("ascii"))
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def scope_covers(scopes: Iterable[str], permission: object) -> bool:
    """Whether a key's scopes cover ``permission``, with RBAC's wildcards (``articles:*``, ``*``)."""
    if not isinstance(permission, str):
        return False
    granted = scopes if isinstance(scopes, tuple | frozenset | set) else tuple(scopes)
    if permission in granted:
        return True
    keys = wildcard_keys(permission)
    return keys is not None and any(k in granted for k in keys)


# --- arguments -----------------------------------------------------------------------------------
def scope_list(scopes: object) -> tuple[str, ...]:
    """The scopes as a sorted tuple of valid permission names; InvalidArgument / RoleError otherwise."""
    if isinstance(scopes, str | bytes) or not isinstance(scopes, Iterable):
        raise InvalidArgument('scopes must be a list of permission names, such as ["models:invoke"]')
    result = tuple(sorted({validate_permission(scope) for scope in scopes}))
    if len(result) > MAX_SCOPES:
        raise InvalidArgument(f"a key may carry at most {MAX_SCOPES} scopes")
    return result


def network_list(allowed_ips: object) -> tuple[IPNetwork, ...]:
    """The allowlist as networks; InvalidArgument (a ValueError) naming the entry that is not one."""
    if allowed_ips is None:
        return ()
    if isinstance(allowed_ips, str | bytes) or not isinstance(allowed_ips, Iterable):
        raise InvalidArgument(
            'allowed_ips must be a list of addresses or networks, such as ["198.51.100.0/24"]'
        )
    networks: list[IPNetwork] = []
    for entry in allowed_ips:
        if not isinstance(entry, str) or len(entry) > 64:
            raise InvalidArgument(f"allowed_ips: {str(entry)[:64]!r} is not an IP address or network")
        try:
            networks.append(ipaddress.ip_network(entry.strip(), strict=True))
        except ValueError as exc:
            raise InvalidArgument(
                f"allowed_ips: {entry!r} is not an IP address or network ({exc}); write a network "
                "with its host bits zero, such as '198.51.100.0/24', '2001:db8::/32' or '203.0.113.7'"
            ) from None
    if len(networks) > MAX_ALLOWED_IPS:
        raise InvalidArgument(f"a key may allow at most {MAX_ALLOWED_IPS} networks")
    return tuple(dict.fromkeys(networks))


def _seconds(value: object, name: str, maximum: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidArgument(f"{name} must be a number of seconds")
    if not 0 <= value <= maximum:
        raise InvalidArgument(f"{name} must be between 0 and {maximum} seconds")
    return float(value)


def _client_ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # ::ffff:198.51.100.7 is the IPv4 client 198.51.100.7
    return address


def _key(row: Row, last_used_at: float | None = None) -> ApiKey:
    """An ApiKey from a row whose first columns are queries.LISTED_COLUMNS' (LOOKUP's are the same)."""
    revoked_at = row[9]
    stored_last_used = row[7]
    if last_used_at is not None and (stored_last_used is None or last_used_at > stored_last_used):
        stored_last_used = last_used_at
    return ApiKey(
        id=row[0],
        user_id=int(row[1]),
        name=row[2],
        prefix=row[3],
        scopes=tuple(row[4].split()),
        created_at=float(row[5]),
        expires_at=None if row[6] is None else float(row[6]),
        last_used_at=None if stored_last_used is None else float(stored_last_used),
        allowed_ips=tuple(ipaddress.ip_network(n) for n in row[8].split()),
        revoked_at=None if revoked_at is None else float(revoked_at),
        rate_limit=row[10],
        previous_expires_at=None if row[11] is None or revoked_at is not None else float(row[11]),
    )


# Row positions of queries.LOOKUP / LOOKUP_OLD.
_ID, _USER_ID, _EXPIRES, _REVOKED, _OLD_EXPIRES, _CURRENT_USED, _DISABLED = 0, 1, 6, 9, 11, 12, 13
_STATE_COLUMNS = (_ID, _EXPIRES, _REVOKED, _OLD_EXPIRES, _CURRENT_USED, _DISABLED)  # queries.STATE


class _Entry:
    """What validation needs of one token, as read; kept for at most API_KEY_CACHE_SECONDS."""

    __slots__ = ("dead", "first_use", "ip_memo", "key", "networks", "refresh_at", "state", "until", "via_old")

    def __init__(self, row: Row, via_old: bool, refresh_at: float) -> None:
        # queries.STATE's columns, to tell on a re-read whether anything changed
        self.state = tuple(row[i] for i in _STATE_COLUMNS)
        self.via_old = via_old
        self.key = _key(row)
        self.refresh_at = refresh_at
        self.networks = self.key.allowed_ips
        self.ip_memo: dict[str, bool] = {}
        until = math.inf if row[_EXPIRES] is None else float(row[_EXPIRES])
        self.dead: str | None = None
        if row[_REVOKED] is not None:
            self.dead = "revoked"
        elif bool(row[_DISABLED]):
            self.dead = "owner_disabled"
        if via_old:
            old_until = row[_OLD_EXPIRES]
            if old_until is None:
                self.dead = self.dead or "previous_token_expired"
            else:
                until = min(until, float(old_until))
        self.until = until
        # The first use of a rotated token is written at once (one write per rotation): a retried
        # rotation must know whether the client ever got the token it would replace.
        self.first_use = not via_old and row[_OLD_EXPIRES] is not None and not bool(row[_CURRENT_USED])

    def allows(self, ip_address: str) -> bool:
        allowed = self.ip_memo.get(ip_address)
        if allowed is None:
            address = _client_ip(ip_address)
            allowed = address is not None and any(
                address.version == net.version and address in net for net in self.networks
            )
            if len(self.ip_memo) >= IP_MEMO_MAX:
                self.ip_memo.clear()
            self.ip_memo[ip_address] = allowed
        return allowed


class ApiKeys:
    """Creates, validates, lists, rotates and revokes API keys; writes last_used_at in batches."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        clock: Clock,
        audit: AuditTrail,
        digest_keys: Sequence[tuple[str, bytes]],
    ) -> None:
        """``digest_keys``: (key id, key) pairs, the current first, from
        ``EncryptionService.purpose_keys(DIGEST_PURPOSE)``."""
        if not digest_keys:
            raise ValueError("API keys need at least one digest key (configure MASTER_ENCRYPTION_KEY)")
        self._db = db
        self._settings = settings
        self._clock = clock
        self._audit = audit
        self._digester = Digester(*digest_keys[0])
        self._retired = [Digester(key_id, key) for key_id, key in digest_keys[1:]]
        self._cache_seconds = float(settings.api_key_cache_seconds)
        self._cache_size = int(settings.api_key_cache_size)
        self._interval = float(settings.api_key_last_used_interval)
        self._max_per_user = int(settings.api_key_max_per_user)
        self._cache: dict[bytes, _Entry] = {}
        self._generation = 0  # moves on every local change: a read begun earlier is not cached
        self._pending: dict[str, float] = {}  # key id -> last use not yet written
        self._flushing: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._reader: queries.Reader = db
        self._pinned: queries.HotReader | None = None

    # --- lifecycle -------------------------------------------------------------------------------
    async def start(self) -> None:
        """Start the batched last_used_at writer and open the dedicated reader of the hot path."""
        if self._pinned is None:
            self._pinned = queries.hot_reader(self._db)
            if self._pinned is not None:
                self._reader = self._pinned
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._background(), name="fundaments-api-keys-last-used"
            )

    async def close(self) -> None:
        """Stop the background writer and write the last uses still pending."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        pinned, self._pinned = self._pinned, None
        self._reader = self._db
        if pinned is not None:
            await pinned.close()
        try:
            await self.flush_last_used()
        except FundamentsError as exc:
            log.warning("could not write pending API-key last uses at close: %s", exc)

    async def _background(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush_last_used()
            except FundamentsError as exc:  # the database is down: the uses stay pending
                log.warning("API-key last_used_at write failed, retrying: %s", exc)
            except Exception:  # a bug must not stop the writer for the life of the process
                log.exception("API-key last_used_at write failed, retrying")

    async def flush_last_used(self) -> int:
        """Write the pending last uses in one batch; how many keys."""
        if not self._pending or self._flushing:
            return 0
        self._flushing, self._pending = self._pending, {}
        try:
            batch = [(when, key_id) for key_id, when in self._flushing.items()]
            async with self._db.transaction() as tx:
                await queries.touch_many(tx, batch)
            return len(batch)
        except BaseException:
            for key_id, when in self._flushing.items():
                if self._pending.get(key_id, 0.0) < when:
                    self._pending[key_id] = when
            raise
        finally:
            self._flushing = {}

    # --- the cache -------------------------------------------------------------------------------
    def invalidate_cache(self) -> None:
        """Forget every cached key (after a change made here that validation must see at once,
        such as a disabled owner); other instances see it within API_KEY_CACHE_SECONDS."""
        self._generation += 1
        self._cache.clear()

    def _forget(self, digests: Iterable[bytes | None]) -> None:
        self._generation += 1
        for digest in digests:
            if digest is not None:
                self._cache.pop(bytes(digest), None)

    # --- validating ------------------------------------------------------------------------------
    async def validate(
        self, token: object, request_data: RequestContext | Mapping[str, Any]
    ) -> ApiKey | None:
        """The live key ``token`` is, presented from this client; None for anything else.

        None, with no I/O, for any value that fails :func:`checksum_ok`; None, audited
        ``api_key.refused`` (coalesced), for an unknown, revoked or expired key, a previous token
        past its overlap, a disabled owner, or a client IP outside the key's ``allowed_ips``.
        Raises InvalidArgument only when ``request_data`` lacks or garbles ``ip_address`` /
        ``user_agent`` and the answer depends on it (an allowlist or a refusal to audit).
        """
        if type(token) is not str or len(token) != TOKEN_LENGTH or not token.isascii():
            return None
        # The digest first, and the checksum only on a miss: a cached digest is a real key's, so
        # its checksum is known to be right. A garbled token still never reaches the database.
        digest = self._digester.digest(token)
        now = self._clock.now()
        entry = self._cache.get(digest)
        if entry is None or now >= entry.refresh_at:
            if entry is not None:
                # Ran out: kept when what can change about a key (revoked, the previous token's
                # deadline, first use, owner disabled) has not; six columns, nothing parsed again.
                state = queries.STATE_OLD if entry.via_old else queries.STATE
                current = await self._reader.fetchrow(state, digest)
                if current is not None and tuple(cast(Iterable[Any], current)) == entry.state:
                    entry.refresh_at = now + self._cache_seconds
                else:
                    entry = await self._load(digest, token, now)
            elif checksum_ok(token):
                entry = await self._load(digest, token, now)
            else:
                return None
            if entry is None:
                await self._refused("unknown", None, request_data)
                return None
        if entry.dead is not None or now >= entry.until:
            expired = entry.key.expires_at is not None and now >= entry.key.expires_at
            reason = entry.dead or ("previous_token_expired" if entry.via_old and not expired else "expired")
            await self._refused(reason, entry.key, request_data)
            return None
        if entry.networks:
            ip = (
                request_data.ip_address
                if type(request_data) is RequestContext
                else RequestContext.coerce(request_data).ip_address
            )
            if not entry.allows(ip):
                await self._refused("ip_not_allowed", entry.key, request_data)
                return None
        key = entry.key
        self._pending[key.id] = now
        if entry.first_use:
            entry.first_use = False
            try:
                await queries.mark_current_used(self._db, key.id)
            except FundamentsError as exc:  # the key is valid; only a retried rotation's choice waits
                entry.first_use = True
                log.warning("could not record the first use of API key %s's new token: %s", key.id, exc)
        return key

    async def _load(self, digest: bytes, token: str, now: float) -> _Entry | None:
        """The entry for ``digest`` as the database holds it now, cached unless a local change
        happened meanwhile (None: no key has this token)."""
        generation = self._generation
        via_old = False
        row = await queries.lookup(self._reader, digest)
        if row is None:
            row = await queries.lookup_old(self._reader, digest)
            via_old = row is not None
        if row is None and self._retired:
            row, via_old = await self._under_retired_keys(token, digest)
        if row is None:
            return None
        entry = _Entry(row, via_old, now + self._cache_seconds)
        if self._cache_size > 0 and generation == self._generation:
            # Kept even with API_KEY_CACHE_SECONDS=0: it then answers nothing without a fresh read
            # (refresh_at is now), but an unchanged row is not parsed again.
            cache = self._cache
            cache.pop(digest, None)  # re-inserted at the end: the oldest-read entries go first
            if len(cache) >= self._cache_size:
                del cache[next(iter(cache))]
            cache[digest] = entry
        return entry

    async def _under_retired_keys(self, token: str, digest: bytes) -> tuple[Row | None, bool]:
        """A key whose digest is still under a previous master key: found, and re-digested under
        the current one so that the next validation is an ordinary hit."""
        for retired in self._retired:
            old = retired.digest(token)
            for via_old, find, move in (
                (False, queries.lookup, queries.redigest),
                (True, queries.lookup_old, queries.redigest_old),
            ):
                row = await find(self._db, old)
                if row is not None:
                    async with self._db.transaction() as tx:
                        await move(tx, old, digest, self._digester.key_id)
                    return row, via_old
        return None, False

    async def _refused(
        self, reason: str, key: ApiKey | None, request_data: RequestContext | Mapping[str, Any]
    ) -> None:
        ctx = RequestContext.coerce(request_data)
        source = key.id if key is not None else _throttle_key(ctx.ip_address)
        await self._audit.record_coalesced(
            "api_key.refused",
            key=f"{reason}:{source}",
            subject_user_id=key.user_id if key is not None else None,
            client=ctx,
            details={"reason": reason, **({"api_key_id": key.id} if key is not None else {})},
        )

    # --- creating, listing, rotating, revoking ------------------------------------------------
    async def create(
        self,
        user_id: int,
        *,
        name: str,
        scopes: tuple[str, ...],
        expires_in: float | None,
        allowed_ips: tuple[IPNetwork, ...],
        rate_limit: str | None,
        actor_user_id: int | None = None,
    ) -> ApiKeyCreated:
        """A new key for ``user_id`` (arguments already checked by the caller: see the facade).

        UnknownUserError for an unknown owner; PermissionDenied for a disabled one or one already
        holding API_KEY_MAX_PER_USER live keys. Audited ``api_key.created`` (never the token)."""
        now = self._clock.now()
        expires_at = None if expires_in is None else now + expires_in
        token = new_token()
        key_id = new_key_id()
        async with self._db.transaction() as tx:
            owner = await queries.lock_owner(tx, user_id)
            if owner is None:
                raise UnknownUserError(f"no account has id {user_id}")
            if bool(owner["is_disabled"]):
                raise PermissionDenied(
                    f"account {user_id} is disabled: enable it before creating API keys", user_id=user_id
                )
            if await queries.count_live(tx, user_id, now) >= self._max_per_user:
                raise PermissionDenied(
                    f"account {user_id} already holds {self._max_per_user} live API keys "
                    "(API_KEY_MAX_PER_USER): revoke one it no longer needs first",
                    user_id=user_id,
                )
            await queries.insert(
                tx,
                key_id=key_id,
                user_id=user_id,
                name=name,
                prefix=token[:DISPLAY_PREFIX],
                digest=self._digester.digest(token),
                digest_key_id=self._digester.key_id,
                scopes=" ".join(scopes),
                allowed_ips=" ".join(str(n) for n in allowed_ips),
                rate_limit=rate_limit,
                now=now,
                expires_at=expires_at,
            )
            await self._audit.record(
                "api_key.created",
                tx=tx,
                actor_user_id=actor_user_id if actor_user_id is not None else user_id,
                subject_user_id=user_id,
                details={
                    "api_key_id": key_id,
                    "name": name,
                    "prefix": token[:DISPLAY_PREFIX],
                    "scopes": list(scopes),
                    "expires_at": expires_at,
                    "allowed_ips": [str(n) for n in allowed_ips],
                    "rate_limit": rate_limit,
                },
            )
        key = ApiKey(
            id=key_id,
            user_id=user_id,
            name=name,
            prefix=token[:DISPLAY_PREFIX],
            scopes=scopes,
            created_at=now,
            expires_at=expires_at,
            allowed_ips=allowed_ips,
            rate_limit=rate_limit,
        )
        return ApiKeyCreated(token=token, key=key)

    async def list_for_user(
        self, user_id: int, *, after: str | None = None, limit: int = 100
    ) -> list[ApiKey]:
        """The owner's keys (revoked ones too, with ``revoked_at``) in creation order, ``limit``
        at most, after the key ``after`` (the last id of the previous page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an integer from 1 to {MAX_PAGE}")
        if after is not None and (not isinstance(after, str) or len(after) > 32):
            raise InvalidArgument("after must be the id of a key (from the previous page) or None")
        rows = await queries.list_for_user(self._db, user_id, after, limit)
        pending = self._pending
        return [_key(row, pending.get(row[0])) for row in rows]

    async def list_all(self, *, after: str | None = None, limit: int = 100) -> list[ApiKey]:
        """Every account's keys (revoked ones too) in id order, ``limit`` at most, with ids
        above ``after`` (the last id of the previous page)."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 < limit <= MAX_PAGE:
            raise InvalidArgument(f"limit must be an integer from 1 to {MAX_PAGE}")
        if after is not None and (not isinstance(after, str) or len(after) > 32):
            raise InvalidArgument("after must be the id of a key (from the previous page) or None")
        rows = await queries.list_all(self._db, after, limit)
        pending = self._pending
        return [_key(row, pending.get(row[0])) for row in rows]

    async def revoke(self, user_id: int, key_id: str, *, actor_user_id: int | None = None) -> bool:
        """Revoke the key, both its tokens at once, for good; False when ``user_id`` has no live
        key ``key_id``. Audited ``api_key.revoked``."""
        if not isinstance(key_id, str) or len(key_id) > 32:
            return False
        async with self._db.transaction() as tx:
            row = await queries.revoke(tx, user_id, key_id, self._clock.now())
            if row is None:
                return False
            await self._audit.record(
                "api_key.revoked",
                tx=tx,
                actor_user_id=actor_user_id if actor_user_id is not None else user_id,
                subject_user_id=user_id,
                details={"api_key_id": key_id},
            )
        self._forget([row["digest"], row["old_digest"]])
        self._pending.pop(key_id, None)
        return True

    async def rotate(
        self, user_id: int, key_id: str, *, overlap_seconds: float, actor_user_id: int | None = None
    ) -> ApiKeyCreated:
        """A new token for the key ``key_id`` (same id, scopes, expiry and allowlist).

        The token it replaces keeps working for ``overlap_seconds`` (0: it dies at once), then
        never again. A retry is safe: when the current token has never been presented and the
        previous one is still inside its overlap — a client that lost the answer of the last
        rotation calls again — the previous token (the one the client holds) stays the previous
        one, with the overlap counted from now, and only the never-seen token is replaced. A client
        can therefore retry until it gets an answer without locking itself out; the token of every
        lost answer is dead. UnknownApiKeyError for a key that is not the owner's, revoked or
        expired. Audited ``api_key.rotated`` (``previous_kept`` says which case it was).
        """
        if not isinstance(key_id, str) or len(key_id) > 32:
            raise UnknownApiKeyError("no such API key: pass the id of one of the account's keys")
        overlap = _seconds(overlap_seconds, "overlap_seconds", MAX_OVERLAP)
        now = self._clock.now()
        token = new_token()
        digest = self._digester.digest(token)
        async with self._db.transaction() as tx:
            row = await queries.get_for_update(tx, user_id, key_id)
            if row is None:
                raise UnknownApiKeyError(f"account {user_id} has no API key {key_id!r}")
            if row["revoked_at"] is not None:
                raise UnknownApiKeyError(f"API key {key_id!r} is revoked: create a new key instead")
            if row["expires_at"] is not None and float(row["expires_at"]) <= now:
                raise UnknownApiKeyError(f"API key {key_id!r} has expired: create a new key instead")
            old_until = row["old_expires_at"]
            retry = (
                row["old_digest"] is not None
                and old_until is not None
                and float(old_until) > now
                and not bool(row["current_used"])
            )
            previous: bytes | None
            if retry:
                previous, previous_key_id = bytes(row["old_digest"]), row["old_key_id"]
            else:
                previous, previous_key_id = bytes(row["digest"]), row["key_id"]
            previous_until = now + overlap if overlap > 0 else None
            if previous_until is None:
                previous = previous_key_id = None
            await queries.rotate(
                tx,
                key_id,
                digest=digest,
                digest_key_id=self._digester.key_id,
                prefix=token[:DISPLAY_PREFIX],
                old_digest=previous,
                old_key_id=previous_key_id,
                old_expires_at=previous_until,
                now=now,
            )
            await self._audit.record(
                "api_key.rotated",
                tx=tx,
                actor_user_id=actor_user_id if actor_user_id is not None else user_id,
                subject_user_id=user_id,
                details={
                    "api_key_id": key_id,
                    "prefix": token[:DISPLAY_PREFIX],
                    "overlap_seconds": overlap,
                    "previous_kept": retry,
                },
            )
        self._forget([row["digest"], row["old_digest"]])
        listed: dict[str, Any] = {name: row[name] for name in row.keys()}  # noqa: SIM118 - a Row
        listed.update(prefix=token[:DISPLAY_PREFIX], old_expires_at=previous_until)
        key = _key(_RowView(listed), self._pending.get(key_id))
        return ApiKeyCreated(token=token, key=key)


class _RowView:
    """A dict read by position in queries.LISTED_COLUMNS' order, as _key reads rows."""

    __slots__ = ("_values",)
    _ORDER = tuple(c.strip() for c in queries.LISTED_COLUMNS.split(","))

    def __init__(self, values: Mapping[str, Any]) -> None:
        self._values = [values[name] for name in self._ORDER]

    def __getitem__(self, index: str | int) -> Any:
        return self._values[index if isinstance(index, int) else self._ORDER.index(index)]

    def keys(self) -> Any:
        return self._ORDER


def _throttle_key(ip_address: str) -> str:
    """The client's address (its /64 for IPv6), so a flood from one client coalesces into one event."""
    address = _client_ip(ip_address)
    if address is None:
        return ip_address[:64]
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{address}/64", strict=False))
    return str(address)
