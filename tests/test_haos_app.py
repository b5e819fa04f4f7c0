"""The Home Assistant app's entry point (`python -m backdate.haos`), outside a container.

A temporary folder stands for the container's `/`: `data/options.json` as the Supervisor writes
it, `homeassistant/` is the config folder of a real Home Assistant 2024.3.3 (its recorder
database included), `share/` holds the readings. SUPERVISOR_TOKEN is that HA's admin token and
the Supervisor's WebSocket proxy is pointed at HA's own `/api/websocket`. What HA then shows
through `recorder/statistics_during_period` is the proof.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ha_harness import HomeAssistant

from backdate.hass.client import statistics_during_period_sync

HOUR = 3600
LOG_LINE = re.compile(r"^\[\d\d:\d\d:\d\d\] (DEBUG|INFO|WARNING|ERROR): ")
SECRETS = {"influxdb_token": "influx-s3cret-token-123", "wnsm_password": "wnsm-pa55word-xyz"}


def app_root(base: Path, options: dict) -> Path:
    root = base / "root"
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "share" / "backdate").mkdir(parents=True, exist_ok=True)
    (root / "config").mkdir(parents=True, exist_ok=True)
    (root / "data" / "options.json").write_text(json.dumps(options))
    return root


def run_app(root: Path, *args: str, token: str | None = "not-a-real-token-0000",
            supervisor: str = "http://127.0.0.1:9", core_ws: str | None = None,
            timeout: float = 180) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SUPERVISOR_TOKEN", "HA_TOKEN", "HA_URL", "BACKDATE_CORE_WEBSOCKET")}
    env.update(BACKDATE_APP_ROOT=str(root), BACKDATE_SUPERVISOR_URL=supervisor,
               XDG_STATE_HOME=str(root / "state"))
    if token is not None:
        env["SUPERVISOR_TOKEN"] = token
    if core_ws is not None:
        env["BACKDATE_CORE_WEBSOCKET"] = core_ws
    return subprocess.run([sys.executable, "-m", "backdate.haos", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def assert_clean_log(proc: subprocess.CompletedProcess[str], *secrets: str) -> None:
    """HA's app log style on every line, no traceback, no secret."""
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output, output
    for line in proc.stdout.splitlines():
        assert LOG_LINE.match(line), (line, output)
    for secret in secrets:
        assert secret not in output, output


def house_csv(path: Path, end: int, hours: int, per_quarter: float) -> None:
    lines = ["start,delta"]
    for i in range(hours * 4):
        t = end - hours * HOUR + i * 900
        lines.append(f"{datetime.fromtimestamp(t, UTC).isoformat()},{per_quarter}")
    path.write_text("\n".join(lines) + "\n")


# ------------------------------------------------------------------- options, no HA needed


@pytest.mark.parametrize(("options", "words"), [
    ({"jobs": [{"name": "house", "source": "x.csv", "statistic_id": "backdate:house",
                "kind": "watts"}]}, ["option 'jobs[1].kind'"]),
    ({"jobs": [{"name": "house", "source": "x.csv", "statistic_id": "House Energy"}]},
     ["option 'jobs[1].statistic_id'", "backdate:house"]),
    ({"jobs": [], "write_to": "postgres"}, ["option 'write_to'"]),
    ({"jobs": [{"name": "a", "source": "x.csv", "statistic_id": "backdate:a"}],
      "intervall": "1h"}, ["option 'intervall'", "unknown option"]),
    ({"jobs": [{"name": "a", "source": "x.csv", "statistic_id": "backdate:a",
                "interval": "1 fortnight"}]}, ["option 'jobs[1] (a).interval'", "duration"]),
    ({"jobs": [{"name": "a", "source": "x.csv", "statistic_id": "backdate:a", "tz": "Mars/Base"}]},
     ["option 'jobs[1] (a).tz'", "Mars/Base"]),
    ({"jobs": [{"name": "a", "source": "x.csv", "statistic_id": "backdate:a"},
               {"name": "a", "source": "y.csv", "statistic_id": "backdate:b"}]},
     ["option 'jobs'", "two jobs"]),
    ({"jobs": []}, ["option 'jobs'", "no job"]),
    ({"jobs": [None]}, ["option 'jobs[1]'", "name, source and statistic_id"]),
    ({"jobs": [{"name": "a", "source": "influxdb://h:8086/db?measurement=m&field=f&oops=1",
                "statistic_id": "backdate:a"}]}, ["option 'jobs[1] (a).source'", "oops"]),
    ({"initial_sync_days": 0, "jobs": []}, ["option 'initial_sync_days'"]),
    ({"interval": "often", "jobs": [{"name": "a", "source": "x.csv",
                                    "statistic_id": "backdate:a"}]},
     ["option 'interval'", "not a duration"]),
])
def test_a_wrong_option_is_named(tmp_path: Path, options: dict, words: list[str]) -> None:
    root = app_root(tmp_path, {**SECRETS, **options})
    proc = run_app(root, "--check")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert_clean_log(proc, *SECRETS.values(), "not-a-real-token-0000")
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("[") and "ERROR: " in last, proc.stdout
    for word in words:
        assert word in last, (word, last)


