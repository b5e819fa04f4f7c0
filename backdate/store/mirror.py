"""The Home Assistant mirror in backdate's own store: registries, current states, state-change
history and the mirror's gaps, one set of rows per home.

Why replace-by-diff: a follower that merged each new snapshot into the old rows (as a peer's
client did) keeps what HA removed while it was away. `replace` computes what was added, removed
and changed against the stored rows and applies exactly that in one transaction, so removals
are never lost and an unchanged reconcile writes nothing. Upserts (not delete + insert) let
several `serve` processes on one PostgreSQL database mirror the same home without duplicate
rows; state changes are keyed by (home, entity, time fired) for the same reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Table, and_, delete, exists, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection

from backdate.domain.registry import Diff, Snapshot, device_record
from backdate.store.schema import (
    mirror_areas,
    mirror_config_entries,
    mirror_device_entries,
    mirror_devices,
    mirror_entities,
    mirror_events,
    mirror_gaps,
    mirror_homes,
    mirror_states,
)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def iso_ts(value: str | None) -> float | None:
    """HA's ISO time (always with an offset) as epoch seconds."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _insert(conn: Connection, table: Table) -> Any:
    mod = postgresql if conn.dialect.name == "postgresql" else sqlite
    return mod.insert(table)


def _upsert(conn: Connection, table: Table, rows: list[dict[str, Any]], keys: Sequence[str]
            ) -> None:
    if not rows:
        return
    stmt = _insert(conn, table)
    cols = [c for c in rows[0] if c not in keys]
    if cols:
        stmt = stmt.on_conflict_do_update(index_elements=list(keys),
                                          set_={c: stmt.excluded[c] for c in cols})
    else:
        stmt = stmt.on_conflict_do_nothing(index_elements=list(keys))
    for i in range(0, len(rows), 500):
        conn.execute(stmt, rows[i:i + 500])


def _device_cols(d: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": d.get("name"), "name_by_user": d.get("name_by_user"),
            "manufacturer": d.get("manufacturer"), "model": d.get("model"),
            "area_id": d.get("area_id"), "config_entry_id": d.get("config_entry_id"),
            "parent_device_id": d.get("parent_device_id"), "disabled_by": d.get("disabled_by")}


def _entity_cols(e: Mapping[str, Any]) -> dict[str, Any]:
    return {"id": e.get("id"), "device_id": e.get("device_id"), "area_id": e.get("area_id"),
            "platform": e.get("platform"), "config_entry_id": e.get("config_entry_id"),
            "disabled_by": e.get("disabled_by")}


def _area_cols(a: Mapping[str, Any]) -> dict[str, Any]:
    return {"name": a.get("name")}


def _entry_cols(c: Mapping[str, Any]) -> dict[str, Any]:
    return {"domain": c.get("domain"), "title": c.get("title"), "state": c.get("state")}


# kind -> (table, key column, HA's key field, the filter columns of a record)
_KINDS: dict[str, tuple[Table, str, str, Any]] = {
    "devices": (mirror_devices, "id", "id", _device_cols),
    "entities": (mirror_entities, "entity_id", "entity_id", _entity_cols),
    "areas": (mirror_areas, "area_id", "area_id", _area_cols),
    "config_entries": (mirror_config_entries, "entry_id", "entry_id", _entry_cols),
}


