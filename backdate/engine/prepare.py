"""A series of readings made ready for a statistic: converted, checked, and bucketed by hour.

This is where kinds and units are resolved; everything after it works on amounts per slot in
the statistic's own unit.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from backdate.engine import units
from backdate.engine.curve import (
    EnergyCurve,
    MeanRows,
    check_values,
    covered_slots,
    cumulative_curve,
    delta_curve,
    kept_old_energy,
    mean_slots,
    power_curve,
    slot_amounts,
)
from backdate.engine.plan import SumSlots, plan_mean_table, plan_sum_table, shift_only, sum_at
from backdate.errors import InputError
from backdate.models import (
    FIVE_MINUTES,
    HOUR,
    Kind,
    MeanType,
    Series,
    StatisticMeta,
    Table,
    TablePlan,
    WritePlan,
)
from backdate.targets.base import Neighbourhood

_ENTITY_ID = re.compile(r"^[a-z0-9_]+\.[a-z0-9_]+$")
_EXTERNAL_ID = re.compile(r"^[a-z0-9_]+:[a-z0-9_]+$")


def _valid_part(part: str) -> bool:
    return bool(part) and not part.startswith("_") and not part.endswith("_") and "__" not in part


def validate_statistic_id(statistic_id: str) -> tuple[str, bool]:
    """HA's rules for statistic ids; returns (source, is_external) or raises InputError."""
    if len(statistic_id) > 255:
        raise InputError(f"statistic id {statistic_id!r} is longer than 255 characters")
    if _EXTERNAL_ID.match(statistic_id):
        domain, obj = statistic_id.split(":", 1)
        if _valid_part(domain) and _valid_part(obj):
            if len(domain) > 32:
                raise InputError(f"source {domain!r} of {statistic_id!r} is over 32 characters")
            return domain, True
    elif _ENTITY_ID.match(statistic_id):
        domain, obj = statistic_id.split(".", 1)
        if _valid_part(domain) and _valid_part(obj):
            return "recorder", False
    raise InputError(
        f"statistic id {statistic_id!r} is not one Home Assistant accepts: use "
        "'domain:name' (external, e.g. backdate:house_energy) or an entity id 'sensor.name'; "
        "lowercase letters, digits and single underscores, none at either end"
    )


def slugify(text: str) -> str:
    """A statistic-id slug from free text (a file name): lowercase, single underscores."""
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
    return slug or "import"


@dataclass(slots=True)
class Prepared:
    """One statistic's input, in the statistic's unit, on HA's UTC grid."""

    kind: Kind
    unit: str | None
    source: str
    curve: EnergyCurve | None = None
    hours: SumSlots | None = None
    hourly_means: MeanRows | None = None
    series: Series | None = None
    values: np.ndarray | None = None
    max_gap: float = 3600.0
    notes: list[str] = field(default_factory=list)
    # klausj1 `sum` rows: the first row's total, whose hour's growth is measured against the
    # sum the target holds before it (the file says nothing more about that hour).
    first_sum: float | None = None
    first_hour: float | None = None
    first_amount: float | None = None  # that hour's growth, once measured against the target
    first_state: float | None = None  # the meter reading at the end of that hour
    # What the plan gives each slot in the end (input energy, plus kept old energy where a
    # slot is only partly covered): for the report's day table and seam checks.
    planned_hours: SumSlots | None = None
    planned_five: SumSlots | None = None

    @property
    def is_sum(self) -> bool:
        return self.kind is not Kind.MEAN

    @property
    def window(self) -> tuple[float, float]:
        """[first hour, end of last hour) the input writes."""
        starts = self.hours.starts if self.hours is not None else self.hourly_means.starts
        if starts.size == 0:
            return (math.nan, math.nan)
        return float(starts[0]), float(starts[-1]) + HOUR

    @property
    def total(self) -> float:
        return float(self.hours.amounts.sum()) if self.hours is not None else 0.0

    def five_minute(self, hours: np.ndarray) -> SumSlots:
        """5-minute amounts for every window of the given hours (0 where the input is silent),
        so that the 5-minute table adds up to the hourly one at every hour's end."""
        assert self.curve is not None
        per_hour = np.arange(0, HOUR, FIVE_MINUTES, dtype=np.float64)
        slots = (hours[:, None] + per_hour[None, :]).ravel()
        amounts = slot_amounts(self.curve, slots, FIVE_MINUTES)
        if self.first_amount is not None and self.first_hour is not None:
            # The file says only how much the first hour grew: spread it over its windows.
            first = (slots >= self.first_hour) & (slots < self.first_hour + HOUR)
            amounts[first] = self.first_amount / 12
        states = self.curve.meter_at(slots + FIVE_MINUTES)
        return SumSlots(slots, amounts, states)

    def five_minute_means(self, start: float, end: float) -> MeanRows:
        assert self.series is not None and self.values is not None
        rows = mean_slots(self.series, self.values, FIVE_MINUTES, self.max_gap)
        keep = (rows.starts >= start) & (rows.starts < end)
        covered = None if rows.covered is None else rows.covered[keep]
        return MeanRows(rows.starts[keep], rows.mean[keep], rows.min[keep], rows.max[keep],
                        covered)


