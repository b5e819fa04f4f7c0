"""Read energy history from CSV, TSV and JSON files into `Series`.

Formats (PRODUCT.md, "The command line"): backdate's canonical CSV/TSV/JSON, the MeterMan CSV
that aamcrae/ha-backfill reads, the CSV/TSV/JSON of klausj1/homeassistant-statistics, and the
Wiener Netze `bewegungsdaten` and WattiVahti `meterdata2` JSON answers (parsed by
sources/wnsm.py and sources/wattivahti.py).

Files are streamed: rows are gathered in chunks of strings, each chunk is converted column-wise
(numpy for numbers, `TimeParser.parse_many` for times) and appended to `array('d')` buffers, so
a ten-year 15-minute file is never held as Python objects all at once. Every problem is an
`InputError` naming the file and line; readers sort by time (stable) and drop exact duplicates.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate, chain
from operator import itemgetter
from pathlib import Path
from typing import IO, Any

import numpy as np

from backdate.errors import InputError, UsageError
from backdate.models import HOUR, Kind, Series
from backdate.timeparse import TimeParser

CHUNK_ROWS = 1 << 16  # rows converted at once: big enough for numpy, small enough for memory
BLOCK_CHARS = 1 << 21  # characters read at once by the quote-free CSV path

TIME_NAMES = ("start", "time", "timestamp", "date")
VALUE_NAMES = ("value", "delta", "kwh", "reading", "sum", "mean")
# What a value column's name says about the readings when --kind is not given.
IMPLIED_KIND = {
    "delta": Kind.DELTA,
    "kwh": Kind.DELTA,
    "reading": Kind.CUMULATIVE,
    "sum": Kind.CUMULATIVE,
    "mean": Kind.MEAN,
}
_DELIMITERS = (",", ";", "\t", "|")
# MeterMan columns: header name -> Series.name
_METERMAN = {"imp": "import", "exp": "export", "gen-t": "generation"}
_WS = re.compile(r"[ \t\n\r]*")
_SEP = re.compile(r"[ \t\n\r]*,[ \t\n\r]*")  # between two array elements

# One chunk of a table: the columns (each a sequence of cells, str or JSON scalars) and the
# 1-based line of each row.
Chunk = tuple[Sequence[Sequence[Any]], Sequence[int]]


@dataclass(slots=True)
class _Options:
    path: str
    kind: Kind | None
    tz: str | None
    time_column: str | None
    value_column: str | None
    unit: str | None


@dataclass(slots=True)
class _Table:
    """A header and its rows in chunks, from CSV or JSON alike."""

    names: list[str]
    chunks: Iterator[Chunk]
    header_line: int
    comma_decimal: bool  # a decimal comma cannot be confused with the delimiter
    json: bool = False
    # JSON documents may state these for the whole series
    statistic_id: str | None = None
    unit: str | None = None
    kind: Kind | None = None
    name: str | None = None
    tz: str | None = None
    ready: list[Series] | None = None  # a utility portal's answer, read by its own parser

    @property
    def lower(self) -> list[str]:
        return [n.strip().lower() for n in self.names]


def read_file(
    path: str | Path,
    *,
    kind: Kind | None = None,
    tz: str | None = None,
    time_column: str | None = None,
    value_column: str | None = None,
    unit: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Series]:
    """Read one CSV, TSV or JSON file into series sorted by time.

    `progress`, when given, is called with the number of bytes read so far (for a progress bar).

    `kind`, `unit`, `tz`, `time_column` and `value_column` are the CLI flags. A kind or unit the
    file states itself must agree with the flag; one merely implied by a column name or the
    format's convention yields to it.
    """
    src = str(path)
    opts = _Options(src, Kind(kind) if kind else None, tz, time_column, value_column, unit)
    try:
        fh = open(src, encoding="utf-8-sig", newline="")  # noqa: SIM115 (closed below)
    except FileNotFoundError:
        raise InputError("file not found", path=src) from None
    except IsADirectoryError:
        raise InputError("is a directory, not a file", path=src) from None
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise InputError(
            f"cannot read the file: {getattr(e, 'strerror', None) or e}", path=src
        ) from None
    with fh:
        try:
            table = _open_table(fh, opts)
            if progress is not None:
                table.chunks = _reporting(table.chunks, fh, progress)
            return _dispatch(table, opts)
        except UnicodeDecodeError as e:
            raise InputError(f"not UTF-8 text ({e.reason}); save it as UTF-8", path=src) from None
        except OSError as e:
            raise InputError(f"cannot read the file: {e.strerror or e}", path=src) from None
        except RecursionError:  # JSON nested thousands deep, met while showing a value
            raise InputError("JSON nested too deeply", path=src) from None


def _reporting(chunks: Iterator[Chunk], fh: IO[str], progress: Callable[[int], None]
               ) -> Iterator[Chunk]:
    """Pass chunks through, telling `progress` how far into the file the reader is."""
    for chunk in chunks:
        yield chunk
        progress(fh.buffer.tell())  # type: ignore[attr-defined]


# -- opening: CSV or JSON --------------------------------------------------------------------


def _open_table(fh: IO[str], opts: _Options) -> _Table:
    line = 0
    while True:
        raw = fh.readline()
        if not raw:
            raise InputError("empty file", path=opts.path)
        line += 1
        if raw.strip():
            break
    if opts.path.lower().endswith(".json") or raw.lstrip()[0] in "[{":
        # JSON cannot be parsed in pieces with the standard library; keep line numbers right.
        return _json_table("\n" * (line - 1) + raw + fh.read(), opts)
    delim = max(_DELIMITERS, key=raw.count) if any(d in raw for d in _DELIMITERS) else ","
    try:
        names = [n.strip() for n in next(csv.reader([raw], delimiter=delim))]
    except csv.Error as e:
        raise InputError(f"unreadable CSV header: {e}", path=opts.path, line=line) from None
    return _Table(
        names=names,
        chunks=_csv_chunks(fh, delim, len(names), line, opts.path),
        header_line=line,
        comma_decimal=delim != ",",
    )


def _csv_chunks(fh: IO[str], delim: str, ncols: int, line0: int, path: str) -> Iterator[Chunk]:
    """Rows after the header, as columns, a block of about BLOCK_CHARS at a time.

    A block without quotes is split by two C-level `str` calls (all fields at once, then every
    ncols-th field per column); blocks with blank or malformed lines go line by line, and from
    the first quote on the `csv` module reads the rest (quoted fields may span lines).
    """
    line = line0  # lines consumed so far
    while True:
        block = fh.read(BLOCK_CHARS)
        if not block:
            return
        if not block.endswith("\n"):
            block += fh.readline()
        if '"' in block:
            rest = chain(io.StringIO(block, newline=""), fh)
            yield from _quoted_chunks(rest, delim, ncols, line, path)
            return
        if "\r" in block:
            block = block.replace("\r\n", "\n")
        text = block[:-1] if block.endswith("\n") else block
        count = text.count("\n") + 1
        fields = text.replace("\n", delim).split(delim)
        if len(fields) == count * ncols and _aligned(text, delim, ncols, count):
            numbers = array("q", range(line + 1, line + count + 1))
            yield [fields[i::ncols] for i in range(ncols)], numbers
        else:
            yield from _checked_rows(text.split("\n"), delim, ncols, line, path)
        line += count


def _aligned(text: str, delim: str, ncols: int, count: int) -> bool:
    """Whether every line of `text` holds exactly ncols-1 delimiters.

    The total alone could hide a short line (a blank one) next to a long one.
    """
    raw = np.frombuffer(text.encode(), dtype=np.uint8)
    newlines = np.flatnonzero(raw == 10)
    delims = np.flatnonzero(raw == ord(delim))
    if delims.size != count * (ncols - 1) or newlines.size != count - 1:
        return False
    if ncols == 1 or count == 1:
        return True
    per_line = delims.reshape(count, ncols - 1)
    return bool((per_line[:-1, -1] < newlines).all() and (per_line[1:, 0] > newlines).all())


def _checked_rows(
    texts: list[str], delim: str, ncols: int, line0: int, path: str
) -> Iterator[Chunk]:
    """Line by line: skip blank lines, read a short row's missing trailing fields as empty
    (spreadsheets leave them out), refuse rows with more fields than the header.

    Rows before a bad one are yielded first, so an earlier bad value is reported first.
    """
    rows: list[list[str]] = []
    lines = array("q")
    for n, text in enumerate(texts, start=line0 + 1):
        if not text.strip():
            continue
        row = text.split(delim)
        if len(row) < ncols:
            row += [""] * (ncols - len(row))
        if len(row) != ncols:
            if rows:
                yield _transpose(rows, ncols), lines
            raise _field_count(ncols, len(row), path, n)
        rows.append(row)
        lines.append(n)
    yield _transpose(rows, ncols), lines


def _transpose(rows: list[list[str]], ncols: int) -> list[Sequence[str]]:
    return list(zip(*rows, strict=True)) if rows else [() for _ in range(ncols)]


def _field_count(ncols: int, found: int, path: str, line: int) -> InputError:
    return InputError(
        f"{found} fields, more than the header's {ncols}", path=path, line=line
    )


def _quoted_chunks(
    text_lines: Iterable[str], delim: str, ncols: int, line0: int, path: str
) -> Iterator[Chunk]:
    """The csv module's reading, for files with quoted fields."""
    reader = csv.reader(text_lines, delimiter=delim)
    rows: list[list[str]] = []
    lines = array("q")
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if len(row) < ncols:  # trailing empty fields left out
                row += [""] * (ncols - len(row))
            if len(row) != ncols:
                bad_line = line0 + reader.line_num
                if rows:  # convert the rows before it first: an earlier bad value wins
                    yield _transpose(rows, ncols), lines
                raise _field_count(ncols, len(row), path, bad_line)
            rows.append(row)
            lines.append(line0 + reader.line_num)
            if len(rows) == CHUNK_ROWS:
                yield _transpose(rows, ncols), lines
                rows, lines = [], array("q")
    except csv.Error as e:
        raise InputError(f"unreadable CSV: {e}", path=path, line=line0 + reader.line_num) from None
    if rows:
        yield _transpose(rows, ncols), lines


