"""Input readers: every format, every kind of bad input, and daylight-saving days."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import numpy as np
import pytest

from backdate.errors import InputError, UsageError
from backdate.models import HOUR, Kind
from backdate.sources import files
from backdate.sources.files import read_file
from backdate.timeparse import TimeParser

VIENNA = "Europe/Vienna"


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def error(path: Path, line: int | None = None, **kwargs: object) -> InputError:
    """The InputError reading `path` raises; it must name the file and, if given, the line."""
    with pytest.raises(InputError) as info:
        read_file(path, **kwargs)  # type: ignore[arg-type]
    err = info.value
    assert path.name in str(err)
    if line is not None:
        assert err.line == line, str(err)
        assert f"{path}:{line}:" in str(err)
    return err


# -- canonical CSV ---------------------------------------------------------------------------


def test_canonical_csv_with_offsets(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.csv",
        "start,kwh\n2024-01-01T00:00:00+01:00,0.5\n2024-01-01T00:15:00+01:00,0.25\n",
    )
    [s] = read_file(path)
    assert s.source == str(path)
    assert s.times.tolist() == [utc(2023, 12, 31, 23), utc(2023, 12, 31, 23, 15)]
    assert s.values.tolist() == [0.5, 0.25]
    assert s.lines.tolist() == [2, 3]
    assert s.kind is Kind.DELTA and s.unit == "kWh"
    assert s.ends is None and s.statistic_id is None


@pytest.mark.parametrize(
    ("column", "kind"),
    [
        ("delta", Kind.DELTA),
        ("kwh", Kind.DELTA),
        ("reading", Kind.CUMULATIVE),
        ("sum", Kind.CUMULATIVE),
        ("value", None),
        ("VALUE", None),
    ],
)
def test_value_column_name_implies_kind(tmp_path: Path, column: str, kind: Kind | None) -> None:
    path = write(tmp_path, "k.csv", f"time,{column}\n2024-01-01T00:00:00Z,1\n")
    [s] = read_file(path)
    assert s.kind is kind


def test_kind_flag_decides(tmp_path: Path) -> None:
    path = write(tmp_path, "k.csv", "timestamp,value\n2024-01-01T00:00:00Z,1\n")
    [s] = read_file(path, kind=Kind.POWER)
    assert s.kind is Kind.POWER
    [s] = read_file(
        write(tmp_path, "r.csv", "date,reading\n2024-01-01,5\n"), kind=Kind.DELTA, tz="UTC"
    )
    assert s.kind is Kind.DELTA


def test_column_override(tmp_path: Path) -> None:
    path = write(tmp_path, "o.csv", "when,energy,start\n2024-01-01T00:00:00Z,1.5,x\n")
    [s] = read_file(path, time_column="When", value_column="energy")
    assert s.times.tolist() == [utc(2024, 1, 1)] and s.values.tolist() == [1.5]
    assert s.kind is None
    err = error(path, 1, time_column="missing", value_column="energy")
    assert "'missing'" in str(err) and "when, energy, start" in str(err)


@pytest.mark.parametrize("delim", [";", "\t"])
def test_decimal_comma(tmp_path: Path, delim: str) -> None:
    text = f"start{delim}delta\n2024-01-01T00:00:00Z{delim}1,5\n2024-01-01T00:15:00Z{delim}2\n"
    [s] = read_file(write(tmp_path, "d.tsv", text))
    assert s.values.tolist() == [1.5, 2.0]


def test_decimal_comma_refused_with_comma_delimiter(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", 'start,delta\n2024-01-01T00:00:00Z,"1,5"\n')
    err = error(path, 2)
    assert "decimal comma" in str(err)


def test_ambiguous_number(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "start;delta\n2024-01-01T00:00:00Z;1.234,5\n")
    assert "ambiguous" in str(error(path, 2))


def test_end_column_fills_ends(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.csv",
        "start,end,delta\n2024-01-01T00:00:00Z,2024-01-01T00:15:00Z,1\n2024-01-01T00:15:00Z,,2\n",
    )
    [s] = read_file(path)
    assert s.ends is not None
    assert s.ends[0] == utc(2024, 1, 1, 0, 15) and np.isnan(s.ends[1])


def test_end_not_after_start(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.csv",
        "start,end,delta\n2024-01-01T00:00:00Z,2024-01-01T00:15:00Z,1\n"
        "2024-01-01T01:00:00Z,2024-01-01T01:00:00Z,1\n",
    )
    assert "end" in str(error(path, 3))


def test_mean_min_max(tmp_path: Path) -> None:
    path = write(tmp_path, "m.csv", "start,mean,min,max\n2024-01-01T00:00:00Z,20.5,19,22\n")
    [s] = read_file(path)
    assert s.kind is Kind.MEAN
    assert s.mins is not None and s.maxs is not None
    assert (s.values[0], s.mins[0], s.maxs[0]) == (20.5, 19.0, 22.0)


def test_unit_column(tmp_path: Path) -> None:
    ok = write(
        tmp_path,
        "u.csv",
        "start,delta,unit\n2024-01-01T00:00:00Z,1,Wh\n2024-01-01T01:00:00Z,2,Wh\n",
    )
    assert read_file(ok)[0].unit == "Wh"
    assert read_file(ok, unit="Wh")[0].unit == "Wh"
    assert "--unit kWh" in str(error(ok, unit="kWh"))
    bad = write(
        tmp_path,
        "v.csv",
        "start,delta,unit\n2024-01-01T00:00:00Z,1,Wh\n2024-01-01T01:00:00Z,2,kWh\n",
    )
    err = error(bad, 3)
    assert "'Wh'" in str(err) and "'kWh'" in str(err)


def test_unit_flag_without_unit_column(tmp_path: Path) -> None:
    path = write(tmp_path, "u.csv", "start,kwh\n2024-01-01T00:00:00Z,1\n")
    assert read_file(path, unit="Wh")[0].unit == "Wh"  # 'kwh' only implies the unit
    path = write(tmp_path, "w.csv", "start,value\n2024-01-01T00:00:00Z,1\n")
    assert read_file(path)[0].unit is None


def test_quoted_fields_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "q.csv"
    path.write_bytes(
        b'"start","delta"\r\n"2024-01-01T00:00:00Z","1.5"\r\n\r\n"2024-01-01T00:15:00Z","x"\r\n'
    )
    error(path, 4)
    path.write_bytes(b"start,delta\r\n2024-01-01T00:00:00Z,1.5\r\n2024-01-01T00:15:00Z,2\r\n")
    [s] = read_file(path)
    assert s.values.tolist() == [1.5, 2.0] and s.lines.tolist() == [2, 3]


def test_utf8_bom_and_blank_lines(tmp_path: Path) -> None:
    path = tmp_path / "b.csv"
    path.write_bytes(
        "\ufeff\nstart,delta\n2024-01-01T00:00:00Z,1\n\n2024-01-01T00:15:00Z,2\n\n".encode()
    )
    [s] = read_file(path)
    assert s.lines.tolist() == [3, 5]


def test_epoch_seconds_and_milliseconds(tmp_path: Path) -> None:
    path = write(tmp_path, "e.csv", "timestamp,delta\n1704067200,1\n1704068100000,2\n")
    [s] = read_file(path)
    assert s.times.tolist() == [utc(2024, 1, 1), utc(2024, 1, 1, 0, 15)]


def test_date_alone_is_local_midnight(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "date,delta\n2024-01-01,1\n2024-07-01,2\n")
    [s] = read_file(path, tz=VIENNA)
    assert s.times.tolist() == [utc(2023, 12, 31, 23), utc(2024, 6, 30, 22)]


def test_klausj1_style_dotted_time_in_canonical_csv(tmp_path: Path) -> None:
    path = write(tmp_path, "d.csv", "start;delta\n31.12.2024 23:00;1\n")
    [s] = read_file(path, tz=VIENNA)
    assert s.times.tolist() == [utc(2024, 12, 31, 22)]


def test_unsorted_input_is_sorted_keeping_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "u.csv",
        "start,delta\n2024-01-01T02:00:00Z,3\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,2\n",
    )
    [s] = read_file(path)
    assert s.values.tolist() == [1, 2, 3]
    assert s.lines.tolist() == [3, 4, 2]
    assert np.all(np.diff(s.times) > 0)


def test_same_value_twice_is_dropped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.csv",
        "start,delta\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,2\n2024-01-01T00:00:00Z,1\n",
    )
    [s] = read_file(path)
    assert s.values.tolist() == [1, 2] and s.lines.tolist() == [2, 3]


def test_same_time_twice_with_different_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.csv",
        "start,delta\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,2\n2024-01-01T00:00:00Z,5\n",
    )
    err = error(path, 4)
    assert "twice" in str(err) and "line 2" in str(err)


def test_same_instant_written_with_two_offsets_is_a_duplicate(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.csv",
        "start,delta\n2024-01-01T01:00:00+01:00,1\n2024-01-01T00:00:00Z,2\n",
    )
    error(path, 3)


# -- bad input -------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    err = error(tmp_path / "nope.csv")
    assert "not found" in str(err)


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.csv").mkdir()
    error(tmp_path / "dir.csv")


@pytest.mark.parametrize("text", ["", "\n  \n\t\n"])
def test_empty_file(tmp_path: Path, text: str) -> None:
    assert "empty" in str(error(write(tmp_path, "e.csv", text)))


def test_header_without_rows(tmp_path: Path) -> None:
    assert "no data rows" in str(error(write(tmp_path, "h.csv", "start,delta\n\n"), 1))


def test_no_header(tmp_path: Path) -> None:
    path = write(tmp_path, "n.csv", "2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,2\n")
    assert "no header" in str(error(path, 1))


def test_unknown_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "c.csv", "Zeit;Wert\n2024-01-01T00:00:00Z;1\n")
    msg = str(error(path, 1))
    assert "'Zeit'" in msg and "'Wert'" in msg
    assert "start, time, timestamp, date" in msg and "--time-column" in msg
    path = write(tmp_path, "v.csv", "start,Wert\n2024-01-01T00:00:00Z,1\n")
    msg = str(error(path, 1))
    assert "value, delta, kwh, reading, sum" in msg and "--value-column" in msg


@pytest.mark.parametrize(
    ("cell", "words"),
    [
        ("abc", "text in a number"),
        ("nan", "not a finite"),
        ("inf", "not a finite"),
        ("-Infinity", "not a finite"),
        ("", "blank value"),
        ("  ", "blank value"),
    ],
)
def test_bad_numbers(tmp_path: Path, cell: str, words: str) -> None:
    path = write(
        tmp_path,
        "n.csv",
        f"start,delta\n2024-01-01T00:00:00Z,1\n2024-01-01T00:15:00Z,{cell}\n"
        "2024-01-01T00:30:00Z,1\n",
    )
    err = error(path, 3)
    assert words in str(err) and "'delta'" in str(err)


def test_bad_time(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "start,delta\n2024-01-01T00:00:00Z,1\nyesterday,2\n")
    assert "'yesterday'" in str(error(path, 3))
    path = write(
        tmp_path, "t2.csv", "start,delta\n2024-01-01T00:00:00Z,1\n2024-02-30T00:00:00Z,2\n"
    )
    error(path, 3)
    path = write(tmp_path, "t3.csv", "start,delta\n2024-01-01T00:00:00Z,1\n ,2\n")
    assert "blank time" in str(error(path, 3))


def test_earliest_bad_line_wins_across_columns(tmp_path: Path) -> None:
    path = write(tmp_path, "t.csv", "start,delta\n2024-01-01T00:00:00Z,x\n2024-13-01T00:00:00Z,1\n")
    error(path, 2)


def test_wrong_number_of_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path, "f.csv", "start,delta\n2024-01-01T00:00:00Z,1\n2024-01-01T01:00:00Z,1,9\n"
    )
    assert "3 fields, more than the header's 2" in str(error(path, 3))
    # a short line and a long one must not cancel out
    path = write(tmp_path, "g.csv", "start,delta\n2024-01-01T00:00:00Z\n2024-01-01T01:00:00Z,1,9\n")
    error(path, 2)


def test_naive_time_needs_tz(tmp_path: Path) -> None:
    path = write(tmp_path, "n.csv", "start,delta\n2024-01-01T00:00:00Z,1\n2024-01-01 01:00,1\n")
    assert "--tz" in str(error(path, 3))


def test_unknown_tz(tmp_path: Path) -> None:
    path = write(tmp_path, "n.csv", "start,delta\n2024-01-01 01:00,1\n")
    with pytest.raises(UsageError):
        read_file(path, tz="Mars/Olympus")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_bytes(b"start,delta,unit\n2024-01-01T00:00:00Z,1,m\xb3\n")
    assert "UTF-8" in str(error(path))


def test_line_numbers_across_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "BLOCK_CHARS", 64)
    rows = [f"2024-01-01T{h:02d}:00:00Z,{h}" for h in range(24)]
    rows[17] = "2024-01-01T17:00:00Z,bad"
    path = write(tmp_path, "b.csv", "start,delta\n" + "\n".join(rows) + "\n")
    error(path, 19)
    rows[17] = "2024-01-01T17:00:00Z,17"
    [s] = read_file(write(tmp_path, "c.csv", "start,delta\n" + "\n".join(rows) + "\n"))
    assert s.lines.tolist() == list(range(2, 26)) and s.values.tolist() == list(range(24))


def test_quoted_rows_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files, "CHUNK_ROWS", 3)
    rows = [f'"2024-01-01T{h:02d}:00:00Z","{h}"' for h in range(10)]
    [s] = read_file(write(tmp_path, "q.csv", "start,delta\n" + "\n".join(rows)))
    assert s.lines.tolist() == list(range(2, 12))


# -- daylight saving time --------------------------------------------------------------------


def quarter_hours(day: datetime, zone: str) -> list[datetime]:
    """Every quarter-hour of a local day, as aware datetimes in order."""
    tz = ZoneInfo(zone)
    start = day.replace(tzinfo=tz).astimezone(UTC)
    end = (day + timedelta(days=1)).replace(tzinfo=tz).astimezone(UTC)
    out = []
    t = start
    while t < end:
        out.append(t.astimezone(tz))
        t += timedelta(minutes=15)
    return out


def dst_file(tmp_path: Path, day: datetime, naive: bool) -> Path:
    stamps = [
        q.strftime("%Y-%m-%d %H:%M") if naive else q.isoformat() for q in quarter_hours(day, VIENNA)
    ]
    body = "".join(f"{s},0.25\n" for s in stamps)
    return write(tmp_path, f"dst-{naive}.csv", "start,delta\n" + body)


@pytest.mark.parametrize("naive", [True, False])
def test_spring_forward_day_has_92_quarter_hours(tmp_path: Path, naive: bool) -> None:
    path = dst_file(tmp_path, datetime(2024, 3, 31), naive)
    [s] = read_file(path, tz=VIENNA if naive else None)
    assert len(s) == 92
    assert s.times[0] == utc(2024, 3, 30, 23)
    assert s.times[-1] == utc(2024, 3, 31, 21, 45)
    assert np.all(np.diff(s.times) == 900)


@pytest.mark.parametrize("naive", [True, False])
def test_fall_back_day_has_100_quarter_hours(tmp_path: Path, naive: bool) -> None:
    path = dst_file(tmp_path, datetime(2024, 10, 27), naive)
    text = path.read_text()
    assert text.count("2024-10-27 02:00,") == (2 if naive else 0)
    [s] = read_file(path, tz=VIENNA if naive else None)
    assert len(s) == 100
    assert s.times[0] == utc(2024, 10, 26, 22)
    assert s.times[-1] == utc(2024, 10, 27, 22, 45)
    assert np.all(np.diff(s.times) == 900)  # both 02:xx hours kept, none merged


def test_impossible_local_time(tmp_path: Path) -> None:
    path = write(tmp_path, "gap.csv", "start,delta\n2024-03-31 01:45,1\n2024-03-31 02:30,1\n")
    err = error(path, 3, tz=VIENNA)
    assert "impossible local time '2024-03-31 02:30'" in str(err)


def test_repeated_hour_resolved_by_order_line_by_line() -> None:
    """Mixed layouts take the per-line path; it must follow the same fold rule."""
    p = TimeParser(VIENNA)
    texts = [
        "2024-10-27 01:45",
        "2024-10-27T02:00",
        "2024-10-27 02:30:00",
        "2024-10-27 02:00",
        "2024-10-27T02:30:00",
        "2024-10-27 03:00",
    ]
    got = [p.parse(t, i) for i, t in enumerate(texts, 1)]
    assert got == [
        utc(2024, 10, 26, 23, 45),
        utc(2024, 10, 27, 0),
        utc(2024, 10, 27, 0, 30),
        utc(2024, 10, 27, 1),
        utc(2024, 10, 27, 1, 30),
        utc(2024, 10, 27, 2),
    ]


def test_klausj1_hourly_fall_back(tmp_path: Path) -> None:
    rows = ["01:00", "02:00", "02:00", "03:00"]
    body = "".join(f"sensor:e\t27.10.2024 {r}\tkWh\t{i}\n" for i, r in enumerate(rows))
    path = write(tmp_path, "k.tsv", "statistic_id\tstart\tunit\tdelta\n" + body)
    [s] = read_file(path, tz=VIENNA)
    assert s.times.tolist() == [
        utc(2024, 10, 26, 23),
        utc(2024, 10, 27, 0),
        utc(2024, 10, 27, 1),
        utc(2024, 10, 27, 2),
    ]


def test_parse_many_matches_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The vectorised path and the line-by-line path agree on every layout they share."""
    zone = ZoneInfo(VIENNA)

    def exists(d: datetime) -> bool:  # not in a spring-forward gap
        return d.replace(tzinfo=zone).astimezone(UTC).astimezone(zone).replace(tzinfo=None) == d

    rng = np.random.default_rng(7)
    base = datetime(2020, 1, 1)
    minutes = np.sort(rng.integers(0, 2_500_000, 400)).tolist()
    instants = [d for d in (base + timedelta(minutes=m) for m in minutes) if exists(d)]
    instants += [datetime(2024, 10, 27, 2, 30), datetime(2024, 10, 27, 2, 30)]  # fall back
    layouts = [
        lambda d: d.strftime("%Y-%m-%d %H:%M"),
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S"),
        lambda d: d.strftime("%d.%m.%Y %H:%M"),
        lambda d: d.strftime("%Y-%m-%d"),
        lambda d: d.replace(tzinfo=zone).isoformat(),
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        lambda d: d.replace(tzinfo=zone).strftime("%Y-%m-%d %H:%M%z"),
        lambda d: str(int(d.replace(tzinfo=UTC).timestamp())),
        lambda d: str(int(d.replace(tzinfo=UTC).timestamp() * 1000)),
    ]
    for fmt in layouts:
        texts = [fmt(d) for d in instants]
        lines = list(range(1, len(texts) + 1))
        one = TimeParser(VIENNA)
        expected = [one.parse(t, n) for t, n in zip(texts, lines, strict=True)]
        with monkeypatch.context() as m:
            m.setattr(TimeParser, "parse", lambda *a: pytest.fail("not vectorised"))
            many = TimeParser(VIENNA).parse_many(texts, lines)
        assert many.tolist() == expected, texts[0]


