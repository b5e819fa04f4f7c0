"""Rich output for plan, import and inspect. Kept apart so the application layer stays testable."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.table import Table as RichTable
from rich.text import Text

from backdate.app.importing import StatisticImport
from backdate.app.report import DayLine, day_table, draw_chart, seams
from backdate.targets.base import StatisticSummary, TargetInfo

LONG = 62  # days; longer imports are listed per month (per year past 36 months) unless --days


def _num(value: float | None, digits: int = 3) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _grouped(lines: list[DayLine], fmt: str) -> list[tuple[str, float | None, float, int, int,
                                                         int]]:
    months: dict[str, list] = defaultdict(lambda: [None, 0.0, 0, 0, 0])
    for line in lines:
        m = months[line.day.strftime(fmt)]
        if line.energy_now is not None:
            m[0] = (m[0] or 0.0) + line.energy_now
        m[1] += line.energy_after
        m[2] += line.new
        m[3] += line.updated
        m[4] += line.shifted
    return [(k, *v) for k, v in sorted(months.items())]


def print_plans(console: Console, imports: list[StatisticImport], tz: ZoneInfo,
                *, all_days: bool = False) -> None:
    for item in imports:
        plan = item.plan
        meta = plan.meta
        unit = meta.unit_of_measurement or ""
        state = "exists" if plan.metadata_exists else "new"
        console.print(
            f"[bold]{escape(meta.statistic_id)}[/] ({state}, source {escape(meta.source)}, "
            f"{escape(unit) or 'no unit'}, "
            f"{'sum' if meta.has_sum else 'mean'}) from {escape(item.series.source)}: "
            f"{len(item.series):,} readings, kind {item.prepared.kind.value}"
            + (f", input unit {escape(item.input_unit)}" if item.input_unit else ""),
        )
        for tp in plan.tables:
            if tp.count or tp.shifted or tp.unchanged:
                label = "hourly" if tp.table.value == "statistics" else "5-minute"
                console.print(
                    f"  {label} rows: {tp.inserted:,} new, {tp.updated:,} updated, "
                    f"{tp.shifted:,} shifted"
                    + (f", {tp.unchanged:,} already as planned" if tp.unchanged else "")
                    + (f" (sum {tp.shift:+,.6g} {unit} from "
                       f"{datetime.fromtimestamp(tp.shift_from, tz):%Y-%m-%d %H:%M})"
                       if tp.shift_from is not None and tp.shift else ""),
                    highlight=False,
                )
        for note in plan.notes:
            console.print(f"  note: {note}", markup=False)
        for warning in item.warnings:
            console.print(f"  warning: {warning}", markup=False, soft_wrap=True)
        if not plan.hourly.count:
            continue
        lines = day_table(item, tz)
        if meta.has_sum:
            _print_days(console, lines, unit, tz, all_days)
        _print_seams(console, item, tz)


def _print_days(console: Console, lines: list[DayLine], unit: str, tz: ZoneInfo,
                all_days: bool) -> None:
    period = "day"
    if not all_days and len(lines) > LONG:
        period = "month" if len(lines) <= 36 * 31 else "year"
    table = RichTable(title=f"Energy dashboard per {period} ({tz.key}, {unit})",
                      title_justify="left",
                      caption=None if period == "day" else "--days lists every day",
                      caption_justify="left")
    for col in (period, "now", "after", "new", "updated", "shifted"):
        table.add_column(col, justify="right" if col in ("now", "after", "new", "updated",
                                                         "shifted") else "left")
    if period == "day":
        rows = [(line.day.isoformat(), line.energy_now, line.energy_after, line.new,
                 line.updated, line.shifted) for line in lines]
    else:
        rows = _grouped(lines, "%Y-%m" if period == "month" else "%Y")
    for label, now, after, new, updated, shifted in rows:
        table.add_row(label, _num(now), _num(after), f"{new:,}", f"{updated:,}", f"{shifted:,}")
    total_now = sum(line.energy_now or 0.0 for line in lines)
    total_after = sum(line.energy_after for line in lines)
    table.add_row("total", _num(total_now), _num(total_after), "", "", "", style="bold")
    console.print(table)


def _print_seams(console: Console, item: StatisticImport, tz: ZoneInfo) -> None:
    found = seams(item)
    if not found:
        return
    table = RichTable(title="Seams (change at each edge of the written range)",
                      title_justify="left")
    for col in ("table", "edge", "period", "change now", "change after", "must be", ""):
        table.add_column(col)
    for seam in found:
        mark = "ok" if seam.closed else "STEP"
        table.add_row("hourly" if seam.table == "statistics" else "5-minute", seam.edge,
                      f"{datetime.fromtimestamp(seam.start_ts, tz):%Y-%m-%d %H:%M}",
                      _num(seam.change_before, 6), _num(seam.change_after, 6),
                      _num(seam.expected, 6), mark)
    console.print(table)


def can_chart() -> bool:
    """matplotlib is an extra (`backdate[chart]`): a plain `pip install backdate` has none."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def chart(imports: list[StatisticImport], tz: ZoneInfo, path: str) -> bool:
    """Draw the days before and after; False (and no file) when no sum has hourly rows."""
    sums = [i for i in imports if i.plan.meta.has_sum and i.plan.hourly.count]
    if sums:
        draw_chart(sums, tz, path)
    return bool(sums)