def _dispatch(table: _Table, opts: _Options) -> list[Series]:
    if table.ready is not None:
        return table.ready
    lower = table.lower
    if lower and lower[0].startswith("#date"):
        return _meterman(table, opts)
    if "statistic_id" in lower and "start" in lower:
        return _klausj1(table, opts)
    return _canonical(table, opts)


# -- column conversion -----------------------------------------------------------------------


def _shown(x: Any) -> str:
    """A JSON value for a message: short, and safe for any nesting."""
    try:
        text = json.dumps(x)
    except (ValueError, TypeError, RecursionError):
        return "an object" if isinstance(x, dict) else "a list"
    return text if len(text) <= 40 else text[:37] + "..."


def _blank(x: Any) -> bool:
    return x is None or (isinstance(x, str) and not x.strip())


def _one_float(x: Any, column: str, line: int, opts: _Options, comma: bool) -> float:
    """Convert one cell, with the precise complaint; used only to find what numpy refused."""
    where = f"in column {column!r}"
    if _blank(x):
        raise InputError(f"blank value {where}", path=opts.path, line=line)
    if isinstance(x, bool) or not isinstance(x, (str, int, float)):
        raise InputError(f"{_shown(x)} {where} is not a number", path=opts.path, line=line)
    s = x.strip() if isinstance(x, str) else x
    try:
        v = float(s)
    except OverflowError:  # a JSON integer beyond float range
        v = math.inf
    except ValueError:
        assert isinstance(s, str)
        if "," in s and comma and "." not in s:
            try:
                v = float(s.replace(",", "."))
            except ValueError:
                v = None
        else:
            v = None
        if v is None:
            hint = ""
            if "," in s and not comma:
                hint = " (a decimal comma needs ';' or tab as the column delimiter)"
            elif "," in s and "." in s:
                hint = " (both '.' and ',' in one number is ambiguous)"
            raise InputError(
                f"text in a number: {s!r} {where}{hint}", path=opts.path, line=line
            ) from None
    if not math.isfinite(v):
        raise InputError(f"{s!r} {where} is not a finite number", path=opts.path, line=line)
    return v


