"""Ten years of 15-minute deltas (350,640 CSV lines, 87,660 hourly rows) into HA's schema-53
database on MariaDB and on PostgreSQL (loaded from HA's own dumps), beside a plain
`executemany` of the same rows in the same run.

Prints per engine: the whole CLI run (wall time, peak RSS) with every check on (row backup,
plan, read-back verification) on the bulk path (BACKDATE_BULK=auto: COPY into a temporary
table + one INSERT ... SELECT on PostgreSQL, inline multi-row VALUES on MariaDB), the same
with the old path (BACKDATE_BULK=values: parameterised 100-row VALUES through the driver's
executemany), and the reference: one-row INSERTs through the driver's plain `executemany`,
one transaction. Then, in process, the write + read-back stage alone on each path (the same
plan), beside that executemany: the stage the bulk paths change, without Python's start-up,
the CSV reading and the planning that every path shares. The servers are started (or
installed) by tests/services.py.

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


PATHS = ("auto", "values")  # BACKDATE_BULK: the bulk path, and the old one


def run_cli(csv: Path, url: str, cwd: Path, bulk: str) -> tuple[float, float]:
    exe = ROOT / ".venv" / "bin" / "backdate"
    started = time.perf_counter()
    proc = subprocess.Popen(
        [str(exe), "import", str(csv), "--to", url, "--statistic-id", "backdate:bench",
         "--yes"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=cwd,
        env={**os.environ, "BACKDATE_BULK": bulk})
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


def write_stage(csv: Path, url: str, bulk: str) -> float:
    """Seconds of `apply_imports` (one transaction, read-back verify) for a ready plan."""
    sys.path.insert(0, str(ROOT))
    from backdate.app.importing import ImportOptions, apply_imports, plan_imports, read_sources
    from backdate.targets.recorder_db import open_recorder

    os.environ["BACKDATE_BULK"] = bulk
    opts = ImportOptions(statistic_id="backdate:bench")
    target = open_recorder(url)
    try:
        imports = plan_imports(target, read_sources([str(csv)], opts), opts)
        started = time.perf_counter()
        apply_imports(target, imports)
        return time.perf_counter() - started
    finally:
        target.close()
        os.environ.pop("BACKDATE_BULK", None)


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
            runs: dict[str, list[tuple[float, float]]] = {path: [] for path in PATHS}
            refs = []
            try:
                for k in range(RUNS):
                    for path in PATHS:  # interleaved, so load from elsewhere hits both alike
                        name = f"bench_{engine[:2]}_{os.getpid()}_{path}{k}"
                        made.append(name)
                        runs[path].append(run_cli(csv, create(name, DUMPS / dump), work, path))
                for k in range(RUNS):
                    name = f"bench_{engine[:2]}_{os.getpid()}_ref{k}"
                    made.append(name)
                    create(name, DUMPS / dump)
                    rows, ref = executemany_reference(engine, made[0], name)
                    refs.append(ref)
            finally:
                for name in made:
                    services.drop_database(engine, name)
            ref = statistics.median(refs)
            label = {"auto": "COPY" if engine == "postgresql" else "inline VALUES",
                     "values": "old path, 100-row VALUES via executemany"}
            medians = {}
            for path in PATHS:
                walls = sorted(w for w, _ in runs[path])
                wall, rss = statistics.median(walls), max(r for _, r in runs[path])
                medians[path] = wall
                print(f"{engine}: backdate import [{label[path]}], whole CLI run with backup + "
                      f"plan + verify ({RUNS} runs): median {wall:.2f} s, best {walls[0]:.2f} "
                      f"s; {rows / wall:,.0f} rows/s; peak RSS {rss:.0f} MB; "
                      f"{wall / ref:.2f}x plain executemany")
            print(f"{engine}: plain executemany of the same {rows:,} rows (same run): median "
                  f"{ref:.2f} s, {rows / ref:,.0f} rows/s")
            print(f"{engine}: bulk path vs old path: {medians['values'] / medians['auto']:.2f}x "
                  "faster")
            stage: dict[str, list[float]] = {path: [] for path in PATHS}
            made = []
            try:
                for k in range(RUNS):
                    for path in PATHS:
                        name = f"bench_{engine[:2]}_{os.getpid()}_stage_{path}{k}"
                        made.append(name)
                        stage[path].append(write_stage(csv, create(name, DUMPS / dump), path))
            finally:
                for name in made:
                    services.drop_database(engine, name)
            for path in PATHS:
                t = statistics.median(stage[path])
                print(f"{engine}: write + read-back stage only [{label[path]}] ({RUNS} runs): "
                      f"median {t:.2f} s, best {min(stage[path]):.2f} s; {rows / t:,.0f} rows/s; "
                      f"{t / ref:.2f}x plain executemany")
            print(f"{engine}: write + read-back stage, bulk path vs old path: "
                  f"{statistics.median(stage['values']) / statistics.median(stage['auto']):.2f}x "
                  "faster")


if __name__ == "__main__":
    main()
