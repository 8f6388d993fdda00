"""Rate limits and quotas: ``"100/minute"`` per key, cost-weighted, exact across instances.

The algorithm is GCRA (the generic cell rate algorithm of ATM networks, the "leaky bucket as a
meter"). Why GCRA rather than a sliding window or a token bucket:

- one value per key, the *theoretical arrival time* (TAT): the moment the key would be fully
  replenished. A sliding-window log keeps one entry per request (100,000 for "100000/day"); a
  sliding-window counter keeps two counters and is only an approximation; a token bucket keeps two
  values (tokens, last refill) that must be updated together.
- exact: the decision is integer arithmetic on that one value (microseconds), so one atomic
  statement — a Lua script on Redis, an upsert on SQLite/PostgreSQL — decides, and N concurrent
  requests on any number of instances against ``limit`` allow exactly ``limit``.
- no window-edge bursts: a fixed window allows ``2 × limit`` around its edge (the end of one
  window and the start of the next); GCRA allows a burst of ``limit`` and then spaces requests one
  emission interval (``window / limit``) apart, however the calls fall on the clock.

With ``T = ceil(window / limit)`` (µs) and ``P = limit × T``, a request of ``cost`` at ``now``:
``tat = max(stored, now)``; it is allowed when ``tat + cost × T - P <= now`` and then stores
``tat + cost × T``; a refusal stores nothing. A cost above the limit is refused without consuming
(``retry_after`` is infinite: waiting never allows it). A clock that goes backwards makes stored TATs
look further away, so decisions only become stricter until it catches up — never looser.

Backends (chosen by :meth:`RateLimiter.from_settings`, see docs/ratelimits.md): :class:`MemoryBackend`
(one process, tests), :class:`DatabaseBackend` (the ``fundaments_rate_limits`` table: a read, and
one upsert when it allows), :class:`RedisBackend` (one Lua script per decision, one round trip).
Only rate limits and quotas live here: the login throttle and account-lock counters stay in the
database, the source of truth an attacker cannot reset by restarting a cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fundaments.clock import Clock, SystemClock
from fundaments.config import Settings, mask_dsn
from fundaments.errors import ConfigurationError, InvalidArgument, ServiceUnavailable
from fundaments.models import RateLimitDecision
from fundaments.store import Database, Executor
from fundaments.store import ratelimit as queries

if TYPE_CHECKING:
    from redis.asyncio import Redis

log = logging.getLogger(__name__)

FailMode = Literal["closed", "open"]
US = 1_000_000  # microseconds per second: every TAT is an integer number of them
MAX_LIMIT = 1_000_000_000
MAX_RATE_TEXT = 64
MAX_KEY_LENGTH = 200
MAX_COST = 10**12
WINDOWS = {
    "second": 1,
    "s": 1,
    "sec": 1,
    "minute": 60,
    "m": 60,
    "min": 60,
    "hour": 3_600,
    "h": 3_600,
    "hr": 3_600,
    "day": 86_400,
    "d": 86_400,
}
_RATE = re.compile(r"\s*([0-9]{1,10})\s*/\s*([a-z]{1,8})\s*", re.ASCII | re.IGNORECASE)

Item = tuple[str, int, int]  # (key, increment, period), µs

PURGE_EVERY = 1_000  # database decisions between purges of fully replenished rows
PURGE_BATCH = 1_000  # rows one purge deletes at most: a purge never holds the table for long
EVICT_TO = 0.9  # a full memory table evicts down to this share of its bound


@dataclass(frozen=True, slots=True)
class Rate:
    """``limit`` requests per ``window`` seconds, with its GCRA constants in microseconds."""

    limit: int
    window: int
    interval: int  # T: the emission interval, ceil(window / limit)
    period: int  # P = limit × T: a burst of exactly ``limit``, a rate never above the limit

    def __str__(self) -> str:
        return f"{self.limit}/{self.window}s"


def parse_rate(text: str) -> Rate:
    """``"100/minute"`` as a :class:`Rate`; units second, minute, hour, day (also s, sec, m, min,
    h, hr, d and plurals). InvalidArgument, saying what is accepted, for anything else."""
    if not isinstance(text, str) or len(text) > MAX_RATE_TEXT:
        raise InvalidArgument(_rate_problem(text))
    return _parse_rate(text)


@lru_cache(maxsize=1024)  # limits are a handful of constants: parse each once
def _parse_rate(text: str) -> Rate:
    match = _RATE.fullmatch(text)
    if match is None:
        raise InvalidArgument(_rate_problem(text))
    unit = match[2].lower()
    window = WINDOWS.get(unit) or (WINDOWS.get(unit[:-1]) if len(unit) > 3 and unit[-1] == "s" else None)
    limit = int(match[1])
    if window is None or not 0 < limit <= MAX_LIMIT:
        raise InvalidArgument(_rate_problem(text))
    interval = -(-window * US // limit)  # ceil: P may exceed the window by < 1 µs per request
    return Rate(limit=limit, window=window, interval=interval, period=limit * interval)


def _rate_problem(text: object) -> str:
    shown = repr(text[:MAX_RATE_TEXT]) if isinstance(text, str) else type(text).__name__
    return (
        f"rate limit {shown} is not of the form N/second, N/minute, N/hour or N/day "
        f"(N from 1 to {MAX_LIMIT:,}), e.g. '100/minute'"
    )


def decision(rate: Rate, cost: int, allowed: bool, ahead: int) -> RateLimitDecision:
    """The decision for a request of ``cost``, from how far (µs) the key's TAT is ahead of now
    after it (allowed) or as it stands (refused). Shared by every backend: they answer alike."""
    remaining = min(rate.limit, max(0, (rate.period - ahead) // rate.interval))
    retry_after = 0.0
    if not allowed:
        retry_after = (
            math.inf if cost > rate.limit else max(0.0, (ahead + cost * rate.interval - rate.period) / US)
        )
    return RateLimitDecision(
        allowed=allowed,
        remaining=remaining,
        retry_after=retry_after,
        reset_after=ahead / US,
        limit=rate.limit,
        window=float(rate.window),
    )


class Backend(Protocol):
    """Where TATs live. ``consume`` is one atomic step: with ``tat = max(stored, now)``, store
    ``tat + increment`` when ``tat + increment - period <= now`` (nothing when ``increment`` is 0).
    Returns (allowed, how far the TAT is then ahead of ``now`` in µs — after the request when
    allowed, as it stands when refused)."""

    name: str

    async def consume(self, key: str, now: int, increment: int, period: int) -> tuple[bool, int]: ...

    async def consume_all(self, items: Sequence[Item], now: int) -> tuple[bool, list[int]]:
        """``consume`` for several distinct keys at once, all or nothing: every TAT advances when
        each one allows, none otherwise. (allowed, how far each TAT is then ahead of now)."""
        ...

    async def close(self) -> None: ...


class MemoryBackend:
    """TATs in a dict: one process only (tests, a single instance without a database to spare).

    Bounded by ``max_keys``: when full, fully replenished keys go first (they hold no
    information); only if every key is live are the closest-to-replenished ones dropped, which
    lets those keys start afresh — logged, as it means the bound is too small.
    """

    name = "memory"

    def __init__(self, max_keys: int = 100_000) -> None:
        self._tats: dict[str, int] = {}
        self._max_keys = max_keys

    async def consume(self, key: str, now: int, increment: int, period: int) -> tuple[bool, int]:
        stored = self._tats.get(key)
        tat = now if stored is None or stored < now else stored
        new_tat = tat + increment
        if new_tat - period > now:
            return False, tat - now
        if increment:
            if stored is None and len(self._tats) >= self._max_keys:
                self._evict(now)
            self._tats[key] = new_tat
        return True, new_tat - now

    async def consume_all(self, items: Sequence[Item], now: int) -> tuple[bool, list[int]]:
        tats = [max(self._tats.get(key, now), now) for key, _, _ in items]
        if any(
            tat + increment - period > now for tat, (_, increment, period) in zip(tats, items, strict=True)
        ):
            return False, [tat - now for tat in tats]
        for key, increment, period in items:  # no await inside consume: nothing runs in between
            await self.consume(key, now, increment, period)
        return True, [tat + increment - now for tat, (_, increment, _) in zip(tats, items, strict=True)]

    def _evict(self, now: int) -> None:
        self._tats = {key: tat for key, tat in self._tats.items() if tat > now}
        excess = len(self._tats) - int(self._max_keys * EVICT_TO)
        if excess > 0:
            for key, _tat in heapq.nsmallest(excess, self._tats.items(), key=lambda item: item[1]):
                del self._tats[key]
            log.warning(
                "rate limits: the memory table is full (%d live keys); %d keys closest to replenished "
                "were dropped — raise RATE_LIMIT_MEMORY_KEYS or use the database or Redis backend",
                self._max_keys,
                excess,
            )

    def __len__(self) -> int:
        return len(self._tats)

    async def close(self) -> None:
        self._tats.clear()


class DatabaseBackend:
    """TATs in ``fundaments_rate_limits``: one upsert per allowed decision, exact across every
    process that shares the database (SQLite: ``BEGIN IMMEDIATE`` serializes them; PostgreSQL:
    the upsert's row lock).

    A plain read comes first: a TAT only grows (a purge removes only rows that allow anything), so
    a read that already refuses is final, and a flood against a spent key costs reads — on SQLite
    microseconds on the event loop — instead of writes queueing for the lock.
    """

    name = "database"

    def __init__(self, db: Database) -> None:
        self._db = db
        self._since_purge = 0

    async def consume(self, key: str, now: int, increment: int, period: int) -> tuple[bool, int]:
        stored = await queries.tat(self._db, key)
        tat = now if stored is None or stored < now else stored
        if not increment or tat + increment - period > now:
            return tat - period <= now and not increment, tat - now
        self._since_purge += 1
        if self._since_purge >= PURGE_EVERY:
            self._since_purge = 0
            await queries.purge(self._db, now, PURGE_BATCH)
        new_tat = await queries.consume(self._db, self._db.dialect, key, now, increment, period)
        if new_tat is not None:
            return True, new_tat - now
        # another process consumed since the read: refused; the TAT read again is for the numbers
        stored = await queries.tat(self._db, key)
        return False, 0 if stored is None or stored < now else stored - now

    async def consume_all(self, items: Sequence[Item], now: int) -> tuple[bool, list[int]]:
        aheads = [await self._ahead(self._db, key, now) for key, _, _ in items]
        if any(
            ahead + increment > period for ahead, (_, increment, period) in zip(aheads, items, strict=True)
        ):
            return False, aheads
        try:
            async with self._db.transaction() as tx:
                # in key order: two transactions never wait on each other's rows crosswise
                for key, increment, period in sorted(items):
                    if (
                        increment
                        and await queries.consume(tx, self._db.dialect, key, now, increment, period) is None
                    ):
                        raise _Refused
        except _Refused:  # another process consumed since the read: nothing was written
            return False, [await self._ahead(self._db, key, now) for key, _, _ in items]
        return True, [ahead + increment for ahead, (_, increment, _) in zip(aheads, items, strict=True)]

    @staticmethod
    async def _ahead(db: Executor, key: str, now: int) -> int:
        stored = await queries.tat(db, key)
        return 0 if stored is None or stored < now else stored - now

    async def close(self) -> None:
        """The database belongs to the caller; nothing to release."""


# KEYS[1]: the key. ARGV: increment, period (µs) and, without server time, now (µs; absent: the
# server's TIME — one argument fewer on the wire). Returns one integer (one reply line): how far
# the TAT is ahead of now when allowed, -1 minus that when refused. Numbers stay below 2^53,
# exact in Lua's doubles; '%.0f' writes them without the exponent tostring would use.
LUA_CONSUME = """
local now
if ARGV[3] then
  now = tonumber(ARGV[3])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local increment = tonumber(ARGV[1])
local period = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + increment
if new_tat - period > now then
  return -1 - (tat - now)
end
if increment > 0 then
  local ttl = new_tat - now
  if ARGV[3] then ttl = period end
  redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', math.ceil(ttl / 1000))
end
return new_tat - now
"""
LUA_SHA = hashlib.sha1(LUA_CONSUME.encode(), usedforsecurity=False).hexdigest()

# All or nothing over several keys (one slot in a Cluster: give them one hash tag). ARGV: each
# key's increment and period, then now unless server time. Returns {allowed, ahead of each key}.
LUA_CONSUME_ALL = """
local n = #KEYS
local now
if ARGV[2 * n + 1] then
  now = tonumber(ARGV[2 * n + 1])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local tats = {}
local allowed = 1
for i = 1, n do
  local tat = tonumber(redis.call('GET', KEYS[i])) or now
  if tat < now then tat = now end
  tats[i] = tat
  if tat + tonumber(ARGV[2 * i - 1]) - tonumber(ARGV[2 * i]) > now then allowed = 0 end
end
local out = {allowed}
for i = 1, n do
  local increment = tonumber(ARGV[2 * i - 1])
  if allowed == 1 then
    local new_tat = tats[i] + increment
    if increment > 0 then
      local ttl = new_tat - now
      if ARGV[2 * n + 1] then ttl = tonumber(ARGV[2 * i]) end
      redis.call('SET', KEYS[i], string.format('%.0f', new_tat), 'PX', math.ceil(ttl / 1000))
    end
    out[i + 1] = new_tat - now
  else
    out[i + 1] = tats[i] - now
  end
end
return out
"""
LUA_ALL_SHA = hashlib.sha1(LUA_CONSUME_ALL.encode(), usedforsecurity=False).hexdigest()
REDIS_PREFIX = "fundaments:rl:"


@lru_cache(maxsize=65_536)  # hot keys repeat: build each Redis key once
def redis_key(key: str, prefix: str = REDIS_PREFIX) -> str:
    """The Redis key of ``key``, with a Cluster hash tag made of its first two ``:`` parts, so
    ``user:42:requests`` and ``user:42:tokens`` share a slot (``{user:42}``). A key that brings
    its own braces keeps them."""
    if "{" in key or "}" in key:
        return prefix + key
    head, _, rest = key.partition(":")
    second, sep, tail = rest.partition(":")
    if not sep:
        return f"{prefix}{{{key}}}"
    return f"{prefix}{{{head}:{second}}}:{tail}"


class RedisBackend:
    """TATs in Redis: one ``EVALSHA`` per decision, one round trip, atomic on the server.

    ``server_time``: the script reads Redis's own clock (``TIME``), so every instance decides on
    the same clock whatever their own clocks say (skew between instances would otherwise loosen a
    limit by the skew). Off, the caller's ``now`` is used — what tests with an injected clock need;
    keys then live a whole period, as instance clocks cannot be trusted to agree on expiry.

    Every call is bounded by ``timeout`` (connect and read; redis-py's retries are off). While
    Redis is unreachable calls raise ServiceUnavailable at once, without touching the network,
    except one probe every ``retry_interval`` seconds; the outage is logged once when it starts and
    once when it ends.
    """

    name = "redis"

    def __init__(
        self,
        client: Redis,
        *,
        server_time: bool = True,
        retry_interval: float = 1.0,
        description: str = "redis",
        prefix: str = REDIS_PREFIX,
    ) -> None:
        self._client = client
        self._server_time = server_time
        self._retry_interval = retry_interval
        self._prefix = prefix
        self.description = description
        self._down = False
        self._next_probe = 0.0

    @classmethod
    def from_url(cls, url: str, *, timeout: float, **options: Any) -> RedisBackend:
        try:
            from redis.asyncio import Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import NoBackoff
        except ImportError:
            raise ConfigurationError(
                "REDIS_URL is set but redis-py is not installed: pip install 'fundaments[redis]'",
                variable="REDIS_URL",
            ) from None
        client = Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),  # a retry would double the wait; the next request retries
            retry_on_timeout=False,
        )
        return cls(client, description=mask_dsn(url), **options)

    @property
    def available(self) -> bool:
        """False while an outage is going on (until a probe succeeds)."""
        return not self._down

    async def consume(self, key: str, now: int, increment: int, period: int) -> tuple[bool, int]:
        args: tuple[int, ...] = (increment, period) if self._server_time else (increment, period, now)
        ahead = int(await self._evalsha(LUA_SHA, LUA_CONSUME, (redis_key(key, self._prefix),), args))
        return (True, ahead) if ahead >= 0 else (False, -1 - ahead)

    async def consume_all(self, items: Sequence[Item], now: int) -> tuple[bool, list[int]]:
        keys = tuple(redis_key(key, self._prefix) for key, _, _ in items)
        args = [value for _, increment, period in items for value in (increment, period)]
        if not self._server_time:
            args.append(now)
        allowed, *aheads = await self._evalsha(LUA_ALL_SHA, LUA_CONSUME_ALL, keys, args)
        return bool(allowed), [int(ahead) for ahead in aheads]

    async def _evalsha(self, sha: str, script: str, keys: Sequence[str], args: Sequence[int]) -> Any:
        if self._down:
            now_loop = asyncio.get_running_loop().time()
            if now_loop < self._next_probe:
                raise ServiceUnavailable(f"Redis at {self.description} is unavailable")
            self._next_probe = now_loop + self._retry_interval  # this call probes; the others wait
        try:
            try:
                result = await self._client.evalsha(sha, len(keys), *keys, *args)
            except _no_script():
                # A restarted or flushed server forgot the script: load it once, then go on.
                await self._client.script_load(script)
                result = await self._client.evalsha(sha, len(keys), *keys, *args)
        except (_redis_errors(), OSError, TimeoutError) as exc:
            self._went_down(asyncio.get_running_loop(), exc)
            raise ServiceUnavailable(f"Redis at {self.description} is unavailable") from None
        if self._down:
            self._down = False
            log.warning("rate limits: Redis at %s is reachable again; limits apply again", self.description)
        return result

    def _went_down(self, loop: asyncio.AbstractEventLoop, exc: BaseException) -> None:
        self._next_probe = loop.time() + self._retry_interval
        if not self._down:
            self._down = True
            log.warning(
                "rate limits: Redis at %s is unreachable or failing (%s: %s); decisions follow "
                "RATE_LIMIT_FAIL until it answers again (retried every %.1f s)",
                self.description,
                type(exc).__name__,
                exc,
                self._retry_interval,
            )

    async def close(self) -> None:
        await self._client.aclose()


def _redis_errors() -> type[Exception]:
    from redis.exceptions import RedisError

    return RedisError


def _no_script() -> type[Exception]:
    from redis.exceptions import NoScriptError

    return NoScriptError


class _Refused(Exception):
    """A limit refused inside the all-or-nothing transaction: roll it back."""


class RateLimiter:
    """Decides rate limits on one backend, with the fail mode for a backend that cannot answer."""

    def __init__(
        self,
        backend: Backend,
        clock: Clock,
        *,
        fail: FailMode = "closed",
        fail_retry_after: float = 1.0,
    ) -> None:
        self.backend = backend
        self._clock = clock
        self._fail = fail
        self._fail_retry_after = fail_retry_after

    @classmethod
    def from_settings(cls, settings: Settings, db: Database, clock: Clock) -> RateLimiter:
        """Redis when REDIS_URL is set, else the database; RATE_LIMIT_BACKEND overrides."""
        backend: Backend
        choice = settings.rate_limit_backend_choice
        if choice == "memory":
            backend = MemoryBackend(settings.rate_limit_memory_keys)
        elif choice == "database":
            backend = DatabaseBackend(db)
        else:
            assert settings.redis_url is not None
            backend = RedisBackend.from_url(
                settings.redis_url.get_secret_value(),
                timeout=settings.rate_limit_redis_timeout,
                # an injected clock (tests, simulations) must also be the limiter's clock
                server_time=isinstance(clock, SystemClock),
                retry_interval=settings.rate_limit_redis_retry,
            )
        return cls(
            backend,
            clock,
            fail=settings.rate_limit_fail,
            fail_retry_after=max(1.0, settings.rate_limit_redis_retry),
        )

    async def hit(
        self, key: str, rate: Rate, cost: int = 1, fail: FailMode | None = None
    ) -> RateLimitDecision:
        """Count a request of ``cost`` against ``rate`` for ``key``; the decision. Cost 0 reads
        the key's state without consuming anything."""
        now = round(self._clock.now() * US)
        over = cost > rate.limit  # never allowed: consume nothing, report the state
        try:
            allowed, ahead = await self.backend.consume(
                key, now, 0 if over else cost * rate.interval, rate.period
            )
        except ServiceUnavailable:
            return self._failed(rate, cost, fail or self._fail)
        return decision(rate, cost, allowed and not over, ahead)

    async def hit_all(
        self, checks: Sequence[tuple[str, Rate, int]], fail: FailMode | None = None
    ) -> list[RateLimitDecision]:
        """Count one request against several limits, all or nothing (distinct keys): allowed only
        when every limit allows, and then counted by each; otherwise counted by none. The decisions
        agree on ``allowed``; each has its own numbers (``retry_after`` 0 for a limit with room)."""
        now = round(self._clock.now() * US)
        over = any(cost > rate.limit for _, rate, cost in checks)
        items = [(key, 0 if over else cost * rate.interval, rate.period) for key, rate, cost in checks]
        try:
            allowed, aheads = await self.backend.consume_all(items, now)
        except ServiceUnavailable:
            failed = [self._failed(rate, cost, fail or self._fail) for _, rate, cost in checks]
            together = all(d.allowed for d in failed)
            return [d if d.allowed == together else replace(d, allowed=together) for d in failed]
        allowed = allowed and not over
        return [
            decision(rate, cost, allowed, ahead)
            for (_, rate, cost), ahead in zip(checks, aheads, strict=True)
        ]

    def _failed(self, rate: Rate, cost: int, fail: FailMode) -> RateLimitDecision:
        if fail == "open" and cost <= rate.limit:
            return RateLimitDecision(True, rate.limit - cost, 0.0, 0.0, rate.limit, float(rate.window))
        retry = math.inf if cost > rate.limit else self._fail_retry_after
        return RateLimitDecision(False, 0, retry, self._fail_retry_after, rate.limit, float(rate.window))

    async def close(self) -> None:
        await self.backend.close()


def check_key(key: object) -> str:
    """``key`` if it is a usable rate-limit key: 1 to MAX_KEY_LENGTH characters, no NUL."""
    if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH or "\x00" in key:
        raise InvalidArgument(
            f"a rate-limit key must be a non-empty string of at most {MAX_KEY_LENGTH} characters "
            "without NUL, e.g. 'user:42:tokens'"
        )
    return key


def check_cost(cost: object) -> int:
    if isinstance(cost, bool) or not isinstance(cost, int) or not 0 <= cost <= MAX_COST:
        raise InvalidArgument(
            f"cost must be an integer from 0 to {MAX_COST:,}, e.g. the tokens a request used"
        )
    return cost
