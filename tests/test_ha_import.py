"""`backdate import` into Home Assistant's recorder database, judged by Home Assistant itself.

Why: PRODUCT.md's promises are about what the Energy dashboard shows. The dashboard reads
``recorder/statistics_during_period`` with ``types: ["change"]``, so every test here runs the
real CLI as a subprocess against the recorder database of a real HA 2024.3.3 (time zone
Europe/Vienna) and compares HA's answer, hour by hour (and per day, and per 5 minutes where
5-minute rows are expected), with the input's energy computed independently in
``tests/datagen.py``. Nothing reads the database behind HA's back.

The recorder database is the ``ha_engine`` fixture's: SQLite here (conftest.py);
tests/test_ha_servers.py runs these same tests with HA's recorder on MariaDB and PostgreSQL
(an empty database that HA creates its schema in), backdate writing through HA's own db_url.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest
from ha_harness import REPO_ROOT, HomeAssistant, recorder_database

from backdate.hass.client import statistics_during_period_sync

pytestmark = pytest.mark.ha

TOL = 1e-6  # kWh per hour (the brief's acceptance tolerance)
SHORT_TERM_DAYS = 10  # HA's purge_keep_days: 5-minute rows are written only this far back
KWH = {"energy": "kWh"}  # what the Energy dashboard asks for


def _backdate_exe() -> str:
    exe = REPO_ROOT / ".venv" / "bin" / "backdate"
    if exe.exists():
        return str(exe)
    found = shutil.which("backdate")
    if found is None:
        raise RuntimeError("no backdate console script (.venv/bin/backdate)")
    return found


BACKDATE = _backdate_exe()


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory, ha_engine: str
       ) -> Iterator[HomeAssistant]:
    """One running HA for the tests that import while HA runs (each uses its own statistic),
    its recorder on ``ha_engine`` (a fresh database HA creates its schema in)."""
    with recorder_database(ha_engine, "import") as db_url:
        with HomeAssistant(tmp_path_factory.mktemp(f"ha_import_{ha_engine}"), venv=ha_venv,
                           db_url=db_url) as instance:
            yield instance
        assert_log_clean(instance)


@pytest.fixture
def fresh_ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory, ha_engine: str
             ) -> Iterator[HomeAssistant]:
    """A started HA of its own (fresh config dir and database on ``ha_engine``), for a test
    that stops it; stopped and its database dropped afterwards."""
    with (recorder_database(ha_engine, "fresh") as db_url,
          HomeAssistant(tmp_path_factory.mktemp(f"ha_fresh_{ha_engine}"), venv=ha_venv,
                        db_url=db_url) as instance):
        yield instance


def assert_log_clean(instance: HomeAssistant) -> None:
    """Writing under a running HA must not make its recorder fail (locks, constraint errors)."""
    locks = ("database is locked", "Deadlock found", "deadlock detected", "Lock wait timeout",
             "could not serialize")
    bad = [line for line in instance.log_text(all_runs=True).splitlines()
           if " ERROR " in line or "Traceback" in line or any(m in line for m in locks)]
    assert not bad, "HA logged errors while backdate wrote its database:\n" + "\n".join(bad[:20])


# ------------------------------------------------------------------------------------- helpers


def backdate(*args: object, expect: int = 0, cwd: Path | None = None
             ) -> subprocess.CompletedProcess[str]:
    """Run the CLI (in ``cwd``); fail with its output unless it exits with ``expect``."""
    cmd = [BACKDATE, *(str(a) for a in args)]
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                          check=False, cwd=cwd)
    assert proc.returncode == expect, (
        f"`backdate {' '.join(cmd[1:])}` exited {proc.returncode}, expected {expect}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


def import_into(ha: HomeAssistant, *args: object, expect: int = 0
                ) -> subprocess.CompletedProcess[str]:
    return backdate("import", *args, "--to", ha.db_url, "--no-backup", "--yes", expect=expect)


def query(
    ha: HomeAssistant,
    statistic_id: str,
    start: datetime,
    end: datetime,
    period: str,
    types: list[str],
    *,
    min_rows: int = 1,
    units: dict[str, str] | None = None,
    timeout: float = 20,
) -> list[dict[str, Any]]:
    """HA's rows; polls until at least ``min_rows`` are there (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    with ha.ws() as ws:
        while True:
            result = statistics_during_period_sync(
                ws, [statistic_id], start, end, period, types, units  # type: ignore[arg-type]
            )
            rows = result.get(statistic_id, [])
            if len(rows) >= min_rows or time.monotonic() > deadline:
                return rows
            time.sleep(0.3)


