"""`backdate sync`: incremental, resumable, self-correcting sync of jobs from backdate.toml.

Why it is built this way (seed-systems.md, system 3, and its lessons):

* The window is computed from what each TARGET holds, never from a stored cursor alone: from
  (the newest data the target holds) - sync_buffer_hours, however long ago that is, so a sync
  that was off for months leaves no blind spot (system 3 looked back only 30 days and then
  restarted at now - 7 d, silently leaving a hole). The state file is a record of runs and of
  where each job started.
* The correction window (default 30 days) is re-read on every run, because utilities correct
  data after the fact. Home Assistant targets go through `plan_imports`/`apply_imports`, which
  rewrite only the rows that changed and keep both seams closed; InfluxDB rewrites are
  idempotent by timestamp, and only points that differ are sent.
* Which statistic ids and metering points a job writes comes from the source's declared
  fields (the URL's field= list), never from which fields happened to have data in a window:
  the names stay stable, and the cursor looks where the writes go (the minimum over them, so
  one field lagging behind is read again). The state file's own record of the newest end each
  target held is a backstop (the window never starts after it - buffer).
* Only complete hours are synced (the window ends at the start of the current hour), the same
  hours for every target, so `--verify` can compare them one to one.
* A failing target does not stop the others; a failing source or target is recorded with its
  cause and the scheduler loop carries on with the next round.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backdate.app.importing import (
    ImportOptions,
    apply_imports,
    plan_imports,
    read_sources,
    resolve_kind,
    statistic_id_for,
)
from backdate.app.sync_state import JobLockedError, SyncState, job_lock
from backdate.config import Job, SyncConfig
from backdate.domain.urls import mask_url
from backdate.engine import units
from backdate.engine.curve import _infer_step
from backdate.engine.prepare import prepare, slugify
from backdate.errors import BackdateError, InputError
from backdate.models import HOUR, Kind, Series, Table

log = logging.getLogger("backdate.sync")

VERIFY_TOLERANCE = 1e-6  # kWh per hour


# ---------------------------------------------------------------------------------- secrets


# Every address shown or stored goes through the one masker (backdate.domain.urls).


# ------------------------------------------------------------------------- energy intervals


@dataclass(slots=True)
class Intervals:
    """Energy per interval [start, end) in kWh: what goes into InfluxDB."""

    starts: np.ndarray
    ends: np.ndarray
    kwh: np.ndarray
    resolution: str

    def __len__(self) -> int:
        return int(self.starts.shape[0])

    def as_series(self, like: Series) -> Series:
        """Delta readings in kWh, named like the series they came from."""
        return Series(source=like.source, times=self.starts, values=self.kwh,
                      lines=np.arange(1, len(self) + 1), ends=self.ends, kind=Kind.DELTA,
                      unit="kWh", statistic_id=like.statistic_id, name=like.name)


def iso_resolution(seconds: float) -> str:
    """900 -> PT15M, 3600 -> PT1H (the `resolution` field users of system 3 have)."""
    s = int(round(seconds))
    if s % 3600 == 0:
        return f"PT{s // 3600}H"
    if s % 60 == 0:
        return f"PT{s // 60}M"
    return f"PT{s}S"


def energy_intervals(series: Series, kind: Kind, input_unit: str | None) -> Intervals:
    """Delta readings stay at the source's resolution (converted to kWh); power and meter
    readings become hourly energy through the engine (exact integral / proportional split)."""
    if len(series) == 0:
        return Intervals(np.empty(0), np.empty(0), np.empty(0), "PT1H")
    if kind is Kind.DELTA:
        factor = units.conversion(input_unit or "kWh", "kWh").factor
        starts = series.times.astype(np.float64)
        step = _infer_step(starts) or HOUR
        ends = np.full(starts.size, np.nan) if series.ends is None else series.ends.copy()
        missing = np.isnan(ends)
        following = np.append(starts[1:], np.inf)
        ends[missing] = np.minimum(starts[missing] + step, following[missing])
        return Intervals(starts, ends, series.values * factor, iso_resolution(step))
    if kind is Kind.MEAN:
        raise InputError("sync writes energy: a mean (measurement) series has no energy per "
                         "hour; use kind delta, cumulative or power", path=series.source)
    prepared = prepare(series, kind=kind, input_unit=input_unit, statistic_unit="kWh")
    hours = prepared.hours
    assert hours is not None
    return Intervals(hours.starts, hours.starts + HOUR, hours.amounts, "PT1H")


def hourly_energy(series: Series, kind: Kind, input_unit: str | None) -> dict[int, float]:
    """kWh per UTC hour, split in proportion where an interval straddles an hour (as HA's
    hourly `change` is)."""
    if len(series) == 0:
        return {}
    if kind is Kind.MEAN:
        raise InputError("a mean series has no energy per hour", path=series.source)
    prepared = prepare(series, kind=kind, input_unit=input_unit, statistic_unit="kWh")
    hours = prepared.hours
    assert hours is not None
    return {int(t): float(v) for t, v in zip(hours.starts.tolist(), hours.amounts.tolist(),
                                             strict=True)}


def slice_series(series: Series, start: float, end: float) -> Series:
    """Readings inside the window: delta intervals within [start, end], instants in
    [start, end] (a sample at `end` closes the last hour)."""
    times = series.times
    if series.kind is Kind.DELTA and series.ends is not None:
        ends = np.where(np.isnan(series.ends), times, series.ends)
        keep = (times >= start) & (ends <= end)
    elif series.kind is Kind.DELTA:
        keep = (times >= start) & (times < end)
    else:
        keep = (times >= start) & (times <= end)
    if keep.all():
        return series
    out = dataclasses.replace(series)
    for attr in ("times", "values", "lines", "ends", "mins", "maxs", "states", "files"):
        col = getattr(series, attr)
        if col is not None:
            setattr(out, attr, col[keep])
    return out


# --------------------------------------------------------------------------- declared names


def declared_names(job: Job) -> list[str] | None:
    """The names of the series the job's source yields, from its spec alone (no I/O): one per
    InfluxDB field, one per WattiVahti direction. None: only the data can tell (files)."""
    spec = job.source
    if spec.startswith(("influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://")):
        from backdate.sources.influx import check_source_spec

        parsed = check_source_spec(spec)
        return [parsed.series_name(f) for f in parsed.fields]
    if spec.startswith("wattivahti:"):
        from backdate.sources.wattivahti import open_wattivahti_source

        try:
            source = open_wattivahti_source(spec)
        except BackdateError:
            return None  # reading the source names the problem, where it belongs
        try:
            return [source.name(d) for d in source.directions]
        finally:
            source.close()
    return None


class _Names:
    """Maps a series to its slot among the declared names (or, without any, among the series
    of this run, as `import` does)."""

    def __init__(self, job: Job):
        self.declared = declared_names(job)

    def several(self, series: list[Series]) -> bool:
        if self.declared is not None:
            return len(self.declared) > 1
        return len({(s.source, s.name) for s in series}) > 1 and any(s.name for s in series)

    def all(self) -> list[str] | None:
        return self.declared


# ------------------------------------------------------------------------------- targets


class SyncTarget:
    """One job target, as the sync sees it: what it holds, and how to write and read it."""

    url: str
    keeps_cursor = True

    def latest_end(self) -> float | None:
        """UTC epoch end of the newest data the target holds for this job; None: nothing."""
        raise NotImplementedError

    def write(self, series: list[Series], window: tuple[float, float]) -> int:
        raise NotImplementedError

    def hourly(self, series: list[Series], start: float, end: float
               ) -> dict[str, dict[int, float]]:
        """kWh per hour the target holds for each of the job's series (for --verify)."""
        raise NotImplementedError

    def report_failure(self, message: str) -> None:
        """Tell the target the job failed (MQTT status sensors); others ignore it."""

    def close(self) -> None:
        raise NotImplementedError


