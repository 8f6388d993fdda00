"""Queries for key rotation of application tables: read a batch of envelopes, swap one in place.

Table and column names come from an operator, so they are checked against a strict pattern and
quoted (they cannot be parameters); every value is a parameter. Batches are read by keyset
(``key > last key ORDER BY key``), so each costs an index range scan however far the run is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from fundaments.errors import InvalidArgument
from fundaments.store.base import Executor, Row

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
MAX_BATCH_SIZE = 10_000
MAX_FAILED_KEYS = 20  # keys of failed rows kept in the report; the count is always complete


def quote_identifier(name: object, what: str) -> str:
    """``name`` double-quoted (the same in SQLite and PostgreSQL), after checking it is a plain name."""
    if not isinstance(name, str) or IDENTIFIER.fullmatch(name) is None:
        raise InvalidArgument(
            f"{what} must be a plain SQL name (letters, digits and _, not starting with a digit, "
            f"at most 63 characters), not {name!r}"
        )
    return f'"{name}"'


@dataclass(frozen=True, slots=True)
class ColumnRef:
    """The quoted names of the table, the envelope column, the key column and the context column."""

    table: str
    column: str
    key: str
    context: str | None

    @classmethod
    def build(cls, table: str, column: str, key_column: str, context_column: str | None) -> ColumnRef:
        return cls(
            table=quote_identifier(table, "table"),
            column=quote_identifier(column, "column"),
            key=quote_identifier(key_column, "key_column"),
            context=None if context_column is None else quote_identifier(context_column, "context_column"),
        )


@dataclass(slots=True)
class ReencryptReport:
    """What a ``reencrypt_column`` run did. ``failed`` rows were left as they were."""

    table: str
    column: str
    key_id: str  # hex id of the key every re-encrypted value is now under
    total: int = 0  # rows in the table when the run started
    scanned: int = 0
    reencrypted: int = 0
    current: int = 0  # already under the current key (a previous, interrupted run did them)
    empty: int = 0  # NULL or empty values
    changed_meanwhile: int = 0  # the value changed between read and write: left to the writer
    failed: int = 0  # not an envelope, unknown key or wrong context
    failed_keys: list[Any] = field(default_factory=list)  # up to MAX_FAILED_KEYS of them

    @property
    def complete(self) -> bool:
        return self.failed == 0


async def count_rows(db: Executor, ref: ColumnRef) -> int:
    return int(await db.fetchval(f"SELECT COUNT(*) FROM {ref.table}"))  # noqa: S608 - names checked


async def read_batch(tx: Executor, ref: ColumnRef, after: Any, limit: int) -> list[Row]:
    """Up to ``limit`` rows (key, value[, context]) with a key above ``after`` (None: from the start)."""
    context = f", {ref.context}" if ref.context is not None else ""
    select = f"SELECT {ref.key}, {ref.column}{context} FROM {ref.table}"  # noqa: S608 - names checked
    if after is None:
        return await tx.fetch(f"{select} WHERE {ref.key} IS NOT NULL ORDER BY {ref.key} LIMIT $1", limit)
    return await tx.fetch(f"{select} WHERE {ref.key} > $1 ORDER BY {ref.key} LIMIT $2", after, limit)


async def swap_value(tx: Executor, ref: ColumnRef, key: Any, old: str | bytes, new: str | bytes) -> bool:
    """Replace ``old`` by ``new`` in the row ``key``; False if the row no longer holds ``old``."""
    changed = await tx.execute(
        f"UPDATE {ref.table} SET {ref.column} = $1 WHERE {ref.key} = $2 AND {ref.column} = $3",  # noqa: S608
        new,
        key,
        old,
    )
    return changed == 1