def test_time_parser_forms() -> None:
    p = TimeParser(VIENNA)
    assert p.parse("2024-01-01T00:00:00Z", 1) == utc(2024, 1, 1)
    assert p.parse("2024-01-01T01:00:00+01:00", 1) == utc(2024, 1, 1)
    assert p.parse("2024-01-01 01:00", 1) == utc(2024, 1, 1)
    assert p.parse("01.01.2024 01:00", 1) == utc(2024, 1, 1)
    assert p.parse("1.1.2024 1:00", 1) == utc(2024, 1, 1)
    assert p.parse("1704067200.5", 1) == utc(2024, 1, 1) + 0.5
    assert TimeParser(None, "%Y%m%d%H%M%z").parse("202401010100+0100", 1) == utc(2024, 1, 1)
    q = TimeParser(VIENNA, "%d/%m/%Y %H:%M")
    assert q.parse("01/01/2024 01:00", 5) == utc(2024, 1, 1)
    with pytest.raises(InputError, match="line 5"):
        q.parse("2024-01-01 01:00", 5)
    with pytest.raises(InputError, match="--tz"):
        TimeParser(None).parse("2024-01-01 01:00", 1)


# -- JSON ------------------------------------------------------------------------------------


def test_json_list_with_lines(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "a.json",
        '[\n  {"start": "2024-01-01T00:00:00Z", "delta": 1},\n'
        '  {"start": 1704070800, "delta": "2,5"}\n]\n',
    )
    [s] = read_file(path)
    assert s.kind is Kind.DELTA
    assert s.times.tolist() == [utc(2024, 1, 1), utc(2024, 1, 1, 1)]
    assert s.values.tolist() == [1.0, 2.5]
    assert s.lines.tolist() == [2, 3]


