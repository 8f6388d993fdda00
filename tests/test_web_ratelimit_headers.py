"""fundaments.web.ratelimit_headers: the IETF RateLimit/RateLimit-Policy fields of a decision.

Property tests: any decision and any policy name give values that parse as RFC 9651 Lists of
Strings with Integer parameters (the draft-ietf-httpapi-ratelimit-headers-10 form), with r and t
non-negative integers and every time rounded up.
"""

from __future__ import annotations

import math
import re

from hypothesis import given
from hypothesis import strategies as st

from fundaments.models import RateLimitDecision
from fundaments.web.ratelimit_headers import (
    MAX_RETRY_AFTER,
    rate_limit_headers,
    retry_after_seconds,
    sf_string,
    whole_seconds,
)

# RFC 9651: sf-string = DQUOTE *( unescaped / "%" / "\" ( DQUOTE / "\" ) ) DQUOTE over printable
# ASCII; sf-integer = ["-"] 1*15DIGIT; a parameter ";" key "=" value; list members ", "-separated.
SF_STRING = r'"(?:[ !#-\[\]-~]|\\["\\])*"'
POLICY_ITEM = re.compile(rf"({SF_STRING});q=(\d{{1,15}});w=(\d{{1,15}})")
STATE_ITEM = re.compile(rf"({SF_STRING});r=(\d{{1,15}});t=(\d{{1,15}})")


def members(value: str, item: re.Pattern[str]) -> list[re.Match[str]]:
    parts = value.split(", ") if value else []
    found = [item.fullmatch(part) for part in parts]
    assert all(found), value
    return [m for m in found if m is not None]


def unquote(quoted: str) -> str:
    return re.sub(r"\\(.)", r"\1", quoted[1:-1])


def decision(
    allowed: bool = True, remaining: int = 7, retry: float = 0.0, reset: float = 41.2
) -> RateLimitDecision:
    return RateLimitDecision(allowed, remaining, retry, reset, limit=10, window=60.0)


def test_the_documented_form() -> None:
    assert rate_limit_headers([("login", decision())]) == [
        ("ratelimit-policy", '"login";q=10;w=60'),
        ("ratelimit", '"login";r=7;t=42'),
    ]


def test_a_refused_decision_resets_when_the_request_would_be_allowed() -> None:
    refused = decision(allowed=False, remaining=0, retry=5.01, reset=59.0)
    assert rate_limit_headers([("x", refused)])[1] == ("ratelimit", '"x";r=0;t=6')


def test_several_policies_are_list_members_and_none_give_no_header() -> None:
    headers = dict(rate_limit_headers([("ip", decision()), ("address", decision(remaining=2))]))
    assert headers["ratelimit"] == '"ip";r=7;t=42, "address";r=2;t=42'
    assert rate_limit_headers([]) == []


def test_names_are_escaped_and_bounded() -> None:
    assert sf_string('a"b\\c') == r'"a\"b\\c"'
    assert sf_string("caf\u00e9\n") == '"caf__"'
    assert len(sf_string("x" * 500)) == 102


def test_retry_after_is_a_whole_second_at_least_and_infinite_waits_are_bounded() -> None:
    assert retry_after_seconds(0.0) == 1
    assert retry_after_seconds(1.0) == 1
    assert retry_after_seconds(1.000001) == 2
    assert retry_after_seconds(math.inf) == MAX_RETRY_AFTER
    assert whole_seconds(-3.0) == 0 and whole_seconds(math.nan) == MAX_RETRY_AFTER


times = st.one_of(st.floats(min_value=0.0, max_value=1e7, allow_nan=False), st.just(math.inf), st.just(0.0))
decisions = st.builds(
    RateLimitDecision,
    allowed=st.booleans(),
    remaining=st.integers(min_value=-5, max_value=10**13),
    retry_after=times,
    reset_after=times,
    limit=st.integers(min_value=1, max_value=10**9),
    window=st.floats(min_value=0.001, max_value=86_400.0),
)


@given(st.lists(st.tuples(st.text(max_size=120), decisions), min_size=1, max_size=4))
def test_any_decision_gives_valid_structured_fields(policies: list[tuple[str, RateLimitDecision]]) -> None:
    headers = dict(rate_limit_headers(policies))
    assert set(headers) == {"ratelimit-policy", "ratelimit"}
    for value in headers.values():
        assert value.isascii() and "\n" not in value and "\r" not in value
    policy = members(headers["ratelimit-policy"], POLICY_ITEM)
    state = members(headers["ratelimit"], STATE_ITEM)
    assert len(policy) == len(state) == len(policies)
    for (name, d), p, s in zip(policies, policy, state, strict=True):
        assert p[1] == s[1]  # the same policy name in both fields
        kept = unquote(p[1])
        assert len(kept) == min(len(name), 100)
        assert all(k == c or (k == "_" and not " " <= c <= "~") for k, c in zip(kept, name, strict=False))
        assert int(p[2]) == d.limit and int(p[3]) >= d.window
        assert int(s[2]) == max(0, d.remaining) or int(s[2]) == 999_999_999_999_999
        reset = int(s[3])
        if d.allowed and math.isfinite(d.reset_after):
            assert reset >= d.reset_after and reset - 1 < d.reset_after  # rounded up, never early
        elif not d.allowed and math.isfinite(d.retry_after):
            assert reset >= max(1.0, d.retry_after) and reset == retry_after_seconds(d.retry_after)
