"""`backdate plan` and `backdate import`: sources in, a checked plan, an atomic write, a read-back.

The order is the safety: every source is read and every plan built before the first write, so
bad input anywhere means nothing is written anywhere.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np

from backdate import clock
from backdate.domain import plausibility
from backdate.engine import units
from backdate.engine.prepare import (
    PlanPolicy,
    Prepared,
    build_plan,
    new_meta,
    prepare,
    slugify,
    validate_statistic_id,
)
from backdate.errors import InputError, RefusedError
from backdate.models import HOUR, Kind, Series, StatisticMeta, StatRow, Table, WritePlan
from backdate.targets.base import Neighbourhood, StatisticsTarget


@dataclass(slots=True)
class ImportOptions:
    """The import options of PRODUCT.md's command line."""

    statistic_id: str | None = None
    name: str | None = None
    kind: Kind | None = None
    unit: str | None = None  # of the input values
    tz: str | None = None
    time_column: str | None = None
    value_column: str | None = None
    short_term: bool = True
    backup: bool = True
    max_gap: float = 3600.0
    short_term_days: float = 10.0
    report_tz: str | None = None  # zone of the per-day table (default: --tz, else UTC)
    # The range read from a remote source (InfluxDB, a utility portal), UTC epoch seconds;
    # files are read whole.
    start: float | None = None
    end: float | None = None
    # --start/--end as given: without --tz, a naive bound means the remote source's own local
    # time where it has one (a Wiener Netze day is a Vienna day), else UTC.
    bounds_text: tuple[str | None, str | None] = (None, None)
    # Where report_tz came from: "tz_option", "home_assistant" or "machine" (for the report).
    zone_from: str = "machine"
    # --create: an entity statistic (sensor.x) the target does not know yet is meant.
    create: bool = False


@dataclass(slots=True)
class StatisticImport:
    """One statistic's planned import, with what the report needs."""

    series: Series
    prepared: Prepared
    plan: WritePlan
    hourly_before: Neighbourhood | None = None  # what the hourly table held in the window
    input_unit: str | None = None
    # Hourly rows of the whole local days the window touches, and the sum before them: the
    # per-day table shows what the Energy dashboard shows for those days, before and after.
    day_rows: list[StatRow] = field(default_factory=list)
    day_base: float = 0.0
    # What looks wrong but may be meant (file:line each): shown by plan and import.
    warnings: list[str] = field(default_factory=list)

    @property
    def statistic_id(self) -> str:
        return self.plan.meta.statistic_id


@dataclass(slots=True)
class ImportResult:
    imports: list[StatisticImport]
    backup_path: Path | None = None
    verified: list[str] = field(default_factory=list)


Progress = Callable[[str, int, int], None]  # (what, done, total)


def read_sources(paths: list[str], opts: ImportOptions,
                 progress: Progress | None = None) -> list[Series]:
    """Read every source (files whole, remote sources over --start/--end); the first bad line
    anywhere stops everything."""
    from backdate.sources.base import SourceRange, is_remote, open_source
    from backdate.sources.files import read_file

    out: list[Series] = []
    for path in paths:
        if is_remote(path):
            source = open_source(path)
            try:
                out.extend(source.read(SourceRange(*_source_bounds(source, opts))))
            finally:
                source.close()
            continue
        report = None
        if progress is not None:
            try:
                total = Path(path).stat().st_size
            except OSError:
                total = 0

            def report(done: int, _path: str = path, _total: int = total) -> None:
                progress(f"reading {Path(_path).name}", done, _total)

        out.extend(
            read_file(path, kind=opts.kind, tz=opts.tz, time_column=opts.time_column,
                      value_column=opts.value_column, unit=opts.unit, progress=report)
        )
    return out


def _source_bounds(source: object, opts: ImportOptions) -> tuple[float | None, float | None]:
    """--start/--end for one remote source: naive bounds in its zone when --tz is not given."""
    from backdate.app.exporting import parse_bound

    zone = getattr(source, "time_zone", None)
    if opts.tz or not zone:
        return opts.start, opts.end
    start_text, end_text = opts.bounds_text
    tz = ZoneInfo(zone)
    return (parse_bound(start_text, tz) if start_text else opts.start,
            parse_bound(end_text, tz) if end_text else opts.end)


def statistic_id_for(series: Series, opts: ImportOptions, several: bool) -> str:
    """Explicit --statistic-id, else the file's, else backdate:<file name>."""
    suffix = f"_{slugify(series.name)}" if several and series.name else ""
    if opts.statistic_id:
        return opts.statistic_id + suffix
    if series.statistic_id:
        return series.statistic_id
    stem = Path(series.source).stem
    return f"backdate:{slugify(stem)}{suffix}"


