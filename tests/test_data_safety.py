"""Data safety: demo, backups and restore, export round trips, implausible input, unknown
entity ids, interrupts, pruning, and units of new statistics.

Why: none of these may lose or distort a user's data. Every test runs the installed CLI on a
copy of a database real Home Assistant made and judges with plain SQL (`sqlite3`), except the
unit property, which drives the engine directly over every unit class.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_cli_sqlite import (
    BACKDATE,
    backdate,
    copy_fixture,
    sha256,
    sql,
    statistics_content,
    url,
)

HOUR = 3600
START = datetime(2024, 3, 4, tzinfo=UTC)  # long before the fixtures' last compiled window


def hourly_csv(path: Path, values: list[float], *, header: str = "start,delta",
               start: datetime = START) -> Path:
    lines = [header] + [f"{(start + timedelta(hours=i)).strftime('%Y-%m-%dT%H:%M:%SZ')},{v!r}"
                        for i, v in enumerate(values)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def meta(db: Path, sid: str) -> tuple[str, str, int] | None:
    got = sql(db, "SELECT unit_of_measurement, source, id FROM statistics_meta "
              "WHERE statistic_id = ?", sid)
    return got[0] if got else None


def rows(db: Path, sid: str, table: str = "statistics") -> list[tuple[float, ...]]:
    return sql(db, f"SELECT start_ts, state, sum, mean, min, max FROM {table} WHERE metadata_id ="
               " (SELECT id FROM statistics_meta WHERE statistic_id = ?) ORDER BY start_ts", sid)


def said(proc: subprocess.CompletedProcess[str]) -> str:
    """stdout and stderr as one line (Rich wraps long lines)."""
    return " ".join((proc.stdout + proc.stderr).split())


def no_traceback(proc: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr


# -------------------------------------------------------------------------------- 1. demo


def test_demo_never_touches_what_it_did_not_make(tmp_path: Path) -> None:
    """A folder holding a database the demo did not make is refused (exit 1, byte-identical);
    a file as --dir is an error, not a traceback; the demo's own folder can be made again."""
    folder = tmp_path / "ha"
    folder.mkdir()
    theirs = copy_fixture(53, folder, "home-assistant_v2.db")
    digest = sha256(theirs)
    proc = backdate("demo", "--dir", folder, expect=1)
    no_traceback(proc)
    assert "home-assistant_v2.db" in said(proc) and "did not make" in said(proc), said(proc)
    assert sha256(theirs) == digest and sorted(p.name for p in folder.iterdir()) == [theirs.name]

    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine")
    proc = backdate("demo", "--dir", a_file, expect=1)
    no_traceback(proc)
    assert a_file.read_text() == "mine"

    demo = tmp_path / "demo"
    backdate("demo", "--dir", demo)
    backdate("demo", "--dir", demo)  # its own files only: made again
    assert len(rows(demo / "home-assistant_v2.db", "backdate:demo_house")) > 8000
    (demo / "keep.txt").write_text("mine")  # now a file it did not make
    backdate("demo", "--dir", demo, expect=1)
    assert (demo / "keep.txt").read_text() == "mine"


# --------------------------------------------------------------------- 2. backup and restore


def whole(db: Path) -> dict[str, list[tuple[object, ...]]]:
    """Every row of every table."""
    names = [r[0] for r in sql(db, "SELECT name FROM sqlite_master WHERE type = 'table' AND "
                               "name NOT LIKE 'sqlite_%'")]
    return {n: sql(db, f"SELECT * FROM {n} ORDER BY rowid") for n in names}


