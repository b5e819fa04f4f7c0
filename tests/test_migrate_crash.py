"""`backdate migrate` killed with SIGKILL at seeded random points on SQLite.

Why: a migration of several pairs is one transaction; a kill anywhere must leave every
statistic wholly as before or wholly as after an uninterrupted run, all of them alike, and
the file intact. Half the kills are aimed inside the write transaction (between the
BACKDATE_TRACE markers printed after BEGIN and before COMMIT), half anywhere in the run.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import migrate_data as md
from test_cli_sqlite import REPO_ROOT, url
from test_migrate import OLD_END, T0, new_meter, old_meter, setup

PYTHON = REPO_ROOT / ".venv" / "bin" / "python"
KILLS = 6
SEED = 20261206
BEGIN = "backdate-trace: BEGIN"
PAIRS = [("sensor.powerwall_import", "sensor.teslemetry_import"),
         ("sensor.powerwall_export", "sensor.teslemetry_export")]


def start(db: Path, mapping: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1",
           "TERM": "dumb", "BACKDATE_TRACE": "1"}
    return subprocess.Popen([str(PYTHON), "-m", "backdate.cli", "migrate", "--yes",
                                 url(db), "--map",
                             str(mapping), "--no-backup"], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)


def state(db: Path) -> dict[tuple[str, str], dict[int, tuple[float, float]]]:
    return {(new, table): md.read_rows(url(db), new, table)
            for _, new in PAIRS for table in ("statistics", "statistics_short_term")}


def run(db: Path, mapping: Path, aim_inside: bool, delay: float) -> tuple[bool, str]:
    proc = start(db, mapping)
    lines: list[str] = []
    began = threading.Event()

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if BEGIN in line:
                began.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if aim_inside:
        while not began.wait(0.005) and proc.poll() is None:
            pass
    try:
        proc.wait(timeout=delay)
        killed = False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        killed = True
    reader.join(timeout=60)
    return killed, "".join(lines)


def test_kill_minus_nine_leaves_each_statistic_before_or_after(tmp_path: Path) -> None:
    metres = []
    for i, (old_id, new_id) in enumerate(PAIRS):
        metres += [old_meter(old_id, T0 - 365 * 86400, OLD_END, seed=60 + i),
                   new_meter(new_id, seed=70 + i)]
    (tmp_path / "base").mkdir()
    base = setup(tmp_path / "base", 53, *metres)
    mapping = tmp_path / "pairs.csv"
    mapping.write_text("".join(f"{o},{n}\n" for o, n in PAIRS))
    before = state(base)
    ref = tmp_path / "ref.db"
    shutil.copyfile(base, ref)
    started = time.monotonic()
    proc = start(ref, mapping)
    out, _ = proc.communicate(timeout=600)
    duration = time.monotonic() - started
    assert proc.returncode == 0, out
    after = state(ref)
    assert after != before
    rng = random.Random(SEED)
    outcomes = []
    for k in range(KILLS):
        db = tmp_path / f"kill{k}.db"
        shutil.copyfile(base, db)
        inside = k % 2 == 0
        delay = rng.random() * (0.02 if inside else duration)
        killed, text = run(db, mapping, inside, delay)
        con = sqlite3.connect(db)
        try:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            con.close()
        now = state(db)
        whole = {key: ("before" if now[key] == before[key] else
                       "after" if now[key] == after[key] else "MIXED") for key in now}
        assert "MIXED" not in whole.values(), f"kill {k} (delay {delay:.3f} s): {whole}\n{text}"
        assert len(set(whole.values())) == 1, f"kill {k}: statistics disagree: {whole}"
        if not killed:
            assert set(whole.values()) == {"after"}
        outcomes.append((killed, inside, next(iter(whole.values()))))
    # Kills inside the open transaction roll back whole.
    assert any(k and i and o == "before" for k, i, o in outcomes), outcomes
