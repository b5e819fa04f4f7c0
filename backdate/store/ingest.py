"""The ingest endpoint's state: streams with their high-water marks, events and gaps.

One batch is one transaction. Its streams are locked first (in key order, so concurrent
batches cannot deadlock each other; PostgreSQL `SELECT … FOR UPDATE`, SQLite BEGIN IMMEDIATE),
so any number of processes agree on high-water marks and gaps; duplicates are kept out by the
unique indexes as well. The answer is built inside the transaction and returned only after
the commit: an acknowledged event is a stored event.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from backdate.domain.delivery import (
    LOST,
    MAX_SEQUENCE,
    OPEN,
    RESOLVED,
    Batch,
    StreamKey,
    WireEvent,
    count,
    gap_answer,
    merge,
    missing_in,
    subtract,
    to_ranges,
)
from backdate.store.db import is_sqlite
from backdate.store.schema import ingest_events, ingest_streams, ingestion_gaps

MAX_GAPS_ANSWERED = 100
_INSERT_EVENTS = ("INSERT INTO ingest_events (stream_id, seq, counter_reset, digest, event_type, "
                  "timestamp, received_at, payload) VALUES ({})")
RETRIES = 8


@dataclass(slots=True)
class BatchResult:
    accepted: int = 0
    duplicates: int = 0
    gaps: list[dict[str, Any]] = field(default_factory=list)
    counter_resets: list[dict[str, Any]] = field(default_factory=list)
    lost_recorded: int = 0

    def answer(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": True, "accepted": self.accepted,
                               "duplicates": self.duplicates, "gaps": self.gaps}
        if self.counter_resets:
            out["counter_resets"] = self.counter_resets
        if self.lost_recorded:
            out["lost_recorded"] = self.lost_recorded
        return out


@dataclass(slots=True)
class _Stream:
    id: int
    key: StreamKey
    floor: int | None
    hwm: int | None
    events: int
    resets: int
    fresh: bool  # had no numbered event before this batch
    touched: bool = False


@dataclass(slots=True, eq=False)
class _Slot:
    batch: Batch
    result: BatchResult | None = None
    error: BaseException | None = None
    done: bool = False


def _retryable(err: DBAPIError) -> bool:
    code = getattr(err.orig, "sqlstate", None) or getattr(err.orig, "pgcode", None)
    return code in ("40P01", "40001")


class IngestStore:
    """Applies batches and answers questions about streams and gaps."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._insert = sqlite.insert if is_sqlite(engine) else postgresql.insert
        # SQLite has one writer: threads of this process queue here instead of polling the
        # file lock (other processes still wait on BEGIN IMMEDIATE).
        self._lock: Any = threading.Lock() if is_sqlite(engine) else nullcontext()
        self._queue_lock = threading.Lock()
        self._queue: list[_Slot] = []
        self._ids: dict[StreamKey, int] = {}

    # ------------------------------------------------------------------ the batch
    def apply(self, batch: Batch, now: float | None = None) -> BatchResult:
        if is_sqlite(self.engine):
            return self._apply_grouped(batch, now)
        for attempt in range(RETRIES):
            try:
                with self.engine.begin() as conn:
                    return self._apply(conn, batch, time.time() if now is None else now)
            except DBAPIError as err:
                if attempt + 1 < RETRIES and _retryable(err):
                    time.sleep(0.01 * (attempt + 1))
                    continue
                raise
        raise AssertionError("unreachable")

    def _apply_grouped(self, batch: Batch, now: float | None) -> BatchResult:
        """Group commit on SQLite: the thread that gets the write lock applies every batch
        queued meanwhile in one transaction (a savepoint each, so one bad batch fails
        alone) and one fsync; each caller gets its answer only after that commit."""
        slot = _Slot(batch)
        with self._queue_lock:
            self._queue.append(slot)
        with self._lock:
            if not slot.done:
                with self._queue_lock:
                    group, self._queue = self._queue, []
                at = time.time() if now is None else now
                try:
                    with self.engine.begin() as conn:
                        for item in group:
                            savepoint = conn.begin_nested()
                            try:
                                item.result = self._apply(conn, item.batch, at)
                                savepoint.commit()
                            except Exception as err:  # noqa: BLE001 - handed to its caller
                                savepoint.rollback()
                                item.error = err
                except Exception as err:  # noqa: BLE001 - the commit failed: all failed
                    for item in group:
                        item.result, item.error = None, err
                for item in group:
                    item.done = True
        if slot.error is not None:
            raise slot.error
        assert slot.result is not None
        return slot.result

    def _lock_streams(self, conn: Connection, keys: list[StreamKey],
                      now: float) -> dict[StreamKey, _Stream]:
        keys = sorted(set(keys), key=lambda k: (k.device_id, k.source_vendor, k.epoch))
        out = self._select_streams(conn, keys)
        missing = [k for k in keys if k not in out]
        if not missing:
            return out
        rows = [{"device_id": k.device_id, "source_vendor": k.source_vendor, "epoch": k.epoch,
                 "first_seen": now, "last_seen": now} for k in missing]
        stmt = self._insert(ingest_streams).on_conflict_do_nothing(
            index_elements=["device_id", "source_vendor", "epoch"])
        for i in range(0, len(rows), 200):
            conn.execute(stmt, rows[i:i + 200])
        return self._select_streams(conn, keys)

    def _select_streams(self, conn: Connection, keys: list[StreamKey],
                        ) -> dict[StreamKey, _Stream]:
        """The streams' rows, locked in key order (PostgreSQL; SQLite holds the write lock
        already)."""
        cols = ingest_streams.c
        known = [self._ids[k] for k in keys if k in self._ids]
        unknown = [(k.device_id, k.source_vendor, k.epoch) for k in keys if k not in self._ids]
        # A stream's id never changes, so known streams are found by primary key.
        where = []
        if known:
            where.append(cols.id.in_(known))
        if unknown:
            where.append(tuple_(cols.device_id, cols.source_vendor, cols.epoch).in_(unknown))
        query = (select(cols.id, cols.device_id, cols.source_vendor, cols.epoch, cols.floor_seq,
                        cols.hwm, cols.events, cols.resets)
                 .where(or_(*where))
                 .order_by(cols.device_id, cols.source_vendor, cols.epoch))
        if not is_sqlite(self.engine):
            query = query.with_for_update()
        out = {}
        for r in conn.execute(query):
            key = StreamKey(r.device_id, r.source_vendor, r.epoch)
            out[key] = _Stream(r.id, key, r.floor_seq, r.hwm, r.events, r.resets,
                               fresh=r.hwm is None)
            if len(self._ids) < 100_000:
                self._ids[key] = r.id
        return out

    def _apply(self, conn: Connection, batch: Batch, now: float) -> BatchResult:
        result = BatchResult()
        keys = [e.stream for e in batch.events] + [lost.stream for lost in batch.lost]
        streams = self._lock_streams(conn, keys, now)
        by_stream: dict[StreamKey, list[WireEvent]] = defaultdict(list)
        for e in batch.events:
            by_stream[e.stream].append(e)

        # What is already stored for numbers at or below each high-water mark.
        existing: dict[tuple[int, int], str] = {}
        resets_seen: set[tuple[int, int, str]] = set()
        probe = [(streams[k].id, e.seq) for k, evs in by_stream.items() for e in evs
                 if e.seq is not None and streams[k].hwm is not None
                 and e.seq <= streams[k].hwm]
        ev = ingest_events.c
        for i in range(0, len(probe), 500):
            part = probe[i:i + 500]
            for r in conn.execute(select(ev.stream_id, ev.seq, ev.digest, ev.counter_reset)
                                  .where(tuple_(ev.stream_id, ev.seq).in_(part))):
                if r.counter_reset:
                    resets_seen.add((r.stream_id, r.seq, r.digest))
                else:
                    existing[(r.stream_id, r.seq)] = r.digest

        rows: list[dict[str, Any]] = []
        new_gaps: list[tuple[_Stream, int, int]] = []
        fills: dict[int, list[int]] = defaultdict(list)
        reset_numbers: dict[StreamKey, list[int]] = defaultdict(list)
        for key, events in by_stream.items():
            s = streams[key]
            s.touched = True
            for e in events:
                row = {"stream_id": s.id, "seq": e.seq, "counter_reset": False,
                       "digest": e.digest, "event_type": e.event_type,
                       "timestamp": e.timestamp, "received_at": now, "payload": e.raw}
                if e.seq is None:
                    rows.append(row)
                    continue
                seq = e.seq
                held = existing.get((s.id, seq))
                below_floor = s.floor is not None and seq < s.floor and held is None
                # Below the first number: a sender with epochs numbers from its start, so
                # that is a late (overtaken) event; without epochs (the seed's clients) it is
                # the counter going back.
                if held is not None or (below_floor and s.key.epoch == 0):
                    if held == e.digest:
                        result.duplicates += 1
                        continue
                    # The same number with other content, or a number below the first one:
                    # the sender's counter went back without a new epoch. Kept, and flagged.
                    mark = (s.id, seq, e.digest)
                    if mark in resets_seen:
                        result.duplicates += 1
                        continue
                    resets_seen.add(mark)
                    row["counter_reset"] = True
                    rows.append(row)
                    s.resets += 1
                    reset_numbers[key].append(seq)
                    continue
                existing[(s.id, seq)] = e.digest
                rows.append(row)
                if s.hwm is None:
                    s.floor = s.hwm = seq
                elif seq > s.hwm:
                    if seq > s.hwm + 1:
                        new_gaps.append((s, s.hwm + 1, seq - 1))
                    s.hwm = seq
                elif s.floor is not None and seq < s.floor:
                    if seq + 1 < s.floor:
                        new_gaps.append((s, seq + 1, s.floor - 1))
                    s.floor = seq
                else:
                    fills[s.id].append(seq)
        if rows:
            # The driver's own executemany with positional rows: the hot path of a batch.
            mark = "?" if is_sqlite(self.engine) else "%s"
            conn.exec_driver_sql(_INSERT_EVENTS.format(",".join([mark] * 8)), [
                (r["stream_id"], r["seq"], r["counter_reset"], r["digest"], r["event_type"],
                 r["timestamp"], r["received_at"], r["payload"]) for r in rows])
        result.accepted = len(rows)
        added: dict[int, int] = defaultdict(int)
        for r in rows:
            added[r["stream_id"]] += 1
        for s in streams.values():
            s.events += added[s.id]

        gp = ingestion_gaps.c
        if new_gaps:
            # A late request of an older epoch opens no gap that nobody can fill any more: a
            # newer epoch of the same device and vendor means that sender is gone.
            st = ingest_streams.c
            newest: dict[tuple[str, str], int] = {}
            for s, _a, _b in new_gaps:
                pair = (s.key.device_id, s.key.source_vendor)
                if pair not in newest:
                    newest[pair] = conn.execute(select(func.max(st.epoch)).where(
                        st.device_id == pair[0], st.source_vendor == pair[1])).scalar() or 0
            conn.execute(insert(ingestion_gaps), [
                {"stream_id": s.id, "device_id": s.key.device_id,
                 "source_vendor": s.key.source_vendor, "epoch": s.key.epoch, "first_seq": a,
                 "last_seq": b, "missing": b - a + 1, "detected_at": now,
                 **({"status": OPEN, "reason": None, "resolved_at": None}
                    if newest[(s.key.device_id, s.key.source_vendor)] <= s.key.epoch else
                    {"status": LOST, "resolved_at": now, "reason": "superseded by epoch "
                     f"{newest[(s.key.device_id, s.key.source_vendor)]}"})}
                for s, a, b in new_gaps])
        if fills:
            self._fill(conn, fills, now)
        for lost in batch.lost:
            result.lost_recorded += self._record_lost(conn, streams[lost.stream],
                                                      list(lost.ranges), now)
        # A new epoch fences the older ones: their open gaps can never be filled any more.
        for s in streams.values():
            if s.fresh and s.hwm is not None:
                conn.execute(update(ingestion_gaps).where(
                    gp.device_id == s.key.device_id, gp.source_vendor == s.key.source_vendor,
                    gp.epoch < s.key.epoch, gp.status == OPEN).values(
                    status=LOST, reason=f"superseded by epoch {s.key.epoch}", resolved_at=now))
        conn.execute(update(ingest_streams).where(ingest_streams.c.id == _bind("sid")).values(
            floor_seq=_bind("b_floor"), hwm=_bind("b_hwm"), events=_bind("b_events"),
            resets=_bind("b_resets"), last_seen=now),
            [{"sid": s.id, "b_floor": s.floor, "b_hwm": s.hwm, "b_events": s.events,
              "b_resets": s.resets} for s in streams.values()])
        touched = [s for s in streams.values() if s.touched or s.key in
                   {lost.stream for lost in batch.lost}]
        result.gaps = self._open_gaps(conn, touched)
        result.counter_resets = [{**k.as_dict(), "sequences": [[a, b] for a, b in
                                                              to_ranges(v)]}
                                 for k, v in reset_numbers.items()]
        return result

    def _fill(self, conn: Connection, fills: dict[int, list[int]], now: float) -> None:
        gp = ingestion_gaps.c
        lo = {sid: min(v) for sid, v in fills.items()}
        hi = {sid: max(v) for sid, v in fills.items()}
        found = conn.execute(select(gp.id, gp.stream_id, gp.first_seq, gp.last_seq, gp.missing,
                                    gp.status)
                             .where(or_(*[and_(gp.stream_id == sid, gp.last_seq >= lo[sid],
                                               gp.first_seq <= hi[sid]) for sid in fills]),
                                    gp.status.in_([OPEN, LOST]))).all()
        changes = []
        for g in found:
            n = sum(1 for x in fills[g.stream_id] if g.first_seq <= x <= g.last_seq)
            if not n:
                continue
            missing = max(0, g.missing - n)
            status = RESOLVED if missing == 0 else g.status
            changes.append({"gid": g.id, "b_missing": missing, "b_status": status,
                            "b_resolved_at": now if status == RESOLVED else None})
        if changes:
            conn.execute(update(ingestion_gaps).where(gp.id == _bind("gid")).values(
                missing=_bind("b_missing"), status=_bind("b_status"),
                resolved_at=_bind("b_resolved_at")), changes)

    def _present(self, conn: Connection, sid: int, a: int, b: int) -> list[int]:
        ev = ingest_events.c
        return [r[0] for r in conn.execute(
            select(ev.seq).where(ev.stream_id == sid, ev.seq >= a, ev.seq <= b,
                                 ev.counter_reset.is_(False)))]

    def _record_lost(self, conn: Connection, s: _Stream, ranges: list[tuple[int, int]],
                     now: float) -> int:
        """The sender cannot send these numbers any more: the open gaps they cover become
        `lost` (split where only part is lost); numbers above the high-water mark are recorded
        as lost at once, so their later neighbours open no gap."""
        gp = ingestion_gaps.c
        recorded = 0
        base = {"stream_id": s.id, "device_id": s.key.device_id,
                "source_vendor": s.key.source_vendor, "epoch": s.key.epoch, "detected_at": now,
                "reason": None, "resolved_at": None}
        gaps = conn.execute(select(gp.id, gp.first_seq, gp.last_seq, gp.missing,
                                   gp.detected_at).where(gp.stream_id == s.id,
                                                         gp.status == OPEN)).all()
        new_rows: list[dict[str, Any]] = []
        for g in gaps:
            if not any(a <= g.last_seq and b >= g.first_seq for a, b in ranges):
                continue
            if g.missing == g.last_seq - g.first_seq + 1:
                missing = [(g.first_seq, g.last_seq)]
            else:
                missing = missing_in(g.first_seq, g.last_seq,
                                     self._present(conn, s.id, g.first_seq, g.last_seq))
            still = subtract(missing, ranges)
            gone = subtract(missing, still)
            if not gone:
                continue
            recorded += count(gone)
            conn.execute(delete(ingestion_gaps).where(gp.id == g.id))
            for a, b in gone:
                new_rows.append({**base, "first_seq": a, "last_seq": b, "missing": b - a + 1,
                                 "status": LOST, "reason": "sender reported lost",
                                 "detected_at": g.detected_at, "resolved_at": now})
            for a, b in still:
                new_rows.append({**base, "first_seq": a, "last_seq": b, "missing": b - a + 1,
                                 "status": OPEN, "detected_at": g.detected_at})
        if s.floor is not None:
            # Below the first number the server saw: nothing to fill, but recorded as lost.
            for a, b in subtract(merge(ranges), [(s.floor, MAX_SEQUENCE)]):
                new_rows.append({**base, "first_seq": a, "last_seq": b, "missing": b - a + 1,
                                 "status": LOST, "reason": "sender reported lost",
                                 "resolved_at": now})
                recorded += b - a + 1
        above = merge(ranges) if s.hwm is None else subtract(merge(ranges), [(0, s.hwm)])
        for a, b in above:
            if s.hwm is not None and a > s.hwm + 1:
                new_rows.append({**base, "first_seq": s.hwm + 1, "last_seq": a - 1,
                                 "missing": a - 1 - s.hwm, "status": OPEN})
            new_rows.append({**base, "first_seq": a, "last_seq": b, "missing": b - a + 1,
                             "status": LOST, "reason": "sender reported lost",
                             "resolved_at": now})
            recorded += b - a + 1
            if s.floor is None:
                s.floor = a
            s.hwm = b
        if new_rows:
            conn.execute(insert(ingestion_gaps), new_rows)
        return recorded

    def _open_gaps(self, conn: Connection, streams: list[_Stream]) -> list[dict[str, Any]]:
        if not streams:
            return []
        gp = ingestion_gaps.c
        by_id = {s.id: s for s in streams}
        rows = conn.execute(select(gp.stream_id, gp.first_seq, gp.last_seq, gp.missing)
                            .where(gp.stream_id.in_(list(by_id)), gp.status == OPEN)
                            .order_by(gp.stream_id, gp.first_seq)
                            .limit(MAX_GAPS_ANSWERED)).all()
        missing: dict[int, list[tuple[int, int]]] = defaultdict(list)
        for g in rows:
            if g.missing == g.last_seq - g.first_seq + 1:
                missing[g.stream_id].append((g.first_seq, g.last_seq))
            else:
                missing[g.stream_id] += missing_in(
                    g.first_seq, g.last_seq, self._present(conn, g.stream_id, g.first_seq,
                                                           g.last_seq))
        return [gap_answer(by_id[sid].key, merge(m)) for sid, m in missing.items() if m]

    # ------------------------------------------------------------------ upkeep and reads
    def expire(self, deadline: float, now: float | None = None) -> int:
        """Open gaps older than `deadline` seconds become `lost`."""
        now = time.time() if now is None else now
        gp = ingestion_gaps.c
        with self.engine.begin() as conn:
            return conn.execute(update(ingestion_gaps).where(
                gp.status == OPEN, gp.detected_at < now - deadline).values(
                status=LOST, reason="deadline passed", resolved_at=now)).rowcount or 0

    def gaps(self, status: str | None = None, device_id: str | None = None,
             limit: int = 1000) -> list[dict[str, Any]]:
        gp = ingestion_gaps.c
        query = select(ingestion_gaps).order_by(gp.detected_at.desc(), gp.id.desc()).limit(limit)
        if status:
            query = query.where(gp.status == status)
        if device_id:
            query = query.where(gp.device_id == device_id)
        with self.engine.connect() as conn:
            return [{"id": r.id, "device_id": r.device_id, "source_vendor": r.source_vendor,
                     "epoch": r.epoch, "first_seq": r.first_seq, "last_seq": r.last_seq,
                     "missing": r.missing, "status": r.status, "reason": r.reason,
                     "detected_at": r.detected_at, "resolved_at": r.resolved_at}
                    for r in conn.execute(query)]

    def streams(self, limit: int = 1000) -> list[dict[str, Any]]:
        st = ingest_streams.c
        gp = ingestion_gaps.c
        with self.engine.connect() as conn:
            open_by = dict(conn.execute(select(gp.stream_id, func.count()).where(
                gp.status == OPEN).group_by(gp.stream_id)).all())
            rows = conn.execute(select(ingest_streams).order_by(
                st.device_id, st.source_vendor, st.epoch).limit(limit)).all()
        return [{"device_id": r.device_id, "source_vendor": r.source_vendor, "epoch": r.epoch,
                 "first_sequence": r.floor_seq, "high_water_mark": r.hwm, "events": r.events,
                 "counter_resets": r.resets, "open_gaps": open_by.get(r.id, 0),
                 "first_seen": r.first_seen, "last_seen": r.last_seen} for r in rows]

    def summary(self) -> dict[str, Any]:
        gp = ingestion_gaps.c
        with self.engine.connect() as conn:
            by_status = dict(conn.execute(select(gp.status, func.count()).group_by(
                gp.status)).all())
            streams = conn.execute(select(func.count()).select_from(ingest_streams)).scalar()
            events = conn.execute(select(func.coalesce(func.sum(ingest_streams.c.events),
                                                       0))).scalar()
        return {"streams": int(streams or 0), "events": int(events or 0),
                "gaps": {s: int(by_status.get(s, 0)) for s in (OPEN, RESOLVED, LOST)}}


def _bind(name: str) -> Any:
    from sqlalchemy import bindparam

    return bindparam(name)