class HATarget(SyncTarget):
    """Home Assistant by database URL or http(s):// (WebSocket API), via the planner."""

    def __init__(self, job: Job, url: str, state: SyncState | None):
        from backdate.app.targets import open_target

        self.job = job
        self.names = _Names(job)
        self.target = open_target(url)
        self.url = self.target.info().url
        self.state = state

    def _options(self) -> ImportOptions:
        job = self.job
        return ImportOptions(statistic_id=job.statistic_id, name=job.statistic_name,
                             kind=job.kind, unit=job.unit, tz=job.tz, short_term=job.short_term,
                             backup=False, report_tz=job.tz,
                             create=True)  # a job's configured statistic_id is meant

    def _id_for(self, name: str | None, several: bool) -> str | None:
        """The statistic a series named `name` goes to: the job's statistic_id, suffixed with
        the series name when the source declares several (what `import` does)."""
        if not self.job.statistic_id:
            return None
        if several and name:
            return f"{self.job.statistic_id}_{slugify(name)}"
        return self.job.statistic_id

    def _ids(self) -> list[str]:
        """Where this job's writes go: from the declared names when the source has them."""
        declared = self.names.all()
        if declared is not None and self.job.statistic_id:
            several = len(declared) > 1
            return sorted({i for n in declared if (i := self._id_for(n, several))})
        ids = {self.job.statistic_id} if self.job.statistic_id else set()
        if self.state is not None:
            ids.update(self.state.statistics(self.job.name, self.url))
        return sorted(ids)

    def latest_end(self) -> float | None:
        """The oldest of the newest hours over the job's statistics (a field that lags is
        read again); statistics never written are ignored (a field without data yet)."""
        ends = []
        # "The newest row" = the last one starting before now (HA's API searches back from
        # there in growing windows, so this stays one or two small queries); a row in the
        # future must not hold the cursor.
        horizon = time.time()
        for sid in self._ids():
            before = self.target.neighbourhood(Table.HOURLY, sid, horizon, horizon + 1).before
            if before is not None:
                ends.append(before.start_ts + HOUR)
        return min(ends) if ends else None

    def _named(self, series: list[Series]) -> list[Series]:
        """The series with the statistic id each goes to, decided by the declared names."""
        several = self.names.several(series)
        out = []
        for s in series:
            sid = self._id_for(s.name, several)
            out.append(s if sid is None else dataclasses.replace(s, statistic_id=sid))
        return out

    def write(self, series: list[Series], window: tuple[float, float]) -> int:
        named = self._named(series)
        series = [s for s in named if len(s)]
        if not series:
            return 0
        opts = self._options()
        if self.job.statistic_id:
            opts.statistic_id = None  # each series carries its id (decided above)
        imports = plan_imports(self.target, series, opts)
        written = apply_imports(self.target, imports)
        if self.state is not None:
            self.state.record_statistics(self.job.name, self.url,
                                         [item.statistic_id for item in imports])
        return sum(item.plan.hourly.count + item.plan.short_term.count for item in imports
                   if item.statistic_id in written)

    def hourly(self, series: list[Series], start: float, end: float
               ) -> dict[str, dict[int, float]]:
        opts = self._options()
        several = self.names.several(series)
        out: dict[str, dict[int, float]] = {}
        for s in series:
            sid = self._id_for(s.name, several) or statistic_id_for(s, opts, several)
            meta = self.target.get_metadata(sid)
            if meta is None:
                out[sid] = {}
                continue
            factor = units.conversion(meta.unit_of_measurement, "kWh").factor
            nb = self.target.neighbourhood(Table.HOURLY, sid, start, end)
            prev = nb.before.sum if nb.before is not None and nb.before.sum is not None \
                else 0.0
            hours: dict[int, float] = {}
            for row in nb.inside:
                current = row.sum if row.sum is not None else prev
                hours[int(row.start_ts)] = (current - prev) * factor
                prev = current
            out[sid] = hours
        return out

    def close(self) -> None:
        self.target.close()


