"""Logging, configured once by the bootstrap, with a redaction filter on every handler.

The filter masks configured secrets, anything shaped like a session token, and DSN passwords,
so a careless ``log.info("%s", settings)`` or an exception message cannot leak them.
"""

from __future__ import annotations

import logging
import re
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path

from fundaments.config.settings import Settings

MASK = "***"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
TMP_LOG_NAME = "fundaments.log"

# 256-bit URL-safe tokens are 43 characters; anything 32+ characters of that alphabet looks like one.
_TOKEN_SHAPE = re.compile(r"(?<![A-Za-z0-9_\-])[A-Za-z0-9_\-]{32,}(?![A-Za-z0-9_\-])")
_DSN_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*:)(?P<password>[^@\s]+)(?P<tail>@)")


class RedactionFilter(logging.Filter):
    """Rewrites each record's message with secrets, token-shaped strings and DSN passwords masked."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets = sorted({s for s in secrets if s}, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        text = _DSN_PASSWORD.sub(lambda m: f"{m['head']}{MASK}{m['tail']}", text)
        return _TOKEN_SHAPE.sub(MASK, text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string must not hide the record
            message = str(record.msg)
        record.msg = self.redact(message)
        record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        return True


def tmp_log_path() -> Path:
    return Path(tempfile.gettempdir()) / TMP_LOG_NAME


def configure_logging(settings: Settings, *, stream: object | None = None) -> RedactionFilter:
    """Set up the ``fundaments`` logger tree from LOG_LEVEL, LOG_TO_TMP and ENABLE_PUBLIC_LOGS.

    Idempotent: handlers installed by an earlier call are replaced, not duplicated.
    """
    root = logging.getLogger("fundaments")
    for handler in list(root.handlers):
        if getattr(handler, "_fundaments", False):
            root.removeHandler(handler)
            handler.close()
    level = logging.getLevelName(settings.log_level) if settings.enable_public_logs else logging.CRITICAL
    root.setLevel(level)
    redaction = RedactionFilter(settings.secret_values())
    handlers: list[logging.Handler] = [logging.StreamHandler(stream or sys.stderr)]  # type: ignore[arg-type]
    if settings.log_to_tmp:
        handlers.append(logging.FileHandler(tmp_log_path(), encoding="utf-8"))
    for handler in handlers:
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.addFilter(redaction)
        handler._fundaments = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False
    # The application's own handlers (uvicorn's, basicConfig's) get the same filter.
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactionFilter)]:
            handler.removeFilter(old)
        handler.addFilter(redaction)
    return redaction
