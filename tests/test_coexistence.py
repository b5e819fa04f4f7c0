"""backdate writing under a running Home Assistant that compiles a live sensor, on SQLite,
MariaDB and PostgreSQL: HA loses nothing.

Why: the hardest promises (PRODUCT.md "Continuity", "Coexistence") are about HA's own 5-minute
compiler. HA continues a sensor's ``sum`` from its latest short-term row and measures growth
from that row's ``state`` (the meter value, ha-recorder.md §3.4). An import that moves those
rows wrongly shows as a spike of the whole meter value (~5000 kWh), a negative hour or a lost
compile run; one that holds locks too long shows as "database is locked", "Deadlock found",
"could not serialize" or a missing ``statistics_runs`` row. A model of HA cannot show that; a
real HA 2024.3.3 can, on each of the recorder databases it supports.

One scenario per engine, the three run side by side (threads; HA's 5-minute timer is the same
wall clock for all, so the waits overlap: about 7-11 minutes in all):

1. HA starts on a fresh database it creates itself (SQLite file, or an empty MariaDB /
   PostgreSQL database with a unique name, dropped afterwards); a thread posts a rising meter
   (~5000 kWh, ``total_increasing``, kWh) to ``sensor.grid_energy`` every 2-5 s and keeps HA's
   ``last_updated`` of every state.
2. Wait until HA compiled its first 5-minute row of the sensor (a 5-minute mark + 10 s).
3. Right after, with the CLI (default backup): a YEAR of 15-minute deltas that end at the hour
   of that first row, prepended into ``sensor.grid_energy`` (HA's own entity statistic).
4. In the same compile interval: ``backdate plan`` / ``import`` of input reaching into the open
   5-minute window and beyond (values equal to what the database holds for closed windows).
5. TEN YEARS of hourly deltas into another statistic (``backdate:coexist_ten_years``), started
   1 s before HA's next compile run: HA's timer fires while backdate reads, plans and writes
   (its write transaction comes a second or more later, when HA writes the compiled rows).
6. Wait for that compile (and an hourly rollup if one fits the budget), read everything.

The tests judge through HA's ``recorder/statistics_during_period``, HA's log, and the
``statistics_runs`` rows HA wrote (read-only queries; nothing is written behind HA's back).
Session 1's live-compile scenario (with every check it had) is the SQLite run of step 3/4
here, with a year instead of 3 days.
"""

from __future__ import annotations

import math
import random
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest
from ha_harness import (
    ENGINES,
    HomeAssistant,
    create_recorder_database,
    drop_recorder_database,
)
from live_meter import (
    BUDGET,
    COMPILE_DELAY,
    FIVE,
    SID,
    TOL,
    MeterPoster,
    Rows,
    _when,
    assert_amounts,
    compiled_runs,
    db_snapshot,
    describe,
    ha_rows,
    last_compiled_end,
    log_problems,
    meter_at,
    next_compile,
    now,
    run_backdate,
    utc,
    wait_for_window,
    wait_until,
)

pytestmark = [pytest.mark.ha, pytest.mark.slow, pytest.mark.timeout(1800)]

OTHER = "backdate:coexist_ten_years"
POST_EVERY = (2.0, 5.0)  # s between two states of the live meter ("every few seconds")
POST_STEP = (0.002, 0.02)  # kWh the meter grows per state
HOUR = 3600
DAY = 86400
SHORT_TERM_DAYS = 10  # backdate writes 5-minute rows only this far back (HA's retention)
HISTORY_DAYS = 365  # the year prepended before the live sensor's first row
TEN_YEARS_DAYS = 3652
LEAD = 1.0  # s before HA's compile run at which the ten-year import starts (it takes > 2 s)
Snapshot = dict[str, dict[float, tuple[Any, Any]]]
# What a writer holding locks too long (or breaking HA's rows) makes HA log, beyond what
# live_meter.log_problems looks for.
LOCK_MESSAGES = ("database is busy", "SQLITE_BUSY", "Deadlock found", "deadlock detected",
                 "Lock wait timeout", "could not serialize", "Duplicate entry",
                 "duplicate key value")