def prepare(
    series: Series,
    *,
    kind: Kind,
    input_unit: str | None,
    statistic_unit: str | None,
    max_gap: float = 3600.0,
) -> Prepared:
    """Convert and bucket one series. Raises InputError for anything that cannot be meant."""
    check_values(series)
    source = series.source
    prepared = Prepared(kind=kind, unit=statistic_unit, source=source, max_gap=max_gap)
    what = f" (statistic unit {statistic_unit})"
    if kind is Kind.MEAN:
        conv = _convert(input_unit, statistic_unit, source, what)
        values = series.values * conv.factor + conv.offset
        if series.mins is not None and series.maxs is not None:  # never in place: a series
            series = dataclasses.replace(  # planned twice must not be converted twice
                series, mins=series.mins * conv.factor + conv.offset,
                maxs=series.maxs * conv.factor + conv.offset)
        prepared.series, prepared.values = series, values
        prepared.hourly_means = mean_slots(series, values, HOUR, max_gap)
        return prepared
    if kind is Kind.POWER:
        try:
            factor = units.power_to_energy(input_unit, statistic_unit or "kWh")
        except InputError as err:
            raise InputError(err.problem, path=source) from None
        curve = power_curve(series, series.values * factor, max_gap)
    else:
        conv = _convert(input_unit, statistic_unit, source, what)
        values = series.values * conv.factor
        if series.states is not None:  # the meter is converted with its sums, always
            series = dataclasses.replace(series, states=series.states * conv.factor)
        curve = delta_curve(series, values) if kind is Kind.DELTA else cumulative_curve(
            series, values
        )
        if series.hourly_sums and kind is Kind.CUMULATIVE:
            prepared.first_sum = float(values[0])
            prepared.first_hour = float(series.times[0]) - HOUR
            prepared.first_state = float(curve.meter[0]) if curve.meter is not None else None
    prepared.curve = curve
    prepared.notes.extend(curve.notes)
    hours = covered_slots(curve.spans, HOUR)
    amounts = slot_amounts(curve, hours, HOUR)
    prepared.hours = SumSlots(hours, amounts, curve.meter_at(hours + HOUR))
    return prepared


def _convert(src: str | None, dst: str | None, source: str, what: str) -> units.Conversion:
    try:
        return units.conversion(src, dst, what=what)
    except InputError as err:
        raise InputError(err.problem, path=source) from None


Fetch = Callable[[Table, float, float], Neighbourhood]


@dataclass(slots=True)
class PlanPolicy:
    """What the application decided about the target and the clock."""

    now: float
    compiled_by_ha: bool  # an entity statistic (source recorder): HA compiles it
    last_compiled_end: float | None  # newest window HA compiled, from statistics_runs
    short_term: bool = True
    short_term_days: float = 10.0  # HA's default purge_keep_days
    supports_short_term: bool = True


def build_plan(meta: StatisticMeta, metadata_exists: bool, prepared: Prepared, fetch: Fetch,
               policy: PlanPolicy) -> WritePlan:
    """The whole plan for one statistic: hourly table, then the short-term table."""
    notes = list(prepared.notes)
    cutoff = policy.now
    if policy.compiled_by_ha and policy.last_compiled_end is not None:
        cutoff = min(cutoff, policy.last_compiled_end)
    if prepared.is_sum:
        return _plan_sum(meta, metadata_exists, prepared, fetch, policy, cutoff, notes)
    return _plan_mean(meta, metadata_exists, prepared, fetch, policy, cutoff, notes)


