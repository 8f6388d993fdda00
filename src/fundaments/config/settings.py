"""The one settings object, built with pydantic-settings.

Sources, in rising precedence: field defaults, the ``.env`` file (path from ``FUNDAMENTS_ENV_FILE``,
default ``./.env``), the process environment, and ``NAME_FILE`` variables (the secret is read from the
named file, trailing newline stripped: the Docker/Kubernetes secrets convention).

A variable that is absent disables what needs it (see :func:`degraded_services`); a variable that is
set but invalid raises :class:`~fundaments.errors.ConfigurationError` naming it, what is wrong and how
to fix it. Empty values count as absent.
"""

from __future__ import annotations

import email.utils
import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from fundaments.config.database import DatabaseURL, mask_dsn, parse_database_url
from fundaments.config.mail import DEFAULT_MAIL_URL, MailURL, parse_mail_url
from fundaments.errors import ConfigurationError

ENV_FILE_VARIABLE = "FUNDAMENTS_ENV_FILE"
DEFAULT_ENV_FILE = ".env"
DEFAULT_DATABASE_URL = "sqlite:///./var/fundaments.db"
# Host names the web middleware answers for when ALLOWED_HOSTS is unset: loopback only, so that
# `python main.py` works at http://127.0.0.1:8000 and a deployment must name its own host.
DEFAULT_ALLOWED_HOSTS = ("localhost", "127.0.0.1", "::1", "*.localhost")
# A rate limit setting, "N/second|minute|hour|day" (a subset of what fundaments.ratelimit parses)
RATE_PATTERN = r"^(?i)[1-9][0-9]{0,8}/(s|sec|second|m|min|minute|h|hr|hour|d|day)s?$"
MIN_MASTER_KEY_LENGTH = 32
MIN_SALT_BYTES = 16
MAX_SECRET_FILE_BYTES = 64 * 1024

# The seed's .env.example shipped these; they must never be mistaken for real values.
PLACEHOLDERS = frozenset({"your_256_bit_key_here", "your_unique_salt_here", "your_database_dsn_here"})

KEYS_HINT = "generate fresh values with `fundaments keys generate`"


def _placeholder_check(name: str, value: str) -> None:
    if value.strip() in PLACEHOLDERS:
        raise ValueError(
            f"{name} is still the placeholder {value.strip()!r} from the example; set a real value"
        )


class _SecretFileSource(PydanticBaseSettingsSource):
    """``NAME_FILE=/run/secrets/name``: the value of NAME is the content of that file."""

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        env: EnvSettingsSource,
        dotenv: DotEnvSettingsSource,
    ) -> None:
        super().__init__(settings_cls)
        self._lookups: list[Mapping[str, str | None]] = [env.env_vars, dotenv.env_vars]

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ does the work

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name in self.settings_cls.model_fields:
            variable = f"{name}_file"
            path = next((m[variable] for m in self._lookups if m.get(variable)), None)
            if path is None:
                continue
            values[name] = read_secret_file(f"{name.upper()}_FILE", path)
        return values