def all_log_problems(ha: HomeAssistant) -> list[str]:
    """``log_problems`` (errors, tracebacks, "database is locked", HA restarting the sensor's
    sum) plus critical lines, any recorder warning and the servers' lock/deadlock messages."""
    bad = log_problems(ha)
    for line in ha.log_text(all_runs=True).splitlines():
        recorder_warning = " (Recorder) " in line and " WARNING " in line
        if (" CRITICAL " in line or recorder_warning
                or any(m in line for m in LOCK_MESSAGES)) and line not in bad:
            bad.append(line)
    return bad


def hourly_deltas(start: datetime, end: datetime, *, seed: int) -> list[dg.Interval]:
    """One kWh amount per hour over [start, end) (a household's hours: 0.2-1.8 kWh)."""
    rng = random.Random(seed)
    out = []
    t = start
    while t < end:
        out.append(dg.Interval(t, t + timedelta(hours=1), round(rng.uniform(0.2, 1.8), 3)))
        t += timedelta(hours=1)
    return out


# ----------------------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    engine: str
    ha: HomeAssistant | None = None
    poster: MeterPoster | None = None
    started: float = 0.0  # wall clock when HA was started
    first_row: int = 0  # start of HA's first 5-minute row of SID
    seam: int = 0  # the hour of that row: the prepended history ends here
    history: list[dg.Interval] = field(default_factory=list)
    before_import: Rows = field(default_factory=dict)  # HA's 5-minute rows before the import
    import_proc: Any = None
    import_seconds: float = 0.0
    compiled_at_import: float = 0.0  # end of the newest compiled window when backdate imported
    # input reaching into the open window
    open_window: float = 0.0
    open_input: list[dg.Interval] = field(default_factory=list)
    plan_proc: Any = None
    import2_proc: Any = None
    db_before_plan: Snapshot = field(default_factory=dict)
    db_after_plan: Snapshot = field(default_factory=dict)
    db_after_import2: Snapshot = field(default_factory=dict)
    # ten years into another statistic, across one of HA's compile runs
    ten_years: list[dg.Interval] = field(default_factory=list)
    ten_proc: Any = None
    ten_started: float = 0.0
    ten_ended: float = 0.0
    ten_compile: float = 0.0  # the compile run the ten-year import was aimed at
    # after the waits
    samples: list[tuple[float, float]] = field(default_factory=list)
    five: Rows = field(default_factory=dict)
    hours: Rows = field(default_factory=dict)
    other_hours: Rows = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)
    read_at: float = 0.0
    log: list[str] = field(default_factory=list)
    rollup_seen: bool = False
    timeline: list[str] = field(default_factory=list)
    error: str | None = None

    def mark(self, what: str) -> None:
        self.timeline.append(f"+{now() - self.started:6.1f}s {utc(now()):%H:%M:%S}Z {what}")

    def context(self) -> str:
        return f"{self.engine} timeline:\n  " + "\n  ".join(self.timeline)


def _open_window_input(sc: Scenario, compiled_end: float) -> list[dg.Interval]:
    """Input over [seam - 1 h, open window + 15 min): the last prepended hour with the
    history's values, every compiled window with the change HA shows for it (0 where it has
    no row), then 1 kWh per 5 minutes for the open window and the two after it."""
    assert sc.ha is not None
    history = [i for i in sc.history if dg.epoch(i.start) >= sc.seam - 3600]
    current = ha_rows(sc.ha, sc.seam - 3600, compiled_end + 3600, "5minute")
    held = {t: r["change"] for t, r in current.items() if t < compiled_end}
    out = list(history)
    t = sc.seam
    while t < compiled_end + 3 * FIVE:
        value = held.get(t, 0.0) if t < compiled_end else 1.0
        out.append(dg.Interval(utc(t), utc(t + FIVE), value))
        t += FIVE
    return out


