"""Ten years of 15-minute deltas (350,640 CSV lines, 87,660 hourly rows) into HA's schema-53
database on MariaDB and on PostgreSQL (loaded from HA's own dumps), beside a plain
`executemany` of the same rows in the same run.

Prints per engine: the whole CLI run (wall time, peak RSS) with every check on (row backup,
plan, read-back verification), and the reference: one-row INSERTs through the driver's plain
`executemany`, one transaction. The servers are started (or installed) by tests/services.py.

    .venv/bin/python bench/import_10y_servers.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import services  # noqa: E402
from import_10y import LINES, write_csv  # noqa: E402

DUMPS = ROOT.parent / "shared" / "fixtures" / "ha-db"
ENGINES = {
    "mariadb": ("mariadb-ha2026.2.3-schema53.sql", services.create_mysql_database),
    "postgresql": ("postgresql-ha2026.2.3-schema53.sql", services.create_pg_database),
}
RUNS = 3


def run_cli(csv: Path, url: str, cwd: Path) -> tuple[float, float]:
    exe = ROOT / ".venv" / "bin" / "backdate"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "import", str(csv), "--to", url, "--statistic-id", "backdate:bench",
         "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"backdate failed: {proc.stderr.read().decode()}")
    return wall, usage.ru_maxrss / 1024


def connect(engine: str, name: str):  # noqa: ANN201
    return (services.mysql_connect(name) if engine == "mariadb" else services.pg_connect(name))


def executemany_reference(engine: str, src: str, dst: str) -> tuple[int, float]:
    """The rows backdate wrote, inserted again by one-row executemany in one transaction."""
    con = connect(engine, src)
    cur = con.cursor()
    tables = {}
    for t in ("statistics", "statistics_short_term"):
        cur.execute(f"SELECT created_ts, metadata_id, start_ts, state, sum FROM {t}")
        tables[t] = list(cur.fetchall())
    cur.execute("SELECT statistic_id, source, unit_of_measurement, unit_class, has_mean, "
                "has_sum, name, mean_type FROM statistics_meta")
    meta = list(cur.fetchall())
    con.close()
    con = connect(engine, dst)
    con.autocommit = False
    cur = con.cursor()
    started = time.perf_counter()
    cur.executemany("INSERT INTO statistics_meta (statistic_id, source, unit_of_measurement, "
                    "unit_class, has_mean, has_sum, name, mean_type) VALUES "
                    "(%s,%s,%s,%s,%s,%s,%s,%s)", meta)
    for table, rows in tables.items():
        cur.executemany(f"INSERT INTO {table} (created_ts, metadata_id, start_ts, state, sum) "
                        "VALUES (%s,%s,%s,%s,%s)", rows)
    con.commit()
    elapsed = time.perf_counter() - started
    con.close()
    return sum(len(r) for r in tables.values()), elapsed


def main() -> None:
    services.ensure_mariadb()
    services.ensure_postgresql()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = work / "ten_years.csv"
        write_csv(csv)
        print(f"input: {LINES:,} lines of 15-minute deltas (10 years)")
        for engine, (dump, create) in ENGINES.items():
            made = []
            runs, refs = [], []
            try:
                for k in range(RUNS):
                    name = f"bench_{engine[:2]}_{os.getpid()}_{k}"
                    made.append(name)
                    runs.append(run_cli(csv, create(name, DUMPS / dump), work))
                for k in range(RUNS):
                    name = f"bench_{engine[:2]}_{os.getpid()}_ref{k}"
                    made.append(name)
                    create(name, DUMPS / dump)
                    rows, ref = executemany_reference(engine, made[0], name)
                    refs.append(ref)
            finally:
                for name in made:
                    services.drop_database(engine, name)
            walls = sorted(w for w, _ in runs)
            wall, rss, ref = statistics.median(walls), max(r for _, r in runs), \
                statistics.median(refs)
            print(f"{engine}: backdate import, whole CLI run with backup + plan + verify "
                  f"({RUNS} runs): median {wall:.2f} s, best {walls[0]:.2f} s; "
                  f"{rows / wall:,.0f} rows/s; peak RSS {rss:.0f} MB")
            print(f"{engine}: plain executemany of the same {rows:,} rows (same run): median "
                  f"{ref:.2f} s, {rows / ref:,.0f} rows/s; ratio {wall / ref:.2f}x")


if __name__ == "__main__":
    main()
