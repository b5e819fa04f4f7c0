"""`backdate demo`: the whole import on made-up data, in a folder of its own.

The only place outside tests where backdate makes data up, and it says so: the readings file is
written to the demo folder, then imported through exactly the path a user's file takes.
"""

from __future__ import annotations

import math
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
from rich.console import Console

from backdate.app import render
from backdate.app.importing import ImportOptions, apply_imports, plan_imports, read_sources
from backdate.errors import InputError
from backdate.targets.fresh import create_recorder_sqlite

DEMO_ZONE = "Europe/Vienna"
STATISTIC = "backdate:demo_house"


def synthetic_year(end: float) -> tuple[np.ndarray, np.ndarray]:
    """A year of 15-minute household use in kWh: daily and seasonal shape, seeded noise."""
    start = end - 365 * 86400
    starts = np.arange(start, end, 900.0)
    rng = np.random.default_rng(20261123)
    day = (starts % 86400) / 86400
    season = 1.0 + 0.35 * np.cos(2 * math.pi * ((starts / 86400) % 365.25) / 365.25)
    profile = 0.08 + 0.12 * np.exp(-((day - 0.8) ** 2) / 0.01) + 0.06 * np.exp(
        -((day - 0.3) ** 2) / 0.005)
    values = np.round(profile * season * rng.uniform(0.7, 1.3, starts.size), 4)
    return starts, values


def made_by_demo(db: Path) -> bool:
    """Whether `db` is a database an earlier `backdate demo` made: no state or event rows, and
    no statistic but the demo's. Anything else (a real Home Assistant database, a file that is
    not SQLite) is never deleted."""
    import sqlite3

    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return False
    try:
        ids = {row[0] for row in con.execute("SELECT statistic_id FROM statistics_meta")}
        for table in ("states", "events"):
            if con.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None:
                return False
    except sqlite3.Error:
        return False
    finally:
        con.close()
    return ids <= {STATISTIC}


def run_demo(directory: Path, console: Console) -> None:
    db = directory / "home-assistant_v2.db"
    if db.exists() and not made_by_demo(db):
        raise InputError(f"{db} is not a demo database (it holds Home Assistant's own data, "
                         "or is not a recorder database): the demo never replaces it. Use "
                         "--dir with an empty or new folder")
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-wal", "-shm", "-journal"):  # the demo's own database, nothing else
        db.with_name(db.name + suffix).unlink(missing_ok=True)
    create_recorder_sqlite(db)
    zone = ZoneInfo(DEMO_ZONE)
    today = datetime.now(zone).replace(hour=0, minute=0, second=0, microsecond=0)
    starts, values = synthetic_year(today.timestamp())
    csv_path = directory / "demo_house.csv"
    with csv_path.open("w", encoding="utf-8") as out:
        out.write("start,kwh\n")
        for t, v in zip(starts.tolist(), values.tolist(), strict=True):
            out.write(f"{int(t)},{v}\n")
    console.print(f"demo: made-up readings ({starts.size:,} quarter-hours, one year) "
                  f"in {csv_path}; a fresh HA recorder database (schema 53) in {db}",
                  markup=False)
    from backdate.app.targets import open_target

    url = f"sqlite:///{db.resolve()}"  # the absolute form, usable from any directory
    opts = ImportOptions(statistic_id=STATISTIC, name="Demo house", tz=DEMO_ZONE,
                         report_tz=DEMO_ZONE)
    target = open_target(url)
    try:
        started = time.perf_counter()
        imports = plan_imports(target, read_sources([str(csv_path)], opts), opts)
        render.print_plans(console, imports, zone)
        apply_imports(target, imports)
        elapsed = time.perf_counter() - started
        render.print_done(console, imports, [i.statistic_id for i in imports])
        chart = directory / "chart.png"
        if render.can_chart():
            render.chart(imports, zone, str(chart))
    finally:
        target.close()
    drawn = chart if render.can_chart() else "not drawn (pip install 'backdate[chart]')"
    console.print(f"imported in {elapsed:.2f} s; chart: {drawn}", markup=False)
    console.print(f"look inside: backdate inspect {url}", markup=False,
                  soft_wrap=True)  # a command to copy: never broken across lines
