"""The `backdate` command line against copies of SQLite databases made by real Home Assistant.

Why: PRODUCT.md's promises (continuity, HA's row rules, bad input refused with nothing written,
exit codes) are about what the CLI does to a recorder database. Every test here runs the
installed console script as a subprocess on a copy of a fixture database (schema 42, 50 and
53) and judges the result with plain SQL through ``sqlite3``: nothing from ``backdate`` is
imported, and every expectation is computed independently (``tests/datagen.py``).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(
    os.environ.get("BACKDATE_HA_DB_FIXTURES", REPO_ROOT.parent / "shared" / "fixtures" / "ha-db")
)
SQLITE_FIXTURES = {
    42: "sqlite-ha2024.3.3-schema42.db",
    50: "sqlite-ha2025.4.4-schema50.db",
    53: "sqlite-ha2026.2.3-schema53.db",
}
TOL = 1e-6  # kWh (or °C) per row
HOUR = 3600
FIVE_MINUTES = 300
SHORT_TERM_DAYS = 10
BOOKKEEPING = ("schema_changes", "statistics_runs", "migration_changes", "recorder_runs")
STAT_TABLES = ("statistics", "statistics_short_term")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORKERS = min(4, max(2, os.cpu_count() or 1))  # independent CLI runs at once


def _command() -> list[str]:
    if dg.time_shift():  # the CLI on the tests' clock (pytest --time-shift)
        return [sys.executable, str(Path(__file__).with_name("shifted_backdate.py"))]
    exe = REPO_ROOT / ".venv" / "bin" / "backdate"
    if exe.exists():
        return [str(exe)]
    found = shutil.which("backdate")
    return [found] if found else [sys.executable, "-m", "backdate.cli"]


BACKDATE = _command()


# ------------------------------------------------------------------------------------ helpers


def backdate(*args: object, expect: int | None = 0) -> subprocess.CompletedProcess[str]:
    """Run the CLI; fail with its output unless it exits with ``expect`` (None: any)."""
    cmd = [*BACKDATE, *(str(a) for a in args)]
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env,
                          check=False, stdin=subprocess.DEVNULL)
    if expect is not None:
        assert proc.returncode == expect, (
            f"`backdate {' '.join(cmd[len(BACKDATE):])}` exited {proc.returncode}, expected "
            f"{expect}\n--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n"
            f"{proc.stderr[-4000:]}"
        )
    return proc


def backdate_many(*commands: list[object]) -> list[subprocess.CompletedProcess[str]]:
    """Independent CLI runs at once (any exit code); results in the order given."""
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(lambda args: backdate(*args, expect=None), commands))


def url(db: Path) -> str:
    return f"sqlite:///{db}"


def import_into(db: Path, *args: object, expect: int = 0) -> subprocess.CompletedProcess[str]:
    return backdate("import", *args, "--to", url(db), "--no-backup", "--yes", expect=expect)


def copy_fixture(version: int, dest_dir: Path, name: str | None = None) -> Path:
    src = FIXTURES / SQLITE_FIXTURES[version]
    if not src.is_file():
        pytest.fail(f"fixture database missing: {src} (../shared beside the repository, or set "
                    "BACKDATE_HA_DB_FIXTURES)")
    dest = dest_dir / (name or f"home-assistant_v2-{version}.db")
    shutil.copyfile(src, dest)  # copyfile: the fixtures are read-only, the copy must not be
    wal = src.with_name(src.name + "-wal")
    if wal.is_file() and wal.stat().st_size:
        shutil.copyfile(wal, dest.with_name(dest.name + "-wal"))
    return dest


def sql(db: Path, statement: str, *params: object) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(db)
    try:
        return con.execute(statement, params).fetchall()
    finally:
        con.close()


def tables_of(db: Path) -> set[str]:
    return {r[0] for r in sql(db, "SELECT name FROM sqlite_master WHERE type = 'table'")}


def schema_version(db: Path) -> int:
    return sql(db, "SELECT schema_version FROM schema_changes ORDER BY change_id DESC LIMIT 1"
               )[0][0]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def backups_in(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if ".bak" in p.name or ".backdate-" in p.name)


@dataclass
class Snapshot:
    """What an import must never change: bookkeeping tables and the schema itself."""

    bookkeeping: dict[str, list[tuple[Any, ...]]]
    ddl: list[tuple[Any, ...]]

    @classmethod
    def of(cls, db: Path) -> Snapshot:
        present = tables_of(db)
        return cls(
            {t: sql(db, f"SELECT * FROM {t} ORDER BY 1") for t in BOOKKEEPING if t in present},
            sql(db, "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name"),
        )


def statistics_content(db: Path) -> dict[str, list[tuple[Any, ...]]]:
    return {t: sql(db, f"SELECT * FROM {t} ORDER BY id")
            for t in ("statistics_meta", *STAT_TABLES)}


def check_database(db: Path, before: Snapshot) -> None:
    """HA's row rules (reference §2, §8) for every row of both tables, and nothing else touched."""
    assert sql(db, "PRAGMA integrity_check") == [("ok",)]
    assert sql(db, "PRAGMA foreign_key_check") == []
    after = Snapshot.of(db)
    for table, rows in before.bookkeeping.items():
        assert after.bookkeeping[table] == rows, f"{table} changed"
    assert after.ddl == before.ddl, "the schema changed"
    for table, period in (("statistics", HOUR), ("statistics_short_term", FIVE_MINUTES)):
        bad = sql(db, f"SELECT id, start_ts, created_ts, start, created, last_reset FROM {table} "
                  f"WHERE start_ts IS NULL OR created_ts IS NULL OR created_ts < 1.6e9 "
                  f"OR start IS NOT NULL "
                  f"OR created IS NOT NULL OR last_reset IS NOT NULL "
                  f"OR start_ts != CAST(start_ts AS INTEGER) "
                  f"OR CAST(start_ts AS INTEGER) % {period} != 0")
        assert not bad, f"{table}: rows breaking HA's rules (id, start_ts, created_ts, legacy): " \
                        f"{bad[:5]}"
        falls = sql(db, f"SELECT metadata_id, start_ts, sum, prev FROM (SELECT metadata_id, "
                    f"start_ts, sum, LAG(sum) OVER (PARTITION BY metadata_id ORDER BY start_ts) "
                    f"AS prev FROM {table}) WHERE sum < prev - 1e-9")
        assert not falls, f"{table}: sum falls at {falls[:5]}"
    # The fixtures hold no statistics of their own: every statistics_meta row is backdate's.
    null_flags = sql(db, "SELECT statistic_id, has_sum, has_mean FROM statistics_meta "
                     "WHERE has_sum IS NULL OR has_mean IS NULL OR has_sum NOT IN (0, 1) "
                     "OR has_mean NOT IN (0, 1)")
    assert not null_flags, f"has_sum/has_mean not 0/1: {null_flags}"


