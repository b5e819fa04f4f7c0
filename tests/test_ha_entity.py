"""History imported into an ENTITY statistic that a running Home Assistant compiles itself.

Why: the hardest seam backdate promises (PRODUCT.md "Continuity", "Coexistence") is the one with
HA's own 5-minute compiler. HA continues a sensor's ``sum`` from its latest short-term row and
measures growth from that row's ``state`` (the meter value, ha-recorder.md §3.4). An import that
moves those rows wrongly shows as a spike of the whole meter value (~5000 kWh), a negative hour,
or a lost compile run at the next compile. A model of HA cannot show that; HA 2024.3.3 can.

One scenario (module fixture, about 7-11 minutes of wall clock, mostly waiting for HA's timer):

1. HA runs; a thread posts a rising meter (~5000 kWh, ``total_increasing``) to
   ``sensor.grid_energy`` every 15-25 s and keeps HA's ``last_updated`` of every state.
2. Wait until HA compiled its first 5-minute row (at a 5-minute mark + 10 s).
3. With HA running: ``backdate import`` 3 days of 15-minute deltas that end at the hour of that
   first row (a prepend) into ``sensor.grid_energy``.
4. Right after: ``backdate plan`` / ``import`` of input reaching into the open 5-minute window
   and beyond (values that agree with what the database already holds for the closed windows).
5. Keep posting; wait for HA's next compile (and an hourly rollup if one fits into ~11 min).

A third test holds the prepended rows to PRODUCT.md's "state is the meter value" in both tables.

The tests then judge everything through HA's ``recorder/statistics_during_period`` and HA's log.
The SQLite file is only ever opened read-only (``statistics_runs`` and a before/after snapshot).
"""

from __future__ import annotations

import math
import os
import random
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest
from ha_harness import REPO_ROOT, HomeAssistant

from backdate.hass.client import statistics_during_period_sync

# A hook in a test module is not seen by pytest unless the module is also a plugin. Listing the
# module itself in ``pytest_plugins`` registers it when it is collected; pytest then calls its
# (historic) ``pytest_configure`` at once, before ``pytestmark`` is read: that is why
# ``pytestmark`` is computed lazily below (``__getattr__``), or pytest would warn "unknown mark
# slow" while importing the module.
pytest_plugins = [__name__]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: takes minutes (waits for Home Assistant's 5-minute compile timer)"
    )


def __getattr__(name: str) -> Any:
    if name == "pytestmark":
        return [pytest.mark.ha, pytest.mark.slow]
    raise AttributeError(name)


SID = "sensor.grid_energy"
ATTRIBUTES = {
    "state_class": "total_increasing",
    "device_class": "energy",
    "unit_of_measurement": "kWh",
    "friendly_name": "Grid energy",
}
METER_START = 4987.25  # kWh: far from any sum backdate writes (the sums start near 0)
TOL = 1e-6
FIVE = 300
COMPILE_DELAY = 10  # HA's timer: UTC minutes 0, 5, ..., 55 at second 10
BUDGET = 690.0  # s of wall clock from HA's start after which no optional wait is begun
KWH = {"energy": "kWh"}
Rows = dict[int, dict[str, Any]]


# ------------------------------------------------------------------------------ the live meter


class MeterPoster(threading.Thread):
    """Posts a rising meter to HA every 15-25 s; remembers HA's ``last_updated`` per value."""

    def __init__(self, ha: HomeAssistant, *, seed: int = 7) -> None:
        super().__init__(name="meter-poster", daemon=True)
        self.ha = ha
        self.rng = random.Random(seed)
        self.samples: list[tuple[float, float]] = []  # (HA's last_updated, kWh), in order
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        value = METER_START
        try:
            while not self._halt.is_set():
                body = self.ha.post_state(SID, f"{value:.3f}", ATTRIBUTES)
                stamp = datetime.fromisoformat(body["last_updated"]).timestamp()
                with self._lock:
                    self.samples.append((stamp, value))
                value = round(value + self.rng.uniform(0.005, 0.06), 3)
                self._halt.wait(self.rng.uniform(15, 25))
        except BaseException as err:  # reported by check()
            self.error = err

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"posting states to HA failed: {self.error!r}")
        if not self.is_alive() and not self._halt.is_set():
            raise AssertionError("the meter thread died")

    def snapshot(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self.samples)


def meter_at(samples: list[tuple[float, float]], t: float) -> float | None:
    """The sensor's state at instant t: the last value HA recorded before t."""
    value = None
    for stamp, v in samples:
        if stamp >= t:
            break
        value = v
    return value


# ------------------------------------------------------------------------------------ helpers


BACKDATE = str(REPO_ROOT / ".venv" / "bin" / "backdate")


