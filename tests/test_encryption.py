"""Encryption at rest: envelopes, context binding, rotation, PyFundaments records, the nonce scheme."""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import threading
from collections.abc import Iterator

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from hypothesis import given, settings
from hypothesis import strategies as st

from fundaments.encryption import (
    AUTHENTICATION_FAILED,
    EPOCH_MESSAGES,
    INVALID_FORMAT,
    EncryptionService,
    envelope,
)
from fundaments.errors import ConfigurationError, DecryptionError

KEY_A = "test-master-key-A-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_B = "test-master-key-B-0123456789abcdefghijklmnopqrstuvwxyz"
KEY_C = "test-master-key-C-0123456789abcdefghijklmnopqrstuvwxyz"
SALT = bytes.fromhex("00112233445566778899aabbccddeeff")


@pytest.fixture(scope="module")
def service_a() -> EncryptionService:
    return EncryptionService(KEY_A, SALT)


@pytest.fixture(scope="module")
def service_b_with_a() -> EncryptionService:
    return EncryptionService(KEY_B, SALT, [KEY_A])


def raw_of(token: str) -> bytes:
    return envelope.decode(token)


def key_id_of(token: str) -> str:
    return raw_of(token)[envelope.HEADER_START : envelope.HEADER_START + 4].hex()


def subkey_of(token: str) -> bytes:
    return raw_of(token)[envelope.HEADER_START : envelope.HEADER_END]


def subkey_and_nonce_of(token: str) -> bytes:
    return raw_of(token)[envelope.HEADER_START : envelope.NONCE_END]


def test_round_trip_text_and_bytes(service_a: EncryptionService) -> None:
    token = service_a.encrypt("SensitiveToken123", context="user:42:api_key")
    assert service_a.decrypt_text(token, context="user:42:api_key") == "SensitiveToken123"
    assert service_a.decrypt(token, context="user:42:api_key") == b"SensitiveToken123"
    assert service_a.decrypt(service_a.encrypt(b"\x00\xff\x80")) == b"\x00\xff\x80"


def test_envelope_is_url_safe_ascii_with_version_and_key_id(service_a: EncryptionService) -> None:
    token = service_a.encrypt("x" * 100)
    assert token.startswith("fe1_")
    assert token.isascii()
    assert set(token) <= set(envelope.ALPHABET)
    assert key_id_of(token) == service_a.key_id
    assert KEY_A not in token


def test_same_plaintext_gives_different_envelopes(service_a: EncryptionService) -> None:
    assert service_a.encrypt("same") != service_a.encrypt("same")


@settings(max_examples=200, deadline=None)
@given(data=st.text(), context=st.none() | st.text(min_size=1))
def test_any_text_round_trips(service_a: EncryptionService, data: str, context: str | None) -> None:
    assert service_a.decrypt_text(service_a.encrypt(data, context=context), context=context) == data


@settings(max_examples=200, deadline=None)
@given(data=st.binary(), context=st.none() | st.text(min_size=1))
def test_any_bytes_round_trip(service_a: EncryptionService, data: bytes, context: str | None) -> None:
    assert service_a.decrypt(service_a.encrypt(data, context=context), context=context) == data


def test_non_ascii_text_round_trips(service_a: EncryptionService) -> None:
    text = "Grüße, 東京, emoji \U0001f510, RTL \u05e9\u05dc\u05d5\u05dd, NUL \x00"
    assert service_a.decrypt_text(service_a.encrypt(text, context="ctx:é"), context="ctx:é") == text


def test_ten_megabyte_values_round_trip(service_a: EncryptionService) -> None:
    data = os.urandom(10 * 1024 * 1024)
    token = service_a.encrypt(data)
    assert service_a.decrypt(token) == data
    text = "ä" * (5 * 1024 * 1024)
    assert service_a.decrypt_text(service_a.encrypt(text)) == text


def test_wrong_context_fails(service_a: EncryptionService) -> None:
    token = service_a.encrypt("secret", context="user:42:api_key")
    for wrong in ("user:43:api_key", "user:42:password", None, ""):
        with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
            service_a.decrypt(token, context=wrong)


def test_context_given_only_at_decryption_fails(service_a: EncryptionService) -> None:
    token = service_a.encrypt("secret")
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        service_a.decrypt(token, context="user:42")


