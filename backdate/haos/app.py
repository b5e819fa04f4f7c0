"""The Home Assistant app's entry point: options -> backdate.toml -> `backdate sync` (loop).

Why it is built this way:

* The Supervisor writes the Configuration tab into `/data/options.json`. Those options are
  checked here again (the file can be edited by hand, and an old schema may have let a value
  through), and a wrong one ends the app with `option 'jobs[2].kind': ...` and exit 1, before
  anything runs, never with a traceback.
* The options become an ordinary `backdate.toml` (mode 0600 in `/data`, the app's private
  folder), checked by the same loader `backdate sync` uses, so the app and the CLI can never
  disagree about what a job means.
* Home Assistant is reached the three ways an app can: its WebSocket API through the
  Supervisor's proxy (`ws://supervisor/core/websocket`, authenticated with SUPERVISOR_TOKEN,
  which `homeassistant_api: true` provides), its SQLite recorder database in the mapped
  `/homeassistant` folder, or the MariaDB app's database with the credentials the Supervisor's
  `/services/mysql` API hands out (`services: [mysql:want]`).
* Every line goes to stdout in the style of Home Assistant's app logs (`[12:00:00] INFO: ...`)
  and passes through one redactor that knows every secret the app holds (the Supervisor token,
  the database password, the source credentials) and masks passwords in URLs.

Paths and the Supervisor's address can be moved with BACKDATE_APP_ROOT (the folder that stands
for the container's `/`), BACKDATE_SUPERVISOR_URL and BACKDATE_CORE_WEBSOCKET, so that the
entry point runs outside a container, against a real Home Assistant, in the tests.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backdate.errors import InputError

log = logging.getLogger("backdate.haos")

STOP_GRACE = 30.0  # seconds a child gets to end after SIGTERM before it is killed
INGRESS_PORT = 8099  # config.yaml's ingress_port: where `serve` listens inside the container
RECORDER_FILE = "home-assistant_v2.db"
DEFAULT_DATABASE = "homeassistant"  # the MariaDB app's default database


class AppError(InputError):
    """A wrong option or a missing part of the app's environment. Exit 1."""


# ----------------------------------------------------------------------------------- options


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class JobOption(_Strict):
    """One entry of the `jobs` list in the Configuration tab."""

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    source: str = Field(min_length=1)
    statistic_id: str = Field(pattern=r"^[a-z0-9_]+[:.][a-z0-9_]+$")
    statistic_name: str | None = None
    kind: Literal["delta", "cumulative", "power", "mean"] | None = None
    unit: str | None = None
    tz: str | None = None
    interval: str | None = None


class AppOptions(_Strict):
    """`/data/options.json`: what config.yaml's schema describes."""

    jobs: list[JobOption] = Field(default_factory=list)
    write_to: Literal["websocket", "sqlite", "mariadb"] = "websocket"
    mariadb_database: str | None = None
    interval: str = "1h"
    initial_sync_days: int = Field(default=30, ge=1)
    correction_days: int = Field(default=30, ge=0)
    serve: bool = False
    influxdb_token: str | None = None
    wnsm_username: str | None = None
    wnsm_password: str | None = None
    wattivahti_client_id: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("jobs")
    @classmethod
    def _unique(cls, jobs: list[JobOption]) -> list[JobOption]:
        names = [job.name for job in jobs]
        twice = sorted({name for name in names if names.count(name) > 1})
        if twice:
            raise ValueError(f"two jobs are called {twice[0]!r}")
        return jobs

    def secrets(self) -> list[str]:
        return [s for s in (self.influxdb_token, self.wnsm_username, self.wnsm_password,
                            self.wattivahti_client_id) if s]

    def source_environment(self) -> dict[str, str]:
        """Source credentials reach `backdate sync` as the environment variables the sources
        read; they are never written into backdate.toml."""
        pairs = (("INFLUXDB_TOKEN", self.influxdb_token), ("WNSM_USERNAME", self.wnsm_username),
                 ("WNSM_PASSWORD", self.wnsm_password),
                 ("WATTIVAHTI_CLIENT_ID", self.wattivahti_client_id))
        return {name: value for name, value in pairs if value}


