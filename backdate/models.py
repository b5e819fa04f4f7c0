"""The shared vocabulary of backdate: input series, statistic rows, metadata and write plans.

Every layer speaks in these types. Times are always UTC epoch seconds (float); local time exists
only at the edges (parsing input, per-day reports).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

import numpy as np

HOUR = 3600
FIVE_MINUTES = 300


class Kind(StrEnum):
    """What an input value means (PRODUCT.md, "Kinds of input")."""

    DELTA = "delta"  # amount used over [start, end)
    CUMULATIVE = "cumulative"  # meter value at an instant
    POWER = "power"  # rate at an instant, integrated over time
    MEAN = "mean"  # a measurement (temperature, ...) at an instant, or mean/min/max per interval


class MeanType(IntEnum):
    """HA's `statistics_meta.mean_type` (schema >= 49)."""

    NONE = 0
    ARITHMETIC = 1
    CIRCULAR = 2


class Table(StrEnum):
    """HA's two statistics tables."""

    HOURLY = "statistics"
    SHORT_TERM = "statistics_short_term"

    @property
    def period(self) -> int:
        return HOUR if self is Table.HOURLY else FIVE_MINUTES


@dataclass(slots=True)
class Series:
    """Readings of one statistic as they came from one source, in columnar form.

    `times` are UTC epoch seconds: the interval start for DELTA (and for MEAN rows that carry
    min/max), the instant otherwise. `ends` holds interval ends where the input gave them
    (NaN elsewhere), or is None. `lines` are 1-based line numbers in `source`, for errors.
    Arrays are sorted by time by the reader; the engine checks the rest.
    """

    source: str
    times: np.ndarray
    values: np.ndarray
    lines: np.ndarray
    ends: np.ndarray | None = None
    mins: np.ndarray | None = None
    maxs: np.ndarray | None = None
    kind: Kind | None = None  # set when the format says it; else the --kind flag decides
    unit: str | None = None  # unit of the values, when the file says it
    statistic_id: str | None = None  # when the file names it (klausj1 format)
    name: str | None = None
    # klausj1 `sum` rows: each value is the total at the end of its hour, and the file's first
    # row carries the growth of its own hour relative to what came before it.
    hourly_sums: bool = False
    # Meter readings at `times` where the file has them apart from the values (klausj1 `state`
    # beside `sum`): what HA keeps in `state`.
    states: np.ndarray | None = None
    # When several files were merged: the index into `file_names` of each reading.
    files: np.ndarray | None = None
    file_names: list[str] | None = None
    # The source states unit and kind itself (a utility portal's answer, converted to kWh):
    # a --unit or --kind that disagrees is an error, never an override.
    unit_fixed: bool = False
    # The file has a unit column whose cells are blank for this series (klausj1 files leave it
    # empty for a statistic that exists): the unit is the target statistic's, from this line.
    unit_blank_line: int | None = None
    # Lines the reader dropped as exact repeats of an earlier line: rows of (dropped, kept).
    repeats: np.ndarray | None = None
    # Energy a source integrated from power (InfluxDB's integral of W): a new statistic is
    # stored in kWh, as for power input.
    from_power: bool = False

    def __len__(self) -> int:
        return int(self.times.shape[0])

    def where(self, i: int) -> tuple[str, int]:
        """File and line of reading i (merged series remember each reading's file)."""
        path = self.source
        if self.files is not None and self.file_names is not None:
            path = self.file_names[int(self.files[i])]
        return path, int(self.lines[i])

    def error(self, i: int, message: str) -> Exception:
        """An InputError naming the file and line of reading i."""
        from backdate.errors import InputError

        path, line = self.where(i)
        return InputError(message, path=path, line=line)

    @classmethod
    def merge(cls, parts: list[Series]) -> Series:
        """Several files of one statistic as one series, sorted by time (stable)."""
        if len(parts) == 1:
            return parts[0]
        names = [p.source for p in parts]
        files = np.concatenate([np.full(len(p), k, dtype=np.int32) for k, p in enumerate(parts)])

        def cat(attr: str) -> np.ndarray | None:
            cols = [getattr(p, attr) for p in parts]
            if all(c is None for c in cols):
                return None
            return np.concatenate([np.full(len(p), np.nan) if c is None else c
                                   for p, c in zip(parts, cols, strict=True)])

        times = np.concatenate([p.times for p in parts])
        order = np.argsort(times, kind="stable")

        def pick(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[order]

        first = parts[0]
        return cls(
            source=", ".join(names), times=times[order],
            values=np.concatenate([p.values for p in parts])[order],
            lines=np.concatenate([p.lines for p in parts])[order],
            ends=pick(cat("ends")), mins=pick(cat("mins")), maxs=pick(cat("maxs")),
            states=pick(cat("states")),
            kind=first.kind, unit=first.unit, statistic_id=first.statistic_id, name=first.name,
            hourly_sums=first.hourly_sums, files=files[order], file_names=names,
            unit_fixed=any(p.unit_fixed for p in parts),
            unit_blank_line=next((p.unit_blank_line for p in parts if p.unit_blank_line), None),
            repeats=None,  # per file; the importer reports each file's own
            from_power=first.from_power,
        )


@dataclass(slots=True)
class StatisticMeta:
    """One `statistics_meta` row, independent of schema version."""

    statistic_id: str
    source: str
    unit_of_measurement: str | None
    has_sum: bool
    mean_type: MeanType = MeanType.NONE
    name: str | None = None
    unit_class: str | None = None
    id: int | None = None  # metadata_id in the target, when it exists there

    @property
    def has_mean(self) -> bool:
        return self.mean_type == MeanType.ARITHMETIC

    @property
    def is_external(self) -> bool:
        return ":" in self.statistic_id


@dataclass(slots=True)
class StatRow:
    """One row of `statistics` or `statistics_short_term` (the columns backdate sets)."""

    start_ts: float
    state: float | None = None
    sum: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    last_reset_ts: float | None = None


ROW_COLUMNS = ("state", "sum", "mean", "min", "max", "last_reset_ts")


@dataclass(slots=True)
class RowBlock:
    """Rows to write, as columns: numpy arrays sorted by `start_ts`, NaN meaning NULL.

    A column that is None is NULL in every row. Columns keep 87,660 hourly rows (ten years)
    cheap to plan, check, write and read back; `StatRow` is the one-row view for reports.
    """

    start_ts: np.ndarray
    state: np.ndarray | None = None
    sum: np.ndarray | None = None
    mean: np.ndarray | None = None
    min: np.ndarray | None = None
    max: np.ndarray | None = None
    last_reset_ts: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.start_ts.shape[0])

    @classmethod
    def empty(cls) -> RowBlock:
        return cls(np.empty(0))

    @classmethod
    def from_rows(cls, rows: list[StatRow]) -> RowBlock:
        rows = sorted(rows, key=lambda r: r.start_ts)
        block = cls(np.array([r.start_ts for r in rows], dtype=np.float64))
        for name in ROW_COLUMNS:
            values = [getattr(r, name) for r in rows]
            if any(v is not None for v in values):
                setattr(block, name, np.array([np.nan if v is None else v for v in values],
                                              dtype=np.float64))
        return block

    def column(self, name: str) -> np.ndarray | None:
        return getattr(self, name)

    def rows(self) -> list[StatRow]:
        n = len(self)
        cols = []
        for name in ROW_COLUMNS:
            col = getattr(self, name)
            cols.append([None] * n if col is None else
                        [None if v != v else v for v in col.tolist()])
        return [StatRow(t, *vals) for t, *vals in zip(self.start_ts.tolist(), *cols, strict=True)]


