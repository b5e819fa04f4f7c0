"""Rich output of `backdate migrate`: both phases planned, then what happened."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from rich.console import Console
from rich.markup import escape

from backdate.app.render import print_plans
from backdate.services.migrate import MigrateResult, Suggestion


def print_migration(console: Console, result: MigrateResult, tz: ZoneInfo,
                    *, all_days: bool = False) -> None:
    """Phase 1 per NEW id (rows moved, converted, overwritten; what happens to OLD), with
    the import planner's day table and seams; then phase 2's source."""
    head = "DRY RUN (nothing is written): " if result.dry_run else ""
    console.print(f"[bold]{head}phase 1: migrate into {escape(result.target)}[/] "
                  f"(overlap rule {result.overlap.value})", highlight=False)
    for p in result.pairs:
        units = ", ".join(
            f"{escape(sid)} ({escape(str(p.source_units.get(sid)))}"
            + (f" ×{p.factors[sid]:g}" if p.factors.get(sid, 1.0) != 1.0 else "") + ")"
            for sid in p.pair.sources)
        console.print(f"[bold]{escape(p.pair.into)}[/] ({escape(str(p.unit))}) ← {units}: "
                      f"{p.action}", highlight=False)
        read = ", ".join(f"{escape(s)} {n:,}" for s, n in p.rows_read.items())
        console.print(f"  hourly rows read: {read}", highlight=False)
        if p.action == "rename":
            console.print("  the metadata row moves to the new id (every row follows; nothing "
                          "is converted: HA converts the stored unit itself)", highlight=False)
        else:
            c = p.counts
            console.print(
                f"  hours from the source: {c.from_source:,} only there, {c.overlap:,} in both "
                f"({c.overwritten:,} overwritten by the source, {c.kept_target:,} kept from "
                "the target)", highlight=False)
        for note in p.notes:
            console.print(f"  note: {note}", markup=False)
        console.print(f"  old statistic: {p.source_fate}", highlight=False)
        if p.item is not None:
            print_plans(console, [p.item], tz, all_days=all_days)
    if result.phase2 != "not requested":
        console.print(f"[bold]phase 2[/]: re-import {escape(result.pairs[0].pair.into)} from "
                      f"{escape(str(result.phase2_source))}, overwriting what it covers",
                      highlight=False)


def print_migration_outcome(console: Console, err: Console, result: MigrateResult,
                            tz: ZoneInfo) -> None:
    """What ran. A phase that did not run is never reported as done."""
    if result.dry_run:
        if result.phase2_items:
            print_plans(console, result.phase2_items, tz)
        if result.phase2_error:
            err.print(f"note: {result.phase2_error}", markup=False)
        console.print("dry run: nothing was written")
        return
    if result.backup_path:
        console.print(f"backup: {result.backup_path}", markup=False)
    if result.phase1 == "done":
        for p in result.pairs:
            if p.action == "nothing":
                continue
            what = ("moved" if p.action == "rename"
                    else f"written and verified ({p.rows_written:,} rows)")
            console.print(f"[green]phase 1 done[/]: {escape(p.pair.into)} {what}",
                          highlight=False)
        for sid in result.removed:
            console.print(f"removed {sid} (after {', '.join(q.pair.into for q in result.pairs)} "
                          "read back as planned)", markup=False)
    else:
        console.print(f"phase 1: {result.phase1}", markup=False)
    if result.phase2 == "done":
        rows = sum(tp.count for item in result.phase2_items for tp in item.plan.tables)
        source = escape(str(result.phase2_source))
        console.print(f"[green]phase 2 done[/]: {rows:,} rows from {source}", highlight=False)
    elif result.phase2 == "failed":
        err.print(f"phase 2 FAILED: {result.phase2_error}", markup=False, soft_wrap=True)
        err.print("phase 1 stays committed. Retry phase 2 with:", markup=False)
        err.print(f"  {result.retry_command}", markup=False, soft_wrap=True)


def print_suggestions(console: Console, found: list[Suggestion], *, as_json: bool) -> None:
    if as_json:
        console.print(json.dumps([s.to_json() for s in found], indent=2), markup=False,
                      highlight=False, soft_wrap=True)
        return
    if not found:
        console.print("no likely pairs: no statistic stopped where another started")
        return
    for s in found:
        stop = datetime.fromtimestamp(s.old_last, UTC)
        begin = datetime.fromtimestamp(s.new_first, UTC)
        console.print(f"{s.old} (last hour {stop:%Y-%m-%d %H:%M}Z) → {s.new} (first hour "
                      f"{begin:%Y-%m-%d %H:%M}Z), {s.unit_class}: {s.why}", markup=False)
        console.print(f"  backdate migrate TARGET --from {s.old} --into {s.new} --dry-run",
                      markup=False)
