"""The command line as a user meets it: paths, messages, help, JSON, secrets, spreadsheet files.

Why: every case here is something a user ran into (issue 11): a README example that works only
from `/`, a traceback for a missing driver, a password echoed in an error, a klausj1 file with
blank unit cells or short rows refused. Each test runs the installed console script against a
copy of a database Home Assistant made, and judges it with plain SQL and the printed output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from test_cli_sqlite import BACKDATE, REPO_ROOT, backdate, copy_fixture, sql

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
    assert rows[-1][1] == pytest.approx(6.0)  # a new statistic keeps its input's unit
    assert sql(db, "SELECT unit_of_measurement FROM statistics_meta WHERE statistic_id = ?",
               "sensor:imp_partly_before") == [("Wh",)]


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


# ------------------------------------------------------------- 15: no secret in any output

PASSWORD = "Pw-s3cr3t-91"
TOKEN = "tok-aabbccddeeff0011"
ENV_TOKEN = "envtok-99887766"
CSV = "start,delta\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,2\n"


def closed_port() -> int:
    from ha_harness import free_port

    return free_port()  # nothing listens there


def test_15_no_password_or_token_in_any_output(db: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text(CSV, encoding="utf-8")
    port = closed_port()
    influx = f"influxdb://u:{PASSWORD}@127.0.0.1:{port}/db?p={PASSWORD}"
    ha = f"http://user:{PASSWORD}@127.0.0.1:{port}"
    maria = f"mysql+pymysql://root:{PASSWORD}@127.0.0.1:{port}/ha"
    pg = f"postgresql://postgres:{PASSWORD}@127.0.0.1:{port}/ha"
    backup = tmp_path / "backdate-backup-20240101T000000Z.jsonl"
    backup.write_text("{}\n", encoding="utf-8")
    toml = tmp_path / "backdate.toml"
    toml.write_text(
        f'[sync]\nstate_file = "s.db"\n[[sync.jobs]]\nname = "j"\n'
        f'source = "influxdb://u:{PASSWORD}@127.0.0.1:{port}/db?measurement=m&field=f'
        f'&kind=power"\n'
        f'targets = ["{ha}", "{maria}", "influxdb://u:{PASSWORD}@127.0.0.1:{port}/e"]\n'
        f'statistic_id = "backdate:j"\n', encoding="utf-8")
    commands: list[list[object]] = []
    for target in (influx, ha, maria, pg, f"bogus://u:{PASSWORD}@host/x"):
        commands += [
            ["plan", data, "--to", target, "--token", TOKEN],
            ["import", data, "--to", target, "--token", TOKEN, "--yes"],
            ["inspect", target, "--token", TOKEN],
            ["export", target, "--statistic-id", "backdate:in", "--token", TOKEN],
            ["restore", backup, "--to", target],
        ]
    commands += [
        ["plan", influx, "--to", f"sqlite:///{db}", "--start", "2024-01-01"],
        ["import", influx, "--to", f"sqlite:///{db}", "--start", "2024-01-01", "--yes"],
        ["plan", f"wnsm:AT0010000000000000001000000012345?password={PASSWORD}&x=1",
         "--to", f"sqlite:///{db}"],
        ["sync", "--config", toml, "--once"],
        ["sync", "--config", toml, "--verify"],
    ]
    for args in commands:
        proc = run(*args, cwd=tmp_path, env={"HA_TOKEN": ENV_TOKEN, "INFLUXDB_TOKEN": ENV_TOKEN})
        out = proc.stdout + proc.stderr
        assert proc.returncode in (1, 2, 3), (args, proc.returncode, out)
        for secret in (PASSWORD, TOKEN, ENV_TOKEN):
            assert secret not in out, (args, out)
        assert "Traceback" not in out, (args, out)


def test_15_the_one_masker() -> None:
    from backdate.domain.urls import mask_text, mask_url

    for kept in ("sqlite:////config/home-assistant_v2.db", "sqlite:///ha.db", "/data/x.csv",
                 "wnsm:AT001?auth=api&client_id=c1", "mqtt://broker:1883",
                 "influxdb://me@h:8086/db?measurement=m"):
        assert mask_url(kept) == kept
    assert mask_url(f"http://user:{PASSWORD}@ha:8123") == "http://user:***@ha:8123"
    assert mask_url(f"influxdb://u:{PASSWORD}@h/db?p={PASSWORD}&field=f") == (
        "influxdb://u:***@h/db?p=***&field=f")
    assert mask_url(f"wnsm:AT1?client_secret={PASSWORD}&api_key=K&x=1") == (
        "wnsm:AT1?client_secret=***&api_key=***&x=1")
    text = mask_text(f"cannot reach postgresql://pg:{PASSWORD}@db/ha: token {TOKEN} refused",
                     [TOKEN, "abc"])
    assert text == "cannot reach postgresql://pg:***@db/ha: token *** refused", text


# ------------------------------------------------ 9: no traceback, missing packages named

BLOCKER = """
import sys
_blocked = set(sys.argv[1].split(","))
class _Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in _blocked:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, _Blocker())
for _m in list(sys.modules):
    if _m.split(".")[0] in _blocked:
        del sys.modules[_m]
