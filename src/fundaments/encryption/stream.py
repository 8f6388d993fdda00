"""Encrypted files: a chunked AEAD stream (the STREAM construction of Tink's streaming AEAD and age).

File layout::

    header (33 bytes): magic "FNDF" | version 1 | log2(segment size) | key id (4) | salt (16)
                       | nonce prefix (7)
    segment 0 .. n-1:  AES-256-GCM(segment of the plaintext) | tag (16)

Every segment holds ``segment size`` plaintext bytes except the last, which holds 0..segment size.
Segment i is sealed under the file key HKDF-Expand(master key, "fundaments/v1/file-key" | salt)
with nonce ``prefix | i (4 bytes, big-endian) | last (1 byte: 1 for the final segment, else 0)``
and the header as associated data. So a segment moved, dropped, duplicated or appended, a file cut
at a segment boundary, or a header changed in any byte fails authentication.

Output goes to a temporary file beside ``dst`` (mode 0600) that is renamed over ``dst`` only when
the whole stream is done; decryption writes a segment only after its tag verified. Memory stays at
a few segment buffers whatever the file size; a worker thread writes one segment while the next is
sealed or opened.
"""

from __future__ import annotations

import os
import queue
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fundaments.encryption.envelope import TAG_BYTES, authentication_failed, invalid_format
from fundaments.encryption.keys import KEY_ID_BYTES

MAGIC = b"FNDF"
VERSION = 1
SALT_BYTES = 16
NONCE_PREFIX_BYTES = 7
HEADER_BYTES = len(MAGIC) + 2 + KEY_ID_BYTES + SALT_BYTES + NONCE_PREFIX_BYTES
MIN_SEGMENT_LOG2 = 8  # 256 bytes: small segments only make sense in tests
MAX_SEGMENT_LOG2 = 24  # 16 MiB: bounds the memory a crafted header can make the reader allocate
DEFAULT_SEGMENT_LOG2 = 20  # 1 MiB: one tag per MiB, and few enough reads and writes
MAX_SEGMENTS = 2**32  # the index is 4 bytes in the nonce

Progress = Callable[[int, int], None]
# cryptography 45+ seals into a caller's buffer: no 1 MiB allocation (and page faults) per segment,
# which halves the AES-GCM step. Older versions return a new bytes object.
IN_PLACE = hasattr(AESGCM, "encrypt_into") and hasattr(AESGCM, "decrypt_into")


class Readable(Protocol):
    def readinto(self, buffer: memoryview, /) -> int | None: ...


class Writable(Protocol):
    def write(self, data: bytes | memoryview, /) -> int | None: ...


PathLike = str | os.PathLike[str]


def segment_nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= MAX_SEGMENTS:
        raise ValueError("file too large for one encrypted stream (2**32 segments)")
    return prefix + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")


def build_header(segment_log2: int, key_id: bytes, salt: bytes, nonce_prefix: bytes) -> bytes:
    return MAGIC + bytes((VERSION, segment_log2)) + key_id + salt + nonce_prefix


def parse_header(header: bytes) -> tuple[int, bytes, bytes, bytes]:
    """``(segment_log2, key_id, salt, nonce_prefix)``; DecryptionError("invalid data format") if bad."""
    if len(header) != HEADER_BYTES or header[:4] != MAGIC or header[4] != VERSION:
        raise invalid_format()
    segment_log2 = header[5]
    if not MIN_SEGMENT_LOG2 <= segment_log2 <= MAX_SEGMENT_LOG2:
        raise invalid_format()
    key_id = header[6 : 6 + KEY_ID_BYTES]
    salt_end = 6 + KEY_ID_BYTES + SALT_BYTES
    return segment_log2, key_id, header[6 + KEY_ID_BYTES : salt_end], header[salt_end:]


def _read_full(source: Readable, buffer: bytearray) -> int:
    """Fill ``buffer`` from ``source``; fewer bytes only at end of file."""
    view = memoryview(buffer)
    filled = 0
    while filled < len(buffer):
        n = source.readinto(view[filled:])
        if not n:
            break
        filled += n
    return filled


class _WriteBehind:
    """Writes segments on a worker thread while the caller seals or opens the next one.

    AES-GCM holds the GIL but ``write`` releases it, so the two overlap: on a machine where the
    cipher runs no faster than the disk, that is most of the difference to a plain copy
    (docs/performance.md). Two buffers take turns, so memory stays constant. A failed write is
    raised in the caller at its next ``buffer()`` or when the ``with`` block ends; later segments
    are dropped.
    """

    def __init__(self, out: Writable, size: int, buffers: int = 2) -> None:
        self._out = out
        self._free: queue.SimpleQueue[memoryview] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(memoryview(bytearray(size)))
        self._pending: queue.SimpleQueue[tuple[memoryview, int] | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="fundaments-file-writer", daemon=True)
        self._thread.start()

    def buffer(self) -> memoryview:
        """A buffer no write is using; the caller fills it and hands it to ``write``."""
        view = self._free.get()
        self._raise_error()
        return view

    def write(self, view: memoryview, length: int) -> None:
        self._pending.put((view, length))

    def __enter__(self) -> _WriteBehind:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        # Also when the caller failed: no write may outlive the output file.
        self._pending.put(None)
        self._thread.join()  # every segment handed over is written (or dropped after an error)
        if exc_type is None:
            self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run(self) -> None:
        while (item := self._pending.get()) is not None:
            view, length = item
            try:
                if self._error is None:
                    self._out.write(view[:length])
            except BaseException as exc:  # handed to the caller's thread
                self._error = exc
            finally:
                self._free.put(view)


