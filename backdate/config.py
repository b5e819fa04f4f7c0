"""`backdate.toml` for `sync` (PRODUCT.md, "Configuration"), checked by pydantic.

Why a schema: a sync runs unattended for months, so a typo must fail at start with the file,
line and field named, not silently fall back to a default. Environment variables with the names
existing users already have (system 3, WattiVahti to InfluxDB) override the file.

Two ways to write jobs, both allowed in one file::

    [sync]
    state_file = "sync.db"          # relative to this file; default ~/.local/state/backdate/
    interval = "1h"
    jitter = "5m"

    [[sync.jobs]]
    name = "house"
    source = "influxdb://localhost:8086/powerwall?measurement=http&field=home&kind=power"
    targets = ["sqlite:////config/home-assistant_v2.db", "influxdb://localhost:8086/energy"]
    statistic_id = "backdate:house"

    [jobs.garage]
    source = "..."
    targets = ["ha"]                # "ha" = $HA_URL, "influxdb" = $INFLUXDB_URL

Every source and target URL is parsed here (not at the first run), so a typo is `file:line`
and exit 1 before anything is recorded. Without any file, the environment of the WattiVahti to
InfluxDB sync (WATTIVAHTI_METERING_POINT, REFRESH_TOKEN_FILE, INFLUXDB_URL/TOKEN/ORG/BUCKET,
HA_URL/HA_TOKEN) makes one implicit job, so its users need no backdate.toml.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from backdate.errors import BackdateError, InputError
from backdate.models import Kind

DEFAULT_INITIAL_SYNC_DAYS = 30.0
DEFAULT_SYNC_BUFFER_HOURS = 24.0
DEFAULT_CORRECTION_DAYS = 30.0
DEFAULT_INTERVAL = 3600.0
DEFAULT_JITTER = 300.0

ENV_TARGET_ALIASES = {"ha": "HA_URL", "homeassistant": "HA_URL", "influxdb": "INFLUXDB_URL"}
REMOTE_SOURCES = ("influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://", "wattivahti:",
                  "wnsm:")
IMPLICIT_JOB = "wattivahti"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|min|h|d)?\s*$")
_UNIT_SECONDS = {None: 1.0, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}


class ConfigError(InputError):
    """A bad `backdate.toml` or environment variable: names the file, line and field. Exit 1."""


def parse_duration(value: str | float | int) -> float:
    """'1h', '30m', '90s', '1d' or seconds as a number, into seconds."""
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or text like '1h', '30m'")
    if isinstance(value, int | float):
        seconds = float(value)
    else:
        match = _DURATION.match(value)
        if not match:
            raise ValueError(f"{value!r} is not a duration: use e.g. '90s', '30m', '1h', '1d'")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number")
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    return seconds


class _Strict(BaseModel):
    # allow_inf_nan=False: TOML has `inf` and `nan`, which would overflow date arithmetic later.
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True, allow_inf_nan=False)


class JobFields(_Strict):
    """What one `[[sync.jobs]]` entry or `[jobs.NAME]` table may say."""

    name: str | None = None
    source: str = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    statistic_id: str | None = None
    statistic_name: str | None = None  # display name of a new HA statistic
    tz: str | None = None
    metering_point: str | None = None
    kind: Kind | None = None
    unit: str | None = None
    initial_sync_days: float | None = Field(default=None, gt=0)
    sync_buffer_hours: float | None = Field(default=None, ge=0)
    correction_days: float | None = Field(default=None, ge=0)
    interval: float | None = None
    jitter: float | None = None
    short_term: bool = True
    enabled: bool = True

    @field_validator("interval", "jitter", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float | None:
        return None if value is None else parse_duration(value)

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float | None) -> float | None:
        if value is not None and value < 1:
            raise ValueError("the interval must be at least 1 second")
        return value

    @field_validator("tz")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            from zoneinfo import ZoneInfo

            try:
                ZoneInfo(value)
            except Exception:  # noqa: BLE001 - zoneinfo raises several kinds
                raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @field_validator("targets")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        if any(not t.strip() for t in value):
            raise ValueError("a target is an empty string")
        return value


class SyncSection(_Strict):
    """The `[sync]` table: defaults for every job, and the state file."""

    state_file: str | None = None
    initial_sync_days: float = Field(default=DEFAULT_INITIAL_SYNC_DAYS, gt=0)
    sync_buffer_hours: float = Field(default=DEFAULT_SYNC_BUFFER_HOURS, ge=0)
    correction_days: float = Field(default=DEFAULT_CORRECTION_DAYS, ge=0)
    interval: float = DEFAULT_INTERVAL
    jitter: float = DEFAULT_JITTER
    jobs: list[JobFields] = Field(default_factory=list)

    @field_validator("interval", "jitter", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("interval")
    @classmethod
    def _interval(cls, value: float) -> float:
        if value < 1:
            raise ValueError("the interval must be at least 1 second")
        return value


class ConfigFile(BaseModel):
    """The whole file; sections other than `sync` and `jobs` belong to other commands."""

    model_config = ConfigDict(extra="allow")

    sync: SyncSection = Field(default_factory=SyncSection)
    jobs: dict[str, JobFields] = Field(default_factory=dict)


@dataclass(slots=True)
class Job:
    """One sync job with every default filled in (seconds, not days/hours)."""

    name: str
    source: str
    targets: list[str]
    statistic_id: str | None
    statistic_name: str | None
    tz: str | None
    metering_point: str
    kind: Kind | None
    unit: str | None
    initial_sync: float
    buffer: float
    correction: float
    interval: float
    jitter: float
    short_term: bool = True


@dataclass(slots=True)
class SyncConfig:
    path: Path | None
    state_file: Path
    jobs: list[Job] = field(default_factory=list)


def default_config_path() -> Path | None:
    """./backdate.toml, else $XDG_CONFIG_HOME/backdate/backdate.toml, else None."""
    local = Path("backdate.toml")
    if local.exists():
        return local
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    user = base / "backdate" / "backdate.toml"
    return user if user.exists() else None


def default_state_file(env: dict[str, str] | None = None) -> Path:
    env = dict(os.environ) if env is None else env
    base = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "backdate" / "sync.db"


def load_config(path: str | Path | None, env: dict[str, str] | None = None) -> SyncConfig:
    """Read and check the file, apply the environment, fill defaults. Raises ConfigError."""
    env = dict(os.environ) if env is None else env
    if path is None:
        path = default_config_path()
        if path is None:
            implicit = implicit_config(env)
            if implicit is not None:
                return implicit
            raise ConfigError("no backdate.toml here or in ~/.config/backdate/: pass --config "
                              "FILE (`backdate sync --help` shows an example), or set "
                              "WATTIVAHTI_METERING_POINT with INFLUXDB_URL and/or HA_URL")
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read the configuration: {err.strerror}", path=str(path)) \
            from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        line = _toml_error_line(str(err))
        raise ConfigError(f"not valid TOML: {err}", path=str(path), line=line) from None
    try:
        parsed = ConfigFile.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        raise ConfigError(f"{_field_name(loc)}: {_message(first)}", path=str(path),
                          line=_line_of(text, loc)) from None
    section = _apply_env_defaults(parsed.sync, env)
    jobs: list[Job] = []
    named: list[tuple[JobFields, tuple[Any, ...]]] = [
        (j, ("sync", "jobs", i)) for i, j in enumerate(parsed.sync.jobs)]
    named += [(j.model_copy(update={"name": j.name or key}), ("jobs", key))
              for key, j in parsed.jobs.items()]
    seen: set[str] = set()
    for fields, loc in named:
        if not fields.enabled:
            continue
        if not fields.name:
            raise ConfigError("name: every [[sync.jobs]] entry needs a name", path=str(path),
                              line=_line_of(text, loc))
        if fields.name in seen:
            raise ConfigError(f"name: two jobs are called {fields.name!r}", path=str(path),
                              line=_line_of(text, loc))
        seen.add(fields.name)
        jobs.append(_resolve_job(fields, section, env, path, text, loc))
    state = section.state_file
    if state is None:
        state_path = default_state_file(env)
    else:
        state_path = Path(state).expanduser()
        if not state_path.is_absolute():
            state_path = path.parent / state_path
    return SyncConfig(path=path, state_file=state_path, jobs=jobs)


def _apply_env_defaults(section: SyncSection, env: dict[str, str]) -> SyncSection:
    """INITIAL_SYNC_DAYS and SYNC_BUFFER_HOURS override the file (system 3's names)."""
    updates: dict[str, float] = {}
    for var, attr, minimum in (("INITIAL_SYNC_DAYS", "initial_sync_days", 0.0),
                               ("SYNC_BUFFER_HOURS", "sync_buffer_hours", -1e-12)):
        raw = env.get(var)
        if raw is None or raw.strip() == "":
            continue
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"environment variable {var}={raw!r} is not a number") from None
        if not math.isfinite(value) or not value > minimum:
            raise ConfigError(f"environment variable {var}={raw!r} is out of range")
        updates[attr] = value
    return section.model_copy(update=updates) if updates else section


