"""`backdate migrate`: carry one statistic's history into another, then optionally let a better
source overwrite what it covers.

Phase 1 is an import whose input is OLD's hourly (and 5-minute) changes, converted into NEW's
unit, minus the hours the overlap rule leaves to NEW: so seams, the compile-window guard, the
single transaction, and the read-back all come from the import path. When NEW holds nothing
yet (database targets), its metadata row simply moves. Phase 2 (`then_backfill`) is a plain
import of NEW from the named source; if it fails, phase 1 stays committed and the result says
so with the command that retries it (exit 3).

No Rich, no Typer, no environment here: the CLI passes settings in and renders the result.
"""

from __future__ import annotations

import csv
import difflib
import fnmatch
import io
import math
import re
import shlex
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from backdate import clock
from backdate.engine import units
from backdate.engine.merge import (
    Changes,
    MergeCounts,
    Overlap,
    as_series,
    chain,
    five_minute_detail,
    row_changes,
    select_hours,
    sum_changes,
)
from backdate.engine.prepare import validate_statistic_id
from backdate.errors import BackdateError, InputError, RefusedError, UsageError
from backdate.models import (
    FIVE_MINUTES,
    HOUR,
    Kind,
    RowBlock,
    Series,
    StatisticMeta,
    Table,
    TablePlan,
    WritePlan,
)
from backdate.targets.base import StatisticsTarget, TargetInfo

Progress = Callable[[str, int, int], None]


@dataclass(slots=True)
class Pair:
    """OLD ids (oldest first) whose history goes into NEW."""

    sources: list[str]
    into: str
    origin: str | None = None  # the --map file the pair came from
    line: int | None = None  # and its line there (for errors)


@dataclass(slots=True)
class MigrateSettings:
    """Everything the command line decided."""

    target: str  # the target URL as given (for backups and the retry command)
    pairs: list[Pair]
    overlap: Overlap = Overlap.KEEP_TARGET
    start: float | None = None
    end: float | None = None
    bounds_text: tuple[str | None, str | None] = (None, None)
    dry_run: bool = False
    remove_source: bool = False
    backup: bool = True
    then_backfill: str | None = None
    short_term: bool = True
    short_term_days: float = 10.0
    report_tz: str = "UTC"
    now: float | None = None


@dataclass(slots=True)
class PairPlan:
    """One NEW statistic's part of the migration."""

    pair: Pair
    action: str  # "merge", "rename", or "nothing"
    unit: str | None  # NEW's unit after the migration
    source_units: dict[str, str | None] = field(default_factory=dict)
    factors: dict[str, float] = field(default_factory=dict)
    rows_read: dict[str, int] = field(default_factory=dict)  # hourly rows of each OLD
    counts: MergeCounts = field(default_factory=MergeCounts)
    item: Any = None  # StatisticImport of the merge (plan, day rows, seams)
    rename: Any = None  # recorder_db.Rename
    notes: list[str] = field(default_factory=list)
    source_fate: str = "kept"  # "kept", "removed", "moved" (renamed), "will be removed"

    @property
    def rows_written(self) -> int:
        if self.item is None:
            return 0
        return sum(tp.count for tp in self.item.plan.tables)

    @property
    def rows_shifted(self) -> int:
        if self.item is None:
            return 0
        return sum(tp.shifted for tp in self.item.plan.tables)