def meta_row(db: Path, statistic_id: str) -> dict[str, Any]:
    con = sqlite3.connect(db)
    con.row_factory = sqlite3.Row
    try:
        rows = con.execute("SELECT * FROM statistics_meta WHERE statistic_id = ?",
                           (statistic_id,)).fetchall()
    finally:
        con.close()
    assert len(rows) == 1, f"{len(rows)} statistics_meta rows for {statistic_id}"
    return dict(rows[0])


def check_meta(db: Path, statistic_id: str, *, unit: str, mean: bool,
               source: str = "backdate") -> dict[str, Any]:
    """statistics_meta as HA would write it for this schema (reference §2.1, §3.1, §8.4)."""
    meta = meta_row(db, statistic_id)
    version = schema_version(db)
    assert meta["source"] == source
    assert meta["unit_of_measurement"] == unit
    assert meta["has_sum"] is not None and meta["has_mean"] is not None, meta
    assert (meta["has_sum"], meta["has_mean"]) == ((0, 1) if mean else (1, 0)), meta
    if version >= 50:
        assert meta["mean_type"] == (1 if mean else 0), meta
    else:
        assert "mean_type" not in meta, "a column of a later schema appeared"
    if version >= 53:
        if unit in ("kWh", "Wh"):
            assert meta["unit_class"] == "energy", meta
        elif unit == "°C":
            assert meta["unit_class"] in (None, "temperature"), meta
    else:
        assert "unit_class" not in meta, "a column of a later schema appeared"
    return meta


def rows_of(db: Path, statistic_id: str, table: str = "statistics"
            ) -> list[tuple[int, float | None, float | None, float | None, float | None,
                            float | None]]:
    """(start_ts, state, sum, mean, min, max) of one statistic, in time order."""
    return [
        (int(r[0]), *r[1:])
        for r in sql(db, f"SELECT t.start_ts, t.state, t.sum, t.mean, t.min, t.max FROM {table} t "
                     "JOIN statistics_meta m ON m.id = t.metadata_id "
                     "WHERE m.statistic_id = ? ORDER BY t.start_ts", statistic_id)
    ]


def changes(db: Path, statistic_id: str, table: str = "statistics") -> dict[int, float]:
    """Growth of ``sum`` per row; the first row's growth is its sum (HA starts sums at 0)."""
    out: dict[int, float] = {}
    prev = 0.0
    for start, _state, total, *_ in rows_of(db, statistic_id, table):
        assert total is not None, f"{statistic_id}: NULL sum at {_when(start)}"
        out[start] = total - prev
        prev = total
    return out


def _when(ts: int) -> str:
    return (f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"
            f" ({datetime.fromtimestamp(ts, dg.VIENNA):%m-%d %H:%M%z} Vienna)")


def assert_amounts(actual: dict[int, float | None], expected: dict[int, float], what: str,
                   *, tol: float = TOL) -> None:
    """Same slots, and |actual - expected| < tol in each."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = [(t, expected[t], actual[t]) for t in sorted(set(expected) & set(actual))
             if actual[t] is None or abs(actual[t] - expected[t]) >= tol]  # type: ignore[operator]
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing, first {_when(missing[0])}")
    if extra:
        lines.append(f"{len(extra)} unexpected, first {_when(extra[0])}: {actual[extra[0]]}")
    lines += [f"{_when(t)}: expected {e!r}, got {g!r}" for t, e, g in wrong[:8]]
    if len(wrong) > 8:
        lines.append(f"... {len(wrong)} wrong in all")
    assert not lines, f"{what}:\n  " + "\n  ".join(lines)


def check_same_scale(db: Path, statistic_id: str) -> None:
    """HA copies an hour's sum from its last 5-minute row: both tables share one sum scale."""
    hourly = {r[0]: r[2] for r in rows_of(db, statistic_id)}
    short = {r[0]: r[2] for r in rows_of(db, statistic_id, "statistics_short_term")}
    pairs = [(h, hourly[h], short[h + HOUR - FIVE_MINUTES]) for h in hourly
             if h + HOUR - FIVE_MINUTES in short]
    assert pairs, f"{statistic_id}: no hour with 5-minute rows"
    wrong = [(h, a, b) for h, a, b in pairs if abs(a - b) > TOL]
    assert not wrong, f"{statistic_id}: hourly sum != sum of the hour's last 5-minute row: " \
                      f"{wrong[:5]}"


def last_full_hour() -> datetime:
    """Where recent test data ends: the tests' clock (datagen.now), not the system's."""
    return dg.last_full_hour()


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture
def db53(tmp_path: Path) -> Path:
    return copy_fixture(53, tmp_path)