def _run_open_window_case(sc: Scenario, tmp: Path) -> None:
    """Step 4: plan and import of input that reaches into the open window (snapshots around)."""
    ha, poster = sc.ha, sc.poster
    assert ha is not None and poster is not None
    # Both commands must run inside one compile interval: the open window must stay open.
    if next_compile(now()) - now() < 75:
        window = math.floor(now() / FIVE) * FIVE
        sc.mark(f"waiting for the compile of {_when(window)} before the open-window case")
        wait_for_window(ha, poster, window)
    compiled_end = last_compiled_end(ha)
    sc.open_window = compiled_end
    sc.open_input = _open_window_input(sc, compiled_end)
    path = dg.write_delta_csv(tmp / "into_open_window.csv", sc.open_input, with_end=True)
    sc.db_before_plan = db_snapshot(ha)
    sc.mark(f"plan into the open window {_when(compiled_end)}")
    sc.plan_proc = run_backdate("plan", path, "--statistic-id", SID, "--to", ha.db_url)
    sc.db_after_plan = db_snapshot(ha)
    sc.import2_proc = run_backdate("import", path, "--statistic-id", SID, "--to", ha.db_url,
                                   "--no-backup", "--yes")
    sc.db_after_import2 = db_snapshot(ha)
    sc.mark(f"import into the open window done (exit {sc.import2_proc.returncode})")
    assert last_compiled_end(ha) == compiled_end, (
        "HA compiled a window during the open-window case: the test's timing assumption broke"
    )


def _run_scenario(sc: Scenario, tmp: Path) -> None:
    ha, poster = sc.ha, sc.poster
    assert ha is not None and poster is not None

    # 2. HA's first compiled row.
    first_deadline = next_compile(now()) + FIVE + 90

    def first_rows() -> Rows:
        return ha_rows(ha, now() - 3 * 3600, now() + 3600, "5minute")

    rows = wait_until(first_rows, first_deadline, f"HA's first 5-minute row of {SID}", poster,
                      lambda: f"HA returned {first_rows()}\n--- HA log tail ---\n"
                      f"{ha.log_tail(30)}")
    sc.first_row = min(rows)
    sc.seam = sc.first_row // 3600 * 3600
    sc.mark(f"HA compiled its first row {_when(sc.first_row)}: {rows[sc.first_row]}")

    # 3. A year prepended into the live entity statistic, while HA runs (default backup).
    seam = utc(sc.seam)
    sc.history = dg.quarter_hour_deltas(seam - timedelta(days=HISTORY_DAYS), seam, seed=91)
    history_csv = dg.write_delta_csv(tmp / "year.csv", sc.history, value_column="kwh")
    sc.ten_years = hourly_deltas(seam - timedelta(days=TEN_YEARS_DAYS), seam, seed=92)
    ten_csv = dg.write_delta_csv(tmp / "ten_years.csv", sc.ten_years, value_column="kwh",
                                 tz=UTC)
    sc.before_import = ha_rows(ha, sc.seam - 3600, now() + 3600, "5minute")
    sc.compiled_at_import = last_compiled_end(ha)
    began = now()
    sc.import_proc = run_backdate("import", history_csv, "--statistic-id", SID,
                                  "--to", ha.db_url, "--yes", cwd=tmp)
    sc.import_seconds = now() - began
    assert sc.import_proc.returncode == 0, describe(sc.import_proc)
    assert last_compiled_end(ha) == sc.compiled_at_import, (
        "HA compiled a window while backdate imported: the test's timing assumption broke"
        f" ({_when(int(sc.compiled_at_import))} -> {_when(int(last_compiled_end(ha)))})"
    )
    sc.mark(f"import of a year before {_when(sc.seam)} done in {sc.import_seconds:.1f} s")

    # 4. Input into the open window, in the same compile interval when it fits.
    _run_open_window_case(sc, tmp)

    # 5. Ten years into another statistic, aimed at HA's next compile run.
    sc.ten_compile = next_compile(now())
    time.sleep(max(0.0, sc.ten_compile - LEAD - now()))
    sc.ten_started = now()
    sc.mark(f"ten-year import starts, HA compiles at {utc(sc.ten_compile):%H:%M:%S}Z")
    sc.ten_proc = run_backdate("import", ten_csv, "--statistic-id", OTHER, "--to", ha.db_url,
                               "--yes", cwd=tmp)
    sc.ten_ended = now()
    sc.mark(f"ten-year import done in {sc.ten_ended - sc.ten_started:.1f} s "
            f"(exit {sc.ten_proc.returncode})")
    assert sc.ten_proc.returncode == 0, describe(sc.ten_proc)

    # 6. HA's compile run that the import ran into, then an hourly rollup if it fits.
    window = sc.ten_compile - COMPILE_DELAY - FIVE
    wait_for_window(ha, poster, window)
    sc.mark(f"HA compiled {_when(int(window))} (run at {utc(sc.ten_compile):%H:%M:%S}Z)")
    rollup = (math.floor(now() / 3600) + 1) * 3600 + COMPILE_DELAY
    if rollup + 40 <= sc.started + BUDGET:
        sc.mark(f"waiting for the hourly rollup at {utc(rollup):%H:%M:%S}Z")
        wait_for_window(ha, poster, rollup - COMPILE_DELAY - FIVE)
        sc.rollup_seen = True
        sc.mark("hourly rollup compiled")
    # Settle: HA rolls the hour up in the same job as the :55 window; read everything now.
    sc.samples = poster.snapshot()
    sc.read_at = now()
    sc.five = ha_rows(ha, sc.seam - (HISTORY_DAYS + 1) * DAY, now() + 3600, "5minute")
    sc.hours = ha_rows(ha, sc.seam - (HISTORY_DAYS + 1) * DAY, now() + 3600, "hour")
    first_other = dg.epoch(sc.ten_years[0].start)
    for year_start in range(first_other - DAY, sc.seam + DAY, 400 * DAY):  # replies < ~3 MB
        sc.other_hours.update(ha_rows(ha, year_start, min(year_start + 400 * DAY,
                                                          sc.seam + DAY), "hour", OTHER))
    sc.runs = compiled_runs(ha)
    sc.log = all_log_problems(ha)
    sc.mark(f"done: {len(sc.five)} 5-minute rows, {len(sc.hours)} hourly rows of {SID}; "
            f"{len(sc.other_hours)} hourly rows of {OTHER}")


