"""How the history of an old statistic becomes input for a new one (pure, no I/O).

`backdate migrate` never copies sums: it turns OLD's rows into per-slot changes, converts them
into NEW's unit, drops the slots the overlap rule gives to NEW, and hands the rest to the
import planner as amounts. The planner then walks NEW's window exactly as for an import: slots
from OLD grow the sum by OLD's change, NEW's own rows keep their change, rows after the window
move by one shift. So there is no seam at either edge, and no first hour carries an offset.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np

from backdate.models import FIVE_MINUTES, HOUR, Kind, Series, StatRow


class Overlap(StrEnum):
    """Who wins an hour both statistics hold."""

    KEEP_TARGET = "keep-target"
    KEEP_SOURCE = "keep-source"


@dataclass(slots=True)
class Changes:
    """Change of `sum` per slot (`period` seconds), sorted by start, in one unit."""

    starts: np.ndarray
    amounts: np.ndarray
    period: int = HOUR
    notes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    @classmethod
    def empty(cls, period: int = HOUR) -> Changes:
        return cls(np.empty(0), np.empty(0), period)

    def scaled(self, factor: float) -> Changes:
        return Changes(self.starts, self.amounts * factor, self.period, list(self.notes))

    def within(self, start: float | None, end: float | None) -> Changes:
        keep = np.ones(len(self), dtype=bool)
        if start is not None:
            keep &= self.starts >= start
        if end is not None:
            keep &= self.starts + self.period <= end
        return Changes(self.starts[keep], self.amounts[keep], self.period, list(self.notes))

    def total(self) -> float:
        return float(self.amounts.sum())


def row_changes(rows: Sequence[StatRow], period: int, *, label: str = "",
                base: float | None = None) -> Changes:
    """Each row's change of `sum` from the row before it (HA's `change`).

    `base` is the sum before the first row where another table knows it. Without it, the
    first row's sum is its change only when that is plausible (not negative, at most ten
    times the largest later change); otherwise it is an offset some tool put there (a meter
    reading as the first sum) and counts as 0, with a note. Rows without a sum are skipped.
    """
    if isinstance(rows, _Columns):
        starts, sums = rows.starts, rows.sums
    else:
        starts = np.array([r.start_ts for r in rows if r.sum is not None], dtype=np.float64)
        sums = np.array([r.sum for r in rows if r.sum is not None], dtype=np.float64)
    if starts.size == 0:
        return Changes.empty(period)
    amounts = np.diff(sums, prepend=0.0 if base is None else base)
    notes: list[str] = []
    if base is not None:
        return Changes(starts, amounts, period, notes)
    first = float(sums[0])
    typical = float(np.max(np.abs(amounts[1:]))) if amounts.size > 1 else abs(first)
    if first < 0 or (typical > 0 and first > 10 * typical) or (typical == 0 and first != 0):
        amounts[0] = 0.0
        notes.append(f"{label}: the first row's sum ({first:g}) is an offset, not use; it "
                     "counts as 0 (no first-hour spike)")
    falls = int((amounts < 0).sum())
    if falls:
        notes.append(f"{label}: {falls} slot(s) where the sum falls are carried as they are")
    return Changes(starts, amounts, period, notes)


def sum_changes(starts: np.ndarray, sums: np.ndarray, period: int, *, label: str = "",
                base: float | None = None) -> Changes:
    """`row_changes` on columns (start_ts, sum) already sorted and without NULL sums."""
    rows = _Columns(starts, sums)
    return row_changes(rows, period, label=label, base=base)  # type: ignore[arg-type]


class _Columns:
    """Columns that `row_changes` reads like rows (without building a StatRow per row)."""

    def __init__(self, starts: np.ndarray, sums: np.ndarray) -> None:
        self.starts, self.sums = starts, sums


def chain(parts: Sequence[Changes]) -> Changes:
    """Several old statistics, oldest first, as one history: where two hold the same slot,
    the later id in the chain (the nearer to NEW) wins."""
    if not parts:
        return Changes.empty()
    period = parts[0].period
    starts = np.empty(0)
    amounts = np.empty(0)
    notes: list[str] = []
    for part in parts:
        keep = ~np.isin(starts, part.starts)
        starts = np.concatenate([starts[keep], part.starts])
        amounts = np.concatenate([amounts[keep], part.amounts])
        notes.extend(part.notes)
    order = np.argsort(starts, kind="stable")
    return Changes(starts[order], amounts[order], period, notes)


@dataclass(slots=True)
class MergeCounts:
    """What the overlap rule decided, in hours."""

    from_source: int = 0  # hours only OLD holds: OLD's change goes in
    overlap: int = 0  # hours both hold
    overwritten: int = 0  # overlap hours that take OLD's change (keep-source)
    kept_target: int = 0  # overlap hours where NEW's change stays (keep-target)


def select_hours(old: Changes, new_starts: np.ndarray, rule: Overlap
                 ) -> tuple[Changes, MergeCounts]:
    """OLD's hours that go into NEW under `rule`, and the counts for the plan."""
    both = np.isin(old.starts, new_starts)
    counts = MergeCounts(from_source=int((~both).sum()), overlap=int(both.sum()))
    if rule is Overlap.KEEP_SOURCE:
        counts.overwritten = counts.overlap
        return old, counts
    counts.kept_target = counts.overlap
    keep = ~both
    return Changes(old.starts[keep], old.amounts[keep], old.period, list(old.notes)), counts


