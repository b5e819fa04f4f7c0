"""Live sensors over MQTT with Home Assistant discovery (`mqtt://host:1883`).

Per metering point (or sync job) one HA device with:

* `last_day_energy` (per series): the energy of the latest *complete* local day, kWh,
  `device_class: energy` with no `state_class`, and the day in the attributes;
* `newest_value`: when the newest reading ends, `device_class: timestamp`;
* `sync_status`: `ok`, `error`, ... with the error text in the attributes.

Why no `state_class`: a state class makes HA compile long-term statistics from the state at the
time it arrives, so a day's energy published the next day would land in the wrong hour, which
is exactly the original add-on's bug (it also used `measurement`, which HA refuses for energy).
The history goes into statistics with correct timestamps through `sync`/`import`; these sensors
only show what was synced and when. States and discovery configs are retained. Availability
has two parts that must both be `online` (HA's `availability_mode: all`): the process's topic
with its last will (`offline`), so a crashed sync shows as unavailable, and one topic per
device, so removing or failing one job does not touch the others. `expire_after` (default two
days; `?expire_after=SECONDS`, or per `publish`) makes HA show the sensors as unavailable when
no sync refreshed them for that long, which a clean disconnect between runs cannot tell it.
`remove` clears every retained message so HA deletes the device.

"The last complete day" is a local day: of `?tz=` when given, else of the zone the caller
passes (the portal's: a Wiener Netze day is a Vienna day), else of $TZ, else UTC.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import paho.mqtt.client as mqtt

from backdate.engine import units
from backdate.engine.prepare import slugify
from backdate.errors import TargetError, UsageError
from backdate.models import Series

log = logging.getLogger(__name__)

TIMEOUT = 10.0
STATUS_OK = "ok"
EXPIRE_AFTER = 2 * 86400.0  # about twice a daily sync interval plus its jitter


@dataclass(slots=True)
class DayEnergy:
    """The energy of one whole local day."""

    day: str  # YYYY-MM-DD
    kwh: float
    start: datetime


def latest_complete_day(series: Series, tz: ZoneInfo) -> DayEnergy | None:
    """The newest local day that the readings cover without a gap, and its energy in kWh.

    A day counts only when its intervals reach from local midnight to the next (23 or 25
    hours on DST days): a day the portal delivered in part is not shown as a small total.
    """
    if len(series) == 0:
        return None
    starts = series.times
    ends = series.ends if series.ends is not None else np.full(len(series), np.nan)
    step = float(np.median(np.diff(starts))) if len(starts) > 1 else 900.0
    ends = np.where(np.isnan(ends), starts + step, ends)
    factor = units.conversion(series.unit or "kWh", "kWh").factor
    by_day: dict[str, list[int]] = {}
    for i, t in enumerate(starts.tolist()):
        by_day.setdefault(datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d"), []).append(i)
    for day in sorted(by_day, reverse=True):
        idx = by_day[day]
        first = datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=tz)
        nxt = (first + timedelta(days=1)).replace(tzinfo=None).replace(tzinfo=tz)
        lo, hi = first.timestamp(), nxt.timestamp()
        covered = lo
        for i in sorted(idx, key=lambda k: starts[k]):
            if starts[i] > covered + 1e-6:
                break
            covered = max(covered, float(ends[i]))
        if covered >= hi - 1e-6:
            return DayEnergy(day, round(float(series.values[idx].sum()) * factor, 6), first)
    return None


def _object_id(text: str) -> str:
    return re.sub(r"[^a-z0-9_]+", "_", text.lower()).strip("_") or "device"


class MqttTarget:
    """One broker connection that publishes the live sensors of any number of devices."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts"):
            raise UsageError(f"not an MQTT URL: {parts.scheme}://...")
        params = dict(parse_qsl(parts.query))
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (8883 if parts.scheme == "mqtts" else 1883)
        self.prefix = params.get("prefix", "homeassistant").strip("/")
        self.base = params.get("topic", "backdate").strip("/")
        # None: the zone the caller passes to publish(), else $TZ, else UTC
        self.tz = _zone(params["tz"]) if params.get("tz") else None
        self.expire_after = _seconds(params.get("expire_after"), EXPIRE_AFTER)
        user = unquote(parts.username) if parts.username else os.environ.get("MQTT_USERNAME")
        password = unquote(parts.password) if parts.password else os.environ.get("MQTT_PASSWORD")
        self.url = f"{parts.scheme}://{user + ':***@' if user else ''}{self.host}:{self.port}" + (
            f"?{parts.query}" if parts.query else "")
        self._devices: set[str] = set()
        self._known_objects: dict[str, set[str]] = {}
        self._connected = threading.Event()
        self._connect_error: str | None = None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=f"backdate-{os.getpid()}-{id(self):x}")
        if user:
            client.username_pw_set(user, password)
        if parts.scheme == "mqtts":
            client.tls_set()
        client.on_connect = self._on_connect
        client.will_set(self._bridge_topic(), "offline", qos=1, retain=True)
        self.client = client
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as err:
            raise TargetError(f"cannot reach the MQTT broker at {self.url}: {err}") from None
        client.loop_start()
        if not self._connected.wait(TIMEOUT) or self._connect_error:
            client.loop_stop()
            raise TargetError(f"MQTT broker at {self.url} refused the connection: "
                              f"{self._connect_error or 'no answer'}")
        self._send(self._bridge_topic(), "online")

    def _on_connect(self, _client: Any, _userdata: Any, _flags: Any, reason: Any,
                    _props: Any = None) -> None:
        if reason.is_failure:
            self._connect_error = str(reason)
        self._connected.set()

    # -- topics ----------------------------------------------------------------------------

    def _bridge_topic(self) -> str:
        """The availability of this process (its last will), shared by its devices."""
        return f"{self.base}/availability"

    def _device_availability(self, device_id: str) -> str:
        """The availability of one device (job): offline when it is removed."""
        return f"{self.base}/{_object_id(device_id)}/availability"

    def _node(self, device_id: str) -> str:
        return f"backdate_{_object_id(device_id)}"

    def _config_topic(self, device_id: str, obj: str) -> str:
        return f"{self.prefix}/sensor/{self._node(device_id)}/{obj}/config"

    def _state_topic(self, device_id: str, obj: str) -> str:
        return f"{self.base}/{_object_id(device_id)}/{obj}/state"

    def _send(self, topic: str, payload: str | bytes, retain: bool = True) -> None:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        try:
            info.wait_for_publish(TIMEOUT)
        except (RuntimeError, ValueError) as err:
            raise TargetError(f"MQTT broker at {self.url}: publishing to {topic} failed: "
                              f"{err}") from None
        if not info.is_published():
            raise TargetError(f"MQTT broker at {self.url} did not confirm {topic} in "
                              f"{TIMEOUT:g} s")

    # -- discovery -------------------------------------------------------------------------

    def _config(self, device_id: str, name: str, obj: str, title: str,
                extra: dict[str, Any]) -> dict[str, Any]:
        node = self._node(device_id)
        return {
            "name": title,
            "object_id": f"{node}_{obj}",
            "unique_id": f"{node}_{obj}",
            "state_topic": self._state_topic(device_id, obj),
            "json_attributes_topic": self._state_topic(device_id, obj) + "/attributes",
            "availability": [{"topic": self._bridge_topic()},
                             {"topic": self._device_availability(device_id)}],
            "availability_mode": "all",
            "payload_available": "online",
            "payload_not_available": "offline",
            "device": {"identifiers": [node], "name": name, "manufacturer": "backdate",
                       "model": "energy history sync"},
            **extra,
        }

    def publish(self, device_id: str, name: str, readings: list[Series], status: str,
                error: str | None = None, *, time_zone: str | None = None,
                expire_after: float | None = None) -> None:
        """Announce the device (retained configs) and publish its current states.

        `readings` are the delta readings the sync just handled; with none (a failed sync),
        only the status changes and the energy sensors keep their last retained value.
        `time_zone` is the source's zone (the portal's local days) when the URL names none;
        `expire_after` (seconds) overrides the URL's, e.g. 2 x the job's interval + jitter.
        """
        tz = self.tz or (_zone(time_zone) if time_zone else _env_zone())
        expire = round(_seconds(expire_after, self.expire_after))
        configs: dict[str, dict[str, Any]] = {}
        states: dict[str, tuple[str, dict[str, Any]]] = {}
        newest: float | None = None
        for series in readings:
            label = series.name or series.statistic_id or "energy"
            obj = "last_day_" + slugify(_suffix(series, readings))
            configs[obj] = self._config(device_id, name, obj, f"{label} last complete day", {
                "device_class": "energy", "unit_of_measurement": "kWh",
                "suggested_display_precision": 3, "icon": "mdi:calendar-today",
                "expire_after": expire})
            day = latest_complete_day(series, tz)
            if day is not None:
                states[obj] = (f"{day.kwh:.6f}", {"day": day.day,
                                                   "statistic_id": series.statistic_id,
                                                   "day_start": day.start.isoformat()})
            if len(series):
                ends = series.ends if series.ends is not None else series.times
                last = float(np.nanmax(ends))
                newest = last if newest is None else max(newest, last)
        configs["newest_value"] = self._config(device_id, name, "newest_value",
                                               "Newest value", {"device_class": "timestamp",
                                                                "expire_after": expire})
        if newest is not None:
            when = datetime.fromtimestamp(newest, tz)
            states["newest_value"] = (when.isoformat(), {})
        configs["sync_status"] = self._config(device_id, name, "sync_status", "Sync status", {
            "icon": "mdi:sync", "entity_category": "diagnostic"})
        states["sync_status"] = (status, {"error": error or "",
                                          "at": datetime.now(tz).isoformat()})
        for obj, config in configs.items():
            self._send(self._config_topic(device_id, obj), json.dumps(config))
        self._send(self._bridge_topic(), "online")
        self._send(self._device_availability(device_id), "online")
        for obj, (state, attributes) in states.items():
            self._send(self._state_topic(device_id, obj) + "/attributes", json.dumps(attributes))
            self._send(self._state_topic(device_id, obj), state)
        self._devices.add(device_id)
        self._known_objects.setdefault(device_id, set()).update(configs)

    def remove(self, device_id: str, objects: list[str] | None = None) -> None:
        """Empty retained configs and states: HA deletes the entities and then the device."""
        objs = set(objects or []) | self._known_objects.get(device_id, set()) | self._retained(
            device_id)
        for obj in sorted(objs):
            self._send(self._config_topic(device_id, obj), b"")
            self._send(self._state_topic(device_id, obj), b"")
            self._send(self._state_topic(device_id, obj) + "/attributes", b"")
        self._send(self._device_availability(device_id), b"")
        self._devices.discard(device_id)
        self._known_objects.pop(device_id, None)

    def _retained(self, device_id: str, wait: float = 1.0) -> set[str]:
        """Objects of this device whose retained configs the broker holds (from earlier runs)."""
        found: set[str] = set()
        topic = f"{self.prefix}/sensor/{self._node(device_id)}/+/config"
        done = threading.Event()

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            if msg.payload:
                found.add(msg.topic.split("/")[-2])

        self.client.message_callback_add(topic, on_message)
        try:
            self.client.subscribe(topic, qos=1)
            done.wait(wait)  # retained messages arrive right after the subscription
            self.client.unsubscribe(topic)
        finally:
            self.client.message_callback_remove(topic)
        return found

    def close(self) -> None:
        """A clean disconnect: no last will, the retained `online` stays for HA."""
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


def _suffix(series: Series, readings: list[Series]) -> str:
    """What tells this series apart from the others of the device (consumption, feedin)."""
    sid = series.statistic_id or series.name or "energy"
    if len(readings) == 1:
        return "energy"
    return sid.split(":")[-1].rsplit("_", 1)[-1] if "_" in sid else sid


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise UsageError(f"mqtt: unknown time zone {name!r}") from None


def _env_zone() -> ZoneInfo:
    """$TZ when it names a zone (not a POSIX rule like CET-1CEST), else UTC."""
    try:
        return ZoneInfo(os.environ.get("TZ", "").lstrip(":") or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _seconds(value: str | float | None, default: float) -> float:
    """A positive number of seconds (`expire_after`), or the default."""
    if value is None or value == "":
        return default
    try:
        seconds = float(value)
    except ValueError:
        raise UsageError(f"mqtt: expire_after must be seconds, not {value!r}") from None
    if not seconds > 0:
        raise UsageError("mqtt: expire_after must be positive")
    return seconds


def open_mqtt_target(url: str) -> MqttTarget:
    """`mqtt://[user:pass@]host:1883[?prefix=homeassistant&topic=backdate&tz=Europe/Vienna
    &expire_after=172800]`."""
    return MqttTarget(url)
