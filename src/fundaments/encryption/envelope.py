"""The text envelope and PyFundaments' ``{data, nonce, tag}`` record: format only.

An envelope is unpadded base64url (RFC 4648 section 5: no '=', which URLs and cookies would
have to escape) of::

    magic (3) | key id (4) | epoch id (16) | nonce (12) | ciphertext (n) | GCM tag (16)

The magic bytes encode as the four characters ``fe1_``, so every envelope starts with that
version tag and the whole string decodes in one call. The key id names the master key, the epoch
id the subkey derived from it, the nonce is unique per subkey (see service.py and
docs/encryption.md). Parsing is strict: one spelling per envelope, so no changed character can
decode to the same bytes.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Mapping
from typing import Any

from fundaments.encryption.keys import KEY_ID_BYTES
from fundaments.errors import DecryptionError

PREFIX = "fe1_"
MAGIC = base64.urlsafe_b64decode(PREFIX)  # 3 bytes
EPOCH_ID_BYTES = 16
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_START = len(MAGIC)
HEADER_END = HEADER_START + KEY_ID_BYTES + EPOCH_ID_BYTES  # key id | epoch id: selects the subkey
NONCE_END = HEADER_END + NONCE_BYTES
MIN_RAW_BYTES = NONCE_END + TAG_BYTES

INVALID_FORMAT = "invalid data format"
AUTHENTICATION_FAILED = "authentication failed: wrong key, wrong context or tampered data"

LEGACY_FIELDS = frozenset({"data", "nonce", "tag"})
MAX_LEGACY_JSON_CHARS = 64 * 1024 * 1024

TO_URLSAFE = bytes.maketrans(b"+/", b"-_")
# '+' and '/' are not base64url: map them to a character strict decoding rejects.
FROM_URLSAFE = bytes.maketrans(b"-_+/", b"+/!!")
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
SIXBITS = {c: i for i, c in enumerate(ALPHABET)}
PADDING = ("", "===", "==", "=")  # what the decoders need, by the text's length mod 4
# When the length is 2 (3) mod 4 the last character carries 2 (4) data bits; the rest must be
# zero, or two spellings would decode to the same bytes. The characters allowed last, by length
# mod 4 (1 is never a valid length):
LAST_CHARACTERS = (
    ALPHABET,
    "",
    "".join(c for c in ALPHABET if not SIXBITS[c] & 0x0F),
    "".join(c for c in ALPHABET if not SIXBITS[c] & 0x03),
)
ALTCHARS = b"-_"  # base64url's two characters in place of '+' and '/'


def invalid_format() -> DecryptionError:
    return DecryptionError(INVALID_FORMAT)


def authentication_failed() -> DecryptionError:
    return DecryptionError(AUTHENTICATION_FAILED)


def _encode_stdlib(raw: bytes, altchars: bytes = ALTCHARS) -> bytes:
    """The binascii fallback of fastpybase64.b64encode, for base64url (padded)."""
    return binascii.b2a_base64(raw, newline=False).translate(TO_URLSAFE)


def _decode_stdlib(text: str, altchars: bytes = ALTCHARS, validate: bool = True) -> bytes:
    """The binascii fallback of fastpybase64.b64decode, for strict padded base64url."""
    return binascii.a2b_base64(text.encode("ascii").translate(FROM_URLSAFE), strict_mode=True)


# The codec of the hot path, always called b64encode(raw, ALTCHARS) / b64decode(text, ALTCHARS,
# True), the standard library's call shape. fastpybase64 binds simdutf (Node.js's base64), which
# has the base64url alphabet built in: no translation pass, and no argument dict per call. It
# returns exactly what the standard library would, falling back to it for anything unusual; like
# the standard library it also accepts '+' and '/' with these altchars, so non_canonical() rejects
# them before any decoding. Measured in docs/performance.md (2026-11-30, third machine).
b64encode: Callable[[bytes, bytes], bytes]
b64decode: Callable[[str, bytes, bool], bytes]
try:  # 4-5x faster than pybase64 at 1 KiB, whose altchars cost an extra pass both ways
    import fastpybase64
except ImportError:  # pragma: no cover - the runtime dependency is normally installed
    b64encode, b64decode = _encode_stdlib, _decode_stdlib
else:
    b64encode, b64decode = fastpybase64.b64encode, fastpybase64.b64decode


def encode(raw: bytes) -> str:
    """The envelope string of ``raw`` (which starts with MAGIC)."""
    return b64encode(raw, ALTCHARS).decode().rstrip("=")


def non_canonical(token: str) -> bool:
    """True if ``token`` is not the one base64url spelling of its bytes.

    Checks the alphabet ('+' and '/' are base64, not base64url; '=' is never last) and the
    unused bits of the last character; the strict decoders reject every other stray character.
    """
    return token[-1] not in LAST_CHARACTERS[len(token) % 4] or "+" in token or "/" in token


def decode(token: str) -> bytes:
    """The raw bytes of an envelope (MAGIC first); DecryptionError("invalid data format") if bad."""
    if not isinstance(token, str) or not token.startswith(PREFIX) or non_canonical(token):
        raise invalid_format()
    try:
        raw = b64decode(token + PADDING[len(token) % 4], ALTCHARS, True)
    except ValueError:  # binascii.Error, UnicodeEncodeError
        raise invalid_format() from None
    if len(raw) < MIN_RAW_BYTES:
        raise invalid_format()
    return raw


def looks_like_envelope(token: object) -> bool:
    return isinstance(token, str) and token.startswith(PREFIX)


def legacy_record(token: object) -> tuple[bytes, bytes] | None:
    """``(nonce, ciphertext + tag)`` of a PyFundaments record (a mapping or its JSON), else None.

    Raises DecryptionError("invalid data format") for a record that is malformed.
    """
    if isinstance(token, str):
        if not token.lstrip().startswith("{"):
            return None
        if len(token) > MAX_LEGACY_JSON_CHARS:
            raise invalid_format()
        try:
            token = json.loads(token)
        except (ValueError, RecursionError):
            raise invalid_format() from None
    if not isinstance(token, Mapping):
        return None
    return _parse_legacy(token)


def _parse_legacy(record: Mapping[Any, Any]) -> tuple[bytes, bytes]:
    try:
        if set(record.keys()) != LEGACY_FIELDS:
            raise invalid_format()
        data, nonce_hex, tag_hex = record["data"], record["nonce"], record["tag"]
        if not (isinstance(data, str) and isinstance(nonce_hex, str) and isinstance(tag_hex, str)):
            raise invalid_format()
        ciphertext = base64.b64decode(data, validate=True)
        nonce = bytes.fromhex(nonce_hex)
        tag = bytes.fromhex(tag_hex)
    except (ValueError, TypeError):  # binascii.Error is a ValueError
        raise invalid_format() from None
    if len(nonce) != NONCE_BYTES or len(tag) != TAG_BYTES:
        raise invalid_format()
    return nonce, ciphertext + tag


def aad(context: str | None) -> bytes | None:
    """The associated data for ``context``; ``None`` and ``""`` both mean no context."""
    if context is None:
        return None
    if not isinstance(context, str):
        raise TypeError(f"context must be a str or None, not {type(context).__name__}")
    return context.encode("utf-8") if context else None