def _by_statistic(series_list: list[Series], opts: ImportOptions,
                  several: bool) -> list[tuple[str, Series, list[str]]]:
    """Group inputs by the statistic they go into; several files of one statistic (monthly
    exports, say) become one series. Identical readings in two files count once; different
    values for one time are an error naming both files."""
    groups: dict[str, list[Series]] = {}
    for series in series_list:
        if len(series) == 0:
            raise InputError("no readings", path=series.source)
        groups.setdefault(statistic_id_for(series, opts, several), []).append(series)
    out = []
    for statistic_id, parts in groups.items():
        kinds = {resolve_kind(p, opts) for p in parts}
        units_seen = {_input_unit(p, opts, resolve_kind(p, opts)) for p in parts}
        if len(kinds) > 1 or len(units_seen) > 1:
            raise InputError(
                f"the files for {statistic_id} disagree on kind or unit "
                f"({', '.join(sorted(str(k) for k in kinds))}; "
                f"{', '.join(sorted(str(u) for u in units_seen))})",
                path=parts[-1].source,
            )
        notes = [_repeats_warning(p) for p in parts if p.repeats is not None and len(p.repeats)]
        merged = _drop_repeats(Series.merge(parts))
        if merged.repeats is not None and len(merged.repeats):
            notes.append(f"{len(merged.repeats)} reading(s) that two files both hold with the "
                         "same value counted once")
        out.append((statistic_id, merged, notes))
    return out


def _repeats_warning(series: Series) -> str:
    """Lines a reader dropped as exact repeats, named (a time column holding only dates
    makes every row of a day one time)."""
    pairs = series.repeats
    shown = ", ".join(f"line {int(d)} = line {int(k)}" for d, k in pairs[:3])
    more = f" and {len(pairs) - 3} more" if len(pairs) > 3 else ""
    return (f"{series.source}:{int(pairs[0][0])}: {len(pairs)} row(s) dropped as repeats of "
            f"an earlier row with the same time and value ({shown}{more}); "
            f"{len(series)} reading(s) left")


def _drop_repeats(series: Series) -> Series:
    """Readings that two merged files both hold with the same value count once."""
    if series.files is None or len(series) < 2:
        return series
    t, v = series.times, series.values
    ends = series.ends if series.ends is not None else np.full(len(series), np.nan)
    same = (t[1:] == t[:-1]) & (v[1:] == v[:-1]) & (
        (ends[1:] == ends[:-1]) | (np.isnan(ends[1:]) & np.isnan(ends[:-1])))
    if not same.any():
        return series
    keep = np.concatenate([[True], ~same])
    for attr in ("times", "values", "lines", "ends", "mins", "maxs", "files"):
        col = getattr(series, attr)
        if col is not None:
            setattr(series, attr, col[keep])
    series.repeats = np.zeros((int(same.sum()), 2), dtype=np.int64)
    return series


def _input_unit(series: Series, opts: ImportOptions, kind: Kind) -> str | None:
    """--unit, else the file's, else kWh for energy (W for power); a source that states its
    unit itself (a utility portal) is not overridden."""
    if series.unit_fixed and opts.unit and units.normalize_unit(opts.unit) != \
            units.normalize_unit(series.unit):
        raise InputError(
            f"the source states its own unit (read as {series.unit}), but --unit says "
            f"{opts.unit}; leave --unit out", path=series.source)
    return units.normalize_unit(opts.unit or series.unit) or (
        "W" if kind is Kind.POWER else ("kWh" if kind is not Kind.MEAN else None))


def resolve_kind(series: Series, opts: ImportOptions) -> Kind:
    if opts.kind and series.kind and opts.kind is not series.kind and series.unit_fixed:
        raise InputError(
            f"the source states its values are kind {series.kind.value} (energy per "
            f"interval), but --kind says {opts.kind.value}; leave --kind out",
            path=series.source)
    if opts.kind and series.kind and opts.kind is not series.kind:
        raise InputError(
            f"the file's columns say kind {series.kind.value}, but --kind says {opts.kind.value}",
            path=series.source,
        )
    return series.kind or opts.kind or Kind.DELTA