def _decimal_points(col: Sequence[Any]) -> list[Any]:
    """The cells with decimal commas made points (three C-level passes for all-text columns)."""
    try:
        return "\n".join(col).replace(",", ".").split("\n")
    except TypeError:  # JSON numbers among the strings
        return [x.replace(",", ".") if isinstance(x, str) else x for x in col]


def _floats(
    col: Sequence[Any], lines: Sequence[int], column: str, opts: _Options, comma: bool
) -> np.ndarray:
    """Numbers of one column, in C where possible; the first bad cell is reported exactly."""
    values: np.ndarray | None = None
    try:
        values = np.array(col, dtype=np.float64)
    except (ValueError, TypeError, OverflowError):
        if comma:
            try:
                values = np.array(_decimal_points(col), dtype=np.float64)
            except (ValueError, TypeError, OverflowError):
                values = None
    if values is not None and values.shape == (len(col),):
        bad = np.flatnonzero(~np.isfinite(values))
        if not bad.size:
            return values
        start = int(bad[0])
    else:
        start = 0
    # Cell by cell from the first suspect: raises on the first bad one; if numpy was merely
    # stricter than Python (unusual digits), the cells' own values are used.
    head = values[:start] if values is not None and start else np.empty(0)
    tail = [_one_float(col[i], column, lines[i], opts, comma) for i in range(start, len(col))]
    return np.concatenate([head, np.array(tail, dtype=np.float64)])


def _time_texts(col: Sequence[Any], json_cells: bool) -> Sequence[str]:
    """JSON may give epoch numbers; the parser reads strings."""
    if not json_cells:
        return col
    out = []
    for x in col:
        if isinstance(x, str):
            out.append(x)
        elif x is None or isinstance(x, bool):
            out.append("" if x is None else json.dumps(x))
        elif isinstance(x, int):
            out.append(str(x))
        elif isinstance(x, float):
            out.append(repr(x))
        else:
            out.append(_shown(x))
    return out


def _times(
    parser: TimeParser, col: Sequence[Any], lines: Sequence[int], table: _Table
) -> np.ndarray:
    return parser.parse_many(_time_texts(col, table.json), lines)


def _optional_times(
    parser: TimeParser, col: Sequence[Any], lines: Sequence[int], table: _Table
) -> np.ndarray:
    """Times where given, NaN where the cell is blank (an `end` column may leave some out)."""
    texts = _time_texts(col, table.json)
    keep = [i for i, s in enumerate(texts) if s.strip()]
    if len(keep) == len(texts):
        return parser.parse_many(texts, lines)
    out = np.full(len(texts), np.nan)
    out[keep] = parser.parse_many([texts[i] for i in keep], [lines[i] for i in keep])
    return out


def _first_error(*calls: tuple[Any, ...] | None) -> list[Any]:
    """Run each `(function, *args)` of a chunk; if several fail, report the earliest line.

    A None call is skipped and yields None.
    """
    results: list[Any] = []
    errors: list[InputError] = []
    for call in calls:
        if call is None:
            results.append(None)
            continue
        fn: Callable[..., Any] = call[0]
        try:
            results.append(fn(*call[1:]))
        except InputError as e:
            errors.append(e)
            results.append(None)
    if errors:
        raise min(errors, key=lambda e: e.line or 0)
    return results


class _Constant:
    """Checks that a column (unit, ...) holds one value throughout; remembers where it was seen."""

    def __init__(self, column: str, opts: _Options, *, allow_blank: bool = False) -> None:
        self.column = column
        self.opts = opts
        self.value: str | None = None
        self.line = 0
        self.allow_blank = allow_blank
        self.blank_line: int | None = None  # first blank cell, when blanks are allowed

    def check(self, col: Sequence[Any], lines: Sequence[int]) -> None:
        if self.value is not None:
            try:
                distinct = set(col)
            except TypeError:  # unhashable JSON values: the loop below reports them
                distinct = set()
            if len(distinct) == 1 and str(next(iter(distinct))).strip() == self.value:
                return
        for x, line in zip(col, lines, strict=True):
            s = "" if x is None else str(x).strip()
            if s == self.value:
                continue
            if not s and self.allow_blank:
                self.blank_line = self.blank_line or line
                continue
            if self.value is None:
                if not s:
                    raise InputError(f"blank {self.column}", path=self.opts.path, line=line)
                self.value, self.line = s, line
                continue
            raise InputError(
                f"{self.column} changes from {self.value!r} (line {self.line}) to {s!r}; "
                f"one series must have one {self.column}",
                path=self.opts.path,
                line=line,
            )


def _resolve_unit(
    file_unit: str | None, line: int, implied: str | None, opts: _Options
) -> str | None:
    """The flag wins over a unit implied by convention; a unit the file states must agree."""
    if file_unit is not None:
        if opts.unit is not None and opts.unit != file_unit:
            raise InputError(
                f"--unit {opts.unit} contradicts the file's unit {file_unit!r}",
                path=opts.path,
                line=line or None,
            )
        return file_unit
    return opts.unit if opts.unit is not None else implied


def _fixed_kind(fmt_kind: Kind, fmt: str, opts: _Options, line: int) -> Kind:
    if opts.kind is not None and opts.kind != fmt_kind:
        raise InputError(
            f"--kind {opts.kind.value} contradicts the file: {fmt} holds {fmt_kind.value} readings",
            path=opts.path,
            line=line,
        )
    return fmt_kind


