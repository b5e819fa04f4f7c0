"""InfluxDB as a reading source: 1.x through InfluxQL, 2.x through Flux, both over HTTP.

Why this shape: many users keep years of Powerwall-Dashboard or logger history in InfluxDB.
Power (watts every few seconds) becomes hourly energy with InfluxDB's own `integral()` per
hour, the number their Grafana panels show, so `plan`/`import` take it like a file of hourly
deltas. Years of samples never travel: only hourly results do, read in chunks of `chunk_days`.

URL forms (README "InfluxDB"):

    influxdb://[user:pass@]host:8086/DATABASE?measurement=M&field=F[,F2...]
        [&where=TAG%3DVALUE]... [&kind=power|delta|cumulative] [&unit=W]
        [&statistic_id=backdate:x] [&name=House] [&rp=autogen]
        [&integral=influx|backdate] [&interval=15m] [&chunk_days=30]
    influxdb2://host:8086/BUCKET?org=ORG[&token=T]&measurement=M&field=F...   (2.x, Flux)

`influxdbs://` and `influxdb2s://` use TLS. The 2.x token comes from `token=`, the URL's
password or INFLUXDB_TOKEN; org and bucket default to INFLUXDB_ORG/INFLUXDB_BUCKET and the host
to INFLUXDB_URL. Secrets never appear in `url`, errors or logs.

Power hours: a window of whole hours [H, H+1h) gets InfluxQL's `integral(F, 1h) ... GROUP BY
time(1h)` of one query over the whole database (each chunk reaches to the sample just before it
and just after it, so chunk edges change nothing): linear between consecutive samples, split at
hour boundaries by linear interpolation; across a gap, the part up to the end of the last
sample's hour stays in that hour and the rest of the straight line lands in the hour of the
first sample after the gap; hours without a sample have no reading. On 1.x InfluxDB computes
it; 2.x (Flux) has no integral with these rules (`aggregateWindow(fn: integral)` neither
interpolates at hour edges nor bridges gaps), so for 2.x the raw samples are read and
`influxql_hour_integrals` applies exactly the rules above on the client (a test proves it equal
to a real 1.x server's integral). `integral=backdate` instead hands the raw samples to
backdate's engine, which adds nothing across gaps longer than an hour.
"""

from __future__ import annotations

import csv
import email.utils
import io
import json
import logging
import math
import os
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import numpy as np

from backdate.domain.urls import mask_url
from backdate.engine import units
from backdate.engine.prepare import slugify
from backdate.errors import InputError, TargetError, UsageError
from backdate.models import HOUR, Kind, Series
from backdate.sources.base import SourceRange

log = logging.getLogger(__name__)

DEFAULT_CHUNK_DAYS = 30.0
RETRY_STATUS = {429, 500, 502, 503, 504}
RETRY_AFTER_STATUS = {429, 503}
MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is capped (the next round retries)
EDGE_TIMEOUT = 30.0  # read timeout of the small first()/last() queries

# ---------------------------------------------------------------------------------- endpoint


@dataclass(slots=True)
class Endpoint:
    """Where an InfluxDB is and how to authenticate; `url` is safe to show."""

    version: int  # 1 or 2
    base: str  # http(s)://host:port
    database: str  # 1.x database, or 2.x bucket
    params: dict[str, list[str]]
    username: str | None = None
    password: str | None = None
    token: str | None = None
    org: str | None = None
    url: str = ""

    def one(self, name: str, default: str | None = None) -> str | None:
        values = self.params.get(name)
        return values[-1] if values else default


