"""`backdate sync` from each utility portal (local servers speaking their APIs) into a real Home
Assistant 2024.3.3 (its SQLite database while it runs), a real InfluxDB 1.x and a real
Mosquitto, as issue 6 asks: a job per metering point, run the way cron runs it.

Why: the users of both systems want yesterday's quarter hours in the hour they were used, in
HA's statistics and in InfluxDB, with the token file kept current and nothing invented when the
portal fails. HA is judged by its own `recorder/statistics_during_period`, InfluxDB by InfluxQL,
against the portal's data as the fake holds it.
"""

from __future__ import annotations

import math
import os
import stat
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import influx_fixtures
import pytest
from fake_portals import QUARTER, FakeWattiVahti, FakeWienerNetze, Meter
from ha_harness import HomeAssistant
from influx_fixtures import InfluxDatabase
from test_mqtt import device_of, entities_of, home_assistant_with_mqtt, state, wait_for
from test_portals import hourly, quarters, spec_query
from test_sync import assert_hours_equal, env_for, ha_hours, runs, sync, write_config

from backdate.targets.mqtt import open_mqtt_target

influx = influx_fixtures.influx
influx_db = influx_fixtures.influx_db

pytestmark = pytest.mark.ha

HOUR = 3600
DAY = 86400
VIENNA = ZoneInfo("Europe/Vienna")


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """HA with its MQTT integration on the real Mosquitto (the live sensors' judge)."""
    yield from home_assistant_with_mqtt(ha_venv, tmp_path_factory, "ha_portal_sync")


def portal_days() -> tuple[int, int]:
    """Three whole UTC days ending at today's midnight: what a portal delivers a day late."""
    today = math.floor(time.time() / DAY) * DAY
    return today - 3 * DAY, today