def _resolve_job(fields: JobFields, section: SyncSection, env: dict[str, str], path: Path,
                 text: str, loc: tuple[Any, ...]) -> Job:
    targets = []
    for target in fields.targets:
        var = ENV_TARGET_ALIASES.get(target.lower())
        if var is not None:
            value = env.get(var)
            if not value:
                raise ConfigError(f"targets: {target!r} means ${var}, which is not set",
                                  path=str(path), line=_line_of(text, (*loc, "targets")))
            target = value
            if var == "INFLUXDB_URL" and value.startswith(("http://", "https://")):
                # The WattiVahti sync's users set INFLUXDB_URL=http://host:8086 with a 2.x
                # token/org/bucket; the influxdb2:// target fills itself from those variables.
                target = "influxdb2://"
        targets.append(_beside(target, path) if var is None else target)
    if not fields.source.startswith(REMOTE_SOURCES):  # a file, relative to backdate.toml
        source = Path(fields.source).expanduser()
        fields = fields.model_copy(update={
            "source": str(source if source.is_absolute() else path.parent / source)})
    check_urls(fields, targets, env, path, text, loc)
    if fields.source.startswith(REMOTE_SOURCES) and (fields.kind or fields.unit):
        which = "kind" if fields.kind else "unit"
        raise ConfigError(
            f"{which}: job {fields.name!r} reads {fields.source.split(':', 1)[0]}:, whose "
            f"readings carry their own kind and unit (for InfluxDB: kind= and unit= in the "
            f"source URL); remove {which} from the job", path=str(path),
            line=_line_of(text, (*loc, which)))
    has_ha = any(t.startswith(("sqlite:", "mysql", "mariadb:", "postgres", "http://",
                               "https://", "ws://", "wss://")) for t in targets)
    if has_ha and not fields.statistic_id:
        raise ConfigError(
            f"statistic_id: job {fields.name!r} writes Home Assistant statistics, so it needs "
            "statistic_id (e.g. \"backdate:house\"): the sync reads the newest hour HA holds "
            "for it before reading the source", path=str(path), line=_line_of(text, loc))
    env_initial = "INITIAL_SYNC_DAYS" in env and env["INITIAL_SYNC_DAYS"].strip() != ""
    env_buffer = "SYNC_BUFFER_HOURS" in env and env["SYNC_BUFFER_HOURS"].strip() != ""
    initial = section.initial_sync_days if env_initial or fields.initial_sync_days is None \
        else fields.initial_sync_days
    buffer = section.sync_buffer_hours if env_buffer or fields.sync_buffer_hours is None \
        else fields.sync_buffer_hours
    correction = section.correction_days if fields.correction_days is None \
        else fields.correction_days
    # The InfluxDB tag; for a WattiVahti job the variable system 3's users already set wins.
    metering_point = fields.metering_point or fields.name or ""
    if fields.source.startswith("wattivahti:") and env.get("WATTIVAHTI_METERING_POINT"):
        metering_point = env["WATTIVAHTI_METERING_POINT"]
    return Job(
        name=fields.name or "",
        source=fields.source,
        targets=targets,
        statistic_id=fields.statistic_id,
        statistic_name=fields.statistic_name,
        tz=fields.tz,
        metering_point=metering_point,
        kind=fields.kind,
        unit=fields.unit,
        initial_sync=initial * 86400.0,
        buffer=buffer * 3600.0,
        correction=correction * 86400.0,
        interval=section.interval if fields.interval is None else fields.interval,
        jitter=section.jitter if fields.jitter is None else fields.jitter,
        short_term=fields.short_term,
    )