def parse_endpoint(spec: str, env: Mapping[str, str] | None = None) -> Endpoint:
    """Parse influxdb[s]:// and influxdb2[s]:// URLs (sources and targets alike); `env`
    (default os.environ) fills INFLUXDB_URL/TOKEN/ORG/BUCKET."""
    env = os.environ if env is None else env
    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if scheme not in ("influxdb", "influxdbs", "influxdb2", "influxdb2s"):
        raise UsageError(f"not an InfluxDB URL: {mask_url(spec)}")
    version = 2 if scheme.startswith("influxdb2") else 1
    tls = scheme.endswith("s")
    params = parse_qs(parts.query, keep_blank_values=True)
    host = parts.hostname
    try:
        port = parts.port
    except ValueError:
        raise UsageError(f"{mask_url(spec)}: the port is not a number from 0 to 65535") from None
    if not host:
        env_url = env.get("INFLUXDB_URL")
        if not env_url:
            raise UsageError(f"{mask_url(spec)}: no host (give one, or set INFLUXDB_URL)")
        given = urlsplit(env_url)
        host, port, tls = given.hostname, given.port, given.scheme == "https"
    base = f"{'https' if tls else 'http'}://{host}:{port or 8086}"
    database = unquote(parts.path.lstrip("/"))
    token = (params.get("token") or [None])[-1]
    username = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    org = (params.get("org") or [None])[-1]
    if version == 2:
        token = token or password or env.get("INFLUXDB_TOKEN")
        org = org or env.get("INFLUXDB_ORG")
        database = database or env.get("INFLUXDB_BUCKET", "")
        if not org:
            raise UsageError(f"{mask_url(spec)}: InfluxDB 2.x needs org= (or INFLUXDB_ORG)")
    if not database:
        what = "bucket (or INFLUXDB_BUCKET)" if version == 2 else "database"
        raise UsageError(f"{mask_url(spec)}: no {what} in the URL path")
    shown = mask_url(spec) if parts.hostname else f"{mask_url(spec)} ({base}/{database})"
    return Endpoint(version, base, database, params, username, password, token, org,
                    url=shown)


class InfluxHTTP:
    """HTTP to one InfluxDB: error JSON becomes TargetError with the status; retries 429, 5xx
    and connection errors with jittered exponential backoff (full jitter, so many homes
    restarting at once do not retry in step), honouring Retry-After on 429/503; reads and
    idempotent writes alike."""

    def __init__(self, endpoint: Endpoint, *, retries: int = 3, backoff: float = 0.5,
                 timeout: float = 300.0, rng: random.Random | None = None):
        self.endpoint = endpoint
        self.retries = max(1, retries)
        self.backoff = backoff
        self.rng = rng or random.Random()
        self.sleep = time.sleep  # replaceable, so a test can record the waits
        headers = {"Accept-Encoding": "gzip"}
        auth = None
        if endpoint.version == 2:
            if endpoint.token:
                headers["Authorization"] = f"Token {endpoint.token}"
        elif endpoint.username is not None:
            auth = httpx.BasicAuth(endpoint.username, endpoint.password or "")
        self.http = httpx.Client(base_url=endpoint.base, headers=headers, auth=auth,
                                 timeout=httpx.Timeout(timeout, connect=10.0))

    def close(self) -> None:
        self.http.close()

    def request(self, method: str, path: str, **kw: object) -> httpx.Response:
        """One request, retried on connection errors and 5xx; raises TargetError on failure."""
        where = self.endpoint.url
        for attempt in range(1, self.retries + 1):
            wait = self.backoff * 2 ** (attempt - 1) * self.rng.uniform(0.5, 1.5)
            try:
                resp = self.http.request(method, path, **kw)  # type: ignore[arg-type]
            except httpx.HTTPError as err:
                problem = f"cannot reach InfluxDB at {where}: {type(err).__name__}: {err}"
                if attempt == self.retries:
                    raise TargetError(problem) from None
                log.warning("%s (attempt %d of %d)", problem, attempt, self.retries)
            else:
                if resp.status_code < 400:
                    return resp
                if resp.status_code not in RETRY_STATUS or attempt == self.retries:
                    raise TargetError(
                        f"InfluxDB at {where}: HTTP {resp.status_code}: {error_message(resp)}")
                after = retry_after(resp) if resp.status_code in RETRY_AFTER_STATUS else None
                if after is not None:
                    wait = after
                log.warning("InfluxDB at %s: HTTP %d (attempt %d of %d, next in %.1f s)", where,
                            resp.status_code, attempt, self.retries, wait)
            self.sleep(wait)
        raise AssertionError("unreachable")


def retry_after(resp: httpx.Response) -> float | None:
    """Seconds the server asks to wait (Retry-After: seconds or an HTTP date), capped."""
    text = resp.headers.get("retry-after", "").strip()
    if not text:
        return None
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds):
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


