"""`backdate serve`'s live mirror against a real Home Assistant 2024.3.3 with MQTT (real
Mosquitto): devices and entities made by MQTT discovery, judged by HA's own registry commands.

Why this way: the seed system served hard-coded mock devices for weeks because nothing compared
its API with HA. Here every answer is compared with what HA itself returns, after live
changes, after a connection cut on purpose (a local TCP proxy between `serve` and HA), after
HA restarts, and with the store tampered behind the mirror's back (the periodic reconcile).
One HA and one `serve` process serve the whole module.
"""

from __future__ import annotations

import calendar
import json
import shutil
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import services
from ha_harness import HomeAssistant
from ingest_harness import READ_TOKEN, Serve, free_port, get
from tcp_proxy import CuttableProxy
from test_mqtt import enable_mqtt

pytestmark = pytest.mark.ha

PREFIX = f"bd{uuid.uuid4().hex[:8]}"  # this module's own discovery prefix on the shared broker
HOME = "home"
ARTIFACTS = Path(__file__).parent / "artifacts"


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20.0,
             every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")


# --------------------------------------------------------------------------- MQTT side


class Broker:
    """One paho client for the module: retained discovery configs and sensor states."""

    def __init__(self) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=f"backdate-test-{PREFIX}")
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()

    def send(self, topic: str, payload: str, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(10)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def device_block(i: int) -> dict[str, Any]:
    block: dict[str, Any] = {"identifiers": [f"{PREFIX}_dev{i}"], "name": f"Meter {i}",
                             "manufacturer": ("Acme", "Globex", "Initech")[i % 3],
                             "model": f"M{i % 4}"}
    if i >= 8:  # child devices, attached through their hub
        block["via_device"] = f"{PREFIX}_dev0"
    return block


def config_topic(i: int, j: int) -> str:
    return f"{PREFIX}/sensor/{PREFIX}_d{i}/s{j}/config"


def state_topic(i: int, j: int) -> str:
    return f"{PREFIX}/state/d{i}/s{j}"


def sensor_config(i: int, j: int, **extra: Any) -> str:
    return json.dumps({"name": f"Power {j}", "unique_id": f"{PREFIX}_d{i}_s{j}",
                       "state_topic": state_topic(i, j), "unit_of_measurement": "W",
                       "device_class": "power", "device": device_block(i), **extra})


def set_discovery_prefix(ha: HomeAssistant, prefix: str) -> None:
    """HA's MQTT options flow, as a user would change the prefix: other tests on the shared
    broker publish under `homeassistant/`, which this HA must not see."""
    with ha.ws() as ws:
        entry = ws.call("config_entries/get", domain="mqtt")[0]["entry_id"]
    flow = ha.request("POST", "/api/config/config_entries/options/flow", {"handler": entry})
    step = ha.request("POST", f"/api/config/config_entries/options/flow/{flow['flow_id']}",
                      {"broker": "127.0.0.1", "port": 1883})
    assert step.get("step_id") == "options", step
    done = ha.request("POST", f"/api/config/config_entries/options/flow/{flow['flow_id']}",
                      {"discovery": True, "discovery_prefix": prefix})
    assert done["type"] == "create_entry", done
    with ha.ws() as ws:
        wait_for("the MQTT entry to reload", lambda: any(
            e["state"] == "loaded" for e in ws.call("config_entries/get", domain="mqtt")))


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def broker() -> Iterator[Broker]:
    services.ensure_mosquitto()
    b = Broker()
    yield b
    b.close()


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory, broker: Broker
       ) -> Iterator[HomeAssistant]:
    with HomeAssistant(tmp_path_factory.mktemp("ha_mirror"), venv=ha_venv,
                       extra_config="config:\n") as instance:
        enable_mqtt(instance)
        set_discovery_prefix(instance, PREFIX)
        seed_home(instance, broker)
        yield instance
    for i in range(12):  # leave nothing retained on the shared broker
        for j in range(4):
            broker.send(config_topic(i, j), "", retain=True)


