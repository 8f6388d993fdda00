"""Write the committed seeds of fuzz/corpus/{envelope,stream}/seed-* (run once; they are small).

python fuzz/make_seeds.py
"""

from __future__ import annotations

import base64
import io
import json

from _target import CORPUS, KEY, SALT

from fundaments.encryption import EncryptionService, stream

SERVICE = EncryptionService(KEY, SALT, file_segment_log2=stream.MIN_SEGMENT_LOG2)


def _write(name: str, seeds: dict[str, bytes]) -> None:
    folder = CORPUS / name
    folder.mkdir(parents=True, exist_ok=True)
    for label, data in seeds.items():
        (folder / f"seed-{label}").write_bytes(data)


def _file(plaintext: bytes) -> bytes:
    out = io.BytesIO()
    key_id = SERVICE._current.key_id
    stream.encrypt_stream(
        io.BytesIO(plaintext),
        out,
        key_id=key_id,
        make_key=lambda salt: SERVICE._file_key(key_id, salt),  # type: ignore[arg-type,return-value]
        segment_log2=stream.MIN_SEGMENT_LOG2,
    )
    return out.getvalue()


def main() -> None:
    text = SERVICE.encrypt("sample").encode()
    with_context = SERVICE.encrypt("alice@example.com", context="users.email").encode()
    legacy = json.dumps(
        {"data": base64.b64encode(b"x" * 16).decode(), "nonce": "AAAAAAAAAAAAAAAA", "tag": "QUJD"}
    ).encode()
    # First byte: mode (bits 0-1: 0 bytes, 1 text, 2 text) and context index (bits 2-3).
    _write(
        "envelope",
        {
            "bytes": b"\x00" + text,
            "text": b"\x01" + text,
            "context": b"\x05" + SERVICE.encrypt("x", context="c").encode(),
            "users-email": bytes([1 | (2 << 2)]) + with_context,
            "legacy": b"\x01" + legacy,
            "empty-prefix": b"\x01fe1_",
        },
    )
    # First byte: bit 7 short reads (1 + byte % 64 at a time), byte % 8 == 7: decrypt_file on disk.
    _write(
        "stream",
        {
            "empty": b"\x00" + _file(b""),
            "one-segment": b"\x00" + _file(b"hello"),
            "three-segments": b"\x83" + _file(bytes(range(256)) * 2 + b"tail"),
            "exact-segment": b"\x07" + _file(b"s" * 256),
            "header-only": b"\x00" + _file(b"")[: stream.HEADER_BYTES],
        },
    )


if __name__ == "__main__":
    main()
