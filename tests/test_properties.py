"""Continuity properties of PRODUCT.md, on a real SQLite recorder database, for random data.

For random existing data and a random second import (before, inside, overlapping or after it):
every hour and 5-minute window the input covers changes by exactly the input's energy there;
every other row keeps its old change; sums never fall; every row is on the grid.
The expected energies come from a plain loop here, not from the engine.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backdate.app.importing import ImportOptions, apply_imports, plan_imports
from backdate.models import Kind, Series, Table
from backdate.targets.fresh import create_recorder_sqlite
from backdate.targets.recorder_db import open_recorder

NOW = 1_717_200_000.0  # 2024-06-01T00:00:00Z: the clock the planner is given
DAY = 86400.0
STAT = "backdate:prop"


def reference_energy(starts, ends, values, period) -> dict[float, float]:
    """Energy per slot, split in proportion to overlap: the definition, in a loop."""
    out: dict[float, float] = defaultdict(float)
    for s, e, v in zip(starts, ends, values, strict=True):
        slot = (s // period) * period
        while slot < e:
            overlap = min(e, slot + period) - max(s, slot)
            if overlap > 0:
                out[slot] += v * overlap / (e - s)
            slot += period
    return out


def old_curve(before: dict[Table, dict[float, float]]):
    """The target's cumulative sum before the import, as points: each row's start carries the
    sum before it and its end its own sum (5-minute rows override hourly ones; the hourly
    table starts from 0, the 5-minute table's first row has no known start)."""
    points: dict[float, float] = {}
    for table in (Table.HOURLY, Table.SHORT_TERM):
        prev = 0.0 if table is Table.HOURLY else None
        for start in sorted(before[table]):
            if prev is not None:
                points[start] = prev
            points[start + table.period] = before[table][start]
            prev = before[table][start]
    xs = sorted(points)
    return xs, [points[x] for x in xs]


def kept_energy(slot, period, intervals, xs, es) -> float:
    """Old energy of the part of [slot, slot+period) that no input interval covers."""
    if len(xs) < 2:
        return 0.0
    def e(t):
        return float(np.interp(t, xs, es))
    covered = []
    for s, end in zip(intervals[0], intervals[1], strict=True):
        lo, hi = max(s, slot), min(end, slot + period)
        if hi > lo:
            covered.append((lo, hi))
    covered.sort()
    merged = []
    for lo, hi in covered:
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return (e(slot + period) - e(slot)) - sum(e(hi) - e(lo) for lo, hi in merged)


@st.composite
def readings(draw, base: float):
    step = draw(st.sampled_from([60, 300, 600, 900, 1800, 3600, 420]))
    offset = draw(st.integers(0, int(20 * DAY // 60))) * 60
    count = draw(st.integers(1, 250))
    starts = base + offset + np.arange(count) * step
    keep = np.array(draw(st.lists(st.booleans(), min_size=count, max_size=count)))
    keep[0] = True
    starts = starts[keep]
    values = np.array(draw(st.lists(st.floats(0, 5, allow_nan=False), min_size=starts.size,
                                    max_size=starts.size)))
    return starts.astype(float), (starts + step).astype(float), values


def _import(db: Path, starts, ends, values) -> None:
    series = Series("prop.csv", starts, values, np.arange(2, starts.size + 2), ends,
                    kind=Kind.DELTA, unit="kWh")
    target = open_recorder(f"sqlite:///{db}")
    try:
        opts = ImportOptions(statistic_id=STAT)
        apply_imports(target, plan_imports(target, [series], opts, now=NOW))
    finally:
        target.close()


def _sums(db: Path, table: Table) -> dict[float, float]:
    target = open_recorder(f"sqlite:///{db}")
    try:
        return {r.start_ts: r.sum for r in target.read_rows(table, STAT)}
    finally:
        target.close()


def _changes(db: Path, table: Table) -> dict[float, float]:
    """Change of every row. The hourly table starts from 0 (HA's rule for the first row); the
    5-minute table's first row is left out: HA purges that table, so its first row carries the
    running total of everything before it."""
    target = open_recorder(f"sqlite:///{db}")
    try:
        rows = target.read_rows(table, STAT)
    finally:
        target.close()
    out: dict[float, float] = {}
    prev = 0.0 if table is Table.HOURLY else None
    for row in rows:
        assert row.start_ts % table.period == 0, f"{table} row off the grid: {row.start_ts}"
        assert row.sum is not None
        if prev is not None:
            assert row.sum >= prev - 1e-9, f"{table}: sum falls at {row.start_ts}"
            out[row.start_ts] = row.sum - prev
        prev = row.sum
    return out


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_import_over_random_existing_data_keeps_every_seam_closed(tmp_path_factory, data):
    db = tmp_path_factory.mktemp("prop") / "home-assistant_v2.db"
    create_recorder_sqlite(db)
    base = NOW - 25 * DAY  # both imports straddle the 10-day short-term horizon
    first = data.draw(readings(base), label="existing")
    second = data.draw(readings(base), label="import")
    _import(db, *first)
    before = {t: _changes(db, t) for t in Table}
    existed = {t: set(_sums(db, t)) for t in Table}
    xs, es = old_curve({t: _sums(db, t) for t in Table})
    _import(db, *second)
    after = {t: _changes(db, t) for t in Table}

    horizon = NOW - 10 * DAY
    touched_hours = reference_energy(*second, 3600)
    for table in Table:
        expected = reference_energy(*second, table.period)
        if table is Table.SHORT_TERM:
            # Every 5-minute window of an hour the input touches is the input's (0 where it is
            # silent), so that both tables add up to the same sum at each hour's end.
            expected = {h + k * 300.0: expected.get(h + k * 300.0, 0.0)
                        for h in touched_hours for k in range(12)}
        # A slot the input covers only in part keeps the old energy of the rest of it.
        expected = {slot: energy + (kept_energy(slot, table.period, second, xs, es)
                                    if slot in existed[table] else 0.0)
                    for slot, energy in expected.items()}
        for slot, change in after[table].items():
            if slot in expected:
                assert abs(change - expected[slot]) < 1e-6, (table, slot, "input energy")
            elif slot in before[table]:
                assert abs(change - before[table][slot]) < 1e-6, (table, slot, "kept row moved")
            elif slot not in existed[table]:
                raise AssertionError(f"{table}: row at {slot} is neither input nor kept")
        assert existed[table] <= set(_sums(db, table)), "rows were lost"
    hourly, short = _sums(db, Table.HOURLY), _sums(db, Table.SHORT_TERM)
    for slot in reference_energy(*second, 3600):
        assert slot in hourly, (slot, "input hour not written")
    for slot in reference_energy(*second, 300):
        if slot >= horizon:
            assert slot in short, (slot, "input 5-minute window not written")
    # Both tables on one scale: HA continues a sum from the 5-minute table.
    for hour, total in hourly.items():
        last_five = hour + 3300
        if last_five in short:
            assert abs(short[last_five] - total) < 1e-6, (hour, "tables disagree")
