"""Property tests for the parsers of untrusted input: permission and role names, and matching."""

from __future__ import annotations

import string
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fundaments.access_control import (
    find_cycle,
    permission_granted,
    validate_permission,
    validate_role_name,
    wildcard_keys,
)
from fundaments.bootstrap import Fundaments
from fundaments.errors import RoleError

HEAD = set(string.ascii_letters + string.digits + "_")
BODY = HEAD | set(".-")


def reference_valid_permission(p: str) -> bool:
    if not 1 <= len(p) <= 128:
        return False
    if p == "*":
        return True
    parts = p.split(":")
    for i, part in enumerate(parts):
        if part == "*" and i == len(parts) - 1 and i > 0:
            continue
        if not part or part[0] not in HEAD or any(c not in BODY for c in part):
            return False
    return True


def reference_granted(granted: set[str], p: str) -> bool:
    if p in granted:
        return True
    if not reference_valid_permission(p):
        return False
    return any(g == "*" or (g.endswith(":*") and p.startswith(g[:-1])) for g in granted)


# Small alphabets so the interesting collisions (prefixes, wildcards, separators) happen often.
piece = st.sampled_from(["a", "b", "ab", "*", "", "a.b", "-x", "é", " ", "a\n"])
permission_like = st.lists(piece, min_size=1, max_size=4).map(":".join)
anything = st.one_of(
    st.text(max_size=200), permission_like, st.binary(max_size=10), st.integers(), st.none(), st.floats()
)


@given(anything)
def test_validate_permission_accepts_exactly_the_grammar(value: Any) -> None:
    expected = isinstance(value, str) and reference_valid_permission(value)
    try:
        assert validate_permission(value) == value and expected
    except RoleError:
        assert not expected
    keys = wildcard_keys(value) if isinstance(value, str) else None
    assert (keys is not None) == expected


@given(st.one_of(st.text(max_size=80), st.integers(), st.none()))
def test_validate_role_name_returns_the_name_or_raises_role_error(value: Any) -> None:
    try:
        name = validate_role_name(value)
    except RoleError:
        return
    assert name == value and 1 <= len(name) <= 64 and name.isascii() and name == name.lower()
    assert name.strip() == name and "'" not in name and " " not in name


@given(st.sets(permission_like.filter(reference_valid_permission), max_size=6), permission_like)
def test_matching_agrees_with_the_reference(granted: set[str], permission: str) -> None:
    assert permission_granted(frozenset(granted), permission) == reference_granted(granted, permission)


@given(st.dictionaries(st.sampled_from("abcdef"), st.sets(st.sampled_from("abcdef"), max_size=3), max_size=6))
def test_find_cycle_finds_a_real_cycle_or_none_exists(edges: dict[str, set[str]]) -> None:
    for start in "abcdef":
        cycle = find_cycle(edges, start)
        reachable: set[str] = set()
        todo = list(edges.get(start, ()))
        while todo:
            role = todo.pop()
            if role not in reachable:
                reachable.add(role)
                todo.extend(edges.get(role, ()))
        assert (cycle is not None) == (start in reachable)
        if cycle is not None:
            assert cycle[0] == cycle[-1] == start
            assert all(b in edges.get(a, ()) for a, b in pairwise(cycle))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(user=st.one_of(anything, st.integers(min_value=-(2**70), max_value=2**70)), permission=anything)
async def test_check_permission_is_total(fundaments: Fundaments, user: Any, permission: Any) -> None:
    result = await fundaments.security.check_permission(user, permission)
    assert result is False  # no user was created: every answer is a refusal, never an exception
