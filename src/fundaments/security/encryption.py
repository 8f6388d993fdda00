"""The encryption part of the facade: envelopes, re-encryption and files, audited on failure."""

from __future__ import annotations

from fundaments.encryption import FilePath, Progress, Token, run_file_job
from fundaments.errors import DecryptionError
from fundaments.security._core import SecurityCore


class EncryptionPart(SecurityCore):
    """Envelopes (``encrypt_data``, ``decrypt_data``, ``decrypt_bytes``, ``reencrypt``) and files."""

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
