"""A live meter in a running Home Assistant, and how to read what HA compiles from it.

Why: the hardest seam backdate promises (PRODUCT.md "Continuity", "Coexistence") is the one with
HA's own 5-minute compiler. HA continues a sensor's ``sum`` from its latest short-term row and
measures growth from that row's ``state`` (the meter value, ha-recorder.md §3.4). An import that
moves those rows wrongly shows as a spike of the whole meter value (~5000 kWh), a negative hour,
or a lost compile run at the next compile. A model of HA cannot show that; HA 2024.3.3 can.

The scenario (history prepended into ``sensor.grid_energy`` while HA compiles it, input
reaching into the open window) runs in tests/test_coexistence.py, on SQLite, MariaDB and
PostgreSQL side by side, and through the API in tests/test_ha_ws_entity.py. This module holds
the pieces they build on: ``MeterPoster`` (posts a rising ``total_increasing`` kWh
meter and keeps HA's ``last_updated`` of every state), ``ha_rows`` (HA's own
``recorder/statistics_during_period``), ``compiled_runs`` / ``db_snapshot`` (read-only reads of
``statistics_runs`` and the sensor's rows, on any engine), the waits for HA's compile timer and
``log_problems``.
"""

from __future__ import annotations

import math
import os
import random
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datagen as dg
from ha_harness import REPO_ROOT, HomeAssistant

from backdate.hass.client import statistics_during_period_sync

SID = "sensor.grid_energy"
ATTRIBUTES = {
    "state_class": "total_increasing",
    "device_class": "energy",
    "unit_of_measurement": "kWh",
    "friendly_name": "Grid energy",
}
METER_START = 4987.25  # kWh: far from any sum backdate writes (the sums start near 0)
TOL = 1e-6
FIVE = 300
COMPILE_DELAY = 10  # HA's timer: UTC minutes 0, 5, ..., 55 at second 10
BUDGET = 690.0  # s of wall clock from HA's start after which no optional wait is begun
KWH = {"energy": "kWh"}
Rows = dict[int, dict[str, Any]]


# ------------------------------------------------------------------------------ the live meter


class MeterPoster(threading.Thread):
    """Posts a rising meter to HA (every 15-25 s unless told); remembers HA's ``last_updated``
    per value."""

    def __init__(self, ha: HomeAssistant, *, seed: int = 7,
                 every: tuple[float, float] = (15, 25),
                 step: tuple[float, float] = (0.005, 0.06)) -> None:
        super().__init__(name="meter-poster", daemon=True)
        self.ha = ha
        self.rng = random.Random(seed)
        self.every = every  # s between two posts (uniform)
        self.step = step  # kWh the meter grows per post (uniform)
        self.samples: list[tuple[float, float]] = []  # (HA's last_updated, kWh), in order
        self.error: BaseException | None = None
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def run(self) -> None:
        value = METER_START
        try:
            while not self._halt.is_set():
                body = self.ha.post_state(SID, f"{value:.3f}", ATTRIBUTES)
                stamp = datetime.fromisoformat(body["last_updated"]).timestamp()
                with self._lock:
                    self.samples.append((stamp, value))
                value = round(value + self.rng.uniform(*self.step), 3)
                self._halt.wait(self.rng.uniform(*self.every))
        except BaseException as err:  # reported by check()
            self.error = err

    def stop(self) -> None:
        self._halt.set()
        self.join(30)

    def check(self) -> None:
        if self.error is not None:
            raise AssertionError(f"posting states to HA failed: {self.error!r}")
        if not self.is_alive() and not self._halt.is_set():
            raise AssertionError("the meter thread died")

    def snapshot(self) -> list[tuple[float, float]]:
        with self._lock:
            return list(self.samples)


def meter_at(samples: list[tuple[float, float]], t: float) -> float | None:
    """The sensor's state at instant t: the last value HA recorded before t."""
    value = None
    for stamp, v in samples:
        if stamp >= t:
            break
        value = v
    return value


# ------------------------------------------------------------------------------------ helpers


BACKDATE = str(REPO_ROOT / ".venv" / "bin" / "backdate")


