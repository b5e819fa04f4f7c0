"""The `--json` documents of plan, import, sync --once and restore: plain dicts with a stable,
documented shape (README, "Output for scripts"), built from the application's own results and
never from what the terminal shows, so scripts and the HTTP API read the same thing.

Times are UTC ISO strings ending in `Z`; a local day is `YYYY-MM-DD` in `time_zone`. Energy is
in the statistic's unit. Keys are only ever added, never renamed (`format` is bumped if that
ever has to change).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

if TYPE_CHECKING:
    from backdate.app.importing import StatisticImport
    from backdate.app.sync import JobOutcome
    from backdate.models import TablePlan

FORMAT = 1


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _table(tp: TablePlan) -> dict[str, Any]:
    return {
        "rows": tp.count,
        "new": tp.inserted,
        "updated": tp.updated,
        "unchanged": tp.unchanged,
        "shifted": tp.shifted,
        "shift": tp.shift if tp.shifted else 0.0,
        "shift_from": iso(tp.shift_from) if tp.shifted else None,
    }


def _statistic(item: StatisticImport, zone: ZoneInfo) -> dict[str, Any]:
    from backdate.app.report import day_table, seams

    plan, meta = item.plan, item.plan.meta
    has_days = meta.has_sum and plan.hourly.count
    return {
        "statistic_id": meta.statistic_id,
        "exists": plan.metadata_exists,
        "source": meta.source,
        "name": meta.name,
        "unit": meta.unit_of_measurement,
        "type": "sum" if meta.has_sum else "mean",
        "input": {"source": item.series.source, "readings": len(item.series),
                  "kind": item.prepared.kind.value, "unit": item.input_unit},
        "hourly": _table(plan.hourly),
        "short_term": _table(plan.short_term),
        "notes": list(plan.notes),
        "days": [
            {"day": line.day.isoformat(), "now": line.energy_now, "after": line.energy_after,
             "new": line.new, "updated": line.updated, "shifted": line.shifted}
            for line in (day_table(item, zone) if has_days else [])
        ],
        "seams": [
            {"table": "hourly" if seam.table == "statistics" else "short_term",
             "edge": seam.edge, "start": iso(seam.start_ts),
             "change_before": seam.change_before, "change_after": seam.change_after,
             "expected": seam.expected, "closed": seam.closed}
            for seam in (seams(item) if plan.hourly.count else [])
        ],
    }


def plan_document(imports: list[StatisticImport], zone: ZoneInfo, target: str,
                  *, zone_from: str) -> dict[str, Any]:
    """What `plan --json` prints: every statistic's planned rows, days and seams."""
    return {
        "format": FORMAT,
        "command": "plan",
        "target": target,
        "time_zone": zone.key,
        "time_zone_from": zone_from,
        "nothing_to_write": all(item.plan.is_empty for item in imports),
        "statistics": [_statistic(item, zone) for item in imports],
    }


def import_document(imports: list[StatisticImport], zone: ZoneInfo, target: str,
                    *, zone_from: str, backup: str | None,
                    written: list[str]) -> dict[str, Any]:
    """What `import --json` prints: the plan, the backup, and what was written and verified."""
    doc = plan_document(imports, zone, target, zone_from=zone_from)
    doc["command"] = "import"
    doc["backup"] = backup
    doc["written"] = list(written)  # statistic ids written and read back as planned
    return doc


def sync_document(outcomes: list[JobOutcome]) -> dict[str, Any]:
    """What `sync --once --json` prints: one entry per job run, per target."""
    return {
        "format": FORMAT,
        "command": "sync",
        "exit_code": max((o.exit_code for o in outcomes), default=0),
        "jobs": [
            {
                "job": o.job,
                "status": "failed" if o.failed else "ok",
                "started": iso(o.started),
                "window": None if o.window is None else [iso(o.window[0]), iso(o.window[1])],
                "read": o.read,
                "points": o.points,
                "error": o.error,
                "exit_code": o.exit_code,
                "targets": [{"target": t.url, "points": t.points, "error": t.error}
                            for t in o.targets],
            }
            for o in outcomes
        ],
    }


def restore_document(backup: str, target: str, result: object = None) -> dict[str, Any]:
    """What `restore --json` prints: what was put back where (and the restore's own summary,
    where it returns one as a dict or a dataclass)."""
    doc: dict[str, Any] = {"format": FORMAT, "command": "restore", "backup": backup,
                           "target": target, "restored": True}
    if isinstance(result, dict):
        doc["details"] = result
    elif result is not None and hasattr(result, "__dataclass_fields__"):
        from dataclasses import asdict

        doc["details"] = asdict(result)  # type: ignore[call-overload]
    return doc
