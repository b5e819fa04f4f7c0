"""The mirror's store rules without a Home Assistant (SQLite, and PostgreSQL where the server
runs): a snapshot replaces, never merges; an older state never overwrites a newer one; the
same state change stored twice is one row; retention; the gap for time nobody followed."""

from __future__ import annotations

import asyncio
import calendar
import time
from pathlib import Path

from backdate.domain.registry import Snapshot
from backdate.services.mirror import MirrorService, MirrorSettings
from backdate.store.db import migrate, open_engine
from backdate.store.mirror import MirrorStore


def store(tmp_path: Path) -> MirrorStore:
    engine = open_engine(f"sqlite:///{tmp_path / 'mirror.db'}")
    migrate(engine)
    return MirrorStore(engine)


def change(eid: str, value: str, at: str) -> dict:
    return {"time_fired": at, "data": {"entity_id": eid, "old_state": None, "new_state": {
        "entity_id": eid, "state": value, "attributes": {}, "last_changed": at,
        "last_updated": at}}}


def test_a_snapshot_replaces_and_names_removals(tmp_path: Path) -> None:
    m = store(tmp_path)
    first = Snapshot(devices=[{"id": "a", "config_entries": ["x"]}, {"id": "b",
                                                                      "config_entry_id": "x"}],
                     entities=[{"entity_id": "sensor.a", "device_id": "a"},
                               {"entity_id": "sensor.b", "device_id": "b"}],
                     states=[], taken_at=1.0)
    m.replace("h", first)
    diff = m.replace("h", Snapshot(devices=[{"id": "a", "config_entries": ["x"],
                                             "name_by_user": "A"}],
                                   entities=[{"entity_id": "sensor.a", "device_id": "a"}],
                                   states=[], taken_at=2.0))
    assert diff.removed["devices"] == ["b"] and diff.removed["entities"] == ["sensor.b"]
    assert diff.changed["devices"] == 1
    rows, total = m.devices()
    assert total == 1 and rows[0]["name_by_user"] == "A" and rows[0]["entity_count"] == 1
    assert m.replace("h", Snapshot(devices=[{"id": "a", "config_entries": ["x"],
                                             "name_by_user": "A"}],
                                   entities=[{"entity_id": "sensor.a", "device_id": "a"}],
                                   states=[], taken_at=3.0)).empty
    # Another home's rows are its own.
    m.replace("other", Snapshot(devices=[{"id": "a", "config_entries": []}], taken_at=4.0))
    assert m.devices(home="h")[1] == 1 and m.devices()[1] == 2


def test_older_state_never_overwrites_newer_and_a_repeat_is_one_row(tmp_path: Path
                                                                       ) -> None:
    m = store(tmp_path)
    new = change("sensor.x", "2", "2026-01-01T00:00:02+00:00")
    old = change("sensor.x", "1", "2026-01-01T00:00:01+00:00")
    assert m.apply_state_changes("h", [new], 10.0) == 1
    m.apply_state_changes("h", [old, new], 11.0)  # late and repeated
    assert m.entity("sensor.x")["state"]["state"] == "2"
    assert [e["new_state"] for e in m.events()] == ["2", "1"]
    # A snapshot older than the applied event does not move the state back either.
    m.replace("h", Snapshot(states=[{"entity_id": "sensor.x", "state": "0",
                                     "last_updated": "2026-01-01T00:00:00+00:00"}],
                            taken_at=12.0))
    assert m.entity("sensor.x")["state"]["state"] == "2"
    assert m.prune_events(calendar.timegm((2026, 1, 1, 0, 0, 2, 0, 0, 0))) == 1
    assert [e["new_state"] for e in m.events()] == ["2"]


def test_time_nobody_followed_is_a_gap(tmp_path: Path) -> None:
    m = store(tmp_path)
    m.touch("h", last_seen=time.time() - 3600)
    service = MirrorService(m, [("h", "http://127.0.0.1:9", "token-0123456789")],
                            MirrorSettings())
    service._mark_start(service.followers["h"])  # noqa: SLF001 - what start() does first
    gaps = m.gaps()
    assert len(gaps) == 1 and gaps[0]["status"] == "open"
    assert "no serve process" in gaps[0]["cause"]
    assert abs(gaps[0]["started_at"] - (time.time() - 3600)) < 5
    assert m.close_gaps("h", service.instance, time.time()) == 1
    assert asyncio.run(_homes(service))[0]["open_gaps"] == 0


async def _homes(service: MirrorService) -> list[dict]:
    return service.homes()
