"""Configuration: precedence of sources, every error message, placeholders, masking."""

from __future__ import annotations

import contextlib
import io
import ipaddress
import logging
import os
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import example, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from fundaments.config import (
    RedactionFilter,
    Settings,
    configure_logging,
    degraded_services,
    describe,
    ensure_env_keys,
    load_settings,
    mask_dsn,
    parse_database_url,
)
from fundaments.errors import ConfigurationError

KEY = "k" * 40
SALT = "ab" * 16


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No setting leaks in from the machine's environment; the working directory is empty."""
    for name in list(os.environ):
        field = name.lower().removesuffix("_file")
        if field in Settings.model_fields or name == "FUNDAMENTS_ENV_FILE":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# --- precedence -----------------------------------------------------------------------------------


def test_defaults_apply_without_any_source() -> None:
    settings = load_settings()
    assert settings.log_level == "INFO"
    assert settings.database.dialect == "sqlite"
    assert str(settings.database.sqlite_path) == "var/fundaments.db"
    assert settings.master_encryption_key is None
    assert settings.password_hasher == "argon2id"
    assert settings.session_binding == "strict"


def test_dotenv_overrides_defaults(tmp_path: Path) -> None:
    write(tmp_path / ".env", "LOG_LEVEL=DEBUG\nSESSION_BINDING=subnet\n")
    settings = load_settings()
    assert settings.log_level == "DEBUG"
    assert settings.session_binding == "subnet"


def test_environment_overrides_dotenv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / ".env", "LOG_LEVEL=DEBUG\n")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    assert load_settings().log_level == "WARNING"


def test_file_variable_overrides_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = write(tmp_path / "key.txt", "f" * 40 + "\n")
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", "e" * 40)
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY_FILE", str(secret))
    settings = load_settings()
    assert settings.master_encryption_key is not None
    assert settings.master_encryption_key.get_secret_value() == "f" * 40  # trailing newline stripped


def test_file_variable_may_come_from_dotenv(tmp_path: Path) -> None:
    secret = write(tmp_path / "salt.txt", SALT + "\r\n")
    write(tmp_path / ".env", f"PERSISTENT_ENCRYPTION_SALT_FILE={secret}\n")
    assert load_settings().encryption_salt == bytes.fromhex(SALT)


def test_env_file_path_comes_from_fundaments_env_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = write(tmp_path / "production.env", "APP_NAME=Orders\n")
    write(tmp_path / ".env", "APP_NAME=Ignored\n")
    monkeypatch.setenv("FUNDAMENTS_ENV_FILE", str(other))
    assert load_settings().app_name == "Orders"


def test_empty_value_counts_as_absent(tmp_path: Path) -> None:
    write(tmp_path / ".env", "MASTER_ENCRYPTION_KEY=\nPERSISTENT_ENCRYPTION_SALT=\n")
    settings = load_settings()
    assert settings.master_encryption_key is None
    assert not settings.encryption_configured