def check_ran(procs: list[subprocess.CompletedProcess[str]]) -> None:
    for proc in procs:
        assert proc.returncode == 0, (
            f"`backdate {' '.join(proc.args[len(BACKDATE):])}` exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")


# ------------------------------------------------------------- 1. imports, judged by plain SQL
#
# Each case runs on its own copy of each fixture database. The CLI runs are independent, so a
# module fixture runs them all at once and the tests only judge the databases afterwards.


def three_days(tmp_path: Path, name: str = "house_energy") -> tuple[Path, list[dg.Interval]]:
    """(a)'s input: 15-minute kWh deltas over 3 days ending at the last full hour."""
    end = last_full_hour()
    intervals = dg.quarter_hour_deltas(end - timedelta(days=3), end, seed=11)
    return dg.write_delta_csv(tmp_path / f"{name}.csv", intervals, value_column="kwh"), intervals


@dataclass
class Imported:
    """One case's database after its imports, the snapshot before the judged import, the
    input and the CLI runs."""

    db: Path
    before: Snapshot | None = None
    data: dict[str, Any] = field(default_factory=dict)
    procs: list[subprocess.CompletedProcess[str]] = field(default_factory=list)

    def run(self, *args: object) -> bool:
        """``backdate import ARGS`` into this database; True when it exited 0."""
        self.before = Snapshot.of(self.db)
        self.procs.append(backdate("import", *args, "--to", url(self.db), "--no-backup", "--yes",
                                   expect=None))
        return self.procs[-1].returncode == 0


def _cases_a_c(version: int, folder: Path) -> dict[str, Imported]:
    """(a) into a fresh copy; (c) re-imports the middle day into a copy of (a)'s result."""
    a = Imported(copy_fixture(version, folder, "a.db"))
    path, old = three_days(folder)
    lo, hi = old[0].start + timedelta(days=1), old[0].start + timedelta(days=2)
    new = [dg.Interval(i.start, i.end, round(i.value * 1.7 + 0.01, 4)) for i in old
           if lo <= i.start < hi]
    redo = dg.write_delta_csv(folder / "middle.csv", new, value_column="delta", with_end=True,
                              tz=UTC)
    a.data["intervals"] = old
    c = Imported(folder / "c.db", data={"old": old, "new": new})
    ok = a.run(path)
    c.procs = list(a.procs)
    if ok:
        shutil.copyfile(a.db, c.db)
        c.run(redo, "--statistic-id", "backdate:house_energy")
    return {"a": a, "c": c}


DST_CASES = {
    # season: (first local day, end (exclusive), DST day, hours on the DST day)
    "spring": (datetime(2024, 3, 30, tzinfo=dg.VIENNA), datetime(2024, 4, 2, tzinfo=dg.VIENNA),
               datetime(2024, 3, 31, tzinfo=dg.VIENNA), 23),
    "autumn": (datetime(2024, 10, 26, tzinfo=dg.VIENNA), datetime(2024, 10, 29, tzinfo=dg.VIENNA),
               datetime(2024, 10, 27, tzinfo=dg.VIENNA), 25),
}


def _case_d(version: int, folder: Path) -> dict[str, Imported]:
    """(d) both DST files in one command: each goes into backdate:<its file name>."""
    d = Imported(copy_fixture(version, folder))
    paths = []
    for season, (first, end, _day, _hours) in DST_CASES.items():
        intervals = dg.quarter_hour_deltas(first, end, seed=41 if season == "spring" else 42,
                                           scale=1000, decimals=0)
        path = dg.write_delta_csv(folder / f"dst_{season}.csv", intervals, value_column="value",
                                  naive=True)
        d.data[season] = (intervals, path.read_text())
        paths.append(path)
    d.run(*paths, "--unit", "Wh", "--tz", "Europe/Vienna")
    return {"d": d}


def _case_e(version: int, folder: Path) -> dict[str, Imported]:
    e = Imported(copy_fixture(version, folder))
    start = datetime(2026, 10, 5, tzinfo=dg.VIENNA)
    readings, k = dg.meter_with_replacement(start, 48, seed=51, first_new=0.4,
                                            replace_after=timedelta(hours=17, minutes=30))
    e.data.update(readings=readings, k=k)
    e.run(dg.write_samples_csv(folder / "meter.csv", readings, value_column="reading"))
    return {"e": e}


def _case_f(version: int, folder: Path) -> dict[str, Imported]:
    f = Imported(copy_fixture(version, folder))
    samples = dg.temperature_samples(datetime(2026, 1, 10, tzinfo=dg.VIENNA), 72, seed=61)
    path = dg.write_samples_csv(folder / "outdoor_temperature.csv", samples,
                                value_column="value")
    f.data["samples"] = samples
    f.run(path, "--kind", "mean", "--unit", "°C")
    return {"f": f}


CASES: dict[str, Callable[[int, Path], dict[str, Imported]]] = {
    "a_c": _cases_a_c, "d": _case_d, "e": _case_e, "f": _case_f,
}
SCHEMAS = sorted(SQLITE_FIXTURES)


@pytest.fixture(scope="module")
def imported(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, str], Imported]:
    base = tmp_path_factory.mktemp("imports")
    jobs = [(version, case) for version in SCHEMAS for case in CASES]

    def run(job: tuple[int, str]) -> dict[tuple[int, str], Imported]:
        version, case = job
        folder = base / f"{case}-schema{version}"
        folder.mkdir()
        return {(version, name): done for name, done in CASES[case](version, folder).items()}

    out: dict[tuple[int, str], Imported] = {}
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        for done in pool.map(run, jobs):
            out.update(done)
    return out


