"""Sum continuity of `migrate`'s merge, for random old and new statistics (pure engine).

For a random OLD (hours with gaps, non-negative changes, its first sum a change or an offset)
and a random NEW (before, overlapping, inside or after OLD), under either overlap rule: after
the planner's writes and shift are applied to NEW's rows, every hour of NEW changes by what the
rule says (OLD's converted change where only OLD has data or the source wins, NEW's own change
elsewhere), the sum never falls, and NEW's rows after the written window keep their change.
The expectation is a plain loop here, not the engine's.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from backdate.engine.merge import Overlap, as_series, row_changes, select_hours
from backdate.engine.plan import SumSlots, plan_sum_table
from backdate.models import HOUR, StatRow, Table
from backdate.targets.base import Neighbourhood

T0 = 1_700_000_000 // HOUR * HOUR


def rows_from(changes: dict[int, float], first_sum: float | None = None) -> list[StatRow]:
    out, total = [], 0.0
    for i, t in enumerate(sorted(changes)):
        total = (first_sum if first_sum is not None else changes[t]) if i == 0 else \
            total + changes[t]
        out.append(StatRow(float(t), state=total + 100.0, sum=total))
    return out


hours = st.dictionaries(st.integers(0, 200), st.floats(0, 5, allow_nan=False), min_size=1,
                        max_size=120)


@settings(max_examples=300, deadline=None)
@given(old_h=hours, new_h=hours, factor=st.sampled_from([1.0, 1e-3, 1e3]),
       rule=st.sampled_from(list(Overlap)), offset=st.booleans())
def test_merge_keeps_every_hour_and_leaves_no_step(old_h, new_h, factor, rule, offset) -> None:
    old_changes = {T0 + k * HOUR: v for k, v in old_h.items()}
    new_changes = {T0 + k * HOUR: v for k, v in new_h.items()}
    old_rows = rows_from(old_changes, first_sum=1e6 if offset else None)
    new_rows = rows_from(new_changes)

    changes = row_changes(old_rows, HOUR, label="old").scaled(factor)
    new_starts = np.array([r.start_ts for r in new_rows])
    picked, counts = select_hours(changes, new_starts, rule)
    assert counts.overlap == len(set(old_changes) & set(new_changes))

    # The expectation, in a loop.
    # The documented first-row rule: the first sum counts as use only when it is at most ten
    # times the largest later change (a lone row: always); otherwise it is an offset.
    first_old = min(old_changes)
    first_sum = old_rows[0].sum
    later = [old_changes[t] for t in sorted(old_changes)[1:]]
    plausible = not later or (max(later) > 0 and first_sum <= 10 * max(later)) or (
        max(later) == 0 and first_sum == 0)
    want: dict[float, float] = {float(t): v for t, v in new_changes.items()}
    for t, v in old_changes.items():
        amount = v * factor
        if t == first_old:
            amount = first_sum * factor if plausible else 0.0
        if t in new_changes and rule is Overlap.KEEP_TARGET:
            continue
        want[float(t)] = amount
    if len(picked) == 0:
        return

    series = as_series(picked, None, source="old", unit="kWh")
    assert np.allclose(series.values, picked.amounts)
    w0, w1 = float(picked.starts[0]), float(picked.starts[-1]) + HOUR
    nb = Neighbourhood(
        before=next((r for r in reversed(new_rows) if r.start_ts < w0), None),
        inside=[r for r in new_rows if w0 <= r.start_ts < w1],
        after=next((r for r in new_rows if r.start_ts >= w1), None),
        after_count=sum(1 for r in new_rows if r.start_ts >= w1))
    plan, _ = plan_sum_table(Table.HOURLY, SumSlots(picked.starts, picked.amounts), nb,
                             after_count=nb.after_count, keep_meter=True)

    # Apply the plan as a database would: upserts, then the shift of the rows after.
    result = {r.start_ts: r.sum for r in new_rows}
    written = set()
    for r in plan.upserts:
        result[r.start_ts] = r.sum
        written.add(r.start_ts)
    if plan.shift_from is not None:
        for t in result:
            if t >= plan.shift_from and t not in written:
                result[t] += plan.shift
    got, prev = {}, 0.0
    for t in sorted(result):
        got[t] = result[t] - prev
        prev = result[t]
    assert sorted(got) == sorted(want)
    for t in want:
        assert abs(got[t] - want[t]) < 1e-6 * max(1.0, abs(want[t])) + 1e-6, (t, got[t], want[t])
    sums = [result[t] for t in sorted(result)]
    assert all(b >= a - 1e-6 for a, b in zip(sums, sums[1:], strict=False)), "the sum falls"
