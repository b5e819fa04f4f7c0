"""Crash safety: `backdate import` killed with SIGKILL at random points, on SQLite, MariaDB and
PostgreSQL.

Why: issue 3 promises that a database is never left half-written. The import here is the real
CLI as a subprocess (`python -m backdate.cli import grid.csv solar.csv --yes`): years of
15-minute history prepended to a statistic that already holds 20 days (so every existing row
in both tables is shifted) and a new statistic. The uninterrupted run is timed first, with the
moment each phase ends (its output is read unbuffered, line by line): start-up, reading and
planning up to the plan's report; the backup up to its `backup:` line; the write transaction
and the read-back up to `written and verified`; the final report and exit. KILLS runs are
then killed at seeded random points, an equal share in each phase (so a short phase such as
SQLite's write transaction, between the BACKDATE_TRACE markers backdate prints after BEGIN and
before COMMIT, is hit as often as start-up is): a run aimed at a phase is killed a random
fraction of that phase's length after its own output shows the phase began, so the aim holds
on a loaded machine where one run is slower than the next. After every kill:

* the database is consistent (SQLite `PRAGMA integrity_check` and `foreign_key_check`;
  servers: the engine's own table/index check, no duplicate or orphaned rows, HA's row rules
  via `check_database`, and the server has finished with the killed session);
* each statistic (its metadata row and its rows in both tables) is wholly as before
  (byte for byte, ids included) or wholly as after an uninterrupted run (ids and created_ts
  aside, which a new run hands out anew), and all of them agree (one transaction);
* when the killed run had completed its backup, `backdate restore BACKUP --to TARGET` brings
  the state before back byte for byte, ids included.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import datagen as dg
import pytest

pytest.register_assert_rewrite("services")
import services  # noqa: E402
from test_cli_sqlite import (  # noqa: E402
    BACKDATE,
    FIXTURES,
    SQLITE_FIXTURES,
    last_full_hour,
)
from test_recorder_servers import ServerDb, check_database  # noqa: E402

KILLS = 20
SEED = 20261123
YEARS = 2  # of 15-minute history per statistic: 70,080 lines, 17,520 hourly rows each
SIDS = ("backdate:grid", "backdate:solar")
STAT_TABLES = ("statistics", "statistics_short_term")
FRESH_KEYS = ("id", "metadata_id", "created_ts")  # what a new run hands out anew

Snapshot = dict[str, dict[str, Any]]


# ----------------------------------------------------------------------------- the targets


class SqliteTarget:
    """A copy of HA's schema-53 SQLite database."""

    engine = "sqlite"

    def __init__(self, folder: Path) -> None:
        src = FIXTURES / SQLITE_FIXTURES[53]
        if not src.is_file():
            pytest.fail(f"fixture missing: {src}")
        self.path = folder / "home-assistant_v2.db"
        shutil.copy(src, self.path)
        self.url = f"sqlite:///{self.path}"

    def query(self, sql: str, *params: object) -> tuple[list[str], list[tuple[Any, ...]]]:
        con = sqlite3.connect(self.path)
        try:
            cur = con.execute(sql, params)
            return [d[0] for d in cur.description or ()], cur.fetchall()
        finally:
            con.close()

    def backups(self, cwd: Path) -> set[Path]:
        return set(self.path.parent.glob(f"{self.path.name}.backdate-*.jsonl"))

    def settle(self) -> None:
        """Nothing runs on after the process: SQLite lives in it."""

    def check(self) -> None:
        assert self.query("PRAGMA integrity_check")[1] == [("ok",)]
        assert self.query("PRAGMA foreign_key_check")[1] == []
        dupes = self.query("SELECT metadata_id, start_ts FROM statistics GROUP BY 1, 2 "
                           "HAVING COUNT(*) > 1")[1]
        assert not dupes, dupes

    def drop(self) -> None:
        """The temporary folder goes with pytest's tmp_path."""


