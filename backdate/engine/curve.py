"""Readings of any kind turned into amounts per grid slot, exactly and without I/O.

Every energy kind becomes a cumulative curve E(t) (energy used up to t) plus the spans where the
input says something. The amount in a slot [a, b) is E(b) - E(a), so an interval that straddles
a slot boundary is split in proportion (delta and cumulative: linear; power: the exact integral
of the linearly interpolated rate). Measurements become a step function held until the next
sample, averaged over time per slot like HA does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from backdate.errors import InputError
from backdate.models import Series

# A drop of a cumulative meter to below this share of its highest value is a reset or a new
# meter (HA uses the same rule for total_increasing sensors); smaller drops are read jitter.
RESET_RATIO = 0.9
# How many low readings in a row can still be glitches when the meter then comes back.
GLITCH_RUN = 3


@dataclass(slots=True)
class EnergyCurve:
    """Piecewise E(t). For power, `rate` holds the rate at each x (E is quadratic between)."""

    xs: np.ndarray  # increasing times
    cs: np.ndarray  # E at xs
    spans: np.ndarray  # (n, 2) covered [start, end) spans, sorted and disjoint
    rate: np.ndarray | None = None  # power: rate per hour at xs (trapezoid segments)
    gap_after: np.ndarray | None = None  # power: True where the segment after xs[i] is a gap
    meter: np.ndarray | None = None  # cumulative: the raw meter values at xs (for `state`)
    notes: list[str] = field(default_factory=list)  # resets and glitches found, with lines

    @property
    def first(self) -> float:
        return float(self.spans[0, 0])

    @property
    def last(self) -> float:
        return float(self.spans[-1, 1])

    def at(self, t: np.ndarray) -> np.ndarray:
        """E(t) for an array of times (flat before the first and after the last point)."""
        if self.rate is None:
            return np.interp(t, self.xs, self.cs)
        xs, cs, rate = self.xs, self.cs, self.rate
        i = np.clip(np.searchsorted(xs, t, side="right") - 1, 0, len(xs) - 2)
        x0, x1 = xs[i], xs[i + 1]
        dt_h = np.clip(t - x0, 0.0, x1 - x0) / 3600.0
        seg_h = (x1 - x0) / 3600.0
        r0, r1 = rate[i], rate[i + 1]
        slope = np.divide(r1 - r0, seg_h, out=np.zeros_like(seg_h), where=seg_h > 0)
        inner = r0 * dt_h + slope * dt_h * dt_h / 2.0
        if self.gap_after is not None:
            inner = np.where(self.gap_after[i], 0.0, inner)
        value = cs[i] + inner
        value = np.where(t <= xs[0], cs[0], value)
        return np.where(t >= xs[-1], cs[-1], value)

    def meter_at(self, t: np.ndarray) -> np.ndarray | None:
        """The meter value itself at t (cumulative input only), for the `state` column."""
        if self.meter is None:
            return None
        return np.interp(t, self.xs, self.meter)


def _infer_step(times: np.ndarray) -> float:
    """The most common spacing of the input: the length of a reading that names no end."""
    diffs = np.diff(times)
    diffs = diffs[diffs > 0]
    if diffs.size == 0:
        return 0.0
    values, counts = np.unique(diffs, return_counts=True)
    return float(values[np.argmax(counts)])


def _merge_spans(starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Union of [start, end) intervals (sorted by start) as disjoint spans."""
    if starts.size == 0:
        return np.empty((0, 2))
    reach = np.maximum.accumulate(ends)
    new = np.empty(starts.size, dtype=bool)
    new[0] = True
    new[1:] = starts[1:] > reach[:-1]
    idx = np.flatnonzero(new)
    span_starts = starts[idx]
    span_ends = np.append(reach[idx[1:] - 1], reach[-1])
    return np.column_stack([span_starts, span_ends])