def test_json_object_with_readings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "b.json",
        '{"statistic_id": "backdate:grid", "unit": "Wh", "kind": "cumulative", "name": "Grid",\n'
        ' "readings": [\n'
        '   {"time": "2024-01-01T00:00:00Z", "value": 100},\n'
        '   {"time": "2024-01-01T01:00:00Z", "value": 150}\n'
        " ]}\n",
    )
    [s] = read_file(path)
    assert (s.statistic_id, s.unit, s.kind, s.name) == (
        "backdate:grid",
        "Wh",
        Kind.CUMULATIVE,
        "Grid",
    )
    assert s.lines.tolist() == [3, 4]
    assert "--kind delta" in str(error(path, kind=Kind.DELTA))


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("null", "blank value"),
        ('"abc"', "text in a number"),
        ("true", "text in a number"),
        ("[1]", "not a number"),
        ('"NaN"', "not a finite"),
    ],
)
def test_json_bad_values_name_the_line(tmp_path: Path, value: str, words: str) -> None:
    path = write(
        tmp_path,
        "c.json",
        '[\n {"start": "2024-01-01T00:00:00Z", "delta": 1},\n\n'
        f' {{"start": "2024-01-01T01:00:00Z", "delta": {value}}}\n]',
    )
    assert words in str(error(path, 4))


