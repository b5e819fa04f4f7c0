"""A fresh, empty recorder database with HA's current SQLite schema (53), for `demo` and benches.

The DDL is the schema a real Home Assistant (2026.2.3) created; backdate never creates HA's
tables in a user's database, only in files it makes for itself.
"""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

from backdate import clock

SCHEMA_VERSION = 53


def create_recorder_sqlite(path: Path) -> Path:
    """Create `path` as HA 2026.x would on first start: schema 53, WAL, one statistics run."""
    if path.exists():
        raise FileExistsError(path)
    ddl = resources.files("backdate.targets").joinpath("ddl/sqlite-53.sql").read_text()
    now = clock.now()
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    window = datetime.fromtimestamp(now - now % 300 - 300, UTC).strftime("%Y-%m-%d %H:%M:%S.%f")
    con = sqlite3.connect(path)
    try:
        con.execute("PRAGMA journal_mode=WAL")
        con.executescript(ddl)
        con.execute("INSERT INTO schema_changes (schema_version, changed) VALUES (?, ?)",
                    (SCHEMA_VERSION, stamp))
        con.execute("INSERT INTO statistics_runs (start) VALUES (?)", (window,))
        con.commit()
    finally:
        con.close()
    return path
