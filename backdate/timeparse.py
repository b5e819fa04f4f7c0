"""Time strings from input files into UTC epoch seconds.

Inputs carry offsets (`2024-03-31T03:00:00+02:00`, `...Z`) or are naive local times that need a
named zone (PRODUCT.md, "Time"). Naive times are resolved with zoneinfo, but zoneinfo is slow per
call, so offsets are cached per local day and, on the few days with a daylight-saving change, per
local hour; only the changing hour itself takes the exact per-instant path:

- a local time the clocks skip (spring forward) is an error that names the line;
- a local time that occurs twice (fall back) is resolved by order: the earlier instant (fold=0)
  if that is later than the instant parsed just before, else the later one (fold=1). In-order
  input therefore keeps both 02:xx hours apart instead of merging them. The parser remembers
  the first such time (`repeated`), so a reader can refuse a file that is not in order: there
  the order says nothing and the two hours would be mixed up or merged.

`TimeParser.parse` handles one string; `TimeParser.parse_many` handles a column and, when all its
strings share one fixed-width layout (the normal case for machine-written files), parses them all
at once with numpy and falls back to `parse` line by line otherwise (which also finds the exact
line of any error).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

from backdate.errors import InputError, UsageError

_EPOCH = datetime(1970, 1, 1)
_DAY = 86400
_HOUR = 3600
# Numbers at or above this are epoch milliseconds (1e11 s is the year 5138; 1e11 ms is 1973).
_MS_THRESHOLD = 1e11
_DOTTED_FORMATS = ("%d.%m.%Y %H:%M", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y")
_ACCEPTED = (
    "ISO 8601 with offset (2024-01-31T23:00:00+01:00 or ...Z), 'YYYY-MM-DD HH:MM[:SS]', "
    "'DD.MM.YYYY HH:MM', a date 'YYYY-MM-DD', or epoch seconds/milliseconds"
)
_fromiso = datetime.fromisoformat
# The wall times datetime can hold (probes past them, at the ends of years 1 and 9999, clamp).
_MIN_WALL = (datetime.min - _EPOCH).total_seconds()
_MAX_WALL = (datetime.max - _EPOCH).total_seconds() - 1
# The last epoch second datetime can show (9999-12-31T23:59:59Z); later epoch values are errors.
_MAX_EPOCH = (datetime(9999, 12, 31, 23, 59, 59) - _EPOCH).total_seconds()


def _wall(dt: datetime) -> float:
    """Seconds of a naive datetime as if it were UTC (the local 'wall clock' value)."""
    return (dt - _EPOCH).total_seconds()


class TimeParser:
    """Turns the time strings of one column into UTC epoch seconds, resolving naive local times.

    One parser per column: the fold rule for repeated local hours compares with the previous
    instant parsed by the same parser.
    """

    def __init__(self, tz: str | None, fmt: str | None = None, path: str = "") -> None:
        self.tz = tz
        self.fmt = fmt
        self.path = path
        self._zone: ZoneInfo | None = None
        if tz:
            try:
                self._zone = ZoneInfo(tz)
            except (ZoneInfoNotFoundError, ValueError, OSError) as e:
                raise UsageError(
                    f"unknown time zone {tz!r}: use an IANA name such as Europe/Vienna"
                ) from e
        self._prev: float | None = None  # last instant returned, for the fold rule
        self._days: dict[int, float] = {}  # local day -> offset seconds, NaN if it changes
        self._hours: dict[int, float] = {}  # local hour -> offset seconds, NaN if it changes
        self._midnights: dict[int, tuple[float, float]] = {}  # local day -> offsets at 00:00
        # (wall, offset fold=0, offset fold=1) of the first repeated local time resolved by order
        self.repeated: tuple[float, float, float] | None = None

    def _error(self, message: str, line: int) -> InputError:
        if self.path:
            return InputError(message, path=self.path, line=line)
        return InputError(f"line {line}: {message}", line=line)

    # -- one string -------------------------------------------------------------------------

    def parse(self, text: str, line: int) -> float:
        """UTC epoch seconds of `text`; InputError naming `line` if it is no valid time."""
        s = text.strip()
        if not s:
            raise self._error("blank time", line)
        if self.fmt is not None:
            t = self._parse_fmt(s, line)
        elif s.isdecimal() and len(s) >= 9:
            t = self._epoch(s, line)
        else:
            try:
                dt = _fromiso(s)
            except ValueError:
                dt = self._parse_other(s, line)
            if isinstance(dt, float):
                t = dt
            else:
                off = dt.utcoffset()
                if off is not None:
                    t = _wall(dt.replace(tzinfo=None)) - off.total_seconds()
                else:
                    t = self._local(_wall(dt), s, line)
        self._prev = t
        return t

    def _parse_fmt(self, s: str, line: int) -> float:
        assert self.fmt is not None
        try:
            dt = datetime.strptime(s, self.fmt)
        except ValueError:
            raise self._error(f"time {s!r} does not match the format {self.fmt!r}", line) from None
        off = dt.utcoffset()
        if off is not None:
            return _wall(dt.replace(tzinfo=None)) - off.total_seconds()
        return self._local(_wall(dt), s, line)

    def _parse_other(self, s: str, line: int) -> datetime | float:
        """The forms `fromisoformat` does not take: DD.MM.YYYY and fractional epoch numbers."""
        head, dot, tail = s.partition(".")
        if dot and head.isdecimal() and len(head) >= 9 and (tail.isdecimal() or not tail):
            return self._epoch(s, line)
        if len(s) >= 10 and s[2] == "." and s[5] == ".":
            try:
                return _fromiso(f"{s[6:10]}-{s[3:5]}-{s[0:2]}{s[10:]}")
            except ValueError:
                pass
        if "." in s[:3]:
            for fmt in _DOTTED_FORMATS:
                try:
                    return datetime.strptime(s, fmt)
                except ValueError:
                    continue
        raise self._error(f"cannot read time {s!r}: expected {_ACCEPTED}", line)

    def _epoch(self, s: str, line: int) -> float:
        t = _epoch(float(s))
        if not t <= _MAX_EPOCH:
            raise self._error(f"time {s!r} is beyond the year 9999 as epoch seconds", line)
        return t

    # -- naive local time ---------------------------------------------------------------------

    def _naive_error(self, s: str, line: int) -> InputError:
        return self._error(
            f"naive time {s!r} has no UTC offset and needs --tz ZONE (e.g. --tz Europe/Vienna)",
            line,
        )

    def _local(self, wall: float, s: str, line: int) -> float:
        if self._zone is None:
            raise self._naive_error(s, line)
        off = self._day(int(wall // _DAY))
        if off == off:  # not NaN: the whole day has one offset
            return wall - off
        return self._resolve(wall, s, line, self._prev)

    def _offsets(self, wall: float) -> tuple[float, float]:
        """UTC offsets (fold=0, fold=1) in seconds of the local wall time `wall`."""
        assert self._zone is not None
        dt = _EPOCH + timedelta(seconds=min(max(wall, _MIN_WALL), _MAX_WALL))
        o0 = self._zone.utcoffset(dt)
        o1 = self._zone.utcoffset(dt.replace(fold=1))
        return o0.total_seconds(), o1.total_seconds()

    def _midnight(self, day: int) -> tuple[float, float]:
        got = self._midnights.get(day)
        if got is None:
            got = self._midnights[day] = self._offsets(day * _DAY)
        return got

    def _day(self, day: int) -> float:
        off = self._days.get(day)
        return self._day_offset(day) if off is None else off

    def _day_offset(self, day: int) -> float:
        """The offset of a whole local day, or NaN if the day has (or touches) a clock change.

        Compares this midnight with the next one, so each midnight is looked up once; a day
        would need two changes that cancel out to fool it, which no zone has.
        """
        a0, a1 = self._midnight(day)
        b0, b1 = self._midnight(day + 1)
        off = a0 if a0 == a1 == b0 == b1 else math.nan
        self._days[day] = off
        return off

    def _hour_offset(self, hour: int) -> float:
        """The offset of a whole local hour, or NaN if the clocks change within it."""
        a0, a1 = self._offsets(hour * _HOUR)
        b0, b1 = self._offsets((hour + 1) * _HOUR - 1e-6)
        off = a0 if a0 == a1 == b0 == b1 else math.nan
        self._hours[hour] = off
        return off

    def _resolve(self, wall: float, s: str, line: int, prev: float | None) -> float:
        """Exact path for days with a clock change: per hour, then per instant in the change."""
        hour = int(wall // _HOUR)
        off = self._hours.get(hour)
        if off is None:
            off = self._hour_offset(hour)
        if off == off:
            return wall - off
        o0, o1 = self._offsets(wall)
        if o0 == o1:
            return wall - o0
        if o0 < o1:
            raise self._error(
                f"impossible local time {s!r} in {self.tz}: the clocks skip it "
                "(daylight saving time starts); give the time with its UTC offset",
                line,
            )
        if self.repeated is None:
            self.repeated = (wall, o0, o1)
        earlier, later = wall - o0, wall - o1
        return earlier if prev is None or earlier > prev else later

    def repeated_hour(self) -> str:
        """The span `repeated` lies in, e.g. '02:00-03:00 of 2026-10-25 (Europe/Vienna)'."""
        assert self.repeated is not None and self._zone is not None
        wall, o0, o1 = self.repeated
        # The clock change is an instant in (wall - o0, wall - o1]: find it to the second.
        lo, hi = math.floor(wall - o0), math.ceil(wall - o1)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            offset = datetime.fromtimestamp(mid, self._zone).utcoffset()
            if offset is not None and offset.total_seconds() == o0:
                lo = mid
            else:
                hi = mid
        first = _EPOCH + timedelta(seconds=hi + o1)
        last = _EPOCH + timedelta(seconds=hi + o0)
        return f"{first:%H:%M}-{last:%H:%M} of {first:%Y-%m-%d} ({self.tz})"

    # -- a whole column -----------------------------------------------------------------------

    def parse_many(self, texts: Sequence[str], lines: Sequence[int]) -> np.ndarray:
        """UTC epoch seconds of every string in `texts` (same rules as `parse`, in order)."""
        n = len(texts)
        if n == 0:
            return np.empty(0, dtype=np.float64)
        fast = _fixed_width(texts) if self.fmt is None else None
        if fast is None:
            out = np.empty(n, dtype=np.float64)
            for i, (text, line) in enumerate(zip(texts, lines, strict=True)):
                out[i] = self.parse(text, line)
            return out
        seconds, aware = fast
        if not aware:
            seconds = self._localize(seconds, texts, lines)
        self._prev = float(seconds[-1])
        return seconds

    def _localize(self, wall: np.ndarray, texts: Sequence[str], lines: Sequence[int]) -> np.ndarray:
        if self._zone is None:
            raise self._naive_error(texts[0].strip(), lines[0])
        days = np.floor_divide(wall, _DAY).astype(np.int64)
        lo, hi = int(days.min()), int(days.max())
        if hi - lo <= 2 * len(days) + 366:  # dense: a table over the whole span
            table = np.array([self._day(d) for d in range(lo, hi + 1)], dtype=np.float64)
            off = table[days - lo]
        else:
            uniq, inverse = np.unique(days, return_inverse=True)
            table = np.array([self._day(d) for d in uniq.tolist()], dtype=np.float64)
            off = table[inverse]
        out = wall - off
        prev = self._prev
        for i in np.flatnonzero(np.isnan(off)).tolist():
            before = float(out[i - 1]) if i > 0 else prev
            out[i] = self._resolve(float(wall[i]), texts[i].strip(), lines[i], before)
        return out


def _epoch(value: float) -> float:
    return value / 1000.0 if value >= _MS_THRESHOLD else value


# -- fixed-width vectorised parsing --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each field sits in a fixed-width timestamp string."""

    length: int
    year: int
    month: int
    day: int
    hour: int | None = None
    minute: int | None = None
    second: int | None = None
    frac: tuple[int, int] | None = None  # (position, digits)
    tz: str = "naive"  # naive | Z | colon (+HH:MM) | compact (+HHMM) | epoch
    tzpos: int = 0
    seps: tuple[tuple[int, bytes], ...] = ()