def _cut(starts: np.ndarray, period: int, cutoff: float, policy: PlanPolicy,
         notes: list[str], label: str) -> np.ndarray:
    """Keep only slots HA will never compile again (closed, not future) for entity statistics."""
    if not policy.compiled_by_ha:
        return np.ones(starts.size, dtype=bool)
    keep = starts + period <= cutoff
    dropped = int((~keep).sum())
    if dropped:
        notes.append(
            f"{dropped} {label if dropped > 1 else label.rstrip('s')} left out: Home Assistant "
            "has not compiled them yet (open window, or the future); it compiles them itself"
        )
    return keep


def _plan_sum(meta, metadata_exists, prepared, fetch, policy, cutoff, notes) -> WritePlan:
    hours = prepared.hours
    keep = _cut(hours.starts, HOUR, cutoff, policy, notes, "hours")
    hours = SumSlots(hours.starts[keep], hours.amounts[keep],
                     hours.states[keep] if hours.states is not None else None)
    empty = WritePlan(meta, metadata_exists, shift_only(Table.HOURLY, 0, 0, None, 0),
                      shift_only(Table.SHORT_TERM, 0, 0, None, 0), notes)
    if hours.starts.size == 0:
        notes.append("nothing to write")
        return empty
    hours = _first_sum_hour(prepared, hours, fetch, policy, cutoff, notes)
    h_start, h_end = float(hours.starts[0]), float(hours.starts[-1]) + HOUR
    nb_h = fetch(Table.HOURLY, h_start, h_end)
    nb_probe = fetch(Table.SHORT_TERM, h_start, h_end) if policy.supports_short_term else None
    old_x, old_e = _old_curve(nb_h, nb_probe)
    hours = _keep_uncovered(prepared, hours, HOUR, nb_h, old_x, old_e)
    prepared.planned_hours = hours
    keep_meter = policy.compiled_by_ha
    hourly, walk = plan_sum_table(Table.HOURLY, hours, nb_h, after_count=nb_h.after_count,
                                  keep_meter=keep_meter)
    if keep_meter and hours.states is None and nb_probe is not None:
        _borrow_meter(hourly, nb_h, nb_probe, walk.shift)
    hourly_shift, old_end = walk.shift, walk.old_end

    if not policy.supports_short_term:
        nb_s = fetch(Table.SHORT_TERM, h_start, h_end)
        if keep_meter and hours.states is None:  # HA's meter from its 5-minute rows
            _borrow_meter(hourly, nb_h, nb_s, walk.shift)
        notes.append("this target writes hourly rows only: no 5-minute rows")
        short = shift_only(Table.SHORT_TERM, h_end, hourly_shift, nb_s.after, old_end,
                           nb_s.after_count)
        return WritePlan(meta, metadata_exists, hourly, short, notes)

    # The 5-minute table: new rows inside HA's short-term retention (unless --no-short-term),
    # and always every row that already exists inside the window, so both tables stay on one
    # sum scale (HA continues a sensor's sum from the 5-minute table).
    assert nb_probe is not None
    st_from = policy.now - policy.short_term_days * 86400 if policy.short_term else math.inf
    if nb_probe.inside:
        st_from = min(st_from, nb_probe.inside[0].start_ts)
    st_from = max(h_start, math.floor(st_from / HOUR) * HOUR) if math.isfinite(st_from) else h_end
    if st_from >= h_end:
        short = shift_only(Table.SHORT_TERM, h_end, hourly_shift, nb_probe.after, old_end,
                           nb_probe.after_count)
        return WritePlan(meta, metadata_exists, hourly, short, notes)
    five = prepared.five_minute(hours.starts[hours.starts >= st_from])
    keep5 = _cut(five.starts, FIVE_MINUTES, cutoff, policy, notes, "5-minute windows")
    if not policy.short_term:
        existing = np.array([r.start_ts for r in nb_probe.inside], dtype=np.float64)
        keep5 &= np.isin(five.starts, existing)
        notes.append("--no-short-term: only 5-minute rows that already exist are rewritten")
    five = SumSlots(five.starts[keep5], five.amounts[keep5],
                    five.states[keep5] if five.states is not None else None)
    five = _keep_uncovered(prepared, five, FIVE_MINUTES, nb_probe, old_x, old_e)
    prepared.planned_five = five
    # Walk the 5-minute table from st_from, so rows the input does not cover move with the sum.
    nb_s = fetch(Table.SHORT_TERM, st_from, h_end)
    if five.starts.size == 0 and not nb_s.inside:
        short = shift_only(Table.SHORT_TERM, h_end, hourly_shift, nb_s.after, old_end,
                           nb_s.after_count)
        return WritePlan(meta, metadata_exists, hourly, short, notes)
    base_new = sum_at(walk, st_from, HOUR)
    base_old = None
    if nb_s.before is None or nb_s.before.sum is None:
        base_old = _old_sum_at(nb_h, st_from)
    short, _ = plan_sum_table(Table.SHORT_TERM, five, nb_s, base_old=base_old,
                                       base_new=base_new, after_count=nb_s.after_count,
                                       keep_meter=keep_meter)
    if keep_meter and five.states is None:
        _borrow_meter(short, nb_s, nb_h, walk.shift)
    return WritePlan(meta, metadata_exists, hourly, short, notes)


