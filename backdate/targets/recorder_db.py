"""Home Assistant's recorder database as a statistics target: SQLite, MariaDB/MySQL, PostgreSQL.

Written against SQLAlchemy 2 Core so one class serves every dialect HA supports. Everything
that differs per dialect lives in the small `_..._sql`/`_is_retryable` helpers and in
`_sqlite_engine`; the rest speaks plain Core. Facts and rules come from
shared/reference/ha-recorder.md (cited as §n below).

SQLite is written while Home Assistant may be running on the same file (§6-7): we never touch
`journal_mode` or locking mode, write in one short `BEGIN IMMEDIATE` transaction per statistic,
wait up to 60 s for HA's lock and retry for about two minutes, and never keep a read
transaction open between calls.

Statistics Home Assistant compiles itself (entity statistics, source `recorder`) get two
more protections against HA's 5-minute compile, which continues the newest row's sum: no
write transaction is open from 2 s to 40 s after any 5-minute mark (`compile_wait`; HA
compiles at +10 s), and after COMMIT, rows HA compiled meanwhile from sums read before it
are moved onto the new sums (`RecorderDatabase._repair_compiled`). Each rollback-and-retry
and each wait is announced on the `status` callback (stderr by default).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import decimal
import json
import math
import os
import re
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import NullPool

from backdate import clock
from backdate.domain.urls import mask_url
from backdate.errors import (
    RefusedError,
    TargetError,
    UsageError,
    VerificationError,
    require,
)
from backdate.models import (
    FIVE_MINUTES,
    HOUR,
    MeanType,
    RowBlock,
    StatisticMeta,
    StatRow,
    Table,
    TablePlan,
    WritePlan,
)
from backdate.targets.base import Neighbourhood, StatisticSummary, TargetInfo

MIN_SCHEMA = 34  # first schema with start_ts/created_ts (§1)
MAX_SCHEMA = 53  # newest schema we know (HA 2025.12 .. 2026.11)
BUSY_TIMEOUT = 60.0  # seconds SQLite waits for HA's write lock per attempt
RETRY_FOR = 120.0  # total seconds we keep retrying a locked database
REL_TOL = 1e-9  # read-back tolerance (relative)
UPSERT_ROWS = 100  # rows per upsert statement: <= 7 x 100 parameters, under SQLite's 999
LOCK_WAIT = 10.0  # seconds one server statement waits for a row/table lock before we retry
INLINE_ROWS = 10_000  # MariaDB/MySQL rows per inline multi-row statement (~0.7 MB of SQL)
COPY_ROWS = 50_000  # PostgreSQL rows per COPY + INSERT ... SELECT round
# Environment: the retry budget in seconds (default RETRY_FOR), and the server bulk path:
# "auto" (COPY on PostgreSQL, inline multi-row VALUES on MariaDB/MySQL) or "values" (the
# parameterised 100-row VALUES through the driver's executemany: the path before the bulk
# work, kept for the benchmark).
RETRY_ENV = "BACKDATE_RETRY_FOR"
BULK_ENV = "BACKDATE_BULK"
PROGRESS_STATEMENTS = 50  # multi-row statements between progress reports
# Home Assistant compiles statistics at second 10 after every 5-minute mark (UTC), the hourly
# rollup in the same run at :00:10. Its compile reads the newest 5-minute row and inserts the
# next one as that sum + growth, so a backdate commit that shifts sums between HA's read and
# HA's insert would leave HA's row on the old scale (see `compile_wait`).
COMPILE_AT = 10.0  # seconds after each 5-minute mark
GUARD_FROM = 2.0  # no write transaction may be open from mark + GUARD_FROM ...
GUARD_UNTIL = 40.0  # ... until mark + GUARD_UNTIL (a slow HA compile takes a few seconds)
LIVE_WITHIN = 900.0  # HA counts as compiling when its newest statistics_run is this recent
TRACE_ENV = "BACKDATE_TRACE"  # "1": print BEGIN/COMMIT of write transactions to stderr

STAT_TABLES = (Table.HOURLY.value, Table.SHORT_TERM.value)
META = "statistics_meta"
RUNS = "statistics_runs"
LEGACY_COLUMNS = ("created", "start", "last_reset")  # pre-schema-34 datetimes, always NULL
VALUE_COLUMNS = ("state", "sum", "mean", "min", "max", "last_reset_ts")  # what a plan sets
_FLOAT_COLUMNS = frozenset(
    {"created_ts", "start_ts", "mean", "mean_weight", "min", "max", "last_reset_ts", "state", "sum"}
)
_WRITE = "backdate_write"  # connection execution option: BEGIN IMMEDIATE instead of BEGIN

# §3.1: the units HA's energy and volume converters accept (case matters: mWh vs MWh).
ENERGY_UNITS = frozenset(
    {
        "J",
        "kJ",
        "MJ",
        "GJ",
        "mWh",
        "Wh",
        "kWh",
        "MWh",
        "GWh",
        "TWh",
        "cal",
        "kcal",
        "Mcal",
        "Gcal",
        "thm",
    }
)
VOLUME_UNITS = frozenset({"ft³", "CCF", "MCF", "m³", "L", "mL", "gal", "fl. oz."})

# §3.6, written from the rules there: slugs, no leading/trailing "_", no "__".
_SLUG = r"(?!_)[0-9a-z_]+(?<!_)"
_EXTERNAL_ID = re.compile(rf"^(?!.*__){_SLUG}:{_SLUG}$")
_ENTITY_ID = re.compile(rf"^(?!.*__){_SLUG}\.{_SLUG}$")

_URL_DRIVERS = {
    "sqlite": "sqlite",
    "sqlite+pysqlite": "sqlite",
    "mysql": "mysql+pymysql",
    "mariadb": "mysql+pymysql",
    "mysql+pymysql": "mysql+pymysql",
    "mariadb+pymysql": "mysql+pymysql",
    "mysql+mysqldb": "mysql+pymysql",
    "postgresql": "postgresql+psycopg",
    "postgres": "postgresql+psycopg",
    "postgresql+psycopg": "postgresql+psycopg",
    "postgresql+psycopg2": "postgresql+psycopg",
}

T = TypeVar("T")


def unit_class_for(unit: str | None) -> str | None:
    """HA's `unit_class` for a stored unit: 'energy', 'volume', or None (HA then uses the unit)."""
    if unit in ENERGY_UNITS:
        return "energy"
    if unit in VOLUME_UNITS:
        return "volume"
    return None


# --------------------------------------------------------------------------------------------
# Schema


@dataclass(frozen=True, slots=True)
class SchemaInfo:
    """The schema version HA recorded and the columns each table really has.

    Columns are read from the database, not derived from the version: migrated databases keep
    leftovers (legacy datetime columns) and a failed migration can leave a column missing.
    """

    version: int
    columns: dict[str, frozenset[str]]

    @property
    def has_mean_type(self) -> bool:
        return "mean_type" in self.columns[META]

    @property
    def has_unit_class(self) -> bool:
        return "unit_class" in self.columns[META]

    @property
    def has_mean_weight(self) -> bool:
        return "mean_weight" in self.columns[Table.HOURLY.value]

    def legacy(self, table: str) -> tuple[str, ...]:
        """Legacy datetime columns present in `table` (written as NULL)."""
        return tuple(c for c in LEGACY_COLUMNS if c in self.columns[table])


def _build_tables(schema: SchemaInfo) -> dict[str, sa.Table]:
    """Core tables with only the columns this database has and backdate uses."""
    md = sa.MetaData()
    tables: dict[str, sa.Table] = {}
    for name in STAT_TABLES:
        cols = schema.columns[name]
        tables[name] = sa.Table(
            name,
            md,
            sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
            sa.Column("metadata_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite")),
            *(sa.Column(c, sa.Float()) for c in sorted(cols & _FLOAT_COLUMNS)),
        )
    meta_cols = [
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("statistic_id", sa.String(255)),
        sa.Column("source", sa.String(32)),
        sa.Column("unit_of_measurement", sa.String(255)),
        sa.Column("has_mean", sa.Boolean()),
        sa.Column("has_sum", sa.Boolean()),
        sa.Column("name", sa.String(255)),
    ]
    if schema.has_mean_type:
        meta_cols.append(sa.Column("mean_type", sa.SmallInteger()))
    if schema.has_unit_class:
        meta_cols.append(sa.Column("unit_class", sa.String(255)))
    tables[META] = sa.Table(META, md, *meta_cols)
    # `start` stays untyped text here: SQLite stores it as text we parse ourselves (§2.2).
    tables[RUNS] = sa.Table(
        RUNS,
        md,
        sa.Column("run_id", sa.Integer(), primary_key=True),
        sa.Column("start", sa.String()),
    )
    return tables


# --------------------------------------------------------------------------------------------
# Dialect-specific SQL


def _placeholder(dialect: sa.Dialect) -> str:
    """The DBAPI's positional placeholder, for the raw executemany path."""
    return "?" if dialect.paramstyle == "qmark" else "%s"


def _upsert_sql(
    dialect: sa.Dialect,
    table: str,
    *,
    metadata_id: int,
    created_ts: float,
    bound: Sequence[str],
    legacy: Sequence[str],
    rows: int = 1,
) -> str:
    """INSERT `rows` statistics rows, updating those whose (metadata_id, start_ts) exists.

    Parameters per row: start_ts, then the `bound` value columns (in VALUE_COLUMNS order).
    Value columns not bound are NULL in every row of the plan and are written as literal NULL:
    binding parameters is most of SQLite's cost, so a sum statistic binds 3 instead of 8.
    Several rows per statement save per-statement cost; every dialect accepts multi-row VALUES.
    `metadata_id` and `created_ts` are inlined numbers (an int from the database and our
    clock), so the parameters can be built before the transaction starts. `created_ts` is
    only written on insert; `id` is never supplied (§7); legacy datetime columns are NULL.
    """
    q = dialect.identifier_preparer.quote
    ph = _placeholder(dialect)
    cols = ["created_ts", "metadata_id", "start_ts", *VALUE_COLUMNS, *legacy]
    one = ", ".join(
        [
            repr(float(created_ts)),
            str(int(metadata_id)),
            ph,
            *(ph if c in bound else "NULL" for c in VALUE_COLUMNS),
            *(["NULL"] * len(legacy)),
        ]
    )
    head = (
        f"INSERT INTO {q(table)} ({', '.join(q(c) for c in cols)}) "
        f"VALUES {', '.join([f'({one})'] * rows)}"
    )
    if dialect.name == "mysql":  # MySQL and MariaDB
        sets = [f"{q(c)} = VALUES({q(c)})" for c in VALUE_COLUMNS]
        sets += [f"{q(c)} = NULL" for c in legacy]
        return f"{head} ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    if dialect.name in ("sqlite", "postgresql"):
        sets = [f"{q(c)} = excluded.{q(c)}" for c in VALUE_COLUMNS]
        sets += [f"{q(c)} = NULL" for c in legacy]
        return (
            f"{head} ON CONFLICT ({q('metadata_id')}, {q('start_ts')}) "
            f"DO UPDATE SET {', '.join(sets)}"
        )
    raise TargetError(f"no upsert for database dialect {dialect.name!r}")


def _off_grid(col: sa.ColumnElement[Any], period: int) -> sa.ColumnElement[bool]:
    """True where a start_ts is not a multiple of `period`.

    Works on every dialect although CAST to integer truncates on SQLite and rounds on
    MySQL/PostgreSQL: a fractional value differs from its cast either way, and SQLite's `%`
    on REAL silently truncates, so the integer part is tested separately.
    """
    as_int = sa.cast(col, sa.BigInteger())
    return sa.or_(col != as_int, as_int % period != 0)


def _is_retryable(exc: sa.exc.DBAPIError) -> bool:
    """Lock contention worth waiting out (SQLITE_BUSY, InnoDB lock wait/deadlock, PG 40xxx)."""
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        msg = str(orig).lower()
        return "locked" in msg or "busy" in msg
    code = orig.args[0] if orig is not None and orig.args else None
    if code in (1205, 1213):  # MySQL/MariaDB lock wait timeout, deadlock
        return True
    # PostgreSQL: serialization failure, deadlock, lock_timeout expired (lock_not_available)
    return getattr(orig, "sqlstate", None) in ("40001", "40P01", "55P03")


