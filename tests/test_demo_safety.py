"""`backdate demo --dir DIR` never replaces a database it did not make.

A Home Assistant user who runs `backdate demo --dir /config` (or `--dir .` inside /config)
must keep the real recorder database: demo refuses with exit 1 and touches nothing. A demo
database from an earlier run is still replaced (`backdate demo` twice works).
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from backdate.cli import app

FIXTURE = Path("/work/shared/fixtures/ha-db/sqlite-ha2026.2.3-schema53.db")


def _ha_database(path: Path) -> None:
    """A database holding Home Assistant's own rows (the HA-made fixture, else a stand-in)."""
    if FIXTURE.exists():
        shutil.copyfile(FIXTURE, path)
        return
    from backdate.targets.fresh import create_recorder_sqlite

    create_recorder_sqlite(path)
    con = sqlite3.connect(path)
    con.execute("INSERT INTO events (event_type_id, time_fired_ts) VALUES (NULL, 1.0)")
    con.commit()
    con.close()


def test_demo_refuses_a_real_home_assistant_database(tmp_path: Path) -> None:
    db = tmp_path / "home-assistant_v2.db"
    _ha_database(db)
    backup = tmp_path / "home-assistant_v2.db.backdate-20261206T060000Z.bak"
    backup.write_bytes(b"a user's backup")
    before = db.read_bytes()
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "the demo did not make" in result.output and "Traceback" not in result.output
    assert db.read_bytes() == before
    assert backup.read_bytes() == b"a user's backup"
    assert not (tmp_path / "demo_house.csv").exists()


def test_demo_refuses_a_file_that_is_not_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "home-assistant_v2.db"
    db.write_text("not a database")
    result = CliRunner().invoke(app, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert db.read_text() == "not a database"


def test_demo_twice_replaces_its_own_database(tmp_path: Path) -> None:
    runner = CliRunner()
    for _ in range(2):
        result = runner.invoke(app, ["demo", "--dir", str(tmp_path / "demo")])
        assert result.exit_code == 0, result.output
    con = sqlite3.connect(tmp_path / "demo" / "home-assistant_v2.db")
    ids = [row[0] for row in con.execute("SELECT statistic_id FROM statistics_meta")]
    con.close()
    assert ids == ["backdate:demo_house"]