@dataclass(slots=True)
class MigrateResult:
    """What happened (or, with dry_run, would happen), for the CLI and `--json`."""

    target: str
    overlap: Overlap
    dry_run: bool
    pairs: list[PairPlan]
    backup_path: Path | None = None
    phase1: str = "planned"  # "planned", "done", "nothing to do"
    phase2: str = "not requested"  # "planned", "done", "failed", "not requested"
    phase2_source: str | None = None
    phase2_error: str | None = None
    phase2_items: list[Any] = field(default_factory=list)
    retry_command: str | None = None
    removed: list[str] = field(default_factory=list)
    report_tz: str = "UTC"  # zone of the per-day table

    @property
    def exit_code(self) -> int:
        return 3 if self.phase2 == "failed" else 0

    def to_json(self) -> dict[str, Any]:
        def iso(ts: float | None) -> str | None:
            return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()

        pairs = []
        for p in self.pairs:
            plan = p.item.plan if p.item is not None else None
            pairs.append({
                "into": p.pair.into, "from": p.pair.sources, "action": p.action,
                "unit": p.unit, "source_units": p.source_units, "factors": p.factors,
                "rows_read": p.rows_read,
                "hours_from_source": p.counts.from_source, "hours_overlap": p.counts.overlap,
                "hours_overwritten": p.counts.overwritten,
                "hours_kept_target": p.counts.kept_target,
                "rows_written": p.rows_written, "rows_shifted": p.rows_shifted,
                "tables": None if plan is None else {
                    tp.table.value: {"rows": tp.count, "new": tp.inserted,
                                     "updated": tp.updated, "shifted": tp.shifted,
                                     "shift": tp.shift, "shift_from": iso(tp.shift_from)}
                    for tp in plan.tables},
                "source": p.source_fate, "notes": p.notes + (plan.notes if plan else []),
                "days": _days(p.item, self.report_tz),
                "seams": _seams(p.item),
            })
        return {"target": self.target, "overlap": self.overlap.value, "dry_run": self.dry_run,
                "phase1": self.phase1, "phase2": self.phase2,
                "phase2_source": self.phase2_source, "phase2_error": self.phase2_error,
                "retry_command": self.retry_command,
                "backup": None if self.backup_path is None else str(self.backup_path),
                "removed": self.removed, "pairs": pairs, "exit_code": self.exit_code}


def _days(item: Any, zone: str) -> list[dict[str, Any]]:
    """What the Energy dashboard shows per local day for NEW, now and after."""
    if item is None or not item.plan.hourly.count or not item.plan.meta.has_sum:
        return []
    from zoneinfo import ZoneInfo

    from backdate.app.report import day_table

    return [{"day": line.day.isoformat(), "now": line.energy_now, "after": line.energy_after,
             "new": line.new, "updated": line.updated, "shifted": line.shifted}
            for line in day_table(item, ZoneInfo(zone))]


def _seams(item: Any) -> list[dict[str, Any]]:
    if item is None or not item.plan.hourly.count or not item.plan.meta.has_sum:
        return []
    from backdate.app.report import seams

    return [{"table": s.table, "edge": s.edge,
             "start": datetime.fromtimestamp(s.start_ts, UTC).isoformat(),
             "change_before": s.change_before, "change_after": s.change_after,
             "expected": s.expected, "closed": s.closed} for s in seams(item)]


# -- pairs ----------------------------------------------------------------------------------


