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
  range back until HA holds exactly what was planned, and only then reports success; on timeout
  it raises `VerificationError` naming the first hour that differs.
* When the connection is lost (HA restarted), it reconnects once (with backoff), waits until
  HA's rows stop changing, sends only what HA does not hold (and the shift if it did not
  happen), and confirms; otherwise it fails stating, per statistic, what HA holds.
* Entity statistics: nothing in the open hour, nor in the hour before it during the first
  five minutes of an hour (HA may not have rolled it up yet), is written.
* Unknown over this API (without reading every row): row counts for `inspect` (-1) and the
  number of later rows a shift moves (`after_count` 0).

Version awareness: `get_config`'s version decides the metadata fields sent (`has_mean` up to
2025.10; `mean_type` and `unit_class` from 2025.11; see ha-recorder.md §4).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from backdate.engine import units
from backdate.errors import RefusedError, TargetError, VerificationError
from backdate.hass.client import HAAuthError, HAError, HAUnreachableError, SyncHAClient
from backdate.models import HOUR, MeanType, RowBlock, StatisticMeta, StatRow, Table, WritePlan
from backdate.targets.base import Neighbourhood, StatisticSummary, TargetInfo

DAY = 86400.0
# Windows searched backwards (or forwards) for the nearest row outside [start, end).
SEARCH_WINDOWS = (DAY, 30 * DAY, 366 * DAY, 3653 * DAY, 36525 * DAY)
# Rows per `import_statistics` message: ~100 bytes each as JSON, so ~0.5 MB per message, far
# under HA's 4 MiB limit even with mean/min/max/last_reset.
CHUNK_ROWS = 5000
MAX_MESSAGE_BYTES = 2 * 1024 * 1024
# HA 2024.3 commits about 1,300 imported rows/s (real-home-assistant.md); allow 5x slower.
VERIFY_BASE_SECONDS = 30.0
VERIFY_SECONDS_PER_ROW = 1 / 250
# Entity statistics: HA rolls an hour up at ~HH:00:10; stay clear of an hour it has not yet
# compiled for this long after the hour ends.
COMPILE_GRACE = 300.0
REL_TOL = 1e-9
# After a lost connection (HA restarted, network): how long to try to reconnect, and how long
# HA's rows must stay unchanged (with an empty recorder backlog) before backdate treats jobs
# that did not land as lost and sends them again.
RECONNECT_SECONDS = 180.0
SETTLE_SECONDS = 20.0
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
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-9)


