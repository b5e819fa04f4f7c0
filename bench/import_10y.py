"""Ten years of 15-minute deltas (350,640 CSV lines) into a copy of HA's schema-53 database.

Prints: the whole CLI run (wall time, peak RSS) with every safety check on (backup, plan,
read-back verification), the same rows written by a plain `executemany` in the same run as the
reference, and where the time goes inside backdate.

    .venv/bin/python bench/import_10y.py
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT.parent / "shared" / "fixtures" / "ha-db" / "sqlite-ha2026.2.3-schema53.db"
START = 1_416_441_600  # 2014-11-20T00:00:00Z: ten years ending before "now"
LINES = 350_640
RUNS = 5


def write_csv(path: Path) -> None:
    with path.open("w") as out:
        out.write("start,kwh\n")
        for i in range(LINES):
            t = START + i * 900
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))},"
                      f"{0.05 + (i % 96) * 0.002:.3f}\n")


def fresh_db(path: Path) -> None:
    if FIXTURE.exists():
        shutil.copy(FIXTURE, path)
    else:
        sys.path.insert(0, str(ROOT))
        from backdate.targets.fresh import create_recorder_sqlite

        create_recorder_sqlite(path)


def run_cli(csv: Path, db: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of one `backdate import` process."""
    exe = ROOT / ".venv" / "bin" / "backdate"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "import", str(csv), "--to", f"sqlite:///{db}", "--statistic-id",
         "backdate:bench", "--yes"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"backdate failed: {proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def executemany_reference(src_db: Path, dst_db: Path) -> tuple[int, float]:
    """The same rows, in the same schema, by a plain executemany INSERT: the floor to beat."""
    with sqlite3.connect(src_db) as con:
        tables = {
            t: con.execute(
                f"SELECT created_ts, metadata_id, start_ts, state, sum FROM {t}").fetchall()
            for t in ("statistics", "statistics_short_term")
        }
        meta = con.execute("SELECT statistic_id, source, unit_of_measurement, unit_class, "
                           "has_mean, has_sum, name, mean_type FROM statistics_meta").fetchall()
    con = sqlite3.connect(dst_db)
    started = time.perf_counter()
    con.executemany("INSERT INTO statistics_meta (statistic_id, source, unit_of_measurement, "
                    "unit_class, has_mean, has_sum, name, mean_type) VALUES (?,?,?,?,?,?,?,?)",
                    meta)
    for table, rows in tables.items():
        con.executemany(f"INSERT INTO {table} (created_ts, metadata_id, start_ts, state, sum) "
                        "VALUES (?,?,?,?,?)", rows)
    con.commit()
    elapsed = time.perf_counter() - started
    con.close()
    return sum(len(r) for r in tables.values()), elapsed


def phases(csv: Path, db: Path) -> list[tuple[str, float]]:
    """Where the time goes, in process: import, read, plan, write+verify."""
    out = []
    t = time.perf_counter()
    sys.path.insert(0, str(ROOT))
    from backdate.app.importing import ImportOptions, apply_imports, plan_imports, read_sources
    from backdate.targets.recorder_db import open_recorder

    out.append(("import modules", time.perf_counter() - t))
    opts = ImportOptions(statistic_id="backdate:bench")
    t = time.perf_counter()
    series = read_sources([str(csv)], opts)
    out.append(("read CSV", time.perf_counter() - t))
    target = open_recorder(f"sqlite:///{db}")
    t = time.perf_counter()
    imports = plan_imports(target, series, opts)
    out.append(("plan", time.perf_counter() - t))
    t = time.perf_counter()
    apply_imports(target, imports)
    out.append(("write + verify", time.perf_counter() - t))
    target.close()
    return out


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = work / "ten_years.csv"
        write_csv(csv)
        runs = []
        for k in range(RUNS):
            db = work / f"a{k}.db"
            fresh_db(db)
            runs.append(run_cli(csv, db))
        refs = []
        for k in range(RUNS):
            ref_db = work / f"ref{k}.db"
            fresh_db(ref_db)
            rows, ref = executemany_reference(work / "a0.db", ref_db)
            refs.append(ref)
        walls = sorted(w for w, _ in runs)
        wall, best, rss = statistics.median(walls), walls[0], max(r for _, r in runs)
        ref = statistics.median(refs)
        print(f"input: {LINES:,} lines of 15-minute deltas (10 years) -> {rows:,} rows")
        print(f"backdate import, whole CLI run with backup + plan + verify ({RUNS} runs): "
              f"median {wall:.2f} s, best {best:.2f} s; {rows / wall:,.0f} rows/s; "
              f"peak RSS {rss:.0f} MB")
        print(f"plain executemany of the same rows (reference, same run): median {ref:.3f} s, "
              f"{rows / ref:,.0f} rows/s")
        print(f"ratio backdate / executemany: {wall / ref:.1f}x; "
              f"vs HA's import_statistics (~1,300 rows/s): {rows / wall / 1300:.0f}x faster")
        phase_db = work / "p.db"
        fresh_db(phase_db)
        print("targets: whole run <= 1.5 s, peak RSS <= 150 MB")
        print("where the time goes (in process):")
        for name, seconds in phases(csv, phase_db):
            print(f"  {name:<16} {seconds:.3f} s")


if __name__ == "__main__":
    main()