def changes(
    ha: HomeAssistant,
    statistic_id: str,
    start: datetime,
    end: datetime,
    period: str,
    *,
    min_rows: int = 1,
) -> dict[int, float]:
    """HA's ``change`` per period, keyed by the period start in UTC epoch seconds."""
    rows = query(ha, statistic_id, start, end, period, ["change"], min_rows=min_rows, units=KWH)
    return {int(round(r["start"] / 1000)): r["change"] for r in rows}


def metadata(ha: HomeAssistant, statistic_id: str) -> dict[str, Any] | None:
    with ha.ws() as ws:
        items = ws.call("recorder/get_statistics_metadata", statistic_ids=[statistic_id])
    return next((m for m in items if m["statistic_id"] == statistic_id), None)


def _when(ts: int) -> str:
    return (f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"
            f" ({datetime.fromtimestamp(ts, dg.VIENNA):%m-%d %H:%M%z} Vienna)")


def assert_amounts(
    actual: dict[int, float | None],
    expected: dict[int, float],
    what: str,
    *,
    exact_keys: bool = True,
    tol: float = TOL,
) -> None:
    """Every expected slot present with |HA - expected| < tol; with exact_keys no extra slot."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected)) if exact_keys else []
    wrong = [
        (t, expected[t], actual[t])
        for t in sorted(set(expected) & set(actual))
        if actual[t] is None or abs(actual[t] - expected[t]) >= tol  # type: ignore[operator]
    ]
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing, first {_when(missing[0])}")
    if extra:
        lines.append(f"{len(extra)} unexpected, first {_when(extra[0])}: {actual[extra[0]]}")
    for t, exp, got in wrong[:8]:
        lines.append(f"{_when(t)}: expected {exp!r}, HA says {got!r}")
    if len(wrong) > 8:
        lines.append(f"... {len(wrong)} wrong in all")
    assert not lines, f"{what}:\n  " + "\n  ".join(lines)


def assert_no_negative(actual: dict[int, float | None], what: str) -> None:
    negative = {t: v for t, v in actual.items() if v is None or v < -TOL}
    assert not negative, f"{what}: negative or empty change at " + ", ".join(
        f"{_when(t)}={v}" for t, v in list(negative.items())[:5]
    )


def check_sum_statistic(
    ha: HomeAssistant,
    statistic_id: str,
    intervals: list[dg.Interval],
    *,
    five_minute: bool,
    factor: float = 1.0,
) -> None:
    """A statistic made from ``intervals`` alone: hourly, daily and 5-minute changes in HA."""
    start, end = intervals[0].start, intervals[-1].end
    hourly = dg.hourly_totals(intervals, factor)
    got = changes(ha, statistic_id, start - timedelta(days=1), end + timedelta(hours=1), "hour",
                  min_rows=len(hourly))
    assert_amounts(got, hourly, f"{statistic_id}: hourly change")

    daily = dg.daily_totals(hourly)
    day_start = dg.local_midnight(start)
    day_end = dg.next_local_midnight(end - timedelta(seconds=1))
    got_days = changes(ha, statistic_id, day_start, day_end, "day", min_rows=len(daily))
    assert_amounts(got_days, daily, f"{statistic_id}: daily change")

    got5 = changes(ha, statistic_id, start - timedelta(hours=1), end + timedelta(hours=1),
                   "5minute", min_rows=1 if five_minute else 0)
    if five_minute:
        assert_amounts(got5, dg.five_minute_totals(intervals, factor),
                       f"{statistic_id}: 5-minute change")
    else:
        assert not got5, f"{statistic_id}: 5-minute rows older than {SHORT_TERM_DAYS} days"


def last_full_hour() -> datetime:
    """The system clock's hour, on purpose: the running Home Assistant compiles by it."""
    return dg.floor_hour(datetime.now(UTC))


