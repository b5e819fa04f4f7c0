"""`backdate plan|import --to http://...`: the WebSocket API path, judged by Home Assistant.

Why: users on Home Assistant OS have a URL and a token, not the database file. Every test runs
the real CLI as a subprocess with ``HA_TOKEN`` in its environment against a real HA 2024.3.3
(time zone Europe/Vienna), and reads the result back through HA's own
``recorder/statistics_during_period`` (``change`` per hour, as the Energy dashboard does).
The token comes from ``HA_TOKEN`` (the CLI's ``--token`` lands there too).
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import ha_harness
import pytest
from ha_harness import HomeAssistant, free_port
from test_ha_import import (
    BACKDATE,
    DST_CASES,
    TOL,
    ReimportCase,
    _when,
    assert_amounts,
    assert_log_clean,
    assert_no_negative,
    assert_temperature_statistic,
    changes,
    last_full_hour,
    metadata,
)


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """One running HA for this module (each test uses its own statistic)."""
    instance = HomeAssistant(tmp_path_factory.mktemp("ha_ws"), venv=ha_venv)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
    assert_log_clean(instance)


def run(*args: object, token: str | None, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """The CLI with ``HA_TOKEN`` set (or unset); fails with its output unless exit ``expect``."""
    env = {k: v for k, v in os.environ.items() if k != "HA_TOKEN"}
    env.update({"COLUMNS": "200", "NO_COLOR": "1"})
    if token is not None:
        env["HA_TOKEN"] = token
    cmd = [BACKDATE, *(str(a) for a in args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                          check=False)
    assert proc.returncode == expect, (
        f"`backdate {' '.join(cmd[1:])}` exited {proc.returncode}, expected {expect}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


def ws_import(ha: HomeAssistant, *args: object, token: str | None = None,
              expect: int = 0) -> subprocess.CompletedProcess[str]:
    return run("import", *args, "--to", ha.url, "--no-backup", "--yes",
               token=ha.token if token is None else token, expect=expect)


def hourly(ha: HomeAssistant, sid: str, start: datetime, end: datetime,
           min_rows: int = 0) -> dict[int, float]:
    # No polling needed: `import` returns only once HA holds the rows (min_rows=0 reads once).
    return changes(ha, sid, start, end, "hour", min_rows=min_rows)


# -------------------------------------------------------------------------- (a) new statistic


@pytest.mark.ha
def test_new_external_statistic(ha: HomeAssistant, tmp_path: Path) -> None:
    """3 days of 15-minute kWh deltas into a new external statistic; `plan` first writes
    nothing and says this path writes no 5-minute rows. HA holds every hour as soon as
    `import` returns (it confirms by reading back)."""
    sid = "backdate:ws_house"
    end = last_full_hour()
    intervals = dg.quarter_hour_deltas(end - timedelta(days=3), end, seed=11)
    path = dg.write_delta_csv(tmp_path / "ws_house.csv", intervals, value_column="kwh")

    proc = run("plan", path, "--to", ha.url, token=ha.token)
    assert "hourly rows only" in proc.stdout and "5-minute" in proc.stdout, proc.stdout
    assert metadata(ha, sid) is None, "`backdate plan` wrote the statistic"

    ws_import(ha, path)
    meta = metadata(ha, sid)
    assert meta is not None and meta["source"] == "backdate" and meta["has_sum"] is True
    assert meta["statistics_unit_of_measurement"] == "kWh"
    expected = dg.hourly_totals(intervals)
    got = hourly(ha, sid, intervals[0].start - timedelta(days=1), end + timedelta(hours=1))
    assert_amounts(got, expected, f"{sid}: hourly change")
    got5 = changes(ha, sid, intervals[0].start, end, "5minute", min_rows=0)
    assert not got5, "the WebSocket path wrote 5-minute rows"


# ------------------------------------------------------------------------------- (b) prepend


@pytest.mark.ha
def test_prepend_before_existing_hours(ha: HomeAssistant, tmp_path: Path) -> None:
    """30 days placed before 2 days that exist: the seam hour keeps its change (the later rows
    are shifted with adjust_sum_statistics), no hour is negative."""
    sid = "backdate:ws_prepend"
    end = last_full_hour()
    seam = end - timedelta(days=2)
    first = seam - timedelta(days=30)
    recent = dg.quarter_hour_deltas(seam, end, seed=21)
    history = dg.quarter_hour_deltas(first, seam, seed=22)
    recent_csv = dg.write_delta_csv(tmp_path / "recent.csv", recent)
    history_csv = dg.write_delta_csv(tmp_path / "history.csv", history)
    span = (first - timedelta(days=1), end + timedelta(hours=1))

    ws_import(ha, recent_csv, "--statistic-id", sid)
    before = hourly(ha, sid, *span)
    assert_amounts(before, dg.hourly_totals(recent), "existing statistic: hourly change")

    ws_import(ha, history_csv, "--statistic-id", sid)
    after = hourly(ha, sid, *span)
    key = dg.epoch(seam)
    assert abs(after[key] - before[key]) < TOL, (
        f"seam hour {_when(key)} changed: {before[key]!r} before, {after[key]!r} after")
    assert_no_negative(after, "after prepending: hourly change")
    assert_amounts({t: v for t, v in after.items() if t >= key}, before,
                   "pre-existing hours after prepending")
    assert_amounts({t: v for t, v in after.items() if t < key}, dg.hourly_totals(history),
                   "prepended hours")


# ---------------------------------------------------------------------- (c) re-import a range


@pytest.mark.ha
def test_reimport_middle_range_doubled(ha: HomeAssistant, tmp_path: Path) -> None:
    """10 days, then days 4-6 again with doubled values: new inside, edges unchanged."""
    sid = "backdate:ws_reimport"
    case = ReimportCase.make(tmp_path)
    old, new = case.old, case.new

    ws_import(ha, case.old_csv, "--statistic-id", sid)
    before = hourly(ha, sid, *case.span)
    assert_amounts(before, dg.hourly_totals(old), "10 days: hourly change")

    ws_import(ha, case.new_csv, "--statistic-id", sid)
    after = hourly(ha, sid, *case.span)
    case.assert_edges_kept(before, after)
    assert_amounts(after, {**dg.hourly_totals(old), **dg.hourly_totals(new)},
                   "after re-importing days 4-6: hourly change")
    assert_no_negative(after, "after re-importing days 4-6")


# ---------------------------------------------------------------------------------- (d) DST


@pytest.mark.ha
@pytest.mark.parametrize("season", ["spring", "autumn"])
def test_dst_days_in_wh(ha: HomeAssistant, tmp_path: Path, season: str) -> None:
    """15-minute Wh amounts across a DST change (92 / 100 quarter-hours on the day), naive
    local times with --tz: every hour and the DST day in HA, in kWh."""
    first, end, dst_day, quarters = DST_CASES[season]
    sid = f"backdate:ws_dst_{season}"
    intervals = dg.quarter_hour_deltas(first, end, seed=41 if season == "spring" else 42,
                                       scale=1000, decimals=0)
    on_day = [i for i in intervals if i.start.astimezone(dg.VIENNA).date() == dst_day.date()]
    assert len(on_day) == quarters
    path = dg.write_delta_csv(tmp_path / f"{season}.csv", intervals, value_column="value",
                              naive=True)
    ws_import(ha, path, "--statistic-id", sid, "--unit", "Wh", "--tz", "Europe/Vienna")

    expected = dg.hourly_totals(intervals, 0.001)
    assert_amounts(hourly(ha, sid, first - timedelta(days=1), end), expected,
                   f"{sid}: hourly change (kWh)")
    got_days = changes(ha, sid, first, end, "day", min_rows=3)
    day_key = dg.epoch(dst_day)
    want = sum(i.value for i in on_day) / 1000
    assert abs(got_days[day_key] - want) < TOL, (
        f"{dst_day:%Y-%m-%d} ({quarters} quarter-hours): expected {want!r} kWh, "
        f"HA says {got_days.get(day_key)!r}")
    assert_amounts(got_days, dg.daily_totals(expected), f"{sid}: daily change")


@pytest.mark.ha
def test_unknown_entity_id_needs_create(ha: HomeAssistant, tmp_path: Path) -> None:
    """An entity statistic id HA has neither a statistic nor a state for is refused (exit 1,
    nothing written) unless --create, with close matches from what HA holds; an entity HA has
    a state for is accepted."""
    path = _small_csv(tmp_path, "entity")
    proc = run("import", path, "--statistic-id", "zone.hom", "--to", ha.url, "--no-backup",
               "--yes", token=ha.token, expect=1)
    text = " ".join((proc.stdout + proc.stderr).split())
    assert "--create" in text and "Did you mean zone.home" in text, text
    assert "Traceback" not in text
    with ha.ws() as ws:
        items = ws.call("recorder/get_statistics_metadata", statistic_ids=["zone.hom"])
    assert not items, "a refused import wrote metadata"
    run("plan", path, "--statistic-id", "zone.home", "--to", ha.url, token=ha.token)


# ----------------------------------------------------------- (e) meter replacement, readings


@pytest.mark.ha
@pytest.mark.parametrize("first_new", [0.0, 0.4])
def test_cumulative_readings_with_meter_replacement(ha: HomeAssistant, tmp_path: Path,
                                                    first_new: float) -> None:
    """Readings of a meter at ~5000 kWh, replaced mid-hour by a new one reading `first_new`,
    through the WebSocket API: no negative hour, the replacement hour counts the new meter
    from 0, every hour as tests/test_ha_import.py expects on a database."""
    sid = f"backdate:ws_meter_swap_{int(first_new * 10)}"
    start = datetime(2026, 10, 5, tzinfo=dg.VIENNA)
    readings, k = dg.meter_with_replacement(start, 48, seed=51,
                                            replace_after=timedelta(hours=17, minutes=30),
                                            first_new=first_new)
    path = dg.write_samples_csv(tmp_path / "meter.csv", readings, value_column="reading")
    ws_import(ha, path, "--statistic-id", sid)

    expected = dg.cumulative_hourly(readings)
    got = hourly(ha, sid, start - timedelta(days=1), readings[-1].time + timedelta(hours=1))
    assert_no_negative(got, f"{sid}: hourly change")
    swap_hour = dg.floor_hour(readings[k].time)
    at = {s.time: s.value for s in readings}
    old_part = readings[k - 1].value - at[swap_hour]
    new_part = at[swap_hour + timedelta(hours=1)]
    key = dg.epoch(swap_hour)
    assert key in got and abs(got[key] - (old_part + new_part)) < TOL, (
        f"replacement hour {_when(key)}: expected {old_part + new_part!r}, "
        f"HA says {got.get(key)!r}")
    assert_amounts(got, expected, f"{sid}: hourly change")
    assert changes(ha, sid, start, readings[-1].time, "5minute", min_rows=0) == {}


# --------------------------------------------------------------- (f) mean/min/max temperature


@pytest.mark.ha
def test_mean_statistic_temperature(ha: HomeAssistant, tmp_path: Path) -> None:
    """°C every 10 minutes (some missing) through the WebSocket API: HA's metadata says mean,
    no sum; hourly mean is time-weighted, min/max the hour's samples; days reduce as HA
    does (mean of hours, min of mins, max of maxes)."""
    sid = "backdate:ws_outdoor_temperature"
    start = datetime(2026, 1, 10, tzinfo=dg.VIENNA)
    samples = dg.temperature_samples(start, 72, seed=61)
    path = dg.write_samples_csv(tmp_path / "ws_outdoor_temperature.csv", samples,
                                value_column="value")
    ws_import(ha, path, "--statistic-id", sid, "--kind", "mean", "--unit", "°C")
    assert_temperature_statistic(ha, sid, samples, start)


# ------------------------------------------------------------------------------------ errors


def _small_csv(tmp_path: Path, name: str) -> Path:
    end = last_full_hour()
    return dg.write_delta_csv(tmp_path / f"{name}.csv",
                              dg.quarter_hour_deltas(end - timedelta(hours=6), end, seed=5))


@pytest.mark.ha
def test_non_admin_token_exit_3_nothing_written(ha: HomeAssistant, tmp_path: Path) -> None:
    token = ha.create_user("ws_viewer")
    path = _small_csv(tmp_path, "ws_viewer")
    proc = ws_import(ha, path, token=token, expect=3)
    assert "not an administrator" in proc.stderr + proc.stdout, proc.stderr
    assert metadata(ha, "backdate:ws_viewer") is None, "a non-admin import wrote metadata"


@pytest.mark.ha
def test_bad_token_exit_3(ha: HomeAssistant, tmp_path: Path) -> None:
    proc = ws_import(ha, _small_csv(tmp_path, "ws_bad_token"), token="not-a-token", expect=3)
    assert "token rejected" in proc.stderr + proc.stdout, proc.stderr
    assert "not-a-token" not in proc.stderr + proc.stdout, "the token was printed"


def test_unreachable_exit_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run("import", _small_csv(tmp_path, "ws_nowhere"), "--to", url, "--no-backup",
               "--yes", token="whatever", expect=3)
    assert "cannot reach Home Assistant" in proc.stderr + proc.stdout, proc.stderr


# ---------------------------------------------------------------- HA restarted mid-import


@pytest.mark.ha
def test_ha_restarted_during_ten_year_import(ha: HomeAssistant, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten years of hourly amounts (87,600 rows; HA needs about a minute to commit them);
    HA is stopped while it holds only part of them and started again. `import` reconnects,
    waits until HA's rows settle, sends what is missing, and confirms: exit 0 and every hour
    right."""
    sid = "backdate:ws_ten_years"
    end = dg.floor_hour(datetime.now(UTC)) - timedelta(days=1)
    start = end - timedelta(hours=87_600)
    path = tmp_path / "ten_years.csv"
    expected: dict[int, float] = {}
    with path.open("w") as fh:
        fh.write("start,kwh\n")
        t = dg.epoch(start)
        for k in range(87_600):
            value = (k * 37 % 1000) / 1000  # exact in the CSV: 0.000 .. 0.999
            fh.write(f"{datetime.fromtimestamp(t, UTC).isoformat()},{value}\n")
            expected[t] = value
            t += 3600
    env = {**os.environ, "HA_TOKEN": ha.token, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [BACKDATE, "import", str(path), "--statistic-id", sid, "--to", ha.url, "--no-backup",
         "--yes"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        held = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if metadata(ha, sid) is not None:
                rows = changes(ha, sid, start - timedelta(hours=1), end, "hour", min_rows=0)
                held = len(rows)
                if held:
                    break
            time.sleep(0.5)
        assert proc.poll() is None, f"import ended before HA was stopped:\n{proc.stdout}"
        assert 0 < held < 87_600, f"HA held {held} rows when it was to be stopped"
        port = ha.port
        stopping = time.monotonic()
        ha.stop()
        # The harness moves HA to a new port while the old one is in TIME_WAIT; HA itself
        # binds with SO_REUSEADDR, and the import must find HA where it was.
        monkeypatch.setattr(ha_harness, "_port_is_free", lambda _port: True)
        ha.start()
        print(f"HA stopped at {held} rows and was back after {time.monotonic() - stopping:.1f} s")
        assert ha.port == port, "HA came back on another port"
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    # HA came back: the import must resume and finish (giving up is for HA staying away,
    # tests/test_ha_ws_resume.py).
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    assert "reconnected after" in err and "held as planned" in err, err[-3000:]
    got = changes(ha, sid, start - timedelta(days=1), end + timedelta(hours=1), "hour",
                  min_rows=0)
    print(f"import exit {proc.returncode}: {err.strip()[-500:]}")
    assert_amounts(got, expected, f"{sid} (HA restarted at {held} rows): hourly change")


# ------------------------------------------------------- plan: rows a seam shift moves


@pytest.mark.ha
def test_plan_counts_the_rows_the_shift_moves(ha: HomeAssistant, tmp_path: Path) -> None:
    """History placed before 2 days that exist: `plan` says the 48 later hours are shifted
    (counted from HA, as a database target counts them); nothing is written."""
    sid = "backdate:ws_plan_shift"
    end = last_full_hour()
    seam = end - timedelta(days=2)
    recent = dg.quarter_hour_deltas(seam, end, seed=61)
    history = dg.quarter_hour_deltas(seam - timedelta(days=5), seam, seed=62)
    ws_import(ha, dg.write_delta_csv(tmp_path / "recent.csv", recent), "--statistic-id", sid)
    before = hourly(ha, sid, seam - timedelta(days=6), end + timedelta(hours=1))
    proc = run("plan", dg.write_delta_csv(tmp_path / "history.csv", history), "--statistic-id",
               sid, "--to", ha.url, token=ha.token)
    assert "hourly rows: 120 new, 0 updated, 48 shifted" in proc.stdout, proc.stdout
    assert hourly(ha, sid, seam - timedelta(days=6), end + timedelta(hours=1)) == before


# ---------------------------------------------------------------------- inspect: row counts


@pytest.mark.ha
def test_inspect_counts_rows_through_the_api(ha: HomeAssistant, tmp_path: Path) -> None:
    """A statistic with 400 days of hours, a gap of a year, then 2 days: `inspect --json`
    reports exactly 9,648 hourly rows, no 5-minute rows, and the first and last hour; the
    plain output shows the same count."""
    sid = "backdate:ws_inspect"
    end = last_full_hour()
    recent_start = end - timedelta(days=2)
    old_end = recent_start - timedelta(days=365)
    old_start = old_end - timedelta(days=400)
    for name, lo, hi in (("old", old_start, old_end), ("recent", recent_start, end)):
        hours = [dg.Interval(lo + timedelta(hours=k), lo + timedelta(hours=k + 1), 0.25)
                 for k in range(int((hi - lo) / timedelta(hours=1)))]
        ws_import(ha, dg.write_delta_csv(tmp_path / f"{name}.csv", hours, value_column="kwh"),
                  "--statistic-id", sid)
    proc = run("inspect", ha.url, "--json", token=ha.token)
    doc = json.loads(proc.stdout)
    entry = next(s for s in doc["statistics"] if s["statistic_id"] == sid)
    assert entry["hourly_rows"] == 400 * 24 + 48, entry
    assert entry["short_term_rows"] == 0, entry
    assert entry["first_hour"] == old_start.strftime("%Y-%m-%dT%H:%M:%SZ"), entry
    assert entry["last_hour"] == (end - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    text = run("inspect", ha.url, token=ha.token).stdout
    line = next(x for x in text.splitlines() if sid in x)
    assert "9,648" in line and "unknown" not in line, line


# --------------------------------------------------- pure parts: metadata, chunks, ranges


def _meta() -> Any:
    from backdate.models import MeanType, StatisticMeta

    return StatisticMeta(statistic_id="backdate:x", source="backdate", unit_of_measurement="kWh",
                         has_sum=True, mean_type=MeanType.NONE, name="X")


@pytest.mark.parametrize(("version", "has_mean"), [("2024.3.3", True), ("2025.10.4", True),
                                                   ("2025.11.0", False), ("2026.11.0", False)])
def test_metadata_fields_follow_the_version(version: str, has_mean: bool) -> None:
    """`has_mean` up to 2025.10; `mean_type` and `unit_class` from 2025.11 (ha-recorder.md
    §4). The 2024.3.3 form is also what the real-HA tests above send."""
    from backdate.targets.ha_ws import import_metadata

    meta = import_metadata(_meta(), version)
    assert ("has_mean" in meta) is has_mean, meta
    assert ("mean_type" in meta) is (not has_mean), meta
    if not has_mean:
        assert meta["mean_type"] == 0 and meta["unit_class"] == "energy", meta
    else:
        assert meta["has_mean"] is False


def test_circular_mean_refused_before_2025_4() -> None:
    from backdate.errors import RefusedError
    from backdate.models import MeanType
    from backdate.targets.ha_ws import import_metadata

    meta = _meta()
    meta.mean_type = MeanType.CIRCULAR
    with pytest.raises(RefusedError, match="circular means need"):
        import_metadata(meta, "2024.3.3")
    assert import_metadata(meta, "2025.11.0")["mean_type"] == 2


def test_chunks_stay_under_4_mib_and_keep_every_row() -> None:
    from backdate.hass.client import message_size
    from backdate.targets.ha_ws import import_chunks, import_metadata

    metadata = import_metadata(_meta(), "2024.3.3")
    first = datetime(2015, 1, 1, tzinfo=UTC)
    stats = [{"start": (first + timedelta(hours=k)).isoformat(), "state": k * 1.123456789,
              "sum": k * 1.123456789, "mean": 1.5, "min": 0.25, "max": 3.75,
              "last_reset": first.isoformat()} for k in range(87_600)]
    for limit in (4 * 1024 * 1024, 300_000):
        chunks = import_chunks(metadata, stats, limit=limit)
        assert [row for chunk in chunks for row in chunk] == stats
        sizes = [message_size({"type": "recorder/import_statistics", "metadata": metadata,
                               "stats": c}) for c in chunks]
        assert max(sizes) <= limit, (limit, max(sizes))


def test_hour_ranges_name_every_run() -> None:
    import numpy as np

    from backdate.targets.ha_ws import hour_ranges

    t0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    starts = t0 + 3600.0 * np.arange(10)
    mask = np.array([1, 1, 1, 0, 0, 1, 0, 1, 1, 1], dtype=bool)
    assert hour_ranges(starts, mask) == (
        "2024-01-01 00:00 to 2024-01-01 02:00 UTC (3 h), 2024-01-01 05:00 UTC (1 h), "
        "2024-01-01 07:00 to 2024-01-01 09:00 UTC (3 h)")
    assert hour_ranges(starts, mask, limit=1).endswith("and 2 more ranges (7 h in all)")
    assert hour_ranges(starts, np.zeros(10, dtype=bool)) == "none"


def test_read_back_compares_values_exactly_and_last_reset() -> None:
    """HA stores the JSON float it is sent bit for bit, so a read-back differing in the last
    bit is a difference (a 1e-9 tolerance would hide it); last_reset travels as ISO text
    with microseconds, so it is compared to the microsecond, and a missing or moved reset
    is named."""
    import numpy as np

    from backdate.models import RowBlock, StatRow
    from backdate.targets.ha_ws import _compare, _held_mask, _planned_types

    t0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
    reset = t0 - 1800.25
    block = RowBlock(np.array([t0, t0 + 3600]), state=np.array([1.0, 2.0]),
                     sum=np.array([1.0, 2.0]), last_reset_ts=np.array([reset, np.nan]))
    assert "last_reset" in _planned_types(block)

    def rows(sum2: float, reset1: float | None, reset2: float | None = None) -> list[StatRow]:
        return [StatRow(t0, state=1.0, sum=1.0, last_reset_ts=reset1),
                StatRow(t0 + 3600, state=2.0, sum=sum2, last_reset_ts=reset2)]

    assert _compare(block, rows(2.0, reset + 4e-7)) is None  # HA's ms, divided back
    assert _held_mask(block, rows(2.0, reset)).all()
    off_by_a_bit = float(np.nextafter(2.0, 3.0))
    assert "sum=2.0000000000000004" in (_compare(block, rows(off_by_a_bit, reset)) or "")
    assert "last_reset=none" in (_compare(block, rows(2.0, None)) or "")
    assert "last_reset=" in (_compare(block, rows(2.0, reset + 1)) or "")
    assert "last_reset=" in (_compare(block, rows(2.0, reset, t0)) or "")
    assert _held_mask(block, rows(2.0, reset + 1)).tolist() == [False, True]


@pytest.mark.ha
def test_read_back_checks_the_metadata(ha: HomeAssistant, tmp_path: Path) -> None:
    """After the rows, the metadata HA holds (recorder/get_statistics_metadata) is compared
    with the plan's: unit, has_sum, mean type, source and an external statistic's name."""
    from dataclasses import replace

    from backdate.models import MeanType
    from backdate.targets.ha_ws import HAWebSocketTarget

    sid = "backdate:ws_meta_check"
    ws_import(ha, _small_csv(tmp_path, "ws_meta_check"), "--statistic-id", sid)
    with HAWebSocketTarget(ha.url, ha.token) as target:
        meta = target.get_metadata(sid)
        assert meta is not None
        assert target._metadata_problem(meta) is None
        problem = target._metadata_problem(replace(meta, unit_of_measurement="Wh",
                                                   name="Other", mean_type=MeanType.ARITHMETIC))
        assert problem is not None
        for part in ("unit 'kWh', planned 'Wh'", "mean type", "name"):
            assert part in problem, problem
        gone = target._metadata_problem(replace(meta, statistic_id="backdate:ws_meta_none"))
        assert gone == "HA reports no metadata for it"


@pytest.mark.ha
def test_shift_not_answered_in_time_is_read_back(ha: HomeAssistant) -> None:
    """HA does not answer `adjust_sum_statistics` within the timeout (here: a timeout too
    short for any answer; HA still gets and runs the job): backdate does not claim the sum
    steps there, it reads back whether the shift happened, and it did: the import succeeds,
    the seam hour keeps its change and the later hours are unchanged."""
    import numpy as np

    from backdate.app.importing import ImportOptions, plan_imports
    from backdate.models import Kind, Series
    from backdate.targets import ha_ws

    sid = "backdate:ws_shift_timeout"
    end = dg.epoch(last_full_hour())
    seam = end - 24 * 3600

    def series(first: float, hours: int, value: float) -> Series:
        times = first + 3600.0 * np.arange(hours)
        return Series(source="x.csv", times=times, values=np.full(hours, value),
                      lines=np.arange(hours) + 2, ends=times + 3600, kind=Kind.DELTA,
                      unit="kWh")

    notes: list[str] = []
    with ha_ws.HAWebSocketTarget(ha.url, ha.token) as target:
        target.notify = notes.append  # type: ignore[method-assign]
        target.apply(plan_imports(target, [series(seam, 24, 0.75)],
                                  ImportOptions(statistic_id=sid))[0].plan)
        span = (datetime.fromtimestamp(seam - 3 * 86400, UTC),
                datetime.fromtimestamp(end + 3600, UTC))
        before = hourly(ha, sid, *span)
        plan = plan_imports(target, [series(seam - 48 * 3600.0, 48, 0.5)],
                            ImportOptions(statistic_id=sid))[0].plan
        assert target._shift(plan) is not None
        real_call = target._call

        def call(msg_type: str, /, **fields: Any) -> Any:
            if msg_type == "recorder/adjust_sum_statistics":
                fields["timeout"] = 1e-6  # no answer can come this fast
            return real_call(msg_type, **fields)

        target._call = call  # type: ignore[method-assign]
        target.apply(plan)
    assert any("did not answer the shift" in n for n in notes), notes
    after = hourly(ha, sid, *span)
    key = int(seam)
    assert abs(after[key] - before[key]) < TOL, (before[key], after[key])
    assert_amounts({t: v for t, v in after.items() if t >= key}, before, "later hours")
    assert_amounts({t: v for t, v in after.items() if t < key},
                   {int(seam - 48 * 3600 + 3600 * k): 0.5 for k in range(48)}, "prepended")