def error_message(resp: httpx.Response) -> str:
    """The message of InfluxDB's error JSON (1.x `error`, 2.x `message`), else the text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:500] or resp.reason_phrase
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:500]
    return str(body)[:500]


# ------------------------------------------------------------------------------- query text


def ident(name: str) -> str:
    """An InfluxQL identifier, double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """An InfluxQL string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def flux_string(value: str) -> str:
    """A Flux string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def rfc3339(t: float) -> str:
    """UTC time for Flux, to the microsecond (what a float of epoch seconds holds)."""
    whole, micros = divmod(round(t * 1e6), 1_000_000)
    stamp = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{micros:06d}Z" if micros else f"{stamp}Z"


def ns(t: float) -> str:
    """An InfluxQL time bound in nanoseconds since the epoch."""
    return str(round(t * 1e9))


@dataclass(frozen=True, slots=True)
class TagFilter:
    tag: str
    op: str  # "=" or "!="
    value: str

    def influxql(self) -> str:
        return f"{ident(self.tag)} {'<>' if self.op == '!=' else '='} {literal(self.value)}"

    def flux(self) -> str:
        return f"r[{flux_string(self.tag)}] {'!=' if self.op == '!=' else '=='} " \
               f"{flux_string(self.value)}"


def parse_where(text: str, spec_url: str) -> TagFilter:
    for op in ("!=", "="):
        if op in text:
            tag, value = text.split(op, 1)
            if tag.strip():
                return TagFilter(tag.strip(), op, value)
    raise UsageError(f"{spec_url}: where={text!r} is not TAG=VALUE or TAG!=VALUE")


# ------------------------------------------------------------------------------- the source


@dataclass(slots=True)
class SourceSpec:
    """What to read: the URL's query parameters, checked."""

    measurement: str
    fields: list[str]
    kind: Kind
    unit: str
    where: list[TagFilter] = field(default_factory=list)
    statistic_id: str | None = None
    name: str | None = None
    rp: str | None = None
    server_integral: bool = True
    interval: float | None = None  # delta: seconds each reading covers
    chunk: float = DEFAULT_CHUNK_DAYS * 86400

    def series_name(self, fld: str) -> str:
        """The name of the series read from `fld` (the sync derives statistic ids and
        metering points from it, so it must not depend on what data came back)."""
        if self.name:
            return f"{self.name} {fld}" if len(self.fields) > 1 else self.name
        return f"{self.measurement} {fld}"


KNOWN_PARAMS = {"measurement", "field", "where", "kind", "unit", "statistic_id", "name", "rp",
                "integral", "interval", "chunk_days", "org", "token", "retries"}


def parse_duration(text: str, spec_url: str) -> float:
    """`15m`, `1h`, `30s`, `1d` or ISO `PT15M` in seconds."""
    t = text.strip().upper().removeprefix("PT").removeprefix("P")
    scale = {"S": 1, "M": 60, "MIN": 60, "H": 3600, "D": 86400}
    for suffix in ("MIN", "S", "M", "H", "D"):
        if t.endswith(suffix):
            try:
                value = float(t[: -len(suffix)]) * scale[suffix]
            except ValueError:
                break
            if value > 0:
                return value
            break
    raise UsageError(f"{spec_url}: {text!r} is not a duration (15m, 1h, PT15M)")