def compile_wait(now: float, expected: float) -> float:
    """Seconds to wait before BEGIN so that a write transaction expected to take `expected`
    seconds neither overlaps Home Assistant's compile nor commits inside it.

    Pure: `now` is UTC epoch seconds. Forbidden is any transaction open during
    [mark + GUARD_FROM, mark + GUARD_UNTIL) of any 5-minute mark; HA compiles at mark + 10 s.
    A transaction longer than the gap between two guards cannot fit anywhere; it only
    avoids starting inside a guard (the post-commit repair covers the rest).
    """
    mark = math.floor(now / 300.0) * 300.0
    phase = now - mark
    if GUARD_FROM <= phase < GUARD_UNTIL:  # inside this mark's guard
        return mark + GUARD_UNTIL - now
    next_guard = (mark + 300.0 if phase >= GUARD_UNTIL else mark) + GUARD_FROM
    if now + expected <= next_guard or expected > 300.0 - (GUARD_UNTIL - GUARD_FROM):
        return 0.0
    return next_guard + (GUARD_UNTIL - GUARD_FROM) - now


def _meter_growth(previous_state: float | None, state: float | None) -> float | None:
    """How much a total meter grew from one row to the next, as HA's compile counts it: the
    difference, or the new state after a reset (a fall). None when a state is missing."""
    if previous_state is None or state is None:
        return None
    return state - previous_state if state >= previous_state else state


def _trace(message: str) -> None:
    """Trace markers for tests that must know where a process was killed (stderr only)."""
    if os.environ.get(TRACE_ENV) == "1":
        print(f"backdate-trace: {message}", file=sys.stderr, flush=True)


def _stderr_status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _lock_kind(exc: sa.exc.DBAPIError) -> str:
    """A retryable error's kind in words, for the retry line."""
    orig = exc.orig
    if isinstance(orig, sqlite3.OperationalError):
        return "SQLite busy"
    code = orig.args[0] if orig is not None and orig.args else None
    state = getattr(orig, "sqlstate", None)
    if code == 1205 or state == "55P03":
        return "lock wait timeout"
    if code == 1213 or state == "40P01":
        return "deadlock"
    return "serialization failure"


