"""RecorderDatabase on copies of SQLite databases made by real Home Assistant (schema 42/50/53)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql

from backdate.errors import RefusedError, TargetError, UsageError, VerificationError
from backdate.models import (
    MeanType,
    RowBlock,
    StatisticMeta,
    StatRow,
    Table,
    TablePlan,
    WritePlan,
)
from backdate.targets import recorder_db
from backdate.targets.base import Neighbourhood
from backdate.targets.recorder_db import (
    RecorderDatabase,
    backup_sqlite,
    open_recorder,
    restore_sqlite,
    unit_class_for,
)

FIXTURES = Path(
    os.environ.get(
        "BACKDATE_HA_DB_FIXTURES",
        Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "ha-db",
    )
)
SQLITE_FIXTURES = {
    42: "sqlite-ha2024.3.3-schema42.db",
    50: "sqlite-ha2025.4.4-schema50.db",
    53: "sqlite-ha2026.2.3-schema53.db",
}
T0 = 1767225600.0  # 2026-01-01 00:00 UTC, long before the fixtures' last compiled window
H = 3600.0
M5 = 300.0
SID = "backdate:test"


# ---------------------------------------------------------------------------------------------
# helpers


def copy_fixture(version: int, dest_dir: Path) -> Path:
    src = FIXTURES / SQLITE_FIXTURES[version]
    if not src.is_file():
        pytest.fail(f"fixture database missing: {src} (set BACKDATE_HA_DB_FIXTURES)")
    dest = dest_dir / f"home-assistant_v2-{version}.db"
    shutil.copyfile(src, dest)  # copyfile: the fixtures are read-only, the copy must not be
    return dest


@pytest.fixture(params=sorted(SQLITE_FIXTURES))
def fixture_db(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[int, Path]:
    return request.param, copy_fixture(request.param, tmp_path)


@pytest.fixture
def db53(tmp_path: Path) -> Path:
    return copy_fixture(53, tmp_path)


@pytest.fixture
def db42(tmp_path: Path) -> Path:
    return copy_fixture(42, tmp_path)


@pytest.fixture
def target53(db53: Path) -> Iterator[RecorderDatabase]:
    db = open_recorder(f"sqlite:///{db53}")
    try:
        yield db
    finally:
        db.close()


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def raw(path: Path) -> sqlite3.Connection:
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    return con


def query(path: Path, sql: str, *params: object) -> list[sqlite3.Row]:
    con = raw(path)
    try:
        return con.execute(sql, params).fetchall()
    finally:
        con.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sum_meta(sid: str = SID, **kw: object) -> StatisticMeta:
    fields: dict[str, object] = {
        "statistic_id": sid,
        "source": sid.split(":")[0] if ":" in sid else "recorder",
        "unit_of_measurement": "kWh",
        "has_sum": True,
        "name": "Backdate test",
    }
    fields.update(kw)
    return StatisticMeta(**fields)  # type: ignore[arg-type]


def sum_plan(
    meta: StatisticMeta | None = None,
    *,
    exists: bool = False,
    hours: int = 48,
    fives: int = 12,
    per_hour: float = 1.0,
    start: float = T0,
) -> WritePlan:
    """`hours` hourly rows of `per_hour` kWh each and `fives` 5-minute rows, sums from 0."""
    hourly = [
        StatRow(start + i * H, state=100 + (i + 1) * per_hour, sum=(i + 1) * per_hour)
        for i in range(hours)
    ]
    short = [
        StatRow(start + i * M5, state=100 + (i + 1) * 0.1, sum=(i + 1) * 0.1) for i in range(fives)
    ]
    return WritePlan(
        meta=meta or sum_meta(),
        metadata_exists=exists,
        hourly=TablePlan(Table.HOURLY, upserts=hourly, inserted=len(hourly)),
        short_term=TablePlan(Table.SHORT_TERM, upserts=short, inserted=len(short)),
    )


def hold_write_lock(path: Path, seconds: float) -> tuple[threading.Thread, threading.Event]:
    """Another connection (as HA would) holding the write lock for `seconds`."""
    locked = threading.Event()

    def run() -> None:
        con = sqlite3.connect(path, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("UPDATE recorder_runs SET closed_incorrect = closed_incorrect")
        locked.set()
        time.sleep(seconds)
        con.execute("COMMIT")
        con.close()

    thread = threading.Thread(target=run)
    thread.start()
    assert locked.wait(5)
    return thread, locked


# ---------------------------------------------------------------------------------------------
# opening and schema detection


def test_detects_schema_and_columns(fixture_db: tuple[int, Path]) -> None:
    version, path = fixture_db
    with open_recorder(url(path)) as db:
        schema = db.schema
        info = db.info()
    assert schema.version == version
    meta_cols = schema.columns["statistics_meta"]
    assert schema.has_mean_type == ("mean_type" in meta_cols) == (version >= 49)
    assert schema.has_unit_class == ("unit_class" in meta_cols) == (version >= 51)
    for table in ("statistics", "statistics_short_term"):
        cols = schema.columns[table]
        assert {"start_ts", "created_ts", "last_reset_ts", "metadata_id"} <= cols
        assert ("mean_weight" in cols) == (version >= 49)
        assert schema.legacy(table) == ("created", "start", "last_reset")
    assert info.kind == "sqlite"
    assert info.schema_version == version
    assert info.supports_short_term
    # statistics_runs holds '2026-11-23 00:35:00.000000' (naive UTC): that window ends 00:40
    end = dt.datetime(2026, 11, 23, 0, 40, tzinfo=dt.UTC).timestamp()
    assert info.last_compiled_end == end
    assert any("journal_mode=wal" in n for n in info.notes)
    assert "password" not in info.url


def test_missing_file_is_target_error(tmp_path: Path) -> None:
    with pytest.raises(TargetError, match="no such database") as err:
        open_recorder(url(tmp_path / "nope.db"))
    assert err.value.exit_code == 3
    assert not (tmp_path / "nope.db").exists()


def test_not_a_database_is_target_error(tmp_path: Path) -> None:
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(TargetError) as err:
        open_recorder(url(junk))
    assert err.value.exit_code == 3


def test_empty_sqlite_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.db"
    sqlite3.connect(empty).execute("CREATE TABLE x (a)").connection.close()
    with pytest.raises(RefusedError, match="not a Home Assistant recorder database"):
        open_recorder(url(empty))


@pytest.mark.parametrize("version", [33, 54])
def test_refuses_unknown_schema(db53: Path, version: int) -> None:
    con = raw(db53)
    con.execute(
        "INSERT INTO schema_changes (change_id, schema_version, changed) "
        "VALUES (2, ?, '2026-11-23 01:00:00.000000')",
        (version,),
    )
    con.commit()
    con.close()
    with pytest.raises(RefusedError, match=f"schema version {version}") as err:
        open_recorder(url(db53))
    assert err.value.exit_code == 1


def test_url_schemes(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        open_recorder("oracle://u:p@host/db")
    with pytest.raises(UsageError):
        open_recorder("sqlite://")
    for u in (
        "mysql://u:secret@host/ha",
        "mariadb://u:secret@h/ha",
        "mysql+pymysql://u:secret@h/ha",
        "postgresql://u:secret@h/ha",
    ):
        with pytest.raises(TargetError) as err:  # no such server here: unreachable, exit 3
            open_recorder(u)
        assert "secret" not in str(err.value)


def test_unit_class_for() -> None:
    for unit in ("Wh", "kWh", "MWh", "mWh", "GJ", "thm"):
        assert unit_class_for(unit) == "energy"
    for unit in ("m³", "L", "ft³", "CCF", "gal"):
        assert unit_class_for(unit) == "volume"
    for unit in (None, "", "°C", "W", "kwh", "mwh"):
        assert unit_class_for(unit) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23 00:35:00.000000", "2026-11-23T00:35:00+00:00"),
        ("2026-11-23 00:35:00", "2026-11-23T00:35:00+00:00"),
        ("2026-11-23T00:35:00.5", "2026-11-23T00:35:00.500000+00:00"),
        ("2026-11-23T00:35:00Z", "2026-11-23T00:35:00+00:00"),
        ("2026-11-23 01:35:00+01:00", "2026-11-23T00:35:00+00:00"),
        (dt.datetime(2026, 11, 23, 0, 35), "2026-11-23T00:35:00+00:00"),
    ],
)
def test_runs_start_parsing(text: object, expected: str) -> None:
    assert recorder_db._to_epoch(text) == dt.datetime.fromisoformat(expected).timestamp()


def test_runs_start_unparsable() -> None:
    assert recorder_db._to_epoch("yesterday") is None
    assert recorder_db._to_epoch(None) is None


# ---------------------------------------------------------------------------------------------
# writing


def test_apply_new_external_statistic(fixture_db: tuple[int, Path]) -> None:
    version, path = fixture_db
    plan = sum_plan()
    before = time.time()
    with open_recorder(url(path)) as db:
        db.apply(plan)
        assert plan.meta.id is not None
        got = db.get_metadata(SID)
        rows = db.read_rows(Table.HOURLY, SID)
        short = db.read_rows(Table.SHORT_TERM, SID)
        summary = {s.meta.statistic_id: s for s in db.list_statistics()}[SID]
    assert rows == plan.hourly.upserts
    assert short == plan.short_term.upserts
    assert got is not None
    assert (got.source, got.unit_of_measurement, got.has_sum, got.mean_type, got.name) == (
        "backdate",
        "kWh",
        True,
        MeanType.NONE,
        "Backdate test",
    )
    assert (summary.hourly_rows, summary.short_term_rows) == (48, 12)
    assert summary.first_start == T0
    assert summary.last_start == T0 + 47 * H
    assert summary.problems == []

    meta = query(path, "SELECT * FROM statistics_meta WHERE statistic_id = ?", SID)
    assert len(meta) == 1
    m = dict(meta[0])
    assert m["source"] == "backdate"
    assert m["has_sum"] == 1
    assert m["has_mean"] == 0  # never NULL: HA 2024.3 fails requests on NULL
    assert m["name"] == "Backdate test"
    assert m["unit_of_measurement"] == "kWh"
    if version >= 49:
        assert m["mean_type"] == 0
    else:
        assert "mean_type" not in m
    if version >= 51:
        assert m["unit_class"] == "energy"
    else:
        assert "unit_class" not in m
    for table, period, count in (("statistics", 3600, 48), ("statistics_short_term", 300, 12)):
        stats = query(
            path,
            f"SELECT COUNT(*) AS n, "
            f"SUM(start_ts <> CAST(start_ts AS INTEGER) OR CAST(start_ts AS INTEGER) % {period})"
            f" AS off, SUM(typeof(start_ts) <> 'real') AS not_real, "
            f"SUM(created_ts IS NULL) AS no_created, MIN(created_ts) AS c_min, "
            f"MAX(created_ts) AS c_max, "
            f"SUM(created IS NOT NULL OR start IS NOT NULL OR last_reset IS NOT NULL) AS legacy "
            f"FROM {table} WHERE metadata_id = ?",
            plan.meta.id,
        )[0]
        assert stats["n"] == count
        assert stats["off"] == 0
        assert stats["not_real"] == 0
        assert stats["no_created"] == 0
        assert before - 1 <= stats["c_min"] <= stats["c_max"] <= time.time() + 1
        assert stats["legacy"] == 0
    # we never touch HA's bookkeeping or the journal mode
    assert query(path, "SELECT COUNT(*) FROM schema_changes")[0][0] == 1
    assert query(path, "SELECT COUNT(*) FROM statistics_runs")[0][0] == 1
    assert query(path, "PRAGMA journal_mode")[0][0] == "wal"


def test_apply_mean_statistic(fixture_db: tuple[int, Path]) -> None:
    version, path = fixture_db
    meta = StatisticMeta(
        "backdate:outdoor",
        "backdate",
        "°C",
        has_sum=False,
        mean_type=MeanType.ARITHMETIC,
        name="Outdoor",
    )
    rows = [StatRow(T0 + i * H, mean=5.0 + i, min=4.0 + i, max=6.5 + i) for i in range(24)]
    plan = WritePlan(
        meta, False, TablePlan(Table.HOURLY, upserts=rows), TablePlan(Table.SHORT_TERM)
    )
    with open_recorder(url(path)) as db:
        db.apply(plan)
        assert db.read_rows(Table.HOURLY, "backdate:outdoor") == rows
        got = db.get_metadata("backdate:outdoor")
    assert got is not None and got.mean_type == MeanType.ARITHMETIC and not got.has_sum
    m = dict(
        query(path, "SELECT * FROM statistics_meta WHERE statistic_id = ?", "backdate:outdoor")[0]
    )
    assert (m["has_mean"], m["has_sum"]) == (1, 0)
    if version >= 49:
        assert m["mean_type"] == 1
    if version >= 51:
        assert m["unit_class"] is None
    nulls = query(
        path,
        "SELECT COUNT(*) FROM statistics WHERE state IS NOT NULL "
        "OR sum IS NOT NULL OR mean IS NULL",
    )[0][0]
    assert nulls == 0


def test_reapply_with_changed_values_and_shift(fixture_db: tuple[int, Path]) -> None:
    _version, path = fixture_db
    with open_recorder(url(path)) as db:
        db.apply(sum_plan())
        created = {r[0]: r[1] for r in query(path, "SELECT start_ts, created_ts FROM statistics")}
        old = db.read_rows(Table.HOURLY, SID)
        old_short = db.read_rows(Table.SHORT_TERM, SID)
        time.sleep(0.01)

        # Rewrite the first day at 2 kWh/h: sums 2..48; the second day keeps its hourly
        # changes, so it moves by +24. Short-term: rewrite nothing, shift from 00:30 by 5.
        meta = db.get_metadata(SID)
        assert meta is not None
        meta.name = "Renamed"
        meta.source = "someone-else"  # must not change the stored source
        plan = sum_plan(meta, exists=True, hours=24, fives=0, per_hour=2.0)
        plan.hourly.updated, plan.hourly.inserted = 24, 0
        plan.hourly.shift_from = T0 + 24 * H
        plan.hourly.shift = 24.0
        plan.hourly.shifted = 24
        plan.hourly.seam_after_old = old[24]
        plan.short_term.shift_from = T0 + 6 * M5
        plan.short_term.shift = 5.0
        plan.short_term.seam_after_old = old_short[6]
        db.apply(plan)

        rows = db.read_rows(Table.HOURLY, SID)
        short = db.read_rows(Table.SHORT_TERM, SID)
        got = db.get_metadata(SID)
    assert [r.sum for r in rows] == [2.0 * (i + 1) for i in range(24)] + [
        o.sum + 24.0 for o in old[24:]
    ]
    assert [r.state for r in rows[24:]] == [o.state for o in old[24:]]
    assert [r.sum for r in short] == [o.sum for o in old_short[:6]] + [
        o.sum + 5.0 for o in old_short[6:]
    ]
    sums = [r.sum for r in rows]
    assert sums == sorted(sums)  # no step down at the seam
    assert got is not None and got.name == "Renamed" and got.source == "backdate"
    # created_ts is written on insert only
    assert {r[0]: r[1] for r in query(path, "SELECT start_ts, created_ts FROM statistics")} == (
        created
    )


def test_shift_skips_null_sums(target53: RecorderDatabase, db53: Path) -> None:
    target53.apply(sum_plan(fives=0))
    mid = target53.get_metadata(SID).id  # type: ignore[union-attr]
    con = raw(db53)
    con.execute(
        "UPDATE statistics SET sum = NULL WHERE metadata_id = ? AND start_ts = ?",
        (mid, T0 + 40 * H),
    )
    con.commit()
    con.close()
    plan = sum_plan(target53.get_metadata(SID), exists=True, hours=1, fives=0, per_hour=1.0)
    plan.hourly.shift_from = T0 + 30 * H
    plan.hourly.shift = 0.5
    target53.apply(plan)
    rows = {r.start_ts: r.sum for r in target53.read_rows(Table.HOURLY, SID)}
    assert rows[T0 + 40 * H] is None
    assert rows[T0 + 30 * H] == 31.5
    assert rows[T0 + 29 * H] == 30.0


def test_neighbourhood(target53: RecorderDatabase) -> None:
    assert target53.neighbourhood(Table.HOURLY, SID, T0, T0 + H) == Neighbourhood(None, [], None)
    target53.apply(sum_plan())
    nb = target53.neighbourhood(Table.HOURLY, SID, T0 + 10 * H, T0 + 13 * H)
    assert nb.before is not None and nb.before.start_ts == T0 + 9 * H
    assert [r.start_ts for r in nb.inside] == [T0 + 10 * H, T0 + 11 * H, T0 + 12 * H]
    assert nb.after is not None and nb.after.start_ts == T0 + 13 * H
    edge = target53.neighbourhood(Table.HOURLY, SID, T0 - 5 * H, T0)
    assert edge.before is None and edge.inside == [] and edge.after.start_ts == T0  # type: ignore[union-attr]
    assert target53.read_rows(Table.HOURLY, SID, T0 + 46 * H) == sum_plan().hourly.upserts[46:]
    assert target53.read_rows(Table.HOURLY, "backdate:none") == []
    assert target53.get_metadata("backdate:none") is None


def test_unit_mismatch_is_refused(target53: RecorderDatabase, db53: Path) -> None:
    target53.apply(sum_plan())
    meta = target53.get_metadata(SID)
    assert meta is not None
    meta.unit_of_measurement = "Wh"
    meta.unit_class = None
    digest = sha256(db53)
    with pytest.raises(RefusedError, match="stored in 'kWh'"):
        target53.apply(sum_plan(meta, exists=True))
    target53.close()
    assert sha256(db53) == digest
    target53.apply(sum_plan(meta, exists=True), allow_unit_change=True)
    assert target53.get_metadata(SID).unit_of_measurement == "Wh"  # type: ignore[union-attr]


def test_stale_plans_are_refused(target53: RecorderDatabase) -> None:
    target53.apply(sum_plan())
    with pytest.raises(RefusedError, match="appeared in the database"):
        target53.apply(sum_plan())  # planned as new, but exists now
    with pytest.raises(RefusedError, match="deleted"):
        target53.apply(sum_plan(sum_meta("backdate:other"), exists=True))
    old = target53.read_rows(Table.HOURLY, SID)
    plan = sum_plan(target53.get_metadata(SID), exists=True, hours=24, fives=0)
    plan.hourly.shift_from = T0 + 24 * H
    plan.hourly.shift = 1.0
    plan.hourly.seam_after_old = StatRow(old[24].start_ts, sum=(old[24].sum or 0) + 7)
    with pytest.raises(RefusedError, match="changed since the plan was made"):
        target53.apply(plan)
    assert target53.read_rows(Table.HOURLY, SID) == old


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda p: p.hourly.rows.start_ts.__setitem__(3, T0 + 3 * H + 1800), "grid"),
        (lambda p: p.short_term.rows.start_ts.__setitem__(3, T0 + 3 * M5 + 1), "grid"),
        (lambda p: setattr(p.hourly, "rows",
                           RowBlock.from_rows([*p.hourly.upserts, p.hourly.upserts[0]])), "twice"),
        (lambda p: p.hourly.rows.sum.__setitem__(5, float("nan")), "nan"),
        (lambda p: p.hourly.rows.state.__setitem__(5, float("inf")), "inf"),
        (lambda p: setattr(p.hourly, "shift_from", T0 + 10 * H), "inside the written rows"),
        (lambda p: setattr(p.meta, "source", "other"), "source must be 'backdate'"),
        (lambda p: setattr(p.meta, "statistic_id", "Backdate:Test"), "neither"),
        (lambda p: setattr(p.meta, "unit_class", "volume"), "does not fit"),
    ],
)
def test_invalid_plans_are_refused_untouched(db53: Path, mutate, message: str) -> None:
    digest = sha256(db53)
    plan = sum_plan()
    plan.hourly.shift = 1.0
    mutate(plan)
    with open_recorder(url(db53)) as db, pytest.raises(RefusedError, match=message):
        db.apply(plan)
    assert sha256(db53) == digest


def test_entity_rows_only_in_compiled_windows(db53: Path) -> None:
    last = dt.datetime(2026, 11, 23, 0, 40, tzinfo=dt.UTC).timestamp()
    meta = sum_meta("sensor.grid_energy", source="recorder")
    with open_recorder(url(db53)) as db:
        late = sum_plan(meta, hours=2, fives=0, start=last - 40 * 60 - H)  # 23:00 and 00:00
        with pytest.raises(RefusedError, match="past the last window"):
            db.apply(late)
        ok = sum_plan(meta, hours=0, fives=2, start=last - 2 * M5)
        db.apply(ok)
        assert len(db.read_rows(Table.SHORT_TERM, "sensor.grid_energy")) == 2
        assert db.get_metadata("sensor.grid_energy").source == "recorder"  # type: ignore[union-attr]


def test_failure_mid_write_leaves_file_identical(
    fixture_db: tuple[int, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _version, path = fixture_db
    with open_recorder(url(path)) as db:
        db.apply(sum_plan())
        existing = db.read_rows(Table.HOURLY, SID)
    digest = sha256(path)

    def broken(*_args: object, **_kw: object) -> None:
        raise sa.exc.OperationalError(
            "UPDATE statistics", {}, sqlite3.OperationalError("disk I/O error")
        )

    # A new statistic plus a shift of the existing one: both tables upserted, then it fails.
    monkeypatch.setattr(recorder_db, "_shift_sums", broken)
    plan = sum_plan(sum_meta("backdate:second"), hours=500, fives=100)
    plan.short_term.shift_from = T0 + 200 * M5
    plan.short_term.shift = 3.0
    with open_recorder(url(path)) as db:
        with pytest.raises(TargetError, match="rolled back: disk I/O error") as err:
            db.apply(plan)
        assert err.value.exit_code == 3
        assert db.get_metadata("backdate:second") is None
        assert db.read_rows(Table.HOURLY, SID) == existing
    assert sha256(path) == digest
    assert not Path(f"{path}-wal").exists()

    def bug(*_args: object, **_kw: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(recorder_db, "_shift_sums", bug)
    with open_recorder(url(path)) as db, pytest.raises(RuntimeError):
        db.apply(plan)
    assert sha256(path) == digest


def test_sql_error_from_database_is_rolled_back(db53: Path) -> None:
    """A real constraint failure (a trigger raising) half-way through the upserts."""
    with open_recorder(url(db53)) as db:
        db.apply(sum_plan())
    con = raw(db53)
    con.execute(
        f"CREATE TRIGGER no_late BEFORE INSERT ON statistics WHEN NEW.start_ts > {T0 + 300 * H} "
        "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
    )
    con.commit()
    con.close()
    digest = sha256(db53)
    plan = sum_plan(sum_meta("backdate:second"), hours=400, fives=0)
    with open_recorder(url(db53)) as db, pytest.raises(TargetError, match="refused by trigger"):
        db.apply(plan)
    assert sha256(db53) == digest


def test_several_statistics_are_written_all_or_none(db53: Path) -> None:
    """A failure on the second statistic of one import leaves the first unwritten too."""
    con = raw(db53)
    con.execute(
        "CREATE TRIGGER no_second BEFORE INSERT ON statistics WHEN NEW.metadata_id = "
        "(SELECT id FROM statistics_meta WHERE statistic_id = 'backdate:second') "
        "BEGIN SELECT RAISE(ABORT, 'refused by trigger'); END"
    )
    con.commit()
    con.close()
    digest = sha256(db53)
    plans = [sum_plan(), sum_plan(sum_meta("backdate:second"))]
    with open_recorder(url(db53)) as db, pytest.raises(TargetError, match="refused by trigger"):
        db.apply_all(plans)
    assert sha256(db53) == digest
    with open_recorder(url(db53)) as db:
        db.apply_all([sum_plan(), sum_plan(sum_meta("backdate:third"))])
        assert len(db.read_rows(Table.HOURLY, SID)) == len(sum_plan().hourly.upserts)
        assert len(db.read_rows(Table.HOURLY, "backdate:third")) == len(sum_plan().hourly.upserts)


def test_read_back_mismatch_names_the_hour(db53: Path) -> None:
    bad = T0 + 7 * H
    con = raw(db53)
    con.execute(
        f"CREATE TRIGGER meddle AFTER INSERT ON statistics WHEN NEW.start_ts = {bad} "
        "BEGIN UPDATE statistics SET sum = sum + 1 WHERE id = NEW.id; END"
    )
    con.commit()
    con.close()
    with (
        open_recorder(url(db53)) as db,
        pytest.raises(VerificationError, match="2026-01-01 07:00:00 UTC reads back sum=9.0") as err,
    ):
        db.apply(sum_plan())
    assert err.value.exit_code == 3


# ---------------------------------------------------------------------------------------------
# list_statistics problems


def test_list_statistics_problems_schema42(db42: Path) -> None:
    con = raw(db42)
    con.execute(
        "INSERT INTO statistics_meta (id, statistic_id, source, unit_of_measurement, has_mean, "
        "has_sum, name) VALUES (7, 'sensor.bad', 'recorder', 'kWh', NULL, 1, NULL)"
    )
    rows = [
        (T0, 1.0),
        (T0 + H, 2.0),
        (T0 + 2 * H, 1.5),
        (T0 + 3 * H + 0.5, 3.0),
        (T0 + 4 * H + 1800, 4.0),
        (T0 + 5 * H, 3.9),
    ]
    con.executemany(
        "INSERT INTO statistics (created_ts, metadata_id, start_ts, sum) VALUES (0, 7, ?, ?)",
        rows,
    )
    con.execute(
        "INSERT INTO statistics (created_ts, metadata_id, start_ts, sum) VALUES (0, 7, NULL, 1.0)"
    )
    con.execute(
        "INSERT INTO statistics_short_term (created_ts, metadata_id, start_ts, sum) "
        f"VALUES (0, 7, {T0 + 150}, 1.0)"
    )
    con.commit()
    con.close()
    with open_recorder(url(db42)) as db:
        (summary,) = db.list_statistics()
    assert summary.meta.statistic_id == "sensor.bad"
    assert (summary.hourly_rows, summary.short_term_rows) == (7, 1)
    assert summary.first_start == T0
    assert summary.last_start == T0 + 5 * H
    text = "\n".join(summary.problems)
    assert "2 statistics rows off the 3600-second grid" in text
    assert "1 statistics_short_term rows off the 300-second grid" in text
    assert "1 statistics rows with NULL start_ts" in text
    assert "sum falls 2 times in statistics, first at 2026-01-01 02:00:00 UTC" in text
    assert "has_mean is NULL" in text


def test_list_statistics_unit_class_null(target53: RecorderDatabase, db53: Path) -> None:
    target53.apply(sum_plan())
    con = raw(db53)
    con.execute("UPDATE statistics_meta SET unit_class = NULL, has_mean = NULL")
    con.commit()
    con.close()
    (summary,) = target53.list_statistics()
    assert summary.problems == ["unit_class is NULL although 'kWh' is energy"]


# ---------------------------------------------------------------------------------------------
# backups


def dump(path: Path) -> list[str]:
    con = sqlite3.connect(path)
    try:
        return list(con.iterdump())
    finally:
        con.close()


def test_backup_restore_round_trip(db53: Path) -> None:
    with open_recorder(url(db53)) as db:
        db.apply(sum_plan())
    before = dump(db53)
    backup = backup_sqlite(db53)
    assert backup.parent == db53.parent
    assert re.fullmatch(re.escape(db53.name) + r"\.backdate-\d{8}T\d{6}Z\.bak", backup.name)
    assert dump(backup) == before
    assert backup_sqlite(db53) != backup  # a second backup in the same second gets its own name

    with open_recorder(url(db53)) as db:
        meta = db.get_metadata(SID)
        db.apply(sum_plan(meta, exists=True, per_hour=5.0))
        db.apply(sum_plan(sum_meta("backdate:more")))
    assert dump(db53) != before
    restore_sqlite(backup, db53)
    assert dump(db53) == before
    with open_recorder(url(db53)) as db:
        assert db.get_metadata("backdate:more") is None
        assert db.read_rows(Table.HOURLY, SID) == sum_plan().hourly.upserts


def test_backup_survives_a_busy_writer(db53: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes between steps restart SQLite's backup; after a few it copies in one pass."""
    writer = sqlite3.connect(db53, isolation_level=None, check_same_thread=False)
    writes = 0
    real_sleep = time.sleep

    def write_between_steps(seconds: float) -> None:
        nonlocal writes
        writes += 1
        writer.execute("UPDATE recorder_runs SET closed_incorrect = closed_incorrect")
        real_sleep(seconds)

    monkeypatch.setattr(recorder_db.time, "sleep", write_between_steps)
    backup = backup_sqlite(db53, step_pages=1, pause=0.001)
    writer.close()
    pages = sqlite3.connect(db53).execute("PRAGMA page_count").fetchone()[0]
    assert 4 <= writes < pages  # restarted a few times, then finished in one pass
    assert sqlite3.connect(backup).execute("PRAGMA quick_check").fetchone()[0] == "ok"
    assert dump(backup) == dump(db53)


