"""Real lock conflicts on MariaDB and PostgreSQL: another connection holds row locks on the
rows an import must change (as Home Assistant's recorder does while it writes).

Why: issue 3 promises short lock waits and retries on lock wait timeout/deadlock. Here a
second connection really holds `SELECT ... FOR UPDATE` locks (no mock): released after a few
seconds, backdate's first attempt times out, the transaction is rolled back whole and retried,
and the import lands with the right data; held past backdate's retry budget
(BACKDATE_RETRY_FOR), backdate exits 3 with a clear message and has written nothing. The
holder also watches the server's own lock-wait view, which proves backdate really queued for
the held rows.
"""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest

pytest.register_assert_rewrite("services")
import services  # noqa: E402
from test_cli_sqlite import BACKDATE, assert_amounts  # noqa: E402
from test_recorder_servers import ServerDb, check_database  # noqa: E402

pytestmark = pytest.mark.servers
ENGINES = ["mariadb", "postgresql"]
SID = "backdate:house"
END = datetime(2026, 9, 10, tzinfo=UTC)


@pytest.fixture(scope="module", autouse=True)
def servers_up() -> None:
    services.ensure_mariadb()
    services.ensure_postgresql()


@pytest.fixture
def make_db() -> Iterator[Callable[[str], ServerDb]]:
    made: list[ServerDb] = []

    def make(engine: str) -> ServerDb:
        made.append(ServerDb(engine, 53))
        return made[-1]

    yield make
    for db in made:
        db.drop()


class RowLock:
    """A second connection holding FOR UPDATE locks on every row of one statistic in both
    tables and on its metadata row, until `release()`."""

    def __init__(self, db: ServerDb, sid: str) -> None:
        self.db = db
        if db.engine == "mariadb":
            self.con: Any = services.mysql_connect(db.name)
            self.con.autocommit(False)
            self.con.begin()
            cur = self.con.cursor()
        else:
            self.con = services.pg_connect(db.name)
            self.con.autocommit = False
            cur = self.con.cursor()
        cur.execute("SELECT id FROM statistics_meta WHERE statistic_id = %s FOR UPDATE", (sid,))
        (meta_id,) = cur.fetchone()
        self.locked = 0
        for table in ("statistics", "statistics_short_term"):
            cur.execute(f"SELECT id FROM {table} WHERE metadata_id = %s FOR UPDATE", (meta_id,))
            self.locked += len(cur.fetchall())
        assert self.locked, "nothing to lock"

    def release(self) -> None:
        self.con.commit()
        self.con.close()


def lock_waiters(db: ServerDb) -> int:
    """Sessions the server reports as waiting for a row lock in this database right now."""
    if db.engine == "mariadb":
        # Not information_schema.innodb_trx: InnoDB refreshes that view only after 0.1 s in
        # which nobody read it, so close polling (or another test polling beside this one)
        # can keep it stale for a whole lock wait. The monitor text is made on each call.
        status = str(db.sql("SHOW ENGINE INNODB STATUS")[0][2])
        ours = {int(r[0]) for r in db.sql(
            "SELECT id FROM information_schema.processlist WHERE db = %s", db.name)}
        waiting = [re.search(r"(?:MySQL|MariaDB) thread id (\d+)", block)
                   for block in status.split("---TRANSACTION ") if "\nLOCK WAIT " in block]
        return sum(1 for m in waiting if m and int(m.group(1)) in ours)
    return int(db.sql("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s AND "
                      "wait_event_type = 'Lock'", db.name)[0][0])


