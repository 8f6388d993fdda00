"""Password hashers, imports from other systems, the password policy and the hashing pool."""

from __future__ import annotations

import gzip
import importlib.resources
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fundaments.config import Settings, load_settings
from fundaments.errors import InvalidPasswordHashError, PasswordPolicyError, ServiceUnavailable
from fundaments.passwords import (
    HashingBusyError,
    HashingPool,
    PasswordService,
    common_passwords,
    is_common_password,
    is_trivially_repetitive,
    is_trivially_sequential,
)

PASSWORD = "correct horse battery staple"
# Made by passlib 1.7.4 (pbkdf2_sha256.using(rounds=…).hash) and Django 5.2 (PBKDF2PasswordHasher,
# Argon2PasswordHasher with memory_cost=1024, time_cost=1), all from PASSWORD.
PASSLIB_29000 = "$pbkdf2-sha256$29000$d06JEaL0vleKMaYUAuCcEw$tUEGSJTiG/l8neGF46Qj6JAfHdkJjGRWdcqDaOHpQPs"
PASSLIB_1000 = "$pbkdf2-sha256$1000$QYiR0ppTKsUYo9S6V2ot5Q$5sNrsm0LK2NsnIeCtRosu5ukrWVpci6i3s8y8L9A.tM"
DJANGO_PBKDF2 = "pbkdf2_sha256$1000$KRcjsUs03QbtNTUrL05jPK$p2Y090RSINdJpKHZX/wZFPWf2hTXDEZl1fJxtWv3BXg="
DJANGO_ARGON2 = "argon2$argon2id$v=19$m=1024,t=1,p=8$WTV0UXJwMXJnNUljTHNrcFlkbGRRSw$Jlw7iW6zI790pZ4/wN2VwOrxG4m0izViv1bi9jo+Nkc"
IMPORTED = {"passlib": PASSLIB_29000, "django_pbkdf2": DJANGO_PBKDF2, "django_argon2": DJANGO_ARGON2}


def service(**overrides: Any) -> PasswordService:
    values: dict[str, Any] = {
        "argon2_memory_cost": 1024,
        "argon2_time_cost": 1,
        "pbkdf2_iterations": 1000,
        **overrides,
    }
    settings_: Settings = load_settings(env_file=Path("/nonexistent/.env"), **values)
    return PasswordService.from_settings(settings_)


@pytest.fixture(scope="module")
def passwords() -> PasswordService:
    return service()


# --- hashers --------------------------------------------------------------------------------------


def test_argon2id_is_the_default_and_names_its_parameters(passwords: PasswordService) -> None:
    encoded = passwords.encode(PASSWORD)
    assert encoded.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert passwords.verify(PASSWORD, encoded)
    assert not passwords.verify(PASSWORD + "!", encoded)
    assert not passwords.must_update(encoded)
    assert passwords.encode(PASSWORD) != encoded  # a fresh salt each time


def test_owasp_parameters_are_the_defaults() -> None:
    defaults = load_settings(env_file=Path("/nonexistent/.env"))
    assert (defaults.argon2_memory_cost, defaults.argon2_time_cost, defaults.argon2_parallelism) == (
        19456,
        2,
        1,
    )
    assert defaults.pbkdf2_iterations == 600_000


def test_stronger_settings_mark_older_argon2_hashes_for_update(passwords: PasswordService) -> None:
    weak = passwords.encode(PASSWORD)
    stronger = service(argon2_memory_cost=2048)
    assert stronger.verify(PASSWORD, weak)
    assert stronger.must_update(weak)


def test_pbkdf2_setting_writes_passlib_format_hashes() -> None:
    fips = service(password_hasher="pbkdf2_sha256", pbkdf2_iterations=2000)
    encoded = fips.encode(PASSWORD)
    assert encoded.startswith("$pbkdf2-sha256$2000$")
    assert fips.verify(PASSWORD, encoded)
    assert not fips.verify("correct horse battery stapl", encoded)
    assert not fips.must_update(encoded)
    assert fips.must_update(PASSLIB_1000)  # fewer iterations than configured
    assert fips.must_update(fips.verifiers[0].encode(PASSWORD))  # argon2id: another scheme


