"""Integer searches for the largest setting that fits (planner.fit, suggestions.py)."""

from __future__ import annotations

from collections.abc import Callable


def largest(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """Largest v in [lo, hi] with fits(v), for fits true below a threshold: None if not fits(lo). Bisection."""
    if hi < lo or not fits(lo):
        return None
    if fits(hi):
        return hi
    good, bad = lo, hi
    return _bisect(fits, good, bad)


def near_fit(fits: Callable[[int], bool], guess: int, shifted: Callable[[int], int | None]) -> int | None:
    """A value that fits near `guess` (a threshold found with a cheaper model), with few probes of the exact fits:
    the guess if it fits, or the cheaper model's threshold `shifted(guess)` moved by the two models' difference
    there, if that is larger and fits too; else the largest fitting value below the guess, from the guess downward
    in steps of 1, 2, 4, ... then bisection. None when nothing from the guess down to 1 fits."""
    if fits(guess):
        up = shifted(guess)
        return up if up is not None and up > guess and fits(up) else guess
    bad, step = guess, 1
    while bad > 1:
        probe = max(1, bad - step)
        if fits(probe):
            return _bisect(fits, probe, bad)
        bad, step = probe, step * 2
    return None


def _bisect(fits: Callable[[int], bool], good: int, bad: int) -> int:
    """The largest v in [good, bad) with fits(v), given fits(good) and not fits(bad)."""
    while bad - good > 1:
        mid = (good + bad) // 2
        good, bad = (mid, bad) if fits(mid) else (good, mid)
    return good
