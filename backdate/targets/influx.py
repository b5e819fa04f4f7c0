"""InfluxDB as a target for meter readings, in the layout WattiVahti-sync users already have.

Why: `sync` keeps meter data in InfluxDB incrementally next to (or instead of) Home Assistant.
Each reading is one point: measurement `electricity_consumption` (or `measurement=`), tag
`metering_point`, fields `consumption_kwh` (float), `consumption_wh` (float) and `resolution`
(string: "PT15MIN" and "PT1H" as WattiVahti writes them, ISO 8601 otherwise), timestamp = the
interval start in UTC, to the second (a start with a fraction of a second is rounded to the
nearest second; readings that then share a second are merged by summing their energy, the merged
interval running to the latest end, so no energy is lost and no point overwrites another).
InfluxDB replaces a point with the same series and
timestamp, so rewriting a range is idempotent and a corrected value replaces the old one.

URLs: `influxdb://[user:pass@]host:8086/DATABASE[?rp=RP]` (1.x, `/write`) and
`influxdb2://host:8086/BUCKET?org=ORG[&token=T]` (2.x, `/api/v2/write`, Token auth; the token
from `token=`, the password or INFLUXDB_TOKEN). Options: `measurement=`, `batch=` (points per
POST, default 5000), `retries=` (attempts per POST, default 5; backoff 0.5 s doubling, with
jitter; Retry-After honoured on 429/503).
INFLUXDB_URL/INFLUXDB_ORG/INFLUXDB_BUCKET fill what the URL leaves out.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping

import numpy as np

from backdate.errors import InputError, TargetError, UsageError
from backdate.models import Kind, Series
from backdate.sources.influx import (
    Endpoint,
    InfluxHTTP,
    flux_string,
    ident,
    literal,
    parse_endpoint,
    parse_flux_csv,
    parse_rfc3339,
    rfc3339,
)

MEASUREMENT = "electricity_consumption"
TAG = "metering_point"
DEFAULT_BATCH = 5000
DEFAULT_RETRIES = 5
KNOWN_PARAMS = {"measurement", "batch", "retries", "backoff", "org", "token", "rp"}


def resolution_text(seconds: float) -> str:
    """The `resolution` field: WattiVahti's own spellings for 15 minutes and 1 hour."""
    s = int(round(seconds))
    if s == 900:
        return "PT15MIN"
    if s == 3600:
        return "PT1H"
    if s % 86400 == 0:
        return f"P{s // 86400}D"
    if s % 3600 == 0:
        return f"PT{s // 3600}H"
    if s % 60 == 0:
        return f"PT{s // 60}M"
    return f"PT{s}S"


def resolution_seconds(text: str) -> float | None:
    """Seconds of a `resolution` string (PT15MIN, PT15M, PT1H, P1D); None if unknown."""
    t = text.strip().upper()
    try:
        if t.startswith("PT"):
            body = t[2:]
            for suffix, scale in (("MIN", 60), ("H", 3600), ("M", 60), ("S", 1)):
                if body.endswith(suffix):
                    return float(body[: -len(suffix)]) * scale
        elif t.startswith("P") and t.endswith("D"):
            return float(t[1:-1]) * 86400
    except ValueError:
        return None
    return None