def test_explicit_overrides_win_over_every_source(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PORT", "9000")
    assert load_settings(port=9100).port == 9100


# --- graceful degradation and invalid values --------------------------------------------------------


def test_absent_keys_disable_encryption_with_one_warning_naming_the_variables() -> None:
    settings = load_settings(master_encryption_key=KEY)
    warnings = degraded_services(settings)
    assert len(warnings) == 1
    service, message = warnings[0]
    assert service == "encryption"
    assert "PERSISTENT_ENCRYPTION_SALT" in message and "MASTER_ENCRYPTION_KEY " not in message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        (
            "MASTER_ENCRYPTION_KEY",
            "x" * 12,
            "MASTER_ENCRYPTION_KEY is 12 characters; use at least 32 (fundaments keys generate)",
        ),
        (
            "PERSISTENT_ENCRYPTION_SALT",
            "not-hex",
            "PERSISTENT_ENCRYPTION_SALT must be hex, at least 16 bytes",
        ),
        ("PERSISTENT_ENCRYPTION_SALT", "abcd", "PERSISTENT_ENCRYPTION_SALT must be hex, at least 16 bytes"),
        ("MASTER_ENCRYPTION_KEY", "your_256_bit_key_here", "MASTER_ENCRYPTION_KEY is still the placeholder"),
        (
            "PERSISTENT_ENCRYPTION_SALT",
            "your_unique_salt_here",
            "PERSISTENT_ENCRYPTION_SALT is still the placeholder",
        ),
        ("DATABASE_URL", "your_database_dsn_here", "DATABASE_URL is still the placeholder"),
        ("DATABASE_URL", "mysql://db/x", "DATABASE_URL scheme 'mysql' is not supported"),
        ("DATABASE_URL", "sqlite:///:memory:", "DATABASE_URL names no SQLite file"),
        (
            "DATABASE_URL",
            "postgresql://u:p@db.example.com/x?sslmode=prefer",
            "may fall back to an unencrypted connection",
        ),
        ("DATABASE_URL", "postgresql://u@h/x?sslmode=bogus", "sslmode='bogus' is unknown"),
        (
            "MASTER_ENCRYPTION_KEY_PREVIOUS",
            KEY + ",short",
            "MASTER_ENCRYPTION_KEY_PREVIOUS entry 2 is 5 characters",
        ),
        ("LOG_LEVEL", "LOUD", "LOG_LEVEL is invalid"),
        ("LOG_TO_TMP", "maybe", "LOG_TO_TMP is invalid"),
        ("SESSION_BINDING", "sometimes", "SESSION_BINDING is invalid"),
        ("PASSWORD_HASHER", "md5", "PASSWORD_HASHER is invalid"),
        ("PORT", "70000", "PORT is invalid"),
        (
            "TRUSTED_PROXIES",
            "10.0.0.0/8,proxy.local",
            "TRUSTED_PROXIES entry 'proxy.local' is not an IP address",
        ),
        ("SESSION_IDLE_TIMEOUT", "99999", "SESSION_IDLE_TIMEOUT is longer than SESSION_ABSOLUTE_TIMEOUT"),
    ],
)
def test_invalid_value_stops_startup_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert expected in str(raised.value)
    assert value not in str(raised.value) or value.startswith(
        ("your_", "mysql", "sqlite", "10.0", "LOUD", "maybe")
    )


def test_every_problem_is_reported_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", "short")
    monkeypatch.setenv("PERSISTENT_ENCRYPTION_SALT", "zz")
    monkeypatch.setenv("PORT", "0")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert len(raised.value.problems) == 3


def test_unreadable_secret_file_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match=r"MASTER_ENCRYPTION_KEY_FILE points to .* cannot be read"):
        load_settings()


def test_short_key_message_never_contains_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTER_ENCRYPTION_KEY", "hunter2-secret")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "hunter2-secret" not in str(raised.value)


# --- database URLs ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["postgresql://u:p@127.0.0.1/db", "postgres://u@localhost:5432/db", "postgresql+asyncpg://u@[::1]/db"],
)
def test_loopback_postgres_needs_no_tls(url: str) -> None:
    parsed = parse_database_url(url)
    assert parsed.dialect == "postgresql"
    assert parsed.sslmode is None


def test_remote_postgres_requires_tls_by_default() -> None:
    parsed = parse_database_url("postgresql://u:p@db.example.com/app")
    assert parsed.sslmode == "require"
    assert "sslmode=require" in (parsed.postgres_dsn or "")


def test_remote_postgres_plain_text_only_when_explicit() -> None:
    assert parse_database_url("postgresql://u:p@db.example.com/app?sslmode=disable").sslmode == "disable"


@pytest.mark.parametrize("scheme", ["sqlite", "sqlite+aiosqlite"])
def test_sqlite_urls(scheme: str) -> None:
    parsed = parse_database_url(f"{scheme}:////srv/data/app.db")
    assert parsed.dialect == "sqlite"
    assert str(parsed.sqlite_path) == "/srv/data/app.db"


