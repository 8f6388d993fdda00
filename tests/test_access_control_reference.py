"""A realistic policy gives the same answers as a straightforward reference implementation.

1,000 users, 20 roles (inheritance chains, wildcards, one superuser role), 200 permissions,
10,000 random checks; then a round of changes and another 2,000 checks, so invalidation is
covered as well as the cold and warm paths.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from fundaments.bootstrap import Fundaments

RESOURCES = [f"res{i}" for i in range(20)]
ACTIONS = [f"act{j}" for j in range(10)]
PERMISSIONS = [f"{r}:{a}" for r in RESOURCES for a in ACTIONS]  # 200
ROLE_NAMES = [f"role{i:02d}" for i in range(20)]
USERS = 1_000
CHECKS = 10_000


@dataclass
class Policy:
    """The reference: plain dicts, plain recursion, string comparisons."""

    own: dict[str, set[str]] = field(default_factory=dict)
    parents: dict[str, set[str]] = field(default_factory=dict)
    grants: dict[int, set[str]] = field(default_factory=dict)
    disabled: set[int] = field(default_factory=set)

    def role_permissions(self, role: str, seen: set[str]) -> set[str]:
        if role in seen or role not in self.own:
            return set()
        seen.add(role)
        result = set(self.own[role])
        for parent in self.parents[role]:
            result |= self.role_permissions(parent, seen)
        return result

    def allows(self, user: int, permission: str) -> bool:
        if user not in self.grants or user in self.disabled:
            return False
        if any(not part or " " in part for part in permission.split(":")):
            return False  # malformed names are never granted, not even by "*"
        granted: set[str] = set()
        for role in self.grants[user]:
            granted |= self.role_permissions(role, set())
        for g in granted:
            if g == permission or g == "*":
                return True
            if g.endswith(":*") and permission.startswith(g[:-1]):
                return True
        return False


def random_policy(rng: random.Random) -> Policy:
    policy = Policy()
    for i, name in enumerate(ROLE_NAMES):
        perms = set(rng.sample(PERMISSIONS, rng.randint(0, 12)))
        if rng.random() < 0.25:
            perms.add(f"{rng.choice(RESOURCES)}:*")
        if i == len(ROLE_NAMES) - 1:
            perms = {"*"}  # a superuser role nobody inherits from (parents are lower-numbered)
        policy.own[name] = perms
        policy.parents[name] = set(rng.sample(ROLE_NAMES[:i], min(i, rng.randint(0, 2))))
    return policy


def random_permission(rng: random.Random) -> str:
    roll = rng.random()
    if roll < 0.85:
        return rng.choice(PERMISSIONS)
    if roll < 0.90:
        return f"{rng.choice(RESOURCES)}:*"
    if roll < 0.95:
        return f"{rng.choice(RESOURCES)}:{rng.choice(ACTIONS)}:sub"
    return rng.choice(["res99:act0", "can_manage_users", "*", "res1", "res1:", "bad permission"])


async def check_all(f: Fundaments, policy: Policy, users: list[int], rng: random.Random, n: int) -> int:
    mismatches = []
    allowed = 0
    for _ in range(n):
        user = rng.choice(users) if rng.random() < 0.98 else rng.choice([0, -1, 10**9])
        permission = random_permission(rng)
        expected = policy.allows(user, permission)
        got = await f.security.check_permission(user, permission)
        allowed += got
        if got != expected:
            mismatches.append((user, permission, expected, got))
    assert mismatches == [], mismatches[:10]
    return allowed


async def test_same_answers_as_the_reference_on_10000_random_checks(fundaments: Fundaments) -> None:
    rng = random.Random(20261129)
    security, db = fundaments.security, fundaments["db"]
    policy = random_policy(rng)
    for name in ROLE_NAMES:  # in order: parents exist before their children
        await security.create_role(
            name, permissions=sorted(policy.own[name]), inherits=sorted(policy.parents[name])
        )

    rows = [(f"ref{i}@example.com", rng.random() < 0.03) for i in range(USERS)]
    await db.executemany(
        "INSERT INTO fundaments_users (username, password_hash, is_disabled, created_at, updated_at, "
        "password_changed_at) VALUES ($1, 'unused', $2, 0, 0, 0)",
        rows,
    )
    id_rows = await db.fetch("SELECT id, is_disabled FROM fundaments_users ORDER BY id")
    users = [int(r["id"]) for r in id_rows]
    policy.disabled = {int(r["id"]) for r in id_rows if r["is_disabled"]}
    role_ids = {r.name: i for i, r in enumerate(await security.list_roles())}
    assert set(ROLE_NAMES) <= set(role_ids)
    direct = []
    for n, user in enumerate(users):
        held = set(rng.sample(ROLE_NAMES[:-1], rng.randint(0, 3)))
        if rng.random() < 0.03:
            held.add(ROLE_NAMES[-1])
        policy.grants[user] = held
        for role in sorted(held):
            if n < 100:
                await security.grant_role(user, role)  # the API for some, bulk rows for the rest
            else:
                direct.append((user, role))
    await db.executemany(
        "INSERT INTO fundaments_user_roles (user_id, role_id, granted_at) "
        "SELECT $1, id, 0 FROM fundaments_roles WHERE name = $2",
        direct,
    )

    allowed = await check_all(fundaments, policy, users, rng, CHECKS)
    assert CHECKS * 0.05 < allowed < CHECKS * 0.95  # the policy is neither empty nor all-powerful

    # Change things through the API; the cache must follow at once on this instance.
    for user in rng.sample(users[:100], 10):
        for role in sorted(policy.grants[user])[:1]:
            await security.revoke_role(user, role)
            policy.grants[user].discard(role)
    changed = rng.sample(ROLE_NAMES[:-1], 3)
    for name in changed:
        policy.own[name] = set(rng.sample(PERMISSIONS, 5))
        await security.set_role_permissions(name, sorted(policy.own[name]))
    await security.delete_role(ROLE_NAMES[0])
    del policy.own[ROLE_NAMES[0]]
    for parents in policy.parents.values():
        parents.discard(ROLE_NAMES[0])
    await check_all(fundaments, policy, users, rng, 2_000)