# -------------------------------------------------------------------------- (a) new statistic


def _three_days(tmp_path: Path, name: str = "house_energy") -> tuple[Path, list[dg.Interval]]:
    end = last_full_hour()
    intervals = dg.quarter_hour_deltas(end - timedelta(days=3), end, seed=11)
    return dg.write_delta_csv(tmp_path / f"{name}.csv", intervals, value_column="kwh"), intervals


def _check_new_external(ha: HomeAssistant, statistic_id: str, intervals: list[dg.Interval]
                        ) -> None:
    meta = metadata(ha, statistic_id)
    assert meta is not None, f"HA does not know {statistic_id}"
    assert meta["source"] == "backdate"
    assert meta["has_sum"] is True
    assert meta["statistics_unit_of_measurement"] == "kWh"
    check_sum_statistic(ha, statistic_id, intervals, five_minute=True)


def test_new_statistic_with_ha_stopped(fresh_ha: HomeAssistant, tmp_path: Path) -> None:
    """15-minute kWh deltas over 3 days into the database of a stopped HA (with the default
    backup: the SQLite file beside it, or the rows to backdate-backup-*.jsonl in the current
    directory on a server); HA shows every hour, day and 5 minutes after it starts."""
    path, intervals = _three_days(tmp_path)
    fresh_ha.stop()
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = backdate("import", path, "--to", fresh_ha.db_url, "--yes", cwd=workdir)
    if fresh_ha.engine == "sqlite":
        backups = list(fresh_ha.config_dir.glob("home-assistant_v2.db.backdate-*.jsonl"))
    else:
        backups = list(workdir.glob("backdate-backup-*.jsonl"))
    assert "backup:" in proc.stdout and backups, f"no backup made:\n{proc.stdout}"
    fresh_ha.start()
    _check_new_external(fresh_ha, "backdate:house_energy", intervals)
    assert_log_clean(fresh_ha)


def test_new_statistic_with_ha_running(ha: HomeAssistant, tmp_path: Path) -> None:
    """The same while HA runs; `plan` before it writes nothing. Then the middle day is
    re-imported doubled (with its row-level backup) and `backdate restore` undoes it while HA
    keeps running: HA's own statistics_during_period returns exactly what it returned before
    (sum and state, hourly and 5-minute), and HA's log stays clean."""
    path, intervals = _three_days(tmp_path, "house_energy_live")
    sid = "backdate:house_energy_live"
    backdate("plan", path, "--to", ha.db_url)
    assert metadata(ha, sid) is None, "`backdate plan` wrote the statistic"
    import_into(ha, path)
    _check_new_external(ha, sid, intervals)

    start, end = intervals[0].start - timedelta(hours=1), intervals[-1].end + timedelta(hours=1)

    def seen() -> dict[str, list[dict[str, Any]]]:
        return {period: query(ha, sid, start, end, period, ["sum", "state"], min_rows=72)
                for period in ("hour", "5minute")}

    before = seen()
    middle = [dg.Interval(i.start, i.end, i.value * 2) for i in intervals[96:192]]
    redo = dg.write_delta_csv(tmp_path / "house_energy_live_redo.csv", middle,
                              value_column="kwh")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    proc = backdate("import", redo, "--statistic-id", sid, "--to", ha.db_url, "--yes",
                    cwd=workdir)
    undo = next(line for line in proc.stdout.splitlines() if line.startswith("to undo: "))
    backup = Path(undo.split()[4])
    if not backup.is_absolute():
        backup = workdir / backup
    assert seen() != before, "the re-import changed nothing HA can see"
    backdate("restore", backup, "--to", ha.db_url, "--yes", cwd=workdir)
    assert seen() == before, "HA does not see the statistic exactly as before the re-import"
    assert ha.running, "Home Assistant stopped"
    assert_log_clean(ha)


