"""Look-alike usernames (issue 14): ``аdmin`` (Cyrillic а), ``admın`` (dotless ı) and ``ádmin``
cannot register beside ``admin``; names mixing scripts are refused with the rule in the message;
accounts from before revision 0002 get their look-alike key at start-up — on SQLite and
PostgreSQL (the ``fundaments`` fixture runs each test on both)."""

from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from fundaments import initialize_fundaments
from fundaments.bootstrap import Fundaments
from fundaments.clock import ManualClock
from fundaments.config import Settings
from fundaments.errors import InvalidUsernameError, UserExistsError
from fundaments.security import Security
from fundaments.user_handler import UserHandler, normalize_username
from fundaments.usernames import MAX_KEY_LENGTH, lookalike_key, require_single_script

PASSWORD = "correct horse battery staple"
PASSLIB = "$pbkdf2-sha256$29000$d06JEaL0vleKMaYUAuCcEw$tUEGSJTiG/l8neGF46Qj6JAfHdkJjGRWdcqDaOHpQPs"

ATTACKS = {
    "аdmin": InvalidUsernameError,  # U+0430 CYRILLIC SMALL LETTER A: Latin and Cyrillic mixed
    "admın": UserExistsError,  # U+0131 LATIN SMALL LETTER DOTLESS I: Latin, its skeleton is admin's
    "ádmin": UserExistsError,  # Latin with an accent: accents are not part of the look-alike key
    "АDMIN": InvalidUsernameError,  # upper-case Cyrillic А with Latin letters
    "ADMİN": UserExistsError,  # İ case-folds to i + a combining dot
    "ADMIN": UserExistsError,  # the same name: normalization already folds case
    "adrnin": UserExistsError,  # r + n reads as m (a TR 39 confusable)
}


def security_of(fundaments: Fundaments) -> Security:
    security: Security = fundaments["security"]
    return security


async def usernames(fundaments: Fundaments) -> list[str]:
    rows = await fundaments["db"].fetch("SELECT username FROM fundaments_users ORDER BY id")
    return [row["username"] for row in rows]


async def insert_legacy_user(fundaments: Fundaments, username: str) -> int:
    """A row as revision 0001 wrote it: no look-alike key."""
    value = await fundaments["db"].fetchval(
        "INSERT INTO fundaments_users (username, password_hash, created_at, updated_at, "
        "password_changed_at) VALUES ($1, $2, 0, 0, 0) RETURNING id",
        username,
        PASSLIB,
    )
    return int(value)


async def keys(fundaments: Fundaments) -> dict[str, str | None]:
    rows = await fundaments["db"].fetch(
        "SELECT username, username_skeleton FROM fundaments_users ORDER BY id"
    )
    return {row["username"]: row["username_skeleton"] for row in rows}


# --- the attack: a second "admin" ----------------------------------------------------------------


@pytest.mark.parametrize("lookalike", list(ATTACKS))
async def test_a_lookalike_of_admin_cannot_register_beside_it(fundaments: Fundaments, lookalike: str) -> None:
    security = security_of(fundaments)
    await security.register_user("admin", PASSWORD)
    with pytest.raises(ATTACKS[lookalike]):
        await security.register_user(lookalike, PASSWORD)
    with pytest.raises(ATTACKS[lookalike]):  # an imported hash takes the same checks
        await security.register_user(lookalike, password_hash=PASSLIB)
    assert await usernames(fundaments) == ["admin"]


@pytest.mark.parametrize("first", ["admın", "ádmin", "adrnin"])
async def test_admin_cannot_register_once_a_lookalike_holds_the_key(
    fundaments: Fundaments, first: str
) -> None:
    security = security_of(fundaments)
    await security.register_user(first, PASSWORD)
    with pytest.raises(UserExistsError, match=r"looks like 'admin'.*Unicode TR 39"):
        await security.register_user("admin", PASSWORD)
    assert await usernames(fundaments) == [first]


async def test_a_whole_script_lookalike_is_refused_by_its_key(fundaments: Fundaments) -> None:
    # "асе" is all Cyrillic (а, с, е): one script, so allowed on its own — but it reads as "ace".
    security = security_of(fundaments)
    await security.register_user("ace", PASSWORD)
    with pytest.raises(UserExistsError, match="looks like"):
        await security.register_user("асе", PASSWORD)
    assert await usernames(fundaments) == ["ace"]


async def test_the_unique_key_refuses_a_lookalike_inside_a_transaction_that_goes_on(
    fundaments: Fundaments,
) -> None:
    """UserHandler.create (no pre-check): the key's UNIQUE constraint is what refuses the second
    name, without a failing statement — a PostgreSQL transaction stays usable after the refusal."""
    uh: UserHandler = fundaments["user_handler"]
    async with fundaments["db"].transaction() as tx:
        await uh.create(tx, "admin", PASSLIB)
    async with fundaments["db"].transaction() as tx:
        with pytest.raises(UserExistsError, match="looks like 'admın'"):
            await uh.create(tx, "admın", PASSLIB)
        with pytest.raises(UserExistsError, match="named 'admin'"):
            await uh.create(tx, "Admin", PASSLIB)
        await uh.create(tx, "carol", PASSLIB)
    assert await usernames(fundaments) == ["admin", "carol"]