class ServerTarget:
    """A database on MariaDB or PostgreSQL loaded from HA's schema-53 dump."""

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.db = ServerDb(engine, 53)
        self.url = self.db.url

    def query(self, sql: str, *params: object) -> tuple[list[str], list[tuple[Any, ...]]]:
        if self.engine == "mariadb":
            con = services.mysql_connect(self.db.name)
            try:
                with con.cursor() as cur:
                    cur.execute(sql.replace("?", "%s"), params or None)
                    return [d[0] for d in cur.description or ()], list(cur.fetchall())
            finally:
                con.close()
        with services.pg_connect(self.db.name) as con:
            cur = con.execute(sql.replace("?", "%s"), params or None)
            names = [d.name for d in cur.description or ()]
            return names, list(cur.fetchall()) if cur.description else []

    def backups(self, cwd: Path) -> set[Path]:
        return set(cwd.glob("backdate-backup-*.jsonl"))

    def settle(self) -> None:
        """Wait until the server has finished with the killed client's session: a COMMIT
        already sent is still carried out, a transaction in progress is rolled back."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.engine == "mariadb":
                sql = ("SELECT COUNT(*) FROM information_schema.processlist WHERE db = %s "
                       "AND id <> CONNECTION_ID()")
            else:
                sql = ("SELECT COUNT(*) FROM pg_stat_activity WHERE datname = %s "
                       "AND pid <> pg_backend_pid()")
            if self.db.sql(sql, self.db.name)[0][0] == 0:
                return
            time.sleep(0.1)
        pytest.fail("the killed backdate's session is still on the server after 60 s")

    def check(self) -> None:
        if self.engine == "mariadb":
            # InnoDB's own check of every index; a rolled-back transaction leaves
            # delete-marked records until purge runs, which EXTENDED would list as warnings
            rows = self.db.sql("CHECK TABLE statistics, statistics_short_term, statistics_meta")
            assert not [r for r in rows if str(r[2]).lower() == "error"], rows
            status = {r[0]: r[3] for r in rows if r[2] == "status"}
            assert len(status) == 3 and set(status.values()) == {"OK"}, rows
        else:
            for index in ("ix_statistics_statistic_id_start_ts", "statistics_pkey",
                          "ix_statistics_short_term_statistic_id_start_ts",
                          "statistics_short_term_pkey", "statistics_meta_pkey"):
                self.db.sql("SELECT bt_index_check(%s::regclass, true)", index)
        for table in STAT_TABLES:
            dupes = self.db.sql(f"SELECT metadata_id, start_ts FROM {table} GROUP BY "
                                "metadata_id, start_ts HAVING COUNT(*) > 1")
            assert not dupes, f"{table}: duplicate rows {dupes[:3]}"
            orphans = self.db.sql(f"SELECT COUNT(*) FROM {table} t LEFT JOIN statistics_meta m"
                                  " ON m.id = t.metadata_id WHERE m.id IS NULL")[0][0]
            assert orphans == 0, f"{table}: {orphans} rows without metadata"
        check_database(self.db)

    def drop(self) -> None:
        self.db.drop()


Target = SqliteTarget | ServerTarget


def snapshot(target: Target) -> Snapshot:
    """Each statistic's metadata row and its rows in both tables, every column."""
    out: Snapshot = {}
    for sid in SIDS:
        names, metas = target.query("SELECT * FROM statistics_meta WHERE statistic_id = ?", sid)
        if not metas:
            out[sid] = {"meta": None}
            continue
        meta = dict(zip(names, metas[0], strict=True))
        item: dict[str, Any] = {"meta": meta}
        for table in STAT_TABLES:
            cols, rows = target.query(f"SELECT * FROM {table} WHERE metadata_id = ? "
                                      "ORDER BY start_ts", meta["id"])
            item[table] = [dict(zip(cols, r, strict=True)) for r in rows]
        out[sid] = item
    return out


def without_fresh(state: dict[str, Any]) -> dict[str, Any]:
    """A statistic's snapshot without what a new run hands out anew (ids, created_ts)."""
    if state["meta"] is None:
        return state
    out: dict[str, Any] = {"meta": {k: v for k, v in state["meta"].items() if k != "id"}}
    for table in STAT_TABLES:
        out[table] = [{k: v for k, v in row.items() if k not in FRESH_KEYS}
                      for row in state[table]]
    return out


# ------------------------------------------------------------------------------- the runs