def test_dsn_password_is_masked() -> None:
    assert (
        mask_dsn("postgresql://app:s3cr3t@db.example.com:5432/x")
        == "postgresql://app:***@db.example.com:5432/x"
    )
    parsed = parse_database_url("postgresql://app:s3cr3t@127.0.0.1/x")
    assert "s3cr3t" not in parsed.masked


URL_SCHEMES = ["sqlite", "SQLite+aiosqlite", "postgresql", "Postgres", "postgresql+asyncpg", "mysql", ""]
URL_HOSTS = ["127.0.0.1", "localhost", "[::1]", "db.example.com", "10.0.0.5", "", "h:notaport"]
URL_SSLMODES = [None, "disable", "allow", "prefer", "require", "verify-full", "bogus"]
database_urls = st.one_of(
    st.text(max_size=200),
    st.builds(
        lambda scheme, sep, host, path, sslmode, socket: (
            f"{scheme}{sep}u:pw@{host}{path}"
            + (f"?sslmode={sslmode}" if sslmode else "")
            + (("&" if sslmode else "?") + "host=/run/postgresql" if socket else "")
        ),
        st.sampled_from(URL_SCHEMES),
        st.sampled_from(["://", "://", "://", ":/", ""]),
        st.sampled_from(URL_HOSTS),
        st.sampled_from(["/app", "/", "", "/:memory:"]),
        st.one_of(st.none(), st.sampled_from(URL_SSLMODES)),
        st.sampled_from([False, False, True]),
    ),
)


def expected_database_url(text: str) -> tuple[str, str | None] | None:
    """A reference for the parser: (dialect, sslmode) for a usable URL, None for a refused one."""
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep:
        return None
    if scheme in {"sqlite", "sqlite+aiosqlite", "sqlite+pysqlite"}:
        path = rest.removeprefix("/").split("?", 1)[0]
        return None if path in {"", ":memory:"} else ("sqlite", None)
    if scheme not in {"postgresql", "postgres", "postgresql+asyncpg"}:
        return None
    try:
        parts = urlsplit("postgresql://" + rest)
        host, _ = parts.hostname or "", parts.port
    except ValueError:
        return None
    query = dict(parse_qsl(parts.query))
    host, sslmode = query.get("host", host), query.get("sslmode")
    if sslmode not in {None, "disable", "allow", "prefer", "require", "verify-ca", "verify-full"}:
        return None
    loopback = host in {"", "localhost", "localhost.localdomain"} or host.startswith("/")
    with contextlib.suppress(ValueError):
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback and sslmode in {None, "allow", "prefer"}:
        # TLS by default once the database is on another machine; never a mode that falls back
        return None if sslmode else ("postgresql", "require")
    return "postgresql", sslmode


@hsettings(max_examples=300)
@given(database_urls)
@example("postgresql://u:pw@db.example.com/app")  # remote without sslmode: TLS required
@example("postgres://u:pw@10.0.0.5/app?sslmode=prefer")  # may fall back to plain text: refused
@example("postgresql://u:pw@localhost/app?sslmode=allow&host=/run/postgresql")
def test_database_url_parser_agrees_with_the_reference_and_raises_only_value_error(text: str) -> None:
    expected = expected_database_url(text)
    try:
        parsed = parse_database_url(text)
    except ValueError as exc:
        assert expected is None, f"{text!r} was refused: {exc}"
        assert str(exc).startswith("DATABASE_URL")  # the message names the setting to fix
        return
    assert expected == (parsed.dialect, parsed.sslmode), text
    if parsed.dialect == "postgresql":
        assert ":pw@" not in parsed.masked  # the password never shows


# --- masking ------------------------------------------------------------------------------------------


def test_repr_masks_secrets() -> None:
    settings = load_settings(
        master_encryption_key=KEY,
        persistent_encryption_salt=SALT,
        database_url="postgresql://app:s3cr3t-pw@127.0.0.1/x",
    )
    text = repr(settings) + str(settings)
    for secret in (KEY, SALT, "s3cr3t-pw"):
        assert secret not in text