def read_secret_file(variable: str, path: str) -> str:
    """The secret stored in ``path``, trailing newline(s) stripped; ConfigurationError if unreadable."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_SECRET_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"{variable} points to {path!r}, which cannot be read ({exc.strerror or exc}); "
            "mount the secret there or unset the variable",
            variable=variable,
        ) from None
    if len(raw) > MAX_SECRET_FILE_BYTES:
        raise ConfigurationError(
            f"{variable} points to {path!r}, which is larger than {MAX_SECRET_FILE_BYTES} bytes; "
            "it should hold one secret value",
            variable=variable,
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(
            f"{variable} points to {path!r}, which is not UTF-8 text", variable=variable
        ) from None
    return text.rstrip("\r\n")


_HOST_NAME = re.compile(r"[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*\.?")


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """Every fundaments setting. Variable names are the upper-case field names."""

    model_config = SettingsConfigDict(
        env_file=DEFAULT_ENV_FILE,
        env_file_encoding="utf-8",
        case_sensitive=False,
        extra="ignore",
        env_ignore_empty=True,
        frozen=True,
        hide_input_in_errors=True,
    )

    # --- storage --------------------------------------------------------------------------------
    database_url: SecretStr = Field(default=SecretStr(DEFAULT_DATABASE_URL))
    db_pool_min_size: int = Field(default=2, ge=1, le=100)
    db_pool_max_size: int = Field(default=20, ge=1, le=1000)

    # --- encryption (issue: encryption at rest) -------------------------------------------------
    master_encryption_key: SecretStr | None = None
    master_encryption_key_previous: SecretStr | None = None  # comma-separated retired keys
    persistent_encryption_salt: SecretStr | None = None

    # --- logging --------------------------------------------------------------------------------
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_to_tmp: bool = False
    enable_public_logs: bool = True

    # --- application ----------------------------------------------------------------------------
    app_name: str = Field(default="fundaments", min_length=1, max_length=100)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)  # comma-separated
    # comma-separated host names (no port); "*.example.com" for subdomains, "*" for any host
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_HOSTS))

    # --- passwords and accounts -----------------------------------------------------------------
    password_hasher: Literal["argon2id", "pbkdf2_sha256"] = "argon2id"  # noqa: S105 - a scheme name
    password_min_length: int = Field(default=15, ge=8, le=64)
    password_max_length: int = Field(default=1024, ge=64, le=4096)
    argon2_memory_cost: int = Field(default=19 * 1024, ge=1024, le=4 * 1024 * 1024)  # KiB
    argon2_time_cost: int = Field(default=2, ge=1, le=100)
    argon2_parallelism: int = Field(default=1, ge=1, le=64)
    pbkdf2_iterations: int = Field(default=600_000, ge=1_000, le=100_000_000)
    hashing_concurrency: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, le=256)
    hashing_queue_size: int = Field(default=64, ge=0, le=100_000)
    lockout_threshold: int = Field(default=5, ge=1, le=1000)
    lockout_base_seconds: int = Field(default=900, ge=1)
    lockout_max_seconds: int = Field(default=86_400, ge=0)  # 0: locked until an administrator unlocks
    throttle_ip_failures: int = Field(default=50, ge=1)
    throttle_ip_window: int = Field(default=900, ge=1)  # seconds

    # --- sessions -------------------------------------------------------------------------------
    # strict: same IP and User-Agent | subnet: same /24 (/64) and User-Agent | agent: same
    # User-Agent, an IP change is audited and allowed | log: both audited and allowed | off
    session_binding: Literal["strict", "subnet", "agent", "log", "off"] = "strict"  # cookie sessions
    # bearer (Authorization header) clients: phones roam between networks (docs/sessions.md)
    session_binding_bearer: Literal["strict", "subnet", "agent", "log", "off"] = "agent"
    session_idle_timeout: int = Field(default=1_800, ge=1)  # seconds
    session_absolute_timeout: int = Field(default=43_200, ge=1)  # seconds
    session_max_per_user: int = Field(default=20, ge=1, le=10_000)
    session_touch_interval: int = Field(default=60, ge=0)  # seconds
    session_cache_seconds: float = Field(default=1.0, ge=0, le=60)
    # after a privilege-change rotation the previous token still answers, with the new one, this
    # long (parallel requests in flight); 0: it is dead at once
    session_rotation_grace: int = Field(default=30, ge=0, le=300)  # seconds

    # --- API keys (machine clients) -------------------------------------------------------------
    api_key_cache_size: int = Field(default=10_000, ge=0, le=1_000_000)  # cached keys; 0: no cache
    # how long a cached key may answer before it is read again: the bound on how long another
    # instance may still accept a revoked key (or one whose owner was disabled)
    api_key_cache_seconds: float = Field(default=1.0, ge=0, le=1)
    api_key_last_used_interval: float = Field(default=30.0, ge=0.1, le=3600)  # seconds between writes
    api_key_max_per_user: int = Field(default=100, ge=1, le=10_000)  # live (unrevoked) keys
    # all of one owner's keys together, "N/second|minute|hour|day", counted by the web middleware
    # with each key's own rate_limit (unset: only the keys' own limits)
    api_key_user_rate_limit: str | None = Field(default=None, pattern=RATE_PATTERN)

    # --- account lifecycle and recovery ---------------------------------------------------------
    # what a login name may be: the username, the account's email address, or either
    login_with: Literal["username", "email", "username_or_email"] = "username_or_email"
    password_reset_ttl: int = Field(default=1800, ge=60, le=86_400)  # seconds a reset link lives
    email_verification_ttl: int = Field(default=172_800, ge=300, le=30 * 86_400)  # 48 h
    reset_requests_per_address: int = Field(default=3, ge=1, le=1000)  # per window, per address
    reset_requests_per_ip: int = Field(default=20, ge=1, le=100_000)  # per window, per client IP
    reset_request_window: int = Field(default=3600, ge=60, le=86_400)  # seconds
    # every reset request answers after this long, whatever the address (no enumeration by timing)
    reset_request_seconds: float = Field(default=0.25, ge=0.0, le=10.0)
    notify_new_device_login: bool = False  # mail the owner when a login comes from a new device

    # --- multi-factor authentication (docs/mfa.md) ------------------------------------------------
    mfa_issuer: str | None = Field(default=None, min_length=1, max_length=100)  # None: APP_NAME
    mfa_token_ttl: int = Field(default=300, ge=30, le=1800)  # seconds between password and second factor
    mfa_challenge_attempts: int = Field(default=5, ge=1, le=20)  # codes one mfa_token may try
    mfa_enrolment_ttl: int = Field(default=900, ge=60, le=86_400)  # seconds to confirm a new TOTP secret

    # --- access control -------------------------------------------------------------------------
    rbac_default_roles: bool = True  # first start creates `admin` (*) and `member` (nothing)
    rbac_refresh_seconds: float = Field(default=0.5, ge=0.05, le=60)  # poll for changes by other instances

    # --- mail -----------------------------------------------------------------------------------
    mail_url: SecretStr = Field(default=SecretStr(DEFAULT_MAIL_URL))  # may hold the SMTP password
    mail_from: str = Field(default="fundaments <no-reply@localhost>", min_length=3, max_length=254)
    public_base_url: str = Field(default="http://127.0.0.1:8000", min_length=8, max_length=500)
    mail_max_attempts: int = Field(default=10, ge=1, le=100)  # then the mail is given up (audited)
    mail_retry_seconds: float = Field(default=30.0, ge=0.01, le=3600)  # first retry; doubles, max 1 h

    # --- rate limits and quotas (docs/ratelimits.md) ----------------------------------------------
    redis_url: SecretStr | None = None  # redis://[:password@]host:6379/0, rediss:// (TLS), unix:///path
    # unset: redis when REDIS_URL is set, else database; memory: this process only (tests)
    rate_limit_backend: Literal["memory", "database", "redis"] | None = None
    rate_limit_fail: Literal["closed", "open"] = "closed"  # what a decision is while Redis is down
    rate_limit_redis_timeout: float = Field(default=0.25, ge=0.001, le=10.0)  # seconds, connect and reply
    rate_limit_redis_retry: float = Field(default=1.0, ge=0.0, le=60.0)  # seconds between probes while down
    rate_limit_memory_keys: int = Field(default=100_000, ge=100, le=100_000_000)  # memory backend bound
    # auth_router's anonymous routes (docs/web.md, "Rate limits"); "N/second|minute|hour|day"
    rate_limit_register: str = Field(default="5/hour", pattern=RATE_PATTERN)  # POST /register per client IP
    # POST /password-reset and /verify-email/request together, per client IP
    rate_limit_account_mail: str = Field(default="10/hour", pattern=RATE_PATTERN)
    # the same per target: per address asked for (reset), per account (verification), from any IP
    rate_limit_account_mail_target: str = Field(default="5/hour", pattern=RATE_PATTERN)

    # --- audit trail ----------------------------------------------------------------------------
    audit_checkpoint_every: int = Field(default=1_000, ge=10, le=1_000_000)  # events per MAC'ed checkpoint

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        assert isinstance(env_settings, EnvSettingsSource)
        assert isinstance(dotenv_settings, DotEnvSettingsSource)
        secret_files = _SecretFileSource(settings_cls, env_settings, dotenv_settings)
        return (init_settings, secret_files, env_settings, dotenv_settings)

    # --- validation -----------------------------------------------------------------------------
    @field_validator("master_encryption_key")
    @classmethod
    def _check_master_key(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value()
        _placeholder_check("MASTER_ENCRYPTION_KEY", raw)
        if len(raw) < MIN_MASTER_KEY_LENGTH:
            raise ValueError(
                f"MASTER_ENCRYPTION_KEY is {len(raw)} characters; use at least {MIN_MASTER_KEY_LENGTH} "
                "(fundaments keys generate)"
            )
        return value

    @field_validator("master_encryption_key_previous")
    @classmethod
    def _check_previous_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        for index, key in enumerate(_split_list(value.get_secret_value()), start=1):
            _placeholder_check("MASTER_ENCRYPTION_KEY_PREVIOUS", key)
            if len(key) < MIN_MASTER_KEY_LENGTH:
                raise ValueError(
                    f"MASTER_ENCRYPTION_KEY_PREVIOUS entry {index} is {len(key)} characters; retired keys "
                    f"are at least {MIN_MASTER_KEY_LENGTH} characters too (check for a stray comma)"
                )
        return value

    @field_validator("persistent_encryption_salt")
    @classmethod
    def _check_salt(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        _placeholder_check("PERSISTENT_ENCRYPTION_SALT", raw)
        try:
            decoded = bytes.fromhex(raw)
        except ValueError:
            decoded = b""
        if len(decoded) < MIN_SALT_BYTES:
            raise ValueError(
                f"PERSISTENT_ENCRYPTION_SALT must be hex, at least {MIN_SALT_BYTES} bytes "
                f"({2 * MIN_SALT_BYTES} hex digits) (fundaments keys generate)"
            )
        return SecretStr(raw)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        _placeholder_check("DATABASE_URL", raw)
        parse_database_url(raw)  # raises ValueError with the explanation
        return SecretStr(raw)

    @field_validator("mail_url")
    @classmethod
    def _check_mail_url(cls, value: SecretStr) -> SecretStr:
        raw = value.get_secret_value().strip()
        _placeholder_check("MAIL_URL", raw)
        parse_mail_url(raw)  # raises ValueError with the explanation
        return SecretStr(raw)

    @field_validator("mail_from")
    @classmethod
    def _check_mail_from(cls, value: str) -> str:
        _name, address = email.utils.parseaddr(value)
        if "@" not in address or any(c in value for c in "\r\n"):
            raise ValueError(
                f"MAIL_FROM {value!r} is not a mail address; use 'Name <no-reply@example.com>' or an address"
            )
        return value.strip()

    @field_validator("public_base_url")
    @classmethod
    def _check_public_base_url(cls, value: str) -> str:
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
            raise ValueError(
                f"PUBLIC_BASE_URL {value!r} must be the site's address, like https://example.com "
                "(links in mails start with it)"
            )
        return value.strip().rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        raw = value.get_secret_value().strip()
        parts = urlsplit(raw)
        if parts.scheme not in ("redis", "rediss", "unix") or not (parts.hostname or parts.path):
            raise ValueError(
                "REDIS_URL must look like redis://host:6379/0, rediss://host:6380/0 (TLS) or "
                "unix:///path/to/redis.sock"
            )
        return SecretStr(raw)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_log_level(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator(
        "password_hasher",
        "session_binding",
        "session_binding_bearer",
        "rate_limit_backend",
        "rate_limit_fail",
        mode="before",
    )
    @classmethod
    def _lower_choice(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _parse_proxies(cls, value: Any) -> Any:
        value = _split_list(value)
        for entry in value or []:
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(
                    f"TRUSTED_PROXIES entry {entry!r} is not an IP address or network (e.g. 10.0.0.0/8)"
                ) from None
        return value

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: Any) -> Any:
        value = _split_list(value)
        if not isinstance(value, list):
            return value
        hosts = []
        for entry in value:
            host = str(entry).strip().lower()
            bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
            if _is_ip(bare):
                hosts.append(bare)
                continue
            name = bare[2:] if bare.startswith("*.") else bare
            if bare != "*" and not _HOST_NAME.fullmatch(name):
                raise ValueError(
                    f"ALLOWED_HOSTS entry {str(entry)[:80]!r} is not a host name: give names without "
                    "scheme, port or path (app.example.com, *.example.com for subdomains, * for any)"
                )
            hosts.append(bare)
        if not hosts:
            raise ValueError("ALLOWED_HOSTS is empty; name the host(s) the application answers for")
        return hosts

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        if self.db_pool_min_size > self.db_pool_max_size:
            raise ValueError(
                "DB_POOL_MIN_SIZE is larger than DB_POOL_MAX_SIZE; lower the first or raise the second"
            )
        if self.session_idle_timeout > self.session_absolute_timeout:
            raise ValueError(
                "SESSION_IDLE_TIMEOUT is longer than SESSION_ABSOLUTE_TIMEOUT; "
                "the idle timeout must be the shorter"
            )
        if self.lockout_max_seconds and self.lockout_max_seconds < self.lockout_base_seconds:
            raise ValueError(
                "LOCKOUT_MAX_SECONDS is shorter than LOCKOUT_BASE_SECONDS; raise it, or set 0 for "
                "'locked until an administrator unlocks'"
            )
        if self.password_min_length > self.password_max_length:
            raise ValueError("PASSWORD_MIN_LENGTH is larger than PASSWORD_MAX_LENGTH")
        if self.rate_limit_backend == "redis" and self.redis_url is None:
            raise ValueError("RATE_LIMIT_BACKEND is redis but REDIS_URL is not set; set REDIS_URL")
        return self

    # --- derived values -------------------------------------------------------------------------
    @property
    def database(self) -> DatabaseURL:
        return parse_database_url(self.database_url.get_secret_value())

    @property
    def mail(self) -> MailURL:
        return parse_mail_url(self.mail_url.get_secret_value())

    @property
    def rate_limit_backend_choice(self) -> Literal["memory", "database", "redis"]:
        """The rate-limit backend in use: RATE_LIMIT_BACKEND, else redis with REDIS_URL, else database."""
        if self.rate_limit_backend is not None:
            return self.rate_limit_backend
        return "redis" if self.redis_url is not None else "database"

    @property
    def encryption_configured(self) -> bool:
        return self.master_encryption_key is not None and self.persistent_encryption_salt is not None

    @property
    def previous_master_keys(self) -> list[str]:
        if self.master_encryption_key_previous is None:
            return []
        return list(_split_list(self.master_encryption_key_previous.get_secret_value()))

    @property
    def encryption_salt(self) -> bytes | None:
        if self.persistent_encryption_salt is None:
            return None
        return bytes.fromhex(self.persistent_encryption_salt.get_secret_value())

    def secret_values(self) -> list[str]:
        """Every configured secret in clear text: what the log redaction filter masks."""
        secrets_: list[str] = []
        for value in (self.master_encryption_key, self.persistent_encryption_salt):
            if value is not None:
                secrets_.append(value.get_secret_value())
        secrets_.extend(self.previous_master_keys)
        redis_password = urlsplit(self.redis_url.get_secret_value()).password if self.redis_url else None
        for password in (self.database.password, self.mail.password, redis_password):
            if password:
                secrets_.append(password)
        return [s for s in secrets_ if len(s) >= 4]


def describe(settings: Settings) -> list[tuple[str, str]]:
    """(VARIABLE, value for display) for every setting; secrets masked, a DSN without its password."""
    rows: list[tuple[str, str]] = []
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if name == "database_url":
            shown = settings.database.masked
        elif name == "mail_url":
            shown = settings.mail.masked
        elif name == "redis_url" and settings.redis_url is not None:
            shown = mask_dsn(settings.redis_url.get_secret_value())
        elif isinstance(value, SecretStr):
            shown = f"********** ({len(value.get_secret_value())} characters)"
        elif value is None:
            shown = "(not set)"
        elif isinstance(value, list):
            shown = ", ".join(map(str, value)) or "(none)"
        else:
            shown = str(value)
        rows.append((name.upper(), shown))
    return rows


def env_file_path(environ: Mapping[str, str] | None = None) -> Path:
    environ = os.environ if environ is None else environ
    return Path(environ.get(ENV_FILE_VARIABLE) or DEFAULT_ENV_FILE)


_VALUE_ERROR_PREFIX = re.compile(r"^(Value error|Assertion failed), ")


def _problems_from(error: ValidationError) -> list[str]:
    problems = []
    for item in error.errors(include_input=False, include_url=False):
        location = ".".join(str(part) for part in item.get("loc", ()))
        message = _VALUE_ERROR_PREFIX.sub("", item.get("msg", "invalid value"))
        variable = location.upper()
        if not location or message.startswith(variable):
            problems.append(message)
        else:
            problems.append(f"{variable} is invalid: {message}")
    return problems


def load_settings(env_file: str | os.PathLike[str] | None = None, **overrides: Any) -> Settings:
    """Settings from defaults, ``.env``, the environment and ``*_FILE`` secrets.

    ``overrides`` (field names) win over every source; tests and embedding applications use them.
    Raises ConfigurationError listing every invalid variable.
    """
    path = Path(env_file) if env_file is not None else env_file_path()
    try:
        return Settings(_env_file=path, **overrides)  # type: ignore[call-arg]
    except ValidationError as exc:
        problems = _problems_from(exc)
        first = problems[0] if problems else "invalid configuration"
        variable = first.split(" ", 1)[0] if first[:1].isupper() else None
        raise ConfigurationError("\n".join(problems), variable=variable, problems=problems) from None


def degraded_services(settings: Settings) -> list[tuple[str, str]]:
    """(service, warning) for each service an absent variable disables."""
    warnings: list[tuple[str, str]] = []
    missing = [
        name
        for name, value in (
            ("MASTER_ENCRYPTION_KEY", settings.master_encryption_key),
            ("PERSISTENT_ENCRYPTION_SALT", settings.persistent_encryption_salt),
        )
        if value is None
    ]
    if missing:
        warnings.append(
            (
                "encryption",
                " and ".join(missing) + " not set: encryption is disabled "
                f"(encrypt_data/decrypt_data raise ServiceUnavailable); {KEYS_HINT}",
            )
        )
    return warnings