def _run_engine(sc: Scenario, venv: Path, config_dir: Path, tmp: Path) -> None:
    """One engine's whole scenario in its own thread; failures are kept for its tests."""
    db_url = None
    try:
        db_url = create_recorder_database(sc.engine, "coexist")
        sc.ha = HomeAssistant(config_dir, venv=venv, db_url=db_url, startup_timeout=300)
        sc.started = now()
        sc.ha.start()
        sc.poster = MeterPoster(sc.ha, every=POST_EVERY, step=POST_STEP)
        sc.poster.start()
        sc.mark(f"HA on {sc.engine} running after {sc.ha.startup_seconds:.1f} s; "
                f"posting {SID}")
        _run_scenario(sc, tmp)
    except BaseException as err:
        sc.error = f"{err}\n{traceback.format_exc()[-3000:]}"
        if sc.ha is not None:
            sc.error += f"\n--- HA log tail ---\n{sc.ha.log_tail(30)}"
    finally:
        if sc.poster is not None:
            sc.poster.stop()
        if sc.ha is not None:
            sc.ha.stop()
        try:
            drop_recorder_database(db_url)
        except Exception as err:  # the scenario's outcome matters more; say it anyway
            sc.timeline.append(f"dropping {db_url} failed: {err!r}")


@pytest.fixture(scope="module")
def scenarios(request: pytest.FixtureRequest, ha_venv: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Scenario]]:
    """The scenario on SQLite, MariaDB and PostgreSQL at the same time (the waits overlap);
    only on the engines of the selected tests (``-k sqlite`` starts one HA, not three)."""
    selected = {item.callspec.params["engine"] for item in request.session.items
                if item.module is request.module and hasattr(item, "callspec")}
    out = {engine: Scenario(engine) for engine in ENGINES if engine in selected}
    threads = []
    for engine, sc in out.items():
        args = (sc, ha_venv, tmp_path_factory.mktemp(f"coexist_{engine}"),
                tmp_path_factory.mktemp(f"coexist_{engine}_input"))
        thread = threading.Thread(target=_run_engine, args=args, name=f"coexist-{engine}")
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    yield out