def test_export_import_round_trip(ha: HomeAssistant, tmp_path: Path) -> None:
    """export (canonical CSV) of (a), imported as a new statistic: identical hourly changes."""
    path, intervals = _three_days(tmp_path, "round_trip_source")
    source, copy = "backdate:round_trip_source", "backdate:round_trip_copy"
    import_into(ha, path)
    start, end = intervals[0].start - timedelta(days=1), intervals[-1].end + timedelta(hours=1)
    original = changes(ha, source, start, end, "hour", min_rows=72)
    assert_amounts(original, dg.hourly_totals(intervals), f"{source}: hourly change")

    exported = tmp_path / "exported.csv"
    backdate("export", ha.db_url, "--statistic-id", source, "--format", "csv", "-o", exported)
    import_into(ha, exported, "--statistic-id", copy)
    assert_amounts(changes(ha, copy, start, end, "hour", min_rows=72), original,
                   f"{copy} (exported {source}, imported again): hourly change", tol=1e-9)


# ------------------------------------------------------------------------------- (b) prepend


def test_prepend_history_before_hourly_and_5minute_rows(ha: HomeAssistant, tmp_path: Path
                                                        ) -> None:
    """A month placed before 2 days that already have hourly and 5-minute rows."""
    sid = "backdate:prepend"
    end = last_full_hour()
    seam = end - timedelta(days=2)
    first = seam - timedelta(days=30)
    recent = dg.quarter_hour_deltas(seam, end, seed=21)
    history = dg.quarter_hour_deltas(first, seam, seed=22)
    recent_csv = dg.write_delta_csv(tmp_path / "recent.csv", recent)
    history_csv = dg.write_delta_csv(tmp_path / "history.csv", history)
    span = (first - timedelta(days=1), end + timedelta(hours=1))

    import_into(ha, recent_csv, "--statistic-id", sid)
    hours_before = changes(ha, sid, *span, "hour", min_rows=48)
    five_before = changes(ha, sid, seam, end, "5minute", min_rows=48 * 12)
    assert_amounts(hours_before, dg.hourly_totals(recent), "existing statistic: hourly change")
    assert_amounts(five_before, dg.five_minute_totals(recent),
                   "existing statistic: 5-minute change")

    now = datetime.now(UTC)
    import_into(ha, history_csv, "--statistic-id", sid)
    hours_after = changes(ha, sid, *span, "hour", min_rows=48 + 30 * 24)

    key = dg.epoch(seam)
    assert abs(hours_after[key] - hours_before[key]) < TOL, (
        f"seam hour {_when(key)} changed: {hours_before[key]!r} before, {hours_after[key]!r} "
        "after prepending"
    )
    assert_no_negative(hours_after, "after prepending: hourly change")
    assert_amounts({t: v for t, v in hours_after.items() if t >= key}, hours_before,
                   "pre-existing hours after prepending")
    assert_amounts({t: v for t, v in hours_after.items() if t < key},
                   dg.hourly_totals(history), "prepended hours")

    five_after = changes(ha, sid, first - timedelta(hours=1), end, "5minute",
                         min_rows=len(five_before))
    assert_amounts({t: v for t, v in five_after.items() if t >= key}, five_before,
                   "pre-existing 5-minute rows after prepending")
    # Prepended 5-minute rows: only inside HA's short-term retention, each = the input.
    window = dg.epoch(now) - SHORT_TERM_DAYS * 86400
    new5 = {t: v for t, v in five_after.items() if t < key}
    too_old = [t for t in new5 if t < window - 3600]
    assert not too_old, (
        f"5-minute rows older than {SHORT_TERM_DAYS} days: first {_when(too_old[0])}"
    )
    # The oldest 5-minute row has no row before it (older ones are outside the retention, as
    # after HA's own purge), so HA measures its change from 0: leave it out.
    oldest = min(new5)
    new5.pop(oldest)
    history5 = dg.five_minute_totals(history)
    expected5 = {t: v for t, v in history5.items()
                 if t != oldest and (t in new5 or t >= window + 3600)}
    assert_amounts(new5, expected5, "prepended 5-minute rows (within HA's retention)")


# ---------------------------------------------------------------------- (c) re-import a range


