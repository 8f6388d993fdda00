"""Password hashing and the password policy (layer 2).

Hashers are small strategy classes, as in Django's ``contrib/auth/hashers.py``: each has an
``algorithm`` name, ``encode``, ``verify``, ``must_update`` and ``safe_summary``. The stored string
names its scheme and parameters, so a hash from another system (passlib, Django) keeps verifying
and is replaced by the current scheme at the next successful login.

Everything here is synchronous and CPU-bound; :class:`HashingPool` runs it on worker threads with
bounded concurrency and a bounded wait queue, so a flood of logins cannot stall the event loop or
queue without limit.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import functools
import gzip
import hashlib
import hmac
import importlib.resources
import itertools
import re
import secrets
import threading
import unicodedata
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar, TypeVar

import argon2
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from fundaments.config import Settings
from fundaments.errors import InvalidPasswordHashError, PasswordPolicyError, ServiceUnavailable

T = TypeVar("T")

# Bounds on the parameters of imported hashes: a hash is attacker-influenced data in a migrated table,
# and one with a billion iterations or 64 GiB of memory would turn each login into a denial of service.
MAX_PBKDF2_ITERATIONS = 10_000_000
MAX_ARGON2_MEMORY_KIB = 1024 * 1024  # 1 GiB (libsodium's "sensitive" level)
MAX_ARGON2_TIME_COST = 64
MAX_ARGON2_PARALLELISM = 64
MAX_HASH_LENGTH = 512
PBKDF2_SALT_BYTES = 16
PBKDF2_DIGEST_BYTES = 32

COMMON_PASSWORDS_RESOURCE = "common-passwords.txt.gz"


class HashingBusyError(ServiceUnavailable):
    """Every hashing worker is busy and the wait queue is full: retry in a moment."""


def _is_utf8_text(text: str) -> bool:
    """False for a string with lone surrogates, which UTF-8 (and so every hasher) cannot encode."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_password(password: str) -> str:
    """The form a password is hashed and verified in: Unicode NFKC, nothing else (no case folding,
    no trimming, no truncation), as NIST SP 800-63B asks."""
    return unicodedata.normalize("NFKC", password)


# --- hashers -------------------------------------------------------------------------------------


class Hasher:
    """One password-hashing scheme: how to encode, verify and recognise its stored strings."""

    algorithm: ClassVar[str]

    def handles(self, encoded: str) -> bool:
        raise NotImplementedError

    def encode(self, password: str) -> str:
        raise NotImplementedError(f"{self.algorithm} hashes are verified, never created")

    def verify(self, password: str, encoded: str) -> bool:
        raise NotImplementedError

    def must_update(self, encoded: str) -> bool:
        """True when ``encoded`` is weaker than what :meth:`encode` would produce now."""
        return True

    def is_valid(self, encoded: str) -> bool:
        """True when ``encoded`` parses and its parameters are within the import bounds."""
        raise NotImplementedError

    def safe_summary(self, encoded: str) -> dict[str, Any]:
        """Scheme and parameters, without salt or digest (for logs and the admin command)."""
        return {"algorithm": self.algorithm}


_ARGON2_PHC = re.compile(
    r"^\$argon2(?P<type>id|i|d)\$(?:v=(?P<v>\d+)\$)?m=(?P<m>\d+),t=(?P<t>\d+),p=(?P<p>\d+)"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<hash>[A-Za-z0-9+/]+)\Z",
    re.ASCII,  # \d must not match other scripts' digits; \Z, unlike $, refuses a trailing newline
)


def _argon2_params(phc: str) -> dict[str, int] | None:
    match = _ARGON2_PHC.match(phc)
    if match is None:
        return None
    m, t, p = int(match["m"]), int(match["t"]), int(match["p"])
    if not (
        8 <= m <= MAX_ARGON2_MEMORY_KIB
        and 1 <= t <= MAX_ARGON2_TIME_COST
        and 1 <= p <= MAX_ARGON2_PARALLELISM
    ):
        return None
    if match["v"] not in (None, "16", "19"):
        return None
    return {"m": m, "t": t, "p": p}


