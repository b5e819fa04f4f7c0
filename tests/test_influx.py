"""InfluxDB as source and target, against a real InfluxDB 1.x (tests/influx_service.py).

Every expected number comes from InfluxDB itself (its own `integral()` over the whole range) or
from the samples written, computed here independently. The 2.x path is tested against a local
HTTP server that records the requests and answers in 2.x's CSV/JSON format (no 2.x server can
run here).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import influx_fixtures
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from influx_fixtures import InfluxDatabase
from influx_service import InfluxServer, free_port

from backdate.errors import InputError, TargetError
from backdate.models import Kind
from backdate.sources.base import SourceRange
from backdate.sources.influx import influxql_hour_integrals, open_influx_source
from backdate.targets.fresh import create_recorder_sqlite
from backdate.targets.influx import line_protocol, open_influx_target

REPO = Path(__file__).resolve().parents[1]
EXE = REPO / ".venv" / "bin" / "backdate"
BACKDATE = [str(EXE)] if EXE.exists() else [sys.executable, "-m", "backdate.cli"]
influx = influx_fixtures.influx  # the session's private influxd
influx_db = influx_fixtures.influx_db  # a fresh database per test

T0 = int(datetime(2024, 3, 1, tzinfo=UTC).timestamp())
H = 3600

# Gaps in the power samples (seconds after T0): inside an hour, across three hours and a chunk
# edge, and one that ends exactly on an hour.
GAPS = [(5 * H + 600, 5 * H + 2400), (20 * H + 900, 23 * H + 300), (30 * H + 1200, 32 * H)]


def backdate(*args: object) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([*BACKDATE, *(str(a) for a in args)], capture_output=True, text=True,
                          timeout=300, env=env, check=False, stdin=subprocess.DEVNULL)


def said(proc: subprocess.CompletedProcess[str]) -> str:
    """What the CLI printed, with Rich's line wrapping undone."""
    return " ".join((proc.stdout + proc.stderr).split())