def _first_sum_hour(prepared: Prepared, hours: SumSlots, fetch: Fetch, policy: PlanPolicy,
                    cutoff: float, notes: list[str]) -> SumSlots:
    """klausj1 `sum` rows: the first row's hour grows by its sum minus the target's sum before
    it (what importing those sums verbatim would show), unless that would be negative."""
    if prepared.first_sum is None or prepared.first_hour is None:
        return hours
    t0 = prepared.first_hour
    if not _cut(np.array([t0]), HOUR, cutoff, policy, [], "hours")[0]:
        return hours
    nb0 = fetch(Table.HOURLY, t0, t0 + HOUR)
    base = nb0.before.sum if nb0.before is not None and nb0.before.sum is not None else 0.0
    amount = prepared.first_sum - base
    typical = float(np.max(np.abs(hours.amounts))) if hours.amounts.size else 0.0
    if amount < 0 or (typical > 0 and amount > 10 * typical):
        notes.append(
            f"the first row's sum ({prepared.first_sum:g}) does not follow the sum before it "
            f"in the target ({base:g}): the file's sums are on another scale, so its first hour "
            "is not written (it only anchors the rows after it)"
        )
        return hours
    prepared.first_amount = amount
    first_state = prepared.first_state if prepared.first_state is not None else amount
    states = None if hours.states is None else np.concatenate([[first_state], hours.states])
    return SumSlots(np.concatenate([[t0], hours.starts]),
                    np.concatenate([[amount], hours.amounts]), states)


def _old_curve(nb_h: Neighbourhood, nb_s: Neighbourhood | None) -> tuple[np.ndarray, np.ndarray]:
    """The target's cumulative sum as points, 5-minute rows where they exist (finer), hourly
    rows elsewhere; both tables share one sum scale. Each row contributes its start (the sum
    before it) and its end (its sum): a row after a gap holds its whole change in its own
    period, as HA shows it, instead of spreading it over the gap."""
    points: dict[float, float] = {}
    for nb, period in ((nb_h, HOUR), (nb_s, FIVE_MINUTES)):
        if nb is None:
            continue
        rows = [r for r in ([nb.before] if nb.before else []) + nb.inside if r.sum is not None]
        if not rows:
            continue
        prev: float | None = None
        if nb.before is None or nb.before.sum is None:
            prev = 0.0 if period == HOUR else None  # HA counts an hourly series from 0
        for r in rows:
            if prev is not None:
                points[r.start_ts] = prev
            points[r.start_ts + period] = r.sum
            prev = r.sum
    if len(points) < 2:
        return np.empty(0), np.empty(0)
    xs = np.array(sorted(points), dtype=np.float64)
    return xs, np.array([points[x] for x in xs.tolist()], dtype=np.float64)


