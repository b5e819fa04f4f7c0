"""A running Home Assistant as a statistics target, through its WebSocket API.

For users who have a URL and a long-lived access token but no safe way to the database file
(Home Assistant OS). What this path can and cannot do, compared with writing the database:

* It writes **hourly rows only**: `recorder/import_statistics` always goes into `statistics`,
  so `info()` says `supports_short_term=False` and the engine plans hourly rows plus a shift.
* It is **not one transaction**: rows go in chunks (each chunk one recorder job, well under
  HA's 4 MiB message limit), and the seam after the window is closed with
  `recorder/adjust_sum_statistics`, which moves `sum` in both tables.
* HA **answers before it writes** (`import_statistics` returns once the job is queued, and
  `recorder/info` can show an empty backlog while the job runs), so `apply` reads the written
  range back until HA holds exactly what was planned (every value equal bit for bit,
  last_reset to the microsecond, and the metadata read back with
  `recorder/get_statistics_metadata`), and only then reports success; on timeout it raises
  `VerificationError` naming the first hour that differs. A shift HA did not acknowledge in
  time is not assumed lost: the read-back says whether it happened.
* When the connection is lost (HA restarted), it reconnects with backoff (1, 2, 4, 8, 10, 10 s
  ... for up to `RECONNECT_SECONDS`; never faster; each attempt at most
  `RECONNECT_ATTEMPT_SECONDS`, later calls the target's timeout), waits until HA settles
  (polling `recorder/info` and one-row reads only: the last planned hour and the first
  shifted row), reads the range back once, sends
  only what HA does not hold (and the shift if it did not happen), and confirms. HA may go
  away again while it resumes: up to `MAX_RESUMES` times. When it gives up, the error (exit 3)
  names, per statistic, the hour ranges HA holds as planned, those it does not, and (if HA
  cannot be asked any more) those sent but not confirmed.
* Entity statistics: nothing in the open hour, nor in the hour before it during the first
  five minutes of an hour (HA may not have rolled it up yet), is written.
* Counting: the API has no row counts. `inspect` counts by reading the rows (`period: month`
  aggregates find the months that hold data, then hourly rows a year at a time, and the
  5-minute rows), and `neighbourhood` counts the rows a shift moves the same way.

Version awareness: `get_config`'s version decides the metadata fields sent (`has_mean` up to
2025.10; `mean_type` and `unit_class` from 2025.11; see ha-recorder.md §4).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backdate.domain.urls import mask_url
from backdate.engine import units
from backdate.errors import RefusedError, TargetError, VerificationError
from backdate.hass.client import (
    MAX_MESSAGE_BYTES,
    Backoff,
    HAAuthError,
    HAError,
    HATimeoutError,
    HAUnreachableError,
    SyncHAClient,
    message_size,
)
from backdate.models import HOUR, MeanType, RowBlock, StatisticMeta, StatRow, Table, WritePlan
from backdate.targets.base import Neighbourhood, StatisticSummary, TargetInfo

DAY = 86400.0
# Windows searched backwards (or forwards) for the nearest row outside [start, end).
SEARCH_WINDOWS = (DAY, 30 * DAY, 366 * DAY, 3653 * DAY, 36525 * DAY)
# Rows per `import_statistics` message: ~100 bytes each as JSON, so ~0.5 MB per message, far
# under HA's 4 MiB limit even with mean/min/max/last_reset (chunks are halved if not).
CHUNK_ROWS = 5000
CHUNK_BYTES = MAX_MESSAGE_BYTES // 2
CONFIRM_ROWS = CHUNK_ROWS  # hours read back at a time while HA writes
# HA 2024.3 commits about 1,300 imported rows/s (real-home-assistant.md); allow 5x slower.
VERIFY_BASE_SECONDS = 30.0
VERIFY_SECONDS_PER_ROW = 1 / 250
# Entity statistics: HA rolls an hour up at ~HH:00:10; stay clear of an hour it has not yet
# compiled for this long after the hour ends.
COMPILE_GRACE = 300.0
# last_reset travels as ISO 8601 text with microseconds and comes back as epoch milliseconds,
# so it is compared to the microsecond; values travel as JSON floats (shortest round-trip
# repr) into REAL/DOUBLE columns and back, so they are compared exactly.
RESET_TOL = 1e-6
# Connect attempts after a lost connection are short (a half-started HA is retried soon);
# calls on the new connection use the target's own timeout again.
RECONNECT_ATTEMPT_SECONDS = 10.0
# After a lost connection (HA restarted, network): how long to try to reconnect, and how long
# HA's rows must stay unchanged (with an empty recorder backlog) before backdate treats jobs
# that did not land as lost and sends them again.
RECONNECT_SECONDS = 180.0
SETTLE_SECONDS = 20.0
MAX_RESUMES = 5  # HA lost (and found again) this often during one import, then give up
# Counting rows (inspect, the rows a shift moves): hourly rows are read this many at most.
COUNT_WINDOW = 366 * DAY
ROW_TYPES = ["state", "sum", "mean", "min", "max", "last_reset"]


def parse_version(text: str | None) -> tuple[int, int]:
    """'2024.3.3' -> (2024, 3); dev/beta suffixes are ignored; unknown -> (0, 0)."""
    m = re.match(r"^(\d+)\.(\d+)", text or "")
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _iso(ts: float) -> str:
    """UTC ISO 8601 with offset: HA checks minute/second in the offset sent (§4)."""
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat()


def _human(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _close(a: float | None, b: float | None) -> bool:
    """Exactly equal (or both absent): HA stores the JSON float it was sent bit for bit."""
    if a is None or b is None:
        return a is None and b is None
    return float(a) == float(b)


def _same_reset(got: float | None, want: float | None) -> bool:
    """last_reset equal to the microsecond (it travels as ISO text with microseconds)."""
    if got is None or want is None:
        return got is None and want is None
    return abs(float(got) - float(want)) <= RESET_TOL


class HAWebSocketTarget:
    """`StatisticsTarget` over HA's WebSocket API (see the module docstring)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 client: SyncHAClient | None = None):
        self.url = mask_url(url)  # for messages; the address itself stays private
        self._address = url
        self.timeout = timeout
        self._units: dict[str, str | None] = {}
        self._token = token
        self._ws = client if client is not None else SyncHAClient(url, token, timeout)
        try:
            config = self._call("get_config")
        except BaseException:
            self._ws.close()
            raise
        self.ha_version: str = str(config.get("version") or self._ws.ha_version or "")
        self.time_zone: str | None = config.get("time_zone")
        self.version = parse_version(self.ha_version)
        self._is_admin: bool | None = None
        self._user = "?"
        # Per statistic id, during apply_all: rows sent (acknowledged as queued) at least
        # once, and the last read-back (held mask, shift state): for the give-up statement.
        self._sent: dict[str, np.ndarray] = {}
        self._held: dict[str, tuple[np.ndarray, str | None]] = {}

    # -- plumbing ----------------------------------------------------------------------------

    def _call(self, msg_type: str, /, *, timeout: float | None = None, **fields: Any) -> Any:
        try:
            return self._ws.call(msg_type, timeout=timeout, **fields)
        except HAAuthError as err:
            if err.code == "unauthorized":
                raise HAAuthError(
                    "unauthorized",
                    f"{msg_type} needs an administrator: the token's user is not an admin "
                    "(create the token as an administrator)") from None
            raise

    @property
    def sends_mean_type(self) -> bool:
        """2025.11 and later take `mean_type`/`unit_class` instead of `has_mean`."""
        return self.version >= (2025, 11)

    def close(self) -> None:
        self._ws.close()

    def __enter__(self) -> HAWebSocketTarget:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading -----------------------------------------------------------------------------

    def info(self) -> TargetInfo:
        """hourly rows only; for entity statistics nothing in the open hour (nor the one HA
        may still be rolling up in its first minutes) is written."""
        now = time.time()
        notes = [f"Home Assistant {self.ha_version} (time zone {self.time_zone}) through the "
                 "WebSocket API: hourly rows only, no 5-minute rows; writes are confirmed by "
                 "reading them back"]
        return TargetInfo(
            url=self.url,
            kind="websocket",
            schema_version=None,
            last_compiled_end=self._compiled_end(now),
            supports_short_term=False,
            notes=notes,
            time_zone=self.time_zone,
        )

    @staticmethod
    def _compiled_end(now: float) -> float:
        return math.floor((now - COMPILE_GRACE) / HOUR) * HOUR

    def _metadata_items(self, statistic_ids: list[str] | None) -> list[dict[str, Any]]:
        fields: dict[str, Any] = {}
        if statistic_ids is not None:
            fields["statistic_ids"] = statistic_ids
        return list(self._call("recorder/get_statistics_metadata", **fields) or [])

    @staticmethod
    def _meta_from_item(item: dict[str, Any]) -> StatisticMeta:
        mean_type = item.get("mean_type")
        if mean_type is None:
            mean_type = MeanType.ARITHMETIC if item.get("has_mean") else MeanType.NONE
        unit = item.get("statistics_unit_of_measurement")
        return StatisticMeta(
            statistic_id=item["statistic_id"],
            source=item.get("source") or "",
            unit_of_measurement=unit,
            has_sum=bool(item.get("has_sum")),
            mean_type=MeanType(int(mean_type)),
            name=item.get("name"),
            unit_class=item.get("unit_class"),
        )

    def get_metadata(self, statistic_id: str) -> StatisticMeta | None:
        for item in self._metadata_items([statistic_id]):
            if item.get("statistic_id") == statistic_id:
                meta = self._meta_from_item(item)
                self._units[statistic_id] = meta.unit_of_measurement
                return meta
        return None

    def statistic_metas(self) -> list[StatisticMeta]:
        """Every statistic's metadata (no row counts): `migrate --map` expands globs on it."""
        return [self._meta_from_item(item) for item in self._metadata_items(None)]

    def entities(self) -> tuple[set[str], dict[str, dict[str, Any]]]:
        """The entities HA has now (`get_states`) and each registry entry's device and area
        (the device's area where the entity has none): `migrate --suggest` pairs a statistic
        whose entity is gone with one on the same device or area."""
        live = {str(s["entity_id"]) for s in self._call("get_states") or []}
        devices = {d["id"]: d.get("area_id")
                   for d in self._call("config/device_registry/list") or []}
        registry: dict[str, dict[str, Any]] = {}
        for entry in self._call("config/entity_registry/list") or []:
            device = entry.get("device_id")
            registry[str(entry["entity_id"])] = {
                "device_id": device,
                "area_id": entry.get("area_id") or (devices.get(device) if device else None)}
        return live, registry

    def delete_statistics(self, statistic_ids: Sequence[str], *,
                          wait: float = 60.0) -> int:
        """`recorder/clear_statistics` (migrate --remove-source, after NEW was verified);
        HA answers before it deletes, so wait until the metadata is gone."""
        ids = [sid for sid in statistic_ids if self.get_metadata(sid) is not None]
        if not ids:
            return 0
        self._call("recorder/clear_statistics", statistic_ids=ids)
        deadline = time.monotonic() + wait
        while any(self.get_metadata(sid) is not None for sid in ids):
            if time.monotonic() > deadline:
                raise VerificationError(f"Home Assistant still holds {', '.join(ids)} "
                                        f"{wait:.0f} s after clear_statistics")
            time.sleep(0.2)
        return len(ids)

    def known_ids(self) -> tuple[set[str], set[str]]:
        """Statistic ids HA lists, and entity ids it has a state for: what an entity statistic
        id may name without --create."""
        stats = {str(i["statistic_id"]) for i in self._call("recorder/list_statistic_ids") or []
                 if isinstance(i, dict) and i.get("statistic_id")}
        entities = {str(s["entity_id"]) for s in self._call("get_states") or []
                    if isinstance(s, dict) and s.get("entity_id")}
        return stats, entities

    def _unit_fields(self, statistic_id: str) -> dict[str, Any]:
        """Ask for values in the stored unit (HA converts entity statistics to the entity's
        display unit otherwise)."""
        if statistic_id not in self._units:
            self.get_metadata(statistic_id)
        unit = self._units.get(statistic_id)
        cls = units.unit_class(unit)
        return {"units": {cls: unit}} if cls and unit else {}

    def _rows(self, table: Table, statistic_id: str, start: float, end: float | None,
              types: list[str] | None = None, timeout: float | None = None) -> list[StatRow]:
        """Rows with start <= start_ts < end (end None: up to now), oldest first."""
        fields: dict[str, Any] = {
            "statistic_ids": [statistic_id],
            "start_time": _iso(max(start, 0.0)),
            "period": "5minute" if table is Table.SHORT_TERM else "hour",
            "types": types or ROW_TYPES,
            **self._unit_fields(statistic_id),
        }
        if end is not None:
            if end <= max(start, 0.0):
                return []
            fields["end_time"] = _iso(end)
        result = self._call("recorder/statistics_during_period", timeout=timeout, **fields)
        out = []
        for r in (result or {}).get(statistic_id, []):
            reset = r.get("last_reset")
            out.append(StatRow(
                start_ts=r["start"] / 1000.0,
                state=r.get("state"), sum=r.get("sum"), mean=r.get("mean"),
                min=r.get("min"), max=r.get("max"),
                last_reset_ts=None if reset is None else reset / 1000.0,
            ))
        return [r for r in out if r.start_ts >= start and (end is None or r.start_ts < end)]

    def _last_before(self, table: Table, statistic_id: str, start: float) -> StatRow | None:
        lo = start
        for width in SEARCH_WINDOWS:
            hi, lo = lo, max(start - width, 0.0)
            rows = self._rows(table, statistic_id, lo, hi)
            if rows:
                return rows[-1]
            if lo <= 0:
                break
        return None

    def _first_after(self, table: Table, statistic_id: str, end: float) -> StatRow | None:
        now = time.time()
        hi = end
        for width in SEARCH_WINDOWS:
            lo, hi = hi, end + width
            if lo > now + HOUR:
                break
            rows = self._rows(table, statistic_id, lo, hi)
            if rows:
                return rows[0]
        return None

    def neighbourhood(self, table: Table, statistic_id: str, start: float,
                      end: float) -> Neighbourhood:
        """Last row before `start`, rows in [start, end), first row at/after `end`, and how
        many rows lie at/after `end` (the rows a seam shift moves; counted by reading them)."""
        table = Table(table)
        meta = self.get_metadata(statistic_id)
        if meta is None:
            return Neighbourhood(None, [], None)
        after = self._first_after(table, statistic_id, end)
        after_count = 0
        if after is not None:
            after_count, _, _ = self.count_rows(table, meta, after.start_ts)
        return Neighbourhood(
            before=self._last_before(table, statistic_id, start),
            inside=self._rows(table, statistic_id, start, end),
            after=after,
            after_count=after_count,
        )

    def count_rows(self, table: Table, meta: StatisticMeta,
                   start: float = 0.0) -> tuple[int, float | None, float | None]:
        """(rows, first start, last start) of `table` at/after `start`, read from HA.

        The API has no count: hourly rows are found with `period: month` aggregates (one row
        per month that holds data), then read (one column) at most a year at a time, so a
        statistic with ten years costs about ten small replies, not one 87,660-row answer per
        question. 5-minute rows (HA keeps ~10 days) are read in one go.
        """
        sid = meta.statistic_id
        kind = ["sum"] if meta.has_sum else ["mean"]
        if Table(table) is Table.SHORT_TERM:
            starts = [r.start_ts for r in self._rows(Table.SHORT_TERM, sid, start, None, kind,
                                                     timeout=max(self.timeout, 120))]
            return len(starts), (starts[0] if starts else None), (starts[-1] if starts else None)
        months = self._call("recorder/statistics_during_period", statistic_ids=[sid],
                            start_time=_iso(max(start, 0.0)), period="month", types=kind,
                            timeout=max(self.timeout, 120), **self._unit_fields(sid))
        spans = [(max(r["start"] / 1000.0, start), r["end"] / 1000.0)
                 for r in (months or {}).get(sid, [])]
        windows: list[tuple[float, float]] = []
        for lo, hi in spans:  # join adjacent months into windows of at most COUNT_WINDOW
            if windows and windows[-1][1] >= lo and hi - windows[-1][0] <= COUNT_WINDOW:
                windows[-1] = (windows[-1][0], hi)
            else:
                windows.append((lo, hi))
        count, first, last = 0, None, None
        for lo, hi in windows:
            rows = self._rows(Table.HOURLY, sid, lo, hi, kind, timeout=max(self.timeout, 120))
            if rows:
                count += len(rows)
                first = rows[0].start_ts if first is None else first
                last = rows[-1].start_ts
        return count, first, last

    def read_rows(self, table: Table, statistic_id: str, start: float | None = None,
                  end: float | None = None) -> list[StatRow]:
        if self.get_metadata(statistic_id) is None:
            return []
        return self._rows(Table(table), statistic_id, 0.0 if start is None else start, end)

    def list_statistics(self) -> list[StatisticSummary]:
        """Every statistic HA reports (`recorder/list_statistic_ids`), with row counts and the
        first/last hour counted by reading the rows (`count_rows`: the API has no counts).
        IDs HA lists but holds no rows for (an integration that has not compiled yet) show 0."""
        items = self._call("recorder/list_statistic_ids") or []
        out = []
        for item in sorted(items, key=lambda i: i["statistic_id"]):
            meta = self._meta_from_item(item)
            self._units[meta.statistic_id] = meta.unit_of_measurement
            hourly, first, last = self.count_rows(Table.HOURLY, meta)
            short, _, _ = self.count_rows(Table.SHORT_TERM, meta)
            out.append(StatisticSummary(meta=meta, hourly_rows=hourly, short_term_rows=short,
                                        first_start=first, last_start=last))
        return out

    # -- writing -----------------------------------------------------------------------------

    def apply(self, plan: WritePlan, *, progress: Callable[[int], None] | None = None) -> None:
        self.apply_all([plan], progress=progress)

    def apply_all(self, plans: Sequence[WritePlan], *,
                  progress: Callable[[int], None] | None = None) -> None:
        """Check every plan, send every row and shift, then read back until HA holds them.

        Not one transaction (the WebSocket API has none). When the connection is lost (HA
        restarted), backdate resumes (`_resume`): reconnect with backoff, wait until HA's rows
        stop changing, send again only what HA does not hold (and the shift, if it did not
        happen), confirm; up to `MAX_RESUMES` times. When it gives up, the error names per
        statistic which hours HA holds as planned and which not (`_statement`).
        """
        work = [p for p in plans if p.hourly.count or self._shift(p) is not None]
        if not work:
            return
        for plan in work:
            self._check_plan(plan)
        self._require_admin()
        for plan in work:
            self._check_seams(plan)
        self._sent = {}
        self._held = {}
        try:
            sent = 0
            for plan in work:
                sent = self._send(plan, sent, progress)
            for plan in work:
                self._confirm(plan)
        except HAUnreachableError as err:
            self._resume(work, err, progress)
        except HAAuthError:
            raise
        except HAError as err:  # e.g. HA stopped answering (timeout): say what it holds
            raise TargetError(f"{err}. Home Assistant now holds: {self._statement(work)}. Run "
                              "the same import again: it writes only what is missing") from err

    # -- resuming after a lost connection ----------------------------------------------------

    def _reconnect(self, cause: HAError) -> None:
        """A new connection to a RUNNING HA, with backoff (`Backoff`: 1, 2, 4, 8, 10 s ...);
        HAUnreachableError once `RECONNECT_SECONDS` pass, HAAuthError at once."""
        with contextlib.suppress(Exception):
            self._ws.close()

        def told(attempt: int, delay: float, why: str) -> None:
            if attempt in (1, 4) or attempt % 10 == 0:  # a note now and then, not per try
                self.notify(f"Home Assistant not back yet ({why}); trying again in "
                            f"{delay:.0f} s")

        self._ws = SyncHAClient.connect_retrying(
            self._address, self._token, min(self.timeout, RECONNECT_ATTEMPT_SECONDS),
            backoff=Backoff(1.0, 2.0, 10.0, RECONNECT_SECONDS), on_retry=told,
            call_timeout=self.timeout)

    def _state(self, plan: WritePlan) -> tuple[np.ndarray, str | None]:
        """Which planned rows HA holds as planned (mask), and the shift: None (none planned),
        'applied', 'pending' (not yet), or a description of something else. Remembered in
        `_held` for the final statement if HA goes away."""
        sid = plan.meta.statistic_id
        block = plan.hourly.rows
        mask = np.zeros(len(block), dtype=bool)
        if len(block):
            rows = self._rows(Table.HOURLY, sid, float(block.start_ts[0]),
                              float(block.start_ts[-1]) + HOUR, _planned_types(block),
                              timeout=max(self.timeout, len(block) / 2000))
            mask = _held_mask(block, rows)
        state = self._shift_state(plan)
        self._held[sid] = (mask, state)
        return mask, state

    def _shift_state(self, plan: WritePlan) -> str | None:
        """The shift, read from the first row it moves (a one-row read): None (none
        planned), 'applied', 'pending' (not yet), or a description of something else."""
        expect = _expect_shift(plan)
        if expect is None:
            return None
        table, start, old, want = expect
        got = self._rows(table, plan.meta.statistic_id, start, start + table.period, ["sum"])
        if got and _close(got[0].sum, want):
            return "applied"
        if got and _close(got[0].sum, old):
            return "pending"
        return (f"{table.value} at {_human(start)} reads "
                f"{'no row' if not got else f'sum={got[0].sum!r}'}, neither {old!r} "
                f"(before the shift) nor {want!r} (after it)")

    def _probe(self, plan: WritePlan) -> tuple[tuple[bool, object], str | None]:
        """What resuming polls while HA settles: the last planned hour as HA holds it and the
        shift state; two one-row reads, never the whole range (HA just restarted)."""
        block = plan.hourly.rows
        last: tuple[bool, object] = (True, None)  # (held as planned, what HA holds)
        if len(block):
            t = float(block.start_ts[-1])
            rows = self._rows(Table.HOURLY, plan.meta.statistic_id, t, t + HOUR,
                              _planned_types(block))
            last = (False, None) if not rows else (
                _compare(block, rows, len(block) - 1) is None,
                (tuple(getattr(rows[0], c) for c in ROW_TYPES[:5]), rows[0].last_reset_ts))
        return last, self._shift_state(plan)

    def _statement(self, work: Sequence[WritePlan]) -> str:
        """What HA holds, per statistic, as hour ranges: read now if HA answers, else the
        last read-back plus what was sent but never confirmed."""
        parts = []
        for plan in work:
            sid = plan.meta.statistic_id
            block = plan.hourly.rows
            fresh = not self._ws.closed
            try:
                if not fresh:
                    raise HAUnreachableError("connection_closed", "closed")
                mask, shift = self._state(plan)
            except HAError:
                fresh = False
                mask, shift = self._held.get(sid, (np.zeros(len(block), dtype=bool), None))
            sent = self._sent.get(sid, np.zeros(len(block), dtype=bool))
            if fresh:
                text = f"{sid}: {int(mask.sum()):,} of {len(block):,} hours written"
                if len(block):
                    text += f" [{hour_ranges(block.start_ts, mask)}]"
                if not mask.all():
                    text += f"; not written: [{hour_ranges(block.start_ts, ~mask)}]"
            else:
                unknown = sent & ~mask
                never = ~sent & ~mask
                text = (f"{sid} (HA does not answer now; of {len(block):,} hours): "
                        f"confirmed written by reading back: [{hour_ranges(block.start_ts, mask)}]")
                if unknown.any():
                    text += (f"; sent but not confirmed (HA may hold them or not): "
                             f"[{hour_ranges(block.start_ts, unknown)}]")
                if never.any():
                    text += f"; not written (never sent): [{hour_ranges(block.start_ts, never)}]"
            if shift is not None:
                text += {"applied": "; later rows shifted",
                         "pending": "; later rows NOT shifted (the sum steps there)"}.get(
                             shift, f"; {shift}")
            elif _expect_shift(plan) is not None and not fresh:
                text += "; whether the later rows were shifted is unknown"
            parts.append(text)
        return "; ".join(parts)

    def notify(self, message: str) -> None:
        """Tell the user what happens while resuming (stderr; replace to redirect)."""
        print(f"backdate: {message}", file=sys.stderr, flush=True)

    def _resume(self, work: Sequence[WritePlan], cause: HAError,
                progress: Callable[[int], None] | None) -> None:
        """Reconnect, settle, re-send, confirm; again if HA goes away again (at most
        `MAX_RESUMES` times); otherwise TargetError with the statement of what HA holds."""
        first_cause = cause
        for attempt in range(1, MAX_RESUMES + 1):
            lost = time.monotonic()
            self.notify(f"lost the connection to Home Assistant during the import ({cause}); "
                        f"reconnecting (resume {attempt} of at most {MAX_RESUMES})")
            try:
                self._reconnect(cause)
                self.notify(f"reconnected after {time.monotonic() - lost:.0f} s; waiting until "
                            "Home Assistant's rows stop changing")
                self._resume_once(work, progress)
                return
            except HAUnreachableError as err:
                if err.code == "unreachable":  # did not come back within RECONNECT_SECONDS
                    raise self._give_up(work, first_cause, err) from err
                cause = err  # lost again while resuming: try again
            except (HAError, TargetError) as err:
                raise self._give_up(work, first_cause, err) from err
        raise self._give_up(work, first_cause, TargetError(
            f"the connection was lost {MAX_RESUMES + 1} times; giving up"))

    def _give_up(self, work: Sequence[WritePlan], cause: HAError,
                 err: BaseException) -> TargetError:
        return TargetError(
            f"the connection to Home Assistant was lost during the import ({cause}); "
            f"resuming failed ({err}). Home Assistant now holds: {self._statement(work)}. "
            "Run the same import again once Home Assistant is up: it writes only what is "
            "missing")

    def _resume_once(self, work: Sequence[WritePlan],
                     progress: Callable[[int], None] | None) -> None:
        # Wait until nothing moves: jobs HA still had queued finish, lost ones stay lost.
        deadline = time.monotonic() + VERIFY_BASE_SECONDS + VERIFY_SECONDS_PER_ROW * sum(
            p.hourly.count for p in work)
        # Polled: recorder/info and two one-row reads per statistic (the last planned hour,
        # the first shifted row); the whole range is read once, when HA has settled.
        last_key: object = None
        since = time.monotonic()
        while True:
            probes = [self._probe(p) for p in work]
            if probes != last_key:
                last_key, since = probes, time.monotonic()
            backlog = (self._call("recorder/info") or {}).get("backlog") or 0
            done = all(last[0] and sh in (None, "applied") for last, sh in probes)
            if done or (time.monotonic() - since >= SETTLE_SECONDS and not backlog):
                break
            if time.monotonic() > deadline:
                raise TargetError("Home Assistant's rows kept changing")
            time.sleep(1.0)
        states = [self._state(p) for p in work]  # the one full read-back
        for plan, (mask, shift) in zip(work, states, strict=True):
            if shift not in (None, "applied", "pending"):
                raise TargetError(shift)
            missing = int((~mask).sum())
            self.notify(f"{plan.meta.statistic_id}: {len(mask) - missing:,} of {len(mask):,} "
                        f"hours held as planned; sending {missing:,} again"
                        + ("; shifting the later rows" if shift == "pending" else ""))
            self._send(plan, 0, progress, rows=~mask, shift=shift == "pending")
        for plan in work:
            self._confirm(plan)

    def _require_admin(self) -> None:
        if self._is_admin is None:
            user = self._call("auth/current_user") or {}
            self._is_admin = bool(user.get("is_admin"))
            self._user = user.get("name") or "?"
        if not self._is_admin:
            raise HAAuthError(
                "unauthorized",
                f"the token's user {self._user!r} is not an administrator; importing "
                "statistics needs an administrator's long-lived access token (nothing written)")

    @staticmethod
    def _shift(plan: WritePlan) -> tuple[float, float] | None:
        """(start, amount) of the one `adjust_sum_statistics` the plan needs, or None."""
        shifts = [(tp.shift_from, tp.shift) for tp in plan.tables
                  if tp.shift_from is not None and tp.shift != 0]
        if not shifts:
            return None
        amounts = {s for _, s in shifts}
        if len(amounts) > 1 and not all(math.isclose(a, shifts[0][1], rel_tol=1e-12)
                                        for a in amounts):
            raise RefusedError(
                f"{plan.meta.statistic_id}: the plan shifts the two tables by different amounts "
                f"({', '.join(f'{a:g}' for a in sorted(amounts))}); HA's adjust_sum_statistics "
                "moves both tables together")
        return min(s for s, _ in shifts), shifts[0][1]

    def _check_plan(self, plan: WritePlan) -> None:
        sid = plan.meta.statistic_id
        if plan.short_term.count:
            raise RefusedError(f"{sid}: the WebSocket API cannot write 5-minute rows "
                               f"({plan.short_term.count} planned)")
        starts = plan.hourly.rows.start_ts
        if starts.size:
            if (np.mod(starts, HOUR) != 0).any() or not np.isfinite(starts).all():
                raise RefusedError(f"{sid}: hourly rows off the UTC hour grid")
            if starts.size > 1 and not (np.diff(starts) > 0).all():
                raise RefusedError(f"{sid}: hourly rows not strictly increasing")
            if plan.meta.has_sum and (plan.hourly.rows.sum is None
                                      or np.isnan(plan.hourly.rows.sum).any()):
                raise RefusedError(f"{sid}: a sum statistic needs a sum in every row")
            if not plan.meta.is_external:
                limit = self._compiled_end(time.time())
                end = float(starts[-1]) + HOUR
                if end > limit:
                    raise RefusedError(
                        f"{sid}: rows up to {_human(end)} reach past the last hour Home "
                        f"Assistant has compiled ({_human(limit)}); plan again")
        shift = self._shift(plan)
        if shift is not None and starts.size and shift[0] <= float(starts[-1]):
            raise RefusedError(f"{sid}: the shift starts inside the written rows")

    def _check_seams(self, plan: WritePlan) -> None:
        """Refuse when rows the plan's seams rest on changed since it was made."""
        if not plan.metadata_exists:
            return
        sid = plan.meta.statistic_id
        for tp in plan.tables:
            planned = set(tp.rows.start_ts.tolist())
            for seam in (tp.seam_before, tp.seam_after_old):
                if seam is None or seam.start_ts in planned:
                    continue
                now = self._rows(tp.table, sid, seam.start_ts, seam.start_ts + tp.table.period,
                                 ["sum"])
                if not now or not _close(now[0].sum, seam.sum):
                    got = "no row" if not now else f"sum {now[0].sum!r}"
                    raise RefusedError(
                        f"{sid}: {tp.table.value} at {_human(seam.start_ts)} changed since the "
                        f"plan was made ({got}, planned on sum {seam.sum!r}); run backdate again")

    def _metadata(self, meta: StatisticMeta) -> dict[str, Any]:
        return import_metadata(meta, self.ha_version)

    @staticmethod
    def _stats(block: RowBlock) -> list[dict[str, Any]]:
        n = len(block)
        cols: list[tuple[str, list[Any]]] = []
        for name in ("state", "sum", "mean", "min", "max"):
            arr = block.column(name)
            if arr is not None and not np.isnan(arr).all():
                cols.append((name, [None if v != v else v for v in arr.tolist()]))
        reset = block.last_reset_ts
        if reset is not None and not np.isnan(reset).all():
            cols.append(("last_reset", [None if v != v else _iso(v) for v in reset.tolist()]))
        starts = [_iso(t) for t in block.start_ts.tolist()]
        out = []
        for i in range(n):
            row: dict[str, Any] = {"start": starts[i]}
            for name, values in cols:
                if values[i] is not None:
                    row[name] = values[i]
            out.append(row)
        return out

    def _send(self, plan: WritePlan, sent: int, progress: Callable[[int], None] | None, *,
              rows: np.ndarray | None = None, shift: bool = True) -> int:
        """Queue the rows (chunked; only those in the mask `rows`) and the shift in HA's
        recorder; returns rows sent so far."""
        metadata = self._metadata(plan.meta)
        stats = self._stats(plan.hourly.rows) if plan.hourly.count else []
        index = np.arange(len(stats))
        if rows is not None:
            index = index[rows]
            stats = [stats[i] for i in index.tolist()]
        sent_mask = self._sent.setdefault(plan.meta.statistic_id,
                                          np.zeros(len(plan.hourly.rows), dtype=bool))
        i = 0
        for chunk in import_chunks(metadata, stats):
            self._call("recorder/import_statistics", metadata=metadata, stats=chunk)
            sent_mask[index[i : i + len(chunk)]] = True
            i += len(chunk)
            sent += len(chunk)
            if progress is not None:
                progress(sent)
        planned_shift = self._shift(plan) if shift else None
        if planned_shift is not None:
            start, amount = planned_shift
            try:
                self._call("recorder/adjust_sum_statistics", statistic_id=plan.meta.statistic_id,
                           start_time=_iso(start), adjustment=amount,
                           adjustment_unit_of_measurement=plan.meta.unit_of_measurement)
            except HAUnreachableError:
                raise
            except HATimeoutError:
                # HA may have queued it all the same: `_confirm` reads the first shifted row
                # and says whether the shift happened, instead of guessing here.
                self.notify(f"{plan.meta.statistic_id}: Home Assistant did not answer the "
                            f"shift from {_human(start)} in time; reading back whether it "
                            "happened")
            except HAError as err:  # refused by HA: nothing was shifted
                raise TargetError(
                    f"{plan.meta.statistic_id}: the rows were sent, but Home Assistant refused "
                    f"to shift the rows from {_human(start)} by {amount:+g}: {err}; the sum "
                    "steps there. Run the same import again to close it") from err
        return sent

    # -- confirming --------------------------------------------------------------------------

    def _metadata_problem(self, meta: StatisticMeta) -> str | None:
        """What HA's metadata (`recorder/get_statistics_metadata`) holds other than planned:
        unit, has_sum, mean type, source, and the name of an external statistic (HA's own
        compile rewrites an entity statistic's name, so that one is not ours to check)."""
        items = [i for i in self._metadata_items([meta.statistic_id])
                 if i.get("statistic_id") == meta.statistic_id]
        if not items:
            return "HA reports no metadata for it"
        held = self._meta_from_item(items[0])
        checks = [("unit", held.unit_of_measurement, meta.unit_of_measurement),
                  ("has_sum", held.has_sum, bool(meta.has_sum)),
                  ("mean type", held.mean_type, MeanType(meta.mean_type)),
                  ("source", held.source, meta.source)]
        if meta.is_external:
            checks.append(("name", held.name, meta.name))
        wrong = [f"{what} {got!r}, planned {want!r}" for what, got, want in checks if got != want]
        return "; ".join(wrong) or None

    def _confirm(self, plan: WritePlan) -> None:
        """Poll until HA holds every planned row and the first shifted row has moved.

        Confirmed `CONFIRM_ROWS` hours at a time while HA still writes: HA runs the jobs in
        the order they were sent, so a window's last hour appearing (a one-row read, polled
        every 0.25 s at most) means its job ran; then the window is read back whole and every
        value compared. When HA writes the last row only the last window is left to read,
        not all of them (bench/ws_import.py measures this against HA's own commit time).
        """
        sid = plan.meta.statistic_id
        block = plan.hourly.rows
        n = len(block)
        expect = _expect_shift(plan)
        limit = VERIFY_BASE_SECONDS + VERIFY_SECONDS_PER_ROW * n
        deadline = time.monotonic() + limit
        types = _planned_types(block)  # only what is compared: less for HA to read and send
        held = np.zeros(n, dtype=bool)
        done = 0
        delay = 0.05
        while True:
            problem: str | None = None
            slow = False
            while problem is None and done < n:
                hi = min(done + CONFIRM_ROWS, n)
                last = float(block.start_ts[hi - 1])
                problem = _compare(block, self._rows(Table.HOURLY, sid, last, last + HOUR,
                                                     types), hi - 1, hi)
                if problem is None:
                    rows = self._rows(Table.HOURLY, sid, float(block.start_ts[done]),
                                      last + HOUR, types,
                                      timeout=max(self.timeout, (hi - done) / 2000))
                    problem = _compare(block, rows, done, hi)
                    slow = problem is not None  # tail there, a row not: a job HA failed?
                if problem is None:
                    held[done:hi] = True
                    self._held[sid] = (held.copy(), None)  # the shift: not known yet
                    done, delay = hi, 0.05
            if problem is None and expect is not None:  # the shift: the last job queued
                table, start, old, want = expect
                state = self._shift_state(plan)
                if state == "pending":
                    problem = (f"the later rows are not shifted: {table.value} at "
                               f"{_human(start)} still reads sum={old!r} (the sum steps "
                               f"there), expected {want!r} after the shift")
                elif state != "applied":
                    problem = f"{state}"
            if problem is None:
                self._held[sid] = (held, None if expect is None else "applied")
                wrong = self._metadata_problem(plan.meta)
                if wrong is not None:  # final once the rows are there: no use waiting
                    raise VerificationError(
                        f"{sid}: Home Assistant holds every planned row, but its metadata "
                        f"differs: {wrong}")
                return
            if time.monotonic() > deadline:
                raise VerificationError(
                    f"{sid}: Home Assistant does not hold what was written: {problem} "
                    f"(checked by reading back for {limit:.0f} s; see HA's log for recorder "
                    "errors)")
            time.sleep(delay)
            delay = 2.0 if slow else min(delay * 2, 0.25)