def test_json_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "d.json",
        '[\n {"start": "2024-01-01T00:00:00Z", "delta": 1},\n'
        ' {"start": "2024-01-01T01:00:00Z" "delta": 2}\n]',
    )
    assert "not valid JSON" in str(error(path, 3))
    path = write(tmp_path, "e.json", '[\n {"start": "2024-01-01T00:00:00Z",\n  "delta": }\n]')
    assert "not valid JSON" in str(error(path, 3))


def test_json_duplicates_and_missing_tz(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "e.json",
        '[{"start": "2024-01-01 00:00", "delta": 1},\n {"start": "2024-01-01 00:00", "delta": 2}]',
    )
    error(path, 1)  # naive without --tz: the first line
    error(path, 2, tz="UTC")  # twice with different values


# -- MeterMan --------------------------------------------------------------------------------


def test_meterman(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "mm.csv",
        "#date,time,IMP,EXP,GEN-T\n"
        "2024-01-01,00:05,1234.567,10.000,0.000\n"
        "2024-01-01,00:10,1234.600,10.100,0.000\n"
        "2024-01-01,00:15,0.000,10.200,0.000\n"
        "2024-01-01,00:20,1234.700,10.300,0.000\n",
    )
    imp, exp = read_file(path, tz=VIENNA)
    assert (imp.name, exp.name) == ("import", "export")
    for s in (imp, exp):
        assert s.kind is Kind.CUMULATIVE and s.unit == "kWh" and s.statistic_id is None
    assert imp.times.tolist() == [
        utc(2023, 12, 31, 23, 5),
        utc(2023, 12, 31, 23, 10),
        utc(2023, 12, 31, 23, 20),
    ]  # 0.000 is a missing sample
    assert imp.lines.tolist() == [2, 3, 5]
    assert exp.values.tolist() == [10.0, 10.1, 10.2, 10.3]