def test_options_that_are_not_an_object_are_explained(tmp_path: Path) -> None:
    """options.json edited by hand into a list: no pydantic class name in the message."""
    root = app_root(tmp_path, {})
    (root / "data" / "options.json").write_text("[1, 2]")
    proc = run_app(root, "--check")
    assert proc.returncode == 1, proc.stdout
    assert "JSON object of options" in proc.stdout and "AppOptions" not in proc.stdout
    assert_clean_log(proc)


def test_missing_mounts_and_token_are_explained(tmp_path: Path) -> None:
    root = tmp_path / "empty"
    root.mkdir()
    proc = run_app(root, "--check")
    assert proc.returncode == 1 and "options.json is missing" in proc.stdout, proc.stdout
    job = {"name": "a", "source": "a.csv", "statistic_id": "backdate:a"}
    root = app_root(tmp_path, {"jobs": [job]})
    proc = run_app(root, "--check", token=None)
    assert proc.returncode == 1 and "SUPERVISOR_TOKEN is not set" in proc.stdout, proc.stdout
    root = app_root(tmp_path, {"jobs": [job], "write_to": "sqlite"})
    (root / "homeassistant").mkdir()  # mapped, but the recorder uses another database
    proc = run_app(root, "--check")
    assert proc.returncode == 1, proc.stdout
    assert "option 'write_to': sqlite" in proc.stdout and "home-assistant_v2.db" in proc.stdout
    assert "recorder uses another database" in proc.stdout, proc.stdout
    assert_clean_log(proc)


def test_missing_homeassistant_folder_is_named(tmp_path: Path) -> None:
    """write_to: sqlite without the /homeassistant mount: the message names the missing
    mapping, not another recorder database."""
    job = {"name": "a", "source": "a.csv", "statistic_id": "backdate:a"}
    root = app_root(tmp_path, {"jobs": [job], "write_to": "sqlite"})
    proc = run_app(root, "--check")
    assert proc.returncode == 1, proc.stdout
    assert "homeassistant is missing" in proc.stdout, proc.stdout
    assert "homeassistant_config" in proc.stdout, proc.stdout
    assert "another database" not in proc.stdout, proc.stdout
    assert_clean_log(proc)


def test_generated_config_and_serve_section(tmp_path: Path) -> None:
    """backdate.toml is private (0600), names the container's paths, carries no source secret,
    and gets a [serve] block only when `backdate serve` can mirror Home Assistant."""
    from backdate.haos.app import serve_available

    options = {**SECRETS, "serve": True, "jobs": [
        {"name": "house", "source": "/share/backdate/house.csv", "statistic_id": "backdate:house",
         "statistic_name": "House", "tz": "Europe/Vienna", "kind": "delta", "unit": "Wh"},
        {"name": "garage", "source": "garage.csv", "statistic_id": "backdate:garage"}]}
    root = app_root(tmp_path, options)
    proc = run_app(root, "--check")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean_log(proc, *SECRETS.values(), "not-a-real-token-0000")
    config = root / "data" / "backdate.toml"
    assert config.stat().st_mode & 0o777 == 0o600
    text = config.read_text()
    assert f'source = "{root}/share/backdate/house.csv"' in text
    assert f'source = "{root}/config/garage.csv"' in text
    assert 'targets = ["ws://127.0.0.1:9/core/websocket"]' in text
    assert not any(secret in text for secret in SECRETS.values())
    assert ("[serve]" in text) == serve_available()
    if not serve_available():
        assert "only the sync runs" in proc.stdout