def test_restore_is_row_level_and_keeps_what_ha_wrote_elsewhere(tmp_path: Path) -> None:
    """The backup holds only the touched statistic (with a manifest); restore puts it back
    exactly (ids included) in one go and leaves every other row, such as one HA wrote after
    the backup into another statistic, as it is."""
    db = copy_fixture(53, tmp_path, "ha.db")
    first = hourly_csv(tmp_path / "house.csv", [0.5 + i % 7 * 0.1 for i in range(48)])
    backdate("import", first, "--to", url(db), "--no-backup", "--yes")
    other = hourly_csv(tmp_path / "other.csv", [1.0] * 24)
    backdate("import", other, "--to", url(db), "--no-backup", "--yes")
    before = statistics_content(db)
    house = meta(db, "backdate:house")[2]
    before_mine = {t: sql(db, f"SELECT * FROM {t} WHERE metadata_id = ? ORDER BY id", house)
                   for t in ("statistics", "statistics_short_term")}
    redo = hourly_csv(tmp_path / "redo.csv", [2.0] * 24, start=START + timedelta(hours=12))
    proc = backdate("import", redo, "--statistic-id", "backdate:house", "--to", url(db), "--yes")
    (backup,) = db.parent.glob("ha.db.backdate-*.jsonl")
    assert f"backdate restore {backup}" in said(proc), said(proc)
    manifest = json.loads(backup.read_text().splitlines()[0])
    assert manifest["statistic_ids"] == ["backdate:house"]
    assert manifest["schema_version"] == 53 and manifest["database"]
    assert manifest["backdate_version"] and manifest["created"] and manifest["url"] == url(db)
    assert "backdate:other" not in backup.read_text(), "the backup holds an untouched statistic"
    assert backup.stat().st_size < db.stat().st_size / 4, "not a row-level backup"
    # Home Assistant writes into another statistic after the backup
    other_id = meta(db, "backdate:other")[2]
    last = sql(db, "SELECT max(start_ts), max(sum) FROM statistics WHERE metadata_id = ?",
               other_id)[0]
    sql_write(db, "INSERT INTO statistics (created_ts, metadata_id, start_ts, state, sum) "
              "VALUES (?, ?, ?, ?, ?)", 1.0, other_id, last[0] + HOUR, None, last[1] + 1)
    house_id = meta(db, "backdate:house")[2]

    def split(where: str) -> dict[str, list[tuple[object, ...]]]:
        return {t: sql(db, f"SELECT * FROM {t} WHERE metadata_id {where} ? ORDER BY id", house_id)
                for t in ("statistics", "statistics_short_term")}

    after_ha_others = split("!=")
    digest = sha256(db)
    proc = backdate("restore", backup, "--to", url(db), expect=2)  # no terminal to ask
    assert "--yes" in said(proc) and sha256(db) == digest
    backdate("restore", backup, "--to", url(db), "--yes")
    assert split("=") == before_mine, "backdate:house is not exactly as before the import"
    assert split("!=") == after_ha_others, "rows of other statistics changed"
    assert statistics_content(db)["statistics_meta"] == before["statistics_meta"]
    assert sql(db, "PRAGMA integrity_check") == [("ok",)]


def sql_write(db: Path, statement: str, *params: object) -> None:
    con = sqlite3.connect(db)
    try:
        con.execute(statement, params)
        con.commit()
    finally:
        con.close()


