"""`backdate inspect`: which statistics to list, and what to say when none fits.

A user who types an id slightly wrong should get the id they meant, not an empty list: the
pattern is matched against ids and names, and a miss suggests the closest ids.
"""

from __future__ import annotations

import difflib
import fnmatch

from backdate.engine.units import unit_class
from backdate.errors import InputError
from backdate.targets.base import StatisticSummary

WILDCARDS = "*?["


def select_statistics(summaries: list[StatisticSummary], *, pattern: str | None = None,
                      energy: bool = False, where: str = "the target") -> list[StatisticSummary]:
    """The statistics to list: those whose id or name matches `pattern` (a shell pattern,
    case-insensitive; without wildcards, the id itself or a part of it), and with `energy`
    only sums in energy or volume units. No match at all is an InputError with suggestions."""
    chosen = summaries
    if pattern:
        chosen = [s for s in summaries if _matches(s, pattern)]
        if not chosen:
            raise InputError(_no_match(pattern, [s.meta.statistic_id for s in summaries], where))
    if energy:
        chosen = [s for s in chosen if s.meta.has_sum and unit_class(
            s.meta.unit_of_measurement) in ("energy", "volume")]
    return chosen


def _matches(summary: StatisticSummary, pattern: str) -> bool:
    texts = [summary.meta.statistic_id.lower(), (summary.meta.name or "").lower()]
    wanted = pattern.lower()
    if any(c in wanted for c in WILDCARDS):
        return any(fnmatch.fnmatchcase(text, wanted) for text in texts)
    return any(wanted in text for text in texts)


def suggestions(wanted: str, known: list[str], limit: int = 3) -> list[str]:
    """The known ids closest to `wanted` (typos, a missing prefix, `.` for `:`)."""
    bare = wanted.strip(WILDCARDS).lower()
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(bare, list(by_lower), n=limit, cutoff=0.6)
    return [by_lower[c] for c in close]


def _no_match(pattern: str, known: list[str], where: str) -> str:
    text = f"no statistic matches {pattern!r} in {where}"
    close = suggestions(pattern, known)
    if close:
        text += "; did you mean " + " or ".join(close) + "?"
    elif known:
        text += f" ({len(known)} statistics there; `backdate inspect` lists them)"
    return text
