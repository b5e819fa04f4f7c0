"""The app's files as Home Assistant's Supervisor reads them: `repository.yaml` at the root,
`ha-app/backdate/config.yaml` (field names and types, the option schema's syntax, arch values,
mappings, services), the Dockerfile, translations and the documentation tabs.

The rules are the app configuration format as the Supervisor documents and enforces it; the
checker is tested on bad examples too, so it can fail.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "ha-app" / "backdate"

ARCHES = {"armhf", "armv7", "aarch64", "amd64", "i386"}
RE_SLUG = re.compile(r"^[-_.A-Za-z0-9]+$")
RE_VOLUME = re.compile(r"^(data|config|ssl|addons|backup|share|media|homeassistant_config|"
                       r"all_addon_configs|addon_config)(?::(rw|ro))?$")
RE_SERVICE = re.compile(r"^(mqtt|mysql):(provide|want|need)$")
RE_SCHEMA_ELEMENT = re.compile(
    r"^(?:|bool|email|url|port|device(?:\(subsystem=[a-z]+\))?"
    r"|str(?:\((\d+)?,(\d+)?\))?|password(?:\((\d+)?,(\d+)?\))?"
    r"|int(?:\((\d+)?,(\d+)?\))?|float(?:\(([\d.]+)?,([\d.]+)?\))?"
    r"|match\((.*)\)|list\((.+)\))\??$")
BOOL_KEYS = {"init", "advanced", "ingress", "ingress_stream", "panel_admin", "host_network",
             "host_pid", "host_ipc", "host_uts", "host_dbus", "udev", "tmpfs", "apparmor",
             "full_access", "audio", "video", "gpio", "usb", "uart", "devicetree",
             "kernel_modules", "realtime", "hassio_api", "homeassistant_api", "stdin", "legacy",
             "docker_api", "auth_api", "journald"}
STR_KEYS = {"name", "version", "slug", "description", "url", "ingress_entry", "panel_icon",
            "panel_title", "homeassistant", "image", "webui", "watchdog", "backup_pre",
            "backup_post", "hassio_role"}
ENUMS = {"startup": {"initialize", "system", "services", "application", "once"},
         "boot": {"auto", "manual", "manual_only"}, "stage": {"stable", "experimental",
                                                             "deprecated"},
         "backup": {"hot", "cold"}, "hassio_role": {"default", "homeassistant", "backup",
                                                     "manager", "admin"}}
LIST_KEYS = {"arch", "machine", "map", "services", "devices", "privileged", "discovery",
             "backup_exclude", "breaking_versions"}
OTHER_KEYS = {"ports", "ports_description", "ingress_port", "environment", "options", "schema",
              "ulimits", "timeout"}
KNOWN = BOOL_KEYS | STR_KEYS | set(ENUMS) | LIST_KEYS | OTHER_KEYS


def schema_problems(element: Any, where: str) -> list[str]:
    """An option schema: a type string, a dict of them, or a list of one (no list in list)."""
    if isinstance(element, str):
        return [] if RE_SCHEMA_ELEMENT.match(element) else [f"{where}: bad type {element!r}"]
    if isinstance(element, dict):
        return [p for key, sub in element.items() for p in schema_problems(sub, f"{where}.{key}")]
    if isinstance(element, list):
        if len(element) != 1 or isinstance(element[0], list):
            return [f"{where}: a list holds exactly one type or dict"]
        return schema_problems(element[0], f"{where}[]")
    return [f"{where}: {type(element).__name__} is not a schema element"]


def value_problems(schema: Any, value: Any, where: str) -> list[str]:
    """A default option value against its schema element (the Supervisor's checks)."""
    if isinstance(schema, list):
        if not isinstance(value, list):
            return [f"{where}: not a list"]
        return [p for i, v in enumerate(value) for p in value_problems(schema[0], v,
                                                                       f"{where}[{i}]")]
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            return [f"{where}: not a dict"]
        problems = [f"{where}.{k}: not in the schema" for k in value if k not in schema]
        for key, sub in schema.items():
            if key in value:
                problems += value_problems(sub, value[key], f"{where}.{key}")
            elif not (isinstance(sub, str) and sub.endswith("?")):
                problems.append(f"{where}.{key}: required")
        return problems
    kind = schema.rstrip("?")
    if kind.startswith("list("):
        ok = str(value) in kind[5:-1].split("|")
    elif kind == "port":
        ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535
    elif kind.startswith("int"):
        ok = isinstance(value, int) and not isinstance(value, bool)
        bounds = re.match(r"int\((\d+)?,(\d+)?\)", kind)
        if ok and bounds:
            ok = (bounds[1] is None or value >= int(bounds[1])) and (
                bounds[2] is None or value <= int(bounds[2]))
    elif kind.startswith("float"):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind.startswith("match("):
        ok = re.match(kind[6:-1], str(value)) is not None
    else:
        ok = isinstance(value, str)
    return [] if ok else [f"{where}: {value!r} is not {schema}"]


def config_problems(config: dict[str, Any]) -> list[str]:
    problems = [f"{key}: required" for key in ("name", "version", "slug", "description", "arch")
                if key not in config]
    problems += [f"{key}: unknown field" for key in config if key not in KNOWN]
    for key, value in config.items():
        if key in BOOL_KEYS and not isinstance(value, bool):
            problems.append(f"{key}: not a boolean")
        if key in STR_KEYS and not isinstance(value, str):
            problems.append(f"{key}: not a string (quote versions like \"1.0\")")
        if key in ENUMS and value not in ENUMS[key]:
            problems.append(f"{key}: {value!r} not one of {sorted(ENUMS[key])}")
        if key in LIST_KEYS and not isinstance(value, list):
            problems.append(f"{key}: not a list")
    if "slug" in config and not RE_SLUG.match(str(config["slug"])):
        problems.append("slug: letters, digits, -, _ and . only")
    problems += [f"arch: {a!r} unknown" for a in config.get("arch", []) if a not in ARCHES]
    problems += [f"map: {m!r}" for m in config.get("map", [])
                 if not (isinstance(m, str) and RE_VOLUME.match(m))]
    problems += [f"services: {s!r}" for s in config.get("services", [])
                 if not RE_SERVICE.match(str(s))]
    port = config.get("ingress_port", 8099)
    if not (isinstance(port, int) and 0 <= port <= 65535):
        problems.append("ingress_port: not a port")
    schema, options = config.get("schema", {}), config.get("options", {})
    if schema is not False:
        if not isinstance(schema, dict):
            return [*problems, "schema: not a dict"]
        problems += [p for key, sub in schema.items() for p in schema_problems(sub, key)]
        problems += value_problems(schema, options, "options")
    return problems


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def test_config_yaml_is_a_valid_app_config() -> None:
    config = load(APP / "config.yaml")
    assert config_problems(config) == []
    assert config["arch"] == ["aarch64", "amd64"]
    assert config["init"] is False and config["homeassistant_api"] is True
    assert config["map"] == ["homeassistant_config:rw", "share:rw", "addon_config:rw"]
    assert config["services"] == ["mysql:want"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["version"] == pyproject["project"]["version"]  # the image installs it


def test_checker_rejects_what_the_supervisor_rejects() -> None:
    good = load(APP / "config.yaml")
    bad_cases = [
        ({"arch": ["x86"]}, "arch"), ({"map": ["config:rx"]}, "map"),
        ({"services": ["mysql:maybe"]}, "services"), ({"init": "no"}, "init"),
        ({"version": 1.0}, "version"), ({"slug": "back date"}, "slug"),
        ({"schema": {"a": "int(1,"}, "options": {}}, "bad type"),
        ({"schema": {"a": "list(a|b"}, "options": {}}, "bad type"),
        ({"schema": {"a": "string"}, "options": {}}, "bad type"),
        ({"schema": {"a": [["str"]]}, "options": {}}, "a list holds"),
        ({"schema": {"a": "int(1,)"}, "options": {"a": 0}}, "is not int(1,)"),
        ({"schema": {"a": "list(x|y)"}, "options": {"a": "z"}}, "is not list"),
        ({"schema": {"a": "str"}, "options": {}}, "required"),
        ({"startup": "later"}, "startup"), ({"colour": "red"}, "unknown field"),
    ]
    for change, word in bad_cases:
        problems = config_problems({**good, **change})
        assert any(word in p for p in problems), (change, problems)
    assert config_problems({**good, "schema": {"a": "str?", "b": "password", "c": "float(0.5,)",
                                               "d": "port", "e": "match(^x$)"},
                            "options": {"b": "x", "c": 1.0, "d": 80, "e": "x"}}) == []


def test_repository_yaml() -> None:
    repo = load(ROOT / "repository.yaml")
    assert isinstance(repo.get("name"), str) and repo["name"]
    assert set(repo) <= {"name", "url", "maintainer"}
    assert all(isinstance(v, str) for v in repo.values())


def test_schema_matches_what_the_entry_point_checks() -> None:
    """Every option the UI offers is one the entry point knows, and the defaults plus one job
    pass the entry point's own check."""
    from backdate.haos.app import AppOptions, JobOption, parse_options

    config = load(APP / "config.yaml")
    schema = config["schema"]
    assert set(schema) == set(AppOptions.model_fields)
    assert set(schema["jobs"][0]) == set(JobOption.model_fields)
    job = {"name": "house", "source": "/share/backdate/house.csv",
           "statistic_id": "backdate:house"}
    assert value_problems(schema, {**config["options"], "jobs": [job]}, "options") == []
    options = parse_options({**config["options"], "jobs": [job]})
    assert options.write_to == "websocket" and options.jobs[0].name == "house"


def test_translations_name_every_option() -> None:
    config = load(APP / "config.yaml")
    translations = load(APP / "translations" / "en.yaml")["configuration"]
    assert set(translations) == set(config["schema"])
    assert all(entry.get("name") and entry.get("description")
               for entry in translations.values())


def test_dockerfile_and_tabs() -> None:
    dockerfile = (APP / "Dockerfile").read_text()
    instructions = {line.split()[0] for line in dockerfile.splitlines()
                    if line.strip() and not line.startswith((" ", "#"))}
    assert {"FROM", "LABEL", "ARG", "CMD"} <= instructions
    assert 'CMD ["python3", "-m", "backdate.haos"]' in dockerfile
    assert not (APP / "build.yaml").exists() and not (APP / "build.json").exists()
    docs = (APP / "DOCS.md").read_text()
    for option in load(APP / "config.yaml")["schema"]:
        assert f"`{option}`" in docs, option
    changelog = (APP / "CHANGELOG.md").read_text()
    assert f"## {load(APP / 'config.yaml')['version']}" in changelog


@pytest.mark.parametrize("name", ["config.yaml", "translations/en.yaml"])
def test_yaml_files_parse(name: str) -> None:
    assert isinstance(load(APP / name), dict)


def test_the_documented_example_options_are_valid() -> None:
    """The Configuration example in DOCS.md passes the Supervisor's schema and the entry
    point's own check."""
    from backdate.haos.app import parse_options

    docs = (APP / "DOCS.md").read_text()
    [example] = re.findall(r"```yaml\n(.*?)```", docs, re.DOTALL)
    options = yaml.safe_load(example)
    schema = load(APP / "config.yaml")["schema"]
    assert value_problems(schema, options, "options") == []
    parsed = parse_options(options)
    assert [job.name for job in parsed.jobs] == ["house", "powerwall"]