def _expect_shift(plan: WritePlan) -> tuple[Table, float, float, float] | None:
    """(table, start, old sum, sum after the shift) of the first row the shift moves."""
    for tp in plan.tables:
        old = tp.seam_after_old
        if tp.shift_from is not None and tp.shift != 0 and old is not None \
                and old.sum is not None:
            return tp.table, old.start_ts, old.sum, old.sum + tp.shift
    return None


def _planned_types(block: RowBlock) -> list[str]:
    """The `statistics_during_period` types a read-back of `block` compares."""
    cols = [c for c in ("state", "sum", "mean", "min", "max") if block.column(c) is not None]
    if _has_reset(block):
        cols.append("last_reset")
    return cols or ROW_TYPES


def _has_reset(block: RowBlock) -> bool:
    reset = block.last_reset_ts
    return reset is not None and not np.isnan(reset).all()


def _resets(block: RowBlock, first: int, stop: int) -> list[float | None] | None:
    """Planned last_reset per row of [first, stop) (None: no reset in that row), or None
    when the plan sends no last_reset at all."""
    if not _has_reset(block):
        return None
    return [None if v != v else v for v in block.last_reset_ts[first:stop].tolist()]


def _held_mask(block: RowBlock, rows: list[StatRow]) -> np.ndarray:
    """Which rows of `block` HA holds as planned (every column equal), given HA's rows."""
    have = {r.start_ts: r for r in rows}
    cols = [c for c in ("state", "sum", "mean", "min", "max") if block.column(c) is not None]
    values = {c: block.column(c).tolist() for c in cols}
    resets = _resets(block, 0, len(block))
    mask = np.zeros(len(block), dtype=bool)
    for i, t in enumerate(block.start_ts.tolist()):
        row = have.get(t)
        mask[i] = row is not None and all(
            _close(getattr(row, c), None if values[c][i] != values[c][i] else values[c][i])
            for c in cols) and (resets is None or _same_reset(row.last_reset_ts, resets[i]))
    return mask