def five_minute_detail(hours: Changes, fives: Changes, *, rel: float = 1e-9) -> Changes:
    """OLD's 5-minute changes for the hours they describe completely (twelve windows adding
    up to the hour's change), so the 5-minute table NEW gets keeps OLD's shape there."""
    if len(fives) == 0 or len(hours) == 0:
        return Changes.empty(FIVE_MINUTES)
    hour_of = np.floor(fives.starts / HOUR) * HOUR
    uniq, inverse, count = np.unique(hour_of, return_inverse=True, return_counts=True)
    totals = np.bincount(inverse, weights=fives.amounts)
    pos = np.searchsorted(hours.starts, uniq)
    pos_ok = pos < len(hours)
    match = np.zeros(uniq.size, dtype=bool)
    idx = np.where(pos_ok)[0]
    match[idx] = hours.starts[pos[idx]] == uniq[idx]
    good = match & (count == HOUR // FIVE_MINUTES)
    good[good] &= np.isclose(totals[good], hours.amounts[pos[good]], rtol=rel,
                             atol=rel * np.maximum(1.0, np.abs(hours.amounts[pos[good]])))
    keep = good[inverse]
    return Changes(fives.starts[keep], fives.amounts[keep], FIVE_MINUTES)


def as_series(hours: Changes, fives: Changes | None, *, source: str, unit: str | None) -> Series:
    """The selected hours as delta readings for the import planner: an hour OLD describes
    in 5-minute windows is given as those windows, any other as one hourly amount."""
    fine = Changes.empty(FIVE_MINUTES) if fives is None else fives
    fine_hours = np.unique(np.floor(fine.starts / HOUR) * HOUR)
    coarse = ~np.isin(hours.starts, fine_hours)
    in_hours = np.isin(np.floor(fine.starts / HOUR) * HOUR, hours.starts)
    times = np.concatenate([hours.starts[coarse], fine.starts[in_hours]])
    ends = np.concatenate([hours.starts[coarse] + HOUR, fine.starts[in_hours] + FIVE_MINUTES])
    values = np.concatenate([hours.amounts[coarse], fine.amounts[in_hours]])
    order = np.argsort(times, kind="stable")
    return Series(source=source, times=times[order], values=values[order],
                  lines=np.arange(1, times.size + 1), ends=ends[order], kind=Kind.DELTA,
                  unit=unit)


def expected_hours(old: Changes, new: Changes, rule: Overlap) -> Changes:
    """NEW's hourly changes after the merge (what HA's `change` must show): OLD's hours where
    only OLD has data, the rule's in the overlap, NEW's own elsewhere."""
    picked, _ = select_hours(old, new.starts, rule)
    if rule is Overlap.KEEP_SOURCE:
        keep = ~np.isin(new.starts, picked.starts)
        starts = np.concatenate([picked.starts, new.starts[keep]])
        amounts = np.concatenate([picked.amounts, new.amounts[keep]])
    else:
        starts = np.concatenate([picked.starts, new.starts])
        amounts = np.concatenate([picked.amounts, new.amounts])
    order = np.argsort(starts, kind="stable")
    return Changes(starts[order], amounts[order], HOUR)
