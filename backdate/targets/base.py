"""The one small protocol every statistics target implements (database or HA WebSocket).

The application layer reads what the target holds around the import window, asks the pure
engine for a `WritePlan`, shows it, and hands it back to `apply`, which writes it atomically
per statistic and reads it back.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from backdate.models import StatisticMeta, StatRow, Table, WritePlan


@dataclass(slots=True)
class TargetInfo:
    """What the application needs to know about a target before planning."""

    url: str  # with any password masked
    kind: str  # "sqlite", "mysql", "postgresql", "websocket"
    schema_version: int | None
    # End (UTC epoch) of the newest 5-minute window HA has compiled (statistics_runs' newest
    # start + 300 s); None when HA never compiled here. Rows of statistics HA compiles are
    # only written for windows that end at or before `last_compiled_end`.
    last_compiled_end: float | None = None
    supports_short_term: bool = True
    notes: list[str] = field(default_factory=list)
    time_zone: str | None = None  # HA's own zone, where the target knows it (WebSocket)


@dataclass(slots=True)
class StatisticSummary:
    """One line of `backdate inspect`."""

    meta: StatisticMeta
    hourly_rows: int
    short_term_rows: int
    first_start: float | None
    last_start: float | None
    problems: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Neighbourhood:
    """What a table holds around a window [start, end) for one statistic.

    `before` is the last row with start_ts < start; `inside` every row with
    start <= start_ts < end, sorted; `after` the first row with start_ts >= end.
    """

    before: StatRow | None
    inside: list[StatRow]
    after: StatRow | None
    after_count: int = 0  # how many rows have start_ts >= end (for reports)


class StatisticsTarget(Protocol):
    """Implemented by targets/recorder_db.py (SQLite, MariaDB, PostgreSQL) and the HA WS target."""

    def info(self) -> TargetInfo: ...

    def get_metadata(self, statistic_id: str) -> StatisticMeta | None: ...

    def neighbourhood(
        self, table: Table, statistic_id: str, start: float, end: float
    ) -> Neighbourhood: ...

    def read_rows(
        self, table: Table, statistic_id: str, start: float | None = None, end: float | None = None
    ) -> list[StatRow]: ...

    def list_statistics(self) -> list[StatisticSummary]: ...

    def apply(self, plan: WritePlan, *, progress: Callable[[int], None] | None = None) -> None:
        """Write the plan in one transaction (all or nothing) and verify it by reading back;
        `progress` is told how many rows are written so far."""
        ...

    def apply_all(self, plans: Sequence[WritePlan], *,
                  progress: Callable[[int], None] | None = None) -> None:
        """Like `apply` for several statistics at once: all written, or none."""
        ...

    def close(self) -> None: ...