# ------------------------------------------------------------------------------ URL checks


def _beside(target: str, config: Path) -> str:
    """A SQLite target in backdate.toml, like state_file, is relative to the file: a plain
    path or sqlite:///relative/path becomes the absolute sqlite:////… URL."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", target):
        if not target.startswith("sqlite:///") or target.startswith("sqlite:////"):
            return target
        rest = target[len("sqlite:///"):]
        if not rest or rest.startswith("?"):
            return target
        return f"sqlite:///{config.parent / rest}"
    path = Path(target).expanduser()
    return f"sqlite:///{path if path.is_absolute() else config.parent / path}"



TARGET_SCHEMES = ("sqlite:", "mysql:", "mysql+pymysql:", "mariadb:", "postgresql:",
                  "postgresql+psycopg:", "postgres:", "http://", "https://", "ws://", "wss://",
                  "influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://", "mqtt://",
                  "mqtts://")


def check_source(spec: str, env: Mapping[str, str]) -> None:
    """Parse a source spec as far as possible without contacting anything. Raises
    BackdateError. Files are not checked: they may appear before the first run."""
    if spec.startswith(("influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://")):
        from backdate.sources.influx import check_source_spec

        check_source_spec(spec, env)
    elif spec.startswith("wattivahti:"):
        from backdate.sources import wattivahti
        from backdate.sources.portal_http import parse_spec

        parse_spec(spec, "wattivahti", known=wattivahti.KNOWN)
    elif spec.startswith("wnsm:"):
        from backdate.sources import wnsm
        from backdate.sources.portal_http import parse_spec

        parse_spec(spec, "wnsm", known=wnsm.KNOWN)


def check_target(url: str, env: Mapping[str, str]) -> None:
    """Parse a target URL without connecting. Raises BackdateError or ValueError."""
    from urllib.parse import urlsplit

    from backdate.errors import UsageError

    if not url.startswith(TARGET_SCHEMES):
        raise UsageError("unknown target: use sqlite:////path/home-assistant_v2.db, mysql://, "
                         "postgresql://, http(s)://host:8123, influxdb://, influxdb2:// or "
                         "mqtt://")
    if url.startswith(("influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://")):
        from backdate.targets.influx import check_target_url

        check_target_url(url, env)
        return
    if url.startswith("sqlite:"):
        if not url.startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise UsageError("a SQLite target is sqlite:////absolute/path, or a path "
                             "relative to backdate.toml")
        return
    parts = urlsplit(url)
    parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    if not parts.hostname:
        raise UsageError("the URL names no host")


def check_urls(fields: JobFields, targets: list[str], env: Mapping[str, str], path: Path,
               text: str, loc: tuple[Any, ...]) -> None:
    """Every source and target parsed at load: ConfigError with the line of the setting, the
    URL itself never repeated (it may hold a secret; the parsers mask theirs)."""
    try:
        check_source(fields.source, env)
    except BackdateError as err:
        raise ConfigError(f"source: {_problem(err)}", path=str(path),
                          line=_line_of(text, (*loc, "source"))) from None
    for index, target in enumerate(targets, 1):
        try:
            check_target(target, env)
        except (BackdateError, ValueError) as err:
            raise ConfigError(f"targets[{index}]: {_problem(err)}", path=str(path),
                              line=_line_of(text, (*loc, "targets"))) from None


def _problem(err: BaseException) -> str:
    return str(getattr(err, "problem", None) or err)


def implicit_config(env: Mapping[str, str]) -> SyncConfig | None:
    """The WattiVahti sync's users' setup without a file: one job `wattivahti` from source
    `wattivahti:` (metering point and REFRESH_TOKEN_FILE from the environment) into the
    InfluxDB of INFLUXDB_URL and the HA of HA_URL, whichever are set. None: not that setup."""
    from backdate.engine.prepare import slugify

    point = (env.get("WATTIVAHTI_METERING_POINT") or "").strip()
    if not point:
        return None
    targets = [alias for alias, var in (("influxdb", "INFLUXDB_URL"), ("ha", "HA_URL"))
               if env.get(var)]
    if not targets:
        raise ConfigError("WATTIVAHTI_METERING_POINT is set but neither INFLUXDB_URL nor "
                          "HA_URL: set one of them, or pass --config FILE")
    fields = JobFields(name=IMPLICIT_JOB, source="wattivahti:", targets=targets,
                       statistic_id=f"backdate:wattivahti_{slugify(point)}_consumption",
                       metering_point=point)
    section = _apply_env_defaults(SyncSection(), env)
    where = Path("<environment>")
    job = _resolve_job(fields, section, dict(env), where, "", ("jobs", IMPLICIT_JOB))
    return SyncConfig(path=None, state_file=default_state_file(dict(env)), jobs=[job])


# ----------------------------------------------------------------------------- error positions


def _toml_error_line(message: str) -> int | None:
    match = re.search(r"line (\d+)", message)
    return int(match.group(1)) if match else None


def _field_name(loc: tuple[Any, ...]) -> str:
    parts = []
    for part in loc:
        if isinstance(part, int):
            parts[-1:] = [f"{parts[-1]}[{part + 1}]" if parts else f"[{part + 1}]"]
        else:
            parts.append(str(part))
    return ".".join(parts)


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message; never the value itself when it may be a secret (a URL with a
    password or token)."""
    msg = str(error.get("msg", "invalid"))
    msg = msg.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        return "unknown setting (a typo?)"
    return msg


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """Best-effort line of a field: the table header of the job, then the key inside it."""
    lines = text.splitlines()
    start = 0
    keys = list(loc)
    if keys[:2] == ["sync", "jobs"] and len(keys) >= 3 and isinstance(keys[2], int):
        headers = [i for i, line in enumerate(lines)
                   if re.match(r"^\s*\[\[\s*sync\.jobs\s*\]\]", line)]
        if keys[2] < len(headers):
            start = headers[keys[2]]
        keys = keys[3:]
    elif keys[:1] == ["jobs"] and len(keys) >= 2:
        name = re.escape(str(keys[1]))
        for i, line in enumerate(lines):
            if re.match(rf'^\s*\[\s*jobs\.("?){name}\1\s*\]', line):
                start = i
                break
        keys = keys[2:]
    elif keys[:1] == ["sync"]:
        for i, line in enumerate(lines):
            if re.match(r"^\s*\[\s*sync\s*\]", line):
                start = i
                break
        keys = keys[1:]
    key = next((k for k in keys if isinstance(k, str)), None)
    if key is not None:
        for i in range(start, len(lines)):
            if i > start and re.match(r"^\s*\[", lines[i]):
                break
            if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i]):
                return i + 1
    return start + 1 if lines else None