def _layout(s: str) -> _Layout | None:
    """The layout of `s` if it is one `TimeParser.parse` reads the same way; else None."""
    n = len(s)
    if n >= 9 and s.isdecimal():
        return _Layout(n, 0, 0, 0, tz="epoch")
    if n < 10:
        return None
    if s[4] == "-" and s[7] == "-":
        year, month, day, seps = 0, 5, 8, [(4, b"-"), (7, b"-")]
    elif s[2] == "." and s[5] == ".":
        year, month, day, seps = 6, 3, 0, [(2, b"."), (5, b".")]
    else:
        return None
    if n == 10:
        return _Layout(n, year, month, day, seps=tuple(seps))
    if n < 16 or s[10] not in "T " or s[13] != ":":
        return None
    seps += [(10, b"T "), (13, b":")]
    hour, minute, second, frac, pos = 11, 14, None, None, 16
    if n > 16 and s[16] == ":":
        if n < 19:
            return None
        seps.append((16, b":"))
        second, pos = 17, 19
        if n > 19 and s[19] == ".":
            k = 0
            while 20 + k < n and s[20 + k].isdigit():
                k += 1
            if not 1 <= k <= 6:
                return None
            seps.append((19, b"."))
            frac, pos = (20, k), 20 + k
    tail = s[pos:]
    if not tail:
        tz = "naive"
    elif tail == "Z":
        tz = "Z"
        seps.append((pos, b"Z"))
    elif len(tail) == 6 and tail[0] in "+-" and tail[3] == ":":
        tz = "colon"
        seps += [(pos, b"+-"), (pos + 3, b":")]
    elif len(tail) == 5 and tail[0] in "+-":
        tz = "compact"
        seps.append((pos, b"+-"))
    else:
        return None
    return _Layout(n, year, month, day, hour, minute, second, frac, tz, pos, tuple(seps))


