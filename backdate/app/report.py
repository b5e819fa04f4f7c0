"""What the Energy dashboard will show, before anything is written: per-day table and seams.

The Energy dashboard reads only differences of `sum` (HA's `change`), per local day. So the
report computes exactly that, from the rows before and after the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from zoneinfo import ZoneInfo

import numpy as np

from backdate.app.importing import StatisticImport
from backdate.models import StatRow, Table, TablePlan


@dataclass(slots=True)
class DayLine:
    day: date
    energy_now: float | None  # None: the target had no row that day
    energy_after: float
    new: int
    updated: int
    shifted: int


@dataclass(slots=True)
class Seam:
    """One edge of the written range in one table: the change there, before and after."""

    table: str
    edge: str  # "start" or "end"
    start_ts: float
    change_before: float | None
    change_after: float | None
    expected: float | None = None  # what change_after must be (input energy, or unchanged)

    @property
    def closed(self) -> bool:
        if self.expected is None or self.change_after is None:
            return True
        return abs(self.expected - self.change_after) <= 1e-9 * max(1.0, abs(self.expected))


EPOCH_ORDINAL = date(1970, 1, 1).toordinal()


def local_days(starts: np.ndarray, tz: ZoneInfo) -> np.ndarray:
    """Local calendar day (days since 1970-01-01) of each UTC timestamp, DST-correct.

    Offsets are looked up once per UTC day, and per timestamp only on days whose offset
    changes (the two DST days a year), so ten years of hours take milliseconds.
    """
    if starts.size == 0:
        return np.empty(0, dtype=np.int64)
    utc_days = np.floor(starts / 86400).astype(np.int64)
    days, which = np.unique(utc_days, return_inverse=True)
    day_offsets = np.empty(days.size)
    changing = []
    for k, day in enumerate(days.tolist()):
        first = datetime.fromtimestamp(day * 86400, tz).utcoffset().total_seconds()
        last = datetime.fromtimestamp(day * 86400 + 86399, tz).utcoffset().total_seconds()
        day_offsets[k] = first
        if first != last:
            changing.append(k)
    offsets = day_offsets[which]
    for k in changing:  # the offset changes during this UTC day: look each time up
        mask = which == k
        offsets[mask] = [datetime.fromtimestamp(t, tz).utcoffset().total_seconds()
                         for t in starts[mask].tolist()]
    return np.floor((starts + offsets) / 86400).astype(np.int64)


def day_table(item: StatisticImport, tz: ZoneInfo) -> list[DayLine]:
    """Per local day the import touches: what the Energy dashboard shows now and after, and
    the rows written. Whole days, including hours the import leaves alone."""
    plan = item.plan.hourly
    if not plan.count:
        return []
    old_rows = [r for r in item.day_rows if r.sum is not None]
    old_starts = np.array([r.start_ts for r in old_rows], dtype=np.float64)
    old_sums = np.array([r.sum for r in old_rows], dtype=np.float64)
    base = item.day_base
    rows = plan.rows
    new_starts = np.union1d(old_starts, rows.start_ts)
    new_sums = np.empty(new_starts.size)
    old_pos = np.searchsorted(new_starts, old_starts)
    new_sums[old_pos] = old_sums
    if plan.shift_from is not None and plan.shift:
        moved = old_starts >= plan.shift_from
        new_sums[old_pos[moved]] += plan.shift
    new_sums[np.searchsorted(new_starts, rows.start_ts)] = rows.sum
    new_changes = np.diff(np.concatenate([[base], new_sums]))
    old_changes = np.diff(np.concatenate([[base], old_sums]))
    planned = item.prepared.planned_hours or item.prepared.hours
    planned_starts = planned.starts if planned is not None else np.empty(0)
    is_planned = np.isin(new_starts, planned_starts)
    in_old = np.isin(new_starts, old_starts)
    rewritten = np.isin(new_starts, rows.start_ts) & ~is_planned
    if plan.shift_from is not None and plan.shift:
        rewritten |= in_old & (new_starts >= plan.shift_from)
    days = local_days(new_starts, tz)
    uniq, where = np.unique(days, return_inverse=True)
    n = uniq.size
    after = np.bincount(where, weights=new_changes, minlength=n)
    new = np.bincount(where, weights=is_planned & ~in_old, minlength=n)
    written = np.isin(new_starts, rows.start_ts)
    updated = np.bincount(where, weights=is_planned & in_old & written, minlength=n)
    shifted = np.bincount(where, weights=rewritten, minlength=n)
    now: dict[int, float] = {}
    if old_starts.size:
        old_days = local_days(old_starts, tz)
        ou, ow = np.unique(old_days, return_inverse=True)
        now = dict(zip(ou.tolist(), np.bincount(ow, weights=old_changes).tolist(), strict=True))
    return [
        DayLine(date.fromordinal(EPOCH_ORDINAL + d), now.get(d), float(after[k]), int(new[k]),
                int(updated[k]), int(shifted[k]))
        for k, d in enumerate(uniq.tolist())
    ]


def seams(item: StatisticImport) -> list[Seam]:
    """Both edges of the written range in both tables.

    Start: the first written period's change after the import must equal the input's energy
    there (the sum joins the row before it). End: the first row after the range must keep its
    change (the shift closes the seam).
    """
    out: list[Seam] = []
    old_first: dict[float, float] = {}
    nb = item.hourly_before
    if nb is not None:
        prev = nb.before.sum if nb.before is not None and nb.before.sum is not None else 0.0
        for row in nb.inside:
            if row.sum is not None:
                old_first[row.start_ts] = row.sum - prev
                prev = row.sum
    for plan in item.plan.tables:
        out.extend(_table_seams(item, plan, old_first if plan.table is Table.HOURLY else {}))
    return out


def _input_energy(item: StatisticImport, start: float, period: int) -> float | None:
    """What the plan gives the slot: the input's energy, plus the old energy it keeps where
    the input covers the slot only in part."""
    prepared = item.prepared
    slots = prepared.planned_hours if period == 3600 else prepared.planned_five
    if slots is None:
        return None
    k = int(np.searchsorted(slots.starts, start))
    if k < slots.starts.size and slots.starts[k] == start:
        return float(slots.amounts[k])
    return None


def _table_seams(item: StatisticImport, plan: TablePlan, old: dict[float, float]) -> list[Seam]:
    result: list[Seam] = []
    rows = plan.rows
    sums = rows.sum
    before = plan.seam_before
    # The 5-minute table is purged by HA: with no row before the range there is no edge there.
    # Rows the target already held exactly are not rewritten: the first written row then need
    # not follow `before`, and this edge says nothing.
    joined = plan.unchanged == 0
    if len(rows) and sums is not None and joined and (
            before is not None or plan.table is Table.HOURLY):
        base = before.sum if before is not None and before.sum is not None else 0.0
        start = float(rows.start_ts[0])
        after = float(sums[0]) - base
        expected = _input_energy(item, start, plan.table.period)
        seam = Seam(plan.table.value, "start", start, old.get(start), after)
        seam.expected = expected
        result.append(seam)
    after_row: StatRow | None = plan.seam_after_old
    if (after_row is not None and after_row.sum is not None
            and plan.seam_after_prev_old_sum is not None):
        before_change = after_row.sum - plan.seam_after_prev_old_sum
        if len(rows) and sums is not None:
            new_prev = float(sums[-1])
        else:
            new_prev = plan.seam_after_prev_old_sum + plan.shift
        new_change = after_row.sum + plan.shift - new_prev
        seam = Seam(plan.table.value, "end", after_row.start_ts, before_change, new_change)
        seam.expected = before_change
        result.append(seam)
    return result


def draw_chart(items: list[StatisticImport], tz: ZoneInfo, path: str) -> None:
    """Bars per day: energy now and after the import (matplotlib, loaded only when asked)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(items), 1, figsize=(12, 3.2 * len(items)), squeeze=False)
    for ax, item in zip(axes[:, 0], items, strict=True):
        lines = day_table(item, tz)
        days = [line.day for line in lines]
        ax.bar(days, [line.energy_now or 0.0 for line in lines], width=0.9, alpha=0.5,
               label="now", color="tab:gray")
        ax.step(days, [line.energy_after for line in lines], where="mid", color="tab:blue",
                label="after import")
        unit = item.plan.meta.unit_of_measurement or ""
        ax.set_title(f"{item.statistic_id}: energy per day ({unit}, {tz.key})")
        ax.set_ylabel(unit)
        ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