def run_backdate(*args: object) -> subprocess.CompletedProcess[str]:
    """The installed CLI as a user runs it; the caller judges the exit code and output."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([BACKDATE, *(str(a) for a in args)], capture_output=True, text=True,
                          timeout=300, env=env, check=False)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (f"`backdate {' '.join(proc.args[1:])}` exited {proc.returncode}\n--- stdout ---\n"
            f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")


def _when(ts: float) -> str:
    return (f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"
            f" ({datetime.fromtimestamp(ts, dg.VIENNA):%m-%d %H:%M%z} Vienna)")


def assert_amounts(actual: dict[int, Any], expected: dict[int, float], what: str) -> None:
    """Exactly the expected slots, each with |HA - expected| < TOL."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = [(t, expected[t], actual[t]) for t in sorted(set(expected) & set(actual))
             if actual[t] is None or abs(actual[t] - expected[t]) >= TOL]
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing, first {_when(missing[0])}")
    if extra:
        lines.append(f"{len(extra)} unexpected, first {_when(extra[0])}: {actual[extra[0]]}")
    lines += [f"{_when(t)}: expected {e!r}, HA says {g!r}" for t, e, g in wrong[:8]]
    if len(wrong) > 8:
        lines.append(f"... {len(wrong)} wrong in all")
    assert not lines, f"{what}:\n  " + "\n  ".join(lines)


def now() -> float:
    return time.time()


def next_compile(t: float) -> float:
    """Wall-clock time at which HA compiles the 5-minute window that is open at t."""
    return (math.floor(t / FIVE) + 1) * FIVE + COMPILE_DELAY


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def ha_rows(ha: HomeAssistant, start: float, end: float, period: str) -> Rows:
    """HA's rows for SID, keyed by start (UTC epoch s): change, sum and state."""
    with ha.ws() as ws:
        result = statistics_during_period_sync(
            ws, [SID], utc(start), utc(end), period,  # type: ignore[arg-type]
            ["change", "sum", "state"], KWH,
        )
    return {int(round(r["start"] / 1000)): r for r in result.get(SID, [])}


def db_connect(ha: HomeAssistant) -> sqlite3.Connection:
    assert ha.db_path is not None
    return sqlite3.connect(f"file:{ha.db_path}?mode=ro", uri=True, timeout=30)