def seed_home(ha: HomeAssistant, broker: Broker) -> None:
    """12 devices (4 children of a hub), 3 sensors each, one disabled, areas on most
    devices and one entity with an area of its own."""
    for i in range(12):
        for j in range(3):
            extra = {"enabled_by_default": False} if (i, j) == (5, 2) else {}
            broker.send(config_topic(i, j), sensor_config(i, j, **extra), retain=True)
    with ha.ws() as ws:
        def ours() -> list[dict[str, Any]]:
            return [e for e in ws.call("config/entity_registry/list")
                    if str(e.get("unique_id", "")).startswith(PREFIX)]

        wait_for("36 discovered entities", lambda: len(ours()) == 36, timeout=60, every=0.5)
        areas = [ws.call("config/area_registry/create", name=n)["area_id"]
                 for n in ("Pantry", "Cellar", "Garage")]
        for dev in ws.call("config/device_registry/list"):
            ident = [x for x in dev["identifiers"] if x[0] == "mqtt"]
            if not ident or not ident[0][1].startswith(f"{PREFIX}_dev"):
                continue
            i = int(ident[0][1].rsplit("dev", 1)[1])
            if i % 4 != 3:
                ws.call("config/device_registry/update", device_id=dev["id"],
                        area_id=areas[i % 3])
        one = next(e for e in ours() if e["unique_id"] == f"{PREFIX}_d1_s1")
        ws.call("config/entity_registry/update", entity_id=one["entity_id"],
                area_id=areas[2])


@pytest.fixture(scope="module")
def proxy(ha: HomeAssistant) -> Iterator[CuttableProxy]:
    p = CuttableProxy(ha.port)
    yield p
    p.close()