def test_restore_refuses_a_backup_of_another_database(tmp_path: Path) -> None:
    """A row backup of the schema-53 database is refused on a schema-42 one and on another
    schema-53 database; an old whole-file .bak is restored only with --whole-file, only onto
    the database it is a copy of."""
    db53 = copy_fixture(53, tmp_path, "a.db")
    db42 = copy_fixture(42, tmp_path, "b.db")
    path = hourly_csv(tmp_path / "x.csv", [1.0] * 24)
    backdate("import", path, "--to", url(db53), "--yes")
    (backup,) = tmp_path.glob("a.db.backdate-*.jsonl")
    digest = sha256(db42)
    proc = backdate("restore", backup, "--to", url(db42), "--yes", expect=1)
    assert "another database" in said(proc) and sha256(db42) == digest, said(proc)
    no_traceback(proc)
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    backdate("demo", "--dir", fresh)
    other53 = fresh / "home-assistant_v2.db"
    digest = sha256(other53)
    proc = backdate("restore", backup, "--to", url(other53), "--yes", expect=1)
    assert "another database" in said(proc) and sha256(other53) == digest, said(proc)

    # an older backdate's whole-file backup of b.db
    bak = tmp_path / "b.db.backdate-20261101T000000Z.bak"
    src, dst = sqlite3.connect(db42), sqlite3.connect(bak)
    src.backup(dst)
    src.close()
    dst.close()
    backdate("import", path, "--to", url(db42), "--no-backup", "--yes")
    changed = sha256(db42)
    proc = backdate("restore", bak, "--to", url(db42), "--yes", expect=1)
    assert "Stop Home Assistant first" in said(proc) and "--whole-file" in said(proc)
    assert sha256(db42) == changed
    proc = backdate("restore", bak, "--to", url(db53), "--yes", "--whole-file", expect=1)
    assert "another database" in said(proc), said(proc)
    proc = backdate("restore", bak, "--to", url(db42), "--whole-file", expect=2)
    assert "--yes" in said(proc) and sha256(db42) == changed
    backdate("restore", bak, "--to", url(db42), "--whole-file", "--yes")
    assert meta(db42, "backdate:x") is None


def test_restore_refuses_rows_ha_wrote_after_the_backup(tmp_path: Path) -> None:
    """An entity statistic HA compiles on after the backup: restore names the rows it would
    delete and refuses (exit 1, nothing changed);
    --force restores exactly."""
    db = copy_fixture(53, tmp_path, "ha.db")
    sid = "sensor.house_energy"
    backdate("import", hourly_csv(tmp_path / "h.csv", [1.0] * 48), "--statistic-id", sid,
             "--create", "--to", url(db), "--no-backup", "--yes")
    before = rows(db, sid)
    redo = hourly_csv(tmp_path / "redo.csv", [3.0] * 12, start=START + timedelta(hours=10))
    backdate("import", redo, "--statistic-id", sid, "--to", url(db), "--yes")
    (backup,) = tmp_path.glob("ha.db.backdate-*.jsonl")
    meta_id = meta(db, sid)[2]
    compiled = json.loads(backup.read_text().splitlines()[0])["compiled_end"]
    sql_write(db, "INSERT INTO statistics (created_ts, metadata_id, start_ts, state, sum) "
              "VALUES (?, ?, ?, ?, ?)", 1.0, meta_id, compiled, 99.0, 99.0)
    digest = sha256(db)
    proc = backdate("restore", backup, "--to", url(db), "--yes", expect=1)
    assert "1 statistics row(s) newer than the backup" in said(proc), said(proc)
    assert "--force" in said(proc) and sha256(db) == digest
    no_traceback(proc)
    backdate("restore", backup, "--to", url(db), "--yes", "--force")
    assert rows(db, sid) == before


# ----------------------------------------------------------------------- 3. export round trip

CLASSES = {
    # unit class: (input file header, unit, kind, values)
    "energy": ("start,delta", "Wh", "delta", [250.0, 1000.5, 0.25, 731.0] * 6),
    "volume": ("start,delta", "L", "delta", [12.5, 0.0, 3.25, 40.0] * 6),
    "temperature": ("start,mean", "°F", "mean", [41.0, 39.5, 50.25, 60.0] * 6),
    "power": ("start,mean", "W", "mean", [120.0, 980.5, 3000.0, 15.0] * 6),
    "other": ("start,mean", "%", "mean", [40.0, 55.5, 61.0, 80.0] * 6),
}


