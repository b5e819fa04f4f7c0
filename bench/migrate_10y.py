"""Ten years of hourly and 5-minute rows of an old statistic (Wh) migrated into a new one (kWh)
on SQLite, beside a plain SQL copy of the same rows in the same run.

The old statistic holds 87,660 hourly and 1,051,920 5-minute rows; the new one a month of
hourly rows and ten days of 5-minute rows, with three days of overlap. `backdate migrate` (the
CLI as a user runs it, with the backup off to compare like with like) reads every row of the
old statistic, converts it, merges it by the overlap rule, writes the new hourly rows (5-minute
rows only inside HA's short-term retention, as an import does, so the old 5-minute rows before
it are not even read), shifts the new statistic's own rows, and reads everything back. For
scale, the run also prints the time of reading every row of the old statistic (both tables)
through backdate's columnar read. The reference is one `INSERT … SELECT` per table that copies
the old rows under the new metadata id (no conversion, no merge, no shift, no checks): the
least any migration could do. Target: within 3x of it.

    .venv/bin/python bench/migrate_10y.py
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backdate.targets.fresh import create_recorder_sqlite  # noqa: E402

HOUR, FIVE, DAY = 3600, 300, 86400
RUNS = 3


def build(path: Path) -> tuple[int, int, int]:
    """The database: OLD (ten years, both tables) and NEW (a month, ten days of 5-minute
    rows), times relative to now so HA's compile window is where it would be."""
    create_recorder_sqlite(path)
    now = int(time.time()) // HOUR * HOUR
    new_end = now - HOUR
    new_start = new_end - 30 * DAY
    old_end = new_start + 3 * DAY
    old_start = old_end - 3652 * DAY // 1 // DAY * DAY
    con = sqlite3.connect(path)
    meta = "INSERT INTO statistics_meta (statistic_id, source, unit_of_measurement, " \
           "unit_class, has_mean, has_sum, name, mean_type) VALUES (?, 'recorder', ?, " \
           "'energy', 0, 1, NULL, 0)"
    old_id = con.execute(meta, ("sensor.old_meter", "Wh")).lastrowid
    new_id = con.execute(meta, ("sensor.new_meter", "kWh")).lastrowid

    def rows(mid: int, start: int, end: int, five_from: int, step: float, meter0: float):
        hourly, fives = [], []
        total = 0.0
        for t in range(start, end, FIVE):
            inc = step * (1 + (t // FIVE) % 7) if t != start else 0.0
            total += inc
            if t >= five_from:
                fives.append((mid, float(t), meter0 + total, total, 0.0))
            if (t + FIVE) % HOUR == 0:
                hourly.append((mid, float(t - t % HOUR), meter0 + total, total, 0.0))
        return hourly, fives

    ins = "INSERT INTO {} (metadata_id, start_ts, state, sum, created_ts) VALUES (?,?,?,?,?)"
    for mid, a, b, f, step, m0 in ((old_id, old_start, old_end, old_start, 2.0, 1e6),
                                   (new_id, new_start, new_end, new_end - 10 * DAY, 0.002,
                                    500.0)):
        hourly, fives = rows(mid, a, b, f, step, m0)
        con.executemany(ins.format("statistics"), hourly)
        con.executemany(ins.format("statistics_short_term"), fives)
    con.commit()
    n_h = con.execute("SELECT count(*) FROM statistics WHERE metadata_id = ?", (old_id,)
                      ).fetchone()[0]
    n_5 = con.execute("SELECT count(*) FROM statistics_short_term WHERE metadata_id = ?",
                      (old_id,)).fetchone()[0]
    con.close()
    return old_id, n_h, n_5


def plain_copy(path: Path) -> float:
    """The reference: OLD's rows copied under a fresh metadata id, one transaction."""
    con = sqlite3.connect(path)
    started = time.perf_counter()
    con.execute("BEGIN")
    new_id = con.execute(
        "INSERT INTO statistics_meta (statistic_id, source, unit_of_measurement, unit_class, "
        "has_mean, has_sum, name, mean_type) VALUES ('sensor.copy', 'recorder', 'kWh', "
        "'energy', 0, 1, NULL, 0)").lastrowid
    for table in ("statistics", "statistics_short_term"):
        con.execute(f"INSERT INTO {table} (metadata_id, start_ts, state, sum, created_ts) "
                    f"SELECT ?, start_ts, state, sum, created_ts FROM {table} WHERE "
                    "metadata_id = (SELECT id FROM statistics_meta WHERE statistic_id = "
                    "'sensor.old_meter')", (new_id,))
    con.commit()
    elapsed = time.perf_counter() - started
    con.close()
    return elapsed


def migrate(path: Path) -> float:
    exe = ROOT / ".venv" / "bin" / "backdate"
    started = time.perf_counter()
    done = subprocess.run([str(exe), "migrate", "--yes",
                               f"sqlite:///{path}", "--from", "sensor.old_meter",
                           "--into", "sensor.new_meter", "--no-backup"], capture_output=True,
                          text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"migrate failed:\n{done.stdout}\n{done.stderr}")
    return elapsed


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base.db"
        _, n_h, n_5 = build(base)
        print(f"old statistic: {n_h:,} hourly rows, {n_5:,} 5-minute rows (ten years)")
        copies, migrations = [], []
        for k in range(RUNS):
            for fn, out in ((plain_copy, copies), (migrate, migrations)):
                db = Path(tmp) / f"run{k}-{fn.__name__}.db"
                shutil.copyfile(base, db)
                out.append(fn(db))
                db.unlink()
        copy, mig = min(copies), min(migrations)
        from backdate.models import Table
        from backdate.targets.recorder_db import open_recorder

        with open_recorder(f"sqlite:///{base}") as target:
            started = time.perf_counter()
            n = sum(target.read_sums(t, "sensor.old_meter")[0].size
                    for t in (Table.HOURLY, Table.SHORT_TERM))
            read_all = time.perf_counter() - started
        print(f"reading all {n:,} rows of the old statistic in columns: {read_all:.2f} s")
        print(f"plain SQL copy (INSERT … SELECT, both tables): best of {RUNS} {copy:.2f} s")
        print(f"backdate migrate (CLI, plan + write + read-back): best of {RUNS} {mig:.2f} s")
        print(f"ratio: {mig / copy:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
