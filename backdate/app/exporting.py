"""`backdate export`: statistics out again, in forms that `backdate import` reads losslessly.

The canonical forms carry each hour's change (`delta` over `[start, end)`), which is what the
Energy dashboard shows and what an import rebuilds `sum` from; klausj1's form carries
`state`/`sum` as HA stores them. Every form carries the statistic's unit (a `unit` column, or
the JSON document's `unit`) and its kind (the `delta` or `mean`/`min`/`max` columns, `kind`).
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from backdate.errors import InputError, UsageError
from backdate.models import FIVE_MINUTES, HOUR, StatRow, Table


def parse_bound(text: str | None, tz: ZoneInfo) -> float | None:
    """--start/--end: an ISO time or date; naive ones are in `tz`."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"not an ISO time or date: {text!r}") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.timestamp()


def _iso(ts: float, tz: ZoneInfo | None) -> str:
    if tz is None:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return datetime.fromtimestamp(ts, tz).isoformat()


def _unknown(target: object, statistic_id: str) -> str:
    """Not there: name the closest ids (a database lists them cheaply; over HA's API listing
    means reading every statistic's rows, so it is left out there)."""
    from backdate.services.inspecting import suggestions

    info = target.info()  # type: ignore[attr-defined]
    text = f"{statistic_id} is not in {info.url}"
    if info.kind != "websocket":
        known = [s.meta.statistic_id for s in target.list_statistics()]  # type: ignore[attr-defined]
        close = suggestions(statistic_id, known)
        if close:
            text += "; did you mean " + " or ".join(close) + "?"
    return text


def export_statistic(url: str, statistic_id: str, *, start: str | None, end: str | None,
                     fmt: str, tz: str | None, short_term: bool = False) -> str:
    """Read one statistic's rows from the target and render them."""
    from backdate.app.targets import open_target

    if fmt == "klausj1" and not tz:
        raise UsageError("--format klausj1 writes local times without an offset: give --tz "
                         "(Home Assistant's time zone, e.g. Europe/Vienna)")
    try:
        zone = ZoneInfo(tz) if tz else None
    except (ValueError, KeyError, OSError):
        raise UsageError(f"unknown time zone {tz!r}") from None
    target = open_target(url)
    try:
        meta = target.get_metadata(statistic_id)
        if meta is None:
            raise InputError(_unknown(target, statistic_id))
        table = Table.SHORT_TERM if short_term else Table.HOURLY
        lo = parse_bound(start, zone or ZoneInfo("UTC"))
        hi = parse_bound(end, zone or ZoneInfo("UTC"))
        rows = target.read_rows(table, statistic_id, lo, hi)
        previous = None
        if rows and meta.has_sum and lo is not None:
            nb = target.neighbourhood(table, statistic_id, rows[0].start_ts, rows[0].start_ts + 1)
            previous = nb.before
    finally:
        target.close()
    period = FIVE_MINUTES if short_term else HOUR
    unit = meta.unit_of_measurement or ""
    if fmt == "klausj1":
        return _klausj1(statistic_id, unit, rows, meta.has_sum, zone)
    records = _canonical(rows, meta.has_sum, previous, period, zone)
    if fmt == "json":
        doc = {"statistic_id": statistic_id, "unit": unit or None,
               "kind": "delta" if meta.has_sum else "mean", "readings": records}
        return json.dumps(doc, indent=1) + "\n"
    out = io.StringIO()
    fields = ["start", "end", "delta"] if meta.has_sum else ["start", "end", "mean", "min", "max"]
    if unit:  # the unit travels with every row, so a re-import never has to guess it
        fields.append("unit")
        for item in records:
            item["unit"] = unit
    writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    return out.getvalue()


def _canonical(rows: list[StatRow], has_sum: bool, previous: StatRow | None, period: int,
               zone: ZoneInfo | None) -> list[dict]:
    records: list[dict] = []
    prev_sum = previous.sum if previous is not None and previous.sum is not None else 0.0
    for row in rows:
        item = {"start": _iso(row.start_ts, zone), "end": _iso(row.start_ts + period, zone)}
        if has_sum:
            if row.sum is None:
                continue
            item["delta"] = row.sum - prev_sum
            prev_sum = row.sum
        else:
            if row.mean is None:
                continue
            item.update(mean=row.mean, min=row.min, max=row.max)
        records.append(item)
    return records


def _klausj1(statistic_id: str, unit: str, rows: list[StatRow], has_sum: bool,
             zone: ZoneInfo | None) -> str:
    """klausj1/homeassistant-statistics' TSV: local `%d.%m.%Y %H:%M` times, state/sum or mean."""
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    zone = zone or ZoneInfo("UTC")
    if has_sum:
        writer.writerow(["statistic_id", "unit", "start", "state", "sum"])
    else:
        writer.writerow(["statistic_id", "unit", "start", "min", "max", "mean"])
    for row in rows:
        start = datetime.fromtimestamp(row.start_ts, zone).strftime("%d.%m.%Y %H:%M")
        if has_sum:
            state = row.state if row.state is not None else row.sum
            writer.writerow([statistic_id, unit, start, repr(state), repr(row.sum)])
        else:
            writer.writerow([statistic_id, unit, start, repr(row.min), repr(row.max),
                             repr(row.mean)])
    return out.getvalue()
