"""Property tests for the parsers of untrusted input: permission and role names, and matching."""

from __future__ import annotations

import itertools
import string
from itertools import pairwise
from typing import Any

from hypothesis import HealthCheck, example, given, settings
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


GRANTABLE = ["a:b", "a:*", "ab", "a:b:c", "a:b:*", "b:*", "a.b:x-y", "*"]
PROBES = ["a:b", "a:c", "a:b:c", "a:b:c:d", "ab", "b", "b:x", "a", "a:", "a:*", "*", "a.b:x-y", "c:d"]
_examples = itertools.count()
# Roles in creation order: each inherits only from earlier ones (the API refuses a cycle).
role_specs = st.lists(
    st.tuples(st.sets(st.sampled_from(GRANTABLE), max_size=3), st.sets(st.integers(0, 5), max_size=2)),
    min_size=1,
    max_size=5,
)
user_specs = st.lists(
    st.tuples(st.sets(st.integers(0, 4), max_size=2), st.booleans()), min_size=1, max_size=3
)


def reference_effective(own: list[set[str]], parents: list[set[int]], held: set[int]) -> set[str]:
    """Every permission of the held roles and of all they inherit, by plain reachability."""
    granted: set[str] = set()
    todo, seen = list(held), set()
    while todo:
        role = todo.pop()
        if role not in seen:
            seen.add(role)
            granted |= own[role]
            todo.extend(parents[role])
    return granted


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    roles=role_specs,
    users=user_specs,
    probes=st.lists(st.one_of(st.sampled_from(PROBES), permission_like, anything), min_size=1, max_size=8),
    stranger=st.one_of(anything, st.integers(min_value=-(2**70), max_value=2**70)),
)
# Each over-grant once for certain, whatever the random examples find: an inherited role's
# permission, a wildcard and its own prefix, a disabled superuser.
@example(
    roles=[({"a:b"}, set()), ({"ab"}, {0})], users=[({1}, False)], probes=["a:b", "ab", "a:c"], stranger=0
)
@example(roles=[({"a:b:*"}, set())], users=[({0}, False)], probes=["a:b", "a:b:c", "a:bc"], stranger=0)
@example(roles=[({"*"}, set())], users=[({0}, True), (set(), False)], probes=["x:y", "*"], stranger=0)
async def test_check_permission_agrees_with_a_reference_on_real_users_and_roles(
    fundaments: Fundaments, roles: list[Any], users: list[Any], probes: list[Any], stranger: Any
) -> None:
    """Real roles (with inheritance) granted to real users: each answer is the reference's, so an
    over-grant (a wildcard matching too much, a disabled user's roles, an inherited role too many)
    shows as a True where the reference says False — and an under-grant the other way round."""
    security, db = fundaments.security, fundaments["db"]
    n = next(_examples)
    own = [set(permissions) for permissions, _ in roles]
    parents = [{j for j in inherits if j < i} for i, (_, inherits) in enumerate(roles)]
    names = [f"p{n}r{i}" for i in range(len(roles))]
    for i, name in enumerate(names):
        await security.create_role(name, permissions=sorted(own[i]), inherits=[names[j] for j in parents[i]])
    model: dict[int, set[str] | None] = {}  # user id -> effective permissions; None when disabled
    for k, (held, disabled) in enumerate(users):
        user_id = int(
            await db.fetchval(
                "INSERT INTO fundaments_users (username, password_hash, is_disabled, created_at, "
                "updated_at, password_changed_at) VALUES ($1, 'unused', $2, 0, 0, 0) RETURNING id",
                f"prop{n}u{k}@example.com",
                disabled,
            )
        )
        held_roles = {r for r in held if r < len(roles)}
        for r in sorted(held_roles):
            await security.grant_role(user_id, names[r])
        model[user_id] = None if disabled else reference_effective(own, parents, held_roles)
    for user_id, granted in model.items():
        for permission in probes:
            expected = (
                isinstance(permission, str) and granted is not None and reference_granted(granted, permission)
            )
            assert await security.check_permission(user_id, permission) is expected, (
                user_id,
                permission,
                granted,
            )
    existing = (
        type(stranger) is int and 0 < stranger < 2**63 and await security.get_user(stranger) is not None
    )
    if not existing:  # (earlier examples' users live in the same database)
        for permission in probes:  # no such user: a refusal, never an exception
            assert await security.check_permission(stranger, permission) is False
