"""What the Energy dashboard will show, before anything is written: per-day table and seams.

The Energy dashboard reads only differences of `sum` (HA's `change`), per local day. So the
report computes exactly that, from the rows before and after the plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
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

    @property
    def closed(self) -> bool:
        if self.change_before is None or self.change_after is None:
            return True
        return abs(self.change_before - self.change_after) <= 1e-9 * max(
            1.0, abs(self.change_before))


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
    """Per local day in the written window: energy now, energy after, rows touched."""
    plan = item.plan.hourly
    nb = item.hourly_before
    if not plan.count or nb is None:
        return []
    base = nb.before.sum if nb.before is not None and nb.before.sum is not None else 0.0
    inside = [r for r in nb.inside if r.sum is not None]
    old_starts = np.array([r.start_ts for r in inside], dtype=np.float64)
    old_sums = np.array([r.sum for r in inside], dtype=np.float64)
    rows = plan.rows
    new_starts = np.union1d(old_starts, rows.start_ts)
    new_sums = np.empty(new_starts.size)
    new_sums[np.searchsorted(new_starts, old_starts)] = old_sums
    new_sums[np.searchsorted(new_starts, rows.start_ts)] = rows.sum
    new_changes = np.diff(np.concatenate([[base], new_sums]))
    old_changes = np.diff(np.concatenate([[base], old_sums]))
    planned_starts = item.prepared.hours.starts if item.prepared.hours is not None else np.empty(0)
    is_planned = np.isin(new_starts, planned_starts)
    in_old = np.isin(new_starts, old_starts)
    moved = np.isin(new_starts, rows.start_ts) & ~is_planned
    days = local_days(new_starts, tz)
    uniq, where = np.unique(days, return_inverse=True)
    n = uniq.size
    after = np.bincount(where, weights=new_changes, minlength=n)
    new = np.bincount(where, weights=is_planned & ~in_old, minlength=n)
    updated = np.bincount(where, weights=is_planned & in_old, minlength=n)
    shifted = np.bincount(where, weights=moved, minlength=n)
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
    """The change at both edges of the written range, in both tables, before and after."""
    out: list[Seam] = []
    for plan in item.plan.tables:
        out.extend(_table_seams(plan))
    return out


def _table_seams(plan: TablePlan) -> list[Seam]:
    result: list[Seam] = []
    rows = plan.rows
    sums = rows.sum
    before = plan.seam_before
    # The hourly table starts from 0 (HA's rule for a first row). The 5-minute table is purged
    # by HA, so with no row before the range there is no edge to show there.
    if len(rows) and sums is not None and (before is not None or plan.table is Table.HOURLY):
        base = before.sum if before is not None and before.sum is not None else 0.0
        result.append(Seam(plan.table.value, "start", float(rows.start_ts[0]), None,
                           float(sums[0]) - base))
    after: StatRow | None = plan.seam_after_old
    if after is not None and after.sum is not None and plan.seam_after_prev_old_sum is not None:
        before_change = after.sum - plan.seam_after_prev_old_sum
        if len(rows) and sums is not None:
            new_prev = float(sums[-1])
        else:
            new_prev = plan.seam_after_prev_old_sum + plan.shift
        new_change = after.sum + plan.shift - new_prev
        result.append(Seam(plan.table.value, "end", after.start_ts, before_change, new_change))
    return result


def utc_text(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def hour_text(ts: float, tz: ZoneInfo) -> str:
    return datetime.fromtimestamp(ts, tz).strftime("%Y-%m-%d %H:%M %Z")


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

