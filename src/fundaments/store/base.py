"""The small store interface every service uses, whatever the database.

SQL is written once, with PostgreSQL-style numbered parameters (``$1, $2``); the SQLite backend
rewrites them to ``?1, ?2`` and drops what SQLite does not need (``FOR UPDATE`` — its transactions
already hold the write lock — and ``::type`` casts). Every query is parameterized: values never
become SQL text.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, runtime_checkable

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


@runtime_checkable
class Transaction(Executor, Protocol):
    """An open transaction: an Executor whose work can be completed just before it commits."""

    def before_commit(self, hook: Callable[[], Awaitable[None]]) -> None:
        """Run ``hook`` inside the transaction, after the caller's last statement, before COMMIT.

        Hooks run in registration order and only when the block ends without an error. The audit
        trail appends its events this way, so the chain lock is always the last lock a
        transaction takes (no lock-order deadlocks) and is held only for the commit.
        """
        ...


class Database(Executor, Protocol):
    dialect: Dialect
    description: str  # for logs: the masked URL

    def transaction(self) -> AbstractAsyncContextManager[Transaction]:
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


def like_containing(text: str) -> str:
    """A LIKE pattern (used with ``ESCAPE '\\'``) matching ``text`` anywhere, its own ``%``, ``_``
    and ``\\`` taken literally: a search box's text is never a wildcard."""
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def rowcount_from_status(status: str) -> int:
    """asyncpg's command status (``"UPDATE 3"``, ``"INSERT 0 1"``) as a row count."""
    tail = status.rsplit(" ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


class CommitHooks:
    """The ``before_commit`` list both backends' transaction objects keep."""

    __slots__ = ("_hooks",)

    def __init__(self) -> None:
        self._hooks: list[Callable[[], Awaitable[None]]] = []

    def before_commit(self, hook: Callable[[], Awaitable[None]]) -> None:
        self._hooks.append(hook)

    async def run_commit_hooks(self) -> None:
        while self._hooks:  # a hook may register another
            await self._hooks.pop(0)()
