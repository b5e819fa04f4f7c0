"""Resuming an import over HA's WebSocket API when Home Assistant goes away, against a real
HA 2024.3.3.

Why: HA OS users restart HA (updates, add-ons) at any time, and a ten-year import takes HA
over a minute to commit. backdate must ride out restarts (reconnect with backoff, no retry
storm, send only what HA lost, confirm), and when it cannot, exit 3 naming exactly which hours
HA holds and which not, so the user knows what to do.

* HA killed twice during a ten-year import via the CLI, the second time staying down for
  longer than several retries: exit 0, every hour right, two resumes reported.
* HA killed while backdate still sends and not started again in time: TargetError (exit 3)
  naming the hours sent-but-unconfirmed and never sent; after HA is back, the named
  never-sent hours are indeed absent and the rest within the named ranges.
* HA killed just after it acknowledged the shift of a prepend into an existing statistic:
  the resume reads the range whole once (one-row polls while HA settles), sends the lost
  rows and the shift again, and the shift lands exactly once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import datagen as dg
import ha_harness
import numpy as np
import pytest
from ha_harness import HomeAssistant
from test_ha_import import (
    BACKDATE,
    TOL,
    assert_amounts,
    assert_no_negative,
    changes,
    metadata,
)

pytestmark = pytest.mark.ha
HOURS = 87_600


@pytest.fixture
def ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory,
       monkeypatch: pytest.MonkeyPatch) -> Iterator[HomeAssistant]:
    """An HA of its own (it is killed and restarted); always back on the same port."""
    monkeypatch.setattr(ha_harness, "_port_is_free", lambda _port: True)
    instance = HomeAssistant(tmp_path_factory.mktemp("ha_ws_resume"), venv=ha_venv)
    instance.start()
    # HA saves its auth store (the new token) with a delay; a clean stop writes it, so the
    # token survives the kills below.
    instance.restart()
    try:
        yield instance
    finally:
        instance.stop()


def kill(ha: HomeAssistant) -> None:
    """SIGKILL, as a crash or a pulled plug: HA's queued import jobs are lost."""
    assert ha.process is not None
    os.killpg(ha.process.pid, signal.SIGKILL)
    ha.process.wait(30)
    ha.process = None


def ten_years(path: Path) -> tuple[datetime, datetime, dict[int, float]]:
    end = dg.floor_hour(datetime.now(UTC)) - timedelta(days=1)
    start = end - timedelta(hours=HOURS)
    expected: dict[int, float] = {}
    with path.open("w") as fh:
        fh.write("start,kwh\n")
        t = dg.epoch(start)
        for k in range(HOURS):
            value = (k * 37 % 1000) / 1000
            fh.write(f"{datetime.fromtimestamp(t, UTC).isoformat()},{value}\n")
            expected[t] = value
            t += 3600
    return start, end, expected