class InfluxTarget(SyncTarget):
    """InfluxDB in the layout of system 3 (measurement electricity_consumption, tag
    metering_point), written only where a point is new or differs."""

    def __init__(self, job: Job, url: str):
        from backdate.targets.influx import open_influx_target

        self.job = job
        self.names = _Names(job)
        self.target = open_influx_target(url)
        self.url = self.target.url

    def _point_for(self, name: str | None, several: bool, index: int) -> str:
        """The metering point tag: the job's, suffixed with the series name when the source
        declares several series."""
        if not several:
            return self.job.metering_point
        return f"{self.job.metering_point}_{slugify(name or str(index))}"

    def _point(self, index: int, s: Series, series: list[Series]) -> str:
        return self._point_for(s.name, self.names.several(series), index)

    def _points(self) -> list[str]:
        declared = self.names.all()
        if declared is None:
            return [self.job.metering_point]
        several = len(declared) > 1
        return sorted({self._point_for(n, several, i) for i, n in enumerate(declared)})

    def latest_end(self) -> float | None:
        """The oldest of the newest points over the job's metering points (never-written ones
        ignored). The newest point's start; its end is at least that (the buffer covers the
        rest)."""
        found = [t for t in (self.target.latest(p) for p in self._points()) if t is not None]
        return float(min(found)) if found else None

    def write(self, series: list[Series], window: tuple[float, float]) -> int:
        from backdate.targets.influx import to_write_precision

        total = 0
        for i, s in enumerate(series):
            kind = resolve_kind(s, ImportOptions(kind=self.job.kind))
            iv = energy_intervals(s, kind, self.job.unit or s.unit)
            if not len(iv):
                continue
            # Compare what will be stored (whole seconds, merged) with what is held.
            starts, ends, kwh = to_write_precision(iv.starts, iv.ends, iv.kwh)
            point = self._point(i, s, series)
            held = self.target.read_readings(point, float(starts[0]), float(ends.max()))
            old = dict(zip(held.times.tolist(), held.values.tolist(), strict=True))
            changed = np.array([not (t in old and abs(old[t] - v) <= 1e-12)
                                for t, v in zip(starts.tolist(), kwh.tolist(), strict=True)],
                               dtype=bool)
            if changed.any():
                total += int(self.target.write_readings(point, starts[changed], ends[changed],
                                                        kwh[changed]))
        return total

    def hourly(self, series: list[Series], start: float, end: float
               ) -> dict[str, dict[int, float]]:
        out: dict[str, dict[int, float]] = {}
        for i, s in enumerate(series):
            point = self._point(i, s, series)
            held = self.target.read_readings(point, start, end)
            out[point] = hourly_energy(held, Kind.DELTA, held.unit or "kWh")
        return out

    def close(self) -> None:
        self.target.close()