@pytest.fixture(scope="module")
def serve(ha: HomeAssistant, proxy: CuttableProxy,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    tmp = tmp_path_factory.mktemp("serve-mirror")
    port = free_port()
    config = tmp / "backdate.toml"
    config.write_text(f"""
[serve]
listen = "127.0.0.1:{port}"
store = "sqlite:///{tmp / 'serve.db'}"
api_tokens = ["{READ_TOKEN}"]
reconcile_every = "5s"
reconnect_max = "1s"

[[serve.homes]]
name = "{HOME}"
url = "http://127.0.0.1:{proxy.port}"
token = "{ha.token}"
""")
    proc = Serve(config, port, tmp / "serve.log")
    proc.start()
    try:
        wait_for("the first snapshot", lambda: (home(proc) or {}).get("connected"), 30)
        yield proc
    finally:
        proc.stop()
        log = (tmp / "serve.log").read_text()
        assert ha.token not in log, "the HA token reached serve's log"
        assert "Traceback" not in log, log[-3000:]


def api(serve: Serve, path: str) -> Any:
    status, body = get(serve.url + path, READ_TOKEN)
    assert status == 200, (path, status, body)
    return body


def home(serve: Serve) -> dict[str, Any] | None:
    for h in api(serve, "/api/homes")["homes"]:
        if h["name"] == HOME:
            return h
    return None


def all_pages(serve: Serve, path: str, key: str) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = api(serve, f"{path}{'&' if '?' in path else '?'}limit=17&offset={offset}")
        out += page[key]
        offset += 17
        if offset >= page["total"]:
            return out


# ------------------------------------------------------------------------- comparison


def ha_registries(ha: HomeAssistant) -> dict[str, list[dict[str, Any]]]:
    with ha.ws() as ws:
        return {"devices": ws.call("config/device_registry/list"),
                "entities": ws.call("config/entity_registry/list"),
                "areas": ws.call("config/area_registry/list"),
                "entries": ws.call("config_entries/get"),
                "states": ws.call("get_states")}


DEVICE_FIELDS = ("name", "name_by_user", "manufacturer", "model", "area_id", "config_entries",
                 "disabled_by", "via_device_id")
ENTITY_FIELDS = ("id", "device_id", "area_id", "platform", "disabled_by", "config_entry_id",
                 "name", "unique_id")


def differences(ha: HomeAssistant, serve: Serve) -> list[str]:
    """Every way the API differs from HA's own registries (empty: equal)."""
    reg = ha_registries(ha)
    out: list[str] = []
    mine_d = {d["id"]: d for d in all_pages(serve, f"/api/devices?home={HOME}", "devices")}
    theirs_d = {d["id"]: d for d in reg["devices"]}
    if set(mine_d) != set(theirs_d):
        out.append(f"device ids: missing {set(theirs_d) - set(mine_d)}, "
                   f"extra {set(mine_d) - set(theirs_d)}")
    per_device: dict[str, int] = {}
    for e in reg["entities"]:
        if e["device_id"]:
            per_device[e["device_id"]] = per_device.get(e["device_id"], 0) + 1
    for k in set(mine_d) & set(theirs_d):
        for f in DEVICE_FIELDS:
            if mine_d[k].get(f) != theirs_d[k].get(f):
                out.append(f"device {k} {f}: {mine_d[k].get(f)!r} != {theirs_d[k].get(f)!r}")
        if mine_d[k]["entity_count"] != per_device.get(k, 0):
            out.append(f"device {k} entity_count {mine_d[k]['entity_count']} != "
                       f"{per_device.get(k, 0)}")
        if mine_d[k]["parent_device_id"] != theirs_d[k]["via_device_id"]:
            out.append(f"device {k} parent_device_id")
    mine_e = {e["entity_id"]: e for e in all_pages(serve, f"/api/entities?home={HOME}",
                                                    "entities")}
    theirs_e = {e["entity_id"]: e for e in reg["entities"]}
    if set(mine_e) != set(theirs_e):
        out.append(f"entity ids: missing {set(theirs_e) - set(mine_e)}, "
                   f"extra {set(mine_e) - set(theirs_e)}")
    for k in set(mine_e) & set(theirs_e):
        for f in ENTITY_FIELDS:
            if mine_e[k].get(f) != theirs_e[k].get(f):
                out.append(f"entity {k} {f}: {mine_e[k].get(f)!r} != {theirs_e[k].get(f)!r}")
    mine_a = {a["area_id"]: a["name"] for a in api(serve, "/api/areas")["areas"]}
    theirs_a = {a["area_id"]: a["name"] for a in reg["areas"]}
    if mine_a != theirs_a:
        out.append(f"areas {mine_a} != {theirs_a}")
    mine_i = {i["entry_id"]: i for i in api(serve, "/api/integrations")["integrations"]}
    theirs_i = {i["entry_id"]: i for i in reg["entries"]}
    if set(mine_i) != set(theirs_i):
        out.append(f"config entries {set(mine_i)} != {set(theirs_i)}")
    for k in set(mine_i) & set(theirs_i):
        for f in ("domain", "title", "state"):
            if mine_i[k].get(f) != theirs_i[k].get(f):
                out.append(f"entry {k} {f}: {mine_i[k].get(f)!r} != {theirs_i[k].get(f)!r}")
        n_dev = sum(1 for d in reg["devices"] if k in d["config_entries"])
        n_ent = sum(1 for e in reg["entities"] if e["config_entry_id"] == k)
        if (mine_i[k]["device_count"], mine_i[k]["entity_count"]) != (n_dev, n_ent):
            out.append(f"entry {k} counts {mine_i[k]['device_count']}/"
                       f"{mine_i[k]['entity_count']} != {n_dev}/{n_ent}")
    return out


def assert_equal_soon(ha: HomeAssistant, serve: Serve, timeout: float) -> None:
    last: list[str] = []

    def check() -> bool:
        nonlocal last
        last = differences(ha, serve)
        return not last

    try:
        wait_for("the API to equal HA's registries", check, timeout, every=0.3)
    except AssertionError:
        raise AssertionError("API differs from HA:\n" + "\n".join(last[:40])) from None


def our_device(ha: HomeAssistant, i: int) -> dict[str, Any]:
    with ha.ws() as ws:
        for dev in ws.call("config/device_registry/list"):
            if ["mqtt", f"{PREFIX}_dev{i}"] in dev["identifiers"]:
                return dev
    raise AssertionError(f"device {i} not in HA")


def our_entity(ha: HomeAssistant, i: int, j: int) -> dict[str, Any] | None:
    with ha.ws() as ws:
        for e in ws.call("config/entity_registry/list"):
            if e["unique_id"] == f"{PREFIX}_d{i}_s{j}":
                return e
    return None


# -------------------------------------------------------------------------------- tests


def test_api_equals_home_assistants_registries(ha: HomeAssistant, serve: Serve) -> None:
    assert_equal_soon(ha, serve, 10)
    devices = all_pages(serve, f"/api/devices?home={HOME}", "devices")
    entities = all_pages(serve, f"/api/entities?home={HOME}", "entities")
    assert len([d for d in devices if d["manufacturer"] in ("Acme", "Globex", "Initech")]) == 12
    assert len([e for e in entities if str(e.get("unique_id")).startswith(PREFIX)]) == 36
    # Both device shapes are served: the list and the single entry; children name a parent.
    hub = our_device(ha, 0)
    children = [d for d in devices if d["parent_device_id"] == hub["id"]]
    assert len(children) == 4
    assert all(d["config_entry_id"] == d["config_entries"][0] for d in devices)
    # Filters agree with HA too.
    disabled = api(serve, "/api/entities?disabled=true")["entities"]
    assert [e["unique_id"] for e in disabled if str(e["unique_id"]).startswith(PREFIX)] == \
        [f"{PREFIX}_d5_s2"]
    acme = api(serve, "/api/devices?manufacturer=Acme")
    assert acme["total"] == 4 and {d["manufacturer"] for d in acme["devices"]} == {"Acme"}
    mqtt_devs = api(serve, "/api/devices?integration=mqtt&limit=1000")
    assert mqtt_devs["total"] == len([d for d in devices if d["config_entries"]])
    text = api(serve, "/api/devices?text=meter%201")  # Meter 1, Meter 10, Meter 11
    assert sorted(d["name"] for d in text["devices"]) == ["Meter 1", "Meter 10", "Meter 11"]
    kitchen = next(a for a in api(serve, "/api/areas")["areas"] if a["name"] == "Pantry")
    in_kitchen = api(serve, f"/api/devices?area={kitchen['area_id']}")["devices"]
    assert in_kitchen and all(d["area_id"] == kitchen["area_id"] for d in in_kitchen)
    garage = next(a for a in api(serve, "/api/areas")["areas"] if a["name"] == "Garage")
    own = our_entity(ha, 1, 1)
    assert own is not None
    in_garage = {e["entity_id"] for e in api(serve, f"/api/entities?area={garage['area_id']}"
                                                    "&limit=1000")["entities"]}
    assert own["entity_id"] in in_garage  # its own area wins over its device's (Cellar)
    sensors = api(serve, "/api/entities?domain=sensor&platform=mqtt&limit=1000")
    assert sensors["total"] == 36
    one = api(serve, f"/api/devices/{hub['id']}")
    assert one["id"] == hub["id"] and len(one["entities"]) == one["entity_count"] == 3
    status, _ = get(serve.url + "/api/devices/not-a-device", READ_TOKEN)
    assert status == 404


def test_changes_reach_the_api_within_two_seconds(ha: HomeAssistant, serve: Serve,
                                                  broker: Broker) -> None:
    assert_equal_soon(ha, serve, 10)
    dev = our_device(ha, 2)
    with ha.ws() as ws:
        t0 = time.monotonic()
        area = ws.call("config/area_registry/create", name="Attic")["area_id"]
        wait_for("the new area", lambda: any(
            a["area_id"] == area for a in api(serve, "/api/areas")["areas"]), 2.0)
        t_area = time.monotonic() - t0
        t0 = time.monotonic()
        ws.call("config/device_registry/update", device_id=dev["id"],
                name_by_user="Renamed meter", area_id=area)
        wait_for("the rename and move", lambda: (lambda d: d["name_by_user"] == "Renamed meter"
                 and d["area_id"] == area)(api(serve, f"/api/devices/{dev['id']}")), 2.0)
        t_rename = time.monotonic() - t0
    t0 = time.monotonic()
    broker.send(config_topic(2, 3), sensor_config(2, 3), retain=True)
    added = wait_for("HA to add the entity", lambda: our_entity(ha, 2, 3), 5.0)
    wait_for("the added entity", lambda: get(
        serve.url + f"/api/entities/{added['entity_id']}", READ_TOKEN)[0] == 200, 2.0)
    t_add = time.monotonic() - t0
    gone = our_entity(ha, 2, 0)
    assert gone is not None
    t0 = time.monotonic()
    broker.send(config_topic(2, 0), "", retain=True)
    wait_for("the removed entity", lambda: get(
        serve.url + f"/api/entities/{gone['entity_id']}", READ_TOKEN)[0] == 404, 2.0)
    t_remove = time.monotonic() - t0
    print(f"area {t_area:.2f} s, rename+move {t_rename:.2f} s, add {t_add:.2f} s, "
          f"remove {t_remove:.2f} s")
    assert api(serve, f"/api/devices/{dev['id']}")["entity_count"] == 3
    assert_equal_soon(ha, serve, 5)


def test_every_published_state_is_stored(ha: HomeAssistant, serve: Serve,
                                         broker: Broker) -> None:
    entity = our_entity(ha, 3, 0)
    assert entity is not None
    eid = entity["entity_id"]
    n = 200
    before = time.time() - 1
    for k in range(1, n + 1):
        broker.send(state_topic(3, 0), str(k))

    def stored() -> list[dict[str, Any]]:
        out, cursor = [], 0
        while True:
            page = api(serve, f"/api/events?entity_id={eid}&cursor={cursor}&limit=64")
            out += page["events"]
            if page["next_cursor"] is None:
                return out
            cursor = page["next_cursor"]

    got = wait_for(f"{n} stored state changes", lambda: (lambda s: s if len(
        [e for e in s if e["new_state"] not in ("unknown", None)]) >= n else None)(stored()),
                   20, every=0.3)
    values = [e["new_state"] for e in got if e["new_state"] not in ("unknown", None)]
    gaps = api(serve, "/api/gaps?kind=mirror")["gaps"]
    if values != [str(k) for k in range(1, n + 1)]:
        assert gaps, "state changes missing and no gap recorded"
    else:
        assert values == [str(k) for k in range(1, n + 1)]
    assert api(serve, f"/api/entities/{eid}")["state"]["state"] == str(n)
    assert all(e["time_fired"] >= time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(before))
               for e in got if e["new_state"] not in ("unknown", None))


