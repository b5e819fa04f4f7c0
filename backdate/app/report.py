"""What the Energy dashboard will show, before anything is written: per-day table and seams.

The Energy dashboard reads only differences of `sum` (HA's `change`), per local day. So the
report computes exactly that, from the rows before and after the plan.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo

from backdate.app.importing import StatisticImport
from backdate.models import HOUR, StatRow, TablePlan


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


def _changes(rows: dict[float, float], base: float) -> dict[float, float]:
    out: dict[float, float] = {}
    prev = base
    for start in sorted(rows):
        out[start] = rows[start] - prev
        prev = rows[start]
    return out


def day_table(item: StatisticImport, tz: ZoneInfo) -> list[DayLine]:
    """Per local day in the written window: energy now, energy after, rows touched."""
    plan = item.plan.hourly
    nb = item.hourly_before
    if not plan.upserts or nb is None:
        return []
    base = nb.before.sum if nb.before is not None and nb.before.sum is not None else 0.0
    old = {r.start_ts: r.sum for r in nb.inside if r.sum is not None}
    new = dict(old)
    for r in plan.upserts:
        new[r.start_ts] = r.sum if r.sum is not None else 0.0
    old_changes = _changes(old, base)
    new_changes = _changes(new, base)
    planned = set(item.prepared.hours.starts.tolist()) if item.prepared.hours is not None else set()
    days: dict[date, list] = defaultdict(lambda: [None, 0.0, 0, 0, 0])
    for start, change in new_changes.items():
        day = datetime.fromtimestamp(start, tz).date()
        line = days[day]
        line[1] += change
        if start in planned:
            if start in old:
                line[3] += 1
            else:
                line[2] += 1
        elif start in old and old[start] != new[start]:
            line[4] += 1
    for start, change in old_changes.items():
        day = datetime.fromtimestamp(start, tz).date()
        if day in days:
            days[day][0] = (days[day][0] or 0.0) + change
    return [DayLine(d, *v) for d, v in sorted(days.items())]


def seams(item: StatisticImport) -> list[Seam]:
    """The change at both edges of the written range, in both tables, before and after."""
    out: list[Seam] = []
    for plan in item.plan.tables:
        out.extend(_table_seams(plan))
    return out


def _table_seams(plan: TablePlan) -> list[Seam]:
    result: list[Seam] = []
    if plan.upserts:
        first = plan.upserts[0]
        base = plan.seam_before.sum if plan.seam_before and plan.seam_before.sum is not None else 0.0
        if first.sum is not None:
            result.append(Seam(plan.table.value, "start", first.start_ts, None, first.sum - base))
    after: StatRow | None = plan.seam_after_old
    if after is not None and after.sum is not None and plan.seam_after_prev_old_sum is not None:
        before_change = after.sum - plan.seam_after_prev_old_sum
        new_prev = plan.upserts[-1].sum if plan.upserts else plan.seam_after_prev_old_sum + plan.shift
        new_change = after.sum + plan.shift - (new_prev if new_prev is not None else 0.0)
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


_ = HOUR
