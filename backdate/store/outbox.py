"""The sender's persistent outbox (SQLite in WAL mode, synchronous=FULL).

An event is written here, with its sequence number, before anything is sent, and is marked
acknowledged only after the server answered for it (the transactional outbox; MQTT keeps its
session state the same way). Acknowledged events stay in a ring (last N events / bytes) so a
gap the server reports can be resent with the original numbers; a number that is no longer
here is reported to the server as lost, once. The epoch is created with the file from the
clock (microseconds), so a sender whose outbox was lost never repeats an old (epoch, number).
One process at a time: a lock file beside the outbox refuses a second one.
"""

from __future__ import annotations

import fcntl
import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    and_,
    delete,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError

from backdate.domain.delivery import (
    WireError,
    canonical,
    merge,
    missing_in,
    parse_event,
    subtract,
    to_ranges,
)
from backdate.errors import InputError, RefusedError
from backdate.store.db import migrate, open_engine

MIGRATIONS = Path(__file__).parent / "outbox_migrations"
BLOCK = "block"
DROP_OLDEST = "drop_oldest"

_md = MetaData()
meta_t = Table("outbox_meta", _md, Column("key", String(64), primary_key=True),
               Column("value", Text, nullable=False))
counters_t = Table("outbox_counters", _md,
                   Column("device_id", String(200), primary_key=True),
                   Column("source_vendor", String(200), primary_key=True),
                   Column("next_seq", BigInteger, nullable=False))
events_t = Table("outbox_events", _md, Column("id", Integer, primary_key=True),
                 Column("device_id", String(200), nullable=False),
                 Column("source_vendor", String(200), nullable=False),
                 Column("seq", BigInteger, nullable=False),
                 Column("acked", Boolean, nullable=False),
                 Column("size", Integer, nullable=False),
                 Column("enqueued_at", Float, nullable=False),
                 Column("acked_at", Float),
                 Column("body", Text, nullable=False))
lost_t = Table("outbox_lost", _md, Column("id", Integer, primary_key=True),
               Column("device_id", String(200), nullable=False),
               Column("source_vendor", String(200), nullable=False),
               Column("first_seq", BigInteger, nullable=False),
               Column("last_seq", BigInteger, nullable=False),
               Column("reason", String(100), nullable=False),
               Column("reported", Boolean, nullable=False),
               Column("recorded_at", Float, nullable=False))


class OutboxFull(RefusedError):
    """The outbox holds `max_pending` events and the policy is `block`."""


@dataclass(slots=True)
class Claim:
    """Events (and lost ranges) taken for one request; released again if it fails."""

    ids: list[int]
    bodies: list[str]
    lost_ids: list[int] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    sent_at: float = 0.0  # set just before the request goes out

    def payload(self) -> bytes:
        events = ",".join(self.bodies)
        if self.lost:
            return f'{{"events":[{events}],"lost":{json.dumps(self.lost)}}}'.encode()
        return f"[{events}]".encode()


