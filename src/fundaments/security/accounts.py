"""The accounts part of the facade: registration, reading accounts, login, changing one's password."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from fundaments.errors import AuthenticationError, InvalidArgument, PasswordPolicyError, UnknownUserError
from fundaments.models import LoginFailure, LoginResult, RequestContext, Session, User
from fundaments.security import notices
from fundaments.security._core import SecurityCore, optional_user_id, user_id_argument
from fundaments.sessions import normalize_ip


class AccountsPart(SecurityCore):
    """Accounts and the login chain (throttle, lock, verify, regenerate, bind, audit)."""

    async def get_user(self, user_id: int) -> User | None:
        """The account with this id, or None."""
        user_id = user_id_argument(user_id)
        return await self._users.get(user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        """The account with this username (compared in normalized form), or None."""
        return await self._users.get_by_username(username)

    async def get_user_by_email(self, email: str) -> User | None:
        """The account with this email address (compared case-insensitively), or None."""
        return await self._users.get_by_email(email)

    async def list_users(
        self, *, limit: int = 100, after_id: int = 0, search: str | None = None, offset: int = 0
    ) -> list[User]:
        """Accounts in id order, ``limit`` (at most 1,000) with ids above ``after_id``: pass the
        last id of one page to get the next (keyset pagination, as fast on page 1,000 as on page
        one). ``search`` keeps accounts whose username or address contains it, case-insensitively.
        ``offset`` is the first wave's paging, still accepted; prefer ``after_id``."""
        if offset:
            return await self._users.list_from_offset(limit, max(0, int(offset)))
        return await self._users.list(limit, after_id=after_id, search=search)

    async def usernames(self, user_ids: Iterable[int]) -> dict[int, str]:
        """The username of each existing account among ``user_ids`` (unknown ids are left out), in
        one query per 500 ids: for showing names next to the ids of a page of audit events."""
        return await self._users.usernames(user_id_argument(uid) for uid in user_ids)

    async def register_user(
        self,
        username: str,
        password: str | None = None,
        *,
        password_hash: str | None = None,
        roles: Iterable[str] = (),
        must_change_password: bool = False,
        actor_user_id: int | None = None,
        email: str | None = None,
    ) -> User:
        """Create an account, with its initial roles, in one transaction.

        Give either ``password`` (checked against the password policy, hashed off the event loop)
        or ``password_hash`` (an existing PyFundaments/passlib, Django or Argon2 hash, imported as
        is and upgraded at the first login). Raises PasswordPolicyError, InvalidUsernameError,
        InvalidPasswordHashError, UserExistsError (also for a username that only differs in case
        or Unicode form, or looks like a taken one: ``аdmin`` with a Cyrillic а beside ``admin``)
        or RoleError, InvalidEmailError or EmailInUseError for ``email`` (optional, unverified
        until :meth:`verify_email`); nothing is written then. InvalidUsernameError also refuses a name mixing
        scripts (docs/accounts.md, "Look-alike usernames").
        """
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        if (password is None) == (password_hash is None):
            raise InvalidArgument("register_user needs exactly one of password or password_hash")
        role_names = [roles] if isinstance(roles, str) else list(roles)
        await self._access.require_delegation(
            actor_user_id, "create an account with these roles", roles=role_names
        )
        await self._users.check_new_username(username)  # before hashing: a refused name costs no hash
        if email is not None:
            await self._users.check_new_email(email)
        if password is not None:
            encoded = await self._users.prepare_password(password, username=username)
        else:
            assert password_hash is not None
            encoded = self._users.validate_imported_hash(password_hash)
        async with self._transaction() as tx:
            user = await self._users.create(
                tx,
                username,
                encoded,
                must_change_password=must_change_password,
                actor_user_id=actor_user_id,
                email=email,
            )
            for role in role_names:
                await self._access.grant_role(user.id, role, actor_user_id=actor_user_id, tx=tx)
        return replace(user, roles=tuple(sorted(set(role_names))))

    async def user_login(
        self, username: str, password: str, request_data: RequestContext | Mapping[str, Any]
    ) -> LoginResult:
        """Log in: IP throttle → account lock → password check (off the loop) → hash upgrade →
        a new session (never one from before: fixation) bound to this client → audit.

        Truthy on success, with ``session.token`` (for the cookie) and ``device_token`` (the OWASP
        device cookie: present it as ``request_data["device_token"]`` next time, so a lock caused
        by someone else's guesses does not lock this device out). On failure ``reason`` says why
        (LOCKED, THROTTLED, INVALID_CREDENTIALS, DISABLED, BUSY): for the application and the
        audit trail; show the user one generic message. Raises ValueError for malformed
        ``request_data``.

        For an account with a second factor a right password gives a falsy result with
        ``reason=MFA_REQUIRED`` and ``mfa_token``: no session exists yet; finish with
        :meth:`verify_mfa` from the same client within ``MFA_TOKEN_TTL`` (docs/mfa.md).
        """
        ctx = RequestContext.coerce(request_data)
        check = await self._users.authenticate(username, password, ctx)  # throttle, lock, verify
        if not check:
            if check.locked_until is not None and check.user is not None and check.user.email:
                async with self._transaction() as tx:  # the owner learns of the lock (ASVS 6.3.7)
                    notice = notices.account_locked(
                        self._require_settings(),
                        check.user.username,
                        check.locked_until,
                        self._now(),
                        ctx.ip_address,
                    )
                    await self._notify(tx, check.user.email, notice)
            return LoginResult(reason=check.reason)
        assert check.user is not None
        mfa = self._mfa
        async with self._transaction() as tx:  # everything a success changes, or nothing
            if mfa is not None and await mfa.enrolled(tx, check.user.id):
                # The password was right and that is all: no session, no cookie, no last login.
                await self._users.complete_password_step(tx, check)  # hash upgrade; counters kept
                client = RequestContext(normalize_ip(ctx.ip_address), ctx.user_agent)
                token = await mfa.open_challenge(tx, check.user.id, client, check.device_hash, check.devices)
                await self._require_audit().record(
                    "login.mfa_required",
                    tx=tx,
                    subject_user_id=check.user.id,
                    username=check.user.username,
                    ip_address=ctx.ip_address,
                    user_agent=ctx.user_agent,
                    details={"hash_upgraded": check.upgraded_hash is not None},
                )
                return LoginResult(reason=LoginFailure.MFA_REQUIRED, mfa_token=token)
            return await self._finish_login(tx, check, ctx)

    async def change_password(
        self,
        user_id: int,
        old_password: str,
        new_password: str,
        current_token: str | None = None,
        *,
        request_data: RequestContext | Mapping[str, Any] | None = None,
    ) -> Session | None:
        """Change a password after checking the current one; every other session of the user ends.

        The current-password check counts toward the account lock like a login (with the device
        cookie of ``request_data`` it counts toward that device's lock instead): once locked, even
        the right password is refused until the lock ends, and a session whose guesses locked the
        account is ended. One check per session runs at a time.

        With ``current_token`` (the session making the change) that session survives with a new
        token, returned here: set it as the cookie. Raises AuthenticationError for a wrong current
        password or a locked account, PasswordPolicyError for a new one that breaks the policy or
        equals the current one, RateLimited while another check of the session runs,
        HashingBusyError (a ServiceUnavailable) when the hashing pool is full, UnknownUserError.
        """
        user_id = user_id_argument(user_id)
        ctx = RequestContext.coerce(request_data) if request_data is not None else None
        user = await self._users.get(user_id)
        if user is None:
            raise UnknownUserError(f"no account has id {user_id}")
        current = await self._sessions.find(current_token) if current_token else None
        if current is not None and current.user_id != user_id:
            current = None  # a token of someone else never survives this user's password change
        flight_key = f"session:{current.id}" if current is not None else f"user:{user_id}"
        check = await self._users.check_current_password(user_id, old_password, ctx, flight_key=flight_key)
        if not check:
            if check.caused_lock and current is not None:
                # Guessing from a session until the account locks: that session is not its owner's.
                await self._sessions.revoke_by_id(user_id, current.id, reason="password_guessing")
            if check.locked or check.caused_lock:
                raise AuthenticationError(
                    "too many wrong passwords: the account is locked for now; try again later"
                )
            raise AuthenticationError("the current password is not correct")
        if new_password == old_password:
            raise PasswordPolicyError(["the new password must differ from the current one"])
        encoded = await self._users.prepare_password(new_password, username=user.username)
        async with self._transaction() as tx:
            await self._users.set_password(tx, user_id, encoded, actor_user_id=user_id)
            await self._users.reset_failures_after_change(tx, user_id, check)
            await self._sessions.revoke_all(
                user_id, tx=tx, except_session_id=current.id if current else None, reason="password_changed"
            )
            rotated = await self._sessions.rotate(tx, current.id) if current else None
            await self._notify_password_changed(tx, user_id, ctx, by_administrator=False)
        self._sessions.invalidate_cache()
        return rotated
