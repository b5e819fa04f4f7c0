"""From prepared amounts and what a table already holds, the exact writes (pure, no I/O).

The rule that keeps every seam closed: walk the written window in time order carrying the new
running sum. A slot the input covers grows it by the input's amount; a row the target has but
the input does not cover grows it by that row's old change. Every row after the window then
moves by one constant shift, so each keeps its old change: nothing before the window changes,
nothing after it changes its hourly value, and there is no step at either edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from backdate.models import RowBlock, StatRow, Table, TablePlan
from backdate.targets.base import Neighbourhood


@dataclass(slots=True)
class SumSlots:
    """Input amounts per slot, in the statistic's unit, sorted by start."""

    starts: np.ndarray
    amounts: np.ndarray
    states: np.ndarray | None = None  # meter value at the slot's end (cumulative input)


@dataclass(slots=True)
class SumWalk:
    """The new running sum through the window, for seams and the short-term base."""

    starts: np.ndarray  # every row in the window after the write (planned and kept)
    new_sums: np.ndarray
    base_new: float  # new sum at the window's start
    old_end: float = 0.0  # old sum at the window's end

    @property
    def shift(self) -> float:
        """How much every row after the window moves."""
        return float(self.new_sums[-1]) - self.old_end if self.new_sums.size else 0.0


def plan_sum_table(
    table: Table,
    slots: SumSlots,
    nb: Neighbourhood,
    *,
    base_old: float | None = None,
    base_new: float | None = None,
    after_count: int = 0,
    keep_meter: bool = False,
) -> tuple[TablePlan, SumWalk]:
    """Plan one table of a sum statistic. `base_*` override the sum before the window.

    `keep_meter` (statistics HA compiles): `state` is HA's meter reading, from which HA
    continues the sum at its next compile; rows that exist keep their state, and new rows get
    the meter value that fits their neighbours, so the next compile adds no step.
    """
    period = table.period
    if base_old is None:
        base_old = nb.before.sum if nb.before is not None and nb.before.sum is not None else 0.0
    if base_new is None:
        base_new = base_old
    plan = TablePlan(table=table, seam_before=nb.before)
    if slots.starts.size == 0 and not nb.inside:
        return plan, SumWalk(np.empty(0), np.empty(0), base_new, base_old)

    inside = [r for r in nb.inside if r.sum is not None]
    ex_starts = np.array([r.start_ts for r in inside], dtype=np.float64)
    ex_sums = np.array([r.sum for r in inside], dtype=np.float64)
    ex_changes = np.diff(np.concatenate([[base_old], ex_sums])) if inside else np.empty(0)

    union = np.union1d(slots.starts, ex_starts)
    increments = np.zeros(union.size)
    planned_pos = np.searchsorted(union, slots.starts)
    existing_pos = np.searchsorted(union, ex_starts)
    is_planned = np.zeros(union.size, dtype=bool)
    is_planned[planned_pos] = True
    increments[existing_pos] = ex_changes  # overwritten below where the input covers the slot
    increments[planned_pos] = slots.amounts
    new_sums = base_new + np.cumsum(increments)

    # Rows to write: every planned slot that changes, and every kept row whose sum moves.
    ex_mask = np.zeros(union.size, dtype=bool)
    ex_mask[existing_pos] = True
    old_sum = np.full(union.size, np.nan)
    old_sum[existing_pos] = ex_sums
    kept = ex_mask & ~is_planned & (old_sum != new_sums)
    state = new_sums.copy()
    if slots.states is not None:  # the input's own meter readings
        state[planned_pos] = slots.states
    elif keep_meter:
        state += _meter_offset(nb, float(new_sums[-1]), inside)
    old_state = np.full(union.size, np.nan)
    old_reset = np.full(union.size, np.nan)
    if inside:
        old_state[existing_pos] = [np.nan if r.state is None else r.state for r in inside]
        old_reset[existing_pos] = [np.nan if r.last_reset_ts is None else r.last_reset_ts
                                   for r in inside]
        restore = ex_mask & ~is_planned
        if keep_meter:  # HA's meter readings stay where HA wrote them
            restore = ex_mask & ~np.isnan(old_state)
        state[restore] = old_state[restore]
    # A re-import of the same data rewrites nothing (idempotent).
    same_state = np.isclose(old_state, state, rtol=1e-12, atol=1e-12) | (
        np.isnan(old_state) & np.isnan(state))
    unchanged = is_planned & ex_mask & same_state & np.isclose(old_sum, new_sums, rtol=1e-12,
                                                                atol=1e-12)
    write = (is_planned & ~unchanged) | kept
    last_reset = None
    keep_reset = ex_mask & ~is_planned & ~np.isnan(old_reset)
    if keep_reset.any():
        last_reset = np.where(keep_reset, old_reset, np.nan)[write]
    plan.rows = RowBlock(union[write], state=state[write], sum=new_sums[write],
                         last_reset_ts=last_reset)
    updated = int((is_planned & ex_mask & ~unchanged).sum())
    plan.unchanged = int(unchanged.sum())
    plan.inserted = int((is_planned & ~ex_mask).sum())
    plan.updated = updated
    kept_count = int(kept.sum())

    old_at_end = float(ex_sums[-1]) if inside else base_old
    window_end = float(union[-1]) + period
    if nb.after is not None:
        plan.shift_from = window_end
        plan.shift = float(new_sums[-1]) - old_at_end
        plan.seam_after_old = nb.after
        plan.seam_after_prev_old_sum = old_at_end
        plan.shifted = kept_count + (after_count if plan.shift != 0 else 0)
    else:
        plan.shifted = kept_count
    return plan, SumWalk(union, new_sums, base_new, old_at_end)