class Argon2idHasher(Hasher):
    """Argon2id (RFC 9106) through argon2-cffi; verifies any Argon2 PHC string within the bounds."""

    algorithm = "argon2id"

    def __init__(self, *, memory_cost: int, time_cost: int, parallelism: int) -> None:
        self._hasher = argon2.PasswordHasher(
            memory_cost=memory_cost,
            time_cost=time_cost,
            parallelism=parallelism,
            hash_len=32,
            salt_len=16,
            type=argon2.Type.ID,
        )
        self.memory_cost = memory_cost
        self.time_cost = time_cost
        self.parallelism = parallelism

    def handles(self, encoded: str) -> bool:
        return encoded.startswith("$argon2")

    def _phc(self, encoded: str) -> str:
        return encoded

    def is_valid(self, encoded: str) -> bool:
        return _argon2_params(self._phc(encoded)) is not None

    def encode(self, password: str) -> str:
        return self._hasher.hash(password)

    def verify(self, password: str, encoded: str) -> bool:
        phc = self._phc(encoded)
        if _argon2_params(phc) is None:
            return False
        try:
            return self._hasher.verify(phc, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def must_update(self, encoded: str) -> bool:
        phc = self._phc(encoded)
        if phc is not encoded or not phc.startswith("$argon2id$"):
            return True
        try:
            return self._hasher.check_needs_rehash(phc)
        except (InvalidHashError, ValueError):
            return True

    def safe_summary(self, encoded: str) -> dict[str, Any]:
        return {"algorithm": self.algorithm, **(_argon2_params(self._phc(encoded)) or {})}


class DjangoArgon2Hasher(Argon2idHasher):
    """Django's ``argon2$argon2id$v=19$m=…`` (an Argon2 PHC string behind an ``argon2`` prefix)."""

    algorithm = "django_argon2"

    def handles(self, encoded: str) -> bool:
        return encoded.startswith("argon2$argon2")

    def _phc(self, encoded: str) -> str:
        return encoded[len("argon2") :]

    def encode(self, password: str) -> str:
        raise NotImplementedError("Django argon2 hashes are verified and upgraded, never created")


def _ab64_decode(text: str) -> bytes:
    """passlib's adapted base64 ('.' for '+', no padding)."""
    text = text.replace(".", "+")
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _ab64_encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=").replace("+", ".")


_PASSLIB_PBKDF2 = re.compile(
    r"^\$pbkdf2-sha256\$(?P<i>[1-9]\d{0,8})\$(?P<salt>[A-Za-z0-9./]*)\$(?P<hash>[A-Za-z0-9./]{43})\Z",
    re.ASCII,
)
_DJANGO_PBKDF2 = re.compile(
    r"^pbkdf2_sha256\$(?P<i>[1-9]\d{0,8})\$(?P<salt>[^$\s]{1,128})\$(?P<hash>[A-Za-z0-9+/]{43}=)\Z",
    re.ASCII,
)


class Pbkdf2Sha256Hasher(Hasher):
    """PBKDF2-HMAC-SHA256 in passlib's modular-crypt form ``$pbkdf2-sha256$rounds$salt$digest``.

    The FIPS choice (``PASSWORD_HASHER=pbkdf2_sha256``), and what PyFundaments stored through
    passlib, so its users verify unchanged.
    """

    algorithm = "pbkdf2_sha256"

    def __init__(self, *, iterations: int) -> None:
        self.iterations = iterations

    def handles(self, encoded: str) -> bool:
        return encoded.startswith("$pbkdf2-sha256$")

    _pattern = _PASSLIB_PBKDF2

    def _parse(self, encoded: str) -> tuple[int, bytes, bytes] | None:
        """(iterations, salt, digest), or None for anything malformed or beyond the bounds."""
        match = self._pattern.match(encoded)
        if match is None:
            return None
        iterations = int(match["i"])
        if iterations > MAX_PBKDF2_ITERATIONS:
            return None
        try:
            return iterations, *self._salt_and_digest(match)
        except (binascii.Error, ValueError):
            return None

    @staticmethod
    def _salt_and_digest(match: re.Match[str]) -> tuple[bytes, bytes]:
        return _ab64_decode(match["salt"]), _ab64_decode(match["hash"])

    def is_valid(self, encoded: str) -> bool:
        parsed = self._parse(encoded)
        return parsed is not None and len(parsed[2]) == PBKDF2_DIGEST_BYTES

    def encode(self, password: str) -> str:
        salt = secrets.token_bytes(PBKDF2_SALT_BYTES)
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, self.iterations)
        return f"$pbkdf2-sha256${self.iterations}${_ab64_encode(salt)}${_ab64_encode(digest)}"

    def verify(self, password: str, encoded: str) -> bool:
        parsed = self._parse(encoded)
        if parsed is None:
            return False
        iterations, salt, expected = parsed
        digest = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
        return hmac.compare_digest(digest, expected)

    def must_update(self, encoded: str) -> bool:
        parsed = self._parse(encoded)
        return parsed is None or parsed[0] < self.iterations or len(parsed[1]) < PBKDF2_SALT_BYTES

    def safe_summary(self, encoded: str) -> dict[str, Any]:
        parsed = self._parse(encoded)
        return {"algorithm": self.algorithm, "iterations": parsed[0] if parsed else None}