_DAYS_IN_MONTH = np.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], dtype=np.int64)


def _fixed_width(texts: Sequence[str]) -> tuple[np.ndarray, bool] | None:
    """Parse strings that all share the first one's layout, without a Python loop per line.

    Returns (seconds, aware): UTC seconds if aware, else local wall seconds. None when the
    strings are not uniform or any field is out of range; the caller then goes line by line,
    which reports the exact line.
    """
    lay = _layout(texts[0])
    if lay is None:
        return None
    n = len(texts)
    lengths = np.fromiter(map(len, texts), dtype=np.int64, count=n)
    if lengths.min() != lay.length or lengths.max() != lay.length:
        return None
    try:
        raw = "".join(texts).encode("ascii")
    except UnicodeEncodeError:
        return None
    a = np.frombuffer(raw, dtype=np.uint8).reshape(n, lay.length)
    digit_cols = np.ones(lay.length, dtype=bool)
    for pos, allowed in lay.seps:
        digit_cols[pos] = False
        col = a[:, pos]
        ok = col == allowed[0]
        for b in allowed[1:]:
            ok |= col == b
        if not ok.all():
            return None
    if not ((a[:, digit_cols] - np.uint8(48)) <= 9).all():
        return None
    if lay.tz == "epoch":
        values = np.array(texts, dtype=np.float64)
        seconds = np.where(values >= _MS_THRESHOLD, values / 1000.0, values)
        if not (seconds <= _MAX_EPOCH).all():
            return None  # line by line names the first one too far out
        return seconds, True

    def num(pos: int, width: int) -> np.ndarray:
        v = a[:, pos].astype(np.int64) - 48
        for k in range(1, width):
            v = v * 10 + (a[:, pos + k].astype(np.int64) - 48)
        return v

    y, m, d = num(lay.year, 4), num(lay.month, 2), num(lay.day, 2)
    if not ((m >= 1) & (m <= 12) & (y >= 1)).all():
        return None
    leap = (y % 4 == 0) & ((y % 100 != 0) | (y % 400 == 0))
    if not ((d >= 1) & (d <= _DAYS_IN_MONTH[m - 1] + (leap & (m == 2)))).all():
        return None
    # Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
    yy = y - (m <= 2)
    era = np.floor_divide(yy, 400)
    yoe = yy - era * 400
    doy = (153 * ((m + 9) % 12) + 2) // 5 + d - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    secs = days * _DAY
    if lay.hour is not None and lay.minute is not None:
        hh, mm = num(lay.hour, 2), num(lay.minute, 2)
        if not ((hh <= 23) & (mm <= 59)).all():
            return None
        secs = secs + hh * _HOUR + mm * 60
    if lay.second is not None:
        ss = num(lay.second, 2)
        if not (ss <= 59).all():
            return None
        secs = secs + ss
    out = secs.astype(np.float64)
    if lay.frac is not None:
        pos, k = lay.frac
        out += num(pos, k) / 10.0**k
    if lay.tz == "naive":
        return out, False
    if lay.tz == "Z":
        return out, True
    p = lay.tzpos
    oh = num(p + 1, 2)
    om = num(p + 4, 2) if lay.tz == "colon" else num(p + 3, 2)
    if not ((oh <= 23) & (om <= 59)).all():
        return None
    sign = np.where(a[:, p] == ord("-"), -1, 1)
    return out - sign * (oh * _HOUR + om * 60), True
