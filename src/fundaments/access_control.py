"""Role-based access control: roles, permissions and grants, checked from an in-process cache.

Permissions are strings: ``resource:action`` (``articles:write``), deeper (``articles:comments:delete``)
or flat (``can_manage_users``). A grant of ``articles:*`` covers every permission that starts with
``articles:``; ``*`` covers everything. A role carries permissions and may inherit other roles.

Why a cache, and how it stays correct:
- A user's effective permission set (their roles, every inherited role, unioned) is computed once
  and kept as a frozenset, so a warm ``check_permission`` is a dict lookup and a set lookup.
- Every change to roles or grants bumps a version counter (one row of ``fundaments_state``) in the
  same transaction. The instance that made the change drops what it affects at once; every instance
  polls the counter every ``RBAC_REFRESH_SECONDS`` (default 0.5 s) and drops its whole cache when it
  moved. Disabling a user bumps the counter too (:meth:`AccessControl.invalidate_user`).
- A load that raced a change is never stored: loads remember the cache generation they started in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from typing import Any

from fundaments.audit import AuditTrail
from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.errors import LastAdministratorError, PermissionDenied, RoleError, UnknownUserError
from fundaments.models import RequestContext, Role, storable_text
from fundaments.store import Database, Executor, Row
from fundaments.store import rbac as queries

log = logging.getLogger(__name__)

MAX_ROLE_NAME = 64  # fundaments_roles.name
ADMINISTRATORS_SHOWN = 10  # holders of `*` read per role by the last-administrator guard
MAX_PERMISSION = 128  # fundaments_role_permissions.permission
MAX_DESCRIPTION = 1_000
MAX_PERMISSIONS_PER_ROLE = 1_000
MAX_USER_ID = 2**63 - 1  # BIGINT
MAX_CACHED_USERS = 100_000  # beyond this the oldest entries are dropped (a cold check costs ~0.1 ms)

_ROLE_NAME = re.compile(r"[a-z][a-z0-9_.-]{0,63}")
ROLE_NAME_RULE = (  # _ROLE_NAME in words, for error messages and forms
    f"use 1 to {MAX_ROLE_NAME} characters, lowercase letters, digits, '_', '-' or '.', "
    "starting with a letter (for example 'editor')"
)
_SEGMENT = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_PERMISSION = re.compile(rf"\*|{_SEGMENT}(?::{_SEGMENT})*(?::\*)?")

DEFAULT_ROLES: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("admin", ("*",), "Every permission"),
    ("member", (), "A signed-up user; no permissions until the application gives it some"),
)


# --- names ---------------------------------------------------------------------------------------
def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def validate_role_name(name: object) -> str:
    """``name`` if it is a valid role name; RoleError saying what is wrong otherwise."""
    if not isinstance(name, str):
        raise RoleError(f"a role name must be a string, not {type(name).__name__}")
    if not _ROLE_NAME.fullmatch(name):
        raise RoleError(f"invalid role name {_shown(name)}: {ROLE_NAME_RULE}")
    return str(name)


def validate_permission(permission: object) -> str:
    """``permission`` if it is a valid permission name; RoleError saying what is wrong otherwise."""
    if not isinstance(permission, str):
        raise RoleError(f"a permission must be a string, not {type(permission).__name__}")
    if len(permission) > MAX_PERMISSION or not _PERMISSION.fullmatch(permission):
        raise RoleError(
            f"invalid permission {_shown(permission)}: use 'resource:action' (for example "
            f"'articles:write'), a flat name ('can_manage_users'), 'resource:*' or '*'; at most "
            f"{MAX_PERMISSION} characters of letters, digits, '_', '-', '.' and ':'"
        )
    return str(permission)


def _permission_list(permissions: Iterable[str]) -> tuple[str, ...]:
    if isinstance(permissions, str | bytes):
        raise RoleError("permissions must be a list of strings, not a single string")
    result = tuple(sorted({validate_permission(p) for p in permissions}))
    if len(result) > MAX_PERMISSIONS_PER_ROLE:
        raise RoleError(f"a role may carry at most {MAX_PERMISSIONS_PER_ROLE} permissions")
    return result


def _role_list(names: Iterable[str]) -> tuple[str, ...]:
    if isinstance(names, str | bytes):
        raise RoleError("inherits must be a list of role names, not a single string")
    return tuple(sorted({validate_role_name(n) for n in names}))


def _user_id(user_id: object) -> int | None:
    """The user id as a plain int, or None when it cannot name a stored user."""
    if isinstance(user_id, bool) or not isinstance(user_id, int):
        return None
    return int(user_id) if 0 < user_id <= MAX_USER_ID else None


def _require_user_id(user_id: object) -> int:
    uid = _user_id(user_id)
    if uid is None:
        raise UnknownUserError(f"no user has the id {_shown(user_id)}")
    return uid


def _actor(actor_user_id: object) -> int | None:
    if actor_user_id is None:
        return None
    uid = _user_id(actor_user_id)
    if uid is None:
        raise ValueError(
            f"actor_user_id must be a user id (a positive int) or None, not {_shown(actor_user_id)}"
        )
    return uid


# --- matching ------------------------------------------------------------------------------------
@lru_cache(maxsize=8_192)
def wildcard_keys(permission: str) -> tuple[str, ...] | None:
    """The grants that would cover ``permission`` by wildcard, or None if it is not a valid name.

    ``articles:comments:delete`` -> ``("*", "articles:*", "articles:comments:*")``.
    """
    if len(permission) > MAX_PERMISSION or not _PERMISSION.fullmatch(permission):
        return None
    parts = permission.split(":")
    return ("*", *(":".join(parts[:i]) + ":*" for i in range(1, len(parts))))


def permission_granted(granted: frozenset[str], permission: str) -> bool:
    """Whether a set of granted permissions (wildcards included) covers ``permission``."""
    if permission in granted:
        return True
    keys = wildcard_keys(permission)
    return keys is not None and any(k in granted for k in keys)


def _has_wildcards(permissions: Iterable[str]) -> bool:
    return any(p == "*" or p.endswith(":*") for p in permissions)


def find_cycle(parents: dict[str, set[str]], start: str) -> list[str] | None:
    """A path ``start -> ... -> start`` along inheritance edges, or None when there is none."""
    stack: list[tuple[str, list[str]]] = [(start, [start])]
    seen: set[str] = set()
    while stack:
        role, path = stack.pop()
        for parent in sorted(parents.get(role, ())):
            if parent == start:
                return [*path, start]
            if parent not in seen:
                seen.add(parent)
                stack.append((parent, [*path, parent]))
    return None


# --- the cached policy ---------------------------------------------------------------------------
class _Entry:
    """One user's effective permissions; a disabled user's set is empty."""

    __slots__ = ("permissions", "wildcards")

    def __init__(self, permissions: frozenset[str]) -> None:
        self.permissions = permissions
        self.wildcards = _has_wildcards(permissions)


_NOTHING = _Entry(frozenset())


class _Policy:
    """Every role with its permissions and parents; effective sets computed on first use."""

    __slots__ = ("_effective", "created", "descriptions", "ids", "names", "own", "parents")

    def __init__(self, rows: Sequence[Row]) -> None:
        self.names: dict[int, str] = {}
        self.descriptions: dict[int, str | None] = {}
        self.created: dict[int, float] = {}
        self.own: dict[int, set[str]] = {}
        self.parents: dict[int, set[int]] = {}
        for row in rows:
            rid = int(row["id"])
            if row["name"] is not None:
                self.names[rid] = str(row["name"])
                self.descriptions[rid] = row["description"]
                self.created[rid] = float(row["created_at"])
            elif row["permission"] is not None:
                self.own.setdefault(rid, set()).add(str(row["permission"]))
            elif row["parent_id"] is not None:
                self.parents.setdefault(rid, set()).add(int(row["parent_id"]))
        self.ids = {name: rid for rid, name in self.names.items()}
        self._effective: dict[int, frozenset[str]] = {}

    def effective(self, role: int) -> frozenset[str]:
        """The role's permissions with those of every role it inherits, however deep."""
        cached = self._effective.get(role)
        if cached is None:
            seen = {role}
            todo = [role]
            permissions: set[str] = set()
            while todo:
                current = todo.pop()
                permissions |= self.own.get(current, set())
                for parent in self.parents.get(current, ()):
                    if parent not in seen:  # a cycle cannot be stored, but never loop on one
                        seen.add(parent)
                        todo.append(parent)
            cached = self._effective[role] = frozenset(permissions)
        return cached

    def knows(self, roles: Iterable[int]) -> bool:
        return all(r in self.names for r in roles)

    def union(self, roles: Iterable[int]) -> frozenset[str]:
        result: set[str] = set()
        for role in roles:
            if role in self.names:
                result |= self.effective(role)
        return frozenset(result)

    def roles(self) -> list[Role]:
        return sorted(
            (
                Role(
                    name=name,
                    permissions=tuple(sorted(self.own.get(rid, ()))),
                    inherits=tuple(
                        sorted(self.names[p] for p in self.parents.get(rid, ()) if p in self.names)
                    ),
                    description=self.descriptions[rid],
                    created_at=self.created[rid],
                )
                for rid, name in self.names.items()
            ),
            key=lambda role: role.name,
        )