def test_serve_on_does_not_stop_the_sync(tmp_path: Path) -> None:
    """`serve: true` (in DOCS.md's options) with a backdate whose `serve` has the event ingest
    but no Home Assistant mirror: the loop keeps syncing, the log says only the sync runs, and
    SIGTERM ends it with exit 0 (the app used to start `serve` with a config it refused, and
    the whole app ended with exit 1 a second after it started)."""
    import signal

    from backdate.targets.fresh import create_recorder_sqlite

    end = int(time.time()) // HOUR * HOUR
    root = app_root(tmp_path, {"serve": True, "write_to": "sqlite", "jobs": [
        {"name": "house", "source": "/share/backdate/house.csv",
         "statistic_id": "backdate:house"}]})
    (root / "homeassistant").mkdir()
    create_recorder_sqlite(root / "homeassistant" / "home-assistant_v2.db")
    house_csv(root / "share" / "backdate" / "house.csv", end, 4, 0.25)
    env = {k: v for k, v in os.environ.items() if k not in ("HA_TOKEN", "HA_URL")}
    env.update(BACKDATE_APP_ROOT=str(root), BACKDATE_SUPERVISOR_URL="http://127.0.0.1:9",
               SUPERVISOR_TOKEN="not-a-real-token-0000", XDG_STATE_HOME=str(root / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "backdate.haos"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "next run at" in line:
                break
        time.sleep(3)  # serve, had it been started, has failed by now
        assert proc.poll() is None, "".join(lines) + proc.stdout.read()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(lines) + out
    assert proc.returncode == 0, (output, err)
    assert "job house: ok" in output and "serve: error" not in output, output
    # write_to: sqlite makes no backup file, and DOCS.md says so (it promised one per write)
    ha_config = root / "homeassistant"
    assert not list(ha_config.glob("*.bak")), list(ha_config.iterdir())
    docs = (Path(__file__).resolve().parent.parent / "ha-app" / "backdate" / "DOCS.md").read_text()
    assert "a backup before each write" not in docs and "No backup file is made" in docs
    assert_clean_log(subprocess.CompletedProcess(proc.args, 0, output, err),
                     "not-a-real-token-0000")


@pytest.mark.parametrize(("signame", "once"), [("SIGTERM", True), ("SIGINT", True),
                                              ("SIGTERM", False)])
def test_a_signal_during_a_run_is_reported(tmp_path: Path, signame: str, once: bool) -> None:
    """SIGTERM or SIGINT while a job waits on a source that never answers. `--once`: the log
    says the run was stopped (it used to end silently with exit 1, the bad-input code), the
    exit code is the shell's for that signal. The loop (what the container runs): the app
    ends with exit 0 within STOP_GRACE (it used to wait for the child for ever). No
    traceback either way."""
    import signal
    import socket

    from backdate.haos.app import STOP_GRACE
    from backdate.targets.fresh import create_recorder_sqlite

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)  # accepts the connection in the kernel, never answers
    port = silent.getsockname()[1]
    root = app_root(tmp_path, {"write_to": "sqlite", "jobs": [
        {"name": "slow", "statistic_id": "backdate:slow",
         "source": f"influxdb://127.0.0.1:{port}/db?measurement=m&field=f"}]})
    (root / "homeassistant").mkdir()
    create_recorder_sqlite(root / "homeassistant" / "home-assistant_v2.db")
    env = {k: v for k, v in os.environ.items() if k not in ("HA_TOKEN", "HA_URL")}
    env.update(BACKDATE_APP_ROOT=str(root), BACKDATE_SUPERVISOR_URL="http://127.0.0.1:9",
               SUPERVISOR_TOKEN="not-a-real-token-0000", XDG_STATE_HOME=str(root / "state"))
    proc = subprocess.Popen([sys.executable, "-m", "backdate.haos",
                             *(["--once"] if once else [])], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert ("once" if once else "syncing") in first, first
        time.sleep(2)  # the child is waiting on the silent source
        assert proc.poll() is None, first + proc.stdout.read()
        sig = getattr(signal, signame)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=STOP_GRACE + 30)
    finally:
        silent.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == (128 + sig if once else 0), (proc.returncode, first + out, err)
    assert f"stopped by {signame}" in out, first + out
    assert_clean_log(subprocess.CompletedProcess(proc.args, 0, first + out, err),
                     "not-a-real-token-0000")


def test_failing_run_logs_no_secret(tmp_path: Path) -> None:
    """A source whose URL holds a password and a Home Assistant that cannot be reached: the
    run fails (exit 3, the cause logged), and no line holds the password, the token or the
    source credentials."""
    options = {**SECRETS, "jobs": [{
        "name": "pw", "statistic_id": "backdate:pw",
        "source": "influxdb://reader:hunter2pw@127.0.0.1:9/pw?measurement=m&field=f&retries=1"}]}
    root = app_root(tmp_path, options)
    proc = run_app(root, "--once", timeout=120)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "ERROR: " in proc.stdout and "job pw: failed" in proc.stdout, proc.stdout
    # the summary naming the failed job is an error too (log_level: error still shows which)
    assert any("ERROR: " in line and "job pw: failed" in line
               for line in proc.stdout.splitlines()), proc.stdout
    assert_clean_log(proc, "hunter2pw", "not-a-real-token-0000", *SECRETS.values())


def test_mariadb_credentials_become_has_db_url() -> None:
    from backdate.haos.app import mysql_url

    url = mysql_url({"host": "core-mariadb", "port": 3306, "username": "service",
                     "password": "p@ss/w:rd"}, "homeassistant")
    assert url == "mysql://service:p%40ss%2Fw%3Ard@core-mariadb:3306/homeassistant?charset=utf8mb4"


def test_redactor_masks_secrets_and_url_passwords() -> None:
    from backdate.haos.app import Redactor

    redactor = Redactor()
    redactor.add(["p@ss/w:rd", "tok"])
    text = redactor.redact("mysql://service:p%40ss%2Fw%3Ard@host/db and p@ss/w:rd and "
                           "influxdb://u:other@h/db")
    assert "p@ss" not in text and "p%40ss" not in text and "other" not in text
    assert "tok" in redactor.redact("tok")  # too short to be a secret worth masking


# ------------------------------------------------------------------------ with a real HA


@pytest.fixture(scope="module")
def app_ha(ha_venv: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[
        tuple[HomeAssistant, Path]]:
    """One real HA whose config folder is the app root's `homeassistant` folder."""
    base = tmp_path_factory.mktemp("haos")
    root = app_root(base, {"jobs": []})
    ha = HomeAssistant(root / "homeassistant", venv=ha_venv)
    ha.start()
    try:
        yield ha, root
    finally:
        ha.stop()


def _hourly_change(ha: HomeAssistant, statistic_id: str, start: int, end: int
                   ) -> dict[int, float]:
    with ha.ws() as ws:
        result = statistics_during_period_sync(
            ws, [statistic_id], datetime.fromtimestamp(start, UTC),
            datetime.fromtimestamp(end, UTC), "hour", ["change"])
    return {int(row["start"] / 1000): row["change"] for row in result.get(statistic_id, [])}


@pytest.mark.ha
@pytest.mark.parametrize("write_to", ["websocket", "sqlite"])
def test_sync_job_reaches_home_assistant(app_ha: tuple[HomeAssistant, Path],
                                         write_to: str) -> None:
    """One job with a file source, run once by the app, lands hour by hour in HA: through the
    Supervisor's WebSocket proxy (HA's API) or HA's SQLite file in /homeassistant."""
    ha, root = app_ha
    end = int(time.time()) // HOUR * HOUR
    hours = 30
    statistic = f"backdate:app_{write_to}"
    house_csv(root / "share" / "backdate" / f"{write_to}.csv", end, hours, 0.25)
    options = {**SECRETS, "write_to": write_to, "log_level": "info", "jobs": [
        {"name": f"house-{write_to}", "source": f"/share/backdate/{write_to}.csv",
         "statistic_id": statistic, "statistic_name": "House", "kind": "delta"}]}
    (root / "data" / "options.json").write_text(json.dumps(options))
    proc = run_app(root, "--once", token=ha.token, supervisor=ha.url,
                   core_ws=f"ws://127.0.0.1:{ha.port}/api/websocket")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert_clean_log(proc, ha.token, *SECRETS.values())
    assert f"job house-{write_to}: ok" in proc.stdout, proc.stdout
    changes = _hourly_change(ha, statistic, end - hours * HOUR, end)
    assert sorted(changes) == list(range(end - hours * HOUR, end, HOUR)), changes
    assert all(abs(v - 1.0) < 1e-9 for v in changes.values()), changes


@pytest.mark.ha
def test_no_mariadb_service_is_explained(app_ha: tuple[HomeAssistant, Path],
                                         tmp_path: Path) -> None:
    """write_to: mariadb asks the Supervisor's /services/mysql; where it answers no (here a
    real HA standing at the Supervisor's address, which has no such API) the app says so."""
    ha, _root = app_ha
    root = app_root(tmp_path, {"write_to": "mariadb", "jobs": [
        {"name": "a", "source": "a.csv", "statistic_id": "backdate:a"}]})
    proc = run_app(root, "--check", token=ha.token, supervisor=ha.url)
    assert proc.returncode == 1, proc.stdout
    assert "option 'write_to': mariadb" in proc.stdout and "MariaDB app" in proc.stdout
    assert_clean_log(proc, ha.token)


@pytest.mark.ha
def test_the_loop_runs_and_stops_on_sigterm(app_ha: tuple[HomeAssistant, Path]) -> None:
    """What the container runs: no --once. The first round runs at once; SIGTERM (the
    Supervisor stopping the app) ends it cleanly with exit 0."""
    import signal

    ha, root = app_ha
    end = int(time.time()) // HOUR * HOUR
    house_csv(root / "share" / "backdate" / "loop.csv", end, 6, 0.5)
    options = {"write_to": "websocket", "interval": "1h", "jobs": [
        {"name": "loop", "source": "/share/backdate/loop.csv", "statistic_id": "backdate:loop"}]}
    (root / "data" / "options.json").write_text(json.dumps(options))
    env = {k: v for k, v in os.environ.items() if k not in ("HA_TOKEN", "HA_URL")}
    env.update(BACKDATE_APP_ROOT=str(root), BACKDATE_SUPERVISOR_URL=ha.url,
               BACKDATE_CORE_WEBSOCKET=f"ws://127.0.0.1:{ha.port}/api/websocket",
               SUPERVISOR_TOKEN=ha.token)
    proc = subprocess.Popen([sys.executable, "-m", "backdate.haos"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "job loop: ok" in line:
                break
        assert any("job loop: ok" in line for line in lines), "".join(lines)
        assert proc.poll() is None  # still looping
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, ("".join(lines) + out, err)
    done = subprocess.CompletedProcess(proc.args, 0, "".join(lines) + out, err)
    assert_clean_log(done, ha.token)
    changes = _hourly_change(ha, "backdate:loop", end - 6 * HOUR, end)
    assert len(changes) == 6 and all(abs(v - 2.0) < 1e-9 for v in changes.values()), changes


# -------------------------------------------------------------- MariaDB through the Supervisor


SERVICE_PASSWORD = "S3rv!ce/pw:x@y%z"


class SupervisorServices:
    """The Supervisor's `GET /services/mysql` as it documents it, on loopback: with the app's
    bearer token it answers `{"result": "ok", "data": {host, port, username, password}}`;
    without it, 401. It hands out a real MariaDB user (this machine has no Supervisor)."""

    def __init__(self, token: str, data: dict) -> None:
        import http.server
        import threading

        outer = self
        self.calls: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                outer.calls.append(self.path)
                if self.headers.get("Authorization") != f"Bearer {token}":
                    self._answer(401, {"result": "error", "message": "Unauthorized"})
                elif self.path == "/services/mysql":
                    self._answer(200, {"result": "ok", "data": data})
                else:
                    self._answer(404, {"result": "error", "message": "not found"})

            def _answer(self, status: int, body: dict) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.ha
@pytest.mark.servers
def test_mariadb_app_credentials_from_the_supervisor(ha_venv: Path, tmp_path: Path) -> None:
    """write_to: mariadb. HA's recorder runs on MariaDB; the app asks the Supervisor for the
    MariaDB service, connects as the user it hands out (a password with URL-special
    characters), writes the job, and HA shows it. Neither the token nor the password is
    logged."""
    import services
    from ha_harness import recorder_database

    with recorder_database("mariadb", "app") as db_url:
        assert db_url is not None
        database = db_url.rsplit("/", 1)[1].split("?", 1)[0]
        con = services.mysql_connect("mysql")
        try:
            with con.cursor() as cur:
                cur.execute("DROP USER IF EXISTS 'backdate_app'@'127.0.0.1'")
                cur.execute("CREATE USER 'backdate_app'@'127.0.0.1' IDENTIFIED BY %s",
                            (SERVICE_PASSWORD,))
                cur.execute(f"GRANT ALL PRIVILEGES ON `{database}`.* TO "
                            "'backdate_app'@'127.0.0.1'")
            con.commit()
        finally:
            con.close()
        root = app_root(tmp_path, {"jobs": []})
        ha = HomeAssistant(root / "homeassistant", venv=ha_venv, db_url=db_url)
        ha.start()
        supervisor = SupervisorServices(ha.token, {"host": "127.0.0.1", "port": services.MYSQL_PORT,
                                                   "username": "backdate_app",
                                                   "password": SERVICE_PASSWORD})
        try:
            end = int(time.time()) // HOUR * HOUR
            house_csv(root / "share" / "backdate" / "maria.csv", end, 12, 0.1)
            options = {"write_to": "mariadb", "mariadb_database": database, "jobs": [
                {"name": "maria", "source": "/share/backdate/maria.csv",
                 "statistic_id": "backdate:app_mariadb"}]}
            (root / "data" / "options.json").write_text(json.dumps(options))
            proc = run_app(root, "--once", token=ha.token, supervisor=supervisor.url)
            assert proc.returncode == 0, proc.stdout + proc.stderr
            assert supervisor.calls == ["/services/mysql"]
            assert_clean_log(proc, ha.token, SERVICE_PASSWORD,
                             SERVICE_PASSWORD.replace("/", "%2F"))
            assert "job maria: ok" in proc.stdout and "backdate_app:***@" in proc.stdout
            changes = _hourly_change(ha, "backdate:app_mariadb", end - 12 * HOUR, end)
            assert len(changes) == 12, changes
            assert all(abs(v - 0.4) < 1e-9 for v in changes.values()), changes
            # the app's own copy of the credentials is private
            assert (root / "data" / "backdate.toml").stat().st_mode & 0o777 == 0o600
        finally:
            supervisor.close()
            ha.stop()
            con = services.mysql_connect("mysql")
            try:
                with con.cursor() as cur:
                    cur.execute("DROP USER IF EXISTS 'backdate_app'@'127.0.0.1'")
                con.commit()
            finally:
                con.close()


def test_the_supervisors_websocket_url_is_taken_as_it_is() -> None:
    """ws://supervisor/core/websocket is the WebSocket itself; http(s) still maps to HA's
    /api/websocket; sync configs accept both."""
    from backdate.config import check_target
    from backdate.hass.client import websocket_url

    assert websocket_url("ws://supervisor/core/websocket") == "ws://supervisor/core/websocket"
    assert websocket_url("http://ha.local:8123") == "ws://ha.local:8123/api/websocket"
    assert websocket_url("https://ha.example/x/") == "wss://ha.example/x/api/websocket"
    assert websocket_url("ws://ha.local:8123") == "ws://ha.local:8123/api/websocket"
    check_target("ws://supervisor/core/websocket", {})
    with pytest.raises(ValueError):
        check_target("ws://supervisor:notaport/core/websocket", {})