@pytest.mark.parametrize("name", sorted(IMPORTED))
def test_imported_hashes_verify_and_need_update(passwords: PasswordService, name: str) -> None:
    encoded = IMPORTED[name]
    assert passwords.validate_import(encoded) == encoded
    assert passwords.verify(PASSWORD, encoded)
    assert not passwords.verify(PASSWORD.upper(), encoded)
    assert passwords.must_update(encoded)


def test_argon2_phc_strings_with_other_parameters_verify(passwords: PasswordService) -> None:
    import argon2

    argon2i = argon2.PasswordHasher(time_cost=3, memory_cost=512, parallelism=2, type=argon2.Type.I).hash(
        PASSWORD
    )
    assert passwords.verify(PASSWORD, argon2i)
    assert passwords.must_update(argon2i)


@pytest.mark.parametrize(
    "encoded",
    [
        "",
        "plaintext-password",
        "$2b$12$abcdefghijklmnopqrstuuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0",  # bcrypt: not supported
        "$pbkdf2-sha256$999999999$d06JEaL0vleKMaYUAuCcEw$tUEGSJTiG/l8neGF46Qj6JAfHdkJjGRWdcqDaOHpQPs",
        "pbkdf2_sha256$100000000$salt$p2Y090RSINdJpKHZX/wZFPWf2hTXDEZl1fJxtWv3BXg=",
        "$argon2id$v=19$m=4194304,t=1,p=1$WTV0UXJwMXJnNUljTHNrcFlkbGRRSw$Jlw7iW6zI790pZ4/wN2VwOrxG4m0izViv1bi9jo+Nkc",
        "$argon2id$v=19$m=1024,t=1000,p=1$WTV0UXJwMXJnNUljTHNrcFlkbGRRSw$Jlw7iW6zI790pZ4/wN2VwOrxG4m0izViv1bi9jo+Nkc",
        "$pbkdf2-sha256$1000$QYiR0ppTKsUYo9S6V2ot5Q$short",
        "md5$salt$abc",
        PASSLIB_1000 + "\n",  # a trailing newline ($ would accept it; \Z does not)
        DJANGO_PBKDF2 + "\n",
        DJANGO_ARGON2.replace("m=1024", "m=١٠٢٤"),  # Arabic-Indic digits parse as int() but are no PHC
        PASSLIB_1000.replace("$1000$", "$١٠٠٠$"),
        "$argon2id$v=19$m=1024,t=1,p=1$" + "A" * 600 + "$" + "B" * 43,  # longer than any real hash
    ],
)
def test_unknown_malformed_or_dangerous_hashes_are_refused(passwords: PasswordService, encoded: str) -> None:
    with pytest.raises(InvalidPasswordHashError):
        passwords.validate_import(encoded)
    assert not passwords.verify(PASSWORD, encoded)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.from_regex(r"\$(argon2(id|i|d)|pbkdf2-sha256)\$.*", fullmatch=True))
def test_hash_parsing_never_crashes_on_untrusted_input(encoded: str) -> None:
    passwords = service()
    hasher = passwords.identify(encoded)
    if hasher is None:
        with pytest.raises(InvalidPasswordHashError):
            passwords.validate_import(encoded)
    assert passwords.verify("x" * 16, encoded) is False  # none of these is a hash of that password
    if hasher is None or not encoded.startswith("$argon2id$"):
        # unreadable, or another scheme than the current Argon2id: replaced at the next login
        assert passwords.must_update(encoded) is True


def test_passwords_are_verified_as_typed_after_nfkc(passwords: PasswordService) -> None:
    encoded = passwords.encode("ﬁne ﬁsh in the ﬁrst river")  # ligature "ﬁ" → "fi" under NFKC
    assert passwords.verify("fine fish in the first river", encoded)
    assert not passwords.verify("FINE FISH IN THE FIRST RIVER", encoded)  # no case folding
    long = "a long passphrase that goes on " * 10
    encoded = passwords.encode(long)
    assert not passwords.verify(long[:72], encoded)  # no truncation (bcrypt's 72 bytes)
    assert not passwords.verify(long + " ", encoded)  # no trimming


def test_legacy_hashes_of_unnormalized_passwords_still_verify(passwords: PasswordService) -> None:
    typed = "ﬁne ﬁsh in the ﬁrst river"
    legacy = service(password_hasher="pbkdf2_sha256").verifiers[1].encode(typed)  # as passlib stored it
    assert passwords.verify(typed, legacy)


# --- the password policy --------------------------------------------------------------------------