class MirrorStore:
    """Reads and writes of the mirror tables (synchronous; the service calls it in a thread)."""

    def __init__(self, engine: Engine, reader: Engine | None = None) -> None:
        self.engine = engine
        self.reader = reader or engine  # reads only (SQLite: deferred transactions)

    # ------------------------------------------------------------------------ writing

    def replace(self, home: str, snap: Snapshot, kinds: Iterable[str] | None = None) -> Diff:
        """Make the stored registries (and states, if the snapshot has them) of `home` equal
        to `snap`, in one transaction; returns what changed, removals included."""
        diff = Diff()
        wanted = list(kinds) if kinds is not None else list(_KINDS)
        with self.engine.begin() as conn:
            for kind in wanted:
                self._replace_kind(conn, home, kind, getattr(snap, kind), diff)
            if snap.states is not None and kinds is None:
                self._replace_states(conn, home, snap.states, diff)
            if kinds is None:
                self._touch(conn, home, last_snapshot=snap.taken_at, last_seen=snap.taken_at,
                            counts=_dumps(snap.counts()))
        return diff

    def _replace_kind(self, conn: Connection, home: str, kind: str,
                      records: list[dict[str, Any]], diff: Diff) -> None:
        table, col, field_name, cols = _KINDS[kind]
        if kind == "devices":
            records = [device_record(r) for r in records]
        new = {str(r[field_name]): r for r in records if r.get(field_name) is not None}
        old = dict(conn.execute(select(table.c[col], table.c.data)
                                .where(table.c.home == home)).all())
        removed = [k for k in old if k not in new]
        added = [k for k in new if k not in old]
        changed = [k for k in new if k in old and old[k] != _dumps(new[k])]
        if removed:
            for i in range(0, len(removed), 500):
                part = removed[i:i + 500]
                conn.execute(delete(table).where(table.c.home == home,
                                                 table.c[col].in_(part)))
                if kind == "devices":
                    conn.execute(delete(mirror_device_entries).where(
                        mirror_device_entries.c.home == home,
                        mirror_device_entries.c.device_id.in_(part)))
        write = added + changed
        rows = [{"home": home, col: k, **cols(new[k]), "data": _dumps(new[k])} for k in write]
        _upsert(conn, table, rows, ("home", col))
        if kind == "devices" and write:
            for i in range(0, len(write), 500):
                conn.execute(delete(mirror_device_entries).where(
                    mirror_device_entries.c.home == home,
                    mirror_device_entries.c.device_id.in_(write[i:i + 500])))
            links = [{"home": home, "device_id": k, "entry_id": e}
                     for k in write for e in dict.fromkeys(new[k]["config_entries"]) if e]
            _upsert(conn, mirror_device_entries, links, ("home", "device_id", "entry_id"))
        diff.note(kind, added, removed, len(changed))

    def _replace_states(self, conn: Connection, home: str, states: list[dict[str, Any]],
                        diff: Diff) -> None:
        t = mirror_states
        old = {r.entity_id: r for r in conn.execute(
            select(t.c.entity_id, t.c.state, t.c.attributes, t.c.last_updated,
                   t.c.last_updated_ts).where(t.c.home == home))}
        new = {s["entity_id"]: s for s in states}
        removed = [k for k in old if k not in new]
        rows, added, changed = [], [], 0
        for eid, s in new.items():
            row = _state_row(home, s)
            prev = old.get(eid)
            if prev is None:
                added.append(eid)
            elif (prev.last_updated == row["last_updated"] and prev.state == row["state"]
                  and prev.attributes == row["attributes"]):
                continue
            elif (prev.last_updated_ts or 0) > (row["last_updated_ts"] or 0):
                continue  # an event newer than this snapshot was applied already
            else:
                changed += 1
            rows.append(row)
        for i in range(0, len(removed), 500):
            conn.execute(delete(t).where(t.c.home == home, t.c.entity_id.in_(removed[i:i + 500])))
        _upsert(conn, t, rows, ("home", "entity_id"))
        diff.note("states", added, removed, changed)

    def upsert_records(self, home: str, kind: str, records: list[dict[str, Any]]) -> None:
        """Add or change single records (an event that carries the whole record)."""
        table, col, field_name, cols = _KINDS[kind]
        rows = [{"home": home, col: str(r[field_name]), **cols(r), "data": _dumps(r)}
                for r in records]
        with self.engine.begin() as conn:
            _upsert(conn, table, rows, ("home", col))

    def delete_records(self, home: str, kind: str, keys: list[str]) -> None:
        table, col, _f, _c = _KINDS[kind]
        with self.engine.begin() as conn:
            conn.execute(delete(table).where(table.c.home == home, table.c[col].in_(keys)))

    def apply_state_changes(self, home: str, events: list[dict[str, Any]], received_at: float
                            ) -> int:
        """Store a batch of `state_changed` event data in one transaction: one history row
        each (a change already stored, e.g. by another process, is skipped) and the newest
        state per entity (never replacing a newer one). Returns history rows offered."""
        history: list[dict[str, Any]] = []
        latest: dict[str, dict[str, Any]] = {}
        gone: dict[str, float] = {}
        for ev in events:
            data = ev.get("data") or {}
            eid = data.get("entity_id")
            if not eid:
                continue
            new, old = data.get("new_state"), data.get("old_state")
            fired = iso_ts(ev.get("time_fired")) or (iso_ts((new or {}).get("last_updated"))
                                                    or received_at)
            history.append({
                "home": home, "entity_id": eid,
                "old_state": None if old is None else old.get("state"),
                "new_state": None if new is None else new.get("state"),
                "attributes": None if new is None else _dumps(new.get("attributes") or {}),
                "time_fired": fired, "context_id": (ev.get("context") or {}).get("id"),
                "received_at": received_at})
            if new is None:
                latest.pop(eid, None)
                gone[eid] = fired
            else:
                latest[eid] = _state_row(home, new)
                gone.pop(eid, None)
        if not history:
            return 0
        with self.engine.begin() as conn:
            stmt = _insert(conn, mirror_events).on_conflict_do_nothing(
                index_elements=["home", "entity_id", "time_fired"])
            conn.execute(stmt, history)
            if latest:
                t = mirror_states
                up = _insert(conn, t)
                up = up.on_conflict_do_update(
                    index_elements=["home", "entity_id"],
                    set_={c: up.excluded[c] for c in ("state", "attributes", "last_changed",
                                                       "last_updated", "last_updated_ts")},
                    where=or_(t.c.last_updated_ts.is_(None),
                              t.c.last_updated_ts <= up.excluded.last_updated_ts))
                conn.execute(up, list(latest.values()))
            for eid, ts in gone.items():
                conn.execute(delete(mirror_states).where(
                    mirror_states.c.home == home, mirror_states.c.entity_id == eid,
                    or_(mirror_states.c.last_updated_ts.is_(None),
                        mirror_states.c.last_updated_ts <= ts)))
            self._touch(conn, home, last_event=max(h["time_fired"] for h in history),
                        last_seen=received_at)
        return len(history)

    def touch(self, home: str, **fields: Any) -> None:
        with self.engine.begin() as conn:
            self._touch(conn, home, **fields)

    def _touch(self, conn: Connection, home: str, **fields: Any) -> None:
        fields = {k: v for k, v in fields.items() if v is not None}
        _upsert(conn, mirror_homes, [{"home": home, **fields}], ("home",))

    def open_gap(self, home: str, started_at: float, cause: str, instance: str) -> int:
        with self.engine.begin() as conn:
            found = conn.execute(select(mirror_gaps.c.id).where(
                mirror_gaps.c.home == home, mirror_gaps.c.instance == instance,
                mirror_gaps.c.status == "open")).scalar()
            if found is not None:
                return int(found)
            return int(conn.execute(mirror_gaps.insert().values(
                home=home, started_at=started_at, status="open", cause=cause[:500],
                instance=instance)).inserted_primary_key[0])

    def close_gaps(self, home: str, instance: str, ended_at: float) -> int:
        with self.engine.begin() as conn:
            return conn.execute(update(mirror_gaps).where(
                mirror_gaps.c.home == home, mirror_gaps.c.instance == instance,
                mirror_gaps.c.status == "open").values(status="resolved", ended_at=ended_at)
            ).rowcount

    def prune_events(self, before: float) -> int:
        with self.engine.begin() as conn:
            return conn.execute(delete(mirror_events).where(
                mirror_events.c.time_fired < before)).rowcount

    # ------------------------------------------------------------------------ reading

    def home_rows(self) -> dict[str, dict[str, Any]]:
        with self.reader.connect() as conn:
            rows = conn.execute(select(mirror_homes)).mappings().all()
            open_gaps = dict(conn.execute(
                select(mirror_gaps.c.home, func.count()).where(mirror_gaps.c.status == "open")
                .group_by(mirror_gaps.c.home)).all())
            counts: dict[str, dict[str, int]] = {}
            for kind, (table, _c, _f, _b) in _KINDS.items():
                for home, n in conn.execute(select(table.c.home, func.count())
                                            .group_by(table.c.home)):
                    counts.setdefault(home, {})[kind] = n
        out = {}
        for r in rows:
            out[r["home"]] = {**dict(r), "counts": counts.get(r["home"], {}),
                              "open_gaps": open_gaps.get(r["home"], 0)}
        return out

    def devices(self, *, home: str | None = None, manufacturer: str | None = None,
                model: str | None = None, area: str | None = None,
                integration: str | None = None, text: str | None = None, limit: int = 100,
                offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        d, e = mirror_devices, mirror_entities
        conds = []
        if home is not None:
            conds.append(d.c.home == home)
        if manufacturer is not None:
            conds.append(d.c.manufacturer == manufacturer)
        if model is not None:
            conds.append(d.c.model == model)
        if area is not None:
            conds.append(d.c.area_id == area)
        if integration is not None:
            de, ce = mirror_device_entries, mirror_config_entries
            entries = select(ce.c.entry_id).where(or_(ce.c.domain == integration,
                                                      ce.c.entry_id == integration))
            conds.append(exists().where(de.c.home == d.c.home, de.c.device_id == d.c.id,
                                        de.c.entry_id.in_(entries)))
        if text:
            like = f"%{text.lower()}%"
            conds.append(or_(*(func.lower(func.coalesce(c, "")).like(like)
                               for c in (d.c.name, d.c.name_by_user, d.c.manufacturer,
                                         d.c.model, d.c.id))))
        where = and_(True, *conds)
        query = (select(d.c.home, d.c.id, d.c.data).where(where)
                 .order_by(d.c.home, func.lower(func.coalesce(d.c.name_by_user, d.c.name, "")),
                           d.c.id)
                 .limit(limit).offset(offset))
        with self.reader.connect() as conn:
            total = conn.execute(select(func.count()).select_from(d).where(where)).scalar_one()
            page = conn.execute(query).all()
            # Entity counts of the devices shown only (the (home, device_id) index).
            counts: dict[tuple[str, str], int] = {}
            for home_name in {r.home for r in page}:
                ids = [r.id for r in page if r.home == home_name]
                counts.update(((home_name, k), n) for k, n in conn.execute(
                    select(e.c.device_id, func.count()).where(
                        e.c.home == home_name, e.c.device_id.in_(ids))
                    .group_by(e.c.device_id)))
            rows = [{**json.loads(r.data), "home": r.home,
                     "entity_count": counts.get((r.home, r.id), 0)} for r in page]
        return rows, int(total)

    def device(self, device_id: str, home: str | None = None) -> dict[str, Any] | None:
        d = mirror_devices
        with self.reader.connect() as conn:
            q = select(d.c.home, d.c.data).where(d.c.id == device_id)
            if home is not None:
                q = q.where(d.c.home == home)
            row = conn.execute(q.order_by(d.c.home).limit(1)).first()
            if row is None:
                return None
            ents = self._entities_with_states(conn, and_(mirror_entities.c.home == row.home,
                                                        mirror_entities.c.device_id == device_id))
        return {**json.loads(row.data), "home": row.home, "entity_count": len(ents),
                "entities": ents}

    def _entities_with_states(self, conn: Connection, where: Any) -> list[dict[str, Any]]:
        e, s = mirror_entities, mirror_states
        q = (select(e.c.home, e.c.data, s.c.state, s.c.attributes, s.c.last_changed,
                    s.c.last_updated, s.c.entity_id.label("has_state"))
             .select_from(e.outerjoin(s, and_(s.c.home == e.c.home,
                                              s.c.entity_id == e.c.entity_id)))
             .where(where).order_by(e.c.entity_id))
        return [{**json.loads(r.data), "home": r.home, "state": _state_out(r)}
                for r in conn.execute(q)]

    def entities(self, *, home: str | None = None, domain: str | None = None,
                 device: str | None = None, area: str | None = None,
                 platform: str | None = None, disabled: bool | None = None,
                 limit: int = 100, offset: int = 0) -> tuple[list[dict[str, Any]], int]:
        e, d = mirror_entities, mirror_devices
        conds = []
        if home is not None:
            conds.append(e.c.home == home)
        if domain is not None:
            conds.append(e.c.entity_id.like(f"{domain.replace('%', '')}.%"))
        if device is not None:
            conds.append(e.c.device_id == device)
        if platform is not None:
            conds.append(e.c.platform == platform)
        if disabled is not None:
            conds.append(e.c.disabled_by.is_not(None) if disabled else e.c.disabled_by.is_(None))
        joined: Any = e
        if area is not None:
            joined = e.outerjoin(d, and_(d.c.home == e.c.home, d.c.id == e.c.device_id))
            # An entity's own area wins; without one it is in its device's area (as in HA).
            conds.append(func.coalesce(e.c.area_id, d.c.area_id) == area)
        where = and_(True, *conds)
        with self.reader.connect() as conn:
            total = conn.execute(select(func.count()).select_from(joined).where(where)
                                 ).scalar_one()
            rows = [{**json.loads(r.data), "home": r.home} for r in conn.execute(
                select(e.c.home, e.c.data).select_from(joined).where(where)
                .order_by(e.c.home, e.c.entity_id).limit(limit).offset(offset))]
        return rows, int(total)

    def entity(self, entity_id: str, home: str | None = None) -> dict[str, Any] | None:
        where = mirror_entities.c.entity_id == entity_id
        if home is not None:
            where = and_(where, mirror_entities.c.home == home)
        with self.reader.connect() as conn:
            rows = self._entities_with_states(conn, where)
            if rows:
                return rows[0]
            # A state without a registry entry (an entity HA knows only by its state).
            s = mirror_states
            q = select(s).where(s.c.entity_id == entity_id)
            if home is not None:
                q = q.where(s.c.home == home)
            r = conn.execute(q.order_by(s.c.home).limit(1)).first()
        if r is None:
            return None
        return {"entity_id": entity_id, "home": r.home, "id": None, "device_id": None,
                "platform": None, "disabled_by": None, "area_id": None,
                "state": _state_out(r, True)}

    def integrations(self, home: str | None = None) -> list[dict[str, Any]]:
        c, de, e = mirror_config_entries, mirror_device_entries, mirror_entities
        with self.reader.connect() as conn:
            dev = dict(((h, k), n) for h, k, n in conn.execute(
                select(de.c.home, de.c.entry_id, func.count()).group_by(de.c.home,
                                                                        de.c.entry_id)))
            ent = dict(((h, k), n) for h, k, n in conn.execute(
                select(e.c.home, e.c.config_entry_id, func.count())
                .group_by(e.c.home, e.c.config_entry_id)))
            q = select(c.c.home, c.c.entry_id, c.c.data).order_by(c.c.home, c.c.domain,
                                                                  c.c.entry_id)
            if home is not None:
                q = q.where(c.c.home == home)
            return [{**json.loads(r.data), "home": r.home,
                     "device_count": dev.get((r.home, r.entry_id), 0),
                     "entity_count": ent.get((r.home, r.entry_id), 0)} for r in conn.execute(q)]

    def areas(self, home: str | None = None) -> list[dict[str, Any]]:
        a, d, e = mirror_areas, mirror_devices, mirror_entities
        with self.reader.connect() as conn:
            dev = dict(((h, k), n) for h, k, n in conn.execute(
                select(d.c.home, d.c.area_id, func.count()).group_by(d.c.home, d.c.area_id)))
            eff = func.coalesce(e.c.area_id, d.c.area_id)
            ent = dict(((h, k), n) for h, k, n in conn.execute(
                select(e.c.home, eff, func.count())
                .select_from(e.outerjoin(d, and_(d.c.home == e.c.home, d.c.id == e.c.device_id)))
                .group_by(e.c.home, eff)))
            q = select(a.c.home, a.c.area_id, a.c.data).order_by(a.c.home, a.c.area_id)
            if home is not None:
                q = q.where(a.c.home == home)
            return [{**json.loads(r.data), "home": r.home,
                     "device_count": dev.get((r.home, r.area_id), 0),
                     "entity_count": ent.get((r.home, r.area_id), 0)} for r in conn.execute(q)]

    def events(self, *, entity_id: str | None = None, home: str | None = None,
               start: float | None = None, end: float | None = None, after_id: int = 0,
               limit: int = 1000) -> list[dict[str, Any]]:
        """State changes in id order (the cursor is the last id seen)."""
        t = mirror_events
        q = select(t).where(t.c.id > after_id)
        if entity_id is not None:
            q = q.where(t.c.entity_id == entity_id)
        if home is not None:
            q = q.where(t.c.home == home)
        if start is not None:
            q = q.where(t.c.time_fired >= start)
        if end is not None:
            q = q.where(t.c.time_fired < end)
        with self.reader.connect() as conn:
            return [{"id": r.id, "home": r.home, "entity_id": r.entity_id,
                     "old_state": r.old_state, "new_state": r.new_state,
                     "attributes": None if r.attributes is None else json.loads(r.attributes),
                     "time_fired": r.time_fired, "context_id": r.context_id,
                     "received_at": r.received_at}
                    for r in conn.execute(q.order_by(t.c.id).limit(limit))]

    def count_events(self, home: str, entity_id: str) -> int:
        t = mirror_events
        with self.reader.connect() as conn:
            return int(conn.execute(select(func.count()).where(
                t.c.home == home, t.c.entity_id == entity_id)).scalar_one())

    def gaps(self, status: str | None = None, home: str | None = None, limit: int = 1000
             ) -> list[dict[str, Any]]:
        t = mirror_gaps
        q = select(t)
        if status is not None:
            q = q.where(t.c.status == status)
        if home is not None:
            q = q.where(t.c.home == home)
        with self.reader.connect() as conn:
            return [dict(r) for r in conn.execute(q.order_by(t.c.started_at.desc(),
                                                             t.c.id.desc()).limit(limit))
                    .mappings()]


def _state_row(home: str, s: Mapping[str, Any]) -> dict[str, Any]:
    return {"home": home, "entity_id": s["entity_id"], "state": s.get("state"),
            "attributes": _dumps(s.get("attributes") or {}),
            "last_changed": s.get("last_changed"), "last_updated": s.get("last_updated"),
            "last_updated_ts": iso_ts(s.get("last_updated"))}


def _state_out(r: Any, present: bool = False) -> dict[str, Any] | None:
    if not present and getattr(r, "has_state", None) is None:
        return None
    return {"state": r.state, "attributes": json.loads(r.attributes or "{}"),
            "last_changed": r.last_changed, "last_updated": r.last_updated}


__all__ = ["MirrorStore", "iso_ts"]