@pytest.mark.parametrize("fmt", ["csv", "json", "klausj1"])
@pytest.mark.parametrize("unit_class", sorted(CLASSES))
def test_export_import_round_trip_keeps_unit_and_values(tmp_path: Path, unit_class: str,
                                                        fmt: str) -> None:
    """Export, then import into a fresh database with no unit or kind given: the same unit,
    kind and values (a Wh statistic must not come back 1000× off)."""
    header, unit, kind, values = CLASSES[unit_class]
    a = copy_fixture(53, tmp_path, "a.db")
    b = copy_fixture(53, tmp_path, "b.db")
    sid = f"backdate:{unit_class}"
    src = hourly_csv(tmp_path / "in.csv", values, header=header)
    backdate("import", src, "--statistic-id", sid, "--unit", unit, "--kind", kind,
             "--to", url(a), "--no-backup", "--yes")
    assert meta(a, sid)[0] == unit
    out = tmp_path / f"out.{fmt}"
    backdate("export", url(a), "--statistic-id", sid, "--format", fmt, "--tz", "UTC", "-o", out)
    backdate("import", out, "--statistic-id", sid, "--tz", "UTC", "--to", url(b),
             "--no-backup", "--yes")
    assert meta(b, sid)[0] == unit, (unit_class, fmt, meta(b, sid))
    got, want = rows(b, sid), rows(a, sid)
    assert [r[0] for r in got] == [r[0] for r in want]
    for column in (2, 3, 4, 5) if kind == "mean" else (2,):
        for g, w in zip(got, want, strict=True):
            assert (g[column] is None) == (w[column] is None), (column, g, w)
            if w[column] is not None:
                assert g[column] == pytest.approx(w[column], rel=1e-12, abs=1e-9), (g, w)


# ------------------------------------------------------------------- 4. implausible input


@pytest.mark.parametrize(("body", "args", "line"), [
    ([1.0, 1.0, 5e13, 1.0], ["--unit", "kWh"], 4),   # 50 TWh in one quarter hour
    ([1.0, 2.0, 3.0, 5.0e9], ["--unit", "kWh", "--kind", "cumulative"], 5),
    ([1.0] * 3 + [3e9], ["--unit", "MWh", "--kind", "cumulative"], 5),
    ([20.0, 21.0, -300.0], ["--unit", "°C", "--kind", "mean"], 4),
    ([500.0, 2e11, 3.0], ["--unit", "W", "--kind", "power"], 3),
])
def test_implausible_values_are_refused(tmp_path: Path, body: list[float], args: list[str],
                                        line: int) -> None:
    db = copy_fixture(53, tmp_path, "ha.db")
    digest = sha256(db)
    path = hourly_csv(tmp_path / "bad.csv", body, header="start,value")
    for command in ("plan", "import"):
        extra = ["--yes"] if command == "import" else []
        proc = backdate(command, path, *args, "--to", url(db), *extra, expect=1)
        assert f"bad.csv:{line}:" in said(proc) and "plausible" in said(proc), said(proc)
        no_traceback(proc)
    assert sha256(db) == digest and not list(tmp_path.glob("ha.db.backdate-*"))


def test_sum_that_cannot_resolve_its_steps_is_refused(tmp_path: Path) -> None:
    """Each value is possible, but their sum passes the point where float64 no longer
    resolves 1e-6 kWh."""
    db = copy_fixture(53, tmp_path, "ha.db")
    digest = sha256(db)
    path = hourly_csv(tmp_path / "big.csv", [9e8] * 6 + [1e9], header="start,delta")
    proc = backdate("import", path, "--to", url(db), "--yes", expect=1)
    assert "big.csv:8:" in said(proc) and "resolve" in said(proc), said(proc)
    assert sha256(db) == digest