def test_restore_refuses_damaged_backup(db53: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.bak"
    data = bytearray(db53.read_bytes())
    data[4096 * 3 : 4096 * 6] = b"\xff" * 4096 * 3
    bad.write_bytes(bytes(data))
    digest = sha256(db53)
    with pytest.raises(TargetError):
        restore_sqlite(bad, db53)
    assert sha256(db53) == digest
    with pytest.raises(TargetError, match="no such backup"):
        restore_sqlite(tmp_path / "missing.bak", db53)


# ---------------------------------------------------------------------------------------------
# living next to a running Home Assistant


def test_apply_waits_for_a_held_write_lock(db53: Path) -> None:
    with open_recorder(url(db53)) as db:
        thread, _ = hold_write_lock(db53, 2.0)
        started = time.monotonic()
        # reads don't wait: WAL readers never block on a writer
        assert db.info().schema_version == 53
        assert time.monotonic() - started < 1.0
        db.apply(sum_plan())
        waited = time.monotonic() - started
        thread.join()
        assert len(db.read_rows(Table.HOURLY, SID)) == 48
    assert 1.5 <= waited < 30


def test_apply_retries_when_busy_timeout_runs_out(db53: Path) -> None:
    with open_recorder(url(db53), busy_timeout=0.2, retry_for=30) as db:
        thread, _ = hold_write_lock(db53, 2.0)
        db.apply(sum_plan())
        thread.join()
        assert len(db.read_rows(Table.HOURLY, SID)) == 48


def test_apply_gives_up_after_retry_window(db53: Path) -> None:
    with open_recorder(url(db53), busy_timeout=0.1, retry_for=0.5) as db:
        thread, _ = hold_write_lock(db53, 1.5)
        with pytest.raises(TargetError, match="stayed locked") as err:
            db.apply(sum_plan())
        thread.join()
        assert err.value.exit_code == 3
        assert db.get_metadata(SID) is None


def test_writes_begin_immediate_and_reads_hold_nothing(db53: Path) -> None:
    statements: list[str] = []
    with open_recorder(url(db53)) as db:
        sa.event.listen(
            db._engine, "before_cursor_execute", lambda _c, _cur, sql, *_a: statements.append(sql)
        )
        db.apply(sum_plan())
        assert statements[0] == "BEGIN IMMEDIATE"  # the write lock before anything else
        assert statements.count("BEGIN IMMEDIATE") == 1
        assert statements.count("BEGIN") == 1  # the read-back after commit: a snapshot
        assert statements.index("BEGIN") > max(
            i for i, s in enumerate(statements) if s.startswith("INSERT")
        )
        db.read_rows(Table.HOURLY, SID)
        db.info()
        assert statements.count("BEGIN IMMEDIATE") == 1
        assert not any(
            re.match(r"(?i)pragma\s+(journal_mode|locking_mode)\s*=", s) for s in statements
        )
        # nothing of ours is open now: a TRUNCATE checkpoint (as HA's backup does) completes
        con = sqlite3.connect(db53, isolation_level=None)
        busy, _log, _done = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        con.close()
        assert busy == 0


# ---------------------------------------------------------------------------------------------
# dialect helpers for the MySQL/PostgreSQL follow-up (rendering only)


def test_upsert_sql_per_dialect() -> None:
    kw = {
        "metadata_id": 5,
        "created_ts": 1.5,
        "bound": ("state", "sum"),
        "legacy": ("created", "start", "last_reset"),
        "rows": 2,
    }
    lite = recorder_db._upsert_sql(sa.create_engine("sqlite://").dialect, "statistics", **kw)
    assert lite.count("(1.5, 5, ?, ?, ?, NULL, NULL, NULL, NULL, NULL, NULL, NULL)") == 2
    assert "ON CONFLICT (metadata_id, start_ts) DO UPDATE SET state = excluded.state" in lite
    assert "mean = excluded.mean" in lite
    my = recorder_db._upsert_sql(mysql.pymysql.dialect(), "statistics", **kw)
    assert "%s" in my and "ON DUPLICATE KEY UPDATE" in my and "start = NULL" in my
    pg = recorder_db._upsert_sql(postgresql.psycopg.dialect(), "statistics", **kw)
    assert "%s" in pg and "ON CONFLICT (metadata_id, start_ts) DO UPDATE" in pg