def _sqlite_engine(path: Path, busy_timeout: float) -> Engine:
    """An engine on an existing SQLite file that cooperates with a running HA (§6-7).

    pysqlite would otherwise start transactions lazily with a plain BEGIN, which can fail
    with SQLITE_BUSY half-way through a write; per SQLAlchemy's documented recipe the DBAPI
    connection is put in autocommit mode and we emit BEGIN ourselves: BEGIN IMMEDIATE for
    writes (takes the write lock up front, waiting `busy_timeout`), plain BEGIN for reads (a
    snapshot released when the call ends). No pooling: nothing stays open between calls.
    """
    uri = path.resolve().as_uri() + "?mode=rw"  # mode=rw: never create a missing file

    def connect() -> sqlite3.Connection:
        con = sqlite3.connect(uri, uri=True, timeout=busy_timeout, isolation_level=None)
        con.execute("PRAGMA foreign_keys=ON")
        # HA's own setting in WAL mode: commits stay atomic and the file cannot be corrupted;
        # only the last commits may be lost on power failure. Not in rollback-journal mode.
        if con.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
            con.execute("PRAGMA synchronous=NORMAL")
        return con

    engine = sa.create_engine("sqlite://", creator=connect, poolclass=NullPool)

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get(_WRITE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

    return engine


# --------------------------------------------------------------------------------------------
# Opening


def _driver_url(url: str) -> sa.URL:
    """Map HA's db_url onto the SQLAlchemy driver backdate ships (pymysql, psycopg)."""
    try:
        parsed = sa.make_url(url)
    except (sa.exc.ArgumentError, ValueError):
        raise UsageError(f"not a database URL: {mask_url(url)!r}") from None
    driver = _URL_DRIVERS.get(parsed.drivername)
    if driver is None:
        raise UsageError(
            f"unsupported database URL scheme {parsed.drivername!r}; use sqlite:////PATH, "
            "mysql://, mariadb:// or postgresql://"
        )
    return parsed.set(drivername=driver)


def retry_budget() -> float:
    """Seconds to keep retrying a locked database: $BACKDATE_RETRY_FOR, else RETRY_FOR."""
    raw = os.environ.get(RETRY_ENV)
    if raw is None or not raw.strip():
        return RETRY_FOR
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"{RETRY_ENV}={raw!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise UsageError(f"{RETRY_ENV}={raw!r} must be zero or more seconds")
    return value


def _bulk_mode() -> str:
    mode = os.environ.get(BULK_ENV, "auto").strip().lower() or "auto"
    if mode not in ("auto", "values"):
        raise UsageError(f"{BULK_ENV}={mode!r}: use 'auto' or 'values'")
    return mode


def open_recorder(
    url: str, *, busy_timeout: float = BUSY_TIMEOUT, retry_for: float | None = None
) -> RecorderDatabase:
    """Open HA's recorder database from its db_url and check its schema.

    Raises TargetError (exit 3) when it can't be opened, RefusedError (exit 1) when it isn't a
    recorder database of a schema backdate can write. `retry_for` defaults to
    `retry_budget()`.
    """
    if retry_for is None:
        retry_for = retry_budget()
    parsed = _driver_url(url)
    masked = mask_url(url)
    if parsed.get_backend_name() != "sqlite":
        return _open_server(parsed, masked, retry_for)
    database = parsed.database
    if not database or database == ":memory:":
        raise UsageError(f"{url!r} names no database file; use sqlite:////path/to/db")
    path = Path(database)
    if not path.is_file():
        raise TargetError(_missing_sqlite(path))
    if sqlite3.sqlite_version_info < (3, 25, 0):
        raise TargetError(
            f"SQLite {sqlite3.sqlite_version} is too old (upserts need 3.24, checks need 3.25)"
        )
    engine = _sqlite_engine(path, busy_timeout)
    try:
        return RecorderDatabase(engine, url=masked, kind="sqlite", path=path, retry_for=retry_for)
    except BaseException:
        engine.dispose()
        raise


def _server_engine(parsed: sa.URL, lock_wait: float) -> Engine:
    """An engine on MariaDB/MySQL (pymysql) or PostgreSQL (psycopg 3), set up as HA does (§7).

    MySQL: charset utf8mb4 and session time_zone '+00:00' (DATETIME values are UTC), InnoDB's
    default REPEATABLE READ. PostgreSQL: READ COMMITTED (the default). No pool: planning
    makes a handful of short reads, each in its own transaction.

    Both wait at most `lock_wait` seconds for a lock (InnoDB's default is 50 s, MariaDB's
    metadata lock wait a year, PostgreSQL's forever): a statement that cannot get its lock
    fails fast, the transaction rolls back whole and `_write` retries it within its budget,
    so backdate never sits in a lock queue in front of Home Assistant's own writes.
    """
    backend = parsed.get_backend_name()
    driver = {"mysql": "pymysql", "postgresql": "psycopg"}.get(backend)
    if driver:
        require(driver, f"a {'MariaDB/MySQL' if backend == 'mysql' else 'PostgreSQL'} target")
    if backend == "mysql":
        query = dict(parsed.query)
        query["charset"] = "utf8mb4"
        parsed = parsed.set(query=query)
        seconds = max(1, math.ceil(lock_wait))
        init = (f"SET time_zone = '+00:00', innodb_lock_wait_timeout = {seconds}, "
                f"lock_wait_timeout = {seconds}")
        engine = sa.create_engine(parsed, poolclass=NullPool,
                                  connect_args={"init_command": init})
    elif backend == "postgresql":
        millis = max(1, math.ceil(lock_wait * 1000))
        engine = sa.create_engine(parsed, poolclass=NullPool,
                                  connect_args={"options": f"-c lock_timeout={millis}"})
    else:  # pragma: no cover - _URL_DRIVERS only maps onto these
        raise UsageError(f"unsupported database backend {backend!r}")
    return engine


def _missing_sqlite(path: Path) -> str:
    """No database there; when the URL's path is relative (three slashes) and the same path
    from / exists, that is what the user meant: say so."""
    if path.is_absolute():
        return f"no such database: {path}"
    here = Path.cwd() / path
    absolute = Path("/") / path
    text = (f"no such database: {here} (sqlite:///{path} is relative to the working "
            f"directory; an absolute path needs four slashes: sqlite:////path)")
    if absolute.is_file():
        text += f"; {absolute} exists: use sqlite:///{absolute}"
    return text


def _open_server(parsed: sa.URL, masked: str, retry_for: float) -> RecorderDatabase:
    if not parsed.database:
        raise UsageError(f"{masked} names no database; add /DATABASE to the URL")
    # Each attempt waits for a lock at most a third of the budget (and at most LOCK_WAIT), so
    # a lock held a few seconds is waited out and one held past the budget fails in time.
    engine = _server_engine(parsed, min(LOCK_WAIT, max(retry_for / 3, 1.0)))
    try:
        return RecorderDatabase(engine, url=masked, kind=parsed.get_backend_name(),
                                retry_for=retry_for)
    except BaseException:
        engine.dispose()
        raise


# --------------------------------------------------------------------------------------------
# The target


@dataclass(slots=True)
class _Prepared:
    """One table's upserts as DBAPI parameters, built before the transaction to keep it short.

    `columns` holds start_ts and the `bound` value columns (None for NULL). `batches` pairs a
    rows-per-statement count with the flattened parameter tuples for it (the parameterised
    path: SQLite, and servers with BACKDATE_BULK=values); `arrays` is the same columns as
    float arrays, NaN for NULL (the bulk paths: COPY on PostgreSQL, inline VALUES on
    MariaDB/MySQL).
    """

    plan: TablePlan
    name: str
    created_ts: float
    bound: tuple[str, ...] = ()
    batches: list[tuple[int, list[tuple[Any, ...]]]] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return len(self.arrays[0]) if self.arrays else sum(
            n * len(params) for n, params in self.batches)


@dataclass(slots=True)
class _Written:
    """What the transaction saw, for the read-back after commit."""

    metadata_id: int
    # table -> (start_ts, old sum) of the first row at/after shift_from, before the shift
    shifted_first: dict[str, tuple[float, float]] = field(default_factory=dict)
    # table -> the newest row before and after the write, for statistics HA compiles
    references: dict[str, _Reference] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Reference:
    """A statistic's newest row as the write transaction found it and as it left it.

    HA's compile continues the newest row's sum; a row HA inserted after our commit from a
    read made before it continues `old_sum`, while it should continue `newest_sum`.
    """

    start_ts: float  # the newest row before the write
    old_sum: float
    old_state: float | None
    newest_start: float  # the newest row after the write (same row unless the plan wrote newer)
    newest_sum: float
    newest_state: float | None


@dataclass(frozen=True, slots=True)
class Repair:
    """A row Home Assistant compiled on the old scale during a write, and its corrected sum."""

    table: str
    start_ts: float
    old_sum: float
    new_sum: float


@dataclass(frozen=True, slots=True)
class Rename:
    """One statistics_meta row that `migrate` moves to a new statistic id (NEW had none)."""

    old_id: str
    new_id: str
    metadata_id: int
    source: str  # "recorder" for an entity id, the domain for an external one
    name: str | None = None
    # An entity id HA will compile: leave a 5-minute row without a meter reading after the
    # moved rows, so HA continues the sum from it instead of measuring NEW's meter against
    # OLD's (a step) or starting again from 0 (no 5-minute rows left).
    anchor: bool = False


class RecorderDatabase:
    """A `StatisticsTarget` on HA's recorder database."""

    def __init__(
        self,
        engine: Engine,
        *,
        url: str,
        kind: str,
        path: Path | None = None,
        retry_for: float = RETRY_FOR,
    ) -> None:
        self._engine = engine
        self.url = url
        self.kind = kind
        self.path = path
        self._retry_for = retry_for
        # Where waiting and retrying is announced (the CLI's stderr); callers may replace it.
        self.status: Callable[[str], None] = _stderr_status
        # Rows repaired after the last apply/apply_all (see `_repair_compiled`).
        self.repairs: list[Repair] = []
        # Test hooks only (never set in backdate itself): called inside the write transaction
        # just before COMMIT, and right after it; they let a test interleave a second
        # connection with the commit deterministically.
        self._before_commit: Callable[[], None] | None = None
        self._after_commit: Callable[[], None] | None = None
        # Statistic ids planning asked about (get_metadata): what an import may write, and so
        # what a row-level backup (`backup_statistics`) saves.
        self.consulted: set[str] = set()
        # Write transactions committed so far: after an interrupt, whether the import landed.
        self.commits = 0
        self.schema = self._detect_schema()
        self._t = _build_tables(self.schema)

    # -- context management -----------------------------------------------------------------

    def __enter__(self) -> RecorderDatabase:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every connection (NullPool holds none between calls; this is for symmetry)."""
        self._engine.dispose()

    # -- low level --------------------------------------------------------------------------

    @contextlib.contextmanager
    def _read(self) -> Iterator[Connection]:
        """A short read transaction, ended when the call ends (keeps WAL checkpoints free)."""
        try:
            with self._engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(f"{self.url}: {_describe(exc)}") from exc

    def _wait_for_compile(self, expected: float) -> None:
        """Sleep while `compile_wait` forbids a write transaction now, saying why."""
        while (wait := compile_wait(clock.now(), expected)) > 0:
            # the compile whose guard ends when the wait does (its 5-minute mark, + 10 s)
            compile_at = round((clock.now() + wait - GUARD_UNTIL) / 300) * 300 + COMPILE_AT
            self.status(f"waiting {wait:.0f} s for Home Assistant's compile at "
                        f"{dt.datetime.fromtimestamp(compile_at, dt.UTC):%H:%M:%S} UTC")
            time.sleep(wait)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Connection]:
        """A read transaction whose SELECTs all see one snapshot: REPEATABLE READ on
        PostgreSQL (its default READ COMMITTED sees each statement's own), START TRANSACTION
        WITH CONSISTENT SNAPSHOT on MariaDB/MySQL, a plain BEGIN on SQLite (a WAL read
        transaction is a snapshot)."""
        try:
            with self._engine.connect() as conn:
                if self.kind == "postgresql":
                    conn = conn.execution_options(isolation_level="REPEATABLE READ")
                    with conn.begin():
                        yield conn
                elif self.kind == "mysql":
                    with conn.begin():
                        conn.exec_driver_sql("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                        yield conn
                else:
                    yield conn
        except sa.exc.SQLAlchemyError as exc:
            raise TargetError(f"{self.url}: {_describe(exc)}") from exc

    def _write(self, work: Callable[[Connection], T], *, guard: float | None = None) -> T:
        """Run `work` in one write transaction; retry it whole while the database is locked.

        Any failure rolls the transaction back, so nothing is half-written. `guard`: the
        expected seconds of a transaction that touches a statistic Home Assistant compiles;
        each attempt then waits until it can run clear of HA's compile (`compile_wait`).
        """
        started = time.monotonic()
        deadline = started + self._retry_for
        delay = 0.5
        while True:
            if guard is not None:
                self._wait_for_compile(guard)
            try:
                with self._engine.connect() as conn:
                    conn.execution_options(**{_WRITE: True})
                    mask = None
                    try:
                        with conn.begin():
                            _trace("BEGIN")
                            result = work(conn)
                            if self._before_commit is not None:
                                self._before_commit()
                            # Ctrl-C/SIGTERM wait until `commits` tells the truth about it
                            mask = _hold_signals()
                            _trace("COMMIT")  # sent next; a kill before this line rolls back
                        self.commits += 1
                    finally:
                        if mask is not None:
                            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                    _trace("COMMITTED")
                    if self._after_commit is not None:
                        self._after_commit()
                    return result
            except sa.exc.DBAPIError as exc:
                if _is_retryable(exc) and time.monotonic() + delay < deadline:
                    self.status(f"database locked ({_lock_kind(exc)}), retrying in {delay:g} s")
                    time.sleep(delay)
                    delay = min(delay * 2, 10.0)
                    continue
                if _is_retryable(exc):
                    raise TargetError(
                        f"{self.url}: the database stayed locked for "
                        f"{time.monotonic() - started:.1f} s "
                        f"({_describe(exc)}); nothing was written"
                    ) from exc
                raise TargetError(
                    f"{self.url}: write failed and was rolled back: {_describe(exc)}"
                ) from exc
            except sa.exc.SQLAlchemyError as exc:
                raise TargetError(
                    f"{self.url}: write failed and was rolled back: {_describe(exc)}"
                ) from exc

    def _detect_schema(self) -> SchemaInfo:
        """Version from schema_changes (highest change_id, as HA does, §6) plus real columns."""
        with self._read() as conn:
            insp = sa.inspect(conn)
            tables = set(insp.get_table_names())
            if "schema_changes" not in tables:
                raise RefusedError(
                    f"{self.url} is not a Home Assistant recorder database (no schema_changes)"
                )
            row = conn.execute(
                sa.text("SELECT schema_version FROM schema_changes ORDER BY change_id DESC LIMIT 1")
            ).first()
            if row is None or row[0] is None:
                raise RefusedError(
                    f"{self.url}: schema_changes is empty; start Home Assistant once so it "
                    "finishes creating the database"
                )
            version = int(row[0])
            if version < MIN_SCHEMA:
                raise RefusedError(
                    f"{self.url}: schema version {version} is older than {MIN_SCHEMA} (Home "
                    "Assistant before 2023.3, no start_ts columns); upgrade Home Assistant first"
                )
            if version > MAX_SCHEMA:
                raise RefusedError(
                    f"{self.url}: schema version {version} is newer than {MAX_SCHEMA}, the "
                    "newest backdate knows; update backdate"
                )
            missing = [t for t in (*STAT_TABLES, META, RUNS) if t not in tables]
            if missing:
                raise RefusedError(f"{self.url}: tables missing: {', '.join(missing)}")
            columns = {
                t: frozenset(c["name"] for c in insp.get_columns(t))
                for t in (*STAT_TABLES, META, RUNS)
            }
        for t in STAT_TABLES:
            need = {"id", "metadata_id", "start_ts", "created_ts", *VALUE_COLUMNS}
            if not need <= columns[t]:
                raise RefusedError(
                    f"{self.url}: {t} lacks {', '.join(sorted(need - columns[t]))} although "
                    f"the schema version is {version}; let Home Assistant finish its migration"
                )
        need = {
            "id",
            "statistic_id",
            "source",
            "unit_of_measurement",
            "has_mean",
            "has_sum",
            "name",
        }
        if not need <= columns[META]:
            raise RefusedError(
                f"{self.url}: {META} lacks {', '.join(sorted(need - columns[META]))}"
            )
        return SchemaInfo(version=version, columns=columns)

    def _meta_row(self, conn: Connection, statistic_id: str) -> sa.Row[Any] | None:
        m = self._t[META]
        return conn.execute(sa.select(m).where(m.c.statistic_id == statistic_id)).first()

    def _meta_from_row(self, row: sa.Row[Any]) -> StatisticMeta:
        data = row._mapping
        if self.schema.has_mean_type and data["mean_type"] is not None:
            mean_type = MeanType(int(data["mean_type"]))
        else:  # schema < 49: has_mean is the only truth (§3.1)
            mean_type = MeanType.ARITHMETIC if data["has_mean"] else MeanType.NONE
        return StatisticMeta(
            statistic_id=data["statistic_id"],
            source=data["source"],
            unit_of_measurement=data["unit_of_measurement"],
            has_sum=bool(data["has_sum"]),
            mean_type=mean_type,
            name=data["name"],
            unit_class=data["unit_class"] if self.schema.has_unit_class else None,
            id=int(data["id"]),
        )

    def _row_columns(self, table: str) -> list[sa.Column[Any]]:
        t = self._t[table]
        return [t.c.start_ts, *(t.c[c] for c in VALUE_COLUMNS)]

    def _last_compiled_end(self, conn: Connection) -> float | None:
        runs = self._t[RUNS]
        row = conn.execute(sa.select(runs.c.start).order_by(runs.c.start.desc()).limit(1)).first()
        if row is None:
            return None
        start = _to_epoch(row[0])
        return None if start is None else start + 300.0

    # -- reading ----------------------------------------------------------------------------

    def info(self) -> TargetInfo:
        """Schema version and the end of the newest 5-minute window HA compiled."""
        notes: list[str] = []
        with self._read() as conn:
            last = self._last_compiled_end(conn)
            if self.kind == "sqlite":
                mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
                notes.append(f"SQLite {sqlite3.sqlite_version}, journal_mode={mode}")
                if str(mode).lower() != "wal":
                    notes.append(
                        "journal_mode is not WAL: Home Assistant always sets WAL, so it has not "
                        "opened this file yet or something changed it; stop HA while writing"
                    )
        if not self.schema.has_mean_weight:
            notes.append("no mean_weight column (schema < 49): circular means unsupported")
        return TargetInfo(
            url=self.url,
            kind=self.kind,
            schema_version=self.schema.version,
            last_compiled_end=last,
            supports_short_term=True,
            notes=notes,
        )

    def known_ids(self) -> tuple[set[str], set[str]]:
        """Statistic ids the database holds, and entity ids Home Assistant recorded states
        of (`states_meta`, schema >= 38): what an entity statistic id may name."""
        with self._read() as conn:
            stats = {r[0] for r in conn.exec_driver_sql("SELECT statistic_id FROM statistics_meta")}
            entities: set[str] = set()
            if "states_meta" in sa.inspect(conn).get_table_names():
                entities = {r[0] for r in conn.exec_driver_sql(
                    "SELECT entity_id FROM states_meta") if r[0]}
        return stats, entities

    def get_metadata(self, statistic_id: str) -> StatisticMeta | None:
        """The metadata row, or None; `mean_type` derived from `has_mean` on schema < 49."""
        self.consulted.add(statistic_id)
        with self._read() as conn:
            row = self._meta_row(conn, statistic_id)
        return None if row is None else self._meta_from_row(row)

    def neighbourhood(
        self, table: Table, statistic_id: str, start: float, end: float
    ) -> Neighbourhood:
        """Last row before `start`, rows in [start, end), first row at/after `end`.

        Read in one snapshot so the three parts are consistent with each other.
        """
        name = Table(table).value
        t = self._t[name]
        cols = self._row_columns(name)
        with self._read() as conn:
            meta = self._meta_row(conn, statistic_id)
            if meta is None:
                return Neighbourhood(None, [], None)
            mine = t.c.metadata_id == meta.id
            before = conn.execute(
                sa.select(*cols)
                .where(mine, t.c.start_ts < start)
                .order_by(t.c.start_ts.desc())
                .limit(1)
            ).first()
            inside = conn.execute(
                sa.select(*cols)
                .where(mine, t.c.start_ts >= start, t.c.start_ts < end)
                .order_by(t.c.start_ts)
            ).all()
            after = conn.execute(
                sa.select(*cols).where(mine, t.c.start_ts >= end).order_by(t.c.start_ts).limit(1)
            ).first()
            after_count = 0
            if after is not None:  # how many rows the shift will move (for the plan's report)
                after_count = int(conn.execute(
                    sa.select(sa.func.count()).where(mine, t.c.start_ts >= end)).scalar() or 0)
        return Neighbourhood(
            before=_stat_row(before) if before is not None else None,
            inside=[_stat_row(r) for r in inside],
            after=_stat_row(after) if after is not None else None,
            after_count=after_count,
        )

    def read_rows(
        self, table: Table, statistic_id: str, start: float | None = None, end: float | None = None
    ) -> list[StatRow]:
        """Rows with start <= start_ts < end (either bound optional), oldest first."""
        name = Table(table).value
        t = self._t[name]
        with self._read() as conn:
            meta = self._meta_row(conn, statistic_id)
            if meta is None:
                return []
            q = sa.select(*self._row_columns(name)).where(
                t.c.metadata_id == meta.id, t.c.start_ts.is_not(None)
            )
            if start is not None:
                q = q.where(t.c.start_ts >= start)
            if end is not None:
                q = q.where(t.c.start_ts < end)
            rows = conn.execute(q.order_by(t.c.start_ts)).all()
        return [_stat_row(r) for r in rows]

    def read_sums(self, table: Table, statistic_id: str, start: float | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
        """`start_ts` and `sum` of the rows with a sum at or after `start`, oldest first, as
        arrays: `migrate` reads years of rows, and a StatRow per row costs more than the read."""
        name = Table(table).value
        with self._read() as conn:
            meta = self._meta_row(conn, statistic_id)
            if meta is None:
                return np.empty(0), np.empty(0)
            q = conn.dialect.identifier_preparer.quote
            ph = _placeholder(conn.dialect)
            sql = (f"SELECT {q('start_ts')}, {q('sum')} FROM {q(name)} WHERE "
                   f"{q('metadata_id')} = {ph} AND {q('sum')} IS NOT NULL AND "
                   f"{q('start_ts')} IS NOT NULL")
            params: tuple[Any, ...] = (int(meta.id),)
            if start is not None:
                sql += f" AND {q('start_ts')} >= {ph}"
                params += (float(start),)
            with _driver_cursor(conn) as cur:
                cur.execute(sql + f" ORDER BY {q('start_ts')}", params)
                rows = cur.fetchall()
        if not rows:
            return np.empty(0), np.empty(0)
        data = np.array(rows, dtype=np.float64)
        return data[:, 0].copy(), data[:, 1].copy()

    def list_statistics(self) -> list[StatisticSummary]:
        """Every statistic with row counts, first/last start over both tables, and problems."""
        m = self._t[META]
        with self._read() as conn:
            metas = conn.execute(sa.select(m).order_by(m.c.statistic_id)).all()
            counts: dict[str, dict[int, sa.Row[Any]]] = {}
            falls: dict[str, dict[int, sa.Row[Any]]] = {}
            for name in STAT_TABLES:
                t = self._t[name]
                period = Table(name).period
                counts[name] = {
                    r.metadata_id: r
                    for r in conn.execute(
                        sa.select(
                            t.c.metadata_id,
                            sa.func.count().label("rows"),
                            sa.func.min(t.c.start_ts).label("first"),
                            sa.func.max(t.c.start_ts).label("last"),
                            sa.func.sum(
                                sa.case((_off_grid(t.c.start_ts, period), 1), else_=0)
                            ).label("off_grid"),
                            sa.func.sum(sa.case((t.c.start_ts.is_(None), 1), else_=0)).label(
                                "null_start"
                            ),
                        ).group_by(t.c.metadata_id)
                    )
                }
                prev = sa.func.lag(t.c.sum).over(
                    partition_by=t.c.metadata_id, order_by=t.c.start_ts
                )
                sub = (
                    sa.select(t.c.metadata_id, t.c.start_ts, t.c.sum, prev.label("prev"))
                    .where(t.c.start_ts.is_not(None))
                    .subquery()
                )
                falls[name] = {
                    r.metadata_id: r
                    for r in conn.execute(
                        sa.select(
                            sub.c.metadata_id,
                            sa.func.count().label("n"),
                            sa.func.min(sub.c.start_ts).label("first"),
                        )
                        .where(sub.c.sum < sub.c.prev)
                        .group_by(sub.c.metadata_id)
                    )
                }
        out: list[StatisticSummary] = []
        for row in metas:
            meta = self._meta_from_row(row)
            data = row._mapping
            problems: list[str] = []
            firsts: list[float] = []
            lasts: list[float] = []
            n_rows = {}
            for name in STAT_TABLES:
                c = counts[name].get(meta.id)
                n_rows[name] = int(c.rows) if c is not None else 0
                if c is None:
                    continue
                # The hour range comes from the hourly table; the 5-minute table only when a
                # statistic has no hourly rows yet.
                if c.first is not None and (name == Table.HOURLY.value or not firsts):
                    firsts.append(float(c.first))
                    lasts.append(float(c.last) if name == Table.HOURLY.value
                                 else math.floor(float(c.last) / 3600) * 3600)
                if c.off_grid:
                    problems.append(
                        f"{c.off_grid} {name} rows off the {Table(name).period}-second grid"
                    )
                if c.null_start:
                    problems.append(
                        f"{c.null_start} {name} rows with NULL start_ts (HA treats them as "
                        "unmigrated)"
                    )
                f = falls[name].get(meta.id)
                if meta.has_sum and f is not None:
                    problems.append(
                        f"sum falls {f.n} times in {name}, first at {_iso(float(f.first))}"
                    )
            if self.schema.has_mean_type and data["mean_type"] is None:
                problems.append("mean_type is NULL")
            known = unit_class_for(meta.unit_of_measurement)
            if self.schema.has_unit_class and data["unit_class"] is None and known:
                problems.append(
                    f"unit_class is NULL although {meta.unit_of_measurement!r} is {known}"
                )
            if self.schema.version < 50 and data["has_mean"] is None:
                problems.append(
                    "has_mean is NULL (Home Assistant before 2025.4 fails statistics requests "
                    "that include it)"
                )
            out.append(
                StatisticSummary(
                    meta=meta,
                    hourly_rows=n_rows[Table.HOURLY.value],
                    short_term_rows=n_rows[Table.SHORT_TERM.value],
                    first_start=min(firsts) if firsts else None,
                    last_start=max(lasts) if lasts else None,
                    problems=problems,
                )
            )
        return out

    # -- writing ----------------------------------------------------------------------------

    def apply(self, plan: WritePlan, *, allow_unit_change: bool = False,
              progress: Callable[[int], None] | None = None) -> None:
        """Write the plan in one transaction (metadata, both tables, shifts), then verify it.

        Raises RefusedError before writing when the plan breaks a rule of §8 or the database
        changed since the plan was made; TargetError (rolled back) on any database failure;
        VerificationError when the committed data does not read back as planned.
        `allow_unit_change` lets the plan relabel an existing statistic's unit.
        """
        self._check_plan(plan)
        prepared = self._prepare(plan)
        self.repairs = []
        if not any(p.rows or _has_shift(p.plan) for p in prepared):
            return
        written = self._write(
            lambda conn: self._write_plan(conn, plan, prepared, allow_unit_change, progress),
            guard=self._compile_guard([plan]),
        )
        plan.meta.id = written.metadata_id
        self._verify(plan, written)
        self._repair_compiled(plan, written)

    def apply_all(self, plans: Sequence[WritePlan], *,
                  progress: Callable[[int], None] | None = None,
                  renames: Sequence[Rename] = ()) -> None:
        """Write several statistics in ONE transaction: an import of a file with import,
        export and generation columns lands whole or not at all. Then verify each.

        `renames` (migrate) move statistics_meta rows to a new statistic id in the same
        transaction, before the plans are written; each is read back after the commit."""
        for plan in plans:
            self._check_plan(plan)
        self.repairs = []
        work = [(plan, self._prepare(plan)) for plan in plans]
        work = [(plan, prep) for plan, prep in work
                if any(p.rows or _has_shift(p.plan) for p in prep)]
        if not work and not renames:
            return
        totals = [sum(tp.count for tp in plan.tables) for plan, _ in work]
        bases = [sum(totals[:k]) for k in range(len(totals))]

        def write_all(conn: Connection) -> list[_Written]:
            # Offsets are fixed per plan, so a retried attempt reports from 0 again.
            for rename in renames:
                self._rename(conn, rename)
            out = []
            for (plan, prep), base in zip(work, bases, strict=True):
                report = None if progress is None else (lambda n, _b=base: progress(_b + n))
                out.append(self._write_plan(conn, plan, prep, False, report))
            return out

        guard = self._compile_guard([p for p, _ in work]) if work else None
        if guard is None and any(r.anchor for r in renames):
            with self._read() as conn:
                last = self._last_compiled_end(conn)
            if last is not None and last >= time.time() - LIVE_WITHIN:
                guard = 1.0  # clear of HA's compile, as for an import into an entity
        written = self._write(write_all, guard=guard)
        for rename in renames:
            self._verify_rename(rename)
        for (plan, _), done in zip(work, written, strict=True):
            plan.meta.id = done.metadata_id
            self._verify(plan, done)
        for (plan, _), done in zip(work, written, strict=True):
            self._repair_compiled(plan, done)

    def _rename(self, conn: Connection, rename: Rename) -> None:
        """Move one statistics_meta row to `new_id` (its rows follow by metadata_id), with
        the source HA expects for the new id and has_mean/mean_type/unit_class filled in
        where this schema has them (HA < 2025.4 breaks on NULL has_mean)."""
        m = self._t[META]
        row = self._meta_row(conn, rename.old_id)
        if row is None or int(row.id) != rename.metadata_id:
            raise RefusedError(f"{rename.old_id} changed after the plan was made; run backdate "
                               "again")
        if self._meta_row(conn, rename.new_id) is not None:
            raise RefusedError(f"{rename.new_id} appeared in the database after the plan was "
                               "made; run backdate again")
        data = row._mapping
        values: dict[str, Any] = {"statistic_id": rename.new_id, "source": rename.source,
                                  "has_mean": bool(data["has_mean"])}
        if self.schema.has_mean_type and data["mean_type"] is None:
            values["mean_type"] = int(MeanType.ARITHMETIC if data["has_mean"]
                                      else MeanType.NONE)
        if self.schema.has_unit_class and data["unit_class"] is None:
            values["unit_class"] = unit_class_for(data["unit_of_measurement"])
        if rename.name is not None:
            values["name"] = rename.name
        conn.execute(sa.update(m).where(m.c.id == row.id).values(**values))
        if rename.anchor:
            self._anchor(conn, int(row.id))

    def _anchor(self, conn: Connection, metadata_id: int) -> None:
        """HA's sensor compile continues an entity's sum from its newest 5-minute row and
        measures growth from that row's `state`; with `state` NULL it takes the next reading
        as the new starting point and keeps the sum. Insert such a row in the window after the
        newest row (both tables), if HA has compiled that window already; else clear the newest
        5-minute row's meter reading instead (OLD's meter is not NEW's)."""
        st, h = self._t[Table.SHORT_TERM.value], self._t[Table.HOURLY.value]
        last5 = conn.execute(sa.select(st.c.id, st.c.start_ts, st.c.sum).where(
            st.c.metadata_id == metadata_id, st.c.sum.is_not(None))
            .order_by(st.c.start_ts.desc()).limit(1)).first()
        last_h = conn.execute(sa.select(h.c.start_ts, h.c.sum).where(
            h.c.metadata_id == metadata_id, h.c.sum.is_not(None))
            .order_by(h.c.start_ts.desc()).limit(1)).first()
        if last5 is None and last_h is None:
            return
        if last5 is not None and (last_h is None or last5.start_ts >= last_h.start_ts + 3300):
            start, total = float(last5.start_ts) + 300, float(last5.sum)
        else:
            start, total = float(last_h.start_ts) + 3300, float(last_h.sum)
        limit = self._last_compiled_end(conn)
        if limit is None or start + 300 <= limit:
            values: dict[str, Any] = {"metadata_id": metadata_id, "start_ts": start,
                                      "sum": total, "state": None}
            if "created_ts" in st.c:
                values["created_ts"] = time.time()
            conn.execute(sa.insert(st).values(**values))
        elif last5 is not None:
            conn.execute(sa.update(st).where(st.c.id == last5.id).values(state=None))

    def _verify_rename(self, rename: Rename) -> None:
        with self._read() as conn:
            row = self._meta_row(conn, rename.new_id)
            old = self._meta_row(conn, rename.old_id)
        if row is None or int(row.id) != rename.metadata_id or old is not None:
            raise VerificationError(f"{rename.old_id} -> {rename.new_id}: the metadata row does "
                                    "not read back as moved")

    def statistic_metas(self) -> list[StatisticMeta]:
        """Every statistics_meta row (no row counts): `migrate --map` expands globs on it."""
        m = self._t[META]
        with self._read() as conn:
            rows = conn.execute(sa.select(m).order_by(m.c.statistic_id)).all()
        return [self._meta_from_row(r) for r in rows]

    def delete_statistics(self, statistic_ids: Sequence[str]) -> int:
        """Delete statistics (metadata and the rows of both tables) in one transaction;
        `migrate --remove-source` calls it only after the merged statistic was verified.
        Returns how many existed."""
        def work(conn: Connection) -> int:
            found = 0
            for sid in statistic_ids:
                row = self._meta_row(conn, sid)
                if row is not None:
                    self._delete_statistic(conn, self._t, int(row.id))
                    found += 1
            return found

        return self._write(work)

    def _compile_guard(self, plans: Sequence[WritePlan]) -> float | None:
        """The expected transaction length when the plans touch a statistic Home Assistant
        compiles (an entity statistic) and HA is compiling this database (a statistics_run
        within LIVE_WITHIN seconds); else None: no guard needed.

        External `domain:name` statistics are never compiled by HA. A database HA has not
        compiled for 15 minutes has no HA running on it (HA writes a run every 5 minutes).
        """
        if all(plan.meta.is_external for plan in plans):
            return None
        with self._read() as conn:
            last = self._last_compiled_end(conn)
        if last is None or last < clock.now() - LIVE_WITHIN:
            return None
        rows = sum(tp.count for plan in plans for tp in plan.tables)
        return 1.0 + rows / 20_000  # seconds; ten years of hours ~ 5 s on these engines

    def _repair_compiled(self, plan: WritePlan, written: _Written) -> None:
        """Shift rows Home Assistant compiled on the old scale while we wrote (post-commit).

        HA's compile reads the newest 5-minute row, then inserts the next as that sum plus
        the meter's growth. On PostgreSQL and MariaDB (READ COMMITTED reads), a read before
        our COMMIT and an insert after it put HA's row on the scale before our shift: a step
        of the whole shift. SQLite: HA's SELECT runs outside a transaction (pysqlite begins
        one only at the INSERT), so the same interleaving is possible there too, and an HA
        that holds its read snapshot fails its write as busy instead (a lost compile run):
        the timing guard (`compile_wait`) is the protection for that case.

        Rows newer than the newest row the write left are examined in order: a row whose sum
        continues the old newest sum by its meter growth (rather than the new one) is moved
        by the difference in a second short transaction, then read back. What was repaired
        is announced through `status` and kept in `repairs`.
        """
        if not written.references:
            return
        sid = plan.meta.statistic_id
        fixes: list[Repair] = []
        with self._read() as conn:
            for name, ref in written.references.items():
                t = self._t[name]
                newer = conn.execute(
                    sa.select(t.c.start_ts, t.c.sum, t.c.state)
                    .where(t.c.metadata_id == written.metadata_id,
                           t.c.start_ts > ref.newest_start, t.c.sum.is_not(None))
                    .order_by(t.c.start_ts)
                ).all()
                old_sum, old_state = ref.old_sum, ref.old_state
                new_sum, new_state = ref.newest_sum, ref.newest_state
                for start, total, state in newer:
                    total = float(total)
                    state = None if state is None else float(state)
                    on_old = old_sum + (_meter_growth(old_state, state) or 0.0)
                    on_new = new_sum + (_meter_growth(new_state, state) or 0.0)
                    if abs(total - on_old) < abs(total - on_new):
                        fixed = total + (on_new - on_old)
                        fixes.append(Repair(name, float(start), total, fixed))
                        old_sum, new_sum = total, fixed
                    else:
                        old_sum, new_sum = total - (on_new - on_old), total
                    old_state = new_state = state
        if not fixes:
            return

        def shift_rows(conn: Connection) -> int:
            moved = 0
            for fix in fixes:
                t = self._t[fix.table]
                result = conn.execute(
                    sa.update(t)
                    .where(t.c.metadata_id == written.metadata_id,
                           t.c.start_ts == fix.start_ts, t.c.sum == fix.old_sum)
                    .values(sum=fix.new_sum))
                moved += result.rowcount
            return moved

        moved = self._write(shift_rows)
        with self._read() as conn:
            for fix in fixes:
                t = self._t[fix.table]
                now = conn.execute(sa.select(t.c.sum).where(
                    t.c.metadata_id == written.metadata_id, t.c.start_ts == fix.start_ts)
                ).scalar()
                if not _close(now, fix.new_sum):
                    raise VerificationError(
                        f"{sid}: Home Assistant compiled {fix.table} at {_iso(fix.start_ts)} "
                        f"during the write on the old scale (sum {fix.old_sum!r}); repairing it "
                        f"to {fix.new_sum!r} failed (reads {now!r})")
        self.repairs.extend(fixes)
        first = fixes[0]
        self.status(
            f"{sid}: Home Assistant compiled {len(fixes)} row(s) during the write from sums "
            f"read before it (first {first.table} at {_iso(first.start_ts)}); moved "
            f"{moved} of them by {first.new_sum - first.old_sum:+.6g} onto the new sums "
            "(repaired and verified)")

    def _check_plan(self, plan: WritePlan) -> None:
        """The plan's own consistency and §3.6/§8 rules, checked before anything is written."""
        meta = plan.meta
        sid = meta.statistic_id
        if len(sid) > 255:
            raise RefusedError(f"statistic id longer than 255 characters: {sid[:40]}...")
        if _EXTERNAL_ID.match(sid):
            domain = sid.split(":", 1)[0]
            if not plan.metadata_exists and meta.source != domain:
                raise RefusedError(
                    f"{sid}: source must be {domain!r} (the part before ':'), not {meta.source!r}"
                )
        elif _ENTITY_ID.match(sid):
            if not plan.metadata_exists and meta.source != "recorder":
                raise RefusedError(f"{sid}: entity statistics need source 'recorder'")
        else:
            raise RefusedError(f"{sid!r} is neither an entity id nor an external statistic id")
        if meta.mean_type == MeanType.CIRCULAR and not self.schema.has_mean_type:
            raise RefusedError(
                f"{sid}: circular means need schema 49 (Home Assistant 2025.4) or newer"
            )
        known = unit_class_for(meta.unit_of_measurement)
        if meta.unit_class is not None and known is not None and meta.unit_class != known:
            raise RefusedError(
                f"{sid}: unit_class {meta.unit_class!r} does not fit unit "
                f"{meta.unit_of_measurement!r} ({known})"
            )
        for tp in plan.tables:
            period = tp.table.period
            starts = tp.rows.start_ts
            off = ~np.isfinite(starts) | (np.mod(starts, period) != 0)
            if off.any():
                ts = float(starts[np.flatnonzero(off)[0]])
                raise RefusedError(
                    f"{sid}: {tp.table.value} row at {ts!r}"
                    f"{f' ({_iso(ts)})' if math.isfinite(ts) else ''} is not on the "
                    f"{period}-second UTC grid"
                )
            if starts.size > 1 and not (np.diff(starts) > 0).all():
                uniq, counts = np.unique(starts, return_counts=True)
                if (counts > 1).any():
                    ts = float(uniq[np.flatnonzero(counts > 1)[0]])
                    raise RefusedError(f"{sid}: {tp.table.value} plans {_iso(ts)} twice")
                raise RefusedError(f"{sid}: {tp.table.value} rows are not sorted by time")
            last = float(starts[-1]) if starts.size else -math.inf
            if tp.shift_from is not None:
                if not math.isfinite(tp.shift) or not math.isfinite(tp.shift_from):
                    raise RefusedError(f"{sid}: {tp.table.value} shift is not a number")
                if tp.shift_from <= last:
                    raise RefusedError(
                        f"{sid}: {tp.table.value} shift starts at {_iso(tp.shift_from)}, "
                        "inside the written rows"
                    )

    def _prepare(self, plan: WritePlan) -> list[_Prepared]:
        """Check the values and lay them out as `_upsert_sql` parameters, UPSERT_ROWS a tuple.

        Columns (not rows) are the unit of work so the checks and the flattening run in
        C-level loops; `created_ts` is one 'now' per plan.
        """
        now = time.time()
        dialect = self._engine.dialect.name
        bulk = dialect in ("mysql", "postgresql") and _bulk_mode() == "auto"
        out = []
        for tp in plan.tables:
            prepared = _Prepared(plan=tp, name=tp.table.value, created_ts=now)
            out.append(prepared)
            block = tp.rows
            if not len(block):
                continue
            columns = [block.start_ts.tolist()]
            arrays = [block.start_ts.astype(np.float64)]
            bound = []
            for col in VALUE_COLUMNS:
                arr = block.column(col)
                if arr is None or np.isnan(arr).all():
                    continue
                bad = np.isinf(arr)
                if bad.any():
                    i = int(np.flatnonzero(bad)[0])
                    raise RefusedError(
                        f"{plan.meta.statistic_id}: {tp.table.value} {col} at "
                        f"{_iso(float(block.start_ts[i]))} is {float(arr[i])!r}"
                    )
                if col == "sum" and plan.meta.has_sum and np.isnan(arr).any():
                    i = int(np.flatnonzero(np.isnan(arr))[0])
                    raise RefusedError(
                        f"{plan.meta.statistic_id}: {tp.table.value} sum at "
                        f"{_iso(float(block.start_ts[i]))} is nan: a sum statistic needs a sum "
                        "in every row"
                    )
                bound.append(col)
                arrays.append(arr.astype(np.float64))
                if bulk:
                    continue
                values = arr.tolist()
                if np.isnan(arr).any():
                    values = [None if v != v else v for v in values]
                columns.append(values)
            prepared.bound = tuple(bound)
            if bulk:
                prepared.arrays = arrays
                continue
            flat = [v for row in zip(*columns, strict=True) for v in row]
            width = len(columns)
            step = UPSERT_ROWS * width
            full = len(flat) // step * step
            if full:
                prepared.batches.append(
                    (UPSERT_ROWS, [tuple(flat[i : i + step]) for i in range(0, full, step)])
                )
            if full < len(flat):
                prepared.batches.append(((len(flat) - full) // width, [tuple(flat[full:])]))
        return out

    def _write_plan(
        self,
        conn: Connection,
        plan: WritePlan,
        prepared: list[_Prepared],
        allow_unit_change: bool,
        progress: Callable[[int], None] | None = None,
    ) -> _Written:
        """Everything one plan writes; runs inside the write transaction."""
        version = conn.execute(
            sa.text("SELECT schema_version FROM schema_changes ORDER BY change_id DESC LIMIT 1")
        ).scalar()
        if version != self.schema.version:
            raise RefusedError(
                f"{self.url}: schema changed from {self.schema.version} to {version} while "
                "backdate was running (Home Assistant migrated it); run backdate again"
            )
        if not plan.meta.is_external:
            self._check_compiled_window(conn, plan)
        metadata_id = self._write_meta(conn, plan, allow_unit_change)
        written = _Written(metadata_id=metadata_id)
        compiled = not plan.meta.is_external and plan.metadata_exists
        newest_before = ({p.name: _newest_row(conn, self._t[p.name], metadata_id)
                          for p in prepared} if compiled else {})
        done = 0
        for p in prepared:
            if plan.metadata_exists:
                self._check_seams(conn, metadata_id, p.plan, plan.meta.statistic_id)
            legacy = self.schema.legacy(p.name)
            if p.arrays:
                bulk = _copy_upsert if conn.dialect.name == "postgresql" else _inline_upsert
                fresh = not plan.metadata_exists
                for rows in bulk(conn, p, metadata_id, legacy, fresh):
                    done += rows
                    if progress is not None:
                        progress(done)
            for rows, params in p.batches:
                sql = _upsert_sql(
                    conn.dialect,
                    p.name,
                    metadata_id=metadata_id,
                    created_ts=p.created_ts,
                    bound=p.bound,
                    legacy=legacy,
                    rows=rows,
                )
                # A list: the DBAPI's executemany; in slices when someone watches progress.
                step = len(params) if progress is None else PROGRESS_STATEMENTS
                for i in range(0, len(params), step):
                    conn.exec_driver_sql(sql, params[i : i + step])
                    done += rows * len(params[i : i + step])
                    if progress is not None:
                        progress(done)
            if _has_shift(p.plan):
                first = _shift_sums(conn, self._t[p.name], metadata_id, p.plan)
                if first is not None:
                    written.shifted_first[p.name] = first
        for p in prepared:
            ref = _reference(newest_before.get(p.name), p.plan)
            if ref is not None:
                written.references[p.name] = ref
        return written

    def _check_compiled_window(self, conn: Connection, plan: WritePlan) -> None:
        """Rule §8.3: HA compiles entity statistics; never write a window it hasn't closed yet.

        Otherwise HA's own insert for that window would hit the unique index and HA would drop
        the whole compile run (§7).
        """
        limit = self._last_compiled_end(conn)
        if limit is None:  # HA never compiled here; it starts at the current window
            limit = math.floor(clock.now() / 300) * 300
        for tp in plan.tables:
            if tp.count:
                end = float(tp.rows.start_ts[-1]) + tp.table.period
                if end > limit:
                    raise RefusedError(
                        f"{plan.meta.statistic_id}: {tp.table.value} rows up to {_iso(end)} "
                        f"reach past the last window Home Assistant compiled ({_iso(limit)}); "
                        "it would collide with Home Assistant's own rows"
                    )

    def _write_meta(self, conn: Connection, plan: WritePlan, allow_unit_change: bool) -> int:
        """Insert or update the statistics_meta row; returns its id.

        Always writes has_mean as 0/1 (NULL breaks HA < 2025.4, §8.4), mean_type and unit_class
        where the columns exist; never changes an existing row's source.
        """
        m = self._t[META]
        meta = plan.meta
        unit_class = meta.unit_class or unit_class_for(meta.unit_of_measurement)
        values: dict[str, Any] = {
            "unit_of_measurement": meta.unit_of_measurement,
            "has_mean": meta.mean_type == MeanType.ARITHMETIC,
            "has_sum": bool(meta.has_sum),
            "name": meta.name,
        }
        if self.schema.has_mean_type:
            values["mean_type"] = int(meta.mean_type)
        if self.schema.has_unit_class:
            values["unit_class"] = unit_class
        row = self._meta_row(conn, meta.statistic_id)
        if row is None:
            if plan.metadata_exists:
                raise RefusedError(
                    f"{meta.statistic_id} was deleted from the database after the plan was "
                    "made; run backdate again"
                )
            result = conn.execute(
                sa.insert(m).values(statistic_id=meta.statistic_id, source=meta.source, **values)
            )
            return int(result.inserted_primary_key[0])
        if not plan.metadata_exists:
            raise RefusedError(
                f"{meta.statistic_id} appeared in the database after the plan was made; "
                "run backdate again"
            )
        if meta.id is not None and meta.id != row.id:
            raise RefusedError(
                f"{meta.statistic_id} has metadata id {row.id}, the plan expected {meta.id}"
            )
        if row.unit_of_measurement != meta.unit_of_measurement and not allow_unit_change:
            raise RefusedError(
                f"{meta.statistic_id} is stored in {row.unit_of_measurement!r} but the plan "
                f"writes {meta.unit_of_measurement!r}; backdate converts values into the stored "
                "unit, so this is a bug or the statistic changed"
            )
        current = row._mapping
        changed = {k: v for k, v in values.items() if current[k] != v}
        if changed:
            conn.execute(sa.update(m).where(m.c.id == row.id).values(**changed))
        return int(row.id)

    def _check_seams(self, conn: Connection, metadata_id: int, tp: TablePlan, sid: str) -> None:
        """Refuse when the rows the plan's seams rest on changed after it was made.

        The shift and the edges of the written window were computed from them; writing on top
        of different rows would leave a step in the sum.
        """
        t = self._t[tp.table.value]
        planned = set(tp.rows.start_ts.tolist())
        for seam in (tp.seam_before, tp.seam_after_old):
            if seam is None or seam.start_ts in planned:
                continue
            now = conn.execute(
                sa.select(t.c.sum).where(
                    t.c.metadata_id == metadata_id, t.c.start_ts == seam.start_ts
                )
            ).first()
            if now is None or not _close(now[0], seam.sum):
                got = "no row" if now is None else f"sum {now[0]!r}"
                raise RefusedError(
                    f"{sid}: {tp.table.value} at {_iso(seam.start_ts)} changed since the plan "
                    f"was made ({got}, planned on sum {seam.sum!r}); run backdate again"
                )

    # -- verification -----------------------------------------------------------------------

    def _verify_rows(self, conn: Connection, sid: str, name: str, metadata_id: int,
                     block: RowBlock) -> None:
        """Read the written range back through the DBAPI cursor (no ORM rows: ten years of
        hours read back in milliseconds) and compare it column by column."""
        t = self._t[name]
        columns = [c for c in VALUE_COLUMNS if block.column(c) is not None]
        stmt = (
            sa.select(t.c.start_ts, *(t.c[c] for c in columns))
            .where(
                t.c.metadata_id == metadata_id,
                t.c.start_ts >= float(block.start_ts[0]),
                t.c.start_ts <= float(block.start_ts[-1]),
            )
            .order_by(t.c.start_ts)
        )
        result = conn.execute(stmt)
        got = result.cursor.fetchall() if result.cursor is not None else list(result)
        _verify_block(sid, name, block, got, columns)

    def _verify(self, plan: WritePlan, written: _Written) -> None:
        """Read back every upserted row and the first shifted row; name the first mismatch."""
        sid = plan.meta.statistic_id
        with self._read() as conn:
            meta = self._meta_row(conn, sid)
            if meta is None or int(meta.id) != written.metadata_id:
                raise VerificationError(f"{sid}: metadata row missing after the write")
            if meta.unit_of_measurement != plan.meta.unit_of_measurement or bool(
                meta.has_sum
            ) != bool(plan.meta.has_sum):
                raise VerificationError(f"{sid}: metadata does not read back as written")
            for tp in plan.tables:
                name = tp.table.value
                t = self._t[name]
                if tp.count:
                    self._verify_rows(conn, sid, name, written.metadata_id, tp.rows)
                first = written.shifted_first.get(name)
                if first is not None:
                    start, old_sum = first
                    now = conn.execute(
                        sa.select(t.c.sum).where(
                            t.c.metadata_id == written.metadata_id, t.c.start_ts == start
                        )
                    ).scalar()
                    if not _close(now, old_sum + tp.shift):
                        raise VerificationError(
                            f"{sid}: {name} at {_iso(start)} reads back sum={now!r} after the "
                            f"shift, expected {old_sum + tp.shift!r}"
                        )


    # -- row-level backup (MariaDB/MySQL, PostgreSQL) ---------------------------------------

    def _reflect(self, conn: Connection) -> dict[str, sa.Table]:
        md = sa.MetaData()
        return {name: sa.Table(name, md, autoload_with=conn) for name in (META, *STAT_TABLES)}

    def identity(self) -> str | None:
        """Which database this is: its first `schema_changes` row (written when Home
        Assistant created the file, with a microsecond time), stable for its whole life and
        different for every other database. Backups carry it so `restore` can tell."""
        with self._read() as conn:
            row = conn.exec_driver_sql(
                "SELECT change_id, schema_version, changed FROM schema_changes "
                "ORDER BY change_id LIMIT 1").first()
        if row is None:
            return None
        changed = row[2]
        if isinstance(changed, dt.datetime):
            changed = changed.replace(tzinfo=None).isoformat(sep=" ")
        return f"{row[0]}:{row[1]}:{changed}"

    def backup_statistics(self, statistic_ids: Sequence[str] | None = None,
                          directory: Path | None = None, prefix: str = "backdate-backup-"
                          ) -> Path:
        """Save the statistics' metadata rows and all their rows (both tables, every column,
        ids included) to `<prefix><UTC time>.jsonl` in `directory` (default: the current
        directory), read in one transaction. A statistic without metadata is saved as
        absent, so `restore_statistics` removes what an import created. The first line is the
        manifest (`backdate.store.backups`): database identity, schema, statistics, time.

        `statistic_ids` defaults to every id planning asked about (`consulted`).
        """
        from backdate.store.backups import FORMAT

        ids = sorted(set(self.consulted if statistic_ids is None else statistic_ids))
        folder = Path.cwd() if directory is None else Path(directory)
        identity = self.identity()
        now = dt.datetime.now(dt.UTC)
        dest = folder / f"{prefix}{now:%Y%m%dT%H%M%S%fZ}.jsonl"
        tmp = dest.with_name(dest.name + ".part")
        try:
            with self._snapshot() as conn, tmp.open("w", encoding="utf-8") as out:
                header = {"backdate_backup": FORMAT, "engine": self.kind, "url": self.url,
                          "database": identity, "schema_version": self.schema.version,
                          "created": now.isoformat(), "backdate_version": _version(),
                          "compiled_end": self._last_compiled_end(conn),
                          "statistic_ids": ids}
                out.write(json.dumps(header) + "\n")
                # The driver's own values (no SQLAlchemy types): a reflected MySQL DOUBLE
                # would come back as a Decimal rounded to 10 digits.
                q = conn.dialect.identifier_preparer.quote
                ph = _placeholder(conn.dialect)
                for sid in ids:
                    result = conn.exec_driver_sql(
                        f"SELECT * FROM {q(META)} WHERE {q('statistic_id')} = {ph}", (sid,))
                    keys = list(result.keys())
                    meta = result.first()
                    out.write(json.dumps({"meta": sid, "row": None if meta is None else
                                          _jsonable(dict(zip(keys, meta, strict=True)))})
                              + "\n")
                    if meta is None:
                        continue
                    meta_id = int(meta[keys.index("id")])
                    for name in STAT_TABLES:
                        result = conn.exec_driver_sql(
                            f"SELECT * FROM {q(name)} WHERE {q('metadata_id')} = {ph} "
                            f"ORDER BY {q('id')}", (meta_id,))
                        keys = list(result.keys())
                        for row in result:
                            out.write(json.dumps({"table": name, "statistic_id": sid,
                                                  "row": _jsonable(dict(zip(keys, row,
                                                                            strict=True)))})
                                      + "\n")
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(dest)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise TargetError(f"backup to {dest} failed: {exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def load_backup(self, backup: str | Path) -> _Backup:
        """Read a row backup and check it belongs to this database (RefusedError if not)."""
        from backdate.store.backups import read_manifest

        path = Path(backup)
        manifest = read_manifest(path)
        if manifest is None:
            raise UsageError(f"{path} is not a backdate backup (no manifest line)")
        if manifest.engine != self.kind:
            raise RefusedError(f"{path} is a backup of a {manifest.engine} database "
                               f"({manifest.url}), not of {self.url}; not restoring")
        if not manifest.belongs_to(self.url, self.identity()):
            raise RefusedError(
                f"{path} belongs to another database ({manifest.url}, created "
                f"{(manifest.database or '?').split(':', 2)[-1]}), not to {self.url}; "
                "not restoring")
        if manifest.schema_version != self.schema.version:
            raise RefusedError(
                f"{path} was taken at schema {manifest.schema_version}, the database is at "
                f"{self.schema.version} now; not restoring")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
            records = [json.loads(line) for line in lines[1:] if line.strip()]
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise UsageError(f"{path} is not a backdate backup: {exc}") from None
        ids = manifest.statistic_ids
        metas: dict[str, dict[str, Any] | None] = {}
        rows: dict[str, dict[str, list[dict[str, Any]]]] = {sid: {n: [] for n in STAT_TABLES}
                                                            for sid in ids}
        try:
            for rec in records:
                if "meta" in rec:
                    metas[rec["meta"]] = rec["row"]
                else:
                    rows[rec["statistic_id"]][rec["table"]].append(rec["row"])
        except (KeyError, TypeError):
            raise UsageError(f"{path} is damaged (a line names no known statistic); "
                             "not restoring") from None
        if set(metas) != set(ids):
            raise UsageError(f"{path} is incomplete (metadata lines missing); not restoring")
        return _Backup(path, ids, metas, rows, manifest.compiled_end, manifest.created)

    def restore_statistics(self, backup: str | Path | _Backup, *,
                           force: bool = False) -> list[str]:
        """Put the statistics saved by `backup_statistics` back exactly, in one transaction:
        their current rows (both tables) are deleted and the saved rows inserted with their
        saved ids and values; metadata gets its saved values; statistics absent at backup
        time are deleted. Nothing else in the database is touched, so a running Home
        Assistant keeps everything else it wrote. Returns the statistic ids restored.

        Home Assistant keeps compiling an entity statistic after the backup; restoring would
        delete those newer rows (and re-chaining them onto the restored sums would be a new
        write nobody planned). So a restore is refused (RefusedError, nothing written) while
        an entity statistic has rows HA wrote after the backup, naming what would be lost,
        unless `force`."""
        saved = backup if isinstance(backup, _Backup) else self.load_backup(backup)

        def work(conn: Connection) -> None:
            tables = self._reflect(conn)
            m = tables[META]
            if not force:
                self._refuse_losing_compiled(conn, tables, saved)
            # Statistics absent at backup time go first: a migrate rename moved OLD's
            # metadata row (its id) to NEW, and OLD's row comes back with that id.
            for sid in sorted(saved.ids, key=lambda i: saved.metas[i] is not None):
                meta = saved.metas[sid]
                current = conn.execute(sa.select(m.c.id).where(m.c.statistic_id == sid)).first()
                if current is not None and (meta is None or current.id != meta["id"]):
                    self._delete_statistic(conn, tables, int(current.id))
                    current = None
                if meta is None:
                    continue
                meta_values = _from_jsonable(meta, m)
                if current is None:
                    _insert_raw(conn, META, [meta_values])
                else:
                    _update_raw(conn, META, meta_values)
                for name in STAT_TABLES:
                    t = tables[name]
                    conn.execute(t.delete().where(t.c.metadata_id == meta["id"]))
                    _insert_raw(conn, name, [_from_jsonable(r, t) for r in saved.rows[sid][name]])

        self._write(work)
        return saved.ids

    def lost_by_restore(self, backup: _Backup) -> list[str]:
        """What restoring `backup` would delete that Home Assistant wrote after it."""
        with self._read() as conn:
            return self._lost_rows(conn, self._reflect(conn), backup)

    @staticmethod
    def _lost_rows(conn: Connection, tables: dict[str, sa.Table], saved: _Backup) -> list[str]:
        """Rows of entity statistics Home Assistant wrote after the backup: newer than the
        backup's newest row and outside the window HA had compiled when it was taken (an
        import never writes past that window, so such rows are HA's own)."""
        m = tables[META]
        lost: list[str] = []
        metas = saved.metas
        # A migrate rename moved a saved metadata row (its id) to an id absent at backup time:
        # that statistic's rows are the saved ones, plus the one 5-minute row the rename adds.
        moved_from = {int(meta["id"]): s for s, meta in metas.items() if meta is not None}
        for sid in saved.ids:
            if not _ENTITY_ID.match(sid):
                continue  # external statistics: only imports write them
            current = conn.execute(sa.select(m.c.id).where(m.c.statistic_id == sid)).first()
            if current is None:
                continue
            origin = sid
            if metas[sid] is None and int(current.id) in moved_from:
                origin = moved_from[int(current.id)]
            for name in STAT_TABLES:
                t = tables[name]
                period = HOUR if name == Table.HOURLY.value else FIVE_MINUTES
                saved_starts = [r["start_ts"] for r in saved.rows[origin][name]
                                if r.get("start_ts") is not None]
                saved_newest = (max(saved_starts) if saved_starts and metas[origin] is not None
                                else None)
                bounds = [] if saved_newest is None else [saved_newest]
                if saved.compiled_end is not None:
                    bounds.append(saved.compiled_end - period)
                cond = t.c.metadata_id == current.id
                if bounds:
                    cond = sa.and_(cond, t.c.start_ts > max(bounds))
                if origin != sid:  # not the rename's own row without a meter reading
                    keep = t.c.state.is_not(None)
                    if saved_newest is not None:
                        keep = sa.or_(keep, t.c.start_ts > saved_newest + 300)
                    cond = sa.and_(cond, keep)
                count, last = conn.execute(
                    sa.select(sa.func.count(), sa.func.max(t.c.start_ts)).where(cond)).one()
                if count:
                    lost.append(f"{sid}: {count} {name} row(s) newer than the backup "
                                f"(up to {_iso(float(last))})")
        return lost

    @classmethod
    def _refuse_losing_compiled(cls, conn: Connection, tables: dict[str, sa.Table],
                                saved: _Backup) -> None:
        """RefusedError when restoring would delete rows HA compiled after the backup."""
        lost = cls._lost_rows(conn, tables, saved)
        if lost:
            raise RefusedError(
                f"not restoring {saved.path}: Home Assistant compiled rows after the backup that "
                "the restore would delete: " + "; ".join(lost)
                + ". Use --force to restore anyway and lose them")

    @staticmethod
    def _delete_statistic(conn: Connection, tables: dict[str, sa.Table], meta_id: int) -> None:
        for name in STAT_TABLES:
            t = tables[name]
            conn.execute(t.delete().where(t.c.metadata_id == meta_id))
        m = tables[META]
        conn.execute(m.delete().where(m.c.id == meta_id))


def _jsonable(row: dict[str, Any]) -> dict[str, Any]:
    """A database row as JSON values; datetimes tagged so they come back as datetimes.
    Floats survive exactly (JSON writes Python's shortest round-trip repr)."""
    out: dict[str, Any] = {}
    for key, value in row.items():
        if isinstance(value, dt.datetime):
            value = {"$datetime": value.isoformat()}
        elif isinstance(value, decimal.Decimal):
            value = float(value)
        out[key] = value
    return out


def _from_jsonable(row: dict[str, Any], table: sa.Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in row.items():
        if key not in table.c:
            raise RefusedError(f"the backup has a column {table.name}.{key} the database lacks")
        if isinstance(value, dict) and "$datetime" in value:
            value = dt.datetime.fromisoformat(value["$datetime"])
        out[key] = value
    return out


@dataclass(slots=True)
class _Backup:
    """A row backup read into memory and checked against the database it is restored to."""

    path: Path
    ids: list[str]
    metas: dict[str, dict[str, Any] | None]
    rows: dict[str, dict[str, list[dict[str, Any]]]]
    compiled_end: float | None
    created: str

    def row_counts(self) -> dict[str, int]:
        """Saved rows per statistic (both tables)."""
        return {sid: sum(len(v) for v in self.rows[sid].values()) for sid in self.ids}


def _insert_raw(conn: Connection, table: str, rows: list[dict[str, Any]]) -> None:
    """Insert saved rows as the driver's own values (SQLite keeps legacy datetimes as text,
    which SQLAlchemy's DateTime type would refuse), in chunks, ids included."""
    if not rows:
        return
    q = conn.dialect.identifier_preparer.quote
    ph = _placeholder(conn.dialect)
    keys = list(rows[0])
    sql = (f"INSERT INTO {q(table)} ({', '.join(q(k) for k in keys)}) "
           f"VALUES ({', '.join([ph] * len(keys))})")
    values = [tuple(r.get(k) for k in keys) for r in rows]
    for i in range(0, len(values), 5000):
        conn.exec_driver_sql(sql, values[i : i + 5000])


def _update_raw(conn: Connection, table: str, row: dict[str, Any]) -> None:
    q = conn.dialect.identifier_preparer.quote
    ph = _placeholder(conn.dialect)
    keys = [k for k in row if k != "id"]
    conn.exec_driver_sql(
        f"UPDATE {q(table)} SET {', '.join(f'{q(k)} = {ph}' for k in keys)} WHERE {q('id')} = {ph}",
        (*(row[k] for k in keys), row["id"]))


def _hold_signals() -> set[signal.Signals]:
    """Block SIGINT/SIGTERM (delivered when unblocked): a COMMIT is never half-reported."""
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backdate")
    except PackageNotFoundError:
        return "unknown"


def _verify_block(sid: str, name: str, block: RowBlock, got: list[tuple[Any, ...]],
                  columns: list[str]) -> None:
    """Compare rows read back with the planned block; name the first row that differs."""
    try:
        table = np.array(got, dtype=np.float64).reshape(len(got), len(columns) + 1)
    except TypeError:  # NULLs in the database: compare them as NaN
        table = np.array([[np.nan if v is None else v for v in row] for row in got],
                         dtype=np.float64).reshape(len(got), len(columns) + 1)
    have_starts = table[:, 0]
    if have_starts.shape == block.start_ts.shape and (have_starts == block.start_ts).all():
        index = np.arange(len(block))
    else:
        missing = np.setdiff1d(block.start_ts, have_starts)
        if missing.size:
            raise VerificationError(
                f"{sid}: {name} row at {_iso(float(missing[0]))} is missing after the write")
        index = np.searchsorted(have_starts, block.start_ts)
    for k, col in enumerate(columns, start=1):
        want = block.column(col)
        have = table[index, k]
        if want is None:
            want = np.full(len(block), np.nan)
        same = (have == want) | (np.isnan(have) & np.isnan(want))
        if not same.all():
            same |= np.isclose(have, want, rtol=1e-9, atol=1e-9)
        if not same.all():
            i = int(np.flatnonzero(~same)[0])
            raise VerificationError(
                f"{sid}: {name} at {_iso(float(block.start_ts[i]))} reads back "
                f"{col}={float(have[i])!r}, the plan wrote {float(want[i])!r}"
            )


def _literals(column: np.ndarray, dialect: str) -> list[str]:
    """One column as SQL/COPY text literals, NaN as NULL. repr() is Python's shortest
    round-trip form, so the server parses back the very same double (as pymysql does, MySQL
    gets an 'e0' so the literal is a DOUBLE, not a DECIMAL); NULL is COPY's \\N on
    PostgreSQL."""
    null = "\\N" if dialect == "postgresql" else "NULL"
    values = column.tolist()
    if np.isnan(column).any():
        out = [null if v != v else repr(v) for v in values]
    else:  # the usual case: map() keeps the loop in C
        out = list(map(repr, values))
    if dialect == "mysql":
        out = [v if v == null or "e" in v else v + "e0" for v in out]
    return out


def _upsert_tail(dialect: sa.Dialect, legacy: Sequence[str], *, fresh: bool = False) -> str:
    """The ON DUPLICATE KEY / ON CONFLICT clause of the bulk paths; none for a `fresh`
    statistic, whose metadata row this very transaction inserted: no other transaction can
    hold rows for it, and a plain INSERT skips the conflict check (a third of PostgreSQL's
    insert time)."""
    if fresh:
        return ""
    q = dialect.identifier_preparer.quote
    if dialect.name == "mysql":
        sets = [f"{q(c)} = VALUES({q(c)})" for c in VALUE_COLUMNS]
        sets += [f"{q(c)} = NULL" for c in legacy]
        return f" ON DUPLICATE KEY UPDATE {', '.join(sets)}"
    sets = [f"{q(c)} = excluded.{q(c)}" for c in VALUE_COLUMNS]
    sets += [f"{q(c)} = NULL" for c in legacy]
    return f" ON CONFLICT ({q('metadata_id')}, {q('start_ts')}) DO UPDATE SET {', '.join(sets)}"


@contextlib.contextmanager
def _driver_cursor(conn: Connection) -> Iterator[Any]:
    """The DBAPI cursor of the transaction's own connection (for COPY and pre-built SQL),
    its errors wrapped as SQLAlchemy's would be, so `_write` sees a lock wait timeout or a
    deadlock as retryable and anything else rolls back as usual."""
    dbapi_error = conn.dialect.loaded_dbapi.Error
    cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        yield cursor
    except dbapi_error as exc:
        raise sa.exc.DBAPIError.instance(None, None, exc, dbapi_error) from exc
    finally:
        cursor.close()


def _inline_upsert(conn: Connection, p: _Prepared, metadata_id: int,
                   legacy: Sequence[str], fresh: bool) -> Iterator[int]:
    """MariaDB/MySQL: INLINE_ROWS rows per multi-row INSERT ... ON DUPLICATE KEY UPDATE, the
    numbers written as literals. pymysql's executemany cannot rewrite a statement with
    literals in it, so the parameterised path pays one round trip and a Python-level escape
    per 100 rows; here ten years of hours are nine statements. Yields rows written."""
    q = conn.dialect.identifier_preparer.quote
    cols = ["created_ts", "metadata_id", "start_ts", *VALUE_COLUMNS, *legacy]
    slots = iter(range(1, len(p.arrays)))
    fixed = f"({_literals(np.array([p.created_ts]), 'mysql')[0]},{int(metadata_id)},"
    parts = ["{}", *("{}" if c in p.bound else "NULL" for c in VALUE_COLUMNS),
             *(["NULL"] * len(legacy))]
    template = fixed + ",".join(parts) + ")"
    order = [0, *(next(slots) for c in VALUE_COLUMNS if c in p.bound)]
    head = f"INSERT INTO {q(p.name)} ({', '.join(q(c) for c in cols)}) VALUES "
    tail = _upsert_tail(conn.dialect, legacy, fresh=fresh)
    literals = [_literals(a, "mysql") for a in p.arrays]
    total = len(literals[0])
    with _driver_cursor(conn) as cursor:
        for lo in range(0, total, INLINE_ROWS):
            hi = min(lo + INLINE_ROWS, total)
            columns = [literals[k][lo:hi] for k in order]
            values = ",".join(template.format(*row) for row in zip(*columns, strict=True))
            cursor.execute(head + values + tail)
            yield hi - lo


_PGCOPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, no extension


def _copy_binary(columns: list[np.ndarray]) -> bytes:
    """Rows of doubles (no NULLs) in PostgreSQL's binary COPY format, built by numpy in one
    pass: per row a field count, then per field its length (8) and the big-endian IEEE
    double. Exact by construction (no text round trip) and no per-value Python work."""
    fields = [("count", ">i2")]
    for k in range(len(columns)):
        fields += [(f"len{k}", ">i4"), (f"v{k}", ">f8")]
    rows = np.empty(len(columns[0]), dtype=np.dtype(fields))
    rows["count"] = len(columns)
    for k, column in enumerate(columns):
        rows[f"len{k}"] = 8
        rows[f"v{k}"] = column
    return _PGCOPY_HEADER + rows.tobytes() + b"\xff\xff"


def _copy_text(columns: list[np.ndarray]) -> str:
    """Rows in COPY's text format, NULL as \\N (used when a column has NULLs)."""
    literals = [_literals(c, "postgresql") for c in columns]
    return "\n".join("\t".join(row) for row in zip(*literals, strict=True)) + "\n"


def _copy_upsert(conn: Connection, p: _Prepared, metadata_id: int,
                 legacy: Sequence[str], fresh: bool) -> Iterator[int]:
    """PostgreSQL: COPY the rows into a temporary table, then one INSERT ... SELECT ... ON
    CONFLICT DO UPDATE moves them into the statistics table, COPY_ROWS at a time. The temporary
    table lives in this transaction only (ON COMMIT DROP; gone on rollback). Yields rows."""
    q = conn.dialect.identifier_preparer.quote
    temp = "backdate_rows"
    staged = ["start_ts", *p.bound]
    conn.exec_driver_sql(
        f"CREATE TEMPORARY TABLE {temp} ("
        + ", ".join(f"{q(c)} double precision" for c in staged) + ") ON COMMIT DROP")
    cols = ["created_ts", "metadata_id", "start_ts", *VALUE_COLUMNS, *legacy]
    select = [f"{float(p.created_ts)!r}::double precision", str(int(metadata_id)),
              q("start_ts"), *(q(c) if c in p.bound else "NULL" for c in VALUE_COLUMNS),
              *(["NULL"] * len(legacy))]
    move = (f"INSERT INTO {q(p.name)} ({', '.join(q(c) for c in cols)}) "
            f"SELECT {', '.join(select)} FROM {temp} ORDER BY {q('start_ts')}"
            + _upsert_tail(conn.dialect, legacy, fresh=fresh))
    copy_sql = f"COPY {temp} ({', '.join(q(c) for c in staged)}) FROM STDIN"
    total = len(p.arrays[0])
    with _driver_cursor(conn) as cursor:
        for lo in range(0, total, COPY_ROWS):
            hi = min(lo + COPY_ROWS, total)
            chunk = [a[lo:hi] for a in p.arrays]
            binary = not any(np.isnan(a).any() for a in chunk)
            with cursor.copy(copy_sql + (" (FORMAT BINARY)" if binary else "")) as copy:
                copy.write(_copy_binary(chunk) if binary else _copy_text(chunk))
            cursor.execute(move)
            cursor.execute(f"TRUNCATE {temp}")
            yield hi - lo
        cursor.execute(f"DROP TABLE {temp}")


def _reference(before: tuple[float, float | None, float | None] | None, tp: TablePlan
               ) -> _Reference | None:
    """The newest row before the write and, from the plan (not read back: on READ COMMITTED
    a read after our UPDATE could already see a row HA committed meanwhile), the newest row
    after it; None when HA's next row comes out right on either scale."""
    if before is None or before[1] is None:
        return None
    start, old_sum, old_state = before[0], float(before[1]), before[2]
    starts = tp.rows.start_ts
    sums, states = tp.rows.column("sum"), tp.rows.column("state")

    def planned(i: int) -> tuple[float | None, float | None]:
        total = None if sums is None or np.isnan(sums[i]) else float(sums[i])
        state = None if states is None or np.isnan(states[i]) else float(states[i])
        return total, state

    hit = np.flatnonzero(starts == start)
    if hit.size:
        new_sum: float | None = planned(int(hit[0]))[0]
    elif _has_shift(tp) and start >= tp.shift_from:  # type: ignore[operator]
        new_sum = old_sum + tp.shift
    else:
        new_sum = old_sum
    newest: tuple[float, float | None, float | None] = (start, new_sum, old_state)
    if starts.size and float(starts[-1]) > start:
        newest = (float(starts[-1]), *planned(len(starts) - 1))
    if newest[1] is None or (newest[0] == start and _close(newest[1], old_sum)):
        return None
    return _Reference(start_ts=float(start), old_sum=old_sum,
                      old_state=None if old_state is None else float(old_state),
                      newest_start=newest[0], newest_sum=float(newest[1]),
                      newest_state=None if newest[2] is None else float(newest[2]))


def _newest_row(conn: Connection, t: sa.Table, metadata_id: int
                ) -> tuple[float, float | None, float | None] | None:
    """(start_ts, sum, state) of a statistic's newest row in one table, or None."""
    row = conn.execute(
        sa.select(t.c.start_ts, t.c.sum, t.c.state)
        .where(t.c.metadata_id == metadata_id, t.c.start_ts.is_not(None))
        .order_by(t.c.start_ts.desc()).limit(1)
    ).first()
    return None if row is None else (float(row[0]), row[1], row[2])


def _shift_sums(
    conn: Connection, t: sa.Table, metadata_id: int, tp: TablePlan
) -> tuple[float, float] | None:
    """Move every sum at/after `shift_from` by `shift`; returns the first shifted row's
    (start_ts, old sum) so the read-back can check it."""
    mine = sa.and_(
        t.c.metadata_id == metadata_id, t.c.start_ts >= tp.shift_from, t.c.sum.is_not(None)
    )
    first = conn.execute(
        sa.select(t.c.start_ts, t.c.sum).where(mine).order_by(t.c.start_ts).limit(1)
    ).first()
    conn.execute(sa.update(t).where(mine).values(sum=t.c.sum + tp.shift))
    return None if first is None else (float(first[0]), float(first[1]))


# --------------------------------------------------------------------------------------------
# Small helpers


def _has_shift(tp: TablePlan) -> bool:
    return tp.shift_from is not None and tp.shift != 0


def _stat_row(r: sa.Row[Any]) -> StatRow:
    return StatRow(
        start_ts=float(r.start_ts),
        state=r.state,
        sum=r.sum,
        mean=r.mean,
        min=r.min,
        max=r.max,
        last_reset_ts=r.last_reset_ts,
    )


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=REL_TOL, abs_tol=1e-12)


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _describe(exc: sa.exc.SQLAlchemyError) -> str:
    """The driver's message without SQLAlchemy's SQL dump and background link."""
    orig = getattr(exc, "orig", None)
    return str(orig) if orig is not None else str(exc).split("\n", 1)[0]


_DATETIME_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M")


def _to_epoch(value: object) -> float | None:
    """A statistics_runs.start as UTC epoch seconds.

    SQLite holds SQLAlchemy's naive-UTC text (`2026-11-23 00:40:00.000000`, §2.2), but older
    writers used a 'T', fewer fraction digits or an offset; MySQL/PostgreSQL drivers return
    datetime objects (naive = UTC).
    """
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        when = value
    elif isinstance(value, int | float):
        return float(value)
    else:
        text = str(value).strip().replace("T", " ")
        if text.endswith("Z"):
            text = text[:-1] + "+00:00"
        try:
            when = dt.datetime.fromisoformat(text)
        except ValueError:
            for fmt in _DATETIME_FORMATS:
                try:
                    when = dt.datetime.strptime(text[:26], fmt)
                    break
                except ValueError:
                    continue
            else:
                return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


# --------------------------------------------------------------------------------------------
# Backups (SQLite)


class _Restarted(Exception):
    """The source kept changing under a stepped backup."""


def _backup_name(db: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    dest = db.with_name(f"{db.name}.backdate-{stamp}.bak")
    n = 1
    while dest.exists():
        dest = db.with_name(f"{db.name}.backdate-{stamp}-{n}.bak")
        n += 1
    return dest


def _copy_pages(
    src: sqlite3.Connection,
    dst: sqlite3.Connection,
    step_pages: int,
    pause: float,
    max_restarts: int = 3,
) -> None:
    """Copy in steps, pausing between them so a writer (HA) gets the lock in between.

    SQLite restarts a stepped backup whenever another connection writes the source; a busy HA
    could keep that going forever, so after a few restarts copy in one pass, which in WAL mode
    only holds a read snapshot and still doesn't block HA's writes.
    """
    state = {"last": None, "restarts": 0}

    def progress(_status: int, remaining: int, _total: int) -> None:
        last = state["last"]
        if last is not None and remaining > last:
            state["restarts"] += 1
            if state["restarts"] > max_restarts:
                raise _Restarted
        state["last"] = remaining
        if remaining and pause > 0:
            time.sleep(pause)

    try:
        src.backup(dst, pages=step_pages, progress=progress)
    except _Restarted:
        src.backup(dst, pages=-1)


def backup_sqlite(
    db_path: str | Path,
    *,
    step_pages: int = 1024,
    pause: float = 0.005,
    busy_timeout: float = BUSY_TIMEOUT,
) -> Path:
    """Copy the database through SQLite's backup API to `<db>.backdate-<UTC stamp>.bak`.

    The backup API (unlike a file copy) gives a consistent image even while HA writes,
    including what is still in the WAL. Returns the backup's path.

    The copy is made under `<name>.part` and renamed only when complete and on disk: a
    backdate killed mid-copy leaves no file that looks like a backup (a half-copied one
    would open as an empty database and `restore` would wipe the real one with it).
    """
    db = Path(db_path)
    if not db.is_file():
        raise TargetError(f"no such database: {db}")
    dest = _backup_name(db)
    part = dest.with_name(dest.name + ".part")
    try:
        src = sqlite3.connect(db.resolve().as_uri() + "?mode=rw", uri=True, timeout=busy_timeout)
        try:
            dst = sqlite3.connect(part)
            try:
                _copy_pages(src, dst, step_pages, pause)
            finally:
                dst.close()
        finally:
            src.close()
        with part.open("rb+") as fh:
            os.fsync(fh.fileno())
        part.replace(dest)
    except (sqlite3.Error, OSError) as exc:
        for leftover in (part, Path(f"{part}-journal"), Path(f"{part}-wal"),
                         Path(f"{part}-shm")):
            leftover.unlink(missing_ok=True)
        raise TargetError(f"backup of {db} failed: {exc}") from exc
    return dest


def _file_identity(con: sqlite3.Connection) -> tuple[Any, ...] | None:
    """The first schema_changes row: which database a file is (see `identity`)."""
    return con.execute("SELECT change_id, schema_version, changed FROM schema_changes "
                       "ORDER BY change_id LIMIT 1").fetchone()


def _file_identity_of(path: Path, busy_timeout: float) -> tuple[Any, ...] | None:
    if not path.is_file():
        raise TargetError(f"no such database: {path}")
    con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=busy_timeout)
    try:
        return _file_identity(con)
    except sqlite3.Error:
        return None
    finally:
        con.close()


def restore_sqlite(
    backup: str | Path, db_path: str | Path, *, busy_timeout: float = BUSY_TIMEOUT
) -> None:
    """Copy a whole-file backup (an older backdate's `.bak`) back over the database (backup
    API, one pass). Everything written since is lost: Home Assistant must be stopped.

    The backup is checked (`PRAGMA quick_check`) and must be a copy of this very database (the
    same first schema_changes row) before anything is overwritten.
    """
    bak = Path(backup)
    if not bak.is_file():
        raise TargetError(f"no such backup: {bak}")
    try:
        src = sqlite3.connect(bak.resolve().as_uri() + "?mode=rw", uri=True, timeout=busy_timeout)
        try:
            check = src.execute("PRAGMA quick_check").fetchone()
            if not check or check[0] != "ok":
                raise TargetError(
                    f"{bak} is damaged ({check[0] if check else 'no answer'}); not restoring it"
                )
            tables = {r[0] for r in src.execute("SELECT name FROM sqlite_master")}
            if not {"schema_changes", META, *STAT_TABLES} <= tables:
                raise TargetError(
                    f"{bak} is not a Home Assistant recorder database (an incomplete backup?); "
                    "not restoring it"
                )
            mine, theirs = _file_identity(src), _file_identity_of(Path(db_path), busy_timeout)
            if mine != theirs:
                raise RefusedError(
                    f"{bak} is a copy of another database (created {mine[2] if mine else '?'}, "
                    f"schema {mine[1] if mine else '?'}), not of {db_path} (created "
                    f"{theirs[2] if theirs else '?'}, schema {theirs[1] if theirs else '?'}); "
                    "not restoring it")
            dst = sqlite3.connect(Path(db_path), timeout=busy_timeout)
            try:
                src.backup(dst, pages=-1)
            finally:
                dst.close()
        finally:
            src.close()
    except sqlite3.Error as exc:
        raise TargetError(f"restoring {bak} onto {db_path} failed: {exc}") from exc


__all__ = [
    "RecorderDatabase",
    "SchemaInfo",
    "backup_sqlite",
    "open_recorder",
    "restore_sqlite",
    "unit_class_for",
]