_SECRET_ENV = re.compile(r"(TOKEN|PASSWORD|SECRET|API_KEY|_KEY$)")


def secret_values(env: Mapping[str, str] | None = None) -> list[str]:
    """Values of the environment's secrets (HA_TOKEN, INFLUXDB_TOKEN, WNSM_PASSWORD, ...): no
    message or log line may show them, whatever library put them there. Names of files
    holding secrets (REFRESH_TOKEN_FILE) are paths a message must show."""
    env = os.environ if env is None else env
    return [value.strip() for name, value in env.items()
            if _SECRET_ENV.search(name.upper()) and value.strip()
            and not name.upper().endswith(("_FILE", "_URL", "_PATH", "_DIR"))]


# ------------------------------------------------------------------------------ serve


DEFAULT_LISTEN = "127.0.0.1:8765"
DEFAULT_GAP_DEADLINE = 86400.0


class HomeFields(_Strict):
    """One `[[serve.homes]]` entry: a Home Assistant that `serve` mirrors."""

    name: str = Field(min_length=1, max_length=200)
    url: str = Field(min_length=1)
    token: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.strip().lower().startswith(("http://", "https://")):
            raise ValueError("the address of Home Assistant, e.g. \"http://homeassistant:8123\"")
        return value.strip()


class IngestSection(_Strict):
    """`[serve.ingest]`: the event ingest endpoint and who may post to it."""

    enabled: bool = True
    api_keys: list[str] = Field(default_factory=list)
    jwt_secret: str | None = None
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    gap_deadline: float = DEFAULT_GAP_DEADLINE
    max_events: int = Field(default=10_000, ge=1, le=100_000)  # per request

    @field_validator("gap_deadline", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, value: list[str]) -> list[str]:
        if any(len(k.strip()) < 8 for k in value):
            raise ValueError("every API key needs at least 8 characters")
        return [k.strip() for k in value]