class DjangoPbkdf2Sha256Hasher(Pbkdf2Sha256Hasher):
    """Django's ``pbkdf2_sha256$iterations$salt$base64digest`` (the salt is text, used as UTF-8)."""

    algorithm = "django_pbkdf2_sha256"

    def handles(self, encoded: str) -> bool:
        return encoded.startswith("pbkdf2_sha256$")

    _pattern = _DJANGO_PBKDF2

    @staticmethod
    def _salt_and_digest(match: re.Match[str]) -> tuple[bytes, bytes]:
        return match["salt"].encode("utf-8"), base64.b64decode(match["hash"], validate=True)

    def encode(self, password: str) -> str:
        raise NotImplementedError("Django PBKDF2 hashes are verified and upgraded, never created")

    def must_update(self, encoded: str) -> bool:
        return True


# --- the password policy (NIST SP 800-63B-4 §3.1.1.2, OWASP ASVS 5.0 V6.2) -----------------------

_KEYBOARD_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm", "qwertzuiop", "azertyuiop", "yxcvbnm")
MIN_DISTINCT_CHARACTERS = 4
MAX_SEQUENTIAL_RUNS = 3
MIN_CONTEXT_WORD = 3  # shorter usernames/app names would reject too much ("al" in "always")


def _is_sequential_pair(a: str, b: str) -> bool:
    if abs(ord(a) - ord(b)) == 1 or {a, b} == {"0", "9"}:
        return True
    pair = a + b
    return any(pair in row or pair in row[::-1] for row in _KEYBOARD_ROWS)