def scenario_of(scenarios: dict[str, Scenario], engine: str) -> Scenario:
    sc = scenarios[engine]
    if sc.error is not None:
        pytest.fail(f"the {engine} scenario failed: {sc.error}\n{sc.context()}", pytrace=False)
    return sc


# -------------------------------------------------------------------------------------- tests


def _fmt(rows: Rows, starts: list[int]) -> str:
    return "\n  ".join(f"{_when(t)}: {rows.get(t)}" for t in starts)


@pytest.mark.parametrize("engine", ENGINES)
def test_year_prepended_into_live_entity_statistic_leaves_no_step(
        scenarios: dict[str, Scenario], engine: str) -> None:
    """A year of 15-minute kWh deltas prepended to sensor.grid_energy while HA compiles it: the
    prepended hours (and 5-minute windows inside HA's retention) equal the input; HA's rows
    before the import keep their change and meter state; the sum runs on across the year's end
    without a step; every window HA compiles afterwards grows by exactly the meter's growth (no
    ~5000 kWh spike, nothing negative), and each hour by the sum of its windows."""
    sc = scenario_of(scenarios, engine)
    ctx = sc.context()
    print(ctx)  # shown with -rP: when things happened, relative to HA's compile timer
    assert sc.import_proc.returncode == 0, describe(sc.import_proc)
    assert "backup:" in sc.import_proc.stdout, f"no backup made:\n{sc.import_proc.stdout}"

    # The prepended hours: the input, nothing more before the seam.
    hourly = dg.hourly_totals(sc.history)
    assert len(hourly) == HISTORY_DAYS * 24
    assert_amounts({t: r["change"] for t, r in sc.hours.items() if t < sc.seam}, hourly,
                   f"{engine} {SID}: prepended hours (HA's hourly change)\n{ctx}")
    # Prepended 5-minute windows: only inside the short-term retention, each = the input. The
    # oldest has no row before it (as after HA's own purge), so HA measures it from 0: skip it.
    five_before_seam = {t: r["change"] for t, r in sc.five.items() if t < sc.seam}
    window = int(sc.compiled_at_import) - SHORT_TERM_DAYS * DAY
    too_old = [t for t in five_before_seam if t < window - 2 * HOUR]
    assert five_before_seam and not too_old, (
        f"{engine}: 5-minute rows before the seam: {len(five_before_seam)}, older than "
        f"{SHORT_TERM_DAYS} days: {[_when(t) for t in too_old[:3]]}\n{ctx}")
    oldest = min(five_before_seam)
    five_before_seam.pop(oldest)
    expected5 = {t: v for t, v in dg.five_minute_totals(sc.history).items()
                 if t != oldest and (t in five_before_seam or t >= window + 2 * HOUR)}
    assert_amounts(five_before_seam, expected5,
                   f"{engine} {SID}: prepended 5-minute windows (within the retention)\n{ctx}")

    # HA's own rows from before the import: same change, same meter state.
    assert sc.before_import, f"no rows before the import?\n{ctx}"
    for t, old in sorted(sc.before_import.items()):
        new = sc.five.get(t)
        assert new is not None, f"HA's row {_when(t)} is gone after the import\n{ctx}"
        assert abs(new["change"] - old["change"]) < TOL, (
            f"{_when(t)} (compiled by HA before the import): change {old['change']!r} before, "
            f"{new['change']!r} after the import (sum {old['sum']!r} -> {new['sum']!r})\n{ctx}"
        )
        assert new["state"] == old["state"], (
            f"{_when(t)}: meter state {old['state']!r} became {new['state']!r}\n{ctx}"
        )
    total = sum(hourly.values())
    last_before = sc.five[max(sc.before_import)]
    assert abs(last_before["sum"] - (total + sum(r["change"] for r in
                                           sc.before_import.values()))) < TOL, (
        f"sum of HA's last row before the import is {last_before['sum']!r}, expected the "
        f"year's {total!r} kWh plus HA's own growth\n{ctx}"
    )
    # The seam: HA's first row continues the year's last 5-minute and hourly rows.
    first = sc.five[sc.first_row]
    last5 = sc.five[sc.seam - FIVE]
    last_hour = sc.hours[sc.seam - HOUR]
    assert abs(last5["sum"] - total) < TOL and abs(last_hour["sum"] - total) < TOL, (
        f"the prepended year ends at sum {last5['sum']!r} (5-minute) / {last_hour['sum']!r} "
        f"(hour), expected its total {total!r}\n{ctx}")
    first_change_before = sc.before_import[sc.first_row]["change"]
    assert abs(first["sum"] - first_change_before - total) < TOL, (
        f"HA's first row {_when(sc.first_row)} has sum {first['sum']!r}: not the year's "
        f"{total!r} plus its own change {first_change_before!r} (a step at the seam)\n{ctx}")

    # Every window HA compiled after the import: the meter's growth, the meter's state.
    after = sorted(t for t in sc.five if t >= sc.compiled_at_import)
    assert after, f"HA compiled nothing after the import:\n  {_fmt(sc.five, after)}\n{ctx}"
    wrong = []
    for t in after:
        start_value, end_value = meter_at(sc.samples, t), meter_at(sc.samples, t + FIVE)
        assert start_value is not None and end_value is not None
        growth = end_value - start_value
        row = sc.five[t]
        if (row["change"] is None or abs(row["change"] - growth) >= TOL
                or abs(row["state"] - end_value) >= TOL):
            wrong.append(f"{_when(t)}: meter {start_value!r} -> {end_value!r} (growth "
                         f"{growth:.6f}), HA says change {row['change']!r}, state "
                         f"{row['state']!r}, sum {row['sum']!r}")
    print(f"{len(after)} windows compiled by HA after the import:\n  {_fmt(sc.five, after)}")
    assert not wrong, (
        f"{engine} {SID}: windows HA compiled after the import do not follow the meter:\n  "
        + "\n  ".join(wrong) + f"\n{ctx}"
    )

    # Hours from the seam on (rolled up by HA): each is the sum of its 5-minute changes and
    # carries the state of its last 5-minute row.
    for t, row in sorted(sc.hours.items()):
        if t < sc.seam:
            continue
        inside = [sc.five[s] for s in range(t, t + 3600, FIVE) if s in sc.five]
        expected = sum(r["change"] for r in inside)
        assert abs(row["change"] - expected) < TOL and row["change"] > -TOL, (
            f"hour {_when(t)} rolled up by HA: change {row['change']!r}, its 5-minute rows add "
            f"up to {expected!r}\n{ctx}"
        )
        assert row["state"] == inside[-1]["state"], (
            f"hour {_when(t)}: state {row['state']!r}, last 5-minute row {inside[-1]}\n{ctx}"
        )
    negative = {t: r["change"] for t, r in {**sc.five, **sc.hours}.items()
                if r["change"] is None or r["change"] < -TOL}
    assert not negative, f"negative or empty changes: {negative}\n{ctx}"
    assert sc.runs and sc.runs[-1] >= max(after), ctx