def parse_source_spec(ep: Endpoint) -> SourceSpec:
    unknown = sorted(set(ep.params) - KNOWN_PARAMS)
    if unknown:
        raise UsageError(f"{ep.url}: unknown parameter(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(KNOWN_PARAMS))})")
    measurement = ep.one("measurement")
    fields_text = ep.one("field")
    if not measurement or not fields_text:
        raise UsageError(f"{ep.url}: the URL needs measurement= and field=")
    fields = [f.strip() for f in fields_text.split(",") if f.strip()]
    kind_text = (ep.one("kind") or "power").lower()
    try:
        kind = Kind(kind_text)
    except ValueError:
        kind = None
    if kind not in (Kind.POWER, Kind.DELTA, Kind.CUMULATIVE):
        raise UsageError(f"{ep.url}: kind={kind_text!r}; use power, delta or cumulative")
    unit = units.normalize_unit(ep.one("unit")) or ("W" if kind is Kind.POWER else "kWh")
    cls = units.unit_class(unit)
    if kind is Kind.POWER and cls != "power":
        raise UsageError(f"{ep.url}: kind=power needs a power unit (W, kW), not {unit!r}")
    if kind is not Kind.POWER and cls not in ("energy", "volume"):
        raise UsageError(f"{ep.url}: kind={kind.value} needs an energy or volume unit "
                         f"(Wh, kWh, m³), not {unit!r}")
    statistic_id = ep.one("statistic_id")
    if statistic_id and len(fields) > 1:
        raise UsageError(f"{ep.url}: statistic_id= names one statistic, but field= names "
                         f"{len(fields)}; read one field per URL")
    integral = (ep.one("integral") or "influx").lower()
    if integral not in ("influx", "backdate"):
        raise UsageError(f"{ep.url}: integral={integral!r}; use influx or backdate")
    interval = ep.one("interval")
    chunk_days = ep.one("chunk_days")
    try:
        chunk = float(chunk_days) * 86400 if chunk_days else DEFAULT_CHUNK_DAYS * 86400
    except ValueError:
        raise UsageError(f"{ep.url}: chunk_days={chunk_days!r} is not a number") from None
    if chunk < HOUR:
        raise UsageError(f"{ep.url}: chunk_days must cover at least an hour")
    return SourceSpec(
        measurement=measurement, fields=fields, kind=kind, unit=unit,
        where=[parse_where(w, ep.url) for w in ep.params.get("where", [])],
        statistic_id=statistic_id, name=ep.one("name"), rp=ep.one("rp"),
        server_integral=integral == "influx",
        interval=parse_duration(interval, ep.url) if interval else None,
        chunk=chunk - chunk % HOUR,
    )


def open_influx_source(spec: str) -> InfluxSource:
    """A ReadingSource for an influxdb:// or influxdb2:// URL (module docstring)."""
    endpoint = parse_endpoint(spec)
    return InfluxSource(endpoint, parse_source_spec(endpoint), retries=source_retries(endpoint))


def source_retries(endpoint: Endpoint) -> int:
    """`retries=` (attempts per request, default 3): a whole number of at least 1."""
    text = endpoint.one("retries")
    if text is None:
        return 3
    if not text.strip().isdigit() or int(text) < 1:
        raise UsageError(f"{endpoint.url}: retries={text!r}; give a whole number of at least 1")
    return int(text)


def check_source_spec(spec: str, env: Mapping[str, str] | None = None) -> SourceSpec:
    """Parse a source URL completely without contacting the server (config load)."""
    endpoint = parse_endpoint(spec, env)
    parsed = parse_source_spec(endpoint)
    source_retries(endpoint)
    return parsed


@dataclass(slots=True)
class Columns:
    """Readings collected chunk by chunk."""

    times: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)

    def add(self, times: np.ndarray, values: np.ndarray) -> None:
        if len(times):
            self.times.append(times)
            self.values.append(values)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if not self.times:
            return np.empty(0), np.empty(0)
        times = np.concatenate(self.times)
        values = np.concatenate(self.values)
        order = np.argsort(times, kind="stable")
        return times[order], values[order]