class MqttTarget(SyncTarget):
    """Status sensors over MQTT discovery: what the sync just handled, and failures."""

    keeps_cursor = False

    def __init__(self, job: Job, url: str):
        from backdate.targets.mqtt import open_mqtt_target

        self.job = job
        if job.tz and "tz=" not in url:  # the sensors' days in the job's zone
            url += ("&" if "?" in url else "?") + f"tz={job.tz}"
        self.target = open_mqtt_target(url)
        self.url = getattr(self.target, "url", mask_url(url))

    @property
    def device_id(self) -> str:
        return self.job.name

    def latest_end(self) -> float | None:
        return None

    def write(self, series: list[Series], window: tuple[float, float]) -> int:
        readings = []
        for s in series:
            kind = resolve_kind(s, ImportOptions(kind=self.job.kind))
            readings.append(energy_intervals(s, kind, self.job.unit or s.unit).as_series(s))
        self.target.publish(self.device_id, self.job.statistic_name or self.job.name,
                            readings, "ok", **self._publish_options())
        return 0

    def _publish_options(self) -> dict[str, Any]:
        """The portal's own zone for "last complete day" (a Wiener Netze day is a Vienna day)
        when the job names none, and sensors that expire when two runs were missed."""
        return {"time_zone": self.job.tz or source_zone(self.job.source),
                "expire_after": 2 * (self.job.interval + self.job.jitter)}

    def hourly(self, series: list[Series], start: float, end: float
               ) -> dict[str, dict[int, float]]:
        return {}

    def report_failure(self, message: str) -> None:
        self.target.publish(self.device_id, self.job.statistic_name or self.job.name, [],
                            "error", message, **self._publish_options())

    def close(self) -> None:
        self.target.close()


def source_zone(spec: str) -> str | None:
    """The zone a remote source's days are in (the portals'), without opening it."""
    if spec.startswith("wnsm:"):
        from backdate.sources.wnsm import WnsmSource

        return WnsmSource.time_zone
    if spec.startswith("wattivahti:"):
        from backdate.sources.wattivahti import WattiVahtiSource

        return WattiVahtiSource.time_zone
    return None