@pytest.mark.parametrize("engine", ENGINES)
def test_plan_into_open_window_leaves_it_to_ha(scenarios: dict[str, Scenario],
                                               engine: str) -> None:
    """Input for sensor.grid_energy that reaches into the open (not yet compiled) 5-minute window
    and beyond: `plan` says those are left out and writes nothing; `import` writes no row for
    them (and, given values equal to what the database holds, changes no other row); HA then
    compiles the open window itself, from the meter, without error."""
    sc = scenario_of(scenarios, engine)
    ctx = sc.context()
    out = sc.plan_proc.stdout + sc.plan_proc.stderr
    print(describe(sc.plan_proc))
    assert sc.plan_proc.returncode == 0, describe(sc.plan_proc)
    assert "left out" in out and "not compiled" in out, (
        f"`backdate plan` does not say that the open window is left out:\n{out}\n{ctx}"
    )
    assert sc.db_after_plan == sc.db_before_plan, f"`backdate plan` wrote rows\n{ctx}"

    proc = sc.import2_proc
    assert proc.returncode == 0, f"{describe(proc)}\n{ctx}"
    open_hour = sc.open_window // 3600 * 3600
    for table, limit in (("statistics_short_term", sc.open_window), ("statistics", open_hour)):
        before, after = sc.db_before_plan[table], sc.db_after_import2[table]
        late = sorted(t for t in after if t >= limit)
        assert not late, (
            f"{table}: backdate wrote rows HA has not compiled yet: "
            f"{[_when(int(t)) for t in late]} (open window {_when(int(sc.open_window))})\n{ctx}"
        )
        changed = [(t, before[t], after.get(t)) for t in sorted(before)
                   if after.get(t) is None
                   or abs(after[t][1] - before[t][1]) >= TOL
                   or (before[t][0] is not None and after[t][0] != before[t][0])]
        assert not changed, (
            f"{table}: re-importing the values the database holds changed (state, sum):\n  "
            + "\n  ".join(f"{_when(int(t))}: {a} -> {b}" for t, a, b in changed[:10])
            + f"\n{ctx}"
        )
        ordered = sorted(after)
        for t in sorted(set(after) - set(before)):  # new rows: only zero-change gap windows
            prev = ordered[ordered.index(t) - 1] if ordered.index(t) else None
            assert t >= sc.seam and prev is not None and abs(
                after[t][1] - after[prev][1]) < TOL, (
                f"{table}: unexpected new row {_when(int(t))}: {after[t]}\n{ctx}"
            )

    # HA compiled the window that was open during the import, from the meter.
    row = sc.five.get(int(sc.open_window))
    assert row is not None, (
        f"HA did not compile the window {_when(int(sc.open_window))} that was open during the "
        f"import (a lost compile run?):\n  {_fmt(sc.five, sorted(sc.five)[-5:])}\n{ctx}"
    )
    start_value = meter_at(sc.samples, sc.open_window)
    end_value = meter_at(sc.samples, sc.open_window + FIVE)
    assert start_value is not None and end_value is not None
    assert abs(row["change"] - (end_value - start_value)) < TOL, (
        f"{_when(int(sc.open_window))}: HA's change {row['change']!r}, the meter grew "
        f"{end_value - start_value!r} (input said 1.0 kWh)\n{ctx}"
    )
    assert int(sc.open_window) in {int(r) for r in sc.runs}, ctx


