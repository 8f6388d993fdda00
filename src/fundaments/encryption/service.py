"""EncryptionService: AES-256-GCM envelopes for values, a chunked AEAD stream for files.

The nonce scheme in one paragraph (the bound and the reasoning are in docs/encryption.md): each
service (so each process; a forked child draws again) picks a random 128-bit *epoch id* and
derives the epoch subkey HKDF-Expand(master key, label | epoch id); under that subkey the nonce is
a counter, so it never repeats; after 2**16 messages the service starts a new epoch. A (key, nonce)
pair can then repeat only if two epochs draw the same id: for 2**48 messages per master key that
chance is below 2**-33, where random nonces under one key reach 2**-32 after about 2**32 messages.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fundaments.encryption import envelope, stream
from fundaments.encryption.envelope import (
    ALTCHARS,
    EPOCH_ID_BYTES,
    HEADER_END,
    HEADER_START,
    LAST_CHARACTERS,
    MAGIC,
    MIN_RAW_BYTES,
    NONCE_BYTES,
    NONCE_END,
    PADDING,
    PREFIX,
    authentication_failed,
    b64decode,
    b64encode,
    invalid_format,
)
from fundaments.encryption.keys import (
    KEY_ID_BYTES,
    MasterKey,
    derive_master_key,
    envelope_subkey,
    file_key,
    purpose_key,
)
from fundaments.errors import ConfigurationError, DecryptionError

EPOCH_MESSAGES = 2**16  # messages per epoch subkey; see the bound in docs/encryption.md
SUBKEY_CACHE_SIZE = 4096  # decryption subkeys kept; a miss costs one HKDF (about 2 microseconds)

Token = str | bytes | Mapping[str, str]


@dataclass(slots=True)
class _Epoch:
    header: bytes  # magic | key id | epoch id: the start of every envelope of this epoch
    aead: AESGCM = field(repr=False)
    counter: itertools.count[int] = field(default_factory=itertools.count)


class EncryptionService:
    """Encrypts under the current master key; decrypts under it and every previous one."""

    def __init__(
        self,
        master_key: str,
        salt: bytes,
        previous_keys: Sequence[str] = (),
        *,
        file_segment_log2: int = stream.DEFAULT_SEGMENT_LOG2,
    ) -> None:
        if not stream.MIN_SEGMENT_LOG2 <= file_segment_log2 <= stream.MAX_SEGMENT_LOG2:
            raise ValueError(
                f"file_segment_log2 must be {stream.MIN_SEGMENT_LOG2}..{stream.MAX_SEGMENT_LOG2}"
            )
        secrets_in_order = list(dict.fromkeys([master_key, *previous_keys]))  # a repeat is harmless
        keys = [derive_master_key(secret, salt) for secret in secrets_in_order]
        self._current = keys[0]
        self._keys: dict[bytes, MasterKey] = {}
        for key in keys:
            if key.key_id in self._keys:  # two different keys with one 32-bit id: about 2**-32 per pair
                raise ConfigurationError(
                    f"two configured master keys share a key id ({key.key_id.hex()}); generate a new "
                    "MASTER_ENCRYPTION_KEY (fundaments keys generate)",
                    variable="MASTER_ENCRYPTION_KEY",
                )
            self._keys[key.key_id] = key
        self._segment_log2 = file_segment_log2
        self._subkeys: dict[bytes, AESGCM] = {}
        self._lock = threading.Lock()
        self._epoch = self._new_epoch()
        if hasattr(os, "register_at_fork"):
            # A forked child must never continue the parent's epoch: draw a fresh one.
            ref = weakref.ref(self)
            os.register_at_fork(after_in_child=lambda: _reset_epoch(ref))

    def __repr__(self) -> str:
        return f"EncryptionService(key_id={self.key_id!r}, keys={len(self._keys)})"

    @property
    def key_id(self) -> str:
        """The hex id of the current key (the one new data is encrypted under)."""
        return self._current.key_id.hex()

    @property
    def key_ids(self) -> list[str]:
        """Hex ids of every key that decrypts, the current one first."""
        return [key_id.hex() for key_id in self._keys]

    def purpose_keys(self, purpose: str) -> list[tuple[str, bytes]]:
        """(hex key id, key) for ``purpose`` under every configured master key, the current first.

        For MACs and keyed digests a database dump must not let anyone compute or test (audit
        checkpoints, API-key digests): make new ones with the first, accept any of them.
        """
        if not purpose or not purpose.isascii():
            raise ValueError("purpose must be a non-empty ASCII name")
        return [(key_id.hex(), purpose_key(master, purpose)) for key_id, master in self._keys.items()]

    # --- values ---------------------------------------------------------------------------------

    def encrypt(self, data: str | bytes, *, context: str | None = None) -> str:
        """An envelope string (URL-safe ASCII) holding ``data``, bound to ``context``."""
        # The hot path is written out inline: on a short value each helper call costs about a
        # tenth of the AES-GCM call itself (bench/encryption.py).
        if isinstance(data, str):
            data = data.encode()  # UTF-8, the default: no codec lookup
        elif not isinstance(data, bytes | bytearray | memoryview):
            raise TypeError(f"data must be str or bytes, not {type(data).__name__}")
        associated = None if context is None else envelope.aad(context)
        epoch = self._epoch
        sequence = next(epoch.counter)
        if sequence >= EPOCH_MESSAGES:
            epoch = self._rotate_epoch(epoch)
            sequence = next(epoch.counter)
        nonce = sequence.to_bytes(NONCE_BYTES, "big")
        raw = b"".join((epoch.header, nonce, epoch.aead.encrypt(nonce, data, associated)))
        return b64encode(raw, ALTCHARS).decode().rstrip("=")

    def decrypt(self, token: Token, *, context: str | None = None) -> bytes:
        """The plaintext of an envelope or a PyFundaments record; DecryptionError on any failure."""
        associated = None if context is None else envelope.aad(context)
        if type(token) is not str:
            if not isinstance(token, bytes | bytearray | memoryview):
                return self._decrypt_legacy(token)  # a mapping, or not a token at all
            token = _ascii(token)
        if not token.startswith(PREFIX):
            return self._decrypt_legacy(token)  # PyFundaments' record as JSON text, or junk
        # envelope.decode, inline (see encrypt)
        tail = len(token) % 4
        if token[-1] not in LAST_CHARACTERS[tail] or "+" in token or "/" in token:  # non_canonical()
            raise invalid_format()
        try:
            raw = b64decode(token + PADDING[tail], ALTCHARS, True)
        except ValueError:
            raise invalid_format() from None
        if len(raw) < MIN_RAW_BYTES:
            raise invalid_format()
        header = raw[HEADER_START:HEADER_END]
        aead = self._subkeys.get(header) or self._subkey(header)
        try:
            return aead.decrypt(raw[HEADER_END:NONCE_END], raw[NONCE_END:], associated)
        except InvalidTag:
            raise authentication_failed() from None

    def decrypt_text(self, token: Token, *, context: str | None = None) -> str:
        """Like decrypt, decoded as UTF-8."""
        plaintext = self.decrypt(token, context=context)
        try:
            return plaintext.decode("utf-8")
        except UnicodeDecodeError:
            # Authenticated, so no oracle: the data was encrypted as bytes, not text.
            raise DecryptionError("decrypted data is not UTF-8 text; use decrypt_bytes") from None

    def reencrypt(self, token: Token, *, context: str | None = None) -> str:
        """The same plaintext in a new envelope under the current key; the plaintext never leaves."""
        return self.encrypt(self.decrypt(token, context=context), context=context)

    def needs_reencrypt(self, token: Token) -> bool:
        """True for a PyFundaments record or an envelope under a previous key (no decryption).

        Raises DecryptionError("invalid data format") for anything else.
        """
        if isinstance(token, bytes | bytearray | memoryview):
            token = _ascii(token)
        if isinstance(token, str) and token.startswith(PREFIX):
            raw = envelope.decode(token)
            return raw[HEADER_START : HEADER_START + KEY_ID_BYTES] != self._current.key_id
        if envelope.legacy_record(token) is None:
            raise invalid_format()
        return True

    # --- files ----------------------------------------------------------------------------------

    def encrypt_file(
        self, src: stream.PathLike, dst: stream.PathLike, *, progress: stream.Progress | None = None
    ) -> None:
        """Encrypt ``src`` into ``dst`` (blocking: run it in a worker thread)."""
        current = self._current
        with open(src, "rb", buffering=0) as source, stream.atomic_output(dst) as out:
            stream.encrypt_stream(
                source,
                out,
                key_id=current.key_id,
                make_key=lambda salt: file_key(current, salt),
                segment_log2=self._segment_log2,
                total=os.fstat(source.fileno()).st_size,
                progress=progress,
            )

    def decrypt_file(
        self, src: stream.PathLike, dst: stream.PathLike, *, progress: stream.Progress | None = None
    ) -> None:
        """Decrypt ``src`` into ``dst``; ``dst`` appears only if every segment authenticated."""
        with open(src, "rb", buffering=0) as source, stream.atomic_output(dst) as out:
            stream.decrypt_stream(
                source,
                out,
                lookup_key=self._file_key,
                total=os.fstat(source.fileno()).st_size,
                progress=progress,
            )

    # --- internals ------------------------------------------------------------------------------

    def _new_epoch(self) -> _Epoch:
        epoch_id = os.urandom(EPOCH_ID_BYTES)
        header = self._current.key_id + epoch_id
        aead = envelope_subkey(self._current, epoch_id)
        self._remember(header, aead)
        return _Epoch(header=MAGIC + header, aead=aead)

    def _rotate_epoch(self, stale: _Epoch) -> _Epoch:
        with self._lock:
            if self._epoch is stale:
                self._epoch = self._new_epoch()
            return self._epoch

    def _reset_after_fork(self) -> None:
        self._lock = threading.Lock()
        self._epoch = self._new_epoch()

    def _subkey(self, header: bytes) -> AESGCM:
        """The subkey an envelope header names (cache miss path); unknown key id: auth failure."""
        master = self._keys.get(header[:KEY_ID_BYTES])
        if master is None:
            raise authentication_failed()
        aead = envelope_subkey(master, header[KEY_ID_BYTES:])
        self._remember(header, aead)
        return aead

    def _remember(self, header: bytes, aead: AESGCM) -> None:
        if len(self._subkeys) >= SUBKEY_CACHE_SIZE:
            self._subkeys.clear()  # crude, but a miss costs microseconds and the hot epochs refill
        self._subkeys[header] = aead

    def _file_key(self, key_id: bytes, salt: bytes) -> AESGCM | None:
        master = self._keys.get(key_id)
        return None if master is None else file_key(master, salt)

    def _decrypt_legacy(self, token: object) -> bytes:
        """PyFundaments had no associated data: its records decrypt whatever the context."""
        record = envelope.legacy_record(token)
        if record is None:
            raise invalid_format()
        nonce, sealed = record
        for master in self._keys.values():
            try:
                return master.legacy.decrypt(nonce, sealed, None)
            except InvalidTag:
                continue
        raise authentication_failed()


def _ascii(token: bytes | bytearray | memoryview) -> str:
    try:
        return bytes(token).decode("ascii")
    except UnicodeDecodeError:
        raise invalid_format() from None


def _reset_epoch(ref: weakref.ref[EncryptionService]) -> None:
    service = ref()
    if service is not None:
        service._reset_after_fork()
