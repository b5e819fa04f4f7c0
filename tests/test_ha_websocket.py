"""`backdate plan|import --to http://...`: the WebSocket API path, judged by Home Assistant.

Why: users on Home Assistant OS have a URL and a token, not the database file. Every test runs
the real CLI as a subprocess with ``HA_TOKEN`` in its environment against a real HA 2024.3.3
(time zone Europe/Vienna), and reads the result back through HA's own
``recorder/statistics_during_period`` (``change`` per hour, as the Energy dashboard does).
The CLI has no ``--token`` option yet: the token comes from ``HA_TOKEN``.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import ha_harness
import pytest
from ha_harness import HomeAssistant, free_port
from test_ha_import import (
    BACKDATE,
    DST_CASES,
    TOL,
    _when,
    assert_amounts,
    assert_log_clean,
    assert_no_negative,
    changes,
    last_full_hour,
    metadata,
)


@pytest.fixture(scope="module")
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HomeAssistant]:
    """One running HA for this module (each test uses its own statistic)."""
    instance = HomeAssistant(tmp_path_factory.mktemp("ha_ws"), venv=ha_venv)
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
    assert_log_clean(instance)


def run(*args: object, token: str | None, expect: int = 0) -> subprocess.CompletedProcess[str]:
    """The CLI with ``HA_TOKEN`` set (or unset); fails with its output unless exit ``expect``."""
    env = {k: v for k, v in os.environ.items() if k != "HA_TOKEN"}
    env.update({"COLUMNS": "200", "NO_COLOR": "1"})
    if token is not None:
        env["HA_TOKEN"] = token
    cmd = [BACKDATE, *(str(a) for a in args)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env,
                          check=False)
    assert proc.returncode == expect, (
        f"`backdate {' '.join(cmd[1:])}` exited {proc.returncode}, expected {expect}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )
    return proc


def ws_import(ha: HomeAssistant, *args: object, token: str | None = None,
              expect: int = 0) -> subprocess.CompletedProcess[str]:
    return run("import", *args, "--to", ha.url, "--no-backup", "--yes",
               token=ha.token if token is None else token, expect=expect)


def hourly(ha: HomeAssistant, sid: str, start: datetime, end: datetime,
           min_rows: int = 0) -> dict[int, float]:
    # No polling needed: `import` returns only once HA holds the rows (min_rows=0 reads once).
    return changes(ha, sid, start, end, "hour", min_rows=min_rows)


# -------------------------------------------------------------------------- (a) new statistic


@pytest.mark.ha
def test_new_external_statistic(ha: HomeAssistant, tmp_path: Path) -> None:
    """3 days of 15-minute kWh deltas into a new external statistic; `plan` first writes
    nothing and says this path writes no 5-minute rows. HA holds every hour as soon as
    `import` returns (it confirms by reading back)."""
    sid = "backdate:ws_house"
    end = last_full_hour()
    intervals = dg.quarter_hour_deltas(end - timedelta(days=3), end, seed=11)
    path = dg.write_delta_csv(tmp_path / "ws_house.csv", intervals, value_column="kwh")

    proc = run("plan", path, "--to", ha.url, token=ha.token)
    assert "hourly rows only" in proc.stdout and "5-minute" in proc.stdout, proc.stdout
    assert metadata(ha, sid) is None, "`backdate plan` wrote the statistic"

    ws_import(ha, path)
    meta = metadata(ha, sid)
    assert meta is not None and meta["source"] == "backdate" and meta["has_sum"] is True
    assert meta["statistics_unit_of_measurement"] == "kWh"
    expected = dg.hourly_totals(intervals)
    got = hourly(ha, sid, intervals[0].start - timedelta(days=1), end + timedelta(hours=1))
    assert_amounts(got, expected, f"{sid}: hourly change")
    got5 = changes(ha, sid, intervals[0].start, end, "5minute", min_rows=0)
    assert not got5, "the WebSocket path wrote 5-minute rows"


# ------------------------------------------------------------------------------- (b) prepend


@pytest.mark.ha
def test_prepend_before_existing_hours(ha: HomeAssistant, tmp_path: Path) -> None:
    """30 days placed before 2 days that exist: the seam hour keeps its change (the later rows
    are shifted with adjust_sum_statistics), no hour is negative."""
    sid = "backdate:ws_prepend"
    end = last_full_hour()
    seam = end - timedelta(days=2)
    first = seam - timedelta(days=30)
    recent = dg.quarter_hour_deltas(seam, end, seed=21)
    history = dg.quarter_hour_deltas(first, seam, seed=22)
    recent_csv = dg.write_delta_csv(tmp_path / "recent.csv", recent)
    history_csv = dg.write_delta_csv(tmp_path / "history.csv", history)
    span = (first - timedelta(days=1), end + timedelta(hours=1))

    ws_import(ha, recent_csv, "--statistic-id", sid)
    before = hourly(ha, sid, *span)
    assert_amounts(before, dg.hourly_totals(recent), "existing statistic: hourly change")

    ws_import(ha, history_csv, "--statistic-id", sid)
    after = hourly(ha, sid, *span)
    key = dg.epoch(seam)
    assert abs(after[key] - before[key]) < TOL, (
        f"seam hour {_when(key)} changed: {before[key]!r} before, {after[key]!r} after")
    assert_no_negative(after, "after prepending: hourly change")
    assert_amounts({t: v for t, v in after.items() if t >= key}, before,
                   "pre-existing hours after prepending")
    assert_amounts({t: v for t, v in after.items() if t < key}, dg.hourly_totals(history),
                   "prepended hours")


# ---------------------------------------------------------------------- (c) re-import a range


@pytest.mark.ha
def test_reimport_middle_range_doubled(ha: HomeAssistant, tmp_path: Path) -> None:
    """10 days, then days 4-6 again with doubled values: new inside, edges unchanged."""
    sid = "backdate:ws_reimport"
    end = last_full_hour()
    start = end - timedelta(days=10)
    lo, hi = start + timedelta(days=3), start + timedelta(days=6)
    old = dg.quarter_hour_deltas(start, end, seed=31)
    new = [dg.Interval(i.start, i.end, i.value * 2) for i in old if lo <= i.start < hi]
    old_csv = dg.write_delta_csv(tmp_path / "ten_days.csv", old, value_column="delta",
                                 with_end=True, tz=UTC)
    new_csv = dg.write_delta_csv(tmp_path / "days_4_6.csv", new, value_column="delta",
                                 with_end=True, tz=UTC)
    span = (start - timedelta(days=1), end + timedelta(hours=1))

    ws_import(ha, old_csv, "--statistic-id", sid)
    before = hourly(ha, sid, *span)
    assert_amounts(before, dg.hourly_totals(old), "10 days: hourly change")

    ws_import(ha, new_csv, "--statistic-id", sid)
    after = hourly(ha, sid, *span)
    for t, label in ((dg.epoch(lo) - 3600, "hour before the range"),
                     (dg.epoch(hi), "hour after the range")):
        assert abs(after[t] - before[t]) < TOL, (
            f"step at the {label} {_when(t)}: {before[t]!r} before, {after[t]!r} after")
    assert_amounts(after, {**dg.hourly_totals(old), **dg.hourly_totals(new)},
                   "after re-importing days 4-6: hourly change")
    assert_no_negative(after, "after re-importing days 4-6")


# ---------------------------------------------------------------------------------- (d) DST


@pytest.mark.ha
@pytest.mark.parametrize("season", ["spring", "autumn"])
def test_dst_days_in_wh(ha: HomeAssistant, tmp_path: Path, season: str) -> None:
    """15-minute Wh amounts across a DST change (92 / 100 quarter-hours on the day), naive
    local times with --tz: every hour and the DST day in HA, in kWh."""
    first, end, dst_day, quarters = DST_CASES[season]
    sid = f"backdate:ws_dst_{season}"
    intervals = dg.quarter_hour_deltas(first, end, seed=41 if season == "spring" else 42,
                                       scale=1000, decimals=0)
    on_day = [i for i in intervals if i.start.astimezone(dg.VIENNA).date() == dst_day.date()]
    assert len(on_day) == quarters
    path = dg.write_delta_csv(tmp_path / f"{season}.csv", intervals, value_column="value",
                              naive=True)
    ws_import(ha, path, "--statistic-id", sid, "--unit", "Wh", "--tz", "Europe/Vienna")

    expected = dg.hourly_totals(intervals, 0.001)
    assert_amounts(hourly(ha, sid, first - timedelta(days=1), end), expected,
                   f"{sid}: hourly change (kWh)")
    got_days = changes(ha, sid, first, end, "day", min_rows=3)
    day_key = dg.epoch(dst_day)
    want = sum(i.value for i in on_day) / 1000
    assert abs(got_days[day_key] - want) < TOL, (
        f"{dst_day:%Y-%m-%d} ({quarters} quarter-hours): expected {want!r} kWh, "
        f"HA says {got_days.get(day_key)!r}")
    assert_amounts(got_days, dg.daily_totals(expected), f"{sid}: daily change")


# ------------------------------------------------------------------------------------ errors


def _small_csv(tmp_path: Path, name: str) -> Path:
    end = last_full_hour()
    return dg.write_delta_csv(tmp_path / f"{name}.csv",
                              dg.quarter_hour_deltas(end - timedelta(hours=6), end, seed=5))


@pytest.mark.ha
def test_non_admin_token_exit_3_nothing_written(ha: HomeAssistant, tmp_path: Path) -> None:
    token = ha.create_user("ws_viewer")
    path = _small_csv(tmp_path, "ws_viewer")
    proc = ws_import(ha, path, token=token, expect=3)
    assert "not an administrator" in proc.stderr + proc.stdout, proc.stderr
    assert metadata(ha, "backdate:ws_viewer") is None, "a non-admin import wrote metadata"


@pytest.mark.ha
def test_bad_token_exit_3(ha: HomeAssistant, tmp_path: Path) -> None:
    proc = ws_import(ha, _small_csv(tmp_path, "ws_bad_token"), token="not-a-token", expect=3)
    assert "token rejected" in proc.stderr + proc.stdout, proc.stderr
    assert "not-a-token" not in proc.stderr + proc.stdout, "the token was printed"


def test_unreachable_exit_3(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    proc = run("import", _small_csv(tmp_path, "ws_nowhere"), "--to", url, "--no-backup",
               "--yes", token="whatever", expect=3)
    assert "cannot reach Home Assistant" in proc.stderr + proc.stdout, proc.stderr


# ---------------------------------------------------------------- HA restarted mid-import


@pytest.mark.ha
def test_ha_restarted_during_ten_year_import(ha: HomeAssistant, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Ten years of hourly amounts (87,600 rows; HA needs about a minute to commit them);
    HA is stopped while it holds only part of them and started again. `import` reconnects,
    waits until HA's rows settle, sends what is missing, and confirms: exit 0 and every hour
    right; or, if it cannot, exit 3 stating what HA holds."""
    sid = "backdate:ws_ten_years"
    end = dg.floor_hour(datetime.now(UTC)) - timedelta(days=1)
    start = end - timedelta(hours=87_600)
    path = tmp_path / "ten_years.csv"
    expected: dict[int, float] = {}
    with path.open("w") as fh:
        fh.write("start,kwh\n")
        t = dg.epoch(start)
        for k in range(87_600):
            value = (k * 37 % 1000) / 1000  # exact in the CSV: 0.000 .. 0.999
            fh.write(f"{datetime.fromtimestamp(t, UTC).isoformat()},{value}\n")
            expected[t] = value
            t += 3600
    env = {**os.environ, "HA_TOKEN": ha.token, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [BACKDATE, "import", str(path), "--statistic-id", sid, "--to", ha.url, "--no-backup",
         "--yes"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        held = 0
        while time.monotonic() < deadline and proc.poll() is None:
            if metadata(ha, sid) is not None:
                rows = changes(ha, sid, start - timedelta(hours=1), end, "hour", min_rows=0)
                held = len(rows)
                if held:
                    break
            time.sleep(0.5)
        assert proc.poll() is None, f"import ended before HA was stopped:\n{proc.stdout}"
        assert 0 < held < 87_600, f"HA held {held} rows when it was to be stopped"
        port = ha.port
        stopping = time.monotonic()
        ha.stop()
        # The harness moves HA to a new port while the old one is in TIME_WAIT; HA itself
        # binds with SO_REUSEADDR, and the import must find HA where it was.
        monkeypatch.setattr(ha_harness, "_port_is_free", lambda _port: True)
        ha.start()
        print(f"HA stopped at {held} rows and was back after {time.monotonic() - stopping:.1f} s")
        assert ha.port == port, "HA came back on another port"
        out, err = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode in (0, 3), f"exit {proc.returncode}\n{out[-3000:]}\n{err[-3000:]}"
    got = changes(ha, sid, start - timedelta(days=1), end + timedelta(hours=1), "hour",
                  min_rows=0)
    print(f"import exit {proc.returncode}: {err.strip()[-500:]}")
    if proc.returncode == 0:
        assert_amounts(got, expected, f"{sid} (HA restarted at {held} rows): hourly change")
    else:
        assert "Home Assistant now holds" in err, err[-3000:]
        assert f"{sid}:" in err and "hours written" in err, err[-3000:]


# ------------------------------------------------------------ without HA: a scripted fake


class FakeHA:
    """Answers the calls HAWebSocketTarget makes, from an in-memory hourly table. `drop`
    import messages (by number) are acknowledged but never written, as when HA's recorder
    job fails (HA logs it; the caller is never told)."""

    def __init__(self, version: str, drop: frozenset[int] = frozenset()):
        self.version = version
        self.drop = drop
        self.sent: list[dict[str, Any]] = []
        self.rows: dict[float, dict[str, Any]] = {}
        self.meta: dict[str, Any] | None = None
        self.ha_version = version

    def call(self, msg_type: str, /, *, timeout: float | None = None, **fields: Any) -> Any:
        self.sent.append({"type": msg_type, **fields})
        if msg_type == "get_config":
            return {"version": self.version, "time_zone": "Europe/Vienna"}
        if msg_type == "auth/current_user":
            return {"name": "admin", "is_admin": True}
        if msg_type == "recorder/get_statistics_metadata":
            return [] if self.meta is None else [self.meta]
        if msg_type == "recorder/import_statistics":
            n = sum(1 for m in self.sent if m["type"] == msg_type) - 1
            self.meta = {**fields["metadata"],
                         "statistics_unit_of_measurement": fields["metadata"][
                             "unit_of_measurement"]}
            if n not in self.drop:
                for row in fields["stats"]:
                    ts = datetime.fromisoformat(row["start"]).timestamp()
                    self.rows[ts] = {**row, "start": ts * 1000}
            return None
        if msg_type == "recorder/statistics_during_period":
            lo = datetime.fromisoformat(fields["start_time"]).timestamp()
            hi = datetime.fromisoformat(fields.get("end_time", "2100-01-01T00:00:00+00:00"))
            rows = [r for t, r in sorted(self.rows.items()) if lo <= t < hi.timestamp()]
            return {fields["statistic_ids"][0]: rows} if rows else {}
        raise AssertionError(f"unexpected call {msg_type}")

    def close(self) -> None:
        pass


def _plan_into(fake: FakeHA, hours: int) -> tuple[Any, Any]:
    import numpy as np

    from backdate.app.importing import ImportOptions, plan_imports
    from backdate.models import Kind, Series
    from backdate.targets.ha_ws import HAWebSocketTarget

    target = HAWebSocketTarget("http://fake:8123", "token", client=fake)  # type: ignore[arg-type]
    end = 1_700_000_000 // 3600 * 3600
    times = np.arange(end - hours * 3600, end, 3600, dtype=np.float64)
    series = Series(source="x.csv", times=times, values=np.full(hours, 0.5),
                    lines=np.arange(hours) + 2, ends=times + 3600, kind=Kind.DELTA, unit="kWh")
    imports = plan_imports(target, [series], ImportOptions(statistic_id="backdate:fake"))
    return target, imports[0].plan


@pytest.mark.parametrize(("version", "has_mean"), [("2024.3.3", True), ("2025.10.4", True),
                                                   ("2025.11.0", False), ("2026.11.0", False)])
def test_metadata_fields_follow_the_version(version: str, has_mean: bool) -> None:
    fake = FakeHA(version)
    target, plan = _plan_into(fake, 3)
    target.apply(plan)
    meta = next(m for m in fake.sent if m["type"] == "recorder/import_statistics")["metadata"]
    assert ("has_mean" in meta) is has_mean, meta
    assert ("mean_type" in meta) is (not has_mean), meta
    if not has_mean:
        assert meta["mean_type"] == 0 and meta["unit_class"] == "energy", meta
    for row in next(m for m in fake.sent if m["type"] == "recorder/import_statistics")["stats"]:
        assert row["start"].endswith("+00:00") and {"state", "sum"} <= set(row), row


def test_messages_stay_under_4_mib_and_every_row_is_sent() -> None:
    fake = FakeHA("2024.3.3")
    target, plan = _plan_into(fake, 87_600)
    target.apply(plan)
    imports = [m for m in fake.sent if m["type"] == "recorder/import_statistics"]
    assert len(imports) > 1
    assert max(len(json.dumps(m)) for m in imports) < 4 * 1024 * 1024
    assert sum(len(m["stats"]) for m in imports) == 87_600


def test_a_chunk_ha_never_writes_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """HA acknowledges every import but one job fails inside HA: VerificationError (exit 3)
    naming the first hour of that chunk, after the read-back timeout."""
    from backdate.errors import VerificationError
    from backdate.targets import ha_ws

    monkeypatch.setattr(ha_ws, "VERIFY_BASE_SECONDS", 0.3)
    monkeypatch.setattr(ha_ws, "VERIFY_SECONDS_PER_ROW", 0.0)
    fake = FakeHA("2024.3.3", drop=frozenset({1}))
    target, plan = _plan_into(fake, 12_000)
    first_lost = float(plan.hourly.rows.start_ts[ha_ws.CHUNK_ROWS])
    with pytest.raises(VerificationError) as err:
        target.apply(plan)
    when = datetime.fromtimestamp(first_lost, UTC).strftime("%Y-%m-%d %H:%M UTC")
    assert f"the hour {when} is missing" in str(err.value), str(err.value)
    assert err.value.exit_code == 3