def read_map(path: Path) -> list[tuple[str, str, int | None]]:
    """Pairs from a TOML file (`"old" = "new"` lines, at the top or under [map]) or a CSV file
    (`from,into` per line; a header line is allowed). Globs with `*` are expanded later."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --map {path}: {exc.strerror or exc}") from None
    pairs: list[tuple[str, str, int | None]] = []
    if path.suffix.lower() == ".toml":
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise InputError(f"not valid TOML: {exc}", path=str(path)) from None
        table = doc.get("map", doc)
        for key, value in table.items():
            if not isinstance(value, str):
                raise InputError(f"{key!r}: the new statistic id must be a string",
                                 path=str(path))
            pairs.append((key.strip(), value.strip(), _toml_line(text, key)))
    else:
        for n, row in enumerate(csv.reader(io.StringIO(text)), start=1):
            cells = [c.strip() for c in row if c.strip()]
            if not cells or cells[0].startswith("#"):
                continue
            if _is_statistics_export(cells):
                raise InputError(
                    "this is a statistics export (statistic_id, unit, start, …), not a map of "
                    f"`old_id,new_id` pairs; import it with `backdate import {path} --to "
                    "TARGET`", path=str(path), line=n)
            if len(cells) != 2:
                raise InputError("each line is `old_id,new_id`", path=str(path), line=n)
            if n == 1 and not any(_is_id(c) for c in cells):
                continue  # a header line, whatever its words
            for cell in cells:
                if not _is_id(cell):
                    raise InputError(f"{cell!r} is not a statistic id (`sensor.name` or "
                                     "`domain:name`, `*` allowed)", path=str(path), line=n)
            pairs.append((cells[0], cells[1], n))
    if not pairs:
        raise InputError("no pairs in the map file", path=str(path))
    return pairs


def _is_id(cell: str) -> bool:
    """A statistic id as HA accepts it, or a pattern of one (`*` stands for a part)."""
    try:
        validate_statistic_id(cell.replace("*", "x"))
    except InputError:
        return False
    return True


def _is_statistics_export(cells: Sequence[str]) -> bool:
    """The first line of a statistics file (another tool's export, or backdate's own), not of
    a map: it names `statistic_id` and a time or value column."""
    words = {w.strip().lower() for c in cells for w in re.split(r"[\t;,]", c)}
    return "statistic_id" in words and bool(words & {"start", "unit", "sum", "state", "mean"})


def _toml_line(text: str, key: str) -> int | None:
    """The line of a TOML key (tomllib keeps none), for errors about that pair."""
    for n, line in enumerate(text.splitlines(), start=1):
        if key in line and "=" in line.split(key, 1)[1]:
            return n
    return None


def expand_pairs(raw: Sequence[tuple[str, str] | tuple[str, str, int | None]],
                 known: Sequence[str], source: str | None = None) -> list[Pair]:
    """`sensor.powerwall_* = sensor.teslemetry_*`: each existing id matching the left side
    pairs with the right side, `*` filled with what it matched there."""
    out: list[Pair] = []
    for entry in raw:
        old, new = entry[0], entry[1]
        line = entry[2] if len(entry) > 2 else None
        if "*" not in old:
            out.append(Pair([old], new, source, line))
            continue
        if old.count("*") != new.count("*"):
            raise InputError(f"{old} = {new}: both sides need the same number of '*'",
                             path=source, line=line)
        hits = [sid for sid in known if fnmatch.fnmatchcase(sid, old)]
        if not hits:
            from backdate.services.inspecting import suggestions

            text = f"{old}: no statistic in the target matches"
            close = suggestions(old, list(known))
            if close:
                text += "; did you mean " + " or ".join(close) + "?"
            raise InputError(text, path=source, line=line)
        regex = fnmatch.translate(old).replace(".*", "(.*)")
        for sid in hits:
            m = re.match(regex, sid)
            target = new
            for part in (m.groups() if m else ()):
                target = target.replace("*", part, 1)
            out.append(Pair([sid], target, source, line))
    return out


def check_pairs(pairs: Sequence[Pair]) -> None:
    """Valid ids, no id both written and read, no NEW twice."""
    seen: set[str] = set()
    sources = {s for p in pairs for s in p.sources}
    for p in pairs:
        for sid in (*p.sources, p.into):
            validate_statistic_id(sid)
        if p.into in p.sources:
            raise UsageError(f"{p.into} cannot be migrated into itself")
        if p.into in seen:
            raise UsageError(f"{p.into} is the target of two pairs; use --from several times")
        if p.into in sources:
            raise UsageError(f"{p.into} is both a source and a target of this migration")
        seen.add(p.into)
        twice = sorted({s for s in p.sources if p.sources.count(s) > 1})
        if twice:
            raise UsageError(f"{twice[0]} is named twice as --from of {p.into}")


# -- planning -------------------------------------------------------------------------------


def _sums(target: StatisticsTarget, table: Table, sid: str, start: float | None = None
          ) -> tuple[np.ndarray, np.ndarray]:
    """(start_ts, sum) columns: the database targets' columnar read, else read_rows."""
    reader = getattr(target, "read_sums", None)
    if reader is not None:
        return reader(table, sid, start)
    rows = [r for r in target.read_rows(table, sid, start) if r.sum is not None]
    return (np.array([r.start_ts for r in rows], dtype=np.float64),
            np.array([r.sum for r in rows], dtype=np.float64))


def _changes(target: StatisticsTarget, sid: str, factor: float, five_from: float | None
             ) -> tuple[Changes, Changes, int]:
    """OLD's hourly and 5-minute changes in NEW's unit. 5-minute rows are read from
    `five_from` on (None: not at all): before it the planner writes no 5-minute rows. The first
    5-minute row is measured from the hourly sum at its start where the hourly table has it."""
    h_starts, h_sums = _sums(target, Table.HOURLY, sid)
    hours = sum_changes(h_starts, h_sums, HOUR, label=sid).scaled(factor)
    fives = Changes.empty(FIVE_MINUTES)
    if five_from is not None:
        f_starts, f_sums = _sums(target, Table.SHORT_TERM, sid, five_from)
        if f_starts.size:
            i = int(np.searchsorted(h_starts, f_starts[0] - HOUR))
            base = float(h_sums[i]) if i < h_starts.size and h_starts[i] == f_starts[0] - HOUR \
                else None
            fives = sum_changes(f_starts, f_sums, FIVE_MINUTES, label=sid,
                                base=base).scaled(factor)
    return hours, fives, int(h_starts.size)


