"""A real Home Assistant (2024.3.3) in a subprocess, for tests.

Why real HA: backdate's promises are about what HA shows, so tests check them against HA itself,
not a model of it (see /work/shared/reference/real-home-assistant.md).

Typical use (the ``home_assistant`` fixture in conftest.py does this)::

    ha = HomeAssistant(tmp_dir)
    ha.start()                  # writes configuration.yaml, starts hass, onboards, gets a token
    with ha.ws() as ws:         # backdate.hass.client.SyncHAClient
        ws.call("recorder/info")
    ha.stop()
    ha.start()                  # same dir, same database, same token

The long-lived admin token is kept in ``<dir>/backdate-token.json`` because onboarding works
only once per config dir.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from backdate.hass.client import SyncHAClient

HA_VERSION = "2024.3.3"
REPO_ROOT = Path(__file__).resolve().parent.parent
SETUP_SCRIPT = REPO_ROOT / "scripts" / "setup-ha.sh"

ADMIN_USERNAME = "backdate"
ADMIN_PASSWORD = "backdate-test-password"
TOKEN_FILE = "backdate-token.json"
CONSOLE_LOG = "hass-console.log"


ENGINES = ("sqlite", "mariadb", "postgresql")  # the recorder databases HA supports


# Process groups of the Home Assistants this test process started and has not stopped. HA runs
# in a session of its own (a Ctrl-C in the terminal must not reach it before the recorder is
# flushed), so nothing else ends it when pytest itself is ended: `kill_all` does, at exit and
# on SIGTERM (tests/conftest.py), or a stopped run would leave HAs running.
_RUNNING: set[int] = set()


def kill_all() -> None:
    """SIGKILL every Home Assistant this process started and did not stop."""
    for pid in list(_RUNNING):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
        _RUNNING.discard(pid)


atexit.register(kill_all)


class HarnessError(RuntimeError):
    """HA did not come up or did not behave; the message carries the tail of HA's log."""


# ----------------------------------------------------------------------- recorder databases


def create_recorder_database(engine: str, tag: str = "ha") -> str | None:
    """An EMPTY database (unique name) for HA to create its own schema in; returns the
    ``db_url`` to give HA, in HA's own spelling (None for SQLite: HA's file in its config dir).

    Why empty: the proof is about databases HA made itself, not about dumps loaded into them.
    The servers are started (or installed) by tests/services.py when they are down.
    """
    if engine == "sqlite":
        return None
    import services  # tests/services.py: pymysql/psycopg, only needed for the servers

    name = f"backdate_{tag}_{uuid.uuid4().hex[:10]}"
    if engine == "mariadb":
        # HA's documented setup; with another default collation HA 2024.3 "corrects" its
        # tables at the first start (recorder warnings that would hide real ones).
        services.ensure_mariadb()
        con = services.mysql_connect("mysql")
        try:
            with con.cursor() as cur:
                cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 "
                            "COLLATE utf8mb4_unicode_ci")
        finally:
            con.close()
        return (f"mysql+pymysql://root:@{services.HOST}:{services.MYSQL_PORT}/{name}"
                "?charset=utf8mb4")
    if engine == "postgresql":
        services.create_pg_database(name, None)
        return f"postgresql://postgres@{services.HOST}:{services.PG_PORT}/{name}"
    raise ValueError(f"unknown recorder engine {engine!r}; one of {ENGINES}")


def engine_of(db_url: str) -> str:
    """'sqlite', 'mariadb' or 'postgresql' for a recorder db_url."""
    scheme = db_url.split(":", 1)[0].split("+", 1)[0]
    return {"sqlite": "sqlite", "mysql": "mariadb", "mariadb": "mariadb",
            "postgresql": "postgresql"}[scheme]


def _database_name(db_url: str) -> str:
    return urllib.parse.urlsplit(db_url).path.lstrip("/")


def drop_recorder_database(db_url: str | None) -> None:
    """Drop a database made by ``create_recorder_database`` (SQLite files go with the dir)."""
    if db_url is None or engine_of(db_url) == "sqlite":
        return
    import services

    services.drop_database(engine_of(db_url), _database_name(db_url))


