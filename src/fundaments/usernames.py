"""Look-alike usernames: one script per name, and a key that names which look alike share.

``аdmin`` (Cyrillic а), ``admın`` (dotless ı) and ``ádmin`` all read as ``admin``. Two rules of
Unicode Technical Standard #39 (Security Mechanisms), applied through ICU's spoof checker, keep
such a name from becoming a second account beside the first:

- :func:`require_single_script` refuses a name that mixes scripts beyond TR 39's *highly
  restrictive* level: one script plus digits and punctuation (``alice@example.com``, ``иван``,
  ``δημήτρης``), or Latin with the script combinations of Japanese (Han, Hiragana, Katakana),
  Chinese (Han, Bopomofo) or Korean (Han, Hangul). Latin with Cyrillic or Greek is refused: those
  are the scripts whose letters look alike. It also refuses digits of two numbering systems
  (``1`` and ``١``) and one combining mark repeated on a letter (invisible in most fonts).
- :func:`lookalike_key` is the TR 39 *skeleton* of the name — every character replaced by the
  prototype it can be confused with (``а`` → ``a``, ``ı`` → ``i``, ``m`` → ``rn``, ``1`` → ``l``)
  — with the accents of Latin, Greek and Cyrillic letters removed, so ``ádmin`` and ``admin``
  share it too. The store keeps it UNIQUE: whichever look-alike registers second is refused.
  Marks of other scripts are kept: there they are vowels and tones, part of the spelling.

Both take the name as :func:`fundaments.user_handler.normalize_username` returns it (NFKC,
case-folded, trimmed). The skeleton works on that lower-case form: ``0`` → ``O`` and ``o`` stay
apart, as TR 39 keeps them.

Why ICU (PyICU) and not ``confusable_homoglyphs``: ICU implements the TR 39 skeleton and the
restriction levels themselves, with the Unicode data of the ICU release (Debian's libicu);
``confusable_homoglyphs`` offers neither a skeleton nor restriction levels — its mixed-script
test refuses every Japanese name (Han with Hiragana) — so the rule would have to be rebuilt on
top of it. The cost of both is in docs/performance.md (bench/usernames.py).
"""

from __future__ import annotations

import functools
import hashlib
import unicodedata

import icu  # PyICU: Unicode TR 39 through ICU's spoof checker

from fundaments.errors import InvalidUsernameError

RESTRICTION_LEVEL = "highly restrictive"  # Unicode TR 39, section 5.2
MAX_KEY_LENGTH = 254  # fundaments_users.username_skeleton
_KEY_DIGEST_CHARS = 63  # a longer skeleton keeps its head and a SHA-256 of the whole, in 254 chars
_RULE = (
    "use the letters of one script — digits and punctuation go with any; Latin may also go with "
    "Han, Hiragana, Katakana, Bopomofo or Hangul (Unicode TR 39 'highly restrictive', against "
    "look-alike names such as 'аdmin' with a Cyrillic а)"
)
# Accents on the letters of these scripts (and on digits and punctuation) do not make a name look
# different enough: ádmin reads as admin. Elsewhere combining marks are vowels and tones.
_ACCENTED_SCRIPTS = frozenset({"Latn", "Grek", "Cyrl", "Zyyy"})
_MARKS = frozenset({"Mn", "Me"})


@functools.cache
def _checker() -> icu.SpoofChecker:
    # Configured once, then only read: ICU's check and skeleton calls are thread-safe on it.
    checker = icu.SpoofChecker()
    checks = icu.USpoofChecks
    checker.setChecks(checks.RESTRICTION_LEVEL | checks.MIXED_NUMBERS | checks.INVISIBLE)
    checker.setRestrictionLevel(icu.URestrictionLevel.HIGHLY_RESTRICTIVE)
    return checker


def _scripts(name: str) -> list[str]:
    """The scripts of ``name``'s letters (Common and Inherited left out), in order of appearance."""
    seen: dict[str, None] = {}
    for ch in name:
        script = icu.Script.getScript(ch)
        if script.getShortName() not in ("Zyyy", "Zinh"):
            seen.setdefault(script.getName().replace("_", " "))
    return list(seen)


def require_single_script(name: str) -> None:
    """Return if ``name`` (normalized) keeps to one script as TR 39 'highly restrictive' defines it.

    Raises InvalidUsernameError stating the rule: mixed scripts (``аdmin``: Latin and Cyrillic),
    digits of two numbering systems, or a combining mark repeated on one letter.
    """
    failed = _checker().check(name)
    checks = icu.USpoofChecks
    if failed & checks.RESTRICTION_LEVEL:
        scripts = _scripts(name)
        mixed = " and ".join(scripts) if len(scripts) > 1 else "scripts"
        raise InvalidUsernameError(f"username mixes {mixed}: {_RULE}")
    if failed & checks.MIXED_NUMBERS:
        raise InvalidUsernameError(
            "username mixes digits of different numbering systems (such as 1 and ١): use digits of "
            "one system (Unicode TR 39, against look-alike names)"
        )
    if failed & checks.INVISIBLE:
        raise InvalidUsernameError(
            "username repeats a combining mark on one letter, which does not show: type each accent "
            "once (Unicode TR 39, against look-alike names)"
        )


def lookalike_key(name: str) -> str:
    """The key that ``name`` (normalized) shares with every name that looks like it.

    The TR 39 skeleton of ``name`` without the accents of Latin, Greek and Cyrillic letters:
    ``admin``, ``аdmin``, ``admın``, ``ádmin`` and ``adrnin`` all give ``adrnin``. At most
    MAX_KEY_LENGTH characters (the skeleton can be longer than the name: ``m`` → ``rn``).
    """
    skeleton = unicodedata.normalize("NFD", _checker().getSkeleton(0, name))
    if skeleton.isascii():  # no marks to drop: most names, and 10x cheaper than the loop below
        return _bounded(skeleton)
    kept: list[str] = []
    strip = False  # whether marks on the current base character are dropped
    for ch in skeleton:
        if unicodedata.category(ch) in _MARKS:
            if not strip:
                kept.append(ch)
            continue
        strip = icu.Script.getScript(ch).getShortName() in _ACCENTED_SCRIPTS
        kept.append(ch)
    return _bounded("".join(kept))


def _bounded(key: str) -> str:
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:_KEY_DIGEST_CHARS]
    return key[: MAX_KEY_LENGTH - _KEY_DIGEST_CHARS - 1] + "~" + digest