def test_empty_context_is_no_context(service_a: EncryptionService) -> None:
    assert service_a.decrypt_text(service_a.encrypt("x", context=""), context=None) == "x"


def test_every_single_bit_flip_of_a_short_envelope_fails(service_a: EncryptionService) -> None:
    token = service_a.encrypt("short", context="c")
    encoded = token.encode("ascii")
    for position in range(len(encoded)):
        for bit in range(8):
            flipped = bytearray(encoded)
            flipped[position] ^= 1 << bit
            candidate = flipped.decode("latin-1")
            with pytest.raises(DecryptionError):
                service_a.decrypt(candidate, context="c")


def test_every_single_bit_flip_of_the_raw_envelope_fails_authentication(
    service_a: EncryptionService,
) -> None:
    raw = raw_of(service_a.encrypt("short"))
    for position in range(envelope.HEADER_START, len(raw)):  # (the magic bytes: format errors)
        for bit in range(8):
            flipped = bytearray(raw)
            flipped[position] ^= 1 << bit
            with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
                service_a.decrypt(envelope.encode(bytes(flipped)))


def test_truncated_or_extended_envelopes_fail(service_a: EncryptionService) -> None:
    token = service_a.encrypt("some secret value", context="c")
    for cut in range(len(token)):
        with pytest.raises(DecryptionError):
            service_a.decrypt(token[:cut], context="c")
    for suffix in ("A", "AA", "AAA", "AAAA", "=", "==", "===", "====", ".", " ", "\n", token):
        with pytest.raises(DecryptionError):
            service_a.decrypt(token + suffix, context="c")
    raw = raw_of(token)
    for extended in (raw + b"\x00", raw + raw[-16:], raw[:-1]):
        with pytest.raises(DecryptionError):
            service_a.decrypt(envelope.encode(extended), context="c")


def test_non_canonical_spellings_are_rejected(service_a: EncryptionService) -> None:
    for data in (b"a", b"ab"):  # base64 text 2 and 3 mod 4 long: the last character has spare bits
        token = service_a.encrypt(data)
        assert len(token) % 4 in (2, 3) and service_a.decrypt(token) == data
        sibling = envelope.ALPHABET[envelope.SIXBITS[token[-1]] | 1]  # same data bits, a spare bit set
        padded = token + envelope.PADDING[len(token) % 4]
        for spelling in (token[:-1] + sibling, padded, token + "=", token + "===="):
            with pytest.raises(DecryptionError, match=INVALID_FORMAT):
                service_a.decrypt(spelling)
    token = service_a.encrypt(b"abc" * 50)
    standard_alphabet = token.replace("-", "+").replace("_", "/")
    assert standard_alphabet != token
    with pytest.raises(DecryptionError, match=INVALID_FORMAT):
        service_a.decrypt("fe1_" + standard_alphabet[4:])


def test_both_base64_codecs_agree() -> None:
    for size in (0, 1, 2, 3, 47, 48, 49, 255, 256, 257, 5000):
        raw = os.urandom(size)
        text = envelope._encode_stdlib(raw).decode()
        assert envelope.b64encode(raw, envelope.ALTCHARS).decode() == text
        assert envelope._decode_stdlib(text) == raw == envelope.b64decode(text, envelope.ALTCHARS, True)
    # ('+' and '/' are left to envelope.non_canonical, which runs before either decoder.)
    for bad in ("QUF", "QUFB\u00e9", "QU B", "QQ==QUFB", "QUFBQ"):
        with pytest.raises(ValueError):
            envelope._decode_stdlib(bad)
        with pytest.raises(ValueError):
            envelope.b64decode(bad, envelope.ALTCHARS, True)
    for bad in ("QU+B", "QU/B", "QUFBQ", "QR", "QUF", "QQ==", "QUE="):
        assert envelope.non_canonical(bad)
    assert not envelope.non_canonical("QQ") and not envelope.non_canonical("QUE")


def test_errors_use_one_exception_type_with_two_messages(service_a: EncryptionService) -> None:
    other = EncryptionService(KEY_C, SALT)
    with pytest.raises(DecryptionError) as wrong_key:
        other.decrypt(service_a.encrypt("x"))
    with pytest.raises(DecryptionError) as garbage:
        other.decrypt("not an envelope")
    assert str(wrong_key.value) == AUTHENTICATION_FAILED
    assert str(garbage.value) == INVALID_FORMAT
    assert isinstance(garbage.value, ValueError)
    for junk in (None, 42, 3.5, [], {}, {"data": 1}, b"\xff\xfe", "fe1_", "fe1_====", "{", "{}", "fe1."):
        with pytest.raises(DecryptionError, match=INVALID_FORMAT):
            other.decrypt(junk)  # type: ignore[arg-type]


