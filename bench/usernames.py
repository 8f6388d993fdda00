"""Cost of the look-alike rules per username against a plain NFKC + case-fold (same process).

    python bench/usernames.py [--repeat 7] [--number 2000]

Prints the median cost per name (µs) over a mix of names (e-mail addresses, Latin, Cyrillic,
Greek, Japanese, Arabic, the attack names) of:
1. the baseline: ``NFKC(NFKC(name).casefold())``, what normalization alone costs;
2. ``normalize_username`` + ``require_single_script`` + ``lookalike_key``: what registration adds
   (ICU's spoof checker through PyICU) — and each of the two rules alone;
3. for comparison, ``confusable_homoglyphs``' ``is_mixed_script`` + ``is_dangerous`` when that
   package is installed (it is not a dependency: ``pip install confusable-homoglyphs``).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import timeit
import unicodedata
from collections.abc import Callable

from fundaments.errors import InvalidUsernameError
from fundaments.user_handler import normalize_username
from fundaments.usernames import lookalike_key, require_single_script

NAMES = [
    "alice@example.com",
    "Bob.Smith+news@example.org",
    "admin",
    "аdmin",  # Cyrillic а: refused
    "admın",
    "ádmin",
    "иван.петров",
    "δημήτρης",
    "東京たろう",
    "محمد",
    "user_2026",
    "a.very.long.name.of.a.service.account@subdomain.example.com",
]


def baseline(name: str) -> str:
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", name).casefold()).strip()


def fundaments_rules(name: str) -> str:
    normalized = normalize_username(name)
    try:
        require_single_script(normalized)
    except InvalidUsernameError:
        return ""
    return lookalike_key(normalized)


def only_script(name: str) -> None:
    with contextlib.suppress(InvalidUsernameError):
        require_single_script(name)


def per_name_us(function: Callable[[str], object], names: list[str], repeat: int, number: int) -> float:
    def run() -> None:
        for name in names:
            function(name)

    times = timeit.repeat(run, repeat=repeat, number=number)
    return statistics.median(times) / (number * len(names)) * 1e6


def main(repeat: int, number: int) -> None:
    normalized = [baseline(n) for n in NAMES]
    rows: list[tuple[str, float]] = [
        ("baseline: NFKC + casefold", per_name_us(baseline, NAMES, repeat, number)),
        ("normalize_username + both rules", per_name_us(fundaments_rules, NAMES, repeat, number)),
        ("require_single_script alone", per_name_us(only_script, normalized, repeat, number)),
        ("lookalike_key alone", per_name_us(lookalike_key, normalized, repeat, number)),
    ]
    try:
        from confusable_homoglyphs import confusables  # type: ignore[import-untyped]
    except ImportError:
        pass
    else:

        def homoglyphs(name: str) -> object:
            return confusables.is_mixed_script(name) or confusables.is_dangerous(name)

        cost = per_name_us(homoglyphs, normalized, repeat, number)
        rows.append(("confusable_homoglyphs mixed+dangerous", cost))
    floor = rows[0][1]
    print(f"{len(NAMES)} names, median of {repeat} runs of {number} rounds")
    for label, cost in rows:
        print(f"{label:40s} {cost:8.2f} µs/name   {cost / floor:6.1f}x baseline")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=2000)
    arguments = parser.parse_args()
    main(arguments.repeat, arguments.number)
