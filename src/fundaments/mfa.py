"""Second factors: TOTP (RFC 6238) with replay protection, recovery codes, the login challenge.

**TOTP.** A 160-bit secret (RFC 4226's recommended length) is made at enrolment and stored as an
AEAD envelope bound to the account (context ``user:<id>:totp``), so a database dump holds no
secret and ``fundaments keys reencrypt`` moves it to a new master key. It is only *pending* until
a code made from it is typed back (``confirm``): a scanning mistake never locks anyone out. A code
is checked against the steps ``now - 1``, ``now``, ``now + 1`` (30 s each: at most one step of
drift either way), each with :func:`hmac.compare_digest`, all three always computed. The step of
the last accepted code is stored and only a later step is accepted, written with one conditional
``UPDATE`` whose row count decides (NIST SP 800-63B: an OTP "SHALL be accepted only once while it
is valid") — two requests, in two processes, with one code: exactly one gets in.

**Recovery codes.** Ten codes of 16 Crockford base32 characters (80 random bits each), shown as
``XXXX-XXXX-XXXX-XXXX``; input is read case-insensitively, dashes and spaces ignored, ``I``/``L``
as ``1`` and ``O`` as ``0``. Stored as HMAC-SHA256 under a key derived from the master key
(purpose ``recovery-code``), never in clear. Why a keyed hash and not Argon2: a password needs a
slow hash because people choose guessable ones; a recovery code has 80 bits of entropy, so even an
attacker holding the database *and* the key faces 2^80 guesses per code — out of reach at any
speed — and without the key (a dump alone) cannot test a single guess. A slow hash would add
nothing but the cost of a password hash to every use (the issue's bar: a recovery-code login
costs at most one password verification; this costs microseconds). Each code is spent by
``DELETE … RETURNING``: one use, one winner.

**Login challenge.** After a right password, an account with a second factor gets an
``mfa_token`` instead of a session: 256 random bits, stored as SHA-256 only, living
``MFA_TOKEN_TTL`` (5 min), bound to the client like a session (``SESSION_BINDING``), with
``MFA_CHALLENGE_ATTEMPTS`` codes to try, spent when the second factor is accepted. Its table is
not the sessions table and its hash is of another token, so it can never be used as a session.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Literal

import pyotp

from fundaments.clock import Clock
from fundaments.config import Settings
from fundaments.encryption import EncryptionService
from fundaments.errors import DecryptionError, ServiceUnavailable
from fundaments.models import RequestContext, TotpEnrolment
from fundaments.store import Database, Executor, Row
from fundaments.store import mfa as queries

TOTP_STEP = 30  # seconds (RFC 6238's default, what every authenticator app assumes)
TOTP_DIGITS = 6
TOTP_DRIFT = 1  # steps accepted either side of now: ±30 s of clock skew and typing time
SECRET_BYTES = 20  # 160 bits
RECOVERY_CODES = 10
RECOVERY_CODE_CHARS = 16  # 80 bits in Crockford base32
RECOVERY_PURPOSE = "recovery-code"
CHALLENGE_TOKEN_BYTES = 32  # 256 bits
MAX_CHALLENGE_TOKEN_LENGTH = 128
MAX_CODE_INPUT = 64  # longer input is no code: refused before any work
PRUNE_EVERY = 100  # challenges opened between purges of dead ones

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_CROCKFORD_INPUT = {ch: ch for ch in CROCKFORD} | {"I": "1", "L": "1", "O": "0"}
_SEPARATORS = frozenset(" -_\t")

Factor = Literal["totp", "recovery_code"]

ENCRYPTION_NEEDED = (
    "multi-factor authentication needs encryption (the TOTP secret is stored encrypted): set "
    "MASTER_ENCRYPTION_KEY and PERSISTENT_ENCRYPTION_SALT; `fundaments keys generate` prints both"
)


def parse_code(value: object) -> tuple[Factor, str] | None:
    """What a typed second-factor code is: ``("totp", "123456")``, ``("recovery_code", <16
    canonical characters>)``, or None for anything else. Never raises: the input is untrusted."""
    if not isinstance(value, str) or len(value) > MAX_CODE_INPUT or not value.isascii():
        return None
    compact = "".join(ch for ch in value if ch not in _SEPARATORS)
    if len(compact) == TOTP_DIGITS and compact.isdigit():
        return "totp", compact
    if len(compact) == RECOVERY_CODE_CHARS:
        canonical = [_CROCKFORD_INPUT.get(ch) for ch in compact.upper()]
        if None not in canonical:
            return "recovery_code", "".join(ch for ch in canonical if ch is not None)
    return None


def format_recovery_code(canonical: str) -> str:
    """``ABCD-EFGH-JKMN-PQRS``: how a code is shown (groups of four)."""
    return "-".join(canonical[i : i + 4] for i in range(0, len(canonical), 4))


def new_recovery_code() -> str:
    """16 canonical Crockford characters from 80 random bits."""
    number = int.from_bytes(secrets.token_bytes(RECOVERY_CODE_CHARS * 5 // 8), "big")
    return "".join(CROCKFORD[(number >> (5 * i)) & 31] for i in reversed(range(RECOVERY_CODE_CHARS)))


def totp_context(user_id: int) -> str:
    return f"user:{user_id}:totp"


def challenge_digest(token: object) -> bytes | None:
    """SHA-256 of an mfa_token, or None for anything that cannot be one."""
    if not isinstance(token, str) or not 0 < len(token) <= MAX_CHALLENGE_TOKEN_LENGTH or not token.isascii():
        return None
    return hashlib.sha256(b"fundaments/mfa-challenge\x00" + token.encode("ascii")).digest()


def matching_step(secret: str, code: str, now: float) -> int | None:
    """The latest step within the drift window whose code is ``code``, or None. All the window's
    codes are computed and compared in constant time, whichever matches."""
    totp = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP)
    current = int(now // TOTP_STEP)
    expected = code.encode("ascii")
    found: int | None = None
    for step in range(current - TOTP_DRIFT, current + TOTP_DRIFT + 1):
        if hmac.compare_digest(totp.generate_otp(step).encode("ascii"), expected):
            found = step
    return found


@dataclass(frozen=True, slots=True)
class Challenge:
    """A live login challenge, as :meth:`MfaService.claim_attempt` took one of its attempts."""

    token_hash: bytes = field(repr=False)
    user_id: int
    ip_address: str
    user_agent: str
    device_hash: bytes | None = field(repr=False)
    devices: int
    attempts_left: int


@dataclass(frozen=True, slots=True)
class Accepted:
    """A second factor that passed its check, still to be spent in the login's transaction."""

    factor: Factor
    secret: str | None = field(default=None, repr=False)  # the stored envelope (TOTP)
    step: int = 0
    code: str | None = field(default=None, repr=False)  # the canonical recovery code