def to_write_precision(starts: np.ndarray, ends: np.ndarray, kwh: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Readings as they are stored: starts rounded to whole seconds (half up), sorted, those
    sharing a second merged (energy summed, the latest end kept). The sync compares these with
    what the target holds, so sub-second sources do not rewrite every point on every run."""
    starts = np.floor(np.asarray(starts, dtype=np.float64) + 0.5)
    ends = np.asarray(ends, dtype=np.float64)
    kwh = np.asarray(kwh, dtype=np.float64)
    if starts.size == 0:
        return starts, ends, kwh
    order = np.argsort(starts, kind="stable")
    starts, ends, kwh = starts[order], ends[order], kwh[order]
    unique, first = np.unique(starts, return_index=True)
    if unique.size == starts.size:
        return starts, ends, kwh
    return unique, np.maximum.reduceat(ends, first), np.add.reduceat(kwh, first)


def escape_key(text: str) -> str:
    """Line protocol: measurement names and tag keys/values escape commas, spaces and `=`
    (a backslash is taken literally there, so names with one are refused before)."""
    return text.replace(",", "\\,").replace(" ", "\\ ").replace("=", "\\=")


def escape_string_field(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def line_protocol(measurement: str, metering_point: str, starts: np.ndarray, ends: np.ndarray,
                  kwh: np.ndarray) -> list[str]:
    """One line per reading (timestamps in whole seconds); floats in full precision."""
    head = f"{escape_key(measurement)},{TAG}={escape_key(metering_point)}"
    lines = []
    for start, end, value in zip(starts.tolist(), ends.tolist(), kwh.tolist(), strict=True):
        res = escape_string_field(resolution_text(end - start))
        lines.append(f"{head} consumption_kwh={float(value)!r},"
                     f"consumption_wh={float(value) * 1000.0!r},resolution={res} "
                     f"{math.floor(start + 0.5)}")
    return lines


class InfluxReadingsTarget:
    """Writes and reads meter readings in InfluxDB 1.x or 2.x (module docstring)."""

    def __init__(self, endpoint: Endpoint):
        self.endpoint = endpoint
        self.url = endpoint.url
        self.measurement, self.batch, retries, backoff = target_options(endpoint)
        self.rp = endpoint.one("rp")
        self.http = InfluxHTTP(endpoint, retries=retries, backoff=backoff)
        self._database_checked = False

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------ write

    def write_readings(self, metering_point: str, starts: np.ndarray, ends: np.ndarray,
                       kwh: np.ndarray) -> int:
        """Write readings in time order, `batch` points per POST; returns points written.

        Idempotent: a point with the same metering point and start replaces the old one. In
        time order, so after a failure `latest()` is a safe place to resume from.
        """
        starts = np.asarray(starts, dtype=np.float64)
        ends = np.asarray(ends, dtype=np.float64)
        kwh = np.asarray(kwh, dtype=np.float64)
        if not (starts.shape == ends.shape == kwh.shape):
            raise InputError(f"{self.url}: starts, ends and kwh differ in length")
        if not metering_point or any(c in metering_point for c in "\\\n\r"):
            raise InputError(f"{self.url}: metering point {metering_point!r} is empty or holds "
                             "a backslash or line break, which InfluxDB's line protocol cannot "
                             "carry")
        bad = ~(np.isfinite(starts) & np.isfinite(ends) & np.isfinite(kwh)) | (ends <= starts)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise InputError(f"{self.url}: reading {i + 1} of {metering_point} is not a finite "
                             f"amount over a positive interval ({starts[i]}, {ends[i]}, {kwh[i]})")
        if len(starts) == 0:
            return 0
        starts, ends, kwh = to_write_precision(starts, ends, kwh)
        lines = line_protocol(self.measurement, metering_point, starts, ends, kwh)
        self._ensure_database()
        for i in range(0, len(lines), self.batch):
            self._post("\n".join(lines[i:i + self.batch]).encode())
        return len(lines)

    def _post(self, body: bytes) -> None:
        if self.endpoint.version == 1:
            params = {"db": self.endpoint.database, "precision": "s"}
            if self.rp:
                params["rp"] = self.rp
            self.http.request("POST", "/write", params=params, content=body)
        else:
            self.http.request("POST", "/api/v2/write",
                              params={"org": self.endpoint.org or "",
                                      "bucket": self.endpoint.database, "precision": "s"},
                              headers={"Content-Type": "text/plain; charset=utf-8"},
                              content=body)

    def _ensure_database(self) -> None:
        """1.x: create the database when it is missing (CREATE DATABASE is idempotent). 2.x
        buckets are made by their owner; a missing one is the server's 404."""
        if self._database_checked or self.endpoint.version != 1:
            return
        if self.endpoint.database not in self._databases():
            self._influxql(f"CREATE DATABASE {ident(self.endpoint.database)}", post=True)
        self._database_checked = True

    def _databases(self) -> list[str]:
        series = self._influxql("SHOW DATABASES")
        return [row[0] for s in series for row in s.get("values") or []]

    # ------------------------------------------------------------------------------- read

    def latest(self, metering_point: str) -> float | None:
        """UTC epoch start of the newest point held for the metering point, not after now
        (None: none). A point in the future (a clock gone wrong) must not hold the cursor."""
        if self.endpoint.version == 1:
            if self.endpoint.database not in self._databases():
                return None
            q = (f"SELECT last(consumption_kwh) FROM {self._from()} "
                 f"WHERE {ident(TAG)} = {literal(metering_point)} AND time <= now()")
            series = self._influxql(q)
            rows = series[0]["values"] if series else []
            return float(rows[0][0]) if rows else None
        rows = list(self._flux(
            self._flux_base(metering_point, None, None)
            + '  |> filter(fn: (r) => r._field == "consumption_kwh")\n'
            + "  |> last()\n"))  # one row per series (table): the newest of them wins
        times = [parse_rfc3339(r["_time"], self.url) for r in rows if r.get("_time")]
        return max(times) if times else None

    def read_readings(self, metering_point: str, start: float | None,
                      end: float | None) -> Series:
        """The readings held in [start, end), as DELTA kWh with `ends` from `resolution`."""
        if self.endpoint.version == 1:
            if self.endpoint.database not in self._databases():
                return self._series(metering_point, [], [], [])
            terms = [f"{ident(TAG)} = {literal(metering_point)}"]
            if start is not None:
                terms.append(f"time >= {round(start * 1e9)}")
            if end is not None:
                terms.append(f"time < {round(end * 1e9)}")
            q = (f"SELECT consumption_kwh, resolution FROM {self._from()} "
                 f"WHERE {' AND '.join(terms)}")
            series = self._influxql(q)
            rows = series[0]["values"] if series else []
            return self._series(metering_point, [r[0] for r in rows], [r[1] for r in rows],
                                [r[2] for r in rows])
        flux = (self._flux_base(metering_point, start, end)
                + '  |> filter(fn: (r) => r._field == "consumption_kwh" or '
                  'r._field == "resolution")\n'
                + '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], '
                  'valueColumn: "_value")\n'
                + '  |> group()\n  |> sort(columns: ["_time"])\n')
        rows = [r for r in self._flux(flux) if r.get("consumption_kwh", "") != ""]
        return self._series(metering_point, [parse_rfc3339(r["_time"], self.url) for r in rows],
                            [float(r["consumption_kwh"]) for r in rows],
                            [r.get("resolution", "") for r in rows])

    def _series(self, metering_point: str, times: list, kwh: list, res: list) -> Series:
        t = np.array(times, dtype=np.float64)
        durations = np.array([resolution_seconds(r or "") or math.nan for r in res],
                             dtype=np.float64)
        return Series(source=f"{self.url} ({TAG}={metering_point})", times=t,
                      values=np.array([math.nan if v is None else v for v in kwh],
                                      dtype=np.float64),
                      lines=np.arange(1, len(t) + 1, dtype=np.int64), ends=t + durations,
                      kind=Kind.DELTA, unit="kWh", name=metering_point)

    # ------------------------------------------------------------------------------ query

    def _from(self) -> str:
        m = ident(self.measurement)
        return f"{ident(self.rp)}.{m}" if self.rp else m

    def _influxql(self, q: str, *, post: bool = False) -> list[dict]:
        params = {"db": self.endpoint.database, "q": q, "epoch": "s"}
        resp = (self.http.request("POST", "/query", data=params) if post
                else self.http.request("GET", "/query", params=params))
        body = resp.json()
        results = body.get("results") or [{}]
        if "error" in body or "error" in results[0]:
            message = body.get("error") or results[0]["error"]
            raise TargetError(f"InfluxDB at {self.url}: HTTP {resp.status_code}: {message}")
        return list(results[0].get("series") or [])

    def _flux_base(self, metering_point: str, start: float | None, end: float | None) -> str:
        start_text = rfc3339(start) if start is not None else "0"
        stop_text = f", stop: {rfc3339(end)}" if end is not None else ""
        return (f"from(bucket: {flux_string(self.endpoint.database)})\n"
                f"  |> range(start: {start_text}{stop_text})\n"
                f"  |> filter(fn: (r) => r._measurement == {flux_string(self.measurement)} "
                f"and r.{TAG} == {flux_string(metering_point)})\n")

    def _flux(self, flux: str) -> Iterator[dict[str, str]]:
        body = {"query": flux, "type": "flux",
                "dialect": {"header": True, "annotations": [], "delimiter": ","}}
        resp = self.http.request("POST", "/api/v2/query", params={"org": self.endpoint.org},
                                 headers={"Accept": "application/csv",
                                          "Content-Type": "application/json"},
                                 content=json.dumps(body).encode())
        return parse_flux_csv(resp.text, self.url)


def target_options(endpoint: Endpoint) -> tuple[str, int, int, float]:
    """measurement, batch, retries and backoff of a target URL, checked (also at config load,
    before anything is contacted)."""
    unknown = sorted(set(endpoint.params) - KNOWN_PARAMS)
    if unknown:
        raise UsageError(f"{endpoint.url}: unknown parameter(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(KNOWN_PARAMS))})")
    measurement = endpoint.one("measurement") or MEASUREMENT
    if any(c in measurement for c in "\\\n\r"):
        raise UsageError(f"{endpoint.url}: measurement= holds a backslash or line break")
    try:
        batch = int(endpoint.one("batch") or DEFAULT_BATCH)
        retries = int(endpoint.one("retries") or DEFAULT_RETRIES)
        backoff = float(endpoint.one("backoff") or 0.5)
    except ValueError:
        raise UsageError(f"{endpoint.url}: batch=, retries= and backoff= take numbers") from None
    if batch < 1 or retries < 1 or not backoff >= 0 or not math.isfinite(backoff):
        raise UsageError(f"{endpoint.url}: batch= and retries= must be at least 1, backoff= a "
                         "finite number of seconds")
    return measurement, batch, retries, backoff


def check_target_url(url: str, env: Mapping[str, str] | None = None) -> None:
    """Parse an InfluxDB target URL completely without contacting the server."""
    target_options(parse_endpoint(url, env))


def open_influx_target(url: str) -> InfluxReadingsTarget:
    """An InfluxDB readings target for an influxdb:// or influxdb2:// URL."""
    return InfluxReadingsTarget(parse_endpoint(url))