def delta_curve(series: Series, values: np.ndarray, step: float | None = None) -> EnergyCurve:
    """Amounts over [start, end): E rises linearly inside each interval, flat in gaps."""
    starts = series.times
    n = starts.size
    notes: list[str] = []
    if n == 0:
        raise InputError("no readings", path=series.source)
    if series.ends is not None and not np.isnan(series.ends).all():
        ends = series.ends.copy()
        missing = np.isnan(ends)
    else:
        ends = np.full(n, np.nan)
        missing = np.ones(n, dtype=bool)
    if missing.any():
        step = step or _infer_step(starts)
        if step <= 0:
            raise InputError(
                "one reading and no end time: cannot tell how long its interval is "
                "(add an `end` column)",
                path=series.source,
                line=int(series.lines[0]),
            )
        following = np.append(starts[1:], np.inf)
        ends[missing] = np.minimum(starts[missing] + step, following[missing])
        longer = np.flatnonzero(missing[:-1] & (np.diff(starts) > step))
        if longer.size:
            path, line = series.where(int(longer[0]))
            notes.append(
                f"{path}:{line}: {longer.size} readings are followed by a gap longer than the "
                f"usual spacing ({step:g} s); each counts as one {step:g}-second interval "
                "(add an `end` column if they cover more)"
            )
    bad = np.flatnonzero(ends <= starts)
    if bad.size:
        i = int(bad[0])
        raise series.error(i, "interval ends before it starts")
    overlap = np.flatnonzero(starts[1:] < ends[:-1] - 1e-9)
    if overlap.size:
        i = int(overlap[0]) + 1
        prev_path, prev_line = series.where(i - 1)
        raise series.error(i, f"interval overlaps the one at {prev_path}:{prev_line}")
    total = np.cumsum(values)
    before = total - values
    # Points: start of each interval (E = before) and its end (E = after). Drop a start that
    # coincides with the previous end: same x, same E.
    xs = np.empty(2 * n)
    cs = np.empty(2 * n)
    xs[0::2], xs[1::2] = starts, ends
    cs[0::2], cs[1::2] = before, total
    keep = np.ones(2 * n, dtype=bool)
    keep[2::2] = starts[1:] > ends[:-1]
    return EnergyCurve(xs[keep], cs[keep], _merge_spans(starts, ends), notes=notes)


def cumulative_curve(series: Series, values: np.ndarray) -> EnergyCurve:
    """Meter values at instants: growth between readings, never negative at a reset."""
    times = series.times
    if times.size < 2:
        raise InputError(
            "a meter reading alone says nothing about use: at least two readings are needed",
            path=series.source,
            line=int(series.lines[0]) if times.size else None,
        )
    # Jitter (a small drop) adds nothing and is not counted twice when the meter recovers:
    # growth is measured against the highest value seen since the last reset.
    growth, resets, glitches = _growth_with_resets(values)
    notes = []
    for i in resets:
        path, line = series.where(i)
        notes.append(f"{path}:{line}: meter reset or new meter "
                     f"({values[i - 1]:g} -> {values[i]:g}): counted from 0")
    for i in glitches:
        path, line = series.where(i)
        notes.append(f"{path}:{line}: reading {values[i]:g} ignored: "
                     "the meter drops and comes straight back (a glitch, not a reset)")
    cs = np.concatenate([[0.0], np.cumsum(growth)])
    spans = np.array([[times[0], times[-1]]])
    meter = series.states.copy() if series.states is not None else values.copy()
    return EnergyCurve(times.copy(), cs, spans, meter=meter, notes=notes)


