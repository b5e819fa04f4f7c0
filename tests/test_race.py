"""Home Assistant's 5-minute compile racing a write that shifts an entity statistic's sums.

Why: HA's compile (sensor/recorder.py) reads the newest 5-minute row, then inserts the next
one as that sum plus the meter's growth. When its read comes before backdate's COMMIT and its
insert after (READ COMMITTED on PostgreSQL/MariaDB; on SQLite pysqlite runs HA's SELECT
outside a transaction), HA's new row continues the old scale: a step of the whole shift.
backdate (1) does not begin a write transaction near HA's compile moment (`compile_wait`,
a pure function tested here) and (2) repairs rows HA compiled meanwhile after its COMMIT.

The race itself is forced deterministically on all three engines: a second, real connection
does exactly what HA's compile does, its read inside backdate's open write transaction (the
test hook just before COMMIT) and its insert right after the COMMIT.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest
from hypothesis import given
from hypothesis import strategies as st

from backdate.app.importing import ImportOptions, apply_imports, plan_imports, read_sources
from backdate.targets import recorder_db
from backdate.targets.recorder_db import (
    COMPILE_AT,
    GUARD_FROM,
    GUARD_UNTIL,
    compile_wait,
    open_recorder,
)

pytest.register_assert_rewrite("services")
import services  # noqa: E402
from ha_harness import write_compiled_runs  # noqa: E402
from test_cli_sqlite import FIXTURES, SQLITE_FIXTURES  # noqa: E402
from test_recorder_servers import ServerDb  # noqa: E402

SID = "sensor.race_energy"
GROWTH = 0.5  # kWh HA's compile adds on top of what it read


# ------------------------------------------------------------------------ the pure guard


def test_guard_waits_inside_the_compile_window() -> None:
    mark = 1_790_000_100.0  # a multiple of 300
    assert mark % 300 == 0
    assert compile_wait(mark + COMPILE_AT, 1.0) == pytest.approx(GUARD_UNTIL - COMPILE_AT)
    assert compile_wait(mark + GUARD_FROM, 1.0) == pytest.approx(GUARD_UNTIL - GUARD_FROM)
    assert compile_wait(mark + GUARD_UNTIL, 1.0) == 0.0
    assert compile_wait(mark + 150, 5.0) == 0.0
    # a 5-second transaction started 3 s before the next guard would run into it
    assert compile_wait(mark + 300 + GUARD_FROM - 3, 5.0) == pytest.approx(
        3 + GUARD_UNTIL - GUARD_FROM)
    # one that cannot fit between two guards only avoids starting inside one
    assert compile_wait(mark + 100, 400.0) == 0.0


@given(now=st.floats(1.6e9, 2.2e9), expected=st.floats(0.0, 250.0))
def test_guard_never_lets_a_transaction_overlap_a_compile(now: float, expected: float) -> None:
    """Started after the wait, a transaction of `expected` seconds stays clear of every
    [mark + GUARD_FROM, mark + GUARD_UNTIL) window (and so of HA's compile at mark + 10)."""
    wait = compile_wait(now, expected)
    assert 0.0 <= wait <= 300.0
    begin = now + wait
    end = begin + expected
    mark = (begin // 300) * 300
    for m in (mark, mark + 300):
        lo, hi = m + GUARD_FROM, m + GUARD_UNTIL
        assert end <= lo + 1e-6 or begin >= hi - 1e-6, (now, expected, wait)


# ------------------------------------------------------------------- the forced race


class Sqlite:
    engine = "sqlite"

    def __init__(self, folder: Path) -> None:
        self.path = folder / "home-assistant_v2.db"
        shutil.copy(FIXTURES / SQLITE_FIXTURES[53], self.path)
        self.url = f"sqlite:///{self.path}"

    def connect(self) -> Any:
        # pysqlite's default transaction handling, as HA's recorder uses it
        return sqlite3.connect(self.path, timeout=60)

    def drop(self) -> None:
        """pytest's tmp_path takes the file."""


class Server:
    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.db = ServerDb(engine, 53)
        self.url = self.db.url

    def connect(self) -> Any:
        if self.engine == "mariadb":
            con = services.mysql_connect(self.db.name)
            con.autocommit(False)
            return con
        con = services.pg_connect(self.db.name)
        con.autocommit = False
        return con

    def drop(self) -> None:
        self.db.drop()


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Sqlite | Server]:
    engine = request.param
    if engine == "mariadb":
        services.ensure_mariadb()
    elif engine == "postgresql":
        services.ensure_postgresql()
    made = Sqlite(tmp_path) if engine == "sqlite" else Server(engine)
    yield made
    made.drop()


def sql(con: Any, statement: str, *params: object) -> list[tuple[Any, ...]]:
    ph = "?" if isinstance(con, sqlite3.Connection) else "%s"
    cur = con.cursor()
    cur.execute(statement.replace("?", ph), params)
    rows = list(cur.fetchall()) if cur.description else []
    cur.close()
    return rows


def import_csv(url: str, csv: Path, hooks: tuple[Callable[[], None], Callable[[], None]]
               | None = None, *, sid: str = SID,
               status: Callable[[str], None] | None = None) -> recorder_db.RecorderDatabase:
    opts = ImportOptions(statistic_id=sid, backup=False, create=True)
    target = open_recorder(url)
    try:
        imports = plan_imports(target, read_sources([str(csv)], opts), opts)
        if hooks is not None:
            target._before_commit, target._after_commit = hooks
        if status is not None:
            target.status = status
        apply_imports(target, imports)
    finally:
        target.close()
    return target


def short_term(con: Any, meta_id: int) -> list[tuple[float, float, float]]:
    return [(float(a), float(b), float(c)) for a, b, c in sql(
        con, "SELECT start_ts, state, sum FROM statistics_short_term WHERE metadata_id = ? "
        "ORDER BY start_ts", meta_id)]


ENGINES = ["sqlite", *(pytest.param(e, marks=pytest.mark.servers)
                       for e in ("mariadb", "postgresql"))]


@pytest.mark.parametrize("target", ENGINES, indirect=True)
def test_compile_between_read_and_commit_is_repaired(
        target: Sqlite | Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    end = dg.last_full_hour()
    seam = end - timedelta(days=2)
    recent = dg.write_delta_csv(tmp_path / "recent.csv", dg.quarter_hour_deltas(seam, end, seed=1))
    history = dg.write_delta_csv(tmp_path / "history.csv",
                                 dg.quarter_hour_deltas(seam - timedelta(days=30), seam, seed=2))
    # HA compiled the days before: its runs up to the recent data's end, and the newest
    # statistics_run is the last closed window (HA is compiling this database now)
    write_compiled_runs(target.url, dg.epoch(seam - timedelta(days=31)), dg.epoch(end))
    import_csv(target.url, recent)
    window = datetime.fromtimestamp(dg.epoch(dg.now()) // 300 * 300 - 300, UTC)
    admin = target.connect()
    start = (window.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f")
             if target.engine == "sqlite" else window.replace(tzinfo=None))
    sql(admin, "INSERT INTO statistics_runs (start) VALUES (?)", start)
    admin.commit()
    (meta_id,) = sql(admin, "SELECT id FROM statistics_meta WHERE statistic_id = ?", SID)[0]
    admin.commit()
    before = short_term(admin, meta_id)
    admin.commit()

    # The guard is the pure function above; here the race is forced, so it must not wait.
    monkeypatch.setattr(recorder_db, "compile_wait", lambda now, expected: 0.0)
    ha = target.connect()
    seen: list[tuple[Any, ...]] = []
    inserted: list[bool] = []

    def ha_reads() -> None:  # inside backdate's open write transaction (the first one only)
        if seen:
            return
        seen.append(sql(ha, "SELECT start_ts, state, sum FROM statistics_short_term WHERE "
                            "metadata_id = ? ORDER BY start_ts DESC LIMIT 1", meta_id)[0])

    def ha_inserts() -> None:  # right after backdate's COMMIT
        if inserted:
            return
        inserted.append(True)
        start_ts, state, total = seen[0]
        sql(ha, "INSERT INTO statistics_short_term (created_ts, metadata_id, start_ts, state, "
                "sum) VALUES (?, ?, ?, ?, ?)", time.time(), meta_id, start_ts + 300,
            state + GROWTH, total + GROWTH)
        ha.commit()

    try:
        done = import_csv(target.url, history, hooks=(ha_reads, ha_inserts))
    finally:
        ha.close()
    assert seen and float(seen[0][2]) == pytest.approx(before[-1][2]), \
        "HA's read did not see the sums before the shift: no race was forced"
    rows = short_term(admin, meta_id)
    admin.close()
    last, ha_row = rows[-2], rows[-1]
    assert ha_row[0] == last[0] + 300
    shift = last[2] - before[-1][2]
    assert shift > 1, "the prepend did not shift the existing rows"
    assert ha_row[2] - last[2] == pytest.approx(GROWTH), (
        f"step of {ha_row[2] - last[2] - GROWTH:+.3f} kWh after HA's compiled row")
    assert [r.table for r in done.repairs] == ["statistics_short_term"]
    assert done.repairs[0].new_sum - done.repairs[0].old_sum == pytest.approx(shift)


def mark_compiling(db: Path) -> None:
    """A statistics_run for the last closed window: HA is compiling this database."""
    window = datetime.fromtimestamp(dg.epoch(dg.now()) // 300 * 300 - 300, UTC)
    con = sqlite3.connect(db)
    con.execute("INSERT INTO statistics_runs (start) VALUES (?)",
                (window.replace(tzinfo=None).strftime("%Y-%m-%d %H:%M:%S.%f"),))
    con.commit()
    con.close()


def test_guard_is_consulted_for_compiled_statistics_only(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The write of an entity statistic on a database HA compiles asks `compile_wait` before
    BEGIN, waits what it says and tells the user why; an external statistic never waits."""
    db = Sqlite(tmp_path)
    end = dg.last_full_hour()
    seam = end - timedelta(days=2)
    recent = dg.write_delta_csv(tmp_path / "recent.csv", dg.quarter_hour_deltas(seam, end, seed=3))
    history = dg.write_delta_csv(tmp_path / "history.csv",
                                 dg.quarter_hour_deltas(seam - timedelta(days=5), seam, seed=4))
    write_compiled_runs(db.url, dg.epoch(seam - timedelta(days=6)), dg.epoch(end))
    import_csv(db.url, recent)
    import_csv(db.url, recent, sid="backdate:other")
    mark_compiling(db.path)
    answers = [1.0, 0.0]
    asked: list[float] = []

    def fake_wait(now: float, expected: float) -> float:
        asked.append(expected)
        return answers.pop(0) if answers else 0.0

    monkeypatch.setattr(recorder_db, "compile_wait", fake_wait)
    said: list[str] = []
    started = time.monotonic()
    import_csv(db.url, history, status=said.append)
    assert time.monotonic() - started >= 1.0, "the write did not wait"
    assert len(asked) == 2 and asked[0] > 1.0
    assert len(said) == 1 and said[0].startswith("waiting 1 s for Home Assistant's compile at ")
    assert said[0].endswith(":10 UTC") and int(said[0][-9:-7]) % 5 == 0, said
    asked.clear()
    import_csv(db.url, history, sid="backdate:other", status=said.append)
    assert not asked, "an external statistic waited for HA's compile"
