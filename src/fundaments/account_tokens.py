"""Single-use tokens that recover or confirm an account: password reset and email verification.

A token is 256 random bits (``secrets.token_urlsafe(32)``), handed out once — in a link mailed to
the account's address — and stored only as its SHA-256: a database dump holds no usable link. Each
token is bound to its purpose and to what it may change: a reset token to the account's current
password hash and address, a verification token to the address. The binding is a digest kept next
to the token and compared at use, so a token dies the moment the password or the address changes,
without a write to find it. A new token of a purpose replaces the account's earlier ones; using a
token deletes it (``DELETE … RETURNING``: of two requests racing with one token exactly one wins).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.store import Database, Executor, Row
from fundaments.store import tokens as queries

PASSWORD_RESET = "password_reset"  # noqa: S105 - a purpose name
EMAIL_VERIFICATION = "email_verification"
PURPOSES = (PASSWORD_RESET, EMAIL_VERIFICATION)
TOKEN_BYTES = 32  # 256 bits
MAX_TOKEN_LENGTH = 128  # a token_urlsafe(32) is 43 characters; anything much longer is not one
PRUNE_EVERY = 100  # issued tokens between purges of expired ones


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def binding(purpose: str, account: Row) -> bytes:
    """What a token of ``purpose`` is bound to on ``account`` (a row with id, password_hash and
    email_key), as a digest: it changes when the password or the address does."""
    parts = [purpose, str(int(account["id"])), account["email_key"] or ""]
    if purpose == PASSWORD_RESET:
        parts.append(account["password_hash"])
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).digest()


def looks_like_token(token: object) -> bool:
    return isinstance(token, str) and 0 < len(token) <= MAX_TOKEN_LENGTH and token.isascii()


class AccountTokens:
    """Issues, checks and spends account tokens; counts recovery requests per key."""

    def __init__(self, db: Database, settings: Settings, clock: Clock) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._issued_since_prune = 0

    def now(self) -> float:
        return self._clock.now()

    async def account(self, db: Executor, user_id: int) -> Row | None:
        """The account as a token binds it (id, username, password_hash, email, email_key, is_disabled)."""
        return await queries.subject(db, user_id)

    async def account_by_email(self, db: Executor, email_key: str) -> Row | None:
        return await queries.subject_by_email_key(db, email_key)

    def lifetime(self, purpose: str) -> int:
        if purpose == PASSWORD_RESET:
            return self._settings.password_reset_ttl
        if purpose == EMAIL_VERIFICATION:
            return self._settings.email_verification_ttl
        raise ValueError(f"unknown token purpose {purpose!r}")

    async def issue(self, tx: Executor, account: Row, purpose: str) -> str:
        """A new token of ``purpose`` for ``account`` (see :func:`binding`), replacing its earlier
        ones, in ``tx``. The token itself is returned once and never stored."""
        now = self._clock.now()
        token = secrets.token_urlsafe(TOKEN_BYTES)
        user_id = int(account["id"])
        await queries.delete_for_user(tx, user_id, purpose)
        await queries.insert(
            tx,
            token_digest(token),
            user_id,
            purpose,
            binding(purpose, account),
            now,
            now + self.lifetime(purpose),
        )
        self._issued_since_prune += 1
        if self._issued_since_prune >= PRUNE_EVERY:
            self._issued_since_prune = 0
            await queries.purge_expired(tx, now)
        return token

    async def check(self, token: object, purpose: str) -> Row | None:
        """The token's account (user_id, username, email, …) when ``token`` is a live token of
        ``purpose`` still bound to the account as it is now; None otherwise. Spends nothing."""
        if not looks_like_token(token):
            return None
        assert isinstance(token, str)
        row = await queries.find(self._db, token_digest(token), purpose)
        if row is None or not self._valid(row, purpose, row):
            return None
        return row

    async def spend(self, tx: Executor, token: object, purpose: str) -> int | None:
        """Delete the token in ``tx`` and return its account's id, if it was live and still bound
        to the account as ``tx`` sees it now; None otherwise (spent, replaced, expired, unbound)."""
        if not looks_like_token(token):
            return None
        assert isinstance(token, str)
        spent = await queries.spend(tx, token_digest(token), purpose)
        if spent is None:
            return None
        account = await queries.subject(tx, int(spent["user_id"]))
        if account is None or not self._valid(spent, purpose, account):
            return None
        return int(spent["user_id"])

    def _valid(self, token_row: Row, purpose: str, account: Row) -> bool:
        if float(token_row["expires_at"]) <= self._clock.now() or bool(account["is_disabled"]):
            return False
        return hmac.compare_digest(bytes(token_row["binding"]), binding(purpose, account))

    async def revoke(self, tx: Executor, user_id: int, purpose: str) -> int:
        return await queries.delete_for_user(tx, user_id, purpose)

    async def claim_request(self, tx: Executor, key: str, limit: int) -> bool:
        """Count one request of ``key`` in the request window; False once ``limit`` is reached."""
        window = float(self._settings.reset_request_window)
        now = self._clock.now()
        if secrets.randbelow(PRUNE_EVERY) == 0:
            await queries.prune_requests(tx, now - window)
        return await queries.claim_request(tx, key, now, window, limit) is not None
