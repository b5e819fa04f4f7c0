"""One year of 10-second power samples in a real InfluxDB 1.x to hourly statistics in SQLite.

    .venv/bin/python bench/influx_power_year.py [--runs N] [--raw] [--fresh-data]

Writes 3,153,600 Powerwall-Dashboard-style samples (watts every 10 s through 2025) into a
private influxd (tests/influx_service.py; installed from Debian if missing; the data is kept
in ~/.cache/backdate/influx-bench and reused), then times:

* the whole CLI: `backdate import influxdb://... --to sqlite:///<fresh recorder db> --yes`;
* the same steps in process: InfluxDB answering the chunked integral queries, transfer and
  parse of the answers, plan, write (with read-back);
* reference, same run: InfluxDB's own single `SELECT integral(home, 1h) ... GROUP BY time(1h)`
  over the whole year (the server's work alone);
* with --raw: `integral=backdate` (every sample transferred and integrated by backdate), and
  the InfluxDB 2.x path's client-side integral (`influxql_hour_integrals`) over the same year,
  checked against and timed beside InfluxDB's own.

It checks that the hourly sums written equal InfluxDB's own integral and prints the figures.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from influx_service import InfluxServer  # noqa: E402

from backdate.app.importing import ImportOptions, apply_imports, plan_imports  # noqa: E402
from backdate.app.targets import open_target  # noqa: E402
from backdate.sources.base import SourceRange  # noqa: E402
from backdate.sources.influx import influxql_hour_integrals, open_influx_source  # noqa: E402
from backdate.targets.fresh import create_recorder_sqlite  # noqa: E402

CACHE = Path.home() / ".cache" / "backdate" / "influx-bench"
DB = "powerwall"
START = 1735689600  # 2025-01-01T00:00:00Z
STEP = 10
POINTS = 365 * 86400 // STEP  # 3,153,600
EXE = ROOT / ".venv" / "bin" / "backdate"


def watts(t: np.ndarray) -> np.ndarray:
    """A house: daily and yearly swing plus deterministic noise, never negative."""
    day = np.sin((t % 86400) / 86400 * 2 * math.pi - 2.0)
    year = np.cos((t - START) / (365 * 86400) * 2 * math.pi)
    noise = np.sin(t * 0.7309) * 120 + np.sin(t * 0.01337) * 60
    return np.round(np.maximum(650 + 400 * day + 250 * year + noise, 0.0), 1)


def fill(server: InfluxServer) -> float:
    """Write the year in 50,000-line batches; returns seconds."""
    client = server.client()
    client.query(f"CREATE DATABASE {DB}", post=True)
    t0 = time.perf_counter()
    batch = 50_000
    for i in range(0, POINTS, batch):
        t = START + STEP * np.arange(i, min(i + batch, POINTS), dtype=np.int64)
        w = watts(t.astype(np.float64))
        lines = [f"http home={v} {s}" for s, v in zip(t.tolist(), w.tolist(), strict=True)]
        client.write(DB, lines, precision="s", batch=batch)
    elapsed = time.perf_counter() - t0
    client.close()
    return elapsed


def count(server: InfluxServer) -> int:
    try:
        with server.client() as client:
            rows = client.points("SELECT count(home) FROM http", DB)
    except Exception:  # noqa: BLE001 - an empty or missing database counts as nothing
        return 0
    return int(rows[0][1]) if rows else 0


def cli_import(spec: str, db: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([str(EXE), "import", spec, "--to", f"sqlite:///{db}", "--yes",
                           "--no-backup"], capture_output=True, text=True, check=False,
                          env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"})
    elapsed = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"import failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return elapsed


def in_process(spec: str, db: Path) -> dict[str, float]:
    """The import's steps, timed one by one."""
    times: dict[str, float] = {}
    t0 = time.perf_counter()
    source = open_influx_source(spec)
    series = source.read(SourceRange())
    t1 = time.perf_counter()
    source.close()
    times["read (total)"] = t1 - t0
    times["  InfluxDB answering (HTTP round trips)"] = source.timing["query"]
    times["  parse JSON into arrays"] = source.timing["parse"]
    target = open_target(f"sqlite:///{db}")
    try:
        t2 = time.perf_counter()
        imports = plan_imports(target, series, ImportOptions(backup=False))
        t3 = time.perf_counter()
        apply_imports(target, imports)
        t4 = time.perf_counter()
    finally:
        target.close()
    times["plan"] = t3 - t2
    times["write + read-back"] = t4 - t3
    times["hours"] = float(len(series[0]))
    return times


