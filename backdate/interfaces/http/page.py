"""The server-rendered page at `/` (escaped HTML, no script): mirrored homes and their health,
devices with entity counts and a search, one device's entities with their states, recent gaps;
ingest totals, streams and gaps when ingest is on."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import urlencode

_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
          "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
          ".open{color:#b00}.lost{color:#777}.resolved{color:#070}.down{color:#b00}"
          ".up{color:#070}form{margin:0.5em 0 1em}")


def _table(rows: list[dict[str, Any]], columns: list[str], empty: str) -> str:
    if not rows:
        return f"<p>{escape(empty)}</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = []
    for row in rows:
        cls = f' class="{escape(str(row.get("status")))}"' if "status" in row else ""
        cells = "".join(f"<td>{escape('' if row.get(c) is None else str(row.get(c)))}</td>"
                        for c in columns)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _cell(value: Any) -> str:
    return escape("" if value is None else str(value))


def _mirror(m: dict[str, Any]) -> list[str]:
    out = ["<h2>Homes</h2>"]
    homes = m["homes"]
    if not homes:
        out.append("<p>No homes configured ([[serve.homes]]).</p>")
    else:
        rows = []
        for h in homes:
            cls = "up" if h["connected"] else "down"
            counts = h.get("counts") or {}
            rows.append(
                f"<tr class='{cls}' id='home-{escape(h['name'])}'><td>{_cell(h['name'])}</td>"
                f"<td>{'connected' if h['connected'] else _cell(h['state'])}</td>"
                f"<td>{_cell(h['ha_version'])}</td><td>{_cell(h['last_snapshot'])}</td>"
                f"<td>{_cell(h['last_event'])}</td><td>{_cell(h['backlog'])}</td>"
                f"<td>{_cell(h['open_gaps'])}</td><td>{_cell(counts.get('devices', 0))}</td>"
                f"<td>{_cell(counts.get('entities', 0))}</td><td>{_cell(h.get('error'))}</td>"
                "</tr>")
        head = "".join(f"<th>{c}</th>" for c in (
            "home", "status", "HA version", "last snapshot", "last event", "backlog",
            "open gaps", "devices", "entities", "last error"))
        out.append(f"<table id='homes'><tr>{head}</tr>{''.join(rows)}</table>")
    out.append(f"<h2>Devices ({m['total']})</h2>")
    out.append("<form method='get' action='/'><input type='search' name='q' id='search' "
               f"placeholder='name, manufacturer, model' value='{escape(m['q'])}'> "
               "<button type='submit'>Search</button></form>")
    if not m["devices"]:
        out.append("<p>No devices.</p>")
    else:
        rows = []
        for d in m["devices"]:
            link = "/?" + urlencode({"device": d["id"], "home": d["home"], "q": m["q"]})
            name = d.get("name_by_user") or d.get("name") or d["id"]
            rows.append(
                f"<tr class='device'><td>{_cell(d['home'])}</td>"
                f"<td><a href='{escape(link)}'>{_cell(name)}</a></td>"
                f"<td>{_cell(d.get('manufacturer'))}</td><td>{_cell(d.get('model'))}</td>"
                f"<td>{_cell(m.get('area_names', {}).get(d.get('area_id'), d.get('area_id')))}</td>"
                f"<td class='count'>{_cell(d['entity_count'])}</td></tr>")
        head = "".join(f"<th>{c}</th>" for c in ("home", "device", "manufacturer", "model",
                                                  "area", "entities"))
        out.append(f"<table id='devices'><tr>{head}</tr>{''.join(rows)}</table>")
    dev = m.get("device")
    if dev is not None:
        name = dev.get("name_by_user") or dev.get("name") or dev["id"]
        out.append(f"<h2 id='device-title'>{_cell(name)}: entities</h2>")
        rows = []
        for e in dev["entities"]:
            st = e.get("state") or {}
            unit = (st.get("attributes") or {}).get("unit_of_measurement")
            value = st.get("state")
            plain = value in (None, "unknown", "unavailable")
            shown = "" if value is None else (value if plain else f"{value} {unit or ''}".strip())
            rows.append(f"<tr class='entity'><td>{_cell(e['entity_id'])}</td>"
                        f"<td>{_cell(e.get('name') or e.get('original_name'))}</td>"
                        f"<td class='state'>{escape(shown)}</td>"
                        f"<td>{_cell(e.get('disabled_by'))}</td>"
                        f"<td>{_cell(st.get('last_changed'))}</td></tr>")
        head = "".join(f"<th>{c}</th>" for c in ("entity", "name", "state", "disabled by",
                                                  "last changed"))
        out.append(f"<table id='entities'><tr>{head}</tr>{''.join(rows)}</table>"
                   if rows else "<p>No entities.</p>")
    out.append("<h2>Recent gaps of the mirror</h2>")
    out.append(_table(m["gaps"], ["home", "status", "started_at", "ended_at", "cause"],
                      "No gaps: nothing may have been missed."))
    return out


def render_page(streams: list[dict[str, Any]], gaps: list[dict[str, Any]],
                summary: dict[str, Any] | None, mirror: dict[str, Any] | None = None) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>backdate serve</title>",
             f"<style>{_STYLE}</style></head><body><h1>backdate serve</h1>"]
    if mirror is not None:
        parts.extend(_mirror(mirror))
    if summary is None and mirror is not None:
        parts.append("</body></html>")
        return "".join(parts)
    if summary is None:
        parts.append("<p>Ingest is not enabled ([serve.ingest]).</p>")
    else:
        g = summary["gaps"]
        parts.append(f"<p>{summary['streams']} streams, {summary['events']} events; gaps: "
                     f"{g['open']} open, {g['resolved']} resolved, {g['lost']} lost.</p>")
    parts.append("<h2>Streams</h2>")
    parts.append(_table(streams, ["device_id", "source_vendor", "epoch", "first_sequence",
                                  "high_water_mark", "events", "counter_resets", "open_gaps",
                                  "last_seen"], "No streams yet."))
    parts.append("<h2>Gaps</h2>")
    parts.append(_table(gaps, ["device_id", "source_vendor", "epoch", "first_seq", "last_seq",
                               "missing", "status", "reason", "detected_at", "resolved_at"],
                        "No gaps."))
    parts.append("</body></html>")
    return "".join(parts)