def open_sync_target(job: Job, url: str, state: SyncState | None) -> SyncTarget:
    if url.startswith(("influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://")):
        return InfluxTarget(job, url)
    if url.startswith(("mqtt://", "mqtts://")):
        return MqttTarget(job, url)
    return HATarget(job, url, state)


# ------------------------------------------------------------------------------------ runs


@dataclass(slots=True)
class TargetOutcome:
    url: str
    window_start: float | None = None
    window_end: float | None = None
    points: int = 0
    error: str | None = None


@dataclass(slots=True)
class JobOutcome:
    job: str
    started: float
    ended: float = 0.0
    window: tuple[float, float] | None = None
    read: int = 0  # readings read from the source
    targets: list[TargetOutcome] = field(default_factory=list)
    error: str | None = None  # the source's (or the whole job's) failure
    exit_code: int = 0

    @property
    def points(self) -> int:
        return sum(t.points for t in self.targets)

    @property
    def failed(self) -> bool:
        return self.error is not None or any(t.error for t in self.targets)


def describe(err: BaseException) -> str:
    """The cause in one line (HTTP status and message where the error carries one)."""
    text = str(err) or type(err).__name__
    if not isinstance(err, BackdateError):
        text = f"{type(err).__name__}: {text}"
    return text.replace("\n", " ")


def window_start_for(job: Job, latest: float | None, origin: float | None,
                     now: float) -> float:
    """Where a target's window starts: the whole point of the sync.

    Nothing held: now - initial_sync. Otherwise the earlier of (newest held - buffer) and the
    correction window (never before where this job first started), so data the sync missed
    while it was off is read however old it is. `latest` counts at most up to the window's
    end (the last complete hour): a point in the future must not stop the sync.
    """
    if latest is None:
        start = now - job.initial_sync
    else:
        latest = min(latest, math.floor(now / HOUR) * HOUR)
        first = origin if origin is not None else now - job.initial_sync
        start = min(latest - job.buffer, max(now - job.correction, first))
    return math.floor(start / HOUR) * HOUR


def run_job(job: Job, state: SyncState, *, now: float | None = None) -> JobOutcome:
    """One run of one job (the caller holds its lock). Never raises for a failing source or
    target: the outcome carries the causes, and the state file records them."""
    now = time.time() if now is None else now
    outcome = JobOutcome(job.name, time.time())
    run_id = state.start_run(job.name, outcome.started)
    end = math.floor(now / HOUR) * HOUR  # complete hours only
    targets: list[tuple[SyncTarget, TargetOutcome]] = []
    try:
        for url in job.targets:
            result = TargetOutcome(mask_url(url))
            outcome.targets.append(result)
            opened: SyncTarget | None = None
            try:
                opened = open_sync_target(job, url, state)
                result.url = opened.url
                latest = opened.latest_end()
                recorded = state.latest(job.name, opened.url) if opened.keeps_cursor else None
                if latest is not None and recorded is not None:
                    latest = min(latest, recorded)  # backstop: what the last run left
                result.window_start = window_start_for(
                    job, latest, state.origin(job.name, opened.url), now)
                result.window_end = end
                targets.append((opened, result))
            except Exception as err:  # noqa: BLE001 - recorded with its cause, others go on
                if opened is not None:
                    _quietly(opened.close)
                result.error = describe(err)
                code = err.exit_code if isinstance(err, BackdateError) else 3
                outcome.exit_code = max(outcome.exit_code, code)
                log.info("job %s: target %s: %s", job.name, result.url, result.error)
        if not targets:
            outcome.error = outcome.error or "no target could be opened"
            return outcome
        # Targets without a cursor of their own (MQTT status sensors) follow the others: they
        # must not widen every run to the initial range.
        cursors = [r.window_start for t, r in targets
                   if r.window_start is not None and t.keeps_cursor]
        start = min(cursors or [r.window_start for _t, r in targets
                                if r.window_start is not None])
        outcome.window = (start, end)
        if start >= end:
            return outcome
        try:
            opts = ImportOptions(kind=job.kind, unit=job.unit, tz=job.tz, start=start,
                                 end=end + 1)
            series = [slice_series(s, start, end) for s in read_sources([job.source], opts)]
        except Exception as err:  # noqa: BLE001 - a failing source never ends the loop
            outcome.error = f"source {mask_url(job.source)}: {describe(err)}"
            code = err.exit_code if isinstance(err, BackdateError) else 3
            if isinstance(err, InputError) and _missing_file(job.source):
                code = 3  # the source is not there: a failed source, like a portal outage
            outcome.exit_code = max(outcome.exit_code, code)
            log.info("job %s: %s", job.name, outcome.error)
            for target, _result in targets:
                _quietly(target.report_failure, outcome.error)
            return outcome
        outcome.read = sum(len(s) for s in series)
        for target, result in targets:
            try:
                result.points = target.write(series, (start, end))
                if target.keeps_cursor:
                    state.record_cursor(job.name, target.url, result.window_start or start,
                                        target.latest_end())
            except BackdateError as err:
                result.error = describe(err)
                outcome.exit_code = max(outcome.exit_code, err.exit_code)
                log.info("job %s: target %s: %s", job.name, target.url, result.error)
            except Exception as err:  # noqa: BLE001 - one target's bug must not stop others
                result.error = describe(err)
                outcome.exit_code = max(outcome.exit_code, 3)
                log.exception("job %s: target %s failed", job.name, target.url)
        failures = [f"{r.url}: {r.error}" for r in outcome.targets if r.error]
        if failures:
            for target, _result in targets:
                _quietly(target.report_failure, "; ".join(failures))
        return outcome
    finally:
        for target, _result in targets:
            _quietly(target.close)
        outcome.ended = time.time()
        for result in outcome.targets:
            state.record_target(run_id, result.url, result.window_start, result.window_end,
                                result.points, result.error)
        errors = ([outcome.error] if outcome.error else []) + [
            f"{r.url}: {r.error}" for r in outcome.targets if r.error]
        state.end_run(run_id, outcome.points, "; ".join(errors) or None)
        if outcome.failed and not outcome.exit_code:
            outcome.exit_code = 3


