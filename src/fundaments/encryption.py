"""Encryption at rest (layer 2). Being built in the Encryption issue."""

from __future__ import annotations

from collections.abc import Sequence


class EncryptionService:
    def __init__(self, master_key: str, salt: bytes, previous_keys: Sequence[str] = ()) -> None:
        self._master_key = master_key
        self._salt = salt
        self._previous = list(previous_keys)
