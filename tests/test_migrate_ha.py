"""`backdate migrate` while a real Home Assistant 2024.3.3 runs, judged by HA itself: its
recorder on SQLite, MariaDB and PostgreSQL (written directly), and through its WebSocket API.

The scenario the issue describes: an old entity statistic (Wh, six months, hourly and 5-minute
rows, no entity any more) and a new live entity (kWh, a month, three days of overlap) whose
history HA-shaped rows hold and whose meter a poster keeps raising. After `migrate`, HA's own
`recorder/statistics_during_period` (`change` per hour, day and 5 minutes) for NEW must show
OLD's converted changes before the overlap, NEW's own values from there on, no negative hour;
HA's `energy/validate` must find nothing wrong; and (the one `slow` test) HA's next compile
continues NEW without a step.

One HA per engine (module fixture); every time is relative to the HA it runs against.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import migrate_data as md
import pytest
from ha_harness import HomeAssistant, recorder_database
from live_meter import (
    ATTRIBUTES,
    FIVE,
    METER_START,
    SID,
    MeterPoster,
    describe,
    ha_rows,
    next_compile,
    now,
    run_backdate,
    wait_until,
)

pytestmark = pytest.mark.ha

DAY = 86400
HOUR = 3600
TOL = 1e-6
OLD = "sensor.old_grid_energy"
WS_OLD = "sensor.old_ws_energy"
WS_NEW = "sensor.ws_energy"
RENAMED_OLD = "sensor.old_third_energy"
RENAMED = "sensor.third_energy"  # a live entity without statistics: the rename case


class Live:
    """One HA with the two statistics pairs written before its first compile of them."""

    def __init__(self, ha: HomeAssistant, poster: MeterPoster, old: md.Meter, new: md.Meter,
                 ws_old: md.Meter, ws_new: md.Meter, overlap_start: int) -> None:
        self.ha, self.poster = ha, poster
        self.old, self.new, self.ws_old, self.ws_new = old, new, ws_old, ws_new
        self.overlap_start = overlap_start
        self.migrated_at: float | None = None
        self.third: md.Meter | None = None


def _meters(old_id: str, new_id: str, new_end: int, seed: int, meter_end: float
            ) -> tuple[md.Meter, md.Meter, int]:
    new_start = new_end - 30 * DAY
    old_end = new_start + 3 * DAY
    old = md.make_meter(old_id, "Wh", old_end - 180 * DAY, old_end, seed=seed, scale=40.0,
                        meter0=2_000_000.0, five_from=old_end - 10 * DAY)
    probe = md.make_meter(new_id, "kWh", new_start, new_end, seed=seed + 1, scale=0.05,
                          meter0=0.0)
    total = probe.hourly[max(probe.hourly)][1]
    new = md.make_meter(new_id, "kWh", new_start, new_end, seed=seed + 1, scale=0.05,
                        meter0=meter_end - total, five_from=new_end - 10 * DAY)
    return old, new, new_start


@pytest.fixture(scope="module", params=["sqlite", "mariadb", "postgresql"])
def live(request: pytest.FixtureRequest, ha_venv: Path,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    engine = request.param
    with recorder_database(engine, "migrate") as db_url:
        ha = HomeAssistant(tmp_path_factory.mktemp(f"migrate_{engine}"), venv=ha_venv,
                           db_url=db_url, extra_config="energy:\n", startup_timeout=300)
        ha.start()
        poster = MeterPoster(ha, seed=31)
        try:
            # Before HA has seen either entity: NEW's month ends at the last full hour before
            # the window HA's start recorded, so HA compiles on top of it.
            new_end = int(now() // HOUR * HOUR - HOUR)
            old, new, new_start = _meters(OLD, SID, new_end, 40, METER_START)
            ws_old, ws_new, _ = _meters(WS_OLD, WS_NEW, new_end, 50, 300.0)
            third = md.make_meter(RENAMED_OLD, "Wh", new_end - 32 * DAY, new_end - 2 * DAY,
                                  seed=60, scale=40.0, meter0=3_000_000.0)
            for m in (old, new, ws_old, ws_new, third):
                md.write_meter(ha.db_url, m)
            ha.post_state(WS_NEW, "300.000", {**ATTRIBUTES, "friendly_name": "WS energy"})
            poster.start()
            lv = Live(ha, poster, old, new, ws_old, ws_new, new_start)
            lv.third = third
            yield lv
        finally:
            if poster.is_alive():
                poster.stop()
            ha.stop()


def _all_rows(ha: HomeAssistant) -> dict[str, Any]:
    return {(sid, table): md.read_rows(ha.db_url, sid, table)
            for sid in (OLD, SID, WS_OLD, WS_NEW)
            for table in ("statistics", "statistics_short_term")}


def _check_against_ha(lv: Live, old: md.Meter, new: md.Meter, *, five: bool) -> None:
    ha = lv.ha
    first = min(old.hourly)
    last = max(new.hourly) + HOUR
    want = md.expected_merge(old, new, 1e-3, "keep-target")
    got = ha_rows(ha, first, last, "hour", new.statistic_id)
    assert sorted(got) == sorted(want), (
        f"HA's hours of {new.statistic_id}: {len(got)}, expected {len(want)}")
    bad = [(t, got[t]["change"], want[t]) for t in want
           if abs(got[t]["change"] - want[t]) > TOL and t != first]
    assert not bad, f"{len(bad)} hours differ from OLD/NEW's own, first {bad[:3]}"
    assert all(r["change"] >= -TOL for r in got.values()), "a negative hour"
    # Whole days in HA's zone (what the Energy dashboard sums).
    zone = ZoneInfo(ha.time_zone)
    days = ha_rows(ha, first + DAY, last, "day", new.statistic_id)
    per_day: dict[int, float] = {}
    for t, v in want.items():
        local = datetime.fromtimestamp(t, zone).replace(hour=0, minute=0, second=0)
        per_day[int(local.timestamp())] = per_day.get(int(local.timestamp()), 0.0) + v
    checked = 0
    for t, r in days.items():
        if t in per_day and t + DAY <= last and t > first + DAY:
            assert abs(r["change"] - per_day[t]) < 1e-5, (
                f"day {datetime.fromtimestamp(t, zone):%Y-%m-%d}: HA {r['change']}, "
                f"expected {per_day[t]}")
            checked += 1
    assert checked > 150, f"only {checked} whole days compared"
    if five:  # NEW's own 5-minute rows keep their change (the table moved as one)
        f0 = min(new.five)
        got5 = ha_rows(ha, f0 + HOUR, max(new.five) + FIVE, "5minute", new.statistic_id)
        for t, v in new.five_changes.items():
            if t >= f0 + HOUR:
                assert abs(got5[t]["change"] - v) < TOL, f"5-minute row {t}"
    with ha.ws() as ws:
        ws.call("energy/save_prefs", energy_sources=[
            {"type": "grid", "flow_from": [{"stat_energy_from": new.statistic_id,
                                            "stat_cost": None, "entity_energy_price": None,
                                            "number_energy_price": None}],
             "flow_to": [], "cost_adjustment_day": 0}], device_consumption=[])
        result = ws.call("energy/validate")
    problems = [issue for group in result["energy_sources"] for issue in group]
    assert problems == [], f"HA's energy validation flagged {new.statistic_id}: {problems}"


def test_suggest_over_the_api_pairs_gone_entities_with_live_ones(live: Live) -> None:
    if live.ha.engine != "sqlite":
        pytest.skip("the API path is the same whatever HA's database; run once")
    ha = live.ha
    done = run_backdate("migrate", "--yes", ha.url, "--suggest", "--json", "--token", ha.token)
    assert done.returncode == 0, describe(done)
    found = {(s["from"], s["into"]) for s in json.loads(done.stdout)}
    assert (OLD, SID) in found and (WS_OLD, WS_NEW) in found, found
    # Only statistics whose entity is gone are offered as sources.
    assert not {f for f, _ in found} & {SID, WS_NEW}, found


def test_migrate_into_a_live_entity_judged_by_ha(live: Live, tmp_path: Path) -> None:
    ha = live.ha
    before = _all_rows(ha)
    dry = run_backdate("migrate", "--yes", ha.db_url, "--from", OLD, "--into", SID, "--dry-run",
                       cwd=tmp_path)
    assert dry.returncode == 0, describe(dry)
    assert "DRY RUN" in dry.stdout and "Seams" in dry.stdout, dry.stdout
    after_dry = _all_rows(ha)
    for key in before:  # HA adds its own compiled rows of the live meter: only those differ
        grew = {t: v for t, v in after_dry[key].items() if t not in before[key]}
        assert {t: v for t, v in after_dry[key].items() if t in before[key]} == before[key]
        assert key[0] == SID or not grew, f"--dry-run wrote {key}"
    done = run_backdate("migrate", "--yes", ha.db_url, "--from", OLD, "--into", SID, cwd=tmp_path)
    assert done.returncode == 0, describe(done)
    assert "phase 1 done" in done.stdout, done.stdout
    assert md.read_rows(ha.db_url, OLD) == live.old.hourly, "OLD was changed"
    _check_against_ha(live, live.old, live.new, five=True)
    # NEW without statistics: the metadata row moves; then HA sees the new entity.
    moved = run_backdate("migrate", "--yes", ha.db_url, "--from", RENAMED_OLD, "--into", RENAMED,
                         cwd=tmp_path)
    assert moved.returncode == 0 and "rename" in moved.stdout, describe(moved)
    assert live.third is not None
    assert md.read_rows(ha.db_url, RENAMED) == live.third.hourly
    ha.post_state(RENAMED, "77.000", {**ATTRIBUTES, "friendly_name": "Third energy"})
    live.migrated_at = now()  # the slow test waits for the compile of the window after this


def test_migrate_through_the_websocket_api(live: Live) -> None:
    if live.ha.engine != "sqlite":
        pytest.skip("the API path is the same whatever HA's database; run once")
    ha = live.ha
    done = run_backdate("migrate", "--yes", ha.url, "--from", WS_OLD, "--into", WS_NEW, "--token",
                        ha.token, "--remove-source")
    assert done.returncode == 0, describe(done)
    assert "hourly rows only" in done.stdout, done.stdout
    assert f"removed {WS_OLD}" in done.stdout, done.stdout
    _check_against_ha(live, live.ws_old, live.ws_new, five=False)
    with ha.ws() as ws:  # OLD is gone only now that NEW was read back as planned
        assert ws.call("recorder/get_statistics_metadata", statistic_ids=[WS_OLD]) == []


@pytest.mark.slow
def test_ha_compiles_on_without_a_step(live: Live) -> None:
    if live.ha.engine != "sqlite":
        pytest.skip("one wait for HA's compile timer is enough")
    assert live.migrated_at is not None, "the migration test did not run first"
    ha, poster = live.ha, live.poster
    target = next_compile(live.migrated_at)
    deadline = target + FIVE + 120

    def compiled_after() -> dict[int, dict[str, Any]] | None:
        rows = ha_rows(ha, target - 4 * FIVE, now() + HOUR, "5minute")
        return rows if max(rows, default=0) + FIVE + 10 >= target else None

    wait_until(compiled_after, deadline, "HA's next compile of the migrated statistic", poster,
               lambda: ha.log_tail(30))
    time.sleep(2)
    rows = ha_rows(ha, max(live.new.five) - FIVE, now() + HOUR, "5minute")
    starts = sorted(rows)
    prev = rows[starts[0]]
    for t in starts[1:]:
        r = rows[t]
        growth = r["state"] - prev["state"]
        assert abs((r["sum"] - prev["sum"]) - growth) < 1e-3, (
            f"HA's row at {datetime.fromtimestamp(t, UTC):%H:%M}Z: sum grew "
            f"{r['sum'] - prev['sum']}, the meter {growth}: a step")
        assert r["change"] >= -TOL
        prev = r
    # The renamed statistic: HA compiled the new entity on from the moved sum (its unit
    # stays Wh; HA converts the kWh readings), without measuring against OLD's meter.
    assert live.third is not None
    last_sum = live.third.hourly[max(live.third.hourly)][1]
    five = md.read_rows(ha.db_url, RENAMED, "statistics_short_term")
    compiled = {t: v for t, v in five.items() if t > max(live.third.hourly) + HOUR}
    assert compiled, f"HA compiled no 5-minute row of {RENAMED}: {five}"
    for t, (state, total) in compiled.items():
        assert abs(total - last_sum) < 1e-6, f"{RENAMED} at {t}: sum {total}, not {last_sum}"
        assert state == pytest.approx(77000.0)
    log = ha.log_text(all_runs=True)
    assert f"Detected new cycle for {RENAMED}" not in log
    assert "Detected new cycle for sensor.grid_energy" not in log
    assert "Traceback" not in log
