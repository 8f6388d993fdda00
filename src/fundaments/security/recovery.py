"""The recovery part of the facade: password reset by mail, email verification, address changes.

A reset request answers the same way, after the same time, whatever the address: known, unknown,
disabled, locked or throttled (ASVS 5.0 6.3.x: no account enumeration). Only a known, enabled
account gets a mail; an unknown address gets none (fundaments is no relay for mail to addresses
nobody registered: docs/accounts.md). The link's token is single-use, expires, and dies when the
password or the address changes or a newer link is sent (fundaments.account_tokens).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping
from typing import Any

from fundaments.account_tokens import EMAIL_VERIFICATION, PASSWORD_RESET
from fundaments.emails import normalize_email
from fundaments.errors import AuthenticationError, InvalidArgument, UnknownUserError
from fundaments.models import RequestContext, User
from fundaments.security import notices
from fundaments.security._core import SecurityCore, optional_user_id, user_id_argument
from fundaments.store import Executor
from fundaments.user_handler import throttle_key

INVALID_LINK = (
    "this link is not valid any more (used, replaced by a newer one, or expired); ask for a new one"
)


class RecoveryPart(SecurityCore):
    """Reset a forgotten password, verify or change an address."""

    async def request_password_reset(
        self, email: str, request_data: RequestContext | Mapping[str, Any]
    ) -> None:
        """Mail a single-use reset link to the account with this address, if there is one.

        Always returns None after ``RESET_REQUEST_SECONDS``, whatever the address, so neither the
        answer nor its timing tells whether an account exists. Requests are counted per address and
        per client IP (``RESET_REQUESTS_PER_ADDRESS``/``_PER_IP`` per ``RESET_REQUEST_WINDOW``):
        beyond that no mail is sent, still with the same answer. Audited
        ``password_reset.requested`` with what happened (for administrators only). Raises
        InvalidEmailError for text that is not an address at all (which says nothing about accounts).
        """
        ctx = RequestContext.coerce(request_data)
        address = normalize_email(email)
        settings = self._require_settings()
        answer_at = time.monotonic() + settings.reset_request_seconds
        await self._reset_request(address.key, ctx)
        await asyncio.sleep(max(0.0, answer_at - time.monotonic()))

    async def _reset_request(self, email_key: str, ctx: RequestContext) -> None:
        settings = self._require_settings()
        tokens = self._require_tokens()
        address_key = "reset:address:" + hashlib.sha256(email_key.encode()).hexdigest()[:40]
        async with self._transaction() as tx:
            ip_ok = await tokens.claim_request(
                tx, "reset:ip:" + throttle_key(ctx.ip_address), settings.reset_requests_per_ip
            )
            address_ok = await tokens.claim_request(tx, address_key, settings.reset_requests_per_address)
            account = await tokens.account_by_email(tx, email_key)
            if not (ip_ok and address_ok):
                outcome = "throttled"
            elif account is None:
                outcome = "unknown_address"
            elif bool(account["is_disabled"]):
                outcome = "disabled"
            else:
                outcome = "sent"
                token = await tokens.issue(tx, account, PASSWORD_RESET)
                await self._send(
                    tx, account["email"], notices.password_reset(settings, account["username"], token)
                )
            if outcome != "throttled":
                await self._require_audit().record(
                    "password_reset.requested",
                    outcome="success" if outcome == "sent" else "failure",
                    tx=tx,
                    subject_user_id=int(account["id"]) if account is not None else None,
                    ip_address=ctx.ip_address,
                    user_agent=ctx.user_agent,
                    details={"outcome": outcome},
                )
        if outcome == "throttled":  # a flood writes one event per window, not one per request
            await self._require_audit().record_coalesced(
                "password_reset.throttled", key=f"reset:{throttle_key(ctx.ip_address)}", client=ctx
            )

    async def reset_password(
        self,
        token: str,
        new_password: str,
        request_data: RequestContext | Mapping[str, Any],
        *,
        second_factor: str | None = None,
    ) -> User:
        """Set a new password with a reset link's token: the policy applies, every session of the
        account ends, its lock is cleared, the token and any other reset link die, and the owner
        gets a "your password was changed" notice. AuthenticationError for a token that is not
        (or no longer) valid; PasswordPolicyError leaves the token usable for another try.

        ``second_factor``: for an account with a second factor, a current TOTP code or an unused
        recovery code (a reset must not bypass MFA, ASVS 6.4.3); without it, or wrong, the reset
        is refused with AuthenticationError and the link stays usable. It counts toward the
        account's lock as at login. The second factor stays on after the reset.
        """
        ctx = RequestContext.coerce(request_data)
        tokens = self._require_tokens()
        account = await tokens.check(token, PASSWORD_RESET)
        if account is None:
            await self._reset_refused(ctx)
            raise AuthenticationError(INVALID_LINK)
        user_id = int(account["id"])
        encoded = await self._users.prepare_password(new_password, username=account["username"])
        # After the policy: a refused password must not have spent the code.
        await self._reset_second_factor(user_id, second_factor, ctx)
        async with self._transaction() as tx:
            if await tokens.spend(tx, token, PASSWORD_RESET) != user_id:  # spent, or changed, meanwhile
                spent = False
            else:
                spent = True
                await self._users.set_password(tx, user_id, encoded, actor_user_id=user_id, via="reset")
                await self._users.clear_lock(tx, user_id)
                await tokens.revoke(tx, user_id, PASSWORD_RESET)
                await self._sessions.revoke_all(user_id, tx=tx, reason="password_reset")
                await self._notify_password_changed(tx, user_id, ctx, by_administrator=False)
        if not spent:
            await self._reset_refused(ctx)
            raise AuthenticationError(INVALID_LINK)
        self._sessions.invalidate_cache()
        user = await self._users.get(user_id)
        if user is None:
            raise AuthenticationError(INVALID_LINK)
        return user

    async def password_reset_link_valid(self, token: str) -> bool:
        """Whether ``token`` would be accepted by :meth:`reset_password` now (spends nothing): a
        page can say at once that a link is dead instead of after the new password was typed."""
        return await self._require_tokens().check(token, PASSWORD_RESET) is not None

    async def _reset_second_factor(self, user_id: int, code: object, ctx: RequestContext) -> None:
        """Where a reset proves the second factor (ASVS 6.4.3). A no-op here: MfaPart, before this
        part among Security's bases, answers with the check (fundaments.security.mfa)."""

    async def _reset_refused(self, ctx: RequestContext) -> None:
        await self._require_audit().record_coalesced(
            "password_reset.failed", key=f"reset-token:{throttle_key(ctx.ip_address)}", client=ctx
        )

    async def request_email_verification(self, user_id: int) -> None:
        """Mail a single-use link confirming the account's address (valid ``EMAIL_VERIFICATION_TTL``,
        48 h by default); a newer link replaces an older one. InvalidArgument when the account has no
        address, UnknownUserError when there is no such account."""
        user_id = user_id_argument(user_id)
        tokens = self._require_tokens()
        async with self._transaction() as tx:
            account = await tokens.account(tx, user_id)
            if account is None:
                raise UnknownUserError(f"no account has id {user_id}")
            if account["email"] is None:
                raise InvalidArgument("the account has no email address: set one with set_email first")
            token = await tokens.issue(tx, account, EMAIL_VERIFICATION)
            notice = notices.email_verification(self._require_settings(), account["username"], token)
            await self._send(tx, account["email"], notice)
            await self._require_audit().record("email_verification.requested", tx=tx, subject_user_id=user_id)

    async def verify_email(self, token: str) -> User:
        """Mark the address verified with a verification link's token (single use); the account.
        AuthenticationError when the token is not valid (used, replaced, expired, or the address
        changed since it was sent)."""
        tokens = self._require_tokens()
        async with self._transaction() as tx:
            user_id = await tokens.spend(tx, token, EMAIL_VERIFICATION)
            account = await tokens.account(tx, user_id) if user_id is not None else None
            verified = account is not None and await self._users.mark_email_verified(
                tx, int(account["id"]), account["email_key"]
            )
        user = await self._users.get(user_id) if verified and user_id is not None else None
        if user is None:
            raise AuthenticationError(INVALID_LINK)
        return user

    async def set_email(self, user_id: int, email: str | None, *, actor_user_id: int | None = None) -> User:
        """Give the account a new address (unverified: send :meth:`request_email_verification`) or
        none. Outstanding reset and verification links die; the old address, if any, is told
        (ASVS 6.3.7). InvalidEmailError, EmailInUseError, PermissionDenied (delegation),
        UnknownUserError."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        if actor_user_id is not None and actor_user_id != user_id:
            await self._access.require_delegation(
                actor_user_id, "change this account's address", subject_user_id=user_id
            )
        tokens = self._require_tokens()
        address = normalize_email(email) if email is not None else None
        current = await self._users.get(user_id)
        if current is None:
            raise UnknownUserError(f"no account has id {user_id}")
        if address is not None and current.email is not None and address.key == current.email.casefold():
            return current  # the same address: nothing changes, verified stays verified
        if address is not None:
            await self._users.check_new_email(address.address)
        async with self._transaction() as tx:
            await self._users.set_email(tx, user_id, address, actor_user_id=actor_user_id)
            await tokens.revoke(tx, user_id, PASSWORD_RESET)
            await tokens.revoke(tx, user_id, EMAIL_VERIFICATION)
            if current.email is not None:
                notice = notices.email_changed(
                    self._require_settings(),
                    current.username,
                    address.address if address else "(none)",
                    self._now(),
                )
                await self._send(tx, current.email, notice)
        user = await self._users.get(user_id)
        assert user is not None
        return user

    # --- notices shared with the other parts ------------------------------------------------------
    async def _send(self, tx: Executor, to: str, notice: notices.Notice) -> None:
        """Queue a mail that must go out (a link asked for): ServiceUnavailable without mail."""
        await self._require_mail().enqueue(tx, notice.kind, to, notice.subject, notice.text, notice.html)