def failures(password: str, username: str = "dev@example.com", **overrides: Any) -> list[str]:
    return service(**overrides).policy.failures(password, username=username)


def test_a_long_unremarkable_passphrase_passes() -> None:
    assert failures("violet tugboat under seven lanterns") == []


def test_every_unicode_character_is_allowed() -> None:
    assert failures("Grüße aus Köln 🚲 и 東京 ✓") == []
    assert failures("tabs\tand\nnewlines in a passphrase") == []


def test_minimum_length_defaults_to_15_and_is_configurable() -> None:
    assert failures("violet tugboat") == ["use at least 15 characters (this one has 14)"]
    assert failures("violet tugboat", password_min_length=8) == []


def test_maximum_length_is_1024_and_at_least_64_is_always_allowed() -> None:
    ok = "".join(chr(0x4E00 + i * 7) for i in range(64))
    assert failures(ok, password_max_length=64) == []
    assert failures("x" + ok, password_max_length=64) == ["use at most 64 characters (this one has 65)"]
    long = "".join(chr(0x4E00 + (i * 7) % 2000) for i in range(1024))
    assert failures(long) == []
    assert failures(long + "z")[0].startswith("use at most 1024 characters")


def test_common_passwords_are_refused_case_insensitively() -> None:
    assert "it is on a list of commonly used passwords" in failures("Password123456789")[0]


def test_the_common_password_list_has_at_least_100000_entries() -> None:
    assert len(common_passwords()) >= 100_000
    raw = importlib.resources.files("fundaments").joinpath("data", "common-passwords.txt.gz").read_bytes()
    lines = gzip.decompress(raw).decode().split("\n")
    long_ones = [line for line in lines if len(line) >= 15][::10_000]
    assert len(long_ones) > 20
    assert all(is_common_password(line) for line in long_ones)
    assert not is_common_password("violet tugboat under seven lanterns")


def test_username_and_its_local_part_are_refused() -> None:
    assert failures("my name is dev@example.com ok") == ["it contains your username"]
    assert failures("DEV is my name and my password") == ["it contains the first part of your username"]


def test_the_application_name_is_refused() -> None:
    assert failures("my Acme Portal passphrase", app_name="Acme Portal") == [
        "it contains the name of this application (Acme Portal)"
    ]


@pytest.mark.parametrize(
    "password",
    ["aaaaaaaaaaaaaaaaaaaa", "abcabcabcabcabcabcab", "ab12ab12ab12ab12ab12", "xyxyxyxyzzxyxyxyxyzz"],
)
def test_repetitive_passwords_are_refused(password: str) -> None:
    assert is_trivially_repetitive(password)
    assert "it repeats the same characters or pattern" in failures(password)


@pytest.mark.parametrize(
    "password",
    ["abcdefghijklmnopqrs", "zyxwvutsrqponmlkjih", "1234567890123456789", "qwertyuiopasdfghjkl"],
)
def test_sequential_passwords_are_refused(password: str) -> None:
    assert is_trivially_sequential(password)
    assert "it is a simple sequence (like abcdef, 123456 or qwerty)" in failures(password)


def test_policy_error_lists_every_failed_rule() -> None:
    with pytest.raises(PasswordPolicyError) as info:
        service(app_name="devapp").policy.check("devdevdev", username="dev@example.com")
    assert info.value.failures == [
        "use at least 15 characters (this one has 9)",
        "it contains the first part of your username",
        "it repeats the same characters or pattern",
    ]
    assert "use at least 15 characters" in str(info.value)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80), st.text(max_size=40))
def test_policy_never_crashes_on_untrusted_input(password: str, username: str) -> None:
    problems = service().policy.failures(password, username=username)
    assert all(isinstance(p, str) and p for p in problems)
    if len(unicodedata.normalize("NFKC", password)) < 15:
        assert problems


# --- the hashing pool -----------------------------------------------------------------------------


async def test_the_pool_refuses_work_beyond_concurrency_plus_queue() -> None:
    pool = HashingPool(concurrency=2, queue_size=1)
    try:
        with pool.reserve(), pool.reserve(), pool.reserve():
            assert pool.in_flight == 3
            with pytest.raises(HashingBusyError) as info, pool.reserve():
                pass
            assert isinstance(info.value, ServiceUnavailable)
        assert pool.in_flight == 0
        with pool.reserve():
            assert await pool.run(sum, [1, 2, 3]) == 6
    finally:
        pool.close()
