"""The API-key token format: typos are refused by the checksum alone, and the parser of untrusted
input never raises. Nothing here touches a database."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import math
import secrets

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fundaments.api_keys import (
    ALPHABET,
    RANDOM_CHARS,
    TOKEN_LENGTH,
    Digester,
    _checksum,
    checksum_ok,
    network_list,
    new_token,
    scope_covers,
    scope_list,
)
from fundaments.errors import InvalidArgument, RoleError

ALPHABET_AND_MORE = ALPHABET + "_-.~+/=: \x00é"


def test_a_token_is_fk_then_190_random_bits_then_a_6_character_checksum() -> None:
    token = new_token()
    assert token.startswith("fk_") and len(token) == TOKEN_LENGTH == 41
    assert set(token[3:]) <= set(ALPHABET)
    assert RANDOM_CHARS * math.log2(len(ALPHABET)) >= 160
    assert checksum_ok(token)
    assert len({new_token() for _ in range(1000)}) == 1000


def typos(token: str) -> list[str]:
    """Every string one substitution, deletion or insertion away from ``token``."""
    out = []
    for i in range(len(token)):
        out.append(token[:i] + token[i + 1 :])
        out.extend(token[:i] + c + token[i + 1 :] for c in ALPHABET_AND_MORE if c != token[i])
    for i in range(len(token) + 1):
        out.extend(token[:i] + c + token[i:] for c in ALPHABET_AND_MORE)
    return out


def test_every_one_character_typo_of_a_token_fails_the_checksum() -> None:
    for _ in range(5):
        token = new_token()
        wrong = [t for t in typos(token) if checksum_ok(t)]
        assert wrong == []


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_property_a_random_substitution_deletion_or_insertion_is_refused(data: st.DataObject) -> None:
    body = "fk_" + data.draw(st.text(alphabet=ALPHABET, min_size=RANDOM_CHARS, max_size=RANDOM_CHARS))
    token = body + _checksum(body)
    assert checksum_ok(token)
    position = data.draw(st.integers(0, len(token) - 1))
    char = data.draw(st.sampled_from(ALPHABET_AND_MORE).filter(lambda c: c != token[position]))
    kind = data.draw(st.sampled_from(["substitute", "delete", "insert"]))
    if kind == "substitute":
        typo = token[:position] + char + token[position + 1 :]
    elif kind == "delete":
        typo = token[:position] + token[position + 1 :]
    else:
        typo = token[:position] + char + token[position:]
    assert not checksum_ok(typo)


@settings(max_examples=500, deadline=None)
@given(
    value=st.one_of(
        st.text(),
        st.text(alphabet=ALPHABET, min_size=38, max_size=38).map(lambda s: "fk_" + s),
        st.binary(),
        st.integers(),
        st.none(),
        st.lists(st.text()),
    )
)
@example("fk_" + "0" * 38)
@example("fk_" + "\u0660" * 38)  # Arabic-Indic digits: isalnum() but not ASCII
@example("FK_" + "a" * 38)
def test_property_checksum_ok_never_raises_and_accepts_only_well_formed_tokens(value: object) -> None:
    accepted = checksum_ok(value)
    assert accepted in (True, False)
    if accepted:
        assert isinstance(value, str) and value.startswith("fk_") and len(value) == 41 and value.isascii()


def test_the_digest_is_hmac_sha256_under_the_given_key() -> None:
    for key in (secrets.token_bytes(32), secrets.token_bytes(64), secrets.token_bytes(100)):
        token = new_token()
        assert Digester("k1", key).digest(token) == hmac.new(key, token.encode(), hashlib.sha256).digest()


def test_scopes_are_permission_names_and_wildcards_cover_as_in_rbac() -> None:
    assert scope_list(["models:invoke", "models:invoke", "articles:*"]) == ("articles:*", "models:invoke")
    for bad in (["has space"], [""], ["a:**"], [3]):
        with pytest.raises(RoleError):
            scope_list(bad)
    with pytest.raises(InvalidArgument):
        scope_list("models:invoke")  # one string, not a list
    assert scope_covers(("articles:*",), "articles:write")
    assert scope_covers(("*",), "anything:at:all")
    assert not scope_covers(("articles:read",), "articles:write")
    assert not scope_covers(("articles:*",), "articlesx:write")
    assert not scope_covers(("models:invoke",), 42)


def test_the_ip_allowlist_is_parsed_strictly_with_a_clear_error() -> None:
    assert [str(n) for n in network_list(["198.51.100.0/24", "2001:db8::/32", "203.0.113.7"])] == [
        "198.51.100.0/24",
        "2001:db8::/32",
        "203.0.113.7/32",
    ]
    for bad in (["198.51.100.7/24"], ["not an ip"], ["300.1.1.1"], [""], "198.51.100.0/24", [None]):
        with pytest.raises(ValueError, match="allowed_ips"):
            network_list(bad)


@settings(max_examples=300, deadline=None)
@given(entries=st.lists(st.one_of(st.text(max_size=70), st.integers(), st.none()), max_size=5))
def test_property_the_allowlist_parser_raises_only_invalid_argument(entries: list[object]) -> None:
    with contextlib.suppress(InvalidArgument):
        network_list(entries)