def test_meterman_errors(tmp_path: Path) -> None:
    path = write(tmp_path, "mm.csv", "#date,time,IMP,EXP,GEN-T\n2024-01-01,00:05,1,0,0\n")
    assert "--tz" in str(error(path, 2))
    assert "cumulative" in str(error(path, kind=Kind.DELTA, tz=VIENNA))
    bad = write(
        tmp_path,
        "mb.csv",
        "#date,time,IMP,EXP,GEN-T\n2024-01-01,00:05,1,0,0\n2024-01-01,00:10,x,0,0\n",
    )
    assert "'IMP'" in str(error(bad, 3, tz=VIENNA))


# -- klausj1/homeassistant-statistics --------------------------------------------------------


def test_klausj1_delta_tsv_decimal_comma(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "delta.tsv",
        "statistic_id\tstart\tunit\tdelta\n"
        "sensor:gas\t30.12.2025 10:00\tkWh\t2,5\n"
        "sensor:gas\t30.12.2025 09:00\tkWh\t1,5\n"
        "sensor.power\t30.12.2025 09:00\tWh\t7\n",
    )
    gas, power = read_file(path, tz=VIENNA)
    assert (gas.statistic_id, gas.unit, gas.kind) == ("sensor:gas", "kWh", Kind.DELTA)
    assert gas.times.tolist() == [utc(2025, 12, 30, 8), utc(2025, 12, 30, 9)]
    assert gas.ends is not None and (gas.ends - gas.times).tolist() == [HOUR, HOUR]
    assert gas.values.tolist() == [1.5, 2.5] and gas.lines.tolist() == [3, 2]
    assert (power.statistic_id, power.unit, power.values.tolist()) == ("sensor.power", "Wh", [7])


def test_klausj1_sum_is_reading_at_end_of_hour(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "sum.csv",
        "statistic_id,unit,start,sum,state,delta\n"
        "sensor.imp,kWh,29.12.2025 08:00,0,10,\n"
        "sensor.imp,kWh,29.12.2025 09:00,1,11,1\n",
    )
    [s] = read_file(path, tz="UTC")
    assert s.kind is Kind.CUMULATIVE and s.ends is None
    assert s.times.tolist() == [utc(2025, 12, 29, 9), utc(2025, 12, 29, 10)]
    assert s.values.tolist() == [0, 1]