async def test_a_refused_name_costs_no_password_hash(fundaments: Fundaments) -> None:
    # The password breaks the policy: had it been checked (and hashed) first, PasswordPolicyError.
    security = security_of(fundaments)
    await security.register_user("admin", PASSWORD)
    with pytest.raises(InvalidUsernameError):
        await security.register_user("аdmin", "short")
    with pytest.raises(UserExistsError):
        await security.register_user("ádmin", "short")


# --- the single-script rule ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "scripts"),
    [
        ("pаypal", "Latin and Cyrillic"),
        ("иванjohn", "Cyrillic and Latin"),
        ("ελληνικάabc", "Greek and Latin"),
    ],
)
async def test_a_name_mixing_scripts_is_refused_with_the_rule(
    fundaments: Fundaments, name: str, scripts: str
) -> None:
    with pytest.raises(InvalidUsernameError) as refused:
        await security_of(fundaments).register_user(name, PASSWORD)
    message = str(refused.value)
    assert f"username mixes {scripts}: use the letters of one script" in message
    assert "Unicode TR 39 'highly restrictive'" in message
    assert await usernames(fundaments) == []


def test_digits_of_two_numbering_systems_and_repeated_marks_are_refused() -> None:
    with pytest.raises(InvalidUsernameError, match="digits of different numbering systems"):
        require_single_script("محمد1٢")  # Arabic letters, ASCII and Arabic-Indic digits
    with pytest.raises(InvalidUsernameError, match="repeats a combining mark"):
        require_single_script("bo\u0301\u0301b")


LEGITIMATE = [
    "alice@example.com",
    "user_01",
    "иван",  # Cyrillic
    "δημήτρης",  # Greek
    "محمد",  # Arabic
    "नमस्ते",  # Devanagari, its vowel signs kept in the key
    "東京たろう",  # Han and Hiragana (Japanese)
    "tarō東京",  # Latin with Han: allowed at 'highly restrictive'
    "김철수kim",  # Hangul with Latin (Korean)
    "josé",
]


async def test_single_script_names_of_any_script_register(fundaments: Fundaments) -> None:
    security = security_of(fundaments)
    for name in LEGITIMATE:
        await security.register_user(name, PASSWORD)
    assert await usernames(fundaments) == [normalize_username(n) for n in LEGITIMATE]
    assert await security.get_user_by_username("Иван") is not None


def test_lookalike_keys_of_the_attack_names_are_admins() -> None:
    for name in ["admin", "аdmin", "admın", "ádmin", "ADMİN", "adrnin", "àdmìn"]:
        assert lookalike_key(normalize_username(name)) == lookalike_key("admin"), name
    assert lookalike_key("paypa1") == lookalike_key("paypal")
    assert lookalike_key("नमस्ते") != lookalike_key("नमस्त")  # marks of other scripts count
    assert lookalike_key("bob") != lookalike_key("rob")


@hsettings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=300))
def test_every_usable_name_has_a_bounded_key_and_an_accent_does_not_change_it(text: str) -> None:
    try:
        name = normalize_username(text)
    except InvalidUsernameError:
        return
    key = lookalike_key(name)
    assert 0 < len(key) <= MAX_KEY_LENGTH
    assert lookalike_key(name) == key
    assert lookalike_key("é" + name) == lookalike_key("e" + name)


def test_long_names_keep_distinct_keys() -> None:
    first, second = "m" * 254, "m" * 253 + "n"
    assert len(lookalike_key(first)) == MAX_KEY_LENGTH
    assert lookalike_key(first) != lookalike_key(second)


# --- accounts from before revision 0002 ---------------------------------------------------------


async def test_start_up_gives_old_accounts_their_key_and_keeps_lookalikes_both(
    make_settings: Callable[..., Settings],
    clock: ManualClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("fundaments.user_handler.LOOKALIKE_BACKFILL_BATCH", 2)  # several batches
    settings = make_settings()
    f = await initialize_fundaments(settings, clock=clock, configure_logs=False)
    try:
        bob = await insert_legacy_user(f, "bob")
        bob_cyrillic = await insert_legacy_user(f, "bоb")  # Cyrillic о: allowed before this rule
        for name in ["carol", "dave", "erin"]:
            await insert_legacy_user(f, name)
    finally:
        await f.close()

    caplog.set_level(logging.WARNING, logger="fundaments.user_handler")
    f = await initialize_fundaments(settings, clock=clock, configure_logs=False)  # start() backfills
    try:
        assert await keys(f) == {
            "bob": "bob",
            "bоb": None,  # the later look-alike keeps no key; both accounts stay
            "carol": "carol",
            "dave": "dave",
            "erin": "erin",
        }
        [warning] = [r for r in caplog.records if "look-alike" in r.getMessage()]
        assert f"accounts {bob} and {bob_cyrillic}" in warning.getMessage()
        assert "bob" not in warning.getMessage() and "bоb" not in warning.getMessage()
        with pytest.raises(UserExistsError, match="looks like"):
            await security_of(f).register_user("bób", PASSWORD)  # the backfilled key protects bob
        assert await f["user_handler"].backfill_lookalike_keys() == 0  # idempotent
        assert len(await usernames(f)) == 5
    finally:
        await f.close()


async def test_backfill_writes_each_missing_key_once(fundaments: Fundaments) -> None:
    handler: UserHandler = fundaments["user_handler"]
    for name in ["frank", "grace"]:
        await insert_legacy_user(fundaments, name)
    assert await handler.backfill_lookalike_keys() == 2
    assert await handler.backfill_lookalike_keys() == 0
    assert await keys(fundaments) == {"frank": "frank", "grace": "grace"}
