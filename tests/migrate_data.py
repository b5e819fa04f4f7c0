"""HA-shaped statistics for the migrate tests: an old entity statistic (Wh) that stopped and a
new one (kWh) that started a few days before it stopped, written straight into a recorder
database (any engine) the way HA's compile leaves them: `sum` from 0, `state` the meter,
5-minute rows that add up to each hour.

Everything is computed here, independently of backdate, so the tests can check backdate's
result against these numbers.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import sqlalchemy as sa

HOUR = 3600
FIVE = 300


@dataclass
class Meter:
    """One statistic's rows: hourly and 5-minute (start -> (state, sum)), and its changes."""

    statistic_id: str
    unit: str
    hourly: dict[int, tuple[float, float]] = field(default_factory=dict)
    five: dict[int, tuple[float, float]] = field(default_factory=dict)
    changes: dict[int, float] = field(default_factory=dict)  # per hour, in `unit`
    five_changes: dict[int, float] = field(default_factory=dict)


def make_meter(statistic_id: str, unit: str, start: int, end: int, *, seed: int,
               scale: float, meter0: float, five_from: int | None = None) -> Meter:
    """Hours [start, end) of a meter that keeps rising; 5-minute rows from `five_from`."""
    rng = random.Random(seed)
    m = Meter(statistic_id, unit)
    total, meter = 0.0, meter0
    for t in range(start, end, FIVE):
        step = round(rng.uniform(0.0, 1.0) * scale, 6)
        if t == start:
            step = 0.0  # HA's first compiled window: sum 0 (no change before it)
        total += step
        meter += step
        hour = t - t % HOUR
        m.changes[hour] = m.changes.get(hour, 0.0) + step
        if five_from is not None and t >= five_from:
            m.five[t] = (meter, total)
            m.five_changes[t] = step
        if (t + FIVE) % HOUR == 0:
            m.hourly[hour] = (meter, total)
    return m


def driver_url(db_url: str) -> str:
    """HA's db_url with the drivers these tests use."""
    for plain, full in (("mysql://", "mysql+pymysql://"), ("mariadb://", "mysql+pymysql://"),
                        ("postgresql://", "postgresql+psycopg://")):
        if db_url.startswith(plain):
            return full + db_url[len(plain):]
    return db_url


def _columns(conn: sa.Connection, table: str) -> set[str]:
    return {c["name"] for c in sa.inspect(conn).get_columns(table)}


def write_meter(db_url: str, m: Meter, *, mean_type_missing: bool = False) -> int:
    """Insert the statistic's metadata and rows; returns its metadata id."""
    engine = sa.create_engine(driver_url(db_url))
    now = time.time()
    try:
        with engine.begin() as conn:
            cols = _columns(conn, "statistics_meta")
            md = sa.MetaData()
            meta_t = sa.Table("statistics_meta", md, autoload_with=conn)
            values = {"statistic_id": m.statistic_id, "source": "recorder",
                      "unit_of_measurement": m.unit, "has_mean": False, "has_sum": True,
                      "name": None}
            if "mean_type" in cols and not mean_type_missing:
                values["mean_type"] = 0
            if "unit_class" in cols:
                values["unit_class"] = "energy"
            meta_id = int(conn.execute(meta_t.insert().values(**values)).inserted_primary_key[0])
            for table, rows in (("statistics", m.hourly), ("statistics_short_term", m.five)):
                t = sa.Table(table, md, autoload_with=conn)
                batch = [{"metadata_id": meta_id, "start_ts": float(s), "state": st,
                          "sum": su, "created_ts": now} for s, (st, su) in sorted(rows.items())]
                for i in range(0, len(batch), 5000):
                    conn.execute(t.insert(), batch[i:i + 5000])
        return meta_id
    finally:
        engine.dispose()


def read_rows(db_url: str, statistic_id: str, table: str = "statistics"
              ) -> dict[int, tuple[float, float]]:
    engine = sa.create_engine(driver_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                f"SELECT s.start_ts, s.state, s.sum FROM {table} s JOIN statistics_meta m "
                "ON m.id = s.metadata_id WHERE m.statistic_id = :sid ORDER BY s.start_ts"),
                {"sid": statistic_id}).all()
    finally:
        engine.dispose()
    return {int(r[0]): (r[1], r[2]) for r in rows}


def changes_of(rows: dict[int, tuple[float, float]]) -> dict[int, float]:
    """Each row's change from the row before it (the first row: its sum)."""
    out: dict[int, float] = {}
    prev = 0.0
    for t in sorted(rows):
        out[t] = rows[t][1] - prev
        prev = rows[t][1]
    return out


def expected_merge(old: Meter, new: Meter, factor: float, rule: str,
                   start: int | None = None, end: int | None = None) -> dict[int, float]:
    """NEW's hourly change after the merge, computed from the generated data."""
    out = dict(new.changes)
    for t, v in old.changes.items():
        if start is not None and t < start or end is not None and t + HOUR > end:
            continue
        if t in new.changes and rule == "keep-target":
            continue
        out[t] = v * factor
    return dict(sorted(out.items()))


def write_means(db_url: str, statistic_id: str, unit: str,
                rows: dict[int, tuple[float, float, float]]) -> None:
    """A measurement statistic (mean/min/max per hour), as HA's compile leaves it."""
    engine = sa.create_engine(driver_url(db_url))
    try:
        with engine.begin() as conn:
            cols = _columns(conn, "statistics_meta")
            md = sa.MetaData()
            meta_t = sa.Table("statistics_meta", md, autoload_with=conn)
            values = {"statistic_id": statistic_id, "source": "recorder",
                      "unit_of_measurement": unit, "has_mean": True, "has_sum": False,
                      "name": None}
            if "mean_type" in cols:
                values["mean_type"] = 1
            if "unit_class" in cols:
                values["unit_class"] = "temperature"
            meta_id = conn.execute(meta_t.insert().values(**values)).inserted_primary_key[0]
            t = sa.Table("statistics", md, autoload_with=conn)
            conn.execute(t.insert(), [{"metadata_id": meta_id, "start_ts": float(s), "mean": m,
                                       "min": lo, "max": hi, "created_ts": time.time()}
                                      for s, (m, lo, hi) in sorted(rows.items())])
    finally:
        engine.dispose()


def read_means(db_url: str, statistic_id: str) -> dict[int, tuple[float, float, float]]:
    engine = sa.create_engine(driver_url(db_url))
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(
                "SELECT s.start_ts, s.mean, s.min, s.max FROM statistics s JOIN "
                "statistics_meta m ON m.id = s.metadata_id WHERE m.statistic_id = :sid "
                "ORDER BY s.start_ts"), {"sid": statistic_id}).all()
    finally:
        engine.dispose()
    return {int(r[0]): (r[1], r[2], r[3]) for r in rows}