def _keep_uncovered(prepared: Prepared, slots: SumSlots, period: int, nb: Neighbourhood,
                    old_x: np.ndarray, old_e: np.ndarray) -> SumSlots:
    """Slots the input covers only in part keep the target's energy for the rest of them."""
    if prepared.curve is None or not nb.inside or old_x.size < 2:
        return slots
    existing = np.array([r.start_ts for r in nb.inside], dtype=np.float64)
    has_row = np.isin(slots.starts, existing)
    if not has_row.any():
        return slots
    extra = np.zeros(slots.starts.size)
    extra[has_row] = kept_old_energy(slots.starts[has_row], period, prepared.curve.spans,
                                     old_x, old_e)
    if prepared.first_hour is not None:
        extra[slots.starts == prepared.first_hour] = 0.0
    return SumSlots(slots.starts, slots.amounts + extra, slots.states)


def _meter_reference(nb: Neighbourhood, shift: float) -> float | None:
    """meter - sum that rows HA wrote imply after the write: from the first row after the
    window (whose sum moves by `shift`), else the last row before it; None without either."""
    after = nb.after
    if after is not None and after.state is not None and after.sum is not None:
        return after.state - (after.sum + shift)
    before = nb.before
    if before is not None and before.state is not None and before.sum is not None:
        return before.state - before.sum
    return None


def _borrow_meter(plan: TablePlan, own: Neighbourhood, other: Neighbourhood,
                  shift: float) -> None:
    """An entity statistic whose table has no row of HA's near the window (HA has compiled
    only 5-minute rows in its first hour, say) takes HA's meter from the other table, so
    `state` is the meter in both tables and HA's rollup copies no jump into the hourly one."""
    if _meter_reference(own, 0.0) is not None or plan.rows.state is None or not plan.count:
        return
    offset = _meter_reference(other, shift)
    if offset is None:
        return
    existing = np.array([r.start_ts for r in own.inside], dtype=np.float64)
    new_rows = ~np.isin(plan.rows.start_ts, existing)
    plan.rows.state[new_rows] += offset


def _old_sum_at(nb: Neighbourhood, t: float) -> float:
    """Old hourly sum at time t: the last row (before or inside) that ends at or before t."""
    best = nb.before.sum if nb.before is not None and nb.before.sum is not None else 0.0
    for row in nb.inside:
        if row.start_ts + HOUR <= t and row.sum is not None:
            best = row.sum
    return float(best)


def _plan_mean(meta, metadata_exists, prepared, fetch, policy, cutoff, notes) -> WritePlan:
    rows = prepared.hourly_means
    keep = _cut(rows.starts, HOUR, cutoff, policy, notes, "hours")
    starts = rows.starts[keep]
    if starts.size == 0:
        notes.append("nothing to write")
        return WritePlan(meta, metadata_exists, shift_only(Table.HOURLY, 0, 0, None, 0),
                         shift_only(Table.SHORT_TERM, 0, 0, None, 0), notes)
    h_start, h_end = float(starts[0]), float(starts[-1]) + HOUR
    hourly = plan_mean_table(Table.HOURLY, starts, rows.mean[keep], rows.min[keep],
                             rows.max[keep], fetch(Table.HOURLY, h_start, h_end),
                             covered=None if rows.covered is None else rows.covered[keep])
    short = shift_only(Table.SHORT_TERM, 0, 0, None, 0)
    if policy.short_term and policy.supports_short_term:
        st_from = max(h_start, policy.now - policy.short_term_days * 86400)
        five = prepared.five_minute_means(st_from, h_end)
        k5 = _cut(five.starts, FIVE_MINUTES, cutoff, policy, notes, "5-minute windows")
        if k5.any():
            s = five.starts[k5]
            short = plan_mean_table(Table.SHORT_TERM, s, five.mean[k5], five.min[k5],
                                    five.max[k5],
                                    fetch(Table.SHORT_TERM, float(s[0]), float(s[-1]) + 300),
                                    covered=None if five.covered is None else five.covered[k5])
    return WritePlan(meta, metadata_exists, hourly, short, notes)


def new_meta(statistic_id: str, *, kind: Kind, unit: str | None, name: str | None) -> StatisticMeta:
    """Metadata for a statistic backdate creates."""
    source, _external = validate_statistic_id(statistic_id)
    is_sum = kind is not Kind.MEAN
    return StatisticMeta(
        statistic_id=statistic_id,
        source=source,
        unit_of_measurement=unit,
        has_sum=is_sum,
        mean_type=MeanType.NONE if is_sum else MeanType.ARITHMETIC,
        name=name,
        unit_class=units.unit_class(unit),
    )

