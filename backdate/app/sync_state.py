"""backdate's own sync state: a small SQLite file (WAL) and one lock file per job.

Why a record and not the truth: the window of each run is computed from what the TARGET holds,
so a lost or stale state file can never cause a gap. The file keeps what the target cannot
tell: where a job started (so the correction window never reaches before the first sync), which
statistics it wrote, and every run (start, end, points, errors) for `backdate sync` users to
look at.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from backdate.errors import BackdateError, InputError

SCHEMA = """
CREATE TABLE IF NOT EXISTS cursors (
    job TEXT NOT NULL,
    target TEXT NOT NULL,
    origin REAL,            -- start of the first window this job read for this target
    latest REAL,            -- end of the newest data the target held after the last run
    updated REAL,
    PRIMARY KEY (job, target)
);
CREATE TABLE IF NOT EXISTS written_statistics (
    job TEXT NOT NULL,
    target TEXT NOT NULL,
    statistic_id TEXT NOT NULL,
    PRIMARY KEY (job, target, statistic_id)
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL,
    started REAL NOT NULL,
    ended REAL,
    status TEXT NOT NULL,   -- running, ok, failed (a run killed mid-way stays 'running')
    points INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
CREATE TABLE IF NOT EXISTS run_targets (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    target TEXT NOT NULL,
    window_start REAL,
    window_end REAL,
    points INTEGER NOT NULL DEFAULT 0,
    error TEXT
);
"""


class JobLockedError(BackdateError):
    """Another run of the same job holds its lock: refused, nothing written (exit 1, as
    PRODUCT.md defines the exit codes)."""

    exit_code = 1


@dataclass(slots=True)
class RunRecord:
    id: int
    job: str
    started: float
    ended: float | None
    status: str
    points: int
    error: str | None


class SyncState:
    """The state file. Each call is its own short transaction (the file is shared by jobs)."""

    def __init__(self, path: Path):
        self.path = path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(path), timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA busy_timeout=60000")
            self._conn.executescript(SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise InputError(f"cannot use it as the sync state file: {err}",
                             path=str(path)) from None

    def close(self) -> None:
        self._conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    # -- cursors -------------------------------------------------------------------------------

    def origin(self, job: str, target: str) -> float | None:
        row = self._conn.execute("SELECT origin FROM cursors WHERE job=? AND target=?",
                                 (job, target)).fetchone()
        return None if row is None else row[0]

    def latest(self, job: str, target: str) -> float | None:
        """The newest data end the target held after the last run that reached it."""
        row = self._conn.execute("SELECT latest FROM cursors WHERE job=? AND target=?",
                                 (job, target)).fetchone()
        return None if row is None else row[0]

    def record_cursor(self, job: str, target: str, origin: float, latest: float | None) -> None:
        """Keep the earliest origin ever read and the newest data the target holds."""
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO cursors(job, target, origin, latest, updated) VALUES (?,?,?,?,?) "
                "ON CONFLICT(job, target) DO UPDATE SET origin=min(origin, excluded.origin), "
                "latest=coalesce(excluded.latest, latest), updated=excluded.updated",
                (job, target, origin, latest, time.time()))

    def statistics(self, job: str, target: str) -> list[str]:
        rows = self._conn.execute(
            "SELECT statistic_id FROM written_statistics WHERE job=? AND target=? ORDER BY 1",
            (job, target)).fetchall()
        return [r[0] for r in rows]

    def record_statistics(self, job: str, target: str, ids: list[str]) -> None:
        with self._tx() as conn:
            conn.executemany("INSERT OR IGNORE INTO written_statistics VALUES (?,?,?)",
                             [(job, target, i) for i in ids])

    # -- runs ----------------------------------------------------------------------------------

    def start_run(self, job: str, started: float) -> int:
        with self._tx() as conn:
            cur = conn.execute("INSERT INTO runs(job, started, status) VALUES (?,?, 'running')",
                               (job, started))
            return int(cur.lastrowid or 0)

    def record_target(self, run_id: int, target: str, window_start: float | None,
                      window_end: float | None, points: int, error: str | None) -> None:
        with self._tx() as conn:
            conn.execute("INSERT INTO run_targets VALUES (?,?,?,?,?,?)",
                         (run_id, target, window_start, window_end, points, error))

    def end_run(self, run_id: int, points: int, error: str | None) -> None:
        with self._tx() as conn:
            conn.execute("UPDATE runs SET ended=?, status=?, points=?, error=? WHERE id=?",
                         (time.time(), "failed" if error else "ok", points, error, run_id))

    def runs(self, job: str | None = None) -> list[RunRecord]:
        sql = "SELECT id, job, started, ended, status, points, error FROM runs"
        args: tuple[str, ...] = ()
        if job is not None:
            sql += " WHERE job=?"
            args = (job,)
        return [RunRecord(*row) for row in self._conn.execute(sql + " ORDER BY id", args)]


def lock_path(state_file: Path, job: str) -> Path:
    """One lock file per job name: a readable part and a hash of the exact name, so names that
    read alike ("house a", "house/a") never share a lock."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", job)[:40] or "job"
    digest = hashlib.sha256(job.encode()).hexdigest()[:16]
    return state_file.parent / f"{state_file.name}.{safe}.{digest}.lock"


@contextlib.contextmanager
def job_lock(state_file: Path, job: str, *, wait: bool, shared: bool = False
             ) -> Iterator[None]:
    """An fcntl lock per job next to the state file: two runs of one job never overlap.

    The kernel drops the lock when the process dies, so a killed run never blocks the next.
    Without `wait`, a held lock is JobLockedError (exit 1) naming the holder's pid. `shared`
    (for --verify): any number of readers, but never while a run writes.
    """
    path = lock_path(state_file, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    mode = fcntl.LOCK_SH if shared else fcntl.LOCK_EX
    try:
        try:
            fcntl.flock(fd, mode | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "another process"
            raise JobLockedError(
                f"job {job!r} is already running (pid {holder}, lock {path}); "
                "this run exits: use --wait to wait for it") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, str(os.getpid()).encode(), 0)
        try:
            yield
        finally:
            if not shared:
                os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
