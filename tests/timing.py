"""Comparing two code paths' durations without a flaky test.

A timing comparison is a statistical claim: on a shared two-core machine one run in a few dozen
lands outside any honest tolerance by noise alone. ``assert_same_time`` measures again (up to
``tries`` times) before it fails, and fails with every try's medians. A real leak (a locked refusal
in 3 ms against an unknown name's 25 ms, a reset request that sends mail only for known addresses)
is outside the tolerance on every try, so the test still fails when the protection is removed.
"""

from __future__ import annotations

import statistics
from collections.abc import Awaitable, Callable

Measure = Callable[[], Awaitable[tuple[list[float], list[float]]]]


async def assert_same_time(
    measure: Measure, *, names: tuple[str, str], tolerance: float = 0.10, tries: int = 3
) -> None:
    """Pass when one run of ``measure`` gives medians within ``tolerance`` of the larger one."""
    seen = []
    for _ in range(tries):
        first, second = await measure()
        a, b = statistics.median(first), statistics.median(second)
        seen.append(f"{names[0]} {a * 1000:.1f} ms vs {names[1]} {b * 1000:.1f} ms")
        if abs(a - b) <= tolerance * max(a, b):
            return
    raise AssertionError(f"medians differ by more than {tolerance:.0%} on every try: " + "; ".join(seen))