def _growth_with_resets(values: np.ndarray) -> tuple[np.ndarray, list[int], list[int]]:
    """Per-step growth against the running high, with the indexes of resets and glitches.

    A drop below RESET_RATIO of the high is a reset (a new meter, counted from 0) unless the
    next reading is back near the old high: then the low reading was a glitch and is skipped.
    """
    steps = np.diff(values)
    if not (steps < 0).any():
        return steps, [], []
    growth = np.empty(values.size - 1)
    resets: list[int] = []
    glitches: list[int] = []
    high = float(values[0])
    i = 1
    while i < values.size:
        v = float(values[i])
        if v < RESET_RATIO * high:
            # Back near the old high within a few readings: the low ones were glitches.
            back = next((j for j in range(i + 1, min(i + 1 + GLITCH_RUN, values.size))
                         if float(values[j]) >= RESET_RATIO * high), None)
            if back is not None:
                growth[i - 1 : back - 1] = 0.0
                glitches.extend(range(i, back))
                i = back
                continue
            growth[i - 1] = max(v, 0.0)
            high = v
            resets.append(i)
        else:
            growth[i - 1] = max(v - high, 0.0)
            high = max(high, v)
        i += 1
    return growth, resets, glitches


def power_curve(series: Series, rates: np.ndarray, max_gap: float) -> EnergyCurve:
    """Rates at instants, integrated as trapezoids; segments longer than max_gap add nothing."""
    times = series.times
    if times.size < 2:
        raise InputError("power needs at least two samples to integrate", path=series.source)
    dt = np.diff(times)
    gap = dt > max_gap
    seg = (rates[:-1] + rates[1:]) / 2.0 * dt / 3600.0
    seg[gap] = 0.0
    cs = np.concatenate([[0.0], np.cumsum(seg)])
    ok = np.flatnonzero(~gap)
    spans = _merge_spans(times[ok], times[ok + 1]) if ok.size else np.empty((0, 2))
    if spans.shape[0] == 0:
        raise InputError(
            f"every pair of samples is more than {max_gap:g} s apart: nothing to integrate",
            path=series.source,
        )
    return EnergyCurve(times.copy(), cs, spans, rate=rates.copy(), gap_after=np.append(gap, True))


def covered_slots(spans: np.ndarray, period: int) -> np.ndarray:
    """Starts (UTC epoch, multiples of `period`) of every slot that a covered span touches."""
    if spans.shape[0] == 0:
        return np.empty(0)
    first = np.floor(spans[:, 0] / period).astype(np.int64)
    last = np.ceil(spans[:, 1] / period).astype(np.int64) - 1
    last = np.maximum(last, first)
    lengths = last - first + 1
    total = int(lengths.sum())
    offsets = np.repeat(first - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths)
    slots = np.arange(total, dtype=np.int64) + offsets
    slots = np.unique(slots)
    return slots.astype(np.float64) * period


def slot_amounts(curve: EnergyCurve, slots: np.ndarray, period: int) -> np.ndarray:
    """Energy in each slot [s, s + period)."""
    edges = np.append(slots, slots[-1] + period) if slots.size else slots
    if not slots.size:
        return slots
    values = curve.at(edges)
    amounts = values[1:] - values[:-1]
    # Slots need not be contiguous: recompute the end of each one where the next does not follow.
    jump = np.flatnonzero(np.diff(slots) != period)
    if jump.size:
        ends = curve.at(slots[jump] + period)
        amounts[jump] = ends - values[jump]
    return amounts


@dataclass(slots=True)
class MeanRows:
    """Time-weighted mean, min and max per slot."""

    starts: np.ndarray
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray
    covered: np.ndarray | None = None  # seconds of each slot the samples cover (None: all)


