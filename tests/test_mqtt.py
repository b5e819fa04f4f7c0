"""Live sensors over MQTT, judged by a real Home Assistant 2024.3.3 and a real Mosquitto.

Why: the original add-on published old values as live states with `state_class: measurement`
(refused by HA for energy, and clustering a day's energy at the hour it arrived). Here HA itself
must show one device per metering point with an energy sensor for the latest complete day
(device class energy, kWh, no state class, so HA compiles no misplaced statistics), the time of
the newest value (device class timestamp), the sync status, availability through the last will,
and a clean removal. MQTT is set up in HA through the config-flow REST API, as a user would.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pytest
from ha_harness import REPO_ROOT, HomeAssistant

from backdate.errors import TargetError
from backdate.models import Kind, Series
from backdate.targets.mqtt import MqttTarget, latest_complete_day, open_mqtt_target

pytestmark = pytest.mark.ha

BROKER = "127.0.0.1"
VIENNA = ZoneInfo("Europe/Vienna")


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0) -> Any:
    """Poll until `check` returns something truthy (HA handles MQTT messages asynchronously)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def enable_mqtt(instance: HomeAssistant) -> None:
    """Set up HA's MQTT integration through the config flow, as a user would (real Mosquitto)."""
    flow = instance.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
    assert flow["type"] == "form" and flow["step_id"] == "broker", flow
    done = instance.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}",
                            {"broker": BROKER, "port": 1883})
    assert done["type"] == "create_entry", done
    with instance.ws() as ws:
        wait_for("the MQTT entry to load", lambda: any(
            e["domain"] == "mqtt" and e["state"] == "loaded"
            for e in ws.call("config_entries/get", domain="mqtt")))


def home_assistant_with_mqtt(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory,
                             name: str) -> Iterator[HomeAssistant]:
    """A started HA with the MQTT integration set up through the config flow (real
    Mosquitto); the `ha` fixtures of the MQTT and portal-sync tests."""
    with HomeAssistant(tmp_path_factory.mktemp(name), venv=ha_venv,
                       extra_config="config:\n") as instance:
        enable_mqtt(instance)
        yield instance


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    yield from home_assistant_with_mqtt(ha_venv, tmp_path_factory, "ha_mqtt")


@pytest.fixture
def topic() -> str:
    """A base topic of its own, so parallel tests never share availability or states."""
    return f"backdate_test_{uuid.uuid4().hex[:8]}"


def quarter_series(start_local: datetime, quarters: int, seed: int, statistic_id: str,
                   name: str) -> Series:
    rng = np.random.default_rng(seed)
    t0 = start_local.timestamp()
    times = t0 + 900.0 * np.arange(quarters)
    values = np.round(rng.uniform(0.0, 0.6, quarters), 3)
    return Series(source="test", times=times, values=values,
                  lines=np.arange(1, quarters + 1), ends=times + 900.0, kind=Kind.DELTA,
                  unit="kWh", statistic_id=statistic_id, name=name)


def day_total(series: Series, day: str) -> float:
    """The test's own sum of one local day (independent of the target's code)."""
    return float(sum(v for t, v in zip(series.times, series.values, strict=True)
                     if datetime.fromtimestamp(t, VIENNA).strftime("%Y-%m-%d") == day))


def device_of(ha: HomeAssistant, node: str) -> dict[str, Any] | None:
    with ha.ws() as ws:
        for dev in ws.call("config/device_registry/list"):
            if ["mqtt", node] in dev["identifiers"]:
                return dev
    return None


def entities_of(ha: HomeAssistant, device_id: str) -> dict[str, dict[str, Any]]:
    """unique_id -> entity registry entry of a device."""
    with ha.ws() as ws:
        return {e["unique_id"]: e for e in ws.call("config/entity_registry/list")
                if e["device_id"] == device_id}


def state(ha: HomeAssistant, entity_id: str) -> dict[str, Any]:
    return ha.request("GET", f"/api/states/{entity_id}")