def _five_from(target: StatisticsTarget, into: str, exists: bool, settings: MigrateSettings,
               now: float) -> float | None:
    """Where 5-minute rows of NEW can be written: inside HA's short-term retention (unless
    --no-short-term), and wherever NEW already has 5-minute rows (the planner's rule)."""
    start = now - settings.short_term_days * 86400 if settings.short_term else math.inf
    if exists:
        starts, _ = _sums(target, Table.SHORT_TERM, into)
        if starts.size:
            start = min(start, float(starts[0]))
    return None if math.isinf(start) else math.floor(start / HOUR) * HOUR - HOUR


def _factor(old: StatisticMeta, unit: str | None, into: str) -> float:
    try:
        conv = units.conversion(old.unit_of_measurement, unit)
    except InputError:
        raise RefusedError(
            f"{old.statistic_id} is in {old.unit_of_measurement!r}, which cannot be converted "
            f"into {into}'s {unit!r} (a different kind of quantity); nothing was written"
        ) from None
    if conv.offset:
        raise RefusedError(f"{old.statistic_id} ({old.unit_of_measurement}) into {unit}: an "
                           "offset conversion cannot apply to a sum")
    return conv.factor


def _close_ids(target: StatisticsTarget, sid: str, exclude: Sequence[str] = ()) -> list[str]:
    """The existing ids closest to `sid` (every target lists its metadata cheaply)."""
    from backdate.services.inspecting import suggestions

    metas = getattr(target, "statistic_metas", None)
    if metas is None:
        return []
    try:
        known = [m.statistic_id for m in metas() if m.statistic_id not in exclude]
    except BackdateError:  # a hint only: never in the way of the error or plan it adds to
        return []
    return suggestions(sid, known)


def _missing(target: StatisticsTarget, sid: str, where: str) -> str:
    """OLD is not there: name the closest ids."""
    text = f"{sid}: no such statistic in {where}"
    close = _close_ids(target, sid)
    if close:
        text += "; did you mean " + " or ".join(close) + "?"
    return text


def plan_pair(target: StatisticsTarget, pair: Pair, settings: MigrateSettings, *,
              can_rename: bool, now: float) -> PairPlan:
    """One pair's plan: a rename when NEW holds nothing (database targets), else a merge."""
    from backdate.app.importing import ImportOptions, plan_imports

    olds: list[StatisticMeta] = []
    for sid in pair.sources:
        meta = target.get_metadata(sid)
        if meta is None:
            raise InputError(_missing(target, sid, settings.target), path=pair.origin,
                             line=pair.line)
        olds.append(meta)
    new = target.get_metadata(pair.into)
    typo: list[str] = []  # NEW not there: a typo of an existing id? (a note; renames stay)
    if new is None:
        typo = [sid for sid in _close_ids(target, pair.into, pair.sources)
                if difflib.SequenceMatcher(None, sid, pair.into).ratio() >= 0.9]
    everyone = olds + ([new] if new is not None else [])
    is_sum = olds[0].has_sum
    for meta in everyone:
        if meta.has_sum != is_sum or (not is_sum and meta.mean_type != olds[0].mean_type):
            raise RefusedError(
                f"{meta.statistic_id} is a {'sum (meter)' if meta.has_sum else 'mean'} "
                f"statistic, {olds[0].statistic_id} a "
                f"{'sum (meter)' if is_sum else 'mean'} one: they cannot be merged")
    unit = new.unit_of_measurement if new is not None else olds[-1].unit_of_measurement
    result = PairPlan(pair=pair, action="merge", unit=unit)
    if typo:
        result.notes.append(f"{pair.into} has no statistics yet: the history goes into a new "
                            f"id (did you mean {' or '.join(typo)}?)")
    conversions: dict[str, units.Conversion] = {}
    for meta in olds:
        result.source_units[meta.statistic_id] = meta.unit_of_measurement
        if is_sum:
            result.factors[meta.statistic_id] = _factor(meta, unit, pair.into)
        else:
            conversions[meta.statistic_id] = _mean_conversion(meta, unit, pair.into)
            result.factors[meta.statistic_id] = conversions[meta.statistic_id].factor
    ranged = settings.start is not None or settings.end is not None
    if new is None and can_rename and len(olds) == 1 and not ranged:
        from backdate.targets.recorder_db import Rename

        old = olds[0]
        source, _ = validate_statistic_id(pair.into)
        assert old.id is not None
        result.action = "rename"
        result.rename = Rename(old.statistic_id, pair.into, old.id, source,
                               anchor=source == "recorder" and is_sum)
        result.source_fate = "moved"
        result.rows_read[old.statistic_id] = int(
            _sums(target, Table.HOURLY, old.statistic_id)[0].size) if is_sum else len(
            target.read_rows(Table.HOURLY, old.statistic_id))
        result.counts.from_source = result.rows_read[old.statistic_id]
        return result

    if not is_sum:
        return _plan_means(target, pair, settings, result, olds, new, conversions, now)
    info = target.info()
    five_from = _five_from(target, pair.into, new is not None, settings, now) \
        if info.supports_short_term else None
    hours_parts, five_parts = [], []
    for meta in olds:
        hours, fives, n = _changes(target, meta.statistic_id, result.factors[meta.statistic_id],
                                   five_from)
        result.rows_read[meta.statistic_id] = n
        hours_parts.append(hours)
        five_parts.append(fives)
    old_hours = chain(hours_parts).within(settings.start, settings.end)
    old_fives = chain(five_parts).within(settings.start, settings.end)
    result.notes.extend(old_hours.notes)
    if len(old_hours) == 0:
        result.action = "nothing"
        result.notes.append("the sources hold no hours in the range")
        return result
    span = (float(old_hours.starts[0]), float(old_hours.starts[-1]) + HOUR)
    new_starts = np.array([r.start_ts for r in target.read_rows(Table.HOURLY, pair.into, *span)
                           if r.sum is not None], dtype=np.float64) if new else np.empty(0)
    picked, result.counts = select_hours(old_hours, new_starts, settings.overlap)
    if len(picked) == 0:
        result.action = "nothing"
        result.notes.append("NEW already holds every hour the sources have (keep-target)")
        return result
    detail = five_minute_detail(picked, old_fives)
    series = as_series(picked, detail, source=" + ".join(pair.sources), unit=unit)
    series.name = new.name if new is not None else olds[-1].name
    opts = ImportOptions(statistic_id=pair.into, kind=Kind.DELTA, unit=unit,
                         short_term=settings.short_term,
                         short_term_days=settings.short_term_days, backup=settings.backup,
                         report_tz=settings.report_tz, create=True)
    [item] = plan_imports(target, [series], opts, now=now)
    result.item = item
    result.unit = item.plan.meta.unit_of_measurement
    if new is None and not item.plan.meta.is_external:
        _anchor_new_entity(item.plan, info)
    return result