@dataclass
class ReimportCase:
    """Case (c)'s data, for every path: 10 days of quarter hours, then days 4-6 doubled."""

    start: datetime
    end: datetime
    lo: datetime
    hi: datetime
    old: list[dg.Interval]
    new: list[dg.Interval]
    old_csv: Path
    new_csv: Path

    @classmethod
    def make(cls, tmp_path: Path) -> ReimportCase:
        end = last_full_hour()
        start = end - timedelta(days=10)
        lo, hi = start + timedelta(days=3), start + timedelta(days=6)
        old = dg.quarter_hour_deltas(start, end, seed=31)
        new = [dg.Interval(i.start, i.end, i.value * 2) for i in old if lo <= i.start < hi]
        old_csv = dg.write_delta_csv(tmp_path / "ten_days.csv", old, value_column="delta",
                                     with_end=True, tz=UTC)
        new_csv = dg.write_delta_csv(tmp_path / "days_4_6.csv", new, value_column="delta",
                                     with_end=True, tz=UTC)
        return cls(start, end, lo, hi, old, new, old_csv, new_csv)

    @property
    def span(self) -> tuple[datetime, datetime]:
        return self.start - timedelta(days=1), self.end + timedelta(hours=1)

    def assert_edges_kept(self, before: dict[int, float], after: dict[int, float]) -> None:
        """The hours just outside the re-imported range keep their change (no step)."""
        for t, label in ((dg.epoch(self.lo) - 3600, "hour before the range"),
                         (dg.epoch(self.hi), "hour after the range")):
            assert abs(after[t] - before[t]) < TOL, (
                f"step at the {label} {_when(t)}: {before[t]!r} before, {after[t]!r} after")


def test_reimport_middle_range_with_new_values(ha: HomeAssistant, tmp_path: Path) -> None:
    """10 days, then days 4-6 again with doubled values: new inside, old outside, no step."""
    sid = "backdate:reimport"
    case = ReimportCase.make(tmp_path)
    start, end, old, new, span = case.start, case.end, case.old, case.new, case.span

    import_into(ha, case.old_csv, "--statistic-id", sid)
    hours_before = changes(ha, sid, *span, "hour", min_rows=240)
    assert_amounts(hours_before, dg.hourly_totals(old), "10 days: hourly change")
    five_before = changes(ha, sid, start, end, "5minute", min_rows=1)

    import_into(ha, case.new_csv, "--statistic-id", sid)
    expected = {**dg.hourly_totals(old), **dg.hourly_totals(new)}
    hours_after = changes(ha, sid, *span, "hour", min_rows=240)
    case.assert_edges_kept(hours_before, hours_after)
    assert_amounts(hours_after, expected, "after re-importing days 4-6: hourly change")
    assert_no_negative(hours_after, "after re-importing days 4-6")

    daily = dg.daily_totals(expected)
    got_days = changes(ha, sid, dg.local_midnight(start), dg.next_local_midnight(end), "day",
                       min_rows=len(daily))
    assert_amounts(got_days, daily, "after re-importing days 4-6: daily change")

    # 5-minute rows (those that exist: the last 10 days) follow the same rule, edges included.
    new5 = dg.five_minute_totals(new)
    expected5 = {t: new5.get(t, v) for t, v in five_before.items()}
    assert_amounts(five_before, {t: v for t, v in dg.five_minute_totals(old).items()
                                 if t in five_before}, "10 days: 5-minute change")
    assert len(five_before) >= (10 * 24 - 1) * 12, "10 days: 5-minute rows missing"
    five_after = changes(ha, sid, start, end, "5minute", min_rows=len(five_before))
    assert_amounts(five_after, expected5, "after re-importing days 4-6: 5-minute change")


# ---------------------------------------------------------------------------------- (d) DST

DST_CASES = {
    # season: (first local day, end (exclusive), DST day, quarter-hours on the DST day)
    "spring": (datetime(2024, 3, 30, tzinfo=dg.VIENNA), datetime(2024, 4, 2, tzinfo=dg.VIENNA),
               datetime(2024, 3, 31, tzinfo=dg.VIENNA), 92),
    "autumn": (datetime(2024, 10, 26, tzinfo=dg.VIENNA), datetime(2024, 10, 29, tzinfo=dg.VIENNA),
               datetime(2024, 10, 27, tzinfo=dg.VIENNA), 100),
}