def is_trivially_repetitive(password: str) -> bool:
    """A repeated block (``abcabcabc…``) or fewer than four different characters."""
    text = password.casefold()
    if len(set(text)) < MIN_DISTINCT_CHARACTERS:
        return True
    n = len(text)
    for size in range(1, n // 2 + 1):
        block = text[:size]
        if (block * (n // size + 1))[:n] == text:
            return True
    return False


def is_trivially_sequential(password: str) -> bool:
    """Made of at most three runs of alphabet, digit or keyboard sequences (``abcdef…``, ``qwerty…``)."""
    text = password.casefold()
    runs = 1
    for a, b in itertools.pairwise(text):
        if not _is_sequential_pair(a, b):
            runs += 1
            if runs > MAX_SEQUENTIAL_RUNS:
                return False
    return True


def _common_password_key(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


@functools.cache
def common_passwords() -> array[int]:
    """The shipped common-password list as a sorted array of 64-bit BLAKE2b keys (about 4 MiB).

    Loaded once per process on first use (about half a second: call it off the event loop). Keys
    instead of strings keep 530,000 entries in a few MiB instead of ~50 MiB; a false match needs
    a 64-bit collision. See src/fundaments/data/README.md for the list's sources and licences.
    """
    raw = (
        importlib.resources.files("fundaments")
        .joinpath("data")
        .joinpath(COMMON_PASSWORDS_RESOURCE)
        .read_bytes()
    )
    lines = gzip.decompress(raw).decode("utf-8").split("\n")
    return array("Q", sorted({_common_password_key(line) for line in lines if line}))


def is_common_password(password: str) -> bool:
    """True when the password (NFKC, case-folded) is on the common-password list."""
    keys = common_passwords()
    key = _common_password_key(normalize_password(password).casefold())
    index = bisect_left(keys, key)
    return index < len(keys) and keys[index] == key


class PasswordPolicy:
    """Checks a new password; :meth:`failures` lists every rule it breaks, in plain words."""

    def __init__(self, *, min_length: int, max_length: int, app_name: str) -> None:
        self.min_length = min_length
        self.max_length = max_length
        self.app_name = app_name

    def failures(self, password: str, *, username: str = "") -> list[str]:
        if not _is_utf8_text(password):  # lone surrogates (e.g. "\ud800" from JSON) cannot be hashed
            return ["use only valid Unicode characters (this one has unpaired surrogates)"]
        password = normalize_password(password)
        folded = password.casefold()
        problems: list[str] = []
        if len(password) < self.min_length:
            problems.append(f"use at least {self.min_length} characters (this one has {len(password)})")
        if len(password) > self.max_length:
            problems.append(f"use at most {self.max_length} characters (this one has {len(password)})")
        if len(password) > self.max_length:
            return problems  # the other checks would only spend time on an input we refuse anyway
        if is_common_password(password):
            problems.append("it is on a list of commonly used passwords; choose something less predictable")
        name = unicodedata.normalize("NFKC", username).casefold().strip()
        local = name.split("@", 1)[0]
        if len(name) >= MIN_CONTEXT_WORD and name in folded:
            problems.append("it contains your username")
        elif len(local) >= MIN_CONTEXT_WORD and local in folded:
            problems.append("it contains the first part of your username")
        app = unicodedata.normalize("NFKC", self.app_name).casefold().strip()
        if len(app) >= MIN_CONTEXT_WORD and app in folded:
            problems.append(f"it contains the name of this application ({self.app_name})")
        if password and is_trivially_repetitive(password):
            problems.append("it repeats the same characters or pattern")
        elif password and is_trivially_sequential(password):
            problems.append("it is a simple sequence (like abcdef, 123456 or qwerty)")
        return problems

    def check(self, password: str, *, username: str = "") -> None:
        """Raise PasswordPolicyError listing every rule the password breaks."""
        problems = self.failures(password, username=username)
        if problems:
            raise PasswordPolicyError(problems)


# --- bounded hashing off the event loop ----------------------------------------------------------


class HashingPool:
    """Worker threads for hashing: at most ``concurrency`` at once, ``queue_size`` more waiting.

    Beyond that :meth:`reserve` raises HashingBusyError at once: under a flood the server answers
    "busy" quickly instead of queueing work (and memory: each Argon2 call holds its memory cost)
    without limit. argon2-cffi and hashlib release the GIL, so the threads really run in parallel.
    """

    def __init__(self, concurrency: int, queue_size: int) -> None:
        self.concurrency = concurrency
        self.limit = concurrency + queue_size
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="fundaments-hash")
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @contextlib.contextmanager
    def reserve(self) -> Iterator[None]:
        """Hold one place in the pool (running or queued) for the ``with`` block, or raise at once."""
        with self._lock:
            if self._in_flight >= self.limit:
                raise HashingBusyError(
                    "password hashing is at capacity (HASHING_CONCURRENCY + HASHING_QUEUE_SIZE); "
                    "retry shortly"
                )
            self._in_flight += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    async def run(self, func: Callable[..., T], *args: Any) -> T:
        """Run ``func(*args)`` on a hashing thread (call inside :meth:`reserve`)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, func, *args)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


# --- the service ---------------------------------------------------------------------------------


class PasswordService:
    """The current hasher, every hasher that verifies, the policy and the hashing pool."""

    def __init__(
        self,
        hasher: Hasher,
        verifiers: list[Hasher],
        policy: PasswordPolicy,
        pool: HashingPool,
    ) -> None:
        self.hasher = hasher
        self.verifiers = verifiers
        self.policy = policy
        self.pool = pool
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordService:
        argon = Argon2idHasher(
            memory_cost=settings.argon2_memory_cost,
            time_cost=settings.argon2_time_cost,
            parallelism=settings.argon2_parallelism,
        )
        pbkdf2 = Pbkdf2Sha256Hasher(iterations=settings.pbkdf2_iterations)
        django_argon = DjangoArgon2Hasher(
            memory_cost=settings.argon2_memory_cost,
            time_cost=settings.argon2_time_cost,
            parallelism=settings.argon2_parallelism,
        )
        django_pbkdf2 = DjangoPbkdf2Sha256Hasher(iterations=settings.pbkdf2_iterations)
        current: Hasher = pbkdf2 if settings.password_hasher == Pbkdf2Sha256Hasher.algorithm else argon
        policy = PasswordPolicy(
            min_length=settings.password_min_length,
            max_length=settings.password_max_length,
            app_name=settings.app_name,
        )
        pool = HashingPool(settings.hashing_concurrency, settings.hashing_queue_size)
        return cls(current, [argon, pbkdf2, django_argon, django_pbkdf2], policy, pool)

    def identify(self, encoded: str) -> Hasher | None:
        """The hasher that can verify ``encoded``, or None for an unknown or malformed string."""
        if not isinstance(encoded, str) or len(encoded) > MAX_HASH_LENGTH:
            return None
        for hasher in self.verifiers:
            if hasher.handles(encoded):
                return hasher if hasher.is_valid(encoded) else None
        return None

    def validate_import(self, encoded: str) -> str:
        """``encoded`` unchanged when it is a supported, well-formed hash; else InvalidPasswordHashError."""
        if self.identify(encoded) is None:
            raise InvalidPasswordHashError(
                "password_hash is not a supported hash: use an Argon2 PHC string ($argon2id$…), passlib "
                "$pbkdf2-sha256$…, or Django pbkdf2_sha256$… / argon2$… "
                "(parameters within the documented bounds)"
            )
        return encoded

    def encode(self, password: str) -> str:
        """The current scheme's hash of the (NFKC-normalized) password. CPU-bound: run it in the pool."""
        return self.hasher.encode(normalize_password(password))

    def verify(self, password: str, encoded: str) -> bool:
        """Whether ``password`` matches ``encoded``. CPU-bound: run it in the pool.

        Passwords are compared after NFKC normalization. A hash imported from another system may
        have been made from the password as typed, so for those (and only when the two forms
        differ) the un-normalized password is tried too.
        """
        hasher = self.identify(encoded)
        if hasher is None or not _is_utf8_text(password):  # no hash was ever made of lone surrogates
            return False
        normalized = normalize_password(password)
        if hasher.verify(normalized, encoded):
            return True
        return hasher is not self.hasher and normalized != password and hasher.verify(password, encoded)

    def must_update(self, encoded: str) -> bool:
        """True when ``encoded`` is in another scheme or weaker than the current settings."""
        hasher = self.identify(encoded)
        return hasher is not self.hasher or self.hasher.must_update(encoded)

    def dummy_hash(self) -> str:
        """A hash of a random password with the current hasher: what unknown usernames are verified
        against, so they cost the same time as known ones."""
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = self.hasher.encode(secrets.token_urlsafe(16))
            return self._dummy_hash

    def cached_dummy_hash(self) -> str | None:
        """The dummy hash if it was already made (UserHandler.start makes it)."""
        return self._dummy_hash

    def check_policy(self, password: str, *, username: str) -> None:
        self.policy.check(password, username=username)

    def close(self) -> None:
        self.pool.close()
