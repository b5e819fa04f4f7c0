"""`backdate migrate` on copies of HA-made SQLite databases (schema 42, 50, 53), run as the
installed command: merges with both overlap rules, a chain, a rename, a map with globs, a
unit that cannot be converted, --dry-run, --remove-source, --json.

Why: merge tools copy sums (a first-hour spike, Wh history in a kWh sensor) and HA's own rename
moves nothing when NEW already has statistics (peer-lessons). Every expectation is computed
from the generated meters (tests/migrate_data.py), never from backdate. Fixed dates in 2025,
before the fixtures' last statistics run, so HA's compile window does not cut anything.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import migrate_data as md
import pytest
from test_cli_sqlite import backdate, copy_fixture, sha256, sql, url

T0 = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp())
DAY = 86400
OLD_END = T0 + 180 * DAY
NEW_START = OLD_END - 3 * DAY
NEW_END = NEW_START + 30 * DAY
TOL = 1e-6


def old_meter(sid: str = "sensor.powerwall_import", start: int = T0, end: int = OLD_END,
              seed: int = 1) -> md.Meter:
    return md.make_meter(sid, "Wh", start, end, seed=seed, scale=40.0, meter0=5_000_000.0,
                         five_from=end - 10 * DAY)


def new_meter(sid: str = "sensor.teslemetry_import", seed: int = 2) -> md.Meter:
    return md.make_meter(sid, "kWh", NEW_START, NEW_END, seed=seed, scale=0.05, meter0=1234.5,
                         five_from=NEW_END - 10 * DAY)


def setup(tmp_path: Path, version: int = 53, *metres: md.Meter) -> Path:
    db = copy_fixture(version, tmp_path)
    for m in metres:
        md.write_meter(url(db), m)
    return db


def check_merged(db: Path, old: md.Meter, new: md.Meter, rule: str, factor: float = 1e-3
                 ) -> None:
    rows = md.read_rows(url(db), new.statistic_id)
    got = md.changes_of(rows)
    want = md.expected_merge(old, new, factor, rule)
    assert sorted(got) == sorted(want), "NEW's hours are not OLD's plus NEW's"
    bad = [(t, got[t], want[t]) for t in want if abs(got[t] - want[t]) > TOL]
    assert not bad, f"{len(bad)} hours differ, first {bad[:3]}"
    assert min(got.values()) >= -TOL, "a negative hour"
    # NEW's own rows after the history keep their meter reading (HA continues from it).
    for t, (state, _) in new.hourly.items():
        if t >= OLD_END:
            assert rows[t][0] == pytest.approx(state, abs=1e-9)
    # The 5-minute table moves with the hourly one: no step at any hour's end.
    five = md.read_rows(url(db), new.statistic_id, "statistics_short_term")
    for t, (_, s) in five.items():
        if (t + 300) % 3600 == 0 and t - 3300 in rows:
            assert abs(s - rows[t - 3300][1]) < TOL, "5-minute and hourly sums disagree"
    # The first 5-minute row continues the hourly sum before it (no seam in that table).
    first5 = min(five)
    assert abs(five[first5][1] - rows[first5 - 3600][1] - new.five_changes[first5]) < TOL


@pytest.mark.parametrize("version", [42, 50, 53])
def test_merge_keep_target_converts_wh_into_kwh(tmp_path: Path, version: int) -> None:
    old, new = old_meter(), new_meter()
    db = setup(tmp_path, version, old, new)
    done = backdate("migrate", "--yes",
                    url(db), "--from", old.statistic_id, "--into", new.statistic_id,
                    "--no-backup")
    assert "keep-target" in done.stdout and "×0.001" in done.stdout, done.stdout
    check_merged(db, old, new, "keep-target")
    assert md.read_rows(url(db), old.statistic_id) == old.hourly, "OLD was changed"


def test_merge_keep_source_and_json(tmp_path: Path) -> None:
    old, new = old_meter(), new_meter()
    db = setup(tmp_path, 53, old, new)
    done = backdate("migrate", "--yes",
                    url(db), "--from", old.statistic_id, "--into", new.statistic_id,
                    "--overlap", "keep-source", "--no-backup", "--json")
    doc = json.loads(done.stdout)
    [pair] = doc["pairs"]
    assert doc["phase1"] == "done" and doc["phase2"] == "not requested"
    assert pair["hours_overlap"] == 72 and pair["hours_overwritten"] == 72
    assert pair["factors"] == {old.statistic_id: 0.001}
    assert pair["seams"] and all(seam["closed"] for seam in pair["seams"])
    assert len(pair["days"]) >= 180 and all(d["after"] >= 0 for d in pair["days"])
    check_merged(db, old, new, "keep-source")


def test_chain_of_three_ids(tmp_path: Path) -> None:
    oldest = old_meter("sensor.meter_2023", T0 - 60 * DAY, T0, seed=5)
    older = old_meter("sensor.meter_2024", T0, OLD_END, seed=6)
    new = new_meter()
    oldest_kwh = md.Meter(oldest.statistic_id, "kWh")
    db = setup(tmp_path, 53, oldest, older, new)
    backdate("migrate", "--yes",
             url(db), "--from", oldest.statistic_id, "--from", older.statistic_id,
             "--into", new.statistic_id, "--no-backup")
    got = md.changes_of(md.read_rows(url(db), new.statistic_id))
    want = md.expected_merge(older, new, 1e-3, "keep-target")
    for t, v in oldest.changes.items():
        want[t] = v * 1e-3
    del oldest_kwh
    assert sorted(got) == sorted(want)
    assert max(abs(got[t] - want[t]) for t in want) < TOL


def test_rename_when_new_has_nothing(tmp_path: Path) -> None:
    old = old_meter()
    db = setup(tmp_path, 42, old)
    meta_id = sql(db, "SELECT id FROM statistics_meta WHERE statistic_id = ?",
                  old.statistic_id)[0][0]
    done = backdate("migrate", "--yes", url(db), "--from", old.statistic_id, "--into",
                    "sensor.teslemetry_import", "--no-backup")
    assert "rename" in done.stdout
    assert sql(db, "SELECT id, source, unit_of_measurement, has_mean, has_sum FROM "
               "statistics_meta WHERE statistic_id = 'sensor.teslemetry_import'") == [
        (meta_id, "recorder", "Wh", 0, 1)]
    assert md.read_rows(url(db), "sensor.teslemetry_import") == old.hourly
    assert md.read_rows(url(db), old.statistic_id) == {}
    # HA will compile the new entity: a 5-minute row without a meter reading after OLD's
    # last one, so HA keeps the sum and takes NEW's first reading as its starting point.
    five = md.read_rows(url(db), "sensor.teslemetry_import", "statistics_short_term")
    last = max(old.five)
    assert {t: v for t, v in five.items() if t != last + 300} == old.five
    assert five[last + 300] == (None, old.five[last][1])


def test_rename_fills_mean_type_and_unit_class_on_schema_53(tmp_path: Path) -> None:
    old = md.make_meter("backdate:old_meter", "Wh", T0, T0 + 2 * DAY, seed=3, scale=1.0,
                        meter0=0.0)
    db = copy_fixture(53, tmp_path)
    md.write_meter(url(db), old)
    con = sqlite3.connect(db)
    con.execute("UPDATE statistics_meta SET unit_class = NULL, source = 'backdate'")
    con.commit()
    con.close()
    backdate("migrate", "--yes", url(db), "--from", old.statistic_id, "--into", "sensor.house",
             "--no-backup")
    assert sql(db, "SELECT source, unit_class, mean_type, has_mean FROM statistics_meta") == [
        ("recorder", "energy", 0, 0)]


def test_map_with_globs_in_one_go(tmp_path: Path) -> None:
    pairs = [(old_meter(f"sensor.powerwall_{n}", seed=10 + i),
              new_meter(f"sensor.teslemetry_{n}", seed=20 + i))
             for i, n in enumerate(("import", "export", "solar"))]
    db = setup(tmp_path, 53, *[m for p in pairs for m in p])
    mapping = tmp_path / "pairs.toml"
    mapping.write_text('"sensor.powerwall_*" = "sensor.teslemetry_*"\n')
    done = backdate("migrate", "--yes", url(db), "--map", mapping, "--no-backup")
    for old, new in pairs:
        assert new.statistic_id in done.stdout
        check_merged(db, old, new, "keep-target")
    csv_map = tmp_path / "pairs.csv"
    csv_map.write_text("from,into\nsensor.nothing_here,sensor.teslemetry_import\n")
    before = sha256(db)
    failed = backdate("migrate", "--yes", url(db), "--map", csv_map, "--no-backup", expect=1)
    assert "sensor.nothing_here" in failed.stderr and "Traceback" not in failed.stderr
    assert sha256(db) == before


def test_unit_that_cannot_be_converted_is_refused(tmp_path: Path) -> None:
    old = old_meter()
    gas = md.make_meter("sensor.gas", "m³", NEW_START, NEW_END, seed=9, scale=0.01, meter0=0.0)
    db = setup(tmp_path, 53, old, gas)
    before = sha256(db)
    failed = backdate("migrate", "--yes",
                      url(db), "--from", old.statistic_id, "--into", gas.statistic_id,
                      expect=1)
    assert "cannot be converted" in failed.stderr and "Traceback" not in failed.stderr
    assert sha256(db) == before
    assert not list(tmp_path.glob("*.backdate-*"))


def test_dry_run_leaves_the_file_byte_identical(tmp_path: Path) -> None:
    old, new = old_meter(), new_meter()
    db = setup(tmp_path, 53, old, new)
    before = sha256(db)
    done = backdate("migrate", "--yes",
                    url(db), "--from", old.statistic_id, "--into", new.statistic_id,
                    "--dry-run", "--remove-source")
    assert "DRY RUN" in done.stdout and "nothing was written" in done.stdout
    assert "Energy dashboard" in done.stdout and "Seams" in done.stdout
    assert sha256(db) == before


def test_without_yes_and_without_a_terminal_nothing_is_written(tmp_path: Path) -> None:
    """As for import: a migration asks "Write this?"; with nobody to ask it refuses (exit 2)
    and the file stays byte-identical; --dry-run needs no answer."""
    old, new = old_meter(), new_meter()
    db = setup(tmp_path, 53, old, new)
    before = sha256(db)
    refused = backdate("migrate", url(db), "--from", old.statistic_id, "--into",
                       new.statistic_id, expect=2)
    assert "--yes" in refused.stderr and "Traceback" not in refused.stderr
    assert sha256(db) == before
    backdate("migrate", url(db), "--from", old.statistic_id, "--into", new.statistic_id,
             "--dry-run")
    assert sha256(db) == before


def test_remove_source_after_verification_with_backup(tmp_path: Path) -> None:
    old, new = old_meter(), new_meter()
    db = setup(tmp_path, 53, old, new)
    before = sha256(db)
    done = backdate("migrate", "--yes",
                    url(db), "--from", old.statistic_id, "--into", new.statistic_id,
                    "--remove-source")
    assert f"removed {old.statistic_id}" in done.stdout
    assert md.read_rows(url(db), old.statistic_id) == {}
    check_merged(db, old, new, "keep-target")
    [bak] = [p for p in tmp_path.iterdir() if ".backdate-" in p.name]
    backdate("restore", bak, "--to", url(db), "--yes")
    assert md.read_rows(url(db), old.statistic_id) == old.hourly
    assert md.read_rows(url(db), new.statistic_id) == new.hourly
    del before


def test_range_limits_what_moves(tmp_path: Path) -> None:
    old, new = old_meter(), new_meter()
    db = setup(tmp_path, 53, old, new)
    start = datetime.fromtimestamp(OLD_END - 20 * DAY, UTC).isoformat()
    backdate("migrate", "--yes", url(db), "--from", old.statistic_id, "--into", new.statistic_id,
             "--start", start, "--no-backup")
    got = md.changes_of(md.read_rows(url(db), new.statistic_id))
    want = md.expected_merge(old, new, 1e-3, "keep-target", start=OLD_END - 20 * DAY)
    assert sorted(got) == sorted(want)
    assert max(abs(got[t] - want[t]) for t in want) < TOL


def test_suggest_pairs_a_stopped_statistic_with_the_one_that_started(tmp_path: Path) -> None:
    old, new = old_meter(), new_meter()
    gas = md.make_meter("sensor.gas_meter", "m³", NEW_START, NEW_END, seed=9, scale=0.01,
                        meter0=0.0)
    db = setup(tmp_path, 53, old, new, gas)
    done = backdate("migrate", "--yes", url(db), "--suggest", "--json")
    found = json.loads(done.stdout)
    assert [(s["from"], s["into"]) for s in found] == [(old.statistic_id, new.statistic_id)]
    text = backdate("migrate", "--yes", url(db), "--suggest")
    assert f"--from {old.statistic_id} --into {new.statistic_id}" in text.stdout


def test_temperature_means_merge_with_offset_conversion(tmp_path: Path) -> None:
    hours_old = range(NEW_START - 5 * 86400, NEW_START + 2 * 86400, 3600)
    hours_new = range(NEW_START, NEW_START + 4 * 86400, 3600)
    old = {t: (50.0 + (t // 3600) % 20, 45.0, 60.0) for t in hours_old}  # °F
    new = {t: (12.0 + (t // 3600) % 5, 10.0, 16.0) for t in hours_new}  # °C
    db = copy_fixture(53, tmp_path)
    md.write_means(url(db), "sensor.old_outdoor", "°F", old)
    md.write_means(url(db), "sensor.outdoor", "°C", new)
    backdate("migrate", "--yes",
             url(db), "--from", "sensor.old_outdoor", "--into", "sensor.outdoor",
             "--no-backup")
    got = md.read_means(url(db), "sensor.outdoor")
    want = dict(new)
    for t, vals in old.items():
        if t not in new:
            want[t] = tuple((v - 32) * 5 / 9 for v in vals)
    assert sorted(got) == sorted(want)
    for t, vals in want.items():
        assert got[t] == pytest.approx(vals, abs=1e-9), t
    energy = old_meter()
    md.write_meter(url(db), energy)
    before = sha256(db)
    refused = backdate("migrate", "--yes", url(db), "--from", energy.statistic_id, "--into",
                       "sensor.outdoor", expect=1)
    assert "cannot be merged" in refused.stderr
    assert sha256(db) == before


def test_inspect_reports_a_kept_source_as_migrated(tmp_path: Path) -> None:
    old, new = old_meter(), new_meter()
    other = md.make_meter("sensor.unrelated", "kWh", T0 - 30 * DAY, NEW_END, seed=12,
                          scale=0.05, meter0=0.0)
    db = setup(tmp_path, 53, old, new, other)
    before = json.loads(backdate("inspect", url(db), "--json").stdout)
    assert "migrated" not in json.dumps(before)
    backdate("migrate", "--yes", url(db), "--from", old.statistic_id, "--into", new.statistic_id,
             "--no-backup")
    after = backdate("inspect", url(db), "--json").stdout
    doc = json.loads(after)
    notes = {s["statistic_id"]: " ".join(s.get("problems", [])) for s in doc["statistics"]}
    assert f"migrated into {new.statistic_id}" in notes[old.statistic_id]
    assert "migrated" not in notes["sensor.unrelated"] + notes[new.statistic_id]


def test_chain_into_an_entity_without_statistics_anchors_the_sum(tmp_path: Path) -> None:
    oldest = old_meter("sensor.meter_2023", T0 - 60 * DAY, T0, seed=5)
    older = old_meter("sensor.meter_2024", T0, OLD_END, seed=6)
    db = setup(tmp_path, 42, oldest, older)
    backdate("migrate", "--yes",
             url(db), "--from", oldest.statistic_id, "--from", older.statistic_id,
             "--into", "sensor.meter", "--no-backup")
    rows = md.read_rows(url(db), "sensor.meter")
    got = md.changes_of(rows)
    # a new statistic keeps the unit of what goes into it (here both old meters' Wh)
    assert sql(db, "SELECT unit_of_measurement FROM statistics_meta WHERE statistic_id = ?",
               "sensor.meter") == [("Wh",)]
    want = {t: v for part in (oldest, older) for t, v in part.changes.items()}
    assert sorted(got) == sorted(want)
    assert max(abs(got[t] - want[t]) for t in want) < TOL
    last = max(rows)
    five = md.read_rows(url(db), "sensor.meter", "statistics_short_term")
    assert five == {last + 3300: (None, rows[last][1])}
