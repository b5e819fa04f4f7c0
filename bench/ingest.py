"""How fast `backdate serve` ingests events, beside a plain INSERT of the same rows.

Not a test. In one run:

* SQLite, one `serve` process: batches of 100 events posted by --clients loader processes
  over keep-alive HTTP; events/s (acknowledged = committed);
* PostgreSQL, two `serve` processes sharing one database, the loaders alternating between
  them (skipped with --no-pg);
* p50/p99 answer time at a paced 1,000 events/s (10 batches of 100 per second) on SQLite;
* the reference: the same rows (same columns, same payload text) inserted with a plain
  executemany INSERT, 100 rows per transaction, into a table without indexes in the same
  database, so the figures say what deduplication, gap tracking and HTTP cost.

Run: .venv/bin/python bench/ingest.py [--events 50000] [--clients 3] [--no-pg]
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing as mp
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOST = "127.0.0.1"
KEY = "bench-ingest-key-0123456789"
TOKEN = "bench-read-token-0123456789"
PG = "postgresql://postgres@127.0.0.1:5432"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def start_serve(tmp: Path, store: str) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    cfg = tmp / f"serve-{port}.toml"
    cfg.write_text(f'[serve]\nlisten = "{HOST}:{port}"\nstore = "{store}"\n'
                   f'api_tokens = ["{TOKEN}"]\n[serve.ingest]\napi_keys = ["{KEY}"]\n')
    proc = subprocess.Popen([sys.executable, "-m", "backdate.cli", "serve", "--config",
                             str(cfg)], start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/api/health", headers={"Authorization": f"Bearer {TOKEN}"})
            if conn.getresponse().status == 200:
                return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("serve did not start")


def batches(worker: int, count: int, size: int = 100) -> list[bytes]:
    """The worker's events: 20 devices of its own, numbers from 1, a typical small payload."""
    out, seq = [], {}
    for b in range(count):
        events = []
        for i in range(size):
            device = f"w{worker}-d{(b * size + i) % 20:02d}"
            seq[device] = seq.get(device, 0) + 1
            events.append({"device_id": device, "source_vendor": "bench", "epoch": 1,
                           "sequence_number": seq[device], "event_type": "State_Update",
                           "timestamp": "2026-01-01T00:00:00Z", "temperature_f": 70.5,
                           "equipment_status": "HEAT", "n": b * size + i})
        out.append(json.dumps(events).encode())
    return out