def judged(imported: dict[tuple[int, str], Imported], version: int, case: str) -> Imported:
    """The case's database, after checking the runs succeeded and HA's row rules hold."""
    job = imported[(version, case)]
    check_ran(job.procs)
    assert job.before is not None
    assert schema_version(job.db) == version
    check_database(job.db, job.before)
    return job


@pytest.mark.parametrize("version", SCHEMAS, ids=lambda v: f"schema{v}")
def test_a_new_external_statistic(imported: dict[tuple[int, str], Imported], version: int
                                  ) -> None:
    """(a) 3 days of 15-minute kWh: 72 hourly and 864 5-minute rows, each hour's growth of sum
    the input's energy in it; metadata as HA writes it for the schema."""
    job = judged(imported, version, "a")
    db, intervals, sid = job.db, job.data["intervals"], "backdate:house_energy"
    check_meta(db, sid, unit="kWh", mean=False)
    assert meta_row(db, sid)["name"] == "house_energy"
    assert_amounts(changes(db, sid), dg.hourly_totals(intervals), f"{sid}: hourly")
    assert_amounts(changes(db, sid, "statistics_short_term"), dg.five_minute_totals(intervals),
                   f"{sid}: 5-minute")
    check_same_scale(db, sid)
    for table in STAT_TABLES:
        for row in rows_of(db, sid, table):
            assert row[3:] == (None, None, None), f"{table}: mean/min/max set on a sum row: {row}"


@pytest.mark.parametrize("version", SCHEMAS, ids=lambda v: f"schema{v}")
def test_c_middle_reimport_with_new_values(imported: dict[tuple[int, str], Imported],
                                           version: int) -> None:
    """(c) (a)'s 3 days, then the middle day again with other values (UTC offsets, an `end`
    column): new values inside, old outside, no step at either edge, in both tables."""
    job = judged(imported, version, "c")
    db, old, new, sid = job.db, job.data["old"], job.data["new"], "backdate:house_energy"
    assert len(job.procs) == 2
    check_meta(db, sid, unit="kWh", mean=False)
    assert_amounts(changes(db, sid), {**dg.hourly_totals(old), **dg.hourly_totals(new)},
                   f"{sid}: hourly")
    assert_amounts(changes(db, sid, "statistics_short_term"),
                   {**dg.five_minute_totals(old), **dg.five_minute_totals(new)},
                   f"{sid}: 5-minute")
    check_same_scale(db, sid)


@pytest.mark.parametrize("season", sorted(DST_CASES))
@pytest.mark.parametrize("version", SCHEMAS, ids=lambda v: f"schema{v}")
def test_d_dst_days_naive_wh(imported: dict[tuple[int, str], Imported], version: int,
                             season: str) -> None:
    """(d) 15-minute Wh in naive Vienna time across a DST change, with --tz: stored in Wh, the
    23/25-hour day has 23/25 hourly rows and its energy; no 5-minute rows for 2024."""
    job = judged(imported, version, "d")
    _first, _end, dst_day, hours = DST_CASES[season]
    (intervals, text), db, sid = job.data[season], job.db, f"backdate:dst_{season}"
    assert text.count("2024-10-27T02:00:00") == (2 if season == "autumn" else 0)
    check_meta(db, sid, unit="Wh", mean=False)  # a new statistic keeps the input's unit
    got = {t: v / 1000 for t, v in changes(db, sid).items()}  # Wh -> kWh
    assert_amounts(got, dg.hourly_totals(intervals, 0.001), f"{sid}: hourly (kWh)")
    day_lo, day_hi = dg.epoch(dst_day), dg.epoch(dg.next_local_midnight(dst_day))
    on_day = {t: v for t, v in got.items() if day_lo <= t < day_hi}
    assert len(on_day) == hours
    expected_day = sum(i.value for i in intervals
                       if i.start.astimezone(dg.VIENNA).date() == dst_day.date()) / 1000
    assert abs(sum(on_day.values()) - expected_day) < TOL
    assert rows_of(db, sid, "statistics_short_term") == [], "5-minute rows for 2024"


@pytest.mark.parametrize("version", SCHEMAS, ids=lambda v: f"schema{v}")
def test_e_cumulative_meter_replacement(imported: dict[tuple[int, str], Imported], version: int
                                        ) -> None:
    """(e) `reading` of a meter at ~5000 kWh replaced mid-hour by one reading 0.4: no negative
    hour, the replacement hour counts the new meter from 0, every hour's growth as the input."""
    job = judged(imported, version, "e")
    db, readings, k, sid = job.db, job.data["readings"], job.data["k"], "backdate:meter"
    check_meta(db, sid, unit="kWh", mean=False)
    got = changes(db, sid)
    assert all(v > -TOL for v in got.values()), "negative hour"
    swap = dg.floor_hour(readings[k].time)
    at = {s.time: s.value for s in readings}
    replacement = (readings[k - 1].value - at[swap]) + at[swap + timedelta(hours=1)]
    assert abs(got[dg.epoch(swap)] - replacement) < TOL
    assert_amounts(got, dg.cumulative_hourly(readings), f"{sid}: hourly")
    states = {r[0]: r[1] for r in rows_of(db, sid)}
    assert_amounts(states, {t: at[datetime.fromtimestamp(t + HOUR, UTC)] for t in states},
                   f"{sid}: state (the meter reading at the end of the hour)")
    assert rows_of(db, sid, "statistics_short_term") == [], "5-minute rows older than 10 days"


