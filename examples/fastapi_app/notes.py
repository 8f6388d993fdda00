"""The example's own data: notes in a SQLite file, each body encrypted by fundaments.

The table holds ciphertext only: ``encrypt_data(body, context="note:<owner id>")`` binds each body
to its owner, so a ciphertext copied onto another user's row does not decrypt. Calls run in a
thread (sqlite3 blocks), listings are paginated by id (keyset), never by OFFSET.
"""

from __future__ import annotations

import asyncio
import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class StoredNote:
    id: int
    owner_id: int
    title: str
    ciphertext: str


class Notes:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        with self._connect() as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                "owner_id INTEGER NOT NULL, title TEXT NOT NULL, ciphertext TEXT NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS notes_owner ON notes (owner_id, id)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self._path, timeout=10)

    async def add(self, owner_id: int, title: str, ciphertext: str) -> int:
        def add() -> int:
            with self._connect() as db:
                cursor = db.execute(
                    "INSERT INTO notes (owner_id, title, ciphertext) VALUES (?, ?, ?)",
                    (owner_id, title, ciphertext),
                )
                return int(cursor.lastrowid or 0)

        return await asyncio.to_thread(add)

    async def page(self, owner_id: int, after: int, limit: int) -> list[StoredNote]:
        def page() -> list[StoredNote]:
            with self._connect() as db:
                rows = db.execute(
                    "SELECT id, owner_id, title, ciphertext FROM notes "
                    "WHERE owner_id = ? AND id > ? ORDER BY id LIMIT ?",
                    (owner_id, after, limit),
                ).fetchall()
            return [StoredNote(*row) for row in rows]

        return await asyncio.to_thread(page)

    async def get(self, owner_id: int, note_id: int) -> StoredNote | None:
        def get() -> StoredNote | None:
            with self._connect() as db:
                row = db.execute(
                    "SELECT id, owner_id, title, ciphertext FROM notes WHERE id = ? AND owner_id = ?",
                    (note_id, owner_id),
                ).fetchone()
            return StoredNote(*row) if row else None

        return await asyncio.to_thread(get)

    async def delete(self, owner_id: int, note_id: int) -> bool:
        def delete() -> bool:
            with self._connect() as db:
                return (
                    db.execute(
                        "DELETE FROM notes WHERE id = ? AND owner_id = ?", (note_id, owner_id)
                    ).rowcount
                    > 0
                )

        return await asyncio.to_thread(delete)

    async def counts(self) -> tuple[int, int]:
        def counts() -> tuple[int, int]:
            with self._connect() as db:
                notes, owners = db.execute("SELECT COUNT(*), COUNT(DISTINCT owner_id) FROM notes").fetchone()
            return int(notes), int(owners)

        return await asyncio.to_thread(counts)