def _quietly(call: Callable[..., object], *args: object) -> None:
    try:
        call(*args)
    except Exception:  # noqa: BLE001 - reporting a failure must not hide the failure
        log.warning("could not report to a target", exc_info=True)


def _missing_file(source: str) -> bool:
    from pathlib import Path

    from backdate.sources.base import is_remote

    return not is_remote(source) and not Path(source).exists()


def select_jobs(config: SyncConfig, name: str | None) -> list[Job]:
    if not config.jobs:
        raise InputError("no sync jobs: add [[sync.jobs]] or [jobs.NAME] tables",
                         path=str(config.path) if config.path else None)
    if name is None:
        return config.jobs
    jobs = [j for j in config.jobs if j.name == name]
    if not jobs:
        raise InputError(f"no job named {name!r} (jobs: "
                         f"{', '.join(j.name for j in config.jobs)})",
                         path=str(config.path) if config.path else None)
    return jobs


def run_locked(config: SyncConfig, job: Job, state: SyncState, *, wait: bool) -> JobOutcome:
    with job_lock(config.state_file, job.name, wait=wait):
        return run_job(job, state)


def verify_locked(config: SyncConfig, job: Job, *, wait: bool) -> VerifyResult:
    """--verify under the job's lock, shared: never compares while a run is writing."""
    with job_lock(config.state_file, job.name, wait=wait, shared=True):
        return verify_job(config, job)


def run_once(config: SyncConfig, jobs: list[Job], *, wait: bool,
             on_outcome: Callable[[JobOutcome], None] | None = None) -> list[JobOutcome]:
    """Every job once (for cron). A job whose lock is held elsewhere is skipped with the
    reason (exit code 1: refused, nothing written); the other jobs still run."""
    state = SyncState(config.state_file)
    outcomes = []
    try:
        for job in jobs:
            try:
                outcome = run_locked(config, job, state, wait=wait)
            except JobLockedError as err:
                outcome = JobOutcome(job.name, time.time(), time.time(), error=str(err),
                                     exit_code=err.exit_code)
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
    finally:
        state.close()
    return outcomes


