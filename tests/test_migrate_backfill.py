"""`backdate migrate --then-backfill influxdb://...` against a real InfluxDB 1.x.

Why: the seed system's "migrate, then backfill from InfluxDB" reported success while its
backfill never ran. Here phase 2 must overwrite the overlap with InfluxDB's own hourly
integrals; and with InfluxDB stopped, phase 1 stays committed, the exit code is 3, and the
printed `backdate import` command, run once InfluxDB is back, finishes the job.
"""

from __future__ import annotations

import math
import random
import shlex
import subprocess
from pathlib import Path

import migrate_data as md
from influx_service import InfluxServer
from test_cli_sqlite import _command, backdate, url
from test_migrate import NEW_START, OLD_END, TOL, new_meter, old_meter, setup

H = 3600


def write_power(server: InfluxServer, db: str, start: int, end: int) -> None:
    """Watts every 10-20 s over [start, end)."""
    rng = random.Random(8)
    t, lines = float(start), []
    while t < end:
        watts = 600 + 400 * math.sin((t - start) / 86400 * 2 * math.pi) + rng.gauss(0, 50)
        lines.append(f"http home={max(watts, 0.0):.2f} {int(t * 1000)}")
        t += rng.uniform(10, 20)
    server.client().write(db, lines, precision="ms")


def influx_hours(server: InfluxServer, db: str) -> dict[int, float]:
    """InfluxDB's own integral per hour, in kWh."""
    rows = server.client().points("SELECT integral(home, 1h) FROM http WHERE time > 0 "
                                  "GROUP BY time(1h) fill(none)", db)
    return {int(t): float(v) / 1000 for t, v in rows}


def check(db: Path, old: md.Meter, new: md.Meter, overlap: dict[int, float]) -> None:
    got = md.changes_of(md.read_rows(url(db), new.statistic_id))
    want = md.expected_merge(old, new, 1e-3, "keep-target")
    want.update(overlap)
    assert sorted(got) == sorted(want)
    bad = [(t, got[t], want[t]) for t in want if abs(got[t] - want[t]) > TOL]
    assert not bad, f"{len(bad)} hours differ, first {bad[:3]}"


def test_then_backfill_overwrites_the_overlap_and_survives_a_stopped_influxdb(
        tmp_path: Path) -> None:
    server = InfluxServer(tmp_path / "influx").start()
    try:
        name = server.client().create_database()
        write_power(server, name, NEW_START, OLD_END)
        hours = influx_hours(server, name)
        overlap = {t: v for t, v in hours.items() if NEW_START <= t < OLD_END}
        assert len(overlap) == 72 and len(hours) == 72
        source = f"influxdb://{server.host_port}/{name}?measurement=http&field=home&retries=1"

        # InfluxDB up: both phases.
        old, new = old_meter(), new_meter()
        (tmp_path / "up").mkdir()
        db = setup(tmp_path / "up", 53, old, new)
        dry = backdate("migrate", "--yes", url(db), "--from", old.statistic_id, "--into",
                       new.statistic_id, "--then-backfill", source, "--dry-run")
        assert "phase 2" in dry.stdout and "nothing was written" in dry.stdout
        done = backdate("migrate", "--yes", url(db), "--from", old.statistic_id, "--into",
                        new.statistic_id, "--then-backfill", source, "--no-backup")
        assert "phase 1 done" in done.stdout and "phase 2 done" in done.stdout, done.stdout
        check(db, old, new, overlap)

        # InfluxDB stopped: phase 1 committed, exit 3, the retry command.
        down = tmp_path / "down"
        down.mkdir()
        db2 = setup(down, 53, old, new)
        server.stop()
        failed = backdate("migrate", "--yes", url(db2), "--from", old.statistic_id, "--into",
                          new.statistic_id, "--then-backfill", source, "--no-backup", expect=3)
        assert "phase 1 done" in failed.stdout, failed.stdout
        assert "phase 2 FAILED" in failed.stderr and "Traceback" not in failed.stderr
        check(db2, old, new, {t: v for t, v in md.expected_merge(old, new, 1e-3, "keep-target")
                              .items() if t in overlap})
        retry = [line.strip() for line in failed.stderr.splitlines()
                 if line.strip().startswith("backdate import")]
        assert len(retry) == 1, failed.stderr
        server.start()
        args = shlex.split(retry[0])[1:]
        assert args[0] == "import"
        again = subprocess.run([*_command(), *args], capture_output=True, text=True,
                               timeout=300, check=False)
        assert again.returncode == 0, again.stdout + again.stderr
        check(db2, old, new, overlap)
    finally:
        server.stop()