def _anchor_new_entity(plan: WritePlan, info: TargetInfo) -> None:
    """An entity statistic created by the merge: HA's compile continues its sum from the
    newest 5-minute row and measures growth from that row's `state`. Without 5-minute rows it
    would start again from 0 (a step down of the whole history); so the plan gets one 5-minute
    row, the last window of its last hour, with that hour's sum and no meter reading, from
    which HA keeps the sum and takes NEW's next reading as its starting point."""
    if not info.supports_short_term:
        raise RefusedError(
            f"{plan.meta.statistic_id} has no statistics yet: through the API backdate cannot "
            "write the 5-minute row Home Assistant continues an entity's sum from, so HA would "
            "start it again from 0. Let HA compile it once (5 minutes after it has a state) "
            "and run migrate again, or use the database URL")
    hourly = plan.hourly.rows
    if plan.short_term.count or not len(hourly) or hourly.sum is None:
        return
    start = float(hourly.start_ts[-1]) + HOUR - FIVE_MINUTES
    if info.last_compiled_end is not None and start + FIVE_MINUTES > info.last_compiled_end:
        return
    rows = RowBlock(np.array([start]), state=np.array([np.nan]),
                    sum=np.array([float(hourly.sum[-1])]))
    plan.short_term = TablePlan(Table.SHORT_TERM, rows=rows, inserted=1)
    plan.notes.append("one 5-minute row (no meter reading) anchors the sum for Home "
                      "Assistant's next compile of this entity")


def _mean_conversion(old: StatisticMeta, unit: str | None, into: str) -> units.Conversion:
    try:
        return units.conversion(old.unit_of_measurement, unit)
    except InputError:
        raise RefusedError(
            f"{old.statistic_id} is in {old.unit_of_measurement!r}, which cannot be converted "
            f"into {into}'s {unit!r} (a different kind of quantity); nothing was written"
        ) from None