@pytest.mark.parametrize("style", ["offsets", "naive"])
@pytest.mark.parametrize("season", ["spring", "autumn"])
def test_dst_days_in_wh(ha: HomeAssistant, tmp_path: Path, season: str, style: str) -> None:
    """15-minute Wh amounts across a DST change: a 23-hour / 25-hour day holds 92 / 100
    quarter-hours; naive local times in order with --tz write the repeated hour twice."""
    first, end, dst_day, quarters = DST_CASES[season]
    sid = f"backdate:dst_{season}_{style}"
    intervals = dg.quarter_hour_deltas(first, end, seed=41 if season == "spring" else 42,
                                       scale=1000, decimals=0)
    on_day = [i for i in intervals if i.start.astimezone(dg.VIENNA).date() == dst_day.date()]
    assert len(on_day) == quarters  # the generator's own check
    path = dg.write_delta_csv(tmp_path / f"{season}.csv", intervals, value_column="value",
                              naive=style == "naive")
    if style == "naive":
        text = path.read_text()
        repeated = "2024-10-27T02:00:00"
        assert text.count(repeated) == (2 if season == "autumn" else 0)
    tz_args = ["--tz", "Europe/Vienna"] if style == "naive" else []
    import_into(ha, path, "--statistic-id", sid, "--unit", "Wh", *tz_args)

    meta = metadata(ha, sid)  # a new statistic keeps the unit its input declares
    assert meta is not None and meta["statistics_unit_of_measurement"] == "Wh", meta
    hourly = dg.hourly_totals(intervals, 0.001)  # HA converts into kWh for `changes`
    got = changes(ha, sid, first - timedelta(days=1), end, "hour", min_rows=len(hourly))
    assert_amounts(got, hourly, f"{sid}: hourly change (kWh)")

    got_days = changes(ha, sid, first, end, "day", min_rows=3)
    day_key = dg.epoch(dst_day)
    expected_day = sum(i.value for i in on_day) / 1000
    assert day_key in got_days, f"HA has no day row for {dst_day:%Y-%m-%d}: {got_days}"
    assert abs(got_days[day_key] - expected_day) < TOL, (
        f"{dst_day:%Y-%m-%d} ({quarters} quarter-hours): expected {expected_day!r} kWh, "
        f"HA says {got_days[day_key]!r}"
    )
    assert_amounts(got_days, dg.daily_totals(hourly), f"{sid}: daily change")
    # Old data: no 5-minute rows (HA would purge them anyway).
    assert not changes(ha, sid, first, end, "5minute", min_rows=0), "5-minute rows for 2024"


def test_impossible_local_time_names_the_line(ha: HomeAssistant, tmp_path: Path) -> None:
    """A naive 02:15 on 2024-03-31 does not exist in Vienna: exit 1, file and line named,
    nothing written."""
    sid = "backdate:dst_gap"
    first, end, _day, _q = DST_CASES["spring"]
    intervals = dg.quarter_hour_deltas(first, end, seed=43, scale=1000, decimals=0)
    path = dg.write_delta_csv(tmp_path / "gap.csv", intervals, value_column="value", naive=True)
    lines = path.read_text().splitlines()
    at = next(n for n, line in enumerate(lines) if line.startswith("2024-03-31T03:00:00"))
    lines.insert(at, "2024-03-31T02:15:00,100")  # becomes line at + 1 (1-based)
    path.write_text("\n".join(lines) + "\n")
    proc = import_into(ha, path, "--statistic-id", sid, "--unit", "Wh", "--tz", "Europe/Vienna",
                       expect=1)
    assert f"gap.csv:{at + 1}" in proc.stderr, proc.stderr
    assert metadata(ha, sid) is None, "refused input wrote a statistic"


# ------------------------------------------------------------------------ (e) meter readings


