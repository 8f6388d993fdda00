"""Layer 1: configuration and secrets. The only module that reads the environment."""

from fundaments.config.database import DatabaseURL, mask_dsn, parse_database_url
from fundaments.config.local_setup import ensure_env_keys, generate_keys
from fundaments.config.logs import RedactionFilter, configure_logging
from fundaments.config.settings import (
    DEFAULT_DATABASE_URL,
    Settings,
    degraded_services,
    describe,
    env_file_path,
    load_settings,
)

__all__ = [
    "DEFAULT_DATABASE_URL",
    "DatabaseURL",
    "RedactionFilter",
    "Settings",
    "configure_logging",
    "degraded_services",
    "describe",
    "ensure_env_keys",
    "env_file_path",
    "generate_keys",
    "load_settings",
    "mask_dsn",
    "parse_database_url",
]
