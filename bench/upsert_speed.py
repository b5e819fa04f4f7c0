"""How fast RecorderDatabase upserts 10 years of hourly rows into HA's SQLite, vs a plain INSERT.

Not a test: prints rows/s for 87,660 hourly rows, each measured on a fresh copy of the schema-53
fixture (the best of --repeat runs):

* plain executemany INSERT: one row per statement, all 8 values bound, no conflict handling
  (the floor a naive importer gets);
* single-row upsert executemany: INSERT ... ON CONFLICT DO UPDATE, one row per statement;
* backdate upsert, insert / update: the write transaction of RecorderDatabase.apply (BEGIN
  IMMEDIATE .. COMMIT, metadata included), on an empty table and again over the same rows;
* backdate apply(), whole: plus plan checks, parameter layout and read-back verification.

Run: .venv/bin/python bench/upsert_speed.py [--rows N] [--repeat K] [--fixture PATH]
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from backdate.models import StatisticMeta, StatRow, Table, TablePlan, WritePlan
from backdate.targets import recorder_db
from backdate.targets.recorder_db import open_recorder

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT.parent / "shared" / "fixtures" / "ha-db" / "sqlite-ha2026.2.3-schema53.db"
T0 = 1483228800.0  # 2017-01-01 00:00 UTC
ROWS = 87_660  # ten years of hours


def make_plan(rows: int, exists: bool, bump: float = 0.0) -> WritePlan:
    hourly = [
        StatRow(T0 + i * 3600.0, state=1000.0 + i * 0.5 + bump, sum=i * 0.5 + bump)
        for i in range(rows)
    ]
    meta = StatisticMeta("backdate:bench", "backdate", "kWh", has_sum=True, name="bench")
    return WritePlan(
        meta, exists, TablePlan(Table.HOURLY, upserts=hourly), TablePlan(Table.SHORT_TERM)
    )


def fresh_copy(fixture: Path, tmp: Path, n: int) -> Path:
    dest = tmp / f"copy{n}.db"
    shutil.copyfile(fixture, dest)
    return dest


def raw_executemany(path: Path, rows: int, sql: str) -> float:
    """Seconds for BEGIN IMMEDIATE, one executemany of `sql` over all rows, COMMIT."""
    con = sqlite3.connect(path, isolation_level=None)
    con.execute(
        "INSERT INTO statistics_meta (statistic_id, source, unit_of_measurement, has_mean, "
        "has_sum, name, mean_type, unit_class) VALUES ('backdate:bench', 'backdate', 'kWh', 0, "
        "1, 'bench', 0, 'energy')"
    )
    now = time.time()
    params = [
        (now, T0 + i * 3600.0, 1000.0 + i * 0.5, i * 0.5, None, None, None, None)
        for i in range(rows)
    ]
    started = time.perf_counter()
    con.execute("BEGIN IMMEDIATE")
    con.executemany(sql, params)
    con.execute("COMMIT")
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


PLAIN = (
    "INSERT INTO statistics (created_ts, metadata_id, start_ts, state, sum, mean, min, max, "
    "last_reset_ts) VALUES (?, 1, ?, ?, ?, ?, ?, ?, ?)"
)
SINGLE_UPSERT = PLAIN + (
    " ON CONFLICT (metadata_id, start_ts) DO UPDATE SET state = excluded.state, "
    "sum = excluded.sum, mean = excluded.mean, min = excluded.min, max = excluded.max, "
    "last_reset_ts = excluded.last_reset_ts"
)


def backdate_runs(path: Path, rows: int) -> tuple[float, float, float]:
    """(insert transaction, update transaction, whole apply of the update) in seconds."""
    times: list[float] = []
    real_write = recorder_db.RecorderDatabase._write

    def timed_write(self: recorder_db.RecorderDatabase, work: Callable) -> object:
        started = time.perf_counter()
        try:
            return real_write(self, work)
        finally:
            times.append(time.perf_counter() - started)

    recorder_db.RecorderDatabase._write = timed_write  # type: ignore[method-assign]
    try:
        with open_recorder(f"sqlite:///{path}") as db:
            db.apply(make_plan(rows, exists=False))
            plan = make_plan(rows, exists=True, bump=1.0)
            started = time.perf_counter()
            db.apply(plan)
            whole = time.perf_counter() - started
    finally:
        recorder_db.RecorderDatabase._write = real_write  # type: ignore[method-assign]
    return times[0], times[1], whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=ROWS)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    args = parser.parse_args()

    results: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        n = 0
        for _ in range(args.repeat):
            n += 1
            results.setdefault("plain executemany INSERT", []).append(
                raw_executemany(fresh_copy(args.fixture, tmp, n), args.rows, PLAIN)
            )
            n += 1
            results.setdefault("single-row upsert executemany", []).append(
                raw_executemany(fresh_copy(args.fixture, tmp, n), args.rows, SINGLE_UPSERT)
            )
            n += 1
            ins, upd, whole = backdate_runs(fresh_copy(args.fixture, tmp, n), args.rows)
            results.setdefault("backdate upsert, all new rows", []).append(ins)
            results.setdefault("backdate upsert, all rows exist", []).append(upd)
            results.setdefault("backdate apply() incl. checks+verify", []).append(whole)

    print(
        f"SQLite {sqlite3.sqlite_version}, {args.rows:,} hourly rows, best / median of "
        f"{args.repeat} (fresh database copy each time)"
    )
    base = min(results["plain executemany INSERT"])
    for name, secs in results.items():
        best = min(secs)
        print(
            f"  {name:38s} {best:6.3f} s  {args.rows / best:>10,.0f} rows/s  "
            f"(median {statistics.median(secs):.3f} s, {base / best:4.2f}x plain)"
        )


if __name__ == "__main__":
    main()