def compiled_runs(ha: HomeAssistant) -> list[float]:
    """Starts of the 5-minute windows HA recorded in statistics_runs (UTC epoch s), ascending."""
    con = db_connect(ha)
    try:
        values = [r[0] for r in con.execute("SELECT start FROM statistics_runs ORDER BY start")]
    finally:
        con.close()
    out = []
    for v in values:
        t = datetime.fromisoformat(str(v))
        out.append((t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp())
    return out


def last_compiled_end(ha: HomeAssistant) -> int:
    return int(compiled_runs(ha)[-1]) + FIVE


def db_snapshot(ha: HomeAssistant) -> dict[str, dict[float, tuple[Any, Any]]]:
    """(state, sum) by start_ts of SID in both tables, read-only and in one short read."""
    con = db_connect(ha)
    try:
        out: dict[str, dict[float, tuple[Any, Any]]] = {}
        for table in ("statistics", "statistics_short_term"):
            out[table] = {
                float(start): (state, total)
                for start, state, total in con.execute(
                    f"SELECT start_ts, state, sum FROM {table} WHERE metadata_id = "
                    "(SELECT id FROM statistics_meta WHERE statistic_id = ?)",
                    (SID,),
                )
            }
    finally:
        con.close()
    return out


def wait_until(predicate, deadline: float, what: str, poster: MeterPoster, detail) -> Any:
    """Poll ``predicate`` every 2 s until it returns something truthy or the deadline passes."""
    while True:
        poster.check()
        got = predicate()
        if got:
            return got
        if now() > deadline:
            raise AssertionError(f"timed out waiting for {what}; {detail()}")
        time.sleep(2)


def wait_for_window(ha: HomeAssistant, poster: MeterPoster, window: float) -> Rows:
    """Until HA has compiled the 5-minute window starting at ``window`` for SID."""
    deadline = window + FIVE + COMPILE_DELAY + 90

    def got() -> Rows | None:
        rows = ha_rows(ha, window - 3600, window + FIVE, "5minute")
        return rows if int(window) in rows else None

    return wait_until(
        got, deadline, f"HA to compile the 5-minute window {_when(int(window))} of {SID}",
        poster,
        lambda: f"HA returned {ha_rows(ha, window - 3600, window + FIVE, '5minute')}\n"
        f"--- HA log tail ---\n{ha.log_tail(30)}",
    )


def log_problems(ha: HomeAssistant) -> list[str]:
    """Recorder failures a writer under a running HA could cause, and HA losing the sum."""
    bad = []
    initial = 0
    for line in ha.log_text(all_runs=True).splitlines():
        if f"Compiling initial sum statistics for {SID}," in line:
            initial += 1
        if (" ERROR " in line or "Traceback" in line or "database is locked" in line
                or "UNIQUE constraint" in line or "duplicated statistic" in line
                or f"Detected new cycle for {SID}," in line):
            bad.append(line)
    if initial != 1:
        bad.append(f"HA started the sum of {SID} from zero {initial} times (expected once)")
    return bad


# ----------------------------------------------------------------------------------- scenario


@dataclass
class Scenario:
    ha: HomeAssistant
    poster: MeterPoster
    started: float  # wall clock when HA was started
    first_row: int = 0  # start of HA's first 5-minute row of SID
    seam: int = 0  # the hour of that row: the prepended history ends here
    history: list[dg.Interval] = field(default_factory=list)
    before_import: Rows = field(default_factory=dict)  # HA's 5-minute rows before the import
    import_proc: Any = None
    compiled_at_import: float = 0.0  # end of the newest compiled window when backdate imported
    # the second test: input reaching into the open window
    open_window: float = 0.0
    open_input: list[dg.Interval] = field(default_factory=list)
    plan_proc: Any = None
    import2_proc: Any = None
    db_before_plan: dict[str, dict[float, tuple[Any, Any]]] = field(default_factory=dict)
    db_after_plan: dict[str, dict[float, tuple[Any, Any]]] = field(default_factory=dict)
    db_after_import2: dict[str, dict[float, tuple[Any, Any]]] = field(default_factory=dict)
    # after the waits
    samples: list[tuple[float, float]] = field(default_factory=list)
    five: Rows = field(default_factory=dict)
    hours: Rows = field(default_factory=dict)
    runs: list[float] = field(default_factory=list)
    rollup_seen: bool = False
    timeline: list[str] = field(default_factory=list)

    def mark(self, what: str) -> None:
        self.timeline.append(f"+{now() - self.started:6.1f}s {utc(now()):%H:%M:%S}Z {what}")


def _open_window_input(sc: Scenario, compiled_end: float) -> list[dg.Interval]:
    """Input over [seam - 1 h, open window + 10 min): the last prepended hour with the history's
    values, every compiled window with the change HA shows for it (0 where it has no row),
    then 1 kWh per 5 minutes for the open window and the two after it (not compiled yet)."""
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
    ha = sc.ha
    # Both commands must run inside one compile interval: the open window must stay open.
    if next_compile(now()) - now() < 75:
        window = math.floor(now() / FIVE) * FIVE
        sc.mark(f"waiting for the compile of {_when(window)} before the open-window case")
        wait_for_window(ha, sc.poster, window)
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
        f"\n{_context(sc)}"
    )


@pytest.fixture(scope="module")
def scenario(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scenario]:
    ha = HomeAssistant(tmp_path_factory.mktemp("ha_entity"), venv=ha_venv)
    tmp = tmp_path_factory.mktemp("ha_entity_input")
    started = now()
    ha.start()
    poster = MeterPoster(ha)
    poster.start()
    sc = Scenario(ha, poster, started)
    try:
        sc.mark(f"HA running after {ha.startup_seconds:.1f} s; posting {SID}")
        try:
            _run_scenario(sc, tmp)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{_context(sc)}") from None
        yield sc
    finally:
        poster.stop()
        ha.stop()


def _run_scenario(sc: Scenario, tmp: Path) -> None:
    ha, poster = sc.ha, sc.poster

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

    # 3. The prepend, while HA runs (with backdate's default backup).
    seam = utc(sc.seam)
    sc.history = dg.quarter_hour_deltas(seam - timedelta(days=3), seam, seed=91)
    history_csv = dg.write_delta_csv(tmp / "history.csv", sc.history, value_column="kwh")
    sc.before_import = ha_rows(ha, sc.seam - 3600, now() + 3600, "5minute")
    sc.compiled_at_import = last_compiled_end(ha)
    sc.import_proc = run_backdate("import", history_csv, "--statistic-id", SID,
                                  "--to", ha.db_url, "--yes")
    assert sc.import_proc.returncode == 0, describe(sc.import_proc)
    assert last_compiled_end(ha) == sc.compiled_at_import, (
        "HA compiled a window while backdate imported: the test's timing assumption broke"
        f" ({_when(int(sc.compiled_at_import))} -> {_when(int(last_compiled_end(ha)))})"
    )
    sc.mark(f"import of 3 days before {_when(sc.seam)} done")

    # 4. The second case, in the same compile interval when it fits.
    _run_open_window_case(sc, tmp)

    # 5. HA's next compile after both imports, then an hourly rollup if it fits the budget.
    window = last_compiled_end(ha)
    wait_for_window(ha, poster, window)
    sc.mark(f"HA compiled {_when(int(window))} after the imports")
    rollup = (math.floor(now() / 3600) + 1) * 3600 + COMPILE_DELAY
    if rollup + 40 <= sc.started + BUDGET:
        sc.mark(f"waiting for the hourly rollup at {utc(rollup):%H:%M:%S}Z")
        wait_for_window(ha, poster, rollup - COMPILE_DELAY - FIVE)
        sc.rollup_seen = True
        sc.mark("hourly rollup compiled")
    # Settle: HA rolls the hour up in the same job as the :55 window; read everything now.
    sc.samples = poster.snapshot()
    sc.five = ha_rows(ha, sc.seam - 4 * 86400, now() + 3600, "5minute")
    sc.hours = ha_rows(ha, sc.seam - 4 * 86400, now() + 3600, "hour")
    sc.runs = compiled_runs(ha)
    sc.mark(f"done: {len(sc.five)} 5-minute rows, {len(sc.hours)} hourly rows")


