"""The access-control part of the facade: permission checks, roles and grants."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping
from typing import Any

from fundaments.access_control import MAX_PERMISSION, validate_permission
from fundaments.api_keys import scope_covers
from fundaments.errors import PermissionDenied
from fundaments.models import ApiKey, RequestContext, Role
from fundaments.security._core import SecurityCore, optional_user_id, user_id_argument


def _well_formed(permissions: Iterable[str]) -> Iterable[str]:
    """RoleError for a malformed permission before the delegation check, which would call it one
    the actor lacks (a 403 saying "does not hold" for what is a typo). A string is left to the
    service, which refuses it as a whole."""
    if isinstance(permissions, str | bytes):
        return permissions
    permissions = list(permissions)  # read once: it may be a generator
    for permission in permissions:
        validate_permission(permission)
    return permissions


def _key_allows(api_key: object, user_id: object, permission: object) -> bool:
    """Whether ``api_key`` is a key of ``user_id`` whose scopes cover ``permission``."""
    return (
        isinstance(api_key, ApiKey)
        and type(user_id) is int
        and api_key.user_id == user_id
        and scope_covers(api_key.scopes, permission)
    )


class AccessPart(SecurityCore):
    """RBAC: ``check_permission``, ``require_permission``, roles and grants."""

    async def check_permission(self, user_id: Any, permission: Any, *, api_key: ApiKey | None = None) -> bool:
        """True when the user holds ``permission`` (directly, by inheritance or by wildcard).

        With ``api_key`` (a key :meth:`validate_api_key` returned for this request): also only
        when the key is the user's and its scopes cover ``permission`` — the owner's permissions
        intersected with the scopes, so a key can never do what its owner cannot, and a role
        revoked from the owner narrows the key at once. False — never an exception — for an unknown
        or disabled user, an unknown or malformed permission, or arguments of the wrong type. A
        warm check is an in-memory set lookup.
        """
        if api_key is not None and not _key_allows(api_key, user_id, permission):
            return False
        return await self._access.check_permission(user_id, permission)

    async def require_permission(
        self,
        user_id: Any,
        permission: Any,
        *,
        request_data: RequestContext | Mapping[str, Any] | None = None,
        api_key: ApiKey | None = None,
    ) -> None:
        """Return when the user holds ``permission`` (and ``api_key``, when given, covers it, as
        in :meth:`check_permission`); else audit ``permission.denied`` (with the client IP and
        User-Agent from ``request_data`` when given, and the key's id) and raise PermissionDenied."""
        if api_key is not None and not _key_allows(api_key, user_id, permission):
            context: RequestContext | None = None
            if request_data is not None:
                with contextlib.suppress(ValueError):  # a malformed context must not hide the denial
                    context = RequestContext.coerce(request_data)
            shown = permission[:MAX_PERMISSION] if isinstance(permission, str) else type(permission).__name__
            key_id = api_key.id if isinstance(api_key, ApiKey) else None
            await self._require_audit().record(
                "permission.denied",
                outcome="failure",
                subject_user_id=user_id if type(user_id) is int else None,
                client=context,
                details={"permission": shown, "api_key_id": key_id, "reason": "api_key_scope"},
            )
            raise PermissionDenied(
                f"the API key {key_id} does not allow {shown!r} (its scopes do not cover it)",
                user_id=user_id if type(user_id) is int else None,
                permission=permission if isinstance(permission, str) else None,
            )
        await self._access.require_permission(user_id, permission, request_data=request_data)

    async def create_role(
        self,
        name: str,
        permissions: Iterable[str] = (),
        inherits: Iterable[str] = (),
        description: str | None = None,
        *,
        actor_user_id: int | None = None,
    ) -> Role:
        """Create a role; RoleError for a bad or taken name, a bad permission or an unknown parent."""
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        permissions = _well_formed(permissions)
        await self._access.require_delegation(
            actor_user_id, "create a role", roles=list(inherits), permissions=list(permissions)
        )
        return await self._access.create_role(
            name, permissions, inherits, description, actor_user_id=actor_user_id
        )

    async def delete_role(self, name: str, *, actor_user_id: int | None = None) -> None:
        """Delete a role: revoked from its holders, removed from roles inheriting it."""
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        await self._access.require_delegation(actor_user_id, "delete a role", roles=[name])
        await self._access.delete_role(name, actor_user_id=actor_user_id)

    async def set_role_permissions(
        self, name: str, permissions: Iterable[str], *, actor_user_id: int | None = None
    ) -> None:
        """Replace a role's own permissions."""
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        permissions = _well_formed(permissions)  # a single string stays one, for the service to refuse
        await self._access.require_delegation(
            actor_user_id, "change a role's permissions", roles=[name], permissions=list(permissions)
        )
        await self._access.set_role_permissions(name, permissions, actor_user_id=actor_user_id)

    async def set_role_inherits(
        self, name: str, inherits: Iterable[str], *, actor_user_id: int | None = None
    ) -> None:
        """Replace the roles a role inherits; RoleError naming the cycle if one would form."""
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        inherits = list(inherits)
        await self._access.require_delegation(
            actor_user_id, "change what a role inherits", roles=[name, *inherits]
        )
        await self._access.set_role_inherits(name, inherits, actor_user_id=actor_user_id)

    async def grant_role(self, user_id: int, role: str, *, actor_user_id: int | None = None) -> bool:
        """Grant a role (audited; the user's sessions rotate at their next request); False if the
        user already held it."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        await self._access.require_delegation(
            actor_user_id, "grant a role", roles=[role], subject_user_id=user_id
        )
        changed = await self._access.grant_role(user_id, role, actor_user_id=actor_user_id)
        self._sessions.invalidate_cache()  # rotation at once on this instance, within 1 s elsewhere
        return changed

    async def revoke_role(self, user_id: int, role: str, *, actor_user_id: int | None = None) -> bool:
        """Revoke a role (audited; sessions rotate); False if the user did not hold it."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        await self._access.require_delegation(
            actor_user_id, "revoke a role", roles=[role], subject_user_id=user_id
        )
        changed = await self._access.revoke_role(user_id, role, actor_user_id=actor_user_id)
        self._sessions.invalidate_cache()
        return changed

    async def user_roles(self, user_id: int) -> list[str]:
        """The roles granted to the user directly, sorted; UnknownUserError for an unknown id."""
        user_id = user_id_argument(user_id)
        return await self._access.user_roles(user_id)

    async def user_permissions(self, user_id: int) -> frozenset[str]:
        """The user's effective permissions (wildcards as granted); empty while disabled."""
        user_id = user_id_argument(user_id)
        return await self._access.user_permissions(user_id)

    async def role_holders(self, name: str) -> tuple[int, int]:
        """(accounts holding the role directly, accounts affected by a change to it: directly or
        through a role inheriting it); RoleError for an unknown role."""
        return await self._access.role_holders(name)

    async def list_roles(self) -> list[Role]:
        """Every role with its own permissions and parents, sorted by name."""
        return await self._access.list_roles()