class AccessControl:
    """Roles, grants and permission checks; one per application instance."""

    def __init__(self, db: Database, settings: Settings, clock: Clock, audit: AuditTrail) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._audit = audit
        self._users: dict[int, _Entry] = {}
        self._policy: _Policy | None = None
        self._policy_lock = asyncio.Lock()
        self._generation = 0  # moves on every invalidation; a load started earlier is not stored
        self._known_version: int | None = None
        self._watcher: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Seed the default roles on a database's first start, then watch for other instances' changes."""
        async with self._db.transaction() as tx:
            await queries.ensure_version(tx)
            if self._settings.rbac_default_roles and await queries.claim_seeding(tx):
                await queries.bump_version(tx)  # before the audit records: the RBAC writers' lock order
                await self._seed(tx)
        self._known_version = await queries.read_version(self._db)
        self._watcher = asyncio.create_task(self._watch(), name="fundaments-rbac-watcher")

    async def _seed(self, tx: Executor) -> None:
        # ON CONFLICT DO NOTHING: a role the application created under the same name is kept.
        for name, permissions, description in DEFAULT_ROLES:
            role = await queries.insert_role(tx, name, description, self._clock.now(), if_absent=True)
            if role is not None:
                await queries.add_permissions(tx, role, permissions)
                await self._audit.record(
                    "role.created",
                    tx=tx,
                    details={"role": name, "permissions": list(permissions), "seeded": True},
                )

    async def close(self) -> None:
        """Stop watching for changes."""
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _watch(self) -> None:
        interval = self._settings.rbac_refresh_seconds
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    async def refresh(self) -> None:
        """Read the version counter now; drop every cached set if another instance changed something."""
        try:
            version = await queries.read_version(self._db)
        except Exception as exc:  # keep watching; without the counter, fail closed by dropping the cache
            if self._known_version is not None:  # once per outage, not every poll
                log.warning("cannot read the RBAC version (%s); permission cache dropped", type(exc).__name__)
            self._known_version = None
            self._invalidate_all()
            return
        if version != self._known_version:
            self._known_version = version
            self._invalidate_all()

    # --- cache -------------------------------------------------------------------------------
    def _invalidate_all(self) -> None:
        self._generation += 1
        self._users.clear()
        self._policy = None

    def _changed(
        self,
        version: int | None,
        users: Iterable[int] = (),
        *,
        policy: bool = False,
        everything: bool = False,
    ) -> None:
        """Drop what a committed change made stale; skip the watcher's full drop when it was ours alone."""
        self._generation += 1
        if everything:
            self._users.clear()
            self._policy = None
        else:
            for user in users:
                self._users.pop(user, None)
            if policy:
                self._policy = None
        known = self._known_version
        if version is not None and known is not None and version == known + 1:
            self._known_version = version  # no other change since the last poll: the rest is current

    async def _current_policy(self, *, fresh: bool = False) -> _Policy:
        policy = self._policy
        if policy is not None and not fresh:
            return policy
        async with self._policy_lock:
            if self._policy is not None and (not fresh or self._policy is not policy):
                return self._policy
            generation = self._generation
            loaded = _Policy(await queries.load_policy(self._db))
            if generation == self._generation:
                self._policy = loaded
            return loaded

    async def _entry(self, user_id: int) -> _Entry | None:
        entry = self._users.get(user_id)
        if entry is not None:
            return entry
        generation = self._generation
        policy = await self._current_policy()
        rows = await queries.load_user(self._db, user_id)
        if not rows:
            return None  # unknown users are not cached: a registration must not be shadowed
        if bool(rows[0]["is_disabled"]):
            entry = _NOTHING
        else:
            roles = [int(r["role_id"]) for r in rows if r["role_id"] is not None]
            if not policy.knows(roles):  # a role newer than the cached policy
                policy = await self._current_policy(fresh=True)
            entry = _Entry(policy.union(roles))
        if generation == self._generation:
            if len(self._users) >= MAX_CACHED_USERS:
                del self._users[next(iter(self._users))]
            self._users[user_id] = entry
        return entry

    async def invalidate_user(self, tx: Executor, user_id: int) -> None:
        """Make every instance forget its cached set for ``user_id`` (call when disabling/enabling).

        Call it FIRST in the caller's transaction, before touching the user's row or the audit trail:
        it takes the RBAC version lock, and every RBAC writer takes that lock before user rows.
        """
        await queries.bump_version(tx)
        self._generation += 1
        self._users.pop(user_id, None)
        # The watcher sees the bump after the commit and drops the whole cache, which also
        # covers a check that reloaded the old row between now and the commit.

    # --- checks ------------------------------------------------------------------------------
    async def check_permission(self, user_id: Any, permission: Any) -> bool:
        """True when the user holds the permission; False for unknown or disabled users, bad input.

        Raises only StorageError, when the database cannot be read for a cold check (fail closed).
        """
        if not isinstance(permission, str):
            return False
        entry = self._users.get(user_id) if type(user_id) is int else None
        if entry is None:
            uid = _user_id(user_id)
            if uid is None:
                return False
            entry = await self._entry(uid)
            if entry is None:
                return False
        granted = entry.permissions
        if permission in granted:
            return True
        if not entry.wildcards:
            return False
        keys = wildcard_keys(permission)
        if keys is None:
            return False
        for key in keys:  # noqa: SIM110 - a generator for any() costs more than the lookups here
            if key in granted:
                return True
        return False

    async def require_permission(
        self, user_id: Any, permission: Any, *, request_data: RequestContext | Mapping[str, Any] | None = None
    ) -> None:
        """Return if the user holds the permission; else audit ``permission.denied`` and raise.

        ``request_data`` (the seed's dict or a RequestContext), when given, puts the client IP and
        User-Agent into the audit event.
        """
        if await self.check_permission(user_id, permission):
            return
        uid = _user_id(user_id)
        shown = permission[:MAX_PERMISSION] if isinstance(permission, str) else _shown(permission)
        context: RequestContext | None = None
        if request_data is not None:
            with contextlib.suppress(ValueError):  # a malformed context must not hide the denial
                context = RequestContext.coerce(request_data)
        await self._audit.record(
            "permission.denied",
            outcome="failure",
            subject_user_id=uid,
            ip_address=context.ip_address if context else None,
            user_agent=context.user_agent if context else None,
            details={"permission": shown},
        )
        raise PermissionDenied(
            f"user {_shown(user_id)} lacks the permission {_shown(permission)}",
            user_id=uid,
            permission=permission if isinstance(permission, str) else None,
        )

    # --- the last administrator ---------------------------------------------------------------
    async def administrators(self, tx: Executor) -> frozenset[int]:
        """Enabled accounts whose effective permissions include ``*`` (up to ADMINISTRATORS_SHOWN
        per role: enough to tell none from some), as ``tx`` sees them.

        Call it after the transaction's first statement took the RBAC lock (``invalidate_user``,
        ``bump_version``), so concurrent changes are counted one after the other."""
        policy = _Policy(await queries.load_policy(tx))
        found: set[int] = set()
        for role in sorted(policy.names):
            if "*" in policy.effective(role):
                found.update(await queries.active_holders(tx, role, ADMINISTRATORS_SHOWN))
        return frozenset(found)

    async def keep_an_administrator(self, tx: Executor, before: frozenset[int]) -> None:
        """Raise LastAdministratorError (rolling ``tx`` back) when the change made in ``tx`` left no
        administrator where ``before`` had one."""
        if before and not await self.administrators(tx):
            shown = ", ".join(str(uid) for uid in sorted(before))
            raise LastAdministratorError(
                f"refused: it would leave no active account holding * (the last administrator: user "
                f"{shown}); grant the admin role to another account first"
            )

    # --- delegation ----------------------------------------------------------------------------
    async def require_delegation(
        self,
        actor_user_id: int | None,
        action: str,
        *,
        roles: Iterable[str] = (),
        permissions: Iterable[str] = (),
        subject_user_id: int | None = None,
    ) -> None:
        """Refuse an actor passing on or overruling permissions it does not hold itself.

        With an actor (None: a trusted caller such as the CLI), every permission involved must be
        covered by the actor's own effective set, read fresh from the database: the effective
        permissions of ``roles``, the ``permissions`` listed, and — with ``subject_user_id`` —
        everything the target account holds (a disabled account's roles included). Holders of
        ``*`` cover everything. A refusal is audited ``delegation.denied`` and raises
        PermissionDenied naming what is missing; unknown roles are left to the action to report.
        """
        if actor_user_id is None:
            return
        policy = _Policy(await queries.load_policy(self._db))
        actor_rows = await queries.load_user(self._db, actor_user_id)
        held = (
            frozenset()
            if not actor_rows or bool(actor_rows[0]["is_disabled"])
            else policy.union(int(r["role_id"]) for r in actor_rows if r["role_id"] is not None)
        )
        names = sorted({r for r in roles if isinstance(r, str)})
        needed = set(permissions)
        for name in names:
            role = policy.ids.get(name)
            if role is not None:
                needed |= policy.effective(role)
        if subject_user_id is not None:
            rows = await queries.load_user(self._db, subject_user_id)
            needed |= policy.union(int(r["role_id"]) for r in rows if r["role_id"] is not None)
        missing = sorted(p for p in needed if not permission_granted(held, p))
        if not missing:
            return
        await self._audit.record(
            "delegation.denied",
            outcome="failure",
            actor_user_id=actor_user_id,
            subject_user_id=subject_user_id,
            details={"action": action, "roles": names, "missing": missing[:20]},
        )
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise PermissionDenied(
            f"user {actor_user_id} may not {action}: it does not hold {shown} itself "
            "(an actor can only grant, revoke or overrule permissions it holds)",
            user_id=actor_user_id,
            permission=missing[0],
        )

    async def user_permissions(self, user_id: Any) -> frozenset[str]:
        """The user's effective permissions (wildcards as granted); empty for a disabled user."""
        entry = await self._entry(_require_user_id(user_id))
        if entry is None:
            raise UnknownUserError(f"no user has the id {_shown(user_id)}")
        return entry.permissions

    async def user_roles(self, user_id: Any) -> list[str]:
        """The roles granted to the user directly, sorted by name."""
        uid = _require_user_id(user_id)
        names = await queries.user_role_names(self._db, uid)
        if not names and not await queries.user_exists(self._db, uid):
            raise UnknownUserError(f"no user has the id {uid}")
        return names

    async def role_holders(self, name: Any) -> tuple[int, int]:
        """(accounts holding the role directly, accounts a change to it affects: directly or
        through a role inheriting it); RoleError for an unknown role."""
        role = await self._role_id(self._db, validate_role_name(name))
        return await queries.count_holders(self._db, role)

    async def list_roles(self) -> list[Role]:
        """Every role, sorted by name, as stored now."""
        return _Policy(await queries.load_policy(self._db)).roles()

    # --- grants ------------------------------------------------------------------------------
    async def grant_role(
        self, user_id: Any, role: Any, *, actor_user_id: Any = None, tx: Executor | None = None
    ) -> bool:
        """Grant ``role``; False if the user already held it. RoleError / UnknownUserError for unknown names.

        With ``tx`` the grant joins the caller's transaction (call it before the caller's audit
        record: it takes the RBAC version lock).
        """
        return await self._grant_or_revoke(True, user_id, role, actor_user_id, tx)

    async def revoke_role(
        self, user_id: Any, role: Any, *, actor_user_id: Any = None, tx: Executor | None = None
    ) -> bool:
        """Revoke ``role``; False if the user did not hold it. Errors as for grant_role."""
        return await self._grant_or_revoke(False, user_id, role, actor_user_id, tx)

    async def _grant_or_revoke(
        self, grant: bool, user_id: Any, role: Any, actor_user_id: Any, tx: Executor | None
    ) -> bool:
        uid = _require_user_id(user_id)
        name = validate_role_name(role)
        actor = _actor(actor_user_id)
        if tx is not None:
            changed, _version = await self._grant_in(tx, grant, uid, name, actor)
            if changed:
                self._generation += 1
                self._users.pop(uid, None)  # and the watcher drops everything once the caller commits
            return changed
        async with self._db.transaction() as own:
            changed, version = await self._grant_in(own, grant, uid, name, actor)
        self._changed(version, [uid] if changed else ())
        return changed

    async def _grant_in(
        self, tx: Executor, grant: bool, user_id: int, name: str, actor: int | None
    ) -> tuple[bool, int]:
        version = await queries.bump_version(tx)  # first: the RBAC writers' lock
        role = await self._role_id(tx, name)
        if not await queries.user_exists(tx, user_id):
            raise UnknownUserError(f"no user has the id {user_id}")
        if grant:
            changed = await queries.grant(tx, user_id, role, self._clock.now(), actor)
        else:
            before = await self.administrators(tx)
            changed = await queries.revoke(tx, user_id, role)
            await self.keep_an_administrator(tx, before)
        if changed:
            await queries.bump_privilege_epoch(tx, user_id)
            await self._audit.record(
                "role.granted" if grant else "role.revoked",
                tx=tx,
                actor_user_id=actor,
                subject_user_id=user_id,
                details={"role": name},
            )
        return changed, version

    # --- roles -------------------------------------------------------------------------------
    @staticmethod
    async def _role_id(tx: Executor, name: str) -> int:
        role = await queries.role_id(tx, name)
        if role is None:
            raise RoleError(f"unknown role {name!r}: create it first or check the spelling")
        return role

    async def create_role(
        self,
        name: Any,
        permissions: Iterable[str] = (),
        inherits: Iterable[str] = (),
        description: str | None = None,
        *,
        actor_user_id: Any = None,
    ) -> Role:
        """Create a role; RoleError for a bad or taken name, a bad permission or an unknown parent."""
        name = validate_role_name(name)
        granted = _permission_list(permissions)
        parents = _role_list(inherits)
        actor = _actor(actor_user_id)
        if description is not None and (
            not isinstance(description, str) or len(description) > MAX_DESCRIPTION
        ):
            raise RoleError(f"a role description must be a string of at most {MAX_DESCRIPTION} characters")
        if description is not None:  # NUL and lone surrogates: neither database stores them
            description = storable_text(description)
        if name in parents:
            raise RoleError(f"inheritance cycle refused: {name} -> {name} (a role cannot inherit itself)")
        now = self._clock.now()
        async with self._db.transaction() as tx:
            version = await queries.bump_version(tx)
            if await queries.role_id(tx, name) is not None:
                raise RoleError(f"a role named {name!r} already exists")
            parent_ids = [await self._role_id(tx, p) for p in parents]
            role = await queries.insert_role(tx, name, description, now)
            assert role is not None
            await queries.add_permissions(tx, role, granted)
            await queries.set_parents(tx, role, parent_ids)
            await self._audit.record(
                "role.created",
                tx=tx,
                actor_user_id=actor,
                details={"role": name, "permissions": list(granted), "inherits": list(parents)},
            )
        self._changed(version, policy=True)  # nobody holds it yet: cached user sets stay valid
        return Role(name, granted, parents, description, now)

    async def role_holder_count(self, name: Any) -> int:
        """How many accounts hold the role directly; RoleError for an unknown role."""
        name = validate_role_name(name)
        return await queries.holder_count(self._db, await self._role_id(self._db, name))

    async def delete_role(self, name: Any, *, actor_user_id: Any = None) -> None:
        """Delete a role, revoking it from every holder and removing it from roles that inherit it."""
        name = validate_role_name(name)
        actor = _actor(actor_user_id)
        async with self._db.transaction() as tx:
            version = await queries.bump_version(tx)
            role = await self._role_id(tx, name)
            before = await self.administrators(tx)
            affected = await queries.bump_privilege_epochs_of_role(tx, role)
            await queries.delete_role(tx, role)
            await self.keep_an_administrator(tx, before)
            await self._audit.record(
                "role.deleted", tx=tx, actor_user_id=actor, details={"role": name, "affected_users": affected}
            )
        self._changed(version, everything=True)

    async def set_role_permissions(
        self, name: Any, permissions: Iterable[str], *, actor_user_id: Any = None
    ) -> None:
        """Replace a role's own permissions (inherited ones are unchanged)."""
        name = validate_role_name(name)
        wanted = set(_permission_list(permissions))
        actor = _actor(actor_user_id)
        async with self._db.transaction() as tx:
            version = await queries.bump_version(tx)
            role = await self._role_id(tx, name)
            current = await queries.role_permissions(tx, role)
            if current == wanted:
                return
            added, removed = sorted(wanted - current), sorted(current - wanted)
            before = await self.administrators(tx)
            await queries.remove_permissions(tx, role, removed)
            await queries.add_permissions(tx, role, added)
            await self.keep_an_administrator(tx, before)
            affected = await queries.bump_privilege_epochs_of_role(tx, role)
            await self._audit.record(
                "role.updated",
                tx=tx,
                actor_user_id=actor,
                details={"role": name, "added": added, "removed": removed, "affected_users": affected},
            )
        self._changed(version, everything=True)

    async def set_role_inherits(
        self, name: Any, inherits: Iterable[str], *, actor_user_id: Any = None
    ) -> None:
        """Replace the roles ``name`` inherits; RoleError naming the cycle when one would form."""
        name = validate_role_name(name)
        parents = _role_list(inherits)
        actor = _actor(actor_user_id)
        async with self._db.transaction() as tx:
            version = await queries.bump_version(tx)  # serializes cycle checks across instances
            role = await self._role_id(tx, name)
            parent_ids = [await self._role_id(tx, p) for p in parents]
            edges: dict[str, set[str]] = {}
            for row in await queries.inheritance_edges(tx):
                edges.setdefault(str(row["child"]), set()).add(str(row["parent"]))
            if edges.get(name, set()) == set(parents):
                return
            edges[name] = set(parents)
            cycle = find_cycle(edges, name)
            if cycle is not None:
                raise RoleError("inheritance cycle refused: " + " -> ".join(cycle))
            before = await self.administrators(tx)
            await queries.set_parents(tx, role, parent_ids)
            await self.keep_an_administrator(tx, before)
            affected = await queries.bump_privilege_epochs_of_role(tx, role)
            await self._audit.record(
                "role.updated",
                tx=tx,
                actor_user_id=actor,
                details={"role": name, "inherits": list(parents), "affected_users": affected},
            )
        self._changed(version, everything=True)
