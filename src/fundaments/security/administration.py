"""The administration part of the facade: what an administrator does to someone else's account.

Every call takes ``actor_user_id`` (None: a trusted caller such as the CLI). With an actor the
delegation rule holds (docs/access-control.md): nobody overrules an account holding permissions
it lacks. And whoever the caller, no change may leave the site without an enabled account holding
``*``: the last administrator cannot be disabled or demoted (LastAdministratorError).
"""

from __future__ import annotations

from fundaments.errors import InvalidArgument, UnknownUserError
from fundaments.security._core import SecurityCore, optional_user_id, user_id_argument


class AdministrationPart(SecurityCore):
    """Disable, enable, unlock, set a password, delete."""

    async def disable_user(self, user_id: int, *, actor_user_id: int | None = None) -> int:
        """Disable an account: it cannot log in, every session ends at once and its permission
        checks answer False everywhere within a second. Returns how many sessions ended."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        await self._access.require_delegation(actor_user_id, "disable this account", subject_user_id=user_id)
        async with self._transaction() as tx:
            await self._access.invalidate_user(tx, user_id)  # first: the RBAC lock, then the user row
            administrators = await self._access.administrators(tx)
            await self._users.set_disabled(tx, user_id, True, actor_user_id=actor_user_id)
            await self._access.keep_an_administrator(tx, administrators)
            ended = await self._sessions.revoke_all(user_id, tx=tx, reason="user_disabled")
        self._sessions.invalidate_cache()
        self._api_keys_changed()  # its keys answer None here at once, elsewhere within 1 s
        return ended

    async def enable_user(self, user_id: int, *, actor_user_id: int | None = None) -> None:
        """Re-enable a disabled account (audited ``user.enabled``); it logs in afresh."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        await self._access.require_delegation(actor_user_id, "enable this account", subject_user_id=user_id)
        async with self._transaction() as tx:
            await self._access.invalidate_user(tx, user_id)
            await self._users.set_disabled(tx, user_id, False, actor_user_id=actor_user_id)
        self._api_keys_changed()

    async def unlock_user(self, user_id: int, *, actor_user_id: int | None = None) -> bool:
        """Clear the account's lock, failure count and backoff, and its devices' (audited
        ``account.unlocked``). False, with nothing written or audited, when neither the account
        nor any of its devices was locked: a no-op is not reported as an unlock."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        await self._access.require_delegation(actor_user_id, "unlock this account", subject_user_id=user_id)
        return await self._users.unlock(user_id, actor_user_id=actor_user_id)

    async def delete_user(self, user_id: int, *, actor_user_id: int | None = None) -> None:
        """Delete an account for good: its sessions end (audited), and its roles, device cookies
        and reset/verification tokens go in the same transaction. The audit trail keeps the id and
        the username (``user.deleted``); the id is never given to another account. Refused with
        LastAdministratorError for the last enabled administrator, PermissionDenied when the actor
        lacks a permission the account holds; UnknownUserError when there is no such account."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        await self._access.require_delegation(actor_user_id, "delete this account", subject_user_id=user_id)
        async with self._transaction() as tx:
            await self._access.invalidate_user(tx, user_id)  # first: the RBAC lock, then the user row
            administrators = await self._access.administrators(tx)
            await self._sessions.revoke_all(user_id, tx=tx, reason="user_deleted")
            await self._users.delete(tx, user_id, actor_user_id=actor_user_id)
            await self._access.keep_an_administrator(tx, administrators)
        self._sessions.invalidate_cache()
        self._api_keys_changed()  # its keys went with it (ON DELETE CASCADE)

    async def set_password(
        self,
        user_id: int,
        new_password: str,
        *,
        actor_user_id: int | None = None,
        must_change: bool = True,
    ) -> None:
        """An administrator's reset: a new password without the old one. The policy applies; the
        account is unlocked, every session of it ends, and with ``must_change`` (the default) the
        owner must choose their own at the next login. Audited ``password.changed`` (with
        ``set_by_administrator`` when the actor is someone else)."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        if not isinstance(must_change, bool):
            raise InvalidArgument("must_change must be True or False")
        await self._access.require_delegation(
            actor_user_id, "set this account's password", subject_user_id=user_id
        )
        user = await self._users.get(user_id)
        if user is None:
            raise UnknownUserError(f"no account has id {user_id}")
        encoded = await self._users.prepare_password(new_password, username=user.username)
        async with self._transaction() as tx:
            await self._users.set_password(
                tx, user_id, encoded, actor_user_id=actor_user_id, must_change=must_change
            )
            await self._users.clear_lock(tx, user_id)
            await self._sessions.revoke_all(user_id, tx=tx, reason="password_set")
            await self._notify_password_changed(
                tx, user_id, None, by_administrator=actor_user_id is not None and actor_user_id != user_id
            )
        self._sessions.invalidate_cache()