def test_decrypt_text_of_binary_data_names_decrypt_bytes(service_a: EncryptionService) -> None:
    with pytest.raises(DecryptionError, match="use decrypt_bytes"):
        service_a.decrypt_text(service_a.encrypt(b"\xff\xfe"))


def test_encrypt_rejects_non_string_data_and_context(service_a: EncryptionService) -> None:
    with pytest.raises(TypeError):
        service_a.encrypt(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        service_a.encrypt("x", context=42)  # type: ignore[arg-type]


def test_bytes_tokens_are_accepted(service_a: EncryptionService) -> None:
    token = service_a.encrypt("x")
    assert service_a.decrypt(token.encode("ascii")) == b"x"


# --- rotation -------------------------------------------------------------------------------------


def test_rotation_old_data_decrypts_new_data_uses_new_key(
    service_a: EncryptionService, service_b_with_a: EncryptionService
) -> None:
    old = service_a.encrypt("old secret", context="row:1")
    assert service_b_with_a.decrypt_text(old, context="row:1") == "old secret"
    new = service_b_with_a.encrypt("new secret", context="row:2")
    assert key_id_of(new) == service_b_with_a.key_id != service_a.key_id
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        service_a.decrypt(new, context="row:2")
    assert service_b_with_a.key_ids == [service_b_with_a.key_id, service_a.key_id]


def test_reencrypt_moves_data_to_the_current_key(
    service_a: EncryptionService, service_b_with_a: EncryptionService
) -> None:
    old = service_a.encrypt("rotate me", context="row:1")
    assert service_b_with_a.needs_reencrypt(old)
    moved = service_b_with_a.reencrypt(old, context="row:1")
    assert not service_b_with_a.needs_reencrypt(moved)
    assert key_id_of(moved) == service_b_with_a.key_id
    assert EncryptionService(KEY_B, SALT).decrypt_text(moved, context="row:1") == "rotate me"
    with pytest.raises(DecryptionError):
        service_a.decrypt(moved, context="row:1")
    with pytest.raises(DecryptionError):
        service_b_with_a.reencrypt(old, context="row:2")


def test_retired_key_no_longer_listed_cannot_decrypt(service_a: EncryptionService) -> None:
    old = service_a.encrypt("gone")
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        EncryptionService(KEY_B, SALT, [KEY_C]).decrypt(old)


def test_a_different_salt_is_a_different_key(service_a: EncryptionService) -> None:
    other_salt = EncryptionService(KEY_A, bytes(16))
    assert other_salt.key_id != service_a.key_id
    with pytest.raises(DecryptionError):
        other_salt.decrypt(service_a.encrypt("x"))


def test_key_listed_twice_is_harmless() -> None:
    service = EncryptionService(KEY_A, SALT, [KEY_A, KEY_B, KEY_B])
    assert len(service.key_ids) == 2


def test_key_id_collision_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from fundaments.encryption import keys

    monkeypatch.setattr(keys, "key_id", lambda key: b"\x00\x00\x00\x00")
    with pytest.raises(ConfigurationError, match="share a key id"):
        EncryptionService(KEY_A, SALT, [KEY_B])


def test_key_id_is_not_the_key(service_a: EncryptionService) -> None:
    assert len(bytes.fromhex(service_a.key_id)) == 4
    assert "MasterKey" not in repr(service_a) and KEY_A not in repr(service_a)


# --- PyFundaments records -----------------------------------------------------------------------


def pyfundaments_record(secret: str, salt: bytes, plaintext: str) -> dict[str, str]:
    """What PyFundaments' Encryption.encrypt returned, written from its documented format."""
    key = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=salt, iterations=480_000).derive(
        secret.encode()
    )
    nonce = os.urandom(12)
    sealed = AESGCM(key).encrypt(nonce, plaintext.encode(), None)
    return {
        "data": base64.b64encode(sealed[:-16]).decode(),
        "nonce": nonce.hex(),
        "tag": sealed[-16:].hex(),
    }