@pytest.mark.parametrize("version", SCHEMAS, ids=lambda v: f"schema{v}")
def test_f_mean_temperature(imported: dict[tuple[int, str], Imported], version: int) -> None:
    """(f) °C every 10 minutes (some missing) with --kind mean: time-weighted hourly mean,
    min/max of the hour's samples, no sum/state; mean metadata as HA writes it."""
    job = judged(imported, version, "f")
    db, samples, sid = job.db, job.data["samples"], "backdate:outdoor_temperature"
    check_meta(db, sid, unit="°C", mean=True)
    rows = rows_of(db, sid)
    assert all(r[1] is None and r[2] is None for r in rows), "state/sum set on a mean row"
    expected = dg.hourly_mean_min_max(samples)
    for i, name in ((3, "mean"), (4, "min"), (5, "max")):
        assert_amounts({r[0]: r[i] for r in rows},
                       {t: getattr(m, name) for t, m in expected.items()}, f"{sid}: {name}")
    assert rows_of(db, sid, "statistics_short_term") == [], "5-minute rows older than 10 days"


# ----------------------------------------------------------------------------- 2. bad input


@dataclass
class Bad:
    """A refused import: files to write, extra options, the line the error must name."""

    files: dict[str, str]
    args: list[str] = field(default_factory=list)
    line: int | None = None
    words: tuple[str, ...] = ()


def _existing_mean(db: Path, tmp: Path) -> None:
    samples = dg.temperature_samples(datetime(2026, 1, 10, tzinfo=dg.VIENNA), 3, seed=1)
    path = dg.write_samples_csv(tmp / "room.csv", samples, value_column="value")
    import_into(db, path, "--kind", "mean", "--unit", "°C", "--statistic-id", "backdate:room")


def _existing_kwh(db: Path, tmp: Path) -> None:
    intervals = dg.quarter_hour_deltas(datetime(2026, 1, 10, tzinfo=UTC),
                                       datetime(2026, 1, 11, tzinfo=UTC), seed=2)
    path = dg.write_delta_csv(tmp / "meter.csv", intervals)
    import_into(db, path, "--statistic-id", "backdate:meter")


GOOD = "start,kwh\n2026-10-01T00:00:00+02:00,0.5\n2026-10-01T00:15:00+02:00,0.25\n" \
       "2026-10-01T00:30:00+02:00,0.125\n2026-10-01T00:45:00+02:00,0.5\n"
NAIVE_SPRING = "start,value\n2024-03-31T01:00:00,100\n2024-03-31T01:15:00,100\n" \
               "2024-03-31T01:30:00,100\n2024-03-31T02:30:00,100\n2024-03-31T03:00:00,100\n"


def _replace_line(text: str, n: int, new: str) -> str:
    lines = text.splitlines()
    lines[n - 1] = new
    return "\n".join(lines) + "\n"


BAD_INPUT = {
    "empty_file": Bad({"input.csv": ""}, words=("empty",)),
    "header_only": Bad({"input.csv": "start,kwh\n"}),
    "no_header": Bad({"input.csv": GOOD.split("\n", 1)[1]}, line=1),
    "unknown_columns": Bad({"input.csv": GOOD.replace("start,kwh", "zeit,wert")}, line=1),
    "text_in_number": Bad({"input.csv": _replace_line(GOOD, 3, "2026-10-01T00:15:00+02:00,abc")},
                          line=3),
    "nan": Bad({"input.csv": _replace_line(GOOD, 3, "2026-10-01T00:15:00+02:00,NaN")}, line=3),
    "infinity": Bad({"input.csv": _replace_line(GOOD, 4, "2026-10-01T00:30:00+02:00,inf")},
                    line=4),
    "minus_infinity": Bad({"input.csv": _replace_line(GOOD, 4,
                                                      "2026-10-01T00:30:00+02:00,-Infinity")},
                          line=4),
    "json_text_in_number": Bad(
        {"input.json": '[\n {"start": "2026-10-01T00:00:00+02:00", "kwh": 0.5},\n'
                       ' {"start": "2026-10-01T00:15:00+02:00", "kwh": "x"}\n]\n'}, line=3),
    "same_time_twice_different_values": Bad(
        {"input.csv": GOOD + "2026-10-01T00:15:00+02:00,0.75\n"}, line=6),
    "impossible_local_time": Bad({"input.csv": NAIVE_SPRING}, ["--tz", "Europe/Vienna"], line=5),
    "naive_without_tz": Bad({"input.csv": NAIVE_SPRING}, line=2, words=("--tz",)),
    "meterman_text_in_number": Bad(
        {"input.csv": "#date,time,IMP,EXP,GEN-T\n2026-10-01,00:05,1234.5,10.0,0.0\n"
                      "2026-10-01,00:10,x,10.1,0.0\n"}, ["--tz", "Europe/Vienna"], line=3),
    "klausj1_impossible_local_time": Bad(
        {"input.tsv": "statistic_id\tunit\tstart\tdelta\nbackdate:k\tkWh\t31.03.2024 01:00\t1\n"
                      "backdate:k\tkWh\t31.03.2024 02:00\t1\n"}, ["--tz", "Europe/Vienna"],
        line=3),
    "second_file_bad": Bad({"good.csv": GOOD, "input.csv": _replace_line(GOOD, 2, "x,1")},
                           line=2),
    "wh_energy_into_celsius_mean": Bad(
        {"input.csv": GOOD}, ["--unit", "Wh", "--statistic-id", "backdate:room"]),
    "wh_mean_into_celsius_mean": Bad(
        {"input.csv": GOOD}, ["--kind", "mean", "--unit", "Wh", "--statistic-id",
                              "backdate:room"], words=("unit",)),
    "m3_into_kwh": Bad({"input.csv": GOOD}, ["--unit", "m³", "--statistic-id", "backdate:meter"],
                       words=("unit",)),
    "id_uppercase_dash": Bad({"input.csv": GOOD}, ["--statistic-id", "backdate:Bad-Id"]),
    "id_uppercase_entity": Bad({"input.csv": GOOD}, ["--statistic-id", "Sensor.x"]),
    "id_double_underscore": Bad({"input.csv": GOOD}, ["--statistic-id", "a__b:c"]),
}


