"""Encrypted files: round trips at every size edge, and every way to tamper with the stream fails.

Tests use 256-byte segments so that "several segments" and "every boundary" stay small; the
construction is the same at the default 1 MiB.
"""

from __future__ import annotations

import errno
import io
import os
import threading
from pathlib import Path

import pytest

from fundaments.encryption import AUTHENTICATION_FAILED, INVALID_FORMAT, EncryptionService, stream
from fundaments.encryption.keys import file_key
from fundaments.errors import DecryptionError

KEY = "test-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
OTHER_KEY = "another-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
SALT = bytes.fromhex("00112233445566778899aabbccddeeff")
LOG2 = stream.MIN_SEGMENT_LOG2
SEGMENT = 1 << LOG2
SEALED = SEGMENT + 16
HEADER = stream.HEADER_BYTES


@pytest.fixture(scope="module")
def service() -> EncryptionService:
    return EncryptionService(KEY, SALT, file_segment_log2=LOG2)


def encrypt(service: EncryptionService, tmp_path: Path, data: bytes) -> bytes:
    src, dst = tmp_path / "plain.bin", tmp_path / "sealed.enc"
    src.write_bytes(data)
    service.encrypt_file(src, dst)
    return dst.read_bytes()


def assert_rejected(
    service: EncryptionService, tmp_path: Path, sealed: bytes, message: str | None = None
) -> None:
    src, dst = tmp_path / "tampered.enc", tmp_path / "out.bin"
    src.write_bytes(sealed)
    with pytest.raises(DecryptionError) as caught:
        service.decrypt_file(src, dst)
    if message is not None:
        assert str(caught.value) == message
    assert not dst.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize(
    "size",
    [0, 1, SEGMENT - 1, SEGMENT, SEGMENT + 1, 2 * SEGMENT, 3 * SEGMENT + 7, 10 * SEGMENT],
)
def test_round_trip_at_size_edges(service: EncryptionService, tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    sealed = encrypt(service, tmp_path, data)
    segments = max(1, -(-size // SEGMENT))
    assert len(sealed) == HEADER + size + 16 * segments
    (tmp_path / "in.enc").write_bytes(sealed)
    service.decrypt_file(tmp_path / "in.enc", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == data


def test_output_files_are_private(service: EncryptionService, tmp_path: Path) -> None:
    encrypt(service, tmp_path, b"x")
    assert (tmp_path / "sealed.enc").stat().st_mode & 0o777 == 0o600


def test_progress_reports_each_segment(service: EncryptionService, tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    src = tmp_path / "plain.bin"
    src.write_bytes(os.urandom(3 * SEGMENT + 5))
    service.encrypt_file(src, tmp_path / "s.enc", progress=lambda done, total: calls.append((done, total)))
    assert calls == [
        (SEGMENT, 3 * SEGMENT + 5),
        (2 * SEGMENT, 3 * SEGMENT + 5),
        (3 * SEGMENT, 3 * SEGMENT + 5),
        (3 * SEGMENT + 5, 3 * SEGMENT + 5),
    ]


def test_same_file_twice_gives_different_ciphertexts(service: EncryptionService, tmp_path: Path) -> None:
    assert encrypt(service, tmp_path, b"same") != encrypt(service, tmp_path, b"same")


def test_rotation_old_files_decrypt_with_the_key_listed_as_previous(tmp_path: Path) -> None:
    old = EncryptionService(OTHER_KEY, SALT, file_segment_log2=LOG2)
    sealed = encrypt(old, tmp_path, b"old file" * 100)
    rotated = EncryptionService(KEY, SALT, [OTHER_KEY], file_segment_log2=LOG2)
    (tmp_path / "in.enc").write_bytes(sealed)
    rotated.decrypt_file(tmp_path / "in.enc", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"old file" * 100


def test_wrong_key_fails_and_writes_nothing(service: EncryptionService, tmp_path: Path) -> None:
    sealed = encrypt(service, tmp_path, os.urandom(2 * SEGMENT))
    other = EncryptionService(OTHER_KEY, SALT, file_segment_log2=LOG2)
    assert_rejected(other, tmp_path, sealed, AUTHENTICATION_FAILED)


def test_truncation_at_every_segment_boundary_and_mid_segment_fails(
    service: EncryptionService, tmp_path: Path
) -> None:
    sealed = encrypt(service, tmp_path, os.urandom(3 * SEGMENT + 10))
    boundaries = [HEADER + i * SEALED for i in range(4)]
    cuts = {0, 1, HEADER - 1, HEADER, len(sealed) - 1, len(sealed) - 16, len(sealed) - 17}
    cuts |= set(boundaries) | {b + 1 for b in boundaries} | {b + SEALED // 2 for b in boundaries[:3]}
    cuts |= {b - 1 for b in boundaries if b > HEADER}
    for cut in sorted(c for c in cuts if c < len(sealed)):
        assert_rejected(service, tmp_path, sealed[:cut])


def test_truncation_of_an_exact_multiple_at_the_last_boundary_fails(
    service: EncryptionService, tmp_path: Path
) -> None:
    sealed = encrypt(service, tmp_path, os.urandom(3 * SEGMENT))
    assert len(sealed) == HEADER + 3 * SEALED
    assert_rejected(service, tmp_path, sealed[: HEADER + 2 * SEALED], AUTHENTICATION_FAILED)


def test_bit_flips_in_header_body_and_tag_fail(service: EncryptionService, tmp_path: Path) -> None:
    sealed = encrypt(service, tmp_path, os.urandom(2 * SEGMENT + 3))
    for position in range(len(sealed)):
        flipped = bytearray(sealed)
        flipped[position] ^= 1 << (position % 8)
        assert_rejected(service, tmp_path, bytes(flipped))


def test_header_problems_are_format_errors(service: EncryptionService, tmp_path: Path) -> None:
    sealed = encrypt(service, tmp_path, b"data")
    assert_rejected(service, tmp_path, b"PK\x03\x04" + sealed[4:], "invalid data format")
    assert_rejected(service, tmp_path, sealed[:4] + b"\x02" + sealed[5:], INVALID_FORMAT)
    for log2 in (0, LOG2 - 1, stream.MAX_SEGMENT_LOG2 + 1, 255):
        assert_rejected(service, tmp_path, sealed[:5] + bytes([log2]) + sealed[6:], INVALID_FORMAT)
    assert_rejected(service, tmp_path, sealed[:5] + bytes([LOG2 + 1]) + sealed[6:], AUTHENTICATION_FAILED)
    assert_rejected(service, tmp_path, b"", INVALID_FORMAT)


def test_dropped_swapped_duplicated_or_appended_segments_fail(
    service: EncryptionService, tmp_path: Path
) -> None:
    sealed = encrypt(service, tmp_path, os.urandom(3 * SEGMENT + 10))
    header, body = sealed[:HEADER], sealed[HEADER:]
    segments = [body[i : i + SEALED] for i in range(0, len(body), SEALED)]
    assert len(segments) == 4
    s0, s1, s2, s3 = segments
    variants = {
        "drop first": [s1, s2, s3],
        "drop middle": [s0, s2, s3],
        "drop last": [s0, s1, s2],
        "swap": [s1, s0, s2, s3],
        "duplicate": [s0, s1, s1, s2, s3],
        "append a copy": [s0, s1, s2, s3, s3],
        "append junk": [s0, s1, s2, s3, os.urandom(40)],
        "append a tag's worth": [s0, s1, s2, s3, b"\x00" * 16],
    }
    for name, parts in variants.items():
        assert_rejected(service, tmp_path, header + b"".join(parts), AUTHENTICATION_FAILED), name
    other = encrypt(service, tmp_path, os.urandom(3 * SEGMENT + 10))
    spliced = header + s0 + other[HEADER + SEALED : HEADER + 2 * SEALED] + s2 + s3
    assert_rejected(service, tmp_path, spliced, AUTHENTICATION_FAILED)
    assert_rejected(service, tmp_path, other[:HEADER] + body, AUTHENTICATION_FAILED)


def test_no_plaintext_reaches_the_disk_before_the_failing_segment_is_checked(
    service: EncryptionService, tmp_path: Path
) -> None:
    """The output is a hidden temporary file that is deleted on failure: nothing stays behind."""
    sealed = bytearray(encrypt(service, tmp_path, os.urandom(5 * SEGMENT)))
    sealed[-1] ^= 1  # the last tag: every earlier segment is fine
    assert_rejected(service, tmp_path, bytes(sealed), AUTHENTICATION_FAILED)


def test_an_existing_destination_is_left_untouched_on_failure(
    service: EncryptionService, tmp_path: Path
) -> None:
    (tmp_path / "out.bin").write_bytes(b"keep me")
    (tmp_path / "bad.enc").write_bytes(b"garbage")
    with pytest.raises(DecryptionError):
        service.decrypt_file(tmp_path / "bad.enc", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == b"keep me"


def test_failed_encryption_leaves_no_partial_output(service: EncryptionService, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        service.encrypt_file(tmp_path / "missing.bin", tmp_path / "out.enc")
    assert list(tmp_path.iterdir()) == []

    def explode(done: int, total: int) -> None:
        raise RuntimeError("disk full")

    (tmp_path / "in.bin").write_bytes(os.urandom(3 * SEGMENT))
    with pytest.raises(RuntimeError):
        service.encrypt_file(tmp_path / "in.bin", tmp_path / "out.enc", progress=explode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.bin"]


def test_segment_size_is_bounded() -> None:
    with pytest.raises(ValueError):
        EncryptionService(KEY, SALT, file_segment_log2=stream.MAX_SEGMENT_LOG2 + 1)
    with pytest.raises(ValueError):
        stream.segment_nonce(b"\x00" * 7, stream.MAX_SEGMENTS, False)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("direction", ["encrypt", "decrypt"])
def test_a_full_disk_on_the_writer_thread_reaches_the_caller(direction: str) -> None:
    """Segments are written on a worker thread; a full disk (/dev/full: ENOSPC) must still surface,
    stop the reading at once, and leave no thread behind."""
    service = EncryptionService(KEY, SALT, file_segment_log2=16)
    current = service._current
    data = os.urandom(64 << 16)  # 64 segments

    def seal(source: io.BytesIO, out: stream.Writable) -> None:
        stream.encrypt_stream(
            source, out, key_id=current.key_id, make_key=lambda salt: file_key(current, salt), segment_log2=16
        )

    sealed = io.BytesIO()
    seal(io.BytesIO(data), sealed)
    reads: list[int] = []

    class CountingReader(io.BytesIO):
        def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
            reads.append(n := super().readinto(buffer))
            return n

    threads_before = threading.active_count()
    with pytest.raises(OSError) as caught, open("/dev/full", "wb") as full:
        if direction == "encrypt":
            seal(CountingReader(data), full)
        else:
            stream.decrypt_stream(CountingReader(sealed.getvalue()), full, lookup_key=service._file_key)
    assert caught.value.errno == errno.ENOSPC
    assert len(reads) < 8, "kept reading after the disk was full"
    assert threading.active_count() == threads_before


@pytest.mark.parametrize("tampered", [0, 1, 3])
def test_the_writer_receives_only_segments_that_authenticated(
    service: EncryptionService, tmp_path: Path, tampered: int
) -> None:
    """Segments before a tampered one are written; nothing of it or after it ever reaches ``out``
    (AES-GCM opens into the writer's buffer, which is handed over only after the tag verified)."""
    data = os.urandom(5 * SEGMENT)
    sealed = bytearray(encrypt(service, tmp_path, data))
    sealed[HEADER + tampered * SEALED + 3] ^= 0x01
    out = io.BytesIO()
    with pytest.raises(DecryptionError, match=AUTHENTICATION_FAILED):
        stream.decrypt_stream(io.BytesIO(bytes(sealed)), out, lookup_key=service._file_key)
    assert out.getvalue() == data[: tampered * SEGMENT]