def last_complete_local_day(data: dict[int, float | None], tz: ZoneInfo) -> tuple[str, float]:
    """The newest local day whose every quarter hour the portal holds a value for, and its
    kWh (the test's own reckoning, independent of the MQTT target's)."""
    days = sorted({datetime.fromtimestamp(t, tz).date() for t in data}, reverse=True)
    for d in days:
        start = datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()
        nxt = d + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=tz).timestamp()
        quarters_ = [int(start) + QUARTER * k for k in range(int(end - start) // QUARTER)]
        if all(data.get(t) is not None for t in quarters_):
            return d.isoformat(), float(sum(data[t] for t in quarters_))  # type: ignore[misc]
    raise AssertionError("no complete local day in the test data")


def influx_hours(db: InfluxDatabase, point: str) -> dict[int, float]:
    """kWh per UTC hour an InfluxDB target holds for a metering point (points in the system-3
    layout: consumption_kwh and consumption_wh agree)."""
    rows = db.points("SELECT consumption_kwh, consumption_wh FROM electricity_consumption "
                     f"WHERE metering_point = '{point}'")
    out: dict[int, float] = {}
    for t, kwh, wh in rows:
        assert abs(float(wh) - float(kwh) * 1000) < 1e-6
        out[int(t) - int(t) % HOUR] = out.get(int(t) - int(t) % HOUR, 0.0) + float(kwh)
    return out


def test_sync_wiener_netze_into_ha_influxdb_and_mqtt(ha: HomeAssistant,
                                                     influx_db: InfluxDatabase,
                                                     tmp_path: Path) -> None:
    zp = f"AT00100000000000000010000{uuid.uuid4().hex[:8].upper()}"
    lo, hi = portal_days()
    fake = FakeWienerNetze()
    meter = Meter("1200999")
    meter.consumption = quarters(lo, (hi - lo) // QUARTER, 11)
    for k in range(1, 9):  # the newest two hours are not available yet (null)
        meter.consumption[hi - k * QUARTER] = None
    meter.einheit = "WH"
    fake.meters[zp] = meter
    tag = f"t{uuid.uuid4().hex[:8]}"
    broker = f"mqtt://127.0.0.1:1883?topic={tag}"  # HA's own discovery prefix
    target_db = influx_db.client.create_database("wnsm_target")
    with fake:
        config = write_config(tmp_path, [{
            "name": "wnsm_house", "source": f"wnsm:{zp}?{spec_query(fake.urls)}",
            "targets": [ha.db_url, f"influxdb://{influx_db.host_port}/{target_db}", broker],
            "statistic_id": f"backdate:wnsm_{zp.lower()}_consumption",
            # no "tz": the MQTT day is the portal's own (Vienna) day without it
            "metering_point": zp, "initial_sync_days": 4}],
            correction_days=30)
        env = env_for(ha, WNSM_USERNAME=fake.username, WNSM_PASSWORD=fake.password)
        try:
            first = sync(config, "--once", env=env)
            assert fake.password not in first.stdout + first.stderr
            expected = hourly(meter.consumption)
            expected = {h: v for h, v in expected.items() if h < hi - 2 * HOUR}
            sid = f"backdate:wnsm_{zp.lower()}_consumption"
            got = ha_hours(ha, sid, lo, hi, len(expected))
            assert_hours_equal(got, expected, "HA")
            assert not any(got.get(h) for h in range(hi - 2 * HOUR, hi, HOUR))  # never invented
            target = InfluxDatabase(influx_db.server, influx_db.client, target_db)
            assert_hours_equal(influx_hours(target, zp), expected, "InfluxDB")
            assert set(influx_hours(target, zp)) == set(expected)

            # The live sensors: one device for the job, the last complete *Vienna* day's
            # energy (the two missing hours make the newest Vienna day incomplete).
            day, kwh = last_complete_local_day(meter.consumption, VIENNA)
            dev = wait_for("the job's MQTT device", lambda: device_of(ha, "backdate_wnsm_house"))
            ents = wait_for("its three sensors", lambda: (e := entities_of(ha, dev["id"]))
                            and len(e) == 3 and e)
            by_obj = {uid.removeprefix("backdate_wnsm_house_"): e["entity_id"]
                      for uid, e in ents.items()}
            assert set(by_obj) == {"last_day_energy", "newest_value", "sync_status"}
            energy = wait_for("the day's energy", lambda: (s := state(
                ha, by_obj["last_day_energy"]))["state"] not in ("unknown", "unavailable") and s)
            assert energy["attributes"]["day"] == day
            assert energy["attributes"]["device_class"] == "energy"
            assert energy["attributes"]["unit_of_measurement"] == "kWh"
            assert "state_class" not in energy["attributes"]
            assert float(energy["state"]) == pytest.approx(kwh, abs=1e-6)
            newest = state(ha, by_obj["newest_value"])["state"]
            assert datetime.fromisoformat(newest).timestamp() == hi - 2 * HOUR
            assert state(ha, by_obj["sync_status"])["state"] == "ok"

            # The portal delivers the two missing hours; the next run fills exactly them.
            for k in range(1, 9):
                meter.consumption[hi - k * QUARTER] = 0.25
            sync(config, "--once", env=env)
            expected = hourly(meter.consumption)
            assert_hours_equal(ha_hours(ha, sid, lo, hi, len(expected)), expected, "HA, run 2")
            assert_hours_equal(influx_hours(target, zp), expected, "InfluxDB, run 2")

            # A portal outage: exit 3 with the status, nothing written, the run recorded.
            fake.outages["bewegungsdaten"] = 503
            before = ha_hours(ha, sid, lo, hi, len(expected))
            down = sync(config, "--once", env=env, expect=3)
            assert "HTTP 503" in down.stdout + down.stderr
            assert ha_hours(ha, sid, lo, hi, len(expected)) == before
            assert [r[1] for r in runs(tmp_path)][-1] != "ok"
        finally:
            mqtt_target = open_mqtt_target(broker)
            mqtt_target.remove("wnsm_house")
            mqtt_target.close()
            influx_db.client.drop_database(target_db)


def test_sync_wattivahti_into_ha_and_influxdb_with_token_rotation(
        ha: HomeAssistant, influx_db: InfluxDatabase, tmp_path: Path) -> None:
    lo, hi = portal_days()
    mp = str(7000000 + int(uuid.uuid4().int % 999999))
    fake = FakeWattiVahti(metering_point=mp, refresh_token="rt-from-browser")
    fake.consumption = quarters(lo, (hi - lo) // QUARTER, 12)
    fake.pt15_from = lo + DAY  # the first day only in hours
    fake.wrong_z = {1}
    token_file = tmp_path / "secrets" / "refresh_token.txt"
    token_file.parent.mkdir()
    token_file.write_text("rt-from-browser\n")
    target_db = influx_db.client.create_database("wv_target")
    with fake:
        config = write_config(tmp_path, [{
            "name": "wattivahti_home", "source": f"wattivahti:{mp}?{spec_query(fake.urls)}",
            "targets": [ha.db_url, f"influxdb://{influx_db.host_port}/{target_db}"],
            "statistic_id": f"backdate:wattivahti_{mp}_consumption",
            "metering_point": mp, "tz": "Europe/Helsinki", "initial_sync_days": 4}])
        env = env_for(ha, WATTIVAHTI_CLIENT_ID=fake.client_id,
                      REFRESH_TOKEN_FILE=str(token_file))
        try:
            sync(config, "--once", env=env)
            expected = hourly(fake.consumption)
            sid = f"backdate:wattivahti_{mp}_consumption"
            assert_hours_equal(ha_hours(ha, sid, lo, hi, len(expected)), expected, "HA")
            target = InfluxDatabase(influx_db.server, influx_db.client, target_db)
            assert_hours_equal(influx_hours(target, mp), expected, "InfluxDB")
            assert token_file.read_text().strip() == fake.issued_refresh[-1]
            assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
            steps = {r.query["resultStep"] for r in fake.calls("meterdata2")}
            assert steps == {"PT15MIN", "PT1H"}

            # The next run uses the rotated token (the browser's one is spent).
            sync(config, "--once", env=env)
            assert fake.refresh_seen[-1] == fake.issued_refresh[-2]
            assert "rt-from-browser" not in token_file.read_text()

            # The token expired (nobody ran the sync for months): exit 1, the file named.
            fake.valid_refresh = set()
            failed = sync(config, "--once", env=env, expect=1)
            assert "refresh_token.txt" in " ".join((failed.stdout + failed.stderr).split())
        finally:
            influx_db.client.drop_database(target_db)