def test_latest_complete_day_on_a_25_hour_day() -> None:
    """The autumn change day has 100 quarter hours; a partial next day does not count."""
    day_start = datetime(2024, 10, 27, tzinfo=VIENNA)
    series = quarter_series(day_start, 100 + 40, 1, "backdate:x", "X")
    got = latest_complete_day(series, VIENNA)
    assert got is not None and got.day == "2024-10-27"
    assert got.kwh == pytest.approx(day_total(series, "2024-10-27"), abs=1e-9)
    # One quarter missing in the middle: the day is no longer complete, none is shown.
    gap = np.ones(len(series), dtype=bool)
    gap[50] = False
    holed = Series(source="t", times=series.times[gap], values=series.values[gap],
                   lines=series.lines[gap], ends=series.ends[gap], kind=Kind.DELTA, unit="kWh")
    assert latest_complete_day(holed, VIENNA) is None


def test_device_sensors_availability_and_removal(ha: HomeAssistant, topic: str,
                                                 tmp_path: Path) -> None:
    device_id = f"AT00100000000000000010000000{uuid.uuid4().hex[:5]}"
    node = f"backdate_{device_id.lower()}"
    start = datetime(2024, 3, 29, tzinfo=VIENNA)  # 29th, 30th whole, 31st (23 h) whole, 1st part
    quarters = 96 + 96 + 92 + 30
    consumption = quarter_series(start, quarters, 7, f"backdate:wnsm_{device_id.lower()}"
                                 "_consumption", "Wiener Netze consumption")
    feedin = quarter_series(start, quarters, 8, f"backdate:wnsm_{device_id.lower()}_feedin",
                            "Wiener Netze feed-in")
    url = f"mqtt://{BROKER}:1883?topic={topic}&tz=Europe/Vienna"
    target = open_mqtt_target(url)
    try:
        target.publish(device_id, f"Smart meter {device_id}", [consumption, feedin], "ok")

        dev = wait_for("the device in HA's device registry", lambda: device_of(ha, node))
        assert dev["name"] == f"Smart meter {device_id}" and dev["manufacturer"] == "backdate"
        ents = wait_for("four entities", lambda: (e := entities_of(ha, dev["id"])) and
                        len(e) == 4 and e)
        assert {e["platform"] for e in ents.values()} == {"mqtt"}
        by_obj = {uid.removeprefix(node + "_"): e["entity_id"] for uid, e in ents.items()}
        assert set(by_obj) == {"last_day_consumption", "last_day_feedin", "newest_value",
                               "sync_status"}

        for obj, series in (("last_day_consumption", consumption),
                            ("last_day_feedin", feedin)):
            st = wait_for(f"{obj} state", lambda o=obj: (s := state(ha, by_obj[o]))
                          and s["state"] not in ("unknown", "unavailable") and s)
            attrs = st["attributes"]
            assert attrs["device_class"] == "energy"
            assert attrs["unit_of_measurement"] == "kWh"
            assert "state_class" not in attrs  # HA compiles no statistics from it
            assert attrs["day"] == "2024-03-31"  # the 23-hour day; April 1st is partial
            assert float(st["state"]) == pytest.approx(day_total(series, "2024-03-31"),
                                                       abs=1e-6)
        newest = wait_for("newest value", lambda: (s := state(ha, by_obj["newest_value"]))
                          and s["state"] not in ("unknown", "unavailable") and s)
        assert newest["attributes"]["device_class"] == "timestamp"
        expected_end = datetime.fromtimestamp(float(consumption.ends[-1]), VIENNA)
        assert datetime.fromisoformat(newest["state"]) == expected_end
        status = state(ha, by_obj["sync_status"])
        assert status["state"] == "ok"

        # No statistics are made from the live sensors (the history goes to statistics
        # through sync/import with correct timestamps).
        with ha.ws() as ws:
            ids = {s["statistic_id"] for s in ws.call("recorder/list_statistic_ids")}
        assert not ids & set(by_obj.values())

        # A failed sync: the status says so, the last day's energy stays.
        target.publish(device_id, f"Smart meter {device_id}", [], "error",
                       "Wiener Netze: bewegungsdaten failed with HTTP 503")
        st = wait_for("error status", lambda: (s := state(ha, by_obj["sync_status"]))
                      ["state"] == "error" and s)
        assert "HTTP 503" in st["attributes"]["error"]
        assert float(state(ha, by_obj["last_day_consumption"])["state"]) == pytest.approx(
            day_total(consumption, "2024-03-31"), abs=1e-6)

        # The sync process dies without a clean disconnect: the broker sends its last will.
        script = (
            "import os, sys\n"
            "from backdate.targets.mqtt import open_mqtt_target\n"
            "t = open_mqtt_target(sys.argv[1])\n"
            "t.publish(sys.argv[2], sys.argv[3], [], 'running')\n"
            "os._exit(0)\n"
        )
        subprocess.run([sys.executable, "-c", script, url, device_id, f"Smart meter {device_id}"],
                       check=True, cwd=REPO_ROOT, timeout=60)
        wait_for("unavailable after the last will", lambda: all(
            state(ha, e)["state"] == "unavailable" for e in by_obj.values()))
        target.publish(device_id, f"Smart meter {device_id}", [consumption, feedin], "ok")
        wait_for("available again", lambda: state(ha, by_obj["sync_status"])["state"] == "ok")
        assert float(state(ha, by_obj["last_day_feedin"])["state"]) == pytest.approx(
            day_total(feedin, "2024-03-31"), abs=1e-6)

        # Clean removal, from a new connection that learns the objects from the broker.
        other = open_mqtt_target(url)
        try:
            other.remove(device_id)
        finally:
            other.close()
        wait_for("the device to go", lambda: device_of(ha, node) is None)
        assert not entities_of(ha, dev["id"])
    finally:
        target.close()
    bad = [line for line in ha.log_text(all_runs=True).splitlines()
           if (" ERROR " in line or "Traceback" in line) and "mqtt" in line.lower()]
    assert not bad, "\n".join(bad[:10])


