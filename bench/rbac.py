"""Permission checks: fundaments' cached check against pycasbin's Enforcer.enforce(), same policy.

Policy: 1,000 users, 20 roles (inheritance, wildcards, one superuser role), 200 permissions,
all on a SQLite file. Measures, in one process:
- warm check_permission (through the Security facade) vs casbin ``Enforcer.enforce()`` with the
  equivalent RBAC model (role hierarchy via ``g``, wildcards via ``keyMatch``);
- the first check after a grant on this instance (one user's set reloaded) and after another
  instance's change (everything reloaded), on SQLite.

Run: python bench/rbac.py   (needs `pip install casbin`; with FUNDAMENTS_TEST_POSTGRES_URL set it
also runs on a fresh PostgreSQL database)
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import statistics
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import casbin

from fundaments import initialize_fundaments
from fundaments.config import load_settings

RESOURCES = [f"res{i}" for i in range(20)]
ACTIONS = [f"act{j}" for j in range(10)]
PERMISSIONS = [f"{r}:{a}" for r in RESOURCES for a in ACTIONS]
ROLES = [f"role{i:02d}" for i in range(20)]
USERS = 1_000
WARM_CHECKS = 300_000
CASBIN_CHECKS = 5_000
COLD_ROUNDS = 300

CASBIN_MODEL = """
[request_definition]
r = sub, obj

[policy_definition]
p = sub, obj

[role_definition]
g = _, _

[policy_effect]
e = some(where (p.eft == allow))

[matchers]
m = g(r.sub, p.sub) && keyMatch(r.obj, p.obj)
"""


def build_policy(rng: random.Random) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    own: dict[str, set[str]] = {}
    parents: dict[str, set[str]] = {}
    for i, name in enumerate(ROLES):
        perms = set(rng.sample(PERMISSIONS, rng.randint(0, 12)))
        if rng.random() < 0.25:
            perms.add(f"{rng.choice(RESOURCES)}:*")
        own[name] = {"*"} if i == len(ROLES) - 1 else perms
        parents[name] = set(rng.sample(ROLES[:i], min(i, rng.randint(0, 2))))
    return own, parents


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(label: str, database_url: str | None) -> None:
    rng = random.Random(20261129)
    own, parents = build_policy(rng)
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            env_file=Path(tmp) / "absent.env",
            database_url=database_url or f"sqlite:///{tmp}/bench.db",
            rbac_default_roles=False,
        )
        f = await initialize_fundaments(settings, configure_logs=False)
        security, db, access = f.security, f["db"], f["access_control"]
        try:
            for name in ROLES:
                await security.create_role(
                    name, permissions=sorted(own[name]), inherits=sorted(parents[name])
                )
            await db.executemany(
                "INSERT INTO fundaments_users (username, password_hash, created_at, updated_at, "
                "password_changed_at) VALUES ($1, 'unused', 0, 0, 0)",
                [(f"bench{i}@example.com",) for i in range(USERS)],
            )
            users = [int(r["id"]) for r in await db.fetch("SELECT id FROM fundaments_users ORDER BY id")]
            grants = {u: set(rng.sample(ROLES[:-1], rng.randint(0, 3))) for u in users}
            for u in rng.sample(users, 30):
                grants[u].add(ROLES[-1])
            await db.executemany(
                "INSERT INTO fundaments_user_roles (user_id, role_id, granted_at) "
                "SELECT $1, id, 0 FROM fundaments_roles WHERE name = $2",
                [(u, r) for u, held in grants.items() for r in held],
            )

            # casbin: the same policy as CSV
            policy_csv = Path(tmp) / "policy.csv"
            lines = [f"p, {role}, {perm}" for role, perms in own.items() for perm in sorted(perms)]
            lines += [f"g, {role}, {parent}" for role, ps in parents.items() for parent in sorted(ps)]
            lines += [f"g, u{u}, {role}" for u, held in grants.items() for role in sorted(held)]
            policy_csv.write_text("\n".join(lines) + "\n")
            model_conf = Path(tmp) / "model.conf"
            model_conf.write_text(CASBIN_MODEL)
            enforcer = casbin.Enforcer(str(model_conf), str(policy_csv))

            sample = [(rng.choice(users), rng.choice(PERMISSIONS)) for _ in range(10_000)]
            disagreements = sum(
                [
                    await security.check_permission(u, p) != enforcer.enforce(f"u{u}", p)
                    for u, p in sample[:2_000]
                ]
            )
            for u in users:  # warm every user's set
                await security.check_permission(u, "res0:act0")

            # warm: through the Security facade, as an application calls it
            check = security.check_permission
            allowed = 0
            start = time.perf_counter()
            for i in range(WARM_CHECKS):
                u, p = sample[i % 10_000]
                allowed += await check(u, p)
            warm = WARM_CHECKS / (time.perf_counter() - start)

            enforce = enforcer.enforce
            start = time.perf_counter()
            for i in range(CASBIN_CHECKS):
                u, p = sample[i % 10_000]
                enforce(f"u{u}", p)
            casbin_rate = CASBIN_CHECKS / (time.perf_counter() - start)

            # cold after a local grant/revoke: that user's set is reloaded (one query)
            local: list[float] = []
            for i in range(COLD_ROUNDS):
                u = users[i]
                if i % 2:
                    await security.revoke_role(u, ROLES[1])
                else:
                    await security.grant_role(u, ROLES[1])
                start = time.perf_counter()
                await check(u, "res1:act1")
                local.append(time.perf_counter() - start)
            # cold after another instance's change: the whole cache is dropped (policy + user reload)
            remote: list[float] = []
            for i in range(COLD_ROUNDS):
                access._invalidate_all()  # what the watcher does when the version moved
                start = time.perf_counter()
                await check(users[i], "res1:act1")
                remote.append(time.perf_counter() - start)
        finally:
            await f.close()

    print(f"--- {label}: {USERS} users, {len(ROLES)} roles, {len(PERMISSIONS)} permissions")
    print(f"agreement with casbin on 2,000 checks: {2_000 - disagreements}/2,000")
    print(f"warm check_permission (Security facade): {warm:,.0f} checks/s ({allowed} allowed)")
    print(f"pycasbin Enforcer.enforce():            {casbin_rate:,.0f} checks/s")
    print(f"ratio: {warm / casbin_rate:,.0f}x")
    for label, values in (("after a local grant/revoke", local), ("after a remote change", remote)):
        print(
            f"cold check {label}: median {statistics.median(values) * 1e3:.3f} ms, "
            f"p99 {percentile(values, 0.99) * 1e3:.3f} ms, max {max(values) * 1e3:.3f} ms"
        )


async def main() -> None:
    print(f"cpu count: {os.cpu_count()}")
    await run("SQLite", None)
    admin = os.environ.get("FUNDAMENTS_TEST_POSTGRES_URL")
    if admin:  # the same on a fresh PostgreSQL database, dropped afterwards
        name = f"fundaments_bench_{secrets.token_hex(4)}"
        conn = await asyncpg.connect(admin)
        await conn.execute(f'CREATE DATABASE "{name}"')
        try:
            parts = urlsplit(admin)
            await run("PostgreSQL", urlunsplit((parts.scheme, parts.netloc, "/" + name, "", "")))
        finally:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            await conn.close()


if __name__ == "__main__":
    asyncio.run(main())
