"""MariaDB, PostgreSQL and Mosquitto for the tests: make sure they run (install and start them
if needed) and create throw-away databases loaded from Home Assistant's dumps.

Why: the server-target tests must pass the same way in CI and on a fresh machine, so a service
that is down is started (and installed with apt-get when missing), never a reason to skip.
Servers: MariaDB at 127.0.0.1:3306 (root, empty password), PostgreSQL at 127.0.0.1:5432
(trust authentication, user postgres).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pymysql

HOST = "127.0.0.1"
MYSQL_PORT = 3306
PG_PORT = 5432
MQTT_PORT = 1883
WAIT = 60.0  # seconds a started server gets to accept connections


def _run(cmd: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, shell=True, check=False, capture_output=True, text=True,
                          timeout=900, **kw)  # type: ignore[call-overload]


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    proc = _run(f"apt-get update && apt-get install -y {' '.join(packages)}", env=env)
    if proc.returncode:
        raise RuntimeError(f"apt-get install {' '.join(packages)} failed:\n{proc.stderr[-3000:]}")


def _mysql_up() -> bool:
    try:
        pymysql.connect(host=HOST, port=MYSQL_PORT, user="root", password="",
                        connect_timeout=3).close()
        return True
    except pymysql.Error:
        return False


def _pg_up() -> bool:
    try:
        psycopg.connect(host=HOST, port=PG_PORT, user="postgres", dbname="postgres",
                        connect_timeout=3).close()
        return True
    except psycopg.Error:
        return False


def _wait(check: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return
        time.sleep(0.5)
    raise RuntimeError(f"{what} did not come up at {HOST} within {WAIT:.0f} s")


def ensure_mariadb() -> None:
    """MariaDB answering as root with an empty password on 127.0.0.1:3306."""
    if _mysql_up():
        return
    fresh = not Path("/usr/sbin/mariadbd").exists()
    if fresh:
        _apt_install("mariadb-server", "mariadb-client")
    Path("/run/mysqld").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/mysqld", "mysql", "mysql")
    proc = _run("start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd "
                "-- --user=mysql --bind-address=127.0.0.1")
    if proc.returncode:
        raise RuntimeError(f"starting MariaDB failed: {proc.stderr}")
    deadline = time.monotonic() + WAIT
    while not _mysql_up() and time.monotonic() < deadline:
        # Debian's root uses unix_socket authentication; allow an empty password over TCP.
        _run("mysql -uroot -e \"ALTER USER root@localhost IDENTIFIED VIA unix_socket OR "
             "mysql_native_password USING PASSWORD(''); CREATE DATABASE IF NOT EXISTS test\"")
        time.sleep(0.5)
    _wait(_mysql_up, "MariaDB")


def ensure_postgresql() -> None:
    """PostgreSQL accepting user postgres without a password on 127.0.0.1:5432."""
    if _pg_up():
        return
    conf = Path("/etc/postgresql")
    if not conf.exists() or not any(conf.iterdir()):
        _apt_install("postgresql")
    version = sorted(p.name for p in conf.iterdir())[-1]
    hba = conf / version / "main" / "pg_hba.conf"
    trust = "host all all 127.0.0.1/32 trust\n"
    text = hba.read_text()
    if trust not in text:
        hba.write_text(trust + text)
    proc = _run(f"pg_ctlcluster --skip-systemctl-redirect {version} main start")
    if proc.returncode and "already running" not in proc.stderr:
        raise RuntimeError(f"starting PostgreSQL failed: {proc.stderr}")
    _run(f"pg_ctlcluster --skip-systemctl-redirect {version} main reload")
    _wait(_pg_up, "PostgreSQL")


def _mqtt_up() -> bool:
    try:
        with socket.create_connection((HOST, MQTT_PORT), timeout=3):
            return True
    except OSError:
        return False


def ensure_mosquitto() -> None:
    """Mosquitto accepting anonymous clients on 127.0.0.1:1883 (Debian's default config)."""
    if _mqtt_up():
        return
    if not Path("/usr/sbin/mosquitto").exists():
        _apt_install("mosquitto")
    Path("/run/mosquitto").mkdir(parents=True, exist_ok=True)
    proc = _run("mosquitto -d -c /etc/mosquitto/mosquitto.conf")
    if proc.returncode:
        raise RuntimeError(f"starting Mosquitto failed: {proc.stderr}")
    _wait(_mqtt_up, "Mosquitto")


CHROMIUM = "/usr/bin/chromium"


def ensure_chromium() -> str:
    """Debian's headless-capable Chromium (for the page tests, driven by Playwright with
    this executable; Playwright's own browser download is never used). Returns its path."""
    if not Path(CHROMIUM).exists():
        _apt_install("chromium")
    return CHROMIUM


def ensure_all() -> None:
    """Every service the suite talks to, before pytest starts (scripts/test.sh): a fresh
    machine installs and starts them here once, instead of inside parallel tests."""
    ensure_mariadb()
    ensure_postgresql()
    ensure_mosquitto()
    sys.path.insert(0, str(Path(__file__).parent))
    from influx_service import ensure_influxd

    ensure_influxd()


def pytest_configure(config: object) -> None:
    """Registers the `servers` marker (this module is loaded as a plugin by the tests)."""
    config.addinivalue_line(  # type: ignore[attr-defined]
        "markers", "servers: needs MariaDB and PostgreSQL (started by the test setup)")


def pytest_itemcollected(item: object) -> None:
    """Every test of test_recorder_servers.py carries the `servers` marker."""
    if getattr(item, "module", None) is not None and item.module.__name__ == (  # type: ignore[attr-defined]
            "test_recorder_servers"):
        item.add_marker("servers")  # type: ignore[attr-defined]


# ------------------------------------------------------------------------- per-test databases


# Test connections never wait long, and never outlive a forgotten transaction: a lock or a
# metadata lock waits at most LOCK_WAIT seconds (MariaDB's lock_wait_timeout defaults to a
# day: a DROP DATABASE behind an idle connection would hang the suite), and a connection idle
# inside a transaction is ended by the server after IDLE_IN_TRANSACTION seconds.
LOCK_WAIT = 60
IDLE_IN_TRANSACTION = 300


def mysql_connect(database: str) -> pymysql.connections.Connection:
    return pymysql.connect(
        host=HOST, port=MYSQL_PORT, user="root", password="", database=database,
        charset="utf8mb4", autocommit=True, connect_timeout=30, read_timeout=600,
        init_command=(f"SET time_zone = '+00:00', lock_wait_timeout = {LOCK_WAIT}, "
                      f"innodb_lock_wait_timeout = {LOCK_WAIT}, "
                      f"idle_transaction_timeout = {IDLE_IN_TRANSACTION}"))


def pg_connect(database: str) -> psycopg.Connection:
    return psycopg.connect(
        host=HOST, port=PG_PORT, user="postgres", dbname=database, autocommit=True,
        connect_timeout=30,
        options=(f"-c lock_timeout={LOCK_WAIT * 1000} "
                 f"-c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION * 1000}"))


def create_mysql_database(name: str, dump: Path | None) -> str:
    """A fresh database `name` loaded from a mysqldump file; returns backdate's URL for it."""
    ensure_mariadb()
    con = mysql_connect("mysql")
    try:
        with con.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
            cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    finally:
        con.close()
    if dump is not None:
        with dump.open("rb") as f:
            proc = subprocess.run(["mysql", "-h", HOST, "-P", str(MYSQL_PORT), "-uroot", name],
                                  stdin=f, capture_output=True, check=False, timeout=300)
        if proc.returncode:
            raise RuntimeError(f"loading {dump} failed: {proc.stderr.decode()[-2000:]}")
    return f"mysql://root@{HOST}:{MYSQL_PORT}/{name}"


def create_pg_database(name: str, dump: Path | None) -> str:
    """A fresh database `name` loaded from a pg_dump file; returns backdate's URL for it."""
    ensure_postgresql()
    con = pg_connect("postgres")
    try:
        con.execute(f'DROP DATABASE IF EXISTS "{name}"')
        con.execute(f'CREATE DATABASE "{name}"')
    finally:
        con.close()
    if dump is not None:
        proc = subprocess.run(["psql", "-q", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p",
                               str(PG_PORT), "-U", "postgres", "-d", name, "-f", str(dump)],
                              capture_output=True, check=False, timeout=300)
        if proc.returncode:
            raise RuntimeError(f"loading {dump} failed: {proc.stderr.decode()[-2000:]}")
    return f"postgresql://postgres@{HOST}:{PG_PORT}/{name}"


def drop_database(engine: str, name: str) -> None:
    if engine == "mariadb":
        con = mysql_connect("mysql")
        try:
            with con.cursor() as cur:
                # like PostgreSQL's WITH (FORCE): end every other session on the database, or
                # one a failed test left open keeps its metadata lock and DROP waits
                cur.execute("SELECT id FROM information_schema.processlist WHERE db = %s "
                            "AND id <> CONNECTION_ID()", (name,))
                for (session,) in cur.fetchall():
                    with contextlib.suppress(pymysql.err.MySQLError):
                        cur.execute(f"KILL {int(session)}")
                cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        finally:
            con.close()
    else:
        con = pg_connect("postgres")
        try:
            con.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            con.close()


if __name__ == "__main__":
    ensure_all()
    print("services: MariaDB, PostgreSQL, Mosquitto running; influxd installed")
