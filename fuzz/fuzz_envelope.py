"""atheris harness of the envelope parser: ``EncryptionService.decrypt`` and friends on any input.

The first byte picks what the rest is: the token as bytes, as text (UTF-8 with lone surrogates
kept), or a PyFundaments ``{data, nonce, tag}`` record; and the context. The oracle:

- every failure is a DecryptionError (fundaments.errors), never another exception;
- a success is one of the committed seeds, decrypted to its plaintext: any other input that
  decrypts would be a forgery (or a second spelling of an envelope);
- ``needs_reencrypt`` answers a bool or raises DecryptionError.

Run: python fuzz/run.py (bounded), or python fuzz/fuzz_envelope.py fuzz/corpus/envelope -max_total_time=60
"""

from __future__ import annotations

import contextlib
import sys

import atheris

with atheris.instrument_imports(include=["fundaments", "base64", "json"]):
    from fundaments.encryption import EncryptionService, stream
    from fundaments.errors import DecryptionError

from _target import CONTEXTS, KEY, SALT, seeds  # after the instrumented imports

SERVICE = EncryptionService(KEY, SALT, file_segment_log2=stream.MIN_SEGMENT_LOG2)


def _token(data: bytes) -> tuple[bytes | str, str | None]:
    mode, context = data[0] % 3, CONTEXTS[(data[0] >> 2) % len(CONTEXTS)]
    payload = data[1:]
    if mode == 0:
        return payload, context
    return payload.decode("utf-8", "surrogatepass" if mode == 1 else "surrogateescape"), context


def _identity(token: bytes | str, context: str | None) -> tuple[str, str | None]:
    """The same envelope whether given as bytes or text; None and "" are both "no context"."""
    text = token.decode("latin-1") if isinstance(token, bytes) else token
    return text, context or None


KNOWN: dict[tuple[str, str | None], bytes] = {}
for seed in seeds("envelope"):
    if seed:
        token, context = _token(seed)
        with contextlib.suppress(DecryptionError):  # else a seed of the failure paths
            KNOWN[_identity(token, context)] = SERVICE.decrypt(token, context=context)


def TestOneInput(data: bytes) -> None:  # atheris's name for the target
    if not data:
        return
    try:
        token, context = _token(data)
    except UnicodeDecodeError:
        return
    try:
        plaintext = SERVICE.decrypt(token, context=context)
    except DecryptionError:
        pass
    else:
        # Only a committed seed decrypts; anything else would be a forgery or a second spelling.
        if KNOWN.get(_identity(token, context)) != plaintext:
            raise AssertionError(f"unexpected successful decryption of {data!r}")
    with contextlib.suppress(DecryptionError):
        if not isinstance(SERVICE.needs_reencrypt(token), bool):
            raise AssertionError("needs_reencrypt returned a non-bool")


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