class MfaService:
    """TOTP enrolment and checks, recovery codes and login challenges on the injected database."""

    def __init__(
        self, db: Database, settings: Settings, clock: Clock, encryption: EncryptionService | None
    ) -> None:
        self._db = db
        self._settings = settings
        self._clock = clock
        self._encryption = encryption
        self._opened_since_prune = 0

    def now(self) -> float:
        return self._clock.now()

    def _require_encryption(self) -> EncryptionService:
        if self._encryption is None:
            raise ServiceUnavailable(ENCRYPTION_NEEDED)
        return self._encryption

    @property
    def issuer(self) -> str:
        return self._settings.mfa_issuer or self._settings.app_name

    # --- TOTP -------------------------------------------------------------------------------------
    async def begin_totp(self, tx: Executor, user_id: int, username: str) -> TotpEnrolment:
        """A new pending secret for the account (replacing an earlier pending one); the active
        secret, if any, keeps working until the new one is confirmed."""
        encryption = self._require_encryption()
        secret = base64.b32encode(secrets.token_bytes(SECRET_BYTES)).decode("ascii")
        now = self._clock.now()
        context = totp_context(user_id)
        envelope = encryption.encrypt(secret, context=context)
        await queries.begin_totp(tx, user_id, envelope, now + self._settings.mfa_enrolment_ttl, context, now)
        uri = pyotp.TOTP(secret, digits=TOTP_DIGITS, interval=TOTP_STEP).provisioning_uri(
            name=username, issuer_name=self.issuer
        )
        return TotpEnrolment(secret=secret, uri=uri)

    async def confirm_totp(self, tx: Executor, user_id: int, code: object) -> bool:
        """Activate the pending secret if ``code`` is a current code of it; False otherwise."""
        parsed = parse_code(code)
        row = await queries.totp_row(tx, user_id)
        if parsed is None or parsed[0] != "totp" or row is None or row["pending_secret"] is None:
            return False
        now = self._clock.now()
        if row["pending_until"] is None or float(row["pending_until"]) <= now:
            return False
        secret = self._decrypt(row["pending_secret"], user_id)
        step = matching_step(secret, parsed[1], now) if secret is not None else None
        if step is None:
            return False
        return await queries.confirm_totp(tx, user_id, row["pending_secret"], step, now)

    async def enrolled(self, db: Executor, user_id: int) -> bool:
        """Whether the account has a confirmed second factor (TOTP for now)."""
        return await queries.has_totp(db, user_id)

    async def disable_totp(self, tx: Executor, user_id: int) -> bool:
        """Remove the account's TOTP secret, its recovery codes and open challenges; whether it had one."""
        had = await queries.has_totp(tx, user_id)
        await queries.disable_totp(tx, user_id)
        await queries.delete_recovery_codes(tx, user_id)
        await queries.delete_challenges(tx, user_id)
        return had

    def _decrypt(self, envelope: str, user_id: int) -> str | None:
        try:
            return self._require_encryption().decrypt_text(envelope, context=totp_context(user_id))
        except DecryptionError:
            return None  # a key no longer configured, or a row moved between accounts: no code matches

    # --- checking a code --------------------------------------------------------------------------
    async def check(self, db: Executor, user_id: int, code: object) -> Accepted | None:
        """What :meth:`spend` must make this request's for ``code`` to count, or None when it cannot
        be a valid factor now: a TOTP code of a step after the last accepted one (checked here), or a
        well-formed recovery code (whether it is an unused one of the account, spending tells).
        Writes nothing (in ``db``, the transaction that will spend it)."""
        parsed = parse_code(code)
        if parsed is None:
            return None
        kind, value = parsed
        if kind == "recovery_code":
            return Accepted("recovery_code", code=value)
        row = await queries.totp_row(db, user_id)
        if row is None or row["secret"] is None:
            return None
        secret = self._decrypt(row["secret"], user_id)
        step = matching_step(secret, value, self._clock.now()) if secret is not None else None
        if step is None or step <= int(row["last_step"]):
            return None  # wrong, or this step (or a later one) was accepted already: a replay
        return Accepted("totp", secret=row["secret"], step=step)

    async def spend(self, tx: Executor, user_id: int, accepted: Accepted) -> bool:
        """Make the factor :meth:`check` let through this request's, in ``tx``: the TOTP step becomes
        the last accepted one, the recovery code is deleted. False when it is not (or no longer)
        valid: another request won it, or the recovery code is not one of the account's."""
        if accepted.factor == "totp":
            assert accepted.secret is not None
            return await queries.accept_step(tx, user_id, accepted.secret, accepted.step)
        assert accepted.code is not None
        # New codes carry the current key's digest; codes made under a previous key still match.
        for key_id, key in self._require_encryption().purpose_keys(RECOVERY_PURPOSE):
            digest = _recovery_digest(key, user_id, accepted.code)
            if await queries.spend_recovery_code(tx, user_id, digest, key_id):
                return True
        return False

    # --- recovery codes ---------------------------------------------------------------------------
    async def new_recovery_codes(self, tx: Executor, user_id: int) -> list[str]:
        """Ten new codes for the account, replacing every earlier one; returned once, stored hashed."""
        key_id, key = self._require_encryption().purpose_keys(RECOVERY_PURPOSE)[0]
        codes = [new_recovery_code() for _ in range(RECOVERY_CODES)]
        digests = [_recovery_digest(key, user_id, code) for code in codes]
        await queries.replace_recovery_codes(tx, user_id, digests, key_id, self._clock.now())
        return [format_recovery_code(code) for code in codes]

    async def recovery_codes_left(self, db: Executor, user_id: int) -> int:
        return await queries.recovery_codes_left(db, user_id)

    # --- login challenges -------------------------------------------------------------------------
    async def open_challenge(
        self,
        tx: Executor,
        user_id: int,
        client: RequestContext,
        device_hash: bytes | None,
        devices: int,
    ) -> str:
        """A new mfa_token for the account's login from ``client`` (its IP as the caller normalized
        it for the binding); only its digest is stored."""
        token = secrets.token_urlsafe(CHALLENGE_TOKEN_BYTES)
        digest = challenge_digest(token)
        assert digest is not None
        now = self._clock.now()
        await queries.insert_challenge(
            tx,
            digest,
            user_id,
            client.ip_address,
            client.user_agent,
            device_hash,
            devices,
            self._settings.mfa_challenge_attempts,
            now,
            now + self._settings.mfa_token_ttl,
        )
        self._opened_since_prune += 1
        if self._opened_since_prune >= PRUNE_EVERY:
            self._opened_since_prune = 0
            await queries.purge_expired_challenges(tx, now)
        return token

    async def claim_attempt(self, tx: Executor, token: object) -> Challenge | None:
        """Take one attempt of the live challenge of ``token``; None when there is none."""
        digest = challenge_digest(token)
        if digest is None:
            return None
        row = await queries.claim_challenge_attempt(tx, digest, self._clock.now())
        return None if row is None else _challenge(digest, row)

    async def spend_challenge(self, tx: Executor, challenge: Challenge) -> bool:
        return await queries.spend_challenge(tx, challenge.token_hash)


def _challenge(digest: bytes, row: Row) -> Challenge:
    device = row["device_hash"]
    return Challenge(
        token_hash=digest,
        user_id=int(row["user_id"]),
        ip_address=str(row["ip_address"]),
        user_agent=str(row["user_agent"]),
        device_hash=None if device is None else bytes(device),
        devices=int(row["devices"]),
        attempts_left=int(row["attempts_left"]),
    )


def _recovery_digest(key: bytes, user_id: int, canonical: str) -> bytes:
    # Bound to the account: the same code of two accounts has two digests.
    return hmac.new(key, f"{user_id}\x00{canonical}".encode("ascii"), hashlib.sha256).digest()
