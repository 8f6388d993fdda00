"""First-run set-up: fresh keys written to ``.env`` (mode 0600) when none are configured; where a
run keeps its state, and the refusal to start an empty database beside a configured project."""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from dotenv import dotenv_values

from fundaments.config.settings import ENV_FILE_VARIABLE, Settings

log = logging.getLogger(__name__)

KEY_VARIABLES = ("MASTER_ENCRYPTION_KEY", "PERSISTENT_ENCRYPTION_SALT")
# Naming where the data goes is a choice: with one of these set, no directory is second-guessed.
EXPLICIT_LOCATION_VARIABLES = (ENV_FILE_VARIABLE, "DATABASE_URL", "DATABASE_URL_FILE")
PROJECT_DATABASE = Path("var") / "fundaments.db"  # the default DATABASE_URL, seen from the project


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


def state_locations(
    settings: Settings, env_file: Path, environ: Mapping[str, str] | None = None
) -> list[str]:
    """One line each for where this run keeps its database, keys and outgoing mail: absolute
    paths (a PostgreSQL database or an SMTP server as its masked URL)."""
    environ = os.environ if environ is None else environ
    database = settings.database
    if database.sqlite_path is not None:
        path = database.sqlite_path.resolve()
        where = f"{path} (SQLite, {'existing' if path.exists() else 'new: created now'})"
    else:
        where = f"{database.masked} (PostgreSQL)"
    env_path = env_file.resolve()
    file_values = dotenv_values(env_file) if env_file.exists() else {}
    if not settings.encryption_configured:
        keys = f"none: encryption is off (keys would be read from {env_path})"
    elif all(file_values.get(name) for name in KEY_VARIABLES):
        keys = str(env_path)
    else:
        keys = f"from the environment ({env_path} {'also read' if env_file.exists() else 'absent'})"
    mail = settings.mail
    outbox = f"{mail.path.resolve()} (one .eml file per mail)" if mail.path is not None else mail.masked
    return [f"database: {where}", f"keys:     {keys}", f"outbox:   {outbox}"]


def fresh_start_problem(
    project_dir: Path, settings: Settings, env_file: Path, environ: Mapping[str, str] | None = None
) -> str | None:
    """Why starting here would be a mistake, or None.

    Run from a directory other than ``project_dir`` (where main.py lives), with nothing configured
    here (no ``.env``, no DATABASE_URL or FUNDAMENTS_ENV_FILE) and no database yet, the start would
    create an empty database with new keys — while ``project_dir`` holds a ``.env`` or a database:
    almost always a ``python main.py`` typed in the wrong directory, whose admin would then find
    no accounts and no readable secrets. A deliberate new instance says so by configuring one.
    """
    environ = os.environ if environ is None else environ
    here, project = Path.cwd().resolve(), project_dir.resolve()
    if here == project or env_file.exists():
        return None
    if any(environ.get(name) for name in EXPLICIT_LOCATION_VARIABLES):
        return None
    database = settings.database.sqlite_path
    if database is None or database.exists():
        return None  # PostgreSQL, or an existing database: nothing is created in the wrong place
    found = [str(project / name) for name in (Path(".env"), PROJECT_DATABASE) if (project / name).exists()]
    if not found:
        return None
    return (
        f"refusing to start a new, empty database in {here}: this directory has no .env and no "
        f"database, but the project directory has {' and '.join(found)}. To use that data: "
        f"cd {project} && python main.py. To start a separate instance here on purpose: set "
        f"DATABASE_URL (or {ENV_FILE_VARIABLE}) to where its data should go, or create an empty "
        ".env here (touch .env && chmod 600 .env; fresh keys are then written to it)"
    )
