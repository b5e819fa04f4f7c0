"""A real InfluxDB 1.x for the tests: installed from Debian when missing, started privately.

Why: the InfluxDB source and target must be proven against the real server, the same way in CI
and on a fresh machine, so a missing `influxd` is installed (`apt-get install influxdb`) and
started, never a reason to skip. Each test session gets its own `influxd` (own config, data dir
and free ports, HTTP API with authentication off), so tests of several helpers never collide;
tests create uniquely named databases through `InfluxDB1`.

Use it directly (`with start_influx() as server: ...`, `shared_influx()` for one server per
process) or through the `influx` fixture in tests/influx_fixtures.py.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx

HOST = "127.0.0.1"
START_WAIT = 60.0  # seconds a started influxd gets to answer /ping


def free_port() -> int:
    """A currently free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def ensure_influxd() -> str:
    """Path of `influxd`; installs Debian's `influxdb` package when it is missing."""
    found = shutil.which("influxd") or (
        "/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = subprocess.run("apt-get update && apt-get install -y influxdb", shell=True,
                          check=False, capture_output=True, text=True, timeout=900, env=env)
    found = shutil.which("influxd") or (
        "/usr/bin/influxd" if Path("/usr/bin/influxd").exists() else None)
    if proc.returncode or not found:
        raise RuntimeError(f"apt-get install influxdb failed:\n{proc.stderr[-3000:]}")
    return found


CONFIG = """\
reporting-disabled = true
bind-address = "{host}:{rpc_port}"

[meta]
  dir = "{root}/meta"
  logging-enabled = false

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  index-version = "inmem"
  query-log-enabled = false
  cache-snapshot-write-cold-duration = "10s"

[coordinator]
  query-timeout = "0s"

[retention]
  enabled = false

[monitor]
  store-enabled = false

[continuous_queries]
  enabled = false

[http]
  enabled = true
  bind-address = "{host}:{http_port}"
  auth-enabled = {auth}
  log-enabled = false
  max-row-limit = 0
  max-body-size = 0

[logging]
  level = "warn"
  suppress-logo = true
"""


class InfluxServer:
    """One private `influxd` process with its own directory and ports."""

    def __init__(self, root: Path | None = None, *, port: int | None = None,
                 admin: tuple[str, str] | None = None):
        """`admin=(user, password)` turns authentication on with that admin user."""
        self.admin = admin
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="backdate-influx-")) if root is None else root
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.root / "influxd.log"

    @property
    def url(self) -> str:
        """http:// address of the HTTP API."""
        return f"http://{HOST}:{self.port}"

    @property
    def host_port(self) -> str:
        return f"{HOST}:{self.port}"

    def start(self) -> InfluxServer:
        binary = ensure_influxd()
        self.root.mkdir(parents=True, exist_ok=True)
        config = self.root / "influxdb.conf"
        config.write_text(CONFIG.format(host=HOST, rpc_port=free_port(), http_port=self.port,
                                        root=self.root,
                                        auth="true" if self.admin else "false"))
        log = self.log_path.open("ab")
        self.process = subprocess.Popen([binary, "-config", str(config)], stdout=log,
                                        stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + START_WAIT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"influxd exited with {self.process.returncode}:\n"
                                   f"{self.log_path.read_text()[-3000:]}")
            if self.ping():
                if self.admin:
                    self._create_admin()
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"influxd did not answer /ping on {self.url} within {START_WAIT:.0f} s")

    def _create_admin(self) -> None:
        """The first admin user (InfluxDB allows this one request without credentials)."""
        user, password = self.admin  # type: ignore[misc]
        q = (f'CREATE USER "{user}" WITH PASSWORD \'{password}\' WITH ALL PRIVILEGES')
        resp = httpx.post(f"{self.url}/query", data={"q": q}, auth=(user, password), timeout=10)
        if resp.status_code != 200 or "error" in resp.text:
            resp = httpx.post(f"{self.url}/query", data={"q": q}, timeout=10)
        if resp.status_code != 200 or '"error"' in resp.text:
            raise RuntimeError(f"creating the admin user failed: {resp.text}")

    def ping(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ping", timeout=2).status_code == 204
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        """Stop the process (SIGTERM, then SIGKILL) and remove a temporary directory."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def client(self) -> InfluxDB1:
        return InfluxDB1(self.url, auth=self.admin)

    def __enter__(self) -> InfluxServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def start_influx(root: Path | None = None) -> Iterator[InfluxServer]:
    """A started private influxd for the duration of the block."""
    server = InfluxServer(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


_shared: InfluxServer | None = None
_shared_lock = threading.Lock()


def shared_influx() -> InfluxServer:
    """One private influxd per test process, started on first use, stopped at exit."""
    global _shared
    with _shared_lock:
        if _shared is None or _shared.process is None or _shared.process.poll() is not None:
            _shared = InfluxServer().start()
            atexit.register(_shared.stop)
        return _shared


def stop_shared() -> None:
    """Stop this process's influxd now (on SIGTERM, where atexit does not run)."""
    if _shared is not None:
        _shared.stop()


class InfluxError(RuntimeError):
    """InfluxDB answered a test helper's request with an error."""


class InfluxDB1:
    """The few calls tests need, over the plain 1.x HTTP API (not through backdate's code)."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None):
        self.url = url.rstrip("/")
        self.http = httpx.Client(base_url=self.url, timeout=300, auth=auth)

    def close(self) -> None:
        self.http.close()

    def query(self, q: str, db: str | None = None, *, epoch: str = "s",
              post: bool = False) -> list[dict[str, Any]]:
        """The `series` of the first statement's result ([] when none); raises on errors."""
        params = {"q": q, "epoch": epoch}
        if db:
            params["db"] = db
        resp = (self.http.post("/query", data=params) if post
                else self.http.get("/query", params=params))
        body = resp.json()
        if resp.status_code >= 400 or "error" in body:
            raise InfluxError(f"{resp.status_code}: {body}")
        result = body["results"][0]
        if "error" in result:
            raise InfluxError(result["error"])
        return list(result.get("series", []))

    def points(self, q: str, db: str, *, epoch: str = "s") -> list[list[Any]]:
        """All rows of the first series of a query's answer."""
        series = self.query(q, db, epoch=epoch)
        return series[0]["values"] if series else []

    def create_database(self, prefix: str = "t") -> str:
        """A new database with a unique name."""
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        self.query(f'CREATE DATABASE "{name}"', post=True)
        return name

    def drop_database(self, name: str) -> None:
        self.query(f'DROP DATABASE "{name}"', post=True)

    def write(self, db: str, lines: Iterable[str], *, precision: str = "s",
              batch: int = 50_000) -> int:
        """Write line-protocol lines in batches; returns how many were written."""
        count = 0
        chunk: list[str] = []

        def flush() -> None:
            resp = self.http.post("/write", params={"db": db, "precision": precision},
                                  content="\n".join(chunk).encode())
            if resp.status_code != 204:
                raise InfluxError(f"write: {resp.status_code} {resp.text}")

        for line in lines:
            chunk.append(line)
            count += 1
            if len(chunk) >= batch:
                flush()
                chunk = []
        if chunk:
            flush()
        return count

    def __enter__(self) -> InfluxDB1:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