class Lines(threading.Thread):
    """Collects a pipe's lines as they come, so the test can wait for one."""

    def __init__(self, pipe) -> None:  # type: ignore[no-untyped-def]
        super().__init__(daemon=True)
        self.pipe = pipe
        self.lines: list[str] = []
        self.start()

    def run(self) -> None:
        for line in self.pipe:
            self.lines.append(line)

    def wait_for(self, text: str, timeout: float, after: int = 0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for i, line in enumerate(self.lines[after:], after):
                if text in line:
                    return i
            time.sleep(0.2)
        raise AssertionError(f"no line with {text!r} within {timeout} s:\n{self.text()}")

    def text(self) -> str:
        return "".join(self.lines)


def held_rows(ha: HomeAssistant, sid: str, start: datetime, end: datetime) -> int:
    if metadata(ha, sid) is None:
        return 0
    return len(changes(ha, sid, start - timedelta(hours=1), end, "hour", min_rows=0))


def test_import_survives_two_kills_and_a_long_outage(ha: HomeAssistant, tmp_path: Path) -> None:
    sid = "backdate:ws_twice"
    start, end, expected = ten_years(tmp_path / "ten_years.csv")
    env = {**os.environ, "HA_TOKEN": ha.token, "COLUMNS": "200", "NO_COLOR": "1"}
    proc = subprocess.Popen(
        [BACKDATE, "import", str(tmp_path / "ten_years.csv"), "--statistic-id", sid, "--to",
         ha.url, "--no-backup", "--yes"], env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    err = Lines(proc.stderr)
    out = Lines(proc.stdout)
    try:
        deadline = time.monotonic() + 120
        held = 0
        while time.monotonic() < deadline and proc.poll() is None and not held:
            held = held_rows(ha, sid, start, end)
            time.sleep(0.5)
        assert proc.poll() is None and 0 < held < HOURS, f"held {held}\n{err.text()}"
        kill(ha)  # first outage: short
        time.sleep(1)
        ha.start()
        line = err.wait_for("held as planned; sending", 300)  # resume 1 re-sends what HA lost
        assert "resume 1 of" in err.text(), err.text()
        kill(ha)  # second outage, during the re-send: longer than several retries
        down = time.monotonic()
        time.sleep(12)
        ha.start()
        print(f"HA down {time.monotonic() - down:.0f} s the second time")
        try:
            err.wait_for("resume 2 of", 60, after=line)
        except AssertionError as failure:
            raise AssertionError(f"{failure}\nexit {proc.poll()}\n{out.text()[-3000:]}"
                                 ) from None
        proc.wait(900)
    finally:
        if proc.poll() is None:
            proc.kill()
    err.join(10)
    out.join(10)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out.text()[-3000:]}\n{err.text()}"
    assert "not back yet" in err.text(), err.text()  # retried, with notes
    retries = err.text().count("not back yet")
    assert retries <= 4, f"{retries} retry notes: a storm?\n{err.text()}"
    got = changes(ha, sid, start - timedelta(days=1), end + timedelta(hours=1), "hour",
                  min_rows=0)
    assert_amounts(got, expected, f"{sid} after two kills: hourly change")


def test_gives_up_naming_sent_and_unsent_hours(ha: HomeAssistant,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """HA killed while backdate still sends (after 20,000 rows) and not back within the
    reconnect window: exit 3 naming the hours sent but unconfirmed and those never sent.
    Started again, HA holds none of the never-sent hours."""
    from backdate.app.importing import ImportOptions, plan_imports
    from backdate.errors import TargetError
    from backdate.models import Kind, Series
    from backdate.targets import ha_ws

    monkeypatch.setattr(ha_ws, "RECONNECT_SECONDS", 8.0)
    sid = "backdate:ws_give_up"
    end = dg.epoch(dg.floor_hour(datetime.now(UTC)) - timedelta(days=1))
    times = np.arange(end - HOURS * 3600, end, 3600, dtype=np.float64)
    series = Series(source="x.csv", times=times, values=np.full(HOURS, 0.5),
                    lines=np.arange(HOURS) + 2, ends=times + 3600, kind=Kind.DELTA, unit="kWh")
    notes: list[str] = []
    target = ha_ws.HAWebSocketTarget(ha.url, ha.token)
    target.notify = notes.append  # type: ignore[method-assign]
    plan = plan_imports(target, [series], ImportOptions(statistic_id=sid))[0].plan

    def progress(sent: int) -> None:
        if sent >= 20_000 and ha.process is not None:
            kill(ha)

    began = time.monotonic()
    with pytest.raises(TargetError) as caught:
        target.apply(plan, progress=progress)
    elapsed = time.monotonic() - began
    target.close()
    message = str(caught.value)
    print(f"gave up after {elapsed:.1f} s: {message}")
    assert caught.value.exit_code == 3
    assert "did not come back within 8 s" in message, message
    assert "HA does not answer now" in message, message
    sent_end = datetime.fromtimestamp(times[0] + 20_000 * 3600, UTC)
    first = datetime.fromtimestamp(times[0], UTC)
    assert (f"sent but not confirmed (HA may hold them or not): [{first:%Y-%m-%d %H:%M} to "
            f"{sent_end - timedelta(hours=1):%Y-%m-%d %H:%M} UTC (20,000 h)]") in message, message
    assert (f"not written (never sent): [{sent_end:%Y-%m-%d %H:%M} to "
            f"{datetime.fromtimestamp(times[-1], UTC):%Y-%m-%d %H:%M} UTC (67,600 h)]"
            ) in message, message
    assert elapsed < 60, f"gave up after {elapsed:.0f} s"
    assert sum("not back yet" in n for n in notes) <= 2, notes

    ha.start()
    got = changes(ha, sid, first - timedelta(days=1), datetime.fromtimestamp(end, UTC),
                  "hour", min_rows=0) if metadata(ha, sid) else {}
    assert all(t < sent_end.timestamp() for t in got), "HA holds hours never sent"
    print(f"HA holds {len(got)} of the 20,000 sent hours after the kill")


def test_resume_sends_a_lost_shift_exactly_once(ha: HomeAssistant,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Two years prepended to an EXISTING statistic (so the later rows must be shifted); HA
    is killed just after it acknowledged the shift (queued behind ~17,500 rows it had not
    committed, so the shift is lost with them) and started again. backdate resumes: while
    HA settles it polls one-row reads only, reads the range back once, sends what HA lost and
    the shift again; the shift lands exactly once (a double shift would step the seam hour)
    and every hour is right. The new connection keeps the target's call timeout."""
    from backdate.app.importing import ImportOptions, plan_imports
    from backdate.models import Kind, Series
    from backdate.targets import ha_ws

    monkeypatch.setattr(ha_ws, "SETTLE_SECONDS", 5.0)
    sid = "backdate:ws_resume_shift"
    end = dg.epoch(dg.floor_hour(datetime.now(UTC)) - timedelta(days=1))
    seam = end - 48 * 3600
    history_hours = 2 * 8760

    def series(first: float, hours: int, values: np.ndarray) -> Series:
        times = first + 3600.0 * np.arange(hours)
        return Series(source="x.csv", times=times, values=values, lines=np.arange(hours) + 2,
                      ends=times + 3600, kind=Kind.DELTA, unit="kWh")

    recent_values = 0.25 + 0.5 * (np.arange(48) % 3)
    history_values = (np.arange(history_hours) * 37 % 1000) / 1000
    notes: list[str] = []
    target = ha_ws.HAWebSocketTarget(ha.url, ha.token, timeout=45)
    target.notify = notes.append  # type: ignore[method-assign]
    recent_plan = plan_imports(target, [series(seam, 48, recent_values)],
                               ImportOptions(statistic_id=sid))[0].plan
    target.apply(recent_plan)
    span = (datetime.fromtimestamp(seam - history_hours * 3600 - 86400, UTC),
            datetime.fromtimestamp(end + 3600, UTC))
    before = changes(ha, sid, *span, "hour", min_rows=0)
    assert len(before) == 48
    plan = plan_imports(target, [series(seam - history_hours * 3600.0, history_hours,
                                        history_values)],
                        ImportOptions(statistic_id=sid))[0].plan
    assert target._shift(plan) is not None, "prepending must shift the existing rows"

    real_call = target._call
    adjusts: list[float] = []
    full_reads: list[float] = []
    errors: list[BaseException] = []

    def restart() -> None:
        try:
            time.sleep(1)
            ha.start()
        except BaseException as err:  # reported below
            errors.append(err)

    worker = threading.Thread(target=restart)

    def call(msg_type: str, /, **fields: object) -> object:
        if msg_type == "recorder/statistics_during_period" and fields.get("period") == "hour":
            hours = (datetime.fromisoformat(str(fields.get("end_time", fields["start_time"])))
                     - datetime.fromisoformat(str(fields["start_time"]))) / timedelta(hours=1)
            if hours > ha_ws.CONFIRM_ROWS:
                full_reads.append(hours)
        result = real_call(msg_type, **fields)  # type: ignore[arg-type]
        if msg_type == "recorder/adjust_sum_statistics":
            adjusts.append(time.monotonic())
            if len(adjusts) == 1:  # acknowledged (queued): kill HA before it runs the job
                kill(ha)
                worker.start()
        return result

    target._call = call  # type: ignore[method-assign]
    try:
        target.apply(plan)
    finally:
        if worker.ident is not None:
            worker.join(300)
        target.close()
    assert not errors, errors
    text = "\n".join(notes)
    print(text)
    assert len(adjusts) == 2, f"the shift was sent {len(adjusts)} times\n{text}"
    assert "shifting the later rows" in text and "resume 1 of" in text, text
    assert full_reads == [pytest.approx(history_hours)], (
        f"range read whole {len(full_reads)} times while resuming: {full_reads}")
    assert target._ws.timeout == 45, "the reconnected client lost the call timeout"

    after = changes(ha, sid, *span, "hour", min_rows=0)
    key = int(seam)
    assert abs(after[key] - before[key]) < TOL, (
        f"seam hour changed: {before[key]!r} before, {after[key]!r} after (shifted twice?)")
    assert_amounts({t: v for t, v in after.items() if t >= key}, before,
                   "pre-existing hours after the resumed prepend")
    history = {int(seam - history_hours * 3600 + 3600 * k): float(v)
               for k, v in enumerate(history_values)}
    assert_amounts({t: v for t, v in after.items() if t < key}, history, "prepended hours")
    assert_no_negative(after, "after the resumed prepend")
