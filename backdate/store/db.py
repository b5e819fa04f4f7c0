"""Opening backdate's own store and bringing its schema up to date with Alembic.

SQLite is the default (one `serve` process, or several on one machine: every write transaction
starts with BEGIN IMMEDIATE, so they take turns); PostgreSQL lets any number of `serve`
processes share it. The migrations run at start under a lock (a PostgreSQL advisory lock, or a
file lock beside the SQLite file), so processes started together do not race on them.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import Connection

from backdate.errors import UsageError

MIGRATIONS = Path(__file__).parent / "migrations"
ADVISORY_KEY = 0x6261636B64617465 & 0x7FFFFFFFFFFFFFFF  # "backdate"


def normalize_url(url: str) -> str:
    """`postgresql://…` (the URL users write) uses psycopg 3; SQLite stays as it is."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    if url.startswith(("postgresql+psycopg://", "sqlite:///")):
        return url
    raise UsageError("a store is sqlite:////absolute/path.db, sqlite:///relative.db or "
                     "postgresql://user@host/db")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def open_engine(url: str, *, pool_size: int = 8, immediate: bool = True) -> Engine:
    """An engine whose transactions are safe across processes (see the module docstring).

    `immediate=False` (SQLite only) begins transactions deferred: for an engine that only
    reads (the mirror's read API), so concurrent readers do not queue for the write lock."""
    full = normalize_url(url)
    if full.startswith("sqlite:///"):
        path = full[len("sqlite:///"):]
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(full, connect_args={"timeout": 30, "check_same_thread": False},
                               pool_size=pool_size, max_overflow=4)

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi: Any, _record: Any) -> None:
            dbapi.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: an acknowledged batch survives a power cut, not only a killed process.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    return create_engine(full, pool_size=pool_size, max_overflow=4, pool_pre_ping=True)


@contextmanager
def _migration_lock(engine: Engine, conn: Connection) -> Iterator[None]:
    if is_sqlite(engine):
        db = engine.url.database or ""
        if not db or db == ":memory:":
            yield
            return
        with open(f"{db}.migrate.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
        return
    conn.exec_driver_sql(f"SELECT pg_advisory_lock({ADVISORY_KEY})")
    try:
        yield
    finally:
        conn.exec_driver_sql(f"SELECT pg_advisory_unlock({ADVISORY_KEY})")


def migrate(engine: Engine, location: Path = MIGRATIONS, version_table: str = "alembic_version",
            ) -> None:
    """Upgrade the schema to the newest revision (idempotent)."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(location))
    cfg.attributes["version_table"] = version_table
    with engine.connect() as conn:
        if not is_sqlite(engine):
            conn.commit()
        with _migration_lock(engine, conn):
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
            conn.commit()