def test_warnings_name_file_and_line(tmp_path: Path) -> None:
    """plan and import warn (and still write) about negative deltas, input about 1000× the
    statistic's scale, and rows dropped as repeats."""
    db = copy_fixture(53, tmp_path, "ha.db")
    sid = "backdate:house"
    backdate("import", hourly_csv(tmp_path / "kwh.csv", [0.4, 0.6, 0.5, 0.7] * 12),
             "--statistic-id", sid, "--to", url(db), "--no-backup", "--yes")
    wh = hourly_csv(tmp_path / "wh.csv", [400.0, 650.0, 500.0, 550.0] * 6,
                    start=START + timedelta(days=2))
    negative = hourly_csv(tmp_path / "neg.csv", [0.5, 0.5, -0.2, 0.5], start=START +
                          timedelta(days=5))
    dated = tmp_path / "dated.csv"
    dated.write_text("date,kwh\n2024-05-01,1.5\n2024-05-01,1.5\n2024-05-01,1.5\n"
                     "2024-05-02,2\n2024-05-02,2\n")
    for command in ("plan", "import"):
        extra = ["--yes", "--no-backup"] if command == "import" else []
        proc = backdate(command, wh, "--statistic-id", sid, "--to", url(db), *extra)
        assert "warning: " in said(proc) and f"{wh}:2:" in said(proc), said(proc)
        assert f"× those {sid} holds around them" in said(proc), said(proc)
        proc = backdate(command, negative, "--to", url(db), *extra)
        assert f"{negative}:4: negative delta -0.2" in said(proc), said(proc)
        proc = backdate(command, dated, "--tz", "UTC", "--to", url(db), *extra)
        assert f"{dated}:3: 3 row(s) dropped" in said(proc), said(proc)
        assert "2 reading(s) left" in said(proc), said(proc)


# ---------------------------------------------------------------------- 5. unknown entity id


def test_unknown_entity_id_needs_create(tmp_path: Path) -> None:
    db = copy_fixture(53, tmp_path, "ha.db")
    digest = sha256(db)
    path = hourly_csv(tmp_path / "e.csv", [1.0] * 24)
    proc = backdate("import", path, "--statistic-id", "sensor.energy", "--to", url(db), "--yes",
                    expect=1)
    assert "--create" in said(proc) and sha256(db) == digest, said(proc)
    proc = backdate("plan", path, "--statistic-id", "sensor.backup_backup_manager_stat",
                    "--to", url(db), expect=1)
    assert "Did you mean sensor.backup_backup_manager_state" in said(proc), said(proc)
    no_traceback(proc)
    # an entity HA records states of is known; --create makes any other
    backdate("import", path, "--statistic-id", "sensor.backup_backup_manager_state", "--to",
             url(db), "--no-backup", "--yes")
    backdate("import", path, "--statistic-id", "sensor.energy", "--create", "--to", url(db),
             "--no-backup", "--yes")
    assert meta(db, "sensor.energy")[1] == "recorder"


# --------------------------------------------------------------------------- 6. interrupts


def ten_years(path: Path) -> Path:
    start = 1_416_441_600  # 2014-11-20
    with path.open("w") as out:
        out.write("start,kwh\n")
        for i in range(350_640):
            out.write(f"{start + i * 900},{0.05 + (i % 96) * 0.002:.3f}\n")
    return path