@pytest.fixture(scope="module")
def legacy_record() -> dict[str, str]:
    return pyfundaments_record(KEY_A, SALT, "legacy secret ünicode")


def test_pyfundaments_record_decrypts(service_a: EncryptionService, legacy_record: dict[str, str]) -> None:
    assert service_a.decrypt_text(legacy_record) == "legacy secret ünicode"
    assert service_a.decrypt_text(json.dumps(legacy_record)) == "legacy secret ünicode"


def test_pyfundaments_record_decrypts_after_rotation(
    service_b_with_a: EncryptionService, legacy_record: dict[str, str]
) -> None:
    assert service_b_with_a.decrypt_text(legacy_record) == "legacy secret ünicode"


def test_pyfundaments_record_reencrypts_to_a_bound_envelope(
    service_b_with_a: EncryptionService, legacy_record: dict[str, str]
) -> None:
    assert service_b_with_a.needs_reencrypt(legacy_record)
    token = service_b_with_a.reencrypt(legacy_record, context="user:7:note")
    assert token.startswith("fe1_")
    assert service_b_with_a.decrypt_text(token, context="user:7:note") == "legacy secret ünicode"
    with pytest.raises(DecryptionError):
        service_b_with_a.decrypt_text(token)


def test_tampered_or_malformed_pyfundaments_records_fail(
    service_a: EncryptionService, legacy_record: dict[str, str]
) -> None:
    tag = bytearray.fromhex(legacy_record["tag"])
    tag[0] ^= 1
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        service_a.decrypt({**legacy_record, "tag": tag.hex()})
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        EncryptionService(KEY_C, SALT).decrypt(legacy_record)
    malformed = [
        {**legacy_record, "nonce": legacy_record["nonce"][:-2]},
        {**legacy_record, "tag": "zz" * 16},
        {**legacy_record, "data": "not base64!"},
        {**legacy_record, "extra": "x"},
        {"data": legacy_record["data"], "nonce": legacy_record["nonce"]},
        {**legacy_record, "data": 5},
    ]
    for record in malformed:
        with pytest.raises(DecryptionError, match=INVALID_FORMAT):
            service_a.decrypt(record)  # type: ignore[arg-type]
    with pytest.raises(DecryptionError, match=INVALID_FORMAT):
        service_a.decrypt("[" * 100_000)
    with pytest.raises(DecryptionError, match=INVALID_FORMAT):
        service_a.decrypt("{" * 100_000)


# --- the nonce budget ---------------------------------------------------------------------------


def test_each_epoch_uses_distinct_nonces_and_rotates_after_its_budget() -> None:
    service = EncryptionService(KEY_A, SALT)
    seen: set[bytes] = set()
    epochs: set[bytes] = set()
    for _ in range(EPOCH_MESSAGES + 10):
        token = service.encrypt(b"")
        epochs.add(subkey_of(token))
        seen.add(subkey_and_nonce_of(token))
    assert len(seen) == EPOCH_MESSAGES + 10  # no (subkey, nonce) pair twice
    assert len(epochs) == 2