def run_backdate(*args: object, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The installed CLI as a user runs it (in ``cwd``: where server backups go); the caller
    judges the exit code and output."""
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run([BACKDATE, *(str(a) for a in args)], capture_output=True, text=True,
                          timeout=600, env=env, check=False, cwd=cwd)


def describe(proc: subprocess.CompletedProcess[str]) -> str:
    return (f"`backdate {' '.join(proc.args[1:])}` exited {proc.returncode}\n--- stdout ---\n"
            f"{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}")


def _when(ts: float) -> str:
    return (f"{datetime.fromtimestamp(ts, UTC):%Y-%m-%d %H:%M}Z"
            f" ({datetime.fromtimestamp(ts, dg.VIENNA):%m-%d %H:%M%z} Vienna)")


def assert_amounts(actual: dict[int, Any], expected: dict[int, float], what: str) -> None:
    """Exactly the expected slots, each with |HA - expected| < TOL."""
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    wrong = [(t, expected[t], actual[t]) for t in sorted(set(expected) & set(actual))
             if actual[t] is None or abs(actual[t] - expected[t]) >= TOL]
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing, first {_when(missing[0])}")
    if extra:
        lines.append(f"{len(extra)} unexpected, first {_when(extra[0])}: {actual[extra[0]]}")
    lines += [f"{_when(t)}: expected {e!r}, HA says {g!r}" for t, e, g in wrong[:8]]
    if len(wrong) > 8:
        lines.append(f"... {len(wrong)} wrong in all")
    assert not lines, f"{what}:\n  " + "\n  ".join(lines)


def now() -> float:
    return time.time()


def next_compile(t: float) -> float:
    """Wall-clock time at which HA compiles the 5-minute window that is open at t."""
    return (math.floor(t / FIVE) + 1) * FIVE + COMPILE_DELAY


def utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


def ha_rows(ha: HomeAssistant, start: float, end: float, period: str,
            statistic_id: str = SID) -> Rows:
    """HA's rows for one statistic (SID unless told), keyed by start (UTC epoch s): change,
    sum and state."""
    with ha.ws(timeout=120) as ws:
        result = statistics_during_period_sync(
            ws, [statistic_id], utc(start), utc(end), period,  # type: ignore[arg-type]
            ["change", "sum", "state"], KWH,
        )
    return {int(round(r["start"] / 1000)): r for r in result.get(statistic_id, [])}


def _run_start(value: Any) -> float:
    """statistics_runs.start as UTC epoch s: SQLite text, MariaDB naive UTC, PostgreSQL aware."""
    when = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (when if when.tzinfo else when.replace(tzinfo=UTC)).timestamp()


def compiled_runs(ha: HomeAssistant) -> list[float]:
    """Starts of the 5-minute windows HA recorded in statistics_runs (UTC epoch s), ascending."""
    return sorted(_run_start(r[0]) for r in ha.read_sql("SELECT start FROM statistics_runs"))


def last_compiled_end(ha: HomeAssistant) -> int:
    return int(compiled_runs(ha)[-1]) + FIVE


def db_snapshot(ha: HomeAssistant) -> dict[str, dict[float, tuple[Any, Any]]]:
    """(state, sum) by start_ts of SID in both tables, read-only, one short read per table."""
    total = "`sum`" if ha.engine == "mariadb" else '"sum"'
    out: dict[str, dict[float, tuple[Any, Any]]] = {}
    for table in ("statistics", "statistics_short_term"):
        out[table] = {
            float(start): (state, value)
            for start, state, value in ha.read_sql(
                f"SELECT start_ts, state, {total} FROM {table} WHERE metadata_id = "
                "(SELECT id FROM statistics_meta WHERE statistic_id = %s)", (SID,))
        }
    return out


def wait_until(predicate, deadline: float, what: str, poster: MeterPoster, detail) -> Any:
    """Poll ``predicate`` every 2 s until it returns something truthy or the deadline passes."""
    while True:
        poster.check()
        got = predicate()
        if got:
            return got
        if now() > deadline:
            raise AssertionError(f"timed out waiting for {what}; {detail()}")
        time.sleep(2)


def wait_for_window(ha: HomeAssistant, poster: MeterPoster, window: float) -> Rows:
    """Until HA has compiled the 5-minute window starting at ``window`` for SID."""
    deadline = window + FIVE + COMPILE_DELAY + 90

    def got() -> Rows | None:
        rows = ha_rows(ha, window - 3600, window + FIVE, "5minute")
        return rows if int(window) in rows else None

    return wait_until(
        got, deadline, f"HA to compile the 5-minute window {_when(int(window))} of {SID}",
        poster,
        lambda: f"HA returned {ha_rows(ha, window - 3600, window + FIVE, '5minute')}\n"
        f"--- HA log tail ---\n{ha.log_tail(30)}",
    )


def log_problems(ha: HomeAssistant) -> list[str]:
    """Recorder failures a writer under a running HA could cause, and HA losing the sum."""
    bad = []
    initial = 0
    for line in ha.log_text(all_runs=True).splitlines():
        if f"Compiling initial sum statistics for {SID}," in line:
            initial += 1
        if (" ERROR " in line or "Traceback" in line or "database is locked" in line
                or "UNIQUE constraint" in line or "duplicated statistic" in line
                or f"Detected new cycle for {SID}," in line):
            bad.append(line)
    if initial != 1:
        bad.append(f"HA started the sum of {SID} from zero {initial} times (expected once)")
    return bad
