"""`backdate migrate` as a new user gets it wrong: a typo in an id, --start after --end, a
source named twice, a map file whose line is not a pair of ids (a header, a peer tool's
statistics export), a pattern that matches nothing, and running the same migration twice.
Each must say what is wrong (file and line where there is one), exit 1 or 2, write nothing.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import migrate_data as md
from test_cli_sqlite import backdate, sha256, url
from test_migrate import DAY, new_meter, old_meter, setup

T_BIG = int(datetime(2019, 1, 1, tzinfo=UTC).timestamp())


def _db(tmp_path: Path) -> Path:
    return setup(tmp_path, 53, old_meter(), new_meter())


def test_a_typo_in_an_id_suggests_the_close_one(tmp_path: Path) -> None:
    db = _db(tmp_path)
    before = sha256(db)
    out = backdate("migrate", url(db), "--from", "sensor.powerwal_import", "--into",
                   "sensor.teslemetry_import", "--dry-run", expect=1)
    assert "did you mean sensor.powerwall_import" in out.stderr, out.stderr
    assert sha256(db) == before


def test_start_after_end_is_refused(tmp_path: Path) -> None:
    db = _db(tmp_path)
    before = sha256(db)
    out = backdate("migrate", url(db), "--from", "sensor.powerwall_import", "--into",
                   "sensor.teslemetry_import", "--start", "2025-05-01", "--end", "2025-03-01",
                   "--yes", "--no-backup", expect=2)
    assert "--end" in out.stderr and "after --start" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert sha256(db) == before


def test_a_source_named_twice_is_named(tmp_path: Path) -> None:
    db = _db(tmp_path)
    out = backdate("migrate", url(db), "--from", "sensor.powerwall_import", "--from",
                   "sensor.powerwall_import", "--into", "sensor.teslemetry_import",
                   "--dry-run", expect=2)
    assert "sensor.powerwall_import is named twice" in out.stderr, out.stderr


def test_map_lines_that_are_not_ids_name_file_and_line(tmp_path: Path) -> None:
    db = _db(tmp_path)
    before = sha256(db)
    header = tmp_path / "pairs.csv"
    header.write_text("old_entity_id,new_entity_id\n"
                      "sensor.powerwall_import,sensor.teslemetry_import\n")
    out = backdate("migrate", url(db), "--map", header, "--dry-run", expect=None)
    # A header line is allowed (whatever its words): the pair below it is read.
    assert out.returncode == 0, out.stderr
    bad = tmp_path / "bad.csv"
    bad.write_text("sensor.powerwall_import,sensor.teslemetry_import\n"
                   "sensor.powerwall_import,Sensor Teslemetry\n")
    out = backdate("migrate", url(db), "--map", bad, "--yes", expect=1)
    assert f"{bad.name}:2" in out.stderr and "Sensor Teslemetry" in out.stderr, out.stderr
    peer = tmp_path / "export.tsv"  # a statistics export of another tool, not a map
    peer.write_text("statistic_id\tunit\tstart\tstate\tsum\n"
                    "sensor.powerwall_import\tWh\t26.11.2024 00:00\t100\t5\n")
    out = backdate("migrate", url(db), "--map", peer, "--yes", expect=1)
    assert f"{peer.name}:1" in out.stderr and "statistics" in out.stderr, out.stderr
    assert "backdate import" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert sha256(db) == before


def test_a_map_pattern_matching_nothing_names_the_file(tmp_path: Path) -> None:
    db = _db(tmp_path)
    pairs = tmp_path / "pairs.toml"
    pairs.write_text('"sensor.powerwal_*" = "sensor.teslemetry_*"\n')
    out = backdate("migrate", url(db), "--map", pairs, "--dry-run", expect=1)
    assert "pairs.toml" in out.stderr and "sensor.powerwal_*" in out.stderr, out.stderr


def test_running_it_twice_says_nothing_to_do_and_makes_no_backup(tmp_path: Path) -> None:
    # OLD's last hours lie after the fixture's last statistics run (2026-11-23): HA has not
    # compiled them, so they are left out every time; the second run still has nothing to do.
    t0 = int(datetime(2026, 10, 1, tzinfo=UTC).timestamp())
    stop = int(datetime(2026, 11, 24, tzinfo=UTC).timestamp())
    old = old_meter(start=t0, end=stop)
    new_start = int(datetime(2026, 11, 23, 6, tzinfo=UTC).timestamp())
    new = md.make_meter("sensor.teslemetry_import", "kWh", new_start, stop + DAY, seed=2,
                        scale=0.05, meter0=1234.5, five_from=new_start)
    db = setup(tmp_path, 53, old, new)
    args = ("migrate", url(db), "--from", "sensor.powerwall_import", "--into",
            "sensor.teslemetry_import", "--yes")
    backdate(*args)
    backups = sorted(tmp_path.glob("*.backdate-*.jsonl"))
    assert len(backups) == 1
    before = sha256(db)
    again = backdate(*args)
    assert "nothing to do" in again.stdout, again.stdout
    assert "written and verified" not in again.stdout, again.stdout
    assert sorted(tmp_path.glob("*.backdate-*.jsonl")) == backups, \
        "a backup of a run that wrote nothing"
    assert sha256(db) == before


def test_ctrl_c_during_the_write_finishes_it_and_says_so(tmp_path: Path) -> None:
    """Ctrl-C while the transaction is open: the migration is finished (never half), its
    outcome reported, exit 130 with a message saying what happened."""
    import os
    import signal
    import sqlite3
    import subprocess
    import time

    from test_cli_sqlite import BACKDATE

    old = old_meter(start=T_BIG, end=T_BIG + 6 * 365 * DAY)
    new = md.make_meter("sensor.teslemetry_import", "kWh", old_end := T_BIG + 6 * 365 * DAY
                        - 2 * DAY, old_end + 5 * DAY, seed=2, scale=0.05, meter0=1.0)
    db = setup(tmp_path, 53, old, new)
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1"}
    proc = subprocess.Popen([*BACKDATE, "migrate", url(db), "--from", old.statistic_id,
                             "--into", new.statistic_id, "--yes", "--no-backup"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, stdin=subprocess.DEVNULL)
    probe = sqlite3.connect(db, timeout=0, isolation_level=None)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:  # the writer's lock: backdate holds its BEGIN IMMEDIATE transaction
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
        except sqlite3.OperationalError:
            proc.send_signal(signal.SIGINT)
            break
        time.sleep(0.001)
    probe.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, out[-500:], err)
    assert "Traceback" not in err
    assert "finished first" in err, err
    assert "phase 1 done" in out, out[-500:]
    check = md.changes_of(md.read_rows(url(db), new.statistic_id))
    assert len(check) == len(md.expected_merge(old, new, 1e-3, "keep-target")), "half written"


def test_a_typo_in_a_map_names_file_and_line(tmp_path: Path) -> None:
    db = setup(tmp_path, 53, old_meter(), new_meter(),
               old_meter("sensor.powerwall_export", seed=3),
               new_meter("sensor.teslemetry_export", seed=4))
    before = sha256(db)
    for name, text in (
            ("pairs.csv", "sensor.powerwall_export,sensor.teslemetry_export\n"
                          "sensor.powerwal_import,sensor.teslemetry_import\n"),
            ("pairs.toml", '"sensor.powerwall_export" = "sensor.teslemetry_export"\n'
                           '"sensor.powerwal_import" = "sensor.teslemetry_import"\n')):
        pairs = tmp_path / name
        pairs.write_text(text)
        out = backdate("migrate", url(db), "--map", pairs, "--yes", expect=1)
        assert f"{name}:2: sensor.powerwal_import" in out.stderr, out.stderr
        assert "did you mean sensor.powerwall_import" in out.stderr, out.stderr
    assert sha256(db) == before


def test_a_typo_in_into_is_pointed_out_before_the_rename(tmp_path: Path) -> None:
    db = _db(tmp_path)
    out = backdate("migrate", url(db), "--from", "sensor.powerwall_import", "--into",
                   "sensor.teslemetry_imprt", "--dry-run")
    assert "rename" in out.stdout
    assert "did you mean sensor.teslemetry_import" in " ".join(out.stdout.split()), out.stdout
    out = backdate("migrate", url(db), "--from", "sensor.powerwall_import", "--into",
                   "sensor.house_meter", "--dry-run")
    assert "did you mean" not in out.stdout, out.stdout