class ServeSection(_Strict):
    """`[serve]`: where it listens, its store, and the read API's tokens."""

    listen: str = DEFAULT_LISTEN
    store: str | None = None
    api_tokens: list[str] = Field(default_factory=list)
    homes: list[HomeFields] = Field(default_factory=list)
    ingest: IngestSection | None = None
    reconcile_every: float = 300.0  # full snapshot of every home this often
    history_retention: float = 30 * 86400.0  # state changes kept this long
    reconnect_max: float = 60.0  # longest wait between reconnect attempts

    @field_validator("reconcile_every", "history_retention", "reconnect_max", mode="before")
    @classmethod
    def _durations(cls, value: Any) -> float:
        return parse_duration(value)

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"{value!r} is not host:port, e.g. \"127.0.0.1:8765\"")
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:///", "postgresql://",
                                                       "postgres://", "postgresql+psycopg://")):
            raise ValueError("the store is sqlite:////absolute/path.db or postgresql://…")
        return value

    @field_validator("api_tokens")
    @classmethod
    def _tokens(cls, value: list[str]) -> list[str]:
        if any(len(t.strip()) < 8 for t in value):
            raise ValueError("every API token needs at least 8 characters")
        return [t.strip() for t in value]


class _ServeFile(BaseModel):
    model_config = ConfigDict(extra="allow")

    serve: ServeSection = Field(default_factory=ServeSection)


