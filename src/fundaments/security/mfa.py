"""The multi-factor part of the facade: TOTP enrolment, recovery codes, the second login step.

See fundaments.mfa for what is stored how and docs/mfa.md for the login chain. Every change of a
factor is audited and told to the owner by mail (ASVS 6.3.7).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fundaments.errors import AuthenticationError, InvalidArgument, SecondFactorRequired, UnknownUserError
from fundaments.mfa import Challenge, parse_code
from fundaments.models import LoginFailure, LoginResult, MfaStatus, RequestContext, TotpEnrolment, User
from fundaments.security import notices
from fundaments.security._core import SecurityCore, optional_user_id, user_id_argument
from fundaments.sessions import same_client_ip
from fundaments.store import Executor
from fundaments.user_handler import CredentialCheck, throttle_key

WRONG_CODE = "the code is not correct (or was used already): type the current code of your authenticator app"


class MfaPart(SecurityCore):
    """TOTP, recovery codes and ``verify_mfa``."""

    @property
    def mfa_token_ttl(self) -> int:
        """Seconds an mfa_token lives (``MFA_TOKEN_TTL``)."""
        return self._require_settings().mfa_token_ttl

    # --- enrolment --------------------------------------------------------------------------------
    async def begin_totp_enrolment(self, user_id: int) -> TotpEnrolment:
        """A new TOTP secret for the account and its ``otpauth://`` URI (issuer ``MFA_ISSUER``):
        show them once (QR code and text). Nothing changes at login until
        :meth:`confirm_totp_enrolment` gets a code made from it (within ``MFA_ENROLMENT_TTL``);
        an active secret keeps working until then. ServiceUnavailable without encryption."""
        user = await self._get_user(user_id)
        mfa = self._require_mfa()
        async with self._transaction() as tx:
            enrolment = await mfa.begin_totp(tx, user.id, user.username)
            await self._require_audit().record(
                "mfa.totp_enrolment_started", tx=tx, actor_user_id=user.id, subject_user_id=user.id
            )
        return enrolment

    async def confirm_totp_enrolment(self, user_id: int, code: str) -> list[str]:
        """Turn TOTP on with a current code of the secret :meth:`begin_totp_enrolment` gave; the
        account's ten new recovery codes, shown once (earlier ones die). AuthenticationError for a
        wrong code or an enrolment that expired or was never begun."""
        user = await self._get_user(user_id)
        mfa = self._require_mfa()
        async with self._transaction() as tx:
            if not await mfa.confirm_totp(tx, user.id, code):
                raise AuthenticationError(WRONG_CODE + "; if the enrolment expired, begin it again")
            codes = await mfa.new_recovery_codes(tx, user.id)
            await self._require_audit().record(
                "mfa.totp_enabled", tx=tx, actor_user_id=user.id, subject_user_id=user.id
            )
            await self._factor_notice(tx, user, "enabled")
        return codes

    async def mfa_status(self, user_id: int) -> MfaStatus:
        """Which second factors the account has."""
        user = await self._get_user(user_id)
        mfa = self._require_mfa()
        db = self._require_db()
        return MfaStatus(
            totp=await mfa.enrolled(db, user.id),
            passkeys=0,
            recovery_codes_left=await mfa.recovery_codes_left(db, user.id),
        )

    async def regenerate_recovery_codes(self, user_id: int) -> list[str]:
        """Ten new recovery codes, shown once; every earlier code stops working. InvalidArgument
        when the account has no second factor (a recovery code recovers one)."""
        user = await self._get_user(user_id)
        mfa = self._require_mfa()
        async with self._transaction() as tx:
            if not await mfa.enrolled(tx, user.id):
                raise InvalidArgument("the account has no second factor: enrol TOTP first")
            codes = await mfa.new_recovery_codes(tx, user.id)
            await self._require_audit().record(
                "mfa.recovery_codes_regenerated", tx=tx, actor_user_id=user.id, subject_user_id=user.id
            )
            await self._factor_notice(tx, user, "recovery_codes")
        return codes

    async def disable_totp(self, user_id: int, *, actor_user_id: int | None = None) -> bool:
        """Turn TOTP off: the secret, the recovery codes and open login challenges go. Whether TOTP
        was on (False: nothing written). With another account as ``actor_user_id`` (an
        administrator's reset) the delegation rule holds (PermissionDenied). Audited
        ``mfa.totp_disabled``; the owner is told by mail."""
        user_id = user_id_argument(user_id)
        actor_user_id = optional_user_id(actor_user_id, "actor_user_id")
        if actor_user_id is not None and actor_user_id != user_id:
            await self._access.require_delegation(
                actor_user_id, "turn off this account's second factor", subject_user_id=user_id
            )
        user = await self._get_user(user_id)
        mfa = self._require_mfa()
        async with self._transaction() as tx:
            if not await mfa.disable_totp(tx, user.id):
                return False
            by_administrator = actor_user_id is not None and actor_user_id != user_id
            await self._require_audit().record(
                "mfa.totp_disabled",
                tx=tx,
                actor_user_id=actor_user_id,
                subject_user_id=user.id,
                details={"by_administrator": by_administrator},
            )
            await self._factor_notice(tx, user, "disabled", by_administrator=by_administrator)
        return True

    # --- the second login step --------------------------------------------------------------------
    async def verify_mfa(
        self, mfa_token: str, code: str, request_data: RequestContext | Mapping[str, Any]
    ) -> LoginResult:
        """Finish a login that answered ``MFA_REQUIRED``: ``code`` is a current TOTP code or an
        unused recovery code. Truthy as ``user_login`` is on success: a new session bound to this
        client, the device cookie, ``login.succeeded`` with the factor.

        Each attempt first takes one of the challenge's ``MFA_CHALLENGE_ATTEMPTS`` and a place
        below the account's lock (with the device cookie the password came with, that device's),
        as a password attempt does: wrong codes lock the account like wrong passwords. Falsy on
        failure: ``INVALID_CREDENTIALS`` with ``mfa_token`` set when the same token may try again,
        without it when the challenge is over (unknown, used, expired, out of attempts, or shown
        by another client — which ends it); ``LOCKED``; ``DISABLED``.
        """
        ctx = RequestContext.coerce(request_data)
        mfa = self._require_mfa()
        refused: str | None = None
        user: User | None = None
        result = LoginResult(reason=LoginFailure.INVALID_CREDENTIALS)
        # One transaction: the TOTP check is cheap (microseconds), so the claims need not be
        # committed before it as a password's must be before its hash.
        async with self._transaction() as tx:
            challenge = await mfa.claim_attempt(tx, mfa_token)
            if challenge is None:
                refused = "unknown"
            elif not self._same_client(challenge, ctx):
                await mfa.spend_challenge(tx, challenge)  # shown from elsewhere: a stolen token dies
                refused = "other_client"
            else:
                user = await self._users.get(challenge.user_id, tx=tx)
                if user is None or user.is_disabled:
                    await mfa.spend_challenge(tx, challenge)
                    refused = "disabled"
                else:
                    result = await self._second_step(tx, challenge, user, code, ctx, mfa_token)
        if refused is not None or challenge is None or user is None:
            await self._require_audit().record_coalesced(
                "login.mfa_refused",
                key=f"mfa:{refused}:{throttle_key(ctx.ip_address)}",
                subject_user_id=user.id if user is not None else None,
                client=ctx,
                details={"reason": refused},
            )
            disabled = refused == "disabled"
            return LoginResult(reason=LoginFailure.DISABLED if disabled else LoginFailure.INVALID_CREDENTIALS)
        if result.reason is LoginFailure.LOCKED:
            device = challenge.device_hash is not None
            await self._users.second_factor_locked(user.username, user.id, ctx, device=device)
        return result

    async def _second_step(
        self, tx: Executor, challenge: Challenge, user: User, code: object, ctx: RequestContext, token: str
    ) -> LoginResult:
        """Claim, check and spend in ``tx``, which took one of the challenge's attempts: its row
        (SQLite: the write lock) is held until the commit, so no other request can spend it."""
        mfa = self._require_mfa()
        device = challenge.device_hash is not None
        claim = await self._users.claim_second_factor(tx, user.id, challenge.device_hash)
        if claim is None:
            return LoginResult(reason=LoginFailure.LOCKED)
        accepted = await mfa.check(tx, user.id, code)
        if accepted is not None and await mfa.spend(tx, user.id, accepted):
            await mfa.spend_challenge(tx, challenge)
            check = CredentialCheck(
                user,
                None,
                user.username,
                device_hash=challenge.device_hash,
                device_token=ctx.device_token if device else None,
                devices=challenge.devices,
            )
            result = await self._finish_login(tx, check, ctx, second_factor=accepted.factor)
            if accepted.factor == "recovery_code":
                await self._recovery_code_used(tx, user, ctx)
            return result
        locked_until = await self._users.second_factor_failed(
            tx, user.username, user.id, ctx, claim, device=device, factor=_factor_of(code)
        )
        if locked_until is not None and user.email:  # the owner learns of the lock (ASVS 6.3.7)
            notice = notices.account_locked(
                self._require_settings(), user.username, locked_until, self._now(), ctx.ip_address
            )
            await self._notify(tx, user.email, notice)
        again = challenge.attempts_left > 0 and locked_until is None
        return LoginResult(reason=LoginFailure.INVALID_CREDENTIALS, mfa_token=token if again else None)

    def _same_client(self, challenge: Challenge, ctx: RequestContext) -> bool:
        """The session binding's rule (``SESSION_BINDING``) applied to the challenge: strict and
        subnet check the IP and the User-Agent, agent the User-Agent, log and off nothing."""
        binding = self._require_settings().session_binding
        if binding in ("log", "off"):
            return True
        if challenge.user_agent != ctx.user_agent:
            return False
        return binding == "agent" or same_client_ip(challenge.ip_address, ctx.ip_address, binding)

    async def _recovery_code_used(self, tx: Executor, user: User, ctx: RequestContext) -> None:
        mfa = self._require_mfa()
        left = await mfa.recovery_codes_left(tx, user.id)
        await self._require_audit().record(
            "mfa.recovery_code_used",
            tx=tx,
            actor_user_id=user.id,
            subject_user_id=user.id,
            client=ctx,
            details={"left": left},
        )
        notice = notices.recovery_code_used(
            self._require_settings(), user.username, left, self._now(), ctx.ip_address
        )
        await self._notify(tx, user.email, notice)

    async def _reset_second_factor(self, user_id: int, code: object, ctx: RequestContext) -> None:
        """A password reset of an account with a second factor must prove it (ASVS 6.4.3): the
        code is checked and spent as at login, counting toward the lock. AuthenticationError.

        This is the hook RecoveryPart.reset_password calls (its own is a no-op): MfaPart comes
        before RecoveryPart among Security's bases, so this one answers."""
        mfa = self._require_mfa()
        if not await mfa.enrolled(self._require_db(), user_id):
            return
        user = await self._get_user(user_id)
        locked = proven = False
        async with self._transaction() as tx:
            claim = await self._users.claim_second_factor(tx, user_id, None)
            if claim is None:
                locked = True
            else:
                accepted = await mfa.check(tx, user_id, code)
                if accepted is not None and await mfa.spend(tx, user_id, accepted):
                    proven = True
                    await self._users.release_second_factor_claim(tx, user_id)
                    if accepted.factor == "recovery_code":
                        await self._recovery_code_used(tx, user, ctx)
                else:
                    await self._users.second_factor_failed(
                        tx, user.username, user_id, ctx, claim, device=False, factor=_factor_of(code)
                    )
        if proven:
            return
        if locked:
            await self._users.second_factor_locked(user.username, user_id, ctx, device=False)
            raise AuthenticationError("too many wrong codes: the account is locked for now; try again later")
        raise SecondFactorRequired(
            "this account has two-factor sign-in: give a current code of the authenticator app "
            "(or a recovery code) as second_factor"
        )

    # --- helpers ----------------------------------------------------------------------------------
    async def _get_user(self, user_id: int) -> User:
        user_id = user_id_argument(user_id)
        user = await self._users.get(user_id)
        if user is None:
            raise UnknownUserError(f"no account has id {user_id}")
        return user

    async def _factor_notice(
        self, tx: Executor, user: User, what: str, *, by_administrator: bool = False
    ) -> None:
        if user.email is None:
            return
        notice = notices.second_factor_changed(
            self._require_settings(), user.username, what, self._now(), by_administrator=by_administrator
        )
        await self._notify(tx, user.email, notice)


def _factor_of(code: object) -> str:
    """What a wrong code looked like, for the audit trail (never the code)."""
    parsed = parse_code(code)
    return parsed[0] if parsed is not None else "malformed"