class _ReadAhead:
    """Reads segments on a worker thread ahead of the caller (``readinto`` releases the GIL).

    ``next()`` gives ``(buffer, filled)`` in file order, ``filled < len(buffer)`` only at the end;
    the caller hands each buffer back with ``release``. Three buffers: the caller's segment, the
    one after it (which tells whether this one is the last), and the one being read.
    """

    def __init__(self, source: Readable, size: int, buffers: int = 3) -> None:
        self._source = source
        self._free: queue.SimpleQueue[bytearray | None] = queue.SimpleQueue()
        for _ in range(buffers):
            self._free.put(bytearray(size))
        self._ready: queue.SimpleQueue[tuple[bytearray, int] | BaseException] = queue.SimpleQueue()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="fundaments-file-reader", daemon=True)
        self._thread.start()

    def next(self) -> tuple[bytearray, int]:
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def release(self, buffer: bytearray) -> None:
        self._free.put(buffer)

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stopping = True
        self._free.put(None)  # wakes the reader if it waits for a buffer
        self._thread.join()

    def _run(self) -> None:
        try:
            while not self._stopping and (buffer := self._free.get()) is not None:
                filled = _read_full(self._source, buffer)
                self._ready.put((buffer, filled))
                if filled < len(buffer):
                    return  # end of file
        except BaseException as exc:  # handed to the caller's thread
            self._ready.put(exc)


def _segments(reader: _ReadAhead, size: int) -> Iterator[tuple[int, memoryview, bool]]:
    """``(index, segment, last)`` in file order, one segment read ahead.

    A full segment is the last one only if nothing follows it, hence the read-ahead. Each segment's
    view is released and its buffer handed back to the reader when the caller asks for the next.
    """
    current, filled = reader.next()
    index = 0
    while True:
        following, ahead = reader.next() if filled == size else (None, 0)
        last = ahead == 0
        with memoryview(current)[:filled] as segment:
            yield index, segment, last
        reader.release(current)
        if following is None or last:
            return
        current, filled = following, ahead
        index += 1


@contextmanager
def atomic_output(dst: PathLike) -> Iterator[BinaryIO]:
    """A new 0600 file beside ``dst``, renamed over it only if the block finishes; else removed."""
    target = Path(dst)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as out:  # buffered: write() never returns short
            yield out
        os.replace(tmp_name, target)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


def encrypt_stream(
    source: Readable,
    out: Writable,
    *,
    key_id: bytes,
    make_key: Callable[[bytes], AESGCM],
    segment_log2: int = DEFAULT_SEGMENT_LOG2,
    total: int = 0,
    progress: Progress | None = None,
) -> None:
    if not MIN_SEGMENT_LOG2 <= segment_log2 <= MAX_SEGMENT_LOG2:
        raise ValueError(f"segment size must be 2**{MIN_SEGMENT_LOG2} .. 2**{MAX_SEGMENT_LOG2} bytes")
    salt = os.urandom(SALT_BYTES)
    prefix = os.urandom(NONCE_PREFIX_BYTES)
    header = build_header(segment_log2, key_id, salt, prefix)
    aead = make_key(salt)
    out.write(header)
    size = 1 << segment_log2
    done = 0
    with _ReadAhead(source, size) as reader, _WriteBehind(out, size + TAG_BYTES) as writer:
        for index, plaintext, last in _segments(reader, size):
            sealed, length = writer.buffer(), len(plaintext) + TAG_BYTES
            nonce = segment_nonce(prefix, index, last)
            if IN_PLACE:
                aead.encrypt_into(nonce, plaintext, header, sealed[:length])
            else:  # pragma: no cover - cryptography < 45
                sealed[:length] = aead.encrypt(nonce, plaintext, header)
            writer.write(sealed, length)
            done += len(plaintext)
            if progress is not None:
                progress(done, total)


def decrypt_stream(
    source: Readable,
    out: Writable,
    *,
    lookup_key: Callable[[bytes, bytes], AESGCM | None],
    total: int = 0,
    progress: Progress | None = None,
) -> None:
    header = bytearray(HEADER_BYTES)
    if _read_full(source, header) != HEADER_BYTES:
        raise invalid_format()
    header_bytes = bytes(header)
    segment_log2, key_id, salt, prefix = parse_header(header_bytes)
    aead = lookup_key(key_id, salt)
    if aead is None:
        raise authentication_failed()
    size = (1 << segment_log2) + TAG_BYTES
    done = HEADER_BYTES
    with _ReadAhead(source, size) as reader, _WriteBehind(out, size - TAG_BYTES) as writer:
        for index, sealed, last in _segments(reader, size):
            if len(sealed) < TAG_BYTES:  # cut inside a tag, or no segment at all
                raise authentication_failed()
            opened, length = writer.buffer(), len(sealed) - TAG_BYTES
            try:
                nonce = segment_nonce(prefix, index, last)
                if IN_PLACE:
                    # The buffer may hold unverified bytes if the tag fails; they never leave it.
                    aead.decrypt_into(nonce, sealed, header_bytes, opened[:length])
                else:  # pragma: no cover - cryptography < 45
                    opened[:length] = aead.decrypt(nonce, sealed, header_bytes)
            except (InvalidTag, ValueError):
                raise authentication_failed() from None
            writer.write(opened, length)  # only authenticated plaintext is ever written
            done += len(sealed)
            if progress is not None:
                progress(done, total)
