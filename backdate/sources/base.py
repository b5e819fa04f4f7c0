"""The one small protocol every remote reading source implements (InfluxDB, utility portals).

A file is read whole; a remote source is read over a time range, because it may hold years and
`sync` asks it again and again for recent data. Both end as `Series`, so the engine and the
planner never know where readings came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from backdate.models import Series


@dataclass(slots=True)
class SourceRange:
    """A half-open UTC range [start, end) in epoch seconds; None means unbounded."""

    start: float | None = None
    end: float | None = None


class ReadingSource(Protocol):
    """Implemented by sources/influx.py, sources/wnsm.py, sources/wattivahti.py.

    `url` is the source's address with any secret masked (for messages and sync state).
    `read` returns one Series per statistic the source yields (for example consumption and
    feed-in of one metering point), each with `source` naming where the readings came from and
    `lines` numbering readings in the answer (so errors can name a position). It raises
    InputError for answers that make no sense and TargetError (exit 3) for a source that cannot
    be reached or fails, with the HTTP status where there is one. It never invents a value.
    """

    url: str

    def read(self, window: SourceRange) -> list[Series]: ...

    def close(self) -> None: ...


REMOTE_SCHEMES = ("influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://", "wnsm:",
                  "wattivahti:")


def is_remote(spec: str) -> bool:
    """True when an import SOURCE argument names a remote source rather than a file."""
    return spec.startswith(REMOTE_SCHEMES)


def open_source(spec: str) -> ReadingSource:
    """A remote source by URL (README lists the forms)."""
    from backdate.errors import UsageError

    if spec.startswith(("influxdb://", "influxdb2://", "influxdbs://", "influxdb2s://")):
        from backdate.sources.influx import open_influx_source

        return open_influx_source(spec)
    if spec.startswith("wnsm:"):
        from backdate.sources.wnsm import open_wnsm_source

        return open_wnsm_source(spec)
    if spec.startswith("wattivahti:"):
        from backdate.sources.wattivahti import open_wattivahti_source

        return open_wattivahti_source(spec)
    raise UsageError(f"unknown source {spec!r}")