def test_unreachable_broker_is_exit_3() -> None:
    from ha_harness import free_port

    with pytest.raises(TargetError) as err:
        MqttTarget(f"mqtt://user:hunter2@127.0.0.1:{free_port()}")
    assert err.value.exit_code == 3
    assert "hunter2" not in str(err.value)


def test_midnight_after_latest_day() -> None:
    """A day counts only up to the next local midnight, not 24 h after (DST-safe)."""
    start = datetime(2024, 10, 26, tzinfo=VIENNA)
    series = quarter_series(start, 96 + 100, 3, "backdate:y", "Y")
    got = latest_complete_day(series, VIENNA)
    assert got is not None and got.day == "2024-10-27"
    assert got.kwh == pytest.approx(float(series.values[96:].sum()), abs=1e-9)  # 100 quarters


def retained(topics: list[str], timeout: float = 5.0) -> dict[str, bytes]:
    """The retained messages the broker holds for `topics` (a real client, real Mosquitto)."""
    import threading

    import paho.mqtt.client as mqtt

    got: dict[str, bytes] = {}
    done = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"t-{uuid.uuid4().hex}")

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        got[msg.topic] = msg.payload
        if set(got) >= set(topics):
            done.set()

    client.on_message = on_message
    client.connect(BROKER, 1883)
    client.loop_start()
    try:
        for t in topics:
            client.subscribe(t, qos=1)
        done.wait(timeout)
    finally:
        client.loop_stop()
        client.disconnect()
    return got