def reading(pid: int, path: Path) -> bool:
    """The process has `path` open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(str(path) == _link(fd) for fd in fds.iterdir())
    except OSError:
        return False


def _link(fd: Path) -> str:
    try:
        return str(fd.readlink())
    except OSError:
        return ""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_before_commit_says_nothing_was_written(tmp_path: Path, sig: int) -> None:
    db = copy_fixture(53, tmp_path, "ha.db")
    digest = sha256(db)
    csv = ten_years(tmp_path / "ten.csv")
    proc = subprocess.Popen([*BACKDATE, "import", str(csv), "--to", url(db), "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not reading(proc.pid, csv):  # signalled while it reads the file
        assert time.monotonic() < deadline and proc.poll() is None, "never read the file"
        time.sleep(0.01)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, out, err)
    assert "interrupted" in err and "nothing was written" in err, err
    assert "Traceback" not in err and sha256(db) == digest


def test_interrupt_after_commit_says_all_was_written(tmp_path: Path) -> None:
    """Signalled right after COMMIT (during the read-back check): exit 130, says every row is
    committed and how to undo it; the rows are there."""
    db = copy_fixture(53, tmp_path, "ha.db")
    csv = ten_years(tmp_path / "ten.csv")
    env = {**os.environ, "BACKDATE_TRACE": "1"}
    proc = subprocess.Popen([*BACKDATE, "import", str(csv), "--to", url(db), "--yes"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    seen = []
    assert proc.stderr is not None
    for line in proc.stderr:
        seen.append(line)
        if "COMMITTED" in line:
            proc.send_signal(signal.SIGINT)
            break
    out, err = proc.communicate(timeout=120)
    err = "".join(seen) + err
    assert proc.returncode == 130, (proc.returncode, out[-2000:], err)
    text = " ".join(err.split())
    assert "all of it was committed (backdate:ten)" in text, text
    assert "To undo: backdate restore" in text and "Traceback" not in text, text
    assert len(rows(db, "backdate:ten")) == 87_660


# ------------------------------------------------------------------------------ 7. pruning


def test_restore_command_printed_and_old_backups_pruned(tmp_path: Path) -> None:
    """Four imports keep the newest three backups of that database, naming the one pruned;
    another database's backups in the same folder are never touched; --keep-backups 1."""
    a = copy_fixture(53, tmp_path, "a.db")
    b = copy_fixture(42, tmp_path, "b.db")
    backdate("import", hourly_csv(tmp_path / "b.csv", [1.0] * 6), "--to", url(b), "--yes")
    (b_backup,) = tmp_path.glob("b.db.backdate-*.jsonl")
    made = []
    for k in range(4):
        path = hourly_csv(tmp_path / "a.csv", [1.0 + k] * 6)
        proc = backdate("import", path, "--to", url(a), "--yes")
        assert "to undo: backdate restore" in said(proc), said(proc)
        made.append(sorted(set(tmp_path.glob("a.db.backdate-*.jsonl")) - set(made))[0])
    assert sorted(tmp_path.glob("a.db.backdate-*.jsonl")) == sorted(made[1:])
    assert f"pruned older backup: {made[0]}" in said(proc), said(proc)
    path = hourly_csv(tmp_path / "a.csv", [9.0] * 6)
    backdate("import", path, "--to", url(a), "--yes", "--keep-backups", "1")
    assert len(list(tmp_path.glob("a.db.backdate-*.jsonl"))) == 1
    assert b_backup.exists()


# ------------------------------------------------------------------ 18. units of new statistics

KLAUSJ1 = [  # (delimiter, file name)
    ("\t", "counter.tsv"), (";", "counter.csv"), (",", "counter_comma.csv")]


def klausj1_file(path: Path, delimiter: str, sid: str, unit: str, states: list[float]) -> Path:
    """klausj1/homeassistant-statistics' import example: statistic_id, unit, start, state,
    sum with %d.%m.%Y %H:%M times (the start of each hour; state and sum at its end)."""
    lines = [delimiter.join(["statistic_id", "unit", "start", "state", "sum"])]
    for i, s in enumerate(states):
        when = (START + timedelta(hours=i)).strftime("%d.%m.%Y %H:%M")
        lines.append(delimiter.join([sid, unit, when, repr(s), repr(s - states[0])]))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("delimiter", "name"), KLAUSJ1)
def test_klausj1_litres_keep_their_unit_and_convert_state_with_sum(
        tmp_path: Path, delimiter: str, name: str) -> None:
    """A new statistic from a file in L stays in L (state and sum as in the file); into an
    existing m³ statistic, state and sum are both converted."""
    db = copy_fixture(53, tmp_path, "ha.db")
    states = [1000.0, 1012.5, 1030.0, 1030.0, 1044.25, 1100.0]
    path = klausj1_file(tmp_path / name, delimiter, "sensor:water", "L", states)
    backdate("import", path, "--tz", "UTC", "--to", url(db), "--no-backup", "--yes")
    assert meta(db, "sensor:water")[0] == "L"
    hour = {START.timestamp() + i * HOUR: i for i in range(len(states))}
    got = rows(db, "sensor:water")
    assert len(got) >= len(states) - 1
    for start_ts, state, total, *_ in got:
        i = hour[start_ts]
        assert (state, total) == pytest.approx((states[i], states[i] - states[0])), i

    backdate("import", hourly_csv(tmp_path / "m3.csv", [0.001] * 2, start=START -
                                  timedelta(days=3)),
             "--statistic-id", "sensor:water_m3", "--unit", "m³", "--to", url(db),
             "--no-backup", "--yes")
    other = klausj1_file(tmp_path / ("2" + name), delimiter, "sensor:water_m3", "L", states)
    backdate("import", other, "--tz", "UTC", "--to", url(db), "--no-backup", "--yes")
    assert meta(db, "sensor:water_m3")[0] == "m³"
    got = [r for r in rows(db, "sensor:water_m3") if r[0] >= START.timestamp()]
    assert len(got) >= len(states) - 1
    for (t0, _s0, sum0, *_), (t1, state, sum1, *_) in zip(got, got[1:], strict=False):
        i = hour[t1]
        assert state == pytest.approx(states[i] / 1000), i  # litres into m³, like the sum
        assert sum1 - sum0 == pytest.approx((states[i] - states[hour[t0]]) / 1000), i