def test_klausj1_mean_min_max(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "m.tsv",
        "statistic_id\tunit\tstart\tmin\tmax\tmean\n"
        "sensor.t\t°C\t26.01.2024 00:00\t13,1\t23,1\t18,1\n",
    )
    [s] = read_file(path, tz="UTC")
    assert s.kind is Kind.MEAN and s.unit == "°C"
    assert s.mins is not None and s.maxs is not None and s.ends is not None
    assert (s.values[0], s.mins[0], s.maxs[0]) == (18.1, 13.1, 23.1)
    assert s.ends[0] - s.times[0] == HOUR


def test_klausj1_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "k.csv",
        "statistic_id;start;unit;delta\nsensor:a;01.01.2024 00:00;kWh;1\n"
        "sensor:b;01.01.2024 00:00;Wh;1\nsensor:a;01.01.2024 01:00;Wh;1\n",
    )
    assert "one unit" in str(error(path, 4, tz="UTC"))
    assert "--tz" in str(error(path, 2))
    ok = write(
        tmp_path, "ok.csv", "statistic_id;start;unit;delta\nsensor:a;01.01.2024 00:00;kWh;1\n"
    )
    assert "delta" in str(error(ok, kind=Kind.CUMULATIVE, tz="UTC"))
    gap = write(
        tmp_path,
        "gap.csv",
        "statistic_id;start;unit;delta\n"
        "sensor:a;31.03.2024 01:00;kWh;1\nsensor:a;31.03.2024 02:00;kWh;1\n",
    )
    error(gap, 3, tz=VIENNA)
    no_value = write(
        tmp_path, "nv.csv", "statistic_id;start;unit;state\nsensor:a;01.01.2024 00:00;kWh;1\n"
    )
    assert "'sum'" in str(error(no_value, 1, tz="UTC"))


def test_klausj1_json(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "state_sum.json",
        '{\n    "timezone_identifier": "America/Los_Angeles",\n    "entities": [\n'
        '        {\n            "id": "sensor.finance_test",\n            "unit": "$",\n'
        '            "values": [\n'
        '                {"state": 10.0, "sum": 10.0, "datetime": "13.09.2024 00:00"},\n'
        '                {"state": 20.0, "sum": 20.0, "datetime": "14.09.2024 00:00"}\n'
        "            ]\n        }\n    ]\n}",
    )
    [s] = read_file(path)
    assert (s.statistic_id, s.unit, s.kind) == ("sensor.finance_test", "$", Kind.CUMULATIVE)
    assert s.times.tolist() == [utc(2024, 9, 13, 8), utc(2024, 9, 14, 8)]
    assert s.lines.tolist() == [8, 9]
    broken = write(tmp_path, "b.json", path.read_text().replace('"sum": 20.0', '"sum": "x"'))
    error(broken, 9)
    no_zone = write(tmp_path, "n.json", path.read_text().replace("timezone_identifier", "tz"))
    assert "--tz" in str(error(no_zone, 8))


# -- the repeated hour in files out of order ---------------------------------------------------


def vienna_fall_back_2026(naive: bool) -> list[str]:
    """The 100 quarter-hour lines of 2026-10-25 in Vienna, in order (02:00-02:45 twice)."""
    stamps = [
        q.strftime("%Y-%m-%d %H:%M") if naive else q.isoformat()
        for q in quarter_hours(datetime(2026, 10, 25), VIENNA)
    ]
    return [f"{s},250\n" for s in stamps]


def test_fall_back_day_in_order_keeps_100_quarter_hours(tmp_path: Path) -> None:
    lines = vienna_fall_back_2026(naive=True)
    assert len(lines) == 100 and sum(x.startswith("2026-10-25 02:00,") for x in lines) == 2
    path = write(tmp_path, "sorted.csv", "start,delta\n" + "".join(lines))
    [s] = read_file(path, kind=None, tz=VIENNA)
    assert len(s) == 100
    assert np.all(np.diff(s.times) == 900)
    assert s.values.sum() == 25_000


@pytest.mark.parametrize("order", ["reversed", "shuffled"])
def test_unsorted_file_with_repeated_hour_is_refused(tmp_path: Path, order: str) -> None:
    lines = vienna_fall_back_2026(naive=True)
    if order == "reversed":
        lines.reverse()
    else:
        np.random.default_rng(7).shuffle(lines)
    path = write(tmp_path, f"{order}.csv", "start,delta\n" + "".join(lines))
    err = error(path, tz=VIENNA)
    assert err.exit_code == 1
    assert "times are not in order" in str(err)
    assert "repeated hour 02:00-03:00 of 2026-10-25 (Europe/Vienna)" in str(err)
    assert "sort the file, or give times with offsets" in str(err)
    assert err.line is not None and 3 <= err.line <= 101
    if order == "reversed":
        assert err.line == 3  # the second data line already goes back in time
        assert f"{path}:3:" in str(err)