def print_done(console: Console, imports: list[StatisticImport], done: list[str]) -> None:
    for item in imports:
        if item.statistic_id in done:
            rows = sum(tp.count for tp in item.plan.tables)
            console.print(f"[green]written and verified[/]: {escape(item.statistic_id)} "
                          f"({rows:,} rows)", highlight=False)


def print_inspect(console: Console, info: TargetInfo, summaries: list[StatisticSummary],
                  *, as_json: bool, tz: ZoneInfo | None = None) -> None:
    """Statistics of a target: JSON (UTC, stable), one tab-separated line each when piped,
    and on a terminal two lines each that wrap between words at any width."""
    if as_json:
        doc = {
            "target": info.url,
            "kind": info.kind,
            "schema_version": info.schema_version,
            "statistics": [
                {
                    "metadata_id": s.meta.id,
                    "statistic_id": s.meta.statistic_id,
                    "source": s.meta.source,
                    "unit": s.meta.unit_of_measurement,
                    "unit_class": s.meta.unit_class,
                    "type": "sum" if s.meta.has_sum else "mean",
                    "mean_type": int(s.meta.mean_type),
                    "name": s.meta.name,
                    "hourly_rows": s.hourly_rows,
                    "short_term_rows": s.short_term_rows,
                    "first_hour": _iso(s.first_start),
                    "last_hour": _iso(s.last_start),
                    "problems": s.problems,
                }
                for s in summaries
            ],
        }
        console.print_json(json.dumps(doc))
        return
    zone = tz or ZoneInfo("UTC")
    console.print(f"{info.url}: {info.kind}, schema {info.schema_version}, "
                  f"{len(summaries)} statistics; times in {zone.key}", markup=False,
                  soft_wrap=not console.is_terminal)
    if not console.is_terminal:  # piped: one tab-separated line per statistic, for grep/cut
        header = ("id", "statistic_id", "name", "source", "unit", "type", "hourly", "5-minute",
                  f"first hour ({zone.key})", f"last hour ({zone.key})", "problems")
        rows = [
            (str(s.meta.id), s.meta.statistic_id, s.meta.name or "", s.meta.source,
             s.meta.unit_of_measurement or "", "sum" if s.meta.has_sum else "mean",
             _count(s.hourly_rows), _count(s.short_term_rows), _local(s.first_start, zone),
             _local(s.last_start, zone), "; ".join(s.problems) or "none")
            for s in summaries
        ]
        for line in (header, *rows):  # written as is: Rich would expand the tabs
            console.file.write("\t".join(line) + "\n")
        return
    for s in summaries:
        head = Text(s.meta.statistic_id, style="bold")
        if s.meta.name:
            head.append(f"  {s.meta.name}")
        console.print(head)
        span = (f"{_local(s.first_start, zone)} to {_local(s.last_start, zone)}"
                if s.first_start is not None else "no rows")
        parts = [f"#{s.meta.id}", s.meta.source, s.meta.unit_of_measurement or "no unit",
                 "sum" if s.meta.has_sum else "mean", f"{_count(s.hourly_rows)} hourly",
                 f"{_count(s.short_term_rows)} 5-minute", span]
        problems = "; ".join(s.problems)
        for text in (Text(" · ".join(parts)),
                     Text(f"problems: {problems}", style="red") if problems
                     else Text("no problems")):
            console.print(Padding(text, (0, 0, 0, 4)))  # wrapped lines stay indented


def _local(ts: float | None, zone: ZoneInfo) -> str:
    return "" if ts is None else datetime.fromtimestamp(ts, zone).strftime("%Y-%m-%d %H:%M")


def _count(n: int) -> str:
    return "unknown" if n < 0 else f"{n:,}"


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