def _option_name(loc: Sequence[object]) -> str:
    text = ""
    for part in loc:
        text += f"[{part + 1}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "options"


def parse_options(raw: object) -> AppOptions:
    """Checked options; AppError names the option (never its value, which may be secret)."""
    try:
        return AppOptions.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        if first.get("type") == "extra_forbidden":
            message = "unknown option (a typo?)"
        elif first.get("type") == "model_type":  # pydantic would name its own class here
            message = ("should be a job with name, source and statistic_id" if first["loc"]
                       else "should be a JSON object of options")
        elif first.get("type") == "string_pattern_mismatch":
            message = ("only letters, digits, - and _" if first["loc"][-1] == "name" else
                       "a statistic id like backdate:house or sensor.house_energy")
        raise AppError(f"option '{_option_name(first['loc'])}': {message}") from None


# ------------------------------------------------------------------------------ environment


@dataclass(slots=True)
class AppEnvironment:
    """Where the app's mounts and the Supervisor are (moved only by tests)."""

    root: Path
    supervisor_url: str
    core_websocket: str
    token: str | None

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> AppEnvironment:
        env = dict(os.environ) if env is None else env
        supervisor = env.get("BACKDATE_SUPERVISOR_URL") or "http://supervisor"
        parts = urlsplit(supervisor)
        scheme = "wss" if parts.scheme == "https" else "ws"
        core = env.get("BACKDATE_CORE_WEBSOCKET") or urlunsplit(
            (scheme, parts.netloc, parts.path.rstrip("/") + "/core/websocket", "", ""))
        return cls(root=Path(env.get("BACKDATE_APP_ROOT") or "/"),
                   supervisor_url=supervisor.rstrip("/"), core_websocket=core,
                   token=env.get("SUPERVISOR_TOKEN") or None)

    def path(self, container_path: str) -> Path:
        """A path as the app sees it in its container, under the root."""
        return self.root / container_path.lstrip("/")

    @property
    def data(self) -> Path:
        return self.path("/data")

    @property
    def options_file(self) -> Path:
        return self.path("/data/options.json")


def read_options(app_env: AppEnvironment) -> AppOptions:
    path = app_env.options_file
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AppError(f"{path} is missing: the Supervisor writes it from the app's "
                       "Configuration tab") from None
    except (OSError, ValueError) as err:
        raise AppError(f"{path} cannot be read as JSON: {err}") from None
    return parse_options(raw)


def resolve_source(source: str, app_env: AppEnvironment) -> str:
    """A file source is a path in the container: absolute (`/share/backdate/house.csv`), or
    relative to the app's own config folder (`/config`, the host's addon_configs folder)."""
    if "://" in source or source.startswith(("wnsm:", "wattivahti:")):
        return source
    if source.startswith("/"):
        return str(app_env.path(source))
    return str(app_env.path("/config") / source)


