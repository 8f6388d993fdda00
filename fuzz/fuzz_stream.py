"""atheris harness of the file-stream parser: ``stream.decrypt_stream`` / ``decrypt_file`` on any bytes.

The first byte picks the reader (whole reads, or short reads of 1..64 bytes, which real pipes and
sockets give) and whether to go through ``decrypt_file`` on disk. The oracle:

- every failure is a DecryptionError (fundaments.errors), never another exception;
- a success is one of the committed seeds, decrypted to its plaintext;
- ``decrypt_file`` leaves nothing behind on failure: no dst, no .partial file.

Run: python fuzz/run.py (bounded), or python fuzz/fuzz_stream.py fuzz/corpus/stream -max_total_time=60
"""

from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["fundaments", "base64", "json"]):
    from fundaments.encryption import EncryptionService, stream
    from fundaments.errors import DecryptionError

from _target import KEY, SALT, seeds  # after the instrumented imports

SERVICE = EncryptionService(KEY, SALT, file_segment_log2=stream.MIN_SEGMENT_LOG2)
SCRATCH = Path(tempfile.mkdtemp(prefix="fuzz-stream-"))


class ShortReader:
    """A source whose readinto returns at most ``step`` bytes at a time."""

    def __init__(self, data: bytes, step: int) -> None:
        self._source = io.BytesIO(data)
        self._step = step

    def readinto(self, buffer: memoryview, /) -> int | None:
        return self._source.readinto(buffer[: self._step])


def _decrypt(data: bytes) -> bytes:
    selector, payload = data[0], data[1:]
    if selector % 8 == 7:  # one input in eight through the file API, on disk
        src, dst = SCRATCH / "in.enc", SCRATCH / "out.bin"
        src.write_bytes(payload)
        try:
            SERVICE.decrypt_file(src, dst)
        except DecryptionError:
            left = sorted(p.name for p in SCRATCH.iterdir())
            if left != ["in.enc"]:
                raise AssertionError(f"decrypt_file failed but left {left}") from None
            raise
        plaintext = dst.read_bytes()
        dst.unlink()
        return plaintext
    source = ShortReader(payload, 1 + selector % 64) if selector & 0x80 else io.BytesIO(payload)
    out = io.BytesIO()
    stream.decrypt_stream(source, out, lookup_key=SERVICE._file_key)
    return out.getvalue()


KNOWN: dict[bytes, bytes] = {}
for seed in seeds("stream"):
    if len(seed) > 1:
        with contextlib.suppress(DecryptionError):  # else a seed of the failure paths
            KNOWN[seed[1:]] = _decrypt(seed)


def TestOneInput(data: bytes) -> None:  # atheris's name for the target
    if not data:
        return
    try:
        plaintext = _decrypt(data)
    except DecryptionError:
        return
    if KNOWN.get(data[1:]) != plaintext:
        raise AssertionError(f"unexpected successful decryption of {data[:80]!r}... ({len(data)} bytes)")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
