"""`backdate sync`: a real InfluxDB 1.x as source (and as a target), a real Home Assistant
2024.3.3 as target (its SQLite file while it runs, and http:// through its API).

Why these cases: the sync runs unattended for months, so what matters is what the targets
hold after runs that go wrong (killed mid-way, a target down, a sync off for longer than the
correction window, the utility correcting last week) and whether two runs can overlap. HA is
judged only by its own `recorder/statistics_during_period` (as the Energy dashboard reads
it); InfluxDB targets by InfluxQL against the server; the source's energy by InfluxDB's own
`integral()` per hour, computed here independently of backdate.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import influx_fixtures
import pytest
from ha_harness import HomeAssistant
from hypothesis import given
from hypothesis import strategies as st
from influx_fixtures import InfluxDatabase
from influx_service import InfluxServer, free_port
from test_ha_import import BACKDATE, assert_log_clean, changes

from backdate.app.sync import window_start_for
from backdate.app.sync_state import job_lock
from backdate.config import Job

pytestmark = pytest.mark.system_clock  # sources and targets answer up to their own now
influx = influx_fixtures.influx  # the fixtures, used by name
influx_db = influx_fixtures.influx_db

HOUR = 3600
DAY = 86400
TOL = 1e-6  # kWh per hour
MEASUREMENT = "http"  # Powerwall-Dashboard's measurement; `home` is the house's load in W
FIELD = "home"


# ------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """One running HA for the module (each test uses its own statistic)."""
    with HomeAssistant(tmp_path_factory.mktemp("ha_sync"), venv=ha_venv) as instance:
        yield instance
    assert_log_clean(instance)


# ------------------------------------------------------------------------------------- helpers


def current_hour() -> int:
    """The system clock's hour, on purpose: sync asks InfluxDB and HA up to their `now`."""
    return math.floor(time.time() / HOUR) * HOUR


def watts(t: int) -> float:
    """A Powerwall-like house load: a daily swing plus faster wiggles, always positive."""
    return (900 + 600 * math.sin(2 * math.pi * t / DAY) + 180 * math.sin(2 * math.pi * t / 517)
            + 40 * math.sin(2 * math.pi * t / 61))


def powerwall_lines(start: int, end: int, step: int = 10, extra: float = 0.0) -> list[str]:
    """Line protocol: a sample every `step` seconds in [start, end] (hour edges included)."""
    return [f"{MEASUREMENT},host=pw {FIELD}={watts(t) + extra:.3f} {t}"
            for t in range(start, end + 1, step)]


def influx_integrals(db: InfluxDatabase, hours: list[int]) -> dict[int, float]:
    """InfluxDB's own integral of each hour [h, h+1h] in kWh: one InfluxQL statement per hour,
    samples at both edges included, so the trapezoids cover exactly the hour."""
    out: dict[int, float] = {}
    for i in range(0, len(hours), 200):
        chunk = hours[i:i + 200]
        q = ";".join(f"SELECT integral({FIELD}, 1h) / 1000 FROM {MEASUREMENT} "
                     f"WHERE time >= {h}s AND time <= {h + HOUR}s" for h in chunk)
        resp = db.client.http.post("/query", data={"q": q, "db": db.name, "epoch": "s"})
        resp.raise_for_status()
        for h, result in zip(chunk, resp.json()["results"], strict=True):
            series = result.get("series")
            if series:
                out[h] = float(series[0]["values"][0][1])
    return out


def target_points(db: InfluxDatabase, point: str) -> dict[int, float]:
    """What an InfluxDB target database holds for a metering point (kWh by interval start);
    fails on a duplicate timestamp (cannot happen in InfluxDB, but the test says it)."""
    rows = db.points("SELECT consumption_kwh, consumption_wh, resolution FROM "
                     f"electricity_consumption WHERE metering_point = '{point}'")
    out: dict[int, float] = {}
    for t, kwh, wh, resolution in rows:
        assert int(t) not in out, f"two points at {t}"
        assert abs(float(wh) - float(kwh) * 1000) < 1e-6
        assert resolution == "PT1H"
        out[int(t)] = float(kwh)
    return out


def source_url(db: InfluxDatabase, **extra: str) -> str:
    query = "&".join([f"measurement={MEASUREMENT}", f"field={FIELD}", "kind=power", "unit=W",
                      *(f"{k}={v}" for k, v in extra.items())])
    return f"influxdb://{db.host_port}/{db.name}?{query}"