UNIT_PAIRS = {
    "energy": [("Wh", "kWh"), ("MWh", "Wh"), ("kWh", "GJ")],
    "volume": [("L", "m³"), ("m³", "L"), ("gal", "ft³")],
    "temperature": [("°C", "°F"), ("K", "°C")],
    "power": [("W", "kW"), ("kW", "MW")],
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(unit_class=st.sampled_from(sorted(UNIT_PAIRS)), pick=st.integers(0, 2),
       values=st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=2, max_size=30),
       klausj1=st.booleans())
def test_conversion_moves_every_column_together(unit_class: str, pick: int,
                                                values: list[float], klausj1: bool) -> None:
    """Into a statistic in another unit of the same class, state, sum, mean, min and max are
    all converted by the same rule: planned in the other unit and converted afterwards give
    the same numbers."""
    import numpy as np

    from backdate.engine import units
    from backdate.engine.prepare import prepare
    from backdate.models import Kind, Series

    src, dst = UNIT_PAIRS[unit_class][pick % len(UNIT_PAIRS[unit_class])]
    conv = units.conversion(src, dst)
    n = len(values)
    times = START.timestamp() + HOUR * np.arange(1, n + 1, dtype=np.float64)
    v = np.array(values)
    if unit_class in ("energy", "volume"):
        meter = np.cumsum(v)
        series = Series(source="x.csv", times=times, values=meter - meter[0],
                        lines=np.arange(2, n + 2), kind=Kind.CUMULATIVE, unit=src,
                        hourly_sums=klausj1, states=meter + 7.0 if klausj1 else None)
        same = prepare(series, kind=Kind.CUMULATIVE, input_unit=src, statistic_unit=src)
        other = prepare(series, kind=Kind.CUMULATIVE, input_unit=src, statistic_unit=dst)
        # amounts are differences of meter values: float error scales with the meter
        tol = 1e-12 * (float(np.max(np.abs(meter))) + 7.0) * conv.factor + 1e-12
        assert other.hours.amounts == pytest.approx(same.hours.amounts * conv.factor,
                                                    rel=1e-9, abs=tol)
        assert other.hours.states == pytest.approx(same.hours.states * conv.factor,
                                                   rel=1e-9, abs=tol)
        if klausj1:
            assert other.first_state == pytest.approx(same.first_state * conv.factor)
    else:
        series = Series(source="x.csv", times=times - HOUR, values=v, lines=np.arange(2, n + 2),
                        ends=times.copy(), mins=v - 1.0, maxs=v + 1.0, kind=Kind.MEAN, unit=src)
        same = prepare(series, kind=Kind.MEAN, input_unit=src, statistic_unit=src)
        other = prepare(series, kind=Kind.MEAN, input_unit=src, statistic_unit=dst)
        for column in ("mean", "min", "max"):
            want = getattr(same.hourly_means, column) * conv.factor + conv.offset
            assert getattr(other.hourly_means, column) == pytest.approx(want, rel=1e-9,
                                                                         abs=1e-9), column
        assert series.mins is not None and (series.mins == v - 1.0).all(), "converted in place"