@dataclass
class Refusal:
    """What one refused import did: its output, and the database and folder around it."""

    proc: subprocess.CompletedProcess[str]
    paths: list[Path]
    digest_before: str
    digest_after: str
    backups: list[Path]


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Refusal]:
    """Every BAD_INPUT case run (concurrently: they are independent) against its own copy of a
    schema-53 database that already holds a °C mean (backdate:room) and a kWh sum
    (backdate:meter). The default --backup is left on."""
    base = tmp_path_factory.mktemp("bad_input")
    prepared = copy_fixture(53, base, "prepared.db")
    _existing_mean(prepared, base)
    _existing_kwh(prepared, base)
    assert not list(base.glob("prepared.db-*")), "the setup imports left a journal behind"

    def run(case: str) -> Refusal:
        bad = BAD_INPUT[case]
        folder = base / case
        inputs = folder / "in"
        inputs.mkdir(parents=True)
        db = folder / "home-assistant_v2.db"
        shutil.copyfile(prepared, db)
        paths = [write(inputs / name, text) for name, text in bad.files.items()]
        digest = sha256(db)
        proc = backdate("import", *paths, "--to", url(db), "--yes", *bad.args, expect=None)
        return Refusal(proc, paths, digest, sha256(db), backups_in(folder))

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return dict(zip(BAD_INPUT, pool.map(run, BAD_INPUT), strict=True))


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_refused_and_nothing_written(refusals: dict[str, Refusal], case: str
                                                  ) -> None:
    """Exit 1; stderr names the file (and line); the database file byte-identical; no backup."""
    bad, got = BAD_INPUT[case], refusals[case]
    proc = got.proc
    stderr = " ".join(proc.stderr.split())
    assert proc.returncode == 1, (
        f"exit {proc.returncode}, expected 1\n--- stdout ---\n{proc.stdout[-3000:]}\n"
        f"--- stderr ---\n{proc.stderr[-3000:]}")
    where = str(got.paths[-1]) + (f":{bad.line}" if bad.line else "")
    assert where in stderr, f"stderr does not name {where}:\n{proc.stderr}"
    for word in bad.words:
        assert word in stderr, f"{word!r} not in stderr:\n{proc.stderr}"
    assert got.digest_after == got.digest_before, "refused input changed the database file"
    assert not got.backups, f"refused input made a backup: {got.backups}"


def test_entity_id_only_when_named(tmp_path: Path) -> None:
    """`--statistic-id sensor.x` writes an entity statistic (source recorder); a file named like
    an entity id still gets an external backdate: id."""
    start = datetime(2026, 10, 1, tzinfo=UTC)  # long before the fixture's last compiled window
    intervals = dg.quarter_hour_deltas(start, start + timedelta(days=1), seed=3)
    named = dg.write_delta_csv(tmp_path / "house.csv", intervals)
    looks_like_entity = dg.write_delta_csv(tmp_path / "sensor.energy.csv", intervals)
    one, two = copy_fixture(53, tmp_path, "one.db"), copy_fixture(53, tmp_path, "two.db")
    before = Snapshot.of(one)
    check_ran(backdate_many(
        ["import", named, "--to", url(one), "--statistic-id", "sensor.x", "--create", "--no-backup",
         "--yes"],
        ["import", looks_like_entity, "--to", url(two), "--no-backup", "--yes"]))
    check_database(one, before)
    check_database(two, before)
    check_meta(one, "sensor.x", unit="kWh", mean=False, source="recorder")
    assert_amounts(changes(one, "sensor.x"), dg.hourly_totals(intervals), "sensor.x: hourly")
    ids = [r[0] for r in sql(two, "SELECT statistic_id FROM statistics_meta")]
    assert ids == ["backdate:sensor_energy"], ids
    check_meta(two, "backdate:sensor_energy", unit="kWh", mean=False)


def test_unsorted_and_duplicate_lines(tmp_path: Path) -> None:
    """Shuffled input is sorted, not refused; identical duplicate lines are accepted: both give
    exactly the rows of the sorted file."""
    path, _ = three_days(tmp_path, "sorted")
    header, *lines = path.read_text().splitlines()
    shuffled = lines[:]
    random.Random(5).shuffle(shuffled)
    assert shuffled != lines
    unsorted = write(tmp_path / "unsorted.csv", "\n".join([header, *shuffled]) + "\n")
    doubled = write(tmp_path / "doubled.csv",
                    "\n".join([header, *lines[:100], *lines[40:60], *lines[100:], lines[-1]])
                    + "\n")
    dbs = [copy_fixture(53, tmp_path, f"{p.stem}.db") for p in (path, unsorted, doubled)]
    check_ran(backdate_many(*(
        ["import", p, "--to", url(db), "--statistic-id", "backdate:x", "--no-backup", "--yes"]
        for p, db in zip((path, unsorted, doubled), dbs, strict=True))))
    reference, *others = dbs
    for table in STAT_TABLES:
        rows = rows_of(reference, "backdate:x", table)
        assert rows
        for db in others:
            assert rows_of(db, "backdate:x", table) == rows, f"{db.stem}: {table} differs"