class TablePlan:
    """The exact writes to one table for one statistic.

    `rows` are written whole (insert, or update in place of every column backdate sets). Then
    every row with `start_ts >= shift_from` that is not in `rows` gets `sum += shift` (one range
    UPDATE), which keeps the series continuous after the written range.
    """

    __slots__ = ("table", "rows", "inserted", "updated", "shift_from", "shift", "shifted",
                 "seam_before", "seam_after_old", "seam_after_prev_old_sum", "unchanged", "_list")

    def __init__(
        self,
        table: Table,
        upserts: list[StatRow] | None = None,
        inserted: int = 0,
        updated: int = 0,
        shift_from: float | None = None,
        shift: float = 0.0,
        shifted: int = 0,
        seam_before: StatRow | None = None,
        seam_after_old: StatRow | None = None,
        seam_after_prev_old_sum: float | None = None,
        *,
        rows: RowBlock | None = None,
    ):
        self.table = table
        self.rows = rows if rows is not None else (
            RowBlock.from_rows(upserts) if upserts else RowBlock.empty())
        self.inserted, self.updated = inserted, updated
        self.shift_from, self.shift, self.shifted = shift_from, shift, shifted
        # Row just before the written range, and the first row after it as it was before the
        # write with the old sum of the row before that: used to check and verify the seams.
        self.seam_before = seam_before
        self.seam_after_old = seam_after_old
        self.seam_after_prev_old_sum = seam_after_prev_old_sum
        self.unchanged = 0  # planned rows the target already holds exactly (not rewritten)
        self._list: list[StatRow] | None = None

    @property
    def upserts(self) -> list[StatRow]:
        """The rows as `StatRow`s (built once, on demand: prefer `rows` for large plans)."""
        if self._list is None:
            self._list = self.rows.rows()
        return self._list

    @property
    def count(self) -> int:
        return len(self.rows)

    def __repr__(self) -> str:
        return (f"TablePlan({self.table.value}, {self.count} rows, {self.inserted} new, "
                f"{self.updated} updated, shift {self.shift:+g} from {self.shift_from})")


@dataclass(slots=True)
class WritePlan:
    """Everything one import does to one statistic; computed before anything is written."""

    meta: StatisticMeta
    metadata_exists: bool
    hourly: TablePlan
    short_term: TablePlan
    notes: list[str] = field(default_factory=list)  # what was left out and why

    @property
    def tables(self) -> tuple[TablePlan, TablePlan]:
        return (self.hourly, self.short_term)

    @property
    def is_empty(self) -> bool:
        return not (self.hourly.count or self.short_term.count)
