"""The sender's outbox with a real `backdate serve` (SQLite) over loopback HTTP: numbers and
epochs, full-outbox policies, resends from the ring with the original numbers, and numbers it
no longer has reported as lost once."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_harness import INGEST_KEY, READ_TOKEN, Serve, get, sqlite_serve

from backdate.adapters.ingest_http.client import IngestClient
from backdate.errors import RefusedError
from backdate.services.delivery import Sender
from backdate.store.outbox import DROP_OLDEST, Outbox, OutboxFull


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Serve]:
    with sqlite_serve(tmp_path_factory.mktemp("outbox")) as proc:
        yield proc


def _drain(box: Outbox, url: str, timeout: float = 30.0) -> Sender:
    client = IngestClient(url, INGEST_KEY)
    sender = Sender(box, client, parallel=2, max_failures=5)
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        sender.run(stop, until_drained=lambda: True)
    finally:
        timer.cancel()
        client.close()
    assert not stop.is_set(), "the outbox did not drain in time"
    return sender


def _ev(device: str, i: int) -> dict:
    return {"device_id": device, "event_type": "State_Update", "n": i}


def test_numbers_epochs_and_one_process(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    box = Outbox(path)
    assert box.put([_ev("a", 0), _ev("b", 0), _ev("a", 1)]) == [1, 1, 2]
    epoch = box.epoch
    with pytest.raises(RefusedError, match="in use"):
        Outbox(path)
    box.close()
    box = Outbox(path)  # reopened: same epoch, numbering continues
    assert box.epoch == epoch and box.put([_ev("a", 2)]) == [3] and box.pending() == 4
    box.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    box = Outbox(path)  # state lost: a new, larger epoch, numbers from 1 again
    assert box.epoch > epoch and box.put([_ev("a", 3)]) == [1]
    box.close()


def test_full_outbox_blocks_or_drops_oldest_as_lost(tmp_path: Path, serve: Serve) -> None:
    box = Outbox(tmp_path / "block.db", max_pending=3)
    box.put([_ev("blk", i) for i in range(3)])
    with pytest.raises(OutboxFull):
        box.put([_ev("blk", 3)], timeout=0.2)
    box.close()

    box = Outbox(tmp_path / "drop.db", max_pending=3, policy=DROP_OLDEST)
    box.put([_ev("drop", i) for i in range(3)])
    box.put([_ev("drop", i) for i in range(3, 5)])  # numbers 1 and 2 dropped
    assert [(r["first_seq"], r["last_seq"], r["reported"]) for r in box.lost_ranges()] == [
        (1, 2, False)]
    _drain(box, serve.url)
    assert box.lost_ranges()[0]["reported"] is True and box.health()["buffered"] == 0
    status, body = get(serve.url + "/api/gaps?device_id=drop", READ_TOKEN)
    assert [(g["first_seq"], g["last_seq"], g["status"]) for g in body["gaps"]] == [
        (1, 2, "lost")]
    box.close()


def test_gap_resent_from_ring_or_reported_lost_once(tmp_path: Path, serve: Serve) -> None:
    """The server lost numbers 3 and 4 after acknowledging them (say, restored from a
    backup): the next answer names them; the ring resends them with their numbers."""
    db = Path(serve.config.parent / "serve.db")
    for device, ring, expect in (("ring", 200, "resolved"), ("gone", 2, "lost")):
        box = Outbox(tmp_path / f"{device}.db", ring_events=ring)
        box.put([_ev(device, i) for i in range(6)])
        _drain(box, serve.url)
        con = sqlite3.connect(db, timeout=30)
        with con:
            sid = con.execute("SELECT id FROM ingest_streams WHERE device_id = ?",
                              (device,)).fetchone()[0]
            con.execute("DELETE FROM ingest_events WHERE stream_id = ? AND seq IN (3, 4)",
                        (sid,))
            con.execute("INSERT INTO ingestion_gaps (stream_id, device_id, source_vendor, "
                        "epoch, first_seq, last_seq, missing, status, detected_at) VALUES "
                        "(?, ?, 'backdate', ?, 3, 4, 2, 'open', 0)", (sid, device, box.epoch))
        con.close()
        box.put([_ev(device, 6)])
        sender = _drain(box, serve.url)
        if expect == "resolved":
            assert sender.stats.resent == 2 and sender.stats.lost == 0
        else:
            assert sender.stats.resent == 0 and sender.stats.lost == 2
            assert [(r["first_seq"], r["last_seq"], r["reported"]) for r in
                    box.lost_ranges()] == [(3, 4, True)]
        status, body = get(serve.url + f"/api/gaps?device_id={device}", READ_TOKEN)
        assert [g["status"] for g in body["gaps"]] == [expect]
        con = sqlite3.connect(db, timeout=30)
        seqs = sorted(r[0] for r in con.execute(
            "SELECT seq FROM ingest_events e JOIN ingest_streams s ON s.id = e.stream_id "
            "WHERE s.device_id = ?", (device,)))
        con.close()
        assert seqs == ([1, 2, 3, 4, 5, 6, 7] if expect == "resolved" else [1, 2, 5, 6, 7])
        box.close()