def test_five_minute_rows_only_within_ten_days(db53: Path, tmp_path: Path) -> None:
    """12 days ending at the last full hour: every hour in `statistics`, 5-minute rows only for
    the last 10 days, on the hourly sum scale, each 5 minutes' growth as the input."""
    end = last_full_hour()
    intervals = dg.quarter_hour_deltas(end - timedelta(days=12), end, seed=13)
    before = Snapshot.of(db53)
    import_into(db53, dg.write_delta_csv(tmp_path / "twelve.csv", intervals))
    sid = "backdate:twelve"
    check_database(db53, before)
    assert_amounts(changes(db53, sid), dg.hourly_totals(intervals), f"{sid}: hourly")
    short = rows_of(db53, sid, "statistics_short_term")
    window = dg.epoch(dg.now()) - SHORT_TERM_DAYS * 86400
    assert window - HOUR <= short[0][0] <= window + HOUR, _when(short[0][0])
    assert short[-1][0] == dg.epoch(end) - FIVE_MINUTES
    check_same_scale(db53, sid)
    expected = dg.five_minute_totals(intervals)
    got = {b[0]: b[2] - a[2] for a, b in zip(short, short[1:], strict=False)}
    assert_amounts(got, {t: v for t, v in expected.items() if t in got}, f"{sid}: 5-minute")
    assert len(got) == len(short) - 1


# ------------------------------------------------------------------------------------ 3. plan


def test_plan_writes_nothing_and_reports(imported: dict[tuple[int, str], Imported],
                                         db53: Path, tmp_path: Path) -> None:
    """plan of a new statistic, and of a re-import into (a)'s: the file byte-identical, no
    backup; the per-day table and the seam report printed; --chart writes a PNG."""
    path, intervals = three_days(tmp_path)
    existing = tmp_path / "existing.db"
    shutil.copyfile(imported[(53, "a")].db, existing)
    middle = [dg.Interval(i.start, i.end, i.value * 2) for i in intervals[96:192]]
    redo = dg.write_delta_csv(tmp_path / "house_energy_redo.csv", middle)
    digests = (sha256(db53), sha256(existing))
    chart = tmp_path / "out.png"
    new, again = backdate_many(
        ["plan", path, "--to", url(db53), "--tz", "Europe/Vienna", "--chart", chart],
        ["plan", redo, "--to", url(existing), "--statistic-id", "backdate:house_energy"],
    )
    check_ran([new, again])
    assert (sha256(db53), sha256(existing)) == digests, "plan changed a database"
    assert not backups_in(tmp_path), "plan made a backup"

    assert "new" in new.stdout and "STEP" not in new.stdout
    assert "Energy dashboard per day" in new.stdout and "Seams" in new.stdout, new.stdout
    days = {i.start.astimezone(dg.VIENNA).date().isoformat() for i in intervals}
    assert all(day in new.stdout for day in days), new.stdout
    total = sum(i.value for i in intervals)
    assert f"{total:,.3f}" in new.stdout, f"total {total:.3f} kWh not shown:\n{new.stdout}"
    assert chart.read_bytes().startswith(PNG_SIGNATURE)

    out = again.stdout
    assert "exists" in out and "Energy dashboard per day" in out and "Seams" in out, out
    assert "STEP" not in out, out
    assert "24 updated" in out and "288 updated" in out, out  # hourly and 5-minute rows


# ------------------------------------------------------------------------ 4. inspect, export


def test_inspect_lists_statistics_with_counts(imported: dict[tuple[int, str], Imported],
                                              tmp_path: Path) -> None:
    """inspect (table, --json, --energy) of (a)'s database (a kWh sum) and (f)'s (a °C mean)."""
    energy_db, mean_db = tmp_path / "energy.db", tmp_path / "mean.db"
    shutil.copyfile(imported[(53, "a")].db, energy_db)
    shutil.copyfile(imported[(53, "f")].db, mean_db)
    digests = (sha256(energy_db), sha256(mean_db))
    commands = [["inspect", url(db), *flags] for db in (energy_db, mean_db)
                for flags in ([], ["--json"], ["--energy", "--json"], ["--energy"])]
    runs = backdate_many(*commands)
    check_ran(runs)
    assert (sha256(energy_db), sha256(mean_db)) == digests, "inspect changed a database"
    table, as_json, energy_json, energy_table, m_table, m_json, m_energy_json, m_energy_table = (
        p.stdout for p in runs)

    assert "backdate:house_energy" in table and "schema 53" in table, table
    assert "864" in table and "72" in table, table
    doc = json.loads(as_json)
    assert doc["schema_version"] == 53
    [energy] = doc["statistics"]
    assert energy["statistic_id"] == "backdate:house_energy"
    assert (energy["hourly_rows"], energy["short_term_rows"]) == (72, 864)
    assert (energy["source"], energy["unit"], energy["type"]) == ("backdate", "kWh", "sum")
    assert energy["problems"] == []
    assert json.loads(energy_json)["statistics"] == doc["statistics"]
    assert "backdate:house_energy" in energy_table

    assert "backdate:outdoor_temperature" in m_table, m_table
    [mean] = json.loads(m_json)["statistics"]
    assert mean["statistic_id"] == "backdate:outdoor_temperature"
    assert (mean["hourly_rows"], mean["short_term_rows"]) == (72, 0)
    assert (mean["unit"], mean["type"], mean["problems"]) == ("°C", "mean", [])
    assert json.loads(m_energy_json)["statistics"] == [], "--energy lists a temperature mean"
    assert "backdate:outdoor_temperature" not in m_energy_table, m_energy_table


ROUND_TRIP_FORMATS = {"csv": ("csv", None), "json": ("json", None),
                      "klausj1": ("tsv", "Europe/Vienna")}


