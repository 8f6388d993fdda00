"""Access-control queries: roles, their permissions and parents, grants, and the RBAC version.

The version is one row of ``fundaments_state``. Every change to roles or grants bumps it in the
same transaction, so another instance notices a change by reading a single row. Every write
transaction bumps it first, taking that row's lock until the commit, which serializes RBAC writers
across PostgreSQL instances (a cycle check must not race another inheritance change); SQLite's
write lock already does that.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fundaments.store.base import Executor, Row

VERSION_KEY = "rbac_version"
SEEDED_KEY = "rbac_seeded"


# --- version -----------------------------------------------------------------------------------
async def ensure_version(db: Executor) -> None:
    await db.execute(
        "INSERT INTO fundaments_state (key, value) VALUES ($1, 0) ON CONFLICT (key) DO NOTHING", VERSION_KEY
    )


async def read_version(db: Executor) -> int | None:
    value = await db.fetchval("SELECT value FROM fundaments_state WHERE key = $1", VERSION_KEY)
    return None if value is None else int(value)


async def bump_version(tx: Executor) -> int:
    value = await tx.fetchval(
        "INSERT INTO fundaments_state (key, value) VALUES ($1, 1) "
        "ON CONFLICT (key) DO UPDATE SET value = fundaments_state.value + 1 RETURNING value",
        VERSION_KEY,
    )
    return int(value)


async def claim_seeding(tx: Executor) -> bool:
    """True exactly once per database: the caller seeds the default roles."""
    changed = await tx.execute(
        "INSERT INTO fundaments_state (key, value) VALUES ($1, 1) ON CONFLICT (key) DO NOTHING", SEEDED_KEY
    )
    return changed == 1


# --- reading the policy ------------------------------------------------------------------------
async def load_policy(db: Executor) -> list[Row]:
    """Every role, permission and inheritance edge in ONE statement, so one consistent snapshot.

    Rows with ``name`` set are roles; with ``permission`` set, a role's permission; with
    ``parent_id`` set, an inheritance edge (``id`` inherits ``parent_id``).
    """
    return await db.fetch(
        "SELECT id, name, description, created_at, "
        "CAST(NULL AS text) AS permission, CAST(NULL AS bigint) AS parent_id FROM fundaments_roles "
        "UNION ALL SELECT role_id, CAST(NULL AS text), CAST(NULL AS text), CAST(NULL AS float8), "
        "permission, CAST(NULL AS bigint) FROM fundaments_role_permissions "
        "UNION ALL SELECT role_id, CAST(NULL AS text), CAST(NULL AS text), CAST(NULL AS float8), "
        "CAST(NULL AS text), parent_id FROM fundaments_role_inherits"
    )


async def load_user(db: Executor, user_id: int) -> list[Row]:
    """The user's disabled flag with each directly granted role id (NULL when none); [] if unknown."""
    return await db.fetch(
        "SELECT u.is_disabled, ur.role_id FROM fundaments_users u "
        "LEFT JOIN fundaments_user_roles ur ON ur.user_id = u.id WHERE u.id = $1",
        user_id,
    )


async def user_exists(db: Executor, user_id: int) -> bool:
    return await db.fetchval("SELECT 1 FROM fundaments_users WHERE id = $1", user_id) is not None


async def user_role_names(db: Executor, user_id: int) -> list[str]:
    rows = await db.fetch(
        "SELECT r.name FROM fundaments_user_roles ur JOIN fundaments_roles r ON r.id = ur.role_id "
        "WHERE ur.user_id = $1 ORDER BY r.name",
        user_id,
    )
    return [str(r["name"]) for r in rows]


async def role_id(db: Executor, name: str) -> int | None:
    value = await db.fetchval("SELECT id FROM fundaments_roles WHERE name = $1", name)
    return None if value is None else int(value)


async def role_permissions(db: Executor, role: int) -> set[str]:
    rows = await db.fetch("SELECT permission FROM fundaments_role_permissions WHERE role_id = $1", role)
    return {str(r["permission"]) for r in rows}


async def inheritance_edges(db: Executor) -> list[Row]:
    return await db.fetch(
        "SELECT c.name AS child, p.name AS parent FROM fundaments_role_inherits ri "
        "JOIN fundaments_roles c ON c.id = ri.role_id JOIN fundaments_roles p ON p.id = ri.parent_id"
    )


# --- changing the policy -----------------------------------------------------------------------
_INSERT_ROLE = "INSERT INTO fundaments_roles (name, description, created_at) VALUES ($1, $2, $3) RETURNING id"
_INSERT_ROLE_IF_ABSENT = (
    "INSERT INTO fundaments_roles (name, description, created_at) VALUES ($1, $2, $3) "
    "ON CONFLICT (name) DO NOTHING RETURNING id"
)


async def insert_role(
    tx: Executor, name: str, description: str | None, created_at: float, *, if_absent: bool = False
) -> int | None:
    """The new role's id; with ``if_absent``, None when a role of that name already exists."""
    value = await tx.fetchval(
        _INSERT_ROLE_IF_ABSENT if if_absent else _INSERT_ROLE, name, description, created_at
    )
    return None if value is None else int(value)


