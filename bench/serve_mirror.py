"""State changes from a real Home Assistant into `backdate serve`'s mirror: MQTT sensors
published at `--rate` messages/s for `--seconds`, HA turns each into a `state_changed`, a real
`serve` process stores them. Printed: what HA produced (counted by a bare WebSocket client that
only counts, in the same run: the reference), what serve stored and how fast, the p99 delay
from HA's time_fired to serve's commit, gaps and disconnects (must be 0: HA never dropped it).

    .venv/bin/python bench/serve_mirror.py [--rate 2000] [--seconds 30] [--sensors 50]

Needs HA 2024.3.3 (scripts/setup-ha.sh) and Mosquitto on 127.0.0.1:1883 (tests/services.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import paho.mqtt.client as mqtt  # noqa: E402
import services  # noqa: E402
from ha_harness import HomeAssistant, ensure_ha_venv  # noqa: E402
from ingest_harness import READ_TOKEN, Serve, free_port, get  # noqa: E402
from test_mqtt import enable_mqtt  # noqa: E402
from test_serve_mirror import set_discovery_prefix  # noqa: E402

from backdate.hass.client import HAClient  # noqa: E402


def count_events(url: str, token: str, stop: threading.Event, out: dict[str, int]) -> None:
    """The reference: a client that only counts state_changed events (nothing stored)."""

    async def run() -> None:
        client = await HAClient.connect(url, token)
        await client.call("supported_features", features={"coalesce_messages": 1})
        sub = await client.subscribe(event_type="state_changed")
        while not stop.is_set():
            try:
                ev = await sub.get(timeout=0.5)
            except Exception:  # noqa: BLE001 - timeout: look at the stop flag
                continue
            if str(ev["data"]["entity_id"]).startswith("sensor.bench_"):
                out["events"] += 1
        await client.close()

    asyncio.run(run())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--sensors", type=int, default=50)
    args = ap.parse_args()
    services.ensure_mosquitto()
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-mirror-"))
    broker = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    broker.connect("127.0.0.1", 1883)
    broker.loop_start()
    with HomeAssistant(tmp / "ha", venv=ensure_ha_venv(), extra_config="config:\n") as ha:
        enable_mqtt(ha)
        set_discovery_prefix(ha, prefix)
        for k in range(args.sensors):
            broker.publish(f"{prefix}/sensor/bench/s{k}/config", json.dumps({
                "name": f"bench {k}", "object_id": f"bench_{k}", "unique_id": f"{prefix}_{k}",
                "state_topic": f"{prefix}/s{k}", "device": {"identifiers": [f"{prefix}_dev"],
                                                            "name": "Bench"}}),
                qos=1, retain=True).wait_for_publish(10)
        port = free_port()
        config = tmp / "backdate.toml"
        config.write_text(f'[serve]\nlisten = "127.0.0.1:{port}"\n'
                          f'store = "sqlite:///{tmp / "serve.db"}"\n'
                          f'api_tokens = ["{READ_TOKEN}"]\n[[serve.homes]]\nname = "home"\n'
                          f'url = "{ha.url}"\ntoken = "{ha.token}"\n')
        serve = Serve(config, port, tmp / "serve.log")
        serve.start()
        try:
            deadline = time.monotonic() + 60
            while not get(serve.url + "/api/homes", READ_TOKEN)[1]["homes"][0]["connected"]:
                if time.monotonic() > deadline:
                    raise SystemExit("serve did not connect")
                time.sleep(0.2)
            time.sleep(3)  # discovery settled
            stop = threading.Event()
            ref = {"events": 0}
            counter = threading.Thread(target=count_events, args=(ha.url, ha.token, stop, ref))
            counter.start()
            time.sleep(1)
            start = time.time()
            sent = 0
            t0 = time.monotonic()
            while (elapsed := time.monotonic() - t0) < args.seconds:
                due = int(elapsed * args.rate)
                while sent < due:
                    broker.publish(f"{prefix}/s{sent % args.sensors}", str(sent), qos=0)
                    sent += 1
                time.sleep(0.002)
            publish_s = time.monotonic() - t0
            time.sleep(10)  # drain
            stop.set()
            counter.join(30)
            con = sqlite3.connect(tmp / "serve.db")
            rows = con.execute("SELECT time_fired, received_at FROM mirror_events WHERE "
                               "entity_id LIKE 'sensor.bench_%' AND time_fired >= ?",
                               (start,)).fetchall()
            con.close()
            delays = sorted(r[1] - r[0] for r in rows)
            first, last = min(r[1] for r in rows), max(r[1] for r in rows)
            home = get(serve.url + "/api/homes", READ_TOKEN)[1]["homes"][0]
            gaps = get(serve.url + "/api/gaps?kind=mirror", READ_TOKEN)[1]["gaps"]
            print(f"published {sent} MQTT messages in {publish_s:.1f} s "
                  f"({sent / publish_s:.0f}/s)")
            print(f"HA produced (bare counting client, reference): {ref['events']} "
                  f"state changes ({ref['events'] / publish_s:.0f}/s)")
            print(f"serve stored: {len(rows)} ({len(rows) / max(last - first, 1e-9):.0f}/s "
                  f"while they came), p50 delay {delays[len(delays) // 2] * 1000:.0f} ms, "
                  f"p99 delay {delays[int(len(delays) * 0.99)] * 1000:.0f} ms")
            print(f"backlog peak {home['backlog_peak']}, gaps {len(gaps)}, connected "
                  f"{home['connected']}, HA kept the connection: "
                  f"{'yes' if not gaps else 'NO'}")
            print(json.dumps({"published": sent, "ha_events": ref["events"],
                              "stored": len(rows), "gaps": len(gaps),
                              "p99_delay_ms": round(delays[int(len(delays) * 0.99)] * 1000)}))
        finally:
            serve.stop()
            for k in range(args.sensors):
                broker.publish(f"{prefix}/sensor/bench/s{k}/config", "", qos=1, retain=True)
            broker.loop_stop()


if __name__ == "__main__":
    main()