@pytest.mark.parametrize("first_new", [0.0, 0.4])
def test_cumulative_readings_with_meter_replacement(ha: HomeAssistant, tmp_path: Path,
                                                    first_new: float) -> None:
    """Readings of a meter at ~5000 kWh, replaced mid-hour by a new one reading `first_new`:
    no negative hour; the replacement hour counts the new meter from 0."""
    sid = f"backdate:meter_swap_{int(first_new * 10)}"
    start = datetime(2026, 10, 5, tzinfo=dg.VIENNA)
    readings, k = dg.meter_with_replacement(start, 48, seed=51,
                                            replace_after=timedelta(hours=17, minutes=30),
                                            first_new=first_new)
    path = dg.write_samples_csv(tmp_path / "meter.csv", readings, value_column="reading")
    import_into(ha, path, "--statistic-id", sid)

    hourly = dg.cumulative_hourly(readings)
    t_end = readings[-1].time
    got = changes(ha, sid, start - timedelta(days=1), t_end + timedelta(hours=1), "hour",
                  min_rows=len(hourly))
    assert_no_negative(got, f"{sid}: hourly change")

    swap_hour = dg.floor_hour(readings[k].time)
    at = {s.time: s.value for s in readings}
    old_part = readings[k - 1].value - at[swap_hour]
    new_part = at[swap_hour + timedelta(hours=1)] - 0.0
    key = dg.epoch(swap_hour)
    assert key in got, f"no hourly row for the replacement hour {_when(key)}"
    assert abs(got[key] - (old_part + new_part)) < TOL, (
        f"replacement hour {_when(key)}: expected old meter {old_part!r} + new meter from 0 "
        f"{new_part!r} = {old_part + new_part!r}, HA says {got[key]!r}"
    )
    assert_amounts(got, hourly, f"{sid}: hourly change")
    total = (readings[k - 1].value - readings[0].value) + readings[-1].value
    assert abs(sum(got.values()) - total) < TOL * 10, (
        f"total {sum(got.values())!r}, expected old growth + new readings = {total!r}"
    )


# ------------------------------------------------------------------------ (f) measurements


def test_mean_statistic_temperature(ha: HomeAssistant, tmp_path: Path) -> None:
    """°C every 10 minutes (some missing): HA's hourly mean is time-weighted, min/max are the
    hour's samples; days reduce as HA does (mean of hours, min of mins, max of maxes)."""
    start = datetime(2026, 1, 10, tzinfo=dg.VIENNA)
    samples = dg.temperature_samples(start, 72, seed=61)
    path = dg.write_samples_csv(tmp_path / "outdoor_temperature.csv", samples,
                                value_column="value")
    import_into(ha, path, "--kind", "mean", "--unit", "°C")
    sid = "backdate:outdoor_temperature"

    assert_temperature_statistic(ha, sid, samples, start)


def assert_temperature_statistic(ha: HomeAssistant, sid: str, samples: list[dg.Sample],
                                 start: datetime, hours: int = 72) -> None:
    """Case (f)'s judge, for every path: HA's metadata says mean and no sum; hourly mean is
    time-weighted, min/max the hour's samples; days reduce as HA does (mean of hours, min of
    mins, max of maxes); no 5-minute rows outside HA's short-term retention."""
    meta = metadata(ha, sid)
    assert meta is not None, f"HA does not know {sid}"
    assert meta["has_sum"] is False and meta["has_mean"] is True, meta
    assert meta["statistics_unit_of_measurement"] == "°C", meta

    expected = dg.hourly_mean_min_max(samples)
    end = start + timedelta(hours=hours)
    rows = query(ha, sid, start - timedelta(days=1), end + timedelta(hours=1), "hour",
                 ["mean", "min", "max"], min_rows=len(expected))
    got = {int(round(r["start"] / 1000)): r for r in rows}
    assert set(got) == set(expected), (sorted(got), sorted(expected))
    for field in ("mean", "min", "max"):
        assert_amounts({t: r.get(field) for t, r in got.items()},
                       {t: getattr(m, field) for t, m in expected.items()},
                       f"{sid}: hourly {field}")

    days = query(ha, sid, start, end, "day", ["mean", "min", "max"], min_rows=1)
    by_day: dict[int, list[dg.MeanMinMax]] = {}
    for hour, m in expected.items():
        day = dg.epoch(dg.local_midnight(datetime.fromtimestamp(hour, UTC)))
        by_day.setdefault(day, []).append(m)
    got_days = {int(round(r["start"] / 1000)): r for r in days}
    assert set(got_days) == set(by_day), (sorted(got_days), sorted(by_day))
    exp_days = {
        day: dg.MeanMinMax(sum(m.mean for m in ms) / len(ms), min(m.min for m in ms),
                           max(m.max for m in ms))
        for day, ms in by_day.items()
    }
    for field in ("mean", "min", "max"):
        assert_amounts({t: r.get(field) for t, r in got_days.items()},
                       {t: getattr(m, field) for t, m in exp_days.items()}, f"{sid}: daily {field}")
    assert not query(ha, sid, start, end, "5minute", ["mean"], min_rows=0)


