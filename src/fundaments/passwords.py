"""Password hashing and policy (layer 2). Being built in the Accounts issue."""

from __future__ import annotations

from fundaments.config import Settings


class PasswordService:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    @classmethod
    def from_settings(cls, settings: Settings) -> PasswordService:
        return cls(settings)
