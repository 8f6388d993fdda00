"""Encryption at rest (layer 2): AES-256-GCM envelopes with key rotation, and encrypted files.

``EncryptionService`` is built once at start-up (PBKDF2 runs there, never per call) and used
through the ``Security`` facade. Format and construction: docs/encryption.md.
"""

from __future__ import annotations

from fundaments.encryption.envelope import AUTHENTICATION_FAILED, INVALID_FORMAT
from fundaments.encryption.jobs import run_file_job
from fundaments.encryption.service import EPOCH_MESSAGES, EncryptionService, Token
from fundaments.encryption.stream import PathLike as FilePath
from fundaments.encryption.stream import Progress

__all__ = [
    "AUTHENTICATION_FAILED",
    "EPOCH_MESSAGES",
    "INVALID_FORMAT",
    "EncryptionService",
    "FilePath",
    "Progress",
    "Token",
    "run_file_job",
]
