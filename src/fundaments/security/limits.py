"""The limits part of the facade: rate limits and quotas per key (docs/ratelimits.md).

A key names what is counted — ``user:42:requests``, ``key:<api key id>``, ``ip:203.0.113.7`` — so
one limit can be shared by all of a user's API keys (count under the user's key) while another
applies per key. ``limit`` is ``"N/second|minute|hour|day"``; ``cost`` weighs a request (LLM
tokens, say). Nothing here is audited: a decision is on every request's path, and a refusal is
the caller's to answer (429 with ``Retry-After``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

from fundaments.errors import InvalidArgument, RateLimited, ServiceUnavailable
from fundaments.models import RateLimitDecision
from fundaments.ratelimit import Rate, RateLimiter, check_cost, check_key, parse_rate
from fundaments.security._core import SecurityCore

MAX_CHECKS = 16  # limits one request is counted against at once


class LimitsPart(SecurityCore):
    """``rate_limit`` (a decision), ``enforce_rate_limit`` (RateLimited if refused) and
    ``rate_limit_all`` (several limits, all or nothing)."""

    async def rate_limit(
        self,
        key: str,
        limit: str | Rate,
        cost: int = 1,
        *,
        fail: Literal["closed", "open"] | None = None,
    ) -> RateLimitDecision:
        """Count one request of ``cost`` for ``key`` against ``limit``; whether it may go ahead.

        Exact under concurrency on every backend: N simultaneous requests on any number of
        instances sharing the backend allow exactly ``limit`` (GCRA: a burst of ``limit``, then
        one request every ``window / limit``). A refusal consumes nothing; a cost above the limit
        is always refused (``retry_after`` infinite); cost 0 reads the state without counting.
        ``fail`` overrides RATE_LIMIT_FAIL for this call (what to answer while Redis is down).
        InvalidArgument for a malformed key, limit or cost.
        """
        rate = limit if isinstance(limit, Rate) else parse_rate(limit)
        return await self._require_rate_limiter().hit(check_key(key), rate, check_cost(cost), fail)

    async def enforce_rate_limit(
        self,
        key: str,
        limit: str | Rate,
        cost: int = 1,
        *,
        fail: Literal["closed", "open"] | None = None,
    ) -> RateLimitDecision:
        """:meth:`rate_limit`, raising RateLimited (with ``retry_after`` and the decision) when refused."""
        decision = await self.rate_limit(key, limit, cost, fail=fail)
        if not decision.allowed:
            wait = (
                "never for this cost" if math.isinf(decision.retry_after) else f"{decision.retry_after:.3g} s"
            )
            raise RateLimited(
                f"rate limit of {decision.limit} per {decision.window:g} s reached for this client; "
                f"retry after {wait}",
                retry_after=decision.retry_after,
                decision=decision,
            )
        return decision

    async def rate_limit_all(
        self,
        checks: Sequence[tuple[str, str | Rate] | tuple[str, str | Rate, int]],
        *,
        fail: Literal["closed", "open"] | None = None,
    ) -> list[RateLimitDecision]:
        """Count one request against several limits at once, all or nothing: ``[(key, limit) or
        (key, limit, cost), ...]`` with distinct keys (an API key's own limit and its owner's, say).

        Allowed only when every limit allows, and then counted by each; otherwise counted by none,
        so a request refused by the owner's limit does not use up the key's. The decisions agree on
        ``allowed``; each carries its own numbers (wait for the largest ``retry_after``). On Redis one
        script decides them all; in a Redis Cluster give the keys one hash tag (``{user:42}``).
        """
        if not isinstance(checks, (list, tuple)) or not 0 < len(checks) <= MAX_CHECKS:
            raise InvalidArgument(f"checks must be a list of 1 to {MAX_CHECKS} (key, limit[, cost]) tuples")
        parsed: list[tuple[str, Rate, int]] = []
        for check in checks:
            if not isinstance(check, tuple) or len(check) not in (2, 3):
                raise InvalidArgument("each check is a (key, limit) or (key, limit, cost) tuple")
            key, limit = check[0], check[1]
            cost = check[2] if len(check) == 3 else 1
            rate = limit if isinstance(limit, Rate) else parse_rate(limit)
            parsed.append((check_key(key), rate, check_cost(cost)))
        if len({key for key, _, _ in parsed}) != len(parsed):
            raise InvalidArgument("each key may appear once in rate_limit_all")
        return await self._require_rate_limiter().hit_all(parsed, fail)

    def _require_rate_limiter(self) -> RateLimiter:
        if self._rate_limiter is None:
            raise ServiceUnavailable(
                "rate limits are not running: build Security with initialize_fundaments()"
            )
        return self._rate_limiter
