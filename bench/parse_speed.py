"""How fast `read_file` reads ten years of 15-minute deltas (350,640 lines).

Not a test: run `python bench/parse_speed.py` and read the lines/s. Two files are written to a
temporary directory: ISO 8601 times with offsets, and naive local times read with --tz (the path
through the zone cache, including 20 daylight-saving changes).
"""

from __future__ import annotations

import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from backdate.sources.files import read_file

ROWS = 350_640  # 10 years (2014-2023, 3,652 days) of quarter hours
ZONE = "Europe/Vienna"


def write(path: Path, naive: bool) -> None:
    """Ten years of quarter-hour deltas, each time as local Vienna time."""
    zone = ZoneInfo(ZONE)
    t0 = datetime(2014, 1, 1, tzinfo=UTC)
    step = timedelta(minutes=15)
    with path.open("w") as f:
        f.write("start,delta\n")
        for i in range(ROWS):
            local = (t0 + i * step).astimezone(zone)
            stamp = local.strftime("%Y-%m-%d %H:%M") if naive else local.isoformat()
            f.write(f"{stamp},{(i % 17) * 0.013:.3f}\n")


def measure(path: Path, tz: str | None, repeat: int = 5) -> float:
    """Best of `repeat` runs, in seconds (the machine may be busy with other work)."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        series = read_file(path, tz=tz)
        best = min(best, time.perf_counter() - start)
    assert len(series) == 1 and len(series[0]) == ROWS, "every line must be read"
    return best


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for label, naive in (("ISO with offset", False), (f"naive local + --tz {ZONE}", True)):
            path = Path(tmp) / ("naive.csv" if naive else "offset.csv")
            write(path, naive)
            seconds = measure(path, ZONE if naive else None)
            print(f"{label:32s} {ROWS:,} lines in {seconds:.3f} s = {ROWS / seconds:,.0f} lines/s")


if __name__ == "__main__":
    main()