# -------------------------------------------------------------------------------------- tests


def _context(sc: Scenario) -> str:
    return "timeline:\n  " + "\n  ".join(sc.timeline)


def _fmt(rows: Rows, starts: list[int]) -> str:
    return "\n  ".join(f"{_when(t)}: {rows.get(t)}" for t in starts)


def test_prepend_into_compiled_entity_statistic_leaves_no_step(scenario: Scenario) -> None:
    """3 days of 15-minute kWh deltas prepended to sensor.grid_energy while HA compiles it:
    the prepended hours and 5-minute windows equal the input; HA's rows before the import keep
    their change and meter state; every window HA compiles afterwards grows by exactly the
    meter's growth (no ~5000 kWh spike, nothing negative); HA loses no compile run and logs no
    error."""
    sc = scenario
    ctx = _context(sc)
    print(ctx)  # shown with -rP: when things happened, relative to HA's compile timer
    assert sc.import_proc.returncode == 0, describe(sc.import_proc)

    # The prepended hours and 5-minute windows: the input, nothing more before the seam.
    hourly = dg.hourly_totals(sc.history)
    assert len(hourly) == 72
    assert_amounts({t: r["change"] for t, r in sc.hours.items() if t < sc.seam}, hourly,
                   f"{SID}: prepended hours (HA's hourly change)\n{ctx}")
    assert_amounts({t: r["change"] for t, r in sc.five.items() if t < sc.seam},
                   dg.five_minute_totals(sc.history),
                   f"{SID}: prepended 5-minute windows (HA's 5-minute change)\n{ctx}")

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
        f"history's {total!r} kWh plus HA's own growth\n{ctx}"
    )

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
        f"{SID}: windows HA compiled after the import do not follow the meter:\n  "
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

    # HA lost no compile run: one statistics_runs row per window from its first compile on.
    runs = [int(r) for r in sc.runs if r >= sc.first_row]
    gaps = [(a, b) for a, b in zip(runs, runs[1:], strict=False) if b - a != FIVE]
    assert runs and not gaps, f"statistics_runs has gaps: {gaps}\n{ctx}"
    assert runs[-1] >= max(after), ctx

    problems = log_problems(sc.ha)
    assert not problems, "HA's log:\n" + "\n".join(problems[:20]) + f"\n{ctx}"


def test_plan_into_open_window_leaves_it_to_ha(scenario: Scenario) -> None:
    """Input for sensor.grid_energy that reaches into the open (not yet compiled) 5-minute window
    and beyond: `plan` says those are left out and writes nothing; `import` writes no row for
    them (and, given values equal to what the database holds, changes no other row); HA then
    compiles the open window itself, from the meter, without error."""
    sc = scenario
    ctx = _context(sc)
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
    problems = log_problems(sc.ha)
    assert not problems, "HA's log:\n" + "\n".join(problems[:20]) + f"\n{ctx}"



def test_prepended_rows_carry_the_meter_state(scenario: Scenario) -> None:
    """PRODUCT.md "Rows": `state` is the meter value at the end of the row. HA's own hourly
    rollup copies `state` from the last 5-minute row of the hour (ha-recorder.md §3.4), so in
    the prepended range both tables must agree, and `state` must move with `sum` (the input's
    deltas are the meter's growth): otherwise a statistics graph of the hourly `state` steps
    at the seam from the prepended values to HA's meter (~5000 kWh)."""
    sc = scenario
    ctx = _context(sc)
    mismatched = []
    for t in sorted(t for t in sc.hours if t < sc.seam):
        last5 = sc.five.get(t + 3600 - FIVE)
        hour = sc.hours[t]
        if last5 is None or hour["state"] is None or abs(hour["state"] - last5["state"]) >= TOL:
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
