"""DATABASE_URL parsing: which engine, where, and whether the connection is encrypted."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

SQLITE_SCHEMES = frozenset({"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"})
POSTGRES_SCHEMES = frozenset({"postgresql", "postgres", "postgresql+asyncpg"})
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", ""})
TLS_MODES = frozenset({"disable", "allow", "prefer", "require", "verify-ca", "verify-full"})


@dataclass(frozen=True, slots=True)
class DatabaseURL:
    dialect: Literal["sqlite", "postgresql"]
    sqlite_path: Path | None = None  # SQLite: the database file (":memory:" is refused)
    postgres_dsn: str | None = None  # PostgreSQL: a libpq-style DSN asyncpg accepts
    sslmode: str | None = None
    host: str | None = None
    password: str | None = None

    @property
    def masked(self) -> str:
        """The URL for display: the password replaced by ``***``."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        return mask_dsn(self.postgres_dsn or "")

    @property
    def sqlalchemy_url(self) -> str:
        """The URL SQLAlchemy/Alembic use for migrations."""
        if self.dialect == "sqlite":
            return f"sqlite:///{self.sqlite_path}"
        parts = urlsplit(self.postgres_dsn or "")
        query = [(k, v) for k, v in parse_qsl(parts.query) if k != "sslmode"]
        return urlunsplit(("postgresql+asyncpg", parts.netloc, parts.path, urlencode(query), ""))


def mask_dsn(dsn: str) -> str:
    """``dsn`` with the password (if any) replaced by ``***``."""
    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    netloc = f"{quote(user)}:***@{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES or host.startswith("/"):
        return True  # a Unix socket directory never leaves the machine
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_database_url(url: str) -> DatabaseURL:
    """Parse DATABASE_URL; ValueError with the fix when it is not usable."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise ValueError(
            "DATABASE_URL is not a URL; use sqlite:///path/to/file.db or postgresql://user:password@host/db"
        )
    scheme = scheme.lower()
    if scheme in SQLITE_SCHEMES:
        path = rest[1:] if rest.startswith("/") else rest
        path = path.split("?", 1)[0]
        if not path or path == ":memory:":
            raise ValueError(
                "DATABASE_URL names no SQLite file; use sqlite:///./var/fundaments.db "
                "(an in-memory database would lose every account at restart)"
            )
        return DatabaseURL("sqlite", sqlite_path=Path(unquote(path)))
    if scheme in POSTGRES_SCHEMES:
        parts = urlsplit("postgresql://" + rest)
        try:
            host = parts.hostname or ""
            _ = parts.port
        except ValueError as exc:
            raise ValueError(f"DATABASE_URL has an invalid host or port ({exc})") from None
        query = dict(parse_qsl(parts.query))
        host = query.get("host", host)
        sslmode = query.get("sslmode")
        if sslmode is not None and sslmode not in TLS_MODES:
            raise ValueError(
                f"DATABASE_URL sslmode={sslmode!r} is unknown; use one of {', '.join(sorted(TLS_MODES))}"
            )
        if not _is_loopback(host):
            if sslmode is None:
                sslmode = "require"  # TLS by default once the database is on another machine
            elif sslmode in {"allow", "prefer"}:
                raise ValueError(
                    f"DATABASE_URL sslmode={sslmode} may fall back to an unencrypted connection to {host}; "
                    "use sslmode=require or verify-full (or sslmode=disable to accept plain text explicitly)"
                )
        query_items = [(k, v) for k, v in parse_qsl(parts.query) if k != "sslmode"]
        if sslmode is not None:
            query_items.append(("sslmode", sslmode))
        dsn = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(query_items), ""))
        password = unquote(parts.password) if parts.password else None
        return DatabaseURL("postgresql", postgres_dsn=dsn, sslmode=sslmode, host=host, password=password)
    raise ValueError(
        f"DATABASE_URL scheme {scheme!r} is not supported; use sqlite:///path.db or postgresql://…"
    )
