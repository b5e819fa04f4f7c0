"""The command line as a user meets it: paths, messages, help, JSON, secrets, spreadsheet files.

Why: every case here is something a user ran into (issue 11): a README example that works only
from `/`, a traceback for a missing driver, a password echoed in an error, a klausj1 file with
blank unit cells or short rows refused. Each test runs the installed console script against a
copy of a database Home Assistant made, and judges it with plain SQL and the printed output.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from test_cli_sqlite import BACKDATE, backdate, copy_fixture, sql

HOUR = 3600


def run(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
        stdin: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The CLI with any exit code, from `cwd`, output captured."""
    full_env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb", **(env or {})}
    return subprocess.run([*BACKDATE, *(str(a) for a in args)], capture_output=True, text=True,
                          timeout=timeout, env=full_env, cwd=cwd, check=False,
                          input=stdin, stdin=None if stdin is not None else subprocess.DEVNULL)


def hourly(db: Path, statistic_id: str) -> list[tuple[float, float | None, float | None]]:
    return sql(db, "SELECT s.start_ts, s.sum, s.mean FROM statistics s JOIN statistics_meta m "
                   "ON m.id = s.metadata_id WHERE m.statistic_id = ? ORDER BY s.start_ts",
               statistic_id)


def digest(db: Path) -> list[tuple[object, ...]]:
    """Every statistics row and every metadata row: equal before and after means unchanged."""
    return (sql(db, "SELECT * FROM statistics_meta ORDER BY id")
            + sql(db, "SELECT * FROM statistics ORDER BY id")
            + sql(db, "SELECT * FROM statistics_short_term ORDER BY id"))


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return copy_fixture(53, tmp_path)


def vienna(text: str) -> float:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime.strptime(text, "%d.%m.%Y %H:%M").replace(
        tzinfo=ZoneInfo("Europe/Vienna")).timestamp()


# ---------------------------------------------------------------- 16: blank unit cells (klausj1)

# klausj1's own config/test_delta/sum_delta_changed.tsv leaves the unit cell empty for a
# statistic that already exists; that tool takes the unit from the statistic.
FIRST = ("statistic_id\tstart\tunit\tdelta\n"
         "sensor:imp_partly_before\t29.12.2025 04:00\tkWh\t1\n"
         "sensor:imp_partly_before\t29.12.2025 05:00\tkWh\t1\n")
BLANK_UNIT = ("statistic_id\tstart\tunit\tdelta\n"
              "sensor:imp_partly_before\t29.12.2025 06:00\t\t2\n"
              "sensor:imp_partly_before\t29.12.2025 07:00\t\t1\n"
              "sensor:imp_partly_before\t29.12.2025 08:00\t\t0\n"
              "sensor:imp_partly_before\t29.12.2025 11:00\t\t3\n")


def test_16_blank_unit_taken_from_the_existing_statistic(db: Path, tmp_path: Path) -> None:
    first = tmp_path / "first.tsv"
    first.write_text(FIRST, encoding="utf-8")
    backdate("import", first, "--to", f"sqlite:///{db}", "--tz", "Europe/Vienna", "--yes",
             "--no-backup")
    blank = tmp_path / "sum_delta_changed.tsv"
    blank.write_text(BLANK_UNIT, encoding="utf-8")
    planned = backdate("plan", blank, "--to", f"sqlite:///{db}", "--tz", "Europe/Vienna")
    assert "unit kWh from the existing statistic" in planned.stdout, planned.stdout
    backdate("import", blank, "--to", f"sqlite:///{db}", "--tz", "Europe/Vienna", "--yes",
             "--no-backup")
    rows = {start: total for start, total, _ in hourly(db, "sensor:imp_partly_before")}
    assert sql(db, "SELECT unit_of_measurement FROM statistics_meta WHERE statistic_id = ?",
               "sensor:imp_partly_before") == [("kWh",)]
    assert rows[vienna("29.12.2025 05:00")] == pytest.approx(2.0)
    assert rows[vienna("29.12.2025 06:00")] == pytest.approx(4.0)
    assert rows[vienna("29.12.2025 07:00")] == pytest.approx(5.0)
    assert rows[vienna("29.12.2025 11:00")] == pytest.approx(8.0)


def test_16_blank_unit_refused_only_when_no_unit_can_be_known(db: Path, tmp_path: Path) -> None:
    blank = tmp_path / "blank.tsv"
    blank.write_text(BLANK_UNIT, encoding="utf-8")
    before = digest(db)
    proc = run("import", blank, "--to", f"sqlite:///{db}", "--tz", "Europe/Vienna", "--yes")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{blank}:2:" in proc.stderr and "--unit" in proc.stderr, proc.stderr
    assert digest(db) == before
    # With --unit the same file makes a new statistic.
    backdate("import", blank, "--unit", "Wh", "--to", f"sqlite:///{db}", "--tz",
             "Europe/Vienna", "--yes", "--no-backup")
    rows = hourly(db, "sensor:imp_partly_before")
    assert rows[-1][1] == pytest.approx(0.006)  # 6 Wh, stored in kWh


# --------------------------------------------------------- 17: rows shorter than the header


def test_17_short_rows_read_as_empty_trailing_fields(db: Path, tmp_path: Path) -> None:
    # klausj1 mean/min/max (its manualtestMean.csv), semicolons and decimal commas, with a
    # trailing comment column that a spreadsheet left out wherever it was empty.
    path = tmp_path / "mean.csv"
    path.write_text(
        "statistic_id;unit;start;min;max;mean;comment\n"
        "sensor:sun_solar_azimuth;°C;17.03.2024 00:00;1,3;13,5;10\n"
        "sensor:sun_solar_azimuth;°C;17.03.2024 01:00;2,3;23,5;20;checked\n"
        "sensor:sun_solar_azimuth;°C;17.03.2024 02:00;3,3;33,5;30\n", encoding="utf-8")
    backdate("import", path, "--to", f"sqlite:///{db}", "--tz", "Europe/Vienna", "--yes",
             "--no-backup")
    means = [m for _, _, m in hourly(db, "sensor:sun_solar_azimuth")]
    assert means == pytest.approx([10.0, 20.0, 30.0])
    # A row missing a value it needs is refused for that value, on its line.
    path.write_text(
        "statistic_id,unit,start,state,sum\n"
        "sensor:meter,kWh,17.03.2024 00:00,5,5\n"
        "sensor:meter,kWh,17.03.2024 01:00,7\n", encoding="utf-8")
    proc = run("plan", path, "--to", f"sqlite:///{db}", "--tz", "Europe/Vienna")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{path}:3:" in proc.stderr and "'sum'" in proc.stderr, proc.stderr
    assert "like the header" not in proc.stderr
    # A row with more fields than the header is still an error.
    path.write_text("statistic_id,unit,start,delta\nsensor:meter,kWh,17.03.2024 00:00,5,6\n",
                    encoding="utf-8")
    proc = run("plan", path, "--to", f"sqlite:///{db}", "--tz", "Europe/Vienna")
    assert proc.returncode == 1 and f"{path}:2:" in proc.stderr, proc.stderr