sys.argv = ["backdate", *sys.argv[2:]]
from backdate.cli import main
main()
"""

def run_without(modules: str, *args: object, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The CLI in a Python where `modules` cannot be imported (a package not installed)."""
    python = REPO_ROOT / ".venv" / "bin" / "python"
    exe = str(python) if python.exists() else sys.executable
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    return subprocess.run([exe, "-c", BLOCKER, modules, *(str(a) for a in args)],
                          capture_output=True, text=True, timeout=120, env=env, cwd=cwd,
                          check=False, stdin=subprocess.DEVNULL)


def test_9_missing_packages_are_one_line_errors_before_anything_is_written(
        db: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text(CSV, encoding="utf-8")
    before = digest(db)
    cases = [
        ("pymysql", ["inspect", "mysql+pymysql://root:@127.0.0.1/ha"], "pip install"),
        ("pymysql", ["import", data, "--to", "mariadb://root:@127.0.0.1/ha", "--yes"],
         "pip install"),
        ("psycopg", ["plan", data, "--to", "postgresql://postgres@127.0.0.1/ha"],
         "pip install"),
        ("matplotlib", ["import", data, "--to", f"sqlite:///{db}", "--yes", "--chart",
                        tmp_path / "c.png"], "pip install 'backdate[chart]'"),
        ("matplotlib", ["plan", data, "--to", f"sqlite:///{db}", "--chart", tmp_path / "c.png"],
         "pip install 'backdate[chart]'"),
    ]
    for module, args, fix in cases:
        proc = run_without(module, *args, cwd=tmp_path)
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, (module, args, proc.returncode, out)
        assert "Traceback" not in out and fix in out, (module, args, out)
        assert len(proc.stderr.strip().splitlines()) == 1, (module, args, proc.stderr)
    assert digest(db) == before
    assert not (tmp_path / "c.png").exists()
    # the demo runs without matplotlib (a plain `pip install backdate`), says how to get a chart
    proc = run_without("matplotlib", "demo", "--dir", tmp_path / "demo", cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Traceback" not in out, out
    assert "chart: not drawn (pip install 'backdate[chart]')" in " ".join(out.split()), out
    assert not (tmp_path / "demo" / "chart.png").exists()


def test_9_no_traceback_for_any_broken_argument(db: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text(CSV, encoding="utf-8")
    target = f"sqlite:///{db}"
    missing = tmp_path / "missing.csv"
    toml = tmp_path / "backdate.toml"
    toml.write_text('[[sync.jobs]]\nname = "j"\nsource = "in.csv"\n'
                    'targets = ["ftp://example.org/x"]\nstatistic_id = "backdate:j"\n',
                    encoding="utf-8")
    broken = {
        "missing file": {
            "plan": ["plan", missing, "--to", target],
            "import": ["import", missing, "--to", target, "--yes"],
            "inspect": ["inspect", f"sqlite:///{tmp_path}/nope.db"],
            "export": ["export", f"sqlite:///{tmp_path}/nope.db", "--statistic-id", "a:b"],
            "restore": ["restore", tmp_path / "nope.bak", "--to", target],
            "sync": ["sync", "--config", tmp_path / "nope.toml", "--once"],
            "demo": ["demo", "--dir", data / "demo"],  # under a file
            "export -o": ["export", target, "--statistic-id", "backdate:in", "-o",
                          tmp_path / "nope" / "out.csv"],
        },
        "bad URL": {
            "plan": ["plan", data, "--to", "sqlite:/x"],
            "import": ["import", data, "--to", "ftp://x", "--yes"],
            "inspect": ["inspect", "mysql://"],
            "export": ["export", "postgresql://:x@/", "--statistic-id", "a:b"],
            "restore": ["restore", data, "--to", "http://[::1"],
            "plan-source": ["plan", "influxdb://h:notaport/db", "--to", target],
            "sync": ["sync", "--config", toml, "--once"],
        },
        "bad --tz": {
            "plan": ["plan", data, "--to", target, "--tz", "Mars/Base"],
            "import": ["import", data, "--to", target, "--tz", "../../etc/passwd", "--yes"],
            "export": ["export", target, "--statistic-id", "a:b", "--tz", "Nowhere"],
            "inspect": ["inspect", target, "--tz", "Mars/Base"],
        },
        "bad number": {
            "export": ["export", target, "--statistic-id", "a:b", "--start", "yesterday-ish"],
            "plan": ["plan", data, "--to", target, "--start", "2024-13-45"],
            "import": ["import", data, "--to", target, "--end", "soon", "--yes"],
        },
        "unknown option": {
            name: [name, "--no-such-option"]
            for name in ("plan", "import", "inspect", "export", "restore", "demo", "sync")
        },
    }
    backdate("import", data, "--to", target, "--yes", "--no-backup")
    before = digest(db)
    for kind, commands in broken.items():
        for name, args in commands.items():
            proc = run(*args, cwd=tmp_path)
            out = proc.stdout + proc.stderr
            assert "Traceback" not in out, (kind, name, out)
            assert proc.returncode in (1, 2, 3), (kind, name, proc.returncode, out)
            assert out.strip(), (kind, name)
    assert digest(db) == before


# ------------------------------------------------------------ 8: SQLite paths, absolute form

RELATIVE_SQLITE = re.compile(r"sqlite:///(?!/|relative)")


def test_8_plain_paths_and_the_relative_url_hint(db: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    data = work / "in.csv"
    data.write_text(CSV, encoding="utf-8")
    # A plain file path is a target, absolute or relative to the working directory.
    backdate_in = {"cwd": work}
    proc = run("import", data, "--to", db, "--yes", "--no-backup", **backdate_in)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run("inspect", os.path.relpath(db, work), **backdate_in)
    assert proc.returncode == 0 and "backdate:in" in proc.stdout, proc.stdout + proc.stderr
    proc = run("export", db, "--statistic-id", "backdate:in", **backdate_in)
    assert proc.returncode == 0 and "2024-01-01" in proc.stdout, proc.stdout + proc.stderr
    # sqlite:/// + a path that exists only from / : say which URL was meant.
    relative_form = f"sqlite:///{str(db).lstrip('/')}"
    proc = run("inspect", relative_form, **backdate_in)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"sqlite:///{db}" in proc.stderr and "relative" in proc.stderr, proc.stderr
    # A plain path that is not there is a missing database, not a usage puzzle.
    proc = run("inspect", work / "nope.db", **backdate_in)
    assert proc.returncode == 3 and "nope.db" in proc.stderr, proc.stderr


def test_8_demo_hints_the_absolute_url(tmp_path: Path) -> None:
    proc = run("demo", "--dir", "demo", cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"backdate inspect sqlite:///{tmp_path}/demo/home-assistant_v2.db" in proc.stdout, (
        proc.stdout)
    assert not RELATIVE_SQLITE.findall(proc.stdout), proc.stdout


def test_8_every_sqlite_example_is_absolute() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert not RELATIVE_SQLITE.findall(readme), [
        line for line in readme.splitlines() if RELATIVE_SQLITE.search(line)]
    for command in ("plan", "import", "inspect", "export", "restore", "demo", "sync"):
        proc = run(command, "--help")
        assert proc.returncode == 0, proc.stderr
        text = re.sub(r"\s*\n\s*", "", proc.stdout)  # help lines wrap inside a URL
        assert not RELATIVE_SQLITE.findall(text), (command, proc.stdout)


# ------------------------------------------------------------------ 11: help, version, groups

COMMANDS = ("plan", "import", "inspect", "export", "restore", "demo", "sync")


def test_11_version_completion_groups_examples_at_80_columns() -> None:
    proc = run("--version")
    assert proc.returncode == 0 and re.fullmatch(r"backdate \d+\.\d+\.\d+\S*\n", proc.stdout), (
        proc.stdout, proc.stderr)
    top = run("--help").stdout
    assert "--install-completion" in top and "--show-completion" in top, top
    helps = {}
    for command in COMMANDS:
        proc = run(command, "--help")
        assert proc.returncode == 0, proc.stderr
        text = helps[command] = proc.stdout
        for line in text.splitlines():
            assert len(line) <= 80, (command, line)
        assert "…" not in text, (command, text)  # nothing cut off
        assert "Example" in text, (command, text)
        assert f"backdate {command}" in re.sub(r"\s+", " ", text), command
    for command, expected in (("plan", ["Input", "Target", "Safety", "Output"]),
                              ("import", ["Input", "Target", "Safety", "Output"]),
                              ("sync", ["Input", "Safety", "Output"])):
        panels = [p for p in re.findall(r"╭─ (\w+) ─", helps[command])
                  if p in ("Input", "Target", "Safety", "Output")]
        assert panels == expected, (command, panels)
    # What was wrong: an option that does not exist, import's --tz text on export, inspect
    # without http(s)://, restore offering http(s)://, which fails.
    assert "--short-term-days" not in helps["import"] + helps["plan"]
    flat = {c: re.sub(r"[│\s]+", " ", t) for c, t in helps.items()}
    assert "naive times in the input" not in flat["export"], flat["export"]
    assert "http(s)://" in flat["inspect"], flat["inspect"]
    assert "http" not in flat["restore"].split("--to", 1)[1], flat["restore"]


def test_11_restore_refuses_an_http_target_as_usage(tmp_path: Path) -> None:
    backup = tmp_path / "backdate-backup-20240101T000000Z.jsonl"
    backup.write_text("{}\n", encoding="utf-8")
    proc = run("restore", backup, "--to", "http://127.0.0.1:8123", cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "recorder database" in proc.stderr, proc.stderr


# ------------------------------------------------------------------ 10: sync paths and loop


def recent_csv(hours: int = 6) -> str:
    """Hourly kWh for the last complete hours: a sync's window is relative to now."""
    import time

    last = int(time.time() // HOUR) * HOUR - 2 * HOUR
    lines = ["start,delta"]
    lines += [f"{last - k * HOUR},0.5" for k in range(hours, 0, -1)]
    return "\n".join(lines) + "\n"


def test_10_sync_paths_relative_to_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "cfg"
    cfg.mkdir()
    db = copy_fixture(53, cfg, "ha.db")
    (cfg / "meter.csv").write_text(recent_csv(), encoding="utf-8")
    toml = cfg / "backdate.toml"
    toml.write_text('[sync]\nstate_file = "sync.db"\n'
                    '[[sync.jobs]]\nname = "house"\nsource = "meter.csv"\n'
                    'targets = ["sqlite:///ha.db"]\nstatistic_id = "backdate:house"\n',
                    encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = run("sync", "--config", toml, "--once", cwd=elsewhere)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert f"sqlite:///{db}:" in out and "sqlite:/ha.db" not in out, out
    assert sum(1 for _ in hourly(db, "backdate:house")) == 6
    assert not (elsewhere / "ha.db").exists() and (cfg / "sync.db").exists()
    # A plain path works too.
    toml.write_text(toml.read_text().replace('"sqlite:///ha.db"', '"ha.db"'), encoding="utf-8")
    proc = run("sync", "--config", toml, "--once", cwd=elsewhere)
    assert proc.returncode == 0 and f"sqlite:///{db}:" in proc.stdout, proc.stdout + proc.stderr
    # A missing source file is a failed source: exit 3, naming the file.
    toml.write_text(toml.read_text().replace('"meter.csv"', '"gone.csv"'), encoding="utf-8")
    proc = run("sync", "--config", toml, "--once", cwd=elsewhere)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert str(cfg / "gone.csv") in proc.stderr, proc.stderr


def test_10_sync_loop_says_when_it_runs_next(tmp_path: Path) -> None:
    import signal
    import time

    db = copy_fixture(53, tmp_path, "ha.db")
    (tmp_path / "meter.csv").write_text(recent_csv(), encoding="utf-8")
    toml = tmp_path / "backdate.toml"
    toml.write_text('[sync]\nstate_file = "sync.db"\ninterval = "2h"\njitter = "0s"\n'
                    '[[sync.jobs]]\nname = "house"\nsource = "meter.csv"\n'
                    f'targets = ["{db}"]\nstatistic_id = "backdate:house"\n', encoding="utf-8")
    env = {**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"}
    loop = subprocess.Popen([*BACKDATE, "sync", "--config", str(toml)], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    assert loop.stdout is not None
    out = b""
    try:
        import select

        deadline = time.monotonic() + 60
        while b"next run" not in out and time.monotonic() < deadline:
            if select.select([loop.stdout], [], [], 1.0)[0]:
                data = os.read(loop.stdout.fileno(), 65536)
                if not data:
                    break
                out += data
        text = out.decode()
        assert re.search(r"job house: ok, .*\n.*job house: next run at "
                         r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ \(in 120 min\)", text, re.S), text
    finally:
        loop.send_signal(signal.SIGTERM)
        loop.communicate(timeout=30)


# ------------------------------------------------------------------ 12: inspect at 80 columns

LONG_ID = "backdate:house_energy_total_consumption_main_meter"


def on_terminal(*args: object, columns: int = 80, cwd: Path | None = None,
                answer: str | None = None) -> tuple[int, str, str]:
    """The CLI with stdout on a pseudo-terminal of `columns` columns: what a user sees; with
    `answer`, stdin is the terminal too and gets that typed in."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "xterm"}
    proc = subprocess.Popen([*BACKDATE, *(str(a) for a in args)], stdout=slave,
                            stderr=subprocess.PIPE, env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL if answer is None else slave)
    os.close(slave)
    if answer is not None:
        os.write(master, answer.encode())  # held by the terminal until the prompt reads it
    import select
    import time

    chunks = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            if proc.poll() is not None:
                break
            continue
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    else:
        proc.kill()
    os.close(master)
    _, err = proc.communicate(timeout=120)
    text = b"".join(chunks).decode("utf-8", "replace").replace("\r\n", "\n")
    return proc.returncode, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text), err.decode()


def test_12_inspect_names_zone_filter_and_did_you_mean(db: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text("start,delta\n2024-03-30T22:00:00Z,1234.5\n2024-03-31T01:00:00Z,2\n",
                    encoding="utf-8")
    backdate("import", data, "--statistic-id", LONG_ID, "--name", "House meter", "--to", db,
             "--yes", "--no-backup")
    backdate("import", data, "--statistic-id", "backdate:garage", "--to", db, "--yes",
             "--no-backup")
    code, out, err = on_terminal("inspect", db, "--tz", "Europe/Vienna")
    assert code == 0, out + err
    for line in out.splitlines():
        assert len(line) <= 80, line
    assert LONG_ID in out and "House meter" in out, out  # neither broken nor cut
    assert "1,234.5" not in out  # (no energy numbers here; rows are counted)
    # Times in --tz: 22:00Z is 23:00 in Vienna (CET) the day before the spring change.
    assert "2024-03-30 23:00" in out and "Europe/Vienna" in out, out
    # Piped: tab-separated with a name column, times in the zone asked for.
    piped = run("inspect", db, "--tz", "Europe/Vienna").stdout
    header, *rows = [line.split("\t") for line in piped.splitlines()[1:]]
    assert "name" in header, header
    row = dict(zip(header, next(r for r in rows if r[1] == LONG_ID), strict=True))
    assert row["name"] == "House meter" and row["first hour (Europe/Vienna)"] == (
        "2024-03-30 23:00"), row
    # A pattern filter, on ids and names.
    listed = run("inspect", db, "--filter", "*garage*").stdout
    assert "backdate:garage" in listed and LONG_ID not in listed, listed
    assert LONG_ID in run("inspect", db, "--filter", "house meter").stdout
    # An id typed slightly wrong: exit 1 and the id that was meant.
    proc = run("inspect", db, "--filter", "backdate:garag")
    assert proc.returncode == 0  # a part of an id matches
    proc = run("inspect", db, "--filter", "backdate.garage")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "did you mean backdate:garage" in proc.stderr, proc.stderr
    proc = run("export", db, "--statistic-id", "backdate:garag")
    assert proc.returncode == 1 and "did you mean backdate:garage" in proc.stderr, proc.stderr


# ------------------------------------------------------------- 13: what the output tells you


def test_13_no_at_the_prompt_says_nothing_written(db: Path, tmp_path: Path) -> None:
    data = tmp_path / "in.csv"
    data.write_text(CSV, encoding="utf-8")
    before = digest(db)
    code, out, err = on_terminal("import", data, "--to", db, answer="n\n")
    assert code == 1, out + err
    assert "Write this?" in out and "nothing written" in out, out
    assert digest(db) == before and not list(tmp_path.glob("*.backdate-*"))


def test_13_chart_and_day_zone_are_stated(db: Path, tmp_path: Path) -> None:
    temps = tmp_path / "outdoor.csv"
    temps.write_text("start,value\n2024-01-01T00:00:00Z,1.5\n2024-01-01T01:00:00Z,2.5\n",
                     encoding="utf-8")
    png = tmp_path / "days.png"
    proc = run("plan", temps, "--kind", "mean", "--unit", "°C", "--to", db, "--chart", png)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not re.search(r"(?m)^chart written", proc.stdout), proc.stdout
    assert "no chart written" in proc.stdout, proc.stdout
    assert not png.exists()
    data = tmp_path / "in.csv"
    data.write_text(CSV, encoding="utf-8")
    proc = run("plan", data, "--to", db, "--chart", png, env={"TZ": "UTC"})
    assert proc.returncode == 0 and f"chart written to {png}" in proc.stdout, proc.stdout
    assert png.read_bytes().startswith(b"\x89PNG")
    # Z times and no --tz: the day table says whose days it shows and how to choose.
    assert "days are UTC days (this machine's zone); --tz ZONE" in proc.stdout, proc.stdout
    proc = run("plan", data, "--to", db, "--tz", "Europe/Vienna")
    assert "days are" not in proc.stdout and "Europe/Vienna" in proc.stdout, proc.stdout


# ------------------------------------------------------------------------ 14: --json shapes


def test_14_json_of_plan_import_sync_and_restore(tmp_path: Path) -> None:
    db = copy_fixture(53, tmp_path, "ha.db")
    data = tmp_path / "in.csv"
    data.write_text(CSV, encoding="utf-8")
    before = digest(db)
    proc = run("plan", data, "--to", db, "--tz", "Europe/Vienna", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert (doc["format"], doc["command"], doc["time_zone"]) == (1, "plan", "Europe/Vienna")
    assert doc["target"] == f"sqlite:///{db}" and doc["nothing_to_write"] is False
    [stat] = doc["statistics"]
    assert (stat["statistic_id"], stat["exists"], stat["unit"], stat["type"]) == (
        "backdate:in", False, "kWh", "sum")
    assert stat["input"] == {"source": str(data), "readings": 2, "kind": "delta", "unit": "kWh"}
    assert stat["hourly"]["new"] == 2 and stat["hourly"]["rows"] == 2
    assert sum(day["after"] for day in stat["days"]) == pytest.approx(3.0)
    assert {seam["closed"] for seam in stat["seams"]} <= {True}
    assert digest(db) == before
    # import --json needs --yes (a script cannot answer), then says what it wrote.
    proc = run("import", data, "--to", db, "--json", cwd=tmp_path)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr
    proc = run("import", data, "--to", db, "--json", "--yes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["command"] == "import" and doc["written"] == ["backdate:in"]
    assert doc["backup"] and Path(doc["backup"]).is_file()
    again = json.loads(run("import", data, "--to", db, "--json", "--yes", cwd=tmp_path).stdout)
    assert again["nothing_to_write"] is True and again["written"] == []
    # restore --json
    proc = run("restore", doc["backup"], "--to", db, "--json", "--yes", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    restored = json.loads(proc.stdout)
    assert (restored["command"], restored["restored"], restored["backup"]) == (
        "restore", True, doc["backup"])
    assert digest(db) == before
    # sync --once --json
    (tmp_path / "meter.csv").write_text(recent_csv(), encoding="utf-8")
    toml = tmp_path / "backdate.toml"
    toml.write_text('[sync]\nstate_file = "sync.db"\n[[sync.jobs]]\nname = "house"\n'
                    'source = "meter.csv"\ntargets = ["ha.db"]\n'
                    'statistic_id = "backdate:house"\n', encoding="utf-8")
    proc = run("sync", "--config", toml, "--once", "--json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    [job] = doc["jobs"]
    assert (doc["command"], doc["exit_code"], job["job"], job["status"]) == (
        "sync", 0, "house", "ok")
    assert job["read"] == 6 and job["targets"][0]["target"] == f"sqlite:///{db}"
    assert job["targets"][0]["error"] is None and re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", job["started"])
    proc = run("sync", "--config", toml, "--json", cwd=tmp_path)
    assert proc.returncode == 2 and not proc.stdout, proc.stdout + proc.stderr


# ------------------------------------------------- the README's "Using it", followed literally


def readme_commands() -> list[str]:
    """The commands of the first sh block under "## Using it", continuation lines joined."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("\n## Using it", 1)[1]
    block = section.split("```sh\n", 1)[1].split("\n```", 1)[0]
    joined = block.replace("\\\n", " ")
    return [line.strip() for line in joined.splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_using_it_from_another_directory(tmp_path: Path) -> None:
    """A user whose HA config is not at /config: the README's /config/ becomes their own
    absolute config directory; the commands run from their home directory, not from /."""
    import shlex

    config = tmp_path / "config"
    config.mkdir()
    db = copy_fixture(53, config, "home-assistant_v2.db")
    home = tmp_path / "home"
    home.mkdir()
    hours = [f"2024-01-{d:02d} {h:02d}:00" for d in (1, 2) for h in range(24)]
    (home / "meter.csv").write_text(
        "start,kwh\n" + "".join(f"{t},0.25\n" for t in hours), encoding="utf-8")
    (home / "quarter_hours.csv").write_text("start,value\n" + "".join(
        f"2024-02-01T{h:02d}:{m:02d}:00+01:00,{100 + m}\n" for h in range(6)
        for m in (0, 15, 30, 45)), encoding="utf-8")
    (home / "readings.csv").write_text("time,reading\n" + "".join(
        f"2024-03-01T{h:02d}:00:00Z,{1000 + 2 * h}\n" for h in range(12)), encoding="utf-8")
    (home / "outdoor.csv").write_text("time,value\n" + "".join(
        f"2024-03-01T{h:02d}:00:00Z,{h / 2 - 1}\n" for h in range(12)), encoding="utf-8")
    commands = readme_commands()
    assert commands and all(c.startswith("backdate ") for c in commands), commands
    assert any(c.startswith("backdate restore") for c in commands)
    for command in commands:
        command = command.replace("/config/", f"{config}/")
        args = shlex.split(command)[1:]
        if args[0] == "restore":  # the user names the backup their import made
            newest = max(config.glob("home-assistant_v2.db.backdate-*.jsonl"),
                         key=lambda p: p.stat().st_mtime)
            args[1] = str(newest)
        proc = run(*args, cwd=home)
        assert proc.returncode == 0, (command, proc.stdout, proc.stderr)
    assert (home / "days.png").read_bytes().startswith(b"\x89PNG")
    exported = (home / "house.csv").read_text(encoding="utf-8").splitlines()
    assert len(exported) == 1 + 6, exported  # the header and six hours of quarter-hours
    ids = {r[0] for r in sql(db, "SELECT statistic_id FROM statistics_meta")}
    assert {"backdate:meter", "backdate:house", "backdate:readings"} <= ids, ids
    assert not (home / "config").exists()