@pytest.mark.parametrize("engine", ENGINES)
def test_prepended_rows_carry_the_meter_state(scenarios: dict[str, Scenario],
                                              engine: str) -> None:
    """PRODUCT.md "Rows": `state` is the meter value at the end of the row. HA's own hourly
    rollup copies `state` from the last 5-minute row of the hour (ha-recorder.md §3.4), so in
    the prepended range both tables must agree where both exist, and `state` must move with
    `sum` (the input's deltas are the meter's growth): otherwise a statistics graph of the
    hourly `state` steps at the seam from the prepended values to HA's meter (~5000 kWh)."""
    sc = scenario_of(scenarios, engine)
    ctx = sc.context()
    mismatched = []
    with_five = [t for t in sc.hours if t < sc.seam and t + 3600 - FIVE in sc.five]
    assert len(with_five) >= (SHORT_TERM_DAYS - 1) * 24, (
        f"only {len(with_five)} prepended hours have 5-minute rows\n{ctx}")
    for t in sorted(with_five):
        last5 = sc.five[t + 3600 - FIVE]
        hour = sc.hours[t]
        if hour["state"] is None or abs(hour["state"] - last5["state"]) >= TOL:
            mismatched.append(f"{_when(t)}: hourly state {hour['state']!r} (sum "
                              f"{hour['sum']!r}), its last 5-minute row {last5}")
    assert not mismatched, (
        f"{SID}: {len(mismatched)} prepended hours whose `state` is not the meter value of "
        f"their last 5-minute row:\n  " + "\n  ".join(mismatched[:5]) + f"\n{ctx}"
    )
    for table, rows in (("hourly", sc.hours), ("5-minute", sc.five)):
        offsets = {t: r["state"] - r["sum"] for t, r in rows.items() if t < sc.seam}
        spread = max(offsets.values()) - min(offsets.values())
        assert spread < TOL, (
            f"{SID}: prepended {table} rows: `state` - `sum` varies by {spread!r} (the meter "
            f"does not grow with the input)\n{ctx}"
        )