async def add_permissions(tx: Executor, role: int, permissions: Iterable[str]) -> None:
    rows: list[tuple[Any, ...]] = [(role, p) for p in permissions]
    if rows:
        await tx.executemany(
            "INSERT INTO fundaments_role_permissions (role_id, permission) VALUES ($1, $2)", rows
        )


async def remove_permissions(tx: Executor, role: int, permissions: Iterable[str]) -> None:
    rows: list[tuple[Any, ...]] = [(role, p) for p in permissions]
    if rows:
        await tx.executemany(
            "DELETE FROM fundaments_role_permissions WHERE role_id = $1 AND permission = $2", rows
        )


async def set_parents(tx: Executor, role: int, parents: Iterable[int]) -> None:
    await tx.execute("DELETE FROM fundaments_role_inherits WHERE role_id = $1", role)
    rows: list[tuple[Any, ...]] = [(role, p) for p in parents]
    if rows:
        await tx.executemany(
            "INSERT INTO fundaments_role_inherits (role_id, parent_id) VALUES ($1, $2)", rows
        )


async def delete_role(tx: Executor, role: int) -> None:
    """Delete a role; its grants, permissions and inheritance edges go with it (ON DELETE CASCADE)."""
    await tx.execute("DELETE FROM fundaments_user_roles WHERE role_id = $1", role)
    await tx.execute("DELETE FROM fundaments_role_permissions WHERE role_id = $1", role)
    await tx.execute("DELETE FROM fundaments_role_inherits WHERE role_id = $1 OR parent_id = $1", role)
    await tx.execute("DELETE FROM fundaments_roles WHERE id = $1", role)


async def grant(tx: Executor, user_id: int, role: int, granted_at: float, granted_by: int | None) -> bool:
    """Grant; False when the user already holds the role."""
    changed = await tx.execute(
        "INSERT INTO fundaments_user_roles (user_id, role_id, granted_at, granted_by) "
        "VALUES ($1, $2, $3, $4) ON CONFLICT (user_id, role_id) DO NOTHING",
        user_id,
        role,
        granted_at,
        granted_by,
    )
    return changed == 1


async def revoke(tx: Executor, user_id: int, role: int) -> bool:
    """Revoke; False when the user did not hold the role."""
    changed = await tx.execute(
        "DELETE FROM fundaments_user_roles WHERE user_id = $1 AND role_id = $2", user_id, role
    )
    return changed == 1


async def bump_privilege_epoch(tx: Executor, user_id: int) -> None:
    """The user's sessions rotate on their next request (see sessions)."""
    await tx.execute(
        "UPDATE fundaments_users SET privilege_epoch = privilege_epoch + 1 WHERE id = $1", user_id
    )


# Role $1 and every role inheriting it, however deep: UNION (not UNION ALL) ends the recursion on a
# cycle stored before cycles were refused.
HEIRS_OF_ROLE = (
    "WITH RECURSIVE heirs(id) AS ("
    " SELECT CAST($1 AS bigint)"
    " UNION SELECT ri.role_id FROM fundaments_role_inherits ri JOIN heirs h ON ri.parent_id = h.id"
    ") SELECT id FROM heirs"
)


async def bump_privilege_epochs_of_role(tx: Executor, role: int) -> int:
    """Bump the epoch of every holder of ``role`` or of a role inheriting it; how many users.

    The CTE sits inside the subquery so the statement starts with UPDATE: Python's sqlite3 only
    reports a row count for statements that do.
    """
    return await tx.execute(
        "UPDATE fundaments_users SET privilege_epoch = privilege_epoch + 1 WHERE id IN ("  # noqa: S608 - a constant
        "SELECT ur.user_id FROM fundaments_user_roles ur WHERE ur.role_id IN ("
        f"{HEIRS_OF_ROLE}))",
        role,
    )


async def count_holders(db: Executor, role: int) -> tuple[int, int]:
    """(accounts holding ``role`` directly, accounts holding it or a role inheriting it)."""
    row = await db.fetchrow(
        "SELECT count(DISTINCT CASE WHEN ur.role_id = $1 THEN ur.user_id END) AS direct, "  # noqa: S608 - a constant
        "count(DISTINCT ur.user_id) AS affected FROM fundaments_user_roles ur WHERE ur.role_id IN ("
        f"{HEIRS_OF_ROLE})",
        role,
    )
    assert row is not None
    return int(row["direct"]), int(row["affected"])


async def active_holders(db: Executor, role_id: int, limit: int) -> list[int]:
    """Ids of up to ``limit`` enabled accounts holding ``role_id`` directly."""
    rows = await db.fetch(
        "SELECT ur.user_id FROM fundaments_user_roles ur JOIN fundaments_users u ON u.id = ur.user_id "
        "WHERE ur.role_id = $1 AND NOT u.is_disabled ORDER BY ur.user_id LIMIT $2",
        role_id,
        limit,
    )
    return [int(r["user_id"]) for r in rows]