PHASES = ("read/plan", "backup", "prepare", "transaction", "verify", "report")
BEGIN = "backdate-trace: BEGIN"
COMMIT = "backdate-trace: COMMIT"
COMMITTED = "backdate-trace: COMMITTED"
# The lines that end each phase. BACKDATE_TRACE=1 makes backdate print "backdate-trace: BEGIN"
# once its write transaction is open, "backdate-trace: COMMIT" just before it sends the
# COMMIT and "backdate-trace: COMMITTED" once the COMMIT returned, so kills aimed at
# "transaction" land in the open transaction (or in the COMMIT itself, which is atomic
# either way), and every kill in "verify" comes after a completed COMMIT.
MARKERS = ("hourly rows", "backup:", BEGIN, COMMITTED, "written and verified")


def start_import(folder: Path, url: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200", "NO_COLOR": "1",
           "TERM": "dumb", "BACKDATE_TRACE": "1"}
    return subprocess.Popen([*BACKDATE, "import", "grid.csv",
                             "solar.csv", "--to", url, "--yes"], cwd=folder, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            stdin=subprocess.DEVNULL)


def timed_import(folder: Path, url: str) -> tuple[list[float], str]:
    """The uninterrupted run: the seconds at which each phase ended, and its output."""
    started = time.monotonic()
    proc = start_import(folder, url)
    assert proc.stdout is not None
    ends: list[float] = []
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if len(ends) < len(MARKERS) and MARKERS[len(ends)] in line:
            ends.append(time.monotonic() - started)
    proc.wait(timeout=600)
    ends.append(time.monotonic() - started)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert len(ends) == len(PHASES), f"phase markers missing in the output:\n{out}"
    return ends, out


def kill_points(ends: list[float], rng: random.Random) -> list[tuple[int, float]]:
    """KILLS seeded random (phase, seconds into it), an equal share for each phase."""
    lengths = [b - a for a, b in zip([0.0, *ends[:-1]], ends, strict=True)]
    return [(k % len(PHASES), rng.random() * lengths[k % len(PHASES)]) for k in range(KILLS)]


def run_import(folder: Path, url: str, phase_index: int, delay: float
               ) -> tuple[int | None, str, float]:
    """Start the import and SIGKILL it `delay` seconds after its output shows that phase
    `phase_index` began (unless it ended first). Returns (exit code or None when killed,
    its output, seconds from start to the kill)."""
    started = time.monotonic()
    proc = start_import(folder, url)
    assert proc.stdout is not None
    lines: list[str] = []
    began = threading.Event() if phase_index else None

    def pump() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            lines.append(line)
            if began is not None and MARKERS[phase_index - 1] in "".join(lines):
                began.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if began is not None:
        while not began.wait(0.01) and proc.poll() is None:
            pass
    killed_at = time.monotonic() - started
    try:
        proc.wait(timeout=delay)
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGKILL)
        killed_at = time.monotonic() - started
        proc.wait(timeout=60)
        code = None
    reader.join(timeout=60)
    return code, "".join(lines), killed_at