def test_concurrent_threads_never_share_a_nonce() -> None:
    service = EncryptionService(KEY_A, SALT)
    results: list[list[bytes]] = [[] for _ in range(4)]

    def work(out: list[bytes]) -> None:
        for _ in range(3000):
            out.append(subkey_and_nonce_of(service.encrypt(b"t")))

    threads = [threading.Thread(target=work, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [n for out in results for n in out]
    assert len(set(everything)) == len(everything)


def test_two_services_with_one_key_use_different_epochs() -> None:
    first, second = EncryptionService(KEY_A, SALT), EncryptionService(KEY_A, SALT)
    assert subkey_of(first.encrypt(b"")) != subkey_of(second.encrypt(b""))
    assert second.decrypt(first.encrypt(b"cross")) == b"cross"


def _encrypt_in_child(queue: multiprocessing.Queue[bytes], service: EncryptionService) -> None:
    queue.put(subkey_of(service.encrypt(b"child")))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() only")
def test_forked_child_draws_a_new_epoch() -> None:
    service = EncryptionService(KEY_A, SALT)
    parent_epoch = subkey_of(service.encrypt(b"parent"))
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[bytes] = context.Queue()
    child = context.Process(target=_encrypt_in_child, args=(queue, service))
    child.start()
    child_epoch = queue.get(timeout=30)
    child.join(timeout=30)
    assert child_epoch[:4] == parent_epoch[:4]  # same master key
    assert child_epoch != parent_epoch  # but never the parent's subkey and counter


def test_decryption_subkey_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from fundaments.encryption import service as service_module

    monkeypatch.setattr(service_module, "SUBKEY_CACHE_SIZE", 4)
    writers = [EncryptionService(KEY_A, SALT) for _ in range(10)]
    reader = EncryptionService(KEY_A, SALT)
    tokens = [w.encrypt(b"v") for w in writers]
    for _ in range(2):
        assert all(reader.decrypt(t) == b"v" for t in tokens)
    assert len(reader._subkeys) <= 4


@pytest.fixture
def fresh_pbkdf2_cache() -> Iterator[None]:
    from fundaments.encryption import keys

    keys.pbkdf2_sha256.cache_clear()
    yield


def test_keys_derive_with_pbkdf2_600000_iterations(fresh_pbkdf2_cache: None) -> None:
    from fundaments.encryption import keys

    service = EncryptionService(KEY_A, SALT)
    expected = PBKDF2HMAC(algorithm=hashes.SHA256(), length=32, salt=SALT, iterations=600_000).derive(
        KEY_A.encode()
    )
    assert service._current.key == expected
    info = keys.pbkdf2_sha256.cache_info()
    assert info.misses == 2  # the data key and PyFundaments' key, once each
    service.encrypt("x")
    service.decrypt(service.encrypt("y"))
    assert keys.pbkdf2_sha256.cache_info().misses == 2  # never per call


def test_needs_reencrypt_rejects_what_is_not_a_token(service_a: EncryptionService) -> None:
    for junk in ("nope", "fe1_AAAA", {"data": "x"}, b"\xff"):
        with pytest.raises(DecryptionError, match=INVALID_FORMAT):
            service_a.needs_reencrypt(junk)  # type: ignore[arg-type]
    assert not service_a.needs_reencrypt(service_a.encrypt("x").encode())


def test_envelopes_survive_urls_cookies_and_json_unescaped(service_a: EncryptionService) -> None:
    from http.cookies import SimpleCookie
    from urllib.parse import parse_qs, quote

    for data in (b"", b"a", b"ab", b"abc" * 100):
        token = service_a.encrypt(data)
        assert parse_qs(f"t={token}&x=1") == {"t": [token], "x": ["1"]}
        cookie: SimpleCookie = SimpleCookie()
        cookie["t"] = token
        assert cookie.output(header="").strip() == f"t={token}"  # no quoting needed
        assert quote(token, safe="") == token
        assert json.dumps(token) == f'"{token}"'


def test_another_process_with_the_same_keys_reads_and_writes_compatible_envelopes(
    service_a: EncryptionService,
) -> None:
    import subprocess
    import sys

    mine = service_a.encrypt("from the parent", context="row:1")
    script = (
        "import sys\n"
        "from fundaments.encryption import EncryptionService\n"
        f"s = EncryptionService({KEY_A!r}, bytes.fromhex({SALT.hex()!r}))\n"
        "print(s.decrypt_text(sys.argv[1], context='row:1'))\n"
        "print(s.encrypt('from the child', context='row:2'))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script, mine], capture_output=True, text=True, timeout=120, check=True
    )
    echoed, theirs = result.stdout.splitlines()
    assert echoed == "from the parent"
    assert service_a.decrypt_text(theirs, context="row:2") == "from the child"
    assert subkey_of(theirs) != subkey_of(mine)


def test_purpose_keys_are_per_purpose_per_master_key_and_current_first() -> None:
    old = EncryptionService("an-old-master-key-0123456789abcdefghijkl", bytes(16))
    rotated = EncryptionService(
        "a-new-master-key-0123456789abcdefghijklm", bytes(16), ["an-old-master-key-0123456789abcdefghijkl"]
    )
    [(old_id, old_key)] = old.purpose_keys("audit-checkpoint")
    (new_id, new_key), (kept_id, kept_key) = rotated.purpose_keys("audit-checkpoint")
    assert (kept_id, kept_key) == (old_id, old_key)  # the retired key's MACs still verify
    assert new_id == rotated.key_id and new_key != old_key
    assert rotated.purpose_keys("api-key-digest")[0][1] != new_key  # purposes are independent
    assert len(new_key) == 32
    with pytest.raises(ValueError):
        rotated.purpose_keys("")