def mean_slots(series: Series, values: np.ndarray, period: int, max_gap: float) -> MeanRows:
    """Samples held until the next one (at most max_gap), averaged over time in each slot.

    Rows that already carry min/max (klausj1 mean files: one row per hour) pass straight through
    when they fit the period.
    """
    times = series.times
    if series.mins is not None and series.maxs is not None and series.ends is not None:
        if period == 3600 and np.all(np.mod(times, 3600) == 0):
            return MeanRows(times.copy(), values.copy(), series.mins.copy(), series.maxs.copy())
        if period == 300:
            return MeanRows(np.empty(0), np.empty(0), np.empty(0), np.empty(0))
    step = _infer_step(times) or float(period)
    last_hold = times[-1] + min(step, max_gap)
    hold_end = np.append(np.minimum(times[1:], times[:-1] + max_gap), last_hold)
    spans = _merge_spans(times, hold_end)
    slots = covered_slots(spans, period)
    # Integral of the step function and of covered time, both piecewise linear in t.
    xs = np.empty(2 * times.size)
    xs[0::2], xs[1::2] = times, hold_end
    widths = hold_end - times
    area = np.empty(2 * times.size)
    covered = np.empty(2 * times.size)
    run_area = np.cumsum(values * widths)
    run_cov = np.cumsum(widths)
    area[0::2], area[1::2] = run_area - values * widths, run_area
    covered[0::2], covered[1::2] = run_cov - widths, run_cov
    edges_lo, edges_hi = slots, slots + period
    a = np.interp(edges_hi, xs, area) - np.interp(edges_lo, xs, area)
    c = np.interp(edges_hi, xs, covered) - np.interp(edges_lo, xs, covered)
    keep = c > 0
    slots, a, c = slots[keep], a[keep], c[keep]
    lo = np.searchsorted(hold_end, slots, side="right")
    hi = np.searchsorted(times, slots + period, side="left")
    mins = np.empty(slots.size)
    maxs = np.empty(slots.size)
    for k in range(slots.size):
        chunk = values[lo[k] : max(hi[k], lo[k] + 1)]
        mins[k] = chunk.min()
        maxs[k] = chunk.max()
    return MeanRows(slots, a / c, mins, maxs, c)


def check_values(series: Series) -> None:
    """Reject what no kind can mean: NaN/inf (readers catch most) and falling times."""
    bad = np.flatnonzero(~np.isfinite(series.values))
    if bad.size:
        raise series.error(int(bad[0]), "value is not a finite number")
    back = np.flatnonzero(np.diff(series.times) <= 0)
    if back.size:
        i = int(back[0]) + 1
        prev_path, prev_line = series.where(i - 1)
        raise series.error(i, f"the same time as {prev_path}:{prev_line} (two readings for "
                              "one time)")


def covered_length(spans: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Seconds of [-inf, t) that the spans cover (piecewise linear in t)."""
    if spans.shape[0] == 0:
        return np.zeros_like(t)
    lengths = spans[:, 1] - spans[:, 0]
    before = np.concatenate([[0.0], np.cumsum(lengths)[:-1]])
    xs = spans.ravel()
    ys = np.column_stack([before, before + lengths]).ravel()
    return np.interp(t, xs, ys, left=0.0)


def kept_old_energy(slots: np.ndarray, period: int, spans: np.ndarray, old_x: np.ndarray,
                    old_e: np.ndarray) -> np.ndarray:
    """The old energy of each slot's part that the input does not cover.

    `old_x`/`old_e` are the target's cumulative sum as points (row ends, on one scale across
    both tables); between points it is taken as linear, the finest the target knows.
    """
    extra = np.zeros(slots.size)
    if slots.size == 0 or old_x.size < 2:
        return extra
    ends = slots + period
    covered = covered_length(spans, ends) - covered_length(spans, slots)
    whole = np.interp(ends, old_x, old_e) - np.interp(slots, old_x, old_e)
    none = covered <= 0
    extra[none] = whole[none]
    part = np.flatnonzero((covered > 0) & (covered < period))
    for k in part.tolist():
        a, b = float(slots[k]), float(ends[k])
        lo = int(np.searchsorted(spans[:, 1], a, side="right"))
        hi = int(np.searchsorted(spans[:, 0], b, side="left"))
        inside = 0.0
        for ss, se in spans[lo:hi].tolist():
            x0, x1 = max(a, ss), min(b, se)
            if x1 > x0:
                inside += float(np.interp(x1, old_x, old_e) - np.interp(x0, old_x, old_e))
        extra[k] = whole[k] - inside
    return extra
