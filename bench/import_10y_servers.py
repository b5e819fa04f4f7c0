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

Two cases of the write stage, labelled by the SQL they really run:
* new statistic: its metadata row is inserted in the same transaction, so no other row can
  conflict and the rows go in by a plain INSERT (COPY + INSERT ... SELECT without a conflict
  clause on PostgreSQL, inline VALUES without ON DUPLICATE KEY on MariaDB);
* existing statistic: the ten years are prepended to a statistic that already holds the 30
  days after them, so every row goes through the conflict clause (ON CONFLICT DO UPDATE /
  ON DUPLICATE KEY UPDATE) and the 30 days' rows in both tables are shifted.

    .venv/bin/python bench/import_10y_servers.py              # everything
    .venv/bin/python bench/import_10y_servers.py --stage-only  # the write stage cases only
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import services  # noqa: E402
from import_10y import LINES, START, write_csv  # noqa: E402

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


PLANNED_ROWS = [0]  # rows the last timed write stage upserted


def write_later_csv(path: Path, days: int = 30) -> None:
    """The `days` after the ten years (the statistic the prepend case lands in front of)."""
    end = START + LINES * 900
    with path.open("w") as out:
        out.write("start,kwh\n")
        for i in range(days * 96):
            t = end + i * 900
            out.write(f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(t))},"
                      f"{0.05 + (i % 96) * 0.002:.3f}\n")


def write_stage(csv: Path, url: str, bulk: str, existing: Path | None = None) -> float:
    """Seconds of `apply_imports` (one transaction, read-back verify) for a ready plan;
    with `existing`, that CSV is imported first (untimed) so the plan prepends to it."""
    sys.path.insert(0, str(ROOT))
    from backdate.app.importing import ImportOptions, apply_imports, plan_imports, read_sources
    from backdate.targets.recorder_db import open_recorder

    os.environ["BACKDATE_BULK"] = bulk
    opts = ImportOptions(statistic_id="backdate:bench")
    target = open_recorder(url)
    try:
        if existing is not None:
            apply_imports(target, plan_imports(target, read_sources([str(existing)], opts),
                                               opts))
        imports = plan_imports(target, read_sources([str(csv)], opts), opts)
        if existing is not None:
            assert any(tp.shift_from is not None for item in imports
                       for tp in item.plan.tables), "the prepend shifts nothing"
        PLANNED_ROWS[0] = sum(tp.count for item in imports for tp in item.plan.tables)
        started = time.perf_counter()
        apply_imports(target, imports)
        return time.perf_counter() - started
    finally:
        target.close()
        os.environ.pop("BACKDATE_BULK", None)


STAGE_LABEL = {
    ("postgresql", "auto", False): "COPY, plain INSERT (new statistic, no conflict clause)",
    ("postgresql", "auto", True): "COPY + INSERT ... ON CONFLICT DO UPDATE (existing)",
    ("mariadb", "auto", False): "inline VALUES, plain INSERT (new statistic, no conflict "
                                "clause)",
    ("mariadb", "auto", True): "inline VALUES + ON DUPLICATE KEY UPDATE (existing)",
}


def stage_cases(engine: str, dump: str, create: Any, csv: Path, later: Path
                ) -> dict[tuple[str, bool], list[float]]:
    """The write stage on each path, into a new statistic and prepended to an existing one."""
    stage: dict[tuple[str, bool], list[float]] = {
        (path, prepend): [] for path in PATHS for prepend in (False, True)}
    made = []
    try:
        for k in range(RUNS):
            for path, prepend in stage:  # interleaved, so outside load hits all alike
                name = f"bench_{engine[:2]}_{os.getpid()}_st_{path}{int(prepend)}{k}"
                made.append(name)
                stage[(path, prepend)].append(write_stage(
                    csv, create(name, DUMPS / dump), path, later if prepend else None))
    finally:
        for name in made:
            services.drop_database(engine, name)
    return stage


def print_stage(engine: str, stage: dict[tuple[str, bool], list[float]], rows: int,
                ref: float | None) -> None:
    for (path, prepend), times in stage.items():
        t = statistics.median(times)
        label = STAGE_LABEL.get((engine, path, prepend)) or (
            "old path, 100-row VALUES via executemany, ON CONFLICT/ON DUPLICATE KEY "
            f"({'existing' if prepend else 'new statistic'})")
        vs = f"; {t / ref:.2f}x plain executemany" if ref else ""
        print(f"{engine}: write + read-back stage [{label}] ({RUNS} runs): median {t:.2f} s, "
              f"best {min(times):.2f} s; {rows / t:,.0f} rows/s{vs}")
    for prepend in (False, True):
        case = "existing statistic (prepend + shift)" if prepend else "new statistic"
        ratio = statistics.median(stage[("values", prepend)]) / statistics.median(
            stage[("auto", prepend)])
        print(f"{engine}: write + read-back stage, {case}: bulk path vs old path {ratio:.2f}x "
              "faster")


def main() -> None:
    services.ensure_mariadb()
    services.ensure_postgresql()
    stage_only = "--stage-only" in sys.argv[1:]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        csv = work / "ten_years.csv"
        write_csv(csv)
        later = work / "later.csv"
        write_later_csv(later)
        print(f"input: {LINES:,} lines of 15-minute deltas (10 years)")
        for engine, (dump, create) in ENGINES.items():
            if stage_only:
                stage = stage_cases(engine, dump, create, csv, later)
                print_stage(engine, stage, PLANNED_ROWS[0], None)
                continue
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
            label = {"auto": ("COPY" if engine == "postgresql" else "inline VALUES")
                     + ", new statistic: plain INSERT, no conflict clause",
                     "values": "old path, 100-row VALUES via executemany with the conflict "
                               "clause"}
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
            print_stage(engine, stage_cases(engine, dump, create, csv, later), rows, ref)


if __name__ == "__main__":
    main()