def _plan_means(target: StatisticsTarget, pair: Pair, settings: MigrateSettings,
                result: PairPlan, olds: list[StatisticMeta], new: StatisticMeta | None,
                conversions: dict[str, units.Conversion], now: float) -> PairPlan:
    """Measurements (temperature, power, ...): hourly rows are independent, so OLD's rows
    (mean, min and max converted, offsets included) go where the overlap rule lets them."""
    from backdate.app.importing import ImportOptions, plan_imports

    picked: dict[float, tuple[float, float, float]] = {}
    for meta in olds:  # oldest first: a later id wins an hour two of them hold
        conv = conversions[meta.statistic_id]
        rows = [r for r in target.read_rows(Table.HOURLY, meta.statistic_id)
                if r.mean is not None]
        result.rows_read[meta.statistic_id] = len(rows)
        for r in rows:
            if settings.start is not None and r.start_ts < settings.start:
                continue
            if settings.end is not None and r.start_ts + HOUR > settings.end:
                continue
            assert r.mean is not None
            lo = r.min if r.min is not None else r.mean
            hi = r.max if r.max is not None else r.mean
            picked[r.start_ts] = tuple(v * conv.factor + conv.offset  # type: ignore[assignment]
                                       for v in (r.mean, lo, hi))
    if not picked:
        result.action = "nothing"
        result.notes.append("the sources hold no hours in the range")
        return result
    starts = np.array(sorted(picked), dtype=np.float64)
    new_starts = np.array([r.start_ts for r in target.read_rows(
        Table.HOURLY, pair.into, float(starts[0]), float(starts[-1]) + HOUR)
        if r.mean is not None], dtype=np.float64) if new else np.empty(0)
    both = np.isin(starts, new_starts)
    result.counts = MergeCounts(from_source=int((~both).sum()), overlap=int(both.sum()))
    if settings.overlap is Overlap.KEEP_SOURCE:
        result.counts.overwritten = result.counts.overlap
    else:
        result.counts.kept_target = result.counts.overlap
        starts = starts[~both]
    if starts.size == 0:
        result.action = "nothing"
        result.notes.append("NEW already holds every hour the sources have (keep-target)")
        return result
    values = np.array([picked[float(t)] for t in starts])
    series = Series(source=" + ".join(pair.sources), times=starts, values=values[:, 0],
                    lines=np.arange(1, starts.size + 1), ends=starts + HOUR,
                    mins=values[:, 1], maxs=values[:, 2], kind=Kind.MEAN,
                    unit=result.unit, name=new.name if new is not None else olds[-1].name)
    opts = ImportOptions(statistic_id=pair.into, kind=Kind.MEAN, unit=result.unit,
                         short_term=settings.short_term,
                         short_term_days=settings.short_term_days, backup=settings.backup,
                         report_tz=settings.report_tz, create=True)
    [item] = plan_imports(target, [series], opts, now=now)
    result.item = item
    return result


def _idle(p: PairPlan, remove_source: bool) -> bool:
    """The pair changes nothing: no hours to take (or none HA has compiled, e.g. a second run
    of the same migration) and OLD stays."""
    if p.action == "nothing":
        return True
    return (p.action == "merge" and not remove_source and p.item is not None
            and p.item.plan.is_empty)


def plan_migration(target: StatisticsTarget, settings: MigrateSettings) -> MigrateResult:
    """Every pair planned before anything is written; any refusal stops everything."""
    check_pairs(settings.pairs)
    now = clock.now() if settings.now is None else settings.now
    can_rename = hasattr(target, "statistic_metas") and target.info().kind != "websocket"
    pairs = [plan_pair(target, pair, settings, can_rename=can_rename, now=now)
             for pair in settings.pairs]
    result = MigrateResult(settings.target, settings.overlap, settings.dry_run, pairs,
                           report_tz=settings.report_tz)
    if all(_idle(p, settings.remove_source) for p in pairs):
        result.phase1 = "nothing to do"
    if settings.remove_source:
        for p in pairs:
            if p.action == "merge":
                p.source_fate = "will be removed after NEW is verified"
    if settings.then_backfill:
        result.phase2 = "planned"
        result.phase2_source = settings.then_backfill
        result.retry_command = retry_command(settings)
    return result


def retry_command(settings: MigrateSettings) -> str:
    """The `backdate import` that phase 2 runs, for the user to run again."""
    into = settings.pairs[0].into
    args = ["backdate", "import", settings.then_backfill or "", "--to", settings.target,
            "--statistic-id", into]
    start, end = settings.bounds_text
    if start:
        args += ["--start", start]
    if end:
        args += ["--end", end]
    args.append("--yes")
    return shlex.join(args)


# -- running --------------------------------------------------------------------------------


Backup = Callable[[list[str]], Path | None]