def start_import(db: ServerDb, csv: Path, budget: float) -> subprocess.Popen[str]:
    env = {**os.environ, "COLUMNS": "300", "NO_COLOR": "1", "TERM": "dumb",
           "BACKDATE_RETRY_FOR": str(budget)}
    return subprocess.Popen([*BACKDATE, "import", str(csv), "--statistic-id", SID, "--to",
                             db.url, "--no-backup", "--yes"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env,
                            stdin=subprocess.DEVNULL)


def existing_statistic(db: ServerDb, tmp_path: Path) -> tuple[list[dg.Interval], Path]:
    """Six days imported; returns them and a CSV that rewrites days 3-4 (rows after it
    shift)."""
    intervals = dg.quarter_hour_deltas(END - timedelta(days=6), END, seed=71)
    proc = subprocess.run([*BACKDATE, "import", str(dg.write_delta_csv(tmp_path / "six.csv",
                                                                          intervals)),
                           "--statistic-id", SID, "--to", db.url, "--no-backup", "--yes"],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lo, hi = END - timedelta(days=4), END - timedelta(days=2)
    middle = [dg.Interval(i.start, i.end, round(i.value * 1.5 + 0.01, 4)) for i in intervals
              if lo <= i.start < hi]
    return ([i for i in intervals if not lo <= i.start < hi] + middle,
            dg.write_delta_csv(tmp_path / "middle.csv", middle, value_column="delta",
                               with_end=True, tz=UTC))


def deadlocks(db: ServerDb) -> int:
    """The server's own count of deadlocks it detected (MariaDB: all databases)."""
    if db.engine == "mariadb":
        return int(db.sql("SHOW GLOBAL STATUS LIKE 'Innodb_deadlocks'")[0][1])
    return int(db.sql("SELECT deadlocks FROM pg_stat_database WHERE datname = %s",
                      db.name)[0][0])


def watch_waiters(db: ServerDb, until: float, seen: list[int]) -> None:
    while time.monotonic() < until:
        seen.append(lock_waiters(db))
        time.sleep(0.2)


@pytest.mark.parametrize("engine", ENGINES)
def test_lock_released_after_seconds_is_waited_out(make_db: Callable[[str], ServerDb],
                                                   tmp_path: Path, engine: str) -> None:
    """The lock is held until backdate says its first attempt timed out and was rolled back
    (at most 12 s), then released: the retry must land the import."""
    db = make_db(engine)
    expected, middle = existing_statistic(db, tmp_path)
    lock = RowLock(db, SID)
    hold = 12.0  # budget 15 s: each attempt waits 5 s for a lock, so the first one times out
    started = time.monotonic()
    proc = start_import(db, middle, budget=15)
    err_lines: list[str] = []
    retried = threading.Event()

    def read_stderr() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            err_lines.append(line)
            if line.startswith("database locked (lock wait timeout), retrying in "):
                retried.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    seen: list[int] = []
    try:
        while not retried.is_set() and time.monotonic() < started + hold:
            seen.append(lock_waiters(db))
            time.sleep(0.2)
        held_for = time.monotonic() - started
    finally:
        lock.release()
    out = proc.stdout.read() if proc.stdout is not None else ""
    proc.wait(timeout=120)
    reader.join(timeout=60)
    err = "".join(err_lines)
    assert proc.returncode == 0, out + err
    assert max(seen) >= 1, "backdate never waited for the held rows"
    # the first attempt timed out on the lock, was rolled back and retried (backdate says so)
    assert retried.is_set(), f"no rollback-and-retry was logged within {hold} s:\n{err}"
    assert held_for >= 5.0, "backdate gave up waiting before its lock wait ran out"
    assert_amounts(db.changes(SID), dg.hourly_totals(expected), "after the locked import")
    check_database(db)


@pytest.mark.parametrize("engine", ENGINES)
def test_lock_held_past_the_retry_budget_fails_cleanly(make_db: Callable[[str], ServerDb],
                                                       tmp_path: Path, engine: str) -> None:
    db = make_db(engine)
    _expected, middle = existing_statistic(db, tmp_path)
    before = db.dump()
    lock = RowLock(db, SID)
    budget = 4.0
    started = time.monotonic()
    proc = start_import(db, middle, budget=budget)
    seen: list[int] = []
    watcher = threading.Thread(target=watch_waiters,
                               args=(db, started + budget, seen), daemon=True)
    watcher.start()
    try:
        out, err = proc.communicate(timeout=120)
        elapsed = time.monotonic() - started
        watcher.join()
    finally:
        lock.release()
    text = out + err
    assert proc.returncode == 3, text
    assert "locked" in text and "nothing was written" in text, text
    assert "Traceback" not in text, text
    assert max(seen) >= 1, "backdate never waited for the held rows"
    # it gave up within its budget (plus one lock wait, start-up and planning)
    assert elapsed < budget + 15, f"gave up only after {elapsed:.1f} s"
    assert db.dump() == before, "a failed import changed the database"
    check_database(db)


@pytest.mark.parametrize("engine", ENGINES)
def test_real_deadlock_is_survived(make_db: Callable[[str], ServerDb], tmp_path: Path,
                                   engine: str) -> None:
    """A real deadlock: the other connection holds the statistic's newest 5-minute row, which
    backdate shifts last; once backdate holds the hourly rows and waits for that row, the
    other connection asks for the newest hourly row, which backdate has already shifted. The
    server breaks the cycle by aborting one side: MariaDB picks the smaller transaction (the
    other connection, error 1213); PostgreSQL's detector fires first in the session that has
    waited longer (backdate, SQLSTATE 40P01), which rolls back whole and retries. Either way
    the import lands with the right data."""
    db = make_db(engine)
    end = dg.last_full_hour()
    intervals = dg.quarter_hour_deltas(end - timedelta(days=6), end, seed=73)
    subprocess.run([*BACKDATE, "import", str(dg.write_delta_csv(tmp_path / "six.csv", intervals)),
                    "--statistic-id", SID, "--to", db.url, "--no-backup", "--yes"],
                   check=True, capture_output=True, timeout=300)
    lo, hi = end - timedelta(days=4), end - timedelta(days=2)
    middle = [dg.Interval(i.start, i.end, round(i.value * 1.5 + 0.01, 4)) for i in intervals
              if lo <= i.start < hi]
    expected = [i for i in intervals if not lo <= i.start < hi] + middle
    csv = dg.write_delta_csv(tmp_path / "middle.csv", middle, value_column="delta",
                             with_end=True, tz=UTC)
    meta_id = db.sql("SELECT id FROM statistics_meta WHERE statistic_id = %s", SID)[0][0]
    deadlocks_before = deadlocks(db)
    newest = "SELECT id FROM {} WHERE metadata_id = %s ORDER BY start_ts DESC LIMIT 1 FOR UPDATE"
    if engine == "mariadb":
        con: Any = services.mysql_connect(db.name)
        con.autocommit(False)
        con.begin()
    else:
        con = services.pg_connect(db.name)
        con.autocommit = False
    victim = "backdate"
    try:  # the held lock is released whatever fails, or dropping the database would hang
        cur = con.cursor()
        cur.execute(newest.format("statistics_short_term"), (meta_id,))
        assert cur.fetchall()
        proc = start_import(db, csv, budget=60)  # each attempt may wait 10 s for a lock
        deadline = time.monotonic() + 60
        while lock_waiters(db) == 0:
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "backdate never waited for the held row"
            time.sleep(0.05)
        try:
            cur.execute(newest.format("statistics"), (meta_id,))  # closes the cycle
            cur.fetchall()
        except Exception as exc:  # the server chose this side as the victim
            code = getattr(exc, "args", [None])[0] if engine == "mariadb" else getattr(
                exc, "sqlstate", None)
            assert code in (1213, "40P01"), exc
            victim = "other"
    finally:
        con.rollback()
        con.close()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    if engine == "postgresql":
        assert victim == "backdate", "PostgreSQL aborted the other side"
        assert "database locked (deadlock), retrying in " in err, err
    else:
        assert victim == "other", "MariaDB aborted backdate"
    deadline = time.monotonic() + 15  # PostgreSQL publishes its statistics with a delay
    while deadlocks(db) == deadlocks_before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert deadlocks(db) > deadlocks_before, "the server detected no deadlock"
    assert_amounts(db.changes(SID), dg.hourly_totals(expected), "after the deadlock")
    assert_amounts(db.changes(SID, "statistics_short_term"),
                   dg.five_minute_totals(expected), "5-minute rows after the deadlock")
    check_database(db)


@pytest.mark.parametrize("engine", ENGINES)
def test_progress_restarts_when_a_transaction_is_retried(
        make_db: Callable[[str], ServerDb], tmp_path: Path, engine: str) -> None:
    """Two statistics in one transaction; the second one's rows are locked, so the first
    attempt writes the first statistic (reporting its progress), times out, rolls back and
    is retried. The progress of the retry starts again from 0 and never passes the total."""
    from backdate.app.importing import (
        ImportOptions,
        apply_imports,
        plan_imports,
        read_sources,
    )
    from backdate.targets.recorder_db import open_recorder

    db = make_db(engine)
    # backdate:first exists before backdate:house (a lower metadata_id), and the import
    # rewrites its rows in place: no insert falls into a gap InnoDB locks next to house's rows
    first_days = dg.quarter_hour_deltas(END - timedelta(days=30), END, seed=72)
    proc = subprocess.run([*BACKDATE, "import", str(dg.write_delta_csv(
        tmp_path / "first0.csv", first_days)), "--statistic-id", "backdate:first", "--to",
        db.url, "--no-backup", "--yes"], capture_output=True, text=True, check=False,
        timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    first_csv = dg.write_delta_csv(tmp_path / "first.csv", [
        dg.Interval(i.start, i.end, round(i.value * 2 + 0.01, 4)) for i in first_days])
    expected, middle = existing_statistic(db, tmp_path)
    target = open_recorder(db.url, retry_for=15)  # each attempt waits 5 s for a lock
    imports = []
    for csv, sid in ((first_csv, "backdate:first"), (middle, SID)):
        opts = ImportOptions(statistic_id=sid, backup=False)
        imports += plan_imports(target, read_sources([str(csv)], opts), opts)
    retried = threading.Event()
    reports: list[tuple[int, int]] = []
    lock = RowLock(db, SID)
    # released once backdate retried, and in any case after 30 s (a failure must not hang)
    releaser = threading.Thread(target=lambda: (retried.wait(30), lock.release()), daemon=True)
    releaser.start()
    try:
        target.status = lambda message: retried.set() if "retrying" in message else None
        apply_imports(target, imports, progress=lambda _what, n, total: reports.append(
            (n, total)))
        releaser.join(timeout=60)
    finally:
        target.close()
    assert retried.is_set(), "the first attempt was not retried"
    total = reports[0][1]
    done = [n for n, _ in reports]
    assert max(done) <= total, f"progress ran to {max(done)} of {total}"
    assert any(b <= a for a, b in itertools.pairwise(done)), f"progress did not restart: {done}"
    assert done[-1] == total
    assert_amounts(db.changes(SID), dg.hourly_totals(expected), "after the retried import")
    check_database(db)