def mysql_service(app_env: AppEnvironment, timeout: float = 10.0) -> dict[str, object]:
    """The MariaDB app's credentials from the Supervisor's services API (`mysql:want`)."""
    if not app_env.token:
        raise AppError("SUPERVISOR_TOKEN is not set: the Supervisor gives it to every app")
    request = urllib.request.Request(f"{app_env.supervisor_url}/services/mysql",
                                     headers={"Authorization": f"Bearer {app_env.token}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            body = json.loads(answer.read().decode("utf-8"))
    except urllib.error.HTTPError as err:
        raise AppError(f"option 'write_to': mariadb, but the Supervisor offers no MariaDB "
                       f"service (HTTP {err.code}): install and start the MariaDB app") from None
    except (OSError, ValueError) as err:
        raise AppError(f"cannot ask the Supervisor for the MariaDB service: {err}") from None
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or not data.get("host"):
        raise AppError("option 'write_to': mariadb, but the Supervisor offers no MariaDB "
                       "service: install and start the MariaDB app")
    return data


def mysql_url(service: dict[str, object], database: str) -> str:
    """HA's own db_url spelling for the MariaDB app: mysql://user:pass@host:port/db."""
    user = quote(str(service.get("username") or ""), safe="")
    password = quote(str(service.get("password") or ""), safe="")
    auth = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    port = f":{service['port']}" if service.get("port") else ""
    return (f"mysql://{auth}{service['host']}{port}/{quote(database, safe='')}"
            "?charset=utf8mb4")


@dataclass(slots=True)
class Plan:
    """What the app runs: the file it wrote, the environment, the secrets to mask."""

    config: Path
    env: dict[str, str]
    secrets: list[str] = field(default_factory=list)
    serve: bool = False
    target: str = ""
    jobs: int = 0


def target_for(options: AppOptions, app_env: AppEnvironment) -> tuple[str, list[str]]:
    """The Home Assistant target URL for every job, and the secrets it carries."""
    if options.write_to == "websocket":
        if not app_env.token:
            raise AppError("SUPERVISOR_TOKEN is not set: the app needs homeassistant_api: true "
                           "(it is in config.yaml) and must run under the Supervisor")
        return app_env.core_websocket, []
    if options.write_to == "sqlite":
        folder = app_env.path("/homeassistant")
        path = folder / RECORDER_FILE
        if not folder.is_dir():
            raise AppError(f"option 'write_to': sqlite, but {folder} is missing: Home "
                           "Assistant's config folder is not mapped into the app (config.yaml "
                           "maps homeassistant_config:rw; reinstall or update the app)")
        if not path.exists():
            raise AppError(f"option 'write_to': sqlite, but {path} does not exist: Home "
                           "Assistant's recorder uses another database (use websocket or "
                           "mariadb)")
        return f"sqlite:///{path}", []
    service = mysql_service(app_env)
    url = mysql_url(service, options.mariadb_database or DEFAULT_DATABASE)
    return url, [str(service[k]) for k in ("password",) if service.get(k)]


# ------------------------------------------------------------------------------ backdate.toml


def _toml(value: object) -> str:
    """A TOML value: JSON's string escapes are TOML's basic-string escapes."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def render_config(options: AppOptions, app_env: AppEnvironment, target: str,
                  serve: bool) -> tuple[str, list[int]]:
    """backdate.toml's text, and the line of each job's header (to name the option)."""
    lines = ["# Written by the backdate app from its options at every start; edit the options.",
             "[sync]",
             f"state_file = {_toml(str(app_env.data / 'sync.db'))}",
             f"interval = {_toml(options.interval)}",
             f"initial_sync_days = {options.initial_sync_days}",
             f"correction_days = {options.correction_days}"]
    headers: list[int] = []
    for job in options.jobs:
        lines.append("")
        headers.append(len(lines) + 1)
        lines.append("[[sync.jobs]]")
        fields: dict[str, object] = {"name": job.name,
                                     "source": resolve_source(job.source, app_env),
                                     "targets": [target], "statistic_id": job.statistic_id}
        for key in ("statistic_name", "kind", "unit", "tz", "interval"):
            value = getattr(job, key)
            if value is not None:
                fields[key] = value
        lines += [f"{key} = {_toml(value)}" for key, value in fields.items()]
    if serve:
        # `backdate serve` behind Home Assistant's ingress; its web page is the app's panel.
        store = f"sqlite:///{(app_env.data / 'serve.db').absolute()}"  # four slashes
        lines += ["", "[serve]", f"listen = {_toml(f'0.0.0.0:{INGRESS_PORT}')}",
                  f"store = {_toml(store)}", "",
                  "[[serve.homes]]", 'name = "home"', f"url = {_toml(app_env.core_websocket)}"]
    return "\n".join(lines) + "\n", headers


def write_private(path: Path, text: str) -> None:
    """Atomically, mode 0600: the file may hold the MariaDB password."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(part, path)


def check_config(path: Path, options: AppOptions, headers: list[int],
                 env: dict[str, str]) -> None:
    """The file through `backdate sync`'s own loader; its errors name the app's option."""
    from backdate.config import ConfigError, load_config

    try:
        load_config(path, env)
    except ConfigError as err:
        index = sum(1 for line in headers if err.line is not None and line <= err.line)
        problem = re.sub(r"^sync\.(jobs\[\d+\]\.)?", "", err.problem)
        field_name, _, text = problem.partition(":")
        if not text or " " in field_name.strip():  # no "field: problem" shape
            field_name, text = "", problem
        where = f"jobs[{index}] ({options.jobs[index - 1].name})" if index else ""
        name = ".".join(part for part in (where, field_name.strip()) if part) or "options"
        raise AppError(f"option '{name}': {text.strip()}") from None


def has_command(name: str) -> bool:
    """Whether this backdate's command line has `name` (serve is being built)."""
    from backdate.cli import app

    return any((info.name or getattr(info.callback, "__name__", "")) == name
               for info in app.registered_commands)


def serve_available() -> bool:
    """Whether this backdate's `serve` can be the app's panel: it needs the Home Assistant
    mirror (`[[serve.homes]]`). A `serve` with only the event ingest cannot run from the
    app's options (it wants read tokens and ingest keys the options do not have)."""
    if not has_command("serve"):
        return False
    try:
        from backdate.interfaces.http import server
    except ImportError:
        return False
    return bool(getattr(server, "MIRRORS_HOMES", False))


def prepare(app_env: AppEnvironment) -> Plan:
    """Options read and checked, target found, backdate.toml written and checked."""
    options = read_options(app_env)
    set_level(options.log_level)
    if not options.jobs and not options.serve:
        raise AppError("option 'jobs': no job; add one in the app's Configuration tab "
                       "(name, source, statistic_id)")
    target, target_secrets = target_for(options, app_env)
    serve = options.serve and serve_available()
    if options.serve and not serve:
        if not options.jobs:
            raise AppError("option 'jobs': no job, and option 'serve' cannot run: this "
                           "backdate's `serve` has no Home Assistant mirror yet")
        log.warning("option 'serve' is on, but this backdate's `serve` has no Home Assistant "
                    "mirror yet; only the sync runs")
    text, headers = render_config(options, app_env, target, serve)
    config = app_env.data / "backdate.toml"
    write_private(config, text)
    env = {key: value for key, value in os.environ.items()
           if key not in ("HA_TOKEN", "HA_URL")}
    env.update(options.source_environment())
    env["PYTHONUNBUFFERED"] = "1"
    if options.write_to == "websocket" and app_env.token:
        env["HA_TOKEN"] = app_env.token
    check_config(config, options, headers, env)
    secrets = [s for s in [app_env.token, *target_secrets, *options.secrets()] if s]
    return Plan(config=config, env=env, secrets=secrets, serve=serve,
                target=options.write_to, jobs=len(options.jobs))


# ------------------------------------------------------------------------------------ logging


_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^@\s/]*@")


class Redactor(logging.Filter):
    """Masks every known secret, and any password in a URL, in every record."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: list[str] = []

    def add(self, values: Iterable[str]) -> None:
        for value in values:
            for form in {value, quote(value, safe="")}:
                if len(form) >= 4 and form not in self.secrets:
                    self.secrets.append(form)
        self.secrets.sort(key=len, reverse=True)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return _URL_PASSWORD.sub(r"\1***@", text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redact(record.getMessage())
        record.args = None
        return True


REDACTOR = Redactor()
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR}


def setup_logging() -> None:
    """Home Assistant's app log style: `[HH:MM:SS] LEVEL: message`, on stdout."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(levelname)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    handler.addFilter(REDACTOR)
    log.handlers[:] = [handler]
    log.propagate = False
    log.setLevel(logging.INFO)


def set_level(name: str) -> None:
    log.setLevel(_LEVELS.get(name, logging.INFO))


# ------------------------------------------------------------------------------------ running


_JOB_FAILED = re.compile(r"\bjob \S+: failed\b")


def _relay(stream, level: int, prefix: str) -> None:
    for raw in iter(stream.readline, ""):
        line = raw.rstrip("\n")
        if line.strip():
            lowered = line.lstrip().lower()
            failed = _JOB_FAILED.search(line) is not None  # the run's summary names the job
            lvl = logging.ERROR if lowered.startswith("error") or failed else level
            log.log(lvl, "%s%s", prefix, line)
    stream.close()


def start(args: list[str], plan: Plan,
          prefix: str) -> tuple[subprocess.Popen, list[threading.Thread]]:
    """A `backdate` command as a child; its lines go through the log (and the redactor)."""
    proc = subprocess.Popen([sys.executable, "-m", "backdate.cli", *args], env=plan.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            encoding="utf-8", errors="replace")
    threads = [threading.Thread(target=_relay, args=(proc.stdout, logging.INFO, prefix),
                                daemon=True),
               threading.Thread(target=_relay, args=(proc.stderr, logging.WARNING, prefix),
                                daemon=True)]
    for thread in threads:
        thread.start()
    return proc, threads


def run(plan: Plan, once: bool) -> int:
    """`backdate sync` (and `backdate serve` when asked and present) until one ends."""
    sync_args = ["sync", "--config", str(plan.config)] + (["--once"] if once else [])
    children = [start(sync_args, plan, "")] if plan.jobs else []
    if plan.serve and not once:
        children.append(start(["serve", "--config", str(plan.config)], plan, "serve: "))
    if not children:
        return 0

    def stop(*_: object) -> None:
        for proc, _threads in children:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)

    stopped: list[int] = []  # the signal that asked the app to stop

    def on_signal(signum: int, _frame: object) -> None:
        stopped.append(signum)
        stop()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    code = 0
    try:
        while not stopped:  # asked to stop: the children get STOP_GRACE seconds, below
            done = [proc for proc, _ in children if proc.poll() is not None]
            if done:
                code = done[0].returncode
                break
            try:
                children[0][0].wait(timeout=1)
            except subprocess.TimeoutExpired:
                continue
            except KeyboardInterrupt:
                stopped.append(signal.SIGINT)
                stop()
    finally:
        stop()
        for proc, threads in children:
            try:
                proc.wait(timeout=STOP_GRACE)
            except subprocess.TimeoutExpired:
                log.warning("%s did not end within %.0f s of SIGTERM; killed",
                            " ".join(proc.args[3:5]) if isinstance(proc.args, list) else "a child",
                            STOP_GRACE)
                proc.kill()
                proc.wait()
            for thread in threads:
                thread.join(timeout=5)
    if stopped:
        name = signal.Signals(stopped[0]).name
        if once:  # a run cut short: say so, and exit as a shell does for the signal
            log.warning("stopped by %s before every job finished; the next run reads the "
                        "window again", name)
            return 128 + int(stopped[0])
        log.info("stopped by %s", name)
        return 0
    return code if code >= 0 else 1


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of the app's container (`python -m backdate.haos`)."""
    parser = argparse.ArgumentParser(prog="python -m backdate.haos",
                                     description="backdate's Home Assistant app entry point")
    parser.add_argument("--once", action="store_true",
                        help="run every job once and exit (default: keep syncing)")
    parser.add_argument("--check", action="store_true",
                        help="check the options and write backdate.toml, run nothing")
    args = parser.parse_args(argv)
    setup_logging()
    app_env = AppEnvironment.from_env()
    if app_env.token:
        REDACTOR.add([app_env.token])
    try:
        options_secrets: list[str] = []
        try:
            raw = json.loads(app_env.options_file.read_text(encoding="utf-8"))
            if isinstance(raw, dict):
                options_secrets = [str(raw[k]) for k in ("influxdb_token", "wnsm_username",
                                                         "wnsm_password", "wattivahti_client_id")
                                   if raw.get(k)]
        except (OSError, ValueError):
            pass
        REDACTOR.add(options_secrets)
        plan = prepare(app_env)
    except InputError as err:
        log.error("%s", err)
        sys.exit(1)
    except OSError as err:  # a mount missing or read-only: say which, no traceback
        log.error("cannot prepare the app's files: %s", err)
        sys.exit(1)
    REDACTOR.add(plan.secrets)
    from importlib.metadata import version

    log.info("backdate %s: %d job(s) into Home Assistant (%s), %s", version("backdate"),
             plan.jobs, plan.target, "once" if args.once else "syncing")
    if args.check:
        log.info("options are valid; %s written", plan.config)
        return
    sys.exit(run(plan, args.once))