class _Buffers:
    """Growing float columns: appending stays O(1) amortised and needs no Python objects."""

    def __init__(self, *names: str) -> None:
        self.cols = {n: array("d") for n in names}
        self.lines = array("q")

    def add(self, lines: Sequence[int], **cols: np.ndarray | None) -> None:
        self.lines.extend(lines)
        for name, values in cols.items():
            if values is not None:
                self.cols[name].frombytes(np.ascontiguousarray(values, np.float64).tobytes())

    def get(self, name: str) -> np.ndarray:
        return np.frombuffer(self.cols[name], dtype=np.float64).copy()

    def line_array(self) -> np.ndarray:
        return np.frombuffer(self.lines, dtype=np.int64).copy()


# -- sorting and duplicates ------------------------------------------------------------------


@dataclass(slots=True)
class _Rows:
    times: np.ndarray
    values: np.ndarray
    lines: np.ndarray
    ends: np.ndarray | None = None
    mins: np.ndarray | None = None
    maxs: np.ndarray | None = None
    # Lines dropped as exact repeats of an earlier line: (dropped line, line kept) pairs.
    repeats: np.ndarray | None = None

    def series(self, path: str, **described: Any) -> Series:
        """These rows as the `Series` every reader returns; `described` says what they are."""
        return Series(source=path, times=self.times, values=self.values, lines=self.lines,
                      ends=self.ends, mins=self.mins, maxs=self.maxs, repeats=self.repeats,
                      **described)

    def take(self, idx: np.ndarray) -> _Rows:
        def t(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[idx]

        return _Rows(
            self.times[idx],
            self.values[idx],
            self.lines[idx],
            t(self.ends),
            t(self.mins),
            t(self.maxs),
        )


def _sorted(rows: _Rows) -> _Rows:
    """Sorted by time; stable, so file order breaks ties and duplicates keep their lines."""
    t = rows.times
    if t.size > 1 and (t[1:] < t[:-1]).any():
        return rows.take(np.argsort(t, kind="stable"))
    return rows


def _check_order(
    times: np.ndarray, lines: np.ndarray, parser: TimeParser | None, opts: _Options
) -> None:
    """Refuse a file out of time order whose repeated local hour was told apart by order.

    `times` and `lines` are in file order. The fold rule (see timeparse) takes the order of the
    lines for the order in time; in a file that is not sorted the two copies of the repeated
    hour would be mixed up or merged as duplicates, so sorting it here would hide the damage.
    NaN times (blank ends) are skipped.
    """
    if parser is None or parser.repeated is None or times.size < 2:
        return
    given = ~np.isnan(times)
    idx = None if given.all() else np.flatnonzero(given)
    t = times if idx is None else times[idx]
    back = np.flatnonzero(t[1:] < t[:-1])
    if not back.size:
        return
    k = int(back[0])
    i, j = (k, k + 1) if idx is None else (int(idx[k]), int(idx[k + 1]))
    raise InputError(
        f"times are not in order (this line is before line {int(lines[i])}), and the repeated "
        f"hour {parser.repeated_hour()} can only be told apart by order: sort the file, or give "
        "times with offsets",
        path=opts.path,
        line=int(lines[j]),
    )


def _when(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, UTC).isoformat()
    except (ValueError, OverflowError, OSError):
        return f"{t:g} (epoch seconds)"


def _sorted_unique(rows: _Rows, opts: _Options) -> _Rows:
    """Sort by time and drop repeats of identical rows; a time with two values is an error."""
    rows = _sorted(rows)
    t = rows.times
    first = np.flatnonzero(t[1:] == t[:-1])
    if not first.size:
        return rows
    second = first + 1  # the later line of each pair (the sort is stable)
    same = np.ones(first.size, dtype=bool)
    for a in (rows.values, rows.ends, rows.mins, rows.maxs):
        if a is not None:
            x, y = a[first], a[second]
            same &= (x == y) | (np.isnan(x) & np.isnan(y))
    if not same.all():
        k = int(np.argmin(same))
        i, j = int(first[k]), int(second[k])
        when = _when(float(t[j]))
        what = (
            f"values: {rows.values[i]:g} (line {rows.lines[i]}) and {rows.values[j]:g}"
            if rows.values[i] != rows.values[j]
            else f"end, min or max (line {rows.lines[i]} and this line)"
        )
        raise InputError(
            f"time {when} appears twice with different {what}",
            path=opts.path,
            line=int(rows.lines[j]),
        )
    keep = np.ones(t.size, dtype=bool)
    keep[second] = False
    out = rows.take(np.flatnonzero(keep))
    pairs = np.stack([rows.lines[second], rows.lines[first]], axis=1)
    out.repeats = pairs if rows.repeats is None else np.concatenate([rows.repeats, pairs])
    return out


def _no_rows(table: _Table, opts: _Options) -> InputError:
    return InputError("no data rows after the header", path=opts.path, line=table.header_line)


# -- canonical -------------------------------------------------------------------------------


def _looks_like_data(names: Sequence[str]) -> bool:
    """A first line of numbers or dates is data, not a header."""
    for n in names:
        s = n.strip().lstrip("+-")
        if s[:1].isdigit():
            return True
    return False


def _column(
    table: _Table, wanted: str | None, accepted: Sequence[str], flag: str, opts: _Options
) -> int:
    lower = table.lower
    if wanted:
        key = wanted.strip().lower()
        if key in lower:
            return lower.index(key)
        raise InputError(
            f"no column {wanted!r} (from {flag}); the file has columns: {', '.join(table.names)}",
            path=opts.path,
            line=table.header_line,
        )
    for name in accepted:
        if name in lower:
            return lower.index(name)
    return -1


def _canonical(table: _Table, opts: _Options) -> list[Series]:
    lower = table.lower
    ti = _column(table, opts.time_column, TIME_NAMES, "--time-column", opts)
    vi = _column(table, opts.value_column, VALUE_NAMES, "--value-column", opts)
    if ti < 0 or vi < 0:
        if not table.json and _looks_like_data(table.names):
            raise InputError(
                "no header: the first line holds data; the first line must name the columns, "
                "e.g. 'start,value'",
                path=opts.path,
                line=table.header_line,
            )
        what, names, flag = (
            ("time", TIME_NAMES, "--time-column")
            if ti < 0
            else ("value", VALUE_NAMES, "--value-column")
        )
        raise InputError(
            f"no {what} column: found {', '.join(repr(n) for n in table.names)}; "
            f"accepted names are {', '.join(names)} (or name it with {flag})",
            path=opts.path,
            line=table.header_line,
        )

    def optional(name: str) -> int:
        return lower.index(name) if name in lower and lower.index(name) not in (ti, vi) else -1

    ei, mi, xi, ui = optional("end"), optional("min"), optional("max"), optional("unit")
    if (mi < 0) != (xi < 0):
        raise InputError(
            "a 'min' column needs a 'max' column and the other way round",
            path=opts.path,
            line=table.header_line,
        )
    start_parser = TimeParser(opts.tz or table.tz, path=opts.path)
    end_parser = TimeParser(opts.tz or table.tz, path=opts.path)
    unit_col = _Constant("unit", opts)
    buf = _Buffers("t", "v", "e", "min", "max")
    comma = table.comma_decimal
    vname = table.names[vi]
    for cols, lines in table.chunks:
        t, v, e, mn, mx, _ = _first_error(
            (_times, start_parser, cols[ti], lines, table),
            (_floats, cols[vi], lines, vname, opts, comma),
            (_optional_times, end_parser, cols[ei], lines, table) if ei >= 0 else None,
            (_floats, cols[mi], lines, table.names[mi], opts, comma) if mi >= 0 else None,
            (_floats, cols[xi], lines, "max", opts, comma) if xi >= 0 else None,
            (unit_col.check, cols[ui], lines) if ui >= 0 else None,
        )
        if e is not None:
            bad = np.flatnonzero(e <= t)
            if bad.size:
                i = int(bad[0])
                raise InputError("end is not after start", path=opts.path, line=int(lines[i]))
        buf.add(lines, t=t, v=v, e=e, min=mn, max=mx)
    if not buf.lines:
        raise _no_rows(table, opts)
    rows = _Rows(
        buf.get("t"),
        buf.get("v"),
        buf.line_array(),
        buf.get("e") if ei >= 0 else None,
        buf.get("min") if mi >= 0 else None,
        buf.get("max") if xi >= 0 else None,
    )
    _check_order(rows.times, rows.lines, start_parser, opts)
    if rows.ends is not None:
        _check_order(rows.ends, rows.lines, end_parser, opts)
    rows = _sorted_unique(rows, opts)

    implied = IMPLIED_KIND.get(lower[vi]) if not opts.value_column else None
    if mi >= 0:
        implied = Kind.MEAN
    if opts.kind and table.kind and opts.kind != table.kind:
        raise InputError(
            f"--kind {opts.kind.value} contradicts the file's kind {table.kind.value!r}",
            path=opts.path,
        )
    kind = opts.kind or table.kind or implied
    file_unit = unit_col.value if unit_col.value is not None else table.unit
    unit = _resolve_unit(file_unit, unit_col.line, "kWh" if lower[vi] == "kwh" else None, opts)
    return [
        rows.series(opts.path, kind=kind, unit=unit, statistic_id=table.statistic_id,
                    name=table.name)
    ]


# -- MeterMan (aamcrae/ha-backfill) ----------------------------------------------------------


def _meterman(table: _Table, opts: _Options) -> list[Series]:
    """`#date,time,IMP,EXP,GEN-T`: 5-minute cumulative kWh, naive local time."""
    lower = table.lower
    if "time" not in lower or not any(k in lower for k in _METERMAN):
        raise InputError(
            f"MeterMan header needs '#date', 'time' and one of IMP, EXP, GEN-T; found "
            f"{', '.join(repr(n) for n in table.names)}",
            path=opts.path,
            line=table.header_line,
        )
    kind = _fixed_kind(Kind.CUMULATIVE, "a MeterMan CSV", opts, table.header_line)
    di, ti = 0, lower.index("time")
    metrics = [(lower.index(k), k) for k in _METERMAN if k in lower]
    parser = TimeParser(opts.tz, path=opts.path)
    buf = _Buffers("t", *(k for _, k in metrics))
    for cols, lines in table.chunks:
        days, clocks = _time_texts(cols[di], table.json), _time_texts(cols[ti], table.json)
        texts = list(map(" ".join, zip(days, clocks, strict=True)))
        t, *values = _first_error(
            (parser.parse_many, texts, lines),
            *((_floats, cols[i], lines, table.names[i], opts, False) for i, _ in metrics),
        )
        buf.add(lines, t=t, **{k: v for (_, k), v in zip(metrics, values, strict=True)})
    if not buf.lines:
        raise _no_rows(table, opts)
    times, lines_arr = buf.get("t"), buf.line_array()
    _check_order(times, lines_arr, parser, opts)
    unit = _resolve_unit(None, 0, "kWh", opts)
    # A column of zeros is one the meter lacks (MeterMan writes 0.000); if all are, keep IMP.
    keys = [k for _, k in metrics if buf.get(k).any()] or [metrics[0][1]]
    out: list[Series] = []
    for key in keys:
        rows = _sorted(_Rows(times, buf.get(key), lines_arr))
        # ha-backfill treats 0 as "no sample": once the meter has counted, a 0 is a gap,
        # not a reset to zero.
        zero = rows.values == 0
        counted = np.maximum.accumulate(~zero)
        gap = zero & np.concatenate(([False], counted[:-1]))
        if gap.any():
            rows = rows.take(np.flatnonzero(~gap))
        rows = _sorted_unique(rows, opts)
        out.append(rows.series(opts.path, kind=kind, unit=unit, name=_METERMAN[key]))
    return out


# -- klausj1/homeassistant-statistics --------------------------------------------------------


def _runs(codes: np.ndarray) -> list[tuple[int, int, int]]:
    """(code, start, stop) of each run of equal codes."""
    cuts = [0, *(np.flatnonzero(np.diff(codes)) + 1).tolist(), len(codes)]
    return [(int(codes[a]), a, b) for a, b in zip(cuts[:-1], cuts[1:], strict=True)]


def _times_per_series(
    parsers: dict[int, TimeParser],
    tz: str | None,
    col: Sequence[Any],
    lines: Sequence[int],
    codes: np.ndarray,
    table: _Table,
    opts: _Options,
) -> np.ndarray:
    """Times of rows of several statistics, each parsed by its own statistic's parser."""
    texts = _time_texts(col, table.json)
    out = np.empty(len(texts))
    for code, a, b in _runs(codes):
        parser = parsers.get(code)
        if parser is None:
            parser = parsers[code] = TimeParser(tz, path=opts.path)
        out[a:b] = parser.parse_many(texts[a:b], lines[a:b])
    return out


def _units_per_series(
    units: dict[int, _Constant],
    col: Sequence[Any],
    lines: Sequence[int],
    codes: np.ndarray,
    opts: _Options,
) -> None:
    for code, a, b in _runs(codes):
        units.setdefault(code, _Constant("unit", opts, allow_blank=True)).check(col[a:b],
                                                                                lines[a:b])


def _statistic_codes(
    col: Sequence[Any],
    lines: Sequence[int],
    ids: dict[str, int],
    first_line: dict[int, int],
    opts: _Options,
) -> list[int]:
    """A small integer per row for its statistic_id, registering new ids in `ids`."""
    try:
        distinct = set(col)
    except TypeError:  # unhashable JSON values: the loop below reports them
        distinct = set()
    if len(distinct) == 1:  # the usual case: a whole chunk of one statistic
        only = next(iter(distinct))
        key = only.strip() if isinstance(only, str) else ""
        if key:
            if key not in ids:
                ids[key] = len(ids)
                first_line[ids[key]] = lines[0]
            return [ids[key]] * len(lines)
    codes: list[int] = []
    for sid, line in zip(col, lines, strict=True):
        if sid is not None and not isinstance(sid, str):
            raise InputError(f"statistic_id {_shown(sid)} is not text", path=opts.path, line=line)
        key = "" if sid is None else sid.strip()
        if not key:
            raise InputError("blank statistic_id", path=opts.path, line=line)
        code = ids.get(key)
        if code is None:
            code = ids[key] = len(ids)
            first_line[code] = line
        codes.append(code)
    return codes


def _klausj1(table: _Table, opts: _Options) -> list[Series]:
    """`statistic_id, start, unit` plus `sum`(+`state`), `delta`, or `mean`,`min`,`max`.

    Each row is the hour starting at `start`. `sum` is the total at the END of that hour, so it
    becomes a cumulative reading at start+1h; `delta` and `mean` rows keep [start, start+1h).
    """
    lower = table.lower
    if "sum" in lower:
        kind, value = Kind.CUMULATIVE, "sum"
    elif "delta" in lower:
        kind, value = Kind.DELTA, "delta"
    elif "mean" in lower:
        kind, value = Kind.MEAN, "mean"
        if "min" not in lower or "max" not in lower:
            raise InputError(
                "klausj1 'mean' rows need 'min' and 'max' columns too",
                path=opts.path,
                line=table.header_line,
            )
    else:
        raise InputError(
            f"no value column: found {', '.join(repr(n) for n in table.names)}; klausj1 files "
            "need 'sum' (with 'state'), 'delta', or 'mean', 'min' and 'max'",
            path=opts.path,
            line=table.header_line,
        )
    kind = _fixed_kind(kind, f"this klausj1 file ('{value}' column)", opts, table.header_line)
    si, ti, vi = lower.index("statistic_id"), lower.index("start"), lower.index(value)
    ui = lower.index("unit") if "unit" in lower else -1
    mi = lower.index("min") if kind is Kind.MEAN else -1
    xi = lower.index("max") if kind is Kind.MEAN else -1
    if kind is Kind.CUMULATIVE and "state" in lower:
        mi = lower.index("state")  # the meter reading beside the sum, kept in the min buffer
    tz = opts.tz or table.tz
    ids: dict[str, int] = {}
    parsers: dict[int, TimeParser] = {}  # one per statistic: the fold rule works per series
    units: dict[int, _Constant] = {}
    first_line: dict[int, int] = {}
    codes = array("q")
    buf = _Buffers("t", "v", "min", "max")
    comma = table.comma_decimal
    for cols, lines in table.chunks:
        code_list = _statistic_codes(cols[si], lines, ids, first_line, opts)
        chunk_codes = np.array(code_list, dtype=np.int64)

        t, v, mn, mx, _ = _first_error(
            (_times_per_series, parsers, tz, cols[ti], lines, chunk_codes, table, opts),
            (_floats, cols[vi], lines, table.names[vi], opts, comma),
            (_floats, cols[mi], lines, table.names[mi], opts, comma) if mi >= 0 else None,
            (_floats, cols[xi], lines, "max", opts, comma) if xi >= 0 else None,
            (_units_per_series, units, cols[ui], lines, chunk_codes, opts) if ui >= 0 else None,
        )
        codes.extend(code_list)
        buf.add(lines, t=t, v=v, min=mn, max=mx)
    if not buf.lines:
        raise _no_rows(table, opts)
    all_codes = np.frombuffer(codes, dtype=np.int64)
    start, values, lines_arr = buf.get("t"), buf.get("v"), buf.line_array()
    mins = buf.get("min") if mi >= 0 else None
    maxs = buf.get("max") if xi >= 0 else None
    out: list[Series] = []
    for sid, code in ids.items():
        idx = np.flatnonzero(all_codes == code)
        s = start[idx]
        _check_order(s, lines_arr[idx], parsers.get(code), opts)
        if kind is Kind.CUMULATIVE:
            rows = _Rows(s + HOUR, values[idx], lines_arr[idx], None,
                         None if mins is None else mins[idx])
        else:
            rows = _Rows(
                s,
                values[idx],
                lines_arr[idx],
                s + HOUR,
                None if mins is None else mins[idx],
                None if maxs is None else maxs[idx],
            )
        rows = _sorted_unique(rows, opts)
        unit_col = units.get(code)
        file_unit = unit_col.value if unit_col is not None else None
        series = rows.series(opts.path, kind=kind,
                             unit=_resolve_unit(file_unit, first_line[code], None, opts),
                             statistic_id=sid, hourly_sums=kind is Kind.CUMULATIVE)
        if kind is Kind.CUMULATIVE:
            series.states, series.mins = series.mins, None
        if unit_col is not None and unit_col.value is None and opts.unit is None:
            series.unit_blank_line = unit_col.blank_line
        out.append(series)
    return out


# -- JSON ------------------------------------------------------------------------------------


class _Lined(list):  # type: ignore[type-arg]
    """A JSON array that remembers the line each element starts on."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[int] = []


class _JsonScan:
    """Decodes JSON like `json.loads`, but records the line of each array element.

    Containers are walked in Python; each element of an array (a reading) is decoded whole by
    the C decoder, unless it holds arrays of objects itself (klausj1's entities), which are then
    walked too.
    """

    def __init__(self, text: str, path: str) -> None:
        self.text = text
        self.path = path
        self.decoder = json.JSONDecoder()
        self._pos = 0
        self._line = 1

    def line(self, pos: int) -> int:
        if pos >= self._pos:
            self._line += self.text.count("\n", self._pos, pos)
        else:
            self._line -= self.text.count("\n", pos, self._pos)
        self._pos = pos
        return self._line

    def fail(self, message: str, pos: int) -> InputError:
        return InputError(f"not valid JSON: {message}", path=self.path, line=self.line(pos))

    def ws(self, i: int) -> int:
        m = _WS.match(self.text, i)
        assert m is not None
        return m.end()

    def document(self) -> Any:
        try:
            obj, i = self.value(self.ws(0))
        except RecursionError:
            raise InputError("not valid JSON: nested too deeply", path=self.path) from None
        except json.JSONDecodeError as e:  # normally reported where it occurs
            raise InputError(f"not valid JSON: {e.msg}", path=self.path, line=e.lineno) from None
        except ValueError as e:
            raise self._too_long(e) from None
        if self.ws(i) != len(self.text):
            raise self.fail("extra data after the end of the document", self.ws(i))
        return obj

    def _too_long(self, e: ValueError) -> InputError:
        """The decoder's other complaint: an integer of more than 4300 digits."""
        m = re.search(r"[0-9]{4301}", self.text)
        line = self.text.count("\n", 0, m.start()) + 1 if m else None
        what = "a number with too many digits" if m else str(e)
        return InputError(f"not valid JSON: {what}", path=self.path, line=line)

    def value(self, i: int) -> tuple[Any, int]:
        c = self.text[i : i + 1]
        if c == "[":
            return self.array(i)
        if c == "{":
            return self.object(i)
        return self.raw(i)

    def raw(self, i: int) -> tuple[Any, int]:
        try:
            return self.decoder.raw_decode(self.text, i)
        except json.JSONDecodeError as e:
            raise InputError(f"not valid JSON: {e.msg}", path=self.path, line=e.lineno) from None

    def array(self, i: int) -> tuple[_Lined, int]:
        items = _Lined()
        i = self.ws(i + 1)
        if self.text[i : i + 1] == "]":
            return items, i + 1
        text, starts, sep, scan = self.text, [], _SEP.match, self.decoder.scan_once
        while True:
            start = i
            if text[i : i + 1] == "{":
                try:  # the C scanner itself: `raw_decode` only wraps it
                    obj, i = scan(text, i)
                except json.JSONDecodeError as e:
                    raise InputError(
                        f"not valid JSON: {e.msg}", path=self.path, line=e.lineno
                    ) from None
                except StopIteration as e:  # how the scanner says "Expecting value"
                    raise self.fail("expecting a value", e.value) from None
                if text.find("[", start, i) >= 0 and any(
                    isinstance(v, list) and v and isinstance(v[0], dict) for v in obj.values()
                ):
                    obj, i = self.object(start)  # walk it for the lines of its own arrays
            else:
                obj, i = self.value(i)
            items.append(obj)
            starts.append(start)
            m = sep(text, i)
            if m is not None:
                i = m.end()
                continue
            i = self.ws(i)
            if text[i : i + 1] != "]":
                raise self.fail("expected ',' or ']' after an array element", i)
            items.lines = self.lines(starts)
            return items, i + 1

    def lines(self, starts: list[int]) -> list[int]:
        """Line numbers of increasing positions, counted in one pass."""
        first = self.line(starts[0])
        count = self.text.count
        steps = [count("\n", a, b) for a, b in zip(starts, starts[1:], strict=False)]
        out = list(accumulate(steps, initial=first))
        self._pos, self._line = starts[-1], out[-1]
        return out

    def object(self, i: int) -> tuple[dict[str, Any], int]:
        out: dict[str, Any] = {}
        i = self.ws(i + 1)
        if self.text[i : i + 1] == "}":
            return out, i + 1
        while True:
            if self.text[i : i + 1] != '"':
                raise self.fail("expected a field name in double quotes", i)
            key, i = self.raw(i)
            i = self.ws(i)
            if self.text[i : i + 1] != ":":
                raise self.fail("expected ':' after a field name", i)
            out[key], i = self.value(self.ws(i + 1))
            i = self.ws(i)
            c = self.text[i : i + 1]
            if c == ",":
                i = self.ws(i + 1)
            elif c == "}":
                return out, i + 1
            else:
                raise self.fail("expected ',' or '}' after a field", i)


def _records_chunk(
    records: _Lined, names: list[str], opts: _Options, fixed: dict[str, Any] | None = None
) -> Chunk:
    """Columns `names` of a list of JSON objects (plus constant columns from `fixed`)."""
    fixed = fixed or {}
    keys = [n for n in names if n not in fixed]
    got: dict[str, Sequence[Any]] = {}
    if keys:
        getter = itemgetter(*keys)
        try:  # the usual case: every object has every field, spelled as in the first
            rows = [getter(rec) for rec in records]
        except (KeyError, TypeError):
            got = _records_slowly(records, keys, opts)
        else:
            columns = list(zip(*rows, strict=True)) if len(keys) > 1 else [rows]
            got = dict(zip(keys, columns, strict=True))
    n = len(records)
    cols = [_no_bools(got[name]) if name not in fixed else [fixed[name]] * n for name in names]
    return cols, records.lines


def _no_bools(col: Sequence[Any]) -> Sequence[Any]:
    """JSON true/false as text: numpy would read true as 1.0."""
    if bool not in set(map(type, col)):
        return col
    return [("true" if x else "false") if isinstance(x, bool) else x for x in col]


def _records_slowly(records: _Lined, keys: list[str], opts: _Options) -> dict[str, Sequence[Any]]:
    """Field by field, matching names without regard to case; a missing field is blank."""
    cols: dict[str, list[Any]] = {k: [] for k in keys}
    for n, (rec, line) in enumerate(zip(records, records.lines, strict=True), start=1):
        if not isinstance(rec, dict):
            raise _not_an_object(n, rec, line, opts)
        low = {k.lower(): v for k, v in rec.items()}
        for key in keys:
            cols[key].append(low.get(key))
    return cols


def _not_an_object(n: int, rec: Any, line: int, opts: _Options) -> InputError:
    return InputError(
        f'item {n} is not an object with named fields like {{"start": ..., "value": ...}}: '
        f"found {_shown(rec)}",
        path=opts.path,
        line=line,
    )


def _str_field(doc: dict[str, Any], key: str, opts: _Options) -> str | None:
    v = doc.get(key)
    if v is None:
        return None
    if not isinstance(v, str) or not v.strip():
        raise InputError(f"JSON field {key!r} must be a non-empty string", path=opts.path)
    return v.strip()


def _json_table(text: str, opts: _Options) -> _Table:
    doc = _JsonScan(text, opts.path).document()
    portal = _portal_answer(doc, opts)
    if portal is not None:
        return _Table([], iter(()), 0, True, json=True, ready=portal)
    if isinstance(doc, dict) and "entities" in doc and "readings" not in doc:
        return _klausj1_json(doc, opts)
    meta: dict[str, Any] = {}
    if isinstance(doc, dict):
        records = doc.get("readings")
        if not isinstance(records, _Lined):
            raise InputError(
                "a JSON object needs a 'readings' list (or klausj1's 'entities')", path=opts.path
            )
        meta = doc
    elif isinstance(doc, _Lined):
        records = doc
    else:
        raise InputError("JSON must be a list of readings or an object with them", path=opts.path)
    if not records:
        raise InputError("no readings in the JSON document", path=opts.path)
    first = records[0]
    if not isinstance(first, dict):
        raise _not_an_object(1, first, records.lines[0], opts)
    names = list(dict.fromkeys(k.lower() for k in first))
    kind = None
    if meta.get("kind") is not None:
        try:
            kind = Kind(str(meta["kind"]).lower())
        except ValueError:
            raise InputError(
                f"unknown kind {meta['kind']!r}: use one of {', '.join(k.value for k in Kind)}",
                path=opts.path,
            ) from None
    return _Table(
        names=names,
        chunks=iter([_records_chunk(records, names, opts)]),
        header_line=records.lines[0],
        comma_decimal=True,
        json=True,
        statistic_id=_str_field(meta, "statistic_id", opts),
        unit=_str_field(meta, "unit", opts),
        kind=kind,
        name=_str_field(meta, "name", opts),
    )


def _portal_answer(doc: Any, opts: _Options) -> list[Series] | None:
    """Wiener Netze `bewegungsdaten` and WattiVahti `meterdata2` answers saved as files."""
    if isinstance(doc, dict) and "descriptor" in doc and "values" in doc:
        from backdate.sources.wnsm import bewegungsdaten_file

        return bewegungsdaten_file(doc, opts.path)
    if isinstance(doc, dict) and "getconsumptionsresult" in doc:
        from backdate.sources.wattivahti import meterdata2_file

        return meterdata2_file(doc, opts.path, opts.tz)
    return None


def _klausj1_json(doc: dict[str, Any], opts: _Options) -> _Table:
    """`{"timezone_identifier"?, "entities": [{"id", "unit", "values": [{"datetime", ...}]}]}`."""
    entities = doc["entities"]
    if not isinstance(entities, _Lined) or not entities:
        raise InputError("'entities' must be a non-empty list", path=opts.path)
    value_names: list[str] = []
    for ent, line in zip(entities, entities.lines, strict=True):
        values = ent.get("values") if isinstance(ent, dict) else None
        if not isinstance(values, list):
            raise InputError(
                "each entity needs 'id', 'unit' and a 'values' list", path=opts.path, line=line
            )
        if values and not isinstance(values[0], dict):
            first_line = values.lines[0] if isinstance(values, _Lined) else line
            raise _not_an_object(1, values[0], first_line, opts)
        if values and not value_names:
            value_names = [k.lower() for k in values[0] if k.lower() not in ("datetime", "start")]
    names = ["statistic_id", "unit", "start", *value_names]

    def chunks() -> Iterator[Chunk]:
        for ent, line in zip(entities, entities.lines, strict=True):
            sid = ent.get("id") or ent.get("statistic_id")
            if not isinstance(sid, str) or not sid.strip():
                raise InputError("entity without an 'id'", path=opts.path, line=line)
            values = ent["values"]
            if not values:  # an empty list was decoded without line numbers
                continue
            rows = _Lined()
            rows.extend(
                {**v, "start": v.get("datetime", v.get("start"))} if isinstance(v, dict) else v
                for v in values
            )
            # Only lists of objects were walked for their lines; any other has no objects.
            rows.lines = values.lines if isinstance(values, _Lined) else [line] * len(values)
            yield _records_chunk(rows, names, opts, {"statistic_id": sid, "unit": ent.get("unit")})

    tz = doc.get("timezone_identifier")
    if tz is not None and not opts.tz:
        try:
            TimeParser(str(tz))
        except UsageError:
            raise InputError(f"unknown timezone_identifier {tz!r}", path=opts.path) from None
    return _Table(
        names=names,
        chunks=chunks(),
        header_line=entities.lines[0],
        comma_decimal=True,
        json=True,
        tz=str(tz) if tz else None,
    )