def test_last_day_is_the_sources_local_day_without_tz(topic: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """No ?tz= and no $TZ: the day is the zone the caller passes (the portal's, Helsinki for
    WattiVahti), not a UTC day; without one it is UTC."""
    monkeypatch.delenv("TZ", raising=False)
    helsinki = ZoneInfo("Europe/Helsinki")
    # 26 October 00:00 Helsinki (21:00 UTC on the 25th) to 28 October 10:00 Helsinki
    start = datetime(2024, 10, 26, tzinfo=helsinki)
    series = quarter_series(start, 96 + 100 + 44, 5, "backdate:wattivahti_1_consumption", "C")
    device = f"wv_{uuid.uuid4().hex[:6]}"
    state_topic = f"{topic}/{device}/last_day_energy/state"
    target = open_mqtt_target(f"mqtt://{BROKER}:1883?topic={topic}&prefix={topic}_ha")
    try:
        target.publish(device, "WattiVahti", [series], "ok", time_zone="Europe/Helsinki")
        got = retained([state_topic, state_topic + "/attributes"])
        attrs = json.loads(got[state_topic + "/attributes"])
        assert attrs["day"] == "2024-10-27"  # the 25-hour Finnish day
        local = sum(v for t, v in zip(series.times, series.values, strict=True)
                    if datetime.fromtimestamp(t, helsinki).date().isoformat() == "2024-10-27")
        assert float(got[state_topic]) == pytest.approx(local, abs=1e-6)
        target.publish(device, "WattiVahti", [series], "ok")  # no zone known: UTC days
        got = retained([state_topic + "/attributes"])
        attrs = json.loads(got[state_topic + "/attributes"])
        assert attrs["day"] == "2024-10-27" and attrs["day_start"].endswith("+00:00")
    finally:
        target.remove(device)
        target.close()


def test_expire_after_and_availability_per_device(ha: HomeAssistant, topic: str) -> None:
    """Between runs the process is cleanly gone, so its `online` stays: `expire_after` makes a
    sensor nobody refreshed unavailable; each device has its own availability topic beside the
    process's last will, so one job's device going away leaves the other's alone."""
    import json

    first, second = (f"dev_{uuid.uuid4().hex[:6]}" for _ in range(2))
    start = datetime(2024, 3, 29, tzinfo=VIENNA)
    series = quarter_series(start, 96 * 2 + 10, 9, "backdate:x_consumption", "X")
    url = f"mqtt://{BROKER}:1883?topic={topic}&tz=Europe/Vienna"
    target = open_mqtt_target(url)
    try:
        target.publish(first, "First", [series], "ok", expire_after=4)
        target.publish(second, "Second", [series], "ok")
        config_topic = f"homeassistant/sensor/backdate_{first}/last_day_energy/config"
        config = json.loads(retained([config_topic])[config_topic])
        assert config["expire_after"] == 4 and config["availability_mode"] == "all"
        assert [a["topic"] for a in config["availability"]] == [
            f"{topic}/availability", f"{topic}/{first}/availability"]
        other = f"homeassistant/sensor/backdate_{second}/newest_value/config"
        assert json.loads(retained([other])[other])["expire_after"] == 2 * 86400

        entity = {d: f"sensor.backdate_{d}_last_day_energy" for d in (first, second)}
        wait_for("both energies", lambda: all(
            state(ha, e)["state"] not in ("unknown", "unavailable") for e in entity.values()))
        wait_for("the first device's energy to expire", lambda: state(
            ha, entity[first])["state"] == "unavailable", timeout=30)
        assert state(ha, entity[second])["state"] not in ("unknown", "unavailable")
        assert state(ha, f"sensor.backdate_{first}_sync_status")["state"] == "ok"

        target.remove(first)  # its availability goes with it; the second stays available
        wait_for("the first device to go", lambda: device_of(ha, f"backdate_{first}") is None)
        assert state(ha, entity[second])["state"] not in ("unknown", "unavailable")
    finally:
        target.remove(first)
        target.remove(second)
        target.close()