def powerwall_samples(days: float = 2.0, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Watts every 5-10 s (Powerwall-Dashboard's raw.http style), with the GAPS left out."""
    rng = random.Random(seed)
    times, t = [], float(T0) + 3.0
    while t < T0 + days * 86400:
        if not any(T0 + a <= t < T0 + b for a, b in GAPS):
            times.append(t)
        t += rng.uniform(5.0, 10.0)
    tt = np.array(times)
    hours = (tt - T0) / H
    watts = 600 + 450 * np.sin(hours / 24 * 2 * math.pi) + np.array(
        [rng.gauss(0, 80) for _ in times])
    return np.round(tt, 3), np.round(np.maximum(watts, 0.0), 2)


def write_power(db: InfluxDatabase, times: np.ndarray, watts: np.ndarray,
                measurement: str = "http", tags: str = "") -> None:
    db.write([f"{measurement}{tags} home={w!r} {int(round(t * 1000))}"
              for t, w in zip(times.tolist(), watts.tolist(), strict=True)], precision="ms")


def influx_hours(db: InfluxDatabase, q_where: str = "", measurement: str = "http"
                 ) -> dict[int, float]:
    """InfluxDB's own hourly integral in one query over everything."""
    where = f"WHERE {q_where}" if q_where else "WHERE time > 0"
    rows = db.points(f"SELECT integral(home, 1h) FROM {measurement} {where} "
                     "GROUP BY time(1h) fill(none)")
    return {int(t): float(v) for t, v in rows}


def exact_hours(times: np.ndarray, watts: np.ndarray) -> dict[int, float]:
    """Wh per hour of the samples joined by straight lines (hours that contain no gap)."""
    out = {}
    first_h = int(times[0] // H * H)
    for h in range(first_h + H, int(times[-1] // H * H), H):
        grid = np.concatenate([[h], times[(times > h) & (times < h + H)], [h + H]])
        values = np.interp(grid, times, watts)
        out[h] = float(np.trapezoid(values, grid) / H)
    return out


def touches_gap(h: int) -> bool:
    return any(T0 + a - H < h + H and h < T0 + b + H for a, b in GAPS)


def src_url(db: InfluxDatabase, query: str) -> str:
    return f"influxdb://{db.host_port}/{db.name}?{query}"


# ------------------------------------------------------------------------- power -> hours


def test_power_hours_equal_influx_integral(influx_db: InfluxDatabase) -> None:
    """Chunked reading (3-hour chunks, the 20:15-23:05 gap across the 21:00 chunk edge) gives
    exactly InfluxDB's own one-query integral for every hour; hours without samples have no
    reading (no zeros); hours away from gaps equal the trapezoid of the samples computed
    here."""
    times, watts = powerwall_samples()
    write_power(influx_db, times, watts)
    expected = influx_hours(influx_db)
    chunk = 0.125 * 86400
    first_hour = int(times[0] // H * H)
    edges = [first_hour + k * chunk for k in range(1, 17)]
    assert any(T0 + a < edge < T0 + b for a, b in GAPS for edge in edges), \
        "a gap must cross a chunk edge"
    source = open_influx_source(src_url(influx_db, "measurement=http&field=home&kind=power"
                                                   "&unit=W&chunk_days=0.125"))
    try:
        [series] = source.read(SourceRange())
    finally:
        source.close()
    assert series.kind is Kind.DELTA and series.unit == "Wh"
    assert series.statistic_id == "backdate:http_home"
    got = dict(zip(series.times.astype(int).tolist(), series.values.tolist(), strict=True))
    assert set(got) == set(expected)
    for h, v in expected.items():
        assert got[h] == pytest.approx(v, rel=1e-12, abs=1e-9), datetime.fromtimestamp(h, UTC)
    assert np.array_equal(series.ends, series.times + H)
    # Whole hours inside the long gap have no reading at all.
    for h in range(T0 + 21 * H, T0 + 23 * H, H):
        assert h not in got
    exact = exact_hours(times, watts)
    checked = 0
    for h, v in exact.items():
        if not touches_gap(h):
            assert got[h] == pytest.approx(v, rel=1e-9), datetime.fromtimestamp(h, UTC)
            checked += 1
    assert checked > 30


def test_power_window_is_whole_hours_and_independent(influx_db: InfluxDatabase) -> None:
    """A window reads the whole hours inside it, each with the same energy as a read of
    everything (the hour's edges reach the neighbouring samples)."""
    times, watts = powerwall_samples(days=1.0)
    write_power(influx_db, times, watts)
    expected = influx_hours(influx_db)
    source = open_influx_source(src_url(influx_db, "measurement=http&field=home"))
    try:
        [part] = source.read(SourceRange(T0 + 3 * H + 1200, T0 + 9 * H + 5))
        [gap] = source.read(SourceRange(T0 + 5 * H + 900, T0 + 5 * H + 2000))
    finally:
        source.close()
    assert part.times.astype(int).tolist() == list(range(T0 + 4 * H, T0 + 9 * H, H))
    for t, v in zip(part.times.astype(int).tolist(), part.values.tolist(), strict=True):
        assert v == pytest.approx(expected[t], rel=1e-12)
    assert len(gap) == 0  # no whole hour inside: nothing, never a zero


def test_raw_power_mode(influx_db: InfluxDatabase, tmp_path: Path) -> None:
    """integral=backdate: every sample comes back as a POWER reading, and backdate's engine
    adds nothing across the 3-hour gap where InfluxDB bridges it into the hour after."""
    times, watts = powerwall_samples()
    write_power(influx_db, times, watts)
    spec = src_url(influx_db, "measurement=http&field=home&integral=backdate&chunk_days=0.3"
                              "&statistic_id=backdate:raw")
    source = open_influx_source(spec)
    [series] = source.read(SourceRange())
    source.close()
    assert series.kind is Kind.POWER and series.unit == "W" and series.ends is None
    assert np.array_equal(series.times, times) and np.array_equal(series.values, watts)
    db = create_recorder_sqlite(tmp_path / "home-assistant_v2.db")
    proc = backdate("import", spec, "--to", f"sqlite:///{db}", "--yes", "--no-backup")
    assert proc.returncode == 0, said(proc)
    got = _hourly_changes(db, "backdate:raw")
    exact = exact_hours(times, watts)
    for h, v in exact.items():
        if not touches_gap(h):
            assert got[h] == pytest.approx(v / 1000, rel=1e-9)
    for h in range(T0 + 21 * H, T0 + 23 * H, H):
        assert got.get(h, 0.0) == 0.0
    # InfluxDB's hour 23:00 also holds the straight line across the gap from 21:00 on.
    i = int(np.searchsorted(times, T0 + 23 * H))
    (t0, w0), (t1, w1) = (times[i - 1], watts[i - 1]), (times[i], watts[i])
    w21 = w0 + (w1 - w0) * (T0 + 21 * H - t0) / (t1 - t0)
    bridged = (w21 + w1) / 2 * (t1 - (T0 + 21 * H)) / H
    assert bridged > 500
    influx_own = influx_hours(influx_db)
    assert influx_own[T0 + 23 * H] - got[T0 + 23 * H] * 1000 == pytest.approx(bridged, rel=1e-9)


def _hourly_changes(db: Path, statistic_id: str, unit_wanted: str = "kWh") -> dict[int, float]:
    con = sqlite3.connect(db)
    try:
        rows = con.execute(
            "SELECT s.start_ts, s.sum FROM statistics s JOIN statistics_meta m "
            "ON m.id = s.metadata_id WHERE m.statistic_id = ? ORDER BY s.start_ts",
            (statistic_id,)).fetchall()
        unit = con.execute("SELECT unit_of_measurement FROM statistics_meta WHERE "
                           "statistic_id = ?", (statistic_id,)).fetchone()[0]
    finally:
        con.close()
    assert unit == unit_wanted
    out, prev = {}, 0.0
    for start, total in rows:
        out[int(start)] = total - prev
        prev = total
    return out


def _assert_changes(got: dict[int, float], expected: dict[int, float]) -> None:
    assert got, "nothing written"
    for h, change in got.items():
        assert change == pytest.approx(expected.get(h, 0.0), abs=1e-9), (
            datetime.fromtimestamp(h, UTC))
    for h, v in expected.items():
        assert got.get(h, 0.0) == pytest.approx(v, abs=1e-9)


def test_import_power_into_fresh_recorder(influx_db: InfluxDatabase, tmp_path: Path) -> None:
    """`backdate import influxdb://... --to sqlite:///...`: every hour's sum grows by InfluxDB's
    own integral in kWh; the whole run, then a window of it again, which changes nothing."""
    times, watts = powerwall_samples()
    write_power(influx_db, times, watts)
    expected = {h: v / 1000 for h, v in influx_hours(influx_db).items()}
    db = create_recorder_sqlite(tmp_path / "home-assistant_v2.db")
    spec = src_url(influx_db, "measurement=http&field=home&statistic_id=backdate:powerwall_home"
                              "&name=Home")
    proc = backdate("import", spec, "--to", f"sqlite:///{db}", "--yes", "--no-backup")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_changes(_hourly_changes(db, "backdate:powerwall_home"), expected)
    proc = backdate("import", spec, "--to", f"sqlite:///{db}", "--yes", "--no-backup",
                    "--start", "2024-03-01T10:00:00Z", "--end", "2024-03-02T10:00:00Z")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    _assert_changes(_hourly_changes(db, "backdate:powerwall_home"), expected)


def test_delta_and_cumulative_fields(influx_db: InfluxDatabase, tmp_path: Path) -> None:
    """15-minute Wh amounts (kind=delta, interval=15m) and a kWh meter every 10 minutes
    (kind=cumulative) become hourly sums equal to the amounts written."""
    rng = random.Random(3)
    quarters = [(T0 + i * 900, round(rng.uniform(50, 400), 1)) for i in range(4 * 30)]
    quarters = [q for q in quarters if not (T0 + 10 * H <= q[0] < T0 + 12 * H)]  # missing
    influx_db.write([f"meter,mp=1 wh={v!r} {t}" for t, v in quarters])
    reading, readings = 1000.0, []
    for i in range(6 * 30 + 1):
        readings.append((T0 + i * 600, round(reading, 3)))
        reading += rng.uniform(0.01, 0.2)
    influx_db.write([f"main kwh={v!r} {t}" for t, v in readings])
    db = create_recorder_sqlite(tmp_path / "home-assistant_v2.db")
    to = f"sqlite:///{db}"
    delta = src_url(influx_db, "measurement=meter&field=wh&kind=delta&unit=Wh&interval=15m"
                               "&where=mp%3D1&statistic_id=backdate:quarters")
    cumulative = src_url(influx_db, "measurement=main&field=kwh&kind=cumulative&unit=kWh")
    for spec in (delta, cumulative):
        proc = backdate("import", spec, "--to", to, "--yes", "--no-backup")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    per_hour: dict[int, float] = {}
    for t, v in quarters:  # a new statistic keeps the unit its input declares: Wh
        per_hour[t // H * H] = per_hour.get(t // H * H, 0.0) + v
    got = _hourly_changes(db, "backdate:quarters", "Wh")
    assert all(got.get(h, 0.0) == 0.0 for h in (T0 + 10 * H, T0 + 11 * H))
    _assert_changes(got, per_hour)
    meter = dict(readings)
    growth = {h: meter[h + H] - meter[h] for h in range(T0, T0 + 30 * H, H)}
    _assert_changes(_hourly_changes(db, "backdate:main_kwh"), growth)


def test_tag_filters(influx_db: InfluxDatabase) -> None:
    """where= picks one series (= and !=); two series without a filter or an unknown tag are
    refused with a clear message."""
    times, watts = powerwall_samples(days=0.5, seed=1)
    write_power(influx_db, times, watts, "power", ",site=a")
    write_power(influx_db, times, watts * 2 + 7, "power", ",site=b")
    expected = influx_hours(influx_db, "site = 'b'", measurement="power")
    for where in ("where=site%3Db", "where=site!%3Da"):
        source = open_influx_source(src_url(influx_db, f"measurement=power&field=home&{where}"))
        [series] = source.read(SourceRange())
        source.close()
        got = dict(zip(series.times.astype(int).tolist(), series.values.tolist(), strict=True))
        assert got == pytest.approx(expected, rel=1e-12)
    proc = backdate("plan", src_url(influx_db, "measurement=power&field=home"), "--to",
                    "sqlite:///unused.db")
    assert proc.returncode == 1 and "matches 2 series" in said(proc)
    proc = backdate("plan", src_url(influx_db, "measurement=power&field=home&where=room%3Dx"),
                    "--to", "sqlite:///unused.db")
    assert proc.returncode == 3 and "tag 'room' not found" in said(proc)


def test_source_errors(influx_db: InfluxDatabase, tmp_path: Path) -> None:
    """Unknown database, measurement or field, InfluxDB's own error and a server that is down:
    exit 3 naming the problem, the password never shown, nothing written."""
    influx_db.write([f"http home=1 {T0}", f"http home=2 {T0 + 10}", f"http note=\"x\" {T0}"])
    db = create_recorder_sqlite(tmp_path / "home-assistant_v2.db")
    before = db.read_bytes()
    hp = influx_db.host_port
    cases = {
        f"influxdb://u:s3cret@{hp}/nope?measurement=http&field=home": "database 'nope' not found",
        f"influxdb://u:s3cret@{hp}/{influx_db.name}?measurement=xx&field=home":
            "measurement 'xx' not found",
        f"influxdb://u:s3cret@{hp}/{influx_db.name}?measurement=http&field=solar":
            "field 'solar' not found in measurement 'http' (it has: home, note)",
        f"influxdb://u:s3cret@{hp}/{influx_db.name}?measurement=http&field=note":
            "holds string values",
        f"influxdb://u:s3cret@{hp}/{influx_db.name}?measurement=http&field=home&rp=nosuch":
            "retention policy not found",
        f"influxdb://u:s3cret@127.0.0.1:{free_port()}/x?measurement=http&field=home&retries=1":
            "cannot reach InfluxDB at influxdb://u:***@127.0.0.1",
    }
    for spec, message in cases.items():
        proc = backdate("import", spec, "--to", f"sqlite:///{db}", "--yes", "--no-backup")
        out = proc.stdout + proc.stderr
        assert proc.returncode == 3, out
        assert message in " ".join(out.split()), out
        assert "s3cret" not in out
    assert db.read_bytes() == before
    proc = backdate("plan", f"influxdb://{hp}/{influx_db.name}?measurement=http&field=home"
                            "&kind=power&unit=kWh", "--to", f"sqlite:///{db}")
    assert proc.returncode == 2 and "power unit" in said(proc)


def test_credentials(tmp_path: Path) -> None:
    """An InfluxDB with authentication on: user and password from the URL read it; a wrong
    password is InfluxDB's 401 with its message, exit 3, the password never shown."""
    with InfluxServer(tmp_path / "auth", admin=("admin", "pa55:word")) as server:
        with server.client() as client:
            client.query('CREATE DATABASE "pw"', post=True)
            client.write("pw", [f"http home=1000 {T0 + k * 600}" for k in range(13)])
        good = f"influxdb://admin:pa55%3Aword@{server.host_port}/pw?measurement=http&field=home"
        source = open_influx_source(good)
        [series] = source.read(SourceRange())
        source.close()
        assert series.times.tolist() == [T0, T0 + H]
        assert series.values.tolist() == pytest.approx([1000.0] * 2, rel=1e-12)
        assert "pa55" not in source.url
        db = create_recorder_sqlite(tmp_path / "home-assistant_v2.db")
        proc = backdate("import", good.replace("pa55%3Aword", "wrong%3Aone"), "--to",
                        f"sqlite:///{db}", "--yes", "--no-backup")
        assert proc.returncode == 3, said(proc)
        assert "HTTP 401: authorization failed" in said(proc)
        assert "wrong" not in said(proc) and "admin:***@" in said(proc)
        target = open_influx_target(good.split("?")[0] + "?retries=1")
        assert target.write_readings("7", np.array([T0 * 1.0]), np.array([T0 + 900.0]),
                                     np.array([0.5])) == 1
        assert target.latest("7") == T0
        target.close()


# -------------------------------------------------------------------------------- target


def _count_posts(target: Any) -> list[str]:
    seen: list[str] = []
    target.http.http.event_hooks["request"].append(
        lambda request: seen.append(request.url.path) if request.method == "POST" else None)
    return seen


def _stored(db: InfluxDatabase, mp: str) -> list[list[Any]]:
    return db.points("SELECT consumption_kwh, consumption_wh, resolution FROM "
                     f"electricity_consumption WHERE metering_point = '{mp}'")


def test_target_writes_idempotent_batched(influx: InfluxServer) -> None:
    """Points in the WattiVahti layout, 10 per POST; the same points twice hold the same data;
    a corrected value replaces the old one; latest() follows; read_readings round-trips."""
    client = influx.client()
    name = f"t_target_{os.getpid()}_{time.monotonic_ns()}"
    target = open_influx_target(f"influxdb://{influx.host_port}/{name}?batch=10")
    try:
        assert target.latest("643007") is None  # the database does not exist yet
        starts = np.arange(T0, T0 + 24 * H, 900.0)
        kwh = np.round(np.linspace(0.1, 0.9, len(starts)), 4)
        posts = _count_posts(target)
        assert target.write_readings("643007", starts, starts + 900, kwh) == 96
        assert posts.count("/write") == 10
        db = InfluxDatabase(influx, client, name)
        rows = _stored(db, "643007")
        assert [r[0] for r in rows] == starts.astype(int).tolist()
        assert [r[1] for r in rows] == pytest.approx(kwh.tolist())
        assert [r[2] for r in rows] == [v * 1000 for v in kwh.tolist()]
        assert {r[3] for r in rows} == {"PT15MIN"}
        assert target.latest("643007") == starts[-1]
        assert target.latest("other") is None
        target.write_readings("643007", starts, starts + 900, kwh)
        assert _stored(db, "643007") == rows
        fixed = kwh.copy()
        fixed[40] = 7.25
        target.write_readings("643007", starts[40:41], starts[40:41] + 900, fixed[40:41])
        again = _stored(db, "643007")
        assert len(again) == 96 and again[40][1:3] == [7.25, 7250.0]
        assert again[:40] == rows[:40] and again[41:] == rows[41:]
        hourly = np.arange(T0 + 24 * H, T0 + 26 * H, H, dtype=float)
        target.write_readings("643007", hourly, hourly + H, np.array([1.5, 2.5]))
        series = target.read_readings("643007", T0 + 23 * H, None)
        assert series.kind is Kind.DELTA and series.unit == "kWh"
        assert series.times.tolist() == [*starts[-4:].tolist(), *hourly.tolist()]
        assert (series.ends - series.times).tolist() == [900.0] * 4 + [3600.0] * 2
        assert series.values.tolist() == [*fixed[-4:].tolist(), 1.5, 2.5]
        assert target.latest("643007") == hourly[-1]
    finally:
        target.close()
        client.drop_database(name)
        client.close()


@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mp=st.text(st.sampled_from("ab9 ,=-_'\"é/"), min_size=1, max_size=12),
    values=st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=20))
def test_target_round_trips_any_metering_point(influx: InfluxServer, mp: str,
                                                values: list[float]) -> None:
    """Line protocol and InfluxQL escaping: any metering point text and any amount come back
    exactly (a fresh database per example)."""
    client = influx.client()
    name = client.create_database()
    target = open_influx_target(f"influxdb://{influx.host_port}/{name}")
    try:
        starts = T0 + H * np.arange(len(values), dtype=float)
        target.write_readings(mp, starts, starts + H, np.array(values))
        series = target.read_readings(mp, None, None)
        assert series.times.tolist() == starts.tolist()
        assert series.values.tolist() == values
        assert target.latest(mp) == starts[-1]
        with pytest.raises(InputError, match="backslash"):
            target.write_readings(mp + "\\", starts, starts + H, np.array(values))
    finally:
        target.close()
        client.drop_database(name)
        client.close()


def test_target_retries_until_influxdb_is_up(tmp_path: Path) -> None:
    """Connection refused, then InfluxDB starts: the write is retried with backoff and lands.
    A server that stays down ends in TargetError (exit 3) without the password."""
    port = free_port()
    server = InfluxServer(tmp_path / "late", port=port)
    starter = threading.Timer(1.0, server.start)
    target = open_influx_target(f"influxdb://u:pw123@127.0.0.1:{port}/late?retries=9"
                                "&backoff=0.25")
    try:
        starter.start()
        starts = np.array([T0, T0 + 900.0])
        assert target.write_readings("1", starts, starts + 900, np.array([0.5, 0.25])) == 2
        with server.client() as client:
            assert client.points("SELECT consumption_kwh FROM electricity_consumption",
                                 "late") == [[T0, 0.5], [T0 + 900, 0.25]]
    finally:
        starter.join()
        target.close()
        server.stop()
    down = open_influx_target(f"influxdb://u:pw123@127.0.0.1:{free_port()}/x?retries=3"
                              "&backoff=0.01")
    with pytest.raises(TargetError) as err:
        down.write_readings("1", np.array([T0]), np.array([T0 + 900.0]), np.array([1.0]))
    assert err.value.exit_code == 3 and "cannot reach InfluxDB" in str(err.value)
    assert "pw123" not in str(err.value) and down.url.startswith("influxdb://u:***@")


# ------------------------------------------------------------------ 2.x: recorded requests


class Recorder:
    """A local HTTP server that records requests and answers with `answer(request)`."""

    def __init__(self, answer: Callable[[dict[str, Any]], tuple[int, str, str]]):
        self.requests: list[dict[str, Any]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                parts = urlsplit(self.path)
                req = {"method": self.command, "path": parts.path,
                       "query": {k: v[-1] for k, v in parse_qs(parts.query).items()},
                       "headers": {k.lower(): v for k, v in self.headers.items()},
                       "body": self.rfile.read(length).decode()}
                recorder.requests.append(req)
                status, ctype, text = answer(req)
                data = text.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _any

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorder() -> Iterator[Callable[..., Recorder]]:
    made: list[Recorder] = []

    def make(answer: Callable[[dict[str, Any]], tuple[int, str, str]]) -> Recorder:
        made.append(Recorder(answer))
        return made[-1]

    yield make
    for r in made:
        r.close()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _flux_range(flux: str) -> tuple[float, float]:
    m = re.search(r"range\(start: ([^,)]+)(?:, stop: ([^)]+))?\)", flux)
    assert m, flux

    def ts(text: str | None, default: float) -> float:
        if text is None or text == "0":
            return default
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()

    return ts(m.group(1), 0.0), ts(m.group(2), 4e9)


def _iso_ms(t: float) -> str:
    whole = math.floor(t)
    ms = round((t - whole) * 1000)
    return f"{datetime.fromtimestamp(whole, UTC):%Y-%m-%dT%H:%M:%S}.{ms:03d}Z"


def test_client_integral_equals_influxql_on_a_real_server(influx_db: InfluxDatabase) -> None:
    """The client-side rule used for 2.x (influxql_hour_integrals) gives, for every hour, what
    InfluxDB 1.x's own `integral(home, 1h) GROUP BY time(1h)` gives on the same samples: the
    Powerwall series with its gaps (inside an hour, over three hours, ending on an hour)."""
    times, watts = powerwall_samples()
    write_power(influx_db, times, watts)
    server = influx_hours(influx_db)
    starts, wh = influxql_hour_integrals(times, watts)
    got = dict(zip(starts.astype(int).tolist(), wh.tolist(), strict=True))
    assert set(got) == set(server)
    for h, v in server.items():
        assert got[h] == pytest.approx(v, rel=1e-9, abs=1e-9), datetime.fromtimestamp(h, UTC)
    assert T0 + 23 * H in got and T0 + 21 * H not in got  # the gap lands after it, as 1.x


@st.composite
def _sample_sets(draw: st.DrawFn) -> tuple[list[int], list[float]]:
    """Sample times in whole seconds over a few hours: some exactly on hour boundaries, some
    clustered, some hours apart (multi-hour gaps); values of either sign."""
    base = T0 + draw(st.integers(0, 3)) * H
    offsets = draw(st.lists(st.one_of(st.integers(0, 6 * H), st.sampled_from(
        [0, H, 2 * H, 3 * H, H - 1, H + 1, 5 * H])), min_size=1, max_size=40, unique=True))
    times = sorted(base + o for o in offsets)
    values = draw(st.lists(st.floats(-5000, 5000, allow_nan=False).map(lambda x: round(x, 3)),
                           min_size=len(times), max_size=len(times)))
    return times, values


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(samples=_sample_sets())
def test_client_integral_rule_matches_influxql_property(influx_db: InfluxDatabase,
                                                        samples: tuple[list[int], list[float]]
                                                        ) -> None:
    """For any samples (hour-edge samples, single samples in an hour, multi-hour gaps, a last
    sample exactly on an hour), the client rule equals the real 1.x server's hourly integral
    over the whole-hour query range the source uses."""
    times, values = samples
    measurement = f"p{uuid.uuid4().hex}"  # not `random`: hypothesis seeds it
    influx_db.write([f"{measurement} home={v!r} {t}" for t, v in zip(times, values,
                                                                      strict=True)])
    lo, hi = times[0] // H * H, times[-1] // H * H + 2 * H
    server = influx_hours(influx_db, f"time >= {lo}s AND time < {hi}s", measurement)
    starts, wh = influxql_hour_integrals(np.array(times, float), np.array(values))
    got = dict(zip(starts.astype(int).tolist(), wh.tolist(), strict=True))
    assert set(got) == set(server), (times, values)
    for h, v in server.items():
        assert got[h] == pytest.approx(v, rel=1e-9, abs=1e-6), (h, times, values)


def test_v2_source_flux_requests_and_csv(recorder: Callable[..., Recorder],
                                         influx_db: InfluxDatabase,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """influxdb2:// power: Token from INFLUXDB_TOKEN, org in the URL; Flux reads the raw
    samples chunk by chunk (reaching to the samples around each chunk) and the hours come out
    equal to what InfluxDB 1.x's integral gives for the same samples (the real 1.x server
    holds them too): the 2.x path has 1.x's semantics."""
    times, watts = powerwall_samples(days=1.0)
    write_power(influx_db, times, watts)
    expected = influx_hours(influx_db)

    def rows(lo: float, hi: float) -> list[tuple[float, float]]:
        keep = (times >= lo) & (times < hi)
        return list(zip(times[keep].tolist(), watts[keep].tolist(), strict=True))

    def answer(req: dict[str, Any]) -> tuple[int, str, str]:
        flux = json.loads(req["body"])["query"]
        if "schema.measurementFieldKeys" in flux:
            return 200, "text/csv", (",result,table,_value\r\n,_result,0,home\r\n"
                                     ",_result,0,solar\r\n")
        found = rows(*_flux_range(flux))
        if "|> first()" in flux or "|> last()" in flux:
            found = found[:1] if "first()" in flux else found[-1:]
        if not found:
            return 200, "text/csv", "\r\n"
        half = max(1, len(found) // 2)  # two header blocks of one table
        text = ",result,table,_time,_value\r\n" + "".join(
            f",_result,0,{_iso_ms(t)},{v!r}\r\n" for t, v in found[:half])
        if found[half:]:
            text += "\r\n,result,table,_time,_value\r\n" + "".join(
                f",_result,0,{_iso_ms(t)},{v!r}\r\n" for t, v in found[half:])
        return 200, "text/csv", text

    server = recorder(answer)
    monkeypatch.setenv("INFLUXDB_TOKEN", "tok-SECRET")
    source = open_influx_source(f"influxdb2://127.0.0.1:{server.port}/pw?org=home"
                                "&measurement=http&field=home&where=site%3Da&chunk_days=0.125")
    assert "SECRET" not in source.url
    [series] = source.read(SourceRange(None, None))
    source.close()
    got = dict(zip(series.times.astype(int).tolist(), series.values.tolist(), strict=True))
    assert set(got) == set(expected)
    for h, v in expected.items():
        assert got[h] == pytest.approx(v, rel=1e-9), datetime.fromtimestamp(h, UTC)
    assert series.unit == "Wh" and series.kind is Kind.DELTA
    for req in server.requests:
        assert req["method"] == "POST" and req["path"] == "/api/v2/query"
        assert req["query"] == {"org": "home"}
        assert req["headers"]["authorization"] == "Token tok-SECRET"
        assert req["headers"]["accept"] == "application/csv"
        body = json.loads(req["body"])
        assert body["type"] == "flux" and body["dialect"]["annotations"] == []
    queries = [json.loads(r["body"])["query"] for r in server.requests]
    assert not any("aggregateWindow" in q or "integral" in q for q in queries)
    raw = [q for q in queries if "first()" not in q and "last()" not in q
           and "schema." not in q]
    assert len(raw) == 8  # eight 3-hour chunks of one day
    # The first chunk [00:00, 03:00) reaches on to the hour of the sample after it.
    assert raw[0] == (
        'from(bucket: "pw")\n'
        f"  |> range(start: {_iso(T0)}, stop: {_iso(T0 + 4 * H)})\n"
        '  |> filter(fn: (r) => r._measurement == "http" and r._field == "home" and '
        'r["site"] == "a")\n'
        '  |> keep(columns: ["_time", "_value", "table"])\n')


def test_v2_errors(recorder: Callable[..., Recorder]) -> None:
    """2.x error JSON (status and message) and a failure inside the CSV answer: TargetError
    exit 3; the token never shows."""
    server = recorder(lambda req: (404, "application/json",
                                   '{"code":"not found","message":"bucket \\"pw\\" not found"}'))
    source = open_influx_source(f"influxdb2://127.0.0.1:{server.port}/pw?org=o&token=T0KEN"
                                "&measurement=http&field=home")
    with pytest.raises(TargetError) as err:
        source.read(SourceRange())
    assert 'HTTP 404: bucket "pw" not found' in str(err.value) and "T0KEN" not in str(err.value)
    late = recorder(lambda req: (200, "text/csv",
                                 "error,reference\r\nruntime error: out of memory,897\r\n"))
    source = open_influx_source(f"influxdb2://127.0.0.1:{late.port}/pw?org=o&token=T0KEN"
                                "&measurement=http&field=home")
    with pytest.raises(TargetError, match="query failed: runtime error: out of memory"):
        source.read(SourceRange())


def test_v2_target_requests(recorder: Callable[..., Recorder]) -> None:
    """influxdb2:// target: /api/v2/write with org, bucket, precision=s and Token auth; the
    line protocol exactly; 503 is retried; latest() reads the CSV answer."""
    state = {"writes": 0}

    def answer(req: dict[str, Any]) -> tuple[int, str, str]:
        if req["path"] == "/api/v2/write":
            state["writes"] += 1
            if state["writes"] <= 2:
                return 503, "application/json", '{"code":"unavailable","message":"busy"}'
            return 204, "text/plain", ""
        return 200, "text/csv", (f",result,table,_time,_value\r\n,_result,0,"
                                 f"{_iso(T0 + 900)},0.25\r\n")

    server = recorder(answer)
    target = open_influx_target(f"influxdb2://127.0.0.1:{server.port}/electricity?org=watti"
                                "&token=tk&batch=2&backoff=0.01")
    starts = np.array([T0, T0 + 900.0, T0 + 1800.0])
    assert target.write_readings("643 007", starts, starts + 900, np.array([0.5, 0.25, 1.0])) == 3
    writes = [r for r in server.requests if r["path"] == "/api/v2/write"]
    assert len(writes) == 4  # two refused, then two batches
    for req in writes:
        assert req["query"] == {"org": "watti", "bucket": "electricity", "precision": "s"}
        assert req["headers"]["authorization"] == "Token tk"
    assert writes[2]["body"] == "\n".join(line_protocol(
        "electricity_consumption", "643 007", starts[:2], starts[:2] + 900,
        np.array([0.5, 0.25])))
    assert writes[3]["body"] == (
        f'electricity_consumption,metering_point=643\\ 007 consumption_kwh=1.0,'
        f'consumption_wh=1000.0,resolution="PT15MIN" {T0 + 1800}')
    assert target.latest("643 007") == T0 + 900
    flux = json.loads(server.requests[-1]["body"])["query"]
    assert 'r.metering_point == "643 007"' in flux and "last()" in flux
    assert "range(start: 0)" in flux  # no blind spot however old the newest point is
    target.close()


def test_v2_csv_parsing_and_url_defaults(monkeypatch: pytest.MonkeyPatch,
                                         recorder: Callable[..., Recorder]) -> None:
    """INFLUXDB_URL, INFLUXDB_ORG and INFLUXDB_BUCKET fill what the URL leaves out."""
    server = recorder(lambda req: (200, "text/csv", "\r\n"))
    monkeypatch.setenv("INFLUXDB_URL", f"http://127.0.0.1:{server.port}")
    monkeypatch.setenv("INFLUXDB_ORG", "wattivahti")
    monkeypatch.setenv("INFLUXDB_BUCKET", "electricity")
    monkeypatch.setenv("INFLUXDB_TOKEN", "abc")
    target = open_influx_target("influxdb2://")
    assert target.latest("1") is None
    req = server.requests[-1]
    assert req["query"] == {"org": "wattivahti"}
    assert req["headers"]["authorization"] == "Token abc"
    assert 'from(bucket: "electricity")' in json.loads(req["body"])["query"]
    target.close()
    with httpx.Client() as http:  # the recorder really is what answered
        assert http.get(f"http://127.0.0.1:{server.port}/x").status_code == 200


# ------------------------------------------------------------ retries, clocks, precision


def test_retries_jitter_and_retry_after(recorder: Callable[..., Recorder]) -> None:
    """429/503 with Retry-After (seconds, or an HTTP date) wait what the server asks; other
    retries wait a jittered backoff (never all the same length); retries= must be a number."""
    from email.utils import format_datetime

    from backdate.errors import UsageError
    from backdate.sources.influx import MAX_RETRY_AFTER

    answers = [(503, {"Retry-After": "7"}), (429, {"Retry-After": "100000"}),
               (429, {"Retry-After": format_datetime(datetime.fromtimestamp(
                   time.time() + 60, UTC), usegmt=True)}),
               (500, {}), (500, {}), (500, {}), (204, {})]
    seen: list[int] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, headers = answers[len(seen)]
            seen.append(status)
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        target = open_influx_target(f"influxdb2://127.0.0.1:{server.server_address[1]}/b"
                                    "?org=o&token=t&retries=7&backoff=1")
        waits: list[float] = []
        target.http.sleep = waits.append
        assert target.write_readings("1", np.array([T0]), np.array([T0 + 900.0]),
                                     np.array([1.0])) == 1
        target.close()
    finally:
        server.shutdown()
        server.server_close()
    assert seen == [503, 429, 429, 500, 500, 500, 204]
    assert waits[0] == 7.0 and waits[1] == MAX_RETRY_AFTER
    assert 50 < waits[2] <= 60
    for attempt, wait in zip((4, 5, 6), waits[3:], strict=True):
        plain = 1.0 * 2 ** (attempt - 1)
        assert 0.5 * plain <= wait <= 1.5 * plain
    assert len({w / 2 ** a for a, w in zip((3, 4, 5), waits[3:], strict=True)}) == 3  # jitter
    for bad in ("many", "0", "-1", "2.5"):
        with pytest.raises(UsageError, match="retries="):
            open_influx_source(f"influxdb://127.0.0.1:1/x?measurement=m&field=f&retries={bad}")


def test_edge_queries_have_a_short_read_timeout(recorder: Callable[..., Recorder],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The small first()/last() queries give up after EDGE_TIMEOUT; a long data query may
    take longer than that (it keeps the long timeout)."""
    import backdate.sources.influx as influx_module

    monkeypatch.setattr(influx_module, "EDGE_TIMEOUT", 0.5)

    def answer(req: dict[str, Any]) -> tuple[int, str, str]:
        flux = json.loads(req["body"])["query"]
        if "schema.measurementFieldKeys" in flux:
            return 200, "text/csv", ",result,table,_value\r\n,_result,0,home\r\n"
        time.sleep(1.0)  # slower than the edge timeout
        return 200, "text/csv", f",result,table,_time,_value\r\n,_result,0,{_iso(T0)},5\r\n"

    server = recorder(answer)
    url = (f"influxdb2://127.0.0.1:{server.port}/pw?org=o&token=t&measurement=http"
           "&field=home&integral=backdate&retries=1")
    source = open_influx_source(url)
    with pytest.raises(TargetError, match="ReadTimeout"):
        source.read(SourceRange())
    source.close()
    source = open_influx_source(url)
    times, _ = source._flux_columns(source._flux("home", T0, T0 + H, ""))  # slow, no timeout
    source.close()
    assert times.tolist() == [T0]


@pytest.mark.system_clock
def test_target_latest_ignores_future_points(influx_db: InfluxDatabase) -> None:
    """A point three days ahead (a clock gone wrong) is not the target's newest: latest()
    stops at now on 1.x, as the 2.x range() does."""
    target = open_influx_target(f"influxdb://{influx_db.host_port}/{influx_db.name}")
    hour = math.floor(time.time() / H) * H
    starts = np.array([hour - 5 * H, hour + 3 * 86400.0])
    target.write_readings("mp", starts, starts + H, np.array([1.0, 2.0]))
    assert target.latest("mp") == hour - 5 * H
    target.close()


def test_subsecond_starts_are_rounded_and_merged(influx_db: InfluxDatabase) -> None:
    """Starts with fractions of a second are stored rounded to the second; two readings in
    one second after rounding are merged (energy summed, nothing overwritten); the sync's
    InfluxDB target then sees nothing to rewrite on the next run."""
    from backdate.app.sync import InfluxTarget
    from backdate.config import Job
    from backdate.models import Series
    from backdate.targets.influx import to_write_precision

    t = np.array([T0 + 0.4 + 60 * i for i in range(10)] + [T0 + 600.9, T0 + 540.2])
    v = np.array([0.01] * 10 + [0.02, 0.005])
    starts, ends, kwh = to_write_precision(t, t + 60, v)
    assert starts.tolist() == [T0 + 60 * i for i in range(10)] + [T0 + 601]
    assert kwh[9] == pytest.approx(0.015) and kwh.sum() == pytest.approx(v.sum())
    assert ends[9] == pytest.approx(T0 + 600.4)  # the later end of the two
    job = Job(name="j", source="x", targets=[], statistic_id=None, statistic_name=None,
              tz=None, metering_point="mp", kind=None, unit=None, initial_sync=86400,
              buffer=3600, correction=0, interval=3600, jitter=0)
    series = Series(source="x", times=t[:11], values=v[:11], lines=np.arange(1, 12),
                    ends=None, kind=Kind.DELTA, unit="kWh", statistic_id="backdate:x",
                    name="x")
    target = InfluxTarget(job, f"influxdb://{influx_db.host_port}/{influx_db.name}")
    try:
        assert target.write([series], (T0, T0 + H)) == 11
        assert target.write([series], (T0, T0 + H)) == 0  # the same data: nothing to send
        held = target.target.read_readings("mp", None, None)
        assert len(held) == 11 and held.values.sum() == pytest.approx(v[:11].sum())
    finally:
        target.close()
