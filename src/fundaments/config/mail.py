"""MAIL_URL: where mail goes — an SMTP server, or a directory of ``.eml`` files for development."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

DEFAULT_MAIL_URL = "file://./var/outbox"
MailScheme = Literal["smtp", "smtps", "file"]
DEFAULT_PORTS = {"smtp": 587, "smtps": 465}


@dataclass(frozen=True)
class MailURL:
    """A parsed MAIL_URL. ``smtp``: STARTTLS, required unless the host is a loopback address;
    ``smtps``: TLS from the first byte; ``file``: one RFC 5322 file per mail in ``path``."""

    scheme: MailScheme
    host: str = ""
    port: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    path: Path | None = None

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def masked(self) -> str:
        """For logs and error messages: never the password."""
        if self.scheme == "file":
            return f"file://{self.path}"
        user = f"{self.username}:***@" if self.username else ""
        return f"{self.scheme}://{user}{self.host}:{self.port}"


def parse_mail_url(url: str) -> MailURL:
    """Parse MAIL_URL; ValueError with the fix when it is not usable."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in ("smtp", "smtps", "file"):
        raise ValueError(
            "MAIL_URL must be smtp://user:password@host:587 (STARTTLS), smtps://host:465 (TLS) "
            f"or file:///path/to/outbox (one .eml file per mail); the default is {DEFAULT_MAIL_URL}"
        )
    if scheme == "file":
        path = unquote(rest.split("?", 1)[0])
        if not path:
            raise ValueError("MAIL_URL names no directory; use file:///absolute/dir or file://./relative/dir")
        return MailURL("file", path=Path(path))
    parts = urlsplit(f"{scheme}://{rest}")
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise ValueError(f"MAIL_URL has an invalid port ({exc})") from None
    if not parts.hostname:
        raise ValueError(f"MAIL_URL names no host; use {scheme}://host:{DEFAULT_PORTS[scheme]}")
    if parts.query or parts.path not in ("", "/"):
        raise ValueError("MAIL_URL takes no path or query; give only user, password, host and port")
    return MailURL(
        scheme,  # type: ignore[arg-type]  # checked above
        host=parts.hostname,
        port=port,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password else None,
    )