class HAWebSocketTarget:
    """`StatisticsTarget` over HA's WebSocket API (see the module docstring)."""

    def __init__(self, url: str, token: str, *, timeout: float = 30.0,
                 client: SyncHAClient | None = None):
        self.url = url
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
        """Last row before `start`, rows in [start, end), first row at/after `end`.

        `after_count` is not known over this API without reading every later row: 0.
        """
        table = Table(table)
        if self.get_metadata(statistic_id) is None:
            return Neighbourhood(None, [], None)
        return Neighbourhood(
            before=self._last_before(table, statistic_id, start),
            inside=self._rows(table, statistic_id, start, end),
            after=self._first_after(table, statistic_id, end),
        )

    def read_rows(self, table: Table, statistic_id: str, start: float | None = None,
                  end: float | None = None) -> list[StatRow]:
        if self.get_metadata(statistic_id) is None:
            return []
        return self._rows(Table(table), statistic_id, 0.0 if start is None else start, end)

    def list_statistics(self) -> list[StatisticSummary]:
        """Every statistic HA reports (`recorder/list_statistic_ids`). Row counts and ranges
        are not available over this API without reading every row: counts are -1 (unknown)
        and first/last are None."""
        items = self._call("recorder/list_statistic_ids") or []
        out = []
        for item in sorted(items, key=lambda i: i["statistic_id"]):
            out.append(StatisticSummary(meta=self._meta_from_item(item), hourly_rows=-1,
                                        short_term_rows=-1, first_start=None, last_start=None))
        return out

    # -- writing -----------------------------------------------------------------------------

    def apply(self, plan: WritePlan, *, progress: Callable[[int], None] | None = None) -> None:
        self.apply_all([plan], progress=progress)

    def apply_all(self, plans: Sequence[WritePlan], *,
                  progress: Callable[[int], None] | None = None) -> None:
        """Check every plan, send every row and shift, then read back until HA holds them.

        Not one transaction (the WebSocket API has none). When the connection is lost (HA
        restarted), backdate reconnects once, waits until HA's rows stop changing, sends again
        only what HA does not hold (and the shift, if it did not happen), and confirms; if that
        fails too, the error states per statistic how many hours HA holds as planned, the first
        one it does not, and whether the later rows were shifted.
        """
        work = [p for p in plans if p.hourly.count or self._shift(p) is not None]
        if not work:
            return
        for plan in work:
            self._check_plan(plan)
        self._require_admin()
        for plan in work:
            self._check_seams(plan)
        try:
            sent = 0
            for plan in work:
                sent = self._send(plan, sent, progress)
            for plan in work:
                self._confirm(plan)
        except HAUnreachableError as err:
            self._resume(work, err, progress)

    # -- resuming after a lost connection ----------------------------------------------------

    def _reconnect(self, cause: HAError) -> None:
        """A new connection to a RUNNING HA, with backoff; TargetError if it does not come."""
        with contextlib.suppress(Exception):
            self._ws.close()
        deadline = time.monotonic() + RECONNECT_SECONDS
        delay = 1.0
        last = str(cause)
        while time.monotonic() < deadline:
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            try:
                client = SyncHAClient(self.url, self._token, min(self.timeout, 10.0))
            except HAAuthError:
                raise
            except HAError as err:
                last = str(err)
                continue
            try:
                if (client.call("get_config") or {}).get("state") == "RUNNING":
                    self._ws = client
                    return
                last = "Home Assistant is still starting"
            except HAError as err:
                last = str(err)
            client.close()
        raise TargetError(
            f"the connection to Home Assistant was lost during the import ({cause}) and it did "
            f"not come back within {RECONNECT_SECONDS:.0f} s ({last}): HA may hold part of the "
            "rows; run `backdate plan` once it is up to see what it holds")

    def _state(self, plan: WritePlan) -> tuple[np.ndarray, str | None]:
        """Which planned rows HA holds as planned (mask), and the shift: None (none planned),
        'applied', 'pending' (not yet), or a description of something else."""
        sid = plan.meta.statistic_id
        block = plan.hourly.rows
        mask = np.zeros(len(block), dtype=bool)
        if len(block):
            rows = self._rows(Table.HOURLY, sid, float(block.start_ts[0]),
                              float(block.start_ts[-1]) + HOUR,
                              timeout=max(self.timeout, len(block) / 2000))
            have = {r.start_ts: r for r in rows}
            cols = [c for c in ("state", "sum", "mean", "min", "max")
                    if block.column(c) is not None]
            values = {c: block.column(c).tolist() for c in cols}
            for i, t in enumerate(block.start_ts.tolist()):
                row = have.get(t)
                mask[i] = row is not None and all(
                    _close(getattr(row, c), None if values[c][i] != values[c][i] else values[c][i])
                    for c in cols)
        expect = _expect_shift(plan)
        if expect is None:
            return mask, None
        table, start, old, want = expect
        got = self._rows(table, sid, start, start + table.period, ["sum"])
        if got and _close(got[0].sum, want):
            return mask, "applied"
        if got and _close(got[0].sum, old):
            return mask, "pending"
        return mask, (f"{table.value} at {_human(start)} reads "
                      f"{'no row' if not got else f'sum={got[0].sum!r}'}, neither {old!r} "
                      f"(before the shift) nor {want!r} (after it)")

    def _statement(self, work: Sequence[WritePlan]) -> str:
        """What HA holds, per statistic, for an error message."""
        parts = []
        for plan in work:
            try:
                mask, shift = self._state(plan)
            except HAError:
                parts.append(f"{plan.meta.statistic_id}: unknown (HA does not answer)")
                continue
            block = plan.hourly.rows
            text = f"{plan.meta.statistic_id}: {int(mask.sum())} of {len(block)} hours written"
            if not mask.all():
                first = float(block.start_ts[int(np.flatnonzero(~mask)[0])])
                text += f", from {_human(first)} on not (all or in part)"
            if shift is not None:
                text += {"applied": "; later rows shifted",
                         "pending": "; later rows NOT shifted (the sum steps there)"}.get(
                             shift, f"; {shift}")
            parts.append(text)
        return "; ".join(parts)

    def notify(self, message: str) -> None:
        """Tell the user what happens while resuming (stderr; replace to redirect)."""
        print(f"backdate: {message}", file=sys.stderr, flush=True)

    def _resume(self, work: Sequence[WritePlan], cause: HAError,
                progress: Callable[[int], None] | None) -> None:
        lost = time.monotonic()
        self.notify(f"lost the connection to Home Assistant during the import ({cause}); "
                    "reconnecting")
        self._reconnect(cause)
        self.notify(f"reconnected after {time.monotonic() - lost:.0f} s; waiting until Home "
                    "Assistant's rows stop changing")
        try:
            # Wait until nothing moves: jobs HA still had queued finish, lost ones stay lost.
            deadline = time.monotonic() + VERIFY_BASE_SECONDS + VERIFY_SECONDS_PER_ROW * sum(
                p.hourly.count for p in work)
            last_key, since = None, time.monotonic()
            while True:
                states = [self._state(p) for p in work]
                key = tuple((int(m.sum()), sh) for m, sh in states)
                if key != last_key:
                    last_key, since = key, time.monotonic()
                backlog = (self._call("recorder/info") or {}).get("backlog") or 0
                done = all(m.all() and sh in (None, "applied") for m, sh in states)
                if done or (time.monotonic() - since >= SETTLE_SECONDS and not backlog):
                    break
                if time.monotonic() > deadline:
                    raise TargetError("Home Assistant's rows kept changing")
                time.sleep(1.0)
            for plan, (mask, shift) in zip(work, states, strict=True):
                if shift not in (None, "applied", "pending"):
                    raise TargetError(shift)
                missing = int((~mask).sum())
                self.notify(f"{plan.meta.statistic_id}: {len(mask) - missing} of {len(mask)} "
                            f"hours held as planned; sending {missing} again"
                            + ("; shifting the later rows" if shift == "pending" else ""))
                self._send(plan, 0, progress, rows=~mask, shift=shift == "pending")
            for plan in work:
                self._confirm(plan)
        except (HAError, TargetError) as err:
            raise TargetError(
                f"the connection to Home Assistant was lost during the import ({cause}); "
                f"resuming after reconnecting failed ({err}). Home Assistant now holds: "
                f"{self._statement(work)}") from err

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
        out: dict[str, Any] = {
            "has_sum": bool(meta.has_sum),
            "name": meta.name,
            "source": meta.source,
            "statistic_id": meta.statistic_id,
            "unit_of_measurement": meta.unit_of_measurement,
        }
        if self.sends_mean_type:
            out["mean_type"] = int(meta.mean_type)
            out["unit_class"] = meta.unit_class or units.unit_class(meta.unit_of_measurement)
        else:
            if meta.mean_type == MeanType.CIRCULAR:
                raise RefusedError(f"{meta.statistic_id}: circular means need Home Assistant "
                                   f"2025.4 or newer (this is {self.ha_version})")
            out["has_mean"] = meta.mean_type == MeanType.ARITHMETIC
        return out

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
        if rows is not None:
            stats = [row for row, keep in zip(stats, rows.tolist(), strict=True) if keep]
        i = 0
        while i < len(stats):
            chunk = stats[i : i + CHUNK_ROWS]
            while len(chunk) > 1 and len(json.dumps(chunk)) > MAX_MESSAGE_BYTES:
                chunk = chunk[: len(chunk) // 2]
            self._call("recorder/import_statistics", metadata=metadata, stats=chunk)
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
            except HAError as err:
                raise TargetError(
                    f"{plan.meta.statistic_id}: the rows were sent, but shifting the rows from "
                    f"{_human(start)} by {amount:+g} failed: {err}; the sum now steps there. "
                    "Run the same import again to close it") from err
        return sent

    # -- confirming --------------------------------------------------------------------------

    def _confirm(self, plan: WritePlan) -> None:
        """Poll until HA holds every planned row and the first shifted row has moved."""
        sid = plan.meta.statistic_id
        block = plan.hourly.rows
        expect = _expect_shift(plan)
        expect_shift = None if expect is None else (expect[0], expect[1], expect[3])
        deadline = time.monotonic() + VERIFY_BASE_SECONDS + VERIFY_SECONDS_PER_ROW * len(block)
        delay = 0.05
        problem = "not checked"
        while True:
            problem = self._difference(sid, block, expect_shift)
            if problem is None:
                return
            if time.monotonic() > deadline:
                raise VerificationError(
                    f"{sid}: Home Assistant does not hold what was written: {problem} "
                    "(checked by reading back for "
                    f"{VERIFY_BASE_SECONDS + VERIFY_SECONDS_PER_ROW * len(block):.0f} s; see HA's "
                    "log for recorder errors)")
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def _difference(self, sid: str, block: RowBlock,
                    expect_shift: tuple[Table, float, float] | None) -> str | None:
        """None when HA holds the block and the shifted row; else the first difference."""
        if expect_shift is not None:  # the last job queued: cheap, and proves order
            table, start, want = expect_shift
            rows = self._rows(table, sid, start, start + table.period, ["sum"])
            if not rows or not _close(rows[0].sum, want):
                got = "no row" if not rows else f"sum={rows[0].sum!r}"
                return (f"{table.value} at {_human(start)} after the window reads {got}, "
                        f"expected {want!r} after the shift")
        if not len(block):
            return None
        last = float(block.start_ts[-1])
        tail = self._rows(Table.HOURLY, sid, last, last + HOUR)
        problem = _compare(block, tail, first=len(block) - 1)
        if problem is not None:
            return problem
        rows = self._rows(Table.HOURLY, sid, float(block.start_ts[0]), last + HOUR,
                          timeout=max(self.timeout, len(block) / 2000))
        return _compare(block, rows)


def _expect_shift(plan: WritePlan) -> tuple[Table, float, float, float] | None:
    """(table, start, old sum, sum after the shift) of the first row the shift moves."""
    for tp in plan.tables:
        old = tp.seam_after_old
        if tp.shift_from is not None and tp.shift != 0 and old is not None \
                and old.sum is not None:
            return tp.table, old.start_ts, old.sum, old.sum + tp.shift
    return None


def _compare(block: RowBlock, rows: list[StatRow], first: int = 0) -> str | None:
    """The first planned hour (from row `first`) HA does not hold as planned, as text; None
    when all match."""
    have = {r.start_ts: r for r in rows}
    columns = [c for c in ("state", "sum", "mean", "min", "max") if block.column(c) is not None]
    starts = block.start_ts.tolist()
    values = {c: block.column(c).tolist() for c in columns}
    for i in range(first, len(starts)):
        t = starts[i]
        row = have.get(t)
        if row is None:
            return f"the hour {_human(t)} is missing"
        for c in columns:
            want = values[c][i]
            want = None if want != want else want
            got = getattr(row, c)
            if not _close(got, want):
                return f"the hour {_human(t)} reads {c}={got!r}, planned {want!r}"
    return None


def open_websocket(url: str, token: str | None, *, timeout: float = 30.0) -> HAWebSocketTarget:
    """Connect to HA at `url` with `token`; errors are exit 3 (TargetError) except no token."""
    from backdate.errors import UsageError

    if not token:
        raise UsageError(f"{url}: a Home Assistant target needs a long-lived access token: "
                         "set HA_TOKEN (create one in your HA profile, Security tab)")
    return HAWebSocketTarget(url, token.strip(), timeout=timeout)
