"""The small store interface every service uses, whatever the database.

SQL is written once, with PostgreSQL-style numbered parameters (``$1, $2``); the SQLite backend
rewrites them to ``?1, ?2`` and drops what SQLite does not need (``FOR UPDATE`` — its transactions
already hold the write lock — and ``::type`` casts). Every query is parameterized: values never
become SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]


class Row(Protocol):
    """A result row: ``row["column"]`` or ``row[0]`` (sqlite3.Row and asyncpg.Record both qualify)."""

    def __getitem__(self, key: str | int, /) -> Any: ...

    def keys(self) -> Any: ...


class Executor(Protocol):
    """Runs statements: the database itself (each statement on its own) or an open transaction."""

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...

    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; the number of rows it changed."""
        ...

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None: ...


class Database(Executor, Protocol):
    dialect: Dialect
    description: str  # for logs: the masked URL

    def transaction(self) -> AbstractAsyncContextManager[Executor]:
        """One transaction: every statement inside commits together or not at all."""
        ...

    async def close(self) -> None: ...


_NUMBERED = re.compile(r"\$(\d+)")
_CAST = re.compile(r"::(double precision|[a-zA-Z_][a-zA-Z0-9_]*)(\[\])?", re.IGNORECASE)
_FOR_UPDATE = re.compile(r"\s+FOR\s+(UPDATE|SHARE)(\s+SKIP\s+LOCKED|\s+NOWAIT)?", re.IGNORECASE)


def to_sqlite(sql: str) -> str:
    """The SQLite spelling of a statement written for PostgreSQL."""
    sql = _FOR_UPDATE.sub("", sql)
    sql = _CAST.sub("", sql)
    return _NUMBERED.sub(r"?\1", sql)


def rowcount_from_status(status: str) -> int:
    """asyncpg's command status (``"UPDATE 3"``, ``"INSERT 0 1"``) as a row count."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0