# ------------------------------------------------------------- more seams (beyond (a)-(f))


def test_append_with_overlap(ha: HomeAssistant, tmp_path: Path) -> None:
    """The daily-sync case: days 1-3, then days 2-4 (day 2-3 again, same values): every hour,
    day and 5 minutes equals the input once."""
    sid = "backdate:append"
    end = last_full_hour()
    start = end - timedelta(days=4)
    data = dg.quarter_hour_deltas(start, end, seed=71)
    cut_a, cut_b = start + timedelta(days=3), start + timedelta(days=1)
    first = dg.write_delta_csv(tmp_path / "first.csv", [i for i in data if i.start < cut_a])
    second = dg.write_delta_csv(tmp_path / "second.csv", [i for i in data if i.start >= cut_b])
    import_into(ha, first, "--statistic-id", sid)
    import_into(ha, second, "--statistic-id", sid)
    check_sum_statistic(ha, sid, data, five_minute=True)


def test_prepend_with_a_gap_and_reimport_across_retention_edge(ha: HomeAssistant,
                                                                tmp_path: Path) -> None:
    """History that ends a day before the existing rows (a gap), then a re-import with new
    values across the oldest 5-minute rows: HA's changes equal the latest input everywhere."""
    sid = "backdate:gap_then_edge"
    end = last_full_hour()
    recent = dg.quarter_hour_deltas(end - timedelta(days=12), end, seed=81)
    history = dg.quarter_hour_deltas(end - timedelta(days=40), end - timedelta(days=13), seed=82)
    lo, hi = end - timedelta(days=11), end - timedelta(days=8)
    redo = [dg.Interval(i.start, i.end, round(i.value * 1.5, 4)) for i in recent
            if lo <= i.start < hi]
    span = (end - timedelta(days=41), end + timedelta(hours=1))

    import_into(ha, dg.write_delta_csv(tmp_path / "recent.csv", recent), "--statistic-id", sid)
    five_before = changes(ha, sid, end - timedelta(days=12), end, "5minute", min_rows=1)
    import_into(ha, dg.write_delta_csv(tmp_path / "history.csv", history), "--statistic-id", sid)
    expected = {**dg.hourly_totals(history), **dg.hourly_totals(recent)}
    hours = changes(ha, sid, *span, "hour", min_rows=len(expected))
    assert_amounts(hours, expected, "after prepending with a gap: hourly change")

    import_into(ha, dg.write_delta_csv(tmp_path / "redo.csv", redo), "--statistic-id", sid)
    expected.update(dg.hourly_totals(redo))
    hours = changes(ha, sid, *span, "hour", min_rows=len(expected))
    assert_amounts(hours, expected, "after re-importing across the 5-minute edge: hourly")
    assert_amounts(changes(ha, sid, dg.local_midnight(span[0]), dg.next_local_midnight(end),
                           "day", min_rows=2),
                   dg.daily_totals(expected), "daily change")

    redo5 = dg.five_minute_totals(redo)
    oldest = min(five_before)
    five_after = changes(ha, sid, end - timedelta(days=12), end, "5minute",
                         min_rows=len(five_before))
    five_after.pop(oldest, None)
    expected5 = {t: redo5.get(t, v) for t, v in five_before.items() if t != oldest}
    assert_amounts(five_after, expected5, "5-minute change after both imports")