@dataclass(slots=True)
class IngestSettings:
    """The ingest endpoint's settings, resolved (seconds; secrets never printed)."""

    api_keys: list[str]
    jwt_secret: str | None
    jwt_issuer: str | None
    jwt_audience: str | None
    gap_deadline: float
    max_events: int = 10_000


@dataclass(slots=True)
class ServeConfig:
    path: Path | None
    host: str
    port: int
    store: str
    api_tokens: list[str]
    homes: list[HomeFields] = field(default_factory=list)
    ingest: IngestSettings | None = None
    reconcile_every: float = 300.0
    history_retention: float = 30 * 86400.0
    reconnect_max: float = 60.0


def default_serve_store(env: Mapping[str, str]) -> str:
    base = Path(env.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return f"sqlite:///{base / 'backdate' / 'serve.db'}"


def load_serve_config(path: str | Path | None, env: Mapping[str, str] | None = None
                      ) -> ServeConfig:
    """`[serve]` of backdate.toml, with BACKDATE_API_TOKENS, BACKDATE_INGEST_API_KEYS and
    BACKDATE_INGEST_JWT_SECRET (comma-separated lists) overriding the file. Raises
    ConfigError naming the file and line."""
    env = dict(os.environ) if env is None else dict(env)
    text = ""
    if path is None:
        path = default_config_path()
    if path is None:
        # Without a file there is nothing to serve: [serve.ingest] has no environment variable.
        base = Path(env.get("XDG_CONFIG_HOME") or Path.home() / ".config")
        raise ConfigError(f"no configuration: no ./backdate.toml and no "
                          f"{base / 'backdate' / 'backdate.toml'}; pass --config FILE (with "
                          "[serve] and [serve.ingest], see `backdate serve --help`)")
    if path is not None:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise ConfigError(f"cannot read the configuration: {err.strerror}",
                              path=str(path)) from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"not valid TOML: {err}", path=str(path),
                              line=_toml_error_line(str(err))) from None
    else:
        raw = {}
    where = str(path) if path is not None else "<environment>"
    try:
        section = _ServeFile.model_validate(raw).serve
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        raise ConfigError(f"{_field_name(loc)}: {_message(first)}", path=where,
                          line=_serve_line(text, loc)) from None

    def env_list(var: str) -> list[str] | None:
        value = env.get(var)
        if value is None or not value.strip():
            return None
        items = [v.strip() for v in value.split(",") if v.strip()]
        if any(len(v) < 8 for v in items):
            raise ConfigError(f"environment variable {var}: every entry needs at least 8 "
                              "characters")
        return items

    tokens = env_list("BACKDATE_API_TOKENS") or section.api_tokens
    host, _, port = section.listen.rpartition(":")
    store = section.store or default_serve_store(env)
    if store.startswith("sqlite:///") and path is not None:
        rel = store[len("sqlite:///"):]
        if rel and not rel.startswith("/"):
            store = f"sqlite:///{(path.parent / rel).resolve()}"
    ingest = None
    if section.ingest is not None and section.ingest.enabled:
        sec = section.ingest
        keys = env_list("BACKDATE_INGEST_API_KEYS") or sec.api_keys
        secret = env.get("BACKDATE_INGEST_JWT_SECRET") or sec.jwt_secret
        line = _serve_line(text, ("serve", "ingest"))
        if not keys and not secret:
            raise ConfigError("serve.ingest: set api_keys or jwt_secret (there is no "
                              "unauthenticated ingest)", path=where, line=line)
        if secret and not (sec.jwt_issuer and sec.jwt_audience):
            raise ConfigError("serve.ingest: jwt_secret needs jwt_issuer and jwt_audience",
                              path=where, line=line)
        if secret and len(secret) < 16:
            raise ConfigError("serve.ingest.jwt_secret: use at least 16 characters",
                              path=where, line=_serve_line(text, ("serve", "ingest",
                                                                  "jwt_secret")))
        if sec.gap_deadline < 1:
            raise ConfigError("serve.ingest.gap_deadline: at least 1 second", path=where,
                              line=_serve_line(text, ("serve", "ingest", "gap_deadline")))
        ingest = IngestSettings(api_keys=keys, jwt_secret=secret, jwt_issuer=sec.jwt_issuer,
                                jwt_audience=sec.jwt_audience, gap_deadline=sec.gap_deadline,
                                max_events=sec.max_events)
    if not tokens:
        raise ConfigError("serve.api_tokens: set at least one token for the read API (or "
                          "BACKDATE_API_TOKENS)", path=where,
                          line=_serve_line(text, ("serve",)))
    homes = list(section.homes)
    if env.get("HA_URL", "").strip():
        # The environment the other commands already read makes a single home.
        if not env.get("HA_TOKEN", "").strip():
            raise ConfigError("environment variable HA_URL is set but HA_TOKEN is not: serve "
                              "needs a long-lived access token for it", path=where)
        try:
            homes = [HomeFields(name=env.get("HA_NAME", "").strip() or "home",
                                url=env["HA_URL"], token=env["HA_TOKEN"].strip())]
        except ValidationError as err:
            raise ConfigError(f"environment variable HA_URL: {_message(err.errors()[0])}",
                              path=where) from None
    names: set[str] = set()
    for i, home in enumerate(homes):
        line = _serve_home_line(text, i)
        if home.name in names:
            raise ConfigError(f"serve.homes: the name {home.name!r} is used twice", path=where,
                              line=line)
        names.add(home.name)
        if not home.token:
            raise ConfigError(f"serve.homes: {home.name!r} has no token (a long-lived access "
                              "token from the HA profile page)", path=where, line=line)
    for key, low in (("reconcile_every", 1.0), ("history_retention", 60.0),
                     ("reconnect_max", 0.1)):
        if getattr(section, key) < low:
            raise ConfigError(f"serve.{key}: at least {low:g} seconds", path=where,
                              line=_serve_line(text, ("serve", key)))
    return ServeConfig(path=path, host=host.strip("[]"), port=int(port), store=store,
                       api_tokens=tokens, homes=homes, ingest=ingest,
                       reconcile_every=section.reconcile_every,
                       history_retention=section.history_retention,
                       reconnect_max=section.reconnect_max)


