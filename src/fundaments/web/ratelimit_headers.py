"""The IETF rate-limit header fields of a response, from :class:`~fundaments.security.RateLimitDecision`.

The structured-field form of draft-ietf-httpapi-ratelimit-headers-10 (September 2025), section 3
(``RateLimit-Policy``) and section 4 (``RateLimit``); each is an RFC 9651 List of quoted policy
names with Integer parameters::

    RateLimit-Policy: "login";q=10;w=60
    RateLimit: "login";r=7;t=42

``q`` is the quota (requests of cost 1 per window), ``w`` the window in seconds, ``r`` the quota
remaining and ``t`` the seconds until it resets. GCRA replenishes continuously, so ``t`` is the time
until the key is fully replenished (a whole burst available again); for a refused request it is
the wait until the same request would be allowed, the same number as ``Retry-After``. Times are
rounded up, so a client that waits ``t`` seconds is never early.

Pure functions with no I/O: the middleware appends these headers to a response whose request
checked a limit (:meth:`fundaments.web.WebContext.record_rate_limit`), and anything answering a
refusal of its own can call :func:`rate_limit_headers` the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from functools import lru_cache

from fundaments.security import RateLimitDecision

DRAFT = "draft-ietf-httpapi-ratelimit-headers-10"
MAX_SF_INTEGER = 999_999_999_999_999  # RFC 9651 3.3.1: at most 15 digits
MAX_RETRY_AFTER = 86_400  # seconds: what a wait that never ends (a cost above the limit) is reported as
MAX_POLICY_NAME = 100  # characters kept of a policy name


def whole_seconds(seconds: float) -> int:
    """``seconds`` rounded up to a non-negative integer (an infinite or NaN wait: MAX_RETRY_AFTER)."""
    if not math.isfinite(seconds):
        return MAX_RETRY_AFTER
    return min(MAX_SF_INTEGER, max(0, math.ceil(seconds)))


def retry_after_seconds(seconds: float) -> int:
    """The ``Retry-After`` value of a wait: whole seconds, rounded up, at least 1 (RFC 9110 10.2.3:
    a non-negative integer; 0 would invite an immediate retry that is refused again)."""
    return max(1, whole_seconds(seconds))


@lru_cache(maxsize=1024)  # policy names are a handful of constants: each quoted once
def sf_string(text: str) -> str:
    """``text`` as an RFC 9651 String: quoted, ``\\`` and ``"`` escaped, any character outside
    printable ASCII (which a String cannot hold) replaced by ``_``, at most MAX_POLICY_NAME long."""
    chars = []
    for char in text[:MAX_POLICY_NAME]:
        if char in '\\"':
            chars.append("\\" + char)
        elif " " <= char <= "~":
            chars.append(char)
        else:
            chars.append("_")
    return '"' + "".join(chars) + '"'


def rate_limit_headers(policies: Iterable[tuple[str, RateLimitDecision]]) -> list[tuple[str, str]]:
    """The ``RateLimit-Policy`` and ``RateLimit`` headers (lower-case names) of the decisions one
    request was counted against, each under its policy name; none for no decision."""
    policy_items: list[str] = []
    state_items: list[str] = []
    for name, decision in policies:
        quoted = sf_string(name)
        quota = min(MAX_SF_INTEGER, max(0, decision.limit))
        window = max(1, whole_seconds(decision.window))
        remaining = min(MAX_SF_INTEGER, max(0, decision.remaining))
        if decision.allowed or not math.isfinite(decision.retry_after):
            reset = whole_seconds(decision.reset_after)
        else:
            reset = retry_after_seconds(decision.retry_after)
        policy_items.append(f"{quoted};q={quota};w={window}")
        state_items.append(f"{quoted};r={remaining};t={reset}")
    if not policy_items:
        return []
    return [("ratelimit-policy", ", ".join(policy_items)), ("ratelimit", ", ".join(state_items))]