def loader(worker: int, ports: list[int], count: int, start: mp.Event,  # type: ignore[valid-type]
           results: mp.Queue) -> None:  # type: ignore[type-arg]
    bodies = batches(worker, count)
    conns = [http.client.HTTPConnection(HOST, p, timeout=60) for p in ports]
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    start.wait()  # type: ignore[attr-defined]
    lat = []
    for i, body in enumerate(bodies):
        conn = conns[(i + worker) % len(conns)]
        t = time.perf_counter()
        conn.request("POST", "/ingest/v1/events:batch", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        lat.append(time.perf_counter() - t)
        if resp.status != 200 or json.loads(data)["accepted"] != 100:
            results.put(("error", f"HTTP {resp.status}: {data[:200]!r}"))
            return
    results.put(("ok", lat))


def throughput(ports: list[int], events: int, clients: int) -> float:
    per = events // 100 // clients
    start = mp.Event()
    results: mp.Queue = mp.Queue()  # type: ignore[type-arg]
    procs = [mp.Process(target=loader, args=(w, ports, per, start, results))
             for w in range(clients)]
    for p in procs:
        p.start()
    time.sleep(1.0 + per / 400)  # let the loaders build their bodies
    t0 = time.perf_counter()
    start.set()
    got = [results.get(timeout=600) for _ in procs]
    elapsed = time.perf_counter() - t0
    for p in procs:
        p.join(10)
    for kind, value in got:
        if kind != "ok":
            raise SystemExit(f"load failed: {value}")
    return per * clients * 100 / elapsed


def paced(port: int, seconds: float = 10.0, rate: float = 1000.0) -> tuple[float, float, float]:
    """Latency at `rate` events/s: one batch of 100 every 100/rate s, on schedule."""
    bodies = batches(99, int(seconds * rate / 100))
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    lat = []
    t0 = time.perf_counter()
    for i, body in enumerate(bodies):
        due = t0 + i * 100 / rate
        now = time.perf_counter()
        if due > now:
            time.sleep(due - now)
        t = time.perf_counter()
        conn.request("POST", "/ingest/v1/events:batch", body=body, headers=headers)
        resp = conn.getresponse()
        resp.read()
        lat.append((time.perf_counter() - t) * 1000)
    lat.sort()
    achieved = len(bodies) * 100 / (time.perf_counter() - t0)
    return statistics.median(lat), lat[int(len(lat) * 0.99) - 1], achieved


def plain_rows(events: int) -> list[tuple[object, ...]]:
    from backdate.domain.delivery import parse_event

    rows = []
    for body in batches(0, events // 100):
        for i, e in enumerate(json.loads(body)):
            w = parse_event(e, i)
            rows.append((1, w.seq, False, w.digest, w.event_type, w.timestamp, time.time(),
                         w.raw))
    return rows


PLAIN_DDL = ("CREATE TABLE bench_plain (id INTEGER PRIMARY KEY, stream_id BIGINT, seq BIGINT, "
             "counter_reset BOOLEAN, digest VARCHAR(32), event_type VARCHAR(100), "
             "timestamp VARCHAR(64), received_at FLOAT, payload TEXT)")
PLAIN_INSERT = ("INSERT INTO bench_plain (stream_id, seq, counter_reset, digest, event_type, "
                "timestamp, received_at, payload) VALUES ({})")


def plain_sqlite(path: Path, rows: list[tuple[object, ...]]) -> float:
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute(PLAIN_DDL)
    sql = PLAIN_INSERT.format(",".join("?" * 8))
    t0 = time.perf_counter()
    for i in range(0, len(rows), 100):
        con.execute("BEGIN IMMEDIATE")
        con.executemany(sql, rows[i:i + 100])
        con.execute("COMMIT")
    rate = len(rows) / (time.perf_counter() - t0)
    con.close()
    return rate


def plain_pg(dsn: str, rows: list[tuple[object, ...]]) -> float:
    import psycopg

    with psycopg.connect(dsn) as con:
        con.execute(PLAIN_DDL.replace("INTEGER PRIMARY KEY", "BIGSERIAL PRIMARY KEY"))
        con.commit()
        sql = PLAIN_INSERT.format(",".join(["%s"] * 8))
        t0 = time.perf_counter()
        for i in range(0, len(rows), 100):
            with con.cursor() as cur:
                cur.executemany(sql, rows[i:i + 100])
            con.commit()
        return len(rows) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=50_000)
    ap.add_argument("--clients", type=int, default=3)
    ap.add_argument("--no-pg", action="store_true")
    args = ap.parse_args()
    rows = plain_rows(args.events)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        db = tmp / "serve.db"
        proc, port = start_serve(tmp, f"sqlite:///{db}")
        try:
            rate = throughput([port], args.events, args.clients)
            p50, p99, achieved = paced(port)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        ref = plain_sqlite(db, rows)
        print(f"SQLite, 1 serve:       {rate:9,.0f} events/s acknowledged "
              f"(plain INSERT, 100 rows/transaction, same database: {ref:9,.0f} rows/s)")
        print(f"SQLite, paced {achieved:,.0f} events/s: answer p50 {p50:.1f} ms, "
              f"p99 {p99:.1f} ms")
        if args.no_pg:
            return
        import psycopg

        name = f"backdate_bench_{os.getpid()}"
        with psycopg.connect(f"{PG}/postgres", autocommit=True) as con:
            con.execute(f'CREATE DATABASE "{name}"')
        try:
            procs = [start_serve(tmp, f"{PG}/{name}") for _ in range(2)]
            try:
                rate = throughput([p for _, p in procs], args.events, args.clients)
            finally:
                for proc, _ in procs:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(30)
            ref = plain_pg(f"{PG}/{name}", rows)
            print(f"PostgreSQL, 2 serve:   {rate:9,.0f} events/s acknowledged "
                  f"(plain INSERT, 100 rows/transaction, same database: {ref:9,.0f} rows/s)")
        finally:
            with psycopg.connect(f"{PG}/postgres", autocommit=True) as con:
                con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
