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


MARKER = ".backdate-demo"  # lists what an earlier demo made in its folder
DB_NAME = "home-assistant_v2.db"
MADE = (DB_NAME, f"{DB_NAME}-wal", f"{DB_NAME}-shm", f"{DB_NAME}-journal", "demo_house.csv",
        "chart.png", MARKER)


def prepare_folder(directory: Path) -> None:
    """Make `directory` ready for a demo without touching anything the demo did not make.

    A missing or empty folder is used as it is; a folder an earlier demo made (its marker
    file, and nothing else in it but the demo's own files) is cleared of those files; any other
    file, a database above all, is refused (InputError, nothing touched)."""
    if directory.exists() and not directory.is_dir():
        raise InputError(f"{directory} is a file, not a folder: give --dir a new or empty folder")
    if directory.is_dir():
        present = sorted(p.name for p in directory.iterdir())
        made = set(MADE) if MARKER in present else set()
        foreign = [name for name in present if name not in made]
        if foreign:
            shown = ", ".join(foreign[:5]) + (" …" if len(foreign) > 5 else "")
            raise InputError(
                f"{directory} holds files the demo did not make ({shown}); the demo never "
                "touches them: give --dir a new or empty folder")
        for name in present:
            (directory / name).unlink()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MARKER).write_text(
            "made by `backdate demo`; it may replace these files of its own:\n"
            + "\n".join(MADE) + "\n", encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot create the demo folder {directory}: {exc}") from None


def run_demo(directory: Path, console: Console) -> None:
    prepare_folder(directory)
    db = directory / DB_NAME
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
