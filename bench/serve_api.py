"""`/api/devices` and `/api/entities` of `backdate serve` with 1,000 devices and 10,000 entities
under 20 concurrent clients: latency p50/p99 per route, beside `/livez` (the framework's own
floor: no store, no auth) measured the same way in the same run.

    .venv/bin/python bench/serve_api.py [--requests 2000] [--clients 20] [--pg URL]

The store is filled through the mirror's own store code (as a snapshot of one home) before a
real `serve` process starts; the clients are threads with one keep-alive connection each.
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from backdate.domain.registry import Snapshot
from backdate.store.db import migrate, open_engine
from backdate.store.mirror import MirrorStore

TOKEN = "bench-read-token-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed(url: str, devices: int, per_device: int) -> None:
    engine = open_engine(url)
    migrate(engine)
    t = "2026-01-05T10:00:00.000000+00:00"
    devs = [{"id": f"dev{i:05d}", "name": f"Device {i}", "name_by_user": None,
             "manufacturer": ("Acme", "Globex", "Initech", "Umbrella")[i % 4],
             "model": f"M{i % 25}", "area_id": f"area{i % 20}", "config_entries":
             [f"entry{i % 10}"], "via_device_id": None, "disabled_by": None,
             "identifiers": [["mqtt", f"dev{i}"]], "sw_version": "1.0"} for i in range(devices)]
    ents = [{"entity_id": f"sensor.device_{i}_value_{j}", "id": f"e{i}_{j}",
             "device_id": f"dev{i:05d}", "area_id": None, "platform": "mqtt",
             "disabled_by": "user" if j == 9 else None, "config_entry_id": f"entry{i % 10}",
             "name": None, "original_name": f"Value {j}", "unique_id": f"u{i}_{j}"}
            for i in range(devices) for j in range(per_device)]
    states = [{"entity_id": e["entity_id"], "state": "1.5", "attributes":
               {"unit_of_measurement": "W"}, "last_changed": t, "last_updated": t}
              for e in ents]
    MirrorStore(engine).replace("home", Snapshot(
        devices=devs, entities=ents,
        areas=[{"area_id": f"area{k}", "name": f"Area {k}"} for k in range(20)],
        config_entries=[{"entry_id": f"entry{k}", "domain": "mqtt", "title": f"E{k}"}
                        for k in range(10)], states=states, taken_at=time.time()))
    engine.dispose()


def load(port: int, paths: list[str], requests: int, clients: int) -> list[float]:
    """`requests` GETs spread over `clients` threads (paths in turn); latencies in ms."""
    lat: list[float] = []
    lock = threading.Lock()
    per = requests // clients

    def client(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        for n in range(per):
            path = paths[(k + n) % len(paths)]
            t0 = time.perf_counter()
            conn.request("GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
            resp = conn.getresponse()
            body = resp.read()
            mine.append((time.perf_counter() - t0) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"{path}: {resp.status} {body[:200]!r}")
        conn.close()
        with lock:
            lat.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--pg", default=None, help="a postgresql:// store instead of SQLite")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-serve-api-"))
    url = args.pg or f"sqlite:///{tmp / 'serve.db'}"
    t0 = time.perf_counter()
    seed(url, args.devices, 10)
    print(f"store: {url.split('@')[-1]}; {args.devices} devices, {args.devices * 10} entities "
          f"written in {time.perf_counter() - t0:.1f} s")
    port = free_port()
    config = tmp / "backdate.toml"
    config.write_text(f'[serve]\nlisten = "127.0.0.1:{port}"\nstore = "{url}"\n'
                      f'api_tokens = ["{TOKEN}"]\n')
    proc = subprocess.Popen([sys.executable, "-m", "backdate.cli", "serve", "--config",
                             str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                c.request("GET", "/livez")
                if c.getresponse().status == 200:
                    break
            except OSError:
                time.sleep(0.1)
        cases = {
            "/livez (floor)": ["/livez"],
            "/api/devices": ["/api/devices", "/api/devices?manufacturer=Acme",
                             "/api/devices?area=area3", "/api/devices?text=device 12".replace(
                                 " ", "%20"), "/api/devices?integration=mqtt&offset=500",
                             "/api/devices?model=M7&limit=50"],
            "/api/entities": ["/api/entities", "/api/entities?domain=sensor&offset=5000",
                              "/api/entities?device=dev00042", "/api/entities?disabled=true",
                              "/api/entities?area=area7", "/api/entities?platform=mqtt"],
        }
        load(port, ["/api/devices", "/api/entities"], 200, 4)  # warm up
        results = {}
        for name, paths in cases.items():
            t0 = time.perf_counter()
            lat = load(port, paths, args.requests, args.clients)
            wall = time.perf_counter() - t0
            results[name] = {"p50_ms": round(statistics.median(lat), 1),
                             "p99_ms": round(pct(lat, 0.99), 1),
                             "requests_per_s": round(len(lat) / wall)}
            print(f"{name:16s} p50 {results[name]['p50_ms']:7.1f} ms  p99 "
                  f"{results[name]['p99_ms']:7.1f} ms  {results[name]['requests_per_s']:6d} "
                  f"req/s  ({len(lat)} requests, {args.clients} clients)")
        print(json.dumps(results))
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
