"""Ten years of hourly rows through HA's WebSocket API: backdate beside HA's own commit time.

Why: over the API, HA itself is the bottleneck (it writes imported rows one at a time in its
recorder thread, ~1,300 rows/s on 2024.3.3). backdate must add little on top of that while
still confirming every row by reading it back (HA answers `import_statistics` before it
writes). So both are measured in the same run, on the same real HA 2024.3.3:

* reference: a minimal client sends the same 87,660 rows as plain `recorder/import_statistics`
  messages (the same chunks); its timer stops when the last hour appears (a one-row poll
  every 0.2 s: HA runs the jobs in order, so that is when HA has committed the rows, the
  time the issue asks for). The range is then read back once, outside the timed part, only
  to check that HA holds every row;
* backdate: the whole CLI, `backdate import ten_years.csv --to http://... --yes` (reading the
  CSV, planning from what HA reports, sending, reading every row back and comparing every
  value).

Each run uses fresh statistic ids; the order alternates between runs so neither side always
meets a bigger database. Prints both wall-clock times, rows/s and the overhead ratio, and,
because wall time on a shared machine swings by tens of percent between runs, also the CPU
seconds each side cost (HA's process plus the client's), which other load does not inflate.

    .venv/bin/python bench/ws_import.py [--runs 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from ha_harness import HomeAssistant, default_venv  # noqa: E402

from backdate.hass.client import SyncHAClient  # noqa: E402
from backdate.targets.ha_ws import import_chunks  # noqa: E402

ROWS = 87_660  # ten years of hours (365.25 days a year)
BACKDATE = str(REPO / ".venv" / "bin" / "backdate")


def series(end: datetime) -> tuple[list[float], list[float]]:
    """(hour starts, kWh per hour): the same made-up amounts for both sides."""
    first = end.timestamp() - ROWS * 3600
    starts = [first + 3600 * k for k in range(ROWS)]
    values = [(k * 37 % 1000) / 1000 for k in range(ROWS)]  # exact in CSV: 0.000 .. 0.999
    return starts, values


def write_csv(path: Path, starts: list[float], values: list[float]) -> None:
    with path.open("w") as fh:
        fh.write("start,kwh\n")
        for t, v in zip(starts, values, strict=True):
            fh.write(f"{datetime.fromtimestamp(t, UTC).isoformat()},{v}\n")


def ha_cpu(ha: HomeAssistant) -> float:
    """CPU seconds HA's process has used so far (all its threads), from /proc."""
    assert ha.process is not None
    fields = Path(f"/proc/{ha.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def reference(ha: HomeAssistant, sid: str, starts: list[float], values: list[float],
              cpu_at_stop: list[tuple[float, float]]) -> float:
    """Plain import_statistics messages, timed until the last hour appears; seconds. HA's
    and this process's CPU seconds at that moment are appended to `cpu_at_stop` (the untimed
    check after it must not count in the CPU figures either)."""
    metadata = {"has_mean": False, "has_sum": True, "name": None, "source": "backdate",
                "statistic_id": sid, "unit_of_measurement": "kWh"}
    stats = []
    total = 0.0
    for t, v in zip(starts, values, strict=True):
        total += v
        stats.append({"start": datetime.fromtimestamp(t, UTC).isoformat(),
                      "state": total, "sum": total})
    chunks = import_chunks(metadata, stats)
    last = datetime.fromtimestamp(starts[-1], UTC)
    with SyncHAClient(ha.url, ha.token, 120) as ws:
        began = time.perf_counter()
        for chunk in chunks:
            ws.call("recorder/import_statistics", metadata=metadata, stats=chunk)
        while True:  # the last job queued lands last
            got = ws.call("recorder/statistics_during_period", statistic_ids=[sid],
                          start_time=last.isoformat(),
                          end_time=(last + timedelta(hours=1)).isoformat(),
                          period="hour", types=["sum"])
            if got.get(sid):
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - began  # HA committed the last job: stop here
        cpu_at_stop.append((ha_cpu(ha), time.process_time()))
        rows = ws.call("recorder/statistics_during_period", statistic_ids=[sid],
                       start_time=datetime.fromtimestamp(starts[0], UTC).isoformat(),
                       end_time=(last + timedelta(hours=1)).isoformat(), period="hour",
                       types=["sum"], timeout=300).get(sid, [])  # check only, untimed
    if len(rows) != ROWS:
        raise SystemExit(f"reference: HA holds {len(rows)} rows, expected {ROWS}")
    return elapsed