def plan_imports(target: StatisticsTarget, series_list: list[Series], opts: ImportOptions,
                 *, now: float | None = None) -> list[StatisticImport]:
    """Build every plan (no writes). Raises InputError/RefusedError before anything changes."""
    now = clock.now() if now is None else now
    info = target.info()
    several = len({(s.source, s.name) for s in series_list}) > 1 and any(
        s.name for s in series_list)
    planned: list[StatisticImport] = []
    for statistic_id, series, warnings in _by_statistic(series_list, opts, several):
        try:
            _source, external = validate_statistic_id(statistic_id)
        except InputError as err:
            raise InputError(err.problem, path=series.source) from None
        kind = resolve_kind(series, opts)
        input_unit = _input_unit(series, opts, kind)
        _refuse_implausible(series, kind, input_unit)
        warnings.extend(_negative_warning(series, kind))
        existing = target.get_metadata(statistic_id)
        unit_note = None
        if series.unit_blank_line is not None and not opts.unit:
            input_unit, unit_note = _unit_from_target(statistic_id, existing, series)
        if existing is None and not external and not opts.create:
            _refuse_unknown_entity(target, statistic_id, series)
        meta = _meta_for(statistic_id, existing, kind, input_unit, opts, series)
        prepared = prepare(series, kind=kind, input_unit=input_unit,
                           statistic_unit=meta.unit_of_measurement, max_gap=opts.max_gap)
        captured: dict[Table, Neighbourhood] = {}

        def fetch(table: Table, start: float, end: float, _id: str = statistic_id,
                  _cap: dict[Table, Neighbourhood] = captured) -> Neighbourhood:
            nb = target.neighbourhood(table, _id, start, end)
            _cap[table] = nb  # the last fetch is the window the plan was built on
            return nb

        policy = PlanPolicy(
            now=now,
            compiled_by_ha=not external,
            last_compiled_end=info.last_compiled_end,
            short_term=opts.short_term,
            short_term_days=opts.short_term_days,
            supports_short_term=info.supports_short_term,
        )
        plan = build_plan(meta, existing is not None, prepared, fetch, policy)
        if unit_note:
            plan.notes.insert(0, unit_note)
        _refuse_unresolvable_sums(series, plan)
        item = StatisticImport(series, prepared, plan, captured.get(Table.HOURLY), input_unit,
                               warnings=warnings)
        if existing is not None and plan.hourly.count:
            _load_days(target, item, ZoneInfo(opts.report_tz or opts.tz or "UTC"))
            if kind is not Kind.MEAN:
                item.warnings.extend(_scale_warning(target, item))
        planned.append(item)
    return planned


def _refuse_implausible(series: Series, kind: Kind, input_unit: str | None) -> None:
    """A value no meter can produce is refused with its file and line; nothing is written."""
    bad = plausibility.first_implausible(series.values, kind=kind.value, unit=input_unit)
    if bad is not None:
        path, line = series.where(bad.index)
        raise InputError(f"{series.values[bad.index]:g} {input_unit or ''} is not a plausible "
                         f"reading: {bad.problem}".replace("  ", " "), path=path, line=line)


def _refuse_unresolvable_sums(series: Series, plan: WritePlan) -> None:
    """Sums so large that 1e-6 kWh steps vanish in float64 would corrupt every later hour."""
    if not plan.meta.has_sum:
        return
    limit = plausibility.sum_limit(plan.meta.unit_of_measurement)
    for tp in plan.tables:
        sums = tp.rows.sum
        if sums is None or not len(sums):
            continue
        top = float(np.nanmax(np.abs(sums)))
        if top > limit:
            i = int(np.argmax(np.abs(series.values)))
            path, line = series.where(i)
            raise InputError(
                f"the sum of {plan.meta.statistic_id} would reach {top:.6g} "
                f"{plan.meta.unit_of_measurement or ''}, beyond {limit:.3g}, where it can no "
                f"longer resolve 1e-6 kWh steps (largest value: {series.values[i]:g})",
                path=path, line=line)


def _negative_warning(series: Series, kind: Kind) -> list[str]:
    """Negative amounts may be a meter's export or a sign error: say where they are."""
    if kind is not Kind.DELTA:
        return []
    negative = np.flatnonzero(series.values < 0)
    if not negative.size:
        return []
    path, line = series.where(int(negative[0]))
    return [f"{path}:{line}: negative delta {series.values[negative[0]]:g} "
            f"({negative.size} negative value(s) in all): written as negative use"]


SCALE_CONTEXT = 30 * 86400.0  # existing rows this far around the window judge the scale


def _scale_warning(target: StatisticsTarget, item: StatisticImport) -> list[str]:
    """Input about 1000× what the statistic holds around it: a forgotten --unit Wh?"""
    hours = item.prepared.hours
    rows = item.plan.hourly.rows
    if hours is None or not len(rows):
        return []
    first, last = float(rows.start_ts[0]), float(rows.start_ts[-1])
    own_changes: list[float] = []
    for lo, hi in ((first - SCALE_CONTEXT, first), (last + HOUR, last + HOUR + SCALE_CONTEXT)):
        existing = [r for r in target.read_rows(Table.HOURLY, item.statistic_id, lo, hi)
                    if r.sum is not None]
        own_changes.extend(b.sum - a.sum for a, b in zip(existing, existing[1:], strict=False)
                           if b.start_ts - a.start_ts == HOUR)
    own = np.array(own_changes, dtype=np.float64)
    ratio = plausibility.scale_ratio(np.asarray(hours.amounts, dtype=np.float64), own)
    if not plausibility.about_thousandfold(ratio):
        return []
    path, line = item.series.where(0)
    unit = item.plan.meta.unit_of_measurement
    return [f"{path}:{line}: the input's hourly amounts are about {ratio:.4g}× those "
            f"{item.statistic_id} holds around them (in {unit}): is the input's unit right "
            f"(read as {item.input_unit}; e.g. --unit Wh)?"]


