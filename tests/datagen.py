"""Deterministic test data for the real-HA import tests, and what HA must show for it.

Why a module of its own: each generator returns the readings *and* the expected per-hour
(per-5-minute, per-day) amounts computed independently of backdate, straight from the
semantics of PRODUCT.md (an interval's amount belongs to the slots it covers, spread evenly;
a cumulative meter's growth between two readings belongs to the time between them; a
measurement sample is held until the next one). Every generator is seeded; nothing here reads
the clock, so callers pass the times.

Times are aware ``datetime`` objects; expected tables are keyed by UTC epoch seconds of the
slot start (``int``), which is how HA's ``start`` (in ms) is compared.
"""

from __future__ import annotations

import csv
import math
import os
import random
import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

VIENNA = ZoneInfo("Europe/Vienna")
HOUR = 3600
FIVE_MINUTES = 300
QUARTER = timedelta(minutes=15)


@dataclass(frozen=True, slots=True)
class Interval:
    """An amount used over ``[start, end)``."""

    start: datetime
    end: datetime
    value: float


@dataclass(frozen=True, slots=True)
class Sample:
    """A value at an instant (a meter reading or a measurement)."""

    time: datetime
    value: float


# ----------------------------------------------------------------------------------- helpers


def epoch(t: datetime) -> int:
    if t.tzinfo is None:
        raise ValueError("naive datetime")
    return int(t.timestamp())


