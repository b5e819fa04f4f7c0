"""pytest fixtures for the real InfluxDB 1.x (tests/influx_service.py).

Import them into a test module (`from influx_fixtures import influx, influx_db  # noqa: F401`):
`influx` is the session's private influxd, `influx_db` a fresh, uniquely named database that is
dropped after the test.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from influx_service import InfluxDB1, InfluxServer, shared_influx


@pytest.fixture(scope="session")
def influx() -> InfluxServer:
    """The private influxd of this test process (started, or installed and started)."""
    return shared_influx()


@dataclass
class InfluxDatabase:
    """A database of its own for one test, with the client to fill and query it."""

    server: InfluxServer
    client: InfluxDB1
    name: str

    @property
    def host_port(self) -> str:
        return self.server.host_port

    def write(self, lines: list[str], precision: str = "s") -> int:
        return self.client.write(self.name, lines, precision=precision)

    def points(self, q: str, epoch: str = "s") -> list[list[object]]:
        return self.client.points(q, self.name, epoch=epoch)


@pytest.fixture
def influx_db(influx: InfluxServer) -> Iterator[InfluxDatabase]:
    """A fresh database, dropped afterwards."""
    client = influx.client()
    name = client.create_database()
    try:
        yield InfluxDatabase(influx, client, name)
    finally:
        try:
            client.drop_database(name)
        finally:
            client.close()