def run_migration(target: StatisticsTarget, settings: MigrateSettings, *,
                  backup: Backup | None = None, progress: Progress | None = None,
                  plan: MigrateResult | None = None) -> MigrateResult:
    """Plan (unless given), then: backup, phase 1 in one transaction (database targets),
    read-back, --remove-source, phase 2. Never reports a phase done that did not run."""
    result = plan if plan is not None else plan_migration(target, settings)
    if settings.dry_run:
        if settings.then_backfill:
            _plan_backfill(target, settings, result)
        return result
    merges = [p for p in result.pairs if p.action == "merge"]
    renames = [p.rename for p in result.pairs if p.action == "rename"]
    if result.phase1 == "nothing to do":
        merges, renames = [], []  # no backup, no write: a second run changes nothing
    if merges or renames:
        if backup is not None and settings.backup:
            ids = sorted({s for p in result.pairs for s in p.pair.sources}
                         | {p.pair.into for p in result.pairs})
            result.backup_path = backup(ids)
        report = None
        if progress is not None:
            total = sum(p.rows_written for p in merges) or 1
            label = "migrating " + ", ".join(p.pair.into for p in result.pairs)

            def report(n: int) -> None:
                progress(label, n, total)

        plans = [p.item.plan for p in merges if not p.item.plan.is_empty]
        try:
            if renames:
                target.apply_all(plans, progress=report,  # type: ignore[call-arg]
                                 renames=renames)
            elif plans:
                target.apply_all(plans, progress=report)
        except BackdateError as err:
            if settings.then_backfill:
                err.args = (f"{err} (phase 1 failed, so phase 2, --then-backfill, did not "
                            "run)",)
            raise
        result.phase1 = "done"
        if settings.remove_source:
            olds = [s for p in merges for s in p.pair.sources]
            remover = getattr(target, "delete_statistics", None)
            try:
                if remover is None:
                    raise RefusedError("this target cannot delete statistics")
                remover(olds)
            except BackdateError as err:
                err.args = (f"phase 1 is done and verified, but removing "
                            f"{', '.join(olds)} failed (they are kept): {err}",)
                raise
            result.removed = olds
            for p in merges:
                p.source_fate = "removed"
    if settings.then_backfill:
        _run_backfill(target, settings, result)
    return result


def _backfill_imports(target: StatisticsTarget, settings: MigrateSettings,
                      now: float | None = None) -> list[Any]:
    from backdate.app.importing import ImportOptions, plan_imports, read_sources

    assert settings.then_backfill is not None
    opts = ImportOptions(statistic_id=settings.pairs[0].into, start=settings.start,
                         end=settings.end, bounds_text=settings.bounds_text,
                         short_term=settings.short_term,
                         short_term_days=settings.short_term_days, report_tz=settings.report_tz,
                         create=True)  # NEW is named explicitly: never a typo to refuse
    series = read_sources([settings.then_backfill], opts)
    return plan_imports(target, series, opts, now=now)


def _plan_backfill(target: StatisticsTarget, settings: MigrateSettings,
                   result: MigrateResult) -> None:
    """--dry-run: phase 2 planned against NEW as it is now (before phase 1)."""
    try:
        result.phase2_items = _backfill_imports(target, settings, settings.now)
    except BackdateError as err:
        result.phase2_error = f"phase 2 could not be planned: {err}"


def _run_backfill(target: StatisticsTarget, settings: MigrateSettings,
                  result: MigrateResult) -> None:
    from backdate.app.importing import apply_imports

    try:
        items = _backfill_imports(target, settings)
        apply_imports(target, items)
        result.phase2_items = items
        result.phase2 = "done"
    except (BackdateError, OSError) as err:
        result.phase2 = "failed"
        result.phase2_error = str(err)


# -- suggestions ----------------------------------------------------------------------------


@dataclass(slots=True)
class Suggestion:
    """A statistic that stopped, beside one of the same kind that started near then."""

    old: str
    new: str
    unit_class: str | None
    old_last: float
    new_first: float
    why: str

    def to_json(self) -> dict[str, Any]:
        return {"from": self.old, "into": self.new, "unit_class": self.unit_class,
                "old_last_start": self.old_last, "new_first_start": self.new_first,
                "why": self.why}


