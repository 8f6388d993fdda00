"""Layer 1: configuration and secrets. The only module that reads the environment."""

from fundaments.config.database import DatabaseURL, mask_dsn, parse_database_url
from fundaments.config.local_setup import ensure_env_keys, fresh_start_problem, generate_keys, state_locations
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
    "fresh_start_problem",
    "generate_keys",
    "load_settings",
    "mask_dsn",
    "parse_database_url",
    "state_locations",
]