class InfluxSource:
    """Reads one measurement's fields from InfluxDB 1.x or 2.x (see the module docstring)."""

    def __init__(self, endpoint: Endpoint, spec: SourceSpec, *, retries: int = 3,
                 now: float | None = None):
        self.endpoint = endpoint
        self.spec = spec
        self.url = endpoint.url
        self.http = InfluxHTTP(endpoint, retries=retries)
        self._now = now
        self._checked = False
        # Filled by read(): seconds spent waiting for InfluxDB and parsing its answers.
        self.timing = {"query": 0.0, "parse": 0.0}

    def close(self) -> None:
        self.http.close()

    # ------------------------------------------------------------------------------ read

    def read(self, window: SourceRange) -> list[Series]:
        if not self._checked:
            self._check_names()
            self._checked = True
        out = []
        for fld in self.spec.fields:
            if self.spec.kind is Kind.POWER and self.spec.server_integral:
                times, values = self._read_power_hours(fld, window)
                out.append(self._series(fld, times, values, Kind.DELTA,
                                        energy_unit(self.spec.unit), times + HOUR))
            else:
                times, values = self._read_raw(fld, window)
                ends = times + self.spec.interval if (
                    self.spec.kind is Kind.DELTA and self.spec.interval) else None
                out.append(self._series(fld, times, values, self.spec.kind, self.spec.unit,
                                        ends))
        return out

    def _series(self, fld: str, times: np.ndarray, values: np.ndarray, kind: Kind, unit: str,
                ends: np.ndarray | None) -> Series:
        spec = self.spec
        several = len(spec.fields) > 1
        statistic_id = spec.statistic_id or f"backdate:{slugify(f'{spec.measurement}_{fld}')}"
        name = spec.series_name(fld)
        source = self.url if not several else f"{self.url} (field {fld})"
        return Series(source=source, times=times.astype(np.float64),
                      values=values.astype(np.float64),
                      lines=np.arange(1, len(times) + 1, dtype=np.int64), ends=ends, kind=kind,
                      unit=unit, statistic_id=statistic_id, name=name,
                      from_power=spec.kind is Kind.POWER and kind is not Kind.POWER)

    def _now_ts(self) -> float:
        return time.time() if self._now is None else self._now

    def _read_power_hours(self, fld: str, window: SourceRange) -> tuple[np.ndarray, np.ndarray]:
        """Complete hours in the window, integrated by InfluxDB, chunk by chunk."""
        first = self._edge_point(fld, None, None, last=False)
        if first is None:
            return np.empty(0), np.empty(0)
        last = self._edge_point(fld, None, None, last=True)
        assert last is not None
        lo = math.ceil(window.start / HOUR) * HOUR if window.start is not None else (
            math.floor(first / HOUR) * HOUR)
        hi_bound = window.end if window.end is not None else math.inf
        # Only complete hours: never the hour still running, none after the last sample's.
        last_hour_end = math.floor(last / HOUR) * HOUR + HOUR
        hi = math.floor(min(hi_bound, self._now_ts(), last_hour_end) / HOUR) * HOUR
        cols = Columns()
        a = max(lo, math.floor(first / HOUR) * HOUR)
        while a < hi:
            b = min(a + self.spec.chunk, hi)
            # Reach back to the hour of the sample before the chunk and on to the hour of the
            # sample after it, so InfluxDB interpolates across both edges as it would in one
            # query over everything. Bounds on whole hours: InfluxDB starts its first window
            # at the query's start, so a bound inside an hour would change that hour.
            before = self._edge_point(fld, None, a, last=True)
            after = self._edge_point(fld, b, None, last=False)
            q_lo = math.floor(before / HOUR) * HOUR if before is not None else a
            q_hi = math.floor(after / HOUR) * HOUR + HOUR if after is not None else b
            times, values = self._integral_chunk(fld, q_lo, q_hi)
            keep = (times >= a) & (times < b)
            cols.add(times[keep], values[keep])
            a = b
        return cols.arrays()

    def _read_raw(self, fld: str, window: SourceRange) -> tuple[np.ndarray, np.ndarray]:
        first = self._edge_point(fld, window.start, window.end, last=False)
        if first is None:
            return np.empty(0), np.empty(0)
        last = self._edge_point(fld, window.start, window.end, last=True)
        assert last is not None
        cols = Columns()
        a = first
        while a <= last:
            b = a + self.spec.chunk
            times, values = self._raw_chunk(fld, a, min(b, last + 1e-3))
            cols.add(times, values)
            a = b
        return cols.arrays()

    # ------------------------------------------------------------------ version specifics

    def _check_names(self) -> None:
        if self.endpoint.version == 1:
            self._check_names_v1()
        else:
            self._check_names_v2()

    def _edge_point(self, fld: str, start: float | None, end: float | None, *,
                    last: bool) -> float | None:
        if self.endpoint.version == 1:
            return self._edge_v1(fld, start, end, last)
        return self._edge_v2(fld, start, end, last)

    def _integral_chunk(self, fld: str, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
        if self.endpoint.version == 1:
            q = (f"SELECT integral({ident(fld)}, 1h) FROM {self._from()} "
                 f"WHERE {self._where(lo, hi)} "
                 f"GROUP BY time(1h), * fill(none)")
            return self._influxql_columns(q, epoch="s")
        # Flux's integral has other rules (module docstring): raw samples, InfluxQL's rules.
        times, values = self._flux_columns(self._flux(fld, lo, hi, ""))
        t0 = time.perf_counter()
        out = influxql_hour_integrals(times, values)
        self.timing["parse"] += time.perf_counter() - t0
        return out

    def _raw_chunk(self, fld: str, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
        if self.endpoint.version == 1:
            q = (f"SELECT {ident(fld)} FROM {self._from()} WHERE {self._where(lo, hi)} "
                 f"GROUP BY *")
            return self._influxql_columns(q, epoch="ms")
        return self._flux_columns(self._flux(fld, lo, hi, ""))

    # ------------------------------------------------------------------------------ 1.x

    def _from(self) -> str:
        m = ident(self.spec.measurement)
        return f"{ident(self.spec.rp)}.{m}" if self.spec.rp else m

    def _where(self, lo: float | None, hi: float | None) -> str:
        terms = [f.influxql() for f in self.spec.where]
        if lo is not None:
            terms.append(f"time >= {ns(lo)}")
        if hi is not None:
            terms.append(f"time < {ns(hi)}")
        return " AND ".join(terms) if terms else "time > 0"

    def _influxql(self, q: str, *, epoch: str = "s",
                  timeout: httpx.Timeout | None = None) -> list[dict]:
        """The series of one InfluxQL statement (error JSON -> TargetError)."""
        params = {"db": self.endpoint.database, "q": q, "epoch": epoch}
        if self.spec.rp:
            params["rp"] = self.spec.rp
        t0 = time.perf_counter()
        resp = self.http.request("GET", "/query", params=params, timeout=timeout)
        t1 = time.perf_counter()
        body = resp.json()
        self.timing["query"] += t1 - t0
        results = body.get("results") or [{}]
        if "error" in body or "error" in results[0]:
            message = body.get("error") or results[0]["error"]
            raise TargetError(f"InfluxDB at {self.url}: HTTP {resp.status_code}: {message}")
        return list(results[0].get("series") or [])

    @property
    def _edge_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(EDGE_TIMEOUT, connect=10.0)

    def _one_series(self, series: list[dict]) -> dict | None:
        if len(series) > 1:
            tags = "; ".join(
                ", ".join(f"{k}={v}" for k, v in sorted((s.get("tags") or {}).items()))
                or "(no tags)" for s in series[:5])
            more = "; ..." if len(series) > 5 else ""
            raise InputError(f"the query matches {len(series)} series ({tags}{more}); "
                             "add where=TAG%3DVALUE to pick one", path=self.url)
        return series[0] if series else None

    def _influxql_columns(self, q: str, *, epoch: str) -> tuple[np.ndarray, np.ndarray]:
        series = self._one_series(self._influxql(q, epoch=epoch))
        t0 = time.perf_counter()
        if series is None:
            return np.empty(0), np.empty(0)
        rows = series["values"]
        times = np.fromiter((r[0] for r in rows), dtype=np.float64, count=len(rows))
        values = np.array([np.nan if r[1] is None else r[1] for r in rows], dtype=np.float64)
        if epoch == "ms":
            times /= 1000.0
        self._check_values(values)
        self.timing["parse"] += time.perf_counter() - t0
        return times, values

    def _check_values(self, values: np.ndarray) -> None:
        bad = ~np.isfinite(values)
        if bad.any():
            raise InputError("InfluxDB answered a value that is not a finite number",
                             path=self.url)

    def _edge_v1(self, fld: str, start: float | None, end: float | None,
                 last: bool) -> float | None:
        fn = "last" if last else "first"
        q = (f"SELECT {fn}({ident(fld)}) FROM {self._from()} WHERE {self._where(start, end)} "
             "GROUP BY *")
        series = self._one_series(self._influxql(q, epoch="ms", timeout=self._edge_timeout))
        if series is None or not series["values"]:
            return None
        return float(series["values"][0][0]) / 1000.0

    def _check_names_v1(self) -> None:
        names = [row[0] for s in self._influxql("SHOW DATABASES") for row in s["values"]]
        db = self.endpoint.database
        if db not in names:
            raise TargetError(f"InfluxDB at {self.url}: database {db!r} not found "
                              f"(it has: {', '.join(n for n in names if n != '_internal')})")
        m = self.spec.measurement
        measurements = [row[0] for s in self._influxql("SHOW MEASUREMENTS") for row in s["values"]]
        if m not in measurements:
            raise TargetError(f"InfluxDB at {self.url}: measurement {m!r} not found in {db!r} "
                              f"(it has: {', '.join(measurements[:20]) or 'none'})")
        rows = [row for s in self._influxql(f"SHOW FIELD KEYS FROM {self._from()}")
                for row in s["values"]]
        types = {row[0]: row[1] for row in rows}
        for fld in self.spec.fields:
            if fld not in types:
                raise TargetError(f"InfluxDB at {self.url}: field {fld!r} not found in "
                                  f"measurement {m!r} (it has: {', '.join(sorted(types))})")
            if types[fld] not in ("float", "integer", "unsigned"):
                raise TargetError(f"InfluxDB at {self.url}: field {fld!r} of {m!r} holds "
                                  f"{types[fld]} values, not numbers")
        tags = {row[0] for s in self._influxql(f"SHOW TAG KEYS FROM {self._from()}")
                for row in s["values"]}
        for f in self.spec.where:
            if f.tag not in tags:
                have = ", ".join(sorted(tags)) or "none"
                raise TargetError(f"InfluxDB at {self.url}: tag {f.tag!r} not found in "
                                  f"measurement {m!r} (it has: {have})")

    # ------------------------------------------------------------------------------ 2.x

    def _flux(self, fld: str, start: float | None, stop: float | None, tail: str) -> str:
        """Flux reading one field of the measurement in [start, stop)."""
        start_text = rfc3339(start) if start is not None else "0"
        stop_text = f", stop: {rfc3339(stop)}" if stop is not None else ""
        preds = [f"r._measurement == {flux_string(self.spec.measurement)}",
                 f"r._field == {flux_string(fld)}"] + [f.flux() for f in self.spec.where]
        return (f"from(bucket: {flux_string(self.endpoint.database)})\n"
                f"  |> range(start: {start_text}{stop_text})\n"
                f"  |> filter(fn: (r) => {' and '.join(preds)})\n"
                f"{tail}"
                f"  |> keep(columns: [\"_time\", \"_value\", \"table\"])\n")

    def flux_query(self, flux: str, timeout: httpx.Timeout | None = None
                   ) -> Iterator[dict[str, str]]:
        """Rows of a Flux query's CSV answer (tables separated by blank lines)."""
        body = {"query": flux, "type": "flux",
                "dialect": {"header": True, "annotations": [], "delimiter": ","}}
        t0 = time.perf_counter()
        resp = self.http.request("POST", "/api/v2/query",
                                 params={"org": self.endpoint.org or ""},
                                 headers={"Accept": "application/csv",
                                          "Content-Type": "application/json"},
                                 content=json.dumps(body).encode(), timeout=timeout)
        self.timing["query"] += time.perf_counter() - t0
        return parse_flux_csv(resp.text, self.url)

    def _flux_columns(self, flux: str, timeout: httpx.Timeout | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        times: list[float] = []
        values: list[float] = []
        tables: set[str] = set()
        for row in self.flux_query(flux, timeout):
            tables.add(row.get("table", "0"))
            if len(tables) > 1:
                raise InputError("the query matches more than one series; add "
                                 "where=TAG%3DVALUE to pick one", path=self.url)
            value = row.get("_value", "")
            if value == "":
                continue
            times.append(parse_rfc3339(row["_time"], self.url))
            try:
                values.append(float(value))
            except ValueError:
                raise InputError(f"InfluxDB answered {value!r}, not a number",
                                 path=self.url) from None
        out_v = np.array(values, dtype=np.float64)
        self._check_values(out_v)
        return np.array(times, dtype=np.float64), out_v

    def _edge_v2(self, fld: str, start: float | None, end: float | None,
                 last: bool) -> float | None:
        tail = "  |> last()\n" if last else "  |> first()\n"
        times, _ = self._flux_columns(self._flux(fld, start, end, tail), self._edge_timeout)
        return float(times.max() if last else times.min()) if len(times) else None

    def _check_names_v2(self) -> None:
        m = flux_string(self.spec.measurement)
        flux = ('import "influxdata/influxdb/schema"\n'
                f"schema.measurementFieldKeys(bucket: {flux_string(self.endpoint.database)}, "
                f"measurement: {m}, start: time(v: 0))\n")
        fields = {row.get("_value", "") for row in self.flux_query(flux)}
        for fld in self.spec.fields:
            if fld not in fields:
                raise TargetError(
                    f"InfluxDB at {self.url}: field {fld!r} not found in measurement "
                    f"{self.spec.measurement!r} of bucket {self.endpoint.database!r} "
                    f"(it has: {', '.join(sorted(f for f in fields if f)) or 'none'})")


def influxql_hour_integrals(times: np.ndarray, values: np.ndarray
                            ) -> tuple[np.ndarray, np.ndarray]:
    """InfluxQL's `integral(F, 1h) ... GROUP BY time(1h) fill(none)` on the client (InfluxDB
    1.x's FloatIntegralReducer): trapezoids between consecutive samples; a pair crossing an hour
    boundary is split there by linear interpolation, the part up to the end of the first
    sample's hour staying in that hour and the whole rest (however many hours the gap spans)
    going to the hour of the second sample. Every hour holding a sample is returned, except a
    last hour whose only sample sits exactly on its start (InfluxDB drops it: no area). Same
    timestamps: the later value wins. Result in value x hours, by hour start."""
    t = np.asarray(times, dtype=np.float64)
    v = np.asarray(values, dtype=np.float64)
    if t.size == 0:
        return np.empty(0), np.empty(0)
    order = np.argsort(t, kind="stable")
    t, v = t[order], v[order]
    last_of_time = np.append(t[1:] != t[:-1], True)  # InfluxDB keeps the later duplicate
    t, v = t[last_of_time], v[last_of_time]
    hours = np.floor(t / HOUR) * HOUR
    t0, t1, v0, v1 = t[:-1], t[1:], v[:-1], v[1:]
    h0, h1 = hours[:-1], hours[1:]
    cross = h1 != h0
    boundary = np.where(cross, h0 + HOUR, t1)
    at_boundary = v0 + (v1 - v0) * (boundary - t0) / np.where(t1 > t0, t1 - t0, 1.0)
    first_part = 0.5 * (v0 + at_boundary) * (boundary - t0) / HOUR
    rest = np.where(cross, 0.5 * (at_boundary + v1) * (t1 - boundary) / HOUR, 0.0)
    starts, index = np.unique(hours, return_inverse=True)
    sums = np.zeros(starts.size)
    np.add.at(sums, index[:-1], first_part)
    np.add.at(sums, index[1:], rest)
    if t[-1] == hours[-1] and (t.size == 1 or hours[-2] != hours[-1]):
        starts, sums = starts[:-1], sums[:-1]  # the last hour holds only a sample at its start
    return starts, sums


def energy_unit(power_unit: str) -> str:
    """The unit `integral(F, 1h)` yields: W -> Wh, kW -> kWh."""
    return {"mW": "mWh", "W": "Wh", "kW": "kWh", "MW": "MWh", "GW": "GWh"}[power_unit]


def parse_rfc3339(text: str, where: str) -> float:
    """Flux `_time` (RFC 3339, UTC, up to nanoseconds) as epoch seconds."""
    try:
        base, _, frac = text.rstrip("Z").partition(".")
        whole = datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
        return whole + (float(f"0.{frac}") if frac else 0.0)
    except ValueError:
        raise InputError(f"InfluxDB answered a time {text!r} that is not RFC 3339",
                         path=where) from None


def parse_flux_csv(text: str, where: str) -> Iterator[dict[str, str]]:
    """Rows of Flux's CSV: a header per table, blank lines between tables, and an `error`
    table when the query failed after the answer began."""
    header: list[str] | None = None
    for row in csv.reader(io.StringIO(text)):
        if not row or all(c == "" for c in row):
            header = None
            continue
        if header is None:
            header = row
            continue
        item = dict(zip(header, row, strict=False))
        if "error" in header and "_value" not in header:
            raise TargetError(f"InfluxDB at {where}: query failed: {item.get('error', row)}")
        yield item


__all__ = ["InfluxSource", "open_influx_source", "parse_endpoint", "InfluxHTTP"]
