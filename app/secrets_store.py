"""The console's "My secrets": names and encrypted values in the application's own SQLite file.

The example keeps its data apart from fundaments' schema, as a real application would: this module
stores only envelopes from ``Security.encrypt_data``, each bound to its owner and name by the
context ``user:<id>:secret:<name>``, so a value copied to another row or another user does not
decrypt. The queries are a few microseconds, so they run on the event loop.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

MAX_NAME = 100
MAX_VALUE = 10_000


def _private_file(path: Path) -> None:
    """Create ``path`` readable by its owner only (mode 0600, whatever the umask), or make it so."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT; and the umask
    finally:
        os.close(fd)


def secret_context(user_id: int, name: str) -> str:
    return f"user:{user_id}:secret:{name}"


class SecretStore:
    """Encrypted secrets per user, in ``<data_dir>/console.db``."""

    def __init__(self, path: Path) -> None:
        _private_file(path)  # before SQLite opens it: created 0600, or an existing one set to 0600
        for suffix in ("-wal", "-shm", "-journal"):  # SQLite gives new ones the database file's mode
            sidecar = path.with_name(path.name + suffix)
            if sidecar.exists():
                sidecar.chmod(0o600)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS console_secrets ("
            " user_id INTEGER NOT NULL, name TEXT NOT NULL, envelope TEXT NOT NULL,"
            " created_at REAL NOT NULL, PRIMARY KEY (user_id, name))"
        )

    def put(self, user_id: int, name: str, envelope: str) -> None:
        self._db.execute(
            "INSERT INTO console_secrets (user_id, name, envelope, created_at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (user_id, name) DO UPDATE SET envelope = excluded.envelope, "
            "created_at = excluded.created_at",
            (user_id, name, envelope, time.time()),
        )

    def names(self, user_id: int) -> list[tuple[str, float]]:
        rows = self._db.execute(
            "SELECT name, created_at FROM console_secrets WHERE user_id = ? ORDER BY name", (user_id,)
        )
        return [(str(name), float(created)) for name, created in rows]

    def get(self, user_id: int, name: str) -> str | None:
        row = self._db.execute(
            "SELECT envelope FROM console_secrets WHERE user_id = ? AND name = ?", (user_id, name)
        ).fetchone()
        return str(row[0]) if row else None

    def delete(self, user_id: int, name: str) -> bool:
        cursor = self._db.execute(
            "DELETE FROM console_secrets WHERE user_id = ? AND name = ?", (user_id, name)
        )
        return cursor.rowcount > 0

    def close(self) -> None:
        self._db.close()