def test_unsorted_file_with_offsets_on_the_fall_back_day_is_sorted(tmp_path: Path) -> None:
    lines = vienna_fall_back_2026(naive=False)
    np.random.default_rng(7).shuffle(lines)
    path = write(tmp_path, "aware.csv", "start,delta\n" + "".join(lines))
    [s] = read_file(path, tz=VIENNA)
    assert len(s) == 100
    assert np.all(np.diff(s.times) == 900)


@pytest.mark.parametrize("day", [datetime(2026, 3, 29), datetime(2026, 6, 1)])
def test_unsorted_naive_file_without_repeated_hour_is_sorted(tmp_path: Path, day: datetime) -> None:
    stamps = [q.strftime("%Y-%m-%d %H:%M") for q in quarter_hours(day, VIENNA)]
    body = [f"{s},{i}\n" for i, s in enumerate(stamps)]
    body.reverse()
    path = write(tmp_path, "naive.csv", "start,delta\n" + "".join(body))
    [s] = read_file(path, tz=VIENNA)
    assert len(s) == len(stamps)  # 92 on the spring-forward day, 96 on a normal one
    assert np.all(np.diff(s.times) == 900)
    assert s.values.tolist() == list(range(len(stamps)))
    assert s.lines.tolist() == list(range(len(stamps) + 1, 1, -1))


def test_unsorted_klausj1_and_meterman_with_repeated_hour_are_refused(tmp_path: Path) -> None:
    rows = ["03:00", "02:00", "02:00", "01:00"]
    body = "".join(f"sensor:e;25.10.2026 {r};kWh;1\n" for r in rows)
    path = write(tmp_path, "k.csv", "statistic_id;start;unit;delta\n" + body)
    assert "repeated hour 02:00-03:00 of 2026-10-25" in str(error(path, 3, tz=VIENNA))
    clock = ["02:55", "02:50", "02:55", "03:00", "02:50"]
    body = "".join(f"2026-10-25,{c},{i + 1}.0,0.000,0.000\n" for i, c in enumerate(clock))
    path = write(tmp_path, "mm.csv", "#date,time,IMP,EXP,GEN-T\n" + body)
    # 02:50 after 02:55 reads as the second 02:50; only 02:50 after 03:00 goes back in time
    assert "not in order" in str(error(path, 6, tz=VIENNA))


def test_repeated_hour_names_the_span_of_other_zones() -> None:
    for zone, text, span in [
        ("America/New_York", "2024-11-03 01:30", "01:00-02:00 of 2024-11-03"),
        ("Australia/Lord_Howe", "2024-04-07 01:45", "01:30-02:00 of 2024-04-07"),
    ]:
        p = TimeParser(zone)
        p.parse(text, 1)
        assert p.repeated_hour() == f"{span} ({zone})"
    p = TimeParser(VIENNA)
    p.parse("2026-10-25 01:45", 1)
    assert p.repeated is None


# -- JSON shapes that are not readings ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "item", "line"),
    [
        ("[[1,2],[3,4]]", 1, 1),
        ("[1]", 1, 1),
        ('["a"]', 1, 1),
        ("[null]", 1, 1),
        ('{"readings": [1]}', 1, 1),
        ('{"readings": [\n  {"start": "2024-01-01T00:00:00Z", "value": 1},\n  [2]\n]}', 2, 3),
        ('[\n {"start": "2024-01-01T00:00:00Z", "value": 1},\n "x",\n true\n]', 2, 3),
        ('{"entities": [{"id": "s:e", "unit": "kWh", "values": [[1]]}]}', 1, 1),
        ('{"entities": [\n {"id": "s:e", "unit": "kWh", "values": [1, 2]}]}', 1, 2),
        (
            '{"entities": [{"id": "s:e", "unit": "kWh", "values": [\n'
            '  {"datetime": "01.01.2024 00:00", "delta": 1},\n  7]}]}',
            2,
            3,
        ),
    ],
)
def test_json_rows_that_are_not_objects(tmp_path: Path, text: str, item: int, line: int) -> None:
    path = write(tmp_path, "nested.json", text)
    err = error(path, line, tz="UTC")
    assert f"item {item} is not an object with named fields" in str(err)
    assert err.exit_code == 1


def test_json_rows_that_are_not_objects_exit_1_at_the_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from backdate.cli import app

    path = write(tmp_path, "nested.json", "[[1,2],[3,4]]")
    target = f"sqlite:///{tmp_path / 'none.db'}"
    result = CliRunner().invoke(app, ["plan", str(path), "--to", target])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("{}", "'readings' list"),
        ('{"readings": 5}', "'readings' list"),
        ('{"readings": []}', "no readings"),
        ("[]", "no readings"),
        ('"start,value"', "list of readings"),
        ("5", "list of readings"),
        ("null", "list of readings"),
        ('{"entities": "x"}', "'entities'"),
        ('{"entities": []}', "'entities'"),
        ('{"entities": [5]}', "'values' list"),
        ('{"entities": [{"id": "s:e", "values": 5}]}', "'values' list"),
        ('{"entities": [{"id": 5, "values": [{"datetime": "x", "delta": 1}]}]}', "'id'"),
        ('[{"statistic_id": 5, "start": "2024-01-01T00:00:00Z", "delta": 1}]', "not text"),
        ('[{"start": "2024-01-01T00:00:00Z", "value": 1}] x', "extra data"),
        ("[" * 5000 + "]" * 5000, "nested too deeply"),
        ('[{"start": "2024-01-01T00:00:00Z",\n "value": ' + "9" * 5000 + "}]", "too many digits"),
    ],
)
def test_json_shapes_that_hold_no_readings(tmp_path: Path, text: str, words: str) -> None:
    path = write(tmp_path, "shape.json", text)
    err = error(path, tz="UTC")
    assert words in str(err), str(err)


