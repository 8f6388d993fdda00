"""The API-keys part of the facade: keys for machine clients, scoped to narrow their owner.

A key acts for its owner and can never do more: ``check_permission(user_id, perm, api_key=key)``
is the owner's permissions (the RBAC cache, so a role revoked from the owner narrows every key at
once here and within a second elsewhere) intersected with the key's scopes. See
docs/api-keys.md and :mod:`fundaments.api_keys`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fundaments.access_control import permission_granted
from fundaments.api_keys import (
    ADMIN_PERMISSION,
    MAX_LIFETIME,
    MAX_NAME,
    RATE_LIMIT,
    checksum_ok,
    network_list,
    scope_list,
)
from fundaments.errors import InvalidArgument, PermissionDenied
from fundaments.models import ApiKey, ApiKeyCreated, RequestContext
from fundaments.security._core import SecurityCore, optional_user_id, text_argument, user_id_argument

API_KEYS_ADMIN_PERMISSION = ADMIN_PERMISSION  # for surfaces, which do not import fundaments.api_keys


class ApiKeysPart(SecurityCore):
    """``create_api_key``, ``validate_api_key``, ``list_api_keys``, ``list_all_api_keys``,
    ``rotate_api_key``, ``revoke_api_key``."""

    async def create_api_key(
        self,
        user_id: int,
        *,
        name: str,
        scopes: Iterable[str] = (),
        expires_in: float | None = None,
        allowed_ips: Iterable[str] | None = None,
        rate_limit: str | None = None,
        actor_user_id: int | None = None,
    ) -> ApiKeyCreated:
        """A new key for the account: ``created.token`` (``fk_…``) is shown once — it is never
        stored, logged or audited — and ``created.key`` describes it.

        ``scopes``: permission names (RBAC's, wildcards included) the key may use; each must be
        covered by the owner's own permissions now, else PermissionDenied (a key can only narrow
        its owner; refusing at creation catches the scope typed wrong instead of a key that
        silently can do nothing). ``expires_in``: seconds (None: no expiry). ``allowed_ips``:
        addresses or networks the key may be used from (None: any). ``rate_limit``:
        ``"N/second|minute|hour|day"``, enforced by the rate limiter. InvalidArgument (a
        ValueError) for a malformed argument, RoleError for a malformed scope, UnknownUserError,
        PermissionDenied also for a disabled owner, one at API_KEY_MAX_PER_USER live keys, or an
        ``actor_user_id`` other than the owner lacking a scope itself (delegation).
        """
        service = self._require_api_keys()
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        name = text_argument(name, "name", MAX_NAME)
        granted = scope_list(scopes)
        networks = network_list(allowed_ips)
        lifetime = None
        if expires_in is not None:
            if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
                raise InvalidArgument("expires_in must be a number of seconds or None")
            if not 0 < expires_in <= MAX_LIFETIME:
                raise InvalidArgument(f"expires_in must be more than 0 and at most {MAX_LIFETIME} seconds")
            lifetime = float(expires_in)
        if rate_limit is not None and not (isinstance(rate_limit, str) and RATE_LIMIT.fullmatch(rate_limit)):
            raise InvalidArgument(
                "rate_limit must look like '600/minute': a positive count, '/', and second, minute, "
                "hour or day"
            )
        owner = await self._access.user_permissions(user_id)
        missing = [scope for scope in granted if not permission_granted(owner, scope)]
        if missing:
            raise PermissionDenied(
                f"user {user_id} does not hold {', '.join(missing[:5])}: a key's scopes must be "
                "permissions its owner holds (grant the owner a role with them first)",
                user_id=user_id,
                permission=missing[0],
            )
        if actor_user_id is not None and actor_user_id != user_id:
            await self._access.require_delegation(
                actor_user_id, "create an API key for this account", permissions=granted
            )
        return await service.create(
            user_id,
            name=name,
            scopes=granted,
            expires_in=lifetime,
            allowed_ips=networks,
            rate_limit=rate_limit,
            actor_user_id=actor_user_id,
        )

    async def validate_api_key(
        self, token: object, request_data: RequestContext | Mapping[str, Any]
    ) -> ApiKey | None:
        """The live key ``token`` is, presented by this client (``request_data``: its
        ``ip_address`` and ``user_agent``, a dict or RequestContext); None otherwise.

        A malformed or mistyped token (the checksum fails) is None at once, with no I/O; unknown,
        revoked, expired, previous-after-overlap, disabled owner and a client IP outside the key's
        ``allowed_ips`` are None with the reason audited ``api_key.refused`` (coalesced). The
        returned key's ``user_id`` is the owner to act as; check what it may do with
        ``check_permission(key.user_id, perm, api_key=key)``.
        """
        service = self._api_keys
        if service is None:
            service = self._require_api_keys()  # raises ServiceUnavailable
        return await service.validate(token, request_data)

    @staticmethod
    def api_key_checksum_ok(token: object) -> bool:
        """Whether ``token`` is shaped as an API key with a matching checksum (no I/O, never
        raises): a surface can answer a typo without touching the database."""
        return checksum_ok(token)

    async def list_api_keys(
        self, user_id: int, *, after: str | None = None, limit: int = 100
    ) -> list[ApiKey]:
        """The account's keys, revoked ones included (``revoked_at`` set), oldest first; pages of
        ``limit`` (at most 1,000): pass the last key's id as ``after`` for the next page."""
        user_id = user_id_argument(user_id)
        return await self._require_api_keys().list_for_user(user_id, after=after, limit=limit)

    async def list_all_api_keys(
        self,
        *,
        after: str | None = None,
        limit: int = 100,
        actor_user_id: int | None = None,
        request_data: RequestContext | Mapping[str, Any] | None = None,
    ) -> list[ApiKey]:
        """Every account's keys (revoked ones included), in key-id order; pages of ``limit`` (at
        most 1,000): pass the last key's id as ``after`` for the next (keyset, no OFFSET). Each
        key's ``user_id`` is its owner (``usernames(...)`` names them).

        With ``actor_user_id`` (None: a trusted caller such as the CLI) the actor must hold
        ``api_keys:admin`` (``API_KEYS_ADMIN_PERMISSION``; the built-in ``admin`` role's ``*``
        does), else PermissionDenied, audited ``permission.denied``. The tokens are never listed:
        only digests are stored.
        """
        service = self._require_api_keys()
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        if actor_user_id is not None:
            await self._access.require_permission(actor_user_id, ADMIN_PERMISSION, request_data=request_data)
        return await service.list_all(after=after, limit=limit)

    async def revoke_api_key(self, user_id: int, key_id: str, *, actor_user_id: int | None = None) -> bool:
        """Revoke the key for good — its current and previous tokens at once, here at once and on
        other instances within API_KEY_CACHE_SECONDS; False when the account has no such live key."""
        service = self._require_api_keys()
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        if actor_user_id is not None and actor_user_id != user_id:
            await self._access.require_delegation(
                actor_user_id, "revoke this account's API key", subject_user_id=user_id
            )
        return await service.revoke(user_id, key_id, actor_user_id=actor_user_id)

    async def rotate_api_key(
        self,
        user_id: int,
        key_id: str,
        *,
        overlap_seconds: float = 3600,
        actor_user_id: int | None = None,
    ) -> ApiKeyCreated:
        """A new token for the same key (``rotated.key.id == key_id``); the token it replaces works
        ``overlap_seconds`` more (0: dies at once, at most 7 days), then never again. Safe to
        retry when the answer was lost: the token the client holds stays valid (docs/api-keys.md,
        "Rotation"). UnknownApiKeyError for a key that is not the account's, revoked or expired."""
        service = self._require_api_keys()
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        if actor_user_id is not None and actor_user_id != user_id:
            await self._access.require_delegation(
                actor_user_id, "rotate this account's API key", subject_user_id=user_id
            )
        return await service.rotate(
            user_id, key_id, overlap_seconds=overlap_seconds, actor_user_id=actor_user_id
        )
