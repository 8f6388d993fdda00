"""What both harnesses share: one fixed test key, and the seeds made with it (fuzz/make_seeds.py).

Never a real key: these are the keys of the test suite, so committed seeds stay decryptable.
"""

from __future__ import annotations

from pathlib import Path

KEY = "test-master-key-0123456789abcdefghijklmnopqrstuvwxyz"
SALT = bytes.fromhex("00112233445566778899aabbccddeeff")
CORPUS = Path(__file__).resolve().parent / "corpus"
CONTEXTS = (None, "c", "users.email", "")  # selected by a byte of the input (caller-chosen, not untrusted)


def seeds(name: str) -> list[bytes]:
    """The committed seed inputs of one harness (the files named seed-*)."""
    return [path.read_bytes() for path in sorted((CORPUS / name).glob("seed-*"))]
