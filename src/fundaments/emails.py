"""Email addresses: validated and normalized once, with email-validator, before they are stored.

An address is kept twice: as email-validator normalizes it (the domain in lower case and IDNA-
decoded, the local part in Unicode NFC), which is what mail goes to and what the user sees, and as
its lookup key (that form casefolded), which is unique, so ``Ann@Example.com`` and
``ann@example.com`` cannot belong to two accounts. No deliverability check (no DNS at request time).
"""

from __future__ import annotations

from dataclasses import dataclass

from email_validator import EmailNotValidError, validate_email

from fundaments.errors import InvalidEmailError

MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit; email-validator enforces it too


@dataclass(frozen=True, slots=True)
class EmailAddress:
    address: str  # normalized: what mail is sent to
    key: str  # casefolded: unique per account, what lookups use


def normalize_email(address: object) -> EmailAddress:
    """The normalized address and its key; InvalidEmailError saying what is wrong otherwise."""
    if not isinstance(address, str):
        raise InvalidEmailError("an email address must be a string")
    text = address.strip()
    if not text:
        raise InvalidEmailError("the email address is empty")
    if len(text) > MAX_EMAIL_LENGTH:
        raise InvalidEmailError(f"the email address is longer than {MAX_EMAIL_LENGTH} characters")
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as exc:
        raise InvalidEmailError(f"not a usable email address: {exc}") from None
    return EmailAddress(checked.normalized, checked.normalized.casefold())


def email_key_or_none(address: object) -> str | None:
    """The lookup key of ``address``, or None when it is not an address (for lookups, never raises)."""
    try:
        return normalize_email(address).key
    except InvalidEmailError:
        return None