@contextlib.contextmanager
def recorder_database(engine: str, tag: str = "ha") -> Iterator[str | None]:
    """``create_recorder_database`` for a ``with`` block; dropped afterwards."""
    url = create_recorder_database(engine, tag)
    try:
        yield url
    finally:
        drop_recorder_database(url)


def read_sql(db_url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Rows of one read-only query on HA's recorder database, in a connection of its own.

    ``sql`` uses ``%s`` placeholders on every engine. Why here: tests check what HA wrote
    (``statistics_runs``, raw rows) without holding a transaction open beside HA; SQLite is
    opened read-only, the servers in autocommit (each SELECT sees the latest commit).
    """
    engine = engine_of(db_url)
    if engine == "sqlite":
        import sqlite3

        path = db_url[len("sqlite:///"):]
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return [tuple(r) for r in con.execute(sql.replace("%s", "?"), params)]
        finally:
            con.close()
    import services

    name = _database_name(db_url)
    if engine == "mariadb":
        mcon = services.mysql_connect(name)
        try:
            with mcon.cursor() as cur:
                cur.execute(sql, params)
                return [tuple(r) for r in cur.fetchall()]
        finally:
            mcon.close()
    pcon = services.pg_connect(name)
    try:
        return [tuple(r) for r in pcon.execute(sql, params).fetchall()]  # type: ignore[arg-type]
    finally:
        pcon.close()


def write_compiled_runs(db_url: str, start: float, end: float) -> int:
    """The statistics_runs rows Home Assistant would have written had it compiled every
    5-minute window in [start, end) (epoch seconds): what makes data "recent" for a database
    without a running HA. backdate leaves an entity statistic's windows after the newest run
    to HA; a fixture copy's newest run is from the day it was made. Returns rows added."""
    from datetime import UTC, datetime

    first, last = int(start // 300 * 300), int(end // 300 * 300)
    windows = [datetime.fromtimestamp(t, UTC).replace(tzinfo=None)
               for t in range(first, last, 300)]
    engine = engine_of(db_url)
    if engine == "sqlite":
        import sqlite3

        con = sqlite3.connect(db_url[len("sqlite:///"):], timeout=30)
        try:
            have = {r[0] for r in con.execute("SELECT start FROM statistics_runs")}
            new = [w.strftime("%Y-%m-%d %H:%M:%S.%f") for w in windows]
            new = [w for w in new if w not in have]
            con.executemany("INSERT INTO statistics_runs (start) VALUES (?)", [(w,) for w in new])
            con.commit()
            return len(new)
        finally:
            con.close()
    import services

    name = _database_name(db_url)
    if engine == "mariadb":
        mcon = services.mysql_connect(name)
        try:
            with mcon.cursor() as cur:
                cur.execute("SELECT start FROM statistics_runs")
                have = {r[0] for r in cur.fetchall()}
                new = [w for w in windows if w not in have]
                cur.executemany("INSERT INTO statistics_runs (start) VALUES (%s)",
                                [(w,) for w in new])
            return len(new)
        finally:
            mcon.close()
    pcon = services.pg_connect(name)
    try:
        aware = [w.replace(tzinfo=UTC) for w in windows]
        have = {r[0] for r in pcon.execute("SELECT start FROM statistics_runs").fetchall()}
        new_pg = [w for w in aware if w not in have]
        with pcon.cursor() as cur:
            cur.executemany("INSERT INTO statistics_runs (start) VALUES (%s)",
                            [(w,) for w in new_pg])
        return len(new_pg)
    finally:
        pcon.close()


def default_venv() -> Path:
    """Where scripts/setup-ha.sh installs HA (same rule as the script)."""
    env = os.environ.get("BACKDATE_HA_VENV")
    if env:
        return Path(env)
    return Path.home() / ".cache" / "backdate" / f"ha-{HA_VERSION}"


def ensure_ha_venv() -> Path:
    """Run scripts/setup-ha.sh (idempotent) and return the venv; raises loudly on failure."""
    proc = subprocess.run(
        ["bash", str(SETUP_SCRIPT)], capture_output=True, text=True, check=False, timeout=3600
    )
    if proc.returncode != 0:
        err = "\n".join(
            line for line in proc.stderr.splitlines() if not line.startswith("WARNING: Location")
        )
        raise HarnessError(
            f"scripts/setup-ha.sh failed (exit {proc.returncode}); Home Assistant tests cannot"
            f" run.\n--- stderr (tail) ---\n{err[-4000:]}"
        )
    venv = Path(proc.stdout.strip().splitlines()[-1])
    if not (venv / "bin" / "hass").exists():
        raise HarnessError(f"scripts/setup-ha.sh printed {venv}, but it has no bin/hass")
    return venv


def free_port() -> int:
    """A currently free TCP port on loopback (small race with other processes; fine for tests)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # A port HA just left sits in TIME_WAIT; HA itself rebinds it with SO_REUSEADDR.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class HomeAssistant:
    """One HA instance bound to one config dir.

    ``db_url`` defaults to SQLite in the dir; pass a MariaDB/PostgreSQL URL to use those.
    ``extra_config`` is appended verbatim to configuration.yaml (for later fixtures).
    """

    def __init__(
        self,
        config_dir: Path | str,
        *,
        venv: Path | str | None = None,
        db_url: str | None = None,
        port: int | None = None,
        time_zone: str = "Europe/Vienna",
        extra_config: str = "",
        startup_timeout: float = 120,
    ):
        self.config_dir = Path(config_dir).resolve()
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.venv = Path(venv) if venv is not None else default_venv()
        self.db_url = db_url or f"sqlite:///{self.config_dir / 'home-assistant_v2.db'}"
        self.port = port or free_port()
        self.time_zone = time_zone
        self.extra_config = extra_config
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._token: str | None = None
        self._log_offset = 0

    # ------------------------------------------------------------------------- properties

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        """Long-lived admin access token (valid across restarts of this dir)."""
        if self._token is None:
            raise HarnessError("no token yet: call start() first")
        return self._token

    @property
    def db_path(self) -> Path | None:
        """The SQLite file, or None when the recorder uses another database."""
        prefix = "sqlite:///"
        if self.db_url.startswith(prefix):
            return Path(self.db_url[len(prefix) :])
        return None

    @property
    def engine(self) -> str:
        """The recorder database engine: 'sqlite', 'mariadb' or 'postgresql'."""
        return engine_of(self.db_url)

    def read_sql(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """``read_sql`` on this HA's recorder database (``%s`` placeholders)."""
        return read_sql(self.db_url, sql, params)

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    # -------------------------------------------------------------------------- config

    def write_config(self) -> None:
        """configuration.yaml with what the recorder tests need and a DST time zone."""
        config = f"""\
homeassistant:
  name: backdate test
  time_zone: {self.time_zone}
  unit_system: metric
  currency: EUR
  country: AT
  latitude: 48.2
  longitude: 16.37
  elevation: 170

http:
  server_host: 127.0.0.1
  server_port: {self.port}

recorder:
  db_url: {json.dumps(self.db_url)}
  commit_interval: 1

api:

websocket_api:

# The sensor integration must load, or HA never compiles statistics.
sensor:
  - platform: template
    sensors:
      backdate_harness:
        friendly_name: backdate harness
        value_template: "{{{{ 1 }}}}"

logger:
  default: info
  logs:
    homeassistant.components.http.ban: warning

{self.extra_config}
"""
        (self.config_dir / "configuration.yaml").write_text(config)

    # -------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Start hass on this dir and wait until it runs with the recorder; onboard once."""
        if self.running:
            return
        hass = self.venv / "bin" / "hass"
        if not hass.exists():
            raise HarnessError(f"{hass} missing: run scripts/setup-ha.sh (the ha_venv fixture)")
        if not _port_is_free(self.port):
            self.port = free_port()
        self.write_config()
        console = self.config_dir / CONSOLE_LOG
        self._log_offset = console.stat().st_size if console.exists() else 0
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")
        }
        env["PATH"] = f"{self.venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        started = time.monotonic()
        with console.open("ab") as out:
            self.process = subprocess.Popen(
                [str(hass), "--skip-pip", "--log-no-color", "-c", str(self.config_dir)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        _RUNNING.add(self.process.pid)
        try:
            self._wait_for_http(started)
            self._ensure_token()
            self._wait_until_running(started)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM, wait (HA flushes the recorder on shutdown), SIGKILL if it hangs."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(10)
        self.process = None
        _RUNNING.discard(proc.pid)
        return proc.returncode

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> HomeAssistant:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------------------- logs

    def log_text(self, *, all_runs: bool = False) -> str:
        """HA's console output (everything it logged) for the current run, or for all runs."""
        path = self.config_dir / CONSOLE_LOG
        if not path.exists():
            return ""
        data = path.read_bytes()
        if not all_runs:
            data = data[self._log_offset :]
        return data.decode("utf-8", "replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def _fail(self, message: str) -> HarnessError:
        return HarnessError(
            f"{message}\n--- tail of HA log ({self.config_dir}) ---\n{self.log_tail()}"
        )

    # -------------------------------------------------------------------------- waiting

    def _check_alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise self._fail(f"hass exited with code {self.process.returncode} during startup")

    def _wait_for_http(self, started: float) -> None:
        """Until /api/onboarding answers: the http server and onboarding views are up."""
        last = ""
        while time.monotonic() - started < self.startup_timeout:
            self._check_alive()
            try:
                status, _ = self._http("GET", "/api/onboarding", token=None, timeout=5)
                if status == 200:
                    return
                last = f"HTTP {status}"
            except (OSError, urllib.error.URLError) as err:
                last = str(err)
            time.sleep(0.25)
        raise self._fail(
            f"HA did not answer on {self.url} within {self.startup_timeout} s ({last})"
        )

    def _wait_until_running(self, started: float) -> None:
        """Until core state is RUNNING with the recorder loaded (not recovery mode)."""
        with self.ws() as ws:
            while True:
                self._check_alive()
                config = ws.call("get_config")
                if config.get("recovery_mode") or config.get("safe_mode"):
                    raise self._fail("HA started in recovery mode (missing requirements?)")
                if config.get("state") == "RUNNING":
                    missing = {"recorder", "sensor", "api", "websocket_api"} - set(
                        config.get("components", [])
                    )
                    if missing:
                        raise self._fail(f"HA runs without {sorted(missing)}")
                    info = ws.call("recorder/info")
                    if info.get("thread_running") and not info.get("migration_in_progress"):
                        return
                if time.monotonic() - started > self.startup_timeout:
                    raise self._fail(
                        f"HA not RUNNING within {self.startup_timeout} s"
                        f" (state {config.get('state')!r})"
                    )
                time.sleep(0.25)

    # -------------------------------------------------------------------------- HTTP

    def _http(
        self,
        method: str,
        path: str,
        *,
        token: str | None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> tuple[int, Any]:
        """One REST request; returns (status, parsed JSON or text). No exception on 4xx/5xx."""
        headers = {}
        data = None
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if json_body is not None:
            data = json.dumps(json_body).encode()
            headers["Content-Type"] = "application/json"
        elif form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(self.url + path, data=data, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                status, body = resp.status, resp.read()
        except urllib.error.HTTPError as err:
            status, body = err.code, err.read()
        text = body.decode("utf-8", "replace")
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text

    def request(self, method: str, path: str, json_body: Any = None) -> Any:
        """Authenticated REST call as admin; raises HarnessError unless 2xx."""
        status, body = self._http(method, path, token=self.token, json_body=json_body)
        if not 200 <= status < 300:
            raise HarnessError(f"{method} {path} -> HTTP {status}: {body}")
        return body

    def post_state(
        self, entity_id: str, state: Any, attributes: Mapping[str, Any] | None = None
    ) -> Any:
        """Set an entity's state via ``POST /api/states/<entity_id>`` (creates it if new)."""
        return self.request(
            "POST",
            f"/api/states/{entity_id}",
            {"state": str(state), "attributes": dict(attributes or {})},
        )

    # -------------------------------------------------------------------------- WebSocket

    def ws(self, token: str | None = None, timeout: float = 30) -> SyncHAClient:
        """A connected ``SyncHAClient`` (admin token unless given); close it or use ``with``."""
        return SyncHAClient(self.url, token or self.token, timeout)

    # -------------------------------------------------------------------------- auth

    @property
    def _client_id(self) -> str:
        # Any URL works for indieauth client ids; HA accepts redirect URIs under it.
        return f"{self.url}/"

    def _ensure_token(self) -> None:
        """Onboard on first start, else reuse the stored long-lived token."""
        token_file = self.config_dir / TOKEN_FILE
        if token_file.exists():
            self._token = json.loads(token_file.read_text())["token"]
            return
        status, body = self._http(
            "POST",
            "/api/onboarding/users",
            token=None,
            json_body={
                "client_id": self._client_id,
                "name": "backdate test",
                "username": ADMIN_USERNAME,
                "password": ADMIN_PASSWORD,
                "language": "en",
            },
        )
        if status != 200 or not isinstance(body, dict) or "auth_code" not in body:
            raise self._fail(
                f"onboarding failed: HTTP {status}: {body} (onboarding works only once per"
                f" config dir; {token_file} is missing)"
            )
        access = self._exchange_code(body["auth_code"])
        self._token = self._long_lived_token(access, "backdate tests")
        token_file.write_text(
            json.dumps(
                {"token": self._token, "username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
            )
        )

    def _exchange_code(self, code: str) -> str:
        """authorization_code -> 30-minute access token."""
        status, body = self._http(
            "POST",
            "/auth/token",
            token=None,
            form={"grant_type": "authorization_code", "code": code, "client_id": self._client_id},
        )
        if status != 200 or not isinstance(body, dict) or "access_token" not in body:
            raise self._fail(f"/auth/token failed: HTTP {status}: {body}")
        return str(body["access_token"])

    def _long_lived_token(self, access_token: str, client_name: str) -> str:
        with SyncHAClient(self.url, access_token) as ws:
            return str(
                ws.call("auth/long_lived_access_token", client_name=client_name, lifespan=3650)
            )

    def login(self, username: str, password: str) -> str:
        """Log in through HA's login flow (as the frontend does); returns an access token."""
        redirect_uri = f"{self.url}/?auth_callback=1"
        status, flow = self._http(
            "POST",
            "/auth/login_flow",
            token=None,
            json_body={
                "client_id": self._client_id,
                "handler": ["homeassistant", None],
                "redirect_uri": redirect_uri,
            },
        )
        if status != 200 or not isinstance(flow, dict) or "flow_id" not in flow:
            raise HarnessError(f"/auth/login_flow failed: HTTP {status}: {flow}")
        status, step = self._http(
            "POST",
            f"/auth/login_flow/{flow['flow_id']}",
            token=None,
            json_body={"client_id": self._client_id, "username": username, "password": password},
        )
        if status != 200 or not isinstance(step, dict) or step.get("type") != "create_entry":
            raise HarnessError(f"login as {username!r} failed: HTTP {status}: {step}")
        return self._exchange_code(str(step["result"]))

    def create_user(
        self,
        username: str,
        password: str = "backdate-user-password",
        *,
        admin: bool = False,
        name: str | None = None,
    ) -> str:
        """Create a user (non-admin by default) and return a long-lived token for it.

        Why: backdate must report a clear error when its token lacks admin rights.
        """
        group = "system-admin" if admin else "system-users"
        with self.ws() as ws:
            user = ws.call("config/auth/create", name=name or username, group_ids=[group])["user"]
            ws.call(
                "config/auth_provider/homeassistant/create",
                user_id=user["id"],
                username=username,
                password=password,
            )
        access = self.login(username, password)
        return self._long_lived_token(access, f"backdate tests ({username})")
