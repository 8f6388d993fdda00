"""Property tests of the second-factor code parser: untrusted input never raises (None is the one
documented answer to anything that is not a code) and every typing of a real code reads back."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from fundaments.mfa import (
    CROCKFORD,
    MAX_CODE_INPUT,
    RECOVERY_CODE_CHARS,
    format_recovery_code,
    new_recovery_code,
    parse_code,
)

untrusted = st.one_of(
    st.text(max_size=100),
    st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=40),  # surrogates too
    st.text(alphabet="0123456789 -_", max_size=30),
    st.text(alphabet=CROCKFORD + "ilo -", max_size=30),
    st.binary(max_size=30),
    st.integers(),
    st.none(),
    st.floats(),
)

canonical_codes = st.text(alphabet=CROCKFORD, min_size=RECOVERY_CODE_CHARS, max_size=RECOVERY_CODE_CHARS)


@given(untrusted)
def test_any_input_parses_to_none_or_a_well_formed_code(value: object) -> None:
    parsed = parse_code(value)
    if parsed is None:
        return
    kind, code = parsed
    assert isinstance(value, str) and len(value) <= MAX_CODE_INPUT
    if kind == "totp":
        assert len(code) == 6 and code.isascii() and code.isdigit()
    else:
        assert kind == "recovery_code" and len(code) == RECOVERY_CODE_CHARS
        assert set(code) <= set(CROCKFORD)
    assert parse_code(code) == parsed  # the canonical form is a fixed point


@given(canonical_codes, st.lists(st.sampled_from([" ", "-", "  ", "\t"]), max_size=6), st.booleans())
def test_every_typing_of_a_recovery_code_reads_back(code: str, separators: list[str], lower: bool) -> None:
    shown = format_recovery_code(code)
    typed = shown.lower() if lower else shown
    for i, sep in enumerate(separators):  # extra spaces and dashes anywhere
        at = (i * 5) % (len(typed) + 1)
        typed = typed[:at] + sep + typed[at:]
    assert parse_code(typed) == ("recovery_code", code)


@given(canonical_codes)
def test_look_alike_letters_read_as_the_digits_they_resemble(code: str) -> None:
    typed = code.replace("1", "I").replace("0", "O")
    assert parse_code(typed) == ("recovery_code", code)
    assert parse_code(code.replace("1", "l")) == ("recovery_code", code)


@given(st.integers(0, 999_999), st.sampled_from(["", " ", "-"]))
def test_a_totp_code_reads_with_or_without_a_separator(number: int, sep: str) -> None:
    digits = f"{number:06d}"
    assert parse_code(digits[:3] + sep + digits[3:]) == ("totp", digits)


def test_new_recovery_codes_are_80_bits_of_the_crockford_alphabet() -> None:
    codes = {new_recovery_code() for _ in range(200)}
    assert len(codes) == 200
    assert all(len(c) == RECOVERY_CODE_CHARS and set(c) <= set(CROCKFORD) for c in codes)
    assert len(CROCKFORD) == 32 and RECOVERY_CODE_CHARS * 5 == 80