def write_config(directory: Path, jobs: list[dict[str, Any]], **sync: Any) -> Path:
    """A backdate.toml with a [sync] table and [[sync.jobs]] entries."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int | float):
            return repr(v)
        if isinstance(v, list):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = ["[sync]", f'state_file = "{directory / "state" / "sync.db"}"']
    lines += [f"{k} = {value(v)}" for k, v in sync.items()]
    for job in jobs:
        lines += ["", "[[sync.jobs]]"] + [f"{k} = {value(v)}" for k, v in job.items()]
    path = directory / "backdate.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def env_for(ha: HomeAssistant | None = None, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HA_TOKEN", "INITIAL_SYNC_DAYS", "SYNC_BUFFER_HOURS", "HA_URL",
                        "INFLUXDB_URL")}
    env.update({"COLUMNS": "200", "NO_COLOR": "1"})
    if ha is not None:
        env["HA_TOKEN"] = ha.token
    env.update(extra)
    return env


def sync(config: Path, *args: str, expect: int = 0, env: dict[str, str] | None = None,
         timeout: float = 600) -> subprocess.CompletedProcess[str]:
    cmd = [BACKDATE, "sync", "--config", str(config), *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or env_for(), check=False)
    assert proc.returncode == expect, (
        f"`backdate sync {' '.join(args)}` exited {proc.returncode}, expected {expect}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")
    return proc


def runs(config_dir: Path) -> list[tuple[Any, ...]]:
    con = sqlite3.connect(config_dir / "state" / "sync.db", timeout=30)
    try:
        return con.execute("SELECT job, status, points, error FROM runs ORDER BY id").fetchall()
    finally:
        con.close()


def ha_hours(ha: HomeAssistant, sid: str, start: int, end: int, min_rows: int = 1
             ) -> dict[int, float]:
    return changes(ha, sid, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC),
                   "hour", min_rows=min_rows)


def ha_sums(ha: HomeAssistant, sid: str, start: int, end: int) -> dict[int, float]:
    from test_ha_import import query

    rows = query(ha, sid, datetime.fromtimestamp(start, UTC), datetime.fromtimestamp(end, UTC),
                 "hour", ["sum"], units={"energy": "kWh"})
    return {int(round(r["start"] / 1000)): r["sum"] for r in rows}


def assert_hours_equal(actual: dict[int, float], expected: dict[int, float], what: str) -> None:
    missing = sorted(set(expected) - set(actual))
    assert not missing, f"{what}: {len(missing)} hours missing, first {_when(missing[0])}"
    bad = [(h, actual[h], expected[h]) for h in expected if abs(actual[h] - expected[h]) > TOL]
    assert not bad, (f"{what}: {len(bad)} hours differ, first {_when(bad[0][0])}: "
                     f"{bad[0][1]!r} != {bad[0][2]!r}")


def _when(ts: int) -> str:
    return f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"


def power_job(name: str, db: InfluxDatabase, targets: list[str], sid: str,
              **extra: Any) -> dict[str, Any]:
    return {"name": name, "source": source_url(db), "targets": targets, "statistic_id": sid,
            "metering_point": name, **extra}


# ------------------------------------------------------------------- the window (no servers)


def _job(initial_days: float, buffer_hours: float, correction_days: float) -> Job:
    return Job(name="j", source="x", targets=["y"], statistic_id=None, statistic_name=None,
               tz=None, metering_point="j", kind=None, unit=None,
               initial_sync=initial_days * DAY, buffer=buffer_hours * HOUR,
               correction=correction_days * DAY, interval=3600, jitter=0)


@given(latest_age=st.floats(-30 * DAY, 5000 * DAY), origin_age=st.none() | st.floats(0, 5000 * DAY),
       initial=st.floats(0.01, 400), buffer=st.floats(0, 200), correction=st.floats(0, 400))
def test_window_never_leaves_a_blind_spot(latest_age: float, origin_age: float | None,
                                          initial: float, buffer: float,
                                          correction: float) -> None:
    """However long the sync was off, the window starts at or before (newest held - buffer),
    and it never reaches before where the job first started unless the buffer demands it.
    The newest held counts at most up to the last complete hour (a point in the future, a
    negative age here, must not stop the sync)."""
    now = 1_790_000_000.0
    job = _job(initial, buffer, correction)
    latest = min(now - latest_age, math.floor(now / HOUR) * HOUR)
    origin = None if origin_age is None else now - origin_age
    start = window_start_for(job, now - latest_age, origin, now)
    first = origin if origin is not None else now - job.initial_sync
    wanted = min(latest - job.buffer, max(now - job.correction, first))
    assert start % HOUR == 0
    assert start <= latest - job.buffer  # no blind spot, however old `latest` is
    assert wanted - HOUR < start <= wanted  # and no more than the correction window asks
    # Nothing held: the initial window.
    assert window_start_for(job, None, origin, now) == math.floor(
        (now - job.initial_sync) / HOUR) * HOUR


# ------------------------------------------------------------------------------ config errors


def _config_error(tmp_path: Path, text: str, *expected: str, env: dict[str, str] | None = None,
                  secret: str | None = None) -> str:
    path = tmp_path / "backdate.toml"
    path.write_text(text)
    proc = sync(path, "--once", expect=1, env=env or env_for())
    said = " ".join(proc.stderr.split())  # Rich wraps long lines
    for part in expected:
        assert part in said, f"{part!r} not in:\n{proc.stderr}"
    if secret is not None:
        assert secret not in proc.stderr + proc.stdout
    assert not (tmp_path / "state").exists(), "a refused configuration must write nothing"
    return proc.stderr


def test_config_errors_name_file_line_and_field(tmp_path: Path) -> None:
    state = f'[sync]\nstate_file = "{tmp_path / "state" / "sync.db"}"\n'
    good = ('source = "influxdb://127.0.0.1:1/x?measurement=m&field=f"\n'
            'targets = ["influxdb://127.0.0.1:1/y"]\n')
    # A typo in a key: file, line and field.
    _config_error(tmp_path, state + '\n[[sync.jobs]]\nname = "a"\n' + good
                  + "intial_sync_days = 3\n",
                  "backdate.toml:8:", "intial_sync_days", "unknown setting")
    # A wrong type, in the second job.
    _config_error(tmp_path, state + '\n[[sync.jobs]]\nname = "a"\n' + good
                  + '\n[[sync.jobs]]\nname = "b"\n' + good + 'sync_buffer_hours = "soon"\n',
                  "backdate.toml:13:", "sync.jobs[2].sync_buffer_hours")
    # Not TOML at all.
    _config_error(tmp_path, state + '[[sync.jobs]\nname = "a"\n', "backdate.toml:3:",
                  "not valid TOML")
    # No targets; an unknown duration; an unknown zone ([jobs.NAME] form).
    _config_error(tmp_path, state + '[jobs.house]\nsource = "x.csv"\ntargets = []\n',
                  "backdate.toml:5:", "jobs.house.targets")
    _config_error(tmp_path, state + '[jobs.house]\n' + good + 'interval = "often"\n',
                  "backdate.toml:6:", "interval", "not a duration")
    _config_error(tmp_path, state + '[jobs.house]\n' + good + 'tz = "Mars/Olympus"\n',
                  "backdate.toml:6:", "unknown time zone")
    # HA needs a statistic id to find its newest hour.
    _config_error(tmp_path, state + '[jobs.house]\nsource = "x.csv"\n'
                  'targets = ["sqlite:////tmp/none.db"]\n', "statistic_id", "jobs.house"[5:])
    # "ha" means $HA_URL, which is not set.
    _config_error(tmp_path, state + '[jobs.house]\nsource = "x.csv"\ntargets = ["ha"]\n'
                  'statistic_id = "backdate:x"\n', "HA_URL")
    # A bad environment variable is named.
    _config_error(tmp_path, state + '[jobs.house]\n' + good, "INITIAL_SYNC_DAYS",
                  env=env_for(INITIAL_SYNC_DAYS="a week"))
    # A secret in a URL never reaches the output, even when the job is wrong.
    _config_error(tmp_path, state + '[jobs.house]\nsource = '
                  '"influxdb://u:hunter2secret@127.0.0.1:1/x?measurement=m&field=f"\n'
                  'targets = ["influxdb://127.0.0.1:1/y?token=tok3nsecret"]\nkind = "watts"\n',
                  "backdate.toml:6:", "kind", secret="hunter2secret")
    # Unknown job and missing file.
    path = write_config(tmp_path, [{"name": "a", "source": "x.csv",
                                    "targets": ["influxdb://127.0.0.1:1/y"]}])
    proc = sync(path, "--once", "--job", "b", expect=1)
    assert "no job named 'b'" in proc.stderr
    proc = sync(tmp_path / "nope.toml", "--once", expect=1)
    assert "nope.toml" in proc.stderr


def test_config_forms_defaults_and_environment(tmp_path: Path) -> None:
    """Both job forms; [sync] defaults; the environment overrides the file (system 3's names);
    "ha"/"influxdb" targets come from HA_URL/INFLUXDB_URL; a relative state file sits next to
    the configuration, the default one in $XDG_STATE_HOME."""
    from backdate.config import ConfigError, load_config

    path = tmp_path / "backdate.toml"
    path.write_text("""
[sync]
state_file = "state/sync.db"
sync_buffer_hours = 6
interval = "30m"
jitter = 20

[[sync.jobs]]
name = "pw"
source = "influxdb://127.0.0.1:8086/pw?measurement=http&field=home"
targets = ["ha", "influxdb"]
statistic_id = "backdate:pw"
initial_sync_days = 3

[jobs.meter]
source = "wattivahti:?token_file=rt.txt"
targets = ["influxdb://127.0.0.1:8086/energy"]
correction_days = 7
interval = "2h"
""")
    env = {"HA_URL": "http://ha.local:8123", "INFLUXDB_URL": "influxdb://127.0.0.1:8086/e"}
    cfg = load_config(path, env)
    assert cfg.state_file == tmp_path / "state" / "sync.db"
    pw, meter = cfg.jobs
    assert pw.name == "pw"
    assert pw.targets == ["http://ha.local:8123", "influxdb://127.0.0.1:8086/e"]
    assert (pw.initial_sync, pw.buffer, pw.correction) == (3 * DAY, 6 * HOUR, 30 * DAY)
    assert (pw.interval, pw.jitter, pw.metering_point) == (1800, 20, "pw")
    assert meter.name == "meter" and meter.interval == 7200 and meter.correction == 7 * DAY
    assert meter.initial_sync == 30 * DAY and meter.metering_point == "meter"
    env |= {"INITIAL_SYNC_DAYS": "7", "SYNC_BUFFER_HOURS": "2",
            "WATTIVAHTI_METERING_POINT": "1234567"}
    pw, meter = load_config(path, env).jobs
    assert (pw.initial_sync, pw.buffer) == (7 * DAY, 2 * HOUR)  # the environment wins
    assert (meter.initial_sync, meter.buffer, meter.metering_point) == (7 * DAY, 2 * HOUR,
                                                                        "1234567")
    assert pw.metering_point == "pw"  # not a WattiVahti job
    # WattiVahti-sync users have INFLUXDB_URL=http://host:8086 (2.x, token/org/bucket in env)
    env["INFLUXDB_URL"] = "http://127.0.0.1:8086"
    with pytest.raises(ConfigError, match="org="):  # 2.x without its org: refused at load
        load_config(path, env)
    env |= {"INFLUXDB_ORG": "home", "INFLUXDB_BUCKET": "energy"}
    assert load_config(path, env).jobs[0].targets[1] == "influxdb2://"
    path.write_text('[jobs.x]\nsource = "a.csv"\ntargets = ["influxdb://h/db"]\n')
    assert load_config(path, {"XDG_STATE_HOME": str(tmp_path / "xdg")}).state_file == (
        tmp_path / "xdg" / "backdate" / "sync.db")


def test_config_checks_every_url_and_value_at_load(tmp_path: Path) -> None:
    """A typo in a source or target URL, a job-level kind/unit that would fight a remote
    source's own, and infinite or NaN durations are found when the file is loaded: file:line
    of the setting, exit 1, no run recorded (nothing written)."""
    state = f'[sync]\nstate_file = "{tmp_path / "state" / "sync.db"}"\n'
    src = 'source = "influxdb://127.0.0.1:1/x?measurement=m&field=f"\n'
    tgt = 'targets = ["influxdb://127.0.0.1:1/y"]\n'
    job = '\n[[sync.jobs]]\nname = "a"\n'
    # Source: an unknown parameter, a bad kind, a bad port, retries that is not a number.
    for bad, words in ((src.replace("field=f", "fild=f"), ["unknown parameter", "fild"]),
                       (src.replace("field=f", "field=f&kind=watts"), ["kind='watts'"]),
                       (src.replace(":1/", ":99999/"), ["port"]),
                       (src.replace("field=f", "field=f&retries=many"), ["retries="]),
                       ('source = "influxdb2://127.0.0.1:1/b?measurement=m&field=f"\n',
                        ["org="]),
                       ('source = "wattivahti:123?tokenfile=x"\n', ["tokenfile"])):
        _config_error(tmp_path, state + job + bad + tgt, "backdate.toml:6:", "source:", *words,
                      env=env_for(INFLUXDB_ORG=""))
    # Targets: an unknown parameter, an unknown scheme, a SQLite URL without a path.
    for bad, words in ((tgt.replace("/y", "/y?bacth=5"), ["bacth"]),
                       ('targets = ["sqlit:///ha.db"]\n', ["unknown target"]),
                       ('targets = ["influxdb://127.0.0.1:1/y", "sqlite:/ha.db"]\n',
                        ["targets[2]", "sqlite:///"])):
        _config_error(tmp_path, state + job + src + bad + 'statistic_id = "backdate:a"\n',
                      "backdate.toml:7:", *words)
    # A password in a bad URL never reaches the output.
    _config_error(tmp_path, state + job + src + 'targets = ["influxdb://u:s3cretpw@127.0.0.1:1'
                  '/y?oops=1"]\n', "backdate.toml:7:", "oops", secret="s3cretpw")
    # kind/unit on the job with an InfluxDB source (it carries its own in the URL).
    _config_error(tmp_path, state + job + src + tgt + 'kind = "power"\n', "backdate.toml:8:",
                  "kind", "source URL")
    _config_error(tmp_path, state + job + src + tgt + 'unit = "W"\n', "backdate.toml:8:",
                  "unit")
    # Infinite and NaN durations (TOML has both), in the file and the environment.
    _config_error(tmp_path, state + "initial_sync_days = inf\n" + job + src + tgt,
                  "backdate.toml:3:", "initial_sync_days", "finite")
    _config_error(tmp_path, state + job + src + tgt + "correction_days = nan\n",
                  "backdate.toml:8:", "correction_days")
    _config_error(tmp_path, state + job + src + tgt + "interval = inf\n",
                  "backdate.toml:8:", "interval", "finite")
    _config_error(tmp_path, state + job + src + tgt, "INITIAL_SYNC_DAYS",
                  env=env_for(INITIAL_SYNC_DAYS="inf"))


def test_sync_from_the_environment_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                         ) -> None:
    """The WattiVahti sync's users have no backdate.toml, only its environment variables:
    one job `wattivahti` (source `wattivahti:`) into INFLUXDB_URL (a 2.x http:// URL becomes
    influxdb2:// with token/org/bucket from the environment) and HA_URL."""
    from backdate.app.sync import declared_names
    from backdate.config import ConfigError, load_config

    monkeypatch.chdir(tmp_path)  # no ./backdate.toml
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    token_file = tmp_path / "refresh_token.txt"
    env = {"WATTIVAHTI_METERING_POINT": "643007572000123456",
           "REFRESH_TOKEN_FILE": str(token_file), "INFLUXDB_URL": "http://127.0.0.1:8086",
           "INFLUXDB_TOKEN": "tok", "INFLUXDB_ORG": "home", "INFLUXDB_BUCKET": "energy",
           "HA_URL": "http://ha.local:8123", "INITIAL_SYNC_DAYS": "3",
           "XDG_STATE_HOME": str(tmp_path / "state")}
    cfg = load_config(None, env)
    assert cfg.path is None and cfg.state_file == tmp_path / "state" / "backdate" / "sync.db"
    [job] = cfg.jobs
    assert (job.name, job.source) == ("wattivahti", "wattivahti:")
    assert job.targets == ["influxdb2://", "http://ha.local:8123"]
    assert job.metering_point == "643007572000123456"
    assert job.statistic_id == "backdate:wattivahti_643007572000123456_consumption"
    assert job.initial_sync == 3 * DAY
    # The source reads the same environment: its one series is named for the point.
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert declared_names(job) == ["WattiVahti 643007572000123456 consumption"]
    # Only one of the targets set: only that one.
    only_influx = {k: v for k, v in env.items() if k != "HA_URL"}
    assert load_config(None, only_influx).jobs[0].targets == ["influxdb2://"]
    with pytest.raises(ConfigError, match="neither INFLUXDB_URL nor HA_URL"):
        load_config(None, {"WATTIVAHTI_METERING_POINT": "1"})
    with pytest.raises(ConfigError, match="no backdate.toml"):
        load_config(None, {})


def test_window_counts_a_future_point_only_up_to_now() -> None:
    """A target holding a point in the future (a clock gone wrong) with correction_days=0:
    the window still starts at (the last complete hour - buffer), never after it (the old
    code started it at the future point - buffer: nothing read until the clock caught up).
    The targets themselves also ignore points after now (InfluxDB: test_influx.py)."""
    now = 1_790_000_123.0
    end = math.floor(now / HOUR) * HOUR
    for buffer in (1.0, 6.0, 24.0):
        job = _job(30, buffer, 0)
        start = window_start_for(job, now + 3 * DAY, now - 10 * DAY, now)
        assert start == end - buffer * HOUR


def test_lock_files_differ_for_names_that_read_alike(tmp_path: Path) -> None:
    """"house a" and "house/a" are two jobs: two lock files, and one runs while the other
    holds its lock."""
    from backdate.app.sync_state import lock_path

    state = tmp_path / "sync.db"
    assert lock_path(state, "house a") != lock_path(state, "house/a")
    assert lock_path(state, "house a").parent == tmp_path
    with job_lock(state, "house a", wait=False), job_lock(state, "house/a", wait=False):
        pass


def test_recorded_latest_is_a_backstop_for_the_window(tmp_path: Path) -> None:
    """The window starts no later than (the newest end the state file recorded for the target
    after the last run - buffer), even when the target reports something newer (one of its
    statistics written behind the sync's back, say)."""
    from backdate.app.sync import run_job
    from backdate.app.sync_state import SyncState
    from backdate.config import load_config
    from backdate.targets.fresh import create_recorder_sqlite

    hour = current_hour()
    csv = tmp_path / "house.csv"
    csv.write_text("start,delta\n" + "".join(f"{hour - i * HOUR},0.25\n"
                                             for i in range(10 * 24, 0, -1)))
    db = create_recorder_sqlite(tmp_path / "ha.db")
    config = write_config(tmp_path, [{"name": "house", "source": str(csv),
                                      "targets": [f"sqlite:///{db}"],
                                      "statistic_id": "backdate:backstop"}],
                          initial_sync_days=12, sync_buffer_hours=2, correction_days=1)
    cfg = load_config(config, {})
    state = SyncState(cfg.state_file)
    try:
        first = run_job(cfg.jobs[0], state, now=hour + 1)
        assert not first.failed, first
        [target] = first.targets
        state._conn.execute("UPDATE cursors SET latest = ?", (hour - 5 * DAY,))
        second = run_job(cfg.jobs[0], state, now=hour + 1)
        assert not second.failed, second
        assert second.targets[0].window_start == hour - 5 * DAY - 2 * HOUR
        assert state.latest("house", target.url) == hour  # the run put it back
    finally:
        state.close()


# -------------------------------------------------------------------- several fields per job


def _two_field_config(tmp_path: Path, db: InfluxDatabase, ha_db: Path, target_db: str,
                      initial_days: float) -> Path:
    return write_config(tmp_path, [{
        "name": "pw", "source": (f"influxdb://{db.host_port}/{db.name}?measurement=http"
                                 "&field=home,solar&kind=power&unit=W"),
        "targets": [f"sqlite:///{ha_db}", f"influxdb://{db.host_port}/{target_db}"],
        "statistic_id": "backdate:pw"}], initial_sync_days=initial_days)


def _recorder_hours(ha_db: Path) -> dict[str, list[int]]:
    con = sqlite3.connect(ha_db)
    try:
        rows = con.execute("SELECT m.statistic_id, s.start_ts FROM statistics s JOIN "
                           "statistics_meta m ON m.id = s.metadata_id ORDER BY 1, 2").fetchall()
    finally:
        con.close()
    out: dict[str, list[int]] = {}
    for sid, ts in rows:
        out.setdefault(sid, []).append(int(ts))
    return out


def test_two_fields_after_an_outage_leave_no_blind_spot(influx_db: InfluxDatabase,
                                                        tmp_path: Path) -> None:
    """field=home,solar writes backdate:pw_http_home/_solar and points pw_http_home/_solar;
    the cursor looks there. Synced 6 days ago, then off for longer than initial_sync_days:
    the next run fills every hour in between, in all four, once."""
    from backdate.app.sync import run_job
    from backdate.app.sync_state import SyncState
    from backdate.config import load_config
    from backdate.targets.fresh import create_recorder_sqlite

    now = current_hour()
    influx_db.write([f"http home={500 + (t % 7000) / 10},solar={(t % 5000) / 10} {t}"
                     for t in range(now - 10 * DAY, now, 60)])
    ha_db = create_recorder_sqlite(tmp_path / "ha.db")
    target_db = influx_db.client.create_database("two_fields")
    try:
        cfg = load_config(_two_field_config(tmp_path, influx_db, ha_db, target_db, 1), {})
        state = SyncState(cfg.state_file)
        try:
            first = run_job(cfg.jobs[0], state, now=now - 6 * DAY + 1)
            second = run_job(cfg.jobs[0], state, now=now + 1)
        finally:
            state.close()
        assert not first.failed and not second.failed, (first, second)
        expected = list(range(now - 7 * DAY, now, HOUR))
        held = _recorder_hours(ha_db)
        assert set(held) == {"backdate:pw_http_home", "backdate:pw_http_solar"}
        for sid, hours in held.items():
            missing = sorted(set(expected) - set(hours))
            assert not missing, f"{sid}: {len(missing)} hours missing, first {_when(missing[0])}"
            assert hours == list(range(hours[0], hours[-1] + HOUR, HOUR)), f"{sid}: a hole"
        target = InfluxDatabase(influx_db.server, influx_db.client, target_db)
        for point in ("pw_http_home", "pw_http_solar"):
            hours = sorted(target_points(target, point))  # fails on a duplicate
            assert set(expected) <= set(hours), point
            assert hours == list(range(hours[0], hours[-1] + HOUR, HOUR)), f"{point}: a hole"
    finally:
        influx_db.client.drop_database(target_db)


def test_statistic_names_do_not_depend_on_which_fields_had_data(influx_db: InfluxDatabase,
                                                               tmp_path: Path) -> None:
    """Solar stops reporting two days ago: the next run still writes home to
    backdate:pw_http_home (not to a bare backdate:pw because only one field had data)."""
    from backdate.app.sync import run_job
    from backdate.app.sync_state import SyncState
    from backdate.config import load_config
    from backdate.targets.fresh import create_recorder_sqlite

    now = current_hour()
    influx_db.write([f"http home=1000 {t}" for t in range(now - 3 * DAY, now, 60)])
    influx_db.write([f"http solar=500 {t}" for t in range(now - 3 * DAY, now - 2 * DAY, 60)])
    ha_db = create_recorder_sqlite(tmp_path / "ha.db")
    target_db = influx_db.client.create_database("stable_names")
    try:
        cfg = load_config(_two_field_config(tmp_path, influx_db, ha_db, target_db, 1), {})
        state = SyncState(cfg.state_file)
        try:
            for when in (now - 2 * DAY + 6 * HOUR + 1, now + 1):
                outcome = run_job(cfg.jobs[0], state, now=when)
                assert not outcome.failed, outcome
        finally:
            state.close()
        held = _recorder_hours(ha_db)
        assert set(held) == {"backdate:pw_http_home", "backdate:pw_http_solar"}
        assert set(range(now - 3 * DAY, now, HOUR)) <= set(held["backdate:pw_http_home"])
        assert max(held["backdate:pw_http_solar"]) < now - 2 * DAY + HOUR
        points = {row[1] for s in influx_db.client.query(
            'SHOW TAG VALUES FROM electricity_consumption WITH KEY = "metering_point"',
            target_db) for row in s["values"]}
        assert points == {"pw_http_home", "pw_http_solar"}
    finally:
        influx_db.client.drop_database(target_db)


# --------------------------------------------------------------------------- a Powerwall series


def test_powerwall_power_becomes_hourly_energy_in_ha_and_influxdb(
        ha: HomeAssistant, influx_db: InfluxDatabase, tmp_path: Path) -> None:
    """Watts every 10 s -> HA's hourly change (SQLite while HA runs, and through its API) and
    an InfluxDB target equal InfluxDB's own integral per hour; a second run writes nothing;
    --verify agrees."""
    now_hour = current_hour()
    influx_db.write(powerwall_lines(now_hour - 3 * DAY, int(time.time())))
    sid_db = f"backdate:pw_db_{uuid.uuid4().hex[:6]}"
    sid_api = f"backdate:pw_api_{uuid.uuid4().hex[:6]}"
    target_db = influx_db.client.create_database("sync_target")
    target_url = f"influxdb://{influx_db.host_port}/{target_db}"
    sid_raw = f"backdate:pw_raw_{uuid.uuid4().hex[:6]}"
    raw_job = power_job("house_raw", influx_db, [ha.db_url, target_url], sid_raw)
    raw_job["source"] = source_url(influx_db, integral="backdate")  # raw samples, our engine
    config = write_config(tmp_path, [
        power_job("house", influx_db, [ha.db_url, target_url], sid_db),
        power_job("house_api", influx_db, ["ha"], sid_api),
        raw_job,
    ], initial_sync_days=4, correction_days=30)
    env = env_for(ha, HA_URL=ha.url)
    first = sync(config, "--once", env=env)
    assert "job house: ok" in first.stdout and "job house_api: ok" in first.stdout
    assert ha.token not in first.stdout + first.stderr

    start, end = now_hour - 3 * DAY, now_hour
    expected = influx_integrals(influx_db, list(range(start, end, HOUR)))
    assert len(expected) == 72
    assert_hours_equal(ha_hours(ha, sid_db, start, end, 72), expected, "HA (SQLite path)")
    assert_hours_equal(ha_hours(ha, sid_api, start, end, 72), expected, "HA (WebSocket API)")
    assert_hours_equal(ha_hours(ha, sid_raw, start, end, 72), expected,
                       "HA (raw samples integrated by backdate's engine)")
    target = InfluxDatabase(influx_db.server, influx_db.client, target_db)
    for point in ("house", "house_raw"):
        held = target_points(target, point)
        assert_hours_equal(held, expected, f"InfluxDB target ({point})")
        assert set(held) == set(expected)
    # Nothing of the running hour (only complete hours are synced).
    assert not ha_hours(ha, sid_db, current_hour(), current_hour() + HOUR, 0)

    # The cursor each target reported: its newest complete hour, through both HA paths.
    con = sqlite3.connect(tmp_path / "state" / "sync.db")
    latest = dict(con.execute("SELECT job, latest FROM cursors WHERE target LIKE 'sqlite%' "
                              "OR target LIKE 'http%'").fetchall())
    con.close()
    assert set(latest) == {"house", "house_api", "house_raw"}
    assert set(latest.values()) <= {now_hour, current_hour()}
    second = sync(config, "--once", env=env)
    assert len(re.findall(r" 0 points written", second.stdout)) == 3, second.stdout
    verify = sync(config, "--verify", env=env)
    assert verify.stdout.count("source and every target agree") == 3, verify.stdout
    assert [r[1] for r in runs(tmp_path)] == ["ok"] * 6
    # The state file is only a record: lost, the next run finds its place from the targets.
    for leftover in (tmp_path / "state").glob("sync.db*"):
        leftover.unlink()
    third = sync(config, "--once", env=env)
    assert len(re.findall(r" 0 points written", third.stdout)) == 3, third.stdout
    sync(config, "--verify", env=env)
    influx_db.client.drop_database(target_db)


# -------------------------------------------------------------------- interrupted and resumed


def test_killed_and_failed_runs_resume_with_no_gap_and_no_duplicate(
        ha: HomeAssistant, influx_db: InfluxDatabase, tmp_path: Path) -> None:
    """The sync was off for 45 days (longer than the 30-day correction window); the next run
    is killed mid-way, after HA is written and while the InfluxDB target holds part of the
    new hours (one point per POST); then the InfluxDB target is down for one run; the runs
    after fill exactly what is missing: every hour once, equal to InfluxDB's integral, in both
    targets."""
    now_hour = current_hour()
    data_start, off_since = now_hour - 60 * DAY, now_hour - 45 * DAY
    influx_db.write(powerwall_lines(data_start, off_since, step=30))
    sid = f"backdate:pw_resume_{uuid.uuid4().hex[:6]}"
    target_port = free_port()
    target_root = tmp_path / "influx_target"
    target_server = InfluxServer(target_root, port=target_port).start()
    target_server.client().query('CREATE DATABASE "sync_target"', post=True)
    target_url = f"influxdb://127.0.0.1:{target_port}/sync_target?retries=1&batch=1"
    config = write_config(tmp_path, [power_job("house", influx_db, [ha.db_url, target_url],
                                               sid)],
                          initial_sync_days=61, correction_days=30, sync_buffer_hours=24)
    try:
        sync(config, "--once")  # both targets hold data up to 45 days ago
        off_hours = ha_hours(ha, sid, data_start, now_hour, 1)
        assert max(off_hours) == off_since - HOUR
        # Then the source fills up to now (the sync was off), and the next run is killed.
        influx_db.write(powerwall_lines(off_since, int(time.time()), step=30))
        new_hours = (now_hour - off_since) // HOUR
        with target_server.client() as client:
            written = _kill_mid_write(config, client, off_since)
        assert 0 < written < new_hours, f"killed after {written} of {new_hours} new points"
        assert runs(tmp_path)[-1][1] == "running", "the killed run stays recorded as unfinished"
        # What the kill left: HA whole (one transaction), the InfluxDB target in part.
        assert_hours_equal(ha_hours(ha, sid, off_since, now_hour, new_hours),
                           influx_integrals(influx_db, list(range(off_since, now_hour, HOUR))),
                           "HA after the kill")
        # The InfluxDB target is down for the next run: HA is written, the failure is named.
        target_server.stop()
        down = sync(config, "--once", expect=3)
        assert f"127.0.0.1:{target_port}" in down.stderr and "error" in down.stderr
        assert runs(tmp_path)[-1][1] == "failed" and f"127.0.0.1:{target_port}" in \
            runs(tmp_path)[-1][3]
        target_server = InfluxServer(target_root, port=target_port).start()
        sync(config, "--once")
        start, end = data_start, now_hour
        expected = influx_integrals(influx_db, list(range(start, end, HOUR)))
        assert len(expected) == 60 * 24
        assert_hours_equal(ha_hours(ha, sid, start, end, 60 * 24), expected, "HA")
        client = target_server.client()
        target = InfluxDatabase(target_server, client, "sync_target")
        held = target_points(target, "house")  # fails on any duplicate
        assert_hours_equal({h: v for h, v in held.items() if h < end}, expected, "InfluxDB")
        assert set(held) - set(expected) <= set(range(end, current_hour(), HOUR))
        client.close()
        sync(config, "--verify")
    finally:
        target_server.stop()


def _kill_mid_write(config: Path, target: Any, since: int) -> int:
    """Start a sync, SIGKILL it as soon as the InfluxDB target holds a first point at or
    after `since` (it writes one point per POST, in time order), and return how many such
    points the target holds after the kill."""
    q = (f"SELECT count(consumption_kwh) FROM electricity_consumption WHERE time >= {since}s")
    proc = subprocess.Popen([BACKDATE, "sync", "--config", str(config), "--once"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env_for())
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            rows = target.points(q, "sync_target")
            if rows and rows[0][1] > 0:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
                assert proc.returncode == -signal.SIGKILL
                rows = target.points(q, "sync_target")
                return int(rows[0][1])
            time.sleep(0.01)
        raise AssertionError("the run ended before it wrote part of the InfluxDB target")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


# ------------------------------------------------------------------ corrections and --verify


def test_correction_of_last_week_reaches_both_targets_without_a_seam(
        ha: HomeAssistant, influx_db: InfluxDatabase, tmp_path: Path) -> None:
    """The source corrects one hour six days ago: --verify lists exactly that hour for both
    targets (exit 1); the next run rewrites it in HA (hourly change = corrected energy, every
    later sum moved by the same amount, nothing else changed) and in the InfluxDB target (one
    point replaced, none added). A point deleted from the target is listed as missing and
    filled by the next run."""
    now_hour = current_hour()
    data_start = now_hour - 10 * DAY
    influx_db.write(powerwall_lines(data_start, int(time.time()), step=60))
    sid = f"backdate:pw_fix_{uuid.uuid4().hex[:6]}"
    target_db = influx_db.client.create_database("sync_fix")
    config = write_config(tmp_path, [power_job(
        "house", influx_db, [ha.db_url, f"influxdb://{influx_db.host_port}/{target_db}"],
        sid, tz="Europe/Vienna")], initial_sync_days=11)
    target = InfluxDatabase(influx_db.server, influx_db.client, target_db)
    try:
        sync(config, "--once")
        end = now_hour
        hours = list(range(data_start, end, HOUR))
        old_change = ha_hours(ha, sid, data_start, end, len(hours))
        old_sum = ha_sums(ha, sid, data_start, end)
        old_points = target_points(target, "house")
        assert_hours_equal(old_change, influx_integrals(influx_db, hours), "HA before")

        fixed = now_hour - 6 * DAY + 5 * HOUR
        # Samples strictly inside the hour: only this hour's integral changes.
        influx_db.write(powerwall_lines(fixed + 60, fixed + HOUR - 60, step=60, extra=1500))
        new_energy = influx_integrals(influx_db, [fixed])[fixed]
        delta = new_energy - old_change[fixed]
        assert delta > 1.3

        listed = sync(config, "--verify", expect=1)
        assert "1 hours differ" in listed.stdout, listed.stdout
        stamp = f"{datetime.fromtimestamp(fixed, UTC):%Y-%m-%d %H:%M}"
        assert stamp in listed.stdout, listed.stdout
        row = next(line for line in listed.stdout.splitlines() if stamp in line)
        # The table prints 6 decimals: compare as numbers (the last digit may round either way).
        shown = [float(x) for x in re.findall(r"\d+\.\d{6}", row)]
        assert any(abs(x - new_energy) < 2e-6 for x in shown), (row, new_energy)

        sync(config, "--once")
        new_change = ha_hours(ha, sid, data_start, end, len(hours))
        new_sum = ha_sums(ha, sid, data_start, end)
        assert abs(new_change[fixed] - new_energy) < TOL
        for h in hours:
            if h != fixed:
                assert abs(new_change[h] - old_change[h]) < TOL, _when(h)
            moved = delta if h >= fixed else 0.0
            assert abs(new_sum[h] - (old_sum[h] + moved)) < TOL, f"seam at {_when(h)}"
        new_points = target_points(target, "house")
        assert set(new_points) == set(old_points)
        assert abs(new_points[fixed] - new_energy) < TOL
        assert all(abs(new_points[h] - old_points[h]) < TOL for h in hours if h != fixed)
        sync(config, "--verify")

        gone = now_hour - 2 * DAY
        target.client.query(f"DELETE FROM electricity_consumption WHERE time = {gone}s",
                            target_db, post=True)
        listed = sync(config, "--verify", expect=1)
        assert "1 hours differ" in listed.stdout and "missing" in listed.stdout
        sync(config, "--once")
        assert abs(target_points(target, "house")[gone] - new_change[gone]) < TOL
        sync(config, "--verify")
    finally:
        influx_db.client.drop_database(target_db)


# ------------------------------------------------------------------------------ locking


def test_a_second_run_of_the_same_job_exits_or_waits(tmp_path: Path) -> None:
    """While one run holds the job's lock, another exits 1 (refused, nothing written) with a
    clear message, and so does --verify (it takes the lock shared); with --wait it runs as soon
    as the first is done. Another job is not blocked."""
    from backdate.targets.fresh import create_recorder_sqlite

    db = create_recorder_sqlite(tmp_path / "ha.db")
    csv = tmp_path / "house.csv"
    hour = current_hour()
    csv.write_text("start,delta\n" + "".join(f"{hour - i * HOUR},0.25\n"
                                             for i in range(48, 0, -1)))
    job = {"source": str(csv), "targets": [f"sqlite:///{db}"], "initial_sync_days": 5}
    config = write_config(tmp_path, [{"name": "house", "statistic_id": "backdate:h1", **job},
                                     {"name": "other", "statistic_id": "backdate:h2", **job}])
    state_file = tmp_path / "state" / "sync.db"
    release = threading.Event()
    held = threading.Event()

    def holder() -> None:
        with job_lock(state_file, "house", wait=False):
            held.set()
            release.wait(60)

    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert held.wait(10)
        before = runs(tmp_path) if (tmp_path / "state" / "sync.db").exists() else []
        busy = sync(config, "--once", "--job", "house", expect=1)
        assert "job 'house' is already running" in " ".join(busy.stderr.split())
        assert f"pid {os.getpid()}" in busy.stderr and "--wait" in busy.stderr
        verifying = sync(config, "--verify", "--job", "house", expect=1)
        assert "already running" in verifying.stderr
        assert (runs(tmp_path) if (tmp_path / "state" / "sync.db").exists() else []) == before
        sync(config, "--once", "--job", "other")  # another job runs meanwhile
        started = time.monotonic()
        waiting = subprocess.Popen([BACKDATE, "sync", "--config", str(config), "--once",
                                    "--job", "house", "--wait"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env_for())
        time.sleep(3)
        assert waiting.poll() is None, "--wait must wait while the lock is held"
        release.set()
        out, err = waiting.communicate(timeout=120)
        assert waiting.returncode == 0, err
        assert time.monotonic() - started >= 3
        assert "job house: ok" in out
    finally:
        release.set()
        thread.join()


# ----------------------------------------------------------------------- the scheduler loop


def test_loop_survives_a_failing_source_and_retries(tmp_path: Path) -> None:
    """A source that fails is logged with its cause and recorded; the loop runs it again next
    round and succeeds once the source is back; SIGTERM ends the loop cleanly."""
    from backdate.targets.fresh import create_recorder_sqlite

    db = create_recorder_sqlite(tmp_path / "ha.db")
    dead = free_port()
    source = (f"influxdb://127.0.0.1:{dead}/pw?measurement={MEASUREMENT}&field={FIELD}"
              "&kind=power&retries=1")
    config = write_config(tmp_path, [{"name": "house", "source": source,
                                      "targets": [f"sqlite:///{db}"],
                                      "statistic_id": "backdate:loop"}],
                          interval="1s", jitter="0s", initial_sync_days=1)
    proc = subprocess.Popen([BACKDATE, "sync", "--config", str(config)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env_for())
    server: InfluxServer | None = None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(r[1] == "failed" for r in _runs(tmp_path)) < 2:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        failed = [r for r in _runs(tmp_path) if r[1] == "failed"]
        assert len(failed) >= 2 and f"127.0.0.1:{dead}" in failed[0][3]
        server = InfluxServer(port=dead).start()
        client = server.client()
        client.query('CREATE DATABASE "pw"', post=True)
        hour = current_hour()
        client.write("pw", powerwall_lines(hour - DAY - HOUR, int(time.time()), step=60))
        while time.monotonic() < deadline and not any(r[1] == "ok" for r in _runs(tmp_path)):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.2)
        assert any(r[1] == "ok" and r[2] > 0 for r in _runs(tmp_path))
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert "failed; next round" not in err  # failures are reported, not crashes
        assert f"127.0.0.1:{dead}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        if server is not None:
            server.stop()


def test_mqtt_status_sensors_follow_the_job(tmp_path: Path) -> None:
    """An mqtt:// target (the real Mosquitto) gets HA discovery sensors for the job: the last
    complete local day's energy and status `ok`; a failing source turns the status into
    `error` with the cause, and the day's energy stays."""
    import paho.mqtt.client as mqtt

    from backdate.targets.fresh import create_recorder_sqlite
    from backdate.targets.mqtt import open_mqtt_target

    db = create_recorder_sqlite(tmp_path / "ha.db")
    csv = tmp_path / "house.csv"
    hour = current_hour()
    csv.write_text("start,delta\n" + "".join(f"{hour - i * HOUR},{0.1 + (i % 5) * 0.05:.2f}\n"
                                             for i in range(72, 0, -1)))
    tag = f"t{uuid.uuid4().hex[:8]}"
    broker = f"mqtt://127.0.0.1:1883?prefix={tag}_ha&topic={tag}"
    config = write_config(tmp_path, [{"name": "house", "source": str(csv),
                                      "targets": [f"sqlite:///{db}", broker],
                                      "statistic_id": "backdate:mqtt_house",
                                      "tz": "Europe/Vienna", "initial_sync_days": 5}])

    def retained() -> dict[str, str]:
        got: dict[str, str] = {}
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        client.on_message = lambda _c, _u, msg: got.__setitem__(msg.topic, msg.payload.decode())
        client.connect("127.0.0.1", 1883)
        client.subscribe([(f"{tag}/#", 1), (f"{tag}_ha/#", 1)])
        client.loop_start()
        time.sleep(1.5)
        client.loop_stop()
        client.disconnect()
        return got

    try:
        sync(config, "--once")
        held = retained()
        assert held[f"{tag}/house/sync_status/state"] == "ok"
        configs = [t for t in held if t.startswith(f"{tag}_ha/sensor/") and
                   t.endswith("/config")]
        assert len(configs) >= 3
        day_topic = next(t for t in held if "/last_day_" in t and t.endswith("/state"))
        vienna = ZoneInfo("Europe/Vienna")
        attrs = json.loads(held[day_topic + "/attributes"])
        day_start = datetime.fromisoformat(attrs["day_start"])
        day_end = (day_start.replace(tzinfo=None) + timedelta(days=1)).replace(tzinfo=vienna)
        expected = sum(0.1 + (i % 5) * 0.05 for i in range(72, 0, -1)
                       if day_start.timestamp() <= hour - i * HOUR < day_end.timestamp())
        assert abs(float(held[day_topic]) - expected) < 1e-6
        assert day_end.timestamp() <= hour  # a complete day

        csv.unlink()
        failed = sync(config, "--once", expect=3)  # a missing source file is a failed source
        assert "house.csv" in failed.stderr
        held = retained()
        assert held[f"{tag}/house/sync_status/state"] == "error"
        assert "house.csv" in held[f"{tag}/house/sync_status/state/attributes"]
        assert abs(float(held[day_topic]) - expected) < 1e-6
    finally:
        target = open_mqtt_target(broker)
        target.remove("house")
        target.close()


def _runs(config_dir: Path) -> list[tuple[Any, ...]]:
    try:
        return runs(config_dir)
    except sqlite3.OperationalError:
        return []



def test_status_only_targets_do_not_widen_the_read_window(tmp_path: Path) -> None:
    """An mqtt:// target keeps no cursor: after the first run, the next one reads from the
    HA target's newest hour minus the buffer, not the whole initial range again (a year, for a
    first backfill)."""
    from backdate.app.sync import run_job
    from backdate.app.sync_state import SyncState
    from backdate.config import load_config
    from backdate.targets.fresh import create_recorder_sqlite
    from backdate.targets.mqtt import open_mqtt_target

    db = create_recorder_sqlite(tmp_path / "ha.db")
    csv = tmp_path / "house.csv"
    hour = current_hour()
    csv.write_text("start,delta\n" + "".join(f"{hour - i * HOUR},0.25\n"
                                             for i in range(30 * 24, 0, -1)))
    tag = f"t{uuid.uuid4().hex[:8]}"
    broker = f"mqtt://127.0.0.1:1883?prefix={tag}_ha&topic={tag}"
    config = write_config(tmp_path, [{"name": "house", "source": str(csv),
                                      "targets": [f"sqlite:///{db}", broker],
                                      "statistic_id": "backdate:widen", "tz": "Europe/Vienna",
                                      "initial_sync_days": 20, "sync_buffer_hours": 3,
                                      "correction_days": 0}])
    job = load_config(config, env_for()).jobs[0]
    state = SyncState(tmp_path / "state" / "sync.db")
    try:
        first = run_job(job, state)
        assert first.exit_code == 0 and first.window is not None
        assert first.window[0] <= hour - 20 * 24 * HOUR + HOUR
        second = run_job(job, state)
        assert second.exit_code == 0 and second.window is not None
        assert second.window[0] >= hour - 4 * HOUR, (
            f"second run read from {(hour - second.window[0]) / HOUR:.0f} h back")
    finally:
        state.close()
        target = open_mqtt_target(broker)
        target.remove("house")
        target.close()


def test_secrets_are_masked_in_urls() -> None:
    from backdate.app.sync import mask_url

    masked = mask_url("wnsm:AT001?auth=api&client_id=c1&client_secret=S3CR3T&api_key=K3Y"
                      "&refresh_token=R7&mode=portal")
    assert "S3CR3T" not in masked and "K3Y" not in masked and "R7" not in masked
    assert "client_id=c1" in masked and "auth=api" in masked and "mode=portal" in masked
    masked = mask_url("influxdb://me:pw1@h:8086/db?u=me&p=pw2&measurement=m")
    assert "pw1" not in masked and "pw2" not in masked and "measurement=m" in masked