def floor_hour(t: datetime) -> datetime:
    return datetime.fromtimestamp(epoch(t) // HOUR * HOUR, UTC)


# ------------------------------------------------------------------------- the tests' clock
#
# The one place tests take "now" from for data that must be recent: recent data goes into a
# database together with the statistics_runs rows Home Assistant would have written for it
# (ha_harness.write_compiled_runs), and backdate runs on the same clock (backdate.clock,
# moved by tests/conftest.py and tests/shifted_backdate.py). `pytest --time-shift=-365d`
# (or +30d, -6h) runs the suite's database tests as if today were another day; the system
# clock is never touched. Tests against a running Home Assistant use the real clock: HA
# compiles by its own.

SHIFT_ENV = "BACKDATE_TEST_TIME_SHIFT"
_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_shift(text: str) -> float:
    """'+30d', '-365d', '-6h', '0' -> seconds."""
    m = re.fullmatch(r"\s*([+-]?\d+(?:\.\d+)?)\s*([dhms]?)\s*", text)
    if not m:
        raise ValueError(f"time shift {text!r}: expected e.g. +30d, -365d, -6h")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def time_shift() -> float:
    """Seconds the tests' clock is moved by (0 unless --time-shift is given)."""
    return parse_shift(os.environ.get(SHIFT_ENV, "0"))


def now() -> datetime:
    """The tests' now: the system clock moved by the time shift."""
    return datetime.fromtimestamp(time.time() + time_shift(), UTC)


def last_full_hour() -> datetime:
    """The start of the current hour on the tests' clock: recent data ends here."""
    return floor_hour(now())


def local_midnight(t: datetime, tz: ZoneInfo = VIENNA) -> datetime:
    """Start of the local day that contains t, as an aware datetime in tz."""
    local = t.astimezone(tz)
    return datetime(local.year, local.month, local.day, tzinfo=tz)


def next_local_midnight(t: datetime, tz: ZoneInfo = VIENNA) -> datetime:
    day = local_midnight(t, tz)
    nxt = day.replace(tzinfo=None) + timedelta(days=1)
    return nxt.replace(tzinfo=tz)


def format_time(t: datetime, *, tz: ZoneInfo | None, naive: bool = False) -> str:
    """ISO 8601 with the offset of tz (or UTC), or naive local time in tz when naive=True."""
    local = t.astimezone(tz or UTC)
    if naive:
        return local.replace(tzinfo=None).isoformat(timespec="seconds")
    return local.isoformat(timespec="seconds")


# --------------------------------------------------------------------------- delta intervals


def _load(rng: random.Random, t: datetime) -> float:
    """A household-like quarter-hour load in kWh: night base, daytime hump, noise."""
    hour = t.astimezone(VIENNA).hour + t.astimezone(VIENNA).minute / 60
    hump = 0.25 * max(0.0, math.sin((hour - 6) / 16 * math.pi))
    return 0.05 + hump + rng.uniform(0.0, 0.2)


def quarter_hour_deltas(
    start: datetime, end: datetime, *, seed: int, decimals: int = 3, scale: float = 1.0
) -> list[Interval]:
    """15-minute amounts covering [start, end) (start and end on the quarter-hour grid).

    Values are in kWh times ``scale`` (scale 1000 and decimals 0 gives whole Wh), rounded so
    that the CSV text is exact.
    """
    if epoch(start) % 900 or epoch(end) % 900:
        raise ValueError("start and end must be on the quarter-hour grid")
    rng = random.Random(seed)
    out: list[Interval] = []
    t = start.astimezone(UTC)
    stop = end.astimezone(UTC)
    while t < stop:
        value = round(_load(rng, t) * scale, decimals)
        if decimals == 0:
            value = float(int(value))
        out.append(Interval(t, t + QUARTER, value))
        t += QUARTER
    return out


def scaled(intervals: Iterable[Interval], factor: float) -> list[Interval]:
    return [Interval(i.start, i.end, i.value * factor) for i in intervals]


def slot_totals(
    intervals: Iterable[Interval], period: int, factor: float = 1.0
) -> dict[int, float]:
    """Amount per UTC slot of ``period`` seconds, each interval spread evenly over its length."""
    out: dict[int, float] = defaultdict(float)
    for item in intervals:
        a, b = epoch(item.start), epoch(item.end)
        rate = item.value * factor / (b - a)
        slot = a // period * period
        while slot < b:
            lo, hi = max(a, slot), min(b, slot + period)
            out[slot] += rate * (hi - lo)
            slot += period
    return dict(out)


def hourly_totals(intervals: Iterable[Interval], factor: float = 1.0) -> dict[int, float]:
    return slot_totals(intervals, HOUR, factor)


def five_minute_totals(intervals: Iterable[Interval], factor: float = 1.0) -> dict[int, float]:
    return slot_totals(intervals, FIVE_MINUTES, factor)


def daily_totals(hourly: dict[int, float], tz: ZoneInfo = VIENNA) -> dict[int, float]:
    """Sum of hourly amounts per local day, keyed by the epoch of local midnight (HA's `day`)."""
    out: dict[int, float] = defaultdict(float)
    for hour, amount in hourly.items():
        day = local_midnight(datetime.fromtimestamp(hour, UTC), tz)
        out[epoch(day)] += amount
    return dict(out)


def write_delta_csv(
    path: Path,
    intervals: Sequence[Interval],
    *,
    value_column: str = "kwh",
    time_column: str = "start",
    with_end: bool = False,
    tz: ZoneInfo | None = VIENNA,
    naive: bool = False,
) -> Path:
    """Canonical CSV of interval amounts, in input order."""
    header = [time_column] + (["end"] if with_end else []) + [value_column]
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        for item in intervals:
            row = [format_time(item.start, tz=tz, naive=naive)]
            if with_end:
                row.append(format_time(item.end, tz=tz, naive=naive))
            row.append(_num(item.value))
            writer.writerow(row)
    return path


def _num(value: float) -> str:
    return str(int(value)) if value == int(value) and abs(value) >= 1 else repr(value)


# ----------------------------------------------------------------------- cumulative readings


def meter_with_replacement(
    start: datetime,
    hours: int,
    *,
    seed: int,
    replace_after: timedelta,
    old_start: float = 4987.25,
    first_new: float = 0.0,
) -> tuple[list[Sample], int]:
    """Quarter-hourly meter readings; the meter is replaced ``replace_after`` after start.

    The old meter (about 5000 kWh) is read up to ``start + replace_after - 15 min``; the new one
    reads ``first_new`` at ``start + replace_after`` and rises from there. Returns the readings
    and the index of the first reading of the new meter.
    """
    rng = random.Random(seed)
    out: list[Sample] = []
    t = start.astimezone(UTC)
    swap = t + replace_after
    value = old_start
    first_index = -1
    for _ in range(hours * 4 + 1):
        if t == swap:
            value = first_new
            first_index = len(out)
        elif out:
            value = round(value + round(_load(rng, t), 3), 3)
        out.append(Sample(t, value))
        t += QUARTER
    if first_index < 0:
        raise ValueError("replacement time not on the readings' grid")
    return out, first_index


def cumulative_hourly(readings: Sequence[Sample]) -> dict[int, float]:
    """Growth per UTC hour; a fall is a new meter counted from 0 (its reading is its growth)."""
    out: dict[int, float] = defaultdict(float)
    for a, b in zip(readings, readings[1:], strict=False):
        growth = b.value - a.value if b.value >= a.value else b.value
        t0, t1 = epoch(a.time), epoch(b.time)
        rate = growth / (t1 - t0)
        slot = t0 // HOUR * HOUR
        while slot < t1:
            lo, hi = max(t0, slot), min(t1, slot + HOUR)
            out[slot] += rate * (hi - lo)
            slot += HOUR
    return dict(out)


def write_samples_csv(
    path: Path,
    samples: Sequence[Sample],
    *,
    value_column: str,
    time_column: str = "time",
    tz: ZoneInfo | None = VIENNA,
) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow([time_column, value_column])
        for s in samples:
            writer.writerow([format_time(s.time, tz=tz), repr(s.value)])
    return path


# ------------------------------------------------------------------------------ measurements


def temperature_samples(
    start: datetime, hours: int, *, seed: int, drop: float = 0.15
) -> list[Sample]:
    """Outdoor temperature (°C, one decimal) every 10 minutes over ``hours`` hours from start.

    A logger that misses some readings: a fraction ``drop`` of the samples that are not on the
    full hour is left out (never in the last hour), so time weighting matters while each hour
    still starts with its own sample.
    """
    rng = random.Random(seed)
    base = start.astimezone(UTC)
    out: list[Sample] = []
    for k in range(hours * 6):
        t = base + timedelta(minutes=10 * k)
        local_hour = t.astimezone(VIENNA).hour + t.astimezone(VIENNA).minute / 60
        value = round(4.0 + 6.0 * math.sin((local_hour - 9) / 24 * 2 * math.pi)
                      + rng.uniform(-1.5, 1.5), 1)
        last_hour = k >= (hours - 1) * 6
        if k % 6 and not last_hour and rng.random() < drop:
            continue
        out.append(Sample(t, value))
    return out


@dataclass(frozen=True, slots=True)
class MeanMinMax:
    mean: float
    min: float
    max: float


def hourly_mean_min_max(samples: Sequence[Sample], step: int = 600) -> dict[int, MeanMinMax]:
    """Per UTC hour: time-weighted mean (each sample held until the next; the last one for
    ``step`` seconds) and the min/max of the samples taken in the hour.

    Requires a sample at the start of every hour (temperature_samples guarantees it), so no
    value from an earlier hour is held into an hour.
    """
    times = [epoch(s.time) for s in samples]
    holds = [*times[1:], times[-1] + step]
    weighted: dict[int, float] = defaultdict(float)
    covered: dict[int, float] = defaultdict(float)
    values: dict[int, list[float]] = defaultdict(list)
    for s, t0, t1 in zip(samples, times, holds, strict=True):
        hour = t0 // HOUR * HOUR
        if t0 % HOUR and hour not in values:
            raise ValueError("every hour needs a sample at its start")
        values[hour].append(s.value)
        slot = hour
        while slot < t1:
            lo, hi = max(t0, slot), min(t1, slot + HOUR)
            weighted[slot] += s.value * (hi - lo)
            covered[slot] += hi - lo
            slot += HOUR
    return {
        hour: MeanMinMax(weighted[hour] / covered[hour], min(vals), max(vals))
        for hour, vals in values.items()
    }