def _compare(block: RowBlock, rows: list[StatRow], first: int = 0,
             stop: int | None = None) -> str | None:
    """The first planned hour of rows [first, stop) that HA does not hold as planned, as
    text; None when all match."""
    stop = len(block) if stop is None else stop
    have = {r.start_ts: r for r in rows}
    columns = [c for c in ("state", "sum", "mean", "min", "max") if block.column(c) is not None]
    starts = block.start_ts[first:stop].tolist()
    values = {c: block.column(c)[first:stop].tolist() for c in columns}
    resets = _resets(block, first, stop)
    for i, t in enumerate(starts):
        row = have.get(t)
        if row is None:
            return f"the hour {_human(t)} is missing"
        for c in columns:
            want = values[c][i]
            want = None if want != want else want
            got = getattr(row, c)
            if not _close(got, want):
                return f"the hour {_human(t)} reads {c}={got!r}, planned {want!r}"
        if resets is not None and not _same_reset(row.last_reset_ts, resets[i]):
            return (f"the hour {_human(t)} reads last_reset="
                    f"{'none' if row.last_reset_ts is None else _iso(row.last_reset_ts)}, "
                    f"planned {'none' if resets[i] is None else _iso(resets[i])}")
    return None


def open_websocket(url: str, token: str | None, *, timeout: float = 30.0) -> HAWebSocketTarget:
    """Connect to HA at `url` with `token`; errors are exit 3 (TargetError) except no token."""
    from backdate.errors import UsageError

    if not token:
        raise UsageError(f"{mask_url(url)}: a Home Assistant target needs a long-lived access "
                         "token: set HA_TOKEN (create one in your HA profile, Security tab)")
    return HAWebSocketTarget(url, token.strip(), timeout=timeout)