def suggest_pairs(target: StatisticsTarget, *, stopped_for: float = 6 * HOUR,
                  near: float = 14 * 86400) -> list[Suggestion]:
    """Orphans (entity statistics whose rows stopped `stopped_for` before the newest row of
    the target) beside statistics with the same unit class and sum/mean type whose first row
    lies within `near` of the orphan's last; closest first."""
    summaries = [s for s in target.list_statistics()
                 if s.first_start is not None and s.last_start is not None]
    if not summaries:
        return []
    newest = max(s.last_start for s in summaries if s.last_start is not None)
    # Over the API, HA says which entities exist and where they sit.
    lookup = getattr(target, "entities", None)
    live, registry = lookup() if lookup is not None else (None, {})
    out: list[Suggestion] = []
    for old in summaries:
        assert old.last_start is not None
        if old.meta.is_external:
            continue
        if live is not None:
            if old.meta.statistic_id in live:
                continue
        elif old.last_start > newest - stopped_for:
            continue
        home = registry.get(old.meta.statistic_id, {})
        cls = units.unit_class(old.meta.unit_of_measurement)
        best: list[tuple[float, Any]] = []
        for new in summaries:
            assert new.first_start is not None and new.last_start is not None
            if new is old or new.meta.has_sum != old.meta.has_sum:
                continue
            if new.meta.mean_type != old.meta.mean_type:
                continue
            if units.unit_class(new.meta.unit_of_measurement) != cls:
                continue
            if new.last_start <= old.last_start:
                continue
            if live is not None and not new.meta.is_external and \
                    new.meta.statistic_id not in live:
                continue
            gap = new.first_start - old.last_start
            if abs(gap) <= near:
                there = registry.get(new.meta.statistic_id, {})
                place = ("same device" if home.get("device_id") and
                         home.get("device_id") == there.get("device_id") else
                         "same area" if home.get("area_id") and
                         home.get("area_id") == there.get("area_id") else "")
                best.append(((place != "same device", place == "", abs(gap)), new, place))
        for key, new, place in sorted(best, key=lambda x: x[0])[:3]:
            assert new.first_start is not None
            gap = key[2]
            overlap = "before it stopped" if new.first_start <= old.last_start else "after"
            gone = "its entity is gone" if live is not None else "it stopped"
            out.append(Suggestion(old.meta.statistic_id, new.meta.statistic_id, cls,
                                  old.last_start, new.first_start,
                                  f"{gone}; same unit class and type"
                                  + (f", {place}" if place else "")
                                  + f"; started {gap / 3600:.0f} h {overlap}"))
    return out


def migrated_into(target: StatisticsTarget, summaries: Sequence[Any],
                  hours: int = 24) -> dict[str, str]:
    """OLD ids whose history a NEW statistic holds (a migration that kept OLD): NEW spans
    OLD's start and reaches past its end, and NEW's hourly changes over OLD's first `hours`
    hours (after its first row, whose change may have been an offset) equal OLD's, converted.
    For `inspect`; reads a few rows per candidate pair."""
    sums = [s for s in summaries if s.meta.has_sum and s.first_start is not None
            and s.last_start is not None]
    out: dict[str, str] = {}
    if not sums:
        return out
    newest = max(s.last_start for s in sums)
    for old in sums:
        if old.last_start > newest - 6 * HOUR:  # only statistics that stopped
            continue
        for new in sums:
            if new is old or new.first_start > old.first_start or \
                    new.last_start <= old.last_start:
                continue
            try:
                factor = units.conversion(old.meta.unit_of_measurement,
                                          new.meta.unit_of_measurement).factor
            except InputError:
                continue
            if units.unit_class(old.meta.unit_of_measurement) != units.unit_class(
                    new.meta.unit_of_measurement):
                continue
            a, b = old.first_start, old.first_start + (hours + 1) * HOUR
            o = row_changes(target.read_rows(Table.HOURLY, old.meta.statistic_id, a, b), HOUR)
            n_rows = target.read_rows(Table.HOURLY, new.meta.statistic_id, a - HOUR, b)
            n = row_changes(n_rows, HOUR)
            if len(o) < 3 or len(n) < len(o):
                continue
            o_map = dict(zip(o.starts[1:].tolist(), (o.amounts[1:] * factor).tolist(),
                             strict=True))
            n_map = dict(zip(n.starts.tolist(), n.amounts.tolist(), strict=True))
            if any(t not in n_map for t in o_map) or not any(v for v in o_map.values()):
                continue
            if all(abs(n_map[t] - v) <= 1e-9 * max(1.0, abs(v)) for t, v in o_map.items()):
                out[old.meta.statistic_id] = new.meta.statistic_id
                break
    return out