def restore(backup: Path, url: str) -> None:
    proc = subprocess.run([*BACKDATE, "restore", str(backup), "--to",
                           url, "--yes"], capture_output=True, text=True, check=False, timeout=300,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def inside_transaction(out: str, killed: bool) -> bool:
    """Killed after the write transaction's BEGIN and before its COMMIT was sent (by the
    trace markers, printed unbuffered to the captured stderr)."""
    if not killed or BEGIN not in out:
        return False
    return COMMIT + "\n" not in out[out.rindex(BEGIN):]


def phase(out: str, killed: bool) -> str:
    """How far a run got, from what it printed (unbuffered) before it died."""
    if not killed:
        return "finished"
    reached = sum(marker in out for marker in MARKERS)
    return PHASES[reached]


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    engine = request.param
    if engine != "sqlite":
        services.ensure_mariadb() if engine == "mariadb" else services.ensure_postgresql()
    made: Target = SqliteTarget(tmp_path) if engine == "sqlite" else ServerTarget(engine)
    if engine == "postgresql":
        made.db.sql("CREATE EXTENSION IF NOT EXISTS amcheck")
    yield made
    made.drop()


def prepare(folder: Path, target: Target) -> None:
    """20 days of backdate:grid in the database (hourly and, for the last 10 days, 5-minute
    rows); grid.csv prepends YEARS of history to it, solar.csv makes a new statistic."""
    end = last_full_hour()
    existing = folder / "existing"
    existing.mkdir()
    first = end - timedelta(days=20)
    dg.write_delta_csv(existing / "grid.csv",
                       dg.quarter_hour_deltas(first, end, seed=81))
    proc = subprocess.run([*BACKDATE, "import", "grid.csv", "--to",
                           target.url, "--no-backup", "--yes"], cwd=existing,
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    history = first - timedelta(days=365 * YEARS)
    dg.write_delta_csv(folder / "grid.csv", dg.quarter_hour_deltas(history, first, seed=82))
    dg.write_delta_csv(folder / "solar.csv",
                       dg.quarter_hour_deltas(history, first, seed=83))


@pytest.mark.parametrize("target", ["sqlite", *(pytest.param(e, marks=pytest.mark.servers)
                                              for e in ("mariadb", "postgresql"))],
                         indirect=True)
def test_kill_at_random_points(target: Target, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    prepare(work, target)
    before = snapshot(target)
    assert before["backdate:grid"]["meta"] is not None and before["backdate:solar"]["meta"] is None
    assert before["backdate:grid"]["statistics_short_term"], "no 5-minute rows to shift"

    # The uninterrupted run: its phases place the kills, its result is "after".
    ends, out = timed_import(work, target.url)
    target.settle()
    target.check()
    after = snapshot(target)
    assert after["backdate:solar"]["meta"] is not None
    assert len(after["backdate:grid"]["statistics"]) > len(before["backdate:grid"]["statistics"])
    first_before = before["backdate:grid"]["statistics_short_term"][0]
    first_after = next(r for r in after["backdate:grid"]["statistics_short_term"]
                       if r["id"] == first_before["id"])
    assert first_after["sum"] > first_before["sum"], "the existing rows were not shifted"
    (backup,) = target.backups(work)
    restore(backup, target.url)
    assert snapshot(target) == before, "restore after the uninterrupted run is not exact"
    backup.unlink()

    outcomes: list[tuple[float, str, str, str, bool]] = []
    for k, (aimed, delay) in enumerate(kill_points(ends, random.Random(SEED))):
        known = target.backups(work)
        code, out, kill_at = run_import(work, target.url, aimed, delay)
        if code is not None:
            assert code == 0, out
        target.settle()
        target.check()
        state = snapshot(target)
        results = set()
        for sid in SIDS:
            if state[sid] == before[sid]:
                results.add("before")
            elif without_fresh(state[sid]) == without_fresh(after[sid]):
                results.add("after")
            else:
                pytest.fail(f"kill {k} at {kill_at:.2f} s: {sid} is neither as before nor as "
                            f"after\n{out[-2000:]}")
        assert len(results) == 1, f"kill {k}: statistics disagree ({results}): one transaction"
        result = results.pop()
        new = target.backups(work) - known
        assert len(new) <= 1
        if result == "after":
            assert new, f"kill {k}: written without a backup"
        backed_up = bool(new)
        if new:
            restore(new.pop(), target.url)
            assert snapshot(target) == before, f"kill {k}: restore is not exact"
        elif result == "after":  # pragma: no cover - asserted above
            pytest.fail("no backup")
        for leftover in target.backups(work):
            leftover.unlink()
        died = phase(out, code is None)
        if died in ("read/plan", "backup", "prepare"):
            assert result == "before", f"kill {k} before the write left {result}"
        if died in ("verify", "report"):
            assert result == "after", f"kill {k} after the COMMIT left {result}"
        if inside_transaction(out, code is None):
            assert died == "transaction"
            assert result == "before", f"kill {k} inside the open transaction left {result}"
        outcomes.append((kill_at, PHASES[aimed], died, result, backed_up))

    summary = "\n".join(f"  {t:5.2f} s  aimed {a:<13} died in {p:<13} {r:<6} "
                        f"{'restored' if b else ''}" for t, a, p, r, b in sorted(outcomes))
    phase_ends = ", ".join(f"{p} until {e:.2f} s" for p, e in zip(PHASES, ends, strict=True))
    print(f"\n{target.engine}: uninterrupted run: {phase_ends}; kills:\n{summary}",
          file=sys.stderr)
    died_in = {p for _, _, p, _, _ in outcomes}
    assert {"read/plan", "backup", "transaction", "report"} <= died_in, summary
    # at least one kill provably inside the open write transaction, and it left "before"
    assert any(p == "transaction" and r == "before" for _, _, p, r, _ in outcomes), summary