@pytest.mark.parametrize("engine", ENGINES)
def test_ten_years_into_another_statistic_across_a_compile_run(
        scenarios: dict[str, Scenario], engine: str) -> None:
    """Ten years of hourly kWh into backdate:coexist_ten_years, running when one of HA's
    compile runs fires: HA shows every one of the 87,648 hours as the input."""
    sc = scenario_of(scenarios, engine)
    ctx = sc.context()
    print(ctx)
    assert sc.ten_started < sc.ten_compile < sc.ten_ended, (
        f"timing assumption broke: the ten-year import ran {utc(sc.ten_started):%H:%M:%S.%f}"
        f"-{utc(sc.ten_ended):%H:%M:%S.%f}, HA's compile run at {utc(sc.ten_compile):%H:%M:%S}"
        f"\n{ctx}")
    assert sc.ten_proc.returncode == 0, describe(sc.ten_proc)
    assert "backup:" in sc.ten_proc.stdout, f"no backup made:\n{sc.ten_proc.stdout}"
    expected = dg.hourly_totals(sc.ten_years)
    assert len(expected) == TEN_YEARS_DAYS * 24
    assert_amounts({t: r["change"] for t, r in sc.other_hours.items()}, expected,
                   f"{engine} {OTHER}: hourly change\n{ctx}")
    assert abs(sc.other_hours[max(sc.other_hours)]["sum"] - sum(expected.values())) < 1e-3


@pytest.mark.parametrize("engine", ENGINES)
def test_ha_lost_no_compile_run_and_logged_no_error(scenarios: dict[str, Scenario],
                                                    engine: str) -> None:
    """statistics_runs holds one row per 5-minute window from HA's start to the last compile
    due, without a gap; HA's log has no error, no recorder warning, nothing about locks,
    busy databases, deadlocks or serialization failures, and HA started the sensor's sum
    exactly once."""
    sc = scenario_of(scenarios, engine)
    ctx = sc.context()
    runs = [int(r) for r in sc.runs]
    gaps = [(_when(a), _when(b)) for a, b in zip(runs, runs[1:], strict=False) if b - a != FIVE]
    assert runs and not gaps, f"statistics_runs has gaps: {gaps}\n{ctx}"
    assert runs[0] <= math.floor(sc.started / FIVE) * FIVE, (
        f"statistics_runs starts at {_when(runs[0])}, after HA's start\n{ctx}")
    due = math.floor((sc.read_at - COMPILE_DELAY - 5) / FIVE) * FIVE - FIVE
    assert runs[-1] >= due, (
        f"the last statistics_runs row is {_when(runs[-1])}; the window {_when(due)} was due "
        f"when the rows were read\n{ctx}")
    assert not sc.log, f"{engine}: HA's log:\n" + "\n".join(sc.log[:20]) + f"\n{ctx}"
