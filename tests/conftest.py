"""Shared fixtures. Logic lives in helper modules (tests/ha_harness.py); keep this file thin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from ha_harness import HomeAssistant, ensure_ha_venv


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
    """Start (or install) Mosquitto once when the session has tests that need it, so that a
    single test file run on a fresh machine passes the same way as scripts/test.sh."""
    if any(getattr(item.module, "__name__", "") in _MQTT_MODULES for item in items
           if isinstance(item, pytest.Function)):
        import services

        services.ensure_mosquitto()