def _serve_home_line(text: str, index: int) -> int | None:
    """Line of the `index`-th `[[serve.homes]]` header."""
    found = [i + 1 for i, line in enumerate(text.splitlines())
             if re.match(r"^\s*\[\[\s*serve\.homes\s*\]\]", line)]
    return found[index] if index < len(found) else None


def _serve_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """Line of a `[serve]` / `[serve.ingest]` / `[[serve.homes]]` key."""
    lines = text.splitlines()
    keys = [k for k in loc if isinstance(k, str)]
    header = r"\[\s*serve\s*\]"
    rest = keys[1:]
    if len(keys) >= 2 and keys[1] == "ingest":
        header, rest = r"\[\s*serve\.ingest\s*\]", keys[2:]
    elif len(keys) >= 2 and keys[1] == "homes":
        header, rest = r"\[\[\s*serve\.homes\s*\]\]", keys[2:]
    start = None
    for i, line in enumerate(lines):
        if re.match(rf"^\s*{header}", line):
            start = i
            break
    if start is None:
        return None
    for key in rest[-1:]:
        for i in range(start + 1, len(lines)):
            if re.match(r"^\s*\[", lines[i]):
                break
            if re.match(rf"^\s*{re.escape(key)}\s*=", lines[i]):
                return i + 1
        # An unknown table ([serve.ingst]) is named at its own header.
        table = r"\.".join(re.escape(k) for k in keys)
        for i, line in enumerate(lines):
            if re.match(rf"^\s*\[\[?\s*{table}\s*\]", line):
                return i + 1
    return start + 1