def _refuse_unknown_entity(target: StatisticsTarget, statistic_id: str, series: Series) -> None:
    """An entity statistic nobody knows (no statistic, no recorded states) is most likely a
    typo: refuse it, suggesting close ids, unless --create says it is meant."""
    known = getattr(target, "known_ids", None)
    stats, entities = known() if known is not None else (set(), set())
    if statistic_id in entities:
        return  # HA records this entity; its statistic just does not exist yet
    close = difflib.get_close_matches(statistic_id, sorted(stats | entities), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise RefusedError(
        f"{series.source}: {statistic_id} is not a statistic or an entity in the target; "
        f"add --create to make a new entity statistic (source recorder) anyway.{hint}")


def _load_days(target: StatisticsTarget, item: StatisticImport, tz: ZoneInfo) -> None:
    """Read the hourly rows of every whole local day the plan touches (for the day table)."""
    rows = item.plan.hourly.rows
    first = datetime.fromtimestamp(float(rows.start_ts[0]), tz)
    last = datetime.fromtimestamp(float(rows.start_ts[-1]), tz)
    start = first.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    end = (last.replace(hour=0, minute=0, second=0, microsecond=0) + timedelta(days=1))
    end_ts = end.replace(tzinfo=None).replace(tzinfo=tz).timestamp()  # local midnight, DST-safe
    sid = item.statistic_id
    before = target.neighbourhood(Table.HOURLY, sid, start, start + 1).before
    item.day_base = before.sum if before is not None and before.sum is not None else 0.0
    item.day_rows = target.read_rows(Table.HOURLY, sid, start, end_ts)


def _unit_from_target(statistic_id: str, existing: StatisticMeta | None,
                      series: Series) -> tuple[str | None, str]:
    """Blank unit cells mean "the statistic's own unit" (as klausj1's tool reads them); with
    no statistic to take it from, no unit can be known."""
    if existing is None:
        raise InputError(
            f"blank unit, and {statistic_id} is not in the target to take its unit from: "
            "fill in the unit column or give --unit",
            path=series.source, line=series.unit_blank_line)
    unit = existing.unit_of_measurement
    return unit, (f"blank unit cells: unit {unit or 'none'} from the existing statistic "
                  f"{statistic_id}")


def _meta_for(statistic_id: str, existing: StatisticMeta | None, kind: Kind,
              input_unit: str | None, opts: ImportOptions, series: Series) -> StatisticMeta:
    """Existing metadata wins (HA owns entity statistics); new ones get backdate's defaults."""
    is_sum = kind is not Kind.MEAN
    if existing is not None:
        if existing.has_sum != is_sum:
            what = "a sum (meter)" if existing.has_sum else "a mean (measurement)"
            raise RefusedError(
                f"{series.source}: {statistic_id} is {what} statistic in the target, but the "
                f"input is kind {kind.value}"
            )
        if kind is not Kind.POWER:
            try:
                units.conversion(input_unit, existing.unit_of_measurement)
            except InputError:
                raise InputError(
                    f"unit {input_unit!r} does not fit {statistic_id}, which is stored in "
                    f"{existing.unit_of_measurement!r}",
                    path=series.source,
                ) from None
        if opts.name:
            existing.name = opts.name
        return existing
    unit = units.default_statistic_unit(input_unit,
                                        is_power=kind is Kind.POWER or series.from_power)
    if is_sum and units.unit_class(unit) in ("temperature", "power"):
        raise InputError(
            f"{unit} is not an amount that adds up: a sum statistic (kind {kind.value}) needs an "
            "energy or volume unit; for a measurement use --kind mean",
            path=series.source,
        )
    name = opts.name or series.name or Path(series.source).stem
    try:
        return new_meta(statistic_id, kind=kind, unit=unit, name=name)
    except InputError as err:
        raise InputError(err.problem, path=series.source) from None


def apply_imports(target: StatisticsTarget, imports: list[StatisticImport],
                  progress: Progress | None = None) -> list[str]:
    """Write every plan in one transaction (all statistics or none); the target then reads
    every written row back and checks it."""
    todo = [item for item in imports if not item.plan.is_empty]
    if not todo:
        return []
    report = None
    if progress is not None:
        total = sum(tp.count for item in todo for tp in item.plan.tables)
        label = "writing " + ", ".join(item.statistic_id for item in todo)

        def report(n: int) -> None:
            progress(label, n, total)

    target.apply_all([item.plan for item in todo], progress=report)
    return [item.statistic_id for item in todo]
