"""Property tests of the parsers of untrusted input: envelopes, PyFundaments records, file headers.

Whatever the bytes, decryption either returns the plaintext that was encrypted or raises
DecryptionError: never another exception, never a different plaintext.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from fundaments.encryption import EncryptionService, envelope, stream
from fundaments.errors import DecryptionError

KEY = "test-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
SALT = bytes.fromhex("00112233445566778899aabbccddeeff")
SERVICE = EncryptionService(KEY, SALT, file_segment_log2=stream.MIN_SEGMENT_LOG2)

ENVELOPE_CHARS = st.sampled_from(list(envelope.ALPHABET + "=+/.\n é\x00"))
SAMPLE = SERVICE.encrypt("sample", context="c")


def mutations() -> st.SearchStrategy[str]:
    """Envelopes with a few characters changed, inserted or removed, and free-form text."""
    edits = st.lists(
        st.tuples(st.integers(0, len(SAMPLE)), st.sampled_from(["set", "insert", "delete"]), ENVELOPE_CHARS),
        max_size=4,
    )

    def apply(changes: list[tuple[int, str, str]]) -> str:
        text = list(SAMPLE)
        for position, action, char in changes:
            position = min(position, len(text))
            if action == "insert":
                text.insert(position, char)
            elif text and position < len(text):
                if action == "set":
                    text[position] = char
                else:
                    del text[position]
        return "".join(text)

    return edits.map(apply) | st.text() | st.text(ENVELOPE_CHARS).map(lambda t: "fe1_" + t)


@settings(max_examples=1500, deadline=None)
@given(token=mutations())
@example(token="fe1_")
@example(token="fe1_" + "A" * 64)
@example(token="fe1_" + "A" * 63 + "=")
def test_any_text_either_decrypts_to_the_original_or_raises_decryption_error(token: str) -> None:
    try:
        plaintext = SERVICE.decrypt_text(token, context="c")
    except DecryptionError:
        return
    assert token == SAMPLE and plaintext == "sample"


@settings(max_examples=1000, deadline=None)
@given(token=st.text(ENVELOPE_CHARS).map(lambda t: "fe1_" + t) | mutations())
def test_an_envelope_that_parses_has_exactly_one_spelling(token: str) -> None:
    try:
        raw = envelope.decode(token)
    except DecryptionError:
        return
    assert envelope.encode(raw) == token


@settings(max_examples=2000, deadline=None)
@given(text=st.text(ENVELOPE_CHARS, max_size=200) | st.text(max_size=50))
@example(text="QUFB==")
@example(text="QQ==QUFB")
@example(text="QU B")
@example(text="QUFBQ")
def test_the_native_codec_decodes_exactly_as_strict_binascii(text: str) -> None:
    """fastpybase64 (native, parses attacker input) against the standard library's strict decoder.

    Outside '+' and '/' (which the native codec accepts like the standard library does, and
    envelope.non_canonical rejects first), both give the same bytes or both refuse.
    """
    assume("+" not in text and "/" not in text)

    def outcome(decoder: object) -> bytes | None:
        try:
            return decoder(text, envelope.ALTCHARS, True)  # type: ignore[operator,no-any-return]
        except ValueError:  # binascii.Error, UnicodeEncodeError
            return None

    assert outcome(envelope.b64decode) == outcome(envelope._decode_stdlib)


@settings(max_examples=500, deadline=None)
@given(token=st.binary())
def test_any_bytes_token_raises_only_decryption_error(token: bytes) -> None:
    with pytest.raises(DecryptionError):
        SERVICE.decrypt(token)


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=10,
)
RECORD_FIELD = st.text(max_size=40) | st.from_regex(
    r"[0-9a-f]{24}|[0-9a-f]{32}|[A-Za-z0-9+/]{0,40}={0,2}", fullmatch=True
)


@settings(max_examples=500, deadline=None)
@given(
    record=st.fixed_dictionaries({"data": RECORD_FIELD, "nonce": RECORD_FIELD, "tag": RECORD_FIELD})
    | st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)
)
def test_any_record_raises_only_decryption_error(record: dict[str, object]) -> None:
    with pytest.raises(DecryptionError):
        SERVICE.decrypt(record)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError):
        SERVICE.decrypt(json.dumps(record))


@settings(max_examples=300, deadline=None)
@given(value=JSON_VALUES)
def test_any_json_text_raises_only_decryption_error(value: object) -> None:
    text = json.dumps(value)
    assume(not text.startswith('"fe1_'))
    with pytest.raises(DecryptionError):
        SERVICE.decrypt(text)


SERVICE_FILE_PLAINTEXT = bytes(range(256)) * 3 + b"tail"


def _encrypted_sample() -> bytes:
    out = io.BytesIO()
    stream.encrypt_stream(
        io.BytesIO(SERVICE_FILE_PLAINTEXT),
        out,
        key_id=SERVICE._current.key_id,
        make_key=lambda salt: SERVICE._file_key(SERVICE._current.key_id, salt),  # type: ignore[return-value,arg-type]
        segment_log2=stream.MIN_SEGMENT_LOG2,
    )
    return out.getvalue()


FILE_SAMPLE = _encrypted_sample()


def _decrypt_bytes(data: bytes) -> bytes:
    out = io.BytesIO()
    stream.decrypt_stream(io.BytesIO(data), out, lookup_key=SERVICE._file_key)
    return out.getvalue()


def test_the_file_sample_decrypts() -> None:
    assert _decrypt_bytes(FILE_SAMPLE) == SERVICE_FILE_PLAINTEXT


@settings(max_examples=800, deadline=None)
@given(
    data=st.binary(max_size=2000)
    | st.tuples(
        st.integers(0, len(FILE_SAMPLE)), st.integers(0, len(FILE_SAMPLE)), st.binary(max_size=40)
    ).map(lambda t: FILE_SAMPLE[: t[0]] + t[2] + FILE_SAMPLE[t[1] :])
    | st.binary(max_size=200).map(lambda b: FILE_SAMPLE[: stream.HEADER_BYTES] + b)
)
def test_any_file_bytes_decrypt_to_the_original_or_raise_decryption_error(data: bytes) -> None:
    try:
        plaintext = _decrypt_bytes(data)
    except DecryptionError:
        return
    assert data == FILE_SAMPLE and plaintext == SERVICE_FILE_PLAINTEXT


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.binary(max_size=3000))
def test_decrypt_file_on_any_bytes_raises_decryption_error_and_writes_nothing(
    tmp_path: Path, data: bytes
) -> None:
    src, dst = tmp_path / "in.enc", tmp_path / "out.bin"
    src.write_bytes(data)
    with pytest.raises(DecryptionError):
        SERVICE.decrypt_file(src, dst)
    assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir()] == ["in.enc"]
