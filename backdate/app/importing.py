"""`backdate plan` and `backdate import`: sources in, a checked plan, an atomic write, a read-back.

The order is the safety: every source is read and every plan built before the first write, so
bad input anywhere means nothing is written anywhere.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

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
from backdate.models import Kind, Series, StatisticMeta, Table, WritePlan
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


@dataclass(slots=True)
class StatisticImport:
    """One statistic's planned import, with what the report needs."""

    series: Series
    prepared: Prepared
    plan: WritePlan
    hourly_before: Neighbourhood | None = None  # what the hourly table held in the window
    input_unit: str | None = None

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
    """Read every source file; the first bad line anywhere stops everything."""
    from backdate.sources.files import read_file

    out: list[Series] = []
    for path in paths:
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


def statistic_id_for(series: Series, opts: ImportOptions, several: bool) -> str:
    """Explicit --statistic-id, else the file's, else backdate:<file name>."""
    suffix = f"_{slugify(series.name)}" if several and series.name else ""
    if opts.statistic_id:
        return opts.statistic_id + suffix
    if series.statistic_id:
        return series.statistic_id
    stem = Path(series.source).stem
    return f"backdate:{slugify(stem)}{suffix}"


def resolve_kind(series: Series, opts: ImportOptions) -> Kind:
    if opts.kind and series.kind and opts.kind is not series.kind:
        raise InputError(
            f"the file's columns say kind {series.kind.value}, but --kind says {opts.kind.value}",
            path=series.source,
        )
    return series.kind or opts.kind or Kind.DELTA


def plan_imports(target: StatisticsTarget, series_list: list[Series], opts: ImportOptions,
                 *, now: float | None = None) -> list[StatisticImport]:
    """Build every plan (no writes). Raises InputError/RefusedError before anything changes."""
    now = time.time() if now is None else now
    info = target.info()
    several = len({(s.source, s.name) for s in series_list}) > 1 and any(
        s.name for s in series_list)
    planned: list[StatisticImport] = []
    seen: set[str] = set()
    for series in series_list:
        if len(series) == 0:
            raise InputError("no readings", path=series.source)
        statistic_id = statistic_id_for(series, opts, several)
        try:
            _source, external = validate_statistic_id(statistic_id)
        except InputError as err:
            raise InputError(err.problem, path=series.source) from None
        if statistic_id in seen:
            raise InputError(
                f"two inputs go into {statistic_id}: import them one after the other, or give "
                "each its own --statistic-id",
                path=series.source,
            )
        seen.add(statistic_id)
        kind = resolve_kind(series, opts)
        input_unit = units.normalize_unit(opts.unit or series.unit) or (
            "W" if kind is Kind.POWER else ("kWh" if kind is not Kind.MEAN else None)
        )
        existing = target.get_metadata(statistic_id)
        meta = _meta_for(statistic_id, existing, kind, input_unit, opts, series)
        prepared = prepare(series, kind=kind, input_unit=input_unit,
                           statistic_unit=meta.unit_of_measurement, max_gap=opts.max_gap)
        captured: dict[Table, Neighbourhood] = {}

        def fetch(table: Table, start: float, end: float, _id: str = statistic_id,
                  _cap: dict[Table, Neighbourhood] = captured) -> Neighbourhood:
            nb = target.neighbourhood(table, _id, start, end)
            _cap.setdefault(table, nb)
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
        planned.append(StatisticImport(series, prepared, plan, captured.get(Table.HOURLY),
                                       input_unit))
    return planned


def _meta_for(statistic_id: str, existing: StatisticMeta | None, kind: Kind,
              input_unit: str | None, opts: ImportOptions, series: Series) -> StatisticMeta:
    """Existing metadata wins (HA owns entity statistics); new ones get backdate's defaults."""
    is_sum = kind is not Kind.MEAN
    if existing is not None:
        if existing.has_sum != is_sum:
            what = "a sum (meter)" if existing.has_sum else "a mean (measurement)"
            raise RefusedError(
                f"{statistic_id} is {what} statistic in the target, but the input is kind "
                f"{kind.value}"
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
    unit = units.default_statistic_unit(input_unit, is_power=kind is Kind.POWER)
    name = opts.name or series.name or Path(series.source).stem
    try:
        return new_meta(statistic_id, kind=kind, unit=unit, name=name)
    except InputError as err:
        raise InputError(err.problem, path=series.source) from None


def apply_imports(target: StatisticsTarget, imports: list[StatisticImport],
                  progress: Progress | None = None) -> list[str]:
    """Write each plan (one transaction per statistic); the target verifies by reading back."""
    done: list[str] = []
    for item in imports:
        if item.plan.is_empty:
            continue
        if progress is None:
            target.apply(item.plan)
        else:
            total = sum(tp.count for tp in item.plan.tables)
            label = f"writing {item.statistic_id}"
            target.apply(item.plan, progress=lambda n, _l=label, _t=total: progress(_l, n, _t))
        done.append(item.statistic_id)
    return done
