"""Key derivation: the master keys, their key ids, and the per-epoch and per-file subkeys.

Every long-lived key comes from PBKDF2-HMAC-SHA256 over ``MASTER_ENCRYPTION_KEY`` and
``PERSISTENT_ENCRYPTION_SALT``, once, at start-up. Everything derived later (a subkey per
encryption epoch, a key per file) is one HKDF-Expand call from that key, cheap enough to do often.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC

PBKDF2_ITERATIONS = 600_000
# PyFundaments derived its one key with these parameters; kept only to decrypt its records.
LEGACY_PBKDF2_ITERATIONS = 480_000
KEY_BYTES = 32
KEY_ID_BYTES = 4

ENVELOPE_SUBKEY_INFO = b"fundaments/v1/envelope-subkey"
FILE_KEY_INFO = b"fundaments/v1/file-key"
KEY_ID_INFO = b"fundaments/v1/key-id"
PURPOSE_KEY_INFO = b"fundaments/v1/purpose-key/"


@functools.lru_cache(maxsize=64)
def pbkdf2_sha256(secret: str, salt: bytes, iterations: int) -> bytes:
    """The 32-byte PBKDF2-HMAC-SHA256 of ``secret``; cached per process.

    The cache only saves repeated start-ups in one process (tests, several Fundaments instances);
    the running service already keeps the derived keys in memory.
    """
    kdf = PBKDF2HMAC(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=salt, iterations=iterations)
    return kdf.derive(secret.encode("utf-8"))


def hkdf_expand(key: bytes, info: bytes) -> bytes:
    """HKDF-Expand (RFC 5869) with SHA-256: ``key`` is already uniformly random, so no Extract step."""
    return HKDFExpand(algorithm=hashes.SHA256(), length=KEY_BYTES, info=info).derive(key)


def key_id(key: bytes) -> bytes:
    """A 4-byte name for ``key``: an HMAC of a constant, so it reveals nothing about the key."""
    return hmac.new(key, KEY_ID_INFO, hashlib.sha256).digest()[:KEY_ID_BYTES]


@dataclass(frozen=True, slots=True)
class MasterKey:
    """One configured master key, derived: the current one encrypts, every one decrypts."""

    key_id: bytes
    key: bytes = field(repr=False)
    legacy: AESGCM = field(repr=False)  # PyFundaments' key for the same secret and salt


def derive_master_key(secret: str, salt: bytes) -> MasterKey:
    key = pbkdf2_sha256(secret, salt, PBKDF2_ITERATIONS)
    legacy = AESGCM(pbkdf2_sha256(secret, salt, LEGACY_PBKDF2_ITERATIONS))
    return MasterKey(key_id=key_id(key), key=key, legacy=legacy)


def envelope_subkey(master: MasterKey, epoch_id: bytes) -> AESGCM:
    return AESGCM(hkdf_expand(master.key, ENVELOPE_SUBKEY_INFO + epoch_id))


def file_key(master: MasterKey, file_salt: bytes) -> AESGCM:
    return AESGCM(hkdf_expand(master.key, FILE_KEY_INFO + file_salt))


def purpose_key(master: MasterKey, purpose: str) -> bytes:
    """A 32-byte key for one purpose (``"audit-checkpoint"``, ``"api-key-digest"``) under ``master``:
    independent of the encryption keys and of every other purpose, and rotating with the master key."""
    return hkdf_expand(master.key, PURPOSE_KEY_INFO + purpose.encode("ascii"))