def _meter_offset(nb: Neighbourhood, new_end: float, inside: list[StatRow]) -> float:
    """meter - sum for rows the window adds, taken from the nearest row HA wrote."""
    after = nb.after
    if after is not None and after.state is not None and after.sum is not None:
        old_end = inside[-1].sum if inside else (
            nb.before.sum if nb.before is not None and nb.before.sum is not None else 0.0)
        # After the write that row's sum is after.sum + (new_end - old_end).
        return after.state - (after.sum + new_end - old_end)
    before = nb.before
    if before is not None and before.state is not None and before.sum is not None:
        return before.state - before.sum
    return 0.0


def shift_only(table: Table, shift_from: float, shift: float, after: StatRow | None,
               old_before: float, after_count: int = 0) -> TablePlan:
    """A table the input does not write, whose rows after the window move with the sum."""
    plan = TablePlan(table=table)
    if after is not None and shift != 0:
        plan.shift_from = shift_from
        plan.shift = shift
        plan.seam_after_old = after
        plan.seam_after_prev_old_sum = old_before
        plan.shifted = after_count
    return plan


def sum_at(walk: SumWalk, t: float, period: int) -> float:
    """New running sum at time t (an edge of the walk's grid): end of the last row before t."""
    idx = int(np.searchsorted(walk.starts + period, t, side="right")) - 1
    return walk.base_new if idx < 0 else float(walk.new_sums[idx])


def plan_mean_table(table: Table, starts: np.ndarray, mean: np.ndarray, low: np.ndarray,
                    high: np.ndarray, nb: Neighbourhood,
                    covered: np.ndarray | None = None) -> TablePlan:
    """A measurement: rows are independent, so the plan is the rows themselves. A slot the
    samples cover only in part, where the target has a row, keeps the old row's mean for the
    rest of it (time-weighted) and its min/max."""
    starts = np.asarray(starts, dtype=np.float64)
    values = np.column_stack([mean, low, high]).astype(np.float64)
    old = {r.start_ts: (r.mean, r.min, r.max) for r in nb.inside}
    have = np.array([[np.nan if v is None else v for v in old.get(t, (None,) * 3)]
                     for t in starts.tolist()], dtype=np.float64).reshape(starts.size, 3)
    exists = np.isin(starts, np.array(list(old), dtype=np.float64))
    if covered is not None:
        part = exists & (covered < table.period) & ~np.isnan(have).any(axis=1)
        if part.any():
            w = covered[part] / table.period
            values[part, 0] = values[part, 0] * w + have[part, 0] * (1 - w)
            values[part, 1] = np.minimum(values[part, 1], have[part, 1])
            values[part, 2] = np.maximum(values[part, 2], have[part, 2])
    same = exists & np.isclose(have, values, rtol=1e-12, atol=1e-12).all(axis=1)
    write = ~same  # a re-import of the same data rewrites nothing
    rows = RowBlock(starts[write], mean=values[write, 0], min=values[write, 1],
                    max=values[write, 2])
    plan = TablePlan(table=table, rows=rows, inserted=int((~exists).sum()),
                     updated=int((exists & write).sum()), seam_before=nb.before)
    plan.unchanged = int(same.sum())
    return plan