def test_describe_masks_secrets_and_dsn_password() -> None:
    settings = load_settings(
        master_encryption_key=KEY,
        persistent_encryption_salt=SALT,
        database_url="postgresql://app:s3cr3t-pw@127.0.0.1/x",
    )
    shown = dict(describe(settings))
    assert KEY not in str(shown) and SALT not in str(shown) and "s3cr3t-pw" not in str(shown)
    assert shown["DATABASE_URL"] == "postgresql://app:***@127.0.0.1/x"


def test_log_lines_are_redacted() -> None:
    settings = load_settings(
        master_encryption_key=KEY,
        persistent_encryption_salt=SALT,
        database_url="postgresql://app:s3cr3t-pw@127.0.0.1/x",
    )
    stream = io.StringIO()
    configure_logging(settings, stream=stream)
    log = logging.getLogger("fundaments.test")
    token = "Qm9ndXMtc2Vzc2lvbi10b2tlbi0yNTYtYml0cy1sb25n"
    log.info("key=%s salt=%s", KEY, SALT)
    log.info("dsn postgresql://other:pa55word@h/x and token %s", token)
    try:
        raise RuntimeError(f"failed with {KEY}")
    except RuntimeError:
        log.exception("boom")
    output = stream.getvalue()
    for secret in (KEY, SALT, "pa55word", token):
        assert secret not in output
    assert output.count("***") >= 4


def test_public_logs_off_means_only_critical() -> None:
    stream = io.StringIO()
    configure_logging(load_settings(enable_public_logs=False), stream=stream)
    log = logging.getLogger("fundaments.test")
    log.error("hidden")
    log.critical("shown")
    assert "hidden" not in stream.getvalue() and "shown" in stream.getvalue()


def test_log_to_tmp_writes_a_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    configure_logging(load_settings(log_to_tmp=True), stream=io.StringIO())
    logging.getLogger("fundaments.test").warning("to the file")
    for handler in logging.getLogger("fundaments").handlers:
        handler.flush()
    assert "to the file" in (tmp_path / "fundaments.log").read_text()
    configure_logging(load_settings(), stream=io.StringIO())  # close the file handler again


@given(st.text(max_size=300))
def test_redaction_never_fails_and_removes_configured_secrets(text: str) -> None:
    redacted = RedactionFilter([KEY]).redact(text + KEY)
    assert KEY not in redacted


# --- first-run keys -----------------------------------------------------------------------------------


def test_first_run_writes_keys_with_mode_0600(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    written = ensure_env_keys(env_file, environ={})
    assert written == ["MASTER_ENCRYPTION_KEY", "PERSISTENT_ENCRYPTION_SALT"]
    assert env_file.stat().st_mode & 0o777 == 0o600
    settings = load_settings(env_file=env_file)
    assert settings.encryption_configured


def test_first_run_never_overwrites_an_existing_value(tmp_path: Path) -> None:
    env_file = write(tmp_path / ".env", f"MASTER_ENCRYPTION_KEY={KEY}\n")
    assert ensure_env_keys(env_file, environ={}) == ["PERSISTENT_ENCRYPTION_SALT"]
    assert ensure_env_keys(env_file, environ={}) == []
    text = env_file.read_text()
    assert text.count("MASTER_ENCRYPTION_KEY=") == 1 and f"MASTER_ENCRYPTION_KEY={KEY}" in text


def test_first_run_respects_keys_from_the_environment(tmp_path: Path) -> None:
    environ = {"MASTER_ENCRYPTION_KEY": KEY, "PERSISTENT_ENCRYPTION_SALT_FILE": "/run/secrets/salt"}
    assert ensure_env_keys(tmp_path / ".env", environ=environ) == []
    assert not (tmp_path / ".env").exists()


def test_env_example_documents_every_variable() -> None:
    example = (Path(__file__).resolve().parents[1] / ".env.example").read_text()
    missing = [name.upper() for name in Settings.model_fields if f"{name.upper()}=" not in example]
    assert missing == []