class Outbox:
    """Thread-safe; one instance per file and process."""

    def __init__(self, path: str | Path, *, ring_events: int = 200,
                 ring_bytes: int = 1 << 20, max_pending: int = 100_000,
                 policy: str = BLOCK, default_vendor: str = "backdate") -> None:
        if policy not in (BLOCK, DROP_OLDEST):
            raise InputError(f"outbox policy is {BLOCK!r} or {DROP_OLDEST!r}, not {policy!r}")
        self.path = Path(path).expanduser().resolve()
        self.ring_events = ring_events
        self.ring_bytes = ring_bytes
        self.max_pending = max_pending
        self.policy = policy
        self.default_vendor = default_vendor
        if self.path.is_dir():
            raise InputError("the outbox is a file; this is a directory", path=str(self.path))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lockfile = open(f"{self.path}.lock", "a+")  # noqa: SIM115 - held while open
        try:
            fcntl.flock(self._lockfile, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lockfile.close()
            raise RefusedError(f"{self.path}: the outbox is in use by another process") \
                from None
        self.engine = open_engine(f"sqlite:///{self.path}", pool_size=1)
        try:
            self._check_is_outbox()
            migrate(self.engine, MIGRATIONS, version_table="outbox_alembic_version")
        except (DBAPIError, InputError) as err:
            self.engine.dispose()
            self._lockfile.close()
            if isinstance(err, InputError):
                raise
            reason = str(getattr(err, "orig", err)).splitlines()[0][:200]
            raise InputError(f"cannot open the outbox: {reason}", path=str(self.path)) \
                from None
        self._lock = threading.RLock()
        self._space = threading.Condition(self._lock)
        self._in_flight: set[int] = set()
        with self.engine.begin() as conn:
            meta = dict(conn.execute(select(meta_t.c.key, meta_t.c.value)).all())
            if "epoch" not in meta:
                # The clock in microseconds: larger than any epoch this sender had before.
                meta["epoch"] = str(time.time_ns() // 1000)
                conn.execute(insert(meta_t), [{"key": "epoch", "value": meta["epoch"]},
                                              {"key": "created_at", "value": str(time.time())}])
            self.epoch = int(meta["epoch"])
            self.new = "position" not in meta and not conn.execute(
                select(func.count()).select_from(events_t)).scalar()
            self._position = meta.get("position")
            self._next = {(r.device_id, r.source_vendor): r.next_seq
                          for r in conn.execute(select(counters_t))}
            self._pending = conn.execute(select(func.count()).where(
                events_t.c.acked.is_(False))).scalar() or 0
            ring = conn.execute(select(events_t.c.id, events_t.c.size).where(
                events_t.c.acked.is_(True)).order_by(events_t.c.id)).all()
        self._ring: deque[tuple[int, int]] = deque((r.id, r.size) for r in ring)
        self._ring_size = sum(s for _, s in self._ring)
        self.last_ack: float | None = None

    def close(self) -> None:
        self.engine.dispose()
        self._lockfile.close()

    def _check_is_outbox(self) -> None:
        """Refuses another program's SQLite database (serve's store, say): the outbox would
        add its tables to it."""
        with self.engine.connect() as conn:
            names = [r[0] for r in conn.exec_driver_sql(
                "SELECT name FROM sqlite_master WHERE type = 'table' "
                "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'")]
        others = sorted(n for n in names if not n.startswith("outbox_"))
        if others:
            raise InputError(f"not an outbox: it holds other tables ({', '.join(others[:5])})",
                             path=str(self.path))

    # ------------------------------------------------------------------ adding events
    @property
    def position(self) -> str | None:
        """Where the caller's source stood after the last `put` (e.g. a file offset)."""
        return self._position

    def pending(self) -> int:
        return self._pending

    def put(self, events: list[dict[str, Any]], position: str | None = None,
            timeout: float | None = None) -> list[int]:
        """Number and store events in one transaction; returns their sequence numbers.

        A full outbox blocks (up to `timeout`, then OutboxFull) or, with `drop_oldest`,
        removes the oldest waiting events and records their numbers as lost (reported to the
        server with the next request)."""
        prepared = [self._prepare(e, i) for i, e in enumerate(events, 1)]
        with self._space:
            if self.policy == BLOCK and len(prepared) > self.max_pending:
                raise OutboxFull(f"{len(prepared)} events are more than the outbox holds "
                                 f"({self.max_pending})")
            deadline = None if timeout is None else time.monotonic() + timeout
            while self.policy == BLOCK and self._pending + len(prepared) > self.max_pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise OutboxFull(f"the outbox holds {self._pending} events waiting for "
                                     "the server")
                self._space.wait(left)
            now = time.time()
            with self.engine.begin() as conn:
                if self.policy == DROP_OLDEST:
                    over = self._pending + len(prepared) - self.max_pending
                    if over > 0:
                        self._drop_oldest(conn, over, now)
                rows = []
                numbers = []
                touched = set()
                for device, vendor, event in prepared:
                    key = (device, vendor)
                    seq = self._next.get(key, 1)
                    self._next[key] = seq + 1
                    touched.add(key)
                    body = canonical({**event, "device_id": device, "source_vendor": vendor,
                                      "epoch": self.epoch, "sequence_number": seq})
                    rows.append({"device_id": device, "source_vendor": vendor, "seq": seq,
                                 "acked": False, "size": len(body), "enqueued_at": now,
                                 "body": body})
                    numbers.append(seq)
                if rows:
                    conn.execute(insert(events_t), rows)
                self._save_counters(conn, touched)
                if position is not None:
                    self._set_meta(conn, "position", position)
            self._pending += len(rows)
            if position is not None:
                self._position = position
            self._space.notify_all()
            return numbers

    def _prepare(self, event: dict[str, Any], index: int) -> tuple[str, str, dict[str, Any]]:
        if not isinstance(event, dict):
            raise InputError(f"event {index}: an event is a JSON object")
        clean = {k: v for k, v in event.items() if k not in ("sequence_number", "epoch")}
        if not (clean.get("source_vendor") or clean.get("source")):
            clean["source_vendor"] = self.default_vendor
        try:
            wire = parse_event({**clean, "sequence_number": 1, "epoch": 0}, index)
        except WireError as err:
            raise InputError(str(err)) from None
        return wire.stream.device_id, wire.stream.source_vendor, clean

    def _save_counters(self, conn: Any, keys: set[tuple[str, str]]) -> None:
        from sqlalchemy.dialects.sqlite import insert as upsert

        if not keys:
            return
        stmt = upsert(counters_t)
        stmt = stmt.on_conflict_do_update(index_elements=["device_id", "source_vendor"],
                                          set_={"next_seq": stmt.excluded.next_seq})
        conn.execute(stmt, [{"device_id": d, "source_vendor": v, "next_seq": self._next[(d, v)]}
                            for d, v in keys])

    def _set_meta(self, conn: Any, key: str, value: str) -> None:
        from sqlalchemy.dialects.sqlite import insert as upsert

        stmt = upsert(meta_t).values(key=key, value=value)
        conn.execute(stmt.on_conflict_do_update(index_elements=["key"],
                                                set_={"value": value}))

    def _drop_oldest(self, conn: Any, n: int, now: float) -> None:
        ev = events_t.c
        rows = conn.execute(select(ev.id, ev.device_id, ev.source_vendor, ev.seq).where(
            ev.acked.is_(False), ev.id.notin_(self._in_flight) if self._in_flight else True)
            .order_by(ev.id).limit(n)).all()
        by_stream: dict[tuple[str, str], list[int]] = {}
        for r in rows:
            by_stream.setdefault((r.device_id, r.source_vendor), []).append(r.seq)
        for (device, vendor), seqs in by_stream.items():
            for a, b in to_ranges(seqs):
                conn.execute(insert(lost_t).values(
                    device_id=device, source_vendor=vendor, first_seq=a, last_seq=b,
                    reason="outbox full (drop_oldest)", reported=False, recorded_at=now))
        if rows:
            conn.execute(delete(events_t).where(ev.id.in_([r.id for r in rows])))
        self._pending -= len(rows)

    # ------------------------------------------------------------------ sending
    def claim(self, max_events: int = 100, max_bytes: int = 1 << 20) -> Claim | None:
        """The oldest waiting events not already in a request, plus unreported lost ranges."""
        with self._lock:
            ev = events_t.c
            query = select(ev.id, ev.size, ev.body).where(ev.acked.is_(False))
            if self._in_flight:
                query = query.where(ev.id.notin_(self._in_flight))
            with self.engine.connect() as conn:
                rows = conn.execute(query.order_by(ev.id).limit(max_events)).all()
                lost_rows = conn.execute(select(lost_t).where(
                    lost_t.c.reported.is_(False))).all()
            ids, bodies, size = [], [], 0
            for r in rows:
                if bodies and size + r.size > max_bytes:
                    break
                ids.append(r.id)
                bodies.append(r.body)
                size += r.size
            lost_rows = [r for r in lost_rows if -r.id not in self._in_flight]
            if not ids and not lost_rows:
                return None
            self._in_flight.update(ids)
            self._in_flight.update(-r.id for r in lost_rows)
            lost = [{"device_id": r.device_id, "source_vendor": r.source_vendor,
                     "epoch": self.epoch, "sequences": [[r.first_seq, r.last_seq]]}
                    for r in lost_rows]
            return Claim(ids, bodies, [r.id for r in lost_rows], lost)

    def release(self, claim: Claim) -> None:
        """The request failed: its events wait again (same numbers, same bodies)."""
        with self._lock:
            self._in_flight.difference_update(claim.ids)
            self._in_flight.difference_update(-i for i in claim.lost_ids)

    def ack(self, claim: Claim) -> None:
        """The server committed the request: move its events into the ring."""
        now = time.time()
        with self._space:
            ev = events_t.c
            with self.engine.begin() as conn:
                if claim.ids:
                    conn.execute(update(events_t).where(ev.id.in_(claim.ids),
                                                        ev.acked.is_(False))
                                 .values(acked=True, acked_at=now))
                if claim.lost_ids:
                    conn.execute(update(lost_t).where(lost_t.c.id.in_(claim.lost_ids))
                                 .values(reported=True))
                sizes = conn.execute(select(ev.id, ev.size).where(
                    ev.id.in_(claim.ids))).all() if claim.ids else []
                for r in sorted(sizes):
                    self._ring.append((r.id, r.size))
                    self._ring_size += r.size
                cut = None
                while self._ring and (len(self._ring) > self.ring_events
                                      or self._ring_size > self.ring_bytes):
                    cut, size = self._ring.popleft()
                    self._ring_size -= size
                if cut is not None:
                    conn.execute(delete(events_t).where(ev.acked.is_(True), ev.id <= cut))
            self._pending -= len(claim.ids)
            self.release(claim)
            self.last_ack = now
            self._space.notify_all()

    def on_gaps(self, gaps: list[dict[str, Any]], sent_at: float | None = None,
                ) -> tuple[int, int]:
        """The server's `gaps` for this sender's epoch: numbers still in the ring wait to be
        resent (original number and body, once per report, never a new copy); numbers no
        longer here are recorded as lost, to be reported once. Returns (resent, lost)."""
        resend, lost = 0, 0
        now = time.time()
        with self._lock:
            ev = events_t.c
            with self.engine.begin() as conn:
                for gap in gaps:
                    if int(gap.get("epoch", -1)) != self.epoch:
                        continue
                    device, vendor = str(gap.get("device_id")), str(gap.get("source_vendor"))
                    issued = self._next.get((device, vendor), 1) - 1
                    ranges = gap.get("missing_ranges")
                    if ranges is None:
                        ranges = [[s, s] for s in gap.get("missing_sequences", [])]
                    for a, b in merge((int(x), int(y)) for x, y in ranges):
                        b = min(b, issued)
                        if b < a:
                            continue
                        rows = conn.execute(select(ev.id, ev.seq, ev.acked, ev.acked_at).where(
                            ev.device_id == device, ev.source_vendor == vendor,
                            ev.seq >= a, ev.seq <= b)).all()
                        # Only events acknowledged before this request left: one acknowledged
                        # while it was on its way may simply have been committed after it.
                        again = [r.id for r in rows if r.acked and (
                            sent_at is None or (r.acked_at or 0) < sent_at)]
                        if again:
                            conn.execute(update(events_t).where(ev.id.in_(again))
                                         .values(acked=False, acked_at=None))
                            self._pending += len(again)
                            gone = {i for i in again}
                            self._ring = deque(x for x in self._ring if x[0] not in gone)
                            self._ring_size = sum(s for _, s in self._ring)
                            resend += len(again)
                        absent = missing_in(a, b, [r.seq for r in rows])
                        known = [(r.first_seq, r.last_seq) for r in conn.execute(
                            select(lost_t.c.first_seq, lost_t.c.last_seq).where(
                                lost_t.c.device_id == device, lost_t.c.source_vendor == vendor,
                                lost_t.c.last_seq >= a, lost_t.c.first_seq <= b))]
                        for x, y in subtract(absent, known):
                            conn.execute(insert(lost_t).values(
                                device_id=device, source_vendor=vendor, first_seq=x,
                                last_seq=y, reason="no longer in the outbox", reported=False,
                                recorded_at=now))
                            lost += y - x + 1
        return resend, lost

    def claim_lost_empty(self) -> bool:
        """No lost range waits to be reported."""
        with self._lock, self.engine.connect() as conn:
            return not conn.execute(select(func.count()).where(
                lost_t.c.reported.is_(False))).scalar()

    # ------------------------------------------------------------------ health
    def health(self) -> dict[str, Any]:
        """What the outbox holds: waiting events, their numbers, lost ranges, last ack."""
        ev = events_t.c
        with self._lock, self.engine.connect() as conn:
            waiting = conn.execute(select(func.count(), func.min(ev.seq), func.max(ev.seq),
                                          func.min(ev.enqueued_at)).where(
                ev.acked.is_(False))).one()
            lost = conn.execute(select(func.count(), func.coalesce(func.sum(
                lost_t.c.last_seq - lost_t.c.first_seq + 1), 0),
                func.sum(func.cast(lost_t.c.reported.is_(False), Integer)))).one()
        return {"epoch": self.epoch, "buffered": int(waiting[0]),
                "oldest_sequence": waiting[1], "newest_sequence": waiting[2],
                "oldest_enqueued_at": waiting[3], "ring": len(self._ring),
                "lost_ranges": int(lost[0]), "lost_events": int(lost[1] or 0),
                "lost_unreported": int(lost[2] or 0), "last_ack": self.last_ack,
                "policy": self.policy}

    def lost_ranges(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(lost_t).order_by(
                lost_t.c.id))]

    def waiting_ids(self) -> list[tuple[str, str, int]]:
        """(device, vendor, number) of every event not yet acknowledged (for tests/tools)."""
        ev = events_t.c
        with self.engine.connect() as conn:
            return [(r.device_id, r.source_vendor, r.seq) for r in conn.execute(
                select(ev.device_id, ev.source_vendor, ev.seq).where(
                    and_(ev.acked.is_(False))))]