def check(server: InfluxServer, db: Path) -> tuple[int, float]:
    """Largest difference between the sums written and InfluxDB's own integral (kWh)."""
    import sqlite3

    with server.client() as client:
        own = client.points("SELECT integral(home, 1h) FROM http WHERE time > 0 "
                            "GROUP BY time(1h) fill(none)", DB)
    expected = np.cumsum([v for _, v in own]) / 1000
    con = sqlite3.connect(db)
    rows = con.execute("SELECT s.start_ts, s.sum FROM statistics s JOIN statistics_meta m ON "
                       "m.id = s.metadata_id WHERE m.statistic_id = 'backdate:bench' "
                       "ORDER BY s.start_ts").fetchall()
    con.close()
    if [int(r[0]) for r in rows] != [int(t) for t, _ in own]:
        raise SystemExit("hours written differ from InfluxDB's hours")
    return len(rows), float(np.max(np.abs(np.array([r[1] for r in rows]) - expected)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--raw", action="store_true", help="also time integral=backdate")
    ap.add_argument("--fresh-data", action="store_true", help="rewrite the cached year")
    args = ap.parse_args()
    if args.fresh_data:
        shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    server = InfluxServer(CACHE).start()
    try:
        held = count(server)
        if held != POINTS:
            if held:
                with server.client() as client:
                    client.query(f"DROP DATABASE {DB}", post=True)
            seconds = fill(server)
            print(f"wrote {POINTS:,} samples into InfluxDB {seconds:.1f} s "
                  f"({POINTS / seconds:,.0f} points/s)")
        else:
            print(f"InfluxDB holds the cached {POINTS:,} samples ({CACHE})")
        spec = (f"influxdb://{server.host_port}/{DB}?measurement=http&field=home&unit=W"
                "&statistic_id=backdate:bench&name=Bench")
        work = Path(tempfile.mkdtemp(prefix="backdate-bench-"))
        try:
            cli = []
            for run in range(args.runs):
                db = create_recorder_sqlite(work / f"cli{run}.db")
                cli.append(cli_import(spec, db))
            hours, worst = check(server, work / "cli0.db")
            steps = in_process(spec, create_recorder_sqlite(work / "steps.db"))
            with server.client() as client:
                t0 = time.perf_counter()
                own = client.points("SELECT integral(home, 1h) FROM http WHERE time > 0 "
                                    "GROUP BY time(1h) fill(none)", DB)
                reference = time.perf_counter() - t0
            assert len(own) == hours
            print(f"\none year, {POINTS:,} samples every {STEP} s -> {hours:,} hourly rows "
                  f"(largest difference to InfluxDB's own integral: {worst:.2e} kWh)\n")
            print(f"backdate import, whole CLI ({args.runs} runs): median "
                  f"{statistics.median(cli):.2f} s, best {min(cli):.2f} s")
            print(f"reference, same run: InfluxDB's own one-query hourly integral "
                  f"{reference:.2f} s -> the whole import takes "
                  f"{statistics.median(cli) / reference:.1f}x the server's integral alone")
            print("\nwhere the time goes (in process, one run):")
            for name, value in steps.items():
                if name != "hours":
                    print(f"  {name:<42} {value:6.2f} s")
            if args.raw:
                raw_spec = spec + "&integral=backdate&kind=power"
                raw_db = create_recorder_sqlite(work / "raw.db")
                t0 = time.perf_counter()
                source = open_influx_source(raw_spec)
                [series] = source.read(SourceRange())
                source.close()
                t1 = time.perf_counter()
                target = open_target(f"sqlite:///{raw_db}")
                imports = plan_imports(target, [series], ImportOptions(backup=False))
                apply_imports(target, imports)
                target.close()
                t2 = time.perf_counter()
                print(f"\nintegral=backdate (every sample transferred): read {t1 - t0:.2f} s "
                      f"({len(series):,} samples; InfluxDB {source.timing['query']:.2f} s, "
                      f"parse {source.timing['parse']:.2f} s), plan + write {t2 - t1:.2f} s")
                # The 2.x path's client-side rule (InfluxQL's integral) on the same samples.
                t3 = time.perf_counter()
                starts, wh = influxql_hour_integrals(series.times, series.values)
                t4 = time.perf_counter()
                server_wh = np.array([v for _, v in own])
                same_hours = starts.astype(int).tolist() == [int(t) for t, _ in own]
                worst_rule = float(np.max(np.abs(wh - server_wh))) if same_hours else math.inf
                print(f"2.x rule on the client (influxql_hour_integrals) over the year: "
                      f"{t4 - t3:.2f} s vs InfluxDB's own integral {reference:.2f} s "
                      f"({(t4 - t3) / reference:.2f}x); same hours: {same_hours}, largest "
                      f"difference {worst_rule:.2e} Wh")
        finally:
            shutil.rmtree(work, ignore_errors=True)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