def run_forever(config: SyncConfig, jobs: list[Job], *, wait: bool,
                stop: threading.Event, on_outcome: Callable[[JobOutcome], None] | None = None,
                rng: random.Random | None = None,
                on_next: Callable[[str, float], None] | None = None) -> None:
    """The scheduler: each job every `interval` plus a random jitter, until `stop` is set.

    Nothing a source or target does ends the loop: a failure is logged, recorded in the state
    file, and the job runs again next round.
    """
    rng = rng or random.Random()
    state = SyncState(config.state_file)
    due = {job.name: 0.0 for job in jobs}
    try:
        while not stop.is_set():
            for job in jobs:
                if stop.is_set() or time.time() < due[job.name]:
                    continue
                try:
                    outcome = run_locked(config, job, state, wait=wait)
                    if on_outcome is not None:
                        on_outcome(outcome)
                except JobLockedError as err:
                    log.warning("%s; next round", err)
                except Exception:  # noqa: BLE001 - the loop survives anything
                    log.exception("job %s failed; next round", job.name)
                due[job.name] = time.time() + job.interval + rng.uniform(0, job.jitter)
                if on_next is not None:  # the loop says when each job runs next
                    on_next(job.name, due[job.name])
            stop.wait(max(0.0, min(due.values()) - time.time()))
    finally:
        state.close()


# ---------------------------------------------------------------------------------- verify


@dataclass(slots=True)
class VerifyRow:
    """One hour where the source and a target disagree (kWh; None: not held)."""

    statistic: str
    hour: int
    source: float | None
    targets: dict[str, float | None]


@dataclass(slots=True)
class VerifyResult:
    job: str
    window: tuple[float, float]
    hours: int  # hours compared
    columns: list[str]  # target URLs (masked)
    rows: list[VerifyRow] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def _differs(a: float | None, b: float | None) -> bool:
    if a is None and b is None:
        return False
    if a is None or b is None:
        return abs(a or b or 0.0) > VERIFY_TOLERANCE
    return abs(a - b) > VERIFY_TOLERANCE + 1e-9 * max(abs(a), abs(b))


def verify_job(config: SyncConfig, job: Job, *, now: float | None = None) -> VerifyResult:
    """Per-hour energy of the source against every target over the job's synced range (from
    where it first started, else the initial window, to the last complete hour)."""
    now = time.time() if now is None else now
    end = math.floor(now / HOUR) * HOUR
    state = SyncState(config.state_file)
    try:
        targets: list[SyncTarget] = []
        errors: list[str] = []
        origins = []
        for url in job.targets:
            if url.startswith(("mqtt://", "mqtts://")):
                continue
            try:
                target = open_sync_target(job, url, state)
            except BackdateError as err:
                errors.append(f"{mask_url(url)}: {describe(err)}")
                continue
            targets.append(target)
            origin = state.origin(job.name, target.url)
            if origin is not None:
                origins.append(origin)
        start = math.floor((min(origins) if origins else now - job.initial_sync) / HOUR) * HOUR
        result = VerifyResult(job.name, (start, end), 0, [t.url for t in targets],
                              errors=errors)
        try:
            opts = ImportOptions(kind=job.kind, unit=job.unit, tz=job.tz, start=start,
                                 end=end + 1)
            series = [slice_series(s, start, end) for s in read_sources([job.source], opts)]
            held = []
            for target in targets:
                held.append(target.hourly(series, start, end))
        finally:
            for target in targets:
                _quietly(target.close)
        for index, s in enumerate(series):
            kind = resolve_kind(s, ImportOptions(kind=job.kind))
            source_hours = hourly_energy(s, kind, job.unit or s.unit)
            per_target = [list(h.values())[index] if index < len(h) else {} for h in held]
            label = (list(held[0].keys())[index] if held and index < len(held[0])
                     else s.statistic_id or s.source)
            hours = set(source_hours)
            for h in per_target:
                hours.update(t for t in h if start <= t < end)
            result.hours += len(hours)
            for hour in sorted(hours):
                src = source_hours.get(hour)
                values = {url: h.get(hour) for url, h in zip(result.columns, per_target,
                                                            strict=True)}
                if any(_differs(src, v) for v in values.values()):
                    result.rows.append(VerifyRow(label, hour, src, values))
        return result
    finally:
        state.close()