@pytest.fixture(scope="module")
def round_trips(tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[list[dg.Interval], dict[str, Imported]]:
    """3 days of kWh across the autumn DST change in a schema-53 database; then per format (at
    once) on a copy: export, and import of the export as backdate:copy_<format>."""
    base = tmp_path_factory.mktemp("round_trip")
    source_db = copy_fixture(53, base)
    intervals = dg.quarter_hour_deltas(datetime(2024, 10, 26, tzinfo=dg.VIENNA),
                                       datetime(2024, 10, 29, tzinfo=dg.VIENNA), seed=91)
    import_into(source_db, dg.write_delta_csv(base / "source.csv", intervals))

    def run(fmt: str) -> Imported:
        suffix, tz = ROUND_TRIP_FORMATS[fmt]
        folder = base / fmt
        folder.mkdir()
        job = Imported(folder / "home-assistant_v2.db")
        shutil.copyfile(source_db, job.db)
        exported = folder / f"exported.{suffix}"
        tz_args = ["--tz", tz] if tz else []
        job.procs.append(backdate("export", url(job.db), "--statistic-id", "backdate:source",
                                  "--format", fmt, "-o", exported, *tz_args, expect=None))
        job.data["exported"] = exported
        if job.procs[-1].returncode == 0:
            job.run(exported, "--statistic-id", f"backdate:copy_{fmt}", *tz_args)
        return job

    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return intervals, dict(zip(ROUND_TRIP_FORMATS, pool.map(run, ROUND_TRIP_FORMATS),
                                   strict=True))


@pytest.mark.parametrize("fmt", sorted(ROUND_TRIP_FORMATS))
def test_export_import_round_trip(round_trips: tuple[list[dg.Interval], dict[str, Imported]],
                                  fmt: str) -> None:
    """export, then import of the export into a new statistic: identical hourly growth of sum
    in every hour (lossless), for each format; klausj1 with naive Vienna times across the
    repeated hour."""
    intervals, jobs = round_trips
    job = jobs[fmt]
    check_ran(job.procs)
    assert len(job.procs) == 2
    assert job.before is not None
    check_database(job.db, job.before)
    source, copy = "backdate:source", f"backdate:copy_{fmt}"
    original = changes(job.db, source)
    assert_amounts(original, dg.hourly_totals(intervals), f"{source}: hourly")
    if fmt == "json":
        json.loads(job.data["exported"].read_text(encoding="utf-8"))
    check_meta(job.db, copy, unit="kWh", mean=False)
    assert_amounts(changes(job.db, copy), original,
                   f"{copy} (exported {source}, imported again)", tol=1e-9)


# ------------------------------------------------------------------------ 5. backup, restore


def test_backup_and_restore(db53: Path, tmp_path: Path) -> None:
    """import --backup writes one <db>.backdate-*.jsonl row backup (and says where, with the
    restore command); restore brings the statistics tables back to what they held before that
    import, ids included, and touches nothing else."""
    path, _ = three_days(tmp_path, "first")
    import_into(db53, path)
    before = statistics_content(db53)
    second, _ = three_days(tmp_path, "second")
    proc = backdate("import", second, "--to", url(db53), "--backup", "--yes")
    backups = sorted(db53.parent.glob(f"{db53.name}.backdate-*.jsonl"))
    assert len(backups) == 1, (backups, proc.stdout)
    out = " ".join(proc.stdout.split())
    assert str(backups[0]) in out
    assert f"to undo: backdate restore {backups[0]} --to {url(db53)}" in out, out
    assert statistics_content(db53) != before
    manifest = json.loads(backups[0].read_text().splitlines()[0])
    assert manifest["schema_version"] == 53 and manifest["statistic_ids"] == ["backdate:second"]
    backdate("restore", backups[0], "--to", url(db53), "--yes")
    assert statistics_content(db53) == before
    assert sql(db53, "PRAGMA integrity_check") == [("ok",)]


# ------------------------------------------------------------------------------------ 6. demo


def test_demo(tmp_path: Path) -> None:
    """demo: a fresh schema-53 database with a year of hourly rows of backdate:demo_house, and
    its chart."""
    directory = tmp_path / "demo"
    backdate("demo", "--dir", directory)
    db = directory / "home-assistant_v2.db"
    assert schema_version(db) == 53
    sid = "backdate:demo_house"
    check_meta(db, sid, unit="kWh", mean=False)
    hourly = rows_of(db, sid)
    assert 8760 - 48 <= len(hourly) <= 8784 + 48, len(hourly)
    check_database(db, Snapshot.of(db))
    assert (directory / "chart.png").read_bytes().startswith(PNG_SIGNATURE)


# ------------------------------------------------------------------------------- 7. usage


def test_usage_errors_exit_2(db53: Path, tmp_path: Path) -> None:
    """Wrong command lines exit 2 and touch nothing."""
    path = write(tmp_path / "in.csv", GOOD)
    digest = sha256(db53)
    target = url(db53)
    commands = [
        ["import", path, "--to", target, "--yes", "--no-such-option"],
        ["import", path, "--yes"],  # no --to
        ["import", path, "--to", target, "--yes", "--kind", "bogus"],
        ["import", path, "--to", target, "--yes", "--tz", "Mars/Olympus"],
        ["export", target, "--statistic-id", "backdate:x", "--format", "xml"],
        ["no-such-command"],
    ]
    for args, proc in zip(commands, backdate_many(*commands), strict=True):
        assert proc.returncode == 2, (args, proc.returncode, proc.stderr)
    assert sha256(db53) == digest and not backups_in(db53.parent)


def test_missing_database_is_target_error(tmp_path: Path) -> None:
    """A target that is not there: exit 3, and no empty database file made in its place."""
    path = write(tmp_path / "in.csv", GOOD)
    missing = tmp_path / "home-assistant_v2.db"
    in_missing_dir = tmp_path / "nope" / "home-assistant_v2.db"
    commands = [
        ["import", path, "--to", url(missing), "--yes"],
        ["import", path, "--to", url(in_missing_dir), "--yes"],
        ["plan", path, "--to", url(missing)],
        ["inspect", url(missing)],
        ["export", url(missing), "--statistic-id", "backdate:in"],
    ]
    for args, proc in zip(commands, backdate_many(*commands), strict=True):
        assert proc.returncode == 3, (args, proc.returncode, proc.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.csv"], "a database file appeared"