# -- malformed files never raise anything but InputError -----------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("a.csv", "time,reading\n1704067200²²²²²²²²²²7200,1\n"),  # digits float() refuses
        ("b.csv", "time,reading\n1704067200²²²²²²²²²²7200.5,1\n"),
        ("c.csv", "time,reading\n" + "9" * 40 + ",1\n"),  # epoch beyond the year 9999
        ("d.csv", "start,value\n2024-01-01T00:00:0,0.5\n"),  # seconds cut short
        ("e.csv", '"' + "x" * 200_000 + '",value\n'),  # header field beyond the csv limit
        ("f.csv", "start,value\n0001-01-01T00:00:00+05:00,1\n0001-01-01T00:00:00+05:00,2\n"),
        ("g.json", '[{"#date": 1, "time": 2, "IMP": 3}]'),  # MeterMan columns in JSON
    ],
)
def test_malformed_cases_found_by_fuzzing(tmp_path: Path, name: str, text: str) -> None:
    error(write(tmp_path, name, text), tz=VIENNA)


_FUZZ_SEEDS = [
    ("a.csv", "start,value\n2024-01-01T00:00:00+01:00,0.5\n2024-01-01T00:15:00+01:00,0.25\n"),
    (
        "b.csv",
        "start,end,min,max,mean,unit\n2024-01-01 00:00,2024-01-01 01:00,1,2,1.5,W\n"
        "2024-01-01 01:00,2024-01-01 02:00,1,3,2,W\n",
    ),
    (
        "c.tsv",
        "statistic_id\tstart\tunit\tdelta\nsensor:e\t27.10.2024 01:00\tkWh\t1,5\n"
        "sensor:e\t27.10.2024 02:00\tkWh\t2\n",
    ),
    (
        "d.csv",
        "statistic_id,start,unit,sum,state\nsensor:a,2024-01-01 00:00,kWh,1,1\n"
        "sensor:b,2024-01-01 01:00,kWh,2,2\n",
    ),
    ("e.csv", "#date,time,IMP,EXP,GEN-T\n2024-01-01,00:05,1.0,0,0\n2024-01-01,00:10,1.5,0,0\n"),
    (
        "f.json",
        '[{"start": "2024-01-01T00:00:00Z", "value": 1}, {"start": 1704067200, "value": 2}]',
    ),
    (
        "g.json",
        '{"statistic_id": "x:y", "unit": "kWh", "kind": "delta", '
        '"readings": [{"start": "2024-01-01T00:00:00Z", "kwh": 1}]}',
    ),
    (
        "h.json",
        '{"timezone_identifier": "Europe/Vienna", "entities": [{"id": "sensor:e", "unit": "kWh", '
        '"values": [{"datetime": "27.10.2024 02:00", "delta": 1}, '
        '{"datetime": "27.10.2024 02:00", "delta": 2}]}]}',
    ),
    ("i.csv", 'start;value\n"2024-01-01 00:00";"1,5"\n2024-01-01 00:15;2\n'),
    ("j.csv", "time,reading\n1704067200,1\n1704067200000,2\n1704067200.5,3\n"),
    ("k.csv", "start,delta\n2024-10-27 02:00,1\n2024-10-27 02:00,1\n2024-10-27 01:00,1\n"),
]
_FUZZ_TOKENS = [
    '"', ",", ";", "\t", "\n", "\r\n", "[", "]", "{", "}", ":", "null", "true", "1e999", "-", ".",
    "9" * 30, "²" * 3, "0", "nan", " ", "\x00", "é", "2024-10-27 02:00", "2024-13-45", "[1,2]",
    '{"a":1}', '"start"', '"value"', "9" * 4400, "[" * 2000, "0001-01-01T00:00:00+05:00", "Z",
    "+01:00", "#date", "statistic_id", "entities", "values", "readings", "\ufeff",
]  # fmt: skip


def test_fuzzed_files_raise_only_input_errors(tmp_path: Path) -> None:
    rng = np.random.default_rng(20261025)
    for k in range(300):
        name, text = _FUZZ_SEEDS[k % len(_FUZZ_SEEDS)]
        for _ in range(int(rng.integers(1, 5))):
            i = int(rng.integers(0, len(text) + 1))
            j = min(len(text), i + int(rng.integers(0, 12)))
            token = _FUZZ_TOKENS[int(rng.integers(len(_FUZZ_TOKENS)))]
            op = int(rng.integers(4))
            text = [
                text[:i] + token + text[i:],
                text[:i] + text[j:],
                text[:i] + token + text[j:],
                text[:i] + text[i:j] * 2 + text[j:],
            ][op]
        path = write(tmp_path, f"{k}-{name}", text)
        try:
            read_file(path, tz=VIENNA if k % 2 else None)
        except InputError as e:
            assert path.name in str(e), (text, str(e))
        except Exception as e:  # noqa: BLE001 - the point of the test
            pytest.fail(f"{type(e).__name__}: {e} reading {text!r}")