def import_metadata(meta: StatisticMeta, ha_version: str) -> dict[str, Any]:
    """The `metadata` of `recorder/import_statistics` that this HA version accepts (§4):
    `has_mean` up to 2025.10, `mean_type` and `unit_class` from 2025.11."""
    out: dict[str, Any] = {
        "has_sum": bool(meta.has_sum),
        "name": meta.name,
        "source": meta.source,
        "statistic_id": meta.statistic_id,
        "unit_of_measurement": meta.unit_of_measurement,
    }
    if parse_version(ha_version) >= (2025, 11):
        out["mean_type"] = int(meta.mean_type)
        out["unit_class"] = meta.unit_class or units.unit_class(meta.unit_of_measurement)
    else:
        if meta.mean_type == MeanType.CIRCULAR:
            raise RefusedError(f"{meta.statistic_id}: circular means need Home Assistant "
                               f"2025.4 or newer (this is {ha_version})")
        out["has_mean"] = meta.mean_type == MeanType.ARITHMETIC
    return out


def import_chunks(metadata: dict[str, Any], stats: list[dict[str, Any]],
                  rows: int = CHUNK_ROWS, limit: int = CHUNK_BYTES) -> list[list[dict[str, Any]]]:
    """`stats` split into consecutive chunks of at most `rows` rows whose whole
    `import_statistics` message stays under `limit` bytes (HA drops the connection on a
    message over 4 MiB)."""
    chunks = []
    i = 0
    while i < len(stats):
        chunk = stats[i : i + rows]
        while len(chunk) > 1 and message_size(
                {"type": "recorder/import_statistics", "metadata": metadata,
                 "stats": chunk}) > limit:
            chunk = chunk[: len(chunk) // 2]
        chunks.append(chunk)
        i += len(chunk)
    return chunks


def hour_ranges(starts: np.ndarray, mask: np.ndarray, limit: int = 6) -> str:
    """The hours where `mask` holds, as UTC ranges ('2024-01-01 00:00 to 2024-03-01 23:00 UTC
    (1,440 h)'); at most `limit` ranges, then how many more."""
    idx = np.flatnonzero(mask)
    if not idx.size:
        return "none"
    breaks = np.flatnonzero(np.diff(idx) != 1)
    firsts = np.concatenate(([idx[0]], idx[breaks + 1]))
    lasts = np.concatenate((idx[breaks], [idx[-1]]))
    parts = []
    for a, b in list(zip(firsts.tolist(), lasts.tolist(), strict=True))[:limit]:
        lo, hi = float(starts[a]), float(starts[b])
        text = _human(lo) if a == b else f"{_human(lo)[:-4]} to {_human(hi)}"
        parts.append(f"{text} ({b - a + 1:,} h)")
    if len(firsts) > limit:
        parts.append(f"and {len(firsts) - limit} more ranges ({int(mask.sum()):,} h in all)")
    return ", ".join(parts)