def with_backdate(ha: HomeAssistant, sid: str, csv: Path) -> float:
    """The whole CLI run; seconds."""
    env = {**os.environ, "HA_TOKEN": ha.token, "NO_COLOR": "1", "COLUMNS": "200"}
    began = time.perf_counter()
    proc = subprocess.run([BACKDATE, "import", str(csv), "--statistic-id", sid, "--to", ha.url,
                           "--no-backup", "--yes"], capture_output=True, text=True, env=env,
                          check=False, timeout=1200)
    elapsed = time.perf_counter() - began
    if proc.returncode != 0:
        raise SystemExit(f"backdate exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-2000:]}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(days=2)
    starts, values = series(end)
    with tempfile.TemporaryDirectory(prefix="backdate-bench-ws-") as tmp:
        csv = Path(tmp) / "ten_years.csv"
        write_csv(csv, starts, values)
        ha = HomeAssistant(Path(tmp) / "ha", venv=default_venv())
        ha.start()
        try:
            ref_times, bd_times, ref_cpu, bd_cpu = [], [], [], []
            stamp = int(time.time())
            for run in range(args.runs):
                order = ("ref", "bd") if run % 2 == 0 else ("bd", "ref")
                for side in order:
                    time.sleep(3)  # let HA's recorder go idle between sides
                    ha0, own0, kids0 = ha_cpu(ha), time.process_time(), children_cpu()
                    stop: list[tuple[float, float]] = []
                    if side == "ref":
                        sec = reference(ha, f"backdate:bench_ref_{stamp}_{run}", starts, values,
                                        stop)
                    else:
                        sec = with_backdate(ha, f"backdate:bench_bd_{stamp}_{run}", csv)
                    ha1, own1 = stop[0] if stop else (ha_cpu(ha), time.process_time())
                    cpu_ha = ha1 - ha0
                    cpu_client = (own1 - own0) + (children_cpu() - kids0)
                    (ref_times if side == "ref" else bd_times).append(sec)
                    (ref_cpu if side == "ref" else bd_cpu).append(cpu_ha + cpu_client)
                    print(f"run {run + 1} {'reference' if side == 'ref' else 'backdate '}: "
                          f"{sec:6.1f} s  ({ROWS / sec:,.0f} rows/s); CPU: HA {cpu_ha:5.1f} s, "
                          f"client {cpu_client:4.1f} s", flush=True)
        finally:
            ha.stop()
    ref, bd = statistics.median(ref_times), statistics.median(bd_times)
    print(f"\n{ROWS:,} hourly rows into Home Assistant 2024.3.3 over its WebSocket API, "
          f"{args.runs} runs, medians:")
    print(f"  HA committing plain import_statistics (reference): {ref:6.1f} s "
          f"({ROWS / ref:,.0f} rows/s)")
    print(f"  backdate import, whole CLI, every row confirmed:   {bd:6.1f} s "
          f"({ROWS / bd:,.0f} rows/s)")
    print(f"  overhead: {bd / ref:.3f}x ({(bd / ref - 1) * 100:+.1f} %); target <= +10 %")
    pairs = ", ".join(f"{b / r:.3f}" for b, r in zip(bd_times, ref_times, strict=True))
    print(f"  per-run wall-clock ratios: {pairs}")
    rc, bc = statistics.median(ref_cpu), statistics.median(bd_cpu)
    print(f"  CPU seconds (HA + client), medians: reference {rc:.1f} s, backdate {bc:.1f} s: "
          f"{bc / rc:.3f}x ({(bc / rc - 1) * 100:+.1f} %)")


if __name__ == "__main__":
    main()
