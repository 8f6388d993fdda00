"""The Security facade: the one API an application, the web layer and the CLI call.

Every security action goes through here, so each chain (a login is always throttled, verified,
regenerated, bound and audited) is written once, in one place. The services below are internal.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from typing import Any

from fundaments.access_control import AccessControl
from fundaments.audit import AuditTrail, ChainVerification
from fundaments.config import Settings
from fundaments.encryption import EncryptionService, FilePath, Progress, Token, run_file_job
from fundaments.errors import (
    AuthenticationError,
    DecryptionError,
    InvalidArgument,
    ServiceUnavailable,
    UnknownUserError,
)
from fundaments.models import (
    MAX_IP_LENGTH,
    AuditEvent,
    LoginFailure,
    LoginResult,
    RequestContext,
    Role,
    Session,
    User,
)
from fundaments.sessions import SessionManager
from fundaments.store import Database, Transaction
from fundaments.store.reencrypt import (
    MAX_BATCH_SIZE,
    MAX_FAILED_KEYS,
    ColumnRef,
    ReencryptReport,
    count_rows,
    read_batch,
    swap_value,
)
from fundaments.user_handler import UserHandler

# The value types surfaces need, re-exported: the web layer, the CLI and app/ import nothing below
# this module but config and errors (import-linter contract in pyproject.toml).
__all__ = [
    "MAX_IP_LENGTH",
    "AuditEvent",
    "ChainVerification",
    "LoginFailure",
    "LoginResult",
    "ReencryptReport",
    "RequestContext",
    "Role",
    "Security",
    "Session",
    "User",
]

CORE_SERVICES = ("user_handler", "sessions", "access_control")
MAX_AUDIT_PAGE = 10_000
MAX_SESSION_ID = 64

ENCRYPTION_UNAVAILABLE = (
    "encryption is not configured: set MASTER_ENCRYPTION_KEY (at least 32 characters) and "
    "PERSISTENT_ENCRYPTION_SALT (hex, at least 16 bytes); `fundaments keys generate` prints both"
)


def _user_id(value: object, name: str = "user_id") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2**63:
        raise InvalidArgument(f"{name} must be a positive integer (a User.id), not {type(value).__name__}")
    return value


def _optional_user_id(value: object, name: str) -> int | None:
    return None if value is None else _user_id(value, name)


def _text_argument(value: object, name: str, max_length: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_length:
        raise InvalidArgument(f"{name} must be a non-empty string of at most {max_length} characters")
    return value


class Security:
    """One object for every security action. Build it with ``initialize_fundaments()``."""

    def __init__(self, services: Mapping[str, Any]) -> None:
        for name in CORE_SERVICES:
            if services.get(name) is None:
                raise RuntimeError(f"Security manager failed to initialize: {name} missing")
        self._users: UserHandler = services["user_handler"]
        self._sessions: SessionManager = services["sessions"]
        self._access: AccessControl = services["access_control"]
        self._encryption: EncryptionService | None = services.get("encryption")
        self._audit: AuditTrail | None = services.get("audit")
        self._db: Database | None = services.get("db")
        self._settings: Settings | None = services.get("config")

    @property
    def encryption_available(self) -> bool:
        return self._encryption is not None

    def _require_encryption(self) -> EncryptionService:
        if self._encryption is None:
            raise ServiceUnavailable(ENCRYPTION_UNAVAILABLE)
        return self._encryption

    # --- encryption ---------------------------------------------------------------------------

    def encrypt_data(self, data: str | bytes, *, context: str | None = None) -> str:
        """A self-describing envelope (URL-safe ASCII, fits a TEXT column) holding ``data``.

        ``context`` (for example ``"user:42:api_key"``) is authenticated but not stored: the same
        context must be given to decrypt, so a value copied to another row or purpose fails.
        """
        # `or`: the attribute on the hot path, the helper (which raises) only when it is None.
        return (self._encryption or self._require_encryption()).encrypt(data, context=context)

    def decrypt_data(self, token: Token, *, context: str | None = None) -> str:
        """The text in an envelope (or a PyFundaments ``{data, nonce, tag}`` record).

        Raises DecryptionError (a ValueError) for anything that does not parse, was made under an
        unknown key or another context, or was changed.
        """
        try:
            return (self._encryption or self._require_encryption()).decrypt_text(token, context=context)
        except DecryptionError as exc:
            self._decrypt_failed("decrypt_data", exc)
            raise

    def decrypt_bytes(self, token: Token, *, context: str | None = None) -> bytes:
        """Like decrypt_data, for binary data."""
        try:
            return self._require_encryption().decrypt(token, context=context)
        except DecryptionError as exc:
            self._decrypt_failed("decrypt_bytes", exc)
            raise

    def reencrypt(self, token: Token, *, context: str | None = None) -> str:
        """The same data in a new envelope under the current key; the plaintext is never returned.

        Use it after a key rotation, or to turn a PyFundaments record into an envelope (then
        ``context`` is the context the new envelope is bound to; the old record had none).
        """
        encryption = self._require_encryption()
        try:
            envelope = encryption.reencrypt(token, context=context)
        except DecryptionError as exc:
            self._decrypt_failed("reencrypt", exc)
            raise
        if self._audit is not None:  # coalesced: a bulk rotation writes one event a minute, with a count
            self._audit.record_soon("keys.reencrypted", details={"key_id": encryption.key_id})
        return envelope

    def _decrypt_failed(self, operation: str, exc: DecryptionError) -> None:
        # Coalesced per minute: bad input an attacker controls must not become a write per attempt.
        if self._audit is not None:
            self._audit.record_soon(
                "decrypt.failed", outcome="failure", details={"operation": operation, "error": str(exc)}
            )

    async def encrypt_file(self, src: FilePath, dst: FilePath, *, progress: Progress | None = None) -> None:
        """Encrypt the file ``src`` into ``dst`` in a worker thread, in constant memory.

        ``progress(done, total)`` (bytes of ``src``) runs on the event loop after each segment; an
        exception it raises stops the job. ``dst`` appears, mode 0600, only once complete; on an
        error, or a cancellation before the last segment, no ``dst`` is written.
        """
        await run_file_job(self._require_encryption().encrypt_file, src, dst, progress)

    async def decrypt_file(self, src: FilePath, dst: FilePath, *, progress: Progress | None = None) -> None:
        """Decrypt ``src`` into ``dst``; ``dst`` appears only after the last segment authenticated.

        Raises DecryptionError on a wrong key, a changed, cut, reordered or extended file; then
        no ``dst`` was written and no unauthenticated plaintext ever reached the disk.
        """
        try:
            await run_file_job(self._require_encryption().decrypt_file, src, dst, progress)
        except DecryptionError as exc:
            if self._audit is not None:
                await self._audit.record(
                    "decrypt.failed",
                    outcome="failure",
                    details={"operation": "decrypt_file", "error": str(exc)},
                )
            raise

    # --- accounts ------------------------------------------------------------------------------
    async def get_user(self, user_id: int) -> User | None:
        """The account with this id, or None."""
        user_id = _user_id(user_id)
        return await self._users.get(user_id)

    async def get_user_by_username(self, username: str) -> User | None:
        """The account with this username (compared in normalized form), or None."""
        return await self._users.get_by_username(username)

    async def list_users(self, *, limit: int = 100, offset: int = 0) -> list[User]:
        """Accounts in id order, ``limit`` (at most 1,000) from ``offset``."""
        return await self._users.list(limit, offset)

    async def unlock_user(self, user_id: int, *, actor_user_id: int | None = None) -> None:
        """Clear the account's lock, failure count and backoff (audited ``account.unlocked``)."""
        user_id = _user_id(user_id)
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        await self._users.unlock(user_id, actor_user_id=actor_user_id)

    async def register_user(
        self,
        username: str,
        password: str | None = None,
        *,
        password_hash: str | None = None,
        roles: Iterable[str] = (),
        must_change_password: bool = False,
        actor_user_id: int | None = None,
    ) -> User:
        """Create an account, with its initial roles, in one transaction.

        Give either ``password`` (checked against the password policy, hashed off the event loop)
        or ``password_hash`` (an existing PyFundaments/passlib, Django or Argon2 hash, imported as
        is and upgraded at the first login). Raises PasswordPolicyError, InvalidUsernameError,
        InvalidPasswordHashError, UserExistsError (also for a username that only differs in case
        or Unicode form) or RoleError; nothing is written then.
        """
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        if (password is None) == (password_hash is None):
            raise InvalidArgument("register_user needs exactly one of password or password_hash")
        role_names = [roles] if isinstance(roles, str) else list(roles)
        if password is not None:
            encoded = await self._users.prepare_password(password, username=username)
        else:
            assert password_hash is not None
            encoded = self._users.validate_imported_hash(password_hash)
        async with self._transaction() as tx:
            user = await self._users.create(
                tx, username, encoded, must_change_password=must_change_password, actor_user_id=actor_user_id
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
        """
        ctx = RequestContext.coerce(request_data)
        check = await self._users.authenticate(username, password, ctx)  # throttle, lock, verify
        if not check:
            return LoginResult(reason=check.reason)
        assert check.user is not None
        async with self._transaction() as tx:  # everything a success changes, or nothing
            device_token = await self._users.complete_login(tx, check, ctx)  # counters, hash upgrade
            session = await self._sessions.create(tx, check.user, ctx)  # new token, binding
            await self._require_audit().record(
                "login.succeeded",
                tx=tx,
                actor_user_id=check.user.id,
                subject_user_id=check.user.id,
                username=check.username,
                ip_address=ctx.ip_address,
                user_agent=ctx.user_agent,
                session_id=session.id,
                details={"hash_upgraded": check.upgraded_hash is not None},
            )
        return LoginResult(user=check.user, session=session, device_token=device_token)

    async def change_password(
        self, user_id: int, old_password: str, new_password: str, current_token: str | None = None
    ) -> Session | None:
        """Change a password after checking the current one; every other session of the user ends.

        With ``current_token`` (the session making the change) that session survives with a new
        token, returned here: set it as the cookie. Raises AuthenticationError for a wrong current
        password, PasswordPolicyError for a new one that breaks the policy, UnknownUserError.
        """
        user_id = _user_id(user_id)
        user = await self._users.get(user_id)
        if user is None:
            raise UnknownUserError(f"no account has id {user_id}")
        if not await self._users.verify_password(user_id, old_password):
            await self._require_audit().record(
                "password.change_failed", outcome="failure", actor_user_id=user_id, subject_user_id=user_id
            )
            raise AuthenticationError("the current password is not correct")
        encoded = await self._users.prepare_password(new_password, username=user.username)
        current = await self._sessions.find(current_token) if current_token else None
        if current is not None and current.user_id != user_id:
            current = None  # a token of someone else never survives this user's password change
        async with self._transaction() as tx:
            await self._users.set_password(tx, user_id, encoded, actor_user_id=user_id)
            await self._sessions.revoke_all(
                user_id, tx=tx, except_session_id=current.id if current else None, reason="password_changed"
            )
            rotated = await self._sessions.rotate(tx, current.id) if current else None
        self._sessions.invalidate_cache()
        return rotated

    async def disable_user(self, user_id: int, *, actor_user_id: int | None = None) -> int:
        """Disable an account: it cannot log in, every session ends at once and its permission
        checks answer False everywhere within a second. Returns how many sessions ended."""
        user_id = _user_id(user_id)
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        async with self._transaction() as tx:
            await self._access.invalidate_user(tx, user_id)  # first: the RBAC lock, then the user row
            await self._users.set_disabled(tx, user_id, True, actor_user_id=actor_user_id)
            ended = await self._sessions.revoke_all(user_id, tx=tx, reason="user_disabled")
        self._sessions.invalidate_cache()
        return ended

    async def enable_user(self, user_id: int, *, actor_user_id: int | None = None) -> None:
        """Re-enable a disabled account (audited ``user.enabled``); it logs in afresh."""
        user_id = _user_id(user_id)
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        async with self._transaction() as tx:
            await self._access.invalidate_user(tx, user_id)
            await self._users.set_disabled(tx, user_id, False, actor_user_id=actor_user_id)

    # --- sessions ------------------------------------------------------------------------------
    async def validate_session(
        self, token: str, request_data: RequestContext | Mapping[str, Any]
    ) -> Session | None:
        """The live session for ``token`` from this client, or None (unknown, expired, revoked, or
        a binding mismatch, which also revokes it). After a privilege change the session comes back
        with a new token in ``rotated_token``: set it as the new cookie; the old one is dead.

        Never raises for any token; raises ValueError when ``request_data`` lacks ``ip_address``
        or ``user_agent``.
        """
        return await self._sessions.validate(token, request_data)

    async def user_logout(self, token: str) -> bool:
        """End the session of ``token``; False if it was not a live session."""
        return await self._sessions.revoke(token)

    async def logout_all(self, user_id: int) -> int:
        """End every session of the user; how many ended."""
        user_id = _user_id(user_id)
        return await self._sessions.revoke_all(user_id, reason="logout_all")

    async def list_sessions(self, user_id: int) -> list[Session]:
        """The user's live sessions, newest first; each has a public ``id`` and no token."""
        user_id = _user_id(user_id)
        return await self._sessions.list_for_user(user_id)

    async def revoke_session(self, user_id: int, session_id: str) -> bool:
        """End one of the user's sessions by its public id; False if the user has no such session."""
        user_id = _user_id(user_id)
        session_id = _text_argument(session_id, "session_id", MAX_SESSION_ID)
        return await self._sessions.revoke_by_id(user_id, session_id)

    # --- access control ------------------------------------------------------------------------
    async def check_permission(self, user_id: Any, permission: Any) -> bool:
        """True when the user holds ``permission`` (directly, by inheritance or by wildcard).

        False — never an exception — for an unknown or disabled user, an unknown or malformed
        permission, or arguments of the wrong type. A warm check is an in-memory set lookup.
        """
        return await self._access.check_permission(user_id, permission)

    async def require_permission(
        self,
        user_id: Any,
        permission: Any,
        *,
        request_data: RequestContext | Mapping[str, Any] | None = None,
    ) -> None:
        """Return when the user holds ``permission``; else audit ``permission.denied`` (with the
        client IP and User-Agent from ``request_data`` when given) and raise PermissionDenied."""
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
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        return await self._access.create_role(
            name, permissions, inherits, description, actor_user_id=actor_user_id
        )

    async def delete_role(self, name: str, *, actor_user_id: int | None = None) -> None:
        """Delete a role: revoked from its holders, removed from roles inheriting it."""
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        await self._access.delete_role(name, actor_user_id=actor_user_id)

    async def set_role_permissions(
        self, name: str, permissions: Iterable[str], *, actor_user_id: int | None = None
    ) -> None:
        """Replace a role's own permissions."""
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        await self._access.set_role_permissions(name, permissions, actor_user_id=actor_user_id)

    async def set_role_inherits(
        self, name: str, inherits: Iterable[str], *, actor_user_id: int | None = None
    ) -> None:
        """Replace the roles a role inherits; RoleError naming the cycle if one would form."""
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        await self._access.set_role_inherits(name, inherits, actor_user_id=actor_user_id)

    async def grant_role(self, user_id: int, role: str, *, actor_user_id: int | None = None) -> bool:
        """Grant a role (audited; the user's sessions rotate at their next request); False if the
        user already held it."""
        user_id = _user_id(user_id)
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        changed = await self._access.grant_role(user_id, role, actor_user_id=actor_user_id)
        self._sessions.invalidate_cache()  # rotation at once on this instance, within 1 s elsewhere
        return changed

    async def revoke_role(self, user_id: int, role: str, *, actor_user_id: int | None = None) -> bool:
        """Revoke a role (audited; sessions rotate); False if the user did not hold it."""
        user_id = _user_id(user_id)
        actor_user_id = _optional_user_id(actor_user_id, "actor_user_id")
        changed = await self._access.revoke_role(user_id, role, actor_user_id=actor_user_id)
        self._sessions.invalidate_cache()
        return changed

    async def user_roles(self, user_id: int) -> list[str]:
        """The roles granted to the user directly, sorted; UnknownUserError for an unknown id."""
        user_id = _user_id(user_id)
        return await self._access.user_roles(user_id)

    async def user_permissions(self, user_id: int) -> frozenset[str]:
        """The user's effective permissions (wildcards as granted); empty while disabled."""
        user_id = _user_id(user_id)
        return await self._access.user_permissions(user_id)

    async def list_roles(self) -> list[Role]:
        """Every role with its own permissions and parents, sorted by name."""
        return await self._access.list_roles()

    # --- audit ---------------------------------------------------------------------------------
    async def audit_events(
        self,
        *,
        user_id: int | None = None,
        kind: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[AuditEvent]:
        """Audit events, newest first: about or by ``user_id``, of ``kind``, at or after ``since``."""
        if not isinstance(limit, int) or not 1 <= limit <= MAX_AUDIT_PAGE:
            raise InvalidArgument(f"limit must be an integer between 1 and {MAX_AUDIT_PAGE}")
        return await self._require_audit().events(user_id=user_id, kind=kind, since=since, limit=limit)

    async def verify_audit_chain(self) -> ChainVerification:
        """Truthy when every audit event still matches the hash chain; else names the first broken one."""
        return await self._require_audit().verify_chain()

    def _transaction(self) -> AbstractAsyncContextManager[Transaction]:
        if self._db is None:
            raise ServiceUnavailable("no database: build Security with initialize_fundaments()")
        return self._db.transaction()

    def _require_audit(self) -> AuditTrail:
        if self._audit is None:
            raise ServiceUnavailable(
                "the audit trail is not running: build Security with initialize_fundaments()"
            )
        return self._audit

    # --- key rotation --------------------------------------------------------------------------
    async def reencrypt_column(
        self,
        table: str,
        column: str,
        *,
        key_column: str = "id",
        context_column: str | None = None,
        batch_size: int = 500,
        progress: Callable[[int, int], object] | None = None,
    ) -> ReencryptReport:
        """Re-encrypt every envelope in ``table.column`` under the current key, in place.

        Rows are read in ``key_column`` order, ``batch_size`` at a time; each batch is one
        transaction (with its ``keys.reencrypted`` audit event), so a killed run loses nothing and
        running it again skips the rows already under the current key. ``context_column`` names
        the column holding each value's encryption context. A value that does not decrypt (not an
        envelope, a key no longer configured, another context) is counted in ``failed`` and left
        as it is; a value changed by someone else meanwhile is left to that writer. The plaintext
        never leaves the encryption service. ``progress(rows scanned, rows in the table)`` runs
        after each batch.
        """
        encryption = self._require_encryption()
        ref = ColumnRef.build(table, column, key_column, context_column)
        valid_size = isinstance(batch_size, int) and not isinstance(batch_size, bool)
        if not valid_size or not 0 < batch_size <= MAX_BATCH_SIZE:
            raise InvalidArgument(f"batch_size must be an integer between 1 and {MAX_BATCH_SIZE}")
        if self._db is None:
            raise ServiceUnavailable("no database: build Security with initialize_fundaments()")
        audit = self._require_audit()
        report = ReencryptReport(table=table, column=column, key_id=encryption.key_id)
        report.total = await count_rows(self._db, ref)
        if progress is not None:
            progress(0, report.total)
        after: Any = None
        while True:
            async with self._transaction() as tx:
                rows = await read_batch(tx, ref, after, batch_size)
                before = (report.reencrypted, report.failed)
                for row in rows:
                    await self._reencrypt_row(tx, ref, row, encryption, report)
                done, failed = report.reencrypted - before[0], report.failed - before[1]
                if done or failed:  # committed with the rows it describes
                    await audit.record(
                        "keys.reencrypted",
                        tx=tx,
                        outcome="failure" if failed else "success",
                        details={
                            "table": table,
                            "column": column,
                            "key_id": report.key_id,
                            "reencrypted": done,
                            "failed": failed,
                        },
                    )
            if not rows:
                break
            after = rows[-1][0]
            if progress is not None:
                progress(report.scanned, report.total)
            if len(rows) < batch_size:
                break
        return report

    async def _reencrypt_row(
        self,
        tx: Transaction,
        ref: ColumnRef,
        row: Any,
        encryption: EncryptionService,
        report: ReencryptReport,
    ) -> None:
        report.scanned += 1
        key, value = row[0], row[1]
        if value is None or len(value) == 0:
            report.empty += 1
            return
        context = None if ref.context is None or row[2] is None else str(row[2])
        try:
            if not encryption.needs_reencrypt(value):
                report.current += 1
                return
            envelope = encryption.reencrypt(value, context=context)
        except DecryptionError:
            report.failed += 1
            if len(report.failed_keys) < MAX_FAILED_KEYS:
                report.failed_keys.append(key)
            return
        old_value = value if isinstance(value, str) else bytes(value)
        new_value = envelope if isinstance(value, str) else envelope.encode("ascii")  # keep the type
        if await swap_value(tx, ref, key, old_value, new_value):
            report.reencrypted += 1
        else:
            report.changed_meanwhile += 1