def test_cut_connection_is_a_gap_and_the_resync_fixes_the_mirror(
        ha: HomeAssistant, serve: Serve, proxy: CuttableProxy, broker: Broker) -> None:
    assert_equal_soon(ha, serve, 10)
    before = {g["id"] for g in api(serve, "/api/gaps?kind=mirror")["gaps"]}
    proxy.cut()
    cut_at = time.time()
    wait_for("serve to notice the cut", lambda: not home(serve)["connected"], 10)
    # Changes HA makes while backdate cannot hear them: a rename, a removal, an addition,
    # a new area and a removed one.
    dev = our_device(ha, 4)
    removed = our_entity(ha, 6, 1)
    assert removed is not None
    with ha.ws() as ws:
        ws.call("config/device_registry/update", device_id=dev["id"],
                name_by_user="Renamed while cut")
        area = ws.call("config/area_registry/create", name="Shed")["area_id"]
        old_area = next(a["area_id"] for a in ws.call("config/area_registry/list")
                        if a["name"] == "Garage")
        ws.call("config/area_registry/delete", area_id=old_area)
    broker.send(config_topic(6, 1), "", retain=True)
    broker.send(config_topic(7, 3), sensor_config(7, 3), retain=True)
    wait_for("HA to remove and add", lambda: our_entity(ha, 6, 1) is None
             and our_entity(ha, 7, 3) is not None, 10)
    time.sleep(1.0)
    stale = api(serve, f"/api/devices/{dev['id']}")
    assert stale["name_by_user"] != "Renamed while cut"  # really missed while cut
    proxy.restore()
    restored_at = time.time()
    wait_for("serve to reconnect", lambda: home(serve)["connected"], 15)
    assert_equal_soon(ha, serve, 10)
    assert any(a["area_id"] == area for a in api(serve, "/api/areas")["areas"])
    status, _ = get(serve.url + f"/api/entities/{removed['entity_id']}", READ_TOKEN)
    assert status == 404
    gaps = [g for g in api(serve, "/api/gaps?kind=mirror")["gaps"] if g["id"] not in before]
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    assert gap["kind"] == "mirror" and gap["home"] == HOME and gap["status"] == "resolved"
    assert "connection lost" in gap["cause"]
    start = calendar.timegm(time.strptime(gap["started_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    end = calendar.timegm(time.strptime(gap["ended_at"][:19], "%Y-%m-%dT%H:%M:%S"))
    assert start <= cut_at + 1 and end >= restored_at - 1, (gap, cut_at, restored_at)
    health = api(serve, "/api/health")["homes"][0]
    assert health["connected"] and health["open_gaps"] == 0


def test_periodic_reconcile_repairs_what_events_missed(ha: HomeAssistant, serve: Serve
                                                       ) -> None:
    """Rows changed behind the mirror's back (as if events were lost without a disconnect):
    the 5-second reconcile puts HA's truth back, removals included."""
    assert_equal_soon(ha, serve, 10)
    store = serve.config.parent / "serve.db"
    dev = our_device(ha, 9)
    con = sqlite3.connect(store, timeout=30)
    try:
        con.execute("DELETE FROM mirror_devices WHERE id = ?", (dev["id"],))
        con.execute("INSERT INTO mirror_entities (home, entity_id, data) VALUES (?, ?, ?)",
                    (HOME, "sensor.ghost", json.dumps({"entity_id": "sensor.ghost"})))
        con.commit()
    finally:
        con.close()
    assert differences(ha, serve)
    assert_equal_soon(ha, serve, 12)
    status, _ = get(serve.url + "/api/entities/sensor.ghost", READ_TOKEN)
    assert status == 404


def test_home_assistant_restart_is_a_gap_and_states_are_reconciled(
        ha: HomeAssistant, serve: Serve, proxy: CuttableProxy, broker: Broker) -> None:
    before = {g["id"] for g in api(serve, "/api/gaps?kind=mirror")["gaps"]}
    ha.stop()
    wait_for("serve to notice HA stopped", lambda: not home(serve)["connected"], 15)
    ha.start()
    proxy.target = ("127.0.0.1", ha.port)
    wait_for("serve to reconnect", lambda: home(serve)["connected"], 60, every=0.5)
    assert_equal_soon(ha, serve, 15)
    target = our_entity(ha, 8, 0)
    assert target is not None
    with ha.ws() as ws:
        def ha_states() -> dict[str, Any]:
            return {s["entity_id"]: s["state"] for s in ws.call("get_states")}

        def published() -> bool:  # MQTT subscribes a little after HA says RUNNING
            broker.send(state_topic(8, 0), "4242.5")
            time.sleep(0.3)
            return ha_states().get(target["entity_id"]) == "4242.5"

        wait_for("HA to take a state published after its restart", published, 20)
        states = ha_states()

    def states_equal() -> bool:
        mine = {e["entity_id"]: (e["state"] or {}).get("state") for e in
                api(serve, "/api/entities?limit=1000")["entities"]
                for e in [api(serve, f"/api/entities/{e['entity_id']}")]}
        return all(states.get(k) == v for k, v in mine.items() if k in states) and \
            mine.get(target["entity_id"]) == "4242.5"

    wait_for("states equal HA's", states_equal, 10, every=0.3)
    gaps = [g for g in api(serve, "/api/gaps?kind=mirror")["gaps"] if g["id"] not in before]
    assert len(gaps) == 1 and gaps[0]["status"] == "resolved", gaps
    assert home(serve)["ha_version"] == "2024.3.3"


def test_page_in_chromium(ha: HomeAssistant, serve: Serve, broker: Broker, tmp_path: Path
                          ) -> None:
    """The page as a browser shows it: homes and their health, devices with entity counts,
    the search, one device's entities with their states, recent gaps."""
    chromium = services.ensure_chromium()
    from playwright.sync_api import sync_playwright

    hub = our_device(ha, 0)
    for j, watts in enumerate(("230.5", "12", "0.5")):
        broker.send(state_topic(0, j), watts)
    wait_for("the hub's states", lambda: [(e["state"] or {}).get("state") for e in api(
        serve, f"/api/devices/{hub['id']}")["entities"]] == ["230.5", "12", "0.5"], 10)
    shot = tmp_path / "serve-page.png"
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        try:
            page = browser.new_page(http_credentials={"username": "any",
                                                      "password": READ_TOKEN},
                                    viewport={"width": 1280, "height": 900})
            page.goto(serve.url + "/", timeout=20_000)
            assert page.locator("#homes tr.up").count() == 1
            assert "2024.3.3" in page.locator("#homes").inner_text()
            shown = page.locator("#devices").inner_text()  # the live changes, on the page too
            assert "Renamed meter" in shown and "Renamed while cut" in shown
            assert "Attic" in shown  # the area made during the test, by name
            page.fill("#search", "Meter 1")
            page.click("button[type=submit]")
            page.wait_for_url("**/?q=Meter*")
            names = page.locator("#devices tr.device td:nth-child(2)").all_inner_texts()
            assert sorted(names) == ["Meter 1", "Meter 10", "Meter 11"], names
            page.goto(serve.url + f"/?device={hub['id']}&home={HOME}&q=Meter", timeout=20_000)
            assert page.locator("#device-title").inner_text().startswith("Meter 0")
            rows = page.locator("#entities tr.entity")
            assert rows.count() == 3
            assert page.locator("#entities td.state").all_inner_texts() == [
                "230.5 W", "12 W", "0.5 W"]
            counts = page.locator("#devices tr.device td.count").all_inner_texts()
            assert all(c.isdigit() for c in counts)
            assert "Recent gaps of the mirror" in page.content()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / shot.name)
    assert shot.stat().st_size > 10_000


def test_check_takes_one_snapshot_and_prints_counts(ha: HomeAssistant, tmp_path: Path
                                                    ) -> None:
    import os
    import subprocess
    import sys

    config = tmp_path / "backdate.toml"
    config.write_text(f"""
[serve]
store = "sqlite:///{tmp_path / 'check.db'}"
api_tokens = ["{READ_TOKEN}"]
""")
    env = {**os.environ, "HA_URL": ha.url, "HA_TOKEN": ha.token}
    cmd = [sys.executable, "-m", "backdate.cli", "serve", "--check", "--config", str(config)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    reg = ha_registries(ha)
    assert f"home home ({ha.url}): {len(reg['devices'])} devices, " \
           f"{len(reg['entities'])} entities, {len(reg['areas'])} areas, " \
           f"{len(reg['entries'])} config entries, {len(reg['states'])} states" in done.stdout
    bad = subprocess.run(cmd, env={**env, "HA_TOKEN": "not-a-valid-token-0123456789"},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3, bad.stdout + bad.stderr
    assert "access token rejected" in bad.stdout + bad.stderr
    assert "not-a-valid-token" not in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stdout + bad.stderr


def test_refused_token_stops_that_home_with_a_clear_message(ha: HomeAssistant,
                                                            tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "backdate.toml"
    config.write_text(f"""
[serve]
listen = "127.0.0.1:{port}"
store = "sqlite:///{tmp_path / 'serve.db'}"
api_tokens = ["{READ_TOKEN}"]

[[serve.homes]]
name = "bad"
url = "{ha.url}"
token = "not-a-valid-token-0123456789"
""")
    proc = Serve(config, port, tmp_path / "serve.log")
    proc.start()
    try:
        bad = wait_for("the refusal", lambda: next(
            (h for h in api(proc, "/api/homes")["homes"] if h["state"] == "auth_failed"),
            None), 20)
        assert "refused the access token" in bad["error"] and not bad["connected"]
        time.sleep(2)  # and it does not try again (HA bans addresses after failed logins)
        log = (tmp_path / "serve.log").read_text()
        assert log.count("refused the access token") == 1, log
        assert "not-a-valid-token" not in log
    finally:
        proc.stop()


def test_two_serve_processes_on_postgresql_share_one_mirror(ha: HomeAssistant,
                                                            tmp_path: Path) -> None:
    """Both follow the same home into one database: no duplicate rows, the same answers."""
    name = f"backdate_mirror_{uuid.uuid4().hex[:8]}"
    url = services.create_pg_database(name, None)
    procs = []
    try:
        for k in range(2):
            port = free_port()
            config = tmp_path / f"serve{k}.toml"
            config.write_text(f"""
[serve]
listen = "127.0.0.1:{port}"
store = "{url}"
api_tokens = ["{READ_TOKEN}"]

[[serve.homes]]
name = "{HOME}"
url = "{ha.url}"
token = "{ha.token}"
""")
            proc = Serve(config, port, tmp_path / f"serve{k}.log")
            proc.start()
            procs.append(proc)
        for proc in procs:
            wait_for("both connected", lambda p=proc: (home(p) or {}).get("connected"), 30)
        entity = our_entity(ha, 10, 0)
        assert entity is not None
        with ha.ws() as ws:
            for k in range(20):
                ws.call("config/device_registry/update", device_id=our_device(ha, 11)["id"],
                        name_by_user=f"Shared {k}")
        broker_values = [str(1000 + k) for k in range(40)]
        b = Broker()
        try:
            for v in broker_values:
                b.send(state_topic(10, 0), v)
        finally:
            b.close()
        for proc in procs:
            assert_equal_soon(ha, proc, 10)

        def events(p: Serve) -> list[str]:
            return [e["new_state"] for e in api(
                p, f"/api/events?entity_id={entity['entity_id']}&limit=10000")["events"]]

        wait_for("40 stored changes", lambda: events(procs[0])[-40:] == broker_values, 10)
        assert events(procs[0]) == events(procs[1])
        assert api(procs[0], "/api/devices?limit=1000") == api(procs[1], "/api/devices?limit=1000")
        con = services.pg_connect(name)
        try:
            for table, key in (("mirror_events", "home, entity_id, time_fired"),
                               ("mirror_devices", "home, id"),
                               ("mirror_entities", "home, entity_id"),
                               ("mirror_states", "home, entity_id")):
                total, distinct = con.execute(
                    f"SELECT count(*), count(DISTINCT ({key})) FROM {table}").fetchone()
                assert total == distinct > 0, table
        finally:
            con.close()
    finally:
        for proc in procs:
            proc.stop()
        services.drop_database("postgresql", name)
