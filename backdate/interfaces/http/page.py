"""The minimal server-rendered page at `/`: ingest totals, streams and gaps (escaped HTML)."""

from __future__ import annotations

from html import escape
from typing import Any

_STYLE = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse;"
          "margin-bottom:1.5em}td,th{border:1px solid #ccc;padding:2px 8px;text-align:left}"
          ".open{color:#b00}.lost{color:#777}.resolved{color:#070}")


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


def render_page(streams: list[dict[str, Any]], gaps: list[dict[str, Any]],
                summary: dict[str, Any] | None) -> str:
    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>backdate serve</title>",
             f"<style>{_STYLE}</style></head><body><h1>backdate serve</h1>"]
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
