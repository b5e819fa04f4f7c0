"""Shared fixtures. Logic lives in helper modules (tests/ha_harness.py); keep this file thin."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import datagen
import pytest
from ha_harness import HomeAssistant, ensure_ha_venv, kill_all

from backdate import clock


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--time-shift", default=None, metavar="SHIFT",
        help="run as if today were SHIFT away (e.g. -365d, +30d): the tests' data and "
             "backdate's clock move together, the system clock does not (tests/datagen.py)")


def pytest_configure(config: pytest.Config) -> None:
    shift = config.getoption("--time-shift")
    if shift is not None:
        datagen.parse_shift(shift)  # a typo fails here, not in the middle of a test
        os.environ[datagen.SHIFT_ENV] = shift  # xdist workers and CLI runs inherit it
    clock.shift(datagen.time_shift())
    signal.signal(signal.SIGTERM, _terminated)


def _terminated(signum: int, _frame: object) -> None:
    """Ended from outside (scripts/test.sh's time limit, CI): take the Home Assistants and
    InfluxDBs this process started along, which run in sessions of their own."""
    kill_all()
    with contextlib.suppress(Exception):
        import influx_service

        influx_service.stop_shared()
    os._exit(128 + signum)


@pytest.fixture(scope="session")
def ha_venv() -> Path:
    """HA 2024.3.3 venv from scripts/setup-ha.sh. Errors (never skips) if the install fails."""
    return ensure_ha_venv()


@pytest.fixture
def home_assistant(
    ha_venv: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[HomeAssistant]:
    """A started HA with a fresh config dir and SQLite database; stopped afterwards."""
    ha = HomeAssistant(tmp_path_factory.mktemp("ha"), venv=ha_venv)
    ha.start()
    try:
        yield ha
    finally:
        ha.stop()


@pytest.fixture(scope="module")
def ha_engine() -> str:
    """The recorder database of a module's Home Assistant: SQLite here; test_ha_servers.py
    overrides it with MariaDB and PostgreSQL to run test_ha_import.py's cases there."""
    return "sqlite"


# Test modules that talk to the real Mosquitto at 127.0.0.1:1883.
_MQTT_MODULES = {"test_mqtt", "test_sync", "test_portal_sync"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the run, and start (or install) Mosquitto once when the session has tests that
    need it, so that a single test file run on a fresh machine passes the same way as
    scripts/test.sh.

    Under --time-shift, tests whose data follows the system clock are skipped: a running
    Home Assistant compiles, and InfluxDB answers `now()`, by the machine's clock."""
    # The modules that wait minutes for Home Assistant's compile timer go first, so that the
    # parallel run (one module per process) does not end with them running alone.
    # Whole modules move, in their own order: a module's tests may build on each other.
    slow_modules = {item.module.__name__ for item in items
                    if isinstance(item, pytest.Function) and item.get_closest_marker("slow")}
    items.sort(key=lambda item: getattr(item.module, "__name__", "") not in slow_modules)
    if datagen.time_shift():
        why = pytest.mark.skip(reason="follows the system clock (a running Home Assistant or "
                                      "InfluxDB's now()); --time-shift cannot move it")
        for item in items:
            if item.get_closest_marker("ha") or item.get_closest_marker("system_clock"):
                item.add_marker(why)
    if any(getattr(item.module, "__name__", "") in _MQTT_MODULES for item in items
           if isinstance(item, pytest.Function)):
        import services

        services.ensure_mosquitto()
