"""First-run set-up: fresh keys written to ``.env`` (mode 0600) when none are configured."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

log = logging.getLogger(__name__)

KEY_VARIABLES = ("MASTER_ENCRYPTION_KEY", "PERSISTENT_ENCRYPTION_SALT")


def generate_keys() -> dict[str, str]:
    """A fresh master key (64 URL-safe characters, 384 bits) and salt (32 random bytes, hex)."""
    return {
        "MASTER_ENCRYPTION_KEY": secrets.token_urlsafe(48),
        "PERSISTENT_ENCRYPTION_SALT": secrets.token_hex(32),
    }


def _configured(name: str, environ: Mapping[str, str], file_values: Mapping[str, str | None]) -> bool:
    return any(source.get(name) or source.get(f"{name}_FILE") for source in (environ, file_values))


def ensure_env_keys(env_file: Path, environ: Mapping[str, str] | None = None) -> list[str]:
    """Append generated values for the key variables configured nowhere; the names written.

    An existing value (in the environment, a ``*_FILE`` secret or the file) is never overwritten.
    A new file is created with mode 0600.
    """
    environ = os.environ if environ is None else environ
    file_values = dotenv_values(env_file) if env_file.exists() else {}
    missing = [name for name in KEY_VARIABLES if not _configured(name, environ, file_values)]
    if not missing:
        return []
    fresh = generate_keys()
    lines = [
        "# written by fundaments on first run: keep this file secret and backed up;",
        "# losing these keys makes encrypted data unreadable",
    ]
    lines += [f"{name}={fresh[name]}" for name in missing]
    fd = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as handle:
        if handle.tell() > 0:
            handle.write("\n")
        handle.write("\n".join(lines) + "\n")
    mode = env_file.stat().st_mode & 0o777
    if mode & 0o077:
        log.warning("%s is readable by other users (mode %o); run: chmod 600 %s", env_file, mode, env_file)
    return missing
